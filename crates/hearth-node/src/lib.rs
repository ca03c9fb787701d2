//! The node core: turns a template into running sandboxes on this machine.
//!
//! A sandbox is a VM (from `hearth-vmm`) in a network slot (from
//! `hearth-net`) over a copy-on-write disk of a template (from
//! `hearth-image`), reached through the guest agent. Everything a sandbox
//! creates is owned by its [`Sandbox`] value and removed by
//! [`Sandbox::destroy`]; what a crashed process left behind is found and
//! removed by [`Node::open`]. A long-lived sandbox is handed to
//! [`supervise`]: one task owns it, moves its [`Lifecycle`] and notices its
//! VM's end.

mod agent;
mod build;
mod cgroup;
mod disk;
mod egress_proxy;
mod error;
mod id;
mod instance;
mod layout;
mod lifecycle;
mod node;
mod pool;
mod preflight;
mod sandbox;
mod snapshot;
mod supervisor;
mod templates;
mod volumes;

pub use agent::{AgentClient, AgentError, ProcessStream};
pub use build::{BuildError, BuildLog, BuildOptions, Built, RegistryOptions};
pub use cgroup::VmmUsage;
pub use egress_proxy::{EgressCounts, Outcome as EgressOutcome, WebPort};
pub use error::NodeError;
pub use hearth_net::VMM_UID_BASE;
pub use hearth_net::{Cidr, CidrError, DomainRule, Egress, NetError, Proto, Published};
pub use hearth_vmm::VOLUME_SLOTS;
pub use id::{random_hex, random_uuid};
pub use instance::last_console_line;
pub use layout::Layout;
pub use lifecycle::{Event, IllegalTransition, Lifecycle, State, StopReason};
pub use node::{Node, NodeOptions};
pub use pool::{Pool, RefillObserver};
pub use sandbox::{Captured, PauseMode, STOP_GRACE, Sandbox, SandboxSpec, ServiceStop};
pub use snapshot::{HostProfile, Snapshot, SnapshotMeta};
pub use supervisor::{Origin, SandboxHandle, Supervised, Unwatched, Watcher, supervise};
pub use templates::{Pruned, prune_build_cache, prune_template, remove_template};
pub use volumes::VolumeAttachment;
