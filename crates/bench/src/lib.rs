//! `bazel-cache bench`: a load generator for any Bazel remote cache, so
//! users can size a deployment and compare servers (ours, bazel-remote,
//! any REAPI v2 cache, or a plain web server for reads). The same load
//! generator is its own binary, `bazel-cache-bench` (`src/main.rs`), so a
//! team can measure any cache without installing the server.
//!
//! A run: connect (gRPC: ask Capabilities for the batch limit), make sure
//! the blobs reads are made of are stored ("prefill", skipped for blobs the
//! server already has, and the ActionResults `ac-read` fetches), drive the
//! load with `--concurrency` workers for `--duration` or `--requests` after
//! a `--warmup`, reading the server's CPU time when the warm-up ends and
//! after the last answer, then ask whether every acknowledged write is still
//! there and read a few back. Every read is verified by hashing what comes
//! back (zstd reads after decoding), with the digest function the blobs
//! are named by (`--digest_function`: SHA-256 or BLAKE3).
//!
//! `--hash_rate` measures no cache: it prints how fast this machine hashes
//! with each function, a reference for the throughput figures.
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
//! * `blobs.rs`: deterministic blobs (random or compressible, plain or as zstd
//!   streams), generated and hashed without being stored.
//! * `action.rs`: the ActionResults of `ac-read` and `ac-write`.
//! * `client.rs`: one client over both protocols, as the run uses it.
//! * `http.rs`: the HTTP client (`PUT`/`GET`/`HEAD` under `/cas/` and `/ac/`), verifying what it reads.
//! * `grpc.rs`: the REAPI v2 gRPC client (Capabilities, CAS batches, ByteStream, action cache).
//! * `zstd_read.rs`: decoding zstd reads as they arrive, to hash what they decode to.
//! * `hash_rate.rs`: `--hash_rate`, this machine's SHA-256 and BLAKE3 hashing rates.
//! * `server_cpu.rs`: the server's CPU time, from its metrics page or `/proc`.
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

mod action;
mod client;
mod error;
mod grpc;
mod hash_rate;
mod mix;
mod options;
mod rng;
mod runner;
mod server_cpu;
mod tls;
mod zstd_read;

use bazel_cache_digest::Kind;
use blobs::{ABSENT, BlobId, PREFILL, SizeClass};
use client::Client;
pub use error::{BenchError, OpError};
use mix::{Op, OpMix, SizeMix};
pub use options::{BenchArgs, Options, from_command_line, from_standalone_command_line};
pub use report::Report;
use report::{Prefill, ServerCpu, WriteCheck};
use rng::Rng;
pub use runner::{Load, Measured, Outcome, Ticket, drive};
use server_cpu::Probe;

/// Writes the server acknowledged: (CAS blob or ActionResult, size class,
/// id).
type Acknowledged = Arc<Mutex<Vec<(Kind, usize, BlobId)>>>;

