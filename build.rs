//! Compiles `proto/prodgate/v1/*.proto` with the vendored protoc, so a fresh
//! machine needs no system protoc, and writes the descriptor set that server
//! reflection serves.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("prodgate_descriptor.bin"))
        .compile_protos(
            &[PathBuf::from("proto/prodgate/v1/promotion.proto")],
            &[PathBuf::from("proto"), protoc_bin_vendored::include_path()?],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
