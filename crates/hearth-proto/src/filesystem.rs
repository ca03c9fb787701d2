//! envd's `filesystem` package (service `filesystem.Filesystem`): prost
//! messages and their proto3 JSON mapping, generated from
//! `proto/filesystem/filesystem.proto`.

pub use crate::google::protobuf::Timestamp;

/// Fully qualified service name, the first path segment of its RPCs.
pub const SERVICE: &str = "filesystem.Filesystem";

include!(concat!(env!("OUT_DIR"), "/filesystem.rs"));
include!(concat!(env!("OUT_DIR"), "/filesystem.serde.rs"));
