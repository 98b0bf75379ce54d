//! A child process whose output goes to a log file, with the signals tests
//! need (kill -9, SIGTERM with a grace period, SIGSTOP/SIGCONT). A process
//! still running when dropped is stopped (SIGTERM, then SIGKILL after 3 s),
//! so a failing test leaves none behind.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[derive(Debug)]
pub struct Process {
    pub log: PathBuf,
    child: Option<Child>,
}

impl Process {
    pub fn new(log: PathBuf) -> Self {
        Self { log, child: None }
    }

    /// Starts `cmd`, appending its stdout and stderr to the log.
    pub fn start(&mut self, cmd: &mut Command) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its exit status, once it has exited by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `grace` for the exit; returns its status.
    pub fn stop(&mut self, grace: Duration) -> Result<ExitStatus> {
        let mut c = self.child.take().context("not running")?;
        signal(c.id(), "TERM")?;
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = c.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                bail!("did not stop within {grace:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, …).
    pub fn signal(&self, sig: &str) -> Result<()> {
        signal(self.pid().context("not running")?, sig)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status()?.success();
    if ok {
        Ok(())
    } else {
        bail!("kill -{sig} {pid} failed")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A frozen process must be thawed to die; given a moment, it cleans
        // up after itself (an agent's WireGuard socket), else it is killed.
        let _ = self.signal("CONT");
        if self.stop(Duration::from_secs(3)).is_err() {
            self.kill9();
        }
    }
}
