//! Command-line flags and their conversion into plain [`Settings`].
//!
//! The only module that knows clap: `Config::build` takes the `Settings` and never reaches
//! back to the command line. Each value type has its own `FromStr`, so an error names the flag and says
//! what is wrong. Every flag can also come from `WSSBRIDGE_<FLAG>`; repeatable flags there
//! take space-separated values.

mod file;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};

use crate::balance::affinity::{Affinity, SameSite};
use crate::balance::{Balancing, Check, PerRoute, Strategy};
use crate::cidr::Cidr;
use crate::config::{
    AcmeSettings, Listening, Logging, ProcessSettings, Reread, Security, ServingSettings, Settings,
    Timeouts,
};
use crate::proxy_protocol;
use crate::route::{RouteSpec, Upstream};
use crate::runtime::Runtime;
use crate::tls::CertPaths;

/// The end of `-h`.
const AFTER_HELP: &str = "Every flag can also be set as WSSBRIDGE_<FLAG> (WSSBRIDGE_LISTEN, …). \
Examples and each flag in full: wssbridge --help, or man wssbridge.\n\
Exit status: 0 after a clean shutdown; 2 when it cannot start (a bad flag, an unreadable file, \
a port in use: nothing was served); 1 when serving fails after start.";

/// The end of `--help`: the variables, the exit status, then three commands people start
/// from, last.
const AFTER_LONG_HELP: &str =
    "Every flag can also be set as WSSBRIDGE_<FLAG> (WSSBRIDGE_LISTEN, WSSBRIDGE_CERT, …); a \
repeatable flag takes space-separated values there.

Exit status: 0 after a clean shutdown; 2 when it cannot start (a bad flag, an unreadable file, \
a port in use: nothing was served); 1 when serving fails after start.

Examples:
  The one command: TLS on 443, HTTP on 80 redirected, all to the app on 3000:
    wssbridge --listen :443 --redirect-http :80 \\
      --cert fullchain.pem --key privkey.pem --to 127.0.0.1:3000

  A socket.io cluster: a Node process per core, sticky by address, checked:
    wssbridge --listen :443 --cert chat.pem --key chat.key \\
      --route /socket.io/=127.0.0.1:3000,127.0.0.1:3001 \\
      --balance ip-hash --health-check /healthz --to 127.0.0.1:8080

  Certbot's files, reloaded within a minute of a renewal (at once on SIGHUP):
    wssbridge --listen :443 --cert-poll 1m --to 127.0.0.1:3000 \\
      --cert /etc/letsencrypt/live/chat.example.com/fullchain.pem \\
      --key /etc/letsencrypt/live/chat.example.com/privkey.pem";

