//! `/ui/ac/<hash>` and `/ui/cas/<hash>`: an ActionResult and a CAS blob
//! rendered for a person. Reads go through the front ends' `Store`; the
//! completeness check is the store crate's (`action_result::missing_blobs`,
//! the one `GET /ac/` and GetActionResult apply), shown instead of applied.
//!
//! A CAS blob is listed as a `Directory` or `Tree` when `?as=directory` or
//! `?as=tree` says so, or, without `as`, when a blob of at most
//! [`SNIFF_LIMIT`] decodes as one with well-formed entries (a Tree first: a
//! Tree whose root decodes would also decode as a Directory).
//!
//! # Layout
//! - this file: the query (`digest_function`, `as`), hashes, links, the
//!   first bytes of a blob as text or hex;
//! - `action.rs`: the ActionResult page;
//! - `blob.rs`: the CAS blob page;
//! - `listing.rs`: Directory and Tree listings, and when a blob is one.

mod action;
mod blob;
mod listing;

pub(super) use action::action;
pub(super) use blob::blob;

use std::fmt::Write as _;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use http::{Response, StatusCode};
use tokio::io::AsyncReadExt;

use super::html::{error_page, esc};
use crate::http::{Body, HttpState};
use bazel_cache_digest::{BlobKey, Digest, DigestFunction, Hash, UnsupportedDigestFunction};
use bazel_cache_store::StoreError;

/// How much of a CAS blob is shown.
pub(super) const PREVIEW: u64 = 4096;
/// Largest blob tried as a Directory or Tree without `?as=`.
pub(super) const SNIFF_LIMIT: u64 = 1024 * 1024;

/// The query: `digest_function` (SHA-256 unless it says `blake3`: the
/// function is part of a blob's name) and `as`.
pub(super) struct Query {
    pub(super) function: DigestFunction,
    pub(super) list_as: Option<String>,
}

pub(super) fn parse_query(query: Option<&str>) -> Result<Query, String> {
    let mut q = Query {
        function: DigestFunction::Sha256,
        list_as: None,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "digest_function" => {
                q.function = v
                    .parse()
                    .map_err(|e: UnsupportedDigestFunction| e.to_string())?;
            }
            "as" if matches!(v, "directory" | "tree" | "blob") => q.list_as = Some(v.to_string()),
            "as" => return Err(format!("as={v:?}: use directory, tree or blob")),
            _ => {}
        }
    }
    Ok(q)
}

pub(super) fn parse_hash(function: DigestFunction, s: &str) -> Result<Hash, String> {
    Hash::from_hex(function, s).map_err(|e| format!("{s:?} is not a {function} hash: {e}"))
}

/// The console page of a CAS blob, `as` a listing when given; BLAKE3
/// blobs carry their function in the query.
pub(super) fn ui_cas(hash: &Hash, list_as: Option<&str>) -> String {
    let mut url = format!("/ui/cas/{}", hash.to_hex());
    let mut sep = '?';
    if let Some(a) = list_as {
        url.push_str(&format!("{sep}as={a}"));
        sep = '&';
    }
    if hash.function() != DigestFunction::Sha256 {
        url.push_str(&format!(
            "{sep}digest_function={}",
            hash.function().as_str()
        ));
    }
    url
}

/// The HTTP protocol's path of a CAS blob (`/cas/…`, `/blake3/cas/…`).
pub(super) fn download_path(hash: &Hash) -> String {
    format!(
        "/{}cas/{}",
        hash.function().resource_segment(),
        hash.to_hex()
    )
}

pub(super) fn store_failed(e: StoreError) -> Response<Body> {
    tracing::warn!(error = %e, "web console: store read failed");
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("reading the store failed: {e}"),
    )
}

pub(super) fn cas_link(d: &Digest) -> String {
    format!(
        "<a class=\"digest\" href=\"{}\">{}</a>/{}",
        ui_cas(&d.hash, None),
        d.hash.to_hex(),
        d.size
    )
}

/// A digest of a message of `function`'s action, as a link.
pub(super) fn reapi_link(function: DigestFunction, d: Option<&re::Digest>) -> String {
    match d.map(|d| Digest::from_reapi(function, d)) {
        Some(Ok(d)) => cas_link(&d),
        Some(Err(e)) => format!("<span class=\"bad\">{}</span>", esc(&e.to_string())),
        None => "–".to_string(),
    }
}

/// The first `limit` bytes of a CAS blob, and its size; `None` if absent.
pub(super) async fn head_of(
    state: &HttpState,
    hash: Hash,
    limit: u64,
) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
    let Some(blob) = state.store.get(&BlobKey::cas(hash), false).await? else {
        return Ok(None);
    };
    let size = blob.size;
    let mut buf = Vec::with_capacity(limit.min(size) as usize);
    blob.body
        .into_reader()
        .take(limit)
        .read_to_end(&mut buf)
        .await
        .map_err(StoreError::body)?;
    Ok(Some((buf, size)))
}

/// Text when it is UTF-8 without control characters other than
/// whitespace, otherwise a hex dump.
pub(super) fn preview(data: &[u8], complete: bool) -> String {
    let text = std::str::from_utf8(data).ok().or_else(|| {
        // A cut multi-byte character at the end is still text.
        (!complete)
            .then(|| std::str::from_utf8(&data[..data.len().saturating_sub(3)]).ok())
            .flatten()
    });
    match text {
        Some(t)
            if !t
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) =>
        {
            format!("<pre class=\"blob text\">{}</pre>", esc(t))
        }
        _ => {
            let mut out = String::from("<pre class=\"blob hex\">");
            for (i, chunk) in data.chunks(16).enumerate() {
                let _ = write!(out, "{:08x}  ", i * 16);
                for b in chunk {
                    let _ = write!(out, "{b:02x} ");
                }
                out.push('\n');
            }
            out.push_str("</pre>");
            out
        }
    }
}
