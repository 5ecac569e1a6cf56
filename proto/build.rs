//! Compiles `credit/v1/credit.proto` without a system `protoc`: protox parses
//! the files in Rust, tonic-prost-build generates the code, and the encoded
//! descriptor sets are written to `OUT_DIR` for server reflection.

use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let api = ["credit/v1/credit.proto"];
    println!("cargo:rerun-if-changed=credit");
    println!("cargo:rerun-if-changed=third_party");
    let out = PathBuf::from(env::var("OUT_DIR")?);

    // With source info, reflection serves the proto's comments:
    // `grpcurl describe credit.v1.SpendRequest` shows the documentation.
    let mut compiler = protox::Compiler::new(["."])?;
    compiler
        .include_imports(true)
        .include_source_info(true)
        .open_files(api)?;
    fs::write(
        out.join("credit_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(protox::compile(api, ["."])?)?;

    // The google.rpc error details are compiled apart (they live under
    // third_party/, which the API's include root would shadow) and served by
    // reflection too, so grpcurl can decode ErrorInfo and BadRequest.
    let mut details = protox::Compiler::new(["third_party"])?;
    details
        .include_imports(true)
        .open_files(["google/rpc/error_details.proto", "google/rpc/status.proto"])?;
    fs::write(
        out.join("google_rpc_descriptor.bin"),
        details.encode_file_descriptor_set(),
    )?;
    Ok(())
}
