//! `hearth sandbox create|list|kill|pause|resume|logs`: the server's REST
//! API from the command line. Human tables by default, `--json` for scripts.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Args;
use futures_util::StreamExt;
use hearth_node::{AgentError, Layout, ProcessStream};
use hearth_proto::agent::AGENT_PORT;
use hearth_proto::connect::{self, ConnectError};
use hearth_proto::process::{self, StartRequest};
use prost::Message;
use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use url::Url;

use super::CommandResult;

/// Where the server is and the key to use.
#[derive(Args, Clone)]
pub(crate) struct Remote {
    /// The server's URL (http:// or https://).
    #[arg(long, env = "HEARTH_API_URL", default_value = "http://127.0.0.1:3000")]
    api_url: String,
    /// API key (default: the one `hearth server` wrote to <data-dir>/api-key).
    #[arg(long, env = "E2B_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A PEM CA certificate to trust for an https:// server, besides the
    /// system's (default: the local CA a `hearth server --tls-self-signed`
    /// made in <data-dir>/tls/ca.pem, when there is one).
    #[arg(long, env = "HEARTH_CA_CERT", value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args)]
pub(crate) struct CreateArgs {
    #[command(flatten)]
    remote: Remote,
    /// Template name.
    #[arg(long, default_value = "base")]
    template: String,
    /// Seconds until the sandbox is killed.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Environment variable for every process (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = super::sandbox::parse_env)]
    envs: Vec<(String, String)>,
    /// Metadata entry (repeatable).
    #[arg(long = "metadata", short = 'm', value_name = "KEY=VALUE", value_parser = super::sandbox::parse_env)]
    metadata: Vec<(String, String)>,
    /// Refuse every connection the sandbox starts (`--allow-out` still wins).
    #[arg(long)]
    no_internet: bool,
    /// IPv4 address, CIDR block or domain name (`example.com`,
    /// `*.example.com`: HTTP and TLS to ports 80 and 443, with
    /// `--no-internet`) the sandbox may connect to even when denied
    /// (repeatable).
    #[arg(long = "allow-out", value_name = "CIDR|DOMAIN")]
    allow_out: Vec<String>,
    /// IPv4 address or CIDR block the sandbox may not connect to (repeatable).
    #[arg(long = "deny-out", value_name = "CIDR")]
    deny_out: Vec<String>,
    /// Forward a host port to a port of the sandbox (repeatable): removed
    /// with the sandbox, kept across a pause. A host port below 1024 needs
    /// the server's --allow-privileged-ports.
    #[arg(
        long = "publish",
        short = 'p',
        value_name = "[ADDR:]HOSTPORT:GUESTPORT[/tcp|udp]"
    )]
    publish: Vec<String>,
    /// Mount a named volume (`hearth volume create`) at an absolute path
    /// of the guest (repeatable, at most 4). A volume is mounted by one
    /// sandbox at a time; it outlives the sandbox.
    #[arg(long = "volume", short = 'v', value_name = "NAME:/PATH", value_parser = parse_volume)]
    volumes: Vec<(String, String)>,
    /// Pause the sandbox when its time is up instead of killing it.
    #[arg(long)]
    auto_pause: bool,
    /// With --auto-pause: keep only its files (a resume boots it again).
    #[arg(long, requires = "auto_pause")]
    auto_pause_filesystem: bool,
    /// With --auto-pause: a request for the paused sandbox through the
    /// proxy resumes it.
    #[arg(
        long,
        requires = "auto_pause",
        conflicts_with = "auto_pause_filesystem"
    )]
    auto_resume: bool,
}

#[derive(Args)]
pub(crate) struct PauseArgs {
    #[command(flatten)]
    remote: Remote,
    /// Sandbox id.
    id: String,
    /// Keep only the sandbox's files: a resume boots it again from its
    /// disk, without its processes.
    #[arg(long)]
    filesystem: bool,
}

