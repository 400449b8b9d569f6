//! Route matching on arbitrary host and target strings: never a panic, and a match is always
//! at a path-segment boundary of the resolved path.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wssbridge::route::{RouteTable, match_path};

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let rules = ["/=a:1", "/ws=b:1", "/ws/chat/=c:1", "/socket.io/=d:1", "api.example.com/=e:1", "API.example.com/v1=f:1"];
        RouteTable::new(rules.iter().map(|r| r.parse().unwrap()).collect()).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (host, target) = text.split_once('\n').unwrap_or(("", &text));
    let host = (!host.is_empty()).then_some(host);
    if let Some(route) = table().find(host, target) {
        let path = match_path(target);
        let prefix = &route.spec.path;
        assert!(path.starts_with(prefix.as_str()));
        let rest = &path[prefix.len()..];
        assert!(prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'));
    }
});
