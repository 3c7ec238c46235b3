#![doc = include_str!("../README.md")]

pub mod chunks;
pub mod convert;
pub mod payload;
pub mod security;

/// The generated messages and services of package `seqclust.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic, unused_qualifications)]
pub mod v1 {
    tonic::include_proto!("seqclust.v1");
}

pub use chunks::{CHUNK_BYTES, Reassembly, chunk_offsets};
pub use payload::{Sample, f32_bytes, f32s};

/// The protocol version a worker must speak to register (bumped on incompatible changes).
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest message either side accepts (chunked payloads stay far below it).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;
