//! The `http` stage: everything wssbridge knows of HTTP/1.1, from the first request head until
//! a `101` turns the connection into a blind tunnel.
//!
//! - [`head`]: request and response heads (pure parsers) and the one loop that gathers them;
//! - [`framing`]: where each message body ends (Content-Length, chunked);
//! - [`admit`]: the one admission decision for every request (421, upgrade rules, route,
//!   confinement);
//! - [`exchange`]: follows requests and responses on a connection until a `101`; the splice
//!   asks it, as its gate, what may pass;
//! - [`forwarded`]: the client's address in every request head (`--add-forwarded`);
//! - [`probe`]: an active health check's request and the reading of its answer;
//! - [`policy`]: what this stage reads of the configuration.
//!
//! Pure: no I/O beyond [`head::read`], the thin async reader of the first head.

pub mod admit;
pub mod exchange;
pub mod forwarded;
pub mod framing;
pub mod head;
pub mod policy;
pub mod probe;

pub use admit::{Admitted, Refusal, Upgrade, admit};
pub use exchange::{CookieRule, Exchange, Stop};
pub use head::{Head, HeadError, ReadError};
pub use policy::{Policy, Security};
