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
//! - It reports ready (`READY=1`) or why it could not start (`FAILED=…`) on one end of a
//!   socketpair it inherits among the `LISTEN_FDS` (named `upgrade` in `LISTEN_FDNAMES`), then
//!   closes it: one report, nothing after. The socket has no name, so no other process can
//!   send to it or take it first; each report is checked to come from the new process's pid
//!   all the same (`SCM_CREDENTIALS`, which the kernel attaches). Under systemd the new
//!   process becomes the main process then (`MAINPID=`).
//! - If it exits before it is ready, or is not ready within [`READY_WITHIN`], this process
//!   keeps serving, logs why, and stays the main process. A second SIGUSR2 meanwhile is
//!   logged and ignored.
//! - The session-ticket keys in force go to the new process too, as one datagram waiting in
//!   another inherited socket (named `tickets`), so a client's ticket from before resumes
//!   after; they are never written to a file.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use command_fds::{CommandFdExt, FdMapping};

use crate::accept::{FROM_FLAGS, Listeners};
use crate::notify::Notifier;

/// How long a new process may take to report ready.
pub const READY_WITHIN: Duration = Duration::from_secs(60);

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
    ticket_keys: String,
    abandon: impl std::future::Future<Output = ()>,
) -> Upgraded {
    if IN_PROGRESS.swap(true, Ordering::AcqRel) {
        return Upgraded::Busy;
    }
    let result = start(listeners, ticket_keys, abandon).await;
    IN_PROGRESS.store(false, Ordering::Release);
    match result {
        Ok(pid) => Upgraded::Ready(pid),
        Err(e) => Upgraded::Failed(format!("{e:#}")),
    }
}

async fn start(
    listeners: &Listeners,
    ticket_keys: String,
    abandon: impl std::future::Future<Output = ()>,
) -> anyhow::Result<u32> {
    let exe = started_as().context("finding the binary this process was started as")?;
    let (reports, theirs) =
        UnixDatagram::pair().context("making the socketpair the new process reports on")?;
    // Every datagram then carries its sender's pid, whether or not the sender adds it.
    rustix::net::sockopt::set_socket_passcred(&reports, true)
        .context("asking for the reporter's credentials (SO_PASSCRED)")?;
    reports.set_nonblocking(true)?;
    let reports = tokio::net::UnixDatagram::from_std(reports)?;

    let (mut fds, mut names) = descriptors(listeners)?;
    fds.push(OwnedFd::from(theirs));
    names.push(crate::notify::PARENT_FDNAME.to_string());
    // The session-ticket keys, as one datagram already waiting in the socket the new process
    // inherits: in memory only, never a file, and no other process can read the socket.
    let (keys, keys_theirs) =
        UnixDatagram::pair().context("making the socketpair for the ticket keys")?;
    keys.send(ticket_keys.as_bytes())
        .context("handing on the ticket keys")?;
    drop(keys);
    fds.push(OwnedFd::from(keys_theirs));
    names.push(crate::accept::TICKETS_FDNAME.to_string());
    let mut command = tokio::process::Command::new(&exe);
    command
        .args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
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
    // Our copy of the child's end is closed with the command: only the child holds it.
    drop(command);
    let pid = child.id().unwrap_or_default();
    let from_child = |sender: Option<u32>| {
        let ok = sender == Some(pid);
        if !ok {
            tracing::warn!(
                ?sender,
                child = pid,
                "upgrade: a report not from the new process, ignored"
            );
        }
        ok
    };
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
                    while let Ok((n, sender)) = receive_from(&reports, &mut buf) {
                        if from_child(sender) {
                            failed = report(&buf[..n]).1.or(failed);
                        }
                    }
                    let why = failed.take().map_or(String::new(), |f: String| format!(": {f}"));
                    anyhow::bail!("the new process exited before it was ready ({status}){why}");
                }
                got = receive(&reports, &mut buf) => {
                    let Ok((n, sender)) = got else { continue };
                    if !from_child(sender) {
                        continue;
                    }
                    let (ready, why) = report(&buf[..n]);
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

/// Waits for one report; returns its length and the pid that sent it.
async fn receive(
    socket: &tokio::net::UnixDatagram,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<u32>)> {
    loop {
        socket.readable().await?;
        match socket.try_io(tokio::io::Interest::READABLE, || receive_from(socket, buf)) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// One report now, with its sender's pid from the `SCM_CREDENTIALS` the kernel attached.
fn receive_from(socket: &impl AsFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<u32>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let got = rustix::net::recvmsg(socket, &mut iov, &mut control, RecvFlags::DONTWAIT)?;
    let sender = control.drain().find_map(|message| match message {
        RecvAncillaryMessage::ScmCredentials(cred) => {
            u32::try_from(rustix::process::Pid::as_raw(Some(cred.pid))).ok()
        }
        _ => None,
    });
    Ok((got.bytes, sender))
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
/// A socket bound from the flags is named with [`FROM_FLAGS`] after its kind, so the new
/// process closes it when its flags no longer name it (and keeps one systemd passed).
fn descriptors(listeners: &Listeners) -> anyhow::Result<(Vec<OwnedFd>, Vec<String>)> {
    let mut fds = Vec::new();
    let mut names = Vec::new();
    let from = listeners.from_flags;
    let name = |kind: &str, flags: bool| match flags {
        true => format!("{kind}{FROM_FLAGS}"),
        false => kind.to_string(),
    };
    let kinds = [
        (name("https", from.tls), &listeners.tls),
        (name("http", from.redirect), &listeners.redirect),
    ];
    for (name, group) in kinds {
        for listener in group.iter() {
            fds.push(OwnedFd::from(listener.try_clone()?));
            names.push(name.clone());
        }
    }
    if let Some(admin) = &listeners.admin {
        fds.push(OwnedFd::from(admin.try_clone()?));
        names.push(name("admin", from.admin));
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
