//! Start-up and shutdown: validated config → disk store → listeners → serve,
//! until a signal or the idle timeout; then drain requests and close the
//! store cleanly (so the next start skips recovery).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::{AccessLogLevel, Config, ListenAddr, StorageMode};
use crate::http::{self, HttpOptions, HttpState, Listener};
use crate::store::disk::{DiskConfig, DiskStore};
use crate::store::{Encoding, Store, StoreError, unix_now};

/// How long requests in flight may take to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("opening the cache in {dir}: {source}")]
    Store { dir: String, source: StoreError },
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("{key}: {what} is not implemented yet; refusing to start rather than serve without it")]
    Unsupported {
        key: &'static str,
        what: &'static str,
    },
}

/// Security settings this build cannot honour yet. Starting without them
/// would expose a cache the operator believes protected, so start-up fails.
fn refuse_unimplemented(config: &Config) -> Result<(), ServerError> {
    if config.htpasswd_file.is_some() {
        return Err(ServerError::Unsupported {
            key: "htpasswd_file",
            what: "basic authentication",
        });
    }
    if config.tls.is_some() {
        return Err(ServerError::Unsupported {
            key: "tls_cert_file",
            what: "TLS",
        });
    }
    Ok(())
}

/// Settings accepted now and served by later work; the cache still works
/// without them, so they are logged, not fatal.
fn warn_unserved(config: &Config) {
    if config.s3_proxy.is_some() {
        tracing::warn!(
            "s3_proxy is configured but the S3 backend is not implemented yet: serving from the local disk only"
        );
    }
    if config.grpc_address.is_some() {
        tracing::warn!("gRPC is not served yet: only the HTTP protocol is available");
    }
}

/// A server whose store is open and whose listeners are bound, not yet serving.
pub struct Server {
    config: Config,
    store: Arc<DiskStore>,
    http: Listener,
}

impl Server {
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        refuse_unimplemented(&config)?;
        warn_unserved(&config);
        let disk = DiskConfig {
            dir: config.dir.clone(),
            max_size_bytes: config.max_size_bytes,
            cas_encoding: match config.storage_mode {
                StorageMode::Zstd => Encoding::Zstd,
                StorageMode::Uncompressed => Encoding::Identity,
            },
            max_blob_size: config.max_blob_size,
            fsync: config.fsync,
            ..DiskConfig::new(&config.dir, config.max_size_bytes)
        };
        let store = DiskStore::open(disk)
            .await
            .map_err(|source| ServerError::Store {
                dir: config.dir.display().to_string(),
                source,
            })?;
        let http = bind(&config.http_address, "http_address").await?;
        Ok(Server {
            config,
            store: Arc::new(store),
            http,
        })
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.local_tcp_addr()
    }

    pub fn store(&self) -> &Arc<DiskStore> {
        &self.store
    }

    /// The `.bazelrc` lines that point Bazel at this server.
    pub fn bazelrc(&self) -> String {
        match (&self.config.http_address, self.http_addr()) {
            (_, Some(addr)) => {
                let host = if addr.ip().is_unspecified() {
                    "localhost".to_string()
                } else if addr.is_ipv6() {
                    format!("[{}]", addr.ip())
                } else {
                    addr.ip().to_string()
                };
                format!("build --remote_cache=http://{host}:{}\n", addr.port())
            }
            (ListenAddr::Unix(path), None) => format!(
                "build --remote_proxy=unix:{}\nbuild --remote_cache=http://localhost\n",
                path.display()
            ),
            (ListenAddr::Tcp(addr), None) => format!("build --remote_cache=http://{addr}\n"),
        }
    }

    /// Serves until `shutdown` resolves or the idle timeout passes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        let last_request = Arc::new(AtomicU64::new(unix_now()));
        let touched = last_request.clone();
        let state = Arc::new(HttpState {
            store: self.store.clone() as Arc<dyn Store>,
            options: HttpOptions {
                validate_ac: !self.config.disable_http_ac_validation,
                mangle_ac_keys: self.config.enable_ac_key_instance_mangling,
                max_blob_size: self.config.max_blob_size,
                access_log: self.config.access_log_level == AccessLogLevel::All,
                header_read_timeout: self
                    .config
                    .http_read_timeout
                    .unwrap_or(HttpOptions::default().header_read_timeout),
            },
            on_request: Box::new(move || touched.store(unix_now(), Ordering::Relaxed)),
        });
        let idle = idle_watch(self.config.idle_timeout, last_request);
        let stop = async move {
            tokio::select! {
                _ = shutdown => tracing::info!("shutting down"),
                _ = idle => tracing::info!("idle timeout reached; shutting down"),
            }
        };
        http::serve(self.http, state, stop, DRAIN).await;
        close_when_released(self.store).await;
    }
}

/// Closes the store once the last connection task has let go of it (tasks
/// drop their handles a moment after the drain completes). A store still held
/// after that is left to its Drop, and the next start runs recovery.
async fn close_when_released(mut store: Arc<DiskStore>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Arc::try_unwrap(store) {
            Ok(store) => return store.close().await,
            Err(still_shared) if std::time::Instant::now() < deadline => {
                store = still_shared;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => {
                tracing::warn!("store still in use at shutdown; the next start will run recovery");
                return;
            }
        }
    }
}

async fn bind(addr: &ListenAddr, key: &'static str) -> Result<Listener, ServerError> {
    let err = |source| ServerError::Bind {
        key,
        addr: format!("{addr:?}"),
        source,
    };
    match addr {
        ListenAddr::Tcp(sa) => Ok(Listener::Tcp(
            tokio::net::TcpListener::bind(sa).await.map_err(err)?,
        )),
        ListenAddr::Unix(path) => {
            // A socket file left by a previous run would make bind fail.
            if std::fs::symlink_metadata(path).is_ok_and(|m| {
                use std::os::unix::fs::FileTypeExt;
                m.file_type().is_socket()
            }) {
                let _ = std::fs::remove_file(path);
            }
            Ok(Listener::Unix(
                tokio::net::UnixListener::bind(path).map_err(err)?,
            ))
        }
    }
}

/// Resolves once no request has arrived for `timeout` (never when `None`).
async fn idle_watch(timeout: Option<Duration>, last_request: Arc<AtomicU64>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    let step = (timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        tokio::time::sleep(step).await;
        let idle = unix_now().saturating_sub(last_request.load(Ordering::Relaxed));
        if idle >= timeout.as_secs().max(1) {
            return;
        }
    }
}
