//! Settings → Config: what the user asked for, and the validated configuration built from it.
//!
//! [`Settings`] is plain data (no clap: `cli` fills it from flags, tests fill it by hand).
//! [`Config::build`] loads the files it names and checks every value, failing with a message
//! that names the flag or file; nothing is bound or started. Building again from the same
//! settings is how a reload re-reads certificates: the server swaps the new `Config` in only
//! once it is complete.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::balance::health::Timing;
use crate::balance::{Balancing, Pools};
use crate::cidr::Cidr;
use crate::http::Policy;
pub use crate::http::Security;
use crate::route::{RouteSpec, RouteTable};
use crate::tls::{CertPaths, CertStore, ClientCas, TlsConfig};

/// Let's Encrypt's production directory, `--acme-directory`'s default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// `--acme` and its companions. The state directory's layout:
///
/// ```text
/// DIR/account-HASH.json                the ACME account (its key), one per directory URL: 0600
/// DIR/certs/NAME.pem, NAME.key         each name's chain and key (key 0600)
/// DIR/challenges/http-01/TOKEN         HTTP-01 answers (key authorizations)
/// DIR/challenges/tls-alpn-01/NAME      TLS-ALPN-01 answers (key authorizations)
/// DIR/locks/NAME.lock                  one order per name across instances (a lease)
/// ```
///
/// Answers live in files, not in memory, so whichever instance sharing the directory the CA
/// reaches gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// Lower-case DNS names.
    pub names: Vec<String>,
    pub email: Option<String>,
    pub directory: String,
    /// PEM roots for the directory's HTTPS (`None`: the system's).
    pub ca: Option<PathBuf>,
    pub state: PathBuf,
    /// Renew when less than this is left (`None`: when a third of the lifetime is).
    pub renew_before: Option<Duration>,
}

impl AcmeSettings {
    /// `$STATE_DIRECTORY/acme` under systemd (`StateDirectory=`), else `./wssbridge-acme`.
    pub fn default_state() -> PathBuf {
        match std::env::var_os("STATE_DIRECTORY") {
            // systemd may list several, separated by ':'; the first is the unit's own.
            Some(dirs) if !dirs.is_empty() => {
                let first = dirs
                    .to_string_lossy()
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .to_string();
                PathBuf::from(first).join("acme")
            }
            _ => PathBuf::from("wssbridge-acme"),
        }
    }

    /// Where `name`'s certificate and key are kept.
    pub fn cert_paths(&self, name: &str) -> CertPaths {
        let certs = self.state.join("certs");
        CertPaths {
            cert: certs.join(format!("{name}.pem")),
            key: certs.join(format!("{name}.key")),
        }
    }

    /// Where the answers to challenges of `kind` (`http-01`, `tls-alpn-01`) are kept.
    pub fn challenges(&self, kind: &str) -> PathBuf {
        self.state.join("challenges").join(kind)
    }
}

/// What the user asked for, before any file is read.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: Vec<SocketAddr>,
    /// Listened on too when the machine allows (the IPv6 twin of `:443`).
    pub listen_if_possible: Vec<SocketAddr>,
    /// `--listen` was given, not defaulted: an error beside sockets systemd passes.
    pub listen_given: bool,
    /// Certificate and key files, the first pair the default; none means an ephemeral
    /// self-signed certificate.
    pub certs: Vec<CertPaths>,
    /// Refuse a TLS name no certificate has (`unrecognized_name`) instead of the default.
    pub strict_sni: bool,
    /// CA files client certificates must chain to (none: no client certificates).
    pub client_cas: Vec<PathBuf>,
    /// Let clients without a certificate through (a bad one is still refused).
    pub client_auth_optional: bool,
    /// How often certificate, key and CA files are checked for new content (`None`: never).
    pub cert_poll: Option<Duration>,
    /// `--acme`: names whose certificates ACME gets and renews.
    pub acme: Option<AcmeSettings>,
    /// Plain-HTTP listeners that redirect every request to https.
    pub redirect_http: Vec<SocketAddr>,
    /// The IPv6 twins of `--redirect-http :PORT`, bound where the machine has IPv6.
    pub redirect_http_if_possible: Vec<SocketAddr>,
    /// SO_REUSEPORT on the TLS and redirect listeners (several processes on one port).
    pub reuse_port: bool,
    /// Add X-Forwarded-For, X-Forwarded-Proto, X-Real-IP and Forwarded to every request.
    pub add_forwarded: bool,
    /// Clients whose own X-Forwarded-For and Forwarded are kept (and extended).
    pub trust_forwarded: Vec<Cidr>,
    /// Peers that must begin every connection with a PROXY header.
    pub accept_proxy_from: Vec<Cidr>,
    /// The plain-HTTP admin listener (/metrics, /livez, /healthz, /readyz).
    pub admin: Option<SocketAddr>,
    /// `--admin-host`: names the admin port answers besides IP literals and localhost.
    pub admin_hosts: Vec<String>,
    /// `--pid-file`.
    pub pid_file: Option<std::path::PathBuf>,
    /// Between readiness turning 503 at shutdown and the listeners closing.
    pub shutdown_delay: Duration,
    /// Close WebSockets (1001) when shutdown begins, not when the grace ends.
    pub websocket_close_on_drain: bool,
    /// Every route, `--to` included (as `/`).
    pub routes: Vec<RouteSpec>,
    /// Policies and active checks, per route or for all.
    pub balancing: Balancing,
    /// A failed connect marks a backend down this long (`None`: never).
    pub fail_timeout: Option<Duration>,
    /// Active checks' interval (`None`: rejected, an interval must be given) and timeout.
    pub health_interval: Option<Duration>,
    pub health_timeout: Option<Duration>,
    pub timeouts: Timeouts,
    pub max_header_bytes: usize,
    /// `None`: from the file-descriptor limit.
    pub max_connections: Option<usize>,
    /// `None`: four per core.
    pub max_handshakes: Option<usize>,
    pub max_handshake_memory: usize,
    pub max_connections_per_ip: Option<usize>,
    pub security: Security,
}

