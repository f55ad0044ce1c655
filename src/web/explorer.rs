//! `/ui/ac/<hash>` and `/ui/cas/<hash>`: an ActionResult and a CAS blob
//! rendered for a person. Reads go through the front ends' `Store`; the
//! completeness check is the store crate's (`action_result::missing_blobs`,
//! the one `GET /ac/` and GetActionResult apply), shown instead of applied.
//!
//! A CAS blob is listed as a `Directory` or `Tree` when `?as=directory` or
//! `?as=tree` says so, or, without `as`, when a blob of at most
//! [`SNIFF_LIMIT`] decodes as one with well-formed entries (a Tree first: a
//! Tree whose root decodes would also decode as a Directory).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use http::{Response, StatusCode};
use prost::Message;
use tokio::io::AsyncReadExt;

use super::html::{bytes, error_page, esc, html, utc};
use crate::http::{Body, HttpState};
use bazel_cache_digest::{BlobKey, Digest, Hash, Kind};
use bazel_cache_store::action_result::{self as ac, MAX_ACTION_RESULT_BYTES};
use bazel_cache_store::{StoreError, read_all};

/// How much of stdout/stderr is shown inline.
const INLINE_OUTPUT: u64 = 64 * 1024;
/// How much of a CAS blob is shown.
const PREVIEW: u64 = 4096;
/// Largest blob tried as a Directory or Tree without `?as=`.
const SNIFF_LIMIT: u64 = 1024 * 1024;
/// Most files listed per output directory.
const MAX_LISTED: usize = 2000;

/// The query's `digest_function` and `as`; only SHA-256 until the store
/// has other digest functions.
struct Query {
    list_as: Option<String>,
}

fn parse_query(query: Option<&str>) -> Result<Query, String> {
    let mut q = Query { list_as: None };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "digest_function" if v.eq_ignore_ascii_case("sha256") => {}
            "digest_function" => {
                return Err(format!(
                    "digest_function {v:?} is not supported here; use sha256"
                ));
            }
            "as" if matches!(v, "directory" | "tree" | "blob") => q.list_as = Some(v.to_string()),
            "as" => return Err(format!("as={v:?}: use directory, tree or blob")),
            _ => {}
        }
    }
    Ok(q)
}

fn parse_hash(s: &str) -> Result<Hash, String> {
    Hash::from_hex(s).map_err(|e| format!("{s:?} is not a SHA-256 hash: {e}"))
}

fn store_failed(e: StoreError) -> Response<Body> {
    tracing::warn!(error = %e, "web console: store read failed");
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("reading the store failed: {e}"),
    )
}

fn cas_link(d: &Digest) -> String {
    let h = d.hash.to_hex();
    format!(
        "<a class=\"digest\" href=\"/ui/cas/{h}\">{h}</a>/{}",
        d.size
    )
}

fn reapi_link(d: Option<&re::Digest>) -> String {
    match d.map(Digest::from_reapi) {
        Some(Ok(d)) => cas_link(&d),
        Some(Err(e)) => format!("<span class=\"bad\">{}</span>", esc(&e.to_string())),
        None => "–".to_string(),
    }
}

