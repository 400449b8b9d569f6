//! The `route` stage: the route table and how a request head picks its route.
//!
//! Pure: no I/O. A rule is `[HOST]PATH=BACKEND[,BACKEND...]`. Matching follows what nginx and
//! HAProxy users expect: a route whose host matches beats one without a host, then the longest
//! path prefix wins, and a prefix only matches at a path-segment boundary (`/api` matches `/api`,
//! `/api/x` and `/api?q`, never `/apix`). Dot-segments are resolved first (RFC 3986 §5.2.4) so
//! `/ws/../admin` cannot reach the `/ws` backend.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// A backend address as the user wrote it; names are resolved when connecting, so a backend
/// whose address changes (DNS, container restarts) is followed without a restart.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    host: String,
    port: u16,
}

impl Backend {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl From<std::net::SocketAddr> for Backend {
    fn from(addr: std::net::SocketAddr) -> Backend {
        Backend {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Backend {
    type Err = String;

    /// `host:port`, `[v6]:port`, or the same as a plain `http://` or `ws://` URL (the
    /// `proxy_pass http://127.0.0.1:3000` habit; port 80 when none is given).
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("https://") || lower.starts_with("wss://") {
            return Err(format!(
                "backend '{s}': wssbridge speaks plain HTTP and ws:// to backends, not TLS; \
                 write the backend's plain address, as in 127.0.0.1:3000"
            ));
        }
        let url = ["http://", "ws://"]
            .iter()
            .find(|scheme| lower.starts_with(*scheme))
            .map(|scheme| &s[scheme.len()..]);
        let s = match url {
            Some(rest) => {
                let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
                if !path.is_empty() && path != "/" {
                    return Err(format!(
                        "backend '{s}': paths are not rewritten (the request's own path goes \
                         to the backend as it is); write http://{authority} alone"
                    ));
                }
                let bracketed_without_port = authority.starts_with('[') && authority.ends_with(']');
                match authority.rsplit_once(':') {
                    Some(_) if !bracketed_without_port => authority.to_string(),
                    _ => format!("{authority}:80"),
                }
            }
            None => s.to_string(),
        };
        let s = s.as_str();
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "'{s}' is a port without a host: write 127.0.0.1:{s}"
            ));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("backend '{s}' needs a port, as in 127.0.0.1:3000"))?;
        let host = match host.strip_prefix('[') {
            Some(rest) => rest
                .strip_suffix(']')
                .ok_or_else(|| format!("backend '{s}': unclosed '[' in IPv6 address"))?,
            None if host.contains(':') => {
                return Err(format!(
                    "backend '{s}': write an IPv6 address in brackets, as in [::1]:8080"
                ));
            }
            None => host,
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(format!("backend '{s}': bad host '{host}'"));
        }
        let port = match port.parse::<u16>() {
            Ok(0) | Err(_) => {
                return Err(format!(
                    "backend '{s}': bad port '{port}' (expected 1 to 65535)"
                ));
            }
            Ok(p) => p,
        };
        Ok(Backend {
            host: host.to_string(),
            port,
        })
    }
}

/// What a route names as a backend: an address (a name there is resolved at each connect,
/// its addresses tried in order), or a DNS name whose answers are the backends.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Upstream {
    Fixed(Backend),
    Discovered(Lookup),
}

/// A name whose DNS answers are a route's backends, one per address, found again as the
/// answers' TTL says (`balance::discovery`). The spellings are a contract.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Lookup {
    /// `dns:NAME:PORT`: every A and AAAA record of NAME, at PORT.
    Dns { name: String, port: u16 },
    /// `srv:NAME`: every SRV record of NAME (the lowest priority's), its target's addresses
    /// at its port.
    Srv { name: String },
}

impl Lookup {
    pub fn name(&self) -> &str {
        match self {
            Lookup::Dns { name, .. } | Lookup::Srv { name } => name,
        }
    }
}

impl fmt::Display for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lookup::Dns { name, port } => write!(f, "dns:{name}:{port}"),
            Lookup::Srv { name } => write!(f, "srv:{name}"),
        }
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Fixed(backend) => backend.fmt(f),
            Upstream::Discovered(lookup) => lookup.fmt(f),
        }
    }
}

impl FromStr for Upstream {
    type Err = String;

