//! berth-shim DIR: supervises the container recorded in DIR (see
//! `berth_node_agent::runtime::shim`). Started by berth-agent, not by people.

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: berth-shim CONTAINER_DIR (started by berth-agent)");
        return std::process::ExitCode::from(2);
    };
    let code = berth_node_agent::runtime::shim::main(std::path::Path::new(&dir));
    std::process::ExitCode::from(code.clamp(0, 255) as u8)
}
