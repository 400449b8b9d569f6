//! Rendezvous (highest-random-weight) hashing for `ip-hash`, with a hash fixed here so every
//! wssbridge process, on every host and across restarts and releases, sends the same client
//! address to the same backend given the same backend list.
//!
//! The weight of a backend for a client is `fmix64(fnv1a64(BACKEND ‖ 0x00 ‖ CLIENT))`:
//! - `BACKEND` is the backend as written in `--route` (`127.0.0.1:3001`, `[::1]:3001`,
//!   `app.internal:3001`), as bytes;
//! - `CLIENT` is the client's IPv4 address as its 4 bytes, or the first 8 bytes (the /64) of
//!   an IPv6 address, so one host's privacy addresses stay together; an IPv4-mapped IPv6
//!   address counts as IPv4;
//! - `fnv1a64` is FNV-1a 64-bit (offset basis 0xcbf29ce484222325, prime 0x100000001b3);
//! - `fmix64` is MurmurHash3's 64-bit finalizer, which spreads FNV's weak low bits.
//!
//! The backend with the highest weight is the client's first choice, the next highest its
//! second, and so on (ties by list order). A backend that goes away moves only the clients
//! whose first choice it was, each to its own second choice; when it comes back, they return.
//! Rust's `DefaultHasher` is not used: its algorithm may change between releases.

use std::net::IpAddr;

/// The bytes of `ip` that `ip-hash` keys on.
pub fn client_key(ip: IpAddr) -> ([u8; 8], usize) {
    let mut key = [0u8; 8];
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            key[..4].copy_from_slice(&v4.octets());
            (key, 4)
        }
        IpAddr::V6(v6) => {
            key.copy_from_slice(&v6.octets()[..8]);
            (key, 8)
        }
    }
}

/// The weight of `backend` for the client whose key is `client`.
pub fn weight(backend: &str, client: &[u8]) -> u64 {
    fmix64(fnv1a64(&[backend.as_bytes(), &[0], client]))
}

/// FNV-1a, 64-bit, over the concatenation of `parts`.
fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in parts.iter().flat_map(|p| p.iter()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// Indexes of `backends` in the client's order of preference.
pub fn rank(backends: &[&str], ip: IpAddr) -> Vec<usize> {
    let (key, len) = client_key(ip);
    let mut weighted: Vec<(u64, usize)> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| (weight(b, &key[..len]), i))
        .collect();
    // Highest weight first; equal weights keep list order.
    weighted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    weighted.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const THREE: [&str; 3] = ["127.0.0.1:3001", "127.0.0.1:3002", "127.0.0.1:3003"];

    fn addresses(n: u32) -> impl Iterator<Item = IpAddr> {
        (0..n).map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7919)))
    }

    /// Fixed values: if these change, every deployment's clients move. Never update them
    /// without a note in the changelog.
    #[test]
    fn fnv1a_matches_its_reference_vectors() {
        assert_eq!(fnv1a64(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(&[b"foo", b"bar"]), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_hash_is_fixed() {
        assert_eq!(
            weight("127.0.0.1:3001", &[127, 0, 0, 2]),
            0xa7be_864b_fc9a_f1d7
        );
        assert_eq!(
            weight("[::1]:80", &[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0]),
            0x61d5_04c4_a4e9_3153
        );
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(rank(&THREE, ip), rank(&THREE, ip));
    }

    #[test]
    fn spreads_within_ten_percent_over_three_backends() {
        let mut counts = [0usize; 3];
        for ip in addresses(10_000) {
            counts[rank(&THREE, ip)[0]] += 1;
        }
        for c in counts {
            assert!((3000..=3667).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn a_backend_going_away_moves_only_its_own_clients_to_their_second_choice() {
        let two = [THREE[0], THREE[2]];
        let mut moved = 0;
        for ip in addresses(10_000) {
            let before = rank(&THREE, ip);
            let after = rank(&two, ip);
            let first_before = THREE[before[0]];
            let first_after = two[after[0]];
            if first_before == THREE[1] {
                moved += 1;
                assert_eq!(first_after, THREE[before[1]], "to its second choice");
            } else {
                assert_eq!(first_after, first_before, "the others stay");
            }
        }
        // About 1/3 of the keys were on the one that went away.
        assert!((3000..=3667).contains(&moved), "{moved} moved");
    }

    #[test]
    fn ipv6_clients_hash_on_their_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse::<Ipv6Addr>().unwrap().into();
        let b: IpAddr = "2001:db8:1:2:ffff:eeee:dddd:cccc"
            .parse::<Ipv6Addr>()
            .unwrap()
            .into();
        let c: IpAddr = "2001:db8:1:3::1".parse::<Ipv6Addr>().unwrap().into();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().into();
        assert_eq!(client_key(mapped), client_key("10.0.0.1".parse().unwrap()));
    }
}
