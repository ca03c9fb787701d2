//! Messages the stock e2b SDKs (Python 2.63.0, JS 2.51.0) exchanged with
//! the agent, recorded by `fixtures/record/record.py` in both codecs: each
//! fixture holds the message as it went over the wire (JSON or binary
//! protobuf) and its other encoding, made by the Python SDK's protobuf
//! library. Every message must decode to the same value from both, and
//! survive our own encode → decode in both.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hearth_proto::connect::JsonMessage;
use hearth_proto::{filesystem, process};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Recorded {
    rpc: String,
    kind: String,
    /// Which encoding went over the wire: `json` or `proto`.
    wire: String,
    json: String,
    /// Base64 of the binary encoding.
    proto: String,
}

const FIXTURES: [(&str, &str); 4] = [
    ("python-json", include_str!("fixtures/python-json.json")),
    ("python-proto", include_str!("fixtures/python-proto.json")),
    ("js-json", include_str!("fixtures/js-json.json")),
    ("js-proto", include_str!("fixtures/js-proto.json")),
];

fn check<M: JsonMessage + Default + PartialEq + std::fmt::Debug>(m: &Recorded) {
    let context = format!("{} {} ({} on the wire): {}", m.rpc, m.kind, m.wire, m.json);
    let binary = STANDARD.decode(&m.proto).expect("fixture base64");
    let from_binary = M::decode(binary.as_slice()).unwrap_or_else(|e| panic!("{context}: {e}"));
    let from_json = M::decode_json(m.json.as_bytes()).unwrap_or_else(|e| panic!("{context}: {e}"));
    assert_eq!(from_json, from_binary, "{context}: JSON and binary differ");

    let again = M::decode(from_binary.encode_to_vec().as_slice()).unwrap();
    assert_eq!(again, from_binary, "{context}: binary round trip");
    let json = from_json.encode_json();
    let again = M::decode_json(&json).unwrap();
    assert_eq!(again, from_json, "{context}: JSON round trip");

    // What we write is the same JSON as the SDK's library wrote (field
    // order aside), so the SDKs read it as they read envd's.
    let ours: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&m.json).unwrap();
    assert_eq!(ours, theirs, "{context}: our JSON differs");
}

macro_rules! dispatch {
    ($m:expr; $($rpc:literal => $request:ty, $response:ty;)*) => {
        match ($m.rpc.as_str(), $m.kind.as_str()) {
            $(
                ($rpc, "request") => check::<$request>($m),
                ($rpc, "response") => check::<$response>($m),
            )*
            (rpc, kind) => panic!("no message type for {rpc} {kind}"),
        }
    };
}

fn check_any(m: &Recorded) {
    use filesystem as fs;
    use process as p;
    dispatch!(m;
        "process.Process/List" => p::ListRequest, p::ListResponse;
        "process.Process/Connect" => p::ConnectRequest, p::ConnectResponse;
        "process.Process/Start" => p::StartRequest, p::StartResponse;
        "process.Process/Update" => p::UpdateRequest, p::UpdateResponse;
        "process.Process/StreamInput" => p::StreamInputRequest, p::StreamInputResponse;
        "process.Process/SendInput" => p::SendInputRequest, p::SendInputResponse;
        "process.Process/SendSignal" => p::SendSignalRequest, p::SendSignalResponse;
        "process.Process/CloseStdin" => p::CloseStdinRequest, p::CloseStdinResponse;
        "filesystem.Filesystem/Stat" => fs::StatRequest, fs::StatResponse;
        "filesystem.Filesystem/MakeDir" => fs::MakeDirRequest, fs::MakeDirResponse;
        "filesystem.Filesystem/Move" => fs::MoveRequest, fs::MoveResponse;
        "filesystem.Filesystem/ListDir" => fs::ListDirRequest, fs::ListDirResponse;
        "filesystem.Filesystem/Remove" => fs::RemoveRequest, fs::RemoveResponse;
        "filesystem.Filesystem/WatchDir" => fs::WatchDirRequest, fs::WatchDirResponse;
        "filesystem.Filesystem/CreateWatcher" => fs::CreateWatcherRequest, fs::CreateWatcherResponse;
        "filesystem.Filesystem/GetWatcherEvents" => fs::GetWatcherEventsRequest, fs::GetWatcherEventsResponse;
        "filesystem.Filesystem/RemoveWatcher" => fs::RemoveWatcherRequest, fs::RemoveWatcherResponse;
    )
}

#[test]
fn sdk_messages_decode_alike_and_round_trip_in_both_codecs() {
    for (name, text) in FIXTURES {
        let recorded: Vec<Recorded> = serde_json::from_str(text).expect(name);
        assert!(recorded.len() > 20, "{name}: too few messages");
        for m in &recorded {
            check_any(m);
        }
    }
}

#[test]
fn fixtures_cover_every_rpc_both_ways_and_both_codecs() {
    let mut seen = std::collections::BTreeSet::new();
    for (_, text) in FIXTURES {
        let recorded: Vec<Recorded> = serde_json::from_str(text).unwrap();
        for m in recorded {
            seen.insert((m.rpc, m.kind, m.wire));
        }
    }
    let rpcs: std::collections::BTreeSet<_> = seen.iter().map(|(rpc, _, _)| rpc.clone()).collect();
    assert_eq!(rpcs.len(), 17, "{rpcs:?}");
    for wire in ["json", "proto"] {
        for kind in ["request", "response"] {
            let n = seen
                .iter()
                .filter(|(_, k, w)| k == kind && w == wire)
                .count();
            assert!(n >= 15, "{kind}s in {wire}: {n}");
        }
    }
}