/// TLS in front of WebSocket and HTTP servers: terminate wss:// and https://, route the first
/// request by host and path, then tunnel the bytes unchanged.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    long_about = None,
    max_term_width = 100,
    after_help = AFTER_HELP,
    after_long_help = AFTER_LONG_HELP
)]
pub struct Args {
    /// Address to listen on for TLS (:443, 0.0.0.0:443, localhost:8443).
    ///
    /// Address to listen on: ADDR:PORT (0.0.0.0:443, [::]:443, 127.0.0.1:8443,
    /// localhost:8443), or :PORT / PORT for every address (IPv4, and IPv6 where the machine
    /// has it); repeatable.
    #[arg(help_heading = "Listening", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_LISTEN", value_name = "ADDR", default_value = "0.0.0.0:8443",
          value_delimiter = ' ', action = ArgAction::Append)]
    pub listen: Vec<ListenArg>,

    /// Plain-HTTP address that redirects to https (e.g. :80).
    ///
    /// Plain-HTTP address answering every request 308 Permanent Redirect to https://, in
    /// every form --listen takes (:80, 80, 0.0.0.0:80, [::]:80, localhost:80); repeatable.
    #[arg(help_heading = "Listening", hide_env = true)]
    #[arg(long = "redirect-http", env = "WSSBRIDGE_REDIRECT_HTTP", value_name = "ADDR",
          value_delimiter = ' ', action = ArgAction::Append)]
    pub redirect_http: Vec<ListenArg>,

    /// Share the listening ports with other processes (SO_REUSEPORT).
    ///
    /// Set SO_REUSEPORT on the --listen and --redirect-http sockets, as nginx's `listen …
    /// reuseport`: several wssbridge processes (one per core, or several to pass one
    /// process's descriptor limit) listen on one port and the kernel spreads new connections
    /// among them. Every process sharing a port must set it and run as the same user. The
    /// --admin port is never shared: each process's health is its own.
    #[arg(help_heading = "Listening", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_REUSE_PORT")]
    pub reuse_port: bool,

    /// PEM certificate chain (repeat with --key for several names).
    ///
    /// PEM certificate chain: the server certificate first, then intermediates. Repeat with
    /// --key for several names: the n-th --cert goes with the n-th --key; the one whose SAN
    /// names the client's SNI serves it (exact, then wildcard), the first is the default.
    /// Without --cert/--key an ephemeral self-signed certificate for localhost is generated.
    #[arg(help_heading = "Certificates", hide_env = true)]
    #[arg(long = "cert", env = "WSSBRIDGE_CERT", value_name = "PATH", requires = "keys",
          value_delimiter = ' ', action = ArgAction::Append)]
    pub certs: Vec<PathBuf>,

    /// PEM private key, one per --cert.
    ///
    /// PEM private key (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA P-256/P-384 or Ed25519), one per
    /// --cert, in the same order.
    #[arg(help_heading = "Certificates", hide_env = true)]
    #[arg(long = "key", env = "WSSBRIDGE_KEY", value_name = "PATH", requires = "certs",
          value_delimiter = ' ', action = ArgAction::Append)]
    pub keys: Vec<PathBuf>,

    /// Refuse a TLS name no certificate has.
    ///
    /// Refuse a TLS name (SNI) that no certificate has, with the unrecognized_name alert,
    /// instead of serving the first certificate. Clients that send no SNI get the first.
    #[arg(help_heading = "Certificates", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_STRICT_SNI")]
    pub strict_sni: bool,

    /// Session-ticket keys shared by a fleet, from this file.
    ///
    /// A file of session-ticket keys, one per line, each the base64 of 80 random bytes
    /// (`openssl rand 80 | base64 -w0`); the first line issues tickets, every line is
    /// accepted; read again at each reload. Instances sharing the file resume each other's
    /// sessions, so a client moved to another instance skips the full handshake. Rotate by
    /// adding a new first line and keeping the old one below it for 6 hours. Refused when
    /// others may read it or its group may write it (chmod 600). Without it, the process's
    /// own key, replaced every 6 hours and handed to the new process in an upgrade (SIGUSR2).
    #[arg(help_heading = "Certificates", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_TICKET_KEYS", value_name = "PATH")]
    pub ticket_keys: Option<PathBuf>,

    /// Reload certificate files when they change, checked this often.
    ///
    /// Check certificate, key and CA files this often and reload them when their content
    /// changed (certbot renewals, symlinks included); 0 = off. SIGHUP reloads at once.
    #[arg(help_heading = "Certificates", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_CERT_POLL",
        value_name = "DURATION",
        default_value = "60s"
    )]
    pub cert_poll: Timeout,

    /// Get and renew a certificate for NAME by ACME (Let's Encrypt).
    ///
    /// Get a certificate for NAME from an ACME CA (Let's Encrypt by default), serve it, and
    /// renew it, with no certbot: TLS-ALPN-01 on the TLS listeners, or HTTP-01 on
    /// --redirect-http. NAME's DNS must point at this machine and port 443 (or 80) be
    /// reachable: --acme does not change --listen's default (0.0.0.0:8443), so write
    /// --listen :443 (and --redirect-http :80), or put a balancer's 443 in front. Repeatable.
    #[arg(help_heading = "Certificates", hide_env = true)]
    #[arg(long = "acme", env = "WSSBRIDGE_ACME", value_name = "NAME",
          value_delimiter = ' ', action = ArgAction::Append)]
    pub acme: Vec<String>,

    /// The ACME account's contact address.
    ///
    /// The contact address of the ACME account (the CA writes about expiring certificates
    /// and problems).
    #[arg(help_heading = "Certificates", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_ACME_EMAIL", value_name = "ADDR")]
    pub acme_email: Option<String>,

    /// The ACME directory URL.
    ///
    /// The ACME CA's directory URL (Let's Encrypt's staging CA, for trying things out:
    /// https://acme-staging-v02.api.letsencrypt.org/directory).
    #[arg(help_heading = "Certificates", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_ACME_DIRECTORY",
        value_name = "URL",
        default_value = crate::config::LETS_ENCRYPT
    )]
    pub acme_directory: String,

    /// PEM roots trusted for the ACME directory's HTTPS.
    ///
    /// PEM root certificate trusted for the ACME directory's own HTTPS, for a private CA
    /// (the system's roots otherwise).
    #[arg(help_heading = "Certificates", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_ACME_CA", value_name = "PATH")]
    pub acme_ca: Option<PathBuf>,

    /// Where ACME keeps its account and certificates.
    ///
    /// Directory for the ACME account key, certificates and challenge answers (created 0700;
    /// refused if another user can write it). Share it between instances behind one balancer
    /// so they make one order per name [default: $STATE_DIRECTORY/acme under systemd, else
    /// ./wssbridge-acme].
    #[arg(help_heading = "Certificates", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_ACME_STATE", value_name = "DIR")]
    pub acme_state: Option<PathBuf>,

    /// Renew when less than this is left.
    ///
    /// Renew an ACME certificate when less than this is left of it [default: when a third of
    /// its lifetime is left].
    #[arg(help_heading = "Certificates", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_ACME_RENEW_BEFORE",
        value_name = "DURATION",
        default_value = "0",
        hide_default_value = true
    )]
    pub acme_renew_before: Span,

    /// CA certificates clients must present a certificate from (mTLS).
    ///
    /// PEM file of CA certificates: clients must present a certificate that chains to one
    /// of them (mutual TLS); repeatable.
    #[arg(help_heading = "Certificates", hide_env = true)]
    #[arg(long = "client-ca", env = "WSSBRIDGE_CLIENT_CA", value_name = "PATH",
          value_delimiter = ' ', action = ArgAction::Append)]
    pub client_cas: Vec<PathBuf>,

    /// With --client-ca: required or optional.
    ///
    /// With --client-ca: `required` refuses clients without a certificate; `optional` lets
    /// them through (a certificate that does not chain is still refused).
    #[arg(help_heading = "Certificates", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_CLIENT_AUTH", value_enum, default_value_t = ClientAuth::Required,
          requires = "client_cas")]
    pub client_auth: ClientAuth,

    /// Route [HOST]PATH=BACKEND[,BACKEND...] (e.g. /socket.io/=127.0.0.1:3000).
    ///
    /// Route rule [HOST]PATH=BACKEND[,BACKEND...], e.g. /socket.io/=127.0.0.1:3000; repeatable.
    /// A host route beats a hostless one, then the longest path prefix wins (at '/' boundaries).
    /// Several backends are used round-robin, failing over to the next.
    #[arg(help_heading = "Routing", hide_env = true)]
    #[arg(long = "route", env = "WSSBRIDGE_ROUTE", value_name = "RULE", value_delimiter = ' ',
          action = ArgAction::Append)]
    pub routes: Vec<RouteSpec>,

    /// Shorthand for --route /=BACKEND[,BACKEND...].
    #[arg(help_heading = "Routing", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_TO", value_name = "BACKEND", value_parser = parse_backends)]
    pub to: Option<Backends>,

    /// Allow Upgrade to this protocol besides websocket.
    ///
    /// Allow `Upgrade` to this protocol besides websocket (e.g. h2c); repeatable. Any other
    /// upgrade is answered 400.
    #[arg(help_heading = "Routing", hide_env = true)]
    #[arg(long = "allow-upgrade", env = "WSSBRIDGE_ALLOW_UPGRADE", value_name = "PROTOCOL",
          value_delimiter = ' ', action = ArgAction::Append)]
    pub allow_upgrades: Vec<String>,

    /// Open a tunnel only if the backend's Sec-WebSocket-Accept is right.
    ///
    /// Open a WebSocket tunnel only if the backend's Sec-WebSocket-Accept matches the
    /// client's key (RFC 6455).
    #[arg(help_heading = "Routing", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_CHECK_WEBSOCKET_ACCEPT")]
    pub check_websocket_accept: bool,

    /// Do not answer 421 when Host and the TLS name differ.
    ///
    /// Do not answer 421 when the Host header names a different host-routed name than the
    /// TLS SNI (domain fronting).
    #[arg(help_heading = "Routing", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_ALLOW_SNI_MISMATCH")]
    pub allow_sni_mismatch: bool,

    /// round-robin, least-conn, ip-hash or cookie, for every route or one.
    ///
    /// How a route spreads connections over its backends: round-robin, least-conn (fewest
    /// live connections), ip-hash (sticky by client address) or cookie (sticky by a cookie
    /// the first response sets: for clients that share an address or change it, as behind
    /// a NAT or on a phone; a request without a valid one is placed by least-conn); POLICY
    /// for every route or [HOST]PATH=POLICY for one, named as its --route names it;
    /// repeatable.
    #[arg(help_heading = "Balancing", hide_env = true)]
    #[arg(long = "balance", env = "WSSBRIDGE_BALANCE", value_name = "[[HOST]PATH=]POLICY",
          value_delimiter = ' ', action = ArgAction::Append)]
    pub balance: Vec<PerRoute<Strategy>>,

    /// The affinity cookie's name, under --balance cookie.
    ///
    /// The name of the cookie --balance cookie sets (Set-Cookie: NAME=VALUE; Path=the
    /// route's path; Secure; HttpOnly; SameSite=Lax), whose value names the backend (a keyed
    /// hash, not its address). The application's own cookies pass untouched.
    #[arg(help_heading = "Balancing", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_AFFINITY_COOKIE",
        value_name = "NAME",
        default_value = "wssbridge"
    )]
    pub affinity_cookie: String,

    /// Key of the affinity cookie's value (same on every instance of a fleet).
    ///
    /// The key of the affinity cookie's value (HMAC-SHA256 of the backend as written).
    /// Without it a fixed key is used: values are stable, but anyone can compute which
    /// backend address a value names. Give every instance of a fleet the same secret (and
    /// the same backend list), so a cookie one sets, another honours.
    #[arg(help_heading = "Balancing", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_AFFINITY_SECRET", value_name = "SECRET")]
    pub affinity_secret: Option<String>,

    /// SameSite of the affinity cookie: lax, strict or none.
    ///
    /// SameSite of the affinity cookie: lax (the default), strict, or none, for a page on
    /// another site than the socket.io endpoint (a cross-site request sends a Lax cookie
    /// only on top-level navigation). Secure is always set.
    #[arg(help_heading = "Balancing", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_AFFINITY_SAMESITE",
        value_name = "lax|strict|none",
        default_value = "lax"
    )]
    pub affinity_samesite: SameSite,

    /// Max-Age of the affinity cookie (0: a session cookie).
    ///
    /// How long the affinity cookie lasts (Max-Age): 0, the default, makes it a session
    /// cookie that ends when the browser closes, as a socket.io session does.
    #[arg(help_heading = "Balancing", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_AFFINITY_MAX_AGE",
        value_name = "DURATION",
        default_value = "0"
    )]
    pub affinity_max_age: Timeout,

    /// How long a failed connect marks a backend down.
    ///
    /// A failed connect marks that backend down this long: connections try the others first
    /// (0 = off). When every backend of a route is down, all are tried anyway.
    #[arg(help_heading = "Balancing", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_FAIL_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub fail_timeout: Timeout,

    /// DNS server for dns: and srv: backends (IP or IP:PORT; repeatable).
    ///
    /// The DNS server asked for the backends of dns:NAME:PORT and srv:NAME (IP, or IP:PORT;
    /// port 53 by default); repeatable, tried together. Default: the servers of
    /// /etc/resolv.conf (with its search domains). A plain NAME:PORT backend is resolved by
    /// the system at each connect, as before, and never asks these.
    #[arg(help_heading = "Balancing", hide_env = true)]
    #[arg(long = "resolver", env = "WSSBRIDGE_RESOLVER", value_name = "ADDR",
          value_parser = parse_resolver, value_delimiter = ' ', action = ArgAction::Append)]
    pub resolvers: Vec<SocketAddr>,

    /// Active health check: tcp or a path such as /healthz.
    ///
    /// Active health check: tcp (a connect) or a path such as /healthz (GET, 2xx or 3xx
    /// passes); CHECK for every route or [HOST]PATH=CHECK for one; repeatable. Down after 3
    /// failures in a row, up after 2 passes.
    #[arg(help_heading = "Balancing", hide_env = true)]
    #[arg(long = "health-check", env = "WSSBRIDGE_HEALTH_CHECK", value_name = "[[HOST]PATH=]CHECK",
          value_delimiter = ' ', action = ArgAction::Append)]
    pub health_checks: Vec<PerRoute<Check>>,

    /// Time between two health checks of one backend.
    #[arg(help_heading = "Balancing", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_HEALTH_INTERVAL",
        value_name = "DURATION",
        default_value = "5s"
    )]
    pub health_interval: Timeout,

    /// Time one health check may take.
    #[arg(help_heading = "Balancing", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_HEALTH_TIMEOUT",
        value_name = "DURATION",
        default_value = "2s"
    )]
    pub health_timeout: Timeout,

    /// Add the client's address: X-Forwarded-For, X-Real-IP, Forwarded.
    ///
    /// Add X-Forwarded-For, X-Forwarded-Proto, X-Real-IP and Forwarded (the client's address)
    /// to every request head forwarded; the client's own are removed first.
    #[arg(help_heading = "Forwarding", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_ADD_FORWARDED")]
    pub add_forwarded: bool,

    /// A proxy in front whose X-Forwarded-For is kept and extended.
    ///
    /// A proxy in front whose X-Forwarded-For and Forwarded are kept and extended, not
    /// removed (address or CIDR range); repeatable.
    #[arg(help_heading = "Forwarding", hide_env = true)]
    #[arg(long = "trust-forwarded", env = "WSSBRIDGE_TRUST_FORWARDED", value_name = "CIDR",
          value_delimiter = ' ', action = ArgAction::Append)]
    pub trust_forwarded: Vec<Cidr>,

    /// Send a PROXY protocol header (v1 or v2) to backends.
    ///
    /// Write a PROXY protocol header (v1 or v2) to backends before any byte; for every route
    /// or [HOST]PATH=v1|v2 for one; repeatable.
    #[arg(help_heading = "Forwarding", hide_env = true)]
    #[arg(long = "send-proxy", env = "WSSBRIDGE_SEND_PROXY", value_name = "[[HOST]PATH=]v1|v2",
          value_delimiter = ' ', action = ArgAction::Append)]
    pub send_proxy: Vec<PerRoute<proxy_protocol::Version>>,

    /// Read a PROXY header from this address or range (a balancer).
    ///
    /// Connections from this address or range (a load balancer) must begin with a PROXY v1
    /// or v2 header, whose client address is then used for everything; repeatable.
    #[arg(help_heading = "Forwarding", hide_env = true)]
    #[arg(long = "accept-proxy-from", env = "WSSBRIDGE_ACCEPT_PROXY_FROM", value_name = "CIDR",
          value_delimiter = ' ', action = ArgAction::Append)]
    pub accept_proxy_from: Vec<Cidr>,

    /// Time for the TLS handshake.
    ///
    /// Time allowed for the TLS handshake (0 = off).
    #[arg(help_heading = "Timeouts", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_HANDSHAKE_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub handshake_timeout: Timeout,

    /// Time for a request head (the first from accept).
    ///
    /// Time from accept to the end of the first request head, and from the first byte of
    /// each later head on a keep-alive connection to its end (0 = off).
    #[arg(help_heading = "Timeouts", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_HEADER_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s"
    )]
    pub header_timeout: Timeout,

    /// Time a request body may go without a byte (nginx's client_body_timeout).
    ///
    /// How long a request body may go between two reads from the client before the request is
    /// answered 408 (or, once its response has begun, the connection is closed) (0 = off). A
    /// body that keeps moving is never cut; a backend that stops reading it is --send-timeout's.
    #[arg(help_heading = "Timeouts", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_BODY_TIMEOUT",
        value_name = "DURATION",
        default_value = "60s"
    )]
    pub body_timeout: Timeout,

    /// Time to connect to one backend.
    ///
    /// Time allowed to connect to one backend (0 = off).
    #[arg(help_heading = "Timeouts", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_CONNECT_TIMEOUT",
        value_name = "DURATION",
        default_value = "5s"
    )]
    pub connect_timeout: Timeout,

    /// Close a tunnel silent this long (off: WebSockets idle for hours).
    ///
    /// Close a tunnel after this long with no bytes either way (0 = off: WebSockets may be
    /// silent for hours; TCP keepalive finds dead peers instead).
    #[arg(help_heading = "Timeouts", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_IDLE_TIMEOUT",
        value_name = "DURATION",
        default_value = "0"
    )]
    pub idle_timeout: Timeout,

    /// How long a keep-alive connection may wait for its next request.
    ///
    /// How long a keep-alive connection may wait for its next request before it is closed
    /// quietly (0 = off). Upgraded tunnels are not affected: see --idle-timeout.
    #[arg(help_heading = "Timeouts", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_KEEPALIVE_TIMEOUT",
        value_name = "DURATION",
        default_value = "75s"
    )]
    pub keepalive_timeout: Timeout,

    /// How long a half-closed tunnel may stay silent.
    ///
    /// Once one direction of a tunnel has closed, how long the other may be silent before the
    /// tunnel is closed (0 = off).
    #[arg(help_heading = "Timeouts", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_CLOSE_TIMEOUT",
        value_name = "DURATION",
        default_value = "60s"
    )]
    pub close_timeout: Timeout,

    /// End a tunnel whose peer stopped reading for this long.
    ///
    /// A write to a client or backend that makes no progress this long (the peer stopped
    /// reading) ends the tunnel and frees what it held (0 = off).
    #[arg(help_heading = "Timeouts", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_SEND_TIMEOUT",
        value_name = "DURATION",
        default_value = "60s"
    )]
    pub send_timeout: Timeout,

    /// On SIGTERM, how long /readyz says 503 before the listeners close.
    ///
    /// On SIGTERM/SIGINT, how long /readyz answers 503 while the listeners still accept, so
    /// a balancer in front stops sending first (0 = close the listeners at once).
    #[arg(help_heading = "Timeouts", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_SHUTDOWN_DELAY",
        value_name = "DURATION",
        default_value = "0"
    )]
    pub shutdown_delay: Timeout,

    /// On SIGTERM, how long live tunnels may go on.
    ///
    /// On SIGTERM/SIGINT, how long live tunnels may go on before they are closed.
    #[arg(help_heading = "Timeouts", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_SHUTDOWN_GRACE",
        value_name = "DURATION",
        default_value = "30s"
    )]
    pub shutdown_grace: Timeout,

    /// On SIGTERM, close WebSockets at once, not at the grace's end.
    ///
    /// On SIGTERM/SIGINT (and in the old process of a SIGUSR2 upgrade), end each WebSocket
    /// tunnel at once with a close frame, 1001 Going Away, so its client reconnects to an
    /// instance that accepts, instead of at the end of --shutdown-grace. Either way the
    /// closes are spread over 1.5 s and each is sent between two frames.
    #[arg(help_heading = "Timeouts", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_WEBSOCKET_CLOSE_ON_DRAIN")]
    pub websocket_close_on_drain: bool,

    /// Memory all connections still reading their ClientHello may hold together.
    ///
    /// Memory that every connection still reading its ClientHello may hold together. A silent
    /// connection holds none (its task and socket only); the bytes of a ClientHello are held
    /// as they come, and beyond this the connections that have held bytes the longest are
    /// closed first (an honest ClientHello arrives whole in one round trip).
    #[arg(help_heading = "Limits", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_MAX_HANDSHAKE_MEMORY",
        value_name = "SIZE",
        default_value = "64MiB"
    )]
    pub max_handshake_memory: Size,

    /// Largest request head (431 beyond).
    ///
    /// Largest first request head accepted (answered 431 beyond).
    #[arg(help_heading = "Limits", hide_env = true)]
    #[arg(
        long,
        env = "WSSBRIDGE_MAX_HEADER_BYTES",
        value_name = "SIZE",
        default_value = "16KiB"
    )]
    pub max_header_bytes: Size,

    /// Connections served at once (503 beyond).
    ///
    /// Connections served at once; more are answered 503 [default: from the file-descriptor
    /// limit, two descriptors per tunnel].
    #[arg(help_heading = "Limits", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// TLS handshakes in progress at once.
    ///
    /// TLS handshakes in progress at once; more wait for a slot (within --handshake-timeout),
    /// so a handshake flood cannot starve established tunnels [default: 4 per core].
    #[arg(help_heading = "Limits", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_MAX_HANDSHAKES", value_name = "N")]
    pub max_handshakes: Option<usize>,

    /// Connections one client address may hold.
    ///
    /// Connections one client IP address may hold at once; more are closed at accept
    /// [default: no limit].
    #[arg(help_heading = "Limits", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub max_connections_per_ip: Option<usize>,

    /// Plain-HTTP address for the status page, /metrics, /livez, /readyz (keep it private).
    ///
    /// Plain-HTTP address for the status page (/), /status.json, /metrics (Prometheus),
    /// /livez, /healthz and /readyz, e.g. 127.0.0.1:9090 (keep it private).
    #[arg(help_heading = "Admin", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_ADMIN", value_name = "ADDR")]
    pub admin: Option<SocketAddr>,

    /// File to write the serving process's pid to (taken over after SIGUSR2).
    ///
    /// File to write the pid of the serving process to, once it is ready (atomically), for
    /// `kill -USR2 $(cat PATH)` without systemd: after a binary upgrade the new process takes
    /// it over; a process that exits without handing over removes it.
    #[arg(help_heading = "Admin", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_PID_FILE", value_name = "PATH")]
    pub pid_file: Option<std::path::PathBuf>,

    /// A Host name the admin port answers besides IP literals and localhost.
    ///
    /// The admin port answers only requests whose Host is an IP literal, localhost, or a name
    /// given here (any port); others get 421, so a web page cannot rebind its own name to this
    /// address and read /status.json from an operator's browser. Repeatable; e.g. the name a
    /// Prometheus scrapes it by.
    #[arg(help_heading = "Admin", hide_env = true)]
    #[arg(long = "admin-host", env = "WSSBRIDGE_ADMIN_HOST", value_name = "NAME",
          value_delimiter = ' ', action = ArgAction::Append)]
    pub admin_hosts: Vec<String>,

    /// Read flags from a file too, one per line; SIGHUP reads it again.
    ///
    /// Read flags from this file too: one flag and its value per line, exactly as on the
    /// command line (--route /socket.io/=127.0.0.1:3000), '#' comments, blank lines. The
    /// command line's repeatable flags add to the file's and its single flags win;
    /// WSSBRIDGE_<FLAG> counts only for a flag given in neither. SIGHUP (systemctl reload)
    /// reads the file again and applies routes, backends, balancing, health checks,
    /// forwarding rules, certificates and per-connection timeouts to new connections, never
    /// closing a live one; a flag only a restart can change (listeners, --admin,
    /// --reuse-port, the limits, ACME, the shutdown's timings, logging) is logged as taking
    /// an upgrade (SIGUSR2) or a restart; a file with an error changes nothing and the log
    /// names its line.
    #[arg(help_heading = "Admin", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_FLAGS_FILE", value_name = "PATH")]
    pub flags_file: Option<PathBuf>,

    /// Check the configuration, print what would be served, and exit.
    ///
    /// Check the configuration as a start would (flags, files, routes, backend names), print
    /// what would be served, and exit: 0, or 2 with the message a start would give. Binds
    /// and connects to nothing (like nginx -t); --online adds what needs the network.
    #[arg(help_heading = "Admin", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_CHECK")]
    pub check: bool,

    /// With --check: also ask the ACME CA and connect to every backend.
    ///
    /// With --check: also contact what a start would. The ACME CA (with --acme) is asked one
    /// signed question that creates nothing, through the same trust (--acme-ca): a CA that
    /// does not answer fails the check. Every backend is connected to and asked its route's
    /// health check once, and reported up or down; a backend down does not fail the check
    /// (it may start after wssbridge). Each within 10s.
    #[arg(help_heading = "Admin", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_ONLINE", requires = "check")]
    pub online: bool,

    /// How connections are spread over threads.
    ///
    /// work-stealing (the default): one runtime whose threads take each other's tasks.
    /// per-core: one single-threaded runtime per thread, each accepting its own connections
    /// from the shared listening sockets and serving them to their end, as nginx's workers;
    /// cheaper new connections and keep-alive requests, sooner answers, dearer streams of
    /// small records. Either way limits, balancing and metrics are process-wide.
    #[arg(help_heading = "Runtime", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_RUNTIME", value_enum, default_value_t = Runtime::WorkStealing)]
    pub runtime: Runtime,

    /// Threads serving connections [default: one per CPU].
    ///
    /// Threads serving connections [default: one per CPU this process may use, its affinity
    /// and cgroup quota counted]. Per core, the admin port, health checks and ACME run on a
    /// thread of their own beside them; work-stealing, on the same threads.
    #[arg(help_heading = "Runtime", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_THREADS", value_name = "N")]
    pub threads: Option<usize>,

    /// Log format.
    #[arg(help_heading = "Logging", hide_env = true)]
    #[arg(long, env = "WSSBRIDGE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More logging (-v debug, -vv trace).
    ///
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(help_heading = "Logging", hide_env = true)]
    #[arg(short, long, env = "WSSBRIDGE_VERBOSE", action = ArgAction::Count)]
    pub verbose: u8,

    /// Less logging (-q warnings, -qq errors).
    ///
    /// Less logging (-q warnings only, -qq errors only).
    #[arg(help_heading = "Logging", hide_env = true)]
    #[arg(short, long, env = "WSSBRIDGE_QUIET", action = ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,

    /// Whether --listen was given (on the command line or in the environment) rather than
    /// defaulted: beside inherited sockets it is an error.
    #[arg(skip)]
    pub listen_given: bool,

    /// Lines of the flags file the command line overrides, said once logging is up.
    #[arg(skip)]
    pub overridden: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClientAuth {
    Required,
    Optional,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Args {
    /// The process's flags (exits with clap's message on a bad one), noting which defaults
    /// were overridden where that matters.
    pub fn from_env() -> Args {
        let argv: Vec<OsString> = std::env::args_os().collect();
        match Args::read(&argv) {
            Ok(args) => args,
            Err(Refused::Flag(e)) => usage_error(e),
            Err(Refused::File(e)) => {
                eprintln!("wssbridge: error: {e}");
                std::process::exit(2);
            }
        }
    }

    /// The flags of the command line `argv` and of the flags file it (or
    /// `WSSBRIDGE_FLAGS_FILE`) names, the file read now: what a start reads, and what a
    /// reload reads again (with the start's command line).
    pub fn read(argv: &[OsString]) -> Result<Args, Refused> {
        let mut all: Vec<OsString> = argv.iter().take(1).cloned().collect();
        let mut overridden = Vec::new();
        if let Some(path) = flags_file(argv) {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Refused::File(format!("--flags-file {shown}: {e}")))?;
            let lines = file::parse(&text)
                .map_err(|(n, e)| Refused::File(format!("{shown} line {n}: {e}")))?;
            let command = <Args as clap::CommandFactory>::command();
            let given = given_flags(&command, &argv[1.min(argv.len())..]);
            let mut once: Vec<(String, usize)> = Vec::new();
            for line in lines {
                check_line(&line)
                    .map_err(|e| Refused::File(format!("{shown} line {}: {e}", line.number)))?;
                let Some((name, single)) = flag_kind(&command, &line.flag) else {
                    all.extend(line.args);
                    continue;
                };
                if single && given.contains(&name) {
                    overridden.push(format!(
                        "{shown} line {}: its {} is overridden by the command line's",
                        line.number, line.flag
                    ));
                    continue;
                }
                if single && !is_level(&name) {
                    if let Some((_, first)) = once.iter().find(|(n, _)| *n == name) {
                        return Err(Refused::File(format!(
                            "{shown} line {}: {} is given again (line {first} has it): it \
                             takes one value",
                            line.number, line.flag
                        )));
                    }
                    once.push((name, line.number));
                }
                all.extend(line.args);
            }
        }
        all.extend(argv.iter().skip(1).cloned());
        let matches = <Args as clap::CommandFactory>::command()
            .try_get_matches_from(all)
            .map_err(Refused::Flag)?;
        let mut args =
            <Args as clap::FromArgMatches>::from_arg_matches(&matches).map_err(Refused::Flag)?;
        args.listen_given = matches!(
            matches.value_source("listen"),
            Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
        );
        args.overridden = overridden;
        Ok(args)
    }

    /// The default log filter these flags ask for.
    pub fn log_level(&self) -> &'static str {
        match (self.verbose, self.quiet) {
            (0, 0) => "info",
            (1, _) => "debug",
            (v, _) if v >= 2 => "trace",
            (_, 1) => "warn",
            _ => "error",
        }
    }

    /// The settings these flags ask for; `Config::build` checks and loads them. Fails only
    /// when flags that go in pairs do not pair up.
    pub fn into_settings(self) -> anyhow::Result<Settings> {
        let affinity = Affinity::new(
            &self.affinity_cookie,
            self.affinity_secret.as_deref(),
            self.affinity_samesite,
            self.affinity_max_age.0,
        )
        .map_err(|e| anyhow::anyhow!("--affinity-cookie: {e}"))?;
        let logging = Logging {
            level: self.log_level(),
            json: self.log_format == LogFormat::Json,
        };
        let mut routes = self.routes;
        if let Some(Backends(backends)) = self.to {
            routes.push(RouteSpec {
                host: None,
                path: "/".to_string(),
                backends,
            });
        }
        if self.certs.len() != self.keys.len() {
            let (more, fewer) = match self.certs.len() > self.keys.len() {
                true => ("--cert", "--key"),
                false => ("--key", "--cert"),
            };
            let extra = match self.certs.len() > self.keys.len() {
                true => &self.certs[self.keys.len()],
                false => &self.keys[self.certs.len()],
            };
            anyhow::bail!(
                "{more} {} has no {fewer} to go with it: give --cert and --key in pairs, \
                 in the same order ({} --cert, {} --key)",
                extra.display(),
                self.certs.len(),
                self.keys.len()
            );
        }
        let certs = self
            .certs
            .into_iter()
            .zip(self.keys)
            .map(|(cert, key)| CertPaths { cert, key })
            .collect();
        let process = ProcessSettings {
            listening: Listening {
                tls: self.listen.iter().map(|l| l.addr).collect(),
                tls_if_possible: self.listen.iter().filter_map(|l| l.also).collect(),
                tls_given: self.listen_given,
                redirect: self.redirect_http.iter().map(|l| l.addr).collect(),
                redirect_if_possible: self.redirect_http.iter().filter_map(|l| l.also).collect(),
                reuse_port: self.reuse_port,
                admin: self.admin,
            },
            admin_hosts: self.admin_hosts,
            pid_file: self.pid_file,
            shutdown_delay: self.shutdown_delay.0.unwrap_or(Duration::ZERO),
            shutdown_grace: self.shutdown_grace.0.unwrap_or(Duration::ZERO),
            websocket_close_on_drain: self.websocket_close_on_drain,
            acme: (!self.acme.is_empty()).then(|| AcmeSettings {
                names: self.acme.iter().map(|n| n.to_ascii_lowercase()).collect(),
                email: self.acme_email,
                directory: self.acme_directory,
                ca: self.acme_ca,
                state: self.acme_state.unwrap_or_else(AcmeSettings::default_state),
                renew_before: self.acme_renew_before.0,
            }),
            cert_poll: self.cert_poll.0,
            max_connections: self.max_connections,
            max_handshakes: self.max_handshakes,
            max_handshake_memory: self.max_handshake_memory.0,
            max_connections_per_ip: self.max_connections_per_ip,
            runtime: self.runtime,
            threads: self.threads,
            logging,
        };
        let serving = ServingSettings {
            certs,
            strict_sni: self.strict_sni,
            ticket_keys: self.ticket_keys,
            client_cas: self.client_cas,
            client_auth_optional: self.client_auth == ClientAuth::Optional,
            add_forwarded: self.add_forwarded,
            trust_forwarded: self.trust_forwarded,
            accept_proxy_from: self.accept_proxy_from,
            routes,
            balancing: Balancing {
                policies: self.balance,
                checks: self.health_checks,
                send_proxy: self.send_proxy,
                affinity,
            },
            fail_timeout: self.fail_timeout.0,
            health_interval: self.health_interval.0,
            health_timeout: self.health_timeout.0,
            timeouts: Timeouts {
                handshake: self.handshake_timeout.0,
                header: self.header_timeout.0,
                body: self.body_timeout.0,
                connect: self.connect_timeout.0,
                idle: self.idle_timeout.0,
                keepalive: self.keepalive_timeout.0,
                close: self.close_timeout.0,
                send: self.send_timeout.0,
            },
            max_header_bytes: self.max_header_bytes.0,
            resolvers: self.resolvers,
            security: Security {
                allowed_upgrades: self.allow_upgrades,
                check_websocket_accept: self.check_websocket_accept,
                sni_host_check: !self.allow_sni_mismatch,
            },
        };
        Ok(Settings { process, serving })
    }
}

