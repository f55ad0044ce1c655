//! The web console's proxy-tier card against a real S3 server (s3s-fs):
//! the write-behind figures and the presence cache's hit rate are shown,
//! the S3 credentials never are.

use std::time::Duration;

use super::s3::{put, start, wait_backend};
use crate::support::s3::S3Server;
use crate::support::{Server, cas_path as cas};

/// `GET path` on `server`: the body as text.
async fn text(server: &Server, path: &str) -> String {
    String::from_utf8(server.get_async(path).await.1).unwrap()
}

#[tokio::test]
async fn overview_shows_the_s3_tier_and_no_secret() {
    let s3 = S3Server::start();
    let server = start(&s3, None, &[], None);
    let blob = b"through to s3".to_vec();
    assert_eq!(put(&server, &cas(&blob), &blob).await, 200);
    wait_backend(&server, "the upload", Duration::from_secs(30), |b| {
        b["UploadsDone"] == 1
    })
    .await;
    let page = text(&server, "/").await;
    let card = &page[page.find("id=\"backend\"").expect("the proxy card")..];
    let card = &card[..card.find("</section>").unwrap()];
    for field in [
        "<th>Type</th><td>s3</td>",
        "<th>UploadsDone</th><td>1</td>",
        "<th>UploadsPending</th><td>0</td>",
        "presence-cache hit rate",
    ] {
        assert!(card.contains(field), "{field}: {card}");
    }
    assert!(!page.contains(&s3.secret_key), "the secret key leaked");
    assert!(!page.contains(&s3.access_key), "the access key is shown");
    assert!(!card.contains("oldest queued upload"), "{card}");
    assert!(
        card.contains("<th>UploadQueueOldestAgeSeconds</th><td>0</td>"),
        "{card}"
    );

    // S3 down: the upload waits in the queue, and the card says so.
    let mut s3 = s3;
    s3.stop();
    let stuck = b"waits for s3".to_vec();
    assert_eq!(put(&server, &cas(&stuck), &stuck).await, 200);
    wait_backend(&server, "a pending upload", Duration::from_secs(30), |b| {
        b["UploadsPending"] == 1
    })
    .await;
    let page = text(&server, "/ui/overview/live").await;
    assert!(
        page.contains("<th>oldest queued upload</th><td>waiting for "),
        "{page}"
    );
    // The same figure for Prometheus, present while an upload waits.
    let metrics = text(&server, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("bazel_cache_s3_upload_queue_oldest_age_seconds ")),
        "{metrics}"
    );
}
