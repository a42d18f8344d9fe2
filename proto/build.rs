//! Compiles the .proto files with protox (a pure-Rust protobuf compiler), so building the
//! workspace needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/rocketraft/raft.proto",
        "proto/rocketraft/admin.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".rocketraft")
        .compile_fds(descriptors)?;
    Ok(())
}
