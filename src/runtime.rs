//! The threads connections are served on (`--runtime`, `--threads`).
//!
//! `per-core`, the default, is nginx's layout inside one process: one single-threaded tokio
//! runtime per thread, each with its own accept loop on every listening socket, serving the
//! connections it accepted to their end. A connection never moves between threads, so no
//! thread parks and wakes another to steal it: round three measured two work-stealing
//! workers switching context three times as often per echoed record as nginx, at half again
//! the CPU per record of a single worker. The listening sockets are shared (each thread
//! polls its own descriptor of the same socket), not one `SO_REUSEPORT` socket per thread:
//! socket activation passes one socket per port, an upgrade hands on exactly the sockets it
//! has, and a connection waiting in a shared queue is never lost when one thread stops.
//! Whichever thread is idle takes the next connection first, since a busy one looks at its
//! sockets only between its tasks.
//!
//! The supervisor (signals, the admin port, health checks, DNS, ACME, reloads) runs on the
//! runtime that started the server (`main`'s own thread), apart from the connections. What
//! the connections share is process-wide whatever the mode: the serving config, the
//! connection limits, balancing counts, ticket keys, metrics.
//!
//! `work-stealing` is tokio's multi-threaded runtime, the mode before: better for a few very
//! busy tunnels on many cores, where one thread's tunnels could otherwise saturate its core
//! while another idles.

use std::time::Duration;

use anyhow::Context;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How connections are spread over threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Runtime {
    /// One single-threaded runtime per thread, each accepting and serving its own
    /// connections (nginx's workers).
    #[default]
    PerCore,
    /// One multi-threaded runtime whose threads steal each other's work.
    WorkStealing,
}

impl Runtime {
    pub fn per_core(self) -> bool {
        self == Runtime::PerCore
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Runtime::PerCore => "per-core",
            Runtime::WorkStealing => "work-stealing",
        })
    }
}

thread_local! {
    /// This thread's number among the per-core threads (`None` on any other thread).
    static WORKER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The per-core thread this runs on, by number (`None` on the supervisor's thread, a
/// work-stealing runtime's, or a test's): what the metrics count accepts by.
pub fn worker() -> Option<usize> {
    WORKER.with(std::cell::Cell::get)
}

/// The default thread count: the CPUs this process may use (its affinity mask and cgroup
/// quota, as `std` reads them), at least one.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The per-core threads, each running a single-threaded runtime until told to stop.
pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    stopped: Vec<oneshot::Receiver<()>>,
}

/// What a worker's runtime waits for its blocking tasks (none serve connections) at its end.
const BLOCKING_AT_EXIT: Duration = Duration::from_secs(1);

impl Workers {
    /// Starts `threads` threads, named `wssbridge-N`, each idle until given work.
    pub fn start(threads: usize) -> anyhow::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::with_capacity(threads),
            stops: Vec::with_capacity(threads),
            stopped: Vec::with_capacity(threads),
        };
        for n in 0..threads {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a worker's runtime")?;
            let (stop, told) = oneshot::channel::<()>();
            let (done, stopped) = oneshot::channel::<()>();
            workers.handles.push(runtime.handle().clone());
            std::thread::Builder::new()
                .name(format!("wssbridge-{n}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(Some(n)));
                    // Tasks spawned on this runtime from elsewhere run while this waits.
                    let _ = runtime.block_on(told);
                    runtime.shutdown_timeout(BLOCKING_AT_EXIT);
                    let _ = done.send(());
                })
                .context("starting a worker thread")?;
            workers.stops.push(stop);
            workers.stopped.push(stopped);
        }
        Ok(workers)
    }

    /// Each thread's runtime, to spawn its accept loops on.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Ends every thread's runtime (dropping whatever task is left on it: the supervisor
    /// calls this once every connection has ended) and waits until each thread is done.
    pub async fn stop(mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for stopped in self.stopped.drain(..) {
            let _ = stopped.await;
        }
    }
}

impl Drop for Workers {
    /// A server that failed or was dropped midway still ends its threads (without waiting).
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_worker_runs_its_tasks_on_its_own_thread() {
        let workers = Workers::start(3).unwrap();
        let mut names = Vec::new();
        for handle in workers.handles() {
            let name = handle
                .spawn(async { std::thread::current().name().map(str::to_owned) })
                .await
                .unwrap();
            names.push(name.unwrap());
        }
        assert_eq!(names, ["wssbridge-0", "wssbridge-1", "wssbridge-2"]);
        let numbers = workers.handles()[2]
            .spawn(async { worker() })
            .await
            .unwrap();
        assert_eq!(numbers, Some(2));
        assert_eq!(worker(), None, "the caller's thread is none of them");
        workers.stop().await;
    }

    #[tokio::test]
    async fn stopping_ends_the_threads_and_drops_what_was_left() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        // A task that never ends, holding the sender: dropped with its runtime.
        workers.handles()[1].spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await
        });
        tokio::time::timeout(Duration::from_secs(5), workers.stop())
            .await
            .expect("the threads end");
        assert!(rx.await.is_err(), "the pending task was dropped");
    }
}
