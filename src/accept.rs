//! The `accept` stage: listening sockets, the accept loop and the connection limit.
//!
//! A connection over `--max-connections` is still accepted and answered 503 (a client that
//! gets an answer retries sensibly; one that hangs in the backlog does not), but only a few
//! such answers run at once so an overload cannot turn into unbounded work. Accept errors,
//! above all running out of file descriptors, back off with a capped delay and are logged at
//! most once a second, so the loop never spins while live tunnels keep being served.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Limits;
use crate::conn::{self, Shared};

/// Pending connections the kernel queues per listener (nginx's default is 511).
const BACKLOG: i32 = 1024;
/// Connections over the limit that may be answered 503 at the same time.
const OVERFLOW_ANSWERS: usize = 64;
/// Accept error back-off: from 10 ms doubling to 1 s.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Binds a listening socket. IPv6 sockets are v6-only, so `[::]:443` and `0.0.0.0:443` can
/// both be given, as with nginx. TCP_NODELAY and keepalive are set here, once: Linux copies
/// them to every accepted socket (five system calls fewer per connection), and setting them
/// before `listen` covers connections queued before the accept loop starts.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let attempt = || -> io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        crate::connect::tune(socket2::SockRef::from(&socket));
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    attempt().with_context(|| format!("--listen {addr}: cannot listen"))
}

/// Connections held per client address.
type IpCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The admission state shared by every listener.
pub struct Admission {
    pub permits: Arc<Semaphore>,
    overflow: Arc<Semaphore>,
    per_ip: Option<(usize, IpCounts)>,
}

impl Admission {
    pub fn new(limits: &Limits) -> Self {
        Admission {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            overflow: Arc::new(Semaphore::new(OVERFLOW_ANSWERS)),
            per_ip: limits
                .max_connections_per_ip
                .map(|n| (n, Arc::new(Mutex::new(HashMap::new())))),
        }
    }

    /// Counts a connection from `ip`; `None` when that address is at its limit.
    fn per_ip(&self, ip: IpAddr) -> Option<IpSlot> {
        let Some((limit, counts)) = &self.per_ip else {
            return Some(IpSlot(None));
        };
        let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(ip).or_insert(0);
        if *count >= *limit {
            return None;
        }
        *count += 1;
        Some(IpSlot(Some((ip, counts.clone()))))
    }
}

/// One connection's place in the per-address count, given back on drop.
struct IpSlot(Option<(IpAddr, IpCounts)>);

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((ip, counts)) = self.0.take() {
            let mut map = counts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = map.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// Accepts until `stop` fires; every connection runs as a task on `tracker`.
pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    admission: Arc<Admission>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_MIN;
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = BACKOFF_MIN;
                a
            }
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!("accept failed, backing off {backoff:?}: {e}");
                    last_warning = Some(Instant::now());
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let Some(ip_slot) = admission.per_ip(peer.ip()) else {
            tracing::debug!(%peer, "at --max-connections-per-ip: closing");
            continue;
        };
        let (permit, admitted) = match admission.permits.clone().try_acquire_owned() {
            Ok(p) => (p, true),
            Err(_) => match admission.overflow.clone().try_acquire_owned() {
                Ok(p) => (p, false),
                Err(_) => {
                    tracing::debug!(%peer, "over capacity and over the 503 budget: closing");
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tracker.spawn(async move {
            conn::serve(shared, stream, peer, admitted).await;
            drop((permit, ip_slot));
        });
    }
}

/// Errors that concern one connection only (it was reset before we took it).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
