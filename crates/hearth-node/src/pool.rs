//! A pool of parked sandboxes of one template snapshot. Restoring a
//! snapshot costs a network slot, a disk overlay, a VMM process and, under
//! TCG, translating the guest code the first requests run: together a few
//! hundred milliseconds. The pool pays all of that ahead of time: each entry
//! is restored, has answered the agent's health check and an empty `/init`,
//! and then had its vCPUs stopped, so it waits using memory but no CPU. A
//! claim continues the vCPUs and sends the real `/init`.
//!
//! One background task refills the pool, one sandbox at a time, starting
//! 100 ms after the latest claim. When the pool is empty a claim restores
//! directly.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hearth_net::Egress;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::{Node, NodeError, Sandbox, Snapshot};

/// How long a pool entry may take to answer before it counts as failed.
const PARK_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause after a failed refill before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// A refill waits until this long after the latest claim: the claimed
/// sandboxes' first requests should not compete with a restore for CPU.
const REFILL_AFTER_CLAIM: Duration = Duration::from_millis(100);

/// Told how long each refill took (a restore and its agent's first
/// answer).
pub type RefillObserver = Arc<dyn Fn(Duration) + Send + Sync>;

struct Shared {
    node: Arc<Node>,
    on_refill: Option<RefillObserver>,
    snapshot: Snapshot,
    size: usize,
    parked: Mutex<VecDeque<Sandbox>>,
    /// Wakes the filler after a claim.
    claimed: Notify,
    /// Wakes waiters of [`Pool::wait_full`] after a refill.
    filled: Notify,
    last_claim: Mutex<Option<Instant>>,
}

impl Shared {
    fn parked(&self) -> MutexGuard<'_, VecDeque<Sandbox>> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Parked sandboxes of one snapshot, refilled in the background.
pub struct Pool {
    shared: Arc<Shared>,
    filler: JoinHandle<()>,
}

impl Pool {
    /// Starts filling a pool of `size` sandboxes restored from `snapshot`.
    /// Must be called inside a Tokio runtime.
    pub fn start(node: Arc<Node>, snapshot: Snapshot, size: usize) -> Self {
        Self::start_observed(node, snapshot, size, None)
    }

    /// [`Pool::start`], telling `on_refill` how long each refill took.
    pub fn start_observed(
        node: Arc<Node>,
        snapshot: Snapshot,
        size: usize,
        on_refill: Option<RefillObserver>,
    ) -> Self {
        let shared = Arc::new(Shared {
            node,
            on_refill,
            snapshot,
            size,
            parked: Mutex::new(VecDeque::with_capacity(size)),
            claimed: Notify::new(),
            filled: Notify::new(),
            last_claim: Mutex::new(None),
        });
        let filler = tokio::spawn(fill(Arc::clone(&shared)));
        Self { shared, filler }
    }

    /// The snapshot this pool restores.
    pub fn snapshot(&self) -> &Snapshot {
        &self.shared.snapshot
    }

    /// How many parked sandboxes wait now.
    pub fn len(&self) -> usize {
        self.shared.parked().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A sandbox restored from the pool's snapshot, with `egress` in force
    /// before its guest runs: a parked one when there is one, else restored
    /// now. Call [`Sandbox::wait_ready`] next.
    pub async fn create(&self, egress: &Egress) -> Result<Sandbox, NodeError> {
        let parked = self.shared.parked().pop_front();
        *self
            .shared
            .last_claim
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        self.shared.claimed.notify_one();
        let node = &self.shared.node;
        match parked {
            Some(sandbox) if egress.is_default() => Ok(sandbox),
            Some(mut sandbox) => match sandbox.set_egress(node, egress).await {
                Ok(()) => Ok(sandbox),
                Err(e) => {
                    if let Err(cleanup) = sandbox.destroy().await {
                        tracing::warn!("removing a pooled sandbox: {cleanup}");
                    }
                    Err(e)
                }
            },
            None => Sandbox::from_snapshot(node, &self.shared.snapshot, egress).await,
        }
    }

    /// Waits until the pool holds its full size.
    pub async fn wait_full(&self) {
        loop {
            let filled = self.shared.filled.notified();
            if self.len() >= self.shared.size {
                return;
            }
            filled.await;
        }
    }

    /// Stops refilling and destroys the parked sandboxes.
    pub async fn close(self) {
        self.filler.abort();
        // The filler may have been stopped holding a sandbox it was parking;
        // dropping it there ran the sandbox's clean-up.
        let _ = self.filler.await;
        let parked: Vec<Sandbox> = self.shared.parked().drain(..).collect();
        for sandbox in parked {
            if let Err(e) = sandbox.destroy().await {
                tracing::warn!("removing a pooled sandbox: {e}");
            }
        }
    }
}

/// Keeps the pool at its size, one restore at a time.
async fn fill(shared: Arc<Shared>) {
    loop {
        let claimed = shared.claimed.notified();
        if shared.parked().len() >= shared.size {
            claimed.await;
            continue;
        }
        let last_claim = *shared
            .last_claim
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(wait) = last_claim.and_then(|at| REFILL_AFTER_CLAIM.checked_sub(at.elapsed())) {
            tokio::time::sleep(wait).await;
            continue;
        }
        let started = Instant::now();
        match park_one(&shared).await {
            Ok(sandbox) => {
                if let Some(observe) = &shared.on_refill {
                    observe(started.elapsed());
                }
                shared.parked().push_back(sandbox);
                shared.filled.notify_waiters();
            }
            Err(e) => {
                tracing::warn!("refilling the sandbox pool: {e}");
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

async fn park_one(shared: &Shared) -> Result<Sandbox, NodeError> {
    let mut sandbox =
        Sandbox::from_snapshot(&shared.node, &shared.snapshot, &Egress::open()).await?;
    match sandbox.park(PARK_TIMEOUT).await {
        Ok(()) => Ok(sandbox),
        Err(e) => {
            if let Err(cleanup) = sandbox.destroy().await {
                tracing::warn!("removing a sandbox that failed to park: {cleanup}");
            }
            Err(e)
        }
    }
}
