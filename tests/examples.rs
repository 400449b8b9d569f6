//! Every command the documentation teaches runs as written: each `wssbridge …` example in
//! `--help` (and so the man page, made from it), the README, docs/operations.md and the
//! commented lines of /etc/default/wssbridge, run through `--check` (which reads every file
//! and checks every flag, binding and connecting to nothing). Only what cannot exist on a test
//! machine is swapped: certificate and key paths for the test PKI's, the ACME state for a
//! scratch directory.

mod support;

use std::path::Path;

use support::binary::wssbridge;

/// The `wssbridge …` commands in `text`: a line starting with `wssbridge -` or
/// `sudo wssbridge -` (after indentation), or `#WSSBRIDGE_ARGS="`, joined with the lines its
/// trailing `\` continues onto. Commands built from shell (`$(…)`) are left out.
fn commands(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        let start = line
            .strip_prefix("sudo ")
            .unwrap_or(line)
            .strip_prefix("wssbridge ")
            .map(str::to_string)
            .or_else(|| {
                line.strip_prefix("#WSSBRIDGE_ARGS=\"")
                    .map(|args| args.trim_end_matches('"').to_string())
            });
        // A command's words are flags: prose that begins "wssbridge puts TLS…" is not one.
        let Some(mut command) = start.filter(|c| c.starts_with('-')) else {
            continue;
        };
        while command.ends_with('\\') {
            command.pop();
            command.truncate(command.trim_end().len());
            match lines.next() {
                Some(next) => {
                    command.push(' ');
                    command.push_str(next.trim());
                }
                None => break,
            }
        }
        // A comment after the command (`# like nginx -t`) is the shell's, not ours.
        let command = command
            .split(" # ")
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        if !command.contains("$(") {
            found.push(command);
        }
    }
    found
}

/// Runs `command` through `--check` with certificates and state swapped for the test's.
fn check(source: &str, command: &str) {
    let pki = support::pki();
    let state = support::temp_dir("examples-acme");
    let mut args: Vec<String> = Vec::new();
    let mut words = command.split_whitespace().peekable();
    while let Some(word) = words.next() {
        args.push(word.to_string());
        let swap = match word {
            "--cert" => Some(pki.cert.display().to_string()),
            "--key" => Some(pki.key.display().to_string()),
            "--client-ca" | "--acme-ca" => Some(pki.dir.join("root.pem").display().to_string()),
            "--acme-state" => Some(state.display().to_string()),
            _ => None,
        };
        if let Some(swap) = swap {
            words.next();
            args.push(swap);
        }
    }
    args.push("--check".into());
    let out = wssbridge()
        .args(&args)
        .env("WSSBRIDGE_ACME_STATE", &state)
        .current_dir(&state)
        .output()
        .expect("run wssbridge");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{source}: `wssbridge {command}` does not pass --check:\n{stderr}"
    );
}

fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join(path)).expect(path)
}

#[test]
fn every_example_in_help_runs_as_written() {
    let help = wssbridge().arg("--help").output().expect("--help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let found = commands(&help);
    assert!(found.len() >= 3, "examples in --help: {found:?}");
    for command in found {
        check("--help", &command);
    }
}

#[test]
fn every_example_in_the_readme_and_operations_runs_as_written() {
    for path in ["README.md", "docs/operations.md"] {
        let found = commands(&read(path));
        assert!(!found.is_empty(), "no example found in {path}");
        for command in found {
            check(path, &command);
        }
    }
}

#[test]
fn every_example_in_etc_default_runs_as_written() {
    let found = commands(&read("deploy/default/wssbridge"));
    assert!(
        found.len() >= 2,
        "examples in /etc/default/wssbridge: {found:?}"
    );
    for command in found {
        check("/etc/default/wssbridge", &command);
    }
}

/// The shipped `/etc/wssbridge/flags` holds comments only; each example in it (a run of
/// `#--flag value` lines), uncommented as a user would, is a flags file `--check` accepts.
#[test]
fn every_example_in_the_shipped_flags_file_runs_as_written() {
    let text = read("deploy/default/flags");
    assert!(
        text.lines()
            .all(|l| l.trim().is_empty() || l.starts_with('#')),
        "the shipped flags file configures nothing"
    );
    let mut examples: Vec<Vec<&str>> = vec![Vec::new()];
    for line in text.lines() {
        match line.strip_prefix('#').filter(|l| l.starts_with("--")) {
            Some(flag) => examples.last_mut().unwrap().push(flag),
            None if !examples.last().unwrap().is_empty() => examples.push(Vec::new()),
            None => {}
        }
    }
    examples.retain(|e| !e.is_empty());
    assert!(examples.len() >= 3, "{examples:?}");
    let pki = support::pki();
    let dir = support::temp_dir("examples-flags");
    for (i, example) in examples.iter().enumerate() {
        let lines: Vec<String> = example
            .iter()
            .map(|line| match line.split_once(' ') {
                Some(("--cert", _)) => format!("--cert {}", pki.cert.display()),
                Some(("--key", _)) => format!("--key {}", pki.key.display()),
                _ => line.to_string(),
            })
            .collect();
        let file = dir.join(format!("flags-{i}"));
        std::fs::write(&file, lines.join("\n")).unwrap();
        let out = wssbridge()
            .args(["--check", "--flags-file"])
            .arg(&file)
            .output()
            .expect("run wssbridge");
        assert!(
            out.status.success(),
            "/etc/wssbridge/flags example {example:?} does not pass --check:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The extraction itself, so a test that finds nothing cannot pass quietly.
#[test]
fn commands_are_found_with_their_continuations() {
    let text = "x\n    wssbridge --listen :443 \\\n      --to 127.0.0.1:3000\n\
                sudo wssbridge --acme a.example --to 127.0.0.1:1 \\\n  --listen :443\n\
                #WSSBRIDGE_ARGS=\"--to 127.0.0.1:3000\"\n\
                wssbridge --check $(. /etc/default/wssbridge; echo $WSSBRIDGE_ARGS)\n";
    assert_eq!(
        commands(text),
        [
            "--listen :443 --to 127.0.0.1:3000",
            "--acme a.example --to 127.0.0.1:1 --listen :443",
            "--to 127.0.0.1:3000",
        ]
    );
}
