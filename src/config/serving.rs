//! The serving config: what each connection loads once when it is accepted and keeps to its
//! end. Built from [`ServingSettings`] at start and again by every reload; the one
//! configuration behind the state's `ArcSwap`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{AcmeSettings, ServingSettings, Timeouts};
use crate::balance::Pools;
use crate::balance::discovery::Resolver;
use crate::balance::health::Timing;
use crate::cidr::Cidr;
use crate::http::Policy;
use crate::route::RouteTable;
use crate::tls::{CertStore, ClientCas, TlsConfig};

#[derive(Debug)]
pub struct ServingConfig {
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
    /// Asks the DNS for the routes' `dns:` and `srv:` backends (`None`: no route has any).
    pub resolver: Option<Resolver>,
    /// 1 for the config a start builds, one more for each reload that took.
    pub generation: u64,
    pub loaded_at: SystemTime,
}

impl ServingConfig {
    /// Loads the certificates (`acme`'s names' too) and builds the route table and pools.
    pub fn build(
        settings: &ServingSettings,
        acme: Option<&AcmeSettings>,
    ) -> anyhow::Result<ServingConfig> {
        if settings.routes.is_empty() {
            // The package's unit reads a flags file that ships with comments only, and
            // WSSBRIDGE_ARGS from /etc/default/wssbridge, empty: say where the flags go.
            let mut places = Vec::new();
            if let Some(file) = std::env::var_os("WSSBRIDGE_FLAGS_FILE") {
                places.push(format!("in the flags file {}", file.to_string_lossy()));
            }
            if std::env::var_os("WSSBRIDGE_ARGS").is_some() {
                places.push("in WSSBRIDGE_ARGS in /etc/default/wssbridge".to_string());
            }
            let unit = match places.is_empty() {
                true => String::new(),
                false => format!(" ({})", places.join(", or ")),
            };
            anyhow::bail!("no route: give --to BACKEND or --route PATH=BACKEND{unit}");
        }
        let routes = RouteTable::new(settings.routes.clone())
            .map_err(|e| anyhow::anyhow!("--route: {e}"))?;
        let pools = Pools::new(&routes, &settings.balancing).map_err(|e| anyhow::anyhow!(e))?;
        let resolver = match pools.any_discovery() {
            true => Some(Resolver::new(&settings.resolvers)?),
            false => None,
        };
        let health = match (settings.health_interval, settings.health_timeout) {
            (Some(interval), Some(timeout)) => Timing { interval, timeout },
            (None, _) => anyhow::bail!("--health-interval must be more than 0"),
            (_, None) => anyhow::bail!("--health-timeout must be more than 0"),
        };
        if settings.max_header_bytes < 64 {
            anyhow::bail!("--max-header-bytes must be at least 64 bytes");
        }
        let certs = match (acme, settings.certs.is_empty()) {
            (Some(acme), _) => {
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
        Ok(ServingConfig {
            tls: TlsConfig {
                certs,
                client_cas,
                strict_sni: settings.strict_sni,
                acme_answers: acme.map(|a| a.challenges("tls-alpn-01")),
                ticket_keys: settings
                    .ticket_keys
                    .as_deref()
                    .map(crate::tls::tickets::read_file)
                    .transpose()?,
            },
            pools,
            http: Arc::new(http),
            fail_timeout: settings.fail_timeout,
            health,
            add_forwarded: settings.add_forwarded,
            trust_forwarded: settings.trust_forwarded.clone(),
            accept_proxy_from: settings.accept_proxy_from.clone(),
            timeouts: settings.timeouts,
            resolver,
            generation: 1,
            loaded_at: SystemTime::now(),
        })
    }

    /// The largest request head accepted (`--max-header-bytes`).
    pub fn max_header_bytes(&self) -> usize {
        self.http.max_header_bytes
    }
}
