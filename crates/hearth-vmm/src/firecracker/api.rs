//! Firecracker's API: the calls this driver makes, as data, and a client
//! that sends them over the API socket.
//!
//! The bodies follow the definitions of Firecracker's swagger file,
//! version 1.16.1 (`src/firecracker/swagger/firecracker.yaml`): field names,
//! types and enum values as written there. Paths in bodies are as the
//! jailed Firecracker sees them (relative to its chroot).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;

use crate::VmmError;

/// How long a configuration call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a snapshot may take to write or load (guest memory goes to
/// or comes from disk).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// `PUT /logger`: `Logger`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Logger {
    pub log_path: String,
    /// `Error`, `Warning`, `Info`, `Debug`, `Trace` or `Off`.
    pub level: &'static str,
    pub show_level: bool,
    pub show_log_origin: bool,
}

/// `PUT /metrics`: `Metrics`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metrics {
    pub metrics_path: String,
}

/// `PUT /machine-config`: `MachineConfiguration`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MachineConfiguration {
    pub vcpu_count: u32,
    pub mem_size_mib: u32,
    pub smt: bool,
    /// Only diff snapshots need it; this driver takes full ones.
    pub track_dirty_pages: bool,
}

/// `PUT /boot-source`: `BootSource`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootSource {
    pub kernel_image_path: String,
    pub boot_args: String,
}

/// `PUT /drives/{drive_id}`: `Drive` (a virtio-block drive).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drive {
    pub drive_id: String,
    pub path_on_host: String,
    pub is_root_device: bool,
    pub is_read_only: bool,
    /// `Unsafe` (flushes are not passed on: what QEMU's `cache=unsafe`
    /// does) or `Writeback`.
    pub cache_type: &'static str,
}

/// `PATCH /drives/{drive_id}`: `PartialDrive`, a new backing file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartialDrive {
    pub drive_id: String,
    pub path_on_host: String,
}

/// `PUT /network-interfaces/{iface_id}`: `NetworkInterface`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    pub guest_mac: String,
}

/// `PUT /entropy`: `EntropyDevice`, without a rate limiter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntropyDevice {}

/// `PUT /actions`: `InstanceActionInfo`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceActionInfo {
    /// `InstanceStart` here.
    pub action_type: &'static str,
}

/// `PATCH /vm`: `Vm`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmState {
    /// `Paused` or `Resumed`.
    pub state: &'static str,
}

/// `PUT /snapshot/create`: `SnapshotCreateParams`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotCreateParams {
    /// `Full` here: each snapshot stands alone.
    pub snapshot_type: &'static str,
    pub snapshot_path: String,
    pub mem_file_path: String,
}

/// `MemoryBackend`, inside [`SnapshotLoadParams`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryBackend {
    /// `File`: Firecracker maps the file privately (copy-on-write), so
    /// the VMs restored from one file share its unchanged pages.
    pub backend_type: &'static str,
    pub backend_path: String,
}

/// `PUT /snapshot/load`: `SnapshotLoadParams`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SnapshotLoadParams {
    pub snapshot_path: String,
    pub mem_backend: MemoryBackend,
    /// Left paused: volumes are attached before the guest runs.
    pub resume_vm: bool,
}

/// One API call.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    PutLogger(Logger),
    PutMetrics(Metrics),
    PutMachineConfig(MachineConfiguration),
    PutBootSource(BootSource),
    PutDrive(Drive),
    PatchDrive(PartialDrive),
    PutNetworkInterface(NetworkInterface),
    PutEntropy(EntropyDevice),
    PutAction(InstanceActionInfo),
    PatchVm(VmState),
    CreateSnapshot(SnapshotCreateParams),
    LoadSnapshot(SnapshotLoadParams),
}

impl Call {
    pub fn method(&self) -> Method {
        match self {
            Self::PatchDrive(_) | Self::PatchVm(_) => Method::PATCH,
            _ => Method::PUT,
        }
    }

