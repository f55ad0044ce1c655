//! The HTTP cache path parser (`[/<instance>...]/ac|cas/<sha256>`), fed
//! arbitrary request paths. Beyond "never panics", it checks what the
//! handlers rely on: an accepted path names a well-formed key, its instance
//! segments can never act as file-system traversal, and the parse is stable
//! (rendering the result and parsing it again gives the same answer).
#![no_main]

use bazel_cache::http::path::{self, PathError};
use bazel_cache_digest::DigestFunction;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // hyper hands the handlers a `&str`; non-UTF-8 never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The X-Digest-Function header, absent or one of the functions, by the
    // input's length (the path bytes stay the whole input).
    let header = match text.len() % 3 {
        0 => None,
        1 => Some(DigestFunction::Sha256),
        _ => Some(DigestFunction::Blake3),
    };
    match path::parse(text, header) {
        Ok(p) => {
            for segment in p.instance.split('/').filter(|_| !p.instance.is_empty()) {
                assert!(
                    !segment.is_empty() && segment != "." && segment != "..",
                    "{text:?}: accepted instance segment {segment:?}"
                );
                assert!(
                    segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')),
                    "{text:?}: accepted instance segment {segment:?}"
                );
            }
            let hex = p.hash.to_hex();
            assert!(
                text.ends_with(&hex),
                "{text:?}: hash {hex} is not its last segment"
            );
            if let Some(f) = header {
                assert_eq!(p.hash.function(), f, "{text:?}: the header's function");
            }
            // Rendered with the function in the path, never the header.
            let function = p.hash.function().resource_segment();
            let rendered = if p.instance.is_empty() {
                format!("/{function}{}/{hex}", p.kind.as_str())
            } else {
                format!("/{}/{function}{}/{hex}", p.instance, p.kind.as_str())
            };
            assert_eq!(
                path::parse(&rendered, None).as_ref(),
                Ok(&p),
                "{text:?} -> {rendered:?}"
            );
        }
        Err(e) => {
            // Every refusal renders as a message (the 400/404 body).
            let message = e.to_string();
            assert!(!message.is_empty());
            if let PathError::BadInstance(segment) = &e {
                assert!(text.contains(segment.as_str()));
            }
        }
    }
});
