//! The gRPC port's connections for tonic: the shared accept loop
//! ([`crate::listen::accept()`]; TLS handshakes run per connection, never in
//! the loop) as the stream `serve_with_incoming` takes, with what each
//! request needs to know of its connection attached as tonic connect info.

use std::io;

use futures_util::{Stream, StreamExt};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

use crate::listen::{self, ConnInfo, Connection, Listener, Port};
use bazel_cache_h2io::CoalescedWrites;

impl Connected for Connection {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// Accepts until `stop` is cancelled, under `port`'s limits; yields
/// connections ready for HTTP/2, their writes coalesced
/// ([`CoalescedWrites`]: one `writev` per burst of HTTP/2 frames).
pub(crate) fn incoming(
    listener: Listener,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
    port: Port,
) -> impl Stream<Item = io::Result<CoalescedWrites<Connection>>> + Send + 'static {
    listen::accept(listener, tls, stop, port).map(|c| Ok(CoalescedWrites::new(c)))
}
