//! Round trips: chunked, with read offsets and limits, zstd both ways in
//! both storage modes, a 64+ MiB streamed upload, and the same CAS seen
//! through HTTP.

use super::helpers::{
    EMPTY_HEX, KIB, MIB, assert_code, client, query, read, read_at, read_name, text, upload_name,
    write,
};
use crate::support::{self, Server, hex};
use bazel_remote_apis::google::bytestream::{ReadRequest, WriteRequest};
use futures_util::StreamExt;
use tonic::Code;

fn zstd_read_name(data: &[u8]) -> String {
    format!("compressed-blobs/zstd/{}/{}", hex(data), data.len())
}

#[tokio::test]
async fn multi_chunk_round_trip() {
    let s = Server::start_grpc(&[]);
    let mut c = client(&s).await;
    let data = support::noise(5 * MIB, 1);
    let name = upload_name(&data, false);
    assert_eq!(
        write(&mut c, &name, &data, 64 * KIB).await.unwrap(),
        data.len() as i64
    );
    // The finished upload is complete; the blob is readable in chunks.
    assert_eq!(
        query(&mut c, &name).await.unwrap(),
        (data.len() as i64, true)
    );
    let (back, sizes) = read_at(&mut c, &read_name(&data), 0, 0).await.unwrap();
    assert!(back == data, "read back differs");
    assert!(sizes.len() > 1, "{sizes:?}");
    let (last, full) = sizes.split_last().unwrap();
    assert!(
        full.iter().all(|n| (64 * KIB..=MIB).contains(n)),
        "{sizes:?}"
    );
    assert!(*last > 0 && *last <= MIB, "{sizes:?}");
    // Instance names don't matter for the CAS.
    assert!(
        read(&mut c, &format!("some/instance/{}", read_name(&data)))
            .await
            .unwrap()
            == data
    );
}

