//! `hearth events`: the server's event stream (sandbox lifecycle and
//! template builds) from the command line, the last ones or following.

use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use hearth_node::Layout;
use serde_json::Value;

use super::CommandResult;
use super::remote::{ApiPath, Client, Remote};

#[derive(Args)]
pub(crate) struct EventsArgs {
    #[command(flatten)]
    remote: Remote,
    /// Keep printing events as they happen.
    #[arg(long, short = 'f')]
    follow: bool,
    /// How many of the recorded events to print first.
    #[arg(long, default_value_t = 20)]
    tail: u32,
    /// Only events of this type (repeatable), e.g. sandbox.lifecycle.killed.
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Only the events of this sandbox.
    #[arg(long)]
    sandbox: Option<String>,
}

/// One event read from a Server-Sent Events stream.
#[derive(Debug, PartialEq, Eq)]
struct SseEvent {
    id: Option<String>,
    data: String,
}

/// Splits a Server-Sent Events byte stream into events, whatever the
/// chunk boundaries.
#[derive(Default)]
struct SseParser {
    line: Vec<u8>,
    id: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    fn push(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) {
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let line = String::from_utf8_lossy(&self.line)
                .trim_end_matches('\r')
                .to_owned();
            self.line.clear();
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(SseEvent {
                        id: self.id.take(),
                        data: self.data.join("\n"),
                    });
                }
                self.data.clear();
                self.id = None;
                continue;
            }
            // Comments (keep-alives) start with ':'.
            let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => self.data.push(value.to_owned()),
                "id" => self.id = Some(value.to_owned()),
                _ => {}
            }
        }
    }
}

/// One event as a table row: time, type, whose, and what it says.
fn row(event: &Value) -> String {
    let text = |k: &str| event[k].as_str().unwrap_or("-").to_owned();
    let whose = event["sandboxId"]
        .as_str()
        .map(ToOwned::to_owned)
        .or_else(|| {
            let template = event["sandboxTemplateId"].as_str()?;
            let build = event["sandboxBuildId"].as_str().unwrap_or("");
            Some(format!("{template} {build}"))
        })
        .unwrap_or_else(|| "-".to_owned());
    let data = &event["eventData"];
    let detail = ["reason", "set_timeout", "tags"]
        .iter()
        .find_map(|k| {
            let v = &data[*k];
            (!v.is_null()).then(|| match v.as_str() {
                Some(s) => format!("{k}={s}"),
                None => format!("{k}={v}"),
            })
        })
        .unwrap_or_default();
    format!(
        "{:<24} {:<32} {:<40} {}",
        text("timestamp"),
        text("type"),
        whose,
        detail
    )
}

pub(crate) fn run(args: EventsArgs, layout: &Layout) -> CommandResult {
    let client = Client::new(&args.remote, layout)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let tail = args.tail.to_string();
        let follow = args.follow.to_string();
        let mut path = ApiPath::from(["events", "stream"])
            .query("tail", &tail)
            .query("follow", &follow);
        for t in &args.types {
            path = path.query("types", t);
        }
        if let Some(id) = &args.sandbox {
            path = path.query("sandboxID", id);
        }
        let mut response = client.open(path).await?;
        if !args.remote.json {
            println!(
                "{:<24} {:<32} {:<40} DETAIL",
                "TIME", "TYPE", "SANDBOX / TEMPLATE BUILD"
            );
        }
        let mut parser = SseParser::default();
        let mut events = Vec::new();
        while let Some(chunk) = response.chunk().await.context("reading the event stream")? {
            parser.push(&chunk, &mut events);
            for event in events.drain(..) {
                if args.remote.json {
                    println!("{}", event.data);
                } else {
                    let value: Value = serde_json::from_str(&event.data)
                        .with_context(|| format!("an event that is not JSON: {}", event.data))?;
                    println!("{}", row(&value));
                }
            }
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_across_any_chunking() {
        let stream = b": keep-alive\n\nid: 7\nevent: sandbox.lifecycle.killed\ndata: {\"a\":1}\n\nid:8\r\ndata: x\r\ndata: y\r\n\r\n";
        for size in [1, 2, 5, stream.len()] {
            let mut parser = SseParser::default();
            let mut out = Vec::new();
            for chunk in stream.chunks(size) {
                parser.push(chunk, &mut out);
            }
            assert_eq!(
                out,
                [
                    SseEvent {
                        id: Some("7".into()),
                        data: "{\"a\":1}".into()
                    },
                    SseEvent {
                        id: Some("8".into()),
                        data: "x\ny".into()
                    },
                ],
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn rows_name_the_sandbox_or_the_build() {
        let killed = serde_json::json!({
            "timestamp": "2026-12-01T10:00:00.000Z", "type": "sandbox.lifecycle.killed",
            "sandboxId": "abc", "eventData": { "kill_reason": "user", "reason": "killed" }
        });
        let line = row(&killed);
        assert!(
            line.contains("abc") && line.contains("reason=killed"),
            "{line}"
        );
        let built = serde_json::json!({
            "timestamp": "t", "type": "template.build.completed", "sandboxId": null,
            "sandboxTemplateId": "py", "sandboxBuildId": "b1", "eventData": { "tags": ["default"] }
        });
        let line = row(&built);
        assert!(
            line.contains("py b1") && line.contains("tags=[\"default\"]"),
            "{line}"
        );
    }
}
