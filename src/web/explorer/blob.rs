//! `/ui/cas/<hash>`: a blob's size and first bytes, or its listing when
//! it is a Directory or Tree (`?as=` or, without it, by decoding).

use std::fmt::Write as _;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use http::{Response, StatusCode};
use prost::Message;

use super::listing::{directory_listing, plausible_directory, tree_listing};
use super::{
    PREVIEW, SNIFF_LIMIT, download_path, head_of, parse_hash, parse_query, preview, store_failed,
    ui_cas,
};
use crate::http::{Body, HttpState};
use crate::web::html::{bytes, error_page, esc, html};
use bazel_cache_digest::BlobKey;
use bazel_cache_store::action_result::MAX_ACTION_RESULT_BYTES;
use bazel_cache_store::{StoreError, read_all};

pub(in crate::web) async fn blob(
    state: &HttpState,
    hash: &str,
    query: Option<&str>,
) -> Response<Body> {
    let q = match parse_query(query) {
        Ok(q) => q,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let hash = match parse_hash(q.function, hash) {
        Ok(h) => h,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &e),
    };
    let size = match state.store.contains(&BlobKey::cas(hash)).await {
        Ok(Some(size)) => size,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("no CAS blob {hash}")),
        Err(e) => return store_failed(e),
    };
    let mut out = format!(
        "<h1>CAS blob <code>{hex}</code> <small>{function}</small></h1>\
         <p><span id=\"blob-size\">{}</span> ({size} bytes) · \
         <a href=\"{}\" download>download</a> · view as \
         <a href=\"{}\">Directory</a> · <a href=\"{}\">Tree</a> · \
         <a href=\"{}\">bytes</a></p>",
        bytes(size),
        download_path(&hash),
        ui_cas(&hash, Some("directory")),
        ui_cas(&hash, Some("tree")),
        ui_cas(&hash, Some("blob")),
        hex = hash.to_hex(),
        function = hash.function(),
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
                        want == Some("tree")
                            || t.root
                                .as_ref()
                                .is_some_and(|r| plausible_directory(q.function, r))
                    });
                if let Some(tree) = tree {
                    let _ = write!(
                        out,
                        "<h2>Tree</h2><table class=\"tree\"><tr><th>path</th><th>size</th><th>digest</th><th>executable</th></tr>{}</table>",
                        tree_listing(q.function, &tree, ".")
                    );
                    return html(StatusCode::OK, "CAS blob", &out);
                }
                let dir = (want != Some("tree"))
                    .then(|| re::Directory::decode(data.as_slice()).ok())
                    .flatten()
                    .filter(|d| want == Some("directory") || plausible_directory(q.function, d));
                if let Some(dir) = dir {
                    out.push_str("<h2>Directory</h2>");
                    out.push_str(&directory_listing(q.function, &dir));
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
