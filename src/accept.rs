//! The `accept` stage: listening sockets, the accept loop and the connection limit.
//!
//! [`Listeners`] are made here, from the flags, and kept as owned descriptors by the server
//! for as long as it accepts (so they can be handed on); `main` binds nothing itself.
//!
//! A connection over `--max-connections` is still accepted and answered 503 (a client that
//! gets an answer retries sensibly; one that hangs in the backlog does not), but only a few
//! such answers run at once so an overload cannot turn into unbounded work. Accept errors,
//! above all running out of file descriptors, back off with a capped delay and are logged at
//! most once a second, so the loop never spins while live tunnels keep being served.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::cidr::Cidr;
use crate::config::{Listening, ServingConfig};
use crate::conn::Accepted;
use crate::lifecycle::Spawner;
use crate::metrics::OutcomeLabel;
use crate::proxy_protocol::{self, Header};
use crate::state::{IpSlot, State};
use crate::{conn, redirect};

/// Pending connections the kernel queues per listener (nginx's default is 511).
const BACKLOG: i32 = 1024;
/// Accept error back-off: from 10 ms doubling to 1 s.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The sockets a server serves on, all bound before it starts (so a port in use fails
/// start-up, not a task).
#[derive(Debug, Default)]
pub struct Listeners {
    /// TLS listeners (`--listen`); the first one's port goes into redirects.
    pub tls: Vec<std::net::TcpListener>,
    /// Plain-HTTP redirect listeners (`--redirect-http`).
    pub redirect: Vec<std::net::TcpListener>,
    /// The admin listener (`--admin`): metrics and health, up until the process exits.
    pub admin: Option<std::net::TcpListener>,
    /// In a process a binary upgrade started: where it reports ready to the old one.
    pub parent: Option<crate::notify::Parent>,
    /// In a process a binary upgrade started: the old one's session-ticket keys (a
    /// `--ticket-keys` file's lines), so its tickets resume here.
    pub ticket_keys: Option<String>,
    /// Which kinds were bound from the flags (here or by the processes before an upgrade),
    /// not passed by systemd's socket units: a flag removed closes those at an upgrade.
    pub from_flags: Kinds,
}

/// One fact per kind of listener.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Kinds {
    pub tls: bool,
    pub redirect: bool,
    pub admin: bool,
}

/// The `LISTEN_FDNAMES` suffix a binary upgrade gives the sockets bound from the flags.
pub const FROM_FLAGS: &str = ".flags";

/// The `LISTEN_FDNAMES` name of the socket a binary upgrade hands the session-ticket keys on
/// (one datagram, already in it: never a file).
pub const TICKETS_FDNAME: &str = "tickets";

/// The datagram socket passed at index `i` (the upgrade's report socket, its ticket keys).
fn take_datagram(
    fds: &mut listenfd::ListenFd,
    i: usize,
) -> anyhow::Result<std::os::unix::net::UnixDatagram> {
    let fd = 3 + i;
    fds.take_unix_datagram(i)
        .with_context(|| format!("LISTEN_FDS: descriptor {fd} is not a datagram socket"))?
        .with_context(|| format!("LISTEN_FDS: descriptor {fd} was already taken"))
}

