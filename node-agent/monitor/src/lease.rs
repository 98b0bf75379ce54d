//! The lease watchdog of a container with an exclusive volume. Its agent
//! keeps `RUN/lease` holding a deadline on the host's boot clock (ns, as
//! text; CLOCK_BOOTTIME, which unlike the monotonic clock goes on while
//! the host is suspended, as the servers' clocks do), renewed with every
//! lease its heartbeats earn. The monitor
//! looks every `POLL_MS` and kills the container once the deadline has
//! passed, or the file is missing or unreadable. So the fence holds even
//! when the agent itself is gone (crashed, stopped for an upgrade, hung):
//! the cluster may start the slot elsewhere only after the deadline.

use std::path::Path;

/// The file, in the container's run directory.
pub const FILE: &str = "lease";
/// How often the monitor looks, at most.
pub const POLL_MS: u16 = 100;

/// The host's boot clock, in ns (shared by every process on the host).
pub fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| (t.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec() as u64))
        .unwrap_or(u64::MAX)
}

/// Whether the lease in `file` has lapsed at `now` (ns): a deadline that has
/// passed, or none that can be read.
pub fn lapsed(file: &Path, now: u64) -> bool {
    let deadline = std::fs::read_to_string(file).ok().and_then(|t| t.trim().parse::<u64>().ok());
    deadline.is_none_or(|d| now >= d)
}

/// Writes `deadline` (ns) to `file`, whole (temp file and rename).
pub fn write(file: &Path, deadline: u64) -> std::io::Result<()> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, deadline.to_string())?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_until_its_deadline_and_not_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(FILE);
        assert!(lapsed(&file, 1), "no file: lapsed");
        write(&file, 1_000).unwrap();
        assert!(!lapsed(&file, 999));
        assert!(lapsed(&file, 1_000));
        std::fs::write(&file, "soon").unwrap();
        assert!(lapsed(&file, 0), "unreadable: lapsed");
        assert!(now_ns() > 0 && now_ns() < u64::MAX);
    }
}
