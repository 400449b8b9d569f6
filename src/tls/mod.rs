//! The `tls` stage: the rustls server, its certificates, and the handshake under a deadline.
//!
//! TLS 1.2 and 1.3 with rustls's default (aws-lc-rs) cipher suites; ALPN offers `http/1.1`
//! only, because a browser that negotiates h2 cannot send a WebSocket upgrade over it.
//! Session resumption is on, by stateful cache and by tickets.
//!
//! One rustls `ServerConfig` lives as long as the process: its ticket keys and session cache
//! survive every reload. The certificates are chosen per handshake from the current
//! [`CertStore`], which a reload swaps ([`Tls::set_certs`]).
//!
//! Under rustls sit two adapters of the client's socket: [`readahead`] (large reads while a
//! client sends in bulk) and [`coalesce`] (the handshake's last writes leave with the first
//! answer).

pub mod certs;
pub mod coalesce;
pub mod readahead;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

pub use certs::{CertPaths, CertStore};
use coalesce::Coalesce;
use readahead::ReadAhead;

/// The client's side once TLS is up: rustls over a socket read in bulk-sized pieces, whose
/// handshake's last writes wait for the first answer.
pub type Client = TlsStream<Coalesce<ReadAhead<TcpStream>>>;

/// Sessions remembered for stateful resumption; each is a few hundred bytes.
const SESSION_CACHE: usize = 4096;

/// The TLS server of the process.
pub struct Tls {
    acceptor: TlsAcceptor,
    resolver: Arc<Resolver>,
}

impl Tls {
    pub fn new(certs: Arc<CertStore>) -> anyhow::Result<Tls> {
        let resolver = Arc::new(Resolver {
            store: ArcSwap::new(certs),
        });
        let mut config = ServerConfig::builder_with_provider(Arc::new(certs::provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
        })
    }

    /// Serves `certs` to every handshake from now on; handshakes in progress and live
    /// connections are not touched.
    pub fn set_certs(&self, certs: Arc<CertStore>) {
        self.resolver.store.store(certs);
    }

    /// Completes the handshake on `stream`, taking one of `slots` first, all before
    /// `deadline` (`started` is when the connection was accepted, for the error).
    pub async fn handshake(
        &self,
        stream: TcpStream,
        slots: &Semaphore,
        deadline: Option<Instant>,
        started: Instant,
    ) -> Result<Client, HandshakeError> {
        let handshake = async {
            let _slot = slots.acquire().await;
            let io = Coalesce::new(ReadAhead::new(stream));
            match self.acceptor.accept(io).into_fallible().await {
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

/// Why a handshake did not complete.
#[derive(Debug)]
pub enum HandshakeError {
    TimedOut(Duration),
    Failed(std::io::Error),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::TimedOut(after) => write!(f, "handshake timed out after {after:?}"),
            HandshakeError::Failed(e) => write!(f, "handshake failed: {e}"),
        }
    }
}

/// Chooses each handshake's certificate from the current store.
#[derive(Debug)]
struct Resolver {
    store: ArcSwap<CertStore>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.load().choose(hello.server_name())
    }
}