/// The flags file and the start's command line, read again by each reload.
struct FlagsFile {
    argv: Vec<OsString>,
    path: PathBuf,
}

impl Reread for FlagsFile {
    fn read(&self) -> anyhow::Result<Settings> {
        let args = Args::read(&self.argv).map_err(|e| anyhow::anyhow!("{e}"))?;
        args.into_settings()
    }

    fn file(&self) -> String {
        self.path.display().to_string()
    }

    /// The first line of the file whose flag `error` names (`--balance /x=…: no --route`
    /// is about the `--balance` line, the first flag it names).
    fn locate(&self, error: &str) -> Option<String> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let lines = file::parse(&text).ok()?;
        let named = |flag: &str| {
            error.match_indices(flag).map(|(i, _)| i).find(|&i| {
                let next = error[i + flag.len()..].chars().next();
                !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
            })
        };
        let (_, line) = lines
            .iter()
            .filter_map(|l| named(&l.flag).map(|at| (at, l)))
            .min_by_key(|(at, l)| (*at, l.number))?;
        Some(format!("{} line {}", self.path.display(), line.number))
    }
}

impl Args {
    /// Where a reload reads these flags again: the flags file, with this command line.
    pub fn reread(&self) -> Option<std::sync::Arc<dyn Reread>> {
        let path = self.flags_file.clone()?;
        Some(std::sync::Arc::new(FlagsFile {
            argv: std::env::args_os().collect(),
            path,
        }))
    }
}

