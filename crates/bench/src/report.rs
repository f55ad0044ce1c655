//! The result of a run, as a table for people and as JSON (`--json`) for
//! scripts: one row per operation and blob size, per operation, and in
//! total, with throughput (requests/s, blobs/s, MiB/s), latency
//! percentiles and errors by kind; the server's CPU per operation when it
//! could be read.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use std::sync::Arc;

use crate::blobs::SizeClass;
use crate::client::Client;
use crate::mix::{Op, format_size};
use crate::options::Options;
use crate::runner::Measured;
use crate::stats::{Latency, Recorder};
use crate::target::Protocol;

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The URL, password replaced by `***`.
    pub target: String,
    /// `http` or `grpc`.
    pub protocol: &'static str,
    pub instance_name: String,
    /// What the blobs were named by and reads verified with: `sha256` or
    /// `blake3`.
    pub digest_function: &'static str,
    /// Workers, each with one request in flight.
    pub concurrency: usize,
    /// HTTP/2 connections (gRPC) or the connection pool's size (HTTP).
    pub connections: usize,
    /// Blobs per batch call asked for (gRPC; HTTP requests carry one).
    pub batch: usize,
    /// Blob bytes one gRPC batch call may carry, from Capabilities.
    pub batch_limit_bytes: Option<u64>,
    pub sizes: Vec<SizeShare>,
    pub mix: Vec<OpShare>,
    pub warmup_seconds: f64,
    /// From the end of the warm-up to the last answer.
    pub elapsed_seconds: f64,
    /// CPUs the client saw (it may share them with the server).
    pub client_cores: usize,
    pub prefill: Prefill,
    /// Each operation and size that was requested.
    pub rows: Vec<Row>,
    /// Each operation over all sizes.
    pub ops: Vec<Row>,
    pub total: Stats,
    /// The server's CPU time during the measurement.
    pub server_cpu: ServerCpu,
    pub errors: Errors,
    /// After the load: were the acknowledged writes kept?
    pub write_check: Option<WriteCheck>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SizeShare {
    pub size: u64,
    pub weight: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpShare {
    pub op: Op,
    pub weight: u32,
}

/// The blobs reads are made of, uploaded before the measurement when the
/// server does not have them yet.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Prefill {
    pub blobs: u64,
    pub uploaded: u64,
    /// Rounds that uploaded something (more than one when uploads evicted
    /// other prefilled blobs; see `PREFILL_ROUNDS`).
    pub rounds: u64,
    /// ActionResults stored for `ac-read` (each run, over any old ones).
    pub action_results: u64,
    pub seconds: f64,
}

/// The server's CPU time from the end of the warm-up to the last answer,
/// and per operation (over every operation of the mix).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerCpu {
    /// Where the time was read (or, without figures, why there are none).
    pub source: String,
    pub seconds: Option<f64>,
    /// `seconds` over the measured time: cores kept busy.
    pub cores: Option<f64>,
    pub per_request_us: Option<f64>,
    pub per_blob_us: Option<f64>,
    /// Why there are no figures.
    pub unavailable: Option<String>,
}

impl ServerCpu {
    /// From the readings at both ends of the measurement; per-operation
    /// figures are added by [`build`].
    pub(crate) fn between(
        source: String,
        before: Result<f64, String>,
        after: Result<f64, String>,
    ) -> ServerCpu {
        match before.and_then(|b| after.map(|a| a - b)) {
            Ok(seconds) => ServerCpu {
                source,
                seconds: Some(seconds.max(0.0)),
                ..ServerCpu::default()
            },
            Err(why) => ServerCpu {
                unavailable: Some(why),
                source,
                ..ServerCpu::default()
            },
        }
    }

    fn per_operation(mut self, total: &Stats, elapsed: f64) -> ServerCpu {
        if let Some(s) = self.seconds {
            let per = |n: u64| (n > 0).then(|| s / n as f64 * 1e6);
            self.per_request_us = per(total.requests);
            self.per_blob_us = per(total.blobs);
            self.cores = (elapsed > 0.0).then(|| s / elapsed);
        }
        self
    }

    fn text(&self) -> String {
        let (Some(s), None) = (self.seconds, &self.unavailable) else {
            let why = self.unavailable.as_deref().unwrap_or(&self.source);
            return format!("server   CPU {why}\n");
        };
        let per = |label: &str, us: Option<f64>| {
            us.map_or_else(String::new, |us| format!(", {} per {label}", micros(us)))
        };
        format!(
            "server   CPU {s:.2} s ({:.2} cores){}{}; from {}\n",
            self.cores.unwrap_or(0.0),
            per("request", self.per_request_us),
            per("blob", self.per_blob_us),
            self.source
        )
    }
}

