//! The report as text: one block per miss (root causes marked), then a
//! summary line with the counts.

use std::fmt::Write as _;

use crate::explain::{Miss, Report};

impl Report {
    /// ```text
    /// ROOT CAUSE Genrule //:upper
    ///   output: bazel-out/k8-fastbuild/bin/upper.txt
    ///   - input src/a.txt changed: 5891…/6 -> 4c1f…/7
    ///
    /// dependent  Genrule //:count
    ///   output: bazel-out/k8-fastbuild/bin/count.txt
    ///   - depends on bazel-out/k8-fastbuild/bin/upper.txt (output of //:upper), which changed: …
    ///
    /// 4 actions in the second build: 1 remote cache hit, 3 missed (1 root cause, 2 dependent); 4 in the first
    /// ```
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for miss in &self.misses {
            block(&mut out, miss);
            out.push('\n');
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    /// The counts on one line.
    pub fn summary(&self) -> String {
        let roots = self.root_causes();
        let dependent = self.misses.len() - roots;
        let plural =
            |n: usize, one: &'static str, many: &'static str| if n == 1 { one } else { many };
        let mut s = format!(
            "{} {} in the second build: {} remote cache {}, {} missed ({} root {}, {} dependent); {} in the first",
            self.after_spawns,
            plural(self.after_spawns, "action", "actions"),
            self.cache_hits,
            plural(self.cache_hits, "hit", "hits"),
            self.misses.len(),
            roots,
            plural(roots, "cause", "causes"),
            dependent,
            self.before_spawns,
        );
        if self.misses.is_empty() && self.after_spawns > 0 {
            s.push_str(": nothing to explain");
        }
        s
    }
}

fn block(out: &mut String, miss: &Miss) {
    let mark = if miss.root_cause {
        "ROOT CAUSE"
    } else {
        "dependent "
    };
    let _ = write!(out, "{mark} {}", miss.mnemonic);
    match &miss.target {
        Some(target) => {
            let _ = write!(out, " {target}");
        }
        None if !miss.progress_message.is_empty() => {
            let _ = write!(out, ": {}", miss.progress_message);
        }
        None => {}
    }
    out.push('\n');
    let _ = writeln!(out, "  output: {}", miss.primary_output);
    for reason in &miss.reasons {
        let _ = writeln!(out, "  - {reason}");
    }
}
