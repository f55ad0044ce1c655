//! `GET`, `HEAD` and `PUT` on `/ac/<sha256>` and `/cas/<sha256>` (and
//! their BLAKE3 forms, `/blake3/ac/<hash>` or an `X-Digest-Function` header).

use std::io;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyDataStream, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::io::{ReaderStream, StreamReader};

use super::path::{self, PathError};
use super::{Body, HttpState, empty, error, full, method_not_allowed};
use bazel_cache_digest::{BlobKey, DigestFunction, Kind, mangle_ac_key};
use bazel_cache_store::action_result as ac;
use bazel_cache_store::budget::{MemoryBudget, MemoryUse, ReadBuffers, Reservation};
use bazel_cache_store::{
    Blob, BlobBody, Encoding, PutBody, PutRequest, StoreError, read_all, zstd_decode,
};

const ALLOW: &str = "GET, HEAD, PUT";
/// bazel-remote's header for the logical size of a compressed PUT body.
const X_DIGEST_SIZE: &str = "x-digest-sizebytes";
/// Our header naming the digest function of the path's hash (`SHA256`,
/// `BLAKE3`, any case), for clients that cannot change paths.
const X_DIGEST_FUNCTION: &str = "x-digest-function";

/// The function the `X-Digest-Function` header names, if it is there.
fn header_function(headers: &HeaderMap) -> Result<Option<DigestFunction>, String> {
    let Some(value) = headers.get(X_DIGEST_FUNCTION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| "X-Digest-Function is not ASCII".to_string())?;
    value
        .trim()
        .parse()
        .map(Some)
        .map_err(|e| format!("X-Digest-Function: {e}"))
}

pub(super) async fn handle(state: &HttpState, req: Request<Incoming>) -> Response<Body> {
    let header = match header_function(req.headers()) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let parsed = match path::parse(req.uri().path(), header) {
        Ok(p) => p,
        Err(PathError::NotCachePath) => {
            return error(StatusCode::NOT_FOUND, PathError::NotCachePath);
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let hash = if parsed.kind == Kind::Ac && state.options.mangle_ac_keys {
        mangle_ac_key(parsed.hash, &parsed.instance)
    } else {
        parsed.hash
    };
    let key = BlobKey::new(parsed.kind, hash);
    let result = match *req.method() {
        Method::GET => get(state, &key, req.headers()).await,
        Method::HEAD => head(state, &key).await,
        Method::PUT => put(state, key, req).await,
        _ => return method_not_allowed(ALLOW),
    };
    result.unwrap_or_else(|e| store_error(&key, e))
}

fn store_error(key: &BlobKey, e: StoreError) -> Response<Body> {
    if e.is_client_error() {
        error(StatusCode::BAD_REQUEST, format!("{key}: {e}"))
    } else if e.is_out_of_space() {
        error(StatusCode::INSUFFICIENT_STORAGE, format!("{key}: {e}"))
    } else if matches!(
        e,
        StoreError::Busy { .. } | StoreError::Closed | StoreError::MemoryExhausted(_)
    ) {
        // Retryable: Bazel and curl --retry honour 503 + Retry-After.
        let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, format!("{key}: {e}"));
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        resp
    } else {
        tracing::error!(%key, error = %e, "request failed");
        error(StatusCode::INTERNAL_SERVER_ERROR, format!("{key}: {e}"))
    }
}

fn not_found(key: &BlobKey) -> Response<Body> {
    error(StatusCode::NOT_FOUND, format!("{key}: not found"))
}

/// Whether the client listed zstd in `Accept-Encoding` with a non-zero q.
fn accepts_zstd(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            coding.eq_ignore_ascii_case("zstd") && !refused
        })
}