impl Default for Settings {
    /// The defaults the command line documents.
    fn default() -> Self {
        Settings {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 8443))],
            listen_if_possible: Vec::new(),
            listen_given: false,
            certs: Vec::new(),
            strict_sni: false,
            client_cas: Vec::new(),
            client_auth_optional: false,
            acme: None,
            cert_poll: Some(Duration::from_secs(60)),
            redirect_http: Vec::new(),
            redirect_http_if_possible: Vec::new(),
            reuse_port: false,
            add_forwarded: false,
            trust_forwarded: Vec::new(),
            accept_proxy_from: Vec::new(),
            admin: None,
            admin_hosts: Vec::new(),
            pid_file: None,
            shutdown_delay: Duration::ZERO,
            websocket_close_on_drain: false,
            routes: Vec::new(),
            balancing: Balancing::default(),
            fail_timeout: Some(Duration::from_secs(10)),
            health_interval: Some(Duration::from_secs(5)),
            health_timeout: Some(Duration::from_secs(2)),
            timeouts: Timeouts::default(),
            max_header_bytes: 16 * 1024,
            max_connections: None,
            max_handshakes: None,
            max_handshake_memory: 64 << 20,
            max_connections_per_ip: None,
            security: Security {
                allowed_upgrades: Vec::new(),
                check_websocket_accept: false,
                sni_host_check: true,
            },
        }
    }
}

#[derive(Debug)]
pub struct Config {
    /// What this configuration was built from: a reload builds again from it.
    pub settings: Settings,
    pub listen: Vec<SocketAddr>,
    pub tls: TlsConfig,
    /// What the `http` stage reads: the route table and its rules.
    pub http: Arc<Policy>,
    /// Balancing state per route, indexed like the routes; the server shares it across reloads.
    pub pools: Pools,
    pub fail_timeout: Option<Duration>,
    pub health: Timing,
    /// `--add-forwarded`, and the clients trusted to say who they forward for.
    pub add_forwarded: bool,
    pub trust_forwarded: Vec<Cidr>,
    pub accept_proxy_from: Vec<Cidr>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// `--admin-host`.
    pub admin_hosts: Vec<String>,
}

/// `None` means off.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub handshake: Option<Duration>,
    pub header: Option<Duration>,
    /// Between two reads of a request body.
    pub body: Option<Duration>,
    pub connect: Option<Duration>,
    pub idle: Option<Duration>,
    /// The wait for the next request on a keep-alive connection, before any upgrade.
    pub keepalive: Option<Duration>,
    pub close: Option<Duration>,
    /// A write to a peer that makes no progress this long ends the tunnel.
    pub send: Option<Duration>,
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Some(Duration::from_secs(10)),
            header: Some(Duration::from_secs(10)),
            body: Some(Duration::from_secs(60)),
            connect: Some(Duration::from_secs(5)),
            idle: None,
            keepalive: Some(Duration::from_secs(75)),
            close: Some(Duration::from_secs(60)),
            send: Some(Duration::from_secs(60)),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// TLS handshakes in progress at once; more wait, under their handshake deadline.
    pub max_handshakes: usize,
    /// What every connection still reading its ClientHello may hold together.
    pub max_handshake_memory: usize,
    /// Connections one client address may hold at once (`None`: no limit).
    pub max_connections_per_ip: Option<usize>,
}