/// The one datagram of the ticket-keys socket, read without waiting (it was sent before this
/// process started).
fn read_ticket_keys(socket: &std::os::unix::net::UnixDatagram) -> anyhow::Result<String> {
    socket.set_nonblocking(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = socket.recv(&mut buf)?;
    buf.truncate(n);
    Ok(String::from_utf8(buf)?)
}

impl From<Vec<std::net::TcpListener>> for Listeners {
    fn from(tls: Vec<std::net::TcpListener>) -> Self {
        Listeners {
            tls,
            ..Listeners::default()
        }
    }
}

impl Listeners {
    /// The listeners to serve on: the sockets the service manager passed (socket activation,
    /// `inherited`, taken by [`Listeners::inherited`] at start), or, when it passed none,
    /// every listener `--listen`, `--redirect-http` and `--admin` name, bound here. A process
    /// a binary upgrade started (its `parent` is set) takes the old one's listeners its flags
    /// still name (read again: the flags file may have changed) and binds the rest; see
    /// [`Listeners::rematched`].
    pub fn open(listening: &Listening, inherited: Option<Listeners>) -> anyhow::Result<Listeners> {
        let Some(mut inherited) = inherited else {
            return Listeners::bind(listening);
        };
        if inherited.parent.is_some() {
            return inherited.rematched(listening);
        }
        if listening.tls_given {
            let given: Vec<String> = listening.tls.iter().map(|a| a.to_string()).collect();
            anyhow::bail!(
                "--listen {} and the sockets systemd passed (LISTEN_FDS): give one or the other \
                 (ListenStream= in the .socket unit, or --listen without it)",
                given.join(" ")
            );
        }
        // What the manager did not pass may still come from the flags.
        match (inherited.redirect.is_empty(), listening.redirect.is_empty()) {
            (true, false) => {
                let shared = Sharing::from(listening.reuse_port);
                for addr in &listening.redirect {
                    inherited
                        .redirect
                        .push(bind_for("--redirect-http", *addr, shared)?);
                }
                inherited.from_flags.redirect = true;
                inherited.redirect.extend(bind_if_possible(
                    "--redirect-http",
                    &listening.redirect_if_possible,
                    shared,
                ));
            }
            (false, false) => anyhow::bail!(
                "--redirect-http and a socket named http passed by systemd: give one or the other"
            ),
            _ => {}
        }
        match (&inherited.admin, listening.admin) {
            (None, Some(addr)) => {
                inherited.admin = Some(bind_for("--admin", addr, Sharing::Exclusive)?);
                inherited.from_flags.admin = true;
            }
            (Some(_), Some(_)) => anyhow::bail!(
                "--admin and a socket named admin passed by systemd: give one or the other"
            ),
            _ => {}
        }
        Ok(inherited)
    }

    /// In a process a binary upgrade started: the listeners the flags name, each the old
    /// process's socket for that address when it passed one (`:0` takes a passed socket of
    /// the same address, whatever port it got), else bound now; a passed socket no flag
    /// names any more is closed here (the old process closes its own copy when it hands
    /// over). So a `--listen` changed in the flags file needs no restart, and a
    /// `--redirect-http` or `--admin` removed from it closes. Sockets of a kind systemd's
    /// socket units passed (and the flags do not name) are kept: they are the units'.
    fn rematched(self, listening: &Listening) -> anyhow::Result<Listeners> {
        let shared = Sharing::from(listening.reuse_port);
        let from_flags = Kinds {
            tls: self.from_flags.tls || listening.tls_given,
            redirect: self.from_flags.redirect || !listening.redirect.is_empty(),
            admin: self.from_flags.admin || listening.admin.is_some(),
        };
        let tls = match from_flags.tls {
            true => rematch(
                self.tls,
                ("--listen", &listening.tls, &listening.tls_if_possible),
                shared,
            )?,
            false => self.tls,
        };
        let redirect = match from_flags.redirect {
            false => self.redirect,
            true => rematch(
                self.redirect,
                (
                    "--redirect-http",
                    &listening.redirect,
                    &listening.redirect_if_possible,
                ),
                shared,
            )?,
        };
        let admin = match from_flags.admin {
            false => self.admin,
            true => {
                let passed = self.admin.into_iter().collect();
                let wanted = listening.admin.as_slice();
                let mut one = rematch(passed, ("--admin", wanted, &[]), Sharing::Exclusive)?;
                one.pop()
            }
        };
        Ok(Listeners {
            tls,
            redirect,
            admin,
            parent: self.parent,
            ticket_keys: self.ticket_keys,
            from_flags,
        })
    }

    /// The sockets passed by the `LISTEN_FDS` convention (systemd's socket activation, and
    /// the path a binary upgrade takes): a TLS listener each, the redirect listener for
    /// one named `http` and the admin listener for one named `admin` (`LISTEN_FDNAMES`,
    /// `FileDescriptorName=` in the unit). `None` when none were passed to this process.
    ///
    /// They were not bound here, so they lack the options `bind` sets: TCP_NODELAY and
    /// keepalive are set on each now, and Linux hands them on to every socket it accepts.
    ///
    /// In a process a binary upgrade started, one more is the socket to report on to the old
    /// process (named `upgrade`): it becomes `parent`. Called once, early (the convention's
    /// variables are cleared by reading them): a start that fails can still say why.
    pub fn inherited() -> anyhow::Result<Option<Listeners>> {
        let mut fds = listenfd::ListenFd::from_env();
        if fds.len() == 0 {
            return Ok(None);
        }
        let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        let names: Vec<&str> = names.split(':').collect();
        let mut listeners = Listeners::default();
        for i in 0..fds.len() {
            let fd = 3 + i;
            if names.get(i).copied() == Some(crate::notify::PARENT_FDNAME) {
                let socket = take_datagram(&mut fds, i)?;
                listeners.parent = Some(crate::notify::Parent::new(socket));
                continue;
            }
            if names.get(i).copied() == Some(TICKETS_FDNAME) {
                let socket = take_datagram(&mut fds, i)?;
                // Without them sessions from before the upgrade do a full handshake once:
                // worth a warning, not a refusal to start.
                match read_ticket_keys(&socket) {
                    Ok(keys) => listeners.ticket_keys = Some(keys),
                    Err(e) => tracing::warn!(
                        "LISTEN_FDS: no ticket keys on descriptor {fd} ({e:#}): sessions from \
                         before the upgrade will not resume"
                    ),
                }
                continue;
            }
            let listener = fds
                .take_tcp_listener(i)
                .with_context(|| format!("LISTEN_FDS: descriptor {fd} is not a TCP listener"))?
                .with_context(|| format!("LISTEN_FDS: descriptor {fd} was already taken"))?;
            listener.set_nonblocking(true)?;
            crate::connect::tune(socket2::SockRef::from(&listener));
            let name = names.get(i).copied().unwrap_or("");
            let (kind, flags) = match name.strip_suffix(FROM_FLAGS) {
                Some(kind) => (kind, true),
                None => (name, false),
            };
            match kind {
                "http" => {
                    listeners.redirect.push(listener);
                    listeners.from_flags.redirect |= flags;
                }
                "admin" => {
                    listeners.admin = Some(listener);
                    listeners.from_flags.admin |= flags;
                }
                _ => {
                    listeners.tls.push(listener);
                    listeners.from_flags.tls |= flags;
                }
            }
        }
        if listeners.tls.is_empty() {
            anyhow::bail!("LISTEN_FDS: no socket for TLS among those passed (only http or admin)");
        }
        Ok(Some(listeners))
    }

    /// What each listener serves (`tls`, `redirect`, `admin`) and its address.
    pub fn described(&self) -> Vec<(&'static str, SocketAddr)> {
        let kinds = [("tls", &self.tls), ("redirect", &self.redirect)];
        let mut all: Vec<(&'static str, SocketAddr)> = kinds
            .iter()
            .flat_map(|(kind, ls)| {
                ls.iter()
                    .filter_map(|l| Some((*kind, l.local_addr().ok()?)))
            })
            .collect();
        all.extend(
            self.admin
                .iter()
                .filter_map(|l| Some(("admin", l.local_addr().ok()?))),
        );
        all
    }

    /// Binds every listener `--listen`, `--redirect-http` and `--admin` name; an error names the flag and address. The
    /// IPv6 twin of `:PORT` is bound where the machine has IPv6, and skipped (logged) where
    /// it has not.
    pub fn bind(listening: &Listening) -> anyhow::Result<Listeners> {
        let public = Sharing::from(listening.reuse_port);
        let bind = |flag: &str, addrs: &[SocketAddr], sharing: Sharing| {
            addrs
                .iter()
                .map(|addr| bind_for(flag, *addr, sharing))
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let mut tls = bind("--listen", &listening.tls, public)?;
        tls.extend(bind_if_possible(
            "--listen",
            &listening.tls_if_possible,
            public,
        ));
        let mut redirect = bind("--redirect-http", &listening.redirect, public)?;
        redirect.extend(bind_if_possible(
            "--redirect-http",
            &listening.redirect_if_possible,
            public,
        ));
        Ok(Listeners {
            tls,
            redirect,
            admin: bind("--admin", listening.admin.as_slice(), Sharing::Exclusive)?.pop(),
            parent: None,
            ticket_keys: None,
            from_flags: Kinds {
                tls: true,
                redirect: true,
                admin: true,
            },
        })
    }
}

/// Binds the IPv6 twins of `:PORT` addresses where the machine has IPv6: `:443` means IPv6
/// too where it can; without it, IPv4 alone (logged).
/// For each address of `flag` (those that must bind, then those bound where possible), the
/// passed socket with that address, else a new one; passed sockets left over are closed.
fn rematch(
    mut passed: Vec<std::net::TcpListener>,
    (flag, wanted, if_possible): (&str, &[SocketAddr], &[SocketAddr]),
    sharing: Sharing,
) -> anyhow::Result<Vec<std::net::TcpListener>> {
    // Exact addresses take their sockets first, so a `:0` never takes a socket another
    // address names.
    let all: Vec<(SocketAddr, bool)> = wanted
        .iter()
        .map(|a| (*a, true))
        .chain(if_possible.iter().map(|a| (*a, false)))
        .collect();
    let mut taken: Vec<Option<std::net::TcpListener>> = all.iter().map(|_| None).collect();
    for exact in [true, false] {
        for (i, (addr, _)) in all.iter().enumerate() {
            if (addr.port() != 0) != exact {
                continue;
            }
            let same = |l: &std::net::TcpListener| {
                l.local_addr().is_ok_and(|local| {
                    local == *addr || (addr.port() == 0 && local.ip() == addr.ip())
                })
            };
            if let Some(at) = passed.iter().position(same) {
                taken[i] = Some(passed.remove(at));
            }
        }
    }
    let mut out = Vec::new();
    for ((addr, must), passed) in all.into_iter().zip(taken) {
        match (passed, must) {
            (Some(listener), _) => out.push(listener),
            (None, true) => out.push(bind_for(flag, addr, sharing)?),
            (None, false) => out.extend(bind_if_possible(flag, &[addr], sharing)),
        }
    }
    Ok(out)
}

fn bind_if_possible(
    flag: &str,
    addrs: &[SocketAddr],
    sharing: Sharing,
) -> Vec<std::net::TcpListener> {
    addrs
        .iter()
        .filter_map(|addr| match bind_for(flag, *addr, sharing) {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::info!("not listening on {addr}: {e:#}");
                None
            }
        })
        .collect()
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (a tunnel needs two descriptors, and the
/// usual soft limit of 1024 would cap wssbridge at ~500 tunnels). Process state, so `main`
/// does it, before the configuration sizes `--max-connections` from the limit.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        limit.current = Some(hard);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("could not raise the file-descriptor limit to {hard}: {e}");
        }
    }
}

/// Binds a listening socket. IPv6 sockets are v6-only, so `[::]:443` and `0.0.0.0:443` can
/// both be given, as with nginx. TCP_NODELAY and keepalive are set here, once: Linux copies
/// them to every accepted socket (five system calls fewer per connection), and setting them
/// before `listen` covers connections queued before the accept loop starts.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    bind_for("--listen", addr, Sharing::Exclusive)
}