async fn get(
    state: &HttpState,
    key: &BlobKey,
    headers: &HeaderMap,
) -> Result<Response<Body>, StoreError> {
    if key.kind == Kind::Ac && state.options.validate_ac {
        return Ok(match valid_action_result(state, key).await? {
            Some(bytes) => blob_response(bytes.len() as u64, None, full(bytes)),
            None => not_found(key),
        });
    }
    let accept_zstd = key.kind == Kind::Cas && accepts_zstd(headers);
    let Some(blob) = state.store.get(key, accept_zstd).await? else {
        return Ok(not_found(key));
    };
    let Blob {
        encoding,
        body_len,
        body,
        ..
    } = blob;
    // The chunk being read and those hyper holds for a slow client, from
    // the memory budget, for as long as the body lives.
    let ReadBuffers { chunk, reservation } = state.memory.reserve_read(body_len).await?;
    let body = match body {
        // Read whole by the store: one frame, hyper writes it as it is.
        BlobBody::Bytes(bytes) => {
            let frame =
                futures_util::stream::once(std::future::ready(Ok(bytes))).map_ok(move |data| {
                    let _held = &reservation;
                    Frame::data(data)
                });
            StreamBody::new(frame).boxed_unsync()
        }
        BlobBody::File(file) => {
            let stream = file.into_chunks(chunk).map_ok(move |data| {
                let _held = &reservation;
                Frame::data(data)
            });
            StreamBody::new(stream).boxed_unsync()
        }
        BlobBody::Stream(reader) => {
            let stream = ReaderStream::with_capacity(reader, chunk).map_ok(move |data| {
                let _held = &reservation;
                Frame::data(data)
            });
            StreamBody::new(stream).boxed_unsync()
        }
    };
    let coding = (encoding == Encoding::Zstd).then_some("zstd");
    Ok(match body_len {
        Some(len) => blob_response(len, coding, body),
        None => {
            let mut resp = blob_response(0, coding, body);
            resp.headers_mut().remove(header::CONTENT_LENGTH);
            resp
        }
    })
}

fn blob_response(len: u64, coding: Option<&'static str>, body: Body) -> Response<Body> {
    let mut b = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len);
    if let Some(c) = coding {
        b = b.header(header::CONTENT_ENCODING, c);
    }
    b.body(body).expect("static response")
}

/// Reads an AC entry and returns it only if it decodes as an ActionResult
/// whose referenced blobs are all present: a hit the client cannot download
/// is worse than a miss.
async fn valid_action_result(
    state: &HttpState,
    key: &BlobKey,
) -> Result<Option<Bytes>, StoreError> {
    let bytes = match read_all(state.store.as_ref(), key, ac::MAX_ACTION_RESULT_BYTES).await {
        Ok(Some(bytes)) => bytes,
        Ok(None) | Err(StoreError::TooLarge { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let function = key.hash.function();
    let ar = match ac::decode(function, &bytes) {
        Ok(ar) => ar,
        Err(e) => {
            tracing::warn!(%key, error = %e, "stored AC entry is not a valid ActionResult; answering as a miss");
            return Ok(None);
        }
    };
    if !ac::is_complete(state.store.as_ref(), function, &ar).await? {
        return Ok(None);
    }
    Ok(Some(Bytes::from(bytes)))
}

async fn head(state: &HttpState, key: &BlobKey) -> Result<Response<Body>, StoreError> {
    let size = if key.kind == Kind::Ac && state.options.validate_ac {
        valid_action_result(state, key)
            .await?
            .map(|b| b.len() as u64)
    } else {
        state.store.contains(key).await?
    };
    Ok(match size {
        Some(size) => blob_response(size, None, empty()),
        None => not_found(key),
    })
}

/// The body's encoding and logical size, from `Content-Encoding`,
/// `X-Digest-SizeBytes` and `Content-Length`.
fn put_framing(headers: &HeaderMap) -> Result<(Encoding, Option<u64>), String> {
    let encoding = match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str()) {
        None => Encoding::Identity,
        Some(Ok(v)) if v.eq_ignore_ascii_case("identity") => Encoding::Identity,
        Some(Ok(v)) if v.eq_ignore_ascii_case("zstd") => Encoding::Zstd,
        Some(v) => {
            return Err(format!(
                "unsupported Content-Encoding {v:?}; use identity or zstd"
            ));
        }
    };
    let number = |name: &str| -> Result<Option<u64>, String> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map(Some)
                .ok_or_else(|| format!("unparseable {name} header {v:?}")),
        }
    };
    let size = match (number(X_DIGEST_SIZE)?, encoding) {
        (Some(size), _) => Some(size),
        (None, Encoding::Identity) => number(header::CONTENT_LENGTH.as_str())?,
        (None, Encoding::Zstd) => None,
    };
    Ok((encoding, size))
}

