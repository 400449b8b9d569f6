//! What the `http` stage reads of the configuration, and nothing more: the route table, the
//! rules, the bound on a head, and the names the certificates serve (for 421). `Config::build`
//! makes one per configuration; tests and fuzz targets make one by hand, with no certificate.

use std::sync::Arc;

use crate::route::RouteTable;
use crate::tls::CertStore;

#[derive(Debug)]
pub struct Policy {
    pub routes: RouteTable,
    pub security: Security,
    /// Largest request head (`--max-header-bytes`).
    pub max_header_bytes: usize,
    /// The certificates served, for the 421 check (`None`: nothing to check against).
    pub certs: Option<Arc<CertStore>>,
}

/// The rules that keep a client from reaching what its request does not route to.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Upgrade protocols allowed besides `websocket` (lower-case names, e.g. `h2c`).
    pub allowed_upgrades: Vec<String>,
    /// Check a `101`'s `Sec-WebSocket-Accept` against the client's key.
    pub check_websocket_accept: bool,
    /// Answer 421 when the Host names another host-routed name than the TLS SNI.
    pub sni_host_check: bool,
}

impl Policy {
    /// `routes` under the default rules (as the flags' defaults), for tests and fuzzing.
    pub fn with_routes(routes: RouteTable, max_header_bytes: usize) -> Policy {
        Policy {
            routes,
            security: Security {
                sni_host_check: true,
                ..Security::default()
            },
            max_header_bytes,
            certs: None,
        }
    }
}
