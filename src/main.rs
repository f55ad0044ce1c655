//! The `bazel-cache` binary: parse and validate the configuration, then serve
//! (or, in `check-config` mode, report the configuration valid and exit;
//! `bench` runs the load generator of `bazel_cache_bench` instead, and
//! `explain-miss` compares two execution logs with `bazel_cache_explain`).

use std::io::Write;
use std::process::ExitCode;

use bazel_cache::config::{self, Config, LogFormat, LogTimezone, Mode};
use bazel_cache::server::Server;
use bazel_cache_store::Store as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

fn main() -> ExitCode {
    // Before any thread starts, for the server and `bench` alike.
    bazel_cache_malloc::tune();
    // `bench` is a client: it runs before (and without) the server's configuration.
    match bazel_cache_bench::from_command_line(std::env::args_os()) {
        Ok(Some(args)) => return bazel_cache_bench::main(args),
        Ok(None) => {}
        Err(e) => e.exit(),
    }
    // So is `explain-miss`: it reads two files and needs no server at all.
    if let Some(code) = bazel_cache_explain::cli::run_if_invoked(std::env::args_os()) {
        return code;
    }
    let invocation = match config::from_process() {
        Ok(inv) => inv,
        Err(e) => e.exit(),
    };
    let config = invocation.config;
    if let Mode::CheckConfig = invocation.mode {
        for note in &invocation.notes {
            println!("note: {note}");
        }
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    // Held until main returns: dropping it writes out the lines still queued.
    let _log_writer = init_logging(&config);
    for note in &invocation.notes {
        tracing::warn!("{note}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bazel-cache: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    let dir = config.dir.clone();
    let max_size = config.max_size_bytes;
    let server = match Server::bind(config).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("bazel-cache: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        dir = %dir.display(),
        max_size_bytes = max_size,
        http = ?server.http_addr(),
        entries = server.store().stats().entries,
        "bazel-cache {} ready",
        env!("CARGO_PKG_VERSION")
    );
    // The lines users paste into .bazelrc; stdout so scripts can capture them.
    let mut out = std::io::stdout().lock();
    let _ = write!(
        out,
        "# bazel-cache is serving {}; add one of these lines to .bazelrc:\n{}",
        dir.display(),
        server.bazelrc()
    );
    let _ = out.flush();
    drop(out);
    // glibc keeps what a burst freed; hand it back once it is idle.
    tokio::spawn(bazel_cache::malloc_trim::run());
    server.run(shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// Logs go to stderr through a writer thread that writes them in batches
/// (log_writer.rs); the returned guard writes out what is queued when
/// dropped.
fn init_logging(config: &Config) -> bazel_cache::log_writer::Guard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = bazel_cache::log_writer::start(std::io::stderr())
        .unwrap_or_else(|e| panic!("cannot start the log-writer thread: {e}"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // Timestamps are UTC (RFC 3339) unless log_timezone is "none"; "local"
    // is accepted but logged as UTC, which log collectors expect anyway.
    // The web console's "Recent errors" copies warnings and errors.
    let recent = bazel_cache::web::recent_errors::layer();
    match (config.log_format, config.log_timezone) {
        (LogFormat::Json, LogTimezone::None) => {
            builder.json().without_time().finish().with(recent).init()
        }
        (LogFormat::Json, _) => builder.json().finish().with(recent).init(),
        (LogFormat::Text, LogTimezone::None) => builder.without_time().finish().with(recent).init(),
        (LogFormat::Text, _) => builder.finish().with(recent).init(),
    }
    guard
}

/// SIGTERM (Kubernetes, systemd) or SIGINT (Ctrl-C).
///
/// The handlers are installed here, when called, not when the returned
/// future is first polled: the server says READY=1 before it polls it, and
/// a SIGTERM in between would otherwise meet the default action and kill
/// the process without a drain (seen under load in the systemd test).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match signals {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
}
