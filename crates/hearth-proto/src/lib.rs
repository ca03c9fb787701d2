//! Wire types shared by the guest agent and the host: envd's `process`
//! protobuf messages, the Connect protocol framing, and the agent's JSON
//! bodies.

pub mod agent;
pub mod connect;
pub mod filesystem;
pub mod process;
pub mod signature;
pub mod time;