#[derive(Args)]
pub(crate) struct SnapshotArgs {
    #[command(flatten)]
    remote: Remote,
    /// Sandbox id.
    id: String,
    /// The template to save it as (NAME or NAME:TAG; a new snapshot of
    /// the same name replaces what the name starts). Default: a fresh id.
    #[arg(long)]
    name: Option<String>,
    /// Keep only the sandbox's files: sandboxes of the snapshot boot from
    /// its disk, without its processes.
    #[arg(long, alias = "filesystem")]
    filesystem_only: bool,
}

#[derive(Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    remote: Remote,
    /// States to list (running, paused, killed: stopped in the last day,
    /// with the reason), comma-separated.
    #[arg(long, default_value = "running,paused")]
    state: String,
}

#[derive(Args)]
pub(crate) struct IdArgs {
    #[command(flatten)]
    remote: Remote,
    /// The sandbox id.
    id: String,
}

#[derive(Args)]
pub(crate) struct ResumeArgs {
    #[command(flatten)]
    remote: Remote,
    id: String,
    /// Seconds until the resumed sandbox is killed.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

#[derive(Args)]
pub(crate) struct ExecArgs {
    #[command(flatten)]
    remote: Remote,
    /// The sandbox id.
    id: String,
    /// Environment variable for the command (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = super::sandbox::parse_env)]
    envs: Vec<(String, String)>,
    /// Working directory in the guest (default: the user's home).
    #[arg(long)]
    cwd: Option<String>,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// A path below the API URL: segments, each escaped on its own (an id
/// cannot reach another route), and query pairs.
pub(crate) struct ApiPath<'a> {
    segments: Vec<&'a str>,
    query: Vec<(&'a str, &'a str)>,
}

impl<'a> ApiPath<'a> {
    /// Adds `name=value` to the query string (both escaped).
    pub(crate) fn query(mut self, name: &'a str, value: &'a str) -> Self {
        self.query.push((name, value));
        self
    }
}

impl<'a, const N: usize> From<[&'a str; N]> for ApiPath<'a> {
    fn from(segments: [&'a str; N]) -> Self {
        Self {
            segments: segments.to_vec(),
            query: Vec::new(),
        }
    }
}

/// The server's REST API, over HTTP or HTTPS.
pub(crate) struct Client {
    http: reqwest::Client,
    base: Url,
    key: String,
}

impl Client {
    pub(crate) fn new(remote: &Remote, layout: &Layout) -> anyhow::Result<Self> {
        let mut base = Url::parse(&remote.api_url)
            .with_context(|| format!("--api-url '{}' is not a URL", remote.api_url))?;
        base.set_query(None);
        base.set_fragment(None);
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            bail!(
                "--api-url must be an http:// or https:// URL, not '{}'",
                remote.api_url
            );
        }
        let key = match &remote.api_key {
            Some(key) => key.clone(),
            None => {
                let path = layout.data_dir().join("api-key");
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no --api-key and cannot read {}; is hearth server set up?",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        // rustls needs a process-wide crypto provider: `ring`, as for image
        // pulls. Err means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        let local_ca = layout.data_dir().join("tls").join("ca.pem");
        let ca = match &remote.ca_cert {
            Some(path) => Some(path.clone()),
            None => (base.scheme() == "https" && local_ca.is_file()).then_some(local_ca),
        };
        if let Some(path) = ca {
            let pem = std::fs::read(&path)
                .with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().context("cannot set up the HTTP client")?;
        Ok(Self { http, base, key })
    }

    /// The API URL with `path` appended.
    fn url(&self, path: &ApiPath<'_>) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked to be a base URL")
            .pop_if_empty()
            .extend(&path.segments);
        if !path.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&path.query);
        }
        url
    }

    /// What a request that got no answer says: where the server was
    /// looked for and the innermost cause (refused, timed out, TLS, …).
    fn unreachable(&self, error: &reqwest::Error) -> anyhow::Error {
        let mut cause: &dyn std::error::Error = error;
        while let Some(next) = cause.source() {
            cause = next;
        }
        anyhow!("cannot reach the server at {}: {cause}", self.base)
    }

