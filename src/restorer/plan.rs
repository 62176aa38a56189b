//! Planning a restore: walking the snapshot's trees against what the target already holds.
//!
//! The planner walks the trees from the root and, directory by directory, compares each node
//! with the entry of the same name on disk (`lstat`, never following anything). It decides
//! what each entry needs: nothing but metadata (a file whose size and mtime match, a symlink
//! with the same target), new content written under a temporary name (a new file, or a
//! changed one whose old content is offered for chunk-by-chunk reuse), or removal of whatever
//! is in the way of a different type. Directories are created here, so later stages never
//! create one; with `delete`, entries the snapshot does not have are removed here too.
//!
//! Every removal first waits at the restore's gate, which opens once the repository lock is
//! held: until then the planner only looks and creates directories, which
//! [`Plan::remove_created`] takes away again if the lock is never taken.
//!
//! With a base snapshot the target is known to hold, a node identical to the base's node of
//! the same path is skipped without looking at the disk — for a directory, its whole subtree.
//!
//! Trees whose names are not strictly sorted (duplicates included), or that hold a name that
//! is empty, `.`, `..` or contains `/` or NUL, are refused before anything is done with them,
//! so a hostile tree cannot reach outside the target.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::fsapply::Metadata;
use crate::id::{BlobId, BlobType, Id, PackId, TreeId};
use crate::index::BlobLocation;
use crate::node::{ExtendedAttribute, Node, NodeType, Timestamp};
use crate::repository::write_gate::WriteGate;
use crate::repository::{RepoError, Repository};
use crate::tree::Tree;

use super::RestoreError;

/// The prefix of the temporary names new content is written under.
pub const TEMP_PREFIX: &[u8] = b".ferry-restore-tmp.";

/// What happens to a file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The target already holds it (same size and mtime): metadata only.
    Keep,
    /// Written to the temporary path ([`PlannedFile::temp_path`]), then renamed over the final
    /// path. With `reuse_old`, the regular file now at the final path is the old version whose
    /// chunks may be reused.
    Write {
        /// Whether the final path holds an old version (a regular file) to compare with.
        reuse_old: bool,
    },
}

/// What a restore needs of a file's node: its size, blobs and the metadata applied at the end.
/// About 90 bytes where a whole [`Node`] takes about 340, which matters when a plan holds a
/// million files. The name is in the path; owner and group names are not kept, since ownership
/// is restored by number, as restic does; a file's node type is always [`NodeType::File`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// Size in bytes: the sum of the blobs' lengths.
    pub size: u64,
    /// Modification time.
    pub mtime: Timestamp,
    /// Access time.
    pub atime: Timestamp,
    /// Go `os.FileMode` bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// The content, in order.
    pub blobs: Box<[BlobId]>,
    /// Extended attributes.
    pub xattrs: Box<[ExtendedAttribute]>,
}

impl FileMeta {
    /// Keeps what a restore uses of a file node (the lists without their spare room).
    pub fn from_node(node: Node) -> FileMeta {
        FileMeta {
            size: node.size,
            mtime: node.mtime,
            atime: node.atime,
            mode: node.mode,
            uid: node.uid,
            gid: node.gid,
            blobs: node.content.unwrap_or_default().into_boxed_slice(),
            xattrs: node.extended_attributes.into_boxed_slice(),
        }
    }

    /// The metadata [`fsapply::apply_metadata`](crate::fsapply::apply_metadata) applies.
    pub fn metadata(&self) -> Metadata<'_> {
        Metadata {
            node_type: NodeType::File,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            atime: self.atime,
            mtime: self.mtime,
            xattrs: &self.xattrs,
        }
    }
}

/// A file to restore.
pub struct PlannedFile {
    /// Where it goes.
    pub path: PathBuf,
    /// What is restored of its node (size, blobs, metadata).
    pub meta: FileMeta,
    /// What happens to its content.
    pub content: Content,
    /// Whether an entry existed at `path` before (its extra xattrs must go).
    pub existed: bool,
}

