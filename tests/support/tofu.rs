//! A small evaluator for the OpenTofu module in deploy/: it plans the
//! module for a set of inputs as far as values go (variables with defaults
//! and validations, locals, resources with `count` and `dynamic` blocks,
//! preconditions, outputs), so tests can read the objects it would create.
//!
//! hcl-rs parses and evaluates the expressions; the OpenTofu functions the
//! module calls are implemented here with OpenTofu's meaning, and `can()` is
//! resolved before evaluation (hcl-rs evaluates arguments eagerly). Anything
//! the module does beyond this subset is an error, not a silent pass.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hcl::eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType};
use hcl::expr::{Conditional, Operation};
use hcl::{Block, Body, Expression, Map, Number, Value};

pub(crate) fn v(x: impl Into<Value>) -> Value {
    x.into()
}

pub(crate) fn obj(entries: &[(&str, Value)]) -> Value {
    Value::Object(
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

pub(crate) struct Module {
    pub(crate) dir: PathBuf,
    /// (file name, parsed body), sorted by name.
    pub(crate) files: Vec<(String, Body)>,
}

impl Module {
    /// Parses every `.tf` file of the module (a parse error names the file).
    pub(crate) fn load(dir: &Path) -> Module {
        let dir = dir.to_path_buf();
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "tf") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                let body = hcl::parse(&text)
                    .unwrap_or_else(|e| panic!("{} does not parse as HCL: {e}", path.display()));
                files.push((name, body));
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Module { dir, files }
    }

    pub(crate) fn blocks<'a>(&'a self, ident: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
        self.files
            .iter()
            .flat_map(|(_, body)| body.blocks())
            .filter(move |b| b.identifier() == ident)
    }

    pub(crate) fn variables(&self) -> BTreeMap<String, &Block> {
        self.blocks("variable")
            .map(|b| (label(b, 0).to_string(), b))
            .collect()
    }
}

pub(crate) fn label(block: &Block, i: usize) -> &str {
    block
        .labels()
        .get(i)
        .unwrap_or_else(|| panic!("{} block without label {i}", block.identifier()))
        .as_str()
}

pub(crate) fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes()
        .find(|a| a.key.as_str() == key)
        .map(|a| &a.expr)
}

/// What the module renders for one set of inputs.
pub(crate) struct Rendered {
    /// `type.name` of every resource whose count is not 0.
    pub(crate) resources: BTreeMap<String, Value>,
    pub(crate) outputs: BTreeMap<String, Value>,
}

impl Rendered {
    pub(crate) fn resource(&self, address: &str) -> &Value {
        self.resources
            .get(address)
            .unwrap_or_else(|| panic!("{address} is not rendered (count = 0?)"))
    }

    pub(crate) fn output(&self, name: &str) -> &Value {
        self.outputs
            .get(name)
            .unwrap_or_else(|| panic!("no output {name}"))
    }
}

/// `a.b.0.c` into a rendered value (numbers index lists: blocks are lists).
pub(crate) fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    get(value, path).unwrap_or_else(|| panic!("no {path} in {value:#?}"))
}

pub(crate) fn get<'a>(mut value: &'a Value, path: &str) -> Option<&'a Value> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut i = 0;
    while i < parts.len() {
        value = match value {
            Value::Array(items) => {
                i += 1;
                items.get(parts[i - 1].parse::<usize>().ok()?)?
            }
            // Keys may hold dots (`config.yaml`, `prometheus.io/port`): the
            // longest run of parts that is a key.
            Value::Object(map) => {
                let (k, v) = (i + 1..=parts.len())
                    .rev()
                    .find_map(|k| map.get(&parts[i..k].join(".")).map(|v| (k, v)))?;
                i = k;
                v
            }
            _ => return None,
        };
    }
    Some(value)
}

pub(crate) fn s(value: &Value) -> &str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {value:?}"))
}

pub(crate) fn n(value: &Value) -> f64 {
    match value {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) => s.parse().unwrap_or_else(|_| panic!("not a number: {s}")),
        other => panic!("not a number: {other:?}"),
    }
}

pub(crate) fn list(value: &Value) -> &Vec<Value> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value:?}"))
}

fn number(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        Value::from(f as i64)
    } else {
        Value::Number(Number::from_f64(f).expect("finite"))
    }
}

fn num_arg(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| "not a number".to_string()),
        other => Err(format!("expected a number, got {other}")),
    }
}

fn str_arg(v: &Value) -> Result<&str, String> {
    v.as_str()
        .ok_or_else(|| format!("expected a string, got {v}"))
}

