//! The node core: turns a template into running sandboxes on this machine.
//!
//! A sandbox is a VM (from `hearth-vmm`) in a network slot (from
//! `hearth-net`) over a copy-on-write disk of a template (from
//! `hearth-image`), reached through the guest agent. Everything a sandbox
//! creates is owned by its [`Sandbox`] value and removed by
//! [`Sandbox::destroy`]; what a crashed process left behind is found and
//! removed by [`Node::open`].

mod agent;
mod build;
mod error;
mod id;
mod instance;
mod layout;
mod node;
mod pool;
mod preflight;
mod sandbox;
mod snapshot;
mod templates;

pub use agent::{AgentClient, AgentError, ProcessStream};
pub use build::{BuildError, BuildLog, BuildOptions, Built, RegistryOptions};
pub use error::NodeError;
pub use hearth_net::{Cidr, CidrError, Egress};
pub use instance::last_console_line;
pub use layout::Layout;
pub use node::{Node, NodeOptions};
pub use pool::Pool;
pub use sandbox::{STOP_GRACE, Sandbox, SandboxSpec, ServiceStop};
pub use snapshot::{HostProfile, Snapshot, SnapshotMeta};
pub use templates::{Pruned, prune_build_cache, prune_template, remove_template};
