//! `--check`: the configuration exactly as a start would build it (every flag and file
//! checked by `Config::build`), with backend names resolved as a connect would, shown as a
//! table. It binds and connects to nothing (as `nginx -t`).

use std::fmt::Write;
use std::net::ToSocketAddrs;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::balance::health;
use crate::config::Config;
use crate::route::Backend;

/// How long `--check --online` waits for the CA, and for each backend.
const ONLINE: Duration = Duration::from_secs(10);

/// What `config` would serve, one line each: listeners, certificates, routes. Fails, naming
/// the route and backend, when a backend's name does not resolve.
pub fn report(config: &Config) -> anyhow::Result<String> {
    let (listening, config) = (&config.process.listening, &config.serving);
    let mut out = String::new();
    let mut line = |text: String| {
        let _ = writeln!(out, "{text}");
    };
    for addr in &listening.tls {
        line(format!("listen      {addr}  TLS"));
    }
    for addr in &listening.tls_if_possible {
        line(format!(
            "listen      {addr}  TLS, where the machine has IPv6"
        ));
    }
    for addr in &listening.redirect {
        line(format!(
            "listen      {addr}  plain HTTP, redirected to https"
        ));
    }
    for addr in &listening.redirect_if_possible {
        line(format!(
            "listen      {addr}  plain HTTP, redirected to https, where the machine has IPv6"
        ));
    }
    if let Some(addr) = listening.admin {
        line(format!(
            "listen      {addr}  admin: / (status page) /status.json /metrics /livez /healthz /readyz"
        ));
    }
    let now = SystemTime::now();
    for cert in config.tls.certs.infos() {
        line(format!(
            "certificate {}  names {}  expires {} (in {} days)  issuer {}",
            cert.file,
            cert.names.join(","),
            cert.expires(),
            cert.seconds_left(now) / 86_400,
            cert.issuer,
        ));
    }
    for pool in config.pools.iter() {
        let mut backends = Vec::new();
        for state in pool.backends() {
            let backend = &state.backend;
            let addrs: Vec<String> = (backend.host(), backend.port())
                .to_socket_addrs()
                .with_context(|| {
                    format!("route {}: backend {backend}: cannot resolve", pool.route())
                })?
                .map(|a| a.to_string())
                .collect();
            backends.push(match addrs.as_slice() {
                [one] if *one == backend.to_string() => one.clone(),
                _ => format!("{backend} ({})", addrs.join(" ")),
            });
        }
        for discovery in pool.discoveries() {
            backends.push(format!("{} (each address, found by DNS)", discovery.lookup));
        }
        let check = pool
            .check
            .as_ref()
            .map_or("off".to_string(), ToString::to_string);
        line(format!(
            "route       {}  -> {}  balance {}  health check {check}",
            pool.route(),
            backends.join(", "),
            pool.policy,
        ));
    }
    Ok(out)
}

/// `--check --online`: what [`report`] cannot know without contacting anyone, one line each.
/// The ACME CA must answer (it fails the check otherwise: no certificate could be ordered);
/// each backend is checked once as its route's health checks would, and reported up or
/// down without failing the check, as a backend may start after wssbridge.
pub async fn online(config: &Config) -> anyhow::Result<String> {
    let mut out = String::new();
    if let Some(acme) = &config.process.acme {
        tokio::time::timeout(ONLINE, crate::acme::reach(acme))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {ONLINE:?}")))
            .with_context(|| format!("--acme-directory {}", acme.directory))?;
        let _ = writeln!(
            out,
            "acme        {}  answers (its directory, a nonce, a signed request)",
            acme.directory
        );
    }
    let mut down = 0;
    let resolver = config.serving.resolver.as_ref();
    for pool in config.serving.pools.iter() {
        let mut found = Vec::new();
        for discovery in pool.discoveries() {
            let Some(resolver) = resolver else { continue };
            match resolver.resolve(&discovery.lookup).await {
                Ok(answer) => {
                    let addrs: Vec<String> = answer.addrs.iter().map(|a| a.to_string()).collect();
                    let _ = writeln!(
                        out,
                        "discovery   {}  {}  {} ({:?} TTL)",
                        pool.route(),
                        discovery.lookup,
                        addrs.join(" "),
                        answer.ttl
                    );
                    found.extend(answer.addrs.into_iter().map(Backend::from));
                }
                Err(why) => {
                    down += 1;
                    let _ = writeln!(
                        out,
                        "discovery   {}  {}  DOES NOT RESOLVE: {why}",
                        pool.route(),
                        discovery.lookup
                    );
                }
            }
        }
        let fixed = pool.backends().into_iter().map(|s| s.backend.clone());
        for backend in fixed.chain(found) {
            let verdict = match health::once(pool, &backend, ONLINE).await {
                Ok(()) => "up".to_string(),
                Err(why) => {
                    down += 1;
                    format!("DOWN: {why}")
                }
            };
            let check = pool
                .check
                .as_ref()
                .map_or("a connect".into(), |c| c.to_string());
            let _ = writeln!(
                out,
                "backend     {}  {}  {verdict} ({check})",
                pool.route(),
                backend
            );
        }
    }
    if down > 0 {
        let _ = writeln!(
            out,
            "wssbridge: {down} backend(s) down now: requests for them would get 502 until they answer"
        );
    }
    Ok(out)
}
