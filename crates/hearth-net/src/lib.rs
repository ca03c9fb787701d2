//! Network slots: one network namespace per sandbox, holding the guest's tap
//! device behind NAT, so that every guest keeps the same address
//! ([`GUEST_IP`]) while the host reaches each one at its slot's unique
//! [`SlotPlan::ns_ip`].
//!
//! [`SlotPlan`] derives every name, address and rule from the slot index
//! (pure, tested without root); a small apply layer carries it out with `ip`
//! and `nft`. [`Slots`] hands out indexes across processes with file locks.
//! See the crate README for the address plan and the rules.

mod apply;
mod domain;
mod egress;
mod error;
mod leftovers;
#[cfg(feature = "testing")]
mod outside;
mod plan;
mod publish;
mod slots;

pub use domain::{DomainError, DomainRule};
pub use egress::{Cidr, CidrError, Egress, PROXY_HTTP_PORT, PROXY_TLS_PORT};
pub use error::NetError;
pub use leftovers::Leftovers;
#[cfg(feature = "testing")]
pub use outside::Outside;
pub use plan::{
    GATEWAY_IP, GATEWAY_MAC, GUEST_IP, GUEST_MAC, GUEST_PREFIX_LEN, MAX_SLOTS, PlanError, SlotPlan,
    TAP_NAME, VMM_UID_BASE,
};
pub use publish::{Proto, PublishError, Published};
pub use slots::{DEFAULT_LOCK_DIR, Slot, Slots, leftovers};
