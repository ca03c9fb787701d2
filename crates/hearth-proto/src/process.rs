//! envd's `process` package (service `process.Process`): prost messages
//! and their proto3 JSON mapping, generated from `proto/process/process.proto`.

/// Fully qualified service name, the first path segment of its RPCs.
pub const SERVICE: &str = "process.Process";

include!(concat!(env!("OUT_DIR"), "/process.rs"));
include!(concat!(env!("OUT_DIR"), "/process.serde.rs"));
