//! berth-monitor: what berth-shim execs once its container runs (see the
//! crate docs). Not run by people.

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match berth_monitor::main(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("berth-monitor: {message}");
            std::process::ExitCode::from(2)
        }
    }
}
