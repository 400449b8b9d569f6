//! `--pid-file PATH` (nginx's `pid`, HAProxy's `-p`): the pid of the process serving now, for
//! `kill -USR2 $(cat PATH)` and scripts without systemd.
//!
//! Written once the process is ready, atomically (a file beside it, then a rename), so a
//! reader never sees half a number. After a binary upgrade the new process writes its own
//! pid when it is ready, taking the file over; the old one leaves it alone when it exits. A
//! process that exits without handing over removes the file, if it still holds its pid.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Checks at start that `path` can be written (its directory exists and is writable), so a
/// mistake is a start-up error naming the flag, not a warning once serving.
pub fn check(path: &Path) -> anyhow::Result<()> {
    let probe = sibling(path);
    create(&probe, b"")
        .with_context(|| format!("--pid-file {}: cannot write beside it", path.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Writes this process's pid to `path`, replacing whatever was there in one step.
pub fn write(path: &Path) -> anyhow::Result<()> {
    let fresh = sibling(path);
    create(&fresh, format!("{}\n", std::process::id()).as_bytes())
        .with_context(|| format!("writing {}", fresh.display()))?;
    std::fs::rename(&fresh, path)
        .with_context(|| format!("renaming {} to {}", fresh.display(), path.display()))
}

/// Removes `path` if it holds this process's pid (another process may have taken it over).
pub fn remove(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .is_ok_and(|text| text.trim() == std::process::id().to_string());
    if ours && let Err(e) = std::fs::remove_file(path) {
        tracing::warn!("--pid-file {}: not removed: {e}", path.display());
    }
}

/// Creates `path` anew with `contents`: a file left there (ours, from a crash) is removed
/// first, and the create refuses to follow a symbolic link placed there (`O_EXCL`), so a pid
/// file in a directory others can write cannot be turned into a write elsewhere.
fn create(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(contents)
}

/// A name beside `path`, unique to this process.
fn sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_whole_and_removed_only_by_its_owner() {
        let dir = std::env::temp_dir().join(format!("pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wssbridge.pid");
        check(&path).unwrap();
        write(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        std::fs::write(&path, "1\n").unwrap();
        remove(&path);
        assert!(path.exists(), "another process's file is left alone");
        write(&path).unwrap();
        remove(&path);
        assert!(!path.exists());
        assert!(check(&dir.join("missing").join("x.pid")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
