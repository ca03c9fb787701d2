//! A cgroup per VMM: its vCPUs as a CPU quota and as its weight (a VMM
//! with N vCPUs competes for the host's CPUs as N busy tasks would, not as
//! one), its guest memory plus the VMM's own overhead as a memory limit,
//! and a cap on its threads. The unified hierarchy (cgroup v2) when the host has one with these
//! controllers, else the legacy per-controller hierarchies (v1), under a
//! `hearth` group in each. What to write is a pure plan; applying it is a
//! handful of file writes.

use std::path::{Path, PathBuf};

use crate::NodeError;

/// The group every VMM's cgroup lives under.
const PARENT: &str = "hearth";
/// The CPU quota's period (cgroup's default).
const PERIOD_US: u64 = 100_000;
/// Threads a VMM may have: vCPUs, I/O and RCU threads, with room to spare.
pub(crate) const PIDS_MAX: u32 = 256;

/// What one VMM may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Whole CPUs of time per period.
    pub(crate) cpus: u32,
    pub(crate) memory_bytes: u64,
    pub(crate) pids: u32,
}

/// Where the host keeps its cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Hierarchy {
    /// cgroup v2, mounted at this path, with cpu, memory and pids.
    Unified(PathBuf),
    /// cgroup v1: one mount per controller.
    Legacy {
        cpu: PathBuf,
        memory: PathBuf,
        pids: PathBuf,
    },
}

/// The directories, limit files and membership files of one VMM's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Made in order (parents first).
    pub(crate) dirs: Vec<PathBuf>,
    /// `(file, value)` written in order.
    pub(crate) writes: Vec<(PathBuf, String)>,
    /// The `cgroup.procs` files the VMM joins.
    pub(crate) procs: Vec<PathBuf>,
    /// Removed, in order, once the VMM is gone.
    pub(crate) remove: Vec<PathBuf>,
}

impl Hierarchy {
    /// What `root` (normally `/sys/fs/cgroup`) offers, if it has cpu,
    /// memory and pids in one hierarchy or the other.
    pub(crate) fn detect(root: &Path) -> Option<Self> {
        let controllers =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let words: Vec<&str> = controllers.split_whitespace().collect();
        if ["cpu", "memory", "pids"].iter().all(|c| words.contains(c)) {
            return Some(Self::Unified(root.to_owned()));
        }
        let legacy = Self::Legacy {
            cpu: root.join("cpu"),
            memory: root.join("memory"),
            pids: root.join("pids"),
        };
        let Self::Legacy { cpu, memory, pids } = &legacy else {
            unreachable!()
        };
        (cpu.join("cpu.cfs_quota_us").exists()
            && memory.join("memory.limit_in_bytes").exists()
            && pids.join("cgroup.procs").exists())
        .then_some(legacy)
    }

    /// The cgroup `name` with `limits`.
    pub(crate) fn plan(&self, name: &str, limits: Limits) -> Plan {
        let quota = u64::from(limits.cpus.max(1)) * PERIOD_US;
        match self {
            Self::Unified(root) => {
                let parent = root.join(PARENT);
                let dir = parent.join(name);
                let enable = "+cpu +memory +pids".to_owned();
                Plan {
                    dirs: vec![parent.clone(), dir.clone()],
                    writes: vec![
                        (root.join("cgroup.subtree_control"), enable.clone()),
                        (parent.join("cgroup.subtree_control"), enable),
                        (dir.join("cpu.max"), format!("{quota} {PERIOD_US}")),
                        (
                            dir.join("cpu.weight"),
                            (100 * u64::from(limits.cpus.max(1))).to_string(),
                        ),
                        (dir.join("memory.max"), limits.memory_bytes.to_string()),
                        (dir.join("memory.swap.max"), "0".to_owned()),
                        (dir.join("pids.max"), limits.pids.to_string()),
                    ],
                    procs: vec![dir.join("cgroup.procs")],
                    remove: vec![dir],
                }
            }
            Self::Legacy { cpu, memory, pids } => {
                let [cpu, memory, pids] = [cpu, memory, pids].map(|c| c.join(PARENT).join(name));
                Plan {
                    dirs: [&cpu, &memory, &pids]
                        .into_iter()
                        .flat_map(|d| [d.parent().expect("has a parent").to_owned(), d.clone()])
                        .collect(),
                    writes: vec![
                        (cpu.join("cpu.cfs_period_us"), PERIOD_US.to_string()),
                        (cpu.join("cpu.cfs_quota_us"), quota.to_string()),
                        (
                            cpu.join("cpu.shares"),
                            (1024 * u64::from(limits.cpus.max(1))).to_string(),
                        ),
                        (
                            memory.join("memory.limit_in_bytes"),
                            limits.memory_bytes.to_string(),
                        ),
                        (pids.join("pids.max"), limits.pids.to_string()),
                    ],
                    procs: [&cpu, &memory, &pids]
                        .into_iter()
                        .map(|d| d.join("cgroup.procs"))
                        .collect(),
                    remove: vec![cpu, memory, pids],
                }
            }
        }
    }