/// The first `limit` bytes of a CAS blob, and its size; `None` if absent.
async fn head_of(
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
fn preview(data: &[u8], complete: bool) -> String {
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

/// stdout or stderr: inline bytes, or the first 64 KiB of the blob.
async fn output_stream(
    state: &HttpState,
    name: &str,
    raw: &[u8],
    digest: Option<&re::Digest>,
) -> String {
    let id = name.to_ascii_lowercase();
    if !raw.is_empty() {
        let shown = &raw[..raw.len().min(INLINE_OUTPUT as usize)];
        return format!(
            "<h3>{name} (inline)</h3><pre class=\"output\" id=\"{id}\">{}</pre>",
            esc(&String::from_utf8_lossy(shown))
        );
    }
    let Some(Ok(d)) = digest.map(Digest::from_reapi) else {
        return format!("<h3>{name}</h3><p class=\"quiet\">empty</p>");
    };
    if d.size == 0 {
        return format!("<h3>{name}</h3><p class=\"quiet\">empty</p>");
    }
    let link = format!(
        "<a href=\"/cas/{h}\">whole blob ({})</a> · {}",
        bytes(d.size),
        cas_link(&d),
        h = d.hash.to_hex()
    );
    match head_of(state, d.hash, INLINE_OUTPUT).await {
        Ok(Some((data, size))) => {
            let cut = if size > INLINE_OUTPUT {
                " (first 64 KiB)"
            } else {
                ""
            };
            format!(
                "<h3>{name}{cut}</h3><pre class=\"output\" id=\"{id}\">{}</pre><p>{link}</p>",
                esc(&String::from_utf8_lossy(&data))
            )
        }
        Ok(None) => {
            format!("<h3>{name}</h3><p class=\"bad\">missing from the CAS</p><p>{link}</p>")
        }
        Err(e) => format!(
            "<h3>{name}</h3><p class=\"bad\">{}</p>",
            esc(&e.to_string())
        ),
    }
}

fn directory_digest(d: &re::Directory) -> Hash {
    Hash::of(&d.encode_to_vec())
}

/// The rows of a Directory's files and symlinks, names after `prefix`.
fn entry_rows(out: &mut String, prefix: &str, dir: &re::Directory) {
    for f in &dir.files {
        let _ = write!(
            out,
            "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(prefix),
            esc(&f.name),
            f.digest.as_ref().map_or(0, |d| d.size_bytes),
            reapi_link(f.digest.as_ref()),
            if f.is_executable { "yes" } else { "" }
        );
    }
    for l in &dir.symlinks {
        let _ = write!(
            out,
            "<tr><td>{}{}</td><td colspan=\"3\">→ {}</td></tr>",
            esc(prefix),
            esc(&l.name),
            esc(&l.target)
        );
    }
}

/// Every file of a Tree with its path, depth first, at most [`MAX_LISTED`].
fn tree_listing(tree: &re::Tree, prefix: &str) -> String {
    let children: HashMap<Hash, &re::Directory> = tree
        .children
        .iter()
        .map(|c| (directory_digest(c), c))
        .collect();
    let mut rows = String::new();
    let mut listed = 0;
    let mut seen = HashSet::new();
    let mut stack: Vec<(String, &re::Directory)> =
        tree.root.iter().map(|r| (prefix.to_string(), r)).collect();
    while let Some((path, dir)) = stack.pop() {
        if listed >= MAX_LISTED {
            rows.push_str("<tr><td colspan=\"4\">… more not shown</td></tr>");
            return rows;
        }
        listed += dir.files.len();
        entry_rows(&mut rows, &format!("{path}/"), dir);
        for sub in dir.directories.iter().rev() {
            let child = sub
                .digest
                .as_ref()
                .and_then(|d| Digest::from_reapi(d).ok())
                .and_then(|d| children.get(&d.hash).map(|c| (d.hash, *c)));
            match child {
                Some((h, c)) if seen.insert(h) => stack.push((format!("{path}/{}", sub.name), c)),
                Some(_) => {}
                None => {
                    let _ = write!(
                        rows,
                        "<tr><td>{}/{}/</td><td colspan=\"3\" class=\"bad\">not in the Tree</td></tr>",
                        esc(&path),
                        esc(&sub.name)
                    );
                }
            }
        }
    }
    rows
}

pub(super) async fn action(state: &HttpState, hash: &str, query: Option<&str>) -> Response<Body> {
    if let Err(e) = parse_query(query) {
        return error_page(StatusCode::BAD_REQUEST, &e);
    }
    let hash = match parse_hash(hash) {
        Ok(h) => h,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let key = BlobKey::new(Kind::Ac, hash);
    let data = match read_all(&*state.store, &key, MAX_ACTION_RESULT_BYTES).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                &format!("no action-cache entry {hash}"),
            );
        }
        Err(e) => return store_failed(e),
    };
    let ar = match ac::decode(&data) {
        Ok(ar) => ar,
        Err(e) => {
            return html(
                StatusCode::OK,
                "Action result",
                &format!(
                    "<h1>Action result <code>{hash}</code></h1><p class=\"bad\">The entry ({}) is not a valid ActionResult: {}</p>{}",
                    bytes(data.len() as u64),
                    esc(&e.to_string()),
                    preview(
                        &data[..data.len().min(PREVIEW as usize)],
                        data.len() as u64 <= PREVIEW
                    )
                ),
            );
        }
    };
    let missing = match ac::missing_blobs(&*state.store, &ar).await {
        Ok(m) => m,
        Err(e) => return store_failed(e),
    };
    let mut out = format!(
        "<h1>Action result <code>{hash}</code></h1><table class=\"facts\">\
         <tr><th>exit code</th><td id=\"exit-code\">{}</td></tr>",
        ar.exit_code
    );
    if let Some(m) = &ar.execution_metadata {
        let ts = |t: &Option<bazel_remote_apis::google::protobuf::Timestamp>| {
            t.as_ref()
                .map_or_else(|| "–".to_string(), |t| utc(t.seconds, t.nanos))
        };
        let _ = write!(
            out,
            "<tr><th>worker</th><td>{}</td></tr>\
             <tr><th>queued</th><td>{}</td></tr>\
             <tr><th>worker start</th><td>{}</td></tr>\
             <tr><th>execution</th><td>{} → {}</td></tr>\
             <tr><th>worker completed</th><td>{}</td></tr>",
            esc(&m.worker),
            ts(&m.queued_timestamp),
            ts(&m.worker_start_timestamp),
            ts(&m.execution_start_timestamp),
            ts(&m.execution_completed_timestamp),
            ts(&m.worker_completed_timestamp),
        );
    }
    out.push_str("</table>");
    if missing.is_empty() {
        out.push_str("<p class=\"good\" id=\"complete\">Every referenced blob is in the CAS: a client gets this entry as a hit.</p>");
    } else {
        let _ = write!(
            out,
            "<h2 class=\"bad\">Missing from the CAS ({})</h2><p>A client gets a miss for this entry until they are uploaded again.</p><ul id=\"missing\">",
            missing.len()
        );
        for d in &missing {
            let _ = write!(out, "<li>{}</li>", cas_link(d));
        }
        out.push_str("</ul>");
    }
    out.push_str(
        "<h2>Output files</h2><table id=\"output-files\"><tr><th>path</th><th>size</th>\
         <th>digest</th><th>executable</th><th></th></tr>",
    );
    for f in &ar.output_files {
        let download = match f.digest.as_ref().map(Digest::from_reapi) {
            Some(Ok(d)) => format!("<a href=\"/cas/{}\" download>download</a>", d.hash.to_hex()),
            _ => String::new(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{download}</td></tr>",
            esc(&f.path),
            bytes(f.digest.as_ref().map_or(0, |d| d.size_bytes.max(0) as u64)),
            reapi_link(f.digest.as_ref()),
            if f.is_executable { "yes" } else { "" },
        );
    }
    out.push_str("</table>");
    if !ar.output_directories.is_empty() {
        out.push_str("<h2>Output directories</h2>");
        for d in &ar.output_directories {
            let _ = write!(
                out,
                "<h3>{}</h3><p>Tree {}</p>",
                esc(&d.path),
                reapi_link(d.tree_digest.as_ref())
            );
            let tree = match d.tree_digest.as_ref().map(Digest::from_reapi) {
                Some(Ok(t)) => ac::read_tree(&*state.store, &t).await,
                _ => Ok(None),
            };
            match tree {
                Ok(Some(tree)) => {
                    let _ = write!(
                        out,
                        "<table class=\"tree\"><tr><th>path</th><th>size</th><th>digest</th><th>executable</th></tr>{}</table>",
                        tree_listing(&tree, &d.path)
                    );
                }
                Ok(None) => {
                    out.push_str("<p class=\"bad\">The Tree is missing or does not decode.</p>")
                }
                Err(e) => {
                    let _ = write!(out, "<p class=\"bad\">{}</p>", esc(&e.to_string()));
                }
            }
        }
    }
    #[allow(deprecated)] // older clients still fill the split symlink fields
    let symlinks: Vec<&re::OutputSymlink> = ar
        .output_symlinks
        .iter()
        .chain(&ar.output_file_symlinks)
        .chain(&ar.output_directory_symlinks)
        .collect();
    if !symlinks.is_empty() {
        out.push_str("<h2>Output symlinks</h2><table><tr><th>path</th><th>target</th></tr>");
        for l in symlinks {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td></tr>",
                esc(&l.path),
                esc(&l.target)
            );
        }
        out.push_str("</table>");
    }
    out.push_str(&output_stream(state, "stdout", &ar.stdout_raw, ar.stdout_digest.as_ref()).await);
    out.push_str(&output_stream(state, "stderr", &ar.stderr_raw, ar.stderr_digest.as_ref()).await);
    html(StatusCode::OK, "Action result", &out)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty() && !n.contains('/') && n != "." && n != ".."
}

