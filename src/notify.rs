//! systemd's readiness protocol (`Type=notify`, sd_notify(3)): the one module that knows
//! systemd. It listens to the lifecycle's events and, when `NOTIFY_SOCKET` is set, tells the
//! service manager:
//!
//! - `READY=1` once every listener is bound and serving;
//! - `RELOADING=1` with `MONOTONIC_USEC=` when a reload begins, then `READY=1` when it ends
//!   (whatever its result: a failed reload keeps the previous configuration serving);
//! - `STOPPING=1` when the drain begins;
//! - `STATUS=` with the live connections and WebSockets, at most once a second while they
//!   change.
//!
//! Without `NOTIFY_SOCKET` nothing is sent and no task runs. A leaf but for `lifecycle`.
//!
//! The same protocol, one message of it, goes to the process that started this one in a
//! binary upgrade ([`Parent`]): `READY=1` or `FAILED=…`, on a socket inherited among the
//! `LISTEN_FDS`, never a name in the environment (see `upgrade`).

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use crate::lifecycle::Event;

/// How often the status line may change.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Where notifications go: the socket `NOTIFY_SOCKET` names (a path, or `@name` for an
/// abstract socket).
pub struct Notifier {
    socket: UnixDatagram,
    to: Target,
}

enum Target {
    Path(std::path::PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for, if it is set.
    pub fn from_env() -> Option<Notifier> {
        Notifier::from_var("NOTIFY_SOCKET")
    }

    /// The notifier the variable `var` names (a path, or `@name`), if it is set: systemd's,
    /// or the process that started this one in a binary upgrade.
    pub fn from_var(var: &str) -> Option<Notifier> {
        let value = std::env::var_os(var)?;
        let abstract_name = value
            .as_encoded_bytes()
            .strip_prefix(b"@")
            .map(<[u8]>::to_vec);
        let to = match abstract_name {
            Some(name) => Target::Abstract(name),
            None => Target::Path(value.into()),
        };
        match UnixDatagram::unbound() {
            Ok(socket) => Some(Notifier { socket, to }),
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET is set but no socket could be made: {e}");
                None
            }
        }
    }

    /// Sends one notification; a failure is logged, never fatal (the service manager may
    /// have gone, or may not care).
    pub fn send(&self, message: &str) {
        let sent = match &self.to {
            Target::Path(path) => self.socket.send_to(message.as_bytes(), path),
            Target::Abstract(name) => send_abstract(&self.socket, message, name),
        };
        if let Err(e) = sent {
            tracing::debug!("sd_notify {message:?}: {e}");
        }
    }

    /// Tells the service manager what `events` say, and `counts()` (live connections,
    /// WebSockets) as the status, until `until` resolves.
    pub async fn follow(
        self,
        mut events: Receiver<Event>,
        counts: impl Fn() -> (usize, i64),
        until: impl std::future::Future<Output = ()>,
    ) {
        let mut until = std::pin::pin!(until);
        let mut ticks = tokio::time::interval(STATUS_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shown = None;
        loop {
            // Events first: shutdown emits `Draining` and then, with nothing left to wait
            // for, fires `until` at once; `STOPPING=1` must still go out before the end.
            tokio::select! {
                biased;
                event = events.recv() => match event {
                    Ok(Event::Stopped) | Err(RecvError::Closed) => return,
                    Ok(event) => {
                        if let Some(message) = message(&event) {
                            self.send(&message);
                        }
                    }
                    Err(RecvError::Lagged(_)) => {}
                },
                _ = &mut until => return,
                _ = ticks.tick() => {
                    let now = counts();
                    if shown != Some(now) {
                        shown = Some(now);
                        self.send(&format!(
                            "STATUS={} connections, {} WebSockets",
                            now.0, now.1
                        ));
                    }
                }
            }
        }
    }
}

/// The notification for a lifecycle event, if it has one.
pub fn message(event: &Event) -> Option<String> {
    match event {
        Event::Ready | Event::Reloaded { .. } => Some("READY=1".to_string()),
        Event::Reloading { .. } => {
            Some(format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
        }
        Event::Draining => Some("STOPPING=1".to_string()),
        Event::Stopped => None,
    }
}

/// CLOCK_MONOTONIC in microseconds, as systemd compares it with its own.
fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, message: &str, name: &[u8]) -> io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(message.as_bytes(), &addr)
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &str, _: &[u8]) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets are Linux's",
    ))
}

/// The `LISTEN_FDNAMES` name of the socket a process started by a binary upgrade reports
/// on to the one that started it (`upgrade`).
pub const PARENT_FDNAME: &str = "upgrade";

/// In a process a binary upgrade started: the socket it reports on to the process that
/// started it, once. Cloned freely; the first report closes it for all.
#[derive(Debug, Clone)]
pub struct Parent(Arc<Mutex<Option<UnixDatagram>>>);

impl Parent {
    /// The report socket the starting process passed (named [`PARENT_FDNAME`] among the
    /// `LISTEN_FDS`: `accept::Listeners::inherited` finds it).
    pub fn new(socket: UnixDatagram) -> Parent {
        Parent(Arc::new(Mutex::new(Some(socket))))
    }

    /// Tells the starting process this one is ready: it drains and exits.
    pub fn ready(&self) {
        self.report("READY=1");
    }

    /// Tells the starting process why this one could not start: it goes on serving.
    pub fn failed(&self, why: &str) {
        self.report(&format!("FAILED={why}").replace('\n', " "));
    }

    fn report(&self, message: &str) {
        let socket = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(socket) = socket
            && let Err(e) = socket.send(message.as_bytes())
        {
            tracing::debug!("upgrade report {message:?}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_says_what_systemd_expects() {
        assert_eq!(message(&Event::Ready).as_deref(), Some("READY=1"));
        let reloading = message(&Event::Reloading { why: "signal" }).unwrap();
        assert!(
            reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{reloading}"
        );
        let usec: u64 = reloading.rsplit('=').next().unwrap().parse().unwrap();
        assert!(usec > 0);
        let failed = Event::Reloaded {
            result: Err("bad".into()),
        };
        assert_eq!(message(&failed).as_deref(), Some("READY=1"));
        assert_eq!(message(&Event::Draining).as_deref(), Some("STOPPING=1"));
        assert_eq!(message(&Event::Stopped), None);
    }
}
