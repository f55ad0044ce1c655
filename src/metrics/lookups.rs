//! `bazel_remote_incoming_requests_total{method,kind,status}`: cache lookups
//! by outcome, as bazel-remote counts them. Both front ends feed it (HTTP in
//! its request wrapper, gRPC through the counting store and the metrics
//! layer), so it has a file of its own.

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use bazel_cache_digest::Kind;

/// bazel-remote's `method` label: `get` or `contains` (puts are not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LookupMethod {
    Get = 0,
    Contains = 1,
}

/// bazel-remote's `kind` label. `raw` is an HTTP `/ac/` entry with
/// `disable_http_ac_validation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LookupKind {
    Ac = 0,
    Cas = 1,
    Raw = 2,
}

impl From<Kind> for LookupKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Ac => LookupKind::Ac,
            Kind::Cas => LookupKind::Cas,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct LookupLabels {
    method: &'static str,
    kind: &'static str,
    status: &'static str,
}

/// Lookup counts summed for the web console.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LookupTotals {
    pub(crate) ac_hits: u64,
    pub(crate) ac_misses: u64,
    pub(crate) cas_hits: u64,
    pub(crate) cas_misses: u64,
}

/// `bazel_remote_incoming_requests_total{method,kind,status}`: cache
/// lookups by outcome (`hit` or `miss`), as bazel-remote counts them.
pub(crate) struct Lookups {
    pub(super) family: Family<LookupLabels, Counter>,
    cells: [OnceLock<Counter>; 12],
}

impl Lookups {
    pub(super) fn new() -> Self {
        let lookups = Lookups {
            family: Family::default(),
            cells: Default::default(),
        };
        // The series bazel-remote creates at zero at start.
        for (method, kind) in [
            (LookupMethod::Get, LookupKind::Cas),
            (LookupMethod::Contains, LookupKind::Cas),
            (LookupMethod::Get, LookupKind::Ac),
        ] {
            for hit in [true, false] {
                lookups.counter(method, kind, hit);
            }
        }
        lookups
    }

    pub(super) fn counter(&self, method: LookupMethod, kind: LookupKind, hit: bool) -> &Counter {
        let index = (method as usize * 3 + kind as usize) * 2 + usize::from(hit);
        self.cells[index].get_or_init(|| {
            self.family.get_or_create_owned(&LookupLabels {
                method: match method {
                    LookupMethod::Get => "get",
                    LookupMethod::Contains => "contains",
                },
                kind: match kind {
                    LookupKind::Ac => "ac",
                    LookupKind::Cas => "cas",
                    LookupKind::Raw => "raw",
                },
                status: if hit { "hit" } else { "miss" },
            })
        })
    }

    /// Hits and misses so far, AC (validated or raw) and CAS (get and
    /// contains together), for the web console's hit-ratio charts.
    pub(crate) fn totals(&self) -> LookupTotals {
        let mut t = LookupTotals::default();
        for method in [LookupMethod::Get, LookupMethod::Contains] {
            for kind in [LookupKind::Ac, LookupKind::Raw, LookupKind::Cas] {
                let index = (method as usize * 3 + kind as usize) * 2;
                let n = |i: usize| self.cells[i].get().map_or(0, Counter::get);
                let (hits, misses) = (n(index + 1), n(index));
                if kind == LookupKind::Cas {
                    t.cas_hits += hits;
                    t.cas_misses += misses;
                } else {
                    t.ac_hits += hits;
                    t.ac_misses += misses;
                }
            }
        }
        t
    }

    pub(super) fn record(&self, method: LookupMethod, kind: LookupKind, hit: bool) {
        self.counter(method, kind, hit).inc();
    }

    pub(super) fn record_many(
        &self,
        method: LookupMethod,
        kind: LookupKind,
        hits: u64,
        misses: u64,
    ) {
        if hits > 0 {
            self.counter(method, kind, true).inc_by(hits);
        }
        if misses > 0 {
            self.counter(method, kind, false).inc_by(misses);
        }
    }
}
