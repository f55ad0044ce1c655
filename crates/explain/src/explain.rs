//! Matching the actions of two builds and ordering the misses.
//!
//! An action is the same across builds (and machines) when its primary
//! output is ([`Spawn::primary_output`]). A miss is a spawn of the second
//! build that was not a remote cache hit. Its differences from its
//! counterpart are its reasons; a miss with a difference of its own (a
//! source file, the command line, the environment, the platform) is a root
//! cause, one whose only differences are inputs another action produces
//! missed because of that action. Root causes come first, then by depth in
//! the graph of misses (an action before those that consume its outputs),
//! then in log order.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::compare::{Producers, differences};
use crate::log::{ExecLog, Spawn};
use crate::reason::Reason;

/// What [`explain`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Root causes first, then by depth, then in the second log's order.
    pub misses: Vec<Miss>,
    /// Spawns in the first and second logs.
    pub before_spawns: usize,
    pub after_spawns: usize,
    /// Spawns of the second log that were remote cache hits.
    pub cache_hits: usize,
    /// What holds for the builds as a whole (e.g. that they wrote to
    /// different output directories, so no action could match).
    pub notes: Vec<String>,
}

/// One action of the second build that missed the cache.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Miss {
    pub mnemonic: String,
    pub target: Option<String>,
    pub primary_output: String,
    pub progress_message: String,
    /// What ran it in the second build (`linux-sandbox`, ...).
    pub runner: String,
    /// In the order of [`Reason`]'s kinds: platform, command line,
    /// environment, inputs (changed sources, changed generated inputs,
    /// added, removed), outputs.
    pub reasons: Vec<Reason>,
    /// Whether it missed for a reason of its own rather than because an
    /// input produced by another action changed.
    pub root_cause: bool,
    /// 0 for a miss that consumes no output of another miss; otherwise one
    /// more than the deepest miss whose output it consumes.
    pub depth: usize,
}

impl Report {
    /// Spawns of the second build that were remote cache hits.
    pub fn hits(&self) -> usize {
        self.cache_hits
    }

    pub fn root_causes(&self) -> usize {
        self.misses.iter().filter(|m| m.root_cause).count()
    }

    /// The report as JSON (`--json`; the same fields as the types).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// Which action writes each path, in either build.
struct Outputs<'a> {
    after: HashMap<&'a str, usize>,
    after_log: &'a ExecLog,
    before: HashMap<&'a str, &'a Spawn>,
}

impl Producers for Outputs<'_> {
    fn is_generated(&self, path: &str) -> bool {
        self.after.contains_key(path) || self.before.contains_key(path)
    }

    fn producer(&self, path: &str) -> Option<String> {
        let spawn = match self.after.get(path) {
            Some(&i) => &self.after_log.spawns[i],
            None => self.before.get(path)?,
        };
        Some(spawn.describe())
    }
}