/// The OpenTofu functions the module calls, with OpenTofu's meaning.
fn functions() -> Vec<(&'static str, FuncDef)> {
    fn yamlencode(a: FuncArgs) -> Result<Value, String> {
        serde_yaml_ng::to_string(&a[0])
            .map(Value::from)
            .map_err(|e| e.to_string())
    }
    fn tostring(a: FuncArgs) -> Result<Value, String> {
        match &a[0] {
            Value::String(s) => Ok(Value::from(s.clone())),
            Value::Bool(b) => Ok(Value::from(b.to_string())),
            Value::Number(n) => Ok(Value::from(n.to_string())),
            other => Err(format!("tostring: cannot convert {other}")),
        }
    }
    fn tonumber(a: FuncArgs) -> Result<Value, String> {
        match &a[0] {
            Value::Number(_) => Ok(a[0].clone()),
            Value::String(s) => s
                .parse::<f64>()
                .map(number)
                .map_err(|_| format!("tonumber: {s:?} is not a number")),
            other => Err(format!("tonumber: cannot convert {other}")),
        }
    }
    fn merge(a: FuncArgs) -> Result<Value, String> {
        let mut out = Map::new();
        for arg in a.iter() {
            match arg {
                Value::Null => {}
                Value::Object(m) => out.extend(m.clone()),
                other => Err(format!("merge: {other} is not an object"))?,
            }
        }
        Ok(Value::Object(out))
    }
    fn sha256(a: FuncArgs) -> Result<Value, String> {
        use sha2::Digest;
        Ok(Value::from(hex::encode(sha2::Sha256::digest(
            str_arg(&a[0])?.as_bytes(),
        ))))
    }
    fn split(a: FuncArgs) -> Result<Value, String> {
        let (sep, text) = (str_arg(&a[0])?, str_arg(&a[1])?);
        Ok(Value::Array(text.split(sep).map(Value::from).collect()))
    }
    fn length(a: FuncArgs) -> Result<Value, String> {
        match &a[0] {
            Value::Array(v) => Ok(Value::from(v.len())),
            Value::Object(m) => Ok(Value::from(m.len())),
            Value::String(s) => Ok(Value::from(s.chars().count())),
            other => Err(format!("length: {other} has no length")),
        }
    }
    fn contains(a: FuncArgs) -> Result<Value, String> {
        let items = a[0].as_array().ok_or("contains: not a list")?;
        Ok(Value::Bool(items.contains(&a[1])))
    }
    fn regex(a: FuncArgs) -> Result<Value, String> {
        let re = regex::Regex::new(str_arg(&a[0])?).map_err(|e| e.to_string())?;
        let text = str_arg(&a[1])?;
        re.find(text)
            .map(|m| Value::from(m.as_str()))
            .ok_or_else(|| format!("regex: pattern did not match {text:?}"))
    }
    fn regexall(a: FuncArgs) -> Result<Value, String> {
        let re = regex::Regex::new(str_arg(&a[0])?).map_err(|e| e.to_string())?;
        let text = str_arg(&a[1])?;
        Ok(Value::Array(
            re.find_iter(text)
                .map(|m| Value::from(m.as_str()))
                .collect(),
        ))
    }
    fn alltrue(a: FuncArgs) -> Result<Value, String> {
        let items = a[0].as_array().ok_or("alltrue: not a list")?;
        Ok(Value::Bool(items.iter().all(|v| *v == Value::Bool(true))))
    }
    fn floor(a: FuncArgs) -> Result<Value, String> {
        Ok(number(num_arg(&a[0])?.floor()))
    }
    fn trimspace(a: FuncArgs) -> Result<Value, String> {
        Ok(Value::from(str_arg(&a[0])?.trim()))
    }
    fn file(a: FuncArgs) -> Result<Value, String> {
        let path = str_arg(&a[0])?;
        std::fs::read_to_string(path)
            .map(Value::from)
            .map_err(|e| format!("file({path}): {e}"))
    }
    let any = || ParamType::Any;
    vec![
        ("yamlencode", FuncDef::new(yamlencode, [any()])),
        ("tostring", FuncDef::new(tostring, [any()])),
        ("tonumber", FuncDef::new(tonumber, [any()])),
        (
            "merge",
            FuncDef::builder().variadic_param(any()).build(merge),
        ),
        ("sha256", FuncDef::new(sha256, [any()])),
        ("split", FuncDef::new(split, [any(), any()])),
        ("length", FuncDef::new(length, [any()])),
        ("contains", FuncDef::new(contains, [any(), any()])),
        ("regex", FuncDef::new(regex, [any(), any()])),
        ("regexall", FuncDef::new(regexall, [any(), any()])),
        ("alltrue", FuncDef::new(alltrue, [any()])),
        ("floor", FuncDef::new(floor, [any()])),
        ("trimspace", FuncDef::new(trimspace, [any()])),
        ("file", FuncDef::new(file, [any()])),
    ]
}

