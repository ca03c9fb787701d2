//! The generated envd messages: their protobuf bytes and their proto3 JSON
//! mapping, as the agent and the e2b SDKs exchange them.

mod process {
    use std::collections::HashMap;

    use hearth_proto::connect::JsonMessage;
    use hearth_proto::process::process_event::{
        DataEvent, EndEvent, Event, StartEvent, data_event::Output,
    };
    use hearth_proto::process::*;
    use prost::Message;

    fn end(exit_code: i32, exited: bool, status: &str) -> StartResponse {
        StartResponse {
            event: Some(ProcessEvent {
                event: Some(Event::End(EndEvent {
                    exit_code,
                    exited,
                    status: status.to_owned(),
                    error: None,
                })),
            }),
        }
    }

    #[test]
    fn end_event_matches_hand_computed_bytes() {
        // StartResponse.event (1, LEN) > ProcessEvent.end (3, LEN) > EndEvent:
        // exit_code (1, varint, zigzag(7) = 14), exited (2, varint 1),
        // status (3, LEN "exit status 7").
        let mut expected = vec![0x0a, 21, 0x1a, 19, 0x08, 14, 0x10, 0x01, 0x1a, 13];
        expected.extend_from_slice(b"exit status 7");
        let msg = end(7, true, "exit status 7");
        assert_eq!(msg.encode_to_vec(), expected);
        assert_eq!(StartResponse::decode(expected.as_slice()).unwrap(), msg);
    }

    #[test]
    fn negative_exit_code_is_zigzag_encoded() {
        // zigzag(-1) = 1; exited=false is the default and is not written.
        let mut expected = vec![0x0a, 20, 0x1a, 18, 0x08, 0x01, 0x1a, 14];
        expected.extend_from_slice(b"signal: killed");
        assert_eq!(end(-1, false, "signal: killed").encode_to_vec(), expected);
    }

    #[test]
    fn start_request_round_trips() {
        let req = StartRequest {
            process: Some(ProcessConfig {
                cmd: "/bin/sh".into(),
                args: vec!["-c".into(), "echo hi".into()],
                envs: HashMap::from([("A".into(), "1".into()), ("B".into(), "2".into())]),
                cwd: Some("/tmp".into()),
            }),
            pty: Some(Pty {
                size: Some(pty::Size { cols: 80, rows: 24 }),
            }),
            tag: Some("job".into()),
            stdin: Some(false),
        };
        let bytes = req.encode_to_vec();
        assert_eq!(StartRequest::decode(bytes.as_slice()).unwrap(), req);
        // Explicit optional false is still present on the wire (field 4, varint 0).
        assert!(bytes.ends_with(&[0x20, 0x00]));
    }

    #[test]
    fn events_and_selectors_round_trip() {
        let events = [
            Event::Start(StartEvent { pid: 42 }),
            Event::Data(DataEvent {
                output: Some(Output::Stdout(vec![0, 255, 10])),
            }),
            Event::Data(DataEvent {
                output: Some(Output::Stderr(b"err".to_vec())),
            }),
            Event::Data(DataEvent {
                output: Some(Output::Pty(b"tty".to_vec())),
            }),
            Event::Keepalive(process_event::KeepAlive {}),
        ];
        for event in events {
            let msg = ConnectResponse {
                event: Some(ProcessEvent { event: Some(event) }),
            };
            assert_eq!(
                ConnectResponse::decode(msg.encode_to_vec().as_slice()).unwrap(),
                msg
            );
        }
        let signal = SendSignalRequest {
            process: Some(ProcessSelector {
                selector: Some(process_selector::Selector::Pid(9)),
            }),
            signal: Signal::Sigkill as i32,
        };
        let decoded = SendSignalRequest::decode(signal.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.signal(), Signal::Sigkill);
        let input = StreamInputRequest {
            event: Some(stream_input_request::Event::Data(
                stream_input_request::DataEvent {
                    input: Some(ProcessInput {
                        input: Some(process_input::Input::Stdin(b"x".to_vec())),
                    }),
                },
            )),
        };
        assert_eq!(
            StreamInputRequest::decode(input.encode_to_vec().as_slice()).unwrap(),
            input
        );
    }

    #[test]
    fn signal_names_follow_the_proto() {
        for s in [Signal::Unspecified, Signal::Sigterm, Signal::Sigkill] {
            assert_eq!(Signal::from_str_name(s.as_str_name()), Some(s));
        }
        assert_eq!(Signal::try_from(15), Ok(Signal::Sigterm));
        assert_eq!(Signal::from_str_name("SIGHUP"), None);
    }

