//! A rolling restart under load (the test BuildBuddy runs on its
//! distributed cache): three replicas of the server binary, each with its
//! own `--dir` and ports, over one s3s-fs bucket; clients write new CAS
//! blobs and AC entries through all three round-robin (HTTP and gRPC) and
//! read each other's writes back through other replicas, while every
//! replica is restarted in turn on its own `--dir`: the first with SIGTERM
//! (it must drain and exit cleanly), the second with kill -9, the third
//! with SIGTERM. At the end every acknowledged write must be in the bucket
//! and readable, with its bytes, from every replica and from a fresh one
//! whose empty disk reads everything through the bucket.
//!
//! Figures are printed (`--nocapture` shows them): writes acknowledged,
//! lost, unreadable per replica, and HEADs sent per FindMissingBlobs, from
//! the replicas' own `/metrics` (S3 HEAD requests as
//! `bazel_remote_s3_request_duration_seconds_count{operation="head"}`,
//! calls as `grpc_server_handled_total{grpc_method="FindMissingBlobs"}`),
//! summed over every process of every replica, for the load and the
//! uploads it queued (before the final reads). The HEADs are all the
//! replicas sent: FindMissingBlobs's, GetActionResult's completeness checks
//! of entries read through the bucket, and the upload order's checks.
//! Whatever answers existence without a HEAD (a presence cache) shows in
//! that figure by itself.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use bazel_remote_apis::google::bytestream::{ReadRequest, WriteRequest};
use futures_util::StreamExt;
use prost::Message;
use re::action_cache_client::ActionCacheClient;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::transport::Channel;

use crate::support::prometheus::Scrape;
use crate::support::s3::S3Server;
use crate::support::{Server, bytestream_client, cas_path, digest, hex, noise};

const REPLICAS: usize = 3;
const CLIENTS: usize = 4;
/// Load before the first restart and between restarts.
const SETTLE: Duration = Duration::from_secs(3);
/// Every client request's limit: a replica that vanishes costs this much.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The replicas' `s3.presence_cache_negative_ttl` (the default): a replica
/// that answered "missing" for another replica's write not yet uploaded
/// keeps answering so for this long (by design: a miss, never an error).
const NEGATIVE_TTL: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Endpoints {
    http: String,
    grpc: String,
}

