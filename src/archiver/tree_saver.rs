//! Directories waiting for their children, and the tree blobs they become.
//!
//! The walker creates a [`PendingDir`] per directory with one slot per entry, in name order.
//! Entries that need work (files to read, subdirectories to walk) are counted; whoever
//! completes the last one — a file worker, or the walker itself — encodes the directory's tree,
//! saves it as a tree blob (deduplicated like data), writes the tree id into the directory's
//! own slot in its parent, and completes that slot in turn. So trees are saved bottom-up
//! without any thread waiting for another.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::id::{BlobType, Id, TreeId};
use crate::node::Node;
use crate::tree::Tree;

use super::Shared;

/// Where a finished directory reports its tree id.
pub enum DirParent {
    /// A slot in a parent directory.
    Slot(Arc<PendingDir>, usize),
    /// The snapshot's root tree.
    Root,
}

/// A directory whose entries are still being processed.
pub struct PendingDir {
    slots: Mutex<Vec<Option<Node>>>,
    /// Entries still in progress, plus one held by the walker until it has dispatched all.
    remaining: AtomicUsize,
    parent: DirParent,
    /// The parent snapshot's tree of this directory, to tell new, changed and unmodified.
    previous: Option<TreeId>,
}

impl PendingDir {
    /// A directory with `slots` entries in name order; the walker holds one count until
    /// [`PendingDir::release_walker`].
    pub fn new(slots: Vec<Option<Node>>, parent: DirParent, previous: Option<TreeId>) -> Arc<Self> {
        Arc::new(PendingDir {
            slots: Mutex::new(slots),
            remaining: AtomicUsize::new(1),
            parent,
            previous,
        })
    }

    /// Counts one more entry that will be completed later.
    pub fn expect_one(&self) {
        self.remaining.fetch_add(1, Ordering::AcqRel);
    }

    /// Releases the walker's count once every entry has been dispatched.
    pub fn release_walker(self: &Arc<Self>, shared: &Shared) {
        self.complete_one(shared);
    }

    /// Completes the entry in `slot`: `update` fills in what was computed (content, subtree)
    /// or, when it returns false, the entry is dropped from the tree.
    pub fn complete_slot(
        self: &Arc<Self>,
        shared: &Shared,
        slot: usize,
        update: impl FnOnce(&mut Node) -> bool,
    ) {
        {
            let mut slots = self.slots.lock().expect("slots lock");
            if let Some(entry) = slots.get_mut(slot) {
                let keep = match entry.as_mut() {
                    Some(node) => update(node),
                    None => false,
                };
                if !keep {
                    *entry = None;
                }
            }
        }
        self.complete_one(shared);
    }

    fn complete_one(self: &Arc<Self>, shared: &Shared) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish(shared);
        }
    }

    fn finish(self: &Arc<Self>, shared: &Shared) {
        // `filter_map` lets the collect reuse the slots' buffer (an `Option<Node>` is as large
        // as a `Node`); `flatten` would allocate a second one, 300 MiB for a directory of a
        // million entries.
        #[allow(clippy::filter_map_identity)]
        let nodes: Vec<Node> = std::mem::take(&mut *self.slots.lock().expect("slots lock"))
            .into_iter()
            .filter_map(|slot| slot)
            .collect();
        let result = save_tree(shared, nodes);
        let id = match result {
            Ok(id) => id,
            Err(e) => {
                shared.fail(e);
                None
            }
        };
        if let Some(id) = id {
            let counter = match self.previous {
                None => &shared.stats.dirs_new,
                Some(p) if p == id => &shared.stats.dirs_unmodified,
                Some(_) => &shared.stats.dirs_changed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        match &self.parent {
            DirParent::Root => {
                *shared.root.lock().expect("root lock") = id;
            }
            DirParent::Slot(parent, slot) => parent.complete_slot(shared, *slot, |node| {
                node.subtree = id;
                id.is_some()
            }),
        }
    }
}

/// Encodes and saves a tree; returns its id, or `None` when the pipeline is aborting.
fn save_tree(shared: &Shared, nodes: Vec<Node>) -> Result<Option<TreeId>, String> {
    if shared.aborted() {
        return Ok(None);
    }
    // The nodes are dropped as soon as the JSON exists, before sealing allocates its own
    // buffers: for a huge directory the nodes, the JSON and the seal's check copy are each
    // hundreds of MiB, and only two of them need to be alive at once.
    let json = Tree::from_nodes(nodes)
        .map_err(|e| format!("encode tree: {e}"))?
        .to_json();
    let id = Id::hash(&json);
    if shared.claim(BlobType::Tree, id) {
        let sealed =
            super::with_codec(|c| c.seal(&shared.key, id, &json, shared.compress, shared.check))
                .map_err(|e| e.to_string())?;
        if shared.saver.send(BlobType::Tree, sealed).is_err() {
            return Ok(None);
        }
    }
    Ok(Some(TreeId(id)))
}
