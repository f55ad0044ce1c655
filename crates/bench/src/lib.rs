//! `bazel-cache bench`: a load generator for any Bazel remote cache, so
//! users can size a deployment and compare servers (ours, bazel-remote,
//! any REAPI v2 cache, or a plain web server for reads). The same load
//! generator is its own binary, `bazel-cache-bench` (`src/main.rs`), so a
//! team can measure any cache without installing the server.
//!
//! A run: connect (gRPC: ask Capabilities for the batch limit), make sure
//! the blobs reads are made of are stored ("prefill", skipped for blobs the
//! server already has), drive the load with `--concurrency` workers for
//! `--duration` or `--requests` after a `--warmup`, then ask whether every
//! acknowledged write is still there and read a few back. Every read is
//! verified by hashing what comes back.
//!
//! # Layout
//!
//! The public modules are those the server's `benches/` reach into (their
//! own load loops over this crate's HTTP client, blobs and statistics);
//! the rest is private to the crate.
//!
//! * `lib.rs`: the run itself (prefill, measure, check writes) and the binaries' entry points.
//! * `main.rs`: the standalone `bazel-cache-bench` binary.
//! * `options.rs`: the command line (both binaries) and its validation into `Options`.
//! * `target.rs`: the cache's URL: protocol, TLS, host, HTTP path prefix, credentials.
//! * `mix.rs`: size and operation mixes (`--sizes`, `--mix`) and size syntax.
//! * `blobs.rs`: deterministic blobs, generated and hashed without being stored.
//! * `client.rs`: one client over both protocols, as the run uses it.
//! * `http.rs`: the HTTP client (`PUT`/`GET`/`HEAD` under `/cas/`), verifying what it reads.
//! * `grpc.rs`: the REAPI v2 gRPC client (Capabilities, CAS batches, ByteStream).
//! * `tls.rs`: CA and client certificates, for rustls and tonic.
//! * `runner.rs`: the load loop (`drive`): workers, warmup, when to stop; also used by `benches/`.
//! * `stats.rs`: recording requests and latencies, percentiles.
//! * `report.rs`: the report, as text and JSON.
//! * `rng.rs`: a small deterministic random number generator.
//! * `error.rs`: `BenchError` (the run cannot start) and `OpError` (one request failed).

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bazel_cache_digest::lock;

// `pub`: reached into by `benches/` (the server's throughput benchmarks).
pub mod blobs;
pub mod http;
pub mod report;
pub mod stats;
pub mod target;

mod client;
mod error;
mod grpc;
mod mix;
mod options;
mod rng;
mod runner;
mod tls;

use blobs::{ABSENT, BlobId, PREFILL, SizeClass};
use client::Client;
pub use error::{BenchError, OpError};
use mix::{Op, OpMix, SizeMix};
pub use options::{BenchArgs, Options, from_command_line, from_standalone_command_line};
pub use report::Report;
use report::{Prefill, WriteCheck};
use rng::Rng;
pub use runner::{Load, Measured, Outcome, Ticket, drive};

/// Writes the server acknowledged: (size class, blob).
type Acknowledged = Arc<Mutex<Vec<(usize, BlobId)>>>;

/// Prefilled blobs per size: enough that reads spread over many blobs,
/// bounded in bytes so a large size does not mean a long upload.
const PREFILL_MAX_BLOBS: u64 = 1000;
const PREFILL_MAX_BYTES: u64 = 256 << 20;
const PREFILL_MIN_BLOBS: u64 = 4;
/// How many acknowledged writes are asked about after the load, and how
/// many of those are read back.
const CHECK_MAX: usize = 10_000;
const READ_BACK_MAX: usize = 64;
/// Digests per FindMissingBlobs call when checking presence.
const FIND_CHUNK: usize = 1000;

/// The server binary's `bench` subcommand (`bazel-cache bench`); see
/// [`main_named`].
pub fn main(args: BenchArgs) -> ExitCode {
    main_named("bazel-cache bench", args)
}

/// Runs, prints the report, and maps the outcome to the exit status
/// documented in `--help`. `program` starts each error message.
pub fn main_named(program: &str, args: BenchArgs) -> ExitCode {
    let fail = |e: BenchError| {
        eprintln!("{program}: {e}");
        ExitCode::from(2)
    };
    let options = match Options::from_args(&args) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(BenchError::Runtime(e)),
    };
    match runtime.block_on(run(&options)) {
        Ok(report) => {
            if args.json {
                println!("{}", report.json());
            } else {
                print!("{}", report.text());
            }
            if report.failed() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => fail(e),
    }
}

