//! The process config: built once at start from [`ProcessSettings`] and owned by the
//! supervisor. The sockets, the limits the semaphores are sized by, the shutdown's timings,
//! the admin port, ACME and the file poll: a reload cannot change them (an upgrade, SIGUSR2,
//! starts a process that builds its own).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{AcmeSettings, ProcessSettings};
use crate::runtime::Runtime;

/// What to listen on (`--listen`, `--redirect-http`, `--reuse-port`, `--admin`), checked for
/// clashes; `accept` binds it (or takes it from systemd or
/// the process an upgrade started).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listening {
    pub tls: Vec<SocketAddr>,
    /// Listened on too when the machine allows (the IPv6 twin of `:443`).
    pub tls_if_possible: Vec<SocketAddr>,
    /// `--listen` was given, not defaulted: an error beside sockets systemd passes.
    pub tls_given: bool,
    pub redirect: Vec<SocketAddr>,
    pub redirect_if_possible: Vec<SocketAddr>,
    pub reuse_port: bool,
    pub admin: Option<SocketAddr>,
}

/// The shutdown's timings (`server` fires its stages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shutdown {
    /// Between readiness turning 503 and the listeners closing.
    pub delay: Duration,
    /// How long connections may take to finish once the listeners closed.
    pub grace: Duration,
    /// Close WebSockets (1001) when shutdown begins, not when the grace ends.
    pub websocket_close_on_drain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// TLS handshakes in progress at once; more wait, under their handshake deadline.
    pub max_handshakes: usize,
    /// What every connection still reading its ClientHello may hold together.
    pub max_handshake_memory: usize,
    /// Connections one client address may hold at once (`None`: no limit).
    pub max_connections_per_ip: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct ProcessConfig {
    pub listening: Listening,
    /// `--admin-host`.
    pub admin_hosts: Vec<String>,
    pub pid_file: Option<PathBuf>,
    pub shutdown: Shutdown,
    pub acme: Option<AcmeSettings>,
    /// How often certificate, key and CA files are checked for new content (`None`: never).
    pub cert_poll: Option<Duration>,
    pub limits: Limits,
    /// `--runtime` and `--threads`: how many threads serve connections, and how.
    pub runtime: Runtime,
    pub threads: usize,
}

/// Far above what one process can hold (two descriptors each), and within what a semaphore takes.
const MAX_CONNECTIONS: usize = 100_000_000;

impl ProcessConfig {
    pub fn build(settings: &ProcessSettings) -> anyhow::Result<ProcessConfig> {
        no_listener_twice(&settings.listening)?;
        if let Some(acme) = &settings.acme {
            check_acme(acme)?;
        }
        let max_connections = match settings.max_connections {
            Some(0) => anyhow::bail!("--max-connections must be at least 1"),
            Some(n) if n > MAX_CONNECTIONS => {
                anyhow::bail!("--max-connections {n} is more than {MAX_CONNECTIONS}")
            }
            Some(n) => n,
            None => default_max_connections(),
        };
        let max_handshakes = match settings.max_handshakes {
            Some(0) => anyhow::bail!("--max-handshakes must be at least 1"),
            Some(n) => n.min(MAX_CONNECTIONS),
            None => default_max_handshakes(),
        };
        if settings.max_connections_per_ip == Some(0) {
            anyhow::bail!("--max-connections-per-ip must be at least 1");
        }
        let threads = match (settings.threads, crate::runtime::threads(settings.threads)) {
            (_, Some(n)) => n,
            (Some(0), None) => anyhow::bail!("--threads must be at least 1"),
            (asked, None) => anyhow::bail!(
                "--threads {} is more than {}",
                asked.unwrap_or_default(),
                crate::runtime::MAX_THREADS
            ),
        };
        if settings.max_handshake_memory < MIN_HANDSHAKE_MEMORY {
            anyhow::bail!(
                "--max-handshake-memory must be at least 64KiB: below one large ClientHello, \
                 every TLS client would be closed"
            );
        }
        Ok(ProcessConfig {
            listening: settings.listening.clone(),
            admin_hosts: settings.admin_hosts.clone(),
            pid_file: settings.pid_file.clone(),
            shutdown: Shutdown {
                delay: settings.shutdown_delay,
                grace: settings.shutdown_grace,
                websocket_close_on_drain: settings.websocket_close_on_drain,
            },
            acme: settings.acme.clone(),
            cert_poll: settings.cert_poll,
            limits: Limits {
                max_connections,
                max_handshakes,
                max_handshake_memory: settings.max_handshake_memory,
                max_connections_per_ip: settings.max_connections_per_ip,
            },
            runtime: settings.runtime,
            threads,
        })
    }
}

