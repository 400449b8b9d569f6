//! Active health checks (`--health-check`): one loop per checked backend, one check at a time,
//! every `--health-interval`, each bounded by `--health-timeout`.
//!
//! `tcp` passes when a connection opens; a path such as `/healthz` sends
//! `GET /healthz HTTP/1.1` with the backend's `host:port` as `Host` and passes on a 2xx or 3xx
//! status line. Three failures in a row mark the backend down, two passes bring it back
//! (see `BackendState::checked`). The loops follow the configuration: a reload starts loops
//! for newly checked backends and stops those no longer checked. All stop at shutdown.
//!
//! The check's HTTP (its request, reading its status line) is `http::probe`'s: this module
//! does the I/O and keeps the state, and knows no HTTP of its own.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{BackendState, Pool, Pools};
use crate::http::probe as http_probe;
use crate::lifecycle::{Shutdown, Spawner};
use crate::proxy_protocol;
use crate::route::Backend;

/// What one check does. To a backend that gets PROXY headers (`--send-proxy`), a check first
/// sends the header of a connection of wssbridge's own (v2 `LOCAL`, v1 `UNKNOWN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A TCP connect.
    Tcp,
    /// `GET PATH` over HTTP/1.1; 2xx or 3xx passes.
    Http(String),
}

impl FromStr for Check {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "tcp" => Ok(Check::Tcp),
            path if path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic()) => {
                Ok(Check::Http(path.to_string()))
            }
            other => Err(format!(
                "unknown check '{other}' (use tcp, or an absolute path such as /healthz)"
            )),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Tcp => f.write_str("tcp"),
            Check::Http(path) => f.write_str(path),
        }
    }
}

/// What one backend is checked with: the route's check, and the PROXY header (v2 `LOCAL`)
/// sent first when the route sends PROXY headers to that backend.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    check: Check,
    send_proxy: Option<proxy_protocol::Version>,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.send_proxy {
            Some(proxy_protocol::Version::V1) => {
                write!(f, "{} after a PROXY v1 header", self.check)
            }
            Some(proxy_protocol::Version::V2) => {
                write!(f, "{} after a PROXY v2 header", self.check)
            }
            None => write!(f, "{}", self.check),
        }
    }
}

/// How often, and how long each check may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub interval: Duration,
    pub timeout: Duration,
}

/// The running check loops, by the backend state each checks (its address in memory: the
/// loop holds the state, so the address stays its own). By state, not by address: a
/// discovered backend and a fixed one with one address are two states, and a state a
/// reload replaced gets its loop stopped, not kept for the new one.
#[derive(Debug, Default)]
pub struct Checks {
    running: Mutex<HashMap<usize, Running>>,
}

#[derive(Debug)]
struct Running {
    probe: Probe,
    timing: Timing,
    stop: CancellationToken,
    /// Held, so no other state takes its address while the entry stands.
    _state: Arc<BackendState>,
}

fn key(state: &Arc<BackendState>) -> usize {
    Arc::as_ptr(state) as usize
}

impl Checks {
    /// Makes the running loops those `pools` ask for: starts the missing ones, restarts those
    /// whose check changed, stops those no longer asked for. A backend named by several
    /// routes with different checks gets the first route's. The supervisor calls it (at
    /// start, and after each reload): the loops are its background work, spawned through
    /// `spawner`, and end at `shutdown`'s stop.
    pub fn reconcile(&self, pools: &Pools, timing: Timing, spawner: &Spawner, shutdown: &Shutdown) {
        let mut wanted: HashMap<usize, (Probe, Arc<BackendState>)> = HashMap::new();
        for pool in pools.iter() {
            let Some(check) = &pool.check else { continue };
            let probe = Probe {
                check: check.clone(),
                send_proxy: pool.send_proxy,
            };
            for state in pool.backends() {
                match wanted.get(&key(&state)) {
                    Some((first, _)) if *first != probe => tracing::warn!(
                        backend = %state.backend,
                        "two health checks for one backend: {first} is used, {probe} is not",
                    ),
                    Some(_) => {}
                    None => {
                        wanted.insert(key(&state), (probe.clone(), state.clone()));
                    }
                }
            }
        }
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|state, r| {
            let keep = wanted
                .get(state)
                .is_some_and(|(probe, _)| *probe == r.probe && timing == r.timing);
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        for (at, (probe, state)) in wanted {
            if running.contains_key(&at) {
                continue;
            }
            let stop = shutdown.stop_child();
            spawner.background(run(state.clone(), probe.clone(), timing, stop.clone()));
            running.insert(
                at,
                Running {
                    probe,
                    timing,
                    stop,
                    _state: state,
                },
            );
        }
    }
}

/// Checks `state`'s backend until `stop`: at once, then every interval.
async fn run(state: Arc<BackendState>, probe: Probe, timing: Timing, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(timing.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = tokio::time::timeout(timing.timeout, check(&state.backend, &probe)) => {
                outcome.unwrap_or_else(|_| Err(format!("no answer within {:?}", timing.timeout)))
            }
        };
        tracing::trace!(backend = %state.backend, ?outcome, "health check");
        state.checked(outcome);
    }
}

/// `--check --online`: `backend` checked once, as its route's health checks would (a
/// connect where the route has none), within `timeout`.
pub async fn once(pool: &Pool, backend: &Backend, timeout: Duration) -> Result<(), String> {
    let probe = Probe {
        check: pool.check.clone().unwrap_or(Check::Tcp),
        send_proxy: pool.send_proxy,
    };
    tokio::time::timeout(timeout, check(backend, &probe))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

/// One check against `backend`.
async fn check(backend: &Backend, probe: &Probe) -> Result<(), String> {
    let mut stream = TcpStream::connect((backend.host(), backend.port()))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    if let Some(version) = probe.send_proxy {
        stream
            .write_all(&proxy_protocol::local(version))
            .await
            .map_err(|e| format!("write: {e}"))?;
    }
    let Check::Http(path) = &probe.check else {
        return Ok(());
    };
    let request = http_probe::request(path, &backend.to_string());
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut line = [0u8; http_probe::STATUS_LINE];
    stream
        .read_exact(&mut line)
        .await
        .map_err(|e| format!("read: {e}"))?;
    http_probe::verdict(&line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A backend's answer is peer input: a status line of any bytes fails the check, it
    /// never stops the check loop.
    #[tokio::test]
    async fn a_garbled_status_line_fails_the_check_without_a_panic() {
        for answer in [
            &b"HTTP/1.1\xc3\xa900 OK\r\n\r\n"[..],
            b"HTTP/1.1 2",
            b"\xff\xfe",
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let backend: Backend = listener.local_addr().unwrap().to_string().parse().unwrap();
            let server = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
            });
            let probe = Probe {
                check: Check::Http("/healthz".into()),
                send_proxy: None,
            };
            assert!(check(&backend, &probe).await.is_err(), "{answer:?}");
            server.await.unwrap();
        }
    }
}
