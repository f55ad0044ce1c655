//! Reading what `/metrics` serves: the Prometheus text format (0.0.4) parsed
//! into samples and metric families, and PromQL expressions (alert rules,
//! dashboards) checked against a scrape: names, labels and types.

use std::collections::{BTreeMap, BTreeSet};

/// One sample line: name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A metric family's type from its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

/// Parses the sample lines of the Prometheus text format.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_sample(l).unwrap_or_else(|e| panic!("bad sample line {l:?}: {e}")))
        .collect()
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let split = line.find(['{', ' ']).ok_or("no value")?;
    let (name, mut rest) = line.split_at(split);
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next().ok_or("unterminated labels")?;
            match c {
                '}' => break i,
                ',' | ' ' => {}
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err("label value must be quoted".into());
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next().ok_or("unterminated label value")?.1 {
                            '\\' => match chars.next().ok_or("dangling escape")?.1 {
                                'n' => value.push('\n'),
                                c => value.push(c),
                            },
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        };
        rest = &body[end + 1..];
    }
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|e| format!("{e}"))?,
    };
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The `# TYPE name type` lines: family name to type.
pub fn families(text: &str) -> BTreeMap<String, MetricType> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.strip_prefix("# TYPE ")?.split_whitespace();
            let name = parts.next()?.to_string();
            let ty = match parts.next()? {
                "counter" => MetricType::Counter,
                "gauge" => MetricType::Gauge,
                "histogram" => MetricType::Histogram,
                "summary" => MetricType::Summary,
                _ => MetricType::Untyped,
            };
            Some((name, ty))
        })
        .collect()
}

/// One scrape of `/metrics`.
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
    pub types: BTreeMap<String, MetricType>,
}

/// What a sample name selects: a whole family, or one series of a histogram
/// or summary (`_bucket`, `_sum`, `_count`), or a counter's `_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesKind {
    pub family: String,
    pub family_type: MetricType,
    /// `Some("_bucket")` etc. for a histogram/summary component.
    pub component: Option<&'static str>,
}

impl Scrape {
    pub fn new(text: String) -> Scrape {
        Scrape {
            samples: parse(&text),
            types: families(&text),
            text,
        }
    }

    /// Samples of `name` whose labels include `labels`.
    pub fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the one sample of `name` with exactly these labels
    /// (`le` aside), or None.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<_> = self
            .matching(name, labels)
            .into_iter()
            .filter(|s| s.labels.len() == labels.len())
            .collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} is ambiguous: {found:?}"
        );
        found.first().map(|s| s.value)
    }

    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{}", self.text))
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// The family a sample name belongs to. A `_bucket`/`_sum`/`_count`
    /// suffix is only split off when the rest names a histogram or summary
    /// (so a gauge that happens to end in `_count` stays itself), `_total`
    /// only when the rest names a counter.
    pub fn kind_of(&self, sample_name: &str) -> Option<SeriesKind> {
        if let Some(&family_type) = self.types.get(sample_name) {
            return Some(SeriesKind {
                family: sample_name.to_string(),
                family_type,
                component: None,
            });
        }
        for (suffix, types) in [
            ("_bucket", &[MetricType::Histogram][..]),
            ("_sum", &[MetricType::Histogram, MetricType::Summary][..]),
            ("_count", &[MetricType::Histogram, MetricType::Summary][..]),
            ("_total", &[MetricType::Counter][..]),
        ] {
            if let Some(base) = sample_name.strip_suffix(suffix)
                && let Some(&family_type) = self.types.get(base)
                && types.contains(&family_type)
            {
                return Some(SeriesKind {
                    family: base.to_string(),
                    family_type,
                    component: Some(suffix),
                });
            }
        }
        None
    }

    /// Label names that appear on any sample named `name`.
    pub fn label_names(&self, name: &str) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .flat_map(|s| s.labels.keys().cloned())
            .collect()
    }
}

/// Labels Prometheus attaches at scrape time, not the server.
pub const TARGET_LABELS: &[&str] = &["job", "instance"];

