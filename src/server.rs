//! Start-up and shutdown: validated config → disk store → listeners → serve,
//! until a signal or the idle timeout; then drain requests, let queued S3
//! uploads go on briefly while they progress, and close the store cleanly
//! (so the next start skips recovery).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use tokio_rustls::TlsAcceptor;

use crate::auth::{Authenticator, HtpasswdError};
use crate::config::{AccessLogLevel, Config, ListenAddr, StorageMode, defaults};
use crate::grpc::{self, GrpcOptions, GrpcServing, GrpcState};
use crate::http::{self, HttpOptions, HttpState};
use crate::listen::tls::{self, TlsError};
use crate::listen::{self, ConnectionLimits, Listener, Port};
use crate::metrics::{CountingStore, Metrics, MetricsOptions};
use crate::web::WebState;
use bazel_cache_store::EmptyBlob;
use bazel_cache_store::asset_download::{AddressPolicy, Downloader, DownloaderOptions};
use bazel_cache_store::budget::{DEFAULT_MEMORY_WAIT, MemoryBudget};
use bazel_cache_store::disk::{DiskConfig, DiskStore};
use bazel_cache_store::grpc_proxy::GrpcBackend;
use bazel_cache_store::http_proxy::HttpBackend;
use bazel_cache_store::proxy::{
    Backend, DEFAULT_AC_OUTPUT_CHECKS, PresenceCache, ProxyConfig, ProxyStore,
};
use bazel_cache_store::s3::{S3Backend, S3Client};
use bazel_cache_store::{Encoding, Store, StoreError, unix_now};

/// How long requests in flight may take to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(30);
/// How long, after the drain, queued S3 uploads may go on while they make
/// progress (`ProxyStore::finish_uploads`). DRAIN + this + the store's close
/// stays below the Kubernetes module's 60 s termination grace period.
const UPLOAD_FLUSH: Duration = Duration::from_secs(15);
/// How long start-up waits for another process to let go of the index.
/// Longer than a previous instance's drain, so a restart that overlaps the
/// old process (systemd restart, a pod rescheduled onto the same volume)
/// waits for it instead of failing.
const LOCK_WAIT: Duration = Duration::from_secs(90);

/// Raises the soft limit on open files to the hard limit. Every connection
/// and every write in progress holds a descriptor, and the usual soft limit
/// (1024) is far below what a busy cache needs, while the hard limit is
/// typically 512k or more (Go programs such as bazel-remote get the same
/// raise from their runtime). Returns the limit in effect, when known.
fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let before = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                tracing::debug!(before, after = limit.rlim_cur, "raised the open-file limit");
            } else {
                limit.rlim_cur = before;
            }
        }
    }
    Some(limit.rlim_cur)
}

/// `max_connections` per port, lowered to what the open-file limit allows
/// (`listen::stats::fd_ceiling`): past that limit accepting fails and
/// nobody is served, which the cap is there to prevent.
fn connection_cap(configured: usize, open_files: Option<u64>, ports: usize) -> usize {
    let Some(open_files) = open_files else {
        return configured;
    };
    let ceiling = listen::stats::fd_ceiling(open_files, ports);
    if configured <= ceiling {
        return configured;
    }
    // Lowering the default is routine (a container's limit); a value the
    // operator chose and cannot have deserves a warning.
    if configured == defaults::MAX_CONNECTIONS {
        tracing::info!(
            max_connections = ceiling,
            open_file_limit = open_files,
            "max_connections lowered from its default to fit the open-file limit"
        );
    } else {
        tracing::warn!(
            max_connections = configured,
            open_file_limit = open_files,
            lowered_to = ceiling,
            "max_connections lowered to fit the open-file limit"
        );
    }
    ceiling
}

