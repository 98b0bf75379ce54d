//! A process's pidfd (Linux 5.3): how a process's end is awaited by one
//! that is not its parent. The exec helper polls one with a timeout; the
//! worker awaits the shims of containers it found running (started before
//! the agent restarted), whose end no child wait tells it.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

use super::record::{self, Started};

/// Opens `pid`'s pidfd; readable (POLLIN) once the process has ended.
#[allow(unsafe_code)]
pub fn open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0).ok_or_else(io::Error::last_os_error)?;
    // SAFETY: the fd was just returned to us and is owned here alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Ends when the shim `started` names does; None if it has ended already
/// (or its pid is another process's now). Must be called in a runtime.
#[allow(unsafe_code)]
pub fn shim_end(started: &Started) -> io::Result<Option<impl std::future::Future<Output = ()> + Send>> {
    let fd = match open(started.shim_pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(e) => return Err(e),
    };
    // Checked after the open: the fd names this very process from now on.
    if record::process_start(started.shim_pid) != Some(started.shim_start) {
        return Ok(None);
    }
    // SAFETY: the OwnedFd keeps the fd open, and the same, until the AsyncFd drops it.
    let fd =
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.map_err(|e| e.into_parts().1)?;
    Ok(Some(async move {
        // An error here (the reactor gone) ends the wait too: the worker looks again.
        let _ = fd.readable().await;
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_shim_end_is_awaited_and_a_gone_or_reused_pid_is_none() {
        let mut child = std::process::Command::new("sleep").arg("0.3").spawn().unwrap();
        let pid = child.id() as i32;
        let started = Started { shim_pid: pid, shim_start: record::process_start(pid).unwrap(), pid, started_at_ms: 0 };
        let mut ended = Box::pin(shim_end(&started).unwrap().expect("it runs"));
        let reused = Started { shim_start: started.shim_start + 1, ..started };
        assert!(shim_end(&reused).unwrap().is_none(), "another process under the same pid is not it");
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut ended).await.is_err(), "it still runs");
        tokio::time::timeout(Duration::from_secs(10), ended).await.expect("its end is seen");
        assert!(shim_end(&started).unwrap().is_none(), "ended, not yet reaped: a zombie is over");
        child.wait().unwrap();
        assert!(shim_end(&started).unwrap().is_none(), "reaped: gone");
    }
}
