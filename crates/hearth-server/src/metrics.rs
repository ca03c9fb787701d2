//! What the server exposes to Prometheus (`GET /metrics`, with the API
//! key, or on `--metrics-listen` without): counters and histograms updated
//! where things happen, and gauges read at each scrape. Every label takes
//! a bounded set of values (templates, states, reasons, routes, never a
//! sandbox id). Names follow Prometheus' conventions: `hearth_` first,
//! base units, `_total` on counters (which the encoder appends).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::manager::Manager;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TemplateLabel {
    pub template: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
    pub template: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CreateLabels {
    pub template: String,
    /// `pool` (a parked sandbox) or `restore` (a tagged build's snapshot).
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    /// `full` or `filesystem`.
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SnapshotLabels {
    /// `full` or `filesystem`.
    pub mode: &'static str,
    /// `ok` or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResumeLabels {
    pub mode: &'static str,
    /// `api` (resume or connect) or `traffic` (auto-resume).
    pub trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route's pattern (`/sandboxes/{id}`), `proxy` for sandbox
    /// traffic, `none` for an unknown path.
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `to_client`: what sandboxes answered through the proxy.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MountedLabel {
    /// `true` for volumes a running or paused sandbox mounts.
    pub mounted: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressLabels {
    /// `http` (port 80, by Host header) or `tls` (port 443, by server name).
    pub port: &'static str,
    /// `allowed`, `refused` (no rule names the host) or `failed` (allowed,
    /// but it did not resolve or answer).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// The VMM driver: `qemu` or `firecracker`.
    pub vmm: String,
    /// Its version, as `qemu-system-x86_64 --version` or `firecracker
    /// --version` prints it.
    pub vmm_version: String,
    /// `kvm` or `tcg`.
    pub accel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// Webhooks: `delivered`, `retried` (will be tried again) or `failed`
    /// (given up). Template fetches: `fetched` or `failed`.
    pub result: &'static str,
}

/// The server's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    pub creates: Family<CreateLabels, Counter>,
    pub create_failures: Family<ReasonLabel, Counter>,
    pub create_seconds: Family<SourceLabel, Histogram>,
    pub stops: Family<ReasonLabel, Counter>,
    pub pauses: Family<ModeLabel, Counter>,
    pub pause_failures: Counter,
    pub resumes: Family<ResumeLabels, Counter>,
    pub resume_failures: Counter,
    pub fork_copies: Counter,
    pub fork_copy_failures: Counter,
    pub snapshots: Family<SnapshotLabels, Counter>,
    pub snapshot_pause_seconds: Histogram,
    pub builds: Family<StatusLabel, Counter>,
    pub build_seconds: Histogram,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_seconds: Family<RouteLabel, Histogram>,
    pub proxy_open: Gauge,
    pub proxy_bytes: Family<DirectionLabel, Counter>,
    pub webhook_deliveries: Family<ResultLabel, Counter>,
    pub template_fetches: Family<ResultLabel, Counter>,
    pub template_fetch_bytes: Counter,
    pub pool_refill_seconds: Family<TemplateLabel, Histogram>,
    // Read at each scrape.
    sandboxes: Family<StateLabels, Gauge>,
    pooled: Family<TemplateLabel, Gauge>,
    slots_used: Gauge,
    slots_capacity: Gauge,
    node_info: Family<NodeLabels, Gauge>,
    vmm_cpu_seconds: Family<TemplateLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    vmm_memory_bytes: Family<TemplateLabel, Gauge>,
    disk_bytes: Family<TemplateLabel, Gauge>,
    net_bytes: Family<NetLabels, Gauge>,
    egress_connections: Family<EgressLabels, Counter>,
    volumes: Family<MountedLabel, Gauge>,
    volume_bytes: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NetLabels {
    pub template: String,
    /// `sent` or `received`, by the guests.
    pub direction: &'static str,
}

/// Seconds from 5 ms to about 80 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.005, 2.0, 15)
}

fn create_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

impl Default for Metrics {
    fn default() -> Self {
        let mut metrics = Self {
            registry: Registry::default(),
            creates: Family::default(),
            create_failures: Family::default(),
            create_seconds: Family::new_with_constructor(create_histogram),
            stops: Family::default(),
            pauses: Family::default(),
            pause_failures: Counter::default(),
            resumes: Family::default(),
            resume_failures: Counter::default(),
            fork_copies: Counter::default(),
            fork_copy_failures: Counter::default(),
            snapshots: Family::default(),
            snapshot_pause_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
            builds: Family::default(),
            // Builds take seconds to many minutes.
            build_seconds: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(create_histogram),
            proxy_open: Gauge::default(),
            proxy_bytes: Family::default(),
            webhook_deliveries: Family::default(),
            template_fetches: Family::default(),
            template_fetch_bytes: Counter::default(),
            pool_refill_seconds: Family::new_with_constructor(create_histogram),
            sandboxes: Family::default(),
            pooled: Family::default(),
            slots_used: Gauge::default(),
            slots_capacity: Gauge::default(),
            node_info: Family::default(),
            vmm_cpu_seconds: Family::default(),
            vmm_memory_bytes: Family::default(),
            disk_bytes: Family::default(),
            net_bytes: Family::default(),
            egress_connections: Family::default(),
            volumes: Family::default(),
            volume_bytes: Gauge::default(),
        };
        metrics.register();
        metrics
    }
}

impl Metrics {
    fn register(&mut self) {
        let r = &mut self.registry;
        let hearth = r.sub_registry_with_prefix("hearth");
        hearth.register(
            "sandbox_creates",
            "Sandboxes created, by template and source (pool or restore)",
            self.creates.clone(),
        );
        hearth.register(
            "sandbox_create_failures",
            "Creates that failed, by reason",
            self.create_failures.clone(),
        );
        hearth.register(
            "sandbox_create_seconds",
            "From a create request to a sandbox whose agent answered, by source",
            self.create_seconds.clone(),
        );
        hearth.register(
            "sandbox_stops",
            "Sandboxes stopped, by reason (killed, timed_out, vm_exited, failed)",
            self.stops.clone(),
        );
        hearth.register(
            "sandbox_pauses",
            "Sandboxes paused, by what was kept (full or filesystem)",
            self.pauses.clone(),
        );
        hearth.register(
            "sandbox_pause_failures",
            "Pauses that failed (the sandbox kept running)",
            self.pause_failures.clone(),
        );
        hearth.register(
            "sandbox_resumes",
            "Sandboxes resumed, by mode and trigger (api or traffic)",
            self.resumes.clone(),
        );
        hearth.register(
            "sandbox_resume_failures",
            "Resumes that failed (the sandbox stayed paused)",
            self.resume_failures.clone(),
        );
        hearth.register(
            "sandbox_fork_copies",
            "Copies made by forks that started",
            self.fork_copies.clone(),
        );
        hearth.register(
            "sandbox_fork_copy_failures",
            "Copies asked of forks that did not start",
            self.fork_copy_failures.clone(),
        );
        hearth.register(
            "sandbox_snapshots",
            "Snapshots of running sandboxes asked for, by mode and result",
            self.snapshots.clone(),
        );
        hearth.register(
            "sandbox_snapshot_pause_seconds",
            "How long a snapshot stopped its source sandbox (state saved, disk copied)",
            self.snapshot_pause_seconds.clone(),
        );
        hearth.register(
            "sandboxes",
            "Sandboxes in the catalog now, by state and template",
            self.sandboxes.clone(),
        );
        hearth.register(
            "pool_sandboxes",
            "Parked sandboxes ready in a template's pool now",
            self.pooled.clone(),
        );
        hearth.register(
            "slots_used",
            "Network slots held now (sandboxes, pooled ones included)",
            self.slots_used.clone(),
        );
        hearth.register(
            "slots_capacity",
            "Network slots this node may hold (--max-sandboxes)",
            self.slots_capacity.clone(),
        );
        hearth.register(
            "node_info",
            "1, labelled with the VMM driver, its version and the accelerator this node runs",
            self.node_info.clone(),
        );
        hearth.register(
            "vmm_cpu_seconds",
            "CPU time used by the VMMs of the running sandboxes of a template",
            self.vmm_cpu_seconds.clone(),
        );
        hearth.register(
            "vmm_memory_bytes",
            "Memory held by the VMMs of the running sandboxes of a template",
            self.vmm_memory_bytes.clone(),
        );
        hearth.register(
            "sandbox_disk_bytes",
            "Host bytes held by the copy-on-write disks of the running sandboxes of a template",
            self.disk_bytes.clone(),
        );
        hearth.register(
            "sandbox_network_bytes",
            "Bytes the running sandboxes of a template sent and received since they took their slots",
            self.net_bytes.clone(),
        );
        hearth.register(
            "volumes",
            "Named volumes, by whether a sandbox mounts them",
            self.volumes.clone(),
        );
        hearth.register(
            "volume_used_bytes",
            "Host bytes the named volumes' images hold, all together",
            self.volume_bytes.clone(),
        );
        hearth.register(
            "egress_proxy_connections",
            "Connections of sandboxes with domain egress rules that the egress proxy handled, \
             by port and result",
            self.egress_connections.clone(),
        );
        hearth.register(
            "template_builds",
            "Template builds that ended, by status (ready or error)",
            self.builds.clone(),
        );
        hearth.register(
            "template_build_seconds",
            "How long template builds took",
            self.build_seconds.clone(),
        );
        hearth.register(
            "http_requests",
            "API and proxy requests answered, by route, method and status",
            self.http_requests.clone(),
        );
        hearth.register(
            "http_request_seconds",
            "Time to the answer's head, by route",
            self.http_seconds.clone(),
        );
        hearth.register(
            "proxy_open_requests",
            "Proxied requests whose answer is still streaming",
            self.proxy_open.clone(),
        );
        hearth.register(
            "proxy_bytes",
            "Bytes of sandbox answers sent through the proxy",
            self.proxy_bytes.clone(),
        );
        hearth.register(
            "webhook_deliveries",
            "Webhook delivery attempts, by result (delivered, retried, failed)",
            self.webhook_deliveries.clone(),
        );
        hearth.register(
            "template_fetches",
            "Template builds fetched from other nodes of the cluster, by result (fetched, failed)",
            self.template_fetches.clone(),
        );
        hearth.register(
            "template_fetch_bytes",
            "Bytes of template files fetched from other nodes (their data regions)",
            self.template_fetch_bytes.clone(),
        );
        hearth.register(
            "pool_refill_seconds",
            "How long a pool took to park one more sandbox (restore and first answer)",
            self.pool_refill_seconds.clone(),
        );
    }

    /// The text exposition of every metric, the gauges read afresh.
    pub async fn render(&self, manager: &Manager) -> String {
        self.refresh(manager).await;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }

    async fn refresh(&self, manager: &Manager) {
        let snapshot = manager.gauges().await;
        self.sandboxes.clear();
        for ((state, template), n) in snapshot.sandboxes {
            self.sandboxes
                .get_or_create(&StateLabels { state, template })
                .set(n);
        }
        self.pooled.clear();
        for (template, n) in snapshot.pooled {
            self.pooled
                .get_or_create(&TemplateLabel { template })
                .set(n);
        }
        for (port, result, n) in snapshot.egress {
            // The node counts; the counter shows its total.
            self.egress_connections
                .get_or_create(&EgressLabels {
                    port: port.as_str(),
                    result: result.as_str(),
                })
                .inner()
                .store(n, std::sync::atomic::Ordering::Relaxed);
        }
        for (mounted, label) in [(true, "true"), (false, "false")] {
            let n = snapshot
                .volumes
                .iter()
                .filter(|(m, _)| *m == mounted)
                .count();
            self.volumes
                .get_or_create(&MountedLabel { mounted: label })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let used: u64 = snapshot.volumes.iter().map(|(_, bytes)| bytes).sum();
        self.volume_bytes
            .set(i64::try_from(used).unwrap_or(i64::MAX));
        self.slots_used.set(snapshot.slots_used);
        self.slots_capacity.set(snapshot.slots_capacity);
        self.vmm_cpu_seconds.clear();
        self.vmm_memory_bytes.clear();
        self.disk_bytes.clear();
        self.net_bytes.clear();
        for (template, totals) in snapshot.vmm {
            let label = TemplateLabel {
                template: template.clone(),
            };
            self.vmm_cpu_seconds
                .get_or_create(&label)
                .set(totals.cpu_seconds);
            self.vmm_memory_bytes
                .get_or_create(&label)
                .set(totals.memory_bytes);
            self.disk_bytes.get_or_create(&label).set(totals.disk_bytes);
            for (direction, bytes) in [
                ("sent", totals.net_sent_bytes),
                ("received", totals.net_received_bytes),
            ] {
                self.net_bytes
                    .get_or_create(&NetLabels {
                        template: template.clone(),
                        direction,
                    })
                    .set(bytes);
            }
        }
    }

    /// Records what this node runs VMs with (`hearth_node_info`).
    pub fn set_node(&self, host: &hearth_node::HostProfile) {
        self.node_info
            .get_or_create(&NodeLabels {
                vmm: host.driver.clone(),
                vmm_version: host.vmm.clone(),
                accel: host.accel.clone(),
            })
            .set(1);
    }

    /// A stop reason as a label.
    pub fn stop_reason(reason: &hearth_node::StopReason) -> &'static str {
        match reason {
            hearth_node::StopReason::Killed => "killed",
            hearth_node::StopReason::TimedOut => "timed_out",
            hearth_node::StopReason::VmExited(_) => "vm_exited",
            hearth_node::StopReason::Failed(_) => "failed",
        }
    }

    pub fn observe_create(&self, template: &str, source: &'static str, took: Duration) {
        self.creates
            .get_or_create(&CreateLabels {
                template: template.to_owned(),
                source,
            })
            .inc();
        self.create_seconds
            .get_or_create(&SourceLabel { source })
            .observe(took.as_secs_f64());
    }
}

/// What the gauges are read from, gathered by the manager.
#[derive(Debug, Default)]
pub struct Gauges {
    /// `(state, template)` → count.
    pub sandboxes: std::collections::BTreeMap<(String, String), i64>,
    pub pooled: std::collections::BTreeMap<String, i64>,
    pub slots_used: i64,
    pub slots_capacity: i64,
    /// template → what its running sandboxes' VMMs use, summed.
    pub vmm: std::collections::BTreeMap<String, VmmTotals>,
    /// Each volume: whether a sandbox mounts it, and the bytes it holds.
    pub volumes: Vec<(bool, u64)>,
    /// What the egress proxies did: `(port, result, connections)`.
    pub egress: Vec<(hearth_node::WebPort, hearth_node::EgressOutcome, u64)>,
}

/// What the running sandboxes of one template use, summed.
#[derive(Debug, Default, Clone, Copy)]
pub struct VmmTotals {
    pub cpu_seconds: f64,
    pub memory_bytes: i64,
    pub disk_bytes: i64,
    pub net_sent_bytes: i64,
    pub net_received_bytes: i64,
}

/// The content type of the text exposition.
const EXPOSITION: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /metrics`.
pub async fn scrape(State(api): State<Arc<crate::api::Api>>) -> Response {
    let text = api.manager.server_metrics().render(&api.manager).await;
    ([(header::CONTENT_TYPE, EXPOSITION)], text).into_response()
}

/// Counts and times every API request by its route's pattern (bounded:
/// no ids). A layer of the API router, where the pattern is known.
pub async fn track(
    State(api): State<Arc<crate::api::Api>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "none".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    api.manager.server_metrics().observe_request(
        route,
        method,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

impl Metrics {
    /// One request answered: `route` is a pattern or `proxy`.
    pub fn observe_request(&self, route: String, method: String, status: u16, took: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.clone(),
                method,
                status,
            })
            .inc();
        self.http_seconds
            .get_or_create(&RouteLabel { route })
            .observe(took.as_secs_f64());
    }
}
