//! Wire types shared by the guest agent and the host: envd's `process` and
//! `filesystem` protobuf packages (generated from `proto/` at build time),
//! the Connect protocol framing, and the agent's JSON bodies.

pub mod agent;
pub mod connect;
pub mod filesystem;
pub mod process;
pub mod signature;
pub mod time;

/// The well-known types envd's schema imports.
pub mod google {
    pub mod protobuf {
        include!(concat!(env!("OUT_DIR"), "/google.protobuf.rs"));
    }
}
