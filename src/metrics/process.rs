//! The standard Prometheus process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, ...), with the
//! names, types and help texts the Go and Python clients export. Operators
//! expect them on every exporter, bazel-remote's dashboards chart them, and
//! `bazel-cache bench` reads `process_cpu_seconds_total` before and after a
//! load to report the server CPU each operation costs.
//!
//! Read from procfs at scrape time, as the Go client does, so they cost
//! nothing between scrapes: `/proc/self/stat` (CPU, memory, start time),
//! `/proc/self/fd`, `/proc/self/limits`, `/proc/stat` (boot time) and the
//! page size from `/proc/self/auxv` (no `unsafe` sysconf call). Where procfs
//! is missing (not Linux) the collector exports nothing.

use std::fmt;
use std::sync::OnceLock;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second in `/proc/*/stat`: USER_HZ, which the kernel's
/// ABI fixes at 100 (the Go client's procfs package assumes the same).
const USER_HZ: f64 = 100.0;
/// `AT_PAGESZ` in the auxiliary vector.
const AT_PAGESZ: u64 = 6;
/// `/proc/self/limits` says `unlimited`: reported as the largest u64, as
/// the Go client does.
const UNLIMITED: f64 = u64::MAX as f64;

/// The collector registered in [`super::Metrics::new`].
#[derive(Debug)]
pub(super) struct ProcessCollector;

/// One reading of the process's figures.
#[derive(Debug, Clone, PartialEq)]
struct Process {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    start_time_seconds: f64,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    max_virtual_bytes: Option<f64>,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(p) = Process::read() else {
            return Ok(());
        };
        let c = ConstCounter::new(p.cpu_seconds);
        c.encode(enc.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            c.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_open_fds",
                "Number of open file descriptors.",
                p.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                p.max_fds,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                Some(p.virtual_bytes),
            ),
            (
                "process_virtual_memory_max_bytes",
                "Maximum amount of virtual memory available in bytes.",
                p.max_virtual_bytes,
            ),
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                Some(p.resident_bytes),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                Some(p.start_time_seconds),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let g = ConstGauge::new(value);
                g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

impl Process {
    /// This process's figures, or `None` without a readable procfs.
    fn read() -> Option<Process> {
        let stat = Stat::parse(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        let boot_time = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        Some(Process {
            cpu_seconds: (stat.utime + stat.stime) as f64 / USER_HZ,
            resident_bytes: stat.rss_pages as f64 * page_size() as f64,
            virtual_bytes: stat.vsize as f64,
            start_time_seconds: boot_time as f64 + stat.start_ticks as f64 / USER_HZ,
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as f64),
            max_fds: soft_limit(&limits, "Max open files"),
            max_virtual_bytes: soft_limit(&limits, "Max address space"),
        })
    }
}

/// The fields of `/proc/<pid>/stat` these metrics use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

impl Stat {
    /// Parses the line; the command name (field 2) is in parentheses and
    /// may itself contain spaces and parentheses, so fields are counted
    /// from the last `)`.
    fn parse(line: &str) -> Option<Stat> {
        let rest = &line[line.rfind(')')? + 1..];
        // Field 3 (state) is index 0.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            start_ticks: field(22)?,
            vsize: field(23)?,
            rss_pages: field(24)?,
        })
    }
}

/// `btime` of `/proc/stat`: boot time in Unix seconds.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit of the row `name` of `/proc/self/limits`.
fn soft_limit(limits: &str, name: &str) -> Option<f64> {
    let row = limits.lines().find_map(|l| l.strip_prefix(name))?;
    match row.split_whitespace().next()? {
        "unlimited" => Some(UNLIMITED),
        n => n.parse::<u64>().ok().map(|n| n as f64),
    }
}

/// The page size, from the auxiliary vector the kernel gave the process
/// (pairs of native-endian words); 4096 if it cannot be read.
fn page_size() -> u64 {
    static PAGE_SIZE: OnceLock<u64> = OnceLock::new();
    *PAGE_SIZE.get_or_init(|| {
        std::fs::read("/proc/self/auxv")
            .ok()
            .and_then(|auxv| aux_value(&auxv, AT_PAGESZ))
            .unwrap_or(4096)
    })
}

fn aux_value(auxv: &[u8], key: u64) -> Option<u64> {
    const WORD: usize = std::mem::size_of::<usize>();
    let word = |b: &[u8]| {
        let mut w = [0u8; WORD];
        w.copy_from_slice(b);
        usize::from_ne_bytes(w) as u64
    };
    auxv.chunks_exact(2 * WORD)
        .map(|pair| (word(&pair[..WORD]), word(&pair[WORD..])))
        .find(|&(k, _)| k == key)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 2153 0 0 0 \
                    731 214 5 6 20 0 9 0 12345 987654321 2048 18446744073709551615";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                utime: 731,
                stime: 214,
                start_ticks: 12345,
                vsize: 987_654_321,
                rss_pages: 2048,
            })
        );
        assert_eq!(Stat::parse("4242 (short) S 1 2"), None);
    }

    #[test]
    fn limits_and_boot_time() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max address space         unlimited            unlimited            bytes     \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(soft_limit(limits, "Max open files"), Some(1024.0));
        assert_eq!(soft_limit(limits, "Max address space"), Some(UNLIMITED));
        assert_eq!(soft_limit(limits, "Max processes"), None);
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn page_size_from_the_auxiliary_vector() {
        let mut auxv = Vec::new();
        for (k, v) in [(3u64, 7u64), (AT_PAGESZ, 16384), (0, 0)] {
            auxv.extend_from_slice(&(k as usize).to_ne_bytes());
            auxv.extend_from_slice(&(v as usize).to_ne_bytes());
        }
        assert_eq!(aux_value(&auxv, AT_PAGESZ), Some(16384));
        assert_eq!(aux_value(&auxv, 99), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_exported() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let text = super::super::encode_for_test(&registry);
        for line in [
            "# TYPE process_cpu_seconds_total counter",
            "# HELP process_resident_memory_bytes Resident memory size in bytes.",
            "# TYPE process_open_fds gauge",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
                .parse()
                .unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 0.0);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value("process_start_time_seconds");
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start}"
        );
    }
}