/// Opens the store, waiting while another process holds its index. Nothing
/// listens meanwhile, so probes see the server as not ready until the store
/// is open.
async fn open_when_free(disk: DiskConfig) -> Result<DiskStore, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut logged = false;
    loop {
        match DiskStore::open(disk.clone()).await {
            Err(StoreError::Locked(path)) if std::time::Instant::now() < deadline => {
                if !logged {
                    tracing::warn!(index = %path.display(), "the index is held by another process (a previous instance still stopping?); waiting for it");
                    // What `systemctl status` shows while the unit starts.
                    crate::sd_notify::status("waiting for the index lock held by another process");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            result => return result,
        }
    }
}

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
    #[error("s3_proxy: {0}")]
    S3(String),
    /// `http_proxy` or `grpc_proxy`: the message names the key.
    #[error("{0}")]
    UrlProxy(String),
    #[error("{0}")]
    Auth(#[from] HtpasswdError),
    #[error("{0}")]
    Tls(#[from] TlsError),
}

/// The proxy layer over `backend` in front of the disk store: read-through,
/// durable write-behind (its queue in the cache directory).
fn start_proxy(
    config: &Config,
    store: &Arc<DiskStore>,
    backend: Arc<dyn Backend>,
    update_timestamps: bool,
) -> Result<Arc<ProxyStore>, ServerError> {
    let proxy = ProxyConfig {
        update_timestamps,
        update_timestamps_interval: config.update_timestamps_interval,
        ac_output_checks: DEFAULT_AC_OUTPUT_CHECKS,
        num_uploaders: config.num_uploaders,
        max_queued_uploads: config.max_queued_uploads,
        max_proxy_blob_size: config.max_proxy_blob_size,
    };
    ProxyStore::start(store.clone(), backend, proxy, &config.dir).map_err(|source| {
        ServerError::Store {
            dir: config.dir.display().to_string(),
            source,
        }
    })
}

/// A server whose store is open and whose listeners are bound, not yet serving.
pub struct Server {
    config: Config,
    store: Arc<DiskStore>,
    /// What the front ends talk to: the disk store, or the S3 proxy over it.
    front: Arc<dyn Store>,
    /// The S3 proxy and its backend, when configured (their counters feed
    /// `/status` and `/metrics`).
    s3: Option<(Arc<ProxyStore>, Arc<S3Backend>)>,
    /// The presence cache between the proxy and S3, when enabled.
    presence: Option<Arc<PresenceCache>>,
    /// The proxy over whichever backend is configured (`/status`).
    proxy: Option<Arc<ProxyStore>>,
    /// The proxy over `http_proxy` or `grpc_proxy` and its backend's name
    /// (`/metrics`).
    url_proxy: Option<(Arc<ProxyStore>, &'static str)>,
    http: Listener,
    grpc: Option<Listener>,
    auth: Arc<Authenticator>,
    /// TLS for the HTTP port (ALPN h2 and http/1.1) and the gRPC port (h2).
    http_tls: Option<TlsAcceptor>,
    grpc_tls: Option<TlsAcceptor>,
    /// Re-read when its files change.
    server_cert: Option<Arc<tls::ServerCert>>,
    /// How long and how many connections each port keeps.
    connection_limits: ConnectionLimits,
}

impl Server {
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let open_files = raise_open_file_limit();
        let connection_limits = ConnectionLimits {
            max_connections: connection_cap(
                config.max_connections,
                open_files,
                1 + usize::from(config.grpc_address.is_some()),
            ),
            request_head_timeout: config.request_head_timeout,
            idle_timeout: config.connection_idle_timeout,
        };
        // Credentials and certificates first: a mistake there must stop the
        // start before anything listens.
        let auth = Arc::new(Authenticator::new(
            config.htpasswd_file.as_deref(),
            config.tls.as_ref().is_some_and(|t| t.ca_file.is_some()),
            config.allow_unauthenticated_reads,
        )?);
        let (http_tls, grpc_tls, server_cert) = match &config.tls {
            Some(t) => {
                let anonymous_reads = config.allow_unauthenticated_reads;
                let cert = tls::ServerCert::load(t)?;
                (
                    Some(tls::acceptor(
                        t,
                        &cert,
                        anonymous_reads,
                        &[b"h2", b"http/1.1"],
                    )?),
                    Some(tls::acceptor(t, &cert, anonymous_reads, &[b"h2"])?),
                    Some(cert),
                )
            }
            None => (None, None, None),
        };
        let disk = DiskConfig {
            dir: config.dir.clone(),
            max_size_bytes: config.max_size_bytes,
            cas_encoding: match config.storage_mode {
                StorageMode::Zstd => Encoding::Zstd,
                StorageMode::Uncompressed => Encoding::Identity,
            },
            max_blob_size: config.max_blob_size,
            fsync: config.fsync,
            hard_limit_bytes: config.max_size_hard_limit_bytes,
            max_concurrent_writes: config.max_concurrent_writes,
            body_stall_timeout: config
                .http_read_timeout
                .unwrap_or(defaults::BODY_STALL_TIMEOUT),
            body_min_rate: config.body_min_rate,
            body_rate_window: config.body_rate_window,
            // The one budget: the store's writes and decoders and the front
            // ends' buffers all reserve from it.
            memory: MemoryBudget::new(config.max_buffer_memory_bytes, DEFAULT_MEMORY_WAIT),
            ..DiskConfig::new(&config.dir, config.max_size_bytes)
        };
        let store = open_when_free(disk)
            .await
            .map_err(|source| ServerError::Store {
                dir: config.dir.display().to_string(),
                source,
            })?;
        let bind = |key: &'static str, addr: &ListenAddr| {
            let addr = addr.clone();
            async move {
                listen::bind(&addr)
                    .await
                    .map_err(|source| ServerError::Bind {
                        key,
                        addr: format!("{addr:?}"),
                        source,
                    })
            }
        };
        let http = bind("http_address", &config.http_address).await?;
        let grpc = match &config.grpc_address {
            Some(addr) => Some(bind("grpc_address", addr).await?),
            None => None,
        };
        let store = Arc::new(store);
        let mut presence = None;
        let s3 = match &config.s3_proxy {
            Some(s3cfg) => {
                let client = S3Client::new(s3cfg).map_err(|e| ServerError::S3(e.to_string()))?;
                let backend = Arc::new(S3Backend::new(
                    client,
                    s3cfg.prefix.clone(),
                    config.storage_mode == StorageMode::Zstd,
                ));
                // Existence answers are remembered between the proxy and S3
                // (`presence_cache.rs`): every replica's FindMissingBlobs of
                // the same digests reaches S3 once per TTL.
                let remote: Arc<dyn Backend> = if config.presence_cache.enabled() {
                    let cache =
                        Arc::new(PresenceCache::new(backend.clone(), config.presence_cache));
                    presence = Some(cache.clone());
                    cache
                } else {
                    backend.clone()
                };
                let started = start_proxy(&config, &store, remote, s3cfg.update_timestamps)?;
                tracing::info!(endpoint = %s3cfg.endpoint, bucket = %s3cfg.bucket, prefix = %s3cfg.prefix, "S3 proxy enabled");
                Some((started, backend))
            }
            None => None,
        };
        // Another cache as the backend (migrating from bazel-remote).
        let url_proxy = match (&config.http_proxy, &config.grpc_proxy) {
            (Some(cfg), _) => {
                let backend = HttpBackend::new(cfg).map_err(ServerError::UrlProxy)?;
                tracing::info!(url = %cfg.display_url(), "HTTP proxy enabled");
                Some((
                    start_proxy(&config, &store, Arc::new(backend), false)?,
                    "http",
                ))
            }
            (None, Some(cfg)) => {
                let backend = GrpcBackend::new(cfg).map_err(ServerError::UrlProxy)?;
                tracing::info!(url = %cfg.display_url(), "gRPC proxy enabled");
                Some((
                    start_proxy(&config, &store, Arc::new(backend), false)?,
                    "grpc",
                ))
            }
            (None, None) => None,
        };
        let proxy = s3
            .as_ref()
            .map(|(p, _)| p.clone())
            .or_else(|| url_proxy.as_ref().map(|(p, _)| p.clone()));
        let tiers: Arc<dyn Store> = match &proxy {
            Some(proxy) => proxy.clone(),
            None => store.clone(),
        };
        // The empty-blob rule sits above every tier: no file, no index
        // entry, no backend request for it.
        let front: Arc<dyn Store> = Arc::new(
            EmptyBlob::new(tiers, store.config().body_stall_timeout)
                .with_memory(store.config().memory.clone()),
        );
        Ok(Server {
            config,
            store,
            front,
            s3,
            presence,
            proxy,
            url_proxy,
            http,
            grpc,
            auth,
            http_tls,
            grpc_tls,
            server_cert,
            connection_limits,
        })
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.local_tcp_addr()
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(Listener::local_tcp_addr)
    }

    pub fn store(&self) -> &Arc<DiskStore> {
        &self.store
    }

    /// The `.bazelrc` lines that point Bazel at this server: gRPC first
    /// (the faster protocol for Bazel), then HTTP; either one works.
    pub fn bazelrc(&self) -> String {
        let tls = self.config.tls.is_some();
        let mut out = String::new();
        if let Some(grpc) = &self.grpc {
            let scheme = if tls { "grpcs" } else { "grpc" };
            out += &remote_cache_line(scheme, self.config.grpc_address.as_ref(), grpc);
        }
        let scheme = if tls { "https" } else { "http" };
        out += &remote_cache_line(scheme, Some(&self.config.http_address), &self.http);
        out
    }

    /// Serves until `shutdown` resolves or the idle timeout passes.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send) {
        let http_port = Port::new("http", self.connection_limits);
        let grpc_port = Port::new("grpc", self.connection_limits);
        let mut ports = vec![http_port.stats.clone()];
        if self.grpc.is_some() {
            ports.push(grpc_port.stats.clone());
        }
        let mut metrics = Metrics::new(
            &MetricsOptions::from_config(&self.config),
            &self.store,
            self.s3.as_ref().map(|(proxy, backend)| (proxy, backend)),
        )
        .with_connections(ports)
        .with_proxy_caches(
            self.s3.as_ref().map(|(proxy, _)| proxy),
            self.presence.as_ref(),
        );
        if let Some((proxy, backend)) = &self.url_proxy {
            metrics = metrics.with_url_proxy(proxy, backend);
        }
        let metrics = Arc::new(metrics);
        tracing::info!(
            endpoint_metrics = self.config.enable_endpoint_metrics,
            "Prometheus metrics on /metrics"
        );
        let web = self.config.web_console.then(|| {
            let store = self.store.clone();
            let web = Arc::new(WebState::new(
                self.config.tls.is_some(),
                self.grpc_addr().map(|a| a.port()),
                self.auth.uses_basic_auth(),
                Box::new(move || store.evictions()),
                self.presence.clone(),
            ));
            web.history.spawn_sampler(&metrics);
            web
        });
        let last_request = Arc::new(AtomicU64::new(unix_now()));
        let touched = last_request.clone();
        let state = Arc::new(HttpState {
            store: self.front.clone(),
            options: HttpOptions {
                validate_ac: !self.config.disable_http_ac_validation,
                mangle_ac_keys: self.config.enable_ac_key_instance_mangling,
                max_blob_size: self.config.max_blob_size,
                access_log: self.config.access_log_level == AccessLogLevel::All,
                header_read_timeout: self
                    .config
                    .http_read_timeout
                    .unwrap_or(defaults::HEADER_READ_TIMEOUT),
            },
            on_request: Box::new(move || touched.store(unix_now(), Ordering::Relaxed)),
            adoption: {
                let store = self.store.clone();
                Box::new(move || store.adoption())
            },
            backend_status: self.proxy.clone().map(|proxy| {
                Box::new(move || proxy.status_json())
                    as Box<dyn Fn() -> serde_json::Value + Send + Sync>
            }),
            metrics: metrics.clone(),
            auth: self.auth.clone(),
            connections: http_port,
            memory: self.store.config().memory.clone(),
            guard_upload: {
                let store = self.store.clone();
                Box::new(move |body| store.guard_upload(body))
            },
            web,
        });
        self.auth.spawn_reloader();
        if let Some(cert) = &self.server_cert {
            cert.spawn_reloader();
        }
        let grpc_touched = last_request.clone();
        // With endpoint metrics the gRPC services count their lookups
        // through this store (HTTP counts in its request wrapper).
        let grpc_store: Arc<dyn Store> = match metrics.lookups() {
            Some(lookups) => Arc::new(CountingStore::new(self.front.clone(), lookups)),
            None => self.front.clone(),
        };
        let grpc_metrics = metrics.grpc();
        drop(metrics);
        let grpc_state = Arc::new(GrpcState {
            store: grpc_store,
            options: GrpcOptions {
                mangle_ac_keys: self.config.enable_ac_key_instance_mangling,
                check_ac_deps: !self.config.disable_grpc_ac_deps_check,
                max_blob_size: self.config.max_blob_size,
            },
            on_request: Box::new(move || grpc_touched.store(unix_now(), Ordering::Relaxed)),
            memory: self.store.config().memory.clone(),
            asset: self.config.experimental_remote_asset_api.then(|| {
                Arc::new(Downloader::new(DownloaderOptions {
                    connect_timeout: defaults::REMOTE_ASSET_CONNECT_TIMEOUT,
                    timeout: defaults::REMOTE_ASSET_TIMEOUT,
                    max_size: self.config.max_blob_size,
                    temp_dir: std::env::temp_dir(),
                    policy: AddressPolicy::new(self.config.remote_asset_allowed_hosts.clone()),
                }))
            }),
        });
        let idle = idle_watch(self.config.idle_timeout, last_request);
        let stopping = CancellationToken::new();
        let trigger = stopping.clone();
        let watcher = async move {
            tokio::select! {
                _ = shutdown => tracing::info!("shutting down"),
                _ = idle => tracing::info!("idle timeout reached; shutting down"),
            }
            crate::sd_notify::stopping();
            trigger.cancel();
        };
        let serving = GrpcServing {
            tls: self.grpc_tls,
            auth: self.auth,
            metrics: grpc_metrics,
            access_log: self.config.access_log_level == AccessLogLevel::All,
            connections: grpc_port,
        };
        let grpc = self.grpc.map(|listener| {
            let stop = stopping.clone();
            tokio::spawn(async move {
                if let Err(e) = grpc::serve(listener, grpc_state, serving, stop).await {
                    tracing::error!(error = %e, "gRPC server failed");
                }
            })
        });
        // The store is open and both listeners are bound: tell systemd
        // (Type=notify) that the service is ready.
        crate::sd_notify::ready();
        let http = http::serve(
            self.http,
            self.http_tls,
            state,
            stopping.cancelled_owned(),
            DRAIN,
        );
        tokio::join!(watcher, http);
        if let Some(grpc) = grpc {
            let _ = tokio::time::timeout(DRAIN, grpc).await;
        }
        if let Some((proxy, _)) = &self.s3 {
            let left = proxy.finish_uploads(UPLOAD_FLUSH).await;
            if left > 0 {
                tracing::warn!(
                    pending = left,
                    "uploads still queued at shutdown; they resume when the server starts again on this dir"
                );
            }
        }
        // The proxy holds the disk store; let it go so the store can close.
        drop(self.front);
        drop(self.s3);
        drop(self.proxy);
        drop(self.url_proxy);
        close_when_released(self.store).await;
    }
}

fn remote_cache_line(scheme: &str, configured: Option<&ListenAddr>, bound: &Listener) -> String {
    match (bound.local_tcp_addr(), configured) {
        (Some(addr), _) => {
            let host = if addr.ip().is_unspecified() {
                "localhost".to_string()
            } else if addr.is_ipv6() {
                format!("[{}]", addr.ip())
            } else {
                addr.ip().to_string()
            };
            format!("build --remote_cache={scheme}://{host}:{}\n", addr.port())
        }
        (None, Some(ListenAddr::Unix(path))) if scheme == "grpc" => {
            format!("build --remote_cache=unix://{}\n", path.display())
        }
        (None, Some(ListenAddr::Unix(path))) => format!(
            "build --remote_proxy=unix:{}\nbuild --remote_cache=http://localhost\n",
            path.display()
        ),
        (None, _) => String::new(),
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