/// Prefilled blobs per size: enough that reads spread over many blobs,
/// bounded in bytes so a large size does not mean a long upload.
const PREFILL_MAX_BLOBS: u64 = 1000;
const PREFILL_MAX_BYTES: u64 = 256 << 20;
const PREFILL_MIN_BLOBS: u64 = 4;
/// Most rounds of asking which prefilled blobs are missing and uploading
/// them. One is not always enough: the uploads can evict other prefilled
/// blobs when those are the store's least recently used, and a cache that
/// moves a blob up its LRU order at most once a minute (this server's
/// `touch_interval`) ranks blobs stored in the last minute by their upload,
/// however often they were read since. Reads of blobs so evicted failed as
/// NotFound in perf-compare's later read rows. Each round leaves the blobs
/// it uploaded newest, so the rounds end when the tail holds other blobs;
/// past this many the load starts anyway and its reads report what is
/// missing.
const PREFILL_ROUNDS: u64 = 16;
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
    if args.hash_rate {
        return match hash_rate_time(&args) {
            Ok(each) => {
                let rate = hash_rate::measure(each);
                if args.json {
                    println!("{}", rate.json());
                } else {
                    print!("{}", rate.text());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        };
    }
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

/// `--hash_rate`'s time per function: `--duration`, 2 s without it.
fn hash_rate_time(args: &BenchArgs) -> Result<Duration, BenchError> {
    let Some(d) = &args.duration else {
        return Ok(Duration::from_secs(2));
    };
    match bazel_cache_digest::parse_go_duration(d) {
        Ok(d) if !d.is_zero() && d <= Duration::from_secs(600) => Ok(d),
        Ok(_) => Err(BenchError::Usage {
            flag: "--duration",
            message: "with --hash_rate, must be longer than 0 and at most 10m".to_owned(),
        }),
        Err(message) => Err(BenchError::Usage {
            flag: "--duration",
            message,
        }),
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
        .map(|e| SizeClass::named_by(e.item, options.content, options.digest_function))
        .collect();
    let client = Arc::new(Client::connect(options).await?);
    let cpu = Arc::new(Probe::connect(options).await?);

    let uses_prefill = options.mix.any(Op::uses_prefill);
    let prefill_counts: Vec<u64> = classes
        .iter()
        .map(|c| match (uses_prefill, options.prefill) {
            (false, _) => 0,
            (true, Some(n)) => n.max(1),
            (true, None) => {
                (PREFILL_MAX_BYTES / c.size()).clamp(PREFILL_MIN_BLOBS, PREFILL_MAX_BLOBS)
            }
        })
        .collect();
    let mut prefill = prefill(&client, &classes, &prefill_counts, options).await?;
    if options.mix.has(Op::AcRead) {
        prefill.action_results =
            prefill_action_results(&client, &classes, &prefill_counts, options).await?;
    }

    let namespace = match options.seed.unwrap_or_else(time_seed) {
        PREFILL | ABSENT => 1,
        n => n,
    };
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    // The server's CPU time when the warm-up ends, and after the last answer.
    let cpu_before = tokio::spawn({
        let (cpu, warmup) = (cpu.clone(), options.load.warmup);
        async move {
            tokio::time::sleep(warmup).await;
            cpu.sample().await
        }
    });
    let measured = measure(
        &client,
        &classes,
        &prefill_counts,
        namespace,
        options,
        acknowledged.clone(),
    )
    .await;
    let cpu_after = cpu.sample().await;
    let cpu_before = cpu_before
        .await
        .unwrap_or_else(|e| Err(format!("the CPU sampler failed: {e}")));
    let server_cpu = ServerCpu::between(cpu.describe(), cpu_before, cpu_after);

    let write_check = if options.check_writes && options.mix.any(Op::writes) {
        let acked = std::mem::take(&mut *lock(&acknowledged));
        Some(check_writes(&client, &classes, &prefill_counts, acked, options).await)
    } else {
        None
    };
    Ok(report::build(
        options,
        &client,
        &classes,
        prefill,
        measured,
        server_cpu,
        write_check,
    ))
}

/// Requests of `groups.len()` each doing `op` on one group, with the
/// load's concurrency and no warm-up; the first error, if any.
async fn each_group<T, F, Fut>(options: &Options, groups: Vec<T>, op: F) -> Result<(), OpError>
where
    T: Send + Sync + 'static,
    F: Fn(usize, Arc<T>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<u64, OpError>> + Send + 'static,
{
    if groups.is_empty() {
        return Ok(());
    }
    let groups: Arc<Vec<Arc<T>>> = Arc::new(groups.into_iter().map(Arc::new).collect());
    let first_error = Arc::new(Mutex::new(None));
    let load = Load {
        concurrency: options.load.concurrency.min(groups.len()),
        duration: None,
        requests: Some(groups.len() as u64),
        warmup: Duration::ZERO,
    };
    let (g, fe, timeout, op) = (
        groups.clone(),
        first_error.clone(),
        options.timeout,
        Arc::new(op),
    );
    drive(&load, 1, move |t| {
        let (g, fe, op) = (g.clone(), fe.clone(), op.clone());
        async move {
            let group = g[t.index as usize].clone();
            let result = with_timeout(timeout, op(t.worker, group)).await;
            if let Err(e) = &result {
                lock(&fe).get_or_insert_with(|| e.clone());
            }
            Outcome {
                row: 0,
                blobs: 1,
                bytes: 0,
                result: result.map(drop),
            }
        }
    })
    .await;
    match lock(&first_error).take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Stores the ActionResults `ac-read` fetches: entries `0..count` of
/// namespace [`PREFILL`] of each class (rewritten every run: storing one
/// costs the same as asking whether it is there). Returns how many.
async fn prefill_action_results(
    client: &Arc<Client>,
    classes: &[Arc<SizeClass>],
    counts: &[u64],
    options: &Options,
) -> Result<u64, BenchError> {
    let mut entries = Vec::new();
    for (class, &count) in classes.iter().zip(counts) {
        entries.extend((0..count).map(|index| {
            let id = BlobId {
                namespace: PREFILL,
                index,
            };
            (class.clone(), id, count)
        }));
    }
    let n = entries.len() as u64;
    let c = client.clone();
    each_group(options, entries, move |worker, entry| {
        let c = c.clone();
        async move {
            let (class, id, count) = entry.as_ref();
            c.ac_write(worker, class, *id, *count).await
        }
    })
    .await
    .map_err(BenchError::Prefill)?;
    Ok(n)
}

/// Makes sure blobs `0..count` of namespace [`PREFILL`] of each class are
/// stored, uploading those the server lacks, and asking again until none
/// is missing (at most [`PREFILL_ROUNDS`] times).
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
        let per = client.per_request(class.size(), 256);
        for _ in 0..PREFILL_ROUNDS {
            let missing = find_all_missing(client, class, &ids, options)
                .await
                .map_err(BenchError::Prefill)?;
            if missing.is_empty() {
                break;
            }
            let groups: Vec<Vec<BlobId>> = missing.chunks(per).map(<[_]>::to_vec).collect();
            let (c, cl) = (client.clone(), class.clone());
            each_group(options, groups, move |worker, ids| {
                let (c, cl) = (c.clone(), cl.clone());
                async move { c.write(worker, &cl, &ids, false).await }
            })
            .await
            .map_err(BenchError::Prefill)?;
            report.uploaded += missing.len() as u64;
            report.rounds += 1;
        }
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
    let groups: Vec<Vec<BlobId>> = ids.chunks(per).map(<[_]>::to_vec).collect();
    let missing = Arc::new(Mutex::new(Vec::new()));
    let (c, cl, m) = (client.clone(), class.clone(), missing.clone());
    each_group(options, groups, move |worker, ids| {
        let (c, cl, m) = (c.clone(), cl.clone(), m.clone());
        async move {
            let found = c.missing(worker, &cl, &ids).await?;
            lock(&m).extend_from_slice(&found);
            Ok(0)
        }
    })
    .await?;
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
    impl Plan {
        /// `n` blobs never written before: this run's namespace.
        fn new_ids(&self, n: usize) -> Vec<BlobId> {
            let first = self.next_write.fetch_add(n as u64, Ordering::Relaxed);
            (first..first + n as u64)
                .map(|index| BlobId {
                    namespace: self.namespace,
                    index,
                })
                .collect()
        }

        fn acknowledge(&self, kind: Kind, class: usize, ids: &[BlobId]) {
            if let Some(acked) = &self.acknowledged {
                lock(acked).extend(ids.iter().map(|&id| (kind, class, id)));
            }
        }
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
            let timeout = plan.timeout;
            let client = &plan.client;
            let prefilled = plan.prefill[c];
            let (result, blobs) = match op {
                Op::Read | Op::ReadZstd => {
                    n = n.min(prefilled as usize);
                    let start = rng.below(prefilled);
                    let ids: Vec<BlobId> = (0..n as u64)
                        .map(|k| BlobId {
                            namespace: PREFILL,
                            index: (start + k) % prefilled,
                        })
                        .collect();
                    let read = client.read(t.worker, class, &ids, op.zstd());
                    (with_timeout(timeout, read).await, n)
                }
                Op::Write | Op::WriteZstd => {
                    let ids = plan.new_ids(n);
                    let write = client.write(t.worker, class, &ids, op.zstd());
                    let result = with_timeout(timeout, write).await;
                    if result.is_ok() {
                        plan.acknowledge(Kind::Cas, c, &ids);
                    }
                    (result, n)
                }
                Op::Find => {
                    let (ids, absent) = find_request(&mut rng, t.index, n, prefilled);
                    let result = with_timeout(timeout, async {
                        let missing = client.missing(t.worker, class, &ids).await?;
                        check_missing(&ids, &missing, &absent)?;
                        Ok(0)
                    })
                    .await;
                    (result, n)
                }
                Op::AcRead => {
                    let id = BlobId {
                        namespace: PREFILL,
                        index: rng.below(prefilled),
                    };
                    let read = client.ac_read(t.worker, class, id, prefilled);
                    (with_timeout(timeout, read).await, 1)
                }
                Op::AcWrite => {
                    let ids = plan.new_ids(1);
                    let write = client.ac_write(t.worker, class, ids[0], prefilled);
                    let result = with_timeout(timeout, write).await;
                    if result.is_ok() {
                        plan.acknowledge(Kind::Ac, c, &ids);
                    }
                    (result, 1)
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

/// A find answer must name exactly the absent blobs. Through sets: a
/// 1,000-digest call checked list against list was a fifth of the load
/// generator's CPU on FindMissingBlobs loads.
fn check_missing(asked: &[BlobId], missing: &[BlobId], absent: &[BlobId]) -> Result<(), OpError> {
    use std::collections::HashSet;
    let (missing_set, absent_set): (HashSet<_>, HashSet<_>) =
        (missing.iter().collect(), absent.iter().collect());
    let wrong_present = missing.iter().filter(|m| !absent_set.contains(m)).count();
    let wrong_absent = absent.iter().filter(|a| !missing_set.contains(a)).count();
    if wrong_present + wrong_absent == 0 {
        return Ok(());
    }
    Err(OpError::WrongAnswer(format!(
        "asked about {} blobs: {wrong_present} stored ones reported missing, {wrong_absent} never-written ones reported present",
        asked.len()
    )))
}

/// Asks about (up to [`CHECK_MAX`] of) the acknowledged writes and reads
/// back up to [`READ_BACK_MAX`] of the blobs present. ActionResults have no
/// presence call of their own: up to [`READ_BACK_MAX`] of them are read back,
/// which asks and verifies at once.
async fn check_writes(
    client: &Arc<Client>,
    classes: &[Arc<SizeClass>],
    prefill_counts: &[u64],
    mut acked: Vec<(Kind, usize, BlobId)>,
    options: &Options,
) -> WriteCheck {
    let mut check = WriteCheck {
        acknowledged: acked.len() as u64,
        ..WriteCheck::default()
    };
    if acked.len() > CHECK_MAX {
        acked = spread(&acked, CHECK_MAX);
    }
    let (action_results, blobs): (Vec<_>, Vec<_>) = acked
        .into_iter()
        .partition(|(kind, _, _)| *kind == Kind::Ac);
    let action_results = spread(&action_results, READ_BACK_MAX);
    check.checked = (blobs.len() + action_results.len()) as u64;
    let sample = |check: &mut WriteCheck, message: String| {
        if check.samples.len() < 3 {
            check.samples.push(message);
        }
    };
    let mut present = Vec::new();
    for (c, class) in classes.iter().enumerate() {
        let ids: Vec<BlobId> = blobs
            .iter()
            .filter(|(_, k, _)| *k == c)
            .map(|(_, _, id)| *id)
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
                sample(&mut check, format!("presence check failed: {e}"));
            }
        }
    }
    for &(c, id) in spread(&present, READ_BACK_MAX).iter() {
        check.read_back += 1;
        let result = with_timeout(options.timeout, client.read(0, &classes[c], &[id], false)).await;
        if let Err(e) = result {
            check.read_back_failed += 1;
            sample(&mut check, e.to_string());
        }
    }
    for &(_, c, id) in &action_results {
        let read = client.ac_read(0, &classes[c], id, prefill_counts[c]);
        match with_timeout(options.timeout, read).await {
            Ok(_) => check.read_back += 1,
            Err(e) if e.is_not_found() => check.missing += 1,
            Err(e) => {
                check.read_back += 1;
                check.read_back_failed += 1;
                sample(&mut check, e.to_string());
            }
        }
    }
    check
}

/// At most `max` of `items`, evenly spread.
fn spread<T: Copy>(items: &[T], max: usize) -> Vec<T> {
    if items.len() <= max {
        return items.to_vec();
    }
    let step = items.len() as f64 / max as f64;
    (0..max)
        .map(|i| items[(i as f64 * step) as usize])
        .collect()
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
