//! Settings → Config: what the user asked for, and the validated configuration built from it,
//! in two parts that live differently.
//!
//! [`Settings`] is plain data (no clap: `cli` fills it from flags), split by what may change
//! it: [`ProcessSettings`] (the sockets, the limits, the shutdown's timings, the admin port,
//! ACME, the file poll) only a restart or an upgrade can change; [`ServingSettings`] (routes,
//! certificates, backends and their policies, health checks, forwarded-header rules,
//! per-connection timeouts) a reload may.
//!
//! [`Config::build`] loads the files they name and checks every value, failing with a message
//! that names the flag or file; nothing is bound or started. It gives a [`ProcessConfig`],
//! built once and owned by the supervisor, and a [`ServingConfig`], the one configuration
//! behind the state's `ArcSwap`. No run-time code reads the settings: the reload path alone keeps the
//! [`ServingSettings`] to build a new serving config from (`reload`), and swaps it in only
//! once it is complete.

mod process;
mod serving;

pub use process::{Limits, Listening, ProcessConfig, Shutdown};
pub use serving::ServingConfig;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::balance::Balancing;
use crate::cidr::Cidr;
pub use crate::http::Security;
use crate::route::RouteSpec;
use crate::runtime::Runtime;
use crate::tls::CertPaths;

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
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub process: ProcessSettings,
    pub serving: ServingSettings,
}

/// What only a restart, or an upgrade (SIGUSR2), can change.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    /// `--listen`, `--redirect-http`, `--reuse-port`, `--admin`.
    pub listening: Listening,
    /// `--admin-host`: names the admin port answers besides IP literals and localhost.
    pub admin_hosts: Vec<String>,
    /// `--pid-file`.
    pub pid_file: Option<PathBuf>,
    /// Between readiness turning 503 at shutdown and the listeners closing.
    pub shutdown_delay: Duration,
    /// How long connections may take to finish once the listeners closed.
    pub shutdown_grace: Duration,
    /// Close WebSockets (1001) when shutdown begins, not when the grace ends.
    pub websocket_close_on_drain: bool,
    /// `--acme`: names whose certificates ACME gets and renews.
    pub acme: Option<AcmeSettings>,
    /// How often certificate, key and CA files are checked for new content (`None`: never).
    pub cert_poll: Option<Duration>,
    /// `None`: from the file-descriptor limit.
    pub max_connections: Option<usize>,
    /// `None`: four per core.
    pub max_handshakes: Option<usize>,
    pub max_handshake_memory: usize,
    pub max_connections_per_ip: Option<usize>,
    /// `--runtime`.
    pub runtime: Runtime,
    /// `--threads` (`None`: one per CPU).
    pub threads: Option<usize>,
    /// `-v`, `-q`, `--log-format`: set once, when logging starts.
    pub logging: Logging,
}

/// How the log is written: its level and format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logging {
    pub level: &'static str,
    pub json: bool,
}

impl ProcessSettings {
    /// The flags whose values differ from `self` in `other`: what a reload reads from the
    /// flags file and cannot apply (`--listen` needs new sockets, the limits size
    /// semaphores, …), named as the user writes them.
    pub fn changed_flags(&self, other: &ProcessSettings) -> Vec<&'static str> {
        let (a, b) = (&self.listening, &other.listening);
        let same = [
            (
                "--listen",
                a.tls == b.tls && a.tls_if_possible == b.tls_if_possible,
            ),
            (
                "--redirect-http",
                a.redirect == b.redirect && a.redirect_if_possible == b.redirect_if_possible,
            ),
            ("--reuse-port", a.reuse_port == b.reuse_port),
            ("--admin", a.admin == b.admin),
            ("--admin-host", self.admin_hosts == other.admin_hosts),
            ("--pid-file", self.pid_file == other.pid_file),
            (
                "--shutdown-delay",
                self.shutdown_delay == other.shutdown_delay,
            ),
            (
                "--shutdown-grace",
                self.shutdown_grace == other.shutdown_grace,
            ),
            (
                "--websocket-close-on-drain",
                self.websocket_close_on_drain == other.websocket_close_on_drain,
            ),
            ("--acme", self.acme == other.acme),
            ("--cert-poll", self.cert_poll == other.cert_poll),
            (
                "--max-connections",
                self.max_connections == other.max_connections,
            ),
            (
                "--max-handshakes",
                self.max_handshakes == other.max_handshakes,
            ),
            (
                "--max-handshake-memory",
                self.max_handshake_memory == other.max_handshake_memory,
            ),
            (
                "--max-connections-per-ip",
                self.max_connections_per_ip == other.max_connections_per_ip,
            ),
            ("--runtime", self.runtime == other.runtime),
            (
                "--threads",
                crate::runtime::threads(self.threads) == crate::runtime::threads(other.threads),
            ),
            ("-v/-q", self.logging.level == other.logging.level),
            ("--log-format", self.logging.json == other.logging.json),
        ];
        same.iter()
            .filter(|(_, same)| !same)
            .map(|(flag, _)| *flag)
            .collect()
    }
}

