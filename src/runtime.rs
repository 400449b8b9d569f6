//! The threads connections are served on (`--runtime`, `--threads`).
//!
//! `per-core` is nginx's layout inside one process: one single-threaded tokio runtime per
//! thread, each with its own accept loop on every listening socket, serving the connections
//! it accepted to their end. A connection never moves between threads, so no thread parks
//! and wakes another to steal it. The listening sockets are shared (each thread polls its
//! own descriptor of the same socket), not one `SO_REUSEPORT` socket per thread: socket
//! activation passes one socket per port, an upgrade hands on exactly the sockets it has,
//! and a connection waiting in a shared queue is never lost when one thread stops. Every
//! idle thread is woken by a new connection and the first to call `accept` takes it (the
//! others find nothing): an idle thread before a busy one, which looks at its sockets only
//! between its tasks.
//!
//! The supervisor (signals, the admin port, health checks, DNS, ACME, reloads) runs on the
//! runtime that started the server (`main`'s own thread), apart from the connections. What
//! the connections share is process-wide whatever the mode: the serving config, the
//! connection limits, balancing counts, ticket keys, metrics.
//!
//! `work-stealing`, the default, is tokio's multi-threaded runtime. Measured side by side
//! (`docs/performance.md`, round four), per core serves new connections 9% and keep-alive
//! requests 20% cheaper and answers sooner, but streams of small records (256 B at 64
//! tunnels) 9–15% dearer: a thread that serves each readiness as it comes reads and writes
//! smaller batches than threads whose queued tasks wait a moment. The rule for the default
//! was "better and nothing measurably worse", so per core is a choice, not the default.

use std::time::Duration;

use anyhow::Context;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How connections are spread over threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Runtime {
    /// One single-threaded runtime per thread, each accepting and serving its own
    /// connections (nginx's workers).
    PerCore,
    /// One multi-threaded runtime whose threads steal each other's work.
    #[default]
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

/// More threads than any machine this runs on has cores, far fewer than would exhaust it.
pub const MAX_THREADS: usize = 1024;

/// The threads `--threads` asks for (`None`: one per CPU), if it is a count `--threads`
/// accepts; the config names the flag when it is not.
pub fn threads(asked: Option<usize>) -> Option<usize> {
    match asked {
        None => Some(default_threads()),
        Some(n) => Some(n).filter(|n| (1..=MAX_THREADS).contains(n)),
    }
}

/// The name of the threads of the work-stealing runtime (`main` builds it).
pub const WORK_STEALING_THREAD: &str = "wssbridge-ws";

/// tokio's default for a runtime's blocking threads (backend names looked up with
/// `getaddrinfo`), shared out among the per-core threads so the process keeps one bound.
const BLOCKING_THREADS: usize = 512;

/// The per-core threads, each running a single-threaded runtime until told to stop.
pub struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    stopped: Vec<oneshot::Receiver<()>>,
}

/// What a worker's runtime waits for its blocking tasks (none serve connections) at its end.
const BLOCKING_AT_EXIT: Duration = Duration::from_secs(1);

impl Workers {
    /// Starts `threads` threads, named `wssbridge-N`, each idle until given work. Each
    /// builds its runtime itself: a runtime is dropped on its own thread, never in the
    /// caller's async context (where tokio refuses to drop one).
    pub async fn start(threads: usize) -> anyhow::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::with_capacity(threads),
            stops: Vec::with_capacity(threads),
            stopped: Vec::with_capacity(threads),
        };
        let blocking = (BLOCKING_THREADS / threads.max(1)).max(16);
        for n in 0..threads {
            let (stop, told) = oneshot::channel::<()>();
            let (done, stopped) = oneshot::channel::<()>();
            let (built, handle) = oneshot::channel::<std::io::Result<Handle>>();
            // Kept before the thread starts: an error below drops `workers`, which ends
            // every thread started so far.
            workers.stops.push(stop);
            workers.stopped.push(stopped);
            std::thread::Builder::new()
                .name(format!("wssbridge-{n}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .max_blocking_threads(blocking)
                        .build();
                    let runtime = match runtime {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = built.send(Err(e));
                            return;
                        }
                    };
                    WORKER.with(|w| w.set(Some(n)));
                    let _ = built.send(Ok(runtime.handle().clone()));
                    // Tasks spawned on this runtime from elsewhere run while this waits.
                    let _ = runtime.block_on(told);
                    runtime.shutdown_timeout(BLOCKING_AT_EXIT);
                    let _ = done.send(());
                })
                .context("starting a worker thread")?;
            let handle = handle
                .await
                .context("a worker thread ended at its start")?
                .context("starting a worker's runtime")?;
            workers.handles.push(handle);
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
        let workers = Workers::start(3).await.unwrap();
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
        let workers = Workers::start(2).await.unwrap();
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
