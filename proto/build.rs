//! Compiles the .proto files with protox (a pure-Rust protobuf compiler), so building the
//! workspace needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/rocketraft/raft.proto",
        "proto/rocketraft/admin.proto",
        "proto/rocketraft/nameserver.proto",
        "proto/apache/rocketmq/v2/definition.proto",
        "proto/apache/rocketmq/v2/service.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        // Message bodies stay `Bytes` from the gRPC frame to the RocksDB write batch.
        .bytes(".rocketraft")
        .bytes(".apache.rocketmq.v2.Message.body")
        .compile_fds(descriptors)?;
    Ok(())
}
