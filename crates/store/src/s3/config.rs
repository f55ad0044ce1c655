//! The S3 backend's settings. The store owns them; the server's `config/`
//! fills them from bazel-remote's `s3_proxy:` keys, flags and variables.

use std::path::PathBuf;

use crate::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum S3AuthMethod {
    /// Static `access_key_id` / `secret_access_key` (+ `session_token`).
    AccessKey,
    /// Instance/pod credentials from `iam_role_endpoint` or the AWS defaults.
    IamRole,
    /// A profile (`aws_profile`) of an AWS credentials file.
    AwsCredentialsFile,
}

/// How requests are signed with `AccessKey` credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum S3SignatureType {
    V2,
    #[default]
    V4,
    V4Streaming,
    Anonymous,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BucketLookupType {
    #[default]
    Auto,
    Dns,
    Path,
}

/// The `s3_proxy:` block. Secrets are [`Secret`]s: never in `Debug` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub endpoint: String,
    pub bucket: String,
    pub prefix: String,
    pub region: String,
    pub auth_method: S3AuthMethod,
    pub access_key_id: Secret,
    pub secret_access_key: Secret,
    pub session_token: Secret,
    pub signature_type: S3SignatureType,
    pub iam_role_endpoint: String,
    /// Profile within the credentials file; "default" unless set.
    pub aws_profile: String,
    /// `None` = the AWS default (`~/.aws/credentials`).
    pub aws_shared_credentials_file: Option<PathBuf>,
    pub disable_ssl: bool,
    pub bucket_lookup_type: BucketLookupType,
    pub max_idle_conns: usize,
    pub update_timestamps: bool,
}