    /// One request; the JSON answer (Null for an empty body), or the API's
    /// error message.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: impl Into<ApiPath<'_>>,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method, self.url(&path.into()))
            .header("x-api-key", &self.key);
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("reading the server's {status} answer"))?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("the server answered {status} with non-JSON"))?
        };
        if !status.is_success() {
            let message = value["message"].as_str().unwrap_or("no message");
            bail!("{} {message}", status.as_u16());
        }
        Ok(value)
    }

    /// A `GET` whose answer streams: the response once its head says
    /// success, or the API's error message.
    pub(crate) async fn open(
        &self,
        path: impl Into<ApiPath<'_>>,
    ) -> anyhow::Result<reqwest::Response> {
        let response = self
            .http
            .get(self.url(&path.into()))
            .header("x-api-key", &self.key)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let message = body["message"].as_str().unwrap_or("no message");
            bail!("{} {message}", status.as_u16());
        }
        Ok(response)
    }

    /// Starts `request` in sandbox `id` through the server's proxy (the
    /// agent's `process.Process/Start`, with the sandbox's access token)
    /// and streams its events.
    async fn start_process(
        &self,
        id: &str,
        token: Option<&str>,
        request: &StartRequest,
    ) -> Result<ProcessStream, AgentError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked to be a base URL")
            .clear()
            .extend([process::SERVICE, "Start"]);
        let mut http = self
            .http
            .post(url)
            .header(CONTENT_TYPE, connect::CONTENT_TYPE_CONNECT_PROTO)
            .header("e2b-sandbox-id", id)
            .header("e2b-sandbox-port", AGENT_PORT.to_string())
            .body(connect::envelope(0, &request.encode_to_vec()));
        if let Some(token) = token {
            http = http.header("x-access-token", token);
        }
        let failed = |e: reqwest::Error| AgentError::Protocol(e.to_string());
        let response = http.send().await.map_err(failed)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.map_err(failed)?;
            return Err(AgentError::Rpc(ConnectError::from_unary_response(
                status.as_u16(),
                &body,
            )));
        }
        // A broken body is a stream cut short, whatever broke it.
        let chunks = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(|_| AgentError::Truncated));
        Ok(ProcessStream::from_chunks(chunks))
    }
}

pub(crate) fn run(
    remote: &Remote,
    layout: &Layout,
    work: impl AsyncFnOnce(&Client) -> anyhow::Result<Value>,
    table: impl FnOnce(&Value),
) -> CommandResult {
    let client = Client::new(remote, layout)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let value = runtime.block_on(work(&client))?;
    if remote.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        table(&value);
    }
    Ok(ExitCode::SUCCESS)
}

/// `NAME:/PATH` of `--volume`.
pub(crate) fn parse_volume(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, path)) if !name.is_empty() && path.starts_with('/') => {
            Ok((name.to_owned(), path.to_owned()))
        }
        _ => Err(format!("{text:?} is not NAME:/PATH (like data:/data)")),
    }
}

#[derive(Args)]
pub(crate) struct VolumeCreateArgs {
    #[command(flatten)]
    remote: Remote,
    /// Volume name: letters, digits, '.', '_' and '-'.
    name: String,
    /// Its size, like 10G or 512M (sparse: the host holds what is written).
    #[arg(long, default_value = "1G")]
    size: String,
    /// Its file system.
    #[arg(long, default_value = "ext4")]
    fs: String,
}

#[derive(Args)]
pub(crate) struct VolumeListArgs {
    #[command(flatten)]
    remote: Remote,
}

#[derive(Args)]
pub(crate) struct VolumeRmArgs {
    #[command(flatten)]
    remote: Remote,
    /// Volume name or id.
    name: String,
}

pub(crate) fn volume_create(args: VolumeCreateArgs, layout: &Layout) -> CommandResult {
    let body = json!({ "name": args.name, "size": args.size, "fs": args.fs });
    run(
        &args.remote,
        layout,
        async |c| c.call(Method::POST, ["volumes"], Some(body)).await,
        |v| println!("{}", text(v, "name")),
    )
}