/// `850 µs`, `2.31 ms`.
fn micros(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub op: Option<Op>,
    /// `None` for all sizes together.
    pub size: Option<u64>,
    #[serde(flatten)]
    pub stats: Stats,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Requests finished (successful or not).
    pub requests: u64,
    /// Blobs moved or looked up (ActionResults read or written) by
    /// successful requests.
    pub blobs: u64,
    /// Payload bytes of successful requests: blob sizes (as stored, not as
    /// compressed for zstd transfers), ActionResult lengths.
    pub bytes: u64,
    pub errors: u64,
    pub requests_per_second: f64,
    pub blobs_per_second: f64,
    pub mib_per_second: f64,
    /// Of successful requests.
    pub latency: Latency,
}

impl Stats {
    pub fn of(mut r: Recorder, elapsed: Duration) -> Stats {
        let secs = elapsed.as_secs_f64();
        let rate = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
        Stats {
            requests: r.requests,
            blobs: r.blobs,
            bytes: r.bytes,
            errors: r.error_count(),
            requests_per_second: rate(r.requests as f64),
            blobs_per_second: rate(r.blobs as f64),
            mib_per_second: rate(r.bytes as f64 / MIB),
            latency: Latency::of(&mut r.latencies),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Errors {
    pub total: u64,
    pub by_kind: BTreeMap<String, u64>,
    /// The first few messages.
    pub samples: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WriteCheck {
    /// Writes the server acknowledged during the measurement.
    pub acknowledged: u64,
    /// How many of them were asked about afterwards (all, up to 10,000).
    pub checked: u64,
    /// Checked blobs the server no longer has (lost, or evicted by a
    /// cache too small for the load).
    pub missing: u64,
    /// Present blobs downloaded again and verified.
    pub read_back: u64,
    /// Of those, how many failed (wrong bytes, errors).
    pub read_back_failed: u64,
    pub samples: Vec<String>,
}

impl Report {
    /// Whether anything failed: a request during the measurement, or
    /// reading back an acknowledged write.
    pub fn failed(&self) -> bool {
        self.errors.total > 0
            || self
                .write_check
                .as_ref()
                .is_some_and(|c| c.read_back_failed > 0)
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    /// The human-readable table.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let batch = match self.batch_limit_bytes {
            Some(limit) => format!(
                ", batch calls up to {} blobs / {}",
                self.batch,
                format_size(limit)
            ),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "target   {} ({} clients over {} connections{batch}; client has {} cores)",
            self.target, self.concurrency, self.connections, self.client_cores
        );
        let sizes: Vec<String> = self
            .sizes
            .iter()
            .map(|s| format!("{}:{}", format_size(s.size).replace(' ', ""), s.weight))
            .collect();
        let mix: Vec<String> = self
            .mix
            .iter()
            .map(|m| format!("{}:{}", m.op, m.weight))
            .collect();
        let _ = writeln!(
            out,
            "load     {:.1} s measured after {:.1} s warm-up; sizes {}; mix {}; digests {}",
            self.elapsed_seconds,
            self.warmup_seconds,
            sizes.join(","),
            mix.join(","),
            self.digest_function
        );
        if self.prefill.blobs > 0 {
            let actions = match self.prefill.action_results {
                0 => String::new(),
                n => format!(", {n} ActionResults stored"),
            };
            let _ = writeln!(
                out,
                "prefill  {} blobs to read ({} uploaded{actions} in {:.1} s)",
                self.prefill.blobs, self.prefill.uploaded, self.prefill.seconds
            );
        }
        let _ = writeln!(
            out,
            "\n{:<10} {:>8} {:>10} {:>11} {:>11} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "op",
            "size",
            "requests",
            "req/s",
            "blobs/s",
            "MiB/s",
            "p50 ms",
            "p99 ms",
            "p999 ms",
            "max ms",
            "errors"
        );
        let mut rows: Vec<&Row> = self.rows.iter().collect();
        if self.sizes.len() > 1 {
            rows.extend(self.ops.iter());
        }
        for row in rows {
            let op = row.op.map_or("all", Op::as_str);
            let size = row
                .size
                .map_or_else(|| "all".to_owned(), |s| format_size(s).replace(' ', ""));
            table_row(&mut out, op, &size, &row.stats);
        }
        if self.mix.iter().filter(|m| m.weight > 0).count() > 1 {
            table_row(&mut out, "all", "all", &self.total);
        }
        out.push('\n');
        out.push_str(&self.server_cpu.text());
        if self.errors.total == 0 {
            let _ = writeln!(out, "errors   none");
        } else {
            let kinds: Vec<String> = self
                .errors
                .by_kind
                .iter()
                .map(|(k, n)| format!("{k} × {n}"))
                .collect();
            let _ = writeln!(out, "errors   {} ({})", self.errors.total, kinds.join(", "));
            for s in &self.errors.samples {
                let _ = writeln!(out, "         e.g. {s}");
            }
        }
        if let Some(c) = &self.write_check {
            let _ = writeln!(
                out,
                "writes   {} acknowledged, {} checked: {} missing{}; {} read back, {} failed",
                c.acknowledged,
                c.checked,
                c.missing,
                if c.missing > 0 {
                    " (lost, or evicted)"
                } else {
                    ""
                },
                c.read_back,
                c.read_back_failed
            );
            for s in &c.samples {
                let _ = writeln!(out, "         e.g. {s}");
            }
        }
        out
    }
}

pub(crate) fn build(
    options: &Options,
    client: &Client,
    classes: &[Arc<SizeClass>],
    prefill: Prefill,
    measured: Measured,
    server_cpu: ServerCpu,
    write_check: Option<WriteCheck>,
) -> Report {
    let elapsed = measured.elapsed;
    let wanted = |op: Op, c: usize| options.mix.has(op) && options.sizes.entries()[c].weight > 0;
    let mut rows = Vec::new();
    let mut per_op: Vec<(Op, Recorder)> = Vec::new();
    let mut total = Recorder::default();
    let mut errors = Errors::default();
    let mut cells = measured.rows.into_iter();
    for op in Op::ALL {
        let mut op_total = Recorder::default();
        for (c, class) in classes.iter().enumerate() {
            let cell = cells.next().unwrap_or_default();
            if cell.requests == 0 && !wanted(op, c) {
                continue;
            }
            for (kind, n) in &cell.errors {
                *errors.by_kind.entry(kind.clone()).or_default() += n;
            }
            for s in &cell.samples {
                if errors.samples.len() < 3 {
                    errors.samples.push(s.clone());
                }
            }
            op_total.merge(cell.clone());
            rows.push(Row {
                op: Some(op),
                size: Some(class.size()),
                stats: Stats::of(cell, elapsed),
            });
        }
        if op_total.requests > 0 || options.mix.has(op) {
            total.merge(op_total.clone());
            per_op.push((op, op_total));
        }
    }
    errors.total = errors.by_kind.values().sum();
    let total_stats = Stats::of(total, elapsed);
    Report {
        target: options.target.redacted(),
        protocol: match options.target.protocol {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        },
        instance_name: options.instance_name.clone(),
        digest_function: options.digest_function.as_str(),
        concurrency: options.load.concurrency,
        connections: options.connections,
        batch: options.batch,
        batch_limit_bytes: client.batch_limit(),
        sizes: options
            .sizes
            .entries()
            .iter()
            .map(|e| SizeShare {
                size: e.item,
                weight: e.weight,
            })
            .collect(),
        mix: options
            .mix
            .entries()
            .iter()
            .map(|e| OpShare {
                op: e.item,
                weight: e.weight,
            })
            .collect(),
        warmup_seconds: options.load.warmup.as_secs_f64(),
        elapsed_seconds: elapsed.as_secs_f64(),
        client_cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        prefill,
        rows,
        ops: per_op
            .into_iter()
            .map(|(op, r)| Row {
                op: Some(op),
                size: None,
                stats: Stats::of(r, elapsed),
            })
            .collect(),
        server_cpu: server_cpu.per_operation(&total_stats, elapsed.as_secs_f64()),
        total: total_stats,
        errors,
        write_check,
    }
}

fn table_row(out: &mut String, op: &str, size: &str, s: &Stats) {
    let _ = writeln!(
        out,
        "{op:<10} {size:>8} {:>10} {:>11.1} {:>11.1} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>7}",
        s.requests,
        s.requests_per_second,
        s.blobs_per_second,
        s.mib_per_second,
        s.latency.p50_ms,
        s.latency.p99_ms,
        s.latency.p999_ms,
        s.latency.max_ms,
        s.errors
    );
}
