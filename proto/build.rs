//! Generates the gRPC code with the protoc binary vendored as a crate, so a
//! build needs no system protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_build::configure()
        // Encoded once and sent to every watch: a clone is a reference.
        .bytes([".berth.agent.v1.AssignedTasks.shared"])
        .compile_protos(&["proto/cluster.proto", "proto/raft.proto", "proto/agent.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