    fn json<M: JsonMessage>(m: &M) -> String {
        String::from_utf8(m.encode_json()).unwrap()
    }

    #[test]
    fn json_events_use_camel_case_base64_and_omit_defaults() {
        let data = |output| ProcessEvent {
            event: Some(Event::Data(DataEvent {
                output: Some(output),
            })),
        };
        let msg = StartResponse {
            event: Some(data(Output::Stdout(b"hi\n".to_vec()))),
        };
        assert_eq!(json(&msg), r#"{"event":{"data":{"stdout":"aGkK"}}}"#);
        assert_eq!(
            StartResponse::decode_json(json(&msg).as_bytes()).unwrap(),
            msg
        );
        // A set oneof member is written even when empty.
        let empty = ConnectResponse {
            event: Some(data(Output::Pty(Vec::new()))),
        };
        assert_eq!(json(&empty), r#"{"event":{"data":{"pty":""}}}"#);
        assert_eq!(
            json(&end(7, true, "exit status 7")),
            r#"{"event":{"end":{"exitCode":7,"exited":true,"status":"exit status 7"}}}"#
        );
        // exit code 0 and exited=false are defaults and left out.
        assert_eq!(json(&end(0, false, "")), r#"{"event":{"end":{}}}"#);
        let start = StartResponse {
            event: Some(ProcessEvent {
                event: Some(Event::Start(StartEvent { pid: 42 })),
            }),
        };
        assert_eq!(json(&start), r#"{"event":{"start":{"pid":42}}}"#);
        let keepalive = StartResponse {
            event: Some(ProcessEvent {
                event: Some(Event::Keepalive(process_event::KeepAlive {})),
            }),
        };
        assert_eq!(json(&keepalive), r#"{"event":{"keepalive":{}}}"#);
        assert_eq!(
            StartResponse::decode_json(br#"{"event":{"keepalive":{}}}"#).unwrap(),
            keepalive
        );
    }

    #[test]
    fn json_start_request_as_the_python_sdk_writes_it() {
        // google.protobuf.json_format.MessageToJson of the SDK's request.
        let text = r#"{
          "process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo hi"],
                      "envs": {"A": "1"}, "cwd": ""},
          "pty": {"size": {"cols": 80, "rows": 24}},
          "tag": "job",
          "stdin": false
        }"#;
        let req = StartRequest::decode_json(text.as_bytes()).unwrap();
        let process = req.process.clone().unwrap();
        assert_eq!(process.cmd, "/bin/bash");
        assert_eq!(process.args, ["-l", "-c", "echo hi"]);
        assert_eq!(process.envs["A"], "1");
        // `optional` fields keep their presence, also when empty or false.
        assert_eq!(process.cwd.as_deref(), Some(""));
        assert_eq!(req.stdin, Some(false));
        assert_eq!(
            req.pty.unwrap().size,
            Some(pty::Size { cols: 80, rows: 24 })
        );
        assert_eq!(req.tag.as_deref(), Some("job"));
        let minimal = StartRequest::decode_json(br#"{"process":{"cmd":"ls"}}"#).unwrap();
        assert_eq!(minimal.stdin, None);
        assert_eq!(minimal.pty, None);
        assert_eq!(json(&minimal), r#"{"process":{"cmd":"ls"}}"#);
        let with_false = StartRequest {
            stdin: Some(false),
            ..minimal
        };
        assert_eq!(
            json(&with_false),
            r#"{"process":{"cmd":"ls"},"stdin":false}"#
        );
    }

    #[test]
    fn json_accepts_proto_names_strings_for_numbers_and_enum_numbers() {
        let end =
            process_event::EndEvent::decode_json(br#"{"exit_code":"-3","exited":null}"#).unwrap();
        assert_eq!(end.exit_code, -3);
        assert!(!end.exited);
        let sig = SendSignalRequest::decode_json(
            br#"{"process":{"pid":"12"},"signal":"SIGNAL_SIGKILL"}"#,
        )
        .unwrap();
        assert_eq!(sig.signal(), Signal::Sigkill);
        assert_eq!(
            sig.process.clone().unwrap().selector,
            Some(process_selector::Selector::Pid(12))
        );
        assert_eq!(
            json(&sig),
            r#"{"process":{"pid":12},"signal":"SIGNAL_SIGKILL"}"#
        );
        let by_number = SendSignalRequest::decode_json(br#"{"signal":15}"#).unwrap();
        assert_eq!(by_number.signal(), Signal::Sigterm);
        // Unknown fields are ignored.
        assert_eq!(
            ListRequest::decode_json(br#"{"future":1}"#),
            Ok(ListRequest {})
        );
        // URL-safe, unpadded base64 is accepted as well.
        let input = ProcessInput::decode_json(br#"{"stdin":"-_8"}"#).unwrap();
        assert_eq!(
            input.input,
            Some(process_input::Input::Stdin(vec![0xfb, 0xff]))
        );
        let tag = ProcessSelector::decode_json(br#"{"tag":"web"}"#).unwrap();
        assert_eq!(json(&tag), r#"{"tag":"web"}"#);
        // pid 0 is a set oneof member and is written.
        let zero = ProcessSelector {
            selector: Some(process_selector::Selector::Pid(0)),
        };
        assert_eq!(json(&zero), r#"{"pid":0}"#);
    }

    #[test]
    fn json_reads_null_as_default_and_integral_floats_as_integers() {
        assert_eq!(
            SendSignalRequest::decode_json(b"null"),
            Ok(SendSignalRequest::default())
        );
        let sig = SendSignalRequest::decode_json(
            br#"{"process":{"pid":5.0,"tag":null},"signal":9e0,"unknown":null}"#,
        )
        .unwrap();
        assert_eq!(sig.signal(), Signal::Sigkill);
        assert_eq!(
            sig.process.unwrap().selector,
            Some(process_selector::Selector::Pid(5))
        );
        let start =
            StartRequest::decode_json(br#"{"process":null,"pty":{"size":{"cols":1e2}}}"#).unwrap();
        assert_eq!(start.process, None);
        assert_eq!(start.pty.unwrap().size.unwrap().cols, 100);
    }

    #[test]
    fn json_rejects_what_the_mapping_does_not_allow() {
        let err = |text: &str| {
            SendSignalRequest::decode_json(text.as_bytes())
                .unwrap_err()
                .0
        };
        assert!(err(r#"{"signal":"SIGHUP"}"#).contains("unknown variant `SIGHUP`"));
        assert!(err(r#"{"process":{"pid":1,"tag":"x"}}"#).contains("duplicate field `tag`"));
        assert!(err(r#"{"process":{"pid":-1}}"#).starts_with("process.pid: "));
        assert!(err(r#"{"process":{"pid":-1}}"#).contains("range"));
        assert!(err(r#"{"process":{"pid":1.5}}"#).contains("integer"));
        assert!(err(r#"[]"#).contains("expected struct process.SendSignalRequest"));
        assert!(err("{").starts_with("Invalid JSON"));
        assert!(ProcessInput::decode_json(br#"{"pty":"a"}"#).is_err());
        assert!(ProcessInput::decode_json(br#"{"pty":"a*"}"#).is_err());
    }

    #[test]
    fn json_list_and_stream_input_round_trip() {
        let list = ListResponse {
            processes: vec![ProcessInfo {
                config: Some(ProcessConfig {
                    cmd: "sleep".into(),
                    args: vec!["9".into()],
                    envs: HashMap::new(),
                    cwd: None,
                }),
                pid: 7,
                tag: None,
            }],
        };
        assert_eq!(
            json(&list),
            r#"{"processes":[{"config":{"cmd":"sleep","args":["9"]},"pid":7}]}"#
        );
        assert_eq!(
            ListResponse::decode_json(json(&list).as_bytes()).unwrap(),
            list
        );
        assert_eq!(json(&ListResponse::default()), "{}");
        let data =
            StreamInputRequest::decode_json(br#"{"data":{"input":{"pty":"ZWNobwo="}}}"#).unwrap();
        assert_eq!(json(&data), r#"{"data":{"input":{"pty":"ZWNobwo="}}}"#);
        let update = UpdateRequest::decode_json(
            br#"{"process":{"tag":"t"},"pty":{"size":{"cols":100,"rows":30}}}"#,
        )
        .unwrap();
        assert_eq!(update.pty.unwrap().size.unwrap().cols, 100);
    }
}

mod filesystem {
    use std::collections::HashMap;

    use hearth_proto::connect::JsonMessage;
    use hearth_proto::filesystem::*;
    use prost::Message;
    use serde_json::Value;

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

    /// A `Timestamp` as its JSON string, and back.
    fn to_rfc3339(t: Timestamp) -> String {
        serde_json::to_value(t)
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        serde_json::from_value(Value::from(text)).ok()
    }

    #[test]
    fn rfc3339_round_trips() {
        for (text, seconds, nanos) in [
            ("1970-01-01T00:00:00Z", 0, 0),
            ("1969-12-31T23:59:59.000000001Z", -1, 1),
            ("2000-02-29T12:00:00.000001Z", 951_825_600, 1000),
        ] {
            let t = Timestamp { seconds, nanos };
            assert_eq!(to_rfc3339(t), text);
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