    /// The `hearth` groups, whose empty children are leftovers of VMMs
    /// that are gone.
    pub(crate) fn parents(&self) -> Vec<PathBuf> {
        match self {
            Self::Unified(root) => vec![root.join(PARENT)],
            Self::Legacy { cpu, memory, pids } => {
                [cpu, memory, pids].map(|c| c.join(PARENT)).to_vec()
            }
        }
    }
}

/// What a VMM uses and may use, as its cgroup and its process tell.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VmmUsage {
    /// CPU time its process has used, all threads, in seconds.
    pub cpu_seconds: f64,
    /// Its CPU limit, in CPUs.
    pub cpu_limit: Option<f64>,
    /// How many quota periods the limit held it back in.
    pub cpu_throttled_periods: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// The most it has used at once.
    pub memory_peak_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    /// Bytes its copy-on-write disk holds on the host (allocated blocks).
    pub disk_bytes: Option<u64>,
    /// Bytes the guest sent and received through its slot since it took
    /// the slot (a resume may take another).
    pub net_sent_bytes: Option<u64>,
    pub net_received_bytes: Option<u64>,
}

impl VmmUsage {
    /// Reads the usage of process `pid` and of the cgroup directories
    /// `dirs` (one in the unified hierarchy, or one per legacy controller).
    pub(crate) fn read(pid: u32, dirs: &[PathBuf]) -> Self {
        let first = |names: &[&str]| -> Option<String> {
            dirs.iter()
                .flat_map(|d| names.iter().map(move |n| d.join(n)))
                .find_map(|p| std::fs::read_to_string(p).ok())
        };
        let number = |names: &[&str]| first(names).and_then(|v| v.trim().parse::<u64>().ok());
        let stat = |key: &str| {
            first(&["cpu.stat"]).and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            })
        };
        let cpu_limit = match first(&["cpu.max"]) {
            Some(max) => parse_cpu_max(&max),
            None => number(&["cpu.cfs_quota_us"])
                .zip(number(&["cpu.cfs_period_us"]))
                .map(|(quota, period)| quota as f64 / period.max(1) as f64),
        };
        Self {
            cpu_seconds: process_cpu_seconds(pid).unwrap_or_default(),
            cpu_limit,
            cpu_throttled_periods: stat("nr_throttled "),
            memory_bytes: number(&["memory.current", "memory.usage_in_bytes"]),
            memory_peak_bytes: number(&["memory.peak", "memory.max_usage_in_bytes"]),
            memory_limit_bytes: number(&["memory.max", "memory.limit_in_bytes"]),
            ..Self::default()
        }
    }
}

/// `cpu.max` (`QUOTA PERIOD` or `max PERIOD`) as CPUs; `None` unlimited.
fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut words = text.split_whitespace();
    let quota: u64 = words.next()?.parse().ok()?;
    let period: u64 = words.next()?.parse().ok()?;
    Some(quota as f64 / period.max(1) as f64)
}

/// User and system time of process `pid` (`/proc/PID/stat`), in seconds.
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis, from field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    Some((utime + stime) as f64 / ticks as f64)
}