impl PlannedFile {
    /// A file to restore at `path` from `node`, keeping only its [`FileMeta`].
    pub fn new(path: PathBuf, node: Node, content: Content, existed: bool) -> PlannedFile {
        PlannedFile {
            path,
            meta: FileMeta::from_node(node),
            content,
            existed,
        }
    }

    /// The temporary name new content is written under, in the file's own directory.
    pub fn temp_path(&self) -> PathBuf {
        let dir = self.path.parent().unwrap_or(Path::new(""));
        let name = self
            .path
            .file_name()
            .map(OsStr::as_bytes)
            .unwrap_or_default();
        temp_path(dir, name)
    }

    /// Where content is written: the temporary path, or the final one when kept.
    pub fn write_path(&self) -> Cow<'_, Path> {
        match &self.content {
            Content::Write { .. } => Cow::Owned(self.temp_path()),
            Content::Keep => Cow::Borrowed(&self.path),
        }
    }
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
    pub id: Id,
    /// Every place it is written to.
    pub uses: Vec<BlobUse>,
}

/// A symlink, fifo, device or socket.
pub struct PlannedOther {
    /// Where it goes.
    pub path: PathBuf,
    /// Its node.
    pub node: Node,
    /// Whether it must be created (false: the same thing is already there).
    pub create: bool,
}

/// A directory whose metadata is applied at the end.
pub struct PlannedDir {
    /// Its path.
    pub path: PathBuf,
    /// Its node.
    pub node: Node,
    /// Whether it existed before.
    pub existed: bool,
}

/// Everything a restore does after the planning walk.
#[derive(Default)]
pub struct Plan {
    /// Files (the first name of each hard-link group included).
    pub files: Vec<PlannedFile>,
    /// Blobs to read, grouped by pack, each pack's in offset order. Filled by
    /// [`Plan::add_blob_uses`] after chunk comparison.
    pub packs: HashMap<PackId, Vec<PlannedBlob>>,
    /// `(path, index of the file it is a hard link to)`, made after content is in place.
    pub hardlinks: Vec<(PathBuf, usize)>,
    /// Symlinks, fifos and devices.
    pub others: Vec<PlannedOther>,
    /// Directories in pre-order; metadata is applied in reverse at the end.
    pub dirs: Vec<PlannedDir>,
    /// Entries removed (type changes, `delete`, stale temporary files).
    pub removed: u64,
    /// Subtrees and files skipped without a look at the disk because the base had them.
    pub skipped_by_base: u64,
    /// Whether the planner created the target directory itself.
    pub created_target: bool,
    slots: HashMap<(PackId, Id), usize>,
}

/// How to plan.
pub struct PlanOptions<'a> {
    /// Remove entries the snapshot does not have.
    pub delete: bool,
    /// The root tree of a snapshot the target is known to hold.
    pub base: Option<TreeId>,
    /// The repository (trees and index).
    pub repo: &'a Repository,
    /// Checked before each directory.
    pub cancel: &'a tokio_util::sync::CancellationToken,
    /// Opens once the repository lock is held; every removal waits for it.
    pub gate: &'a WriteGate,
}

