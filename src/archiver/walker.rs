//! Walking the source tree: listing directories, reading metadata, dispatching files.
//!
//! The walker runs on a small pool of its own: each directory is listed by one task, which
//! spawns a task per subdirectory, so directories are listed and stat'ed in parallel while
//! each tree keeps its entries in byte order of their names. For every entry it reads the
//! node's metadata; files whose type, size, mtime and ctime match the
//! parent snapshot's node (and whose blobs are all in the index) keep the parent's content
//! without being read; other files become [`FileJob`]s. Inode and device numbers are not
//! compared, because they change when a volume is mounted on another node. The walker never
//! follows symlinks and never crosses into a path it did not list itself.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::fsmeta;
use crate::id::TreeId;
use crate::node::{Node, NodeType};
use crate::tree::Tree;

use super::Shared;
use super::file_saver::FileJob;
use super::tree_saver::{DirParent, PendingDir};

/// What to do with one listed entry.
enum Action {
    Read { had_previous: bool },
    Descend { previous: Option<TreeId> },
    Done,
}

/// Walks `path` as the directory that reports to `parent`, spawning its subdirectories onto
/// `scope`. `previous` is the parent snapshot's tree for this directory.
pub fn walk_dir<'s>(
    scope: &rayon::Scope<'s>,
    shared: &'s Shared,
    path: PathBuf,
    parent: DirParent,
    previous: Option<TreeId>,
    jobs: &'s crossbeam_channel::Sender<FileJob>,
) {
    let path = path.as_path();
    let names = match list_names(path) {
        Ok(n) => n,
        Err(e) => {
            shared.warn(format!("list directory {}: {e}", path.display()));
            Vec::new()
        }
    };
    let previous_tree = previous.and_then(|id| match shared.load_tree(&id) {
        Ok(t) => Some(t),
        Err(e) => {
            shared.warn(format!(
                "load parent tree {} for {}: {e}",
                id.short(),
                path.display()
            ));
            None
        }
    });
    let mut slots = Vec::with_capacity(names.len());
    let mut actions = Vec::with_capacity(names.len());
    for name in names {
        let child = path.join(std::ffi::OsStr::from_bytes(&name));
        let meta = match std::fs::symlink_metadata(&child) {
            Ok(m) => m,
            Err(e) => {
                shared.warn(format!("stat {}: {e}", child.display()));
                continue;
            }
        };
        let mut node =
            match fsmeta::read_node(&child, &name, &meta, &shared.names, &shared.read_opts) {
                Ok(n) => n,
                Err(e) => {
                    shared.warn(format!("read metadata of {}: {e}", child.display()));
                    continue;
                }
            };
        let prev = previous_tree.as_ref().and_then(|t| find(t, &name));
        let action = match node.node_type {
            NodeType::File => {
                shared.stats.files_processed.fetch_add(1, Ordering::Relaxed);
                match prev.filter(|p| unchanged(shared, p, &node)) {
                    Some(p) => {
                        node.content = p.content.clone();
                        shared
                            .stats
                            .files_unmodified
                            .fetch_add(1, Ordering::Relaxed);
                        shared
                            .stats
                            .bytes_processed
                            .fetch_add(node.size, Ordering::Relaxed);
                        Action::Done
                    }
                    None => Action::Read {
                        had_previous: prev.is_some(),
                    },
                }
            }
            NodeType::Dir => Action::Descend {
                previous: prev
                    .filter(|p| p.node_type == NodeType::Dir)
                    .and_then(|p| p.subtree),
            },
            _ => Action::Done,
        };
        let name = match action {
            Action::Done => Vec::new(),
            _ => node.name.clone(),
        };
        slots.push(Some(node));
        actions.push((name, action));
    }
    let dir = PendingDir::new(slots, parent, previous);
    for (slot, (name, action)) in actions.into_iter().enumerate() {
        if let Action::Done = action {
            continue;
        }
        let child = path.join(std::ffi::OsStr::from_bytes(&name));
        match action {
            Action::Read { had_previous } => {
                dir.expect_one();
                let job = FileJob {
                    path: child,
                    dir: Arc::clone(&dir),
                    slot,
                    had_previous,
                };
                if let Err(e) = jobs.send(job) {
                    // The workers are gone: the pipeline is stopping.
                    e.0.dir.complete_slot(shared, e.0.slot, |_| false);
                }
            }
            Action::Descend { previous } => {
                dir.expect_one();
                if shared.aborted() {
                    dir.complete_slot(shared, slot, |_| false);
                    continue;
                }
                let parent = DirParent::Slot(Arc::clone(&dir), slot);
                scope.spawn(move |s| walk_dir(s, shared, child, parent, previous, jobs));
            }
            Action::Done => {}
        }
    }
    dir.release_walker(shared);
}

/// Snapshots a block device, or a regular file standing in for one, as the single file of
/// the root tree, named after the source. The node takes the source's owner, permissions and
/// times; its size is whatever the reader finds. It is always read: a device's mtime says
/// nothing about its content, and unchanged chunks deduplicate anyway.
pub fn block_volume(
    shared: &Shared,
    source: &Path,
    previous: Option<TreeId>,
    jobs: &crossbeam_channel::Sender<FileJob>,
) {
    let name = source
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_else(|| b"volume".to_vec());
    let mut node = match std::fs::metadata(source)
        .and_then(|m| fsmeta::read_node(source, &name, &m, &shared.names, &shared.read_opts))
    {
        Ok(n) => n,
        Err(e) => {
            shared.fail(format!("read metadata of {}: {e}", source.display()));
            return;
        }
    };
    node.node_type = NodeType::File;
    // A plain file with the source's permission bits (Go mode: no type bits).
    node.mode &= 0o777;
    node.device = 0;
    node.links = 1;
    node.content = Some(Vec::new());
    shared.stats.files_processed.fetch_add(1, Ordering::Relaxed);
    let dir = PendingDir::new(vec![Some(node)], DirParent::Root, previous);
    dir.expect_one();
    let job = FileJob {
        path: source.to_path_buf(),
        dir: Arc::clone(&dir),
        slot: 0,
        had_previous: previous.is_some(),
    };
    if let Err(e) = jobs.send(job) {
        e.0.dir.complete_slot(shared, e.0.slot, |_| false);
    }
    dir.release_walker(shared);
}

/// The names in `path`, sorted by bytes.
fn list_names(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path)? {
        names.push(entry?.file_name().as_bytes().to_vec());
    }
    names.sort_unstable();
    Ok(names)
}

/// The node called `name` in a sorted tree.
fn find<'t>(tree: &'t Tree, name: &[u8]) -> Option<&'t Node> {
    tree.nodes
        .binary_search_by(|n| n.name.as_slice().cmp(name))
        .ok()
        .map(|i| &tree.nodes[i])
}

/// Whether `now` may reuse the content of `prev`.
fn unchanged(shared: &Shared, prev: &Node, now: &Node) -> bool {
    prev.node_type == NodeType::File
        && prev.size == now.size
        && prev.mtime == now.mtime
        && prev.ctime == now.ctime
        && prev.content.as_ref().is_some_and(|c| shared.all_known(c))
}
