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
    let config = match args
        .into_settings()
        .and_then(|settings| wssbridge::Config::build(&settings))
    {
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
        // Signals are listened for before anything else: a SIGTERM during start-up drains
        // like any other, and SIGHUP (systemctl reload, certbot's deploy hooks) never ends
        // the process.
        let shutdown = wssbridge::signals::shutdown();
        let hangups = wssbridge::signals::hangups()?;
        let bind = |flag: &str, addrs: &[std::net::SocketAddr]| {
            addrs
                .iter()
                .map(|addr| wssbridge::accept::bind_for(flag, *addr))
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let mut tls = bind("--listen", &config.listen)?;
        for addr in &config.settings.listen_if_possible {
            match wssbridge::accept::bind(*addr) {
                Ok(listener) => tls.push(listener),
                // `:443` means IPv6 too where the machine has it; without it, IPv4 alone.
                Err(e) => tracing::info!("not listening on {addr}: {:#}", e),
            }
        }
        let listeners = wssbridge::Listeners {
            tls,
            redirect: bind("--redirect-http", &config.settings.redirect_http)?,
            admin: bind("--admin", config.settings.admin.as_slice())?.pop(),
        };
        wssbridge::log_startup(&config, &listeners);
        let server = wssbridge::Server::new(config)?;
        let reloader = server.clone();
        tokio::spawn(hangups.for_each(move || reloader.reload_on_signal()));
        server.run(listeners, shutdown).await
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
