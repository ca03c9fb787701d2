//! envd's `filesystem` protobuf package (service `filesystem.Filesystem`),
//! written by hand in the shape prost-build would generate, with the upstream
//! field names and numbers.

use std::collections::HashMap;

/// Fully qualified service name, the first path segment of its RPCs.
pub const SERVICE: &str = "filesystem.Filesystem";

/// `google.protobuf.Timestamp`: same fields and numbers, so the same bytes.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum FileType {
    Unspecified = 0,
    File = 1,
    Directory = 2,
    Symlink = 3,
}

impl FileType {
    /// The value's name as it appears in the `.proto` file.
    pub fn as_str_name(&self) -> &'static str {
        match self {
            Self::Unspecified => "FILE_TYPE_UNSPECIFIED",
            Self::File => "FILE_TYPE_FILE",
            Self::Directory => "FILE_TYPE_DIRECTORY",
            Self::Symlink => "FILE_TYPE_SYMLINK",
        }
    }

    /// The value for a name from the `.proto` file.
    pub fn from_str_name(value: &str) -> Option<Self> {
        match value {
            "FILE_TYPE_UNSPECIFIED" => Some(Self::Unspecified),
            "FILE_TYPE_FILE" => Some(Self::File),
            "FILE_TYPE_DIRECTORY" => Some(Self::Directory),
            "FILE_TYPE_SYMLINK" => Some(Self::Symlink),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum EventType {
    Unspecified = 0,
    Create = 1,
    Write = 2,
    Remove = 3,
    Rename = 4,
    Chmod = 5,
}

impl EventType {
    /// The value's name as it appears in the `.proto` file.
    pub fn as_str_name(&self) -> &'static str {
        match self {
            Self::Unspecified => "EVENT_TYPE_UNSPECIFIED",
            Self::Create => "EVENT_TYPE_CREATE",
            Self::Write => "EVENT_TYPE_WRITE",
            Self::Remove => "EVENT_TYPE_REMOVE",
            Self::Rename => "EVENT_TYPE_RENAME",
            Self::Chmod => "EVENT_TYPE_CHMOD",
        }
    }

    /// The value for a name from the `.proto` file.
    pub fn from_str_name(value: &str) -> Option<Self> {
        match value {
            "EVENT_TYPE_UNSPECIFIED" => Some(Self::Unspecified),
            "EVENT_TYPE_CREATE" => Some(Self::Create),
            "EVENT_TYPE_WRITE" => Some(Self::Write),
            "EVENT_TYPE_REMOVE" => Some(Self::Remove),
            "EVENT_TYPE_RENAME" => Some(Self::Rename),
            "EVENT_TYPE_CHMOD" => Some(Self::Chmod),
            _ => None,
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(enumeration = "FileType", tag = "2")]
    pub r#type: i32,
    #[prost(string, tag = "3")]
    pub path: String,
    #[prost(int64, tag = "4")]
    pub size: i64,
    /// Permission bits (`0o777` and the setuid, setgid and sticky bits).
    #[prost(uint32, tag = "5")]
    pub mode: u32,
    /// Mode as text in Go's `FileMode.String()` form, e.g. `drwxr-xr-x`.
    #[prost(string, tag = "6")]
    pub permissions: String,
    #[prost(string, tag = "7")]
    pub owner: String,
    #[prost(string, tag = "8")]
    pub group: String,
    #[prost(message, optional, tag = "9")]
    pub modified_time: Option<Timestamp>,
    /// Where a symlink points, resolved to an absolute path.
    #[prost(string, optional, tag = "10")]
    pub symlink_target: Option<String>,
    /// User-defined metadata: the file's `user.e2b.*` extended attributes,
    /// keyed without that prefix.
    #[prost(map = "string, string", tag = "11")]
    pub metadata: HashMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatRequest {
    #[prost(string, tag = "1")]
    pub path: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StatResponse {
    #[prost(message, optional, tag = "1")]
    pub entry: Option<EntryInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MakeDirRequest {
    #[prost(string, tag = "1")]
    pub path: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MakeDirResponse {
    #[prost(message, optional, tag = "1")]
    pub entry: Option<EntryInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MoveRequest {
    #[prost(string, tag = "1")]
    pub source: String,
    #[prost(string, tag = "2")]
    pub destination: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MoveResponse {
    #[prost(message, optional, tag = "1")]
    pub entry: Option<EntryInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListDirRequest {
    #[prost(string, tag = "1")]
    pub path: String,
    /// How many levels to descend; 0 means 1.
    #[prost(uint32, tag = "2")]
    pub depth: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListDirResponse {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<EntryInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoveRequest {
    #[prost(string, tag = "1")]
    pub path: String,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct RemoveResponse {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchDirRequest {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(bool, tag = "2")]
    pub recursive: bool,
    #[prost(bool, tag = "3")]
    pub include_entry: bool,
    /// Watch even a directory on a network file system (NFS, CIFS, SMB,
    /// FUSE), which is refused otherwise.
    #[prost(bool, tag = "4")]
    pub allow_network_mounts: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FilesystemEvent {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(enumeration = "EventType", tag = "2")]
    pub r#type: i32,
    #[prost(message, optional, tag = "3")]
    pub entry: Option<EntryInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchDirResponse {
    #[prost(oneof = "watch_dir_response::Event", tags = "1, 2, 3")]
    pub event: Option<watch_dir_response::Event>,
}

pub mod watch_dir_response {
    #[expect(
        clippy::large_enum_variant,
        reason = "the shape prost-build generates; events are built one at a time"
    )]
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Event {
        #[prost(message, tag = "1")]
        Start(StartEvent),
        #[prost(message, tag = "2")]
        Filesystem(super::FilesystemEvent),
        #[prost(message, tag = "3")]
        Keepalive(KeepAlive),
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct StartEvent {}

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct KeepAlive {}
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateWatcherRequest {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(bool, tag = "2")]
    pub recursive: bool,
    #[prost(bool, tag = "3")]
    pub include_entry: bool,
    /// Watch even a directory on a network file system (NFS, CIFS, SMB,
    /// FUSE), which is refused otherwise.
    #[prost(bool, tag = "4")]
    pub allow_network_mounts: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateWatcherResponse {
    #[prost(string, tag = "1")]
    pub watcher_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetWatcherEventsRequest {
    #[prost(string, tag = "1")]
    pub watcher_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GetWatcherEventsResponse {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<FilesystemEvent>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoveWatcherRequest {
    #[prost(string, tag = "1")]
    pub watcher_id: String,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct RemoveWatcherResponse {}

// ---- proto3 JSON mapping ----

use crate::connect::{JsonError, JsonFields, JsonMessage, JsonObject, Value};

/// Messages without fields are `{}`.
macro_rules! empty_json {
    ($($ty:ty),* $(,)?) => {$(
        impl JsonMessage for $ty {
            fn to_json(&self) -> JsonObject {
                JsonObject::new()
            }
            fn from_json(value: &Value) -> Result<Self, JsonError> {
                JsonFields::new(value, stringify!($ty))?;
                Ok(Self {})
            }
        }
    )*};
}

empty_json!(
    RemoveResponse,
    RemoveWatcherResponse,
    watch_dir_response::StartEvent,
    watch_dir_response::KeepAlive,
);

/// Messages whose only field is `string path = 1`.
macro_rules! path_json {
    ($($ty:ty),* $(,)?) => {$(
        impl JsonMessage for $ty {
            fn to_json(&self) -> JsonObject {
                JsonObject::new().string("path", &self.path)
            }
            fn from_json(value: &Value) -> Result<Self, JsonError> {
                let f = JsonFields::new(value, stringify!($ty))?;
                Ok(Self {
                    path: f.string("path", "path")?.unwrap_or_default(),
                })
            }
        }
    )*};
}

path_json!(StatRequest, MakeDirRequest, RemoveRequest);

/// Messages whose only field is `EntryInfo entry = 1`.
macro_rules! entry_json {
    ($($ty:ty),* $(,)?) => {$(
        impl JsonMessage for $ty {
            fn to_json(&self) -> JsonObject {
                JsonObject::new().message("entry", self.entry.as_ref())
            }
            fn from_json(value: &Value) -> Result<Self, JsonError> {
                let f = JsonFields::new(value, stringify!($ty))?;
                Ok(Self {
                    entry: f.message("entry", "entry")?,
                })
            }
        }
    )*};
}

entry_json!(StatResponse, MakeDirResponse, MoveResponse);

/// Messages whose only field is `string watcher_id = 1`.
macro_rules! watcher_json {
    ($($ty:ty),* $(,)?) => {$(
        impl JsonMessage for $ty {
            fn to_json(&self) -> JsonObject {
                JsonObject::new().string("watcherId", &self.watcher_id)
            }
            fn from_json(value: &Value) -> Result<Self, JsonError> {
                let f = JsonFields::new(value, stringify!($ty))?;
                Ok(Self {
                    watcher_id: f.string("watcherId", "watcher_id")?.unwrap_or_default(),
                })
            }
        }
    )*};
}

watcher_json!(
    CreateWatcherResponse,
    GetWatcherEventsRequest,
    RemoveWatcherRequest
);

/// Messages with `path`, `recursive`, `include_entry` and
/// `allow_network_mounts`.
macro_rules! watch_json {
    ($($ty:ty),* $(,)?) => {$(
        impl JsonMessage for $ty {
            fn to_json(&self) -> JsonObject {
                JsonObject::new()
                    .string("path", &self.path)
                    .bool("recursive", self.recursive)
                    .bool("includeEntry", self.include_entry)
                    .bool("allowNetworkMounts", self.allow_network_mounts)
            }
            fn from_json(value: &Value) -> Result<Self, JsonError> {
                let f = JsonFields::new(value, stringify!($ty))?;
                Ok(Self {
                    path: f.string("path", "path")?.unwrap_or_default(),
                    recursive: f.bool("recursive", "recursive")?.unwrap_or_default(),
                    include_entry: f.bool("includeEntry", "include_entry")?.unwrap_or_default(),
                    allow_network_mounts: f
                        .bool("allowNetworkMounts", "allow_network_mounts")?
                        .unwrap_or_default(),
                })
            }
        }
    )*};
}

watch_json!(WatchDirRequest, CreateWatcherRequest);

/// `google.protobuf.Timestamp` is an RFC 3339 string in UTC.
impl JsonMessage for Timestamp {
    fn to_json(&self) -> JsonObject {
        // Only used as a field value; see `EntryInfo::to_json`.
        JsonObject::new()
    }
    fn from_json(value: &Value) -> Result<Self, JsonError> {
        match value {
            Value::String(s) => parse_rfc3339(s)
                .ok_or_else(|| JsonError(format!("'{s}' is not an RFC 3339 UTC timestamp"))),
            Value::Null => Ok(Self::default()),
            _ => Err(JsonError("A timestamp must be an RFC 3339 string".into())),
        }
    }
}

impl Timestamp {
    /// RFC 3339 in UTC, as the JSON mapping writes timestamps.
    pub fn to_rfc3339(&self) -> String {
        crate::time::format_rfc3339(self.seconds, u32::try_from(self.nanos).unwrap_or(0))
    }
}

/// A `Timestamp` from RFC 3339.
fn parse_rfc3339(s: &str) -> Option<Timestamp> {
    let (seconds, nanos) = crate::time::parse_rfc3339(s)?;
    Some(Timestamp {
        seconds,
        nanos: i32::try_from(nanos).ok()?,
    })
}

impl JsonMessage for EntryInfo {
    fn to_json(&self) -> JsonObject {
        let kind = FileType::try_from(self.r#type).ok();
        let mut o = JsonObject::new()
            .string("name", &self.name)
            .enumeration("type", self.r#type, kind.map(|k| k.as_str_name()))
            .string("path", &self.path)
            .i64("size", self.size)
            .u32("mode", self.mode)
            .string("permissions", &self.permissions)
            .string("owner", &self.owner)
            .string("group", &self.group);
        if let Some(t) = &self.modified_time {
            o = o.put("modifiedTime", Value::from(t.to_rfc3339()));
        }
        o.opt_string("symlinkTarget", self.symlink_target.as_deref())
            .string_map("metadata", self.metadata.iter())
    }
    fn from_json(value: &Value) -> Result<Self, JsonError> {
        let f = JsonFields::new(value, "EntryInfo")?;
        Ok(Self {
            name: f.string("name", "name")?.unwrap_or_default(),
            r#type: f
                .enumeration("type", "type", |n| {
                    FileType::from_str_name(n).map(|k| k as i32)
                })?
                .unwrap_or_default(),
            path: f.string("path", "path")?.unwrap_or_default(),
            size: f.i64("size", "size")?.unwrap_or_default(),
            mode: f.u32("mode", "mode")?.unwrap_or_default(),
            permissions: f.string("permissions", "permissions")?.unwrap_or_default(),
            owner: f.string("owner", "owner")?.unwrap_or_default(),
            group: f.string("group", "group")?.unwrap_or_default(),
            modified_time: f
                .get("modifiedTime", "modified_time")
                .map(Timestamp::from_json)
                .transpose()?,
            symlink_target: f.string("symlinkTarget", "symlink_target")?,
            metadata: f.string_map("metadata", "metadata")?,
        })
    }
}

impl JsonMessage for MoveRequest {
    fn to_json(&self) -> JsonObject {
        JsonObject::new()
            .string("source", &self.source)
            .string("destination", &self.destination)
    }
    fn from_json(value: &Value) -> Result<Self, JsonError> {
        let f = JsonFields::new(value, "MoveRequest")?;
        Ok(Self {
            source: f.string("source", "source")?.unwrap_or_default(),
            destination: f.string("destination", "destination")?.unwrap_or_default(),
        })
    }
}

impl JsonMessage for ListDirRequest {
    fn to_json(&self) -> JsonObject {
        JsonObject::new()
            .string("path", &self.path)
            .u32("depth", self.depth)
    }
    fn from_json(value: &Value) -> Result<Self, JsonError> {
        let f = JsonFields::new(value, "ListDirRequest")?;
        Ok(Self {
            path: f.string("path", "path")?.unwrap_or_default(),
            depth: f.u32("depth", "depth")?.unwrap_or_default(),
        })
    }
}

impl JsonMessage for ListDirResponse {
    fn to_json(&self) -> JsonObject {
        JsonObject::new().messages("entries", &self.entries)
    }
    fn from_json(value: &Value) -> Result<Self, JsonError> {
        let f = JsonFields::new(value, "ListDirResponse")?;
        Ok(Self {
            entries: f.messages("entries", "entries")?,
        })
    }
}

impl JsonMessage for FilesystemEvent {
    fn to_json(&self) -> JsonObject {
        let kind = EventType::try_from(self.r#type).ok();
        JsonObject::new()
            .string("name", &self.name)
            .enumeration("type", self.r#type, kind.map(|k| k.as_str_name()))
            .message("entry", self.entry.as_ref())
    }
    fn from_json(value: &Value) -> Result<Self, JsonError> {
        let f = JsonFields::new(value, "FilesystemEvent")?;
        Ok(Self {
            name: f.string("name", "name")?.unwrap_or_default(),
            r#type: f
                .enumeration("type", "type", |n| {
                    EventType::from_str_name(n).map(|k| k as i32)
                })?
                .unwrap_or_default(),
            entry: f.message("entry", "entry")?,
        })
    }
}

impl JsonMessage for GetWatcherEventsResponse {
    fn to_json(&self) -> JsonObject {
        JsonObject::new().messages("events", &self.events)
    }
    fn from_json(value: &Value) -> Result<Self, JsonError> {
        let f = JsonFields::new(value, "GetWatcherEventsResponse")?;
        Ok(Self {
            events: f.messages("events", "events")?,
        })
    }
}

impl JsonMessage for WatchDirResponse {
    fn to_json(&self) -> JsonObject {
        use watch_dir_response::Event;
        let o = JsonObject::new();
        match &self.event {
            None => o,
            Some(Event::Start(e)) => o.message("start", Some(e)),
            Some(Event::Filesystem(e)) => o.message("filesystem", Some(e)),
            Some(Event::Keepalive(e)) => o.message("keepalive", Some(e)),
        }
    }
    fn from_json(value: &Value) -> Result<Self, JsonError> {
        use watch_dir_response::Event;
        let f = JsonFields::new(value, "WatchDirResponse")?;
        let members = [
            ("start", "start"),
            ("filesystem", "filesystem"),
            ("keepalive", "keepalive"),
        ];
        let event = match f.oneof(&members)? {
            Some("start") => f.message("start", "start")?.map(Event::Start),
            Some("filesystem") => f
                .message("filesystem", "filesystem")?
                .map(Event::Filesystem),
            Some(_) => f.message("keepalive", "keepalive")?.map(Event::Keepalive),
            None => None,
        };
        Ok(Self { event })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn stat_response_matches_hand_computed_bytes() {
        let msg = StatResponse {
            entry: Some(EntryInfo {
                name: "a".into(),
                r#type: FileType::Symlink as i32,
                path: "/a".into(),
                size: 300,
                mode: 0o755,
                permissions: "L".into(),
                owner: "u".into(),
                group: "g".into(),
                modified_time: Some(Timestamp {
                    seconds: 1,
                    nanos: 2,
                }),
                symlink_target: Some(String::new()),
                metadata: HashMap::from([("k".into(), "v".into())]),
            }),
        };
        let entry = [
            0x0a, 1, b'a', // name (1, LEN)
            0x10, 3, // type (2, varint) = SYMLINK
            0x1a, 2, b'/', b'a', // path (3, LEN)
            0x20, 0xac, 0x02, // size (4, varint) 300
            0x28, 0xed, 0x03, // mode (5, varint) 0o755 = 493
            0x32, 1, b'L', // permissions (6, LEN)
            0x3a, 1, b'u', // owner (7, LEN)
            0x42, 1, b'g', // group (8, LEN)
            0x4a, 4, 0x08, 1, 0x10, 2, // modified_time (9, LEN) {seconds 1, nanos 2}
            0x52, 0, // symlink_target (10, LEN): present although empty
            0x5a, 6, 0x0a, 1, b'k', 0x12, 1, b'v', // metadata (11, LEN) {key "k", value "v"}
        ];
        let mut expected = vec![0x0a, u8::try_from(entry.len()).unwrap()];
        expected.extend_from_slice(&entry);
        assert_eq!(msg.encode_to_vec(), expected);
        assert_eq!(StatResponse::decode(expected.as_slice()).unwrap(), msg);
    }

    #[test]
    fn json_uses_camel_case_names_and_rfc3339_times() {
        let entry = EntryInfo {
            name: "a".into(),
            r#type: FileType::Directory as i32,
            size: 5,
            modified_time: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 120_000_000,
            }),
            symlink_target: Some("/t".into()),
            metadata: HashMap::from([("origin".into(), "sdk".into())]),
            ..EntryInfo::default()
        };
        let json: Value = serde_json::from_slice(&entry.encode_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "a",
                "type": "FILE_TYPE_DIRECTORY",
                "size": "5",
                "modifiedTime": "2023-11-14T22:13:20.120Z",
                "symlinkTarget": "/t",
                "metadata": { "origin": "sdk" },
            })
        );
        assert_eq!(EntryInfo::decode_json(&entry.encode_json()).unwrap(), entry);
        let moved = MoveRequest::decode_json(br#"{"source":"a","destination":"b"}"#).unwrap();
        assert_eq!(
            (moved.source.as_str(), moved.destination.as_str()),
            ("a", "b")
        );
        let list = ListDirRequest::decode_json(br#"{"path":"/","depth":3}"#).unwrap();
        assert_eq!(list.depth, 3);
        let watch = CreateWatcherRequest::decode_json(
            br#"{"path":"/w","includeEntry":true,"allowNetworkMounts":true}"#,
        )
        .unwrap();
        assert!(watch.include_entry && watch.allow_network_mounts && !watch.recursive);
        let back: Value = serde_json::from_slice(&watch.encode_json()).unwrap();
        assert_eq!(
            back,
            serde_json::json!({ "path": "/w", "includeEntry": true, "allowNetworkMounts": true })
        );
    }

    #[test]
    fn rfc3339_round_trips() {
        for (text, seconds, nanos) in [
            ("1970-01-01T00:00:00Z", 0, 0),
            ("1969-12-31T23:59:59.000000001Z", -1, 1),
            ("2000-02-29T12:00:00.000001Z", 951_825_600, 1000),
        ] {
            let t = Timestamp { seconds, nanos };
            assert_eq!(t.to_rfc3339(), text);
            assert_eq!(parse_rfc3339(text), Some(t));
        }
        assert_eq!(
            parse_rfc3339("1970-01-01T01:00:00+01:00"),
            Some(Timestamp::default())
        );
        assert_eq!(parse_rfc3339("1970-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn defaults_are_not_written() {
        assert!(RemoveResponse {}.encode_to_vec().is_empty());
        assert!(EntryInfo::default().encode_to_vec().is_empty());
        let list = ListDirRequest {
            path: "d".into(),
            depth: 2,
        };
        assert_eq!(list.encode_to_vec(), [0x0a, 1, b'd', 0x10, 2]);
    }

    #[test]
    fn watch_events_round_trip() {
        let events = [
            watch_dir_response::Event::Start(watch_dir_response::StartEvent {}),
            watch_dir_response::Event::Filesystem(FilesystemEvent {
                name: "x".into(),
                r#type: EventType::Rename as i32,
                entry: None,
            }),
            watch_dir_response::Event::Keepalive(watch_dir_response::KeepAlive {}),
        ];
        for event in events {
            let msg = WatchDirResponse { event: Some(event) };
            let decoded = WatchDirResponse::decode(msg.encode_to_vec().as_slice()).unwrap();
            assert_eq!(decoded, msg);
        }
    }

    #[test]
    fn enum_names_follow_the_proto() {
        for t in [
            FileType::Unspecified,
            FileType::File,
            FileType::Directory,
            FileType::Symlink,
        ] {
            assert_eq!(FileType::from_str_name(t.as_str_name()), Some(t));
        }
        for t in [
            EventType::Unspecified,
            EventType::Create,
            EventType::Write,
            EventType::Remove,
            EventType::Rename,
            EventType::Chmod,
        ] {
            assert_eq!(EventType::from_str_name(t.as_str_name()), Some(t));
        }
        assert_eq!(FileType::from_str_name("FILE"), None);
    }
}
