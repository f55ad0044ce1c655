//! Refused requests: uploads that fail verification (and store nothing),
//! write-protocol errors and malformed resource names.

use super::helpers::{
    EMPTY_HEX, KIB, MIB, assert_code, client, query, read, read_name, requests, send, temp_files,
    upload_name, write,
};
use crate::support::{self, Server, hex};
use bazel_remote_apis::google::bytestream::WriteRequest;
use tonic::Code;

async fn num_files(s: &Server) -> u64 {
    let body = reqwest::get(format!("{}/status", s.http_url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    status["NumFiles"].as_u64().unwrap()
}

#[tokio::test]
async fn failed_verification_stores_nothing() {
    let s = Server::start_grpc(&[]);
    let mut c = client(&s).await;
    let data = support::noise(MIB + 17, 4);
    let before = num_files(&s).await;
    let h = hex(&data);
    let n = data.len();
    let cases = [
        // The hash of other bytes.
        (
            format!("uploads/u1/blobs/{}/{n}", hex(b"other")),
            "digest mismatch",
        ),
        // Fewer bytes sent than declared.
        (format!("uploads/u2/blobs/{h}/{}", n + 1), "size too large"),
        // More bytes sent than declared.
        (format!("uploads/u3/blobs/{h}/{}", n - 1), "size too small"),
    ];
    for (name, what) in &cases {
        let e = assert_code(
            write(&mut c, name, &data, 64 * KIB).await,
            Code::InvalidArgument,
            what,
        );
        assert!(e.message().contains("mismatch"), "{what}: {}", e.message());
        // Failed for good: nothing committed, the client starts over.
        assert_eq!(query(&mut c, name).await.unwrap(), (0, false), "{what}");
    }
    // Compressed: bad hash, and bytes that are not zstd at all.
    let z = zstd::encode_all(&data[..], 1).unwrap();
    let name = format!("uploads/u4/compressed-blobs/zstd/{}/{n}", hex(b"other"));
    assert_code(
        write(&mut c, &name, &z, 64 * KIB).await,
        Code::InvalidArgument,
        "zstd digest mismatch",
    );
    let name = format!("uploads/u5/compressed-blobs/zstd/{h}/{n}");
    assert_code(
        write(&mut c, &name, &data, 64 * KIB).await,
        Code::InvalidArgument,
        "not zstd",
    );

    assert_code(
        read(&mut c, &read_name(&data)).await,
        Code::NotFound,
        "nothing stored",
    );
    assert_eq!(num_files(&s).await, before);
    assert_eq!(temp_files(&s), 0, "temp files left");
}

#[tokio::test]
async fn write_protocol_errors() {
    let s = Server::start_grpc(&["--max_blob_size", "1000"]);
    let mut c = client(&s).await;
    let data = support::noise(900, 5);

    // A wrong write_offset mid-stream.
    let name = upload_name(&data, false);
    let mut reqs = requests(&name, &data, 0, 100, true);
    reqs[3].write_offset += 1;
    assert_code(
        send(&mut c, reqs).await,
        Code::InvalidArgument,
        "wrong write_offset",
    );
    // A different resource name on a later request.
    let mut reqs = requests(&upload_name(&data, false), &data, 0, 100, true);
    reqs[2].resource_name = upload_name(&data, false);
    assert_code(
        send(&mut c, reqs).await,
        Code::InvalidArgument,
        "name changed",
    );
    // A first request without a name; a negative offset; no request at all.
    let mut reqs = requests("", &data, 0, 100, true);
    reqs[0].resource_name.clear();
    assert_code(send(&mut c, reqs).await, Code::InvalidArgument, "no name");
    let mut reqs = requests(&upload_name(&data, false), &data, 0, 100, true);
    reqs[0].write_offset = -1;
    assert_code(
        send(&mut c, reqs).await,
        Code::InvalidArgument,
        "negative offset",
    );
    assert_code(
        send(&mut c, vec![]).await,
        Code::InvalidArgument,
        "empty stream",
    );
    // Data after finish_write.
    let mut reqs = requests(&upload_name(&data, false), &data, 0, 450, true);
    reqs.push(WriteRequest {
        write_offset: data.len() as i64,
        data: vec![1, 2, 3],
        ..Default::default()
    });
    let e = assert_code(
        send(&mut c, reqs).await,
        Code::InvalidArgument,
        "data after finish_write",
    );
    assert!(
        e.message().contains("after finish_write"),
        "{}",
        e.message()
    );
    // Resuming an upload that does not exist.
    let name = upload_name(&data, false);
    assert_code(
        send(&mut c, requests(&name, &data[100..], 100, 100, true)).await,
        Code::InvalidArgument,
        "resume of unknown upload",
    );
    // Unknown here (another replica's, or lost in a restart): committed
    // nothing, so the client starts over from offset 0.
    assert_eq!(
        query(&mut c, &name).await.unwrap(),
        (0, false),
        "unknown upload"
    );

    // Endless compressed input that decodes to nothing (skippable frames).
    let small = b"0123456789";
    let mut z = zstd::encode_all(&small[..], 1).unwrap();
    for _ in 0..3 {
        z.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
        z.extend_from_slice(&(MIB as u32).to_le_bytes());
        z.extend(std::iter::repeat_n(0u8, MIB));
    }
    let e = assert_code(
        write(&mut c, &upload_name(small, true), &z, 64 * KIB).await,
        Code::InvalidArgument,
        "compressed bytes without end",
    );
    assert!(e.message().contains("compressed bytes"), "{}", e.message());

    // Over max_blob_size.
    let big = support::noise(1001, 6);
    let e = assert_code(
        write(&mut c, &upload_name(&big, false), &big, 500).await,
        Code::InvalidArgument,
        "too large",
    );
    assert!(e.message().contains("max_blob_size"), "{}", e.message());
}

#[tokio::test]
async fn malformed_resource_names() {
    let s = Server::start_grpc(&[]);
    let mut c = client(&s).await;
    let h = hex(b"x");
    let reads = [
        format!("blobs/{}/1", h.to_uppercase()),
        format!("blobs/{}/1", &h[..60]),
        format!("blobs/sha384/{h}/1"),
        format!("compressed-blobs/gzip/{h}/1"),
        format!("blobs/{h}"),
        format!("blobs/{h}/-1"),
        format!("blobs/{h}/1/extra"),
        "garbage".to_string(),
        String::new(),
        format!("uploads/u/blobs/{h}/1"),
    ];
    for name in &reads {
        let e = assert_code(read(&mut c, name).await, Code::InvalidArgument, name);
        assert!(
            e.message().contains(&format!("{name:?}")),
            "{name}: {}",
            e.message()
        );
    }
    let e = assert_code(
        read(&mut c, &reads[2]).await,
        Code::InvalidArgument,
        "sha384",
    );
    assert!(e.message().contains("sha384"), "{}", e.message());
    let e = assert_code(read(&mut c, &reads[3]).await, Code::InvalidArgument, "gzip");
    assert!(e.message().contains("gzip"), "{}", e.message());
    // `sha256/` may be given, though clients must omit it.
    assert_eq!(
        read(&mut c, &format!("blobs/sha256/{EMPTY_HEX}/0"))
            .await
            .unwrap(),
        b""
    );

    let writes = [
        format!("uploads/u/blobs/{}/1", h.to_uppercase()),
        format!("uploads/u/blobs/md5/{h}/1"),
        format!("uploads/u/compressed-blobs/gzip/{h}/1"),
        format!("uploads/u/blobs/{h}"),
        format!("uploads//blobs/{h}/1"),
        format!("blobs/{h}/1"),
        "garbage".to_string(),
    ];
    for name in &writes {
        let e = assert_code(
            write(&mut c, name, b"x", 1).await,
            Code::InvalidArgument,
            name,
        );
        assert!(
            e.message().contains(&format!("{name:?}")),
            "{name}: {}",
            e.message()
        );
        assert_code(query(&mut c, name).await, Code::InvalidArgument, name);
    }
    // `sha256/` and trailing metadata are accepted on uploads.
    let name = format!("uploads/u/blobs/sha256/{h}/1/some/metadata");
    assert_eq!(write(&mut c, &name, b"x", 1).await.unwrap(), 1);
}
