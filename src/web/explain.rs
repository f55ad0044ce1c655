//! `/ui/explain`: upload the execution logs of two builds and read why the
//! second one missed the cache. The form posts `multipart/form-data`; the
//! body is read as it arrives, refused with 413 past [`MAX_LOG_BYTES`] per
//! file (the whole body past two of them), within [`BODY_TIMEOUT`], and at
//! most [`MAX_CONCURRENT`] uploads are read and analysed at once (503
//! otherwise); the buffer is reserved from the server's memory budget
//! (`max_buffer_memory`) as it grows, so uploads never hold more than it. Parsing and the
//! analysis (the `bazel-cache-explain` crate) run on a blocking thread.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::WebState;
use super::html::{bytes, error_page, esc, html};
use super::multipart;
use crate::http::{Body, HttpState};
use bazel_cache_store::budget::{MemoryBudget, MemoryUse, Reservation};

/// Largest execution log accepted, per file.
pub(super) const MAX_LOG_BYTES: u64 = 64 * 1024 * 1024;
/// Largest whole request body: two logs and the multipart framing.
const MAX_BODY: u64 = 2 * MAX_LOG_BYTES + 64 * 1024;
/// Uploads read and analysed at once.
pub(super) const MAX_CONCURRENT: usize = 2;
/// How long an upload may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(120);

const FORM: &str = "<form method=\"post\" action=\"/ui/explain\" enctype=\"multipart/form-data\" id=\"explain-form\">\
    <p><label>First build (the one that filled the cache): <input type=\"file\" name=\"before\" required></label></p>\
    <p><label>Second build (the one that missed): <input type=\"file\" name=\"after\" required></label></p>\
    <p><button type=\"submit\">Explain</button></p></form>";

fn intro() -> String {
    format!(
        "<h1>Why did my build miss the cache?</h1>\
         <p>Run both builds with <code>--execution_log_json_file=exec.json</code> \
         and upload the two logs (at most {} each). The actions of the second \
         build that missed are listed with the first reason, root cause first.</p>{FORM}",
        bytes(MAX_LOG_BYTES)
    )
}

pub(super) fn form() -> Response<Body> {
    html(StatusCode::OK, "Why did it miss?", &intro())
}

fn too_large() -> Response<Body> {
    error_page(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!(
            "an execution log may be at most {} ({} bytes); upload smaller logs (e.g. of one target)",
            bytes(MAX_LOG_BYTES),
            MAX_LOG_BYTES
        ),
    )
}

/// The step in which an upload's buffer reserves memory from the budget.
const RESERVE_STEP: u64 = 1024 * 1024;

/// Reads the body up to [`MAX_BODY`], its buffer reserved from the
/// server's memory budget as it grows (503 when the budget is spent);
/// `Err` is the response to send.
async fn read_bounded(
    mut body: Incoming,
    memory: &Arc<MemoryBudget>,
) -> Result<(Vec<u8>, Reservation), Response<Body>> {
    let mut buf = Vec::new();
    let mut held = Reservation::none();
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                error_page(
                    StatusCode::BAD_REQUEST,
                    &format!("reading the upload failed: {e}"),
                )
            })?;
            if let Some(data) = frame.data_ref() {
                let len = (buf.len() + data.len()) as u64;
                if len > MAX_BODY {
                    return Err(too_large());
                }
                if len > held.bytes() {
                    let want = len.div_ceil(RESERVE_STEP) * RESERVE_STEP;
                    memory
                        .grow(&mut held, MemoryUse::UploadBuffer, want)
                        .await
                        .map_err(|e| error_page(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()))?;
                }
                buf.extend_from_slice(data);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(())) => Ok((buf, held)),
        Ok(Err(resp)) => Err(resp),
        Err(_) => Err(error_page(
            StatusCode::REQUEST_TIMEOUT,
            "the upload did not arrive in time",
        )),
    }
}

pub(super) async fn upload(
    state: &HttpState,
    web: &WebState,
    req: Request<Incoming>,
) -> Response<Body> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return too_large();
    }
    let Some(boundary) = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(multipart::boundary)
    else {
        return error_page(
            StatusCode::BAD_REQUEST,
            "expected a multipart/form-data upload with the fields \"before\" and \"after\"",
        );
    };
    let Ok(_slot) = web.explain_slots.try_acquire() else {
        return error_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "other uploads are being analysed; try again in a moment",
        );
    };
    let (body, _reserved) = match read_bounded(req.into_body(), &state.memory).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let analysed = tokio::task::spawn_blocking(move || -> Result<String, (StatusCode, String)> {
        let parts = multipart::parse(&body, &boundary).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        let field = |name: &str| {
            parts
                .iter()
                .find(|p| p.name == name)
                .map(|p| p.data)
                .ok_or_else(|| {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("the upload has no \"{name}\" file"),
                    )
                })
        };
        let (before, after) = (field("before")?, field("after")?);
        if before.len() as u64 > MAX_LOG_BYTES || after.len() as u64 > MAX_LOG_BYTES {
            return Err((StatusCode::PAYLOAD_TOO_LARGE, String::new()));
        }
        analyse(before, after)
    })
    .await;
    match analysed {
        Ok(Ok(report)) => html(
            StatusCode::OK,
            "Why did it miss?",
            &format!("{}<h2>Report</h2>{report}", intro()),
        ),
        Ok(Err((StatusCode::PAYLOAD_TOO_LARGE, _))) => too_large(),
        Ok(Err((status, reason))) => error_page(status, &reason),
        Err(e) => error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the analysis failed: {e}"),
        ),
    }
}

/// The report as HTML, or why the logs could not be compared.
fn analyse(before: &[u8], after: &[u8]) -> Result<String, (StatusCode, String)> {
    let parse = |which: &str, bytes: &[u8]| {
        bazel_cache_explain::parse_log(bytes).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("the {which} log is not a Bazel execution log: {e}"),
            )
        })
    };
    let (before, after) = (parse("first", before)?, parse("second", after)?);
    Ok(render(&bazel_cache_explain::explain(&before, &after)))
}

/// The report for a person: the summary, notes, then one block per miss
/// (root causes first, as the report orders them) with its reasons.
fn render(report: &bazel_cache_explain::Report) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "<section id=\"report\"><p class=\"summary\" id=\"summary\">{}</p>",
        esc(&report.summary())
    );
    for note in &report.notes {
        let _ = write!(out, "<p class=\"quiet\">note: {}</p>", esc(note));
    }
    if !report.misses.is_empty() {
        out.push_str("<ol class=\"misses\" id=\"misses\">");
    }
    for miss in &report.misses {
        let (class, mark) = if miss.root_cause {
            ("root", "root cause")
        } else {
            ("dependent", "dependent")
        };
        let _ = write!(
            out,
            "<li class=\"{class}\"><p><span class=\"mark\">{mark}</span> <b>{}</b> {}</p>\
             <p class=\"quiet\">output: <code>{}</code></p><ul>",
            esc(&miss.mnemonic),
            esc(miss.target.as_deref().unwrap_or("")),
            esc(&miss.primary_output),
        );
        for reason in &miss.reasons {
            let _ = write!(out, "<li>{}</li>", esc(&reason.to_string()));
        }
        out.push_str("</ul></li>");
    }
    if !report.misses.is_empty() {
        out.push_str("</ol>");
    }
    let _ = write!(
        out,
        "<details><summary>as text</summary><pre class=\"report\">{}</pre></details></section>",
        esc(&report.to_text())
    );
    out
}
