//! Generates the tonic/prost code for `proto/fieldgate/v1/*.proto`.
//!
//! protoc comes from `protoc-bin-vendored`, so building needs no system protoc. The file
//! descriptor set is kept as well: the gateway serves it through gRPC server reflection, so
//! `grpcurl` and other clients work without the .proto files.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let well_known = protoc_bin_vendored::include_path()?;
    let files = [
        "proto/fieldgate/v1/types.proto",
        "proto/fieldgate/v1/query.proto",
        "proto/fieldgate/v1/command.proto",
        "proto/fieldgate/v1/upstream.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("fieldgate_v1_descriptor.bin"))
        .compile_with_config(
            config,
            &files.map(std::path::PathBuf::from),
            &[std::path::PathBuf::from("proto"), well_known],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
