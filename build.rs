//! Compiles `proto/prodgate/v1/*.proto` with the vendored protoc, so a fresh
//! machine needs no system protoc, writes the descriptor set that server
//! reflection serves, and generates from it the proto3 JSON (serde) of every
//! message with pbjson-build, for `--output json`.
use std::path::PathBuf;

/// `google.protobuf.Timestamp` is `crate::pb::Timestamp`, not
/// `prost_types::Timestamp` (no serde) nor `pbjson_types::Timestamp`, whose
/// serde prints `+00:00` instead of the spec's `Z` and fails on a time it
/// cannot render; see `src/pb/timestamp.rs`.
const TIMESTAMP: (&str, &str) = (".google.protobuf.Timestamp", "crate::pb::Timestamp");

/// A map serializes in its iteration order; a BTreeMap keeps the JSON of
/// `attributes` stable from run to run (ascending keys). prost names the
/// field, pbjson-build the message (all its maps; `attributes` is the one).
const ATTRIBUTES: (&str, &str) = (
    ".prodgate.v1.AuditEntry.attributes",
    ".prodgate.v1.AuditEntry",
);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor = out.join("prodgate_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        .extern_path(TIMESTAMP.0, TIMESTAMP.1)
        .btree_map(ATTRIBUTES.0)
        .compile_protos(
            &[PathBuf::from("proto/prodgate/v1/promotion.proto")],
            &[PathBuf::from("proto"), protoc_bin_vendored::include_path()?],
        )?;
    // pbjson-build's defaults are the proto3 JSON mapping the CLI prints:
    // lowerCamelCase names, enum names, 64-bit integers as strings, fields at
    // their default left out.
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptor)?)?
        .extern_path(TIMESTAMP.0, TIMESTAMP.1)
        .btree_map([ATTRIBUTES.1])
        .build(&[".prodgate.v1"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