/// A seed that differs between runs.
pub(crate) fn time_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut r = Rng::new(nanos ^ u64::from(std::process::id()).rotate_left(40));
    r.next_u64()
}

/// Runs the whole benchmark that `options` describe.
pub async fn run(options: &Options) -> Result<Report, BenchError> {
    let classes: Vec<Arc<SizeClass>> = options
        .sizes
        .entries()
        .iter()
        .map(|e| SizeClass::new(e.item))
        .collect();
    let client = Arc::new(Client::connect(options).await?);

    let reads = options.mix.has(Op::Read) || options.mix.has(Op::Find);
    let prefill_counts: Vec<u64> = classes
        .iter()
        .map(|c| match (reads, options.prefill) {
            (false, _) => 0,
            (true, Some(n)) => n.max(1),
            (true, None) => {
                (PREFILL_MAX_BYTES / c.size()).clamp(PREFILL_MIN_BLOBS, PREFILL_MAX_BLOBS)
            }
        })
        .collect();
    let prefill = prefill(&client, &classes, &prefill_counts, options).await?;

    let namespace = match options.seed.unwrap_or_else(time_seed) {
        PREFILL | ABSENT => 1,
        n => n,
    };
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let measured = measure(
        &client,
        &classes,
        &prefill_counts,
        namespace,
        options,
        acknowledged.clone(),
    )
    .await;

    let write_check = if options.check_writes && options.mix.has(Op::Write) {
        let acked = std::mem::take(&mut *lock(&acknowledged));
        Some(check_writes(&client, &classes, acked, options).await)
    } else {
        None
    };
    Ok(report::build(
        options,
        &client,
        &classes,
        prefill,
        measured,
        write_check,
    ))
}

