//! Checking a repository's integrity, as `restic check` does.
//!
//! The structural check compares the packs in storage with the packs the index names (a pack
//! the index names but storage lacks is an error; a stored pack no index names is only
//! reported, as restic does for packs left by an interrupted run), and walks every snapshot's
//! trees: every tree must load and verify, list its nodes in order, give directories a subtree
//! and files a content list whose blobs are all indexed. `--read-data` then reads every pack,
//! checks its hash against its name, compares its header with the index and opens every blob.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;

use crate::backend::FileType;
use crate::id::{BlobType, Id, PackId, TreeId};
use crate::node::NodeType;
use crate::pack;
use crate::repository::{BlobCodec, Repository};

/// What a check found.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// Problems that make data unreadable or the repository invalid.
    pub errors: Vec<String>,
    /// Findings that are not errors (unreferenced packs).
    pub notes: Vec<String>,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Trees checked.
    pub trees: usize,
    /// Packs read with `read_data`.
    pub packs_read: usize,
}

/// Checks `repo` (whose index must be loaded). Never stops at the first problem.
pub async fn check(repo: Arc<Repository>, read_data: bool, connections: usize) -> CheckReport {
    let mut report = CheckReport::default();
    let stored: HashMap<Id, u64> = match repo.backend().list(FileType::Pack).await {
        Ok(l) => l.into_iter().map(|l| (l.id, l.size)).collect(),
        Err(e) => {
            report.errors.push(format!("list packs: {e}"));
            return report;
        }
    };
    let mut indexed: HashMap<PackId, Vec<pack::PackedBlob>> = HashMap::new();
    for (id, blobs) in repo.index().packs() {
        indexed.entry(id).or_default().extend_from_slice(blobs);
    }
    for (id, blobs) in &mut indexed {
        blobs.sort_by_key(|b| b.offset);
        blobs.dedup();
        match stored.get(&id.0) {
            None => report.errors.push(format!(
                "pack {} is in the index but missing from storage",
                id.short()
            )),
            Some(&size) => {
                if let Err(e) = check_layout(blobs) {
                    report.errors.push(format!("pack {}: {e}", id.short()));
                }
                let expected = pack::pack_size(blobs);
                if size != expected {
                    report.errors.push(format!(
                        "pack {}: size {size} does not match the {expected} bytes its index entries imply",
                        id.short()
                    ));
                }
            }
        }
    }
    for id in stored.keys() {
        if !indexed.contains_key(&PackId(*id)) {
            report.notes.push(format!(
                "pack {} is not referenced by any index",
                id.short()
            ));
        }
    }
    check_snapshots(&repo, &mut report).await;
    if read_data {
        let mut packs: Vec<(PackId, Vec<pack::PackedBlob>)> = indexed
            .into_iter()
            .filter(|(id, _)| stored.contains_key(&id.0))
            .collect();
        packs.sort_by_key(|(id, _)| *id);
        let mut reads = futures::stream::iter(packs)
            .map(|(id, blobs)| {
                let repo = Arc::clone(&repo);
                async move {
                    let bytes = repo.backend().load(FileType::Pack, &id.0).await;
                    match bytes {
                        Err(e) => vec![e.to_string()],
                        Ok(bytes) => tokio::task::spawn_blocking(move || {
                            read_pack(&repo, id, &bytes, &blobs)
                        })
                        .await
                        .unwrap_or_else(|e| vec![format!("pack {}: {e}", id.short())]),
                    }
                }
            })
            .buffer_unordered(connections.max(1));
        while let Some(errs) = reads.next().await {
            report.packs_read += 1;
            report.errors.extend(errs);
        }
    }
    report
}

/// Blobs of a pack must lie back to back from offset 0.
fn check_layout(blobs: &[pack::PackedBlob]) -> Result<(), String> {
    let mut next = 0u64;
    for b in blobs {
        let off = u64::from(b.offset);
        if off != next {
            return Err(format!(
                "index for the pack has {} at offset {off} where {next} was expected (gaps or overlapping blobs)",
                b.id.short()
            ));
        }
        next = off + u64::from(b.length);
    }
    Ok(())
}

