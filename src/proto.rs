//! The generated contract (`proto/mailroom/v1`), and its descriptor set for reflection.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Package `mailroom.v1`.
pub mod v1 {
    tonic::include_proto!("mailroom.v1");
}

/// The encoded `FileDescriptorSet` of every mailroom proto, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mailroom_descriptor.bin"));
