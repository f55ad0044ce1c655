//! Batches of many tiny blobs next to single writes: a BatchUpdateBlobs
//! call works on a bounded number of its blobs at a time, in order, and
//! write slots go to waiters in arrival order, so a well-behaved client's
//! PUTs interleave with the batches' blobs instead of queueing behind all
//! of them (which took 20–37 s with 4 batches of 50,000 blobs).

use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as re;
use re::content_addressable_storage_client::ContentAddressableStorageClient;
use tonic::Code;

use super::well_behaved::GoodClient;
use crate::support::{Server, digest};

const BLOBS: usize = 10_000;

/// `BLOBS` distinct 8-byte blobs.
fn tiny_blobs(batch: u64) -> Vec<Vec<u8>> {
    (0..BLOBS as u64)
        .map(|i| (batch << 32 | i).to_le_bytes().to_vec())
        .collect()
}

fn cas(
    channel: tonic::transport::Channel,
) -> ContentAddressableStorageClient<tonic::transport::Channel> {
    ContentAddressableStorageClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn big_batches_of_tiny_blobs_do_not_starve_single_writes() {
    let s = Server::start_grpc(&["--max_concurrent_writes", "8"]);
    let channel = s.channel().await;
    let good = GoodClient::start(&s, 3);
    // Let it start, so its writes are already queued when the batches come.
    while good.round_trips() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let batches: Vec<Vec<Vec<u8>>> = (1..=2).map(tiny_blobs).collect();
    let calls: Vec<_> = batches
        .iter()
        .map(|blobs| {
            let request = re::BatchUpdateBlobsRequest {
                requests: blobs
                    .iter()
                    .map(|b| re::batch_update_blobs_request::Request {
                        digest: Some(digest(b)),
                        data: b.clone(),
                        compressor: 0,
                    })
                    .collect(),
                ..Default::default()
            };
            let mut client = cas(channel.clone());
            tokio::spawn(async move { client.batch_update_blobs(request).await })
        })
        .collect();
    // Round trips made while both batches are still being written: with
    // every blob of a batch queued for a slot at once, the client's PUTs
    // waited behind all of them.
    let before = good.round_trips();
    let mut during = 0;
    while calls.iter().all(|c| !c.is_finished()) {
        during = good.round_trips() - before;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut responses = Vec::new();
    for call in calls {
        let r = tokio::time::timeout(Duration::from_secs(600), call)
            .await
            .expect("a batch still running after 10 minutes")
            .unwrap()
            .unwrap();
        responses.push(r.into_inner().responses);
    }
    let round_trips = good.finish().await;
    println!("{during} round trips during the batches, {round_trips} in all");
    assert!(
        during >= 3,
        "only {during} round trips of the well-behaved client while the batches ran"
    );
    // Every blob answered, in request order, and stored.
    for (blobs, responses) in batches.iter().zip(&responses) {
        assert_eq!(responses.len(), BLOBS);
        for (b, r) in blobs.iter().zip(responses) {
            assert_eq!(r.digest.as_ref(), Some(&digest(b)));
            assert_eq!(
                r.status.as_ref().map(|s| s.code),
                Some(Code::Ok as i32),
                "{r:?}"
            );
        }
    }
    assert_eq!(
        s.status_async().await["NumFiles"],
        (2 * BLOBS + round_trips) as u64
    );
    // And read back in one batch, bounded the same way.
    let read = cas(channel)
        .batch_read_blobs(re::BatchReadBlobsRequest {
            digests: batches[0].iter().map(|b| digest(b)).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .responses;
    assert_eq!(read.len(), BLOBS);
    for (b, r) in batches[0].iter().zip(&read) {
        assert_eq!(r.digest.as_ref(), Some(&digest(b)));
        assert_eq!(&r.data, b);
    }
}
