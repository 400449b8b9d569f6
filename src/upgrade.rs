//! Binary upgrade on SIGUSR2: start the binary again, hand it the listening sockets, and
//! drain once it says it is ready, so no connection is refused in between (both processes
//! accept from the same sockets while they overlap).
//!
//! - The new process is the binary at the path this one was started with (after a package
//!   upgrade `/proc/self/exe` is the old, deleted file), with the same arguments and
//!   environment, and the listeners at descriptors 3 and up by the `LISTEN_FDS` convention
//!   (`accept::Listeners::inherited`, the path socket activation takes: one path, not two).
//!   `LISTEN_PID` is left out: the child's pid is not known before it runs, and the reader
//!   skips the check without it.
//! - It reports ready on a datagram socket this process names in
//!   `WSSBRIDGE_UPGRADE_NOTIFY` (`READY=1`, by `notify`, as it tells systemd), or why it
//!   could not start (`FAILED=…`). Under systemd it becomes the main process then
//!   (`MAINPID=`).
//! - If it exits before it is ready, or is not ready within [`READY_WITHIN`], this process
//!   keeps serving, logs why, and stays the main process. A second SIGUSR2 meanwhile is
//!   logged and ignored.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use command_fds::{CommandFdExt, FdMapping};

use crate::accept::Listeners;
use crate::notify::Notifier;

/// How long a new process may take to report ready.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

/// Where a new process reports to the one that started it.
pub const NOTIFY_VAR: &str = "WSSBRIDGE_UPGRADE_NOTIFY";

/// One upgrade at a time.
static IN_PROGRESS: AtomicBool = AtomicBool::new(false);

/// How an upgrade ended.
#[derive(Debug)]
pub enum Upgraded {
    /// The new process (this pid) is ready: drain and exit.
    Ready(u32),
    /// It could not take over: this process goes on serving.
    Failed(String),
    /// Another upgrade is in progress.
    Busy,
}

/// Starts the binary again with `listeners` and waits until it is ready or has failed, or
/// until `abandon` resolves (this process began to shut down: the new one is stopped).
pub async fn upgrade(
    listeners: &Listeners,
    abandon: impl std::future::Future<Output = ()>,
) -> Upgraded {
    if IN_PROGRESS.swap(true, Ordering::AcqRel) {
        return Upgraded::Busy;
    }
    let result = start(listeners, abandon).await;
    IN_PROGRESS.store(false, Ordering::Release);
    match result {
        Ok(pid) => Upgraded::Ready(pid),
        Err(e) => Upgraded::Failed(format!("{e:#}")),
    }
}

async fn start(
    listeners: &Listeners,
    abandon: impl std::future::Future<Output = ()>,
) -> anyhow::Result<u32> {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let exe = started_as().context("finding the binary this process was started as")?;
    let name = format!(
        "wssbridge-upgrade-{}-{}",
        std::process::id(),
        SERIAL.fetch_add(1, Ordering::Relaxed)
    );
    let reports = bind_abstract(&name).context("making the socket the new process reports on")?;
    let reports = tokio::net::UnixDatagram::from_std(reports)?;

    let (fds, names) = descriptors(listeners)?;
    let mut command = tokio::process::Command::new(&exe);
    command
        .args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .env(NOTIFY_VAR, format!("@{name}"))
        .stdin(std::process::Stdio::null());
    let mappings = fds
        .into_iter()
        .enumerate()
        .map(|(i, parent_fd)| FdMapping {
            parent_fd,
            child_fd: 3 + i as i32,
        })
        .collect();
    command
        .fd_mappings(mappings)
        .map_err(|e| anyhow::anyhow!("passing the listening sockets: {e}"))?;
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let pid = child.id().unwrap_or_default();
    tracing::info!(pid, exe = %exe.display(), "upgrade: started the new process; waiting until it is ready");

    let mut buf = [0u8; 4096];
    let mut failed = None;
    let mut abandon = std::pin::pin!(abandon);
    let waited = tokio::time::timeout(READY_WITHIN, async {
        loop {
            tokio::select! {
                _ = &mut abandon => {
                    let _ = child.start_kill();
                    anyhow::bail!("shutdown began before the new process was ready: stopped it");
                }
                status = child.wait() => {
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    // What it said before it exited may still wait in the socket.
                    while let Ok(n) = reports.try_recv(&mut buf) {
                        failed = report(&buf[..n]).1.or(failed);
                    }
                    let why = failed.take().map_or(String::new(), |f: String| format!(": {f}"));
                    anyhow::bail!("the new process exited before it was ready ({status}){why}");
                }
                got = reports.recv(&mut buf) => {
                    let (ready, why) = report(&buf[..got.unwrap_or(0)]);
                    if ready {
                        return Ok(());
                    }
                    failed = why.or(failed);
                }
            }
        }
    })
    .await;
    match waited {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            let _ = child.start_kill();
            anyhow::bail!("the new process was not ready within {READY_WITHIN:?}: stopped it");
        }
    }
    // Under systemd the new process is the service's main process from now on.
    if let Some(systemd) = Notifier::from_var("NOTIFY_SOCKET") {
        systemd.send(&format!("MAINPID={pid}"));
    }
    Ok(pid)
}

/// What one report from the new process says: ready, and why it failed, if it says.
fn report(datagram: &[u8]) -> (bool, Option<String>) {
    let message = String::from_utf8_lossy(datagram);
    let ready = message.lines().any(|l| l == "READY=1");
    let failed = message
        .lines()
        .find_map(|l| l.strip_prefix("FAILED="))
        .map(str::to_string);
    (ready, failed)
}

/// The listeners as descriptors to hand on, with their `LISTEN_FDNAMES` names.
fn descriptors(listeners: &Listeners) -> anyhow::Result<(Vec<OwnedFd>, Vec<&'static str>)> {
    let mut fds = Vec::new();
    let mut names = Vec::new();
    let kinds = [("https", &listeners.tls), ("http", &listeners.redirect)];
    for (name, group) in kinds {
        for listener in group.iter() {
            fds.push(OwnedFd::from(listener.try_clone()?));
            names.push(name);
        }
    }
    if let Some(admin) = &listeners.admin {
        fds.push(OwnedFd::from(admin.try_clone()?));
        names.push("admin");
    }
    Ok((fds, names))
}

/// The path this process was started as, made absolute: `argv[0]` with a `/` relative to
/// the working directory (which wssbridge never changes), a bare name as `PATH` finds it.
fn started_as() -> anyhow::Result<PathBuf> {
    let argv0 = PathBuf::from(std::env::args_os().next().context("no argv[0]")?);
    if argv0.components().count() > 1 {
        return Ok(std::path::absolute(&argv0)?);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(&argv0))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{} is not on PATH", argv0.display()))
}

#[cfg(target_os = "linux")]
fn bind_abstract(name: &str) -> std::io::Result<UnixDatagram> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let socket = UnixDatagram::bind_addr(&addr)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(not(target_os = "linux"))]
fn bind_abstract(_: &str) -> std::io::Result<UnixDatagram> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "binary upgrade needs Linux's abstract sockets",
    ))
}
