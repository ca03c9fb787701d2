//! The agent's plain HTTP/JSON surface (envd-compatible).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// TCP port the in-guest agent listens on (the same as envd's).
pub const AGENT_PORT: u16 = 49983;

/// The envd version the agent implements. The host reports it to the e2b
/// SDKs as a sandbox's `envdVersion`, and they turn features on by it
/// (file metadata from 0.6.2, entries in watch events from 0.6.3, watches
/// on network mounts from 0.6.4); the agent sends it in
/// [`ENVD_VERSION_HEADER`] on every `/init` answer, as envd does.
pub const ENVD_VERSION: &str = "0.6.4";

/// Header of every `POST /init` answer naming the agent's envd version.
pub const ENVD_VERSION_HEADER: &str = "X-Envd-Version";

/// Body of `POST /init`: sent by the host after boot or restore to hand the
/// agent its environment, credentials and the current time. Every field is
/// optional; an absent field leaves the agent's current setting alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRequest {
    /// Environment variables added to every process started afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<HashMap<String, String>>,
    /// Token that later requests must carry in `X-Access-Token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// The host's current time, RFC 3339 (e.g. `2024-05-01T12:00:00.123Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// User that processes run as when a request names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_user: Option<String>,
    /// Working directory for processes when a request names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_workdir: Option<String>,
    /// Volumes to mount (envd field; not acted on by Hearth yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_mounts: Option<Vec<VolumeMount>>,
    /// Address of E2B's hyperloop server (envd field; unused by Hearth).
    #[serde(
        default,
        rename = "hyperloopIP",
        skip_serializing_if = "Option::is_none"
    )]
    pub hyperloop_ip: Option<String>,
    /// Hearth extension: new host name for the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Hearth extension: volume disks to mount, each found by its serial
    /// number; one already mounted where asked is left as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_disks: Option<Vec<VolumeDisk>>,
    /// Hearth extension: random bytes from the host (standard base64, at
    /// most 512 bytes) mixed into the guest kernel's pool, which is then
    /// reseeded, so sandboxes restored from one snapshot diverge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<String>,
}

/// One entry of [`InitRequest::volume_disks`]: the disk whose serial number
/// is `serial` (an ext4 file system), mounted at `path`, which is made if
/// missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeDisk {
    pub serial: String,
    pub path: String,
}

/// One entry of [`InitRequest::volume_mounts`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub nfs_target: String,
    pub path: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_request_uses_envd_field_names() {
        let body = r#"{"envVars":{"A":"1"},"accessToken":"t","timestamp":"2024-05-01T12:00:00Z",
            "defaultUser":"user","defaultWorkdir":"/home/user","hyperloopIP":"10.0.0.1",
            "volumeMounts":[{"nfs_target":"srv:/x","path":"/mnt"}],"hostname":"box"}"#;
        let req: InitRequest = serde_json::from_str(body).unwrap();
        assert_eq!(req.env_vars.as_ref().unwrap()["A"], "1");
        assert_eq!(req.access_token.as_deref(), Some("t"));
        assert_eq!(req.timestamp.as_deref(), Some("2024-05-01T12:00:00Z"));
        assert_eq!(req.default_user.as_deref(), Some("user"));
        assert_eq!(req.default_workdir.as_deref(), Some("/home/user"));
        assert_eq!(req.hyperloop_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(req.volume_mounts.as_ref().unwrap()[0].path, "/mnt");
        assert_eq!(req.hostname.as_deref(), Some("box"));
        let back: InitRequest =
            serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn empty_init_request_is_all_none_and_serializes_empty() {
        let req: InitRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(req, InitRequest::default());
        assert_eq!(serde_json::to_string(&req).unwrap(), "{}");
    }
}
