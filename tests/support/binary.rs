//! The real binary, run in the background for tests of what only a process shows: signals,
//! exit codes, its log on stderr.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::WAIT;

/// The wssbridge binary, with no `RUST_LOG` or `WSSBRIDGE_*` from the test's environment
/// but `WSSBRIDGE_RUNTIME` (`make test`'s second pass runs every test per core).
pub fn wssbridge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wssbridge"));
    cmd.env_remove("RUST_LOG");
    for (key, _) in std::env::vars() {
        if key.starts_with("WSSBRIDGE_") && key != "WSSBRIDGE_RUNTIME" {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// Runs to completion (it must exit by itself); returns exit code and stderr.
pub fn fails(args: &[&str]) -> (i32, String) {
    let out = wssbridge().args(args).output().expect("run wssbridge");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    (out.status.code().expect("exit code"), stderr)
}

/// The binary running in the background, its stderr collected line by line.
pub struct Running {
    pub child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Running {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut cmd = wssbridge();
        cmd.args(args).envs(env.iter().copied());
        Running::spawn(cmd)
    }

    /// Like `start`, with the test PKI's certificate and key in front of `args`.
    pub fn with_test_cert(args: &[&str]) -> Running {
        let pki = super::pki();
        let (cert, key) = (
            pki.cert.display().to_string(),
            pki.key.display().to_string(),
        );
        let mut all = vec!["--cert", &cert, "--key", &key];
        all.extend_from_slice(args);
        Running::start(&all, &[])
    }

    /// Spawns `cmd`, which must end up running wssbridge in its own process (a shell that
    /// `exec`s it is fine), and waits for its listening line.
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wssbridge");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = field(&line, "addr") {
                    let _ = tx.send(addr.to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no listening line: {:?}", log.lock().unwrap()))
            .parse()
            .expect("listening address");
        Running { child, addr, log }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "wssbridge did not exit: {:?}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits for a log line containing every one of `needles`.
    pub async fn wait_for_line(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self
                .log()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needles:?} in {:?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `key=value` from a text log line (values without spaces, quotes removed), or
/// `"key":"value"` from a JSON one.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    if let Some(start) = line.find(&format!("\"{key}\":\"")) {
        let rest = &line[start + key.len() + 4..];
        return rest.split('"').next();
    }
    let start = line.find(&format!(" {key}="))? + key.len() + 2;
    line[start..]
        .split_whitespace()
        .next()
        .map(|v| v.trim_matches('"'))
}