/// Checks one PromQL expression against a scrape: every selected metric is
/// exported, its matchers and groupings name labels it has (values of `=`
/// matchers included), `rate`-like functions apply to counters or histogram
/// series only, `histogram_quantile` to `_bucket` series. Returns the
/// selected metric names; panics listing every problem.
pub fn check_promql(expr: &str, m: &Scrape) -> BTreeSet<String> {
    use promql_parser::label::MatchOp;
    use promql_parser::parser::{self, Expr, LabelModifier};

    // Grafana's interval variables are not PromQL.
    let promql = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    let ast = parser::parse(&promql).unwrap_or_else(|e| panic!("{expr:?} is not PromQL: {e}"));

    struct Walk<'a> {
        m: &'a Scrape,
        names: BTreeSet<String>,
        problems: Vec<String>,
    }
    fn selected(e: &Expr, out: &mut Vec<String>) {
        match e {
            Expr::VectorSelector(vs) => out.extend(vs.name.clone()),
            Expr::MatrixSelector(ms) => out.extend(ms.vs.name.clone()),
            Expr::Aggregate(a) => selected(&a.expr, out),
            Expr::Unary(u) => selected(&u.expr, out),
            Expr::Binary(b) => {
                selected(&b.lhs, out);
                selected(&b.rhs, out)
            }
            Expr::Paren(p) => selected(&p.expr, out),
            Expr::Subquery(s) => selected(&s.expr, out),
            Expr::Call(c) => c.args.args.iter().for_each(|a| selected(a, out)),
            _ => {}
        }
    }
    impl Walk<'_> {
        fn labels_exist(&mut self, labels: &[String], inner: &Expr, why: &str) {
            let mut names = Vec::new();
            selected(inner, &mut names);
            let known: BTreeSet<String> =
                names.iter().flat_map(|n| self.m.label_names(n)).collect();
            for l in labels {
                if !TARGET_LABELS.contains(&l.as_str()) && !known.contains(l) {
                    self.problems
                        .push(format!("{why} label {l:?}, which {names:?} do not have"));
                }
            }
        }
        fn selector(&mut self, vs: &promql_parser::parser::VectorSelector, funcs: &[&str]) {
            let Some(name) = vs.name.clone() else {
                return self
                    .problems
                    .push("a selector without a metric name".into());
            };
            if name == "up" {
                return; // Prometheus's own.
            }
            self.names.insert(name.clone());
            let Some(kind) = self.m.kind_of(&name) else {
                return self
                    .problems
                    .push(format!("{name} is not exported by the server"));
            };
            let rate_like = funcs
                .iter()
                .any(|f| ["rate", "irate", "increase", "delta"].contains(f));
            let counter_like = kind.family_type == MetricType::Counter || kind.component.is_some();
            if rate_like && !counter_like {
                self.problems.push(format!(
                    "{name} is a {:?}: rate()/increase() need a counter",
                    kind.family_type
                ));
            }
            if funcs.contains(&"histogram_quantile")
                && !(kind.family_type == MetricType::Histogram && kind.component == Some("_bucket"))
            {
                self.problems.push(format!(
                    "histogram_quantile over {name}, not a histogram's _bucket"
                ));
            }
            let samples = self.m.matching(&name, &[]);
            for matcher in &vs.matchers.matchers {
                let label = matcher.name.as_str();
                if label == "__name__" || TARGET_LABELS.contains(&label) {
                    continue;
                }
                if !samples.iter().any(|s| s.labels.contains_key(label)) {
                    self.problems.push(format!("{name} has no label {label}"));
                } else if matches!(matcher.op, MatchOp::Equal)
                    && !samples
                        .iter()
                        .any(|s| s.labels.get(label) == Some(&matcher.value))
                {
                    self.problems.push(format!(
                        "{name} has no series with {label}=\"{}\"",
                        matcher.value
                    ));
                }
            }
        }
        fn walk(&mut self, e: &Expr, funcs: &[&'static str]) {
            match e {
                Expr::Aggregate(a) => {
                    if let Some(LabelModifier::Include(ls)) = &a.modifier {
                        self.labels_exist(&ls.labels, &a.expr, "grouping by");
                    }
                    self.walk(&a.expr, funcs);
                    if let Some(p) = &a.param {
                        self.walk(p, funcs);
                    }
                }
                Expr::Binary(b) => {
                    match b.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
                        // on(...): both sides must have the labels.
                        Some(LabelModifier::Include(ls)) => {
                            self.labels_exist(&ls.labels, &b.lhs, "matching on");
                            self.labels_exist(&ls.labels, &b.rhs, "matching on");
                        }
                        // ignoring(...): a label one side has and the other
                        // lacks; it must exist on some side.
                        Some(LabelModifier::Exclude(ls)) => {
                            let both = Expr::Binary(b.clone());
                            self.labels_exist(&ls.labels, &both, "ignoring");
                        }
                        None => {}
                    }
                    self.walk(&b.lhs, funcs);
                    self.walk(&b.rhs, funcs);
                }
                Expr::Unary(u) => self.walk(&u.expr, funcs),
                Expr::Paren(p) => self.walk(&p.expr, funcs),
                Expr::Subquery(s) => self.walk(&s.expr, funcs),
                Expr::VectorSelector(vs) => self.selector(vs, funcs),
                Expr::MatrixSelector(ms) => self.selector(&ms.vs, funcs),
                Expr::Call(c) => {
                    let mut inner = funcs.to_vec();
                    inner.push(c.func.name);
                    for a in &c.args.args {
                        self.walk(a, &inner);
                    }
                }
                _ => {}
            }
        }
    }
    let mut walk = Walk {
        m,
        names: BTreeSet::new(),
        problems: Vec::new(),
    };
    walk.walk(&ast, &[]);
    assert!(
        walk.problems.is_empty(),
        "{expr:?}:\n  {}\n/metrics:\n{}",
        walk.problems.join("\n  "),
        m.text
    );
    walk.names
}
