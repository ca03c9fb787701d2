//! Slot allocation across processes. An index is taken by whoever holds an
//! exclusive `flock` on `<lock_dir>/slot-<index>.lock`; the kernel drops the
//! lock when its holder dies, which turns the slot's resources into leftovers
//! that the next [`Slots::acquire`] or [`Slots::cleanup_leftovers`] removes.
//!
//! Names are host-wide, so every allocator on a host must use the same lock
//! directory ([`DEFAULT_LOCK_DIR`]); an allocator with another one would take
//! live slots for leftovers.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::apply::{self, Runner, System};
use crate::egress::Egress;
use crate::error::NetError;
use crate::leftovers::Leftovers;
use crate::plan::{MAX_SLOTS, SlotPlan};

/// The lock directory all allocators of a host share.
pub const DEFAULT_LOCK_DIR: &str = "/run/hearth/slots";

/// Allocates network slots among the indexes of a range.
#[derive(Debug)]
pub struct Slots {
    lock_dir: PathBuf,
    indexes: Range<u32>,
    runner: Arc<dyn Runner>,
    /// How many slots this value handed out are held now.
    held: Arc<AtomicU32>,
}

/// Counts a slot as held while it lives.
#[derive(Debug)]
struct Held(Arc<AtomicU32>);

impl Held {
    fn new(count: &Arc<AtomicU32>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(count))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Slots {
    /// Slots `0..capacity` (at most [`MAX_SLOTS`]), locked in `lock_dir`,
    /// which is created when first needed.
    pub fn new(lock_dir: PathBuf, capacity: u32) -> Self {
        Self::with_range(lock_dir, 0..capacity)
    }

    /// Slots of `indexes` only (clipped to [`MAX_SLOTS`]): lets callers that
    /// run side by side, such as tests, keep out of each other's way.
    pub fn with_range(lock_dir: PathBuf, indexes: Range<u32>) -> Self {
        let indexes = indexes.start..indexes.end.min(MAX_SLOTS);
        Self {
            lock_dir,
            indexes,
            runner: Arc::new(System),
            held: Arc::default(),
        }
    }

    /// How many slots may be held at once.
    pub fn capacity(&self) -> u32 {
        self.indexes.len().try_into().unwrap_or(u32::MAX)
    }

    /// How many slots acquired or adopted through this value are held now.
    pub fn in_use(&self) -> u32 {
        self.held.load(Ordering::Relaxed)
    }

    /// Takes the lowest free index, removes whatever a dead holder left of it,
    /// and builds the slot. On failure nothing of the slot is left.
    pub fn acquire(&self) -> Result<Slot, NetError> {
        apply::preflight()?;
        for index in self.indexes.clone() {
            let Some(lock) = self.try_lock(index)? else {
                continue;
            };
            let plan = SlotPlan::new(index)?;
            apply::teardown(&*self.runner, &plan)?;
            apply::apply(&*self.runner, &plan)?;
            tracing::info!(index, netns = %plan.netns, ns_ip = %plan.ns_ip, "acquired network slot");
            return Ok(Slot {
                plan,
                lock,
                runner: Arc::clone(&self.runner),
                released: false,
                _held: Held::new(&self.held),
            });
        }
        Err(NetError::Exhausted {
            capacity: self.indexes.len().try_into().unwrap_or(u32::MAX),
        })
    }

    /// Removes every project netns, host veth and host table whose slot lock
    /// is free, whatever its index; returns the indexes cleaned. Slots held by
    /// live holders, in this process or another, are left alone.
    pub fn cleanup_leftovers(&self) -> Result<Vec<u32>, NetError> {
        apply::preflight()?;
        let present = apply::list(&*self.runner)?;
        let mut cleaned = Vec::new();
        for index in present.indexes() {
            let Some(_lock) = self.try_lock(index)? else {
                continue;
            };
            let plan = SlotPlan::new(index)?;
            // Listed again under the lock: its holder may have removed
            // part of it between the first listing and its unlock.
            apply::teardown(&*self.runner, &plan)?;
            tracing::info!(index, "removed leftovers of network slot");
            cleaned.push(index);
        }
        Ok(cleaned)
    }

    /// The lock file of slot `index`.
    pub fn lock_path(&self, index: u32) -> PathBuf {
        self.lock_dir.join(format!("slot-{index}.lock"))
    }

    /// Takes over slot `index`, built by an earlier process and still in
    /// use (by a VM that outlived it): `lock` is an open file of
    /// [`Slots::lock_path`] that holds its lock (a copy of the VM's). Its
    /// network namespace must still exist; nothing is rebuilt.
    pub fn adopt(&self, index: u32, lock: File) -> Result<Slot, NetError> {
        let plan = SlotPlan::new(index)?;
        let path = plan.netns_path();
        if let Err(source) = fs::metadata(&path) {
            return Err(NetError::Netns { path, source });
        }
        tracing::info!(index, netns = %plan.netns, "adopted network slot");
        Ok(Slot {
            plan,
            lock,
            runner: Arc::clone(&self.runner),
            released: false,
            _held: Held::new(&self.held),
        })
    }

    /// The locked lock file of `index`, or `None` when another holder has it.
    fn try_lock(&self, index: u32) -> Result<Option<File>, NetError> {
        let path = self.lock_path(index);
        let lock_error = |source| NetError::Lock {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&self.lock_dir).map_err(lock_error)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(lock_error)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(source)) => Err(lock_error(source)),
        }
    }

    #[cfg(test)]
    fn with_runner(mut self, runner: Arc<dyn Runner>) -> Self {
        self.runner = runner;
        self
    }
}