/// What `--check` can catch of an ACME setup without contacting anyone: mistakes the CA
/// would otherwise refuse minutes later, in a background retry loop.
fn check_acme(acme: &AcmeSettings) -> anyhow::Result<()> {
    if let Some(bad) = acme
        .names
        .iter()
        .find(|n| !crate::tls::acme::is_dns_name(n))
    {
        anyhow::bail!("--acme {bad}: not a DNS name");
    }
    if let Some(ip) = acme
        .names
        .iter()
        .find(|n| n.parse::<std::net::IpAddr>().is_ok())
    {
        anyhow::bail!(
            "--acme {ip}: an IP address; ACME CAs such as Let's Encrypt issue for DNS names: \
             give the name whose DNS points at this machine"
        );
    }
    if !acme.directory.starts_with("https://") {
        anyhow::bail!(
            "--acme-directory {}: an ACME directory is served over https:// (RFC 8555 §6.1)",
            acme.directory
        );
    }
    if let Some(email) = &acme.email {
        let looks_right = email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !local.contains(char::is_whitespace)
                && domain.contains('.')
                && crate::tls::acme::is_dns_name(domain)
        });
        if !looks_right {
            anyhow::bail!("--acme-email {email}: not an e-mail address (you@example.com)");
        }
    }
    Ok(())
}

/// The smallest `--max-handshake-memory`: a ClientHello may be up to 64 KiB.
const MIN_HANDSHAKE_MEMORY: usize = 64 * 1024;

/// Refuses two listeners on one address (`--listen :8443 --redirect-http :8443`, or one
/// `--listen` twice), naming both flags, where binding would only say "Address already in
/// use" with no hint that the clash is with itself. Port 0 (any free port) never clashes.
fn no_listener_twice(listening: &Listening) -> anyhow::Result<()> {
    let listeners = listening
        .tls
        .iter()
        .map(|a| ("--listen", *a))
        .chain(listening.redirect.iter().map(|a| ("--redirect-http", *a)))
        .chain(listening.admin.iter().map(|a| ("--admin", *a)));
    let mut seen: Vec<(&str, SocketAddr)> = Vec::new();
    for (flag, addr) in listeners {
        let clash = seen.iter().find(|(_, other)| {
            addr.port() != 0
                && addr.port() == other.port()
                && addr.is_ipv4() == other.is_ipv4()
                && (addr.ip() == other.ip()
                    || addr.ip().is_unspecified()
                    || other.ip().is_unspecified())
        });
        if let Some((other_flag, other)) = clash {
            anyhow::bail!(
                "{other_flag} {other} and {flag} {addr} are the same address: give each its own port"
            );
        }
        seen.push((flag, addr));
    }
    Ok(())
}

/// Descriptors kept back from the connection limit: listeners, logs, DNS look-ups, and the
/// connections that are over the limit and are being answered 503.
const RESERVED_FDS: u64 = 128;

/// Four handshakes per core keep every core busy with crypto while leaving room for the
/// established tunnels, so a handshake flood cannot starve them.
pub fn default_max_handshakes() -> usize {
    4 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Two descriptors per tunnel from what the soft RLIMIT_NOFILE allows.
pub fn default_max_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    (soft.saturating_sub(RESERVED_FDS) / 2).max(1) as usize
}