/// Replaces `can(x)` by whether `x` evaluates (OpenTofu's meaning), since
/// hcl-rs evaluates function arguments before the call.
fn resolve_can(expr: &Expression, ctx: &Context) -> Result<Expression, String> {
    use Expression as E;
    Ok(match expr {
        E::FuncCall(call) if call.name.name.as_str() == "can" => match call.args.as_slice() {
            [arg] => E::Bool(arg.evaluate(ctx).is_ok()),
            _ => return Err("can() takes one argument".into()),
        },
        E::FuncCall(call) => {
            let mut call = (**call).clone();
            call.args = call
                .args
                .iter()
                .map(|a| resolve_can(a, ctx))
                .collect::<Result<_, _>>()?;
            E::FuncCall(Box::new(call))
        }
        E::Parenthesis(inner) => E::Parenthesis(Box::new(resolve_can(inner, ctx)?)),
        E::Conditional(c) => E::Conditional(Box::new(Conditional {
            cond_expr: resolve_can(&c.cond_expr, ctx)?,
            true_expr: resolve_can(&c.true_expr, ctx)?,
            false_expr: resolve_can(&c.false_expr, ctx)?,
        })),
        E::Operation(op) => E::Operation(Box::new(match &**op {
            Operation::Unary(u) => {
                let mut u = u.clone();
                u.expr = resolve_can(&u.expr, ctx)?;
                Operation::Unary(u)
            }
            Operation::Binary(b) => {
                let mut b = b.clone();
                b.lhs_expr = resolve_can(&b.lhs_expr, ctx)?;
                b.rhs_expr = resolve_can(&b.rhs_expr, ctx)?;
                Operation::Binary(b)
            }
        })),
        E::Array(items) => E::Array(
            items
                .iter()
                .map(|i| resolve_can(i, ctx))
                .collect::<Result<_, _>>()?,
        ),
        E::ForExpr(f) => {
            let text = hcl::format::to_string(&**f).unwrap_or_default();
            if text.contains("can(") {
                return Err(format!(
                    "can() inside a for expression is beyond this evaluator: {text}"
                ));
            }
            expr.clone()
        }
        other => other.clone(),
    })
}

fn eval(expr: &Expression, ctx: &Context, what: &str) -> Result<Value, String> {
    resolve_can(expr, ctx)
        .and_then(|e| e.evaluate(ctx).map_err(|err| err.to_string()))
        .map_err(|e| format!("{what}: {e}"))
}

/// A block body as OpenTofu hands it to the provider: attributes evaluated,
/// nested blocks as lists, `dynamic` blocks expanded; meta-arguments and
/// `lifecycle` left out.
fn body_value(body: &Body, ctx: &Context, what: &str) -> Result<Value, String> {
    let mut out = Map::new();
    for a in body.attributes() {
        let key = a.key.as_str();
        if ["count", "for_each", "depends_on", "provider"].contains(&key) {
            continue;
        }
        out.insert(
            key.to_string(),
            eval(&a.expr, ctx, &format!("{what}.{key}"))?,
        );
    }
    let push = |out: &mut Map<String, Value>, ident: &str, v: Value| match out
        .entry(ident.to_string())
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        Value::Array(items) => items.push(v),
        _ => unreachable!("blocks are lists"),
    };
    for block in body.blocks() {
        match block.identifier() {
            "lifecycle" => {}
            "dynamic" => {
                let name = label(block, 0);
                let for_each = attr(block.body(), "for_each").ok_or("dynamic without for_each")?;
                let items: Vec<(Value, Value)> =
                    match eval(for_each, ctx, &format!("{what}.dynamic.{name}"))? {
                        Value::Array(v) => v
                            .into_iter()
                            .enumerate()
                            .map(|(i, v)| (Value::from(i), v))
                            .collect(),
                        Value::Object(m) => {
                            m.into_iter().map(|(k, v)| (Value::from(k), v)).collect()
                        }
                        other => return Err(format!("{what}: for_each over {other}")),
                    };
                let content = block
                    .body()
                    .blocks()
                    .find(|b| b.identifier() == "content")
                    .ok_or("dynamic without content")?;
                for (key, value) in items {
                    let mut inner = ctx.clone();
                    inner.declare_var(name, obj(&[("key", key), ("value", value)]));
                    let v = body_value(content.body(), &inner, &format!("{what}.{name}"))?;
                    push(&mut out, name, v);
                }
            }
            ident => {
                let v = body_value(block.body(), ctx, &format!("{what}.{ident}"))?;
                push(&mut out, ident, v);
            }
        }
    }
    Ok(Value::Object(out))
}

