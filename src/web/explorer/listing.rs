//! Directory and Tree listings whose entries link on, and when a blob is
//! plausibly a Directory (decodes, and every name and digest is well
//! formed).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use prost::Message;

use super::{reapi_link, ui_cas};
use crate::web::html::esc;
use bazel_cache_digest::{Digest, DigestFunction, Hash};

/// Most files listed per output directory.
const MAX_LISTED: usize = 2000;

fn directory_digest(function: DigestFunction, d: &re::Directory) -> Hash {
    Hash::of_with(function, &d.encode_to_vec())
}

/// The rows of a Directory's files and symlinks, names after `prefix`.
fn entry_rows(out: &mut String, function: DigestFunction, prefix: &str, dir: &re::Directory) {
    for f in &dir.files {
        let _ = write!(
            out,
            "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(prefix),
            esc(&f.name),
            f.digest.as_ref().map_or(0, |d| d.size_bytes),
            reapi_link(function, f.digest.as_ref()),
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
pub(super) fn tree_listing(function: DigestFunction, tree: &re::Tree, prefix: &str) -> String {
    let children: HashMap<Hash, &re::Directory> = tree
        .children
        .iter()
        .map(|c| (directory_digest(function, c), c))
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
        entry_rows(&mut rows, function, &format!("{path}/"), dir);
        for sub in dir.directories.iter().rev() {
            let child = sub
                .digest
                .as_ref()
                .and_then(|d| Digest::from_reapi(function, d).ok())
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

fn valid_name(n: &str) -> bool {
    !n.is_empty() && !n.contains('/') && n != "." && n != ".."
}

pub(super) fn plausible_directory(function: DigestFunction, d: &re::Directory) -> bool {
    let entries = d.files.len() + d.directories.len() + d.symlinks.len();
    entries > 0
        && d.files.iter().all(|f| {
            valid_name(&f.name)
                && f.digest
                    .as_ref()
                    .is_some_and(|d| Digest::from_reapi(function, d).is_ok())
        })
        && d.directories.iter().all(|s| {
            valid_name(&s.name)
                && s.digest
                    .as_ref()
                    .is_some_and(|d| Digest::from_reapi(function, d).is_ok())
        })
        && d.symlinks.iter().all(|l| valid_name(&l.name))
}

pub(super) fn directory_listing(function: DigestFunction, d: &re::Directory) -> String {
    let mut out = String::from(
        "<table class=\"listing\"><tr><th>name</th><th>size</th><th>digest</th><th>executable</th></tr>",
    );
    for sub in &d.directories {
        let link = match sub.digest.as_ref().map(|d| Digest::from_reapi(function, d)) {
            Some(Ok(dd)) => format!(
                "<a href=\"{}\">{}</a>/{}",
                ui_cas(&dd.hash, Some("directory")),
                dd.hash.to_hex(),
                dd.size,
            ),
            _ => "–".to_string(),
        };
        let _ = write!(
            out,
            "<tr><td>{}/</td><td></td><td>{link}</td><td></td></tr>",
            esc(&sub.name)
        );
    }
    entry_rows(&mut out, function, "", d);
    out.push_str("</table>");
    out
}
