//! The import rules of ARCHITECTURE.md, checked: each module of `src/` may use only the crate
//! modules its rule allows, so a change that breaks a rule fails here, not in a reader's grep.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each module and what of the crate it may use (a path, or a path's start). Leaves use
/// nothing of the crate. A module not listed here fails the test: a new module needs a rule.
const RULES: &[(&str, &[&str])] = &[
    // Leaves: anything may use them, they use nothing.
    ("cidr", &[]),
    ("deadline", &[]),
    ("lifecycle", &[]),
    ("metrics", &[]),
    ("pidfile", &[]),
    ("proxy_protocol", &[]),
    ("respond", &[]),
    ("route", &[]),
    ("signals", &[]),
    ("trim", &[]),
    // The copy knows no HTTP: it asks a gate.
    ("splice", &["metrics"]),
    // The WebSocket hook: frame lengths, and the splice's hook trait. No HTTP.
    ("websocket", &["splice", "websocket"]),
    // TLS knows no HTTP and no routes.
    ("tls", &["splice", "deadline", "metrics"]),
    // HTTP is pure: no configuration, no process state, no connection.
    (
        "http",
        &["http", "route", "respond", "splice", "tls", "metrics"],
    ),
    // Balancing knows no HTTP (but a health check's request, `http::probe`) and no TLS.
    (
        "balance",
        &[
            "http::probe",
            "lifecycle",
            "proxy_protocol",
            "route",
            "metrics",
        ],
    ),
    ("connect", &["balance", "route", "metrics"]),
    // systemd's readiness: the lifecycle's events, and nothing else of the crate.
    ("notify", &["lifecycle"]),
    // Binary upgrade: the listeners to hand on, and the readiness protocol to hear.
    ("upgrade", &["accept", "notify"]),
    // `--check`: a built configuration, shown.
    ("check", &["config"]),
    // Configuration is built, not run: no process state, nothing that binds or spawns.
    ("config", &["balance", "cidr", "http", "route", "tls"]),
    (
        "cli",
        &[
            "balance",
            "cidr",
            "config",
            "proxy_protocol",
            "route",
            "tls",
        ],
    ),
    (
        "state",
        &["balance", "config", "lifecycle", "metrics", "tls"],
    ),
    ("reload", &["config", "lifecycle", "state", "tls"]),
    // ACME: the state directory's layout (config), and a reload to swap a certificate in.
    ("acme", &["acme", "config", "reload", "state"]),
    (
        "admin",
        &[
            "balance::Health",
            "deadline",
            "http",
            "lifecycle",
            "metrics",
            "respond",
            "state",
            "tls::certs::rfc3339",
        ],
    ),
    (
        "redirect",
        &["config", "deadline", "http", "respond", "route", "tls"],
    ),
    // One connection's pipeline: every stage, nothing that runs the process.
    (
        "conn",
        &[
            "balance",
            "cidr",
            "config",
            "connect",
            "deadline",
            "http",
            "metrics",
            "proxy_protocol",
            "respond",
            "splice",
            "state",
            "tls",
            "websocket",
        ],
    ),
    (
        "accept",
        &[
            "cidr",
            "config",
            "conn",
            "connect::tune",
            "deadline",
            "metrics",
            "notify::Parent",
            "notify::PARENT_FDNAME",
            "proxy_protocol",
            "redirect",
            "state",
        ],
    ),
    // The supervisor.
    (
        "server",
        &[
            "accept",
            "acme",
            "admin",
            "config",
            "lifecycle",
            "log_startup",
            "notify",
            "pidfile",
            "reload",
            "signals",
            "state",
            "trim",
            "upgrade",
            "websocket::SPREAD",
        ],
    ),
];

#[test]
fn every_module_uses_only_what_its_rule_allows() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut broken = Vec::new();
    for file in rust_files(&src) {
        let relative = file.strip_prefix(&src).unwrap();
        let module = module_of(relative);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some((_, allowed)) = RULES.iter().find(|(m, _)| *m == module) else {
            broken.push(format!(
                "{}: module `{module}` has no rule",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for used in crate_paths(&text) {
            let ok = used.split("::").next() == Some(module.as_str())
                || allowed
                    .iter()
                    .any(|a| used == *a || used.starts_with(&format!("{a}::")));
            if !ok {
                broken.push(format!("{}: uses crate::{used}", relative.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports against ARCHITECTURE.md's rules:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_inline_paths() {
    let text = "use crate::{conn, redirect::serve};\n// crate::server in a comment\n\
                let x = crate::http::probe::request(p, h);\nuse crate::splice;\n\
                use crate::balance::Health;";
    let found: BTreeSet<String> = crate_paths(text).into_iter().collect();
    let expected: BTreeSet<String> = [
        "conn",
        "redirect::serve",
        "http::probe::request",
        "splice",
        "balance::Health",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(found, expected);
}

/// `src/http/exchange.rs` → `http`; `src/splice.rs` → `splice`.
fn module_of(relative: &Path) -> String {
    let first = relative.components().next().unwrap();
    let name = first.as_os_str().to_string_lossy();
    name.strip_suffix(".rs").unwrap_or(&name).to_string()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// Every `crate::path` outside comments, with `crate::{a, b::c}` groups split.
fn crate_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let path = path_at(item.trim());
                    if !path.is_empty() {
                        found.push(path);
                    }
                }
                rest = &group[end..];
            } else {
                let path = path_at(after);
                rest = &after[path.len()..];
                found.push(path);
            }
        }
    }
    found
}

/// The `a::b::C` at the start of `s` (modules, then an item).
fn path_at(s: &str) -> String {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    s[..end].trim_end_matches(':').to_string()
}