/// Makes sure blobs `0..count` of namespace [`PREFILL`] of each class are
/// stored, uploading those the server lacks.
async fn prefill(
    client: &Arc<Client>,
    classes: &[Arc<SizeClass>],
    counts: &[u64],
    options: &Options,
) -> Result<Prefill, BenchError> {
    let start = Instant::now();
    let mut report = Prefill::default();
    for (class, &count) in classes.iter().zip(counts) {
        if count == 0 {
            continue;
        }
        report.blobs += count;
        let ids: Vec<BlobId> = (0..count)
            .map(|index| BlobId {
                namespace: PREFILL,
                index,
            })
            .collect();
        let missing = find_all_missing(client, class, &ids, options)
            .await
            .map_err(BenchError::Prefill)?;
        let per = client.per_request(class.size(), 256);
        let groups: Arc<Vec<Vec<BlobId>>> =
            Arc::new(missing.chunks(per).map(<[_]>::to_vec).collect());
        if groups.is_empty() {
            continue;
        }
        let first_error = Arc::new(Mutex::new(None));
        let load = Load {
            concurrency: options.load.concurrency.min(groups.len()),
            duration: None,
            requests: Some(groups.len() as u64),
            warmup: Duration::ZERO,
        };
        let (c, cl, g, fe, timeout) = (
            client.clone(),
            class.clone(),
            groups.clone(),
            first_error.clone(),
            options.timeout,
        );
        drive(&load, 1, move |t| {
            let (c, cl, g, fe) = (c.clone(), cl.clone(), g.clone(), fe.clone());
            async move {
                let ids = &g[t.index as usize];
                let result = with_timeout(timeout, c.write(t.worker, &cl, ids)).await;
                if let Err(e) = &result {
                    lock(&fe).get_or_insert_with(|| e.clone());
                }
                Outcome {
                    row: 0,
                    blobs: ids.len() as u64,
                    bytes: 0,
                    result: result.map(drop),
                }
            }
        })
        .await;
        if let Some(e) = lock(&first_error).take() {
            return Err(BenchError::Prefill(e));
        }
        report.uploaded += missing.len() as u64;
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Which of `ids` the server lacks, asked with the load's concurrency.
async fn find_all_missing(
    client: &Arc<Client>,
    class: &Arc<SizeClass>,
    ids: &[BlobId],
    options: &Options,
) -> Result<Vec<BlobId>, OpError> {
    let per = match client.as_ref() {
        Client::Http(_) => 1,
        Client::Grpc(_) => FIND_CHUNK,
    };
    let groups: Arc<Vec<Vec<BlobId>>> = Arc::new(ids.chunks(per).map(<[_]>::to_vec).collect());
    if groups.is_empty() {
        return Ok(Vec::new());
    }
    let missing = Arc::new(Mutex::new(Vec::new()));
    let first_error = Arc::new(Mutex::new(None));
    let load = Load {
        concurrency: options.load.concurrency.min(groups.len()),
        duration: None,
        requests: Some(groups.len() as u64),
        warmup: Duration::ZERO,
    };
    let (c, cl, g, m, fe, timeout) = (
        client.clone(),
        class.clone(),
        groups.clone(),
        missing.clone(),
        first_error.clone(),
        options.timeout,
    );
    drive(&load, 1, move |t| {
        let (c, cl, g, m, fe) = (c.clone(), cl.clone(), g.clone(), m.clone(), fe.clone());
        async move {
            let ids = &g[t.index as usize];
            let result = with_timeout(timeout, c.missing(t.worker, &cl, ids)).await;
            match &result {
                Ok(found) => lock(&m).extend_from_slice(found),
                Err(e) => {
                    lock(&fe).get_or_insert_with(|| e.clone());
                }
            }
            Outcome {
                row: 0,
                blobs: ids.len() as u64,
                bytes: 0,
                result: result.map(drop),
            }
        }
    })
    .await;
    if let Some(e) = lock(&first_error).take() {
        return Err(e);
    }
    let mut missing = std::mem::take(&mut *lock(&missing));
    missing.sort_by_key(|id| id.index);
    Ok(missing)
}

/// The measured load. Rows are `op × class`: row = op * classes + class.
async fn measure(
    client: &Arc<Client>,
    classes: &[Arc<SizeClass>],
    prefill_counts: &[u64],
    namespace: u64,
    options: &Options,
    acknowledged: Acknowledged,
) -> Measured {
    struct Plan {
        client: Arc<Client>,
        classes: Vec<Arc<SizeClass>>,
        prefill: Vec<u64>,
        sizes: SizeMix,
        mix: OpMix,
        batch: usize,
        namespace: u64,
        seed: u64,
        timeout: Duration,
        next_write: AtomicU64,
        acknowledged: Option<Acknowledged>,
    }
    let plan = Arc::new(Plan {
        client: client.clone(),
        classes: classes.to_vec(),
        prefill: prefill_counts.to_vec(),
        sizes: options.sizes.clone(),
        mix: options.mix.clone(),
        batch: options.batch,
        namespace,
        seed: time_seed(),
        timeout: options.timeout,
        next_write: AtomicU64::new(0),
        acknowledged: options.check_writes.then_some(acknowledged),
    });
    let rows = Op::ALL.len() * classes.len();
    drive(&options.load, rows, move |t| {
        let plan = plan.clone();
        async move {
            let mut rng = Rng::new(
                plan.seed ^ t.index.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ u64::from(t.measured),
            );
            let op = plan.mix.entries()[plan.mix.pick(rng.next_u64())].item;
            let c = plan.sizes.pick(rng.next_u64());
            let class = &plan.classes[c];
            let row = op as usize * plan.classes.len() + c;
            let mut n = plan.client.per_request(class.size(), plan.batch);
            let (result, blobs) = match op {
                Op::Read => {
                    let count = plan.prefill[c];
                    n = n.min(count as usize);
                    let start = rng.below(count);
                    let ids: Vec<BlobId> = (0..n as u64)
                        .map(|k| BlobId {
                            namespace: PREFILL,
                            index: (start + k) % count,
                        })
                        .collect();
                    (
                        with_timeout(plan.timeout, plan.client.read(t.worker, class, &ids)).await,
                        n,
                    )
                }
                Op::Write => {
                    let first = plan.next_write.fetch_add(n as u64, Ordering::Relaxed);
                    let ids: Vec<BlobId> = (first..first + n as u64)
                        .map(|index| BlobId {
                            namespace: plan.namespace,
                            index,
                        })
                        .collect();
                    let result =
                        with_timeout(plan.timeout, plan.client.write(t.worker, class, &ids)).await;
                    if result.is_ok()
                        && let Some(acked) = &plan.acknowledged
                    {
                        lock(acked).extend(ids.iter().map(|&id| (c, id)));
                    }
                    (result, n)
                }
                Op::Find => {
                    let (ids, absent) = find_request(&mut rng, t.index, n, plan.prefill[c]);
                    let result = with_timeout(plan.timeout, async {
                        let missing = plan.client.missing(t.worker, class, &ids).await?;
                        check_missing(&ids, &missing, &absent)?;
                        Ok(0)
                    })
                    .await;
                    (result, n)
                }
            };
            let (bytes, result) = match result {
                Ok(b) => (b, Ok(())),
                Err(e) => (0, Err(e)),
            };
            Outcome {
                row,
                blobs: blobs as u64,
                bytes,
                result,
            }
        }
    })
    .await
}

/// `n` digests for a find request: the first half (at least one when
/// `n` > 1; for `n` = 1, every other request) prefilled, the rest absent.
fn find_request(rng: &mut Rng, index: u64, n: usize, prefilled: u64) -> (Vec<BlobId>, Vec<BlobId>) {
    let present = if n == 1 {
        usize::from(index.is_multiple_of(2))
    } else {
        n.div_ceil(2)
    };
    let start = rng.below(prefilled.max(1));
    let mut ids: Vec<BlobId> = (0..present as u64)
        .map(|k| BlobId {
            namespace: PREFILL,
            index: (start + k) % prefilled.max(1),
        })
        .collect();
    let absent: Vec<BlobId> = (0..(n - present) as u64)
        .map(|k| BlobId {
            namespace: ABSENT,
            index: rng.next_u64().wrapping_add(k),
        })
        .collect();
    ids.extend_from_slice(&absent);
    (ids, absent)
}

/// A find answer must name exactly the absent blobs.
fn check_missing(asked: &[BlobId], missing: &[BlobId], absent: &[BlobId]) -> Result<(), OpError> {
    let wrong_present = missing.iter().filter(|m| !absent.contains(m)).count();
    let wrong_absent = absent.iter().filter(|a| !missing.contains(a)).count();
    if wrong_present + wrong_absent == 0 {
        return Ok(());
    }
    Err(OpError::WrongAnswer(format!(
        "asked about {} blobs: {wrong_present} stored ones reported missing, {wrong_absent} never-written ones reported present",
        asked.len()
    )))
}

/// Asks about (up to [`CHECK_MAX`] of) the acknowledged writes and reads
/// back up to [`READ_BACK_MAX`] of those present.
async fn check_writes(
    client: &Arc<Client>,
    classes: &[Arc<SizeClass>],
    mut acked: Vec<(usize, BlobId)>,
    options: &Options,
) -> WriteCheck {
    let mut check = WriteCheck {
        acknowledged: acked.len() as u64,
        ..WriteCheck::default()
    };
    if acked.len() > CHECK_MAX {
        let step = acked.len() as f64 / CHECK_MAX as f64;
        acked = (0..CHECK_MAX)
            .map(|i| acked[(i as f64 * step) as usize])
            .collect();
    }
    check.checked = acked.len() as u64;
    let mut present = Vec::new();
    for (c, class) in classes.iter().enumerate() {
        let ids: Vec<BlobId> = acked
            .iter()
            .filter(|(k, _)| *k == c)
            .map(|(_, id)| *id)
            .collect();
        match find_all_missing(client, class, &ids, options).await {
            Ok(missing) => {
                check.missing += missing.len() as u64;
                present.extend(
                    ids.into_iter()
                        .filter(|id| !missing.contains(id))
                        .map(|id| (c, id)),
                );
            }
            Err(e) => {
                check.missing += ids.len() as u64;
                check.samples.push(format!("presence check failed: {e}"));
            }
        }
    }
    let step = (present.len() / READ_BACK_MAX).max(1);
    for &(c, id) in present.iter().step_by(step).take(READ_BACK_MAX) {
        check.read_back += 1;
        let result = with_timeout(options.timeout, client.read(0, &classes[c], &[id])).await;
        if let Err(e) = result {
            check.read_back_failed += 1;
            if check.samples.len() < 3 {
                check.samples.push(e.to_string());
            }
        }
    }
    check
}

pub(crate) async fn with_timeout<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, OpError>>,
) -> Result<T, OpError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(OpError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_requests_mix_present_and_absent() {
        let mut rng = Rng::new(1);
        let (ids, absent) = find_request(&mut rng, 0, 1, 10);
        assert_eq!((ids.len(), absent.len()), (1, 0));
        let (ids, absent) = find_request(&mut rng, 1, 1, 10);
        assert_eq!((ids.len(), absent.len()), (1, 1));
        let (ids, absent) = find_request(&mut rng, 0, 7, 10);
        assert_eq!((ids.len(), absent.len()), (7, 3));
        assert!(
            ids[..4]
                .iter()
                .all(|i| i.namespace == PREFILL && i.index < 10)
        );
        assert!(check_missing(&ids, &absent, &absent).is_ok());
        assert!(check_missing(&ids, &absent[1..], &absent).is_err());
        assert!(check_missing(&ids, &ids[..4], &absent).is_err());
    }
}
