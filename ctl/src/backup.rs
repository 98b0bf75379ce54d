//! `cluster backup FILE`: the cluster's replicated state as the leader
//! writes it (every write acknowledged before the call is in it), saved
//! whole or not at all, readable by its owner only: it holds the
//! cluster's root key. `berth-server --restore FILE --bootstrap` starts a
//! new cluster from it.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use berth_proto::pb::cluster as pb;

use crate::client::Client;

pub async fn backup(client: &Client, path: &Path) -> Result<String> {
    let mut pieces = client.call("backup", async |mut c| c.backup(pb::BackupRequest {}).await).await?;
    let name = path.file_name().with_context(|| format!("{} names no file", path.display()))?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let partial = dir.join(format!(".{}.partial", name.to_string_lossy()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    let mut head = Vec::new();
    let mut bytes = 0usize;
    let received = async {
        while let Some(piece) = pieces.message().await.context("backup failed")? {
            if head.len() < 4096 {
                head.extend_from_slice(&piece.data[..piece.data.len().min(4096)]);
            }
            bytes += piece.data.len();
            file.write_all(&piece.data).with_context(|| format!("cannot write {}", partial.display()))?;
        }
        file.sync_all().with_context(|| format!("cannot write {}", partial.display()))
    };
    if let Err(e) = received.await {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    let summary = match summary(&head, bytes) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))?;
    Ok(format!("{summary}, written to {} (keep it as safe as the cluster's root key)\n", path.display()))
}

/// What the file's header line says, checked against what arrived.
fn summary(head: &[u8], total: usize) -> Result<String> {
    let mut lines = head.splitn(3, |b| *b == b'\n');
    let (Some(first), Some(second), Some(_)) = (lines.next(), lines.next(), lines.next()) else {
        bail!("the server's backup has no header: not written");
    };
    let h: serde_json::Value = serde_json::from_slice(second).context("the server's backup header is not valid")?;
    let body = h["bytes"].as_u64().unwrap_or(u64::MAX);
    if (first.len() + second.len() + 2) as u64 + body != total as u64 {
        bail!("the backup arrived cut short ({total} bytes): not written");
    }
    Ok(format!(
        "backup of cluster {} at index {} ({total} bytes{})",
        h["cluster"].as_str().unwrap_or("?"),
        h["index"],
        if h["sealed"] == true { ", sealed with the unlock key: restoring it needs that key" } else { "" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_the_backup_and_refuses_one_cut_short() {
        let file = b"berth-backup 1\n{\"cluster\":\"c1\",\"index\":42,\"sealed\":false,\"bytes\":5}\nhello";
        let s = summary(file, file.len()).unwrap();
        assert!(s.contains("cluster c1 at index 42") && !s.contains("sealed"), "{s}");
        let e = summary(file, file.len() - 1).unwrap_err().to_string();
        assert!(e.contains("cut short"), "{e}");
        assert!(summary(b"garbage", 7).unwrap_err().to_string().contains("no header"));
    }
}