impl Plan {
    /// Makes the cgroup and sets its limits; on failure removes what it
    /// made.
    pub(crate) fn apply(&self) -> Result<(), NodeError> {
        let made = (|| {
            for dir in &self.dirs {
                match std::fs::create_dir(dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(NodeError::io(dir)(e)),
                }
            }
            for (file, value) in &self.writes {
                std::fs::write(file, value).map_err(NodeError::io(file))?;
            }
            Ok(())
        })();
        if made.is_err() {
            self.remove();
        }
        made
    }

    /// Removes the cgroup once its VMM has exited (the kernel refuses a
    /// group whose last task is still exiting: EBUSY, retried for up to
    /// 2 s); failures are logged. Blocks: call it off the async threads.
    pub(crate) fn remove(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        for dir in &self.remove {
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY)
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => {
                        tracing::warn!(cgroup = %dir.display(), "removing a VMM cgroup: {e}");
                        break;
                    }
                }
            }
        }
    }
}

/// A cgroup that is removed when dropped (its VMM killed by then, or about
/// to exit: [`Plan::remove`] waits for it), unless [`Owned::take`]n first.
/// A start that is cancelled half way leaves no cgroup behind.
pub(crate) struct Owned(Option<Plan>);

impl Owned {
    pub(crate) fn new(plan: Plan) -> Self {
        Self(Some(plan))
    }

    pub(crate) fn procs(&self) -> Vec<PathBuf> {
        self.0.as_ref().map(|p| p.procs.clone()).unwrap_or_default()
    }

    pub(crate) fn take(&mut self) -> Option<Plan> {
        self.0.take()
    }

    /// Its directories (one per hierarchy).
    pub(crate) fn dirs(&self) -> &[PathBuf] {
        self.0.as_ref().map_or(&[], |p| &p.remove)
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(plan) = self.0.take() {
            plan.remove();
        }
    }
}