/// A network slot, built and held for this process. Dropping it without
/// [`Slot::release`] removes it too, logging what fails.
#[derive(Debug)]
pub struct Slot {
    plan: SlotPlan,
    /// Holds the index while open; unlocked once the resources are gone.
    lock: File,
    runner: Arc<dyn Runner>,
    released: bool,
    _held: Held,
}

impl Slot {
    pub fn plan(&self) -> &SlotPlan {
        &self.plan
    }

    /// Opens the slot's netns, for a process that must run inside it (the
    /// VMM, which opens `tap0` there). Open it before spawning, then join it
    /// in the child between fork and exec, where allocating is not allowed:
    ///
    /// ```no_run
    /// # fn launch(slot: &hearth_net::Slot) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::unix::process::CommandExt;
    /// use nix::sched::{CloneFlags, setns};
    ///
    /// let netns = slot.enter_netns_fd()?;
    /// let mut cmd = std::process::Command::new("qemu-system-x86_64");
    /// // SAFETY: the closure only makes the setns system call, which is
    /// // async-signal-safe, on a descriptor opened before the fork.
    /// unsafe {
    ///     cmd.pre_exec(move || Ok(setns(&netns, CloneFlags::CLONE_NEWNET)?));
    /// }
    /// cmd.spawn()?;
    /// # Ok(()) }
    /// ```
    ///
    /// For code in this process, join it from a thread of its own: `setns`
    /// moves only the calling thread.
    pub fn enter_netns_fd(&self) -> Result<OwnedFd, NetError> {
        let path = self.plan.netns_path();
        File::open(&path)
            .map(OwnedFd::from)
            .map_err(|source| NetError::Netns { path, source })
    }

    /// Replaces the slot's egress policy and published ports (see
    /// [`Egress`]); a new slot's is open, with none. Takes effect for the
    /// next packet, so a guest's open connections to a newly denied
    /// address stop too.
    pub fn set_egress(&self, egress: &Egress) -> Result<(), NetError> {
        self.runner.run(&self.plan.egress_step(egress))?;
        for step in self.plan.publish_steps(&egress.publish) {
            self.runner.run(&step)?;
        }
        tracing::debug!(index = self.plan.index, ?egress, "set egress policy");
        Ok(())
    }

    /// Bytes the guest sent and received through the slot since it was
    /// built: the counters of the host end of its veth (what that end
    /// receives the guest sent). `None` where they cannot be read.
    pub fn guest_bytes(&self) -> (Option<u64>, Option<u64>) {
        let counter = |name: &str| {
            let path = format!("/sys/class/net/{}/statistics/{name}", self.plan.host_veth);
            std::fs::read_to_string(path).ok()?.trim().parse().ok()
        };
        (counter("rx_bytes"), counter("tx_bytes"))
    }

    /// The open lock file that holds the slot: a VMM that inherits it
    /// holds the slot for as long as it runs.
    pub fn lock(&self) -> &File {
        &self.lock
    }

    /// Lets go of the slot without removing it, for a VM that outlives this
    /// process: whoever else holds its lock (that VM) keeps it, and a later
    /// [`Slots::adopt`] takes it over.
    pub fn detach(mut self) {
        self.released = true;
    }

    /// Removes the netns (with `veth0`, `tap0` and the in-netns table), the
    /// host veth and the host table, then gives the index back. The index is
    /// given back even when removing fails; the next acquire or clean-up
    /// removes what is left.
    pub fn release(mut self) -> Result<(), NetError> {
        self.released = true;
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), NetError> {
        let result = apply::teardown(&*self.runner, &self.plan);
        if let Err(err) = self.lock.unlock() {
            tracing::warn!(index = self.plan.index, error = %err, "unlocking slot failed");
        }
        tracing::info!(
            index = self.plan.index,
            ok = result.is_ok(),
            "released network slot"
        );
        result
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.released
            && let Err(err) = self.teardown()
        {
            tracing::error!(index = self.plan.index, error = %err, "releasing network slot failed");
        }
    }
}

/// Lists the project's netns, links and nft tables present on this host now.
pub fn leftovers() -> Result<Leftovers, NetError> {
    apply::list(&System)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Step;

    /// Does everything for real but fails one step of the set-up.
    #[derive(Debug)]
    struct FailOn(Step);

    impl Runner for FailOn {
        fn run(&self, step: &Step) -> Result<String, NetError> {
            if *step == self.0 {
                return Err(NetError::Command {
                    command: step.to_string(),
                    status: "exit status: 1".into(),
                    stderr: "injected failure".into(),
                });
            }
            System.run(step)
        }
    }

    #[test]
    #[ignore = "needs root: run with --include-ignored"]
    fn acquire_leaves_nothing_when_any_step_fails() {
        const INDEX: u32 = 16_200;
        let slots = || Slots::with_range(DEFAULT_LOCK_DIR.into(), INDEX..INDEX + 1);
        let plan = SlotPlan::new(INDEX).unwrap();
        for step in plan.apply_steps() {
            let failing = slots().with_runner(Arc::new(FailOn(step.clone())));
            let err = failing.acquire().unwrap_err();
            assert!(
                err.to_string().contains("injected failure"),
                "{step}: {err}"
            );
            let left = leftovers().unwrap();
            assert!(
                !left.indexes().contains(&INDEX),
                "after failing {step}: {left:?}"
            );
        }
        // The index was given back each time: a real acquire gets it.
        let slot = slots().acquire().unwrap();
        assert_eq!(slot.plan().index, INDEX);
        slot.release().unwrap();
        assert!(!leftovers().unwrap().indexes().contains(&INDEX));
    }
}
