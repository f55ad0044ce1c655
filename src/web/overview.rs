//! `/`: what a person asks first (version, uptime, the `.bazelrc` lines,
//! disk use, the proxy tier), the charts and the recent errors. The live
//! part is also served alone (`/ui/overview/live`) for the page's script
//! to swap in every few seconds.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use http::{HeaderMap, StatusCode, Uri, header};

use super::WebState;
use super::charts::overview_charts;
use super::html::{bytes, duration, esc, html, respond, system_time};
use super::recent_errors;
use crate::http::{Body, HttpState};

/// The host (and port) the browser used, when it is a plain host name or
/// address; anything else is not echoed into a `.bazelrc` line.
fn request_host(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    let host = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })?;
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    ok.then_some(host)
}

/// The host without its port (`[::1]:8080` → `[::1]`).
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.split(':').next().unwrap_or(host)
}

/// The `.bazelrc` lines for this server as the browser reached it.
pub(super) fn bazelrc(web: &WebState, uri: &Uri, headers: &HeaderMap) -> String {
    let host = request_host(uri, headers).unwrap_or_else(|| "localhost".to_string());
    let mut out = String::new();
    if let Some(port) = web.grpc_port {
        let scheme = if web.tls { "grpcs" } else { "grpc" };
        let _ = writeln!(
            out,
            "build --remote_cache={scheme}://{}:{port}",
            host_name(&host)
        );
    }
    let scheme = if web.tls { "https" } else { "http" };
    let _ = writeln!(out, "build --remote_cache={scheme}://{host}");
    if web.basic_auth {
        out.push_str(
            "# htpasswd is on: send your credentials (never commit them), e.g.\n\
             # build --remote_header=Authorization=\"Basic $(echo -n USER:PASSWORD | base64)\"\n",
        );
    }
    out
}

fn row(out: &mut String, name: &str, value: &str) {
    let _ = write!(
        out,
        "<tr><th>{}</th><td>{}</td></tr>",
        esc(name),
        esc(value)
    );
}

/// The part of the page that refreshes: figures, charts, errors.
pub(super) fn live(state: &HttpState, web: &WebState) -> String {
    let s = state.store.stats();
    let mut out = format!(
        "<p class=\"quiet\" id=\"uptime\">up {}</p><div class=\"cards\"><section class=\"card\"><h2>Disk</h2>",
        duration(web.started.elapsed())
    );
    let used_pct = if s.max_bytes > 0 {
        s.stored_bytes as f64 * 100.0 / s.max_bytes as f64
    } else {
        0.0
    };
    let _ = write!(
        out,
        "<meter id=\"disk-meter\" min=\"0\" max=\"100\" value=\"{used_pct:.1}\"></meter><table>"
    );
    row(
        &mut out,
        "used",
        &format!(
            "{} of {} ({used_pct:.1}%)",
            bytes(s.stored_bytes),
            bytes(s.max_bytes)
        ),
    );
    row(&mut out, "uncompressed", &bytes(s.logical_bytes));
    row(&mut out, "entries", &s.entries.to_string());
    row(&mut out, "evictions", &(web.evictions)().to_string());
    row(&mut out, "evicted", &bytes(s.evicted_bytes));
    out.push_str("</table></section>");
    if let Some(status) = &state.backend_status {
        out.push_str("<section class=\"card\" id=\"backend\"><h2>Proxy tier</h2><table>");
        if let serde_json::Value::Object(fields) = status() {
            // How far behind the backend is, in words: the oldest queued
            // upload's wait (the queue keeps each entry's enqueue time).
            let oldest = fields
                .get("UploadQueueOldestAgeSeconds")
                .and_then(|v| v.as_u64())
                .filter(|_| fields.get("UploadsPending").and_then(|v| v.as_u64()) > Some(0));
            for (k, v) in fields {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                row(&mut out, &k, &v);
            }
            if let Some(secs) = oldest {
                row(
                    &mut out,
                    "oldest queued upload",
                    &format!(
                        "waiting for {}",
                        duration(std::time::Duration::from_secs(secs))
                    ),
                );
            }
        }
        if let Some(p) = &web.presence {
            let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            let answered = n(&p.stats.cached_present) + n(&p.stats.cached_absent);
            let asked = answered + n(&p.stats.heads);
            let rate = if asked > 0 {
                format!("{:.1}%", answered as f64 * 100.0 / asked as f64)
            } else {
                "–".to_string()
            };
            row(&mut out, "presence-cache hit rate", &rate);
        }
        out.push_str("</table></section>");
    }
    out.push_str("</div><h2>Traffic <small class=\"quiet\">10-second samples, up to the last hour</small></h2><div class=\"charts\">");
    out.push_str(&overview_charts(&web.history.samples()));
    out.push_str("</div><h2>Recent warnings and errors</h2>");
    let events = recent_errors::recent();
    if events.is_empty() {
        out.push_str("<p class=\"quiet\" id=\"no-errors\">None logged since start.</p>");
    } else {
        out.push_str(
            "<table class=\"errors\" id=\"errors\"><tr><th>time (UTC)</th><th>level</th>\
             <th>message</th><th>details</th></tr>",
        );
        for e in events {
            let details: Vec<String> = e.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = write!(
                out,
                "<tr class=\"{level}\"><td>{}</td><td>{level}</td><td>{}</td><td>{}</td></tr>",
                esc(&system_time(e.time)),
                esc(&e.message),
                esc(&details.join(" ")),
                level = e.level.as_str(),
            );
        }
        out.push_str("</table>");
    }
    out
}

pub(super) fn page(
    state: &HttpState,
    web: &WebState,
    uri: &Uri,
    headers: &HeaderMap,
) -> http::Response<Body> {
    let body = format!(
        "<h1>bazel-cache {version}</h1>\
         <h2>Point Bazel at this cache</h2><p>Add to <code>.bazelrc</code>:</p>\
         <pre id=\"bazelrc\">{rc}</pre>\
         <section id=\"live\" data-refresh=\"/ui/overview/live\">{live}</section>",
        version = esc(env!("CARGO_PKG_VERSION")),
        rc = esc(&bazelrc(web, uri, headers)),
        live = live(state, web),
    );
    html(StatusCode::OK, "Overview", &body)
}

pub(super) fn fragment(state: &HttpState, web: &WebState) -> http::Response<Body> {
    respond(StatusCode::OK, "text/html; charset=utf-8", live(state, web))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_parts() {
        assert_eq!(host_name("cache.example:8080"), "cache.example");
        assert_eq!(host_name("[::1]:8080"), "[::1]");
        assert_eq!(host_name("cache"), "cache");
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "evil\"><script>".parse().unwrap());
        assert_eq!(request_host(&Uri::from_static("/"), &h), None);
        h.insert(header::HOST, "cache:9090".parse().unwrap());
        assert_eq!(
            request_host(&Uri::from_static("/"), &h).as_deref(),
            Some("cache:9090")
        );
    }
}