/// Where a reload reads the settings again: the flags file with the start's command line
/// (`cli` implements it; nothing here knows the file).
pub trait Reread: Send + Sync {
    fn read(&self) -> anyhow::Result<Settings>;
    /// The file read, as the status page names it.
    fn file(&self) -> String;
    /// Where the source says what `error` is about (`PATH line N`), if one place does.
    fn locate(&self, error: &str) -> Option<String>;
}

impl std::fmt::Debug for dyn Reread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reread")
    }
}

/// What a reload may change, for new connections and new requests.
#[derive(Debug, Clone)]
pub struct ServingSettings {
    /// Certificate and key files, the first pair the default; none means an ephemeral
    /// self-signed certificate.
    pub certs: Vec<CertPaths>,
    /// Refuse a TLS name no certificate has (`unrecognized_name`) instead of the default.
    pub strict_sni: bool,
    /// `--ticket-keys`: the session-ticket key file, read at each (re)load.
    pub ticket_keys: Option<PathBuf>,
    /// CA files client certificates must chain to (none: no client certificates).
    pub client_cas: Vec<PathBuf>,
    /// Let clients without a certificate through (a bad one is still refused).
    pub client_auth_optional: bool,
    /// Add X-Forwarded-For, X-Forwarded-Proto, X-Real-IP and Forwarded to every request.
    pub add_forwarded: bool,
    /// Clients whose own X-Forwarded-For and Forwarded are kept (and extended).
    pub trust_forwarded: Vec<Cidr>,
    /// Peers that must begin every connection with a PROXY header.
    pub accept_proxy_from: Vec<Cidr>,
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
    pub security: Security,
    /// `--resolver`: the DNS servers asked for `dns:` and `srv:` backends (none: those of
    /// `/etc/resolv.conf`).
    pub resolvers: Vec<SocketAddr>,
}

impl Default for ProcessSettings {
    /// The defaults the command line documents.
    fn default() -> Self {
        ProcessSettings {
            listening: Listening {
                tls: vec![SocketAddr::from(([0, 0, 0, 0], 8443))],
                tls_if_possible: Vec::new(),
                tls_given: false,
                redirect: Vec::new(),
                redirect_if_possible: Vec::new(),
                reuse_port: false,
                admin: None,
            },
            admin_hosts: Vec::new(),
            pid_file: None,
            shutdown_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(30),
            websocket_close_on_drain: false,
            acme: None,
            cert_poll: Some(Duration::from_secs(60)),
            max_connections: None,
            max_handshakes: None,
            max_handshake_memory: 64 << 20,
            max_connections_per_ip: None,
            runtime: Runtime::WorkStealing,
            threads: None,
            logging: Logging {
                level: "info",
                json: false,
            },
        }
    }
}

impl Default for ServingSettings {
    /// The defaults the command line documents.
    fn default() -> Self {
        ServingSettings {
            certs: Vec::new(),
            strict_sni: false,
            ticket_keys: None,
            client_cas: Vec::new(),
            client_auth_optional: false,
            add_forwarded: false,
            trust_forwarded: Vec::new(),
            accept_proxy_from: Vec::new(),
            routes: Vec::new(),
            balancing: Balancing::default(),
            fail_timeout: Some(Duration::from_secs(10)),
            health_interval: Some(Duration::from_secs(5)),
            health_timeout: Some(Duration::from_secs(2)),
            timeouts: Timeouts::default(),
            max_header_bytes: 16 * 1024,
            security: Security {
                allowed_upgrades: Vec::new(),
                check_websocket_accept: false,
                sni_host_check: true,
            },
            resolvers: Vec::new(),
        }
    }
}

/// A configuration as a start builds it: the part built once, the part a reload replaces,
/// and what the reload path builds the next serving part from.
#[derive(Debug)]
pub struct Config {
    pub process: ProcessConfig,
    pub serving: ServingConfig,
    /// The settings it was built from (the reload path builds the next serving part from
    /// them, and compares the process part).
    pub source: Settings,
    /// Where a reload reads the settings again (`None`: no flags file, a reload re-reads the
    /// files the settings name).
    pub reread: Option<std::sync::Arc<dyn Reread>>,
}

/// Per-connection timeouts; `None` means off.
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
        }
    }
}

impl Config {
    /// Loads certificates and builds the route table: everything that can fail because of
    /// the settings fails here, before any socket is opened.
    pub fn build(settings: &Settings) -> anyhow::Result<Config> {
        let process = ProcessConfig::build(&settings.process)?;
        let serving = ServingConfig::build(&settings.serving, process.acme.as_ref())?;
        Ok(Config {
            process,
            serving,
            source: settings.clone(),
            reread: None,
        })
    }
}
