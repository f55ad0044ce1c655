//! The `/ui/explain` upload's `multipart/form-data` parser, fed arbitrary
//! bodies (and content types). Beyond "never panics": every part's bytes
//! lie inside the body, a part never contains the delimiter it was cut
//! at, and an accepted boundary is one the parser can search for.
#![no_main]

use bazel_cache::web::multipart;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first line is the Content-Type, the rest the body.
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let Ok(content_type) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let body = data.get(split + 1..).unwrap_or(&[]);
    let boundary = multipart::boundary(content_type).unwrap_or_else(|| "b".to_string());
    assert!(!boundary.contains('\r') && !boundary.contains('\n'));
    if let Ok(parts) = multipart::parse(body, &boundary) {
        let delimiter = format!("\r\n--{boundary}");
        let range = body.as_ptr_range();
        for part in parts {
            let inner = part.data.as_ptr_range();
            assert!(range.start <= inner.start && inner.end <= range.end);
            assert!(
                !part.data.windows(delimiter.len()).any(|w| w == delimiter.as_bytes()),
                "a part holds its delimiter"
            );
        }
    }
});