impl PlanOptions<'_> {
    /// Waits until entries may be removed: the lock is held. A closed gate (the lock was not
    /// taken) ends the plan as cancelled.
    async fn may_remove(&self, target: &Path) -> Result<(), RestoreError> {
        self.gate.wait().await.map_err(|_| RestoreError::Cancelled {
            target: target.display().to_string(),
        })
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError {
    let path = path.display().to_string();
    move |source| RestoreError::Io { what, path, source }
}

/// Removes whatever is at `path`, never following a symlink.
pub fn remove_entry(path: &Path) -> Result<(), RestoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(io_err("remove", path)),
        Ok(_) => std::fs::remove_file(path).map_err(io_err("remove", path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// Builds into `plan` (empty) the plan for restoring tree `root` into `target`. On an error
/// `plan` still records every directory created so far.
pub async fn plan(
    opts: &PlanOptions<'_>,
    root: TreeId,
    target: &Path,
    plan: &mut Plan,
) -> Result<(), RestoreError> {
    let mut links: HashMap<(u64, u64), usize> = HashMap::new();
    let fresh = match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => false,
        Ok(_) => {
            opts.may_remove(target).await?;
            remove_entry(target)?;
            std::fs::create_dir_all(target).map_err(io_err("create directory", target))?;
            true
        }
        Err(_) => {
            std::fs::create_dir_all(target).map_err(io_err("create directory", target))?;
            plan.created_target = true;
            true
        }
    };
    // Explicit stack instead of recursion: trees can nest deeper than a thread's stack.
    let mut stack = vec![(root, target.to_path_buf(), opts.base, fresh)];
    while let Some((tree_id, dir, base, fresh)) = stack.pop() {
        if opts.cancel.is_cancelled() {
            return Err(RestoreError::Cancelled {
                target: target.display().to_string(),
            });
        }
        let tree = load_checked_tree(opts.repo, &tree_id).await?;
        let base_tree = match base {
            Some(b) => Some(load_checked_tree(opts.repo, &b).await?),
            None => None,
        };
        let mut existing = if fresh {
            HashSet::new()
        } else {
            list_dir(&dir)?
        };
        for node in tree.nodes {
            let path = dir.join(std::ffi::OsStr::from_bytes(&node.name));
            let base_node = base_tree.as_ref().and_then(|t| find(t, &node.name));
            let on_disk = existing.remove(node.name.as_slice());
            if base_node == Some(&node) && on_disk {
                plan.skipped_by_base += 1;
                continue;
            }
            let meta = if on_disk {
                std::fs::symlink_metadata(&path).ok()
            } else {
                None
            };
            match node.node_type {
                NodeType::Dir => {
                    let Some(sub) = node.subtree else {
                        return Err(RepoError::corrupt(
                            format!("tree {}", tree_id.short()),
                            format!("directory {} has no subtree", path.display()),
                        )
                        .into());
                    };
                    let existed = meta.as_ref().is_some_and(|m| m.is_dir());
                    if !existed {
                        if meta.is_some() {
                            opts.may_remove(target).await?;
                            remove_entry(&path)?;
                            plan.removed += 1;
                        }
                        std::fs::create_dir(&path).map_err(io_err("create directory", &path))?;
                    }
                    let base_sub = base_node
                        .filter(|b| b.node_type == NodeType::Dir)
                        .and_then(|b| b.subtree);
                    stack.push((sub, path.clone(), base_sub.filter(|_| existed), !existed));
                    plan.dirs.push(PlannedDir {
                        path,
                        node,
                        existed,
                    });
                }
                NodeType::File => {
                    if node.links > 1 && node.inode != 0 {
                        let key = (node.device_id, node.inode);
                        if let Some(&first) = links.get(&key) {
                            if meta.as_ref().is_some_and(|m| m.is_dir()) {
                                opts.may_remove(target).await?;
                                remove_entry(&path)?;
                                plan.removed += 1;
                            }
                            plan.hardlinks.push((path, first));
                            continue;
                        }
                        links.insert(key, plan.files.len());
                    }
                    let (content, existed) = match &meta {
                        Some(m) if m.file_type().is_file() => {
                            let same = m.size() == node.size
                                && Timestamp {
                                    secs: m.mtime(),
                                    nanos: m.mtime_nsec() as u32,
                                } == node.mtime
                                && (m.nlink() <= 1 || node.links > 1);
                            if same {
                                (Content::Keep, true)
                            } else {
                                (Content::Write { reuse_old: true }, true)
                            }
                        }
                        Some(_) => {
                            opts.may_remove(target).await?;
                            remove_entry(&path)?;
                            plan.removed += 1;
                            (Content::Write { reuse_old: false }, false)
                        }
                        None => (Content::Write { reuse_old: false }, false),
                    };
                    check_size(opts.repo, &node, &path)?;
                    plan.files
                        .push(PlannedFile::new(path, node, content, existed));
                }
                _ => {
                    let same = meta.as_ref().is_some_and(|m| same_special(&path, m, &node));
                    if !same && meta.is_some() {
                        opts.may_remove(target).await?;
                        remove_entry(&path)?;
                        plan.removed += 1;
                    }
                    plan.others.push(PlannedOther {
                        path,
                        node,
                        create: !same,
                    });
                }
            }
        }
        // What is left on disk is not in the snapshot: temporary files of an interrupted
        // restore always go; everything else only with `delete`.
        for name in existing {
            if opts.delete || name.starts_with(TEMP_PREFIX) {
                opts.may_remove(target).await?;
                remove_entry(&dir.join(std::ffi::OsStr::from_bytes(&name)))?;
                plan.removed += 1;
            }
        }
    }
    Ok(())
}

impl Plan {
    /// Takes away what a restore that never got its lock added to the target: the temporary
    /// files of files to write, then the directories the planner created (deepest first, and
    /// only while empty), then the target if the planner created it. Nothing else was touched,
    /// since every removal and rename waits for the lock. Best effort: what cannot be removed
    /// is logged and left.
    pub fn remove_created(&self, target: &Path) {
        let gone = |r: std::io::Result<()>, path: &Path| match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(
                    "remove {} after the lock was not taken: {e}",
                    path.display()
                );
            }
            _ => {}
        };
        for f in &self.files {
            if let Content::Write { .. } = f.content {
                let temp = f.temp_path();
                gone(std::fs::remove_file(&temp), &temp);
            }
        }
        for d in self.dirs.iter().rev().filter(|d| !d.existed) {
            gone(std::fs::remove_dir(&d.path), &d.path);
        }
        if self.created_target {
            gone(std::fs::remove_dir(target), target);
        }
    }

    /// Adds the uses of `blob` at `offset` in file `file` to the pack plan.
    pub fn add_blob_use(
        &mut self,
        repo: &Repository,
        file: usize,
        blob: &Id,
        offset: u64,
    ) -> Result<(), RestoreError> {
        let location =
            repo.index()
                .lookup(BlobType::Data, blob)
                .ok_or(RepoError::BlobNotFound {
                    blob_type: BlobType::Data,
                    id: *blob,
                })?;
        let list = self.packs.entry(location.pack).or_default();
        let slot = *self.slots.entry((location.pack, *blob)).or_insert_with(|| {
            list.push(PlannedBlob {
                location,
                id: *blob,
                uses: Vec::new(),
            });
            list.len() - 1
        });
        list[slot].uses.push(BlobUse { file, offset });
        Ok(())
    }

    /// Sorts each pack's blobs by offset, once all uses are added.
    pub fn sort_packs(&mut self) {
        for blobs in self.packs.values_mut() {
            blobs.sort_by_key(|b| b.location.offset);
            blobs.shrink_to_fit();
            for b in blobs.iter_mut() {
                b.uses.shrink_to_fit();
            }
        }
        // Only needed while blob uses are added; the write phase is the restore's peak.
        self.slots = HashMap::new();
        self.files.shrink_to_fit();
    }
}