    /// `dns:NAME:PORT`, `srv:NAME`, or a [`Backend`].
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.to_ascii_lowercase();
        let name_ok = |name: &str| {
            !name.is_empty()
                && name.len() <= 253
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        };
        if let Some(rest) = lower.strip_prefix("dns:") {
            let (name, port) = rest.rsplit_once(':').ok_or_else(|| {
                format!(
                    "backend '{s}' needs a port: write dns:NAME:PORT, as in dns:chat:3000 (for \
                     a host named dns, write its full name or address)"
                )
            })?;
            if !name_ok(name) {
                return Err(format!(
                    "backend '{s}': '{name}' is not a DNS name (write dns:NAME:PORT, as in \
                     dns:chat.default.svc.cluster.local:3000)"
                ));
            }
            let port = match port.parse::<u16>() {
                Ok(0) | Err(_) => {
                    return Err(format!(
                        "backend '{s}': bad port '{port}' (expected 1 to 65535)"
                    ));
                }
                Ok(port) => port,
            };
            return Ok(Upstream::Discovered(Lookup::Dns {
                name: name.to_string(),
                port,
            }));
        }
        if let Some(name) = lower.strip_prefix("srv:") {
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "backend '{s}': srv:NAME asks NAME's SRV records, and '{name}' is a port: \
                     for a host named srv, write its full name or address \
                     (srv.example.internal:{name})"
                ));
            }
            if !name_ok(name) {
                return Err(format!(
                    "backend '{s}': '{name}' is not a DNS name (write srv:NAME, as in \
                     srv:_http._tcp.chat.default.svc.cluster.local)"
                ));
            }
            return Ok(Upstream::Discovered(Lookup::Srv {
                name: name.to_string(),
            }));
        }
        s.parse().map(Upstream::Fixed)
    }
}

/// One `--route` rule as parsed from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// Lower-case host without port; `None` matches any host.
    pub host: Option<String>,
    pub path: String,
    pub backends: Vec<Upstream>,
}

impl FromStr for RouteSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (target, backends) = s.split_once('=').ok_or_else(|| {
            format!("route '{s}' has no '=': write PATH=BACKEND, as in /ws/=127.0.0.1:3000")
        })?;
        let (host, path) = match target.find('/') {
            Some(0) => (None, target),
            Some(i) => (Some(&target[..i]), &target[i..]),
            None if target.is_empty() => {
                return Err(format!("route '{s}' has no path before '='"));
            }
            None => {
                let hint = match looks_like_a_host(target) {
                    true => format!("{target}/={backends} for every path of {target}"),
                    false => format!("/{target}={backends}"),
                };
                return Err(format!(
                    "route '{s}': a route is [HOST]PATH=BACKEND and the path starts with '/': \
                     write {hint}"
                ));
            }
        };
        if let Some(h) = host
            && !looks_like_a_host(h)
        {
            return Err(format!(
                "route '{s}': the path must start with '/' (write /{target}={backends}); a \
                 host route names a host before the path, as in chat.example.com/={backends}"
            ));
        }
        let host = match host {
            Some(h) => {
                let h = normalize_host(h);
                if h.is_empty() || h.chars().any(|c| c.is_whitespace()) {
                    return Err(format!("route '{s}': bad host '{h}'"));
                }
                Some(h)
            }
            None => None,
        };
        if path.contains(['?', '#']) || path.chars().any(|c| c.is_whitespace()) {
            return Err(format!(
                "route '{s}': the path '{path}' may not hold '?', '#' or spaces"
            ));
        }
        let backends = backends
            .split(',')
            .map(|b| b.trim().parse::<Upstream>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("route '{s}': {e}"))?;
        Ok(RouteSpec {
            host,
            path: resolve_dot_segments(path).into_owned(),
            backends,
        })
    }
}

/// Whether a name before a route's path is meant as a host: a dotted name or address, a
/// bracketed IPv6 address, or `localhost`. `socket.io` is dotted but is socket.io's path
/// (`/socket.io/`), by far the most common route, so it never counts as a host.
fn looks_like_a_host(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let (name, _) = match name.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => {
            (h.to_string(), p)
        }
        _ => (name.clone(), ""),
    };
    name != "socket.io" && (name == "localhost" || name.starts_with('[') || name.contains('.'))
}

/// A route with its backends. Which backend a connection tries first is `balance`'s
/// business: the table holds no counters and no health, so it can be rebuilt at will.
#[derive(Debug)]
pub struct Route {
    pub spec: RouteSpec,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}",
            self.spec.host.as_deref().unwrap_or(""),
            self.spec.path
        )
    }
}

