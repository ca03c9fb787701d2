//! `hearth bench`: latency, memory and density figures of this machine,
//! measured on real sandboxes. A table for people, `--json` for machines.
//! What each figure means is in docs/bench.md.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures_util::future::join_all;
use hearth_node::{Egress, Layout, Node, NodeOptions, Pool, Sandbox, SandboxSpec};
use hearth_proto::agent::InitRequest;
use hearth_vmm::{AccelChoice, VmmChoice};
use serde::Serialize;

use super::CommandResult;

const READY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Template to measure.
    #[arg(long, default_value = "base")]
    template: String,
    /// Virtual CPUs per sandbox.
    #[arg(long, default_value_t = 2)]
    vcpus: u32,
    /// Guest memory per sandbox in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// Sandboxes created one after another for the sequential latency.
    #[arg(long, default_value_t = 50)]
    sequential: usize,
    /// Sandboxes created at once for the concurrent latency.
    #[arg(long, default_value_t = 10)]
    concurrent: usize,
    /// Size of the pool of parked sandboxes (at least --concurrent).
    #[arg(long, default_value_t = 10)]
    pool: usize,
    /// `true` round trips timed in one sandbox.
    #[arg(long, default_value_t = 100)]
    execs: usize,
    /// Pause/resume cycles timed.
    #[arg(long, default_value_t = 5)]
    pauses: usize,
    /// Idle sandboxes held at once to measure memory and CPU per sandbox.
    #[arg(long, default_value_t = 100)]
    idle: usize,
    /// Seconds the idle sandboxes are watched for CPU use.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Share of host memory the density estimate may use, in percent.
    #[arg(long, default_value_t = 90)]
    memory_budget_pct: u32,
    /// Share of host CPU the density estimate may use, in percent.
    #[arg(long, default_value_t = 80)]
    cpu_budget_pct: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Accelerator: auto, kvm or tcg.
    #[arg(long, default_value = "auto")]
    accel: AccelChoice,
    /// VMM driver: auto (Firecracker where firecracker and jailer are on
    /// PATH and KVM runs guests, else QEMU), qemu or firecracker.
    #[arg(long, default_value = "auto", env = "HEARTH_VMM")]
    vmm: VmmChoice,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize)]
struct Latency {
    samples: usize,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Latency {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let ms = |d: Duration| (d.as_secs_f64() * 10_000.0).round() / 10.0;
        let at = |percent: usize| {
            // Nearest-rank percentile.
            let rank = (percent * samples.len()).div_ceil(100);
            ms(samples[rank.clamp(1, samples.len()) - 1])
        };
        Self {
            samples: samples.len(),
            p50_ms: at(50),
            p95_ms: at(95),
            p99_ms: at(99),
            max_ms: samples.last().map_or(0.0, |d| ms(*d)),
        }
    }
}

#[derive(Debug, Serialize)]
struct PauseFigures {
    pause: Latency,
    resume: Latency,
    /// Median pause and resume scaled to 1 GiB of guest memory.
    pause_ms_per_gib: f64,
    resume_ms_per_gib: f64,
    /// Size of the saved state of one paused sandbox.
    state_mib: f64,
}

#[derive(Debug, Serialize)]
struct IdleFigures {
    /// Idle sandboxes held at once.
    held: usize,
    /// Mean proportional set size of one sandbox's VMM process.
    pss_mib: f64,
    /// Mean CPU use of one idle sandbox, in percent of one core.
    cpu_pct: f64,
    host_memory_mib: f64,
    host_cpus: usize,
    /// Idle sandboxes that fit in the memory budget and in the CPU budget;
    /// the smaller is the estimate.
    fit_by_memory: u64,
    fit_by_cpu: u64,
    estimate: u64,
}

/// Create → ready latencies of one way of creating.
#[derive(Debug, Serialize)]
struct Creates {
    sequential: Latency,
    concurrent: Latency,
}