/// Why flags could not be read.
#[derive(Debug)]
pub enum Refused {
    /// clap refused the flags as a whole (or was asked for --help or --version).
    Flag(clap::Error),
    /// The flags file: unreadable, or a line that is not a flag (the message names it).
    File(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Flag(e) => f.write_str(&first_line(e)),
            Refused::File(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for Refused {}

/// clap's message without its usage lines and "error: ".
fn first_line(e: &clap::Error) -> String {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        return "--help and --version print; they configure nothing".to_string();
    }
    let rendered = e.to_string();
    let line = rendered.lines().next().unwrap_or("");
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// `--flags-file` as the command line gives it (before a `--`), else
/// `WSSBRIDGE_FLAGS_FILE`: read before clap runs, since the file's flags are clap's input.
fn flags_file(argv: &[OsString]) -> Option<PathBuf> {
    let mut rest = argv.iter().skip(1);
    let mut found = None;
    while let Some(arg) = rest.next() {
        let arg = arg.to_string_lossy();
        if arg == "--" {
            break;
        }
        if arg == "--flags-file" {
            found = rest.next().map(PathBuf::from);
        } else if let Some(path) = arg.strip_prefix("--flags-file=") {
            found = Some(PathBuf::from(path));
        }
    }
    found.or_else(|| {
        std::env::var_os("WSSBRIDGE_FLAGS_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// `-v`/`-q` (and their long names): one setting, the log level, whichever is given.
fn is_level(name: &str) -> bool {
    matches!(name, "--verbose" | "--quiet")
}

/// The long name of `flag` as written (`--to`, `--to=x`, `-v`, `-vv`), and whether a second
/// one replaces the first (one value, a switch, or the log level), as clap knows it. The
/// log level's two flags are one setting: each is named `--verbose`.
fn flag_kind(command: &clap::Command, flag: &str) -> Option<(String, bool)> {
    let arg = match flag.strip_prefix("--") {
        Some(long) => {
            let long = long.split_once('=').map_or(long, |(name, _)| name);
            command
                .get_arguments()
                .find(|a| a.get_long() == Some(long))?
        }
        None => {
            let short = flag.strip_prefix('-')?.chars().next()?;
            command
                .get_arguments()
                .find(|a| a.get_short() == Some(short))?
        }
    };
    let long = arg.get_long()?;
    let name = match is_level(&format!("--{long}")) {
        true => "--verbose".to_string(),
        false => format!("--{long}"),
    };
    Some((name, !matches!(arg.get_action(), ArgAction::Append)))
}

/// The flags `args` (a command line) gives, by long name (`--to` from `--to x` and
/// `--to=x`, `--verbose` from `-vv` and from `-q`).
fn given_flags(command: &clap::Command, args: &[OsString]) -> Vec<String> {
    args.iter()
        .map(|a| a.to_string_lossy())
        .take_while(|a| a != "--")
        .filter(|a| a.starts_with('-') && a.len() > 1)
        .filter_map(|a| flag_kind(command, &a).map(|(name, _)| name))
        .collect()
}

/// One line of the flags file checked alone, without the environment, so a bad value is
/// named by its line; what only the whole can tell (a flag another requires) is left to it.
fn check_line(line: &file::Line) -> Result<(), String> {
    use clap::error::ErrorKind;
    let command =
        <Args as clap::CommandFactory>::command().mut_args(|a| a.env(None::<&'static str>));
    let argv = std::iter::once(OsString::from("wssbridge")).chain(line.args.iter().cloned());
    match command.try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::MissingRequiredArgument | ErrorKind::ArgumentConflict
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(first_line(&e)),
    }
}

/// Exits on a flag clap refused, with its message as every other start-up error reads
/// (`wssbridge: error: …`, exit 2); `--help` and `--version` print and exit 0 as usual.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    eprint!("wssbridge: error: {text}");
    std::process::exit(2);
}

/// One `--listen` value: an address, and for `:PORT`, `PORT` and `localhost:PORT` the IPv6
/// twin, bound when the machine has IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenArg {
    pub addr: SocketAddr,
    pub also: Option<SocketAddr>,
}

impl FromStr for ListenArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(ListenArg { addr, also: None });
        }
        let bare = s.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<std::net::IpAddr>().is_ok() || s.eq_ignore_ascii_case("localhost") {
            let with_port = match bare.parse::<std::net::Ipv6Addr>() {
                Ok(_) => format!("[{bare}]:443"),
                Err(_) => format!("{s}:443"),
            };
            return Err(format!(
                "'{s}' is an address without a port: write {with_port}"
            ));
        }
        let port = |p: &str| p.parse::<u16>().ok();
        let (v4, v6): ([u8; 4], [u16; 8]) = match s.rsplit_once(':') {
            None | Some(("" | "*", _)) => ([0; 4], [0; 8]),
            Some((host, _)) if host.eq_ignore_ascii_case("localhost") => {
                ([127, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0, 1])
            }
            Some(_) => {
                return Err(format!(
                    "'{s}' is not an address to listen on: write ADDR:PORT (0.0.0.0:443, \
                     [::]:443, 127.0.0.1:8443, localhost:8443), or :443 or 443 for every address"
                ));
            }
        };
        let number = s.rsplit(':').next().unwrap_or(s);
        let Some(port) = port(number) else {
            return Err(format!(
                "'{s}': bad port '{number}' (expected 0 to 65535): write ADDR:PORT \
                 (0.0.0.0:443, [::]:443, 127.0.0.1:8443), or :443 or 443 for every address"
            ));
        };
        Ok(ListenArg {
            addr: SocketAddr::from((v4, port)),
            also: Some(SocketAddr::from((v6, port))),
        })
    }
}

/// `--resolver`: an IP address, with a port or not (53).
fn parse_resolver(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| {
            format!(
                "'{s}' is not a DNS server's address: write an IP (10.96.0.10), or IP:PORT \
                 (127.0.0.1:5353, [::1]:53)"
            )
        })
}

/// A list of backends, as `--to` takes it.
#[derive(Debug, Clone)]
pub struct Backends(pub Vec<Upstream>);

fn parse_backends(s: &str) -> Result<Backends, String> {
    s.split(',')
        .map(|b| b.trim().parse())
        .collect::<Result<Vec<_>, _>>()
        .map(Backends)
}

/// Longer than any timeout anyone means, and short enough that `Instant + d` cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration with a unit (`500ms`, `10s`, `2m`, `1h`); `0` means off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Option<Duration>);

impl FromStr for Timeout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s, MAX_DURATION, "365 days").map(Timeout)
    }
}