pub(crate) fn volume_list(args: VolumeListArgs, layout: &Layout) -> CommandResult {
    run(
        &args.remote,
        layout,
        async |c| c.call(Method::GET, ["volumes"], None).await,
        |v| {
            println!(
                "{:<24} {:<22} {:>10} {:>10}  MOUNTED BY",
                "NAME", "ID", "SIZE", "USED"
            );
            for volume in v.as_array().into_iter().flatten() {
                let mib = |key: &str| {
                    volume[key]
                        .as_u64()
                        .map_or("-".to_owned(), |b| format!("{} MiB", b >> 20))
                };
                println!(
                    "{:<24} {:<22} {:>10} {:>10}  {}",
                    text(volume, "name"),
                    text(volume, "volumeID"),
                    mib("sizeBytes"),
                    mib("usedBytes"),
                    text(volume, "mountedBy"),
                );
            }
        },
    )
}

pub(crate) fn volume_rm(args: VolumeRmArgs, layout: &Layout) -> CommandResult {
    run(
        &args.remote,
        layout,
        async |c| c.call(Method::DELETE, ["volumes", &args.name], None).await,
        |_| println!("removed {}", args.name),
    )
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("-")
}

pub(crate) fn create(args: CreateArgs, layout: &Layout) -> CommandResult {
    let body = json!({
        "templateID": args.template,
        "timeout": args.timeout,
        "envVars": args.envs.into_iter().collect::<BTreeMap<_, _>>(),
        "metadata": args.metadata.into_iter().collect::<BTreeMap<_, _>>(),
        "allow_internet_access": !args.no_internet,
        "network": { "allowOut": args.allow_out, "denyOut": args.deny_out },
        "autoPause": args.auto_pause,
        "autoPauseMemory": !args.auto_pause_filesystem,
        "autoResume": { "enabled": args.auto_resume },
        "publish": args.publish,
        "volumeMounts": args.volumes.iter().map(|(name, path)| json!({ "name": name, "path": path })).collect::<Vec<_>>(),
    });
    run(
        &args.remote,
        layout,
        async |c| c.call(Method::POST, ["sandboxes"], Some(body)).await,
        |v| println!("{}", text(v, "sandboxID")),
    )
}

pub(crate) fn list(args: ListArgs, layout: &Layout) -> CommandResult {
    let path = || ApiPath::from(["v2", "sandboxes"]).query("state", &args.state);
    run(
        &args.remote,
        layout,
        async |c| c.call(Method::GET, path(), None).await,
        |v| {
            println!(
                "{:<22} {:<10} {:<8} {:<28} {:<28} REASON",
                "ID", "TEMPLATE", "STATE", "STARTED", "ENDS"
            );
            for s in v.as_array().into_iter().flatten() {
                // A sandbox on its way between states shows where it is.
                let lifecycle = text(s, "lifecycleState");
                let state = match lifecycle {
                    "starting" | "pausing" | "resuming" | "stopping" => lifecycle,
                    _ => text(s, "state"),
                };
                println!(
                    "{:<22} {:<10} {:<8} {:<28} {:<28} {}",
                    text(s, "sandboxID"),
                    text(s, "templateID"),
                    state,
                    text(s, "startedAt"),
                    text(s, "endAt"),
                    text(s, "stopReason"),
                );
            }
        },
    )
}

pub(crate) fn kill(args: IdArgs, layout: &Layout) -> CommandResult {
    run(
        &args.remote,
        layout,
        async |c| c.call(Method::DELETE, ["sandboxes", &args.id], None).await,
        |_| {
            println!("killed {}", args.id);
        },
    )
}

pub(crate) fn pause(args: PauseArgs, layout: &Layout) -> CommandResult {
    let body = json!({ "memory": !args.filesystem });
    run(
        &args.remote,
        layout,
        async |c| {
            c.call(Method::POST, ["sandboxes", &args.id, "pause"], Some(body))
                .await
        },
        |_| {
            println!("paused {}", args.id);
        },
    )
}

