//! The server's CPU during the measurement, so a report can say what each
//! operation costs the server and not only how fast it was: a cache that
//! is fast by burning every core is not efficient. Two sources:
//!
//! * `process_cpu_seconds_total` on the server's Prometheus page, the
//!   standard process metric (this server, bazel-remote and most exporters
//!   have it): `/metrics` on an HTTP target's host, or `--metrics_url`;
//! * `--server_pid`: user and system time of a local process, its threads
//!   and its descendants from `/proc` (for servers without metrics, such as
//!   nginx, whose workers are children of the process started).
//!
//! Each is read when the warm-up ends and after the last answer; the
//! difference is the CPU the server spent on the measured load (and on
//! anything else it did meanwhile, which on a quiet server is nothing).

use std::collections::HashMap;

use crate::error::BenchError;
use crate::http::HttpClient;
use crate::options::Options;
use crate::target::{Protocol, Target};

/// Clock ticks per second in `/proc/<pid>/stat` (USER_HZ, fixed by the
/// kernel's ABI).
const USER_HZ: f64 = 100.0;
/// The largest metrics page read.
const PAGE_LIMIT: usize = 16 << 20;
const METRIC: &str = "process_cpu_seconds_total";

/// Where the server's CPU time is read, from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CpuSource {
    /// A gRPC target without `--metrics_url`.
    None,
    /// A Prometheus page; `explicit` when given with `--metrics_url` (then
    /// a page without the metric stops the run), else guessed from an HTTP
    /// target (then the report says why there is no figure).
    Metrics { page: Target, explicit: bool },
    /// `--server_pid`.
    Pid(u32),
}

impl CpuSource {
    pub(crate) fn from_args(
        target: &Target,
        metrics_url: Option<&str>,
        pid: Option<u32>,
    ) -> Result<CpuSource, BenchError> {
        if let Some(pid) = pid {
            return Ok(CpuSource::Pid(pid));
        }
        let explicit = metrics_url.is_some();
        let mut page = match metrics_url {
            Some(url) => Target::parse(url).map_err(|e| BenchError::Usage {
                flag: "--metrics_url",
                message: e.to_string(),
            })?,
            None if target.protocol == Protocol::Http => Target {
                path: String::new(),
                ..target.clone()
            },
            None => return Ok(CpuSource::None),
        };
        if page.protocol != Protocol::Http {
            return Err(BenchError::Usage {
                flag: "--metrics_url",
                message: format!("{} is not an http:// or https:// URL", page.redacted()),
            });
        }
        if page.path.is_empty() {
            page.path = "/metrics".to_owned();
        }
        Ok(CpuSource::Metrics { page, explicit })
    }
}

/// A source that answered once, or why there is none.
pub(crate) enum Probe {
    Unavailable(String),
    Metrics {
        client: Box<HttpClient>,
        url: String,
    },
    Pid(u32),
}

impl Probe {
    /// Reads the source once. An explicit source that cannot be read stops
    /// the run; a guessed one becomes `Unavailable` with the reason.
    pub(crate) async fn connect(options: &Options) -> Result<Probe, BenchError> {
        let failed = |source: String, message: String| BenchError::ServerCpu {
            from: source,
            message,
        };
        let probe = match &options.cpu {
            CpuSource::None => {
                return Ok(Probe::Unavailable(
                    "not measured: give --metrics_url (a page with process_cpu_seconds_total) \
                     or --server_pid"
                        .to_owned(),
                ));
            }
            CpuSource::Pid(pid) => Probe::Pid(*pid),
            CpuSource::Metrics { page, explicit } => {
                let tls = if page.tls {
                    Some(options.tls.load()?)
                } else {
                    None
                };
                let client = Box::new(HttpClient::new(page, tls.as_ref(), "", 1)?);
                let probe = Probe::Metrics {
                    client,
                    url: page.redacted(),
                };
                if let Err(message) = probe.sample().await {
                    if *explicit {
                        return Err(failed(page.redacted(), message));
                    }
                    return Ok(Probe::Unavailable(format!(
                        "not measured: {message} (give --metrics_url or --server_pid)"
                    )));
                }
                probe
            }
        };
        if let Err(message) = probe.sample().await {
            return Err(failed(probe.describe(), message));
        }
        Ok(probe)
    }

    /// Where the figure comes from.
    pub(crate) fn describe(&self) -> String {
        match self {
            Probe::Unavailable(why) => why.clone(),
            Probe::Metrics { url, .. } => format!("{METRIC} at {url}"),
            Probe::Pid(pid) => format!("/proc: process {pid}, its threads and descendants"),
        }
    }

    /// The server's CPU seconds so far.
    pub(crate) async fn sample(&self) -> Result<f64, String> {
        match self {
            Probe::Unavailable(why) => Err(why.clone()),
            Probe::Metrics { client, url } => {
                let page = client.page(PAGE_LIMIT).await?;
                cpu_seconds(&page).ok_or_else(|| format!("{url} has no {METRIC}"))
            }
            Probe::Pid(pid) => tree_ticks(*pid).map(|t| t as f64 / USER_HZ),
        }
    }
}

