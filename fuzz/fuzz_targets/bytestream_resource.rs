//! ByteStream resource names (`ReadRequest`/`WriteRequest`/
//! `QueryWriteStatusRequest.resource_name`), fed arbitrary strings to both
//! parsers. Checks: no panic; accepted names round-trip (the parts are
//! slices of the name, and rendering them, with `blake3/` before a BLAKE3
//! hash, parses to the same value); the
//! instance never contains a reserved segment; and an error message stays
//! short whatever the name's length, because it travels back to the client
//! in the `grpc-message` trailer, where HTTP/2 header limits apply.
#![no_main]

use bazel_cache::grpc::resource::{self, ReadResource, WriteResource};
use bazel_cache_store::Encoding;
use libfuzzer_sys::fuzz_target;

/// Reserved segments (the REAPI spec's list): never part of an instance name.
const KEYWORDS: [&str; 7] = [
    "blobs",
    "uploads",
    "actions",
    "actionResults",
    "operations",
    "capabilities",
    "compressed-blobs",
];

/// Longest error message accepted for any input. The name is quoted cut to
/// 300 bytes and the offending segment to 64, both `{:?}`-escaped (at most
/// 6 characters a byte, `\u{1e}`), plus fixed text: about 2,500 bytes at
/// worst, whatever the name's length.
const MAX_MESSAGE: usize = 4096;

fn blob_part(encoding: Encoding) -> &'static str {
    match encoding {
        Encoding::Identity => "blobs",
        Encoding::Zstd => "compressed-blobs/zstd",
    }
}

fn with_instance(instance: &str, rest: String) -> String {
    if instance.is_empty() {
        rest
    } else {
        format!("{instance}/{rest}")
    }
}

fn check_instance(name: &str, instance: &str) {
    assert!(
        name.starts_with(instance),
        "{name:?}: instance {instance:?} is not a prefix"
    );
    if !instance.is_empty() {
        for segment in instance.split('/') {
            assert!(
                !KEYWORDS.contains(&segment),
                "{name:?}: instance has {segment:?}"
            );
        }
    }
}

fn check_read(name: &str, r: &ReadResource<'_>) {
    check_instance(name, r.instance);
    let rendered = with_instance(
        r.instance,
        format!(
            "{}/{}",
            blob_part(r.encoding),
            r.digest.blobs_path().trim_start_matches("blobs/")
        ),
    );
    assert_eq!(
        resource::parse_read(&rendered).as_ref(),
        Ok(r),
        "{name:?} -> {rendered:?}"
    );
}

fn check_write(name: &str, w: &WriteResource<'_>) {
    check_instance(name, w.instance);
    assert!(
        !w.uuid.is_empty() && !w.uuid.contains('/'),
        "{name:?}: uuid {:?}",
        w.uuid
    );
    assert!(
        name.ends_with(w.metadata),
        "{name:?}: metadata {:?}",
        w.metadata
    );
    let mut rendered = with_instance(
        w.instance,
        format!(
            "uploads/{}/{}/{}",
            w.uuid,
            blob_part(w.encoding),
            w.digest.blobs_path().trim_start_matches("blobs/")
        ),
    );
    if !w.metadata.is_empty() {
        rendered.push('/');
        rendered.push_str(w.metadata);
    }
    assert_eq!(
        resource::parse_write(&rendered).as_ref(),
        Ok(w),
        "{name:?} -> {rendered:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    // Protobuf `string` fields are UTF-8; tonic refuses anything else.
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    match resource::parse_read(name) {
        Ok(r) => check_read(name, &r),
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.len() <= MAX_MESSAGE,
                "read error of {} bytes",
                message.len()
            );
        }
    }
    match resource::parse_write(name) {
        Ok(w) => check_write(name, &w),
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.len() <= MAX_MESSAGE,
                "write error of {} bytes",
                message.len()
            );
        }
    }
});