    pub fn path(&self) -> String {
        match self {
            Self::PutLogger(_) => "/logger".to_owned(),
            Self::PutMetrics(_) => "/metrics".to_owned(),
            Self::PutMachineConfig(_) => "/machine-config".to_owned(),
            Self::PutBootSource(_) => "/boot-source".to_owned(),
            Self::PutDrive(d) => format!("/drives/{}", d.drive_id),
            Self::PatchDrive(d) => format!("/drives/{}", d.drive_id),
            Self::PutNetworkInterface(n) => format!("/network-interfaces/{}", n.iface_id),
            Self::PutEntropy(_) => "/entropy".to_owned(),
            Self::PutAction(_) => "/actions".to_owned(),
            Self::PatchVm(_) => "/vm".to_owned(),
            Self::CreateSnapshot(_) => "/snapshot/create".to_owned(),
            Self::LoadSnapshot(_) => "/snapshot/load".to_owned(),
        }
    }

    pub fn body(&self) -> Value {
        let body = match self {
            Self::PutLogger(b) => serde_json::to_value(b),
            Self::PutMetrics(b) => serde_json::to_value(b),
            Self::PutMachineConfig(b) => serde_json::to_value(b),
            Self::PutBootSource(b) => serde_json::to_value(b),
            Self::PutDrive(b) => serde_json::to_value(b),
            Self::PatchDrive(b) => serde_json::to_value(b),
            Self::PutNetworkInterface(b) => serde_json::to_value(b),
            Self::PutEntropy(b) => serde_json::to_value(b),
            Self::PutAction(b) => serde_json::to_value(b),
            Self::PatchVm(b) => serde_json::to_value(b),
            Self::CreateSnapshot(b) => serde_json::to_value(b),
            Self::LoadSnapshot(b) => serde_json::to_value(b),
        };
        body.expect("API bodies are plain structs")
    }

    /// `PUT /drives/rootfs` and the like, for errors and logs.
    pub fn describe(&self) -> String {
        format!("{} {}", self.method(), self.path())
    }

    fn timeout(&self) -> Duration {
        match self {
            Self::CreateSnapshot(_) | Self::LoadSnapshot(_) => SNAPSHOT_TIMEOUT,
            _ => CALL_TIMEOUT,
        }
    }
}

/// A client of one Firecracker's API socket. Each call opens a connection
/// of its own: a VMM that restarted its API server, or a call cut by a
/// timeout, leaves nothing half-read for the next one.
#[derive(Debug, Clone)]
pub struct Api {
    socket: PathBuf,
    /// Firecracker's log, whose last lines go with an error.
    log: PathBuf,
}

impl Api {
    pub fn new(socket: PathBuf, log: PathBuf) -> Self {
        Self { socket, log }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Makes `call`; Firecracker's `fault_message` and the tail of its log
    /// make the error when it refuses.
    pub async fn call(&self, call: &Call) -> Result<(), VmmError> {
        let what = call.describe();
        let body = serde_json::to_vec(&call.body()).expect("JSON values serialise");
        let request = Request::builder()
            .method(call.method())
            .uri(call.path())
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a well-formed request");
        let sent = tokio::time::timeout(call.timeout(), self.send(request))
            .await
            .map_err(|_| VmmError::CallTimeout {
                call: what.clone(),
                secs: call.timeout().as_secs(),
            })?;
        let (status, body) =
            sent.map_err(VmmError::io(format!("{what} on {}", self.socket.display())))?;
        if status.is_success() {
            tracing::debug!("firecracker: {what}: {status}");
            return Ok(());
        }
        let fault = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("fault_message")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
        Err(VmmError::Api {
            call: what,
            status: status.as_u16(),
            fault,
            log: log_tail(&self.log, 5),
        })
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> std::io::Result<(StatusCode, Bytes)> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        let connection = tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        connection.abort();
        Ok((status, body))
    }
}

/// The last `lines` non-empty lines of `log`, each on a new line, for an
/// error message; empty when there are none.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let last: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = last.len().saturating_sub(lines);
    last[start..]
        .iter()
        .map(|l| format!("\n  {l}"))
        .collect::<String>()
}
