//! IO adapters for HTTP/2 connections, under h2 and above the socket.
//!
//! h2 writes each frame as it produces it and flushes after every DATA
//! frame of any size, and it reads into whatever room its frame buffer has
//! left. On a connection carrying many small calls that is several system
//! calls per call, each also a wake-up of the peer; on a loaded machine they
//! cost more than the bytes. These adapters change how bytes meet the
//! socket and nothing else: every byte goes out and comes in, in order.
//!
//! # Layout
//! - `coalesce.rs`: [`CoalescedWrites`], the frames h2 writes in one burst
//!   leave in one `writev` (the server's gRPC port and the bench's gRPC
//!   client).
//! - `buffered_reads.rs`: [`BufferedReads`], one `recv` takes whatever the
//!   socket holds, up to 64 KiB, however little room h2's buffer has left
//!   (the bench's gRPC client).
//!
//! Depends on none of our crates.

mod buffered_reads;
mod coalesce;
#[cfg(test)]
mod test_io;

pub use buffered_reads::BufferedReads;
pub use coalesce::CoalescedWrites;
