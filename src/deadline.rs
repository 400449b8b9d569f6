//! Time limits as deadlines. Every stage's timeout is a point in time counted from accept,
//! so a slow PROXY header or handshake leaves less time for the request head, never more.
//!
//! A leaf: imports nothing of the crate.

use std::future::Future;

use tokio::time::Instant;

/// `future`'s output, or `None` if `deadline` came first (no deadline: it waits as long as
/// the future takes).
pub async fn within<F: Future>(deadline: Option<Instant>, future: F) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, future).await.ok(),
        None => Some(future.await),
    }
}
