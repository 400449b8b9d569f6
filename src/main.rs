//! The wssbridge command: flags → Settings → Config → bind → run → exit code.
//!
//! Exit codes: 0 after a clean shutdown, 2 for a usage or configuration error (a bad flag,
//! an unreadable certificate), 1 for a failure at run time (a port in use).
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use wssbridge::cli::{Args, LogFormat};

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(&args);
    wssbridge::config::raise_fd_limit();
    let config = match wssbridge::Config::build(&args.into_settings()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("wssbridge: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wssbridge: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn serve(config: wssbridge::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listeners = config
            .listen
            .iter()
            .map(|addr| wssbridge::accept::bind(*addr))
            .collect::<anyhow::Result<Vec<_>>>()?;
        wssbridge::log_startup(&config, &listeners);
        wssbridge::run(listeners, config, wssbridge::signals::shutdown()).await
    })
}

fn init_logging(args: &Args) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("wssbridge={}", args.log_level())));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