#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Builds the table; two rules for the same host and path are a configuration error.
    pub fn new(specs: Vec<RouteSpec>) -> Result<Self, String> {
        let mut routes: Vec<Route> = Vec::with_capacity(specs.len());
        for spec in specs {
            if let Some(old) = routes
                .iter()
                .find(|r| r.spec.host == spec.host && r.spec.path == spec.path)
            {
                return Err(format!("two routes for '{old}'"));
            }
            routes.push(Route { spec });
        }
        Ok(RouteTable { routes })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// Picks the route for a request: `host` as sent (any case, any port), `target` the
    /// origin-form request target (path and query).
    pub fn find(&self, host: Option<&str>, target: &str) -> Option<&Route> {
        self.find_index(host, target).map(|i| &self.routes[i])
    }

    /// The route at `index`, as [`RouteTable::find_index`] gave it.
    pub fn get(&self, index: usize) -> &Route {
        &self.routes[index]
    }

    /// Like [`RouteTable::find`], as an index: two requests go to the same route exactly when
    /// their indexes are equal.
    pub fn find_index(&self, host: Option<&str>, target: &str) -> Option<usize> {
        let host = host.map(normalize_host);
        let path = match_path(target);
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| match &r.spec.host {
                Some(h) => host.as_deref() == Some(h.as_str()),
                None => true,
            })
            .filter(|(_, r)| prefix_matches(&r.spec.path, &path))
            .max_by_key(|(_, r)| (r.spec.host.is_some(), r.spec.path.len()))
            .map(|(i, _)| i)
    }

    /// True when some route names `host` (any case, any port).
    pub fn has_host(&self, host: &str) -> bool {
        let host = normalize_host(host);
        self.routes
            .iter()
            .any(|r| r.spec.host.as_deref() == Some(host.as_str()))
    }
}

/// True when `prefix` matches `path` at a segment boundary.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Lower-cases a host and drops a `:port` and a trailing dot, so `Example.COM:443` and
/// `example.com` are the same host.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// The part of a request target that routes match on: the path without query or fragment,
/// with dot-segments resolved.
pub fn match_path(target: &str) -> Cow<'_, str> {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    resolve_dot_segments(&target[..end])
}