/// Many Reads at once on one HTTP/2 connection, one of them read slowly
/// (its flow-control window closes and the server waits on it): every
/// blob arrives whole. The gRPC port gathers the frames of all streams
/// into shared writes (listen/coalesce.rs); a frame cut or misplaced there
/// shows here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_on_one_connection_arrive_whole() {
    let s = Server::start_grpc(&[]);
    let mut c = client(&s).await;
    let blobs: Vec<Vec<u8>> = [4 * KIB, 100 * KIB + 1, MIB + 3, 3 * MIB]
        .into_iter()
        .enumerate()
        .map(|(i, n)| support::noise(n, 40 + i as u64))
        .collect();
    for data in &blobs {
        write(&mut c, &upload_name(data, false), data, 256 * KIB)
            .await
            .unwrap();
    }
    let slow = {
        let mut c = c.clone();
        let data = blobs[3].clone();
        tokio::spawn(async move {
            let mut stream = c
                .read(ReadRequest {
                    resource_name: read_name(&data),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let mut got = Vec::new();
            while let Some(msg) = stream.message().await.unwrap() {
                got.extend_from_slice(&msg.data);
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            got == data
        })
    };
    let reads = (0..32).map(|i| {
        let mut c = c.clone();
        let data = blobs[i % 3].clone();
        async move { read(&mut c, &read_name(&data)).await.unwrap() == data }
    });
    // A write left in the buffer with no flush to follow stalls a stream:
    // bounded, so that fails here instead of hanging.
    let limit = std::time::Duration::from_secs(60);
    let whole = tokio::time::timeout(limit, futures_util::future::join_all(reads))
        .await
        .expect("reads stalled");
    assert!(whole.iter().all(|w| *w), "{whole:?}");
    let slow = tokio::time::timeout(limit, slow)
        .await
        .expect("slow read stalled");
    assert!(slow.unwrap(), "the slow read differs");
}

#[tokio::test]
async fn read_offsets_and_limits() {
    let s = Server::start_grpc(&[]);
    let mut c = client(&s).await;
    let data = support::noise(300 * KIB + 7, 2);
    let name = read_name(&data);
    write(&mut c, &upload_name(&data, false), &data, 100 * KIB)
        .await
        .unwrap();
    let len = data.len() as i64;
    for (offset, limit) in [
        (0, 0),
        (1, 0),
        (1000, 10),
        (0, 1),
        (len - 1, 0),
        (len, 0),
        (5, len),
        (300 * KIB as i64, 3),
    ] {
        let (got, _) = read_at(&mut c, &name, offset, limit).await.unwrap();
        let start = offset as usize;
        let end = if limit == 0 {
            data.len()
        } else {
            (start + limit as usize).min(data.len())
        };
        assert!(
            got == data[start..end],
            "offset {offset} limit {limit}: {} bytes",
            got.len()
        );
    }
    assert_code(
        read_at(&mut c, &name, len + 1, 0).await,
        Code::OutOfRange,
        "offset past end",
    );
    assert_code(
        read_at(&mut c, &name, -1, 0).await,
        Code::InvalidArgument,
        "negative offset",
    );
    assert_code(
        read_at(&mut c, &name, 0, -1).await,
        Code::InvalidArgument,
        "negative limit",
    );

    // Missing, and present under another size: NOT_FOUND.
    let other = support::noise(10, 3);
    assert_code(
        read(&mut c, &read_name(&other)).await,
        Code::NotFound,
        "missing",
    );
    let wrong_size = format!("blobs/{}/{}", hex(&data), data.len() + 1);
    assert_code(
        read(&mut c, &wrong_size).await,
        Code::NotFound,
        "wrong size",
    );

    // The empty blob is always there.
    assert!(
        read(&mut c, &format!("blobs/{EMPTY_HEX}/0"))
            .await
            .unwrap()
            .is_empty()
    );
    let z = read(&mut c, &format!("compressed-blobs/zstd/{EMPTY_HEX}/0"))
        .await
        .unwrap();
    assert!(zstd::decode_all(&z[..]).unwrap().is_empty());
    assert_code(
        read_at(&mut c, &format!("blobs/{EMPTY_HEX}/0"), 1, 0).await,
        Code::OutOfRange,
        "offset past the empty blob",
    );
}

/// zstd both ways, in both storage modes (stored compressed: sent as stored;
/// stored plain: compressed on the fly).
#[tokio::test]
async fn zstd_round_trips() {
    for mode in ["zstd", "uncompressed"] {
        let s = Server::start_grpc(&["--storage_mode", mode]);
        let mut c = client(&s).await;

        // Written compressed, read plain and compressed.
        let a = text(3 * MIB + 11, 1);
        let za = zstd::encode_all(&a[..], 3).unwrap();
        let name = upload_name(&a, true);
        let committed = write(&mut c, &name, &za, 64 * KIB).await.unwrap();
        assert_eq!(
            committed,
            za.len() as i64,
            "{mode}: compressed bytes committed"
        );
        assert!(read(&mut c, &read_name(&a)).await.unwrap() == a, "{mode}");
        let z = read(&mut c, &zstd_read_name(&a)).await.unwrap();
        assert!(zstd::decode_all(&z[..]).unwrap() == a, "{mode}");

        // Written plain, read compressed (whole and from an offset).
        let b = text(2 * MIB + 5, 7);
        write(&mut c, &upload_name(&b, false), &b, 256 * KIB)
            .await
            .unwrap();
        let (z, _) = read_at(&mut c, &zstd_read_name(&b), 0, 0).await.unwrap();
        assert!(
            z.len() < b.len() / 4,
            "{mode}: {} bytes is not compressed",
            z.len()
        );
        assert!(zstd::decode_all(&z[..]).unwrap() == b, "{mode}");
        let offset = MIB + 3;
        let (z, _) = read_at(&mut c, &zstd_read_name(&b), offset as i64, 0)
            .await
            .unwrap();
        assert!(
            zstd::decode_all(&z[..]).unwrap() == b[offset..],
            "{mode}: offset read"
        );

        assert_code(
            read_at(&mut c, &zstd_read_name(&b), 0, 10).await,
            Code::InvalidArgument,
            "compressed read with read_limit",
        );
        assert_code(
            read_at(&mut c, &zstd_read_name(&b), b.len() as i64 + 1, 0).await,
            Code::OutOfRange,
            "compressed read past the end",
        );
    }
}

/// HTTP and ByteStream see the same CAS.
#[tokio::test]
async fn http_interop() {
    let s = Server::start_grpc(&[]);
    let mut c = client(&s).await;
    let http = reqwest::Client::new();

    let a = support::noise(700 * KIB, 12);
    let resp = http
        .put(format!("{}/cas/{}", s.http_url, hex(&a)))
        .body(a.clone())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    assert!(read(&mut c, &read_name(&a)).await.unwrap() == a);
    let z = read(&mut c, &zstd_read_name(&a)).await.unwrap();
    assert!(zstd::decode_all(&z[..]).unwrap() == a);

    let b = text(900 * KIB, 4);
    write(&mut c, &upload_name(&b, false), &b, 100 * KIB)
        .await
        .unwrap();
    let resp = http
        .get(format!("{}/cas/{}", s.http_url, hex(&b)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap() == b);
}

/// A 64+ MiB upload streamed in 1 MiB messages, generated on the fly.
#[tokio::test]
async fn large_streamed_upload() {
    const CHUNKS: usize = 65;
    let s = Server::start_grpc(&[]);
    let mut c = client(&s).await;
    let chunk = |i: usize| support::noise(MIB, 1000 + i as u64);
    let mut hasher = bazel_cache_digest::Hasher::new(bazel_cache_digest::DigestFunction::Sha256);
    for i in 0..CHUNKS {
        hasher.update(&chunk(i));
    }
    let size = CHUNKS * MIB;
    let hash = hasher.finish().to_hex();
    let name = format!("uploads/big/blobs/{hash}/{size}");
    let first_name = name.clone();
    let stream = futures_util::stream::iter(0..CHUNKS).map(move |i| WriteRequest {
        resource_name: if i == 0 {
            first_name.clone()
        } else {
            String::new()
        },
        write_offset: (i * MIB) as i64,
        finish_write: i == CHUNKS - 1,
        data: chunk(i),
    });
    assert_eq!(
        c.write(stream).await.unwrap().into_inner().committed_size,
        size as i64
    );

    let mut stream = c
        .read(ReadRequest {
            resource_name: format!("blobs/{hash}/{size}"),
            read_offset: 0,
            read_limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut back = bazel_cache_digest::Hasher::new(bazel_cache_digest::DigestFunction::Sha256);
    while let Some(msg) = stream.message().await.unwrap() {
        assert!(msg.data.len() <= MIB);
        back.update(&msg.data);
    }
    assert_eq!(back.len(), size as u64);
    assert_eq!(back.finish().to_hex(), hash);
}
