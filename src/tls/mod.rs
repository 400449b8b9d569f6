//! The `tls` stage: the rustls server, its certificates, and the handshake under a deadline.
//!
//! TLS 1.2 and 1.3 with rustls's default (aws-lc-rs) cipher suites; ALPN offers `http/1.1`
//! only, because a browser that negotiates h2 cannot send a WebSocket upgrade over it.
//! Session resumption is on, by stateful cache and by tickets.
//!
//! The ticket keys and the session cache live as long as the process. Each configuration
//! (its certificates, its client CAs) gets a rustls `ServerConfig` of its own that shares
//! them, so a reload swaps certificates for new handshakes while sessions from before it
//! still resume, and live connections are not touched.
//!
//! Before rustls, [`hello`] waits for the client's first bytes holding nothing and reads its
//! ClientHello under a process-wide memory budget. Under rustls sit two adapters of the
//! client's socket: [`ReadAhead`] (large reads while a client sends in bulk) and [`coalesce`]
//! (the handshake's last writes leave with the first answer).

pub mod acme;
pub mod certs;
pub mod coalesce;
pub mod hello;
pub mod ktls;
pub mod tickets;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::readahead::ReadAhead;
pub use certs::{CertInfo, CertPaths, CertStore, ClientCas};
use coalesce::Coalesce;

/// The client's side once TLS is up: rustls over a socket read in bulk-sized pieces, whose
/// handshake's last writes wait for the first answer.
pub type TlsClient = TlsStream<Coalesce<ReadAhead<TcpStream>>>;

/// Sessions remembered for stateful resumption; each is a few hundred bytes.
const SESSION_CACHE: usize = 4096;

/// A TLS `unrecognized_name` alert (RFC 6066 §3), fatal, in a TLS 1.2 record as every version
/// sends alerts before the handshake is encrypted.
const UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// What a configuration asks of TLS.
#[derive(Debug)]
pub struct TlsConfig {
    pub certs: Arc<CertStore>,
    /// `--client-ca`: clients must (or, if optional, may) present a certificate.
    pub client_cas: Option<ClientCas>,
    /// `--strict-sni`: a name no certificate has is refused with `unrecognized_name`.
    pub strict_sni: bool,
    /// `--acme`: where the TLS-ALPN-01 answers are (see [`acme`]).
    pub acme_answers: Option<std::path::PathBuf>,
    /// `--ticket-keys`: the session-ticket keys, read at each (re)load ([`tickets`]).
    pub ticket_keys: Option<tickets::TicketKeys>,
}

/// The TLS server of the process.
pub struct Tls {
    ticketer: Arc<tickets::Ticketer>,
    sessions: Arc<dyn StoresServerSessions + Send + Sync>,
    current: ArcSwap<Served>,
}

/// One configuration's rustls server, swapped whole by a reload.
struct Served {
    config: Arc<ServerConfig>,
    certs: Arc<CertStore>,
    strict_sni: bool,
    acme_answers: Option<std::path::PathBuf>,
}

impl Tls {
    pub fn new(config: &TlsConfig) -> anyhow::Result<Tls> {
        let ticketer = Arc::new(tickets::Ticketer::new(None)?);
        ticketer.set(config.ticket_keys.as_ref());
        let sessions: Arc<dyn StoresServerSessions + Send + Sync> =
            rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
        let server = build(config, &(ticketer.clone() as _), &sessions)?;
        Ok(Tls {
            ticketer,
            sessions,
            current: ArcSwap::from_pointee(server),
        })
    }

    /// Serves `config` to every handshake from now on; handshakes in progress and live
    /// connections are not touched, and sessions from before resume.
    pub fn set(&self, config: &TlsConfig) -> anyhow::Result<()> {
        let server = build(config, &(self.ticketer.clone() as _), &self.sessions)?;
        self.ticketer.set(config.ticket_keys.as_ref());
        self.current.store(Arc::new(server));
        Ok(())
    }