/// Plans the module for `inputs` as OpenTofu would, as far as values go:
/// unknown or missing inputs, failed validations and preconditions are
/// errors carrying the module's message.
pub(crate) fn render(module: &Module, inputs: &[(String, Value)]) -> Result<Rendered, String> {
    let variables = module.variables();
    let mut vars = Map::new();
    for (name, value) in inputs {
        if !variables.contains_key(name) {
            return Err(format!("input {name} is not declared by the module"));
        }
        vars.insert(name.clone(), value.clone());
    }
    for (name, block) in &variables {
        if !vars.contains_key(name) {
            let default = attr(block.body(), "default")
                .ok_or_else(|| format!("required variable {name} is not set"))?;
            vars.insert(name.clone(), eval(default, &Context::new(), name)?);
        }
    }

    let mut ctx = Context::new();
    for (name, def) in functions() {
        ctx.declare_func(name, def);
    }
    ctx.declare_var(
        "path",
        obj(&[("module", Value::from(module.dir.display().to_string()))]),
    );
    ctx.declare_var("var", Value::Object(vars.clone()));

    for (name, block) in &variables {
        for validation in block
            .body()
            .blocks()
            .filter(|b| b.identifier() == "validation")
        {
            let cond = attr(validation.body(), "condition").expect("condition");
            let message = eval(
                attr(validation.body(), "error_message").expect("error_message"),
                &ctx,
                name,
            )?;
            match eval(cond, &ctx, &format!("variable {name} validation"))? {
                Value::Bool(true) => {}
                Value::Bool(false) => {
                    return Err(format!("variable {name}: {}", s(&message)));
                }
                other => return Err(format!("variable {name}: condition gave {other}")),
            }
        }
    }

    // Locals, in whatever order their references allow.
    let mut pending: Vec<&hcl::Attribute> = module
        .blocks("locals")
        .flat_map(|b| b.body().attributes())
        .collect();
    let mut locals = Map::new();
    while !pending.is_empty() {
        ctx.declare_var("local", Value::Object(locals.clone()));
        let mut errors = Vec::new();
        let before = pending.len();
        pending.retain(
            |a| match eval(&a.expr, &ctx, &format!("local.{}", a.key.as_str())) {
                Ok(v) => {
                    locals.insert(a.key.as_str().to_string(), v);
                    false
                }
                Err(e) => {
                    errors.push(e);
                    true
                }
            },
        );
        if pending.len() == before {
            return Err(errors.join("\n"));
        }
    }
    ctx.declare_var("local", Value::Object(locals));

    // Resources, likewise (they refer to each other's attributes).
    let mut pending: Vec<&Block> = module.blocks("resource").collect();
    let mut by_type: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut resources = BTreeMap::new();
    let mut counted = Vec::new();
    while !pending.is_empty() {
        let mut errors = Vec::new();
        let before = pending.len();
        pending.retain(|b| {
            let (ty, name) = (label(b, 0), label(b, 1));
            let address = format!("{ty}.{name}");
            let count = match attr(b.body(), "count").map(|c| eval(c, &ctx, &address)) {
                None => None,
                Some(Ok(c)) => Some(n(&c) as usize),
                Some(Err(e)) => {
                    errors.push(e);
                    return true;
                }
            };
            if count == Some(0) {
                by_type
                    .entry(ty.to_string())
                    .or_default()
                    .insert(name.to_string(), Value::Array(Vec::new()));
                return false;
            }
            match body_value(b.body(), &ctx, &address) {
                Ok(v) => {
                    let reference = if count.is_some() {
                        Value::Array(vec![v.clone()])
                    } else {
                        v.clone()
                    };
                    by_type
                        .entry(ty.to_string())
                        .or_default()
                        .insert(name.to_string(), reference);
                    resources.insert(address, v);
                    counted.push(*b);
                    false
                }
                Err(e) => {
                    errors.push(e);
                    true
                }
            }
        });
        for (ty, of_type) in &by_type {
            ctx.declare_var(ty.as_str(), Value::Object(of_type.clone()));
        }
        if pending.len() == before {
            return Err(errors.join("\n"));
        }
    }

    for b in counted {
        let address = format!("{}.{}", label(b, 0), label(b, 1));
        for lifecycle in b.body().blocks().filter(|x| x.identifier() == "lifecycle") {
            for pre in lifecycle
                .body()
                .blocks()
                .filter(|x| x.identifier() == "precondition")
            {
                let cond = attr(pre.body(), "condition").expect("condition");
                let message = eval(attr(pre.body(), "error_message").unwrap(), &ctx, &address)?;
                if eval(cond, &ctx, &address)? != Value::Bool(true) {
                    return Err(format!("{address}: {}", s(&message)));
                }
            }
        }
    }

    let mut outputs = BTreeMap::new();
    for b in module.blocks("output") {
        let name = label(b, 0);
        let value = attr(b.body(), "value").expect("output value");
        outputs.insert(name.to_string(), eval(value, &ctx, name)?);
    }
    Ok(Rendered { resources, outputs })
}