/// Whether other processes may listen on the same port (`--reuse-port`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// The port is this process's alone: a second `bind` fails with "address in use".
    Exclusive,
    /// SO_REUSEPORT: every process of the same user that sets it binds the port too, and the
    /// kernel spreads new connections among their listeners by a hash of the 4-tuple.
    ReusePort,
}

impl From<bool> for Sharing {
    fn from(reuse_port: bool) -> Self {
        if reuse_port {
            Sharing::ReusePort
        } else {
            Sharing::Exclusive
        }
    }
}

/// [`bind`], for the listener of `flag` (named in the error).
pub fn bind_for(
    flag: &str,
    addr: SocketAddr,
    sharing: Sharing,
) -> anyhow::Result<std::net::TcpListener> {
    let attempt = || -> io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if sharing == Sharing::ReusePort {
            socket.set_reuse_port(true)?;
        }
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        crate::connect::tune(socket2::SockRef::from(&socket));
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    attempt().map_err(|e| {
        let hint = match (e.kind(), addr.port()) {
            (io::ErrorKind::PermissionDenied, 1..1024) => {
                ": a port below 1024 needs CAP_NET_BIND_SERVICE: run as root, give the binary \
                 the capability (sudo setcap 'cap_net_bind_service=+ep' \"$(command -v \
                 wssbridge)\"), or run it as the package's unit, which has \
                 AmbientCapabilities=CAP_NET_BIND_SERVICE"
            }
            _ => "",
        };
        anyhow::anyhow!("{flag} {addr}: cannot listen: {e}{hint}")
    })
}

