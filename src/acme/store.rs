//! The ACME state directory (its layout is `config::AcmeSettings`'s): checked and made at
//! start, the account, each name's certificate and when it is due, the challenge answers, and
//! the lock that keeps instances sharing the directory to one order per name.
//!
//! The lock is a file created with `O_CREAT | O_EXCL` (atomic on local filesystems and on
//! NFS v3 and later), holding a lease: a holder that crashed leaves a file whose lease runs
//! out after [`LEASE`], and the next instance takes the lock over. `flock` is not used: it
//! is advisory per host on some network filesystems, which is the case this lock is for.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::config::AcmeSettings;

/// How long an order's lock holds without its holder: far longer than an order takes (a
/// few seconds), short enough that a crash does not stop renewals for long.
pub const LEASE: Duration = Duration::from_secs(10 * 60);

/// Makes the state directory and its parts (0700), or checks them: a directory another user
/// can write is refused, since whoever can write it can put a certificate and key there.
pub fn prepare(acme: &AcmeSettings) -> anyhow::Result<()> {
    let dir = &acme.state;
    let parts = [
        dir.clone(),
        dir.join("certs"),
        dir.join("challenges"),
        acme.challenges("http-01"),
        acme.challenges("tls-alpn-01"),
        dir.join("locks"),
    ];
    for part in &parts {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(part)
            .with_context(|| {
                format!(
                    "--acme-state {}: cannot create {}",
                    dir.display(),
                    part.display()
                )
            })?;
        let meta = fs::metadata(part)
            .with_context(|| format!("--acme-state {}: {}", dir.display(), part.display()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o022 != 0 {
            bail!(
                "--acme-state {}: {} can be written by other users (mode {mode:o}); \
                 chmod 700 it",
                dir.display(),
                part.display()
            );
        }
        if meta.uid() != rustix::process::geteuid().as_raw() {
            bail!(
                "--acme-state {}: {} belongs to another user (uid {})",
                dir.display(),
                part.display(),
                meta.uid()
            );
        }
    }
    Ok(())
}

/// Where the account for `acme.directory` is kept: one file per directory URL, so a change
/// of CA makes a new account rather than presenting one the CA does not know.
pub fn account_file(acme: &AcmeSettings) -> PathBuf {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, acme.directory.as_bytes());
    let short: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    acme.state.join(format!("account-{short}.json"))
}

/// Writes `bytes` to `path` whole or not at all (a temporary file, then a rename), readable
/// by its owner only when `private`.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// When `name`'s stored certificate should be renewed: when a third of its lifetime is left,
/// or `renew_before` before its end, whichever is earlier. `None` when there is no usable
/// certificate: due now.
pub fn renew_at(acme: &AcmeSettings, name: &str) -> Option<SystemTime> {
    let pem = fs::read(acme.cert_paths(name).cert).ok()?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = block.parse_x509().ok()?;
    let validity = cert.validity();
    let start = u64::try_from(validity.not_before.timestamp()).ok()?;
    let end = u64::try_from(validity.not_after.timestamp()).ok()?;
    let third = end.saturating_sub(start) / 3;
    let by_lifetime = end.saturating_sub(third);
    let at = match acme.renew_before {
        Some(before) => by_lifetime.min(end.saturating_sub(before.as_secs())),
        None => by_lifetime,
    };
    Some(UNIX_EPOCH + Duration::from_secs(at))
}

/// The lock on ordering one name, released (the file removed) when dropped.
pub struct Lock {
    path: PathBuf,
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Takes the lock on ordering `name`, or `None` while another holder's lease runs. A lock
/// whose lease ran out is taken over.
pub fn lock(acme: &AcmeSettings, name: &str) -> anyhow::Result<Option<Lock>> {
    let path = acme.state.join("locks").join(format!("{name}.lock"));
    for _ in 0..2 {
        let created = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match created {
            Ok(mut file) => {
                let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                let holder = format!("pid {} on {}\n", std::process::id(), host.trim());
                let _ = file.write_all(holder.as_bytes());
                return Ok(Some(Lock { path }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let age = fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok());
                match age {
                    Some(age) if age > LEASE => {
                        tracing::warn!(name, "acme: taking over a lock whose lease ran out");
                        let _ = fs::remove_file(&path);
                    }
                    _ => return Ok(None),
                }
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path) -> AcmeSettings {
        AcmeSettings {
            names: vec!["chat.test".to_string()],
            email: None,
            directory: "https://127.0.0.1:14000/dir".to_string(),
            ca: None,
            state: dir.to_path_buf(),
            renew_before: None,
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wssbridge-acme-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_directory_is_made_private_and_a_shared_one_refused() {
        let dir = temp("prepare");
        let acme = settings(&dir);
        prepare(&acme).unwrap();
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare(&acme).unwrap_err().to_string();
        assert!(
            e.contains("--acme-state") && e.contains("other users"),
            "{e}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_lock_per_name_and_a_stale_one_is_taken_over() {
        let dir = temp("lock");
        let acme = settings(&dir);
        prepare(&acme).unwrap();
        let held = lock(&acme, "chat.test").unwrap().expect("the lock");
        assert!(
            lock(&acme, "chat.test").unwrap().is_none(),
            "held: no second"
        );
        assert!(
            lock(&acme, "other.test").unwrap().is_some(),
            "another name is free"
        );
        drop(held);
        let again = lock(&acme, "chat.test").unwrap().expect("free again");
        // A holder that crashed: its file stays, older than the lease.
        std::mem::forget(again);
        let path = dir.join("locks/chat.test.lock");
        let old = SystemTime::now() - LEASE - Duration::from_secs(5);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(
            lock(&acme, "chat.test").unwrap().is_some(),
            "stale: taken over"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn renewal_is_due_at_a_third_of_the_lifetime_or_earlier_when_asked() {
        let dir = temp("due");
        let mut acme = settings(&dir);
        prepare(&acme).unwrap();
        assert_eq!(
            renew_at(&acme, "chat.test"),
            None,
            "no certificate: due now"
        );
        let mut params = rcgen::CertificateParams::new(vec!["chat.test".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 4, 1); // 90 days
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        fs::write(acme.cert_paths("chat.test").cert, cert.pem()).unwrap();
        let end = UNIX_EPOCH + Duration::from_secs(1_775_001_600); // 2026-04-01
        assert_eq!(
            renew_at(&acme, "chat.test"),
            Some(end - Duration::from_secs(30 * 86_400))
        );
        acme.renew_before = Some(Duration::from_secs(60 * 86_400));
        assert_eq!(
            renew_at(&acme, "chat.test"),
            Some(end - Duration::from_secs(60 * 86_400))
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