/// Removes the cgroups under the `hearth` groups that hold no process:
/// leftovers of VMMs that died with a crashed process.
pub(crate) fn remove_leftovers(hierarchy: &Hierarchy) {
    for parent in hierarchy.parents() {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let empty = std::fs::read_to_string(path.join("cgroup.procs"))
                .is_ok_and(|procs| procs.trim().is_empty());
            if path.is_dir() && empty && std::fs::remove_dir(&path).is_ok() {
                tracing::info!(cgroup = %path.display(), "removed a leftover VMM cgroup");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        cpus: 2,
        memory_bytes: 768 << 20,
        pids: PIDS_MAX,
    };

    #[test]
    fn usage_reads_either_hierarchy_and_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = dir.path().join("v2");
        std::fs::create_dir(&v2).unwrap();
        for (file, value) in [
            ("cpu.max", "150000 100000\n"),
            ("cpu.stat", "usage_usec 5\nnr_periods 9\nnr_throttled 4\n"),
            ("memory.current", "1024\n"),
            ("memory.peak", "4096\n"),
            ("memory.max", "8192\n"),
        ] {
            std::fs::write(v2.join(file), value).unwrap();
        }
        let usage = VmmUsage::read(std::process::id(), &[v2]);
        assert_eq!(usage.cpu_limit, Some(1.5));
        assert_eq!(usage.cpu_throttled_periods, Some(4));
        assert_eq!(
            (
                usage.memory_bytes,
                usage.memory_peak_bytes,
                usage.memory_limit_bytes
            ),
            (Some(1024), Some(4096), Some(8192))
        );
        assert!(usage.cpu_seconds >= 0.0);

        let (cpu, memory) = (dir.path().join("cpu"), dir.path().join("memory"));
        for d in [&cpu, &memory] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(cpu.join("cpu.cfs_quota_us"), "200000\n").unwrap();
        std::fs::write(cpu.join("cpu.cfs_period_us"), "100000\n").unwrap();
        std::fs::write(memory.join("memory.usage_in_bytes"), "77\n").unwrap();
        let usage = VmmUsage::read(u32::MAX, &[cpu, memory]);
        assert_eq!(usage.cpu_limit, Some(2.0));
        assert_eq!(usage.memory_bytes, Some(77));
        assert_eq!(usage.memory_limit_bytes, None);
        assert_eq!(usage.cpu_seconds, 0.0);
        assert_eq!(parse_cpu_max("max 100000"), None);
    }

    #[test]
    fn unified_hierarchy_plan() {
        let plan = Hierarchy::Unified("/cg".into()).plan("sb1", LIMITS);
        let p = PathBuf::from;
        assert_eq!(plan.dirs, [p("/cg/hearth"), p("/cg/hearth/sb1")]);
        let writes: Vec<(String, &str)> = plan
            .writes
            .iter()
            .map(|(f, v)| (f.display().to_string(), v.as_str()))
            .collect();
        assert_eq!(
            writes,
            [
                ("/cg/cgroup.subtree_control".into(), "+cpu +memory +pids"),
                (
                    "/cg/hearth/cgroup.subtree_control".into(),
                    "+cpu +memory +pids"
                ),
                ("/cg/hearth/sb1/cpu.max".into(), "200000 100000"),
                ("/cg/hearth/sb1/cpu.weight".into(), "200"),
                ("/cg/hearth/sb1/memory.max".into(), "805306368"),
                ("/cg/hearth/sb1/memory.swap.max".into(), "0"),
                ("/cg/hearth/sb1/pids.max".into(), "256"),
            ]
        );
        assert_eq!(plan.procs, [p("/cg/hearth/sb1/cgroup.procs")]);
        assert_eq!(plan.remove, [p("/cg/hearth/sb1")]);
    }

    #[test]
    fn legacy_hierarchy_plan() {
        let h = Hierarchy::Legacy {
            cpu: "/cg/cpu".into(),
            memory: "/cg/memory".into(),
            pids: "/cg/pids".into(),
        };
        let plan = h.plan("sb1", Limits { cpus: 1, ..LIMITS });
        let p = PathBuf::from;
        assert_eq!(
            plan.writes,
            [
                (p("/cg/cpu/hearth/sb1/cpu.cfs_period_us"), "100000".into()),
                (p("/cg/cpu/hearth/sb1/cpu.cfs_quota_us"), "100000".into()),
                (p("/cg/cpu/hearth/sb1/cpu.shares"), "1024".into()),
                (
                    p("/cg/memory/hearth/sb1/memory.limit_in_bytes"),
                    "805306368".into()
                ),
                (p("/cg/pids/hearth/sb1/pids.max"), "256".into()),
            ]
        );
        assert_eq!(plan.dirs.len(), 6);
        assert_eq!(plan.procs.len(), 3);
        assert_eq!(h.parents()[1], p("/cg/memory/hearth"));
    }

    #[test]
    fn detects_what_the_host_has() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Hierarchy::detect(dir.path()), None);
        std::fs::write(
            dir.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        assert_eq!(
            Hierarchy::detect(dir.path()),
            Some(Hierarchy::Unified(dir.path().to_owned()))
        );
        // Without the memory controller in v2, v1 mounts decide.
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu pids\n").unwrap();
        assert_eq!(Hierarchy::detect(dir.path()), None);
        for (c, f) in [
            ("cpu", "cpu.cfs_quota_us"),
            ("memory", "memory.limit_in_bytes"),
            ("pids", "cgroup.procs"),
        ] {
            std::fs::create_dir(dir.path().join(c)).unwrap();
            std::fs::write(dir.path().join(c).join(f), "").unwrap();
        }
        assert!(matches!(
            Hierarchy::detect(dir.path()),
            Some(Hierarchy::Legacy { .. })
        ));
    }

    #[test]
    fn applying_makes_the_groups_and_removing_takes_them_away() {
        let dir = tempfile::tempdir().unwrap();
        let h = Hierarchy::Unified(dir.path().to_owned());
        let plan = h.plan("sb1", LIMITS);
        plan.apply().unwrap();
        let max = std::fs::read_to_string(dir.path().join("hearth/sb1/cpu.max")).unwrap();
        assert_eq!(max, "200000 100000");
        // A real cgroupfs removes a group with its files; here, the files.
        for (file, _) in &plan.writes[2..] {
            std::fs::remove_file(file).unwrap();
        }
        plan.remove();
        assert!(!dir.path().join("hearth/sb1").exists());
        assert!(dir.path().join("hearth").exists());
    }
}
