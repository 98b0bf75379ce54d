//! berth-shim DATA_DIR RUN_DIR: runs the container recorded in DATA_DIR
//! (see `berth_node_agent::runtime::shim`).
//! berth-shim --exec TIMEOUT_MS DATA_DIR RUN_DIR -- ARGS…: runs ARGS inside
//! that running container (see `berth_node_agent::runtime::exec`).
//! Started by berth-agent, not by people.

use std::time::Duration;

use berth_node_agent::runtime::{exec, record::Dirs, shim};

const USAGE: &str = "usage: berth-shim DATA_DIR RUN_DIR | berth-shim --exec TIMEOUT_MS DATA_DIR RUN_DIR -- ARGS... (started by berth-agent)";

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let code = match args.as_slice() {
        [data, run] => shim::main(&Dirs { data: data.into(), run: run.into() }),
        [flag, timeout, data, run, dashes, command @ ..] if flag == "--exec" && dashes == "--" => {
            let (Some(ms), Some(command)) = (
                timeout.to_str().and_then(|t| t.parse().ok()),
                command.iter().map(|a| a.to_str().map(str::to_owned)).collect::<Option<Vec<String>>>(),
            ) else {
                eprintln!("{USAGE}");
                return std::process::ExitCode::from(exec::HELPER_FAILED as u8);
            };
            exec::main(&Dirs { data: data.into(), run: run.into() }, Duration::from_millis(ms), command)
        }
        _ => {
            eprintln!("{USAGE}");
            return std::process::ExitCode::from(2);
        }
    };
    std::process::ExitCode::from(code.clamp(0, 255) as u8)
}
