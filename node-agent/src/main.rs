//! berth-agent: the node agent. It will pull images, run containers, and
//! carry the overlay network and DNS for its host; until the runtime lands
//! it only identifies itself, so scripts can already locate the binary.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "berth-agent", version, about = "berth's node agent (runtime not built yet)")]
struct Args {}

fn main() -> std::process::ExitCode {
    Args::parse();
    eprintln!("berth-agent: the container runtime is not part of this build yet; see docs/architecture.md");
    std::process::ExitCode::FAILURE
}