/// What a listener serves.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    /// TLS, then HTTP and tunnels.
    Tls,
    /// Plain HTTP answered with a redirect to https on this port.
    Redirect { https_port: u16 },
}

/// Accepts until shutdown stops it; every connection runs as a task the supervisor's
/// `spawner` starts, under the same limits whatever the listener serves.
pub async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    service: Service,
    spawner: Spawner,
) {
    let stop = state.shutdown.stopped();
    tokio::pin!(stop);
    let mut backoff = BACKOFF_MIN;
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = BACKOFF_MIN;
                state.metrics.accepted_by(crate::runtime::worker());
                a
            }
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!("accept failed, backing off {backoff:?}: {e}");
                    last_warning = Some(Instant::now());
                }
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        // The connection's one snapshot of the config: a reload from here on is for others.
        let config = state.serving.load_full();
        // A load balancer's connection starts with a PROXY header naming the client: its
        // per-address count waits for that. Anyone else is counted now, before a task exists.
        let proxied = Cidr::any(&config.accept_proxy_from, peer.ip());
        let ip_slot = match proxied {
            true => None,
            false => match enter(&state, peer) {
                Ok(slot) => slot,
                Err(()) => continue,
            },
        };
        let (permit, admitted) = match state.permits.clone().try_acquire_owned() {
            Ok(p) => (p, true),
            Err(_) => match state.overflow.clone().try_acquire_owned() {
                Ok(p) => (p, false),
                Err(_) => {
                    tracing::debug!(%peer, "over capacity and over the 503 budget: closing");
                    state.metrics.counted(OutcomeLabel::Refused);
                    continue;
                }
            },
        };
        let conn_state = state.clone();
        spawner.connection(async move {
            let state = conn_state;
            // The task lives as long as the connection: what runs only at its start (the
            // PROXY header) or on the other listener (redirects) runs boxed, so a tunnel's
            // task is no larger than its own pipeline.
            let (accepted, ip_slot) = match proxied {
                false => (Accepted::direct(stream, peer), ip_slot),
                // Under `force` too: with `--header-timeout 0` nothing else bounds the wait.
                true => {
                    let arrived = tokio::select! {
                        arrived = Box::pin(arrive(&state, &config, stream, peer)) => arrived,
                        _ = state.shutdown.forced() => None,
                    };
                    match arrived {
                        Some(arrived) => arrived,
                        None => return,
                    }
                }
            };
            match service {
                Service::Tls => conn::serve(&state, accepted, config, admitted).await,
                Service::Redirect { https_port } => {
                    let Accepted {
                        stream, early, at, ..
                    } = accepted;
                    let redirect = redirect::serve(
                        stream,
                        early,
                        at,
                        &config,
                        state.process.acme.as_ref(),
                        https_port,
                    );
                    let status = tokio::select! {
                        status = Box::pin(redirect) => status,
                        _ = state.shutdown.forced() => None,
                    };
                    if let Some(code) = status {
                        state.metrics.responded(code);
                    }
                    tracing::debug!(%peer, ?status, "plain HTTP redirected");
                }
            }
            drop((permit, ip_slot));
        });
    }
}

