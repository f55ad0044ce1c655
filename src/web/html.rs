//! The one escaping function, the page shell, the response headers every
//! console page carries (CSP, nosniff), and small formatters.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Response, StatusCode, header};

use crate::http::{Body, full};

/// No inline script or style, nothing from another origin: the console's
/// own `/ui/static/` files only. SVG charts are inline elements styled by
/// presentation attributes, which CSP does not count as inline style.
pub(super) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; \
    frame-ancestors 'none'";

/// Escapes text for HTML element content and double-quoted attributes.
/// Everything the console shows that it did not write itself (stdout,
/// paths, log messages, the Host header) goes through here.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A whole page: `body` is HTML the caller built with [`esc`].
pub(super) fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · bazel-cache</title>\
         <link rel=\"stylesheet\" href=\"/ui/static/console.css\">\
         <script src=\"/ui/static/console.js\" defer></script></head>\
         <body><header><a class=\"brand\" href=\"/\">bazel-cache</a>\
         <nav><a href=\"/\">Overview</a><a href=\"/ui/explain\">Why did it miss?</a></nav>\
         <form class=\"search\" action=\"/ui/search\" method=\"get\">\
         <input name=\"q\" placeholder=\"AC or CAS hash\" aria-label=\"hash\" size=\"40\">\
         <select name=\"digest_function\" aria-label=\"digest function\">\
         <option value=\"sha256\">SHA-256</option><option value=\"blake3\">BLAKE3</option></select>\
         <button type=\"submit\">Open</button></form></header>\
         <main>{body}</main></body></html>\n",
        title = esc(title),
    )
}

/// Adds the console's security headers to any response.
pub(super) fn secure(mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

pub(super) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Body> {
    secure(
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, body.len())
            .body(full(body))
            .expect("static response"),
    )
}

pub(super) fn html(status: StatusCode, title: &str, body: &str) -> Response<Body> {
    respond(status, "text/html; charset=utf-8", page(title, body))
}

/// An error page whose text says what was wrong.
pub(super) fn error_page(status: StatusCode, reason: &str) -> Response<Body> {
    let title = status.canonical_reason().unwrap_or("Error");
    html(
        status,
        title,
        &format!(
            "<h1>{} {}</h1><p class=\"reason\">{}</p>",
            status.as_u16(),
            esc(title),
            esc(reason)
        ),
    )
}

/// `1.5 MiB`.
pub(super) fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `2h 03m 07s`.
pub(super) fn duration(d: Duration) -> String {
    let s = d.as_secs();
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s:02}s"),
        _ => format!("{h}h {m:02}m {s:02}s"),
    }
}

/// UTC `YYYY-MM-DD HH:MM:SS` of a Unix time (the civil-from-days
/// algorithm of the proleptic Gregorian calendar).
pub(super) fn utc(secs: i64, nanos: i32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    if nanos > 0 {
        let _ = write!(out, ".{:03}", nanos / 1_000_000);
    }
    out
}

pub(super) fn system_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    utc(
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        i32::try_from(d.subsec_nanos()).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(utc(0, 0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_700_000_000, 0), "2023-11-14 22:13:20");
        assert_eq!(utc(951_782_400, 5_000_000), "2000-02-29 00:00:00.005");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration(Duration::from_secs(3723)), "1h 02m 03s");
    }
}