    /// Takes the session-ticket keys the process before a binary upgrade handed down (the
    /// lines of a `--ticket-keys` file), unless `--ticket-keys` names them: tickets issued
    /// before the upgrade resume after it.
    pub fn inherit_ticket_keys(&self, lines: &str) {
        match tickets::parse(lines) {
            Ok(keys) if self.ticketer.own() => {
                self.ticketer.adopt(&keys, lines);
                tracing::info!(
                    keys = keys.0.len(),
                    "session tickets: the keys of the process before the upgrade"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("session tickets: the keys handed down are unusable: {e}"),
        }
    }

    /// The session-ticket keys in force, as a `--ticket-keys` file's lines, for the next
    /// process of a binary upgrade.
    pub fn ticket_keys(&self) -> String {
        self.ticketer.export()
    }

    /// Completes the handshake on `stream` (whose first bytes, `early`, were already read),
    /// within `timeout` of `started` (when the connection was accepted: a PROXY header read
    /// first does not extend it) and by `outer` (the header deadline) at the latest.
    ///
    /// The ClientHello is read first, holding nothing. Only then does the handshake take one
    /// of `slots` (`--max-handshakes`) for its costly part (key exchange, signature): a
    /// client that sends half a ClientHello and stalls costs a socket, not a slot, so a flood
    /// of them delays no one.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        early: Vec<u8>,
        slots: &Semaphore,
        timeout: Option<Duration>,
        outer: Option<Instant>,
        started: Instant,
    ) -> Result<TlsClient, HandshakeError> {
        let server = self.current.load_full();
        let deadline = deadline(timeout, started, outer);
        let handshake = async {
            let io = Coalesce::new(ReadAhead::with_early(stream, early));
            let mut hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
            let start = match (&mut hello).await {
                Ok(start) => start,
                Err(e) => {
                    // The acceptor wrote the alert for a ClientHello it refused into
                    // `coalesce`, which is still holding writes: send it.
                    if let Some(io) = hello.take_io() {
                        io.release().await;
                    }
                    return Err(HandshakeError::Failed(e));
                }
            };
            if let Some(dir) = &server.acme_answers
                && acme::is_validation(&start.client_hello())
            {
                // A validation costs more than a handshake (a key made and a certificate
                // signed for it): it takes a slot like any other, or a flood offering
                // `acme-tls/1` would go round `--max-handshakes`.
                let _slot = slots.acquire().await;
                return answer_validation(start, dir).await;
            }
            if server.strict_sni
                && let Some(name) = start.client_hello().server_name()
                && !server.certs.knows(name)
            {
                let name = name.to_string();
                start.io.refuse(&UNRECOGNIZED_NAME).await;
                return Err(HandshakeError::UnknownName(name));
            }
            let _slot = slots.acquire().await;
            let accepted = start
                .into_stream(server.config.clone())
                .into_fallible()
                .await;
            match accepted {
                Ok(client) => Ok(client),
                Err((e, io)) => {
                    // The alert that says why.
                    io.release().await;
                    Err(HandshakeError::Failed(e))
                }
            }
        };
        let mut client = match deadline {
            Some(d) => tokio::time::timeout_at(d, handshake)
                .await
                .map_err(|_| HandshakeError::TimedOut(d.saturating_duration_since(started)))??,
            None => handshake.await?,
        };
        // TLS 1.3 tickets wait for the answer when the request came with the client's
        // Finished (see `coalesce`).
        let (io, tls) = client.get_mut();
        let request_in_hand = tls.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
            && tls
                .process_new_packets()
                .is_ok_and(|state| state.plaintext_bytes_to_read() > 0);
        io.handshake_done(request_in_hand);
        Ok(client)
    }
}

/// When a handshake must be done: `timeout` after `started` (accept), and by `outer` (the
/// header deadline) at the latest.
pub fn deadline(
    timeout: Option<Duration>,
    started: Instant,
    outer: Option<Instant>,
) -> Option<Instant> {
    match (timeout.map(|t| started + t), outer) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn build(
    config: &TlsConfig,
    ticketer: &Arc<dyn ProducesTickets>,
    sessions: &Arc<dyn StoresServerSessions + Send + Sync>,
) -> anyhow::Result<Served> {
    let resolver = Arc::new(Resolver {
        certs: config.certs.clone(),
    });
    let builder = ServerConfig::builder_with_provider(Arc::new(certs::provider()))
        .with_safe_default_protocol_versions()?;
    let builder = match &config.client_cas {
        Some(cas) => builder.with_client_cert_verifier(cas.verifier.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_cert_resolver(resolver);
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The server picks the suite from its own order (every one offered is AEAD with forward
    // secrecy); scanners rate "no server cipher order" as a finding.
    server.ignore_client_order = true;
    server.session_storage = sessions.clone();
    server.ticketer = ticketer.clone();
    let server = Arc::new(server);
    Ok(Served {
        config: server,
        certs: config.certs.clone(),
        strict_sni: config.strict_sni,
        acme_answers: config.acme_answers.clone(),
    })
}

/// The splice's view of the client: rustls over our adapters.
impl crate::splice::Client for TlsClient {
    fn queue(&mut self, data: &[u8]) -> std::io::Result<usize> {
        use std::io::Write;
        self.get_mut().1.writer().write(data)
    }

    fn buffered(&mut self) -> usize {
        let (io, tls) = self.get_mut();
        // An error here is met again, and reported, by the next read.
        let decrypted = tls
            .process_new_packets()
            .map_or(0, |state| state.plaintext_bytes_to_read());
        decrypted + io.inner().pending()
    }

    /// Records rustls has not written yet. The session tickets `coalesce` holds for the
    /// first answer do not count: they wait for the backend, not for the client.
    fn unsent(&self) -> bool {
        self.get_ref().1.wants_write()
    }

    fn written(&self) -> u64 {
        self.get_ref().0.inner().written()
    }

    fn poll_cut(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use tokio::io::AsyncWrite;
        std::pin::Pin::new(self.get_mut().0).poll_shutdown(cx)
    }
}

/// Completes an ACME TLS-ALPN-01 validation handshake with the answer for its name, then
/// closes: the connection is never routed.
async fn answer_validation(
    start: tokio_rustls::StartHandshake<Coalesce<ReadAhead<TcpStream>>>,
    dir: &std::path::Path,
) -> Result<TlsClient, HandshakeError> {
    let name = start.client_hello().server_name().unwrap_or("").to_string();
    let Some(config) = acme::answer(dir, &name) else {
        let why = format!("no TLS-ALPN-01 answer for {name:?}");
        return Err(HandshakeError::Failed(std::io::Error::other(why)));
    };
    if let Ok(mut stream) = start.into_stream(config).await {
        use tokio::io::AsyncWriteExt;
        let _ = stream.shutdown().await;
    }
    Err(HandshakeError::AcmeValidation(name))
}

/// Why a handshake did not complete.
#[derive(Debug)]
pub enum HandshakeError {
    /// An ACME TLS-ALPN-01 validation for this name was answered (and closed).
    AcmeValidation(String),
    TimedOut(Duration),
    /// Closed before its ClientHello was whole, to keep `--max-handshake-memory`: it had
    /// held bytes the longest.
    Shed,
    /// `--strict-sni` refused a name no certificate has.
    UnknownName(String),
    Failed(std::io::Error),
}

impl HandshakeError {
    /// Why no ClientHello came (`hello`), for a connection accepted at `started`.
    pub fn from_hello(e: hello::NoHello, started: Instant) -> HandshakeError {
        match e {
            hello::NoHello::TimedOut => HandshakeError::TimedOut(started.elapsed()),
            hello::NoHello::Shed => HandshakeError::Shed,
            hello::NoHello::Io(e) => HandshakeError::Failed(e),
        }
    }

    /// The `result` label of `wssbridge_tls_handshakes_total`.
    pub fn label(&self) -> &'static str {
        match self {
            HandshakeError::AcmeValidation(_) => "acme",
            HandshakeError::TimedOut(_) => "timeout",
            HandshakeError::Shed => "shed",
            HandshakeError::UnknownName(_) => "unknown_name",
            HandshakeError::Failed(_) => "failed",
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::AcmeValidation(name) => {
                write!(f, "answered an ACME TLS-ALPN-01 validation for {name:?}")
            }
            HandshakeError::TimedOut(after) => write!(f, "handshake timed out after {after:?}"),
            HandshakeError::Shed => {
                f.write_str("closed with its ClientHello unfinished to keep --max-handshake-memory")
            }
            HandshakeError::UnknownName(name) => {
                write!(f, "refused unknown name {:?} (--strict-sni)", name)
            }
            HandshakeError::Failed(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

/// Chooses each handshake's certificate by its SNI.
#[derive(Debug)]
struct Resolver {
    certs: Arc<CertStore>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certs.choose(hello.server_name(), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every label a failed handshake is counted under is one the metrics create at start.
    #[test]
    fn every_handshake_label_is_a_known_series() {
        let errors = [
            HandshakeError::AcmeValidation("a.example".into()),
            HandshakeError::TimedOut(Duration::from_secs(1)),
            HandshakeError::Shed,
            HandshakeError::UnknownName("b.example".into()),
            HandshakeError::Failed(std::io::ErrorKind::InvalidData.into()),
        ];
        for e in errors {
            assert!(
                crate::metrics::HANDSHAKE_RESULTS.contains(&e.label()),
                "{} is not in HANDSHAKE_RESULTS",
                e.label()
            );
        }
    }
}
