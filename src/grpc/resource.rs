//! ByteStream resource names (see bytestream.rs).
