//! Compiles envd's `.proto` files (in `proto/`) with protox, a protobuf
//! compiler in Rust, so no `protoc` is needed: prost-build generates the
//! message types, pbjson-build their proto3 JSON mapping.

use std::path::PathBuf;

use prost::Message;

const PROTOS: [&str; 2] = ["process/process.proto", "filesystem/filesystem.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    prost_build::Config::new()
        // `google.protobuf.Timestamp` is generated here too; its JSON form
        // (an RFC 3339 string) is written by hand in `time.rs`.
        .compile_well_known_types()
        // Events are built and sent one at a time; boxing the big one
        // would only change the generated API.
        .type_attribute(
            ".filesystem.WatchDirResponse.event",
            "#[allow(clippy::large_enum_variant)]",
        )
        .compile_fds(descriptors.clone())?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors.encode_to_vec())?
        .out_dir(&out)
        .ignore_unknown_fields()
        .build(&[".process", ".filesystem"])?;
    Ok(())
}
