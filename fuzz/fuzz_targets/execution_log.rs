//! Bazel execution logs (`--execution_log_json_file`), as the web
//! console's `/ui/explain` receives them from anyone who can upload:
//! `parse_log_limited`, then `explain` of the log against itself and
//! against an empty log, and the text report.
//!
//! Input: the log's bytes.
//!
//! Checks: no panic; an accepted log, written back out as JSON, parses to
//! the same log; against an empty first log every spawn that was not a hit
//! is a miss that says it is not in the first log; against itself no miss
//! has a reason that names a difference.
#![no_main]

use bazel_cache_explain::{ExecLog, Reason, explain, parse_log_limited};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(log) = parse_log_limited(data, 1 << 20) else {
        return;
    };
    let written: String = log
        .spawns
        .iter()
        .map(|s| serde_json::to_string(s).expect("a parsed spawn serializes"))
        .collect();
    let again = parse_log_limited(written.as_bytes(), u64::MAX).expect("a written log parses");
    assert_eq!(again, log);

    let not_hits = log.spawns.iter().filter(|s| !s.remote_cache_hit).count();
    let report = explain(&ExecLog::default(), &log);
    assert_eq!(report.misses.len(), not_hits);
    assert!(report.misses.iter().all(|m| m.reasons.contains(&Reason::NotInFirstLog)));
    let _ = report.to_text();

    let report = explain(&log, &log);
    assert_eq!(report.misses.len(), not_hits);
    for miss in &report.misses {
        for reason in &miss.reasons {
            // A log may list an output twice (the first spawn is the one
            // compared), so a difference is possible only then.
            let dup = log
                .spawns
                .iter()
                .filter(|s| s.primary_output() == miss.primary_output)
                .count()
                > 1;
            assert!(
                dup || matches!(reason, Reason::NoDifference { .. } | Reason::NotCacheable { .. }),
                "a log against itself: {reason:?}"
            );
        }
    }
    let _ = report.to_text();
});