#[derive(Debug, Serialize)]
struct Report {
    vmm: String,
    accel: String,
    vcpus: u32,
    memory_mib: u32,
    concurrent: usize,
    pool_size: usize,
    /// Every create restores the snapshot itself.
    create_restore: Creates,
    /// Every create takes a parked sandbox from a full pool.
    create_pooled: Creates,
    exec: Latency,
    pause_resume: PauseFigures,
    idle: IdleFigures,
}

pub(crate) fn run(args: BenchArgs, layout: &Layout) -> CommandResult {
    if args.sequential == 0 || args.concurrent == 0 || args.execs == 0 || args.pauses == 0 {
        return Err(anyhow::anyhow!(
            "--sequential, --concurrent, --execs and --pauses must be at least 1"
        )
        .into());
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(measure(&args, layout))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(args: &BenchArgs, layout: &Layout) -> anyhow::Result<Report> {
    let node = Arc::new(Node::open(
        layout.clone(),
        &NodeOptions {
            accel: args.accel,
            vmm: args.vmm,
            ..NodeOptions::default()
        },
    )?);
    let spec = SandboxSpec {
        template: node.template(&args.template)?,
        kernel: node.kernel()?,
        vcpus: args.vcpus,
        memory_mib: args.memory,
        boot_timeout: READY_TIMEOUT,
    };
    note(args, "taking or checking the template snapshot");
    let snapshot = node.snapshot(&spec).await?;

    note(args, "creates that restore the snapshot");
    let create_restore = creates(args, None, || async {
        Ok(Sandbox::from_snapshot(&node, &snapshot, &Egress::open()).await?)
    })
    .await?;

    note(args, "creates from a pool");
    let pool = Pool::start(
        Arc::clone(&node),
        snapshot.clone(),
        args.pool.max(args.concurrent),
    );
    let create_pooled = creates(args, Some(&pool), || async {
        Ok(pool.create(&Egress::open()).await?)
    })
    .await;
    pool.close().await;
    let create_pooled = create_pooled?;

    note(args, "exec round trips");
    let sandbox = create_ready(&node, &spec).await?;
    let exec = exec_round_trips(&sandbox, args.execs).await;
    sandbox.destroy().await?;
    let exec = exec?;

    note(args, "pause and resume");
    let pause_resume = pause_resume(&node, &spec, args.pauses).await?;

    note(args, "idle sandboxes");
    let idle = idle(&node, &spec, args).await?;

    Ok(Report {
        vmm: node.vmm().kind.to_string(),
        accel: node.accel().accel.to_string(),
        vcpus: args.vcpus,
        memory_mib: args.memory,
        concurrent: args.concurrent,
        pool_size: args.pool.max(args.concurrent),
        create_restore,
        create_pooled,
        exec,
        pause_resume,
        idle,
    })
}

/// Times `create` + ready: `--sequential` one after another (each destroyed
/// before the next), then `--concurrent` at once. With a pool, it is full
/// before every measured create.
async fn creates<F, Fut>(
    args: &BenchArgs,
    pool: Option<&Pool>,
    create: F,
) -> anyhow::Result<Creates>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<Sandbox>>,
{
    let ready = |sandbox: anyhow::Result<Sandbox>| async {
        let mut sandbox = sandbox?;
        sandbox
            .wait_ready(READY_TIMEOUT, InitRequest::default())
            .await?;
        Ok::<_, anyhow::Error>(sandbox)
    };
    // One unmeasured create warms the host's caches.
    ready(create().await).await?.destroy().await?;
    let mut sequential = Vec::with_capacity(args.sequential);
    for _ in 0..args.sequential {
        if let Some(pool) = pool {
            pool.wait_full().await;
        }
        let started = Instant::now();
        let sandbox = ready(create().await).await?;
        sequential.push(started.elapsed());
        sandbox.destroy().await?;
    }
    if let Some(pool) = pool {
        pool.wait_full().await;
    }
    let at_once = (0..args.concurrent).map(|_| async {
        let started = Instant::now();
        let sandbox = ready(create().await).await;
        (started.elapsed(), sandbox)
    });
    let mut concurrent = Vec::new();
    let mut failure = None;
    for (elapsed, sandbox) in join_all(at_once).await {
        match sandbox {
            Ok(sandbox) => {
                concurrent.push(elapsed);
                sandbox.destroy().await?;
            }
            Err(e) => failure = Some(e),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(Creates {
            sequential: Latency::of(sequential),
            concurrent: Latency::of(concurrent),
        }),
    }
}

fn note(args: &BenchArgs, what: &str) {
    if !args.json {
        eprintln!("hearth bench: {what}…");
    }
}

async fn create_ready(node: &Node, spec: &SandboxSpec) -> anyhow::Result<Sandbox> {
    let mut sandbox = Sandbox::create(node, spec).await?;
    sandbox
        .wait_ready(READY_TIMEOUT, InitRequest::default())
        .await?;
    Ok(sandbox)
}

/// Runs `true` and waits for its end.
async fn run_true(sandbox: &Sandbox) -> anyhow::Result<()> {
    match sandbox.agent().run("true", &[]).await? {
        0 => Ok(()),
        code => bail!("`true` exited with {code}"),
    }
}

async fn exec_round_trips(sandbox: &Sandbox, count: usize) -> anyhow::Result<Latency> {
    // Warm up: the first runs pay for the guest's page cache and, under
    // TCG, for translating the code involved.
    for _ in 0..5 {
        run_true(sandbox).await?;
    }
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        run_true(sandbox).await?;
        samples.push(started.elapsed());
    }
    Ok(Latency::of(samples))
}

async fn pause_resume(
    node: &Node,
    spec: &SandboxSpec,
    cycles: usize,
) -> anyhow::Result<PauseFigures> {
    let mut sandbox = create_ready(node, spec).await?;
    let (mut pauses, mut resumes) = (Vec::new(), Vec::new());
    let mut state_bytes = 0;
    for _ in 0..cycles {
        let dir = sandbox.dir().to_owned();
        let started = Instant::now();
        sandbox.pause(hearth_node::PauseMode::Full).await?;
        pauses.push(started.elapsed());
        let id = sandbox.id().to_owned();
        state_bytes = std::fs::metadata(dir.join("state"))
            .map(|m| m.len())
            .unwrap_or(0);
        let started = Instant::now();
        sandbox = Sandbox::resume(node, &id).await?;
        sandbox
            .wait_ready(READY_TIMEOUT, InitRequest::default())
            .await?;
        resumes.push(started.elapsed());
    }
    sandbox.destroy().await?;
    let (pause, resume) = (Latency::of(pauses), Latency::of(resumes));
    let gib = f64::from(spec.memory_mib) / 1024.0;
    Ok(PauseFigures {
        pause_ms_per_gib: round1(pause.p50_ms / gib),
        resume_ms_per_gib: round1(resume.p50_ms / gib),
        pause,
        resume,
        state_mib: round1(state_bytes as f64 / f64::from(1u32 << 20)),
    })
}

async fn idle(node: &Node, spec: &SandboxSpec, args: &BenchArgs) -> anyhow::Result<IdleFigures> {
    let mut held = Vec::with_capacity(args.idle);
    let mut result = async {
        for _ in 0..args.idle {
            held.push(create_ready(node, spec).await?);
        }
        // Let the guests settle after /init before sampling.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pids: Vec<u32> = held.iter().map(Sandbox::vmm_pid).collect();
        let before = cpu_ticks(&pids)?;
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
        let ticks = cpu_ticks(&pids)? - before;
        let secs = started.elapsed().as_secs_f64();
        let pss_kib: u64 = pids
            .iter()
            .map(|&pid| pss_kib(pid))
            .sum::<anyhow::Result<u64>>()?;
        Ok::<_, anyhow::Error>((ticks, secs, pss_kib))
    }
    .await;
    let count = held.len();
    for sandbox in held {
        if let Err(e) = sandbox.destroy().await {
            result = Err(e.into());
        }
    }
    let (ticks, secs, pss_kib) = result?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu_pct = ticks as f64 / ticks_per_sec / secs / count as f64 * 100.0;
    let pss_mib = pss_kib as f64 / 1024.0 / count as f64;
    let host_memory_mib = mem_total_kib()? as f64 / 1024.0;
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let fit_by_memory =
        whole(host_memory_mib * f64::from(args.memory_budget_pct) / 100.0 / pss_mib);
    let fit_by_cpu = if cpu_pct > 0.0 {
        whole(host_cpus as f64 * f64::from(args.cpu_budget_pct) / cpu_pct)
    } else {
        u64::MAX
    };
    Ok(IdleFigures {
        held: count,
        pss_mib: round1(pss_mib),
        cpu_pct: (cpu_pct * 100.0).round() / 100.0,
        host_memory_mib: round1(host_memory_mib),
        host_cpus,
        fit_by_memory,
        fit_by_cpu,
        estimate: fit_by_memory.min(fit_by_cpu),
    })
}

/// How many whole sandboxes `x` allows.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn whole(x: f64) -> u64 {
    // Float-to-int `as` saturates: NaN and negatives give 0, infinity u64::MAX.
    x.floor() as u64
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// User plus system clock ticks of these processes so far.
fn cpu_ticks(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // Fields after the command name, which ends at the last ')'.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 here.
        for i in [11, 12] {
            total += fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .with_context(|| format!("parsing {path}"))?;
        }
    }
    Ok(total)
}

fn pss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    kib_field(&text, "Pss:").with_context(|| format!("no Pss in {path}"))
}