/// The plaintext length of a data blob, from the index.
pub fn blob_len(repo: &Repository, blob: &Id) -> Result<u64, RestoreError> {
    let loc = repo
        .index()
        .lookup(BlobType::Data, blob)
        .ok_or(RepoError::BlobNotFound {
            blob_type: BlobType::Data,
            id: *blob,
        })?;
    Ok(if loc.uncompressed_length != 0 {
        u64::from(loc.uncompressed_length)
    } else {
        u64::from(loc.length).saturating_sub(crate::crypto::EXTENSION as u64)
    })
}

/// A file node's size must equal the sum of its blobs' lengths.
fn check_size(repo: &Repository, node: &Node, path: &Path) -> Result<(), RestoreError> {
    let mut total = 0u64;
    for b in node.content.iter().flatten() {
        total += blob_len(repo, &b.0)?;
    }
    if total != node.size {
        return Err(RepoError::corrupt(
            format!("file {}", path.display()),
            format!(
                "its node says {} bytes but its blobs hold {total}",
                node.size
            ),
        )
        .into());
    }
    Ok(())
}

/// The temporary name for `name` in `dir`: fixed length, whatever the name's length.
fn temp_path(dir: &Path, name: &[u8]) -> PathBuf {
    let mut n = TEMP_PREFIX.to_vec();
    n.extend_from_slice(&Id::hash(name).to_hex().as_bytes()[..24]);
    dir.join(std::ffi::OsStr::from_bytes(&n))
}