/// The value of the unlabelled `process_cpu_seconds_total` sample.
fn cpu_seconds(page: &str) -> Option<f64> {
    page.lines()
        .filter_map(|l| l.strip_prefix(METRIC)?.strip_prefix(' '))
        .find_map(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// One process of `/proc`: its parent and its CPU ticks, its reaped
/// children's included (so a worker that exits and is waited for keeps
/// counting, now in its parent's figure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    parent: u32,
    ticks: u64,
}

/// Parses `/proc/<pid>/stat`: fields are counted after the command name's
/// closing parenthesis (the name may hold spaces and parentheses).
fn parse_proc(stat: &str) -> Option<Proc> {
    let after_name = stat.get(stat.rfind(')')? + 2..)?;
    // Field 3 (state) comes first: field n is at index n - 3.
    let mut fields = after_name.split(' ').skip(1);
    let parent = fields.next()?.parse().ok()?;
    // Fields 14..=17: utime, stime, cutime, cstime (after fields 5..=13).
    let mut ticks = 0u64;
    for value in fields.skip(9).take(4) {
        ticks += value.parse::<i64>().ok()?.max(0) as u64;
    }
    Some(Proc { parent, ticks })
}

/// CPU ticks of `root` and every process below it, from one pass over
/// `/proc`.
fn tree_ticks(root: u32) -> Result<u64, String> {
    let entries = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    let mut procs = HashMap::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit between the listing and the read.
        if let Some(p) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| parse_proc(&s))
        {
            procs.insert(pid, p);
        }
    }
    sum_tree(&procs, root).ok_or_else(|| format!("no process {root}"))
}

fn sum_tree(procs: &HashMap<u32, Proc>, root: u32) -> Option<u64> {
    let mut total = procs.get(&root)?.ticks;
    let mut below = vec![root];
    while let Some(parent) = below.pop() {
        for (&pid, p) in procs {
            if p.parent == parent && pid != parent {
                total += p.ticks;
                below.push(pid);
            }
        }
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_from_the_command_line() {
        let http = Target::parse("https://u:p@cache:8443/team").unwrap();
        let CpuSource::Metrics { page, explicit } =
            CpuSource::from_args(&http, None, None).unwrap()
        else {
            panic!("an HTTP target has a metrics page");
        };
        assert!(!explicit);
        assert_eq!(page.redacted(), "https://u:***@cache:8443/metrics");
        let grpc = Target::parse("grpc://cache:9092").unwrap();
        assert_eq!(
            CpuSource::from_args(&grpc, None, None).unwrap(),
            CpuSource::None
        );
        let CpuSource::Metrics { page, explicit } =
            CpuSource::from_args(&grpc, Some("http://cache:8080/prom"), None).unwrap()
        else {
            panic!("--metrics_url is a metrics page");
        };
        assert!(explicit);
        assert_eq!(page.redacted(), "http://cache:8080/prom");
        assert_eq!(
            CpuSource::from_args(&grpc, None, Some(7)).unwrap(),
            CpuSource::Pid(7)
        );
        let err = CpuSource::from_args(&grpc, Some("grpc://cache:9092"), None).unwrap_err();
        assert!(err.to_string().starts_with("--metrics_url: "), "{err}");
    }

    #[test]
    fn the_unlabelled_sample_is_read() {
        let page = "# HELP process_cpu_seconds Total user and system CPU time spent in seconds.\n\
                    # TYPE process_cpu_seconds counter\n\
                    process_cpu_seconds_total_other 9\n\
                    process_cpu_seconds_total 12.5\n";
        assert_eq!(cpu_seconds(page), Some(12.5));
        assert_eq!(
            cpu_seconds("process_cpu_seconds_total 3 1700000000000\n"),
            Some(3.0)
        );
        assert_eq!(cpu_seconds("up 1\n"), None);
    }

    #[test]
    fn a_process_tree_adds_up() {
        let stat = "42 (nginx: worker (x)) S 41 41 41 0 -1 4194624 5 0 0 0 \
                    120 30 7 3 20 0 1 0 100 1000 10";
        assert_eq!(
            parse_proc(stat),
            Some(Proc {
                parent: 41,
                ticks: 160
            })
        );
        let procs: HashMap<u32, Proc> = [
            (
                1,
                Proc {
                    parent: 0,
                    ticks: 1000,
                },
            ),
            (
                41,
                Proc {
                    parent: 1,
                    ticks: 10,
                },
            ),
            (
                42,
                Proc {
                    parent: 41,
                    ticks: 160,
                },
            ),
            (
                43,
                Proc {
                    parent: 41,
                    ticks: 40,
                },
            ),
            (
                44,
                Proc {
                    parent: 43,
                    ticks: 5,
                },
            ),
            (
                50,
                Proc {
                    parent: 1,
                    ticks: 99,
                },
            ),
        ]
        .into();
        assert_eq!(sum_tree(&procs, 41), Some(215));
        assert_eq!(sum_tree(&procs, 44), Some(5));
        assert_eq!(sum_tree(&procs, 7), None);
    }

    #[test]
    fn this_process_is_found() {
        let ticks = tree_ticks(std::process::id());
        assert!(ticks.is_ok(), "{ticks:?}");
    }
}
