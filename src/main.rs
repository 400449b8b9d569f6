//! The wssbridge command: signals → flags → Settings → Config → listeners → run → exit code.
//!
//! Exit codes: 0 after a clean shutdown; 2 when it cannot start (a bad flag, an unreadable
//! certificate, a port in use: anything before it serves); 1 when serving fails after start.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use wssbridge::cli::{Args, LogFormat};
use wssbridge::runtime::{self, Runtime};

/// Start-up failed: nothing was served.
const CANNOT_START: u8 = 2;
/// Serving failed after start.
const FAILED: u8 = 1;

fn main() -> ExitCode {
    let args = Args::from_env();
    init_logging(&args);
    // Work-stealing, this thread's runtime is the one all connections share; per core, it
    // is the supervisor's alone (the server starts the threads that serve connections).
    let mut builder = match args.runtime {
        Runtime::PerCore => tokio::runtime::Builder::new_current_thread(),
        Runtime::WorkStealing => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.thread_name(runtime::WORK_STEALING_THREAD);
            // A count out of range is refused by the config, naming the flag, before
            // anything is served.
            if let Some(threads) = runtime::threads(args.threads) {
                builder.worker_threads(threads);
            }
            builder
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let e = anyhow::anyhow!("starting the runtime: {e}");
            return fail(CANNOT_START, &e, None);
        }
    };
    runtime.block_on(start_and_serve(args))
}

async fn start_and_serve(args: Args) -> ExitCode {
    // Signals are listened for before anything else (certificates may take a while to read,
    // a FIFO or a slow disk): a SIGTERM during start-up drains like any other, and SIGHUP
    // (systemctl reload, certbot's deploy hooks) never ends the process.
    let signals = match wssbridge::signals::listen() {
        Ok(signals) => signals,
        Err(e) => return fail(CANNOT_START, &e, None),
    };
    // Sockets passed by systemd or by the process a binary upgrade started, taken once now:
    // a start that fails later can still tell that process why.
    let inherited = match wssbridge::Listeners::inherited() {
        Ok(inherited) => inherited,
        Err(e) => return fail(CANNOT_START, &e, None),
    };
    let parent = inherited.as_ref().and_then(|l| l.parent.clone());
    let failed = |code, e: &anyhow::Error| fail(code, e, parent.as_ref());
    wssbridge::accept::raise_fd_limit();
    let (check, online) = (args.check, args.online);
    for line in &args.overridden {
        tracing::warn!("{line}");
    }
    let reread = args.reread();
    let config = args
        .into_settings()
        .and_then(|settings| wssbridge::Config::build(&settings))
        .map(|config| wssbridge::Config { reread, ..config });
    if check {
        let config = match config {
            Ok(config) => config,
            Err(e) => return failed(CANNOT_START, &e),
        };
        let report = match wssbridge::check::report(&config) {
            Ok(report) => report,
            Err(e) => return failed(CANNOT_START, &e),
        };
        print!("{report}");
        if online {
            match wssbridge::check::online(&config).await {
                Ok(report) => print!("{report}"),
                Err(e) => return failed(CANNOT_START, &e),
            }
        }
        println!("wssbridge: the configuration is ok");
        return ExitCode::SUCCESS;
    }
    let started = config.and_then(|config| {
        if let Some(path) = &config.process.pid_file {
            wssbridge::pidfile::check(path)?;
        }
        let listeners = wssbridge::Listeners::open(&config.process.listening, inherited)?;
        Ok((wssbridge::Server::new(config)?, listeners))
    });
    let (server, listeners) = match started {
        Ok(started) => started,
        Err(e) => return failed(CANNOT_START, &e),
    };
    match server.serve(listeners, signals).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(FAILED, &e),
    }
}

fn fail(code: u8, e: &anyhow::Error, parent: Option<&wssbridge::notify::Parent>) -> ExitCode {
    eprintln!("wssbridge: error: {e:#}");
    // Started by a binary upgrade: the old process logs why this one did not take over.
    if let Some(parent) = parent {
        parent.failed(&format!("{e:#}"));
    }
    ExitCode::from(code)
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
