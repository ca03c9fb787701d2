//! `GET /envs` (the default environment set by `/init`) and `GET /metrics`
//! (the guest's resource use, with envd's field names), read from
//! `/proc/stat`, `/proc/meminfo` and `statvfs("/")`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hearth_proto::connect::CONTENT_TYPE_JSON;
use serde::Serialize;

use super::Agent;

pub(super) fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/envs", get(envs))
        .route("/metrics", get(metrics))
}

fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_owned());
    (status, [(header::CONTENT_TYPE, CONTENT_TYPE_JSON)], text).into_response()
}

async fn envs(State(agent): State<Arc<Agent>>) -> Response {
    json(StatusCode::OK, &agent.settings().env)
}

/// envd's `Metrics` schema.
#[derive(Debug, Serialize)]
struct Metrics {
    ts: i64,
    cpu_count: u32,
    cpu_used_pct: f64,
    mem_total: u64,
    mem_used: u64,
    /// Page cache (`Cached` and `SReclaimable`), since envd 0.5.9.
    mem_cache: u64,
    disk_used: u64,
    disk_total: u64,
}

/// CPU time counters (jiffies), all CPUs together.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct CpuTimes {
    total: u64,
    idle: u64,
}

/// The counters of the previous `/metrics`, so that the CPU use covers the
/// time since then (since boot on the first call), as envd's does.
#[derive(Debug, Default)]
pub(super) struct CpuSampler(Mutex<CpuTimes>);

impl CpuSampler {
    /// The percentage of CPU time not idle since the previous sample.
    fn used_pct(&self, now: CpuTimes) -> f64 {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let total = now.total.saturating_sub(last.total);
        let idle = now.idle.saturating_sub(last.idle);
        *last = now;
        if total == 0 {
            return 0.0;
        }
        #[expect(clippy::cast_precision_loss, reason = "a percentage needs no more")]
        let pct = 100.0 * (total.saturating_sub(idle)) as f64 / total as f64;
        (pct * 100.0).round() / 100.0
    }
}

#[derive(Debug, thiserror::Error)]
enum MetricsError {
    #[error("Cannot read {0}")]
    Read(&'static str, #[source] std::io::Error),
    #[error("{0} has no line '{1}'")]
    Missing(&'static str, &'static str),
    #[error("Cannot stat the root file system")]
    Statvfs(#[source] nix::Error),
}

/// The CPU counters and the number of CPUs in `/proc/stat`.
fn parse_stat(text: &str) -> Option<(CpuTimes, u32)> {
    let mut times = None;
    let mut count = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("cpu") => {
                let values: Vec<u64> = fields.filter_map(|f| f.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal; guest time is
                // already in user and nice.
                let total = values.iter().take(8).sum();
                let idle =
                    values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
                times = Some(CpuTimes { total, idle });
            }
            Some(name) if name.starts_with("cpu") => count += 1,
            _ => {}
        }
    }
    times.map(|t| (t, count))
}

/// Memory in bytes from `/proc/meminfo`, as gopsutil (and so envd) counts
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Memory {
    total: u64,
    /// Total less free, buffers and page cache.
    used: u64,
    /// Page cache, reclaimable slabs included.
    cache: u64,
}

fn parse_meminfo(text: &str) -> Result<Memory, MetricsError> {
    let field = |name: &'static str| {
        text.lines()
            .find_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .map(|kib| kib * 1024)
            .ok_or(MetricsError::Missing("/proc/meminfo", name))
    };
    let total = field("MemTotal")?;
    let free = field("MemFree")?;
    let buffers = field("Buffers").unwrap_or(0);
    let cached = field("Cached").unwrap_or(0) + field("SReclaimable").unwrap_or(0);
    let used = total.saturating_sub(free + buffers + cached);
    Ok(Memory {
        total,
        used,
        cache: cached,
    })
}

fn read_metrics(cpu: &CpuSampler) -> Result<Metrics, MetricsError> {
    let stat =
        std::fs::read_to_string("/proc/stat").map_err(|e| MetricsError::Read("/proc/stat", e))?;
    let (times, cpu_count) = parse_stat(&stat).ok_or(MetricsError::Missing("/proc/stat", "cpu"))?;
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| MetricsError::Read("/proc/meminfo", e))?;
    let memory = parse_meminfo(&meminfo)?;
    let fs = nix::sys::statvfs::statvfs("/").map_err(MetricsError::Statvfs)?;
    let block = fs.fragment_size();
    let disk_total = fs.blocks() * block;
    let disk_used = fs.blocks().saturating_sub(fs.blocks_free()) * block;
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    Ok(Metrics {
        ts,
        cpu_count,
        cpu_used_pct: cpu.used_pct(times),
        mem_total: memory.total,
        mem_used: memory.used,
        mem_cache: memory.cache,
        disk_used,
        disk_total,
    })
}

async fn metrics(State(agent): State<Arc<Agent>>) -> Response {
    match read_metrics(&agent.cpu) {
        Ok(metrics) => json(StatusCode::OK, &metrics),
        Err(e) => {
            let message = crate::error_chain(&e);
            tracing::warn!("/metrics failed: {message}");
            let status = StatusCode::INTERNAL_SERVER_ERROR;
            json(
                status,
                &serde_json::json!({ "code": status.as_u16(), "message": message }),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let text = "cpu  10 2 8 70 10 0 0 0 5 0\ncpu0 5 1 4 35 5 0 0 0 0 0\ncpu1 5 1 4 35 5 0 0 0 0 0\nintr 1 2\n";
        let (times, count) = parse_stat(text).unwrap();
        assert_eq!(
            times,
            CpuTimes {
                total: 100,
                idle: 80
            }
        );
        assert_eq!(count, 2);
        assert_eq!(parse_stat("intr 1\n"), None);
    }

    #[test]
    fn cpu_use_covers_the_time_since_the_last_sample() {
        let sampler = CpuSampler::default();
        assert!(
            (sampler.used_pct(CpuTimes {
                total: 100,
                idle: 80
            }) - 20.0)
                .abs()
                < 1e-9
        );
        assert!(
            (sampler.used_pct(CpuTimes {
                total: 300,
                idle: 130
            }) - 75.0)
                .abs()
                < 1e-9
        );
        assert!(
            sampler
                .used_pct(CpuTimes {
                    total: 300,
                    idle: 130
                })
                .abs()
                < 1e-9
        );
    }

    #[test]
    fn parses_meminfo() {
        let text = "MemTotal: 1000 kB\nMemFree: 400 kB\nMemAvailable: 700 kB\nBuffers: 100 kB\nCached: 150 kB\nSwapCached: 9 kB\nSReclaimable: 50 kB\n";
        assert_eq!(
            parse_meminfo(text).unwrap(),
            Memory {
                total: 1_024_000,
                used: 307_200,
                cache: 204_800
            }
        );
        assert!(parse_meminfo("MemFree: 1 kB\n").is_err());
    }
}