fn plausible_directory(d: &re::Directory) -> bool {
    let entries = d.files.len() + d.directories.len() + d.symlinks.len();
    entries > 0
        && d.files.iter().all(|f| {
            valid_name(&f.name)
                && f.digest
                    .as_ref()
                    .is_some_and(|d| Digest::from_reapi(d).is_ok())
        })
        && d.directories.iter().all(|s| {
            valid_name(&s.name)
                && s.digest
                    .as_ref()
                    .is_some_and(|d| Digest::from_reapi(d).is_ok())
        })
        && d.symlinks.iter().all(|l| valid_name(&l.name))
}

fn directory_listing(d: &re::Directory) -> String {
    let mut out = String::from(
        "<table class=\"listing\"><tr><th>name</th><th>size</th><th>digest</th><th>executable</th></tr>",
    );
    for sub in &d.directories {
        let link = match sub.digest.as_ref().map(Digest::from_reapi) {
            Some(Ok(dd)) => format!(
                "<a href=\"/ui/cas/{h}?as=directory\">{h}</a>/{}",
                dd.size,
                h = dd.hash.to_hex()
            ),
            _ => "–".to_string(),
        };
        let _ = write!(
            out,
            "<tr><td>{}/</td><td></td><td>{link}</td><td></td></tr>",
            esc(&sub.name)
        );
    }
    entry_rows(&mut out, "", d);
    out.push_str("</table>");
    out
}

