//! ByteStream's `WriteRequest`, with its bytes as [`Bytes`] instead of the
//! `Vec<u8>` of the generated type.
//!
//! Why: the generated `WriteRequest` decodes its `data` by copying it out
//! of tonic's receive buffer into a fresh `Vec`, a second full copy of
//! every uploaded byte (tonic has already gathered the HTTP/2 frames into
//! that buffer) and, for MiB-sized messages, a fresh allocation whose
//! pages fault in. Decoded as `Bytes`, the data is a slice of tonic's
//! buffer (prost takes it with `copy_to_bytes`, which splits the buffer
//! rather than copying). Read's answer needs no message type: it is framed
//! in place (read_frames.rs).
//!
//! Wire-compatible with `google.bytestream` (the same field numbers and
//! types), so clients see no difference; the other messages of the service
//! (`ReadRequest`, `WriteResponse`, QueryWriteStatus's) are the generated
//! ones.

use bytes::Bytes;

/// `google.bytestream.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WriteRequest {
    #[prost(string, tag = "1")]
    pub resource_name: String,
    #[prost(int64, tag = "2")]
    pub write_offset: i64,
    #[prost(bool, tag = "3")]
    pub finish_write: bool,
    #[prost(bytes = "bytes", tag = "10")]
    pub data: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;
    use bazel_remote_apis::google::bytestream as generated;
    use prost::Message;

    /// The message encodes to the generated type's bytes and back, so the
    /// field numbers and types match the proto.
    #[test]
    fn wire_compatible_with_the_generated_message() {
        let ours = WriteRequest {
            resource_name: "uploads/u/blobs/ab/3".into(),
            write_offset: 7,
            finish_write: true,
            data: Bytes::from_static(b"abc"),
        };
        let theirs = generated::WriteRequest {
            resource_name: "uploads/u/blobs/ab/3".into(),
            write_offset: 7,
            finish_write: true,
            data: b"abc".to_vec(),
        };
        assert_eq!(ours.encode_to_vec(), theirs.encode_to_vec());
        let back = WriteRequest::decode(&theirs.encode_to_vec()[..]).unwrap();
        assert_eq!(back, ours);
    }

    /// Decoding from a `Bytes` buffer shares it: the data is not copied.
    #[test]
    fn data_decoded_from_bytes_shares_the_buffer() {
        let wire = Bytes::from(
            generated::WriteRequest {
                resource_name: String::new(),
                write_offset: 0,
                finish_write: false,
                data: vec![5; 100_000],
            }
            .encode_to_vec(),
        );
        let decoded = WriteRequest::decode(wire.clone()).unwrap();
        let range = wire.as_ptr_range();
        assert!(range.contains(&decoded.data.as_ptr()), "data was copied");
        assert_eq!(decoded.data.len(), 100_000);
    }
}
