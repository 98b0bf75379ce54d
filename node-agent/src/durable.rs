//! The agent's own records (node id, image index, container configs, keys)
//! are replaced whole and made durable: temp file, fsync, rename, fsync of
//! the directory. A crash or a full disk leaves the old record or the new
//! one, never a part that would fail every later start.

use std::io;
use std::path::Path;

/// Replaces `path` with `data`, durably.
pub fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    berth_monitor::record::replace_durably(path, data)
}