/// The names in a directory (entries are stat'ed only when needed).
fn list_dir(dir: &Path) -> Result<HashSet<Vec<u8>>, RestoreError> {
    let mut out = HashSet::new();
    for entry in std::fs::read_dir(dir).map_err(io_err("list directory", dir))? {
        let entry = entry.map_err(io_err("list directory", dir))?;
        out.insert(entry.file_name().as_bytes().to_vec());
    }
    Ok(out)
}

/// Whether the entry on disk is already the symlink, fifo or device `node` describes.
fn same_special(path: &Path, m: &std::fs::Metadata, node: &Node) -> bool {
    let ft = m.file_type();
    match node.node_type {
        NodeType::Symlink => {
            ft.is_symlink()
                && std::fs::read_link(path)
                    .is_ok_and(|t| t.as_os_str().as_bytes() == node.link_target.as_slice())
        }
        NodeType::Fifo => ft.is_fifo(),
        NodeType::Socket => ft.is_socket(),
        NodeType::CharDev => ft.is_char_device() && m.rdev() == node.device,
        NodeType::Dev => ft.is_block_device() && m.rdev() == node.device,
        _ => false,
    }
}

/// Loads a tree and refuses it unless its names are sorted, unique and safe.
async fn load_checked_tree(repo: &Repository, id: &TreeId) -> Result<Tree, RestoreError> {
    let tree = repo.load_tree(id).await?;
    let what = || format!("tree {}", id.short());
    tree.check_order()
        .map_err(|e| RepoError::corrupt(what(), e))?;
    tree.check_names()
        .map_err(|e| RepoError::corrupt(what(), e))?;
    Ok(tree)
}

/// The node called `name` in a sorted tree.
fn find<'t>(tree: &'t Tree, name: &[u8]) -> Option<&'t Node> {
    tree.nodes
        .binary_search_by(|n| n.name.as_slice().cmp(name))
        .ok()
        .map(|i| &tree.nodes[i])
}

/// Whether the target's top level looks like `base`'s root: every entry exists with the same
/// type, and files and symlinks match in size, mtime and target. A cheap guard before
/// trusting `base`; it cannot see changes deeper down (verify digests do).
pub async fn target_holds(
    repo: &Repository,
    base: &TreeId,
    target: &Path,
) -> Result<bool, RestoreError> {
    let tree = load_checked_tree(repo, base).await?;
    let mut on_disk = match list_dir(target) {
        Ok(l) => l,
        Err(_) => return Ok(false),
    };
    for node in &tree.nodes {
        if !on_disk.remove(node.name.as_slice()) {
            return Ok(false);
        }
        let path = target.join(std::ffi::OsStr::from_bytes(&node.name));
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            return Ok(false);
        };
        let mtime = Timestamp {
            secs: m.mtime(),
            nanos: m.mtime_nsec() as u32,
        };
        let ok = match node.node_type {
            NodeType::Dir => m.is_dir(),
            NodeType::File => {
                m.file_type().is_file() && m.size() == node.size && mtime == node.mtime
            }
            _ => same_special(&path, &m, node),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(on_disk.iter().all(|n| n.starts_with(TEMP_PREFIX)))
}
