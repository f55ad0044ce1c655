//! What differs between two runs of one action: the parts of its cache key
//! the execution log shows (platform, command line, environment, inputs,
//! outputs), in that order, each listed only when it differs.

use std::collections::{BTreeMap, BTreeSet};

use crate::log::{Digest, NameValue, Spawn};
use crate::reason::Reason;

/// What the comparison needs to know about the rest of the builds.
pub(crate) trait Producers {
    /// Whether an action of either build writes `path`.
    fn is_generated(&self, path: &str) -> bool;
    /// The action that writes `path`, as its target or primary output.
    fn producer(&self, path: &str) -> Option<String>;
}

/// The differences of `after` from `before`, the same action in two builds.
pub(crate) fn differences(before: &Spawn, after: &Spawn, producers: &dyn Producers) -> Vec<Reason> {
    let mut reasons = Vec::new();
    by_name(
        &before.platform.properties,
        &after.platform.properties,
        |name, before, after| Reason::PlatformChanged {
            name,
            before,
            after,
        },
        &mut reasons,
    );
    if let Some(r) = arguments(&before.command_args, &after.command_args) {
        reasons.push(r);
    }
    by_name(
        &before.environment_variables,
        &after.environment_variables,
        |name, before, after| Reason::EnvChanged {
            name,
            before,
            after,
        },
        &mut reasons,
    );
    inputs(before, after, producers, &mut reasons);
    if let Some(r) = other_outputs(before, after) {
        reasons.push(r);
    }
    reasons
}

fn arguments(before: &[String], after: &[String]) -> Option<Reason> {
    let first = (0..before.len().max(after.len())).find(|&i| before.get(i) != after.get(i))?;
    Some(Reason::ArgumentsChanged {
        first_difference: first,
        before: before.get(first).cloned(),
        after: after.get(first).cloned(),
    })
}

/// Name/value lists compared by name (the last value of a repeated name
/// wins), in name order.
fn by_name(
    before: &[NameValue],
    after: &[NameValue],
    reason: impl Fn(String, Option<String>, Option<String>) -> Reason,
    out: &mut Vec<Reason>,
) {
    let map = |list: &[NameValue]| -> BTreeMap<String, String> {
        list.iter()
            .map(|nv| (nv.name.clone(), nv.value.clone()))
            .collect()
    };
    let (before, after) = (map(before), map(after));
    let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    for name in names {
        let (b, a) = (before.get(name), after.get(name));
        if b != a {
            out.push(reason(name.clone(), b.cloned(), a.cloned()));
        }
    }
}

/// Changed source inputs, then changed generated ones, then added, then
/// removed; each in path order. Never an input whose digest is the same.
fn inputs<'a>(
    before: &'a Spawn,
    after: &'a Spawn,
    producers: &dyn Producers,
    out: &mut Vec<Reason>,
) {
    // Borrowed: a large action has thousands of inputs, of which few differ.
    let map = |s: &'a Spawn| -> BTreeMap<&'a str, Option<&'a Digest>> {
        s.inputs
            .iter()
            .map(|f| (f.path.as_str(), f.digest.as_ref()))
            .collect()
    };
    let (b, a) = (map(before), map(after));
    let functions = |m: &BTreeMap<&str, Option<&'a Digest>>| -> BTreeSet<&'a str> {
        m.values()
            .flatten()
            .map(|d| d.hash_function_name.as_str())
            .filter(|n| !n.is_empty())
            .collect()
    };
    let (fb, fa) = (functions(&b), functions(&a));
    if !fb.is_empty() && !fa.is_empty() && fb != fa {
        let join = |s: BTreeSet<&str>| s.into_iter().collect::<Vec<_>>().join(",");
        out.push(Reason::DigestFunctionChanged {
            before: join(fb),
            after: join(fa),
        });
        return;
    }
    let shown = |d: &Option<&Digest>| match d {
        Some(d) => d.to_string(),
        None => "(no digest)".to_owned(),
    };
    let same = |x: &Option<&Digest>, y: &Option<&Digest>| match (x, y) {
        (Some(x), Some(y)) => x.same_content(y),
        (None, None) => true,
        _ => false,
    };
    let (mut sources, mut derived, mut added, mut removed) = (vec![], vec![], vec![], vec![]);
    for (&path, da) in &a {
        match b.get(path) {
            Some(db) if same(db, da) => {}
            Some(db) if producers.is_generated(path) => {
                derived.push(Reason::DependsOnChangedOutput {
                    path: path.to_owned(),
                    before: shown(db),
                    after: shown(da),
                    producer: producers.producer(path),
                });
            }
            Some(db) => sources.push(Reason::InputChanged {
                path: path.to_owned(),
                before: shown(db),
                after: shown(da),
            }),
            None => added.push(Reason::InputAdded {
                path: path.to_owned(),
                digest: shown(da),
                generated: producers.is_generated(path),
            }),
        }
    }
    for (&path, db) in &b {
        if !a.contains_key(path) {
            removed.push(Reason::InputRemoved {
                path: path.to_owned(),
                digest: shown(db),
                generated: producers.is_generated(path),
            });
        }
    }
    out.extend(sources);
    out.extend(derived);
    out.extend(added);
    out.extend(removed);
}

fn other_outputs(before: &Spawn, after: &Spawn) -> Option<Reason> {
    let (b, a): (BTreeSet<&String>, BTreeSet<&String>) = (
        before.listed_outputs.iter().collect(),
        after.listed_outputs.iter().collect(),
    );
    if a == b {
        return None;
    }
    Some(Reason::OutputsChanged {
        added: a.difference(&b).map(|s| s.to_string()).collect(),
        removed: b.difference(&a).map(|s| s.to_string()).collect(),
    })
}