async fn check_snapshots(repo: &Arc<Repository>, report: &mut CheckReport) {
    let snapshots = match repo.list_snapshots().await {
        Ok(s) => s,
        Err(e) => {
            report.errors.push(format!("load snapshots: {e}"));
            return;
        }
    };
    report.snapshots = snapshots.len();
    let mut seen: HashSet<TreeId> = HashSet::new();
    let mut stack: Vec<TreeId> = snapshots.iter().map(|(_, s)| s.tree).collect();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        report.trees += 1;
        let tree = match repo.load_tree(&id).await {
            Ok(t) => t,
            Err(e) => {
                report.errors.push(format!("tree {}: {e}", id.short()));
                continue;
            }
        };
        if let Err(e) = tree.check_order() {
            report.errors.push(format!("tree {}: {e}", id.short()));
        }
        for node in &tree.nodes {
            let name = String::from_utf8_lossy(&node.name);
            match node.node_type {
                NodeType::Dir => match node.subtree {
                    Some(sub) => stack.push(sub),
                    None => report.errors.push(format!(
                        "tree {}: dir node {name:?} has no subtree",
                        id.short()
                    )),
                },
                NodeType::File => match &node.content {
                    None => report.errors.push(format!(
                        "tree {}: file {name:?} has nil blob list",
                        id.short()
                    )),
                    Some(content) => {
                        for b in content {
                            if !repo.index().contains(BlobType::Data, &b.0) {
                                report.errors.push(format!(
                                    "tree {}: file {name:?} blob {} not found in index",
                                    id.short(),
                                    b.short()
                                ));
                            }
                        }
                    }
                },
                NodeType::Irregular => report.errors.push(format!(
                    "tree {}: node {name:?} has an irregular type",
                    id.short()
                )),
                _ => {}
            }
        }
    }
}

/// Reads one pack fully: hash, header, every blob.
fn read_pack(
    repo: &Repository,
    id: PackId,
    bytes: &[u8],
    indexed: &[pack::PackedBlob],
) -> Vec<String> {
    let mut errors = Vec::new();
    let actual = Id::hash(bytes);
    if actual != id.0 {
        errors.push(format!(
            "pack {}: content hashes to {}, not to its name",
            id.short(),
            actual.short()
        ));
        return errors;
    }
    let n = bytes.len();
    let header = (|| {
        let tail = bytes.get(n.saturating_sub(4)..).unwrap_or_default();
        let hlen = pack::header_length(tail, n as u64).map_err(|e| e.to_string())? as usize;
        let sealed = bytes
            .get(n - 4 - hlen..n - 4)
            .ok_or_else(|| "header lies outside the pack".to_string())?;
        let plain = repo.key().open(sealed).map_err(|e| e.to_string())?;
        pack::parse_header(&plain, repo.allows_compression()).map_err(|e| e.to_string())
    })();
    let header = match header {
        Ok(h) => h,
        Err(e) => {
            errors.push(format!("pack {}: header: {e}", id.short()));
            return errors;
        }
    };
    let mut in_index: Vec<_> = indexed.to_vec();
    in_index.sort_by_key(|b| b.offset);
    if header != in_index {
        errors.push(format!(
            "pack {}: header lists {} blobs that differ from the {} the index lists",
            id.short(),
            header.len(),
            in_index.len()
        ));
    }
    let mut codec = BlobCodec::new();
    for b in &header {
        let start = b.offset as usize;
        let Some(sealed) = bytes.get(start..start + b.length as usize) else {
            errors.push(format!(
                "pack {}: blob {} lies beyond the pack",
                id.short(),
                b.id.short()
            ));
            continue;
        };
        let mut buf = sealed.to_vec();
        if let Err(e) = codec.open_borrowed(repo.key(), b.id, &mut buf, b.uncompressed_length) {
            errors.push(format!("pack {}: {e}", id.short()));
        }
    }
    errors
}
