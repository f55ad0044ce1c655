//! `/ui/ac/<hash>`: an ActionResult for a person, and the blobs it
//! references that the CAS lacks (the store crate's completeness check).

use std::fmt::Write as _;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use http::{Response, StatusCode};

use super::listing::tree_listing;
use super::{
    PREVIEW, cas_link, download_path, head_of, parse_hash, parse_query, preview, reapi_link,
    store_failed,
};
use crate::http::{Body, HttpState};
use crate::web::html::{bytes, error_page, esc, html, utc};
use bazel_cache_digest::{BlobKey, Digest, DigestFunction, Kind};
use bazel_cache_store::action_result::{self as ac, MAX_ACTION_RESULT_BYTES};
use bazel_cache_store::read_all;

/// How much of stdout/stderr is shown inline.
const INLINE_OUTPUT: u64 = 64 * 1024;

/// stdout or stderr: inline bytes, or the first 64 KiB of the blob.
async fn output_stream(
    state: &HttpState,
    function: DigestFunction,
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
    let Some(Ok(d)) = digest.map(|d| Digest::from_reapi(function, d)) else {
        return format!("<h3>{name}</h3><p class=\"quiet\">empty</p>");
    };
    if d.size == 0 {
        return format!("<h3>{name}</h3><p class=\"quiet\">empty</p>");
    }
    let link = format!(
        "<a href=\"{}\">whole blob ({})</a> · {}",
        download_path(&d.hash),
        bytes(d.size),
        cas_link(&d),
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

pub(in crate::web) async fn action(
    state: &HttpState,
    hash: &str,
    query: Option<&str>,
) -> Response<Body> {
    let function = match parse_query(query) {
        Ok(q) => q.function,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let hash = match parse_hash(function, hash) {
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
    let ar = match ac::decode(function, &data) {
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
    let missing = match ac::missing_blobs(&*state.store, function, &ar).await {
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
        let download = match f.digest.as_ref().map(|d| Digest::from_reapi(function, d)) {
            Some(Ok(d)) => format!(
                "<a href=\"{}\" download>download</a>",
                download_path(&d.hash)
            ),
            _ => String::new(),
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{download}</td></tr>",
            esc(&f.path),
            bytes(f.digest.as_ref().map_or(0, |d| d.size_bytes.max(0) as u64)),
            reapi_link(function, f.digest.as_ref()),
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
                reapi_link(function, d.tree_digest.as_ref())
            );
            let tree = match d
                .tree_digest
                .as_ref()
                .map(|t| Digest::from_reapi(function, t))
            {
                Some(Ok(t)) => ac::read_tree(&*state.store, &t).await,
                _ => Ok(None),
            };
            match tree {
                Ok(Some(tree)) => {
                    let _ = write!(
                        out,
                        "<table class=\"tree\"><tr><th>path</th><th>size</th><th>digest</th><th>executable</th></tr>{}</table>",
                        tree_listing(function, &tree, &d.path)
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
    out.push_str(
        &output_stream(
            state,
            function,
            "stdout",
            &ar.stdout_raw,
            ar.stdout_digest.as_ref(),
        )
        .await,
    );
    out.push_str(
        &output_stream(
            state,
            function,
            "stderr",
            &ar.stderr_raw,
            ar.stderr_digest.as_ref(),
        )
        .await,
    );
    html(StatusCode::OK, "Action result", &out)
}
