//! The Hearth server: an E2B-compatible API in front of the node core.
//!
//! [`store`] keeps API keys and sandbox records in an SQLite file or a
//! PostgreSQL database so the server survives restarts; [`keys`] holds the API key format and
//! the first-start key bootstrap; [`manager`] keeps the live sandboxes and
//! their timeouts; [`builds`] runs template builds of E2B's build API;
//! [`api`] is the REST API (with the operator dashboard at `/dashboard`)
//! and [`proxy`] the sandbox proxy, both served on one port by [`server`].
//! [`cluster`] makes servers nodes of a cluster and runs its API servers.

pub mod api;
pub mod builds;
pub mod cluster;
mod dashboard;
pub mod error;
pub mod events;
mod events_api;
pub mod keys;
pub mod manager;
pub mod metrics;
pub mod proxy;
pub mod server;
mod snapshot_api;
pub mod store;
mod team_api;
mod template_api;
pub mod testing;
pub mod tls;
pub mod volumes;
mod volumes_api;
pub mod webhooks;
