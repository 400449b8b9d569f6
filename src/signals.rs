//! Signals: SIGTERM and SIGINT → the shutdown future that `run` is given; SIGHUP → reload;
//! SIGUSR2 → binary upgrade (`upgrade`).
//!
//! The first SIGTERM or SIGINT starts a graceful shutdown; a second SIGINT (an impatient
//! Ctrl-C) exits at once. SIGHUP never ends the process (its default action would): it asks
//! for the configuration files to be read again.

use std::future::Future;
use std::pin::Pin;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Every signal wssbridge acts on, listened for from the moment [`listen`] returns.
pub struct Signals {
    /// Resolves at the first SIGTERM or SIGINT; after a SIGINT, with the stream a second one
    /// arrives on, for [`second_interrupt`].
    pub shutdown: Pin<Box<dyn Future<Output = Option<Signal>> + Send>>,
    /// SIGHUP: reload.
    pub hangups: Hangups,
    /// SIGUSR2: binary upgrade.
    pub upgrades: Signal,
}

/// Starts listening for every signal at once: from here on none of them ends the process by
/// its default action. Called by `main` as soon as the runtime is up, before any file is read.
pub fn listen() -> anyhow::Result<Signals> {
    Ok(Signals {
        shutdown: Box::pin(shutdown()),
        hangups: hangups()?,
        upgrades: signal(SignalKind::user_defined2())
            .map_err(|e| anyhow::anyhow!("cannot listen for SIGUSR2: {e}"))?,
    })
}

/// Starts listening for SIGTERM and SIGINT at once (from then on they no longer end the
/// process on their own), and resolves on the first of them (with the SIGINT stream, after a
/// SIGINT).
pub fn shutdown() -> impl Future<Output = Option<Signal>> {
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move { shutdown_on(signals).await }
}

async fn shutdown_on(
    signals: (std::io::Result<Signal>, std::io::Result<Signal>),
) -> Option<Signal> {
    let (Ok(mut term), Ok(mut int)) = signals else {
        tracing::warn!("cannot listen for signals; shutdown needs SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {
            tracing::info!("SIGTERM received: shutting down");
            None
        }
        _ = int.recv() => {
            tracing::info!("SIGINT received: shutting down (a second SIGINT exits at once)");
            Some(int)
        }
    }
}

/// An impatient Ctrl-C: a second SIGINT on `int` exits at once (130), whatever is left. The
/// supervisor runs it as a task of its own through the shutdown.
pub async fn second_interrupt(mut int: Signal) {
    int.recv().await;
    tracing::warn!("second SIGINT: exiting now");
    std::process::exit(130);
}

/// SIGHUPs, listened for from the moment this returns.
pub struct Hangups(Signal);

/// Starts listening for SIGHUP, which from then on no longer ends the process.
pub fn hangups() -> anyhow::Result<Hangups> {
    let hup = signal(SignalKind::hangup())
        .map_err(|e| anyhow::anyhow!("cannot listen for SIGHUP: {e}"))?;
    Ok(Hangups(hup))
}

impl Hangups {
    /// Calls `reload` at every SIGHUP, for as long as the process runs.
    pub async fn for_each(mut self, reload: impl Fn()) {
        while self.0.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the configuration");
            reload();
        }
    }
}
