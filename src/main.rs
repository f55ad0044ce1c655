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
    tune_malloc();
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

/// Tunes glibc's malloc for a server that moves MiB-sized buffers, unless
/// the environment already does (`MALLOC_*` variables, `GLIBC_TUNABLES`).
///
/// **Arenas: at most 4.** By default glibc gives up to 8 arenas per core to
/// the threads that allocate, and file I/O runs on tokio's blocking
/// threads, each allocating 256 KiB buffers: after 64 concurrent 1 MiB gRPC
/// reads the server kept 460 MiB resident, freed but fragmented over those
/// arenas; with 4 it kept 93 MiB, at the same throughput (2-core VM, debug
/// build).
///
/// **Fixed thresholds: mmap above 8 MiB, trim past 16 MiB.** glibc's
/// defaults move with what is freed: each freed mmapped chunk raises the
/// mmap threshold to its size, and the trim threshold to twice that. A
/// gRPC message of 1 MiB is decoded into a buffer of its own (tonic), so
/// with 16 ByteStream writes in flight those buffers were either mmapped
/// or carved from the top of a heap that the next free trimmed again:
/// 112-140 page faults per 1 MiB write (4-12 for an HTTP PUT), all in the
/// decoder's first copy into the new buffer, and 7 % of the server's CPU
/// in faulting, zeroing and unmapping pages. With these two, 0-3 faults a
/// write; peak RSS under that load went from 46-49 to 54-58 MiB. Buffers
/// up to 8 MiB (a 4 MiB batch message) come from the heaps and are reused,
/// and memory freed after a burst goes back by the periodic
/// `malloc_trim` (malloc_trim.rs), not by every free.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        let chosen = |variables: &[&str], tunable: &[&str]| {
            variables.iter().any(|v| std::env::var_os(v).is_some())
                || tunable.iter().any(|t| tunables.contains(t))
        };
        // SAFETY: mallopt only changes allocator tuning; called before any
        // other thread exists.
        #[allow(unsafe_code)]
        unsafe {
            if !chosen(&["MALLOC_ARENA_MAX"], &["glibc.malloc.arena_max"]) {
                libc::mallopt(libc::M_ARENA_MAX, 4);
            }
            if !chosen(
                &["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"],
                &["glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold"],
            ) {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 8 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
            }
        }
    }
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
