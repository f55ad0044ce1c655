//! Reading what `/metrics` serves: the Prometheus text format (0.0.4) parsed
//! into samples and metric families, scraping a running server, PromQL
//! expressions (alert rules, dashboards) checked against a scrape: names,
//! labels and types; and the design document's alert expressions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{Server, async_client};

/// One sample line: name, labels, value.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

/// A metric family's type from its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

/// Parses the sample lines of the Prometheus text format.
pub(crate) fn parse(text: &str) -> Vec<Sample> {
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
pub(crate) fn families(text: &str) -> BTreeMap<String, MetricType> {
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
pub(crate) struct Scrape {
    pub(crate) text: String,
    pub(crate) samples: Vec<Sample>,
    pub(crate) types: BTreeMap<String, MetricType>,
}

/// What a sample name selects: a whole family, or one series of a histogram
/// or summary (`_bucket`, `_sum`, `_count`), or a counter's `_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeriesKind {
    pub(crate) family: String,
    pub(crate) family_type: MetricType,
    /// `Some("_bucket")` etc. for a histogram/summary component.
    pub(crate) component: Option<&'static str>,
}

impl Scrape {
    pub(crate) fn new(text: String) -> Scrape {
        Scrape {
            samples: parse(&text),
            types: families(&text),
            text,
        }
    }

    /// Samples of `name` whose labels include `labels`.
    pub(crate) fn matching(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
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
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
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

    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{}", self.text))
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }

    /// The family a sample name belongs to. A `_bucket`/`_sum`/`_count`
    /// suffix is only split off when the rest names a histogram or summary
    /// (so a gauge that happens to end in `_count` stays itself), `_total`
    /// only when the rest names a counter.
    pub(crate) fn kind_of(&self, sample_name: &str) -> Option<SeriesKind> {
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
    pub(crate) fn label_names(&self, name: &str) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .flat_map(|s| s.labels.keys().cloned())
            .collect()
    }
}

/// Labels Prometheus attaches at scrape time, not the server.
pub(crate) const TARGET_LABELS: &[&str] = &["job", "instance"];

/// Checks one PromQL expression against a scrape: every selected metric is
/// exported, its matchers and groupings name labels it has (values of `=`
/// matchers included), `rate`-like functions apply to counters or histogram
/// series only, `histogram_quantile` to `_bucket` series. Returns the
/// selected metric names; panics listing every problem.
pub(crate) fn check_promql(expr: &str, m: &Scrape) -> BTreeSet<String> {
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

// ---------------------------------------------------------------------------
// Scraping a running server; the design document's alerts
// ---------------------------------------------------------------------------

/// `GET /metrics` from an async test: 200 with the text format 0.0.4
/// content type, parsed.
pub(crate) async fn scrape(s: &Server) -> Scrape {
    let resp = async_client()
        .get(format!("{}/metrics", s.http_url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    Scrape::new(resp.text().await.unwrap())
}

/// Polls `/metrics` until `done` holds.
pub(crate) async fn wait_metrics(
    s: &Server,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + timeout;
    loop {
        let m = scrape(s).await;
        if done(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; /metrics:\n{}",
            m.text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The design document's PrometheusRule expressions (section 2.5,
/// monitoring.tf: the `expr = "..."` lines), unescaped. Read from the design
/// document beside the repository (`../shared/design/`, as CI lays it out);
/// `tests/fixtures/design-monitoring-tf.txt` is a copy of that section for
/// checkouts without it, and must not drift from the original.
pub(crate) fn design_alert_expressions() -> Vec<String> {
    let design = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/design/remote-cache-design.txt"
    );
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/design-monitoring-tf.txt"
    );
    let copy = alert_expressions_in(&std::fs::read_to_string(fixture).expect("fixture"));
    match std::fs::read_to_string(design) {
        Ok(text) => {
            let exprs = alert_expressions_in(&text);
            assert_eq!(exprs, copy, "{fixture} differs from the design document");
            exprs
        }
        Err(_) => copy,
    }
}

pub(crate) fn alert_expressions_in(text: &str) -> Vec<String> {
    let section = text
        .split_once("2.5 Monitoring (monitoring.tf)")
        .expect("section 2.5 of the design document")
        .1;
    let section = section.split("\n2.6 ").next().unwrap();
    let exprs: Vec<String> = section
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr = \""))
        .map(|l| {
            l.strip_suffix('"')
                .expect("expression ends with a quote")
                .replace("\\\"", "\"")
        })
        .collect();
    assert_eq!(exprs.len(), 4, "the four alerts: {exprs:?}");
    exprs
}

/// One vector selector of an expression: metric name and label matchers
/// `(label, operator, value)`.
#[derive(Debug)]
pub(crate) struct Selector {
    pub(crate) metric: String,
    pub(crate) matchers: Vec<(String, String, String)>,
}

/// The vector selectors of a PromQL expression (metric names followed by
/// `{...}`; function names are followed by `(`).
pub(crate) fn selectors(expr: &str) -> Vec<Selector> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
            {
                i += 1;
            }
            let ident = &expr[start..i];
            if i < bytes.len() && bytes[i] == b'{' {
                // The closing brace outside quoted values (which may hold
                // `${var.name}`).
                let mut end = i + 1;
                let mut quoted = false;
                while quoted || bytes[end] != b'}' {
                    if bytes[end] == b'"' {
                        quoted = !quoted;
                    }
                    end += 1;
                }
                let mut matchers = Vec::new();
                let mut rest = &expr[i + 1..end];
                while !rest.trim().is_empty() {
                    let rest_trim = rest.trim_start_matches([',', ' ']);
                    let op_at = rest_trim.find(['=', '!']).expect("matcher operator");
                    let label = rest_trim[..op_at].trim().to_string();
                    let after = &rest_trim[op_at..];
                    let op_len = if after.starts_with("=~")
                        || after.starts_with("!=")
                        || after.starts_with("!~")
                    {
                        2
                    } else {
                        1
                    };
                    let op = after[..op_len].to_string();
                    let value_part = after[op_len..].trim_start();
                    let value_part = value_part.strip_prefix('"').expect("quoted value");
                    let close = value_part.find('"').expect("closing quote");
                    matchers.push((label, op, value_part[..close].to_string()));
                    rest = &value_part[close + 1..];
                }
                out.push(Selector {
                    metric: ident.to_string(),
                    matchers,
                });
                i = end + 1;
            }
        } else if c == '"' {
            // Skip string literals.
            i += 1 + expr[i + 1..].find('"').unwrap_or(0) + 1;
        } else {
            i += 1;
        }
    }
    out
}