/// Explains the misses of `after` against `before`. Either log may come
/// from an incremental build (only what ran): an action of `after` missing
/// from `before` is [`Reason::NotInFirstLog`], and actions `before` lacks
/// are not an error.
pub fn explain(before: &ExecLog, after: &ExecLog) -> Report {
    // The first spawn of an output wins in both logs (a log lists an
    // action once; a retried test would list it again).
    let mut before_by_output: HashMap<String, &Spawn> = HashMap::new();
    let mut before_writers: HashMap<&str, &Spawn> = HashMap::new();
    for spawn in &before.spawns {
        before_by_output
            .entry(spawn.primary_output())
            .or_insert(spawn);
        for path in spawn.outputs() {
            before_writers.entry(path).or_insert(spawn);
        }
    }
    let mut after_writers: HashMap<&str, usize> = HashMap::new();
    for (i, spawn) in after.spawns.iter().enumerate() {
        for path in spawn.outputs() {
            after_writers.entry(path).or_insert(i);
        }
    }
    let outputs = Outputs {
        after: after_writers,
        after_log: after,
        before: before_writers,
    };

    let missed: Vec<usize> = (0..after.spawns.len())
        .filter(|&i| !after.spawns[i].remote_cache_hit)
        .collect();
    let depths = depths(after, &missed, &outputs.after);

    let mut misses: Vec<(usize, Miss)> = Vec::with_capacity(missed.len());
    for (&i, &depth) in missed.iter().zip(&depths) {
        let spawn = &after.spawns[i];
        let primary_output = spawn.primary_output();
        let mut reasons = Vec::new();
        let not_cacheable = !spawn.remotable || !spawn.cacheable;
        if not_cacheable {
            reasons.push(Reason::NotCacheable {
                remotable: spawn.remotable,
                cacheable: spawn.cacheable,
            });
        }
        let root_cause = match before_by_output.get(&primary_output) {
            None => {
                reasons.push(Reason::NotInFirstLog);
                // Unknown in the first build: a root cause unless it
                // consumes what another miss wrote.
                not_cacheable || depth == 0
            }
            Some(b) => {
                let diff = differences(b, spawn, &outputs);
                // (Never looked up says enough on its own.)
                if diff.is_empty() && !not_cacheable {
                    reasons.push(Reason::NoDifference {
                        before_runner: b.runner.clone(),
                        before_hit: b.remote_cache_hit,
                        before_exit_code: b.exit_code,
                    });
                }
                reasons.extend(diff);
                reasons.iter().any(Reason::is_own)
            }
        };
        misses.push((
            i,
            Miss {
                mnemonic: spawn.mnemonic.clone(),
                target: spawn.target(),
                primary_output,
                progress_message: spawn.progress_message.clone(),
                runner: spawn.runner.clone(),
                reasons,
                root_cause,
                depth,
            },
        ));
    }
    misses.sort_by_key(|(i, m)| (!m.root_cause, m.depth, *i));
    let mut notes = Vec::new();
    let unmatched = misses
        .iter()
        .any(|(_, m)| m.reasons.contains(&Reason::NotInFirstLog));
    if unmatched && let Some(note) = configurations_differ(before, after) {
        notes.push(note);
    }
    Report {
        misses: misses.into_iter().map(|(_, m)| m).collect(),
        before_spawns: before.spawns.len(),
        after_spawns: after.spawns.len(),
        cache_hits: after.spawns.len() - missed.len(),
        notes,
    }
}

/// When the builds wrote to disjoint output directories
/// (`bazel-out/<configuration>/`), no action can match: a different
/// `--compilation_mode`, `--cpu`, `--platforms` or other flag that changes
/// the configuration. Says so, naming both.
fn configurations_differ(before: &ExecLog, after: &ExecLog) -> Option<String> {
    let configurations = |log: &ExecLog| -> BTreeSet<String> {
        log.spawns
            .iter()
            .filter_map(|s| {
                let output = s.primary_output();
                let rest = output.strip_prefix("bazel-out/")?;
                Some(rest.split('/').next()?.to_owned())
            })
            .collect()
    };
    let (b, a) = (configurations(before), configurations(after));
    if b.is_empty() || a.is_empty() || !b.is_disjoint(&a) {
        return None;
    }
    let list = |set: BTreeSet<String>| {
        set.into_iter()
            .map(|c| format!("bazel-out/{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Some(format!(
        "the builds share no output directory (first: {}; second: {}): they were built in \
         different configurations (--compilation_mode, --cpu, --platforms or another flag \
         that changes the output directory), so no action can be a cache hit for the other",
        list(b),
        list(a)
    ))
}

/// The depth of each miss (in `missed` order) in the graph whose edges run
/// from a miss to the misses that consume one of its outputs: the longest
/// chain of misses above it. Computed level by level (no recursion, so a
/// long chain cannot overflow the stack); a cycle, which Bazel never
/// builds, leaves its members at the depth reached so far.
fn depths(after: &ExecLog, missed: &[usize], writers: &HashMap<&str, usize>) -> Vec<usize> {
    let position: HashMap<usize, usize> = missed.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    // consumers[p]: positions of the misses that read an output of miss p.
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); missed.len()];
    let mut indegree = vec![0usize; missed.len()];
    for (p, &i) in missed.iter().enumerate() {
        let producers: HashSet<usize> = after.spawns[i]
            .inputs
            .iter()
            .filter_map(|f| writers.get(f.path.as_str()))
            .filter(|&&w| w != i)
            .filter_map(|w| position.get(w).copied())
            .collect();
        indegree[p] = producers.len();
        for q in producers {
            consumers[q].push(p);
        }
    }
    let mut depth = vec![0usize; missed.len()];
    let mut ready: Vec<usize> = (0..missed.len()).filter(|&p| indegree[p] == 0).collect();
    while let Some(p) = ready.pop() {
        for &c in &consumers[p] {
            depth[c] = depth[c].max(depth[p] + 1);
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.push(c);
            }
        }
    }
    depth
}
