//! kTLS, probed: whether the kernel could take over the record layer.
//!
//! With kernel TLS (the `tls` upper-layer protocol), rustls would do only the handshake; its
//! traffic secrets (`dangerous_extract_secrets`, with `enable_secret_extraction` set on the
//! server config) would go to the socket by `setsockopt(SOL_TLS)`, and from then on the kernel
//! encrypts and decrypts: a tunnel's bytes could move by `splice(2)` with no copy through user
//! space, and the 4 KiB receive buffer and the AEAD state would leave the process. It is not
//! built: no machine CI runs on has the `tls` module, so the path could not be tested. What
//! is built is the probe, so an operator sees at start which path serves and why, and the
//! fallback, which is the user-space path every connection takes today.
//!
//! The kernel lists the upper-layer protocols it has loaded in
//! `/proc/sys/net/ipv4/tcp_available_ulp`. A kernel with the module installed but not loaded
//! lists no `tls` until the first use or `modprobe tls`, so the probe reads it as absent.

use std::path::Path;

/// The list of loaded upper-layer protocols.
pub const AVAILABLE_ULP: &str = "/proc/sys/net/ipv4/tcp_available_ulp";

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// The kernel has the `tls` ULP loaded; wssbridge still encrypts in user space.
    Available,
    /// No kTLS, and why (for the log line).
    Unavailable(String),
}

/// Reads the kernel's list of ULPs at `path` (see [`AVAILABLE_ULP`]).
pub fn probe(path: &Path) -> Support {
    match std::fs::read_to_string(path) {
        Ok(list) => parse(&list),
        Err(e) => Support::Unavailable(format!("cannot read {}: {e}", path.display())),
    }
}

/// The kernel's space-separated list of ULPs, judged.
pub fn parse(list: &str) -> Support {
    if list.split_whitespace().any(|ulp| ulp == "tls") {
        return Support::Available;
    }
    let list = list.trim();
    let shown = if list.is_empty() { "none" } else { list };
    Support::Unavailable(format!(
        "the kernel has no tls ULP loaded (tcp_available_ulp: {shown}; modprobe tls)"
    ))
}

/// Logs the probe's finding at start: either way TLS stays in user space (rustls).
pub fn log(support: &Support) {
    match support {
        Support::Available => tracing::info!(
            "kTLS available in the kernel, not used: TLS records are encrypted in user space \
             (rustls)"
        ),
        Support::Unavailable(why) => {
            tracing::info!(
                "kTLS unavailable: {why}; TLS records are encrypted in user space (rustls)"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_read_word_by_word() {
        assert_eq!(parse("espintcp mptcp tls\n"), Support::Available);
        assert_eq!(parse("tls"), Support::Available);
        let Support::Unavailable(why) = parse("mptcp\n") else {
            panic!("tls found in mptcp")
        };
        assert!(why.contains("tcp_available_ulp: mptcp;"), "{why}");
        assert!(matches!(parse("tlsx mptcp"), Support::Unavailable(_)));
        let Support::Unavailable(why) = parse("\n") else {
            panic!("tls found in nothing")
        };
        assert!(why.contains("tcp_available_ulp: none"), "{why}");
    }

    #[test]
    fn an_unreadable_list_is_unavailable_naming_the_file() {
        let Support::Unavailable(why) = probe(Path::new("/nonexistent/tcp_available_ulp")) else {
            panic!("kTLS from a missing file")
        };
        assert!(why.contains("/nonexistent/tcp_available_ulp"), "{why}");
    }
}
