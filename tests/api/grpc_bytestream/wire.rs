//! Read's answer byte for byte. The server frames it itself rather than
//! through tonic's encoder (src/grpc/bytestream/read_frames.rs), so these
//! tests read the raw HTTP/2 body instead of trusting a client that
//! accepts any valid encoding: every message must be exactly what the
//! generated `ReadResponse` encodes to, behind the 5-byte gRPC prefix.

use super::helpers::{KIB, client, read_name, upload_name, write};
use crate::support::{self, Server};
use bazel_remote_apis::google::bytestream::{ReadRequest, ReadResponse};
use bytes::Bytes;
use http_body_util::BodyExt;
use prost::Message;
use tower::ServiceExt;

/// `message` as one gRPC frame: flag, big-endian length, bytes.
fn grpc_frame(flag: u8, message: &[u8]) -> Bytes {
    let mut frame = vec![flag];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame.into()
}

/// Sends one Read call as raw HTTP/2 with `headers` added; returns the
/// response head, its body and its trailers.
async fn raw_read(
    s: &Server,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (http::response::Parts, Bytes, Option<http::HeaderMap>) {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "{}/google.bytestream.ByteStream/Read",
            s.grpc_endpoint()
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(tonic::body::Body::new(http_body_util::Full::new(body)))
        .unwrap();
    let response = s.channel().await.oneshot(request).await.unwrap();
    let (head, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (head, collected.to_bytes(), trailers)
}

/// Splits a gRPC body into its frames' (flag, message) pairs.
fn frames(mut body: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "a frame prefix cut short");
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert!(body.len() >= 5 + len, "a frame cut short");
        out.push((body[0], &body[5..5 + len]));
        body = &body[5 + len..];
    }
    out
}

/// A blob of several chunks comes back as uncompressed frames, each the
/// generated message's exact encoding, together the blob, then status 0.
#[tokio::test]
async fn a_read_answer_is_the_generated_messages_framed() {
    let s = Server::start_grpc(&[]);
    let data = support::noise(600 * KIB + 7, 21);
    write(
        &mut client(&s).await,
        &upload_name(&data, false),
        &data,
        64 * KIB,
    )
    .await
    .unwrap();
    let request = ReadRequest {
        resource_name: read_name(&data),
        read_offset: 0,
        read_limit: 0,
    }
    .encode_to_vec();
    let (head, body, trailers) = raw_read(&s, &[], grpc_frame(0, &request)).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["content-type"], "application/grpc");
    let frames = frames(&body);
    assert!(
        frames.len() >= 3,
        "{} frames for a 600 KiB blob",
        frames.len()
    );
    let mut got = Vec::new();
    for (flag, message) in frames {
        assert_eq!(flag, 0, "a frame marked compressed");
        let decoded = ReadResponse::decode(message).unwrap();
        assert!(!decoded.data.is_empty(), "an empty message");
        assert_eq!(
            decoded.encode_to_vec(),
            message,
            "not the canonical encoding"
        );
        got.extend_from_slice(&decoded.data);
    }
    assert!(got == data, "the frames' data is not the blob");
    assert_eq!(trailers.expect("trailers")["grpc-status"], "0");

    // A refusal before any message is a trailers-only answer.
    let missing = ReadRequest {
        resource_name: read_name(b"never stored"),
        read_offset: 0,
        read_limit: 0,
    }
    .encode_to_vec();
    let (head, body, _) = raw_read(&s, &[], grpc_frame(0, &missing)).await;
    assert_eq!(head.headers["grpc-status"], "5", "NOT_FOUND");
    assert!(body.is_empty());
}

/// The server enables no gRPC message compression, so a compressed
/// request is refused as UNIMPLEMENTED (as tonic refuses it for the other
/// methods), and a compressed flag without an encoding is a protocol
/// error; neither is read as a request.
#[tokio::test]
async fn compressed_read_requests_are_refused() {
    let s = Server::start_grpc(&[]);
    let request = ReadRequest {
        resource_name: read_name(b"x"),
        read_offset: 0,
        read_limit: 0,
    }
    .encode_to_vec();
    let (head, body, _) = raw_read(&s, &[("grpc-encoding", "gzip")], grpc_frame(1, &request)).await;
    assert_eq!(head.headers["grpc-status"], "12", "UNIMPLEMENTED");
    assert!(
        head.headers["grpc-message"]
            .to_str()
            .unwrap()
            .contains("gzip"),
        "{:?}",
        head.headers["grpc-message"]
    );
    assert!(body.is_empty());

    let (head, _, trailers) = raw_read(&s, &[], grpc_frame(1, &request)).await;
    let status = head
        .headers
        .get("grpc-status")
        .or_else(|| trailers.as_ref().and_then(|t| t.get("grpc-status")))
        .expect("a status");
    assert_eq!(status, "13", "INTERNAL");
}
