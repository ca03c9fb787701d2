//! Lifecycle events: what they are called, what they say, and how a webhook
//! delivery is signed and retried.
//!
//! The store records an event in the same transaction as the change it
//! tells of, and queues a delivery for every enabled webhook that asked
//! for its type (the outbox, [`crate::store`]); [`crate::webhooks`] sends
//! them. Everything here is pure.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::team_api::TEAM_ID;

/// What a sandbox or template build did. The sandbox types are E2B's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    SandboxCreated,
    SandboxUpdated,
    SandboxPaused,
    SandboxResumed,
    SandboxCheckpointed,
    SandboxKilled,
    BuildStarted,
    BuildCompleted,
    BuildFailed,
}

impl EventType {
    pub const ALL: [Self; 9] = [
        Self::SandboxCreated,
        Self::SandboxUpdated,
        Self::SandboxPaused,
        Self::SandboxResumed,
        Self::SandboxCheckpointed,
        Self::SandboxKilled,
        Self::BuildStarted,
        Self::BuildCompleted,
        Self::BuildFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SandboxCreated => "sandbox.lifecycle.created",
            Self::SandboxUpdated => "sandbox.lifecycle.updated",
            Self::SandboxPaused => "sandbox.lifecycle.paused",
            Self::SandboxResumed => "sandbox.lifecycle.resumed",
            Self::SandboxCheckpointed => "sandbox.lifecycle.checkpointed",
            Self::SandboxKilled => "sandbox.lifecycle.killed",
            Self::BuildStarted => "template.build.started",
            Self::BuildCompleted => "template.build.completed",
            Self::BuildFailed => "template.build.failed",
        }
    }

    /// The type named `name`, or an error listing the known ones.
    pub fn parse(name: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown event type {name:?}: one of {}", known.join(", "))
            })
    }

    /// A sandbox's event (what E2B's `/events/sandboxes` lists).
    pub fn is_sandbox(self) -> bool {
        self.as_str().starts_with("sandbox.")
    }
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Its place in the stream: increasing, the SSE event id.
    pub seq: i64,
    /// Unique: a UUID.
    pub id: String,
    pub kind: String,
    /// Unix milliseconds.
    pub at_ms: i64,
    pub sandbox_id: Option<String>,
    pub template_id: Option<String>,
    pub build_id: Option<String>,
    pub data: Option<Value>,
}

impl EventRecord {
    /// The event as E2B's events API and webhooks send it (`version` v1,
    /// camelCase), for template build events too.
    pub fn to_json(&self) -> Value {
        json!({
            "version": "v1",
            "id": self.id,
            "type": self.kind,
            "eventData": self.data,
            "sandboxBuildId": self.build_id,
            "sandboxExecutionId": null,
            "sandboxId": self.sandbox_id,
            "sandboxTeamId": TEAM_ID,
            "sandboxTemplateId": self.template_id,
            "timestamp": crate::manager::rfc3339_ms(self.at_ms),
        })
    }
}

/// Why a sandbox was killed, in the terms the events give (`kill_reason`),
/// from the stop reason the catalog keeps.
pub fn kill_reason(stop_reason: &str) -> &'static str {
    if stop_reason == "killed" {
        "user"
    } else if stop_reason == "timed out" {
        "timeout"
    } else if stop_reason == "VM exited: VMM exit status 0" {
        // QEMU runs with -no-reboot: a guest power-off or reboot ends it
        // cleanly.
        "guest_exit"
    } else if stop_reason.starts_with("VM exited:") {
        "vmm_crash"
    } else if stop_reason.starts_with("lost when the server restarted")
        || stop_reason == "its saved state is gone"
        || stop_reason == crate::store::NODE_LOST
    {
        "node_lost"
    } else {
        "failed"
    }
}

/// The `e2b-signature` of a delivery: SHA-256 over the secret followed by
/// the body, in unpadded URL-safe base64.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(secret.as_bytes());
    hash.update(body);
    URL_SAFE_NO_PAD.encode(hash.finalize())
}

