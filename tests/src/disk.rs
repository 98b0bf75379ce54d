//! A small disk for a test: a tmpfs of a set size mounted at a directory
//! (a data dir to fill up), grown again when the test gives the space
//! back, and unmounted when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Result};

#[derive(Debug)]
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as mount takes it: `6m`) at `path`.
    pub fn mount(path: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(path)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(path)
            .output()?;
        ensure!(
            out.status.success(),
            "cannot mount a tmpfs at {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self { path: path.to_owned() })
    }

    /// Gives it `size` in all, keeping what it holds.
    pub fn resize(&self, size: &str) -> Result<()> {
        let out = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.path).output()?;
        ensure!(
            out.status.success(),
            "cannot resize {}: {}",
            self.path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a process of a failed test may still hold it open.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