/// RFC 3986 §5.2.4 `remove_dot_segments`, also treating percent-encoded dots (`%2e`) as dots,
/// since many backends decode them before they look at the path.
fn resolve_dot_segments(path: &str) -> Cow<'_, str> {
    let is_dot = |s: &str| s == "." || s.eq_ignore_ascii_case("%2e");
    let is_dotdot = |s: &str| {
        matches!(
            s.to_ascii_lowercase().as_str(),
            ".." | ".%2e" | "%2e." | "%2e%2e"
        )
    };
    if !path.split('/').any(|s| is_dot(s) || is_dotdot(s)) {
        return Cow::Borrowed(path);
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if is_dot(seg) {
            if i == last {
                out.push("");
            }
        } else if is_dotdot(seg) {
            out.pop();
            if i == last {
                out.push("");
            }
        } else {
            out.push(seg);
        }
    }
    Cow::Owned(format!("/{}", out.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rules: &[&str]) -> RouteTable {
        RouteTable::new(rules.iter().map(|r| r.parse().unwrap()).collect()).unwrap()
    }

    fn pick(t: &RouteTable, host: Option<&str>, target: &str) -> Option<String> {
        t.find(host, target).map(|r| r.to_string())
    }

    #[test]
    fn longest_prefix_at_segment_boundary() {
        let t = table(&["/=a:1", "/ws=b:1", "/ws/chat/=c:1"]);
        assert_eq!(pick(&t, None, "/ws").as_deref(), Some("/ws"));
        assert_eq!(pick(&t, None, "/ws/x").as_deref(), Some("/ws"));
        assert_eq!(pick(&t, None, "/ws?x=1").as_deref(), Some("/ws"));
        assert_eq!(pick(&t, None, "/wsx").as_deref(), Some("/"));
        assert_eq!(pick(&t, None, "/ws/chat/1").as_deref(), Some("/ws/chat/"));
        assert_eq!(pick(&t, None, "/ws/chat").as_deref(), Some("/ws"));
    }

    #[test]
    fn trailing_slash_prefix_needs_the_slash() {
        let t = table(&["/socket.io/=a:1"]);
        assert!(t.find(None, "/socket.io/?EIO=4").is_some());
        assert!(t.find(None, "/socket.io").is_none());
        assert!(t.find(None, "/socket.iox/").is_none());
    }

    #[test]
    fn host_route_beats_longer_hostless_route() {
        let t = table(&["/api/v1/=a:1", "API.example.com/=b:1"]);
        assert_eq!(
            pick(&t, Some("api.example.com:8443"), "/api/v1/x").as_deref(),
            Some("api.example.com/")
        );
        assert_eq!(
            pick(&t, Some("other.example.com"), "/api/v1/x").as_deref(),
            Some("/api/v1/")
        );
        assert_eq!(pick(&t, None, "/x"), None);
    }

    #[test]
    fn dot_segments_resolved_before_matching() {
        let t = table(&["/ws/=a:1", "/admin=b:1"]);
        assert_eq!(pick(&t, None, "/ws/../admin").as_deref(), Some("/admin"));
        assert_eq!(
            pick(&t, None, "/ws/%2E%2e/admin").as_deref(),
            Some("/admin")
        );
        assert_eq!(pick(&t, None, "/ws/./x").as_deref(), Some("/ws/"));
        assert_eq!(pick(&t, None, "/../../ws/x").as_deref(), Some("/ws/"));
        assert_eq!(match_path("/a/b/.."), "/a/");
        assert_eq!(match_path("/a/./b/."), "/a/b/");
    }

    #[test]
    fn rules_parse_and_errors_say_what_is_wrong() {
        let r: RouteSpec = "api.example.com/x=[::1]:8080, 127.0.0.1:8081"
            .parse()
            .unwrap();
        assert_eq!(r.host.as_deref(), Some("api.example.com"));
        assert_eq!(r.path, "/x");
        assert_eq!(r.backends[0].to_string(), "[::1]:8080");
        assert_eq!(r.backends[1].to_string(), "127.0.0.1:8081");
        let err = |s: &str| s.parse::<RouteSpec>().unwrap_err();
        assert!(err("/ws").contains("no '='"));
        assert!(err("/ws=127.0.0.1").contains("needs a port"));
        assert!(err("/ws=127.0.0.1:99999").contains("bad port"));
        assert!(err("/ws=127.0.0.1:0").contains("bad port"));
        assert!(err("/ws=::1:80").contains("brackets"));
        assert!(err("=a:1").contains("no path"));
        assert!(err("socket.io/=127.0.0.1:3000").contains("write /socket.io/=127.0.0.1:3000"));
        assert!(err("ws/=a:1").contains("write /ws/=a:1"));
        assert!(err("ws=a:1").contains("write /ws=a:1"));
        assert!(err("example.com=a:1").contains("write example.com/=a:1"));
        assert!("localhost/=a:1".parse::<RouteSpec>().is_ok());
        assert!("chat.example.com/=a:1".parse::<RouteSpec>().is_ok());
        assert!(RouteTable::new(vec![err_free("/a=x:1"), err_free("/a=y:1")]).is_err());
    }

    #[test]
    fn backends_may_be_written_as_plain_urls() {
        let b = |s: &str| s.parse::<Backend>().map(|b| b.to_string());
        assert_eq!(b("http://127.0.0.1:3000").as_deref(), Ok("127.0.0.1:3000"));
        assert_eq!(
            b("ws://app.internal:3000/").as_deref(),
            Ok("app.internal:3000")
        );
        assert_eq!(b("http://app.internal").as_deref(), Ok("app.internal:80"));
        assert_eq!(b("HTTP://[::1]:8080").as_deref(), Ok("[::1]:8080"));
        assert_eq!(b("http://[::1]").as_deref(), Ok("[::1]:80"));
        assert!(
            b("http://127.0.0.1:3000/api")
                .unwrap_err()
                .contains("not rewritten")
        );
        assert!(b("https://127.0.0.1:3000").unwrap_err().contains("not TLS"));
        assert!(b("wss://127.0.0.1:3000").unwrap_err().contains("not TLS"));
    }

    fn err_free(s: &str) -> RouteSpec {
        s.parse().unwrap()
    }

    #[test]
    fn discovered_backends_are_spelled_dns_and_srv() {
        let r: RouteSpec =
            "/socket.io/=dns:Chat.default.svc.cluster.local:3000,srv:_http._tcp.chat,127.0.0.1:9"
                .parse()
                .unwrap();
        assert_eq!(
            r.backends,
            vec![
                Upstream::Discovered(Lookup::Dns {
                    name: "chat.default.svc.cluster.local".into(),
                    port: 3000
                }),
                Upstream::Discovered(Lookup::Srv {
                    name: "_http._tcp.chat".into()
                }),
                Upstream::Fixed("127.0.0.1:9".parse().unwrap()),
            ]
        );
        assert_eq!(
            r.backends[0].to_string(),
            "dns:chat.default.svc.cluster.local:3000"
        );
        for (bad, says) in [
            ("dns:chat", "needs a port"),
            ("dns:chat:0", "bad port"),
            ("dns:ch at:80", "not a DNS name"),
            ("srv:", "not a DNS name"),
            ("srv:8080", "is a port"),
            ("dns:53", "needs a port"),
        ] {
            let e = bad.parse::<Upstream>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
