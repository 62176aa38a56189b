//! Planning a restore: walking the snapshot's trees and creating the skeleton.
//!
//! The planner walks the trees from the root, creates every directory (so that file workers
//! never race to create one), and lists what is left for later stages: files with the byte
//! offset of each of their blobs, hard links to make once their first name is written,
//! symlinks and special files, and directories whose metadata is applied last. Names that are
//! empty, `.`, `..` or contain `/` are refused, so a hostile tree cannot reach outside the
//! target.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::id::{BlobType, TreeId};
use crate::index::BlobLocation;
use crate::node::{Node, NodeType};
use crate::repository::{RepoError, Repository};

use super::RestoreError;

/// A file to restore.
pub struct PlannedFile {
    /// Where it goes.
    pub path: PathBuf,
    /// Its node (size, content, metadata).
    pub node: Node,
}

/// One use of a blob: which file and where in it.
#[derive(Clone, Copy, Debug)]
pub struct BlobUse {
    /// Index into [`Plan::files`].
    pub file: usize,
    /// Byte offset in that file.
    pub offset: u64,
}

/// One blob to read from a pack, and where its plaintext goes.
#[derive(Clone, Debug)]
pub struct PlannedBlob {
    /// Where the blob is.
    pub location: BlobLocation,
    /// Its id.
    pub id: crate::id::Id,
    /// Every place it is written to.
    pub uses: Vec<BlobUse>,
}

/// Everything a restore does after the skeleton exists.
#[derive(Default)]
pub struct Plan {
    /// Files whose content is written.
    pub files: Vec<PlannedFile>,
    /// Blobs to read, grouped by pack, each pack's in offset order.
    pub packs: HashMap<crate::id::PackId, Vec<PlannedBlob>>,
    /// `(new path, existing path)` hard links to make after content is written.
    pub hardlinks: Vec<(PathBuf, usize)>,
    /// Symlinks, fifos and devices, created after files, with their nodes.
    pub others: Vec<(PathBuf, Node)>,
    /// Directories in pre-order, for metadata applied in reverse at the end.
    pub dirs: Vec<(PathBuf, Node)>,
    /// Total bytes of file content to write.
    pub total_bytes: u64,
}

/// Builds the plan for restoring tree `root` into `target`, creating directories on the way.
pub async fn plan(repo: &Repository, root: TreeId, target: &Path) -> Result<Plan, RestoreError> {
    let mut plan = Plan::default();
    let mut links: HashMap<(u64, u64), usize> = HashMap::new();
    let mut stack = vec![(root, target.to_path_buf())];
    let mut blob_slots: HashMap<(crate::id::PackId, crate::id::Id), usize> = HashMap::new();
    create_dir(target)?;
    while let Some((tree_id, dir)) = stack.pop() {
        let tree = repo.load_tree(&tree_id).await?;
        for node in tree.nodes {
            check_name(&node.name, &tree_id)?;
            let path = dir.join(std::ffi::OsStr::from_bytes(&node.name));
            match node.node_type {
                NodeType::Dir => {
                    let Some(sub) = node.subtree else {
                        return Err(RepoError::corrupt(
                            format!("tree {}", tree_id.short()),
                            format!("directory {} has no subtree", path.display()),
                        )
                        .into());
                    };
                    create_dir(&path)?;
                    stack.push((sub, path.clone()));
                    plan.dirs.push((path, node));
                }
                NodeType::File => {
                    if node.links > 1 && node.inode != 0 {
                        let key = (node.device_id, node.inode);
                        if let Some(&first) = links.get(&key) {
                            plan.hardlinks.push((path, first));
                            continue;
                        }
                        links.insert(key, plan.files.len());
                    }
                    add_file(repo, &mut plan, &mut blob_slots, path, node)?;
                }
                _ => plan.others.push((path, node)),
            }
        }
    }
    for blobs in plan.packs.values_mut() {
        blobs.sort_by_key(|b| b.location.offset);
    }
    Ok(plan)
}

fn add_file(
    repo: &Repository,
    plan: &mut Plan,
    slots: &mut HashMap<(crate::id::PackId, crate::id::Id), usize>,
    path: PathBuf,
    node: Node,
) -> Result<(), RestoreError> {
    let file = plan.files.len();
    let mut offset = 0u64;
    for blob in node.content.iter().flatten() {
        let location =
            repo.index()
                .lookup(BlobType::Data, &blob.0)
                .ok_or(RepoError::BlobNotFound {
                    blob_type: BlobType::Data,
                    id: blob.0,
                })?;
        let len = if location.uncompressed_length != 0 {
            u64::from(location.uncompressed_length)
        } else {
            u64::from(location.length).saturating_sub(crate::crypto::EXTENSION as u64)
        };
        let list = plan.packs.entry(location.pack).or_default();
        let slot = *slots.entry((location.pack, blob.0)).or_insert_with(|| {
            list.push(PlannedBlob {
                location,
                id: blob.0,
                uses: Vec::new(),
            });
            list.len() - 1
        });
        list[slot].uses.push(BlobUse { file, offset });
        offset += len;
    }
    if offset != node.size {
        return Err(RepoError::corrupt(
            format!("file {}", path.display()),
            format!(
                "its node says {} bytes but its blobs hold {offset}",
                node.size
            ),
        )
        .into());
    }
    plan.total_bytes += offset;
    plan.files.push(PlannedFile { path, node });
    Ok(())
}

/// Refuses names that would escape the directory they are listed in.
fn check_name(name: &[u8], tree: &TreeId) -> Result<(), RestoreError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(RepoError::corrupt(
            format!("tree {}", tree.short()),
            format!("holds the unsafe name {:?}", String::from_utf8_lossy(name)),
        )
        .into());
    }
    Ok(())
}

/// Creates a directory; an existing directory is fine, anything else in its place (a file, a
/// symlink) is removed first, so nothing is ever written through a symlink.
fn create_dir(path: &Path) -> Result<(), RestoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => std::fs::remove_file(path).map_err(|source| RestoreError::Io {
            what: "remove",
            path: path.display().to_string(),
            source,
        })?,
        Err(_) => {}
    }
    std::fs::create_dir(path).map_err(|source| RestoreError::Io {
        what: "create directory",
        path: path.display().to_string(),
        source,
    })
}