pub(crate) fn snapshot(args: SnapshotArgs, layout: &Layout) -> CommandResult {
    let mut body = json!({ "memory": !args.filesystem_only });
    if let Some(name) = &args.name {
        body["name"] = json!(name);
    }
    run(
        &args.remote,
        layout,
        async |c| {
            c.call(
                Method::POST,
                ["sandboxes", &args.id, "snapshots"],
                Some(body),
            )
            .await
        },
        |info| {
            println!("{}", info["snapshotID"].as_str().unwrap_or_default());
        },
    )
}

pub(crate) fn resume(args: ResumeArgs, layout: &Layout) -> CommandResult {
    let body = json!({ "timeout": args.timeout });
    run(
        &args.remote,
        layout,
        async |c| {
            c.call(Method::POST, ["sandboxes", &args.id, "connect"], Some(body))
                .await
        },
        |_| {
            println!("running {}", args.id);
        },
    )
}

pub(crate) fn logs(args: IdArgs, layout: &Layout) -> CommandResult {
    run(
        &args.remote,
        layout,
        async |c| {
            c.call(Method::GET, ["v2", "sandboxes", &args.id, "logs"], None)
                .await
        },
        |v| {
            for entry in v["logs"].as_array().into_iter().flatten() {
                println!(
                    "{} {:<5} {}",
                    text(entry, "timestamp"),
                    text(entry, "level"),
                    text(entry, "message")
                );
            }
        },
    )
}

/// What a running sandbox uses: the guest's view (E2B's metric) and the
/// host's (its VMM's CPU time and memory, with their cgroup limits).
pub(crate) fn metrics(args: IdArgs, layout: &Layout) -> CommandResult {
    run(
        &args.remote,
        layout,
        async |c| {
            c.call(Method::GET, ["sandboxes", &args.id, "metrics"], None)
                .await
        },
        |v| {
            let Some(m) = v.as_array().and_then(|a| a.last()) else {
                println!("no metrics: the sandbox is paused");
                return;
            };
            let mib = |v: &Value| {
                v.as_u64()
                    .map_or_else(|| "-".to_owned(), |b| (b >> 20).to_string())
            };
            let num = |v: &Value| {
                v.as_f64()
                    .map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
            };
            let vmm = &m["vmm"];
            println!("{:<28} {}", "guest CPUs", num(&m["cpuCount"]));
            println!("{:<28} {}", "guest CPU used (%)", num(&m["cpuUsedPct"]));
            println!(
                "{:<28} {} / {}",
                "guest memory (MiB)",
                mib(&m["memUsed"]),
                mib(&m["memTotal"])
            );
            println!(
                "{:<28} {} / {}",
                "guest disk (MiB)",
                mib(&m["diskUsed"]),
                mib(&m["diskTotal"])
            );
            println!("{:<28} {}", "VMM CPU time (s)", num(&vmm["cpuSeconds"]));
            println!("{:<28} {}", "VMM CPU limit (CPUs)", num(&vmm["cpuLimit"]));
            println!(
                "{:<28} {}",
                "VMM throttled periods",
                num(&vmm["cpuThrottledPeriods"])
            );
            println!(
                "{:<28} {} (peak {}) / {}",
                "VMM memory (MiB)",
                mib(&vmm["memoryBytes"]),
                mib(&vmm["memoryPeakBytes"]),
                mib(&vmm["memoryLimitBytes"])
            );
        },
    )
}

/// Runs a command in the sandbox through the server's proxy, with the
/// sandbox's access token, and exits with the command's code.
pub(crate) fn exec(args: ExecArgs, layout: &Layout) -> CommandResult {
    let client = Client::new(&args.remote, layout)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut signals = super::sandbox::Signals::new()?;
        let detail = client
            .call(Method::GET, ["sandboxes", &args.id], None)
            .await?;
        let token = detail["envdAccessToken"].as_str();
        let request = super::sandbox::start_request(&args.command, &args.envs, args.cwd.clone());
        let cut = || {
            super::Failure::from(anyhow!(
                "the connection to the sandbox closed before the command ended"
            ))
        };
        let outcome = super::sandbox::run_process(
            client.start_process(&args.id, token, &request),
            &mut signals,
            std::future::pending(),
            cut,
        )
        .await?;
        Ok(outcome.exit_code("the sandbox keeps running"))
    })
}
