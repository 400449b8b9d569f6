//! Writes what the package installs beside the binary, generated from the clap definitions
//! so they never drift from `--help`: the man page `wssbridge(1)` and the bash, zsh and fish
//! completions. `make deb` and `make install` run it:
//!
//! ```sh
//! cargo run --release -p wssbridge-dist -- target/dist
//! ```

use std::fs::{self, File};
use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or("target/dist".into()));
    let completions = dir.join("completions");
    fs::create_dir_all(&completions)?;
    let command = wssbridge::cli::Args::command();
    let mut page = File::create(dir.join("wssbridge.1"))?;
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut command.clone(), "wssbridge", &completions)?;
    }
    println!(
        "wrote {} and {}",
        dir.join("wssbridge.1").display(),
        completions.display()
    );
    Ok(())
}