/// Attempts at one delivery before it is given up and its webhook marked
/// failing.
pub const MAX_ATTEMPTS: u32 = 8;

/// How long after failed attempt `attempt` (1-based) the next one is made:
/// 1 s, doubling, at most 5 min. `None` once [`MAX_ATTEMPTS`] have failed.
pub fn retry_after(attempt: u32) -> Option<Duration> {
    if attempt >= MAX_ATTEMPTS {
        return None;
    }
    let secs = 1u64 << attempt.saturating_sub(1).min(16);
    Some(Duration::from_secs(secs.min(300)))
}

/// A webhook's target, checked: an absolute `http` or `https` URL with a
/// host.
pub fn check_webhook_url(url: &str) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("url {url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "url {url:?}: a webhook is called over http or https, not {}",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("url {url:?} names no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_print_and_parse() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Ok(t));
        }
        assert!(EventType::SandboxKilled.is_sandbox());
        assert!(!EventType::BuildFailed.is_sandbox());
        let err = EventType::parse("sandbox.lifecycle.exploded").unwrap_err();
        assert!(err.contains("sandbox.lifecycle.killed"), "{err}");
    }

    #[test]
    fn signatures_match_what_e2b_documents() {
        // E2B's documented check: base64 of sha256(secret + body) with
        // + → -, / → _ and no padding.
        let secret = "s3cret";
        let body = br#"{"type":"sandbox.lifecycle.created"}"#;
        let mut joined = secret.as_bytes().to_vec();
        joined.extend_from_slice(body);
        let standard = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&joined));
        let expected = standard
            .replace('+', "-")
            .replace('/', "_")
            .trim_end_matches('=')
            .to_owned();
        assert_eq!(signature(secret, body), expected);
        assert_ne!(signature("other", body), expected);
    }

    #[test]
    fn retries_back_off_then_stop() {
        let waits: Vec<u64> = (1..MAX_ATTEMPTS)
            .map(|a| retry_after(a).unwrap().as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(retry_after(MAX_ATTEMPTS), None);
        assert!(retry_after(1).unwrap() < retry_after(2).unwrap());
    }

    #[test]
    fn stop_reasons_become_kill_reasons() {
        assert_eq!(kill_reason("killed"), "user");
        assert_eq!(kill_reason("timed out"), "timeout");
        assert_eq!(kill_reason(crate::store::NODE_LOST), "node_lost");
        assert_eq!(kill_reason("VM exited: VMM exit status 0"), "guest_exit");
        assert_eq!(
            kill_reason("VM exited: VMM killed by signal 9"),
            "vmm_crash"
        );
        assert_eq!(
            kill_reason("lost when the server restarted: no such process"),
            "node_lost"
        );
        assert_eq!(kill_reason("failed: agent never answered"), "failed");
    }

    #[test]
    fn webhook_urls_are_http_or_https_with_a_host() {
        assert!(check_webhook_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(check_webhook_url("https://example.com/hook").is_ok());
        for bad in [
            "ftp://example.com/x",
            "file:///etc/passwd",
            "example.com",
            "",
            "http://",
        ] {
            assert!(check_webhook_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn events_render_in_e2b_shape() {
        let event = EventRecord {
            seq: 3,
            id: "e1".into(),
            kind: EventType::SandboxKilled.as_str().into(),
            at_ms: 1_754_513_964_000,
            sandbox_id: Some("sbx".into()),
            template_id: Some("base".into()),
            build_id: None,
            data: Some(json!({"kill_reason": "user"})),
        };
        let v = event.to_json();
        assert_eq!(v["version"], "v1");
        assert_eq!(v["type"], "sandbox.lifecycle.killed");
        assert_eq!(v["sandboxId"], "sbx");
        assert_eq!(v["sandboxTemplateId"], "base");
        assert_eq!(v["eventData"]["kill_reason"], "user");
        assert!(v["timestamp"].as_str().unwrap().starts_with("2025-08-06T"));
    }
}
