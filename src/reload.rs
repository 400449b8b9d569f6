//! Reloading the configuration from its files, and the background work that keeps
//! certificates fresh: polling their content, and the daily expiry check.
//!
//! A reload builds the serving config again: from the flags file when there is one and a
//! signal asked (`--flags-file`, read again with the start's command line), else from the
//! settings in force (the state keeps them for this path alone); either way every
//! certificate, key and client CA file is read again and validated. The process config
//! stays as it was at start: a flag of it the file changed is logged by name, as taking an
//! upgrade or a restart. Only a complete build is
//! swapped in; a failed one changes nothing, is logged once as an error naming the file and
//! the reason, and the old certificates go on serving. Live connections never notice either.
//!
//! Polling compares the files' content, not their paths' metadata: certbot renews by
//! pointing `live/NAME/*.pem` symlinks at new files in `archive/`, which a watch on the path
//! would not see.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::ServingConfig;
use crate::lifecycle::Event;
use crate::state::State;
use crate::tls::certs::EXPIRY_WARNING;

/// Why a reload happened, for its log lines.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    Signal,
    Poll,
    Call,
    /// ACME got a new certificate.
    Acme,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Signal => "signal",
            Trigger::Poll => "poll",
            Trigger::Call => "call",
            Trigger::Acme => "acme",
        }
    }
}

/// Builds the configuration again from its files and swaps it in; logs the outcome and
/// tells the lifecycle's listeners.
pub fn from_files(state: &State, trigger: Trigger) -> anyhow::Result<()> {
    state.events.emit(Event::Reloading {
        why: trigger.name(),
    });
    let result = rebuild(state, trigger);
    state.events.emit(Event::Reloaded {
        result: result.as_ref().map(drop).map_err(|e| format!("{e:#}")),
    });
    state.metrics.reloaded(result.is_ok());
    match &result {
        Ok(config) => {
            tracing::info!(
                ?trigger,
                generation = config.generation,
                routes = config.pools.iter().count(),
                "configuration reloaded"
            );
            log_certificates(config);
        }
        Err(e) => tracing::error!(
            ?trigger,
            "reload failed, still serving the previous configuration: {e:#}"
        ),
    }
    result.map(drop)
}

fn rebuild(state: &State, trigger: Trigger) -> anyhow::Result<Arc<ServingConfig>> {
    let current = state.serving.load_full();
    let mut source = state.source();
    let mut restart_only = Vec::new();
    let reread = match trigger {
        // A signal or a call asks for the flags file too; a renewal or a poll only for the
        // files the settings in force name.
        Trigger::Signal | Trigger::Call => state.reread.as_ref(),
        Trigger::Poll | Trigger::Acme => None,
    };
    if let Some(reread) = reread {
        let fresh = reread.read()?;
        restart_only = source.process.changed_flags(&fresh.process);
        source.serving = fresh.serving;
    }
    let built = ServingConfig::build(&source.serving, state.process.acme.as_ref());
    let mut serving =
        built.map_err(|e| match reread.and_then(|r| r.locate(&format!("{e:#}"))) {
            Some(place) => e.context(place),
            None => e,
        })?;
    let still_ephemeral = source.serving.certs.is_empty() && state.process.acme.is_none();
    if current.tls.certs.ephemeral.is_some() && still_ephemeral {
        // The development certificate stays the one browsers were told to accept, while
        // the flags still name no certificate.
        serving.tls.certs = current.tls.certs.clone();
    }
    state.reload(serving, source.serving)?;
    for flag in restart_only {
        tracing::warn!(
            flag,
            "{flag} changed in the flags file: that takes an upgrade (SIGUSR2) or a restart; \
             the rest of the file is applied"
        );
    }
    Ok(state.serving.load_full())
}

/// One line per certificate: its file, names, issuer and expiry.
pub fn log_certificates(config: &ServingConfig) {
    for cert in config.tls.certs.infos() {
        tracing::info!(
            file = %cert.file,
            names = %cert.names.join(","),
            issuer = %cert.issuer,
            expires = %cert.expires(),
            "certificate"
        );
    }
}

/// A warning for each certificate that expires within 14 days, an error for each expired.
pub fn check_expiry(config: &ServingConfig, now: SystemTime) {
    for cert in config.tls.certs.infos() {
        let left = cert.seconds_left(now);
        let names = cert.names.join(",");
        if left <= 0 {
            tracing::error!(file = %cert.file, names = %names, expired = %cert.expires(),
                "certificate has expired: clients refuse it");
        } else if left < EXPIRY_WARNING.as_secs() as i64 {
            tracing::warn!(file = %cert.file, names = %names, expires = %cert.expires(),
                "certificate expires in {} days", left / 86_400);
        }
    }
}

/// Checks expiry once a day until `state` stops.
pub async fn expiry_daily(state: Arc<State>) {
    const DAY: Duration = Duration::from_secs(24 * 3600);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + DAY, DAY);
    loop {
        tokio::select! {
            _ = state.shutdown.stopped() => return,
            _ = ticks.tick() => check_expiry(&state.serving.load(), SystemTime::now()),
        }
    }
}

/// Reloads when the content of a certificate, key or client CA file changes, checking every
/// `interval` until `state` stops. A change that does not load is logged once, not at every
/// check; the next change is tried again.
pub async fn poll_files(state: Arc<State>, interval: Duration) {
    let mut seen = digest(&state);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            _ = state.shutdown.stopped() => return,
            _ = ticks.tick() => {}
        }
        let now = digest(&state);
        if now != seen {
            seen = now;
            // Logged inside; after a failure, the next change is tried again.
            let _ = from_files(&state, Trigger::Poll);
        }
    }
}

/// A digest of the content of every file the configuration was loaded from; a file that
/// cannot be read counts as its error, so its return is a change too.
fn digest(state: &State) -> Vec<u8> {
    let settings = state.source().serving;
    let acme = state
        .process
        .acme
        .iter()
        .flat_map(|a| a.names.iter().map(|n| a.cert_paths(n)));
    let pairs: Vec<_> = settings.certs.iter().cloned().chain(acme).collect();
    let files = pairs
        .iter()
        .flat_map(|p| [&p.cert, &p.key])
        .chain(&settings.client_cas);
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for file in files {
        match std::fs::read(file) {
            Ok(bytes) => {
                ctx.update(&(bytes.len() as u64).to_le_bytes());
                ctx.update(&bytes);
            }
            Err(e) => ctx.update(format!("unreadable: {e}").as_bytes()),
        }
    }
    ctx.finish().as_ref().to_vec()
}