/// Counts a connection from `client` under `--max-connections-per-ip`; `Err` when that
/// address is at its limit (the connection is then closed).
fn enter(state: &State, client: SocketAddr) -> Result<Option<IpSlot>, ()> {
    let Some(per_ip) = &state.per_ip else {
        return Ok(None);
    };
    match per_ip.enter(client.ip()) {
        Some(slot) => Ok(Some(slot)),
        None => {
            tracing::debug!(%client, "at --max-connections-per-ip: closing");
            state.metrics.counted(OutcomeLabel::Refused);
            Err(())
        }
    }
}

/// Reads the PROXY header a trusted balancer must send first, within the header timeout
/// (counted from accept); the client it names is the connection's client from then on. A
/// v2 `LOCAL` (the balancer's own health check) is a connection of the balancer's own.
/// Without a valid header the connection is closed, logged at debug.
async fn arrive(
    state: &State,
    config: &ServingConfig,
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
) -> Option<(Accepted, Option<IpSlot>)> {
    let at = tokio::time::Instant::now();
    let deadline = config.timeouts.header.map(|t| at + t);
    let read = crate::deadline::within(deadline, proxy_protocol::read(&mut stream))
        .await
        .unwrap_or_else(|| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")));
    let (client, local, early) = match read {
        Ok((
            Header::Proxied {
                source,
                destination,
                ..
            },
            early,
        )) => (source, Some(destination), early),
        Ok((Header::Local, early)) => (peer, None, early),
        Err(e) => {
            tracing::debug!(%peer, "no valid PROXY header from a --accept-proxy-from peer, closing: {e}");
            state.metrics.counted(OutcomeLabel::Refused);
            return None;
        }
    };
    let slot = enter(state, client).ok()?;
    let accepted = Accepted {
        stream,
        peer,
        client,
        local,
        early,
        at,
    };
    Some((accepted, slot))
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
