//! The import rules of ARCHITECTURE.md, checked: each module of `src/` may use only the crate
//! modules its rule allows, so a change that breaks a rule fails here, not in a reader's grep.
//!
//! Files are parsed with `syn`, not searched as text: every `use` item (groups nested and
//! split over lines, in inline modules too) and every path in the code (`crate::x::f()`,
//! `crate :: x`) is seen, and `super::`/`self::` are resolved against the file's module, so
//! `use super::conn;` in a top-level file is `crate::conn`. `lib.rs` and `main.rs` have rules
//! too (`main` reaches the library as `wssbridge::`). `the_checker_*` tests prove each form is
//! caught.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Each module and what of the crate it may use (a path, or a path's start). Leaves use
/// nothing of the crate. A module not listed here fails the test: a new module needs a rule.
const RULES: &[(&str, &[&str])] = &[
    // The library's root declares the modules and re-exports the entry points.
    ("lib", &["accept::Listeners", "config", "server::Server"]),
    // The binary: flags, logging, the runtime, then the library's entry points.
    (
        "main",
        &[
            "accept",
            "check",
            "cli",
            "config",
            "notify",
            "pidfile",
            "runtime",
            "server",
            "signals",
            "Config",
            "Listeners",
            "Server",
        ],
    ),
    // Leaves: anything may use them, they use nothing.
    ("cidr", &[]),
    ("deadline", &[]),
    ("lifecycle", &[]),
    ("metrics", &[]),
    ("pidfile", &[]),
    ("proxy_protocol", &[]),
    ("readahead", &[]),
    ("respond", &[]),
    ("route", &[]),
    // The threads connections are served on: tokio's, nothing of the crate.
    ("runtime", &[]),
    ("signals", &[]),
    ("trim", &[]),
    // The copy knows no HTTP: it asks a gate.
    ("splice", &["metrics"]),
    // The WebSocket hook: frame lengths, the splice's hook trait, and the counts it keeps.
    // No HTTP.
    ("websocket", &["splice", "websocket", "metrics"]),
    // TLS knows no HTTP and no routes.
    ("tls", &["splice", "metrics", "readahead"]),
    // HTTP is pure: no configuration, no process state, no connection.
    ("http", &["http", "route", "respond", "splice", "tls"]),
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
    // `--check`: a built configuration, shown; `--online`, one health check of each backend
    // and one question to the ACME CA.
    (
        "check",
        &["config", "balance::health", "acme::reach", "route::Backend"],
    ),
    // Configuration is built, not run: no process state, nothing that binds or spawns (of
    // the runtime, the mode's name and the default thread count).
    (
        "config",
        &[
            "balance",
            "cidr",
            "http",
            "route",
            "runtime::Runtime",
            "runtime::threads",
            "runtime::MAX_THREADS",
            "tls",
        ],
    ),
    (
        "cli",
        &[
            "balance",
            "cidr",
            "config",
            "proxy_protocol",
            "route",
            "runtime::Runtime",
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
            "balance::discovery",
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
        &[
            "config",
            "deadline",
            "http",
            "readahead",
            "respond",
            "route",
        ],
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
            "lifecycle::Spawner",
            "metrics",
            "notify::Parent",
            "notify::PARENT_FDNAME",
            "proxy_protocol",
            "redirect",
            "runtime::worker",
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
            "notify",
            "pidfile",
            "reload",
            "runtime",
            "signals",
            "state",
            "tls::ktls",
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
        let module = module_path(relative);
        let top = module.first().cloned().unwrap_or_default();
        let Some((_, allowed)) = RULES.iter().find(|(m, _)| *m == top) else {
            broken.push(format!(
                "{}: module `{top}` has no rule",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let used = match crate_paths(&text, &module) {
            Ok(used) => used,
            Err(e) => {
                broken.push(format!("{}: does not parse: {e}", relative.display()));
                continue;
            }
        };
        for used in used {
            if !allows(&top, allowed, &used) {
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

/// Whether module `top` may use `used` (a path from the crate root): its own paths, and
/// what its rule names (a path, or a path's start).
fn allows(top: &str, allowed: &[&str], used: &str) -> bool {
    used.split("::").next() == Some(top)
        || allowed
            .iter()
            .any(|a| used == *a || used.starts_with(&format!("{a}::")))
}

/// What the checker finds in `text` as the file of module `module`, sorted.
fn found(text: &str, module: &[&str]) -> BTreeSet<String> {
    let module: Vec<String> = module.iter().map(|s| s.to_string()).collect();
    crate_paths(text, &module).unwrap().into_iter().collect()
}

fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_checker_sees_grouped_and_inline_paths() {
    let text = "use crate::{conn, redirect::serve};\n// crate::server in a comment\n\
                fn f() { let x = crate::http::probe::request(p, h); }\nuse crate::splice;\n\
                use crate::balance::Health;";
    assert_eq!(
        found(text, &["check"]),
        set(&[
            "conn",
            "redirect::serve",
            "http::probe::request",
            "splice",
            "balance::Health"
        ])
    );
}

#[test]
fn the_checker_resolves_super_from_a_top_level_file() {
    // In src/server.rs, super is the crate root.
    assert_eq!(found("use super::conn;", &["server"]), set(&["conn"]));
    // In src/http/exchange.rs, super is http; in its tests module, super is the file.
    assert_eq!(
        found(
            "use super::head::Head;\nmod tests { use super::*; use super::super::route; }",
            &["http", "exchange"]
        ),
        set(&["http::head::Head", "http::exchange", "http::route"])
    );
}

#[test]
fn the_checker_sees_a_group_split_over_lines_and_nested_groups() {
    let split = "use crate::{\n    metrics::Metrics,\n    conn,\n};";
    assert_eq!(found(split, &["tls"]), set(&["metrics::Metrics", "conn"]));
    let nested = "use crate::{metrics::X, http::{head, exchange::{Exchange}}, conn};";
    assert_eq!(
        found(nested, &["tls"]),
        set(&[
            "metrics::X",
            "http::head",
            "http::exchange::Exchange",
            "conn"
        ])
    );
}

#[test]
fn the_checker_sees_spaced_paths_and_self() {
    assert_eq!(
        found("fn f() { crate :: conn :: serve(); }", &["tls"]),
        set(&["conn::serve"])
    );
    assert_eq!(
        found("use self::hello::Budget;", &["tls"]),
        set(&["tls::hello::Budget"])
    );
}

#[test]
fn the_checker_reads_lib_s_bare_module_paths() {
    assert_eq!(
        found(
            "pub use server::Server;\npub use std::future::Future;",
            &["lib"]
        ),
        set(&["server::Server"])
    );
}

#[test]
fn the_checker_reads_main_as_the_library_s_user() {
    assert_eq!(
        found(
            "use wssbridge::conn;\nfn f() { wssbridge::server::Server::new(); }",
            &["main"]
        ),
        set(&["conn", "server::Server::new"])
    );
    assert!(
        !allows("main", RULES[1].1, "conn"),
        "main may not reach conn"
    );
    assert!(allows("main", RULES[1].1, "server::Server::new"));
}

/// `src/http/exchange.rs` → `[http, exchange]`; `src/http/mod.rs` → `[http]`; `src/lib.rs`
/// → `[lib]` (checked as its own module, though it is the root).
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.strip_suffix(".rs").unwrap_or(&last).to_string();
        if stem != "mod" {
            parts.push(stem);
        }
    }
    parts
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

/// Every path of the crate that `text`, the file of `module`, names: in `use` items (groups
/// flattened) and in code, from the crate root. `lib` and `main` are the root: `super` does
/// not apply there, and `main` names the library `wssbridge`.
fn crate_paths(text: &str, module: &[String]) -> syn::Result<Vec<String>> {
    let file = syn::parse_file(text)?;
    let root = matches!(module, [m] if m == "lib" || m == "main");
    let mut visitor = Paths {
        module: if root { Vec::new() } else { module.to_vec() },
        root_name: if module == ["main"] {
            "wssbridge"
        } else {
            "crate"
        },
        found: Vec::new(),
    };
    visitor.visit_file(&file);
    Ok(visitor.found)
}

struct Paths {
    /// The module the visitor is in, from the crate root (inline modules pushed).
    module: Vec<String>,
    /// What names the crate's root: `crate`, or `wssbridge` in the binary.
    root_name: &'static str,
    found: Vec<String>,
}

impl Paths {
    /// `segments` from the crate root, if they start at it (`crate`, `super`, `self`);
    /// `None` for a path of another crate or a local name.
    fn resolve(&self, segments: &[String]) -> Option<Vec<String>> {
        let first = segments.first()?;
        if first == self.root_name {
            return Some(segments[1..].to_vec());
        }
        // In lib.rs a module of the crate is named bare (`pub use server::Server;`).
        if self.root_name == "crate"
            && self.module.is_empty()
            && RULES.iter().any(|(m, _)| m == first)
        {
            return Some(segments.to_vec());
        }
        if first != "super" && first != "self" {
            return None;
        }
        let mut base = self.module.clone();
        let mut rest = segments;
        if rest.first().is_some_and(|s| s == "self") {
            rest = &rest[1..];
        }
        while rest.first().is_some_and(|s| s == "super") {
            base.pop()?;
            rest = &rest[1..];
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    fn record(&mut self, segments: &[String]) {
        if let Some(path) = self.resolve(segments)
            && !path.is_empty()
        {
            self.found.push(path.join("::"));
        }
    }

    /// Every path a `use` tree names, groups flattened; `*` names its parent.
    fn tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let name = n.ident.to_string();
                let mut path = prefix.clone();
                if name != "self" {
                    path.push(name);
                }
                self.record(&path);
            }
            syn::UseTree::Rename(r) => {
                let mut path = prefix.clone();
                path.push(r.ident.to_string());
                self.record(&path);
            }
            syn::UseTree::Glob(_) => {
                let path = prefix.clone();
                self.record(&path);
            }
            syn::UseTree::Group(g) => {
                for item in &g.items {
                    self.tree(prefix, item);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.tree(&mut Vec::new(), &item.tree);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        // An inline module (`mod tests { … }`) is a level deeper for `super`.
        self.module.push(item.ident.to_string());
        syn::visit::visit_item_mod(self, item);
        self.module.pop();
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if path.leading_colon.is_none() && segments.len() > 1 {
            self.record(&segments);
        }
        syn::visit::visit_path(self, path);
    }
}