/// A span of a certificate's life (`30d`), as [`Timeout`] writes one, up to 100 years: a
/// certificate may be valid for years, and a renewal window longer than its life renews it
/// at once. Never added to an `Instant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Option<Duration>);

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const CENTURY: Duration = Duration::from_secs(36_500 * 24 * 3600);
        parse_duration(s, CENTURY, "36500 days").map(Span)
    }
}

/// `0` (none) or a number and a unit, at most `max`.
fn parse_duration(s: &str, max: Duration, max_words: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(None);
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("'{s}' has no unit: write e.g. 500ms, 10s, 2m or 0 for off"))?;
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("'{s}' is not a duration: write e.g. 500ms, 10s, 2m"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86400.0,
        _ => {
            return Err(format!(
                "'{s}': unknown unit '{unit}' (use ms, s, m, h or d)"
            ));
        }
    };
    let d = Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| *d <= max)
        .ok_or_else(|| format!("'{s}' is out of range (at most {max_words})"))?;
    Ok((!d.is_zero()).then_some(d))
}

/// A byte size: `16384`, `16k`/`16KiB`, `1m`/`1MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub usize);

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let number: usize = number
            .parse()
            .map_err(|_| format!("'{s}' is not a size: write e.g. 16KiB or 16384"))?;
        let factor = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1024,
            "m" | "mb" | "mib" => 1024 * 1024,
            _ => return Err(format!("'{s}': unknown unit '{unit}' (use KiB or MiB)")),
        };
        number
            .checked_mul(factor)
            .map(Size)
            .ok_or_else(|| format!("'{s}' is too large"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defaults live in two tables, clap's (what `--help` shows) and `Settings::default`
    /// (what tests and library users start from): this keeps them one.
    #[test]
    fn clap_defaults_and_settings_defaults_agree() {
        let args = Args::try_parse_from(["wssbridge", "--to", "127.0.0.1:3000"]).unwrap();
        let from_flags = args.into_settings().unwrap();
        let mut defaults = Settings::default();
        defaults.serving.routes = from_flags.serving.routes.clone();
        // `make test` runs the suite a second time with WSSBRIDGE_RUNTIME=per-core.
        if std::env::var_os("WSSBRIDGE_RUNTIME").is_some() {
            defaults.process.runtime = from_flags.process.runtime;
        }
        assert_eq!(format!("{from_flags:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn durations_need_units_and_zero_is_off() {
        let t = |s: &str| s.parse::<Timeout>().map(|t| t.0);
        assert_eq!(t("500ms"), Ok(Some(Duration::from_millis(500))));
        assert_eq!(t("10s"), Ok(Some(Duration::from_secs(10))));
        assert_eq!(t("2m"), Ok(Some(Duration::from_secs(120))));
        assert_eq!(t("1.5s"), Ok(Some(Duration::from_millis(1500))));
        assert_eq!(t("0"), Ok(None));
        assert!(t("10").unwrap_err().contains("no unit"));
        assert!(t("10x").unwrap_err().contains("unknown unit"));
        assert!(t("s").is_err());
        assert!(t("9999999999h").unwrap_err().contains("out of range"));
    }

    #[test]
    fn listen_takes_a_port_alone_and_localhost() {
        let l = |s: &str| s.parse::<ListenArg>();
        let every = l(":443").unwrap();
        assert_eq!(every.addr.to_string(), "0.0.0.0:443");
        assert_eq!(every.also.unwrap().to_string(), "[::]:443");
        assert_eq!(l("443").unwrap(), every);
        let local = l("localhost:8443").unwrap();
        assert_eq!(local.addr.to_string(), "127.0.0.1:8443");
        assert_eq!(local.also.unwrap().to_string(), "[::1]:8443");
        assert_eq!(l("[::]:443").unwrap().also, None);
        assert!(l("example.com:443").unwrap_err().contains(":443 or 443"));
        assert!(l(":99999").unwrap_err().contains("bad port"));
        let typo = l("443x").unwrap_err();
        assert!(
            typo.contains("bad port '443x'") && typo.contains("0.0.0.0:443"),
            "{typo}"
        );
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!("16KiB".parse::<Size>(), Ok(Size(16384)));
        assert_eq!("16k".parse::<Size>(), Ok(Size(16384)));
        assert_eq!("1MiB".parse::<Size>(), Ok(Size(1 << 20)));
        assert_eq!("4096".parse::<Size>(), Ok(Size(4096)));
        assert!("16 bytes".parse::<Size>().is_err());
    }

    #[test]
    fn acme_renew_before_shows_its_real_default() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        let entry = help.split("--acme-renew-before").nth(1).unwrap_or_default();
        let entry = entry.split("\n      --").next().unwrap_or_default();
        assert!(!entry.contains("[default: 0]"), "{entry}");
        assert!(entry.contains("a third of"), "{entry}");
    }

    #[test]
    fn help_names_every_default() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        for needle in [
            "0.0.0.0:8443",
            "10s",
            "5s",
            "60s",
            "30s",
            "16KiB",
            "WSSBRIDGE_<FLAG>",
        ] {
            assert!(help.contains(needle), "--help lacks {needle}");
        }
    }
}
