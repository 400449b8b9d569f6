//! Signals → the shutdown future that `run` is given.
//!
//! The first SIGTERM or SIGINT starts a graceful shutdown; a second SIGINT (an impatient
//! Ctrl-C) exits at once.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for signals; shutdown needs SIGKILL");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!("{name} received: shutting down (a second SIGINT exits at once)");
    tokio::spawn(async move {
        int.recv().await;
        tracing::warn!("second SIGINT: exiting now");
        std::process::exit(130);
    });
}
