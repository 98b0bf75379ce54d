//! berth-shim DATA_DIR RUN_DIR: runs the container recorded in DATA_DIR
//! (see `berth_node_agent::runtime::shim`). Started by berth-agent, not by
//! people.

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(data), Some(run), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: berth-shim DATA_DIR RUN_DIR (started by berth-agent)");
        return std::process::ExitCode::from(2);
    };
    let dirs = berth_node_agent::runtime::record::Dirs { data: data.into(), run: run.into() };
    let code = berth_node_agent::runtime::shim::main(&dirs);
    std::process::ExitCode::from(code.clamp(0, 255) as u8)
}
