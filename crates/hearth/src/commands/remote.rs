//! `hearth sandbox create|list|kill|pause|resume|logs`: the server's REST
//! API from the command line. Human tables by default, `--json` for scripts.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use hearth_node::{AgentClient, Layout};

use super::CommandResult;

/// Where the server is and the key to use.
#[derive(Args, Clone)]
pub(crate) struct Remote {
    /// The server's URL (http only).
    #[arg(long, env = "HEARTH_API_URL", default_value = "http://127.0.0.1:3000")]
    api_url: String,
    /// API key (default: the one `hearth server` wrote to <data-dir>/api-key).
    #[arg(long, env = "E2B_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    json: bool,
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
    /// IPv4 address or CIDR block the sandbox may connect to even when
    /// denied (repeatable).
    #[arg(long = "allow-out", value_name = "CIDR")]
    allow_out: Vec<String>,
    /// IPv4 address or CIDR block the sandbox may not connect to (repeatable).
    #[arg(long = "deny-out", value_name = "CIDR")]
    deny_out: Vec<String>,
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

struct Client {
    host: String,
    key: String,
}

impl Client {
    fn new(remote: &Remote, layout: &Layout) -> anyhow::Result<Self> {
        let host = remote
            .api_url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("--api-url must start with http:// ({})", remote.api_url))?
            .trim_end_matches('/')
            .to_owned();
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
        Ok(Self { host, key })
    }

    /// One request; the JSON answer (Null for an empty body), or the API's
    /// error message.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let stream = TcpStream::connect(&self.host)
            .await
            .with_context(|| format!("cannot reach the server at {}", self.host))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host)
            .header("x-api-key", &self.key)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
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
}

fn run(
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
    });
    run(
        &args.remote,
        layout,
        async |c| c.call(Method::POST, "/sandboxes", Some(body)).await,
        |v| println!("{}", text(v, "sandboxID")),
    )
}

pub(crate) fn list(args: ListArgs, layout: &Layout) -> CommandResult {
    let path = format!("/v2/sandboxes?state={}", args.state);
    run(
        &args.remote,
        layout,
        async |c| c.call(Method::GET, &path, None).await,
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
    let path = format!("/sandboxes/{}", args.id);
    run(
        &args.remote,
        layout,
        async |c| c.call(Method::DELETE, &path, None).await,
        |_| {
            println!("killed {}", args.id);
        },
    )
}

pub(crate) fn pause(args: PauseArgs, layout: &Layout) -> CommandResult {
    let path = format!("/sandboxes/{}/pause", args.id);
    let body = json!({ "memory": !args.filesystem });
    run(
        &args.remote,
        layout,
        async |c| c.call(Method::POST, &path, Some(body)).await,
        |_| {
            println!("paused {}", args.id);
        },
    )
}

pub(crate) fn resume(args: ResumeArgs, layout: &Layout) -> CommandResult {
    let path = format!("/sandboxes/{}/connect", args.id);
    let body = json!({ "timeout": args.timeout });
    run(
        &args.remote,
        layout,
        async |c| c.call(Method::POST, &path, Some(body)).await,
        |_| {
            println!("running {}", args.id);
        },
    )
}

pub(crate) fn logs(args: IdArgs, layout: &Layout) -> CommandResult {
    let path = format!("/v2/sandboxes/{}/logs", args.id);
    run(
        &args.remote,
        layout,
        async |c| c.call(Method::GET, &path, None).await,
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
    let path = format!("/sandboxes/{}/metrics", args.id);
    run(
        &args.remote,
        layout,
        async |c| c.call(Method::GET, &path, None).await,
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
            .call(Method::GET, &format!("/sandboxes/{}", args.id), None)
            .await?;
        let server = tokio::net::lookup_host(&client.host)
            .await?
            .next()
            .ok_or_else(|| anyhow!("{} does not resolve", client.host))?;
        let agent =
            AgentClient::through_proxy(server, &args.id, detail["envdAccessToken"].as_str())?;
        let request = super::sandbox::start_request(&args.command, &args.envs, args.cwd.clone());
        let cut = || {
            super::Failure::from(anyhow!(
                "the connection to the sandbox closed before the command ended"
            ))
        };
        let outcome = super::sandbox::run_process(
            &agent,
            &request,
            &mut signals,
            std::future::pending(),
            cut,
        )
        .await?;
        Ok(outcome.exit_code("the sandbox keeps running"))
    })
}
