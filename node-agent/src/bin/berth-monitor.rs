//! berth-monitor DATA_DIR RUN_DIR PID STDOUT_FD STDERR_FD: what berth-shim execs once its
//! container runs (see `berth_node_agent::runtime::monitor`). Kept small on
//! purpose: it links only the monitor's code, so each running container
//! costs little memory. Not run by people.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match berth_node_agent::runtime::monitor::main(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("berth-monitor: {message}");
            std::process::ExitCode::from(2)
        }
    }
}