pub(super) async fn blob(state: &HttpState, hash: &str, query: Option<&str>) -> Response<Body> {
    let q = match parse_query(query) {
        Ok(q) => q,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let hash = match parse_hash(hash) {
        Ok(h) => h,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let size = match state.store.contains(&BlobKey::cas(hash)).await {
        Ok(Some(size)) => size,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("no CAS blob {hash}")),
        Err(e) => return store_failed(e),
    };
    let mut out = format!(
        "<h1>CAS blob <code>{hash}</code></h1><p><span id=\"blob-size\">{}</span> ({size} bytes) · \
         <a href=\"/cas/{hash}\" download>download</a> · view as \
         <a href=\"?as=directory\">Directory</a> · <a href=\"?as=tree\">Tree</a> · \
         <a href=\"?as=blob\">bytes</a></p>",
        bytes(size)
    );
    let want = q.list_as.as_deref();
    let try_proto = match want {
        Some("blob") => false,
        Some(_) => true,
        None => size <= SNIFF_LIMIT,
    };
    if try_proto {
        match read_all(&*state.store, &BlobKey::cas(hash), MAX_ACTION_RESULT_BYTES).await {
            Ok(Some(data)) => {
                let tree = (want != Some("directory"))
                    .then(|| re::Tree::decode(data.as_slice()).ok())
                    .flatten()
                    .filter(|t| {
                        want == Some("tree") || t.root.as_ref().is_some_and(plausible_directory)
                    });
                if let Some(tree) = tree {
                    let _ = write!(
                        out,
                        "<h2>Tree</h2><table class=\"tree\"><tr><th>path</th><th>size</th><th>digest</th><th>executable</th></tr>{}</table>",
                        tree_listing(&tree, ".")
                    );
                    return html(StatusCode::OK, "CAS blob", &out);
                }
                let dir = (want != Some("tree"))
                    .then(|| re::Directory::decode(data.as_slice()).ok())
                    .flatten()
                    .filter(|d| want == Some("directory") || plausible_directory(d));
                if let Some(dir) = dir {
                    out.push_str("<h2>Directory</h2>");
                    out.push_str(&directory_listing(&dir));
                    return html(StatusCode::OK, "CAS blob", &out);
                }
                if let Some(w) = want {
                    let _ = write!(
                        out,
                        "<p class=\"bad\">This blob does not decode as a {}.</p>",
                        esc(w)
                    );
                }
            }
            Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("no CAS blob {hash}")),
            Err(StoreError::TooLarge { .. }) => {
                out.push_str("<p class=\"bad\">Too large to decode as a Directory or Tree.</p>");
            }
            Err(e) => return store_failed(e),
        }
    }
    match head_of(state, hash, PREVIEW).await {
        Ok(Some((data, size))) => {
            let _ = write!(
                out,
                "<h2>{}</h2>{}",
                if size > PREVIEW {
                    "First 4 KiB"
                } else {
                    "Content"
                },
                preview(&data, size <= PREVIEW)
            );
        }
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("no CAS blob {hash}")),
        Err(e) => return store_failed(e),
    }
    html(StatusCode::OK, "CAS blob", &out)
}
