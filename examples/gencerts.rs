//! `make certs`: writes a development CA and a server certificate for localhost.
//!
//! Usage: `cargo run --example gencerts -- [DIR] [NAME...]` (default `certs`, names
//! `localhost 127.0.0.1 ::1`). Writes `ca.pem` (import it into a browser or pass it to a
//! client to trust the chain), `server.pem` (server certificate + intermediate, for `--cert`)
//! and `server.key` (for `--key`, mode 0600). The CA's own key is not kept: to add a name,
//! generate a new set.

#[path = "../tests/support/pki.rs"]
mod pki;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| "certs".to_string());
    let names: Vec<String> = args.collect();
    let names: Vec<&str> = match names.is_empty() {
        true => vec!["localhost", "127.0.0.1", "::1"],
        false => names.iter().map(String::as_str).collect(),
    };
    let generated = pki::generate(&names)?;
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir)?;
    write(&dir.join("ca.pem"), &generated.root_pem, 0o644)?;
    write(&dir.join("server.pem"), &generated.chain_pem, 0o644)?;
    write(&dir.join("server.key"), &generated.key_pem, 0o600)?;
    println!(
        "wrote {0}/ca.pem, {0}/server.pem and {0}/server.key for {1}",
        dir.display(),
        names.join(", ")
    );
    Ok(())
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