/// Far above what one process can hold (two descriptors each), and within what a semaphore takes.
const MAX_CONNECTIONS: usize = 100_000_000;

impl Config {
    /// Loads certificates and builds the route table: everything that can fail because of
    /// the settings fails here, before any socket is opened.
    pub fn build(settings: &Settings) -> anyhow::Result<Config> {
        if settings.routes.is_empty() {
            // The package's unit passes WSSBRIDGE_ARGS from /etc/default/wssbridge, which
            // ships empty: say where the flags go.
            let unit = std::env::var_os("WSSBRIDGE_ARGS").map_or(
                "",
                |_| " (under the package's unit: in WSSBRIDGE_ARGS in /etc/default/wssbridge)",
            );
            anyhow::bail!("no route: give --to BACKEND or --route PATH=BACKEND{unit}");
        }
        no_listener_twice(settings)?;
        let routes = RouteTable::new(settings.routes.clone())
            .map_err(|e| anyhow::anyhow!("--route: {e}"))?;
        let pools = Pools::new(&routes, &settings.balancing).map_err(|e| anyhow::anyhow!(e))?;
        let health = match (settings.health_interval, settings.health_timeout) {
            (Some(interval), Some(timeout)) => Timing { interval, timeout },
            (None, _) => anyhow::bail!("--health-interval must be more than 0"),
            (_, None) => anyhow::bail!("--health-timeout must be more than 0"),
        };
        let certs = match (&settings.acme, settings.certs.is_empty()) {
            (Some(acme), _) => {
                if let Some(bad) = acme
                    .names
                    .iter()
                    .find(|n| !crate::tls::acme::is_dns_name(n))
                {
                    anyhow::bail!("--acme {bad}: not a DNS name");
                }
                check_acme(acme)?;
                let names = acme.names.iter().map(|n| (n.clone(), acme.cert_paths(n)));
                CertStore::with_acme(&settings.certs, &names.collect::<Vec<_>>())?
            }
            (None, true) => CertStore::ephemeral()
                .map_err(|e| anyhow::anyhow!("generating a self-signed certificate: {e}"))?,
            (None, false) => CertStore::load(&settings.certs)?,
        };
        let client_cas = match settings.client_cas.is_empty() {
            true => None,
            false => Some(ClientCas::load(
                &settings.client_cas,
                settings.client_auth_optional,
            )?),
        };
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
        if settings.max_handshake_memory < MIN_HANDSHAKE_MEMORY {
            anyhow::bail!(
                "--max-handshake-memory must be at least 64KiB: below one large ClientHello, \
                 every TLS client would be closed"
            );
        }
        if settings.max_header_bytes < 64 {
            anyhow::bail!("--max-header-bytes must be at least 64 bytes");
        }
        let mut security = settings.security.clone();
        security.allowed_upgrades = security
            .allowed_upgrades
            .iter()
            .map(|p| p.trim().to_ascii_lowercase())
            .filter(|p| !p.is_empty())
            .collect();
        let certs = Arc::new(certs);
        let http = Policy {
            routes,
            security,
            max_header_bytes: settings.max_header_bytes,
            certs: Some(certs.clone()),
        };
        Ok(Config {
            settings: settings.clone(),
            listen: settings.listen.clone(),
            tls: TlsConfig {
                certs,
                client_cas,
                strict_sni: settings.strict_sni,
                acme_answers: settings.acme.as_ref().map(|a| a.challenges("tls-alpn-01")),
            },
            pools,
            http: Arc::new(http),
            fail_timeout: settings.fail_timeout,
            health,
            add_forwarded: settings.add_forwarded,
            trust_forwarded: settings.trust_forwarded.clone(),
            accept_proxy_from: settings.accept_proxy_from.clone(),
            timeouts: settings.timeouts,
            limits: Limits {
                max_header_bytes: settings.max_header_bytes,
                max_connections,
                max_handshakes,
                max_handshake_memory: settings.max_handshake_memory,
                max_connections_per_ip: settings.max_connections_per_ip,
            },
            admin_hosts: settings.admin_hosts.clone(),
        })
    }
}

/// What `--check` can catch of an ACME setup without contacting anyone: mistakes the CA
/// would otherwise refuse minutes later, in a background retry loop.
fn check_acme(acme: &AcmeSettings) -> anyhow::Result<()> {
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
fn no_listener_twice(settings: &Settings) -> anyhow::Result<()> {
    let listeners = settings
        .listen
        .iter()
        .map(|a| ("--listen", *a))
        .chain(
            settings
                .redirect_http
                .iter()
                .map(|a| ("--redirect-http", *a)),
        )
        .chain(settings.admin.iter().map(|a| ("--admin", *a)));
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
