//! The closed-loop load driver: `concurrency` workers, each issuing one
//! request at a time and the next as soon as it is answered, first for the
//! warm-up (not recorded), then until the duration has passed or the
//! request count is reached. Shared by `bazel-cache bench` and the
//! benchmarks in `benches/`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::OpError;
use crate::stats::Recorder;

/// How much load, for how long.
#[derive(Debug, Clone)]
pub struct Load {
    /// Requests in flight (workers).
    pub concurrency: usize,
    /// Stop starting requests after this long (measured after the warm-up).
    pub duration: Option<Duration>,
    /// Stop after this many measured requests.
    pub requests: Option<u64>,
    /// Requests made during this time at the start are not recorded.
    pub warmup: Duration,
}

/// What a request is asked to do.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    /// Which worker runs it (0..concurrency).
    pub worker: usize,
    /// 0, 1, 2, ... over all workers: measured requests and warm-up
    /// requests are numbered separately.
    pub index: u64,
    /// False during the warm-up.
    pub measured: bool,
}

/// What a request did.
#[derive(Debug)]
pub struct Outcome {
    /// The report row it belongs to (below the `rows` given to [`drive`]).
    pub row: usize,
    /// Blobs it moved or looked up.
    pub blobs: u64,
    /// Payload bytes it moved.
    pub bytes: u64,
    pub result: Result<(), OpError>,
}

/// The record of a measurement.
#[derive(Debug)]
pub struct Measured {
    pub rows: Vec<Recorder>,
    /// From the end of the warm-up to the last measured answer.
    pub elapsed: Duration,
}

/// Runs `op` from `load.concurrency` workers and records each measured
/// outcome in its row. With neither a duration nor a request count, the
/// load never ends: callers must set one.
pub async fn drive<F, Fut>(load: &Load, rows: usize, op: F) -> Measured
where
    F: Fn(Ticket) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let op = Arc::new(op);
    let measured_tickets = Arc::new(AtomicU64::new(0));
    let warmup_tickets = Arc::new(AtomicU64::new(0));
    let measure_from = Instant::now() + load.warmup;
    let until = load.duration.map(|d| measure_from + d);
    let limit = load.requests;
    let mut workers = Vec::with_capacity(load.concurrency);
    for worker in 0..load.concurrency.max(1) {
        let (op, measured_tickets, warmup_tickets) =
            (op.clone(), measured_tickets.clone(), warmup_tickets.clone());
        workers.push(tokio::spawn(async move {
            let mut record = vec![Recorder::default(); rows];
            let mut last_answer = None;
            loop {
                let now = Instant::now();
                let measured = now >= measure_from;
                let index = if measured {
                    if until.is_some_and(|end| now >= end) {
                        break;
                    }
                    let ticket = measured_tickets.fetch_add(1, Ordering::Relaxed);
                    if limit.is_some_and(|n| ticket >= n) {
                        break;
                    }
                    ticket
                } else {
                    warmup_tickets.fetch_add(1, Ordering::Relaxed)
                };
                let start = Instant::now();
                let outcome = op(Ticket {
                    worker,
                    index,
                    measured,
                })
                .await;
                if measured {
                    let done = Instant::now();
                    record[outcome.row].record(
                        outcome.blobs,
                        outcome.bytes,
                        done - start,
                        outcome.result,
                    );
                    last_answer = Some(done);
                }
            }
            (record, last_answer)
        }));
    }
    let mut merged = vec![Recorder::default(); rows];
    let mut last = None;
    for w in workers {
        let (record, last_answer) = match w.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a load worker was cancelled: {e}"),
        };
        for (row, r) in merged.iter_mut().zip(record) {
            row.merge(r);
        }
        last = last.max(last_answer);
    }
    Measured {
        rows: merged,
        elapsed: last.map_or(Duration::ZERO, |l| {
            l.saturating_duration_since(measure_from)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bazel_cache_digest::lock;

    #[tokio::test]
    async fn request_count_is_exact_and_indexes_are_unique() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let load = Load {
            concurrency: 8,
            duration: None,
            requests: Some(100),
            warmup: Duration::ZERO,
        };
        let m = drive(&load, 2, move |t| {
            let s = s.clone();
            async move {
                lock(&s).push(t.index);
                Outcome {
                    row: (t.index % 2) as usize,
                    blobs: 1,
                    bytes: 10,
                    result: if t.index == 3 {
                        Err(OpError::Timeout)
                    } else {
                        Ok(())
                    },
                }
            }
        })
        .await;
        let mut seen = lock(&seen).clone();
        seen.sort();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert_eq!(m.rows[0].requests + m.rows[1].requests, 100);
        assert_eq!(m.rows[1].errors["timeout"], 1);
        assert_eq!(m.rows[1].bytes, 490);
    }

    #[tokio::test]
    async fn warmup_is_not_recorded() {
        let load = Load {
            concurrency: 2,
            duration: None,
            requests: Some(10),
            warmup: Duration::from_millis(50),
        };
        let warm = Arc::new(AtomicU64::new(0));
        let w = warm.clone();
        let m = drive(&load, 1, move |t| {
            let w = w.clone();
            async move {
                if !t.measured {
                    w.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                Outcome {
                    row: 0,
                    blobs: 1,
                    bytes: 0,
                    result: Ok(()),
                }
            }
        })
        .await;
        assert!(warm.load(Ordering::Relaxed) > 0);
        assert_eq!(m.rows[0].requests, 10);
    }
}
