//! Request signing: AWS Signature Version 4 via `aws-sigv4`, or none.
//!
//! `signature_type: v4` and `v4streaming` both sign with SigV4 and send
//! `x-amz-content-sha256: UNSIGNED-PAYLOAD` for file bodies (small XML
//! bodies are hashed); `anonymous` sends unsigned requests; `v2` is refused.
//! Paths are signed exactly as sent (single percent-encoding, no
//! normalization; see `addressing.rs`). The signature and session token are
//! marked sensitive so they never show in `Debug` output. Where the
//! credentials come from is `credentials.rs`.

use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use http::{Request, header};

use super::body::ReqBody;
use super::config::{S3Config, S3SignatureType};
use super::credentials::credentials;
use super::error::S3Error;

const DEFAULT_REGION: &str = "us-east-1";

/// How requests are authenticated.
#[derive(Clone)]
pub(super) enum Signer {
    Anonymous,
    V4 {
        credentials: Credentials,
        region: String,
    },
}

/// What the request's payload hash is.
pub(super) enum Payload<'a> {
    /// `UNSIGNED-PAYLOAD`: streamed file bodies.
    Unsigned,
    /// The SHA-256 of these bytes (empty for bodiless requests).
    Bytes(&'a [u8]),
}

impl Signer {
    /// The signer `cfg` asks for: its `signature_type`, region (default
    /// `us-east-1`) and credentials.
    pub(super) fn from_config(cfg: &S3Config) -> Result<Signer, S3Error> {
        let region = match cfg.region.trim() {
            "" => DEFAULT_REGION.to_owned(),
            r => r.to_owned(),
        };
        match cfg.signature_type {
            S3SignatureType::V4 | S3SignatureType::V4Streaming => {}
            S3SignatureType::Anonymous => return Ok(Signer::Anonymous),
            S3SignatureType::V2 => {
                return Err(S3Error::Config(
                    "s3_proxy.signature_type v2 is not supported by bazel-cache; use v4".to_owned(),
                ));
            }
        }
        Ok(Signer::V4 {
            credentials: credentials(cfg)?,
            region,
        })
    }

    pub(super) fn sign(
        &self,
        req: &mut Request<ReqBody>,
        payload: Payload<'_>,
    ) -> Result<(), String> {
        let Signer::V4 {
            credentials,
            region,
        } = self
        else {
            return Ok(());
        };
        let identity: Identity = credentials.clone().into();
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("s3")
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let instructions = {
            let uri = req.uri().to_string();
            let mut headers = Vec::with_capacity(req.headers().len());
            for (name, value) in req.headers() {
                let value = value
                    .to_str()
                    .map_err(|_| format!("header {name} is not visible ASCII"))?;
                headers.push((name.as_str(), value));
            }
            let body = match payload {
                Payload::Unsigned => SignableBody::UnsignedPayload,
                Payload::Bytes(b) => SignableBody::Bytes(b),
            };
            let signable =
                SignableRequest::new(req.method().as_str(), uri, headers.into_iter(), body)
                    .map_err(|e| e.to_string())?;
            aws_sigv4::http_request::sign(signable, &params)
                .map_err(|e| e.to_string())?
                .into_parts()
                .0
        };
        instructions.apply_to_request_http1x(req);
        // Keep the signature and the token out of any Debug output.
        for name in [header::AUTHORIZATION.as_str(), "x-amz-security-token"] {
            if let Some(v) = req.headers_mut().get_mut(name) {
                v.set_sensitive(true);
            }
        }
        Ok(())
    }
}