fn mem_total_kib() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    kib_field(&text, "MemTotal:").context("no MemTotal in /proc/meminfo")
}

/// The value of a `Name:   123 kB` line.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn print_table(r: &Report) {
    println!(
        "hearth bench: {} on {}, {} vCPUs, {} MiB per sandbox\n",
        r.vmm, r.accel, r.vcpus, r.memory_mib
    );
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "latency (ms)", "p50", "p95", "p99", "max", "n"
    );
    let row = |name: &str, l: &Latency| {
        println!(
            "{name:<34} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6}",
            l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms, l.samples
        );
    };
    row("create → ready, pool", &r.create_pooled.sequential);
    row(
        &format!("create → ready, pool, {} at once", r.concurrent),
        &r.create_pooled.concurrent,
    );
    row("create → ready, restore", &r.create_restore.sequential);
    row(
        &format!("create → ready, restore, {} at once", r.concurrent),
        &r.create_restore.concurrent,
    );
    row("exec round trip (`true`)", &r.exec);
    row("pause", &r.pause_resume.pause);
    row("resume → ready", &r.pause_resume.resume);
    let p = &r.pause_resume;
    println!(
        "\npause {:.1} ms/GiB, resume {:.1} ms/GiB of guest memory; saved state {:.1} MiB",
        p.pause_ms_per_gib, p.resume_ms_per_gib, p.state_mib
    );
    let i = &r.idle;
    println!(
        "\n{} idle sandboxes held: {:.1} MiB PSS and {:.2}% of a core each",
        i.held, i.pss_mib, i.cpu_pct
    );
    println!(
        "density: {} by memory ({:.0} MiB), {} by CPU ({} cores) → about {} idle sandboxes",
        i.fit_by_memory,
        i.host_memory_mib,
        if i.fit_by_cpu == u64::MAX {
            "unbounded".to_owned()
        } else {
            i.fit_by_cpu.to_string()
        },
        i.host_cpus,
        i.estimate
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(samples);
        assert_eq!(
            (l.p50_ms, l.p95_ms, l.p99_ms, l.max_ms),
            (50.0, 95.0, 99.0, 100.0)
        );
        let l = Latency::of(vec![Duration::from_micros(2500)]);
        assert_eq!((l.p50_ms, l.p99_ms, l.samples), (2.5, 2.5, 1));
    }

    #[test]
    fn kib_fields() {
        let text = "Rss:  2048 kB\nPss:   1536 kB\n";
        assert_eq!(kib_field(text, "Pss:"), Some(1536));
        assert_eq!(kib_field(text, "Swap:"), None);
    }
}