async fn put(
    state: &HttpState,
    key: BlobKey,
    req: Request<Incoming>,
) -> Result<Response<Body>, StoreError> {
    let (encoding, size) = match put_framing(req.headers()) {
        Ok(f) => f,
        Err(msg) => return Ok(error(StatusCode::BAD_REQUEST, format!("{key}: {msg}"))),
    };
    if let Some(size) = size
        && size > state.options.max_blob_size
    {
        return Err(StoreError::TooLarge {
            size,
            limit: state.options.max_blob_size,
        });
    }
    let stream = BodyDataStream::new(req.into_body()).map_err(io::Error::other);

    if key.kind == Kind::Ac && state.options.validate_ac {
        // ActionResults are small: read, decode and validate before storing.
        let limit = ac::MAX_ACTION_RESULT_BYTES.min(state.options.max_blob_size);
        let (mut held, mut decoded_held) = (Reservation::none(), Reservation::none());
        // Read here, not by the store: guard it as the store guards bodies.
        let mut guarded = (state.guard_upload)(Box::pin(StreamReader::new(stream)));
        let raw = read_whole(&mut guarded, limit, &state.memory, &mut held).await?;
        let bytes = match encoding {
            Encoding::Identity => raw,
            Encoding::Zstd => {
                let decoder = zstd_decode::decoder(io::Cursor::new(raw), &state.memory).await?;
                read_whole(decoder, limit, &state.memory, &mut decoded_held).await?
            }
        };
        if let Some(expected) = size
            && expected != bytes.len() as u64
        {
            return Err(StoreError::SizeMismatch {
                expected,
                actual: bytes.len() as u64,
            });
        }
        if let Err(e) = ac::decode(key.hash.function(), &bytes) {
            return Ok(error(StatusCode::BAD_REQUEST, format!("{key}: {e}")));
        }
        let size = Some(bytes.len() as u64);
        let body = PutBody::bytes(bytes);
        state
            .store
            .put(PutRequest {
                key,
                size,
                encoding: Encoding::Identity,
                body,
            })
            .await?;
    } else {
        state
            .store
            .put(PutRequest {
                key,
                size,
                encoding,
                body: PutBody::chunks(stream),
            })
            .await?;
    }
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_LENGTH, 0)
        .body(empty())
        .expect("static response"))
}

/// Reads `body` whole, refusing it past `limit` bytes (`TooLarge`); the
/// memory it takes is reserved in `held` from the budget before the buffer
/// grows (an action-cache body may be up to 64 MiB).
async fn read_whole(
    mut body: impl AsyncRead + Unpin,
    limit: u64,
    memory: &std::sync::Arc<MemoryBudget>,
    held: &mut Reservation,
) -> Result<Vec<u8>, StoreError> {
    const STEP: usize = 64 * 1024;
    let mut out = Vec::new();
    loop {
        if out.len() == out.capacity() {
            // Doubling, as a Vec grows; reserved before it is allocated.
            let next = (2 * out.capacity()).max(out.len() + STEP);
            memory
                .grow(held, MemoryUse::UploadBuffer, next as u64)
                .await?;
            out.reserve_exact(next - out.len());
        }
        // Reads into the spare capacity only.
        let n = body.read_buf(&mut out).await.map_err(StoreError::body)?;
        if out.len() as u64 > limit {
            return Err(StoreError::TooLarge {
                size: out.len() as u64,
                limit,
            });
        }
        if n == 0 {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn accept_encoding_parsing() {
        assert!(accepts_zstd(&headers(&[("accept-encoding", "zstd")])));
        assert!(accepts_zstd(&headers(&[(
            "accept-encoding",
            "gzip, ZSTD;q=0.5"
        )])));
        assert!(!accepts_zstd(&headers(&[("accept-encoding", "zstd;q=0")])));
        assert!(!accepts_zstd(&headers(&[("accept-encoding", "gzip")])));
        assert!(!accepts_zstd(&headers(&[])));
    }

    #[test]
    fn put_framing_rules() {
        assert_eq!(
            put_framing(&headers(&[("content-length", "5")])),
            Ok((Encoding::Identity, Some(5)))
        );
        assert_eq!(put_framing(&headers(&[])), Ok((Encoding::Identity, None)));
        assert_eq!(
            put_framing(&headers(&[
                ("content-encoding", "zstd"),
                ("content-length", "3"),
                ("x-digest-sizebytes", "9")
            ])),
            Ok((Encoding::Zstd, Some(9)))
        );
        assert_eq!(
            put_framing(&headers(&[
                ("content-encoding", "zstd"),
                ("content-length", "3")
            ])),
            Ok((Encoding::Zstd, None))
        );
        assert!(put_framing(&headers(&[("content-encoding", "gzip")])).is_err());
        assert!(put_framing(&headers(&[("x-digest-sizebytes", "-1")])).is_err());
    }
}