fn start_replica(s3: &S3Server, dir: &Path) -> Server {
    let mut args = s3.server_flags(&s3.secret_key, 4);
    // Endpoint metrics: the per-RPC counters (FindMissingBlobs calls).
    args.extend(["--grpc_address", "127.0.0.1:0", "--enable_endpoint_metrics"].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_with_dir(dir, &refs)
}

fn endpoints(s: &Server) -> Endpoints {
    Endpoints {
        http: s.http_url.clone(),
        grpc: s.grpc_endpoint(),
    }
}

/// One acknowledged action: its key, result and the blobs it names.
struct Written {
    action: Vec<u8>,
    result: re::ActionResult,
    output: Vec<u8>,
    stdout: Vec<u8>,
    client: usize,
}

impl Written {
    fn new(client: usize, i: u64) -> Written {
        let seed = (client as u64) << 32 | i;
        let size = 1024 + (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % 300_000;
        let output = noise(size, seed + 1);
        let stdout = format!("client {client} action {i} stdout").into_bytes();
        let result = re::ActionResult {
            output_files: vec![re::OutputFile {
                path: format!("out/{client}/{i}"),
                digest: Some(digest(&output)),
                ..Default::default()
            }],
            stdout_digest: Some(digest(&stdout)),
            ..Default::default()
        };
        Written {
            action: format!("rolling restart action {client} {i}").into_bytes(),
            result,
            output,
            stdout,
            client,
        }
    }

    fn ac_path(&self) -> String {
        format!("/ac/{}", hex(&self.action))
    }
}

#[derive(Default)]
struct Tally {
    attempted: AtomicU64,
    acknowledged: AtomicU64,
    refused: AtomicU64,
    read_hits: AtomicU64,
    read_misses: AtomicU64,
    read_errors: AtomicU64,
    /// Reads that returned other bytes, or an AC hit whose output was
    /// missing: never acceptable, restarts or not.
    wrong: Mutex<Vec<String>>,
    /// The first few refused writes, for the report.
    refusals: Mutex<Vec<String>>,
}

struct Shared {
    /// The replicas clients may use (`None` while one is down).
    table: RwLock<Vec<Option<Endpoints>>>,
    written: Mutex<Vec<Arc<Written>>>,
    tally: Tally,
    stop: AtomicBool,
}

impl Shared {
    /// The first replica up from `from` on, round-robin.
    fn pick(&self, from: usize) -> Option<(usize, Endpoints)> {
        let table = self.table.read().unwrap();
        (0..REPLICAS)
            .map(|k| (from + k) % REPLICAS)
            .find_map(|r| table[r].clone().map(|e| (r, e)))
    }

    fn set(&self, replica: usize, endpoints: Option<Endpoints>) {
        self.table.write().unwrap()[replica] = endpoints;
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn channel(channels: &mut HashMap<String, Channel>, url: &str) -> Channel {
    channels
        .entry(url.to_owned())
        .or_insert_with(|| {
            Channel::from_shared(url.to_owned())
                .unwrap()
                .connect_timeout(Duration::from_secs(2))
                .timeout(REQUEST_TIMEOUT)
                .connect_lazy()
        })
        .clone()
}

async fn http_put(http: &reqwest::Client, url: String, body: Vec<u8>) -> Result<(), BoxError> {
    let resp = http.put(&url).body(body).send().await?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("PUT {url}: {status} {text}").into())
    }
}

/// Writes like Bazel over HTTP: the blobs, then the AC entry.
async fn http_write(http: &reqwest::Client, base: &str, w: &Written) -> Result<(), BoxError> {
    http_put(
        http,
        format!("{base}{}", cas_path(&w.output)),
        w.output.clone(),
    )
    .await?;
    http_put(
        http,
        format!("{base}{}", cas_path(&w.stdout)),
        w.stdout.clone(),
    )
    .await?;
    let ac = w.result.encode_to_vec();
    http_put(http, format!("{base}{}", w.ac_path()), ac).await
}

/// Writes like Bazel over gRPC: FindMissingBlobs, the missing blobs
/// (ByteStream or BatchUpdateBlobs), then UpdateActionResult.
async fn grpc_write(ch: Channel, w: &Written, bytestream: bool) -> Result<(), BoxError> {
    let mut cas = ContentAddressableStorageClient::new(ch.clone());
    let missing = cas
        .find_missing_blobs(re::FindMissingBlobsRequest {
            blob_digests: vec![digest(&w.output), digest(&w.stdout)],
            ..Default::default()
        })
        .await?
        .into_inner()
        .missing_blob_digests;
    for d in missing {
        let data = if d.hash == hex(&w.output) {
            &w.output
        } else {
            &w.stdout
        };
        if bytestream {
            let name = format!("uploads/{}/blobs/{}/{}", hex(&w.action), d.hash, data.len());
            let chunks: Vec<WriteRequest> = data
                .chunks(64 * 1024)
                .enumerate()
                .map(|(k, c)| WriteRequest {
                    resource_name: if k == 0 { name.clone() } else { String::new() },
                    write_offset: (k * 64 * 1024) as i64,
                    finish_write: (k + 1) * 64 * 1024 >= data.len(),
                    data: c.to_vec(),
                })
                .collect();
            let resp = bytestream_client(ch.clone())
                .write(futures_util::stream::iter(chunks))
                .await?
                .into_inner();
            if resp.committed_size != data.len() as i64 {
                return Err(format!("{name}: committed {}", resp.committed_size).into());
            }
        } else {
            let resp = cas
                .batch_update_blobs(re::BatchUpdateBlobsRequest {
                    requests: vec![re::batch_update_blobs_request::Request {
                        digest: Some(d.clone()),
                        data: data.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .await?
                .into_inner();
            for r in resp.responses {
                if let Some(s) = r.status.filter(|s| s.code != 0) {
                    return Err(format!("BatchUpdateBlobs: {} {}", s.code, s.message).into());
                }
            }
        }
    }
    ActionCacheClient::new(ch)
        .update_action_result(re::UpdateActionResultRequest {
            action_digest: Some(digest(&w.action)),
            action_result: Some(w.result.clone()),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// What reading one write back found.
enum Read {
    Hit,
    Miss,
    Wrong(String),
}

async fn http_read(http: &reqwest::Client, base: &str, w: &Written) -> Result<Read, BoxError> {
    let resp = http.get(format!("{base}{}", w.ac_path())).send().await?;
    match resp.status().as_u16() {
        404 => return Ok(Read::Miss),
        200 => {}
        code => return Err(format!("GET {}: {code}", w.ac_path()).into()),
    }
    let body = resp.bytes().await?;
    if re::ActionResult::decode(body.as_ref()).ok().as_ref() != Some(&w.result) {
        return Ok(Read::Wrong(format!("{base}{}: other bytes", w.ac_path())));
    }
    for blob in [&w.output, &w.stdout] {
        let resp = http.get(format!("{base}{}", cas_path(blob))).send().await?;
        let code = resp.status().as_u16();
        let body = resp.bytes().await?;
        if code != 200 || body.as_ref() != blob.as_slice() {
            return Ok(Read::Wrong(format!(
                "{base}{}: {code}, {} bytes after its AC entry was served",
                cas_path(blob),
                body.len()
            )));
        }
    }
    Ok(Read::Hit)
}

async fn grpc_read(ch: Channel, w: &Written) -> Result<Read, BoxError> {
    let got = ActionCacheClient::new(ch.clone())
        .get_action_result(re::GetActionResultRequest {
            action_digest: Some(digest(&w.action)),
            ..Default::default()
        })
        .await;
    let result = match got {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(Read::Miss),
        Err(s) => return Err(s.into()),
    };
    if result != w.result {
        return Ok(Read::Wrong(format!("AC {}: other result", hex(&w.action))));
    }
    let name = format!("blobs/{}/{}", hex(&w.output), w.output.len());
    let mut stream = bytestream_client(ch)
        .read(ReadRequest {
            resource_name: name.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut data = Vec::new();
    while let Some(msg) = stream.message().await? {
        data.extend_from_slice(&msg.data);
    }
    if data != w.output {
        return Ok(Read::Wrong(format!("{name}: other bytes")));
    }
    Ok(Read::Hit)
}

fn note(list: &Mutex<Vec<String>>, what: String) {
    let mut list = list.lock().unwrap();
    if list.len() < 20 {
        list.push(what);
    }
}

/// One client: a write, then a read of another client's write through
/// another replica, until told to stop.
async fn run_client(id: usize, shared: Arc<Shared>) {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let mut channels = HashMap::new();
    let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ id as u64;
    let mut i = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        i += 1;
        let t = &shared.tally;
        let Some((replica, ep)) = shared.pick(id + i as usize) else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let w = Written::new(id, i);
        let via_grpc = i % 2 == 1;
        t.attempted.fetch_add(1, Ordering::Relaxed);
        let written = if via_grpc {
            grpc_write(channel(&mut channels, &ep.grpc), &w, i % 4 == 1).await
        } else {
            http_write(&http, &ep.http, &w).await
        };
        match written {
            Ok(()) => {
                t.acknowledged.fetch_add(1, Ordering::Relaxed);
                shared.written.lock().unwrap().push(Arc::new(w));
            }
            Err(e) => {
                t.refused.fetch_add(1, Ordering::Relaxed);
                note(&t.refusals, format!("replica {replica}: {e}"));
            }
        }

        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let other = {
            let written = shared.written.lock().unwrap();
            let others: Vec<&Arc<Written>> = written.iter().filter(|w| w.client != id).collect();
            (!others.is_empty()).then(|| others[rng as usize % others.len()].clone())
        };
        if let (Some(other), Some((r, ep))) = (other, shared.pick(replica + 1)) {
            let read = if via_grpc {
                grpc_read(channel(&mut channels, &ep.grpc), &other).await
            } else {
                http_read(&http, &ep.http, &other).await
            };
            match read {
                Ok(Read::Hit) => t.read_hits.fetch_add(1, Ordering::Relaxed),
                // Not uploaded by its replica yet (write-behind).
                Ok(Read::Miss) => t.read_misses.fetch_add(1, Ordering::Relaxed),
                Ok(Read::Wrong(what)) => {
                    note(&t.wrong, format!("replica {r}: {what}"));
                    0
                }
                // The replica went away mid-read.
                Err(_) => t.read_errors.fetch_add(1, Ordering::Relaxed),
            };
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

/// S3 HEAD requests and FindMissingBlobs calls one process has counted.
#[derive(Default, Clone, Copy)]
struct Counted {
    heads: f64,
    find_missing: f64,
}

impl std::ops::AddAssign for Counted {
    fn add_assign(&mut self, o: Counted) {
        self.heads += o.heads;
        self.find_missing += o.find_missing;
    }
}

/// What a replica's `/metrics` (status and body) counts.
fn counted((code, body): (u16, Vec<u8>)) -> Counted {
    assert_eq!(code, 200);
    let m = Scrape::new(String::from_utf8(body).unwrap());
    let sum = |name: &str, labels: &[(&str, &str)]| -> f64 {
        m.matching(name, labels).iter().map(|s| s.value).sum()
    };
    Counted {
        heads: sum(
            "bazel_remote_s3_request_duration_seconds_count",
            &[("operation", "head")],
        ),
        find_missing: sum(
            "grpc_server_handled_total",
            &[("grpc_method", "FindMissingBlobs")],
        ),
    }
}

/// How a replica is taken down.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    /// SIGTERM: readiness goes first (the Service stops routing to it),
    /// then it drains and must exit 0.
    Term,
    /// kill -9, unannounced: clients find out by failing.
    Kill,
}

/// Restarts every replica in turn, under load; returns the replicas and
/// what their stopped processes counted.
fn restart_each(
    s3: &S3Server,
    mut servers: Vec<Server>,
    dirs: &[tempfile::TempDir],
    shared: &Shared,
) -> (Vec<Server>, Counted) {
    let mut total = Counted::default();
    std::thread::sleep(SETTLE);
    for (r, how) in [(0, Stop::Term), (1, Stop::Kill), (2, Stop::Term)] {
        let server = servers.remove(r);
        total += counted(server.get("/metrics"));
        match how {
            Stop::Term => {
                shared.set(r, None);
                let started = Instant::now();
                let (status, _, err) = server.stop_with_output();
                let status = status.expect("SIGTERM: the replica had to be killed");
                assert!(status.success(), "replica {r} exited with {status}: {err}");
                eprintln!("replica {r}: SIGTERM, drained in {:?}", started.elapsed());
            }
            Stop::Kill => {
                // Dropping a Server kills it with SIGKILL.
                drop(server);
                shared.set(r, None);
                eprintln!("replica {r}: kill -9");
            }
        }
        let restarted = start_replica(s3, dirs[r].path());
        shared.set(r, Some(endpoints(&restarted)));
        servers.insert(r, restarted);
        std::thread::sleep(SETTLE);
    }
    (servers, total)
}

async fn wait_uploaded(s: &Server) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = s.status_async().await;
        if st["Backend"]["UploadsPending"] == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "uploads still pending after 60 s: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the bucket holds an object for `key` (`ac`, or `cas` in either
/// storage mode's layout).
fn in_bucket(s3: &S3Server, dirs: &[&str], hash: &str) -> bool {
    dirs.iter().any(|d| {
        s3.object_path(&format!("{d}/{}/{hash}", &hash[..2]))
            .exists()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_a_rolling_restart() {
    let started = Instant::now();
    let s3 = Arc::new(S3Server::start());
    let dirs: Vec<tempfile::TempDir> = (0..REPLICAS)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let servers: Vec<Server> = dirs.iter().map(|d| start_replica(&s3, d.path())).collect();
    let shared = Arc::new(Shared {
        table: RwLock::new(servers.iter().map(|s| Some(endpoints(s))).collect()),
        written: Mutex::default(),
        tally: Tally::default(),
        stop: AtomicBool::new(false),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(run_client(id, shared.clone())))
        .collect();

    // The replicas' dirs live until the end of the test.
    let (servers, mut counts, _dirs) = {
        let s3 = s3.clone();
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            let (servers, counts) = restart_each(&s3, servers, &dirs, &shared);
            (servers, counts, dirs)
        })
        .await
        .unwrap()
    };
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let load_time = started.elapsed();
    let load_stopped = Instant::now();

    for s in &servers {
        wait_uploaded(s).await;
    }
    // The figures of the load (and of the uploads it queued), before the
    // checks below read everything through every replica.
    for s in &servers {
        counts += counted(s.get_async("/metrics").await);
    }
    let written: Vec<Arc<Written>> = shared.written.lock().unwrap().clone();
    let lost: Vec<String> = written
        .iter()
        .filter(|w| {
            !in_bucket(&s3, &["ac"], &hex(&w.action))
                || !in_bucket(&s3, &["cas", "cas.v2"], &hex(&w.output))
                || !in_bucket(&s3, &["cas", "cas.v2"], &hex(&w.stdout))
        })
        .map(|w| hex(&w.action))
        .collect();

    // Every replica, and one more with an empty disk (reads through the
    // bucket), reads every acknowledged write, once the misses the replicas
    // cached during the load have expired.
    tokio::time::sleep(NEGATIVE_TTL.saturating_sub(load_stopped.elapsed())).await;
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = start_replica(&s3, fresh_dir.path());
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let mut unreadable = Vec::new();
    for s in servers.iter().chain([&fresh]) {
        let failures: Vec<String> = futures_util::stream::iter(&written)
            .map(|w| {
                let http = http.clone();
                async move {
                    match http_read(&http, &s.http_url, w).await {
                        Ok(Read::Hit) => None,
                        Ok(Read::Miss) => Some(format!("{}: missing", w.ac_path())),
                        Ok(Read::Wrong(what)) => Some(what),
                        Err(e) => Some(e.to_string()),
                    }
                }
            })
            .buffer_unordered(8)
            .filter_map(|f| async move { f })
            .collect()
            .await;
        unreadable.push(failures);
    }

    let t = &shared.tally;
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let per_replica: Vec<usize> = unreadable.iter().map(Vec::len).collect();
    eprintln!(
        "rolling restart: {} writes attempted, {} acknowledged, {} refused (replica down or draining), \
         {} lost; unreadable per replica {:?} (last: fresh replica); \
         reads during load: {} hits, {} misses (not uploaded yet), {} failed (replica restarting); \
         {} S3 HEADs for {} FindMissingBlobs = {:.2} HEADs per FindMissingBlobs; load {:?}, total {:?}",
        n(&t.attempted),
        n(&t.acknowledged),
        n(&t.refused),
        lost.len(),
        per_replica,
        n(&t.read_hits),
        n(&t.read_misses),
        n(&t.read_errors),
        counts.heads,
        counts.find_missing,
        counts.heads / counts.find_missing.max(1.0),
        load_time,
        started.elapsed(),
    );
    eprintln!(
        "refused writes (first 20): {:#?}",
        t.refusals.lock().unwrap()
    );

    assert!(
        written.len() >= 50,
        "too few acknowledged writes to mean anything: {}",
        written.len()
    );
    assert!(counts.find_missing > 0.0);
    let wrong = t.wrong.lock().unwrap().clone();
    assert!(wrong.is_empty(), "wrong reads during the load: {wrong:#?}");
    assert!(
        lost.is_empty(),
        "acknowledged writes not in the bucket: {lost:?}"
    );
    for (r, failures) in unreadable.iter().enumerate() {
        assert!(
            failures.is_empty(),
            "replica {r}: {} acknowledged writes unreadable: {:#?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
    }
}
