//! Restoring a block volume: the one file of a block snapshot written onto a device or a file.
//!
//! A block snapshot's root tree holds a single file node whose content is the volume. Its
//! blobs are fetched in order, a bounded number at a time, and written at their offsets. On a
//! device, zero chunks must be written too (the device holds old data); on a regular file that
//! was just created they are left as holes. The target must be at least as large as the
//! volume when it is a device; a regular file is created or extended.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;

use crate::id::{BlobType, Id, TreeId};
use crate::node::NodeType;
use crate::repository::{RepoError, Repository};

use super::{RestoreError, RestoreOutcome, RestoreStats};

/// Writes the volume in block snapshot `root` onto `target`, holding a non-exclusive lock.
pub async fn restore_block(
    repo: Arc<Repository>,
    root: TreeId,
    target: &Path,
    connections: usize,
    stats: &RestoreStats,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<RestoreOutcome, RestoreError> {
    let lock = repo.lock(false).await?;
    let result = write_volume(&repo, root, target, connections, stats, cancel).await;
    let released = lock.release().await;
    let out = result?;
    released?;
    Ok(out)
}

async fn write_volume(
    repo: &Arc<Repository>,
    root: TreeId,
    target: &Path,
    connections: usize,
    stats: &RestoreStats,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<RestoreOutcome, RestoreError> {
    let block_err = |reason: String| RestoreError::Block {
        target: target.display().to_string(),
        reason,
    };
    let tree = repo.load_tree(&root).await?;
    let node = match tree.nodes.as_slice() {
        [n] if n.node_type == NodeType::File => n.clone(),
        _ => {
            return Err(RepoError::corrupt(
                format!("tree {}", root.short()),
                "is not a block snapshot: its root must hold exactly one file",
            )
            .into());
        }
    };
    let meta = std::fs::metadata(target).ok();
    let is_device = meta
        .as_ref()
        .is_some_and(|m| m.file_type().is_block_device());
    let fresh = meta.is_none();
    let file = OpenOptions::new()
        .write(true)
        .create(!is_device)
        .custom_flags(libc::O_NOFOLLOW)
        .open(target)
        .map_err(|e| block_err(format!("open: {e}")))?;
    if is_device {
        let size = device_size(&file).map_err(|e| block_err(format!("size: {e}")))?;
        if size < node.size {
            return Err(block_err(format!(
                "the device holds {size} bytes, the volume {}",
                node.size
            )));
        }
    } else {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < node.size {
            file.set_len(node.size)
                .map_err(|e| block_err(format!("extend to {} bytes: {e}", node.size)))?;
        }
    }
    stats.bytes_total.store(node.size, Ordering::Relaxed);
    stats.files_total.store(1, Ordering::Relaxed);
    let content = node.content.clone().unwrap_or_default();
    let mut offsets = Vec::with_capacity(content.len());
    let mut offset = 0u64;
    for b in &content {
        offsets.push(offset);
        offset += super::plan::blob_len(repo, &b.0)?;
    }
    if offset != node.size {
        return Err(RepoError::corrupt(
            format!("tree {}", root.short()),
            format!(
                "volume node says {} bytes, its blobs hold {offset}",
                node.size
            ),
        )
        .into());
    }
    // Owned ids, so that the stream's future is Send for any caller (a borrowing closure here
    // defeats the compiler's proof through higher-ranked lifetimes).
    let ids: Vec<Id> = content.iter().map(|b| b.0).collect();
    let mut blobs = futures::stream::iter(ids.into_iter().zip(offsets))
        .map(|(id, off)| {
            let repo = Arc::clone(repo);
            async move { repo.load_blob(BlobType::Data, &id).await.map(|d| (d, off)) }
        })
        .buffered(connections.max(1));
    loop {
        let r = tokio::select! {
            r = blobs.next() => r,
            () = cancel.cancelled() => {
                return Err(RestoreError::Cancelled {
                    target: target.display().to_string(),
                });
            }
        };
        let Some(r) = r else { break };
        let (data, off) = r?;
        // A hole in a file this restore created already reads as zeros.
        if !(fresh && crate::chunker::is_zero(&data)) {
            tokio::task::block_in_place(|| file.write_all_at(&data, off))
                .map_err(|e| block_err(format!("write at {off}: {e}")))?;
        }
        stats
            .bytes_done
            .fetch_add(data.len() as u64, Ordering::Relaxed);
    }
    file.sync_all()
        .map_err(|e| block_err(format!("flush: {e}")))?;
    Ok(RestoreOutcome {
        files: 1,
        files_written: 1,
        bytes: node.size,
        bytes_fetched: node.size,
        ..RestoreOutcome::default()
    })
}

/// The size of a block device, by seeking to its end.
fn device_size(file: &std::fs::File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::End(0))
}
