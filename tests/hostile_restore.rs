//! Restores that must never write outside their target: a directory that replaces a symlink
//! pointing outside, a file whose name a planted symlink occupies, and snapshots crafted with
//! ferry's library to hold what no honest snapshot does — two entries of one name (a symlink
//! to the outside and a directory), and names such as `..`, `.`, `../x`, `a/../../x`, absolute
//! paths, an empty name or a NUL byte. Crafted trees must be refused as corrupt with an error
//! that names the tree, and no restore may panic.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::migration::{fingerprint, restore, restore_ok};
use common::{CompareOptions, PASSWORD, Sandbox, assert_trees_equal, set_mtime};
use ferry::backend::{Backend, BackendOptions};
use ferry::filemode::{MODE_DIR, MODE_SYMLINK};
use ferry::id::{BlobId, BlobType, Id, TreeId};
use ferry::node::{Node, NodeType, Timestamp};
use ferry::repository::pack_saver::PackSaver;
use ferry::repository::write_gate::WriteGate;
use ferry::repository::{BlobCodec, Repository};
use ferry::snapshot::Snapshot;

/// The restore variants every scenario runs: plain, mirroring, and on a base.
fn variants(base: &str) -> Vec<Vec<String>> {
    let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    vec![
        owned(&[]),
        owned(&["--delete"]),
        owned(&["--base", base]),
        owned(&["--base", base, "--delete"]),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn directory_replacing_a_symlink_to_outside_is_created_in_place() {
    let sb = Sandbox::new();
    let outside = sb.dir("outside");
    let src = sb.dir("src");
    fs::write(src.join("keep.txt"), b"unchanged\n").expect("write keep.txt");
    symlink(&outside, src.join("a")).expect("symlink a");
    sb.init_with_ferry();
    let first = sb.ferry_snapshot(&src, &[]).snapshot_id;

    fs::remove_file(src.join("a")).expect("remove the symlink a");
    fs::create_dir(src.join("a")).expect("mkdir a");
    fs::write(src.join("a/x"), b"written inside T\n").expect("write a/x");
    // The outside holds an `x` of the same size and mtime, so that a restorer looking through
    // the symlink would think a/x already restored.
    fs::write(outside.join("x"), b"outside sentinel\n").expect("write outside/x");
    let m = fs::metadata(src.join("a/x")).expect("stat a/x");
    set_mtime(&outside.join("x"), m.mtime(), m.mtime_nsec());
    let second = sb.ferry_snapshot(&src, &["--parent", &first]).snapshot_id;
    let before = fingerprint(&outside);

    for (i, extra) in variants(&first).iter().enumerate() {
        let t = sb.dir(&format!("t{i}"));
        restore_ok(&sb, &first, &t, &[]);
        assert!(
            fs::symlink_metadata(t.join("a")).is_ok_and(|m| m.file_type().is_symlink()),
            "the first restore should leave a symlink at a"
        );
        restore_ok(&sb, &second, &t, &strs(extra));
        assert_eq!(
            fingerprint(&outside),
            before,
            "restore {extra:?} wrote into the directory the old symlink pointed to"
        );
        let m = fs::symlink_metadata(t.join("a")).expect("lstat T/a");
        assert!(m.is_dir(), "restore {extra:?}: T/a is not a real directory");
        assert_eq!(
            fs::read(t.join("a/x")).expect("read T/a/x"),
            b"written inside T\n",
            "restore {extra:?}"
        );
        assert_trees_equal(&src, &t, &CompareOptions::exact());
    }
}

#[test]
fn file_replacing_a_planted_symlink_is_written_in_place_not_through_it() {
    let sb = Sandbox::new();
    let outside = sb.dir("outside");
    let src = sb.dir("src");
    fs::create_dir(src.join("sub")).expect("mkdir sub");
    for rel in ["f", "sub/f"] {
        fs::write(src.join(rel), b"version one of f\n").expect("write f");
    }
    sb.init_with_ferry();
    let first = sb.ferry_snapshot(&src, &[]).snapshot_id;
    for rel in ["f", "sub/f"] {
        fs::write(src.join(rel), b"version two of f\n").expect("rewrite f");
        set_mtime(&src.join(rel), 1_700_000_000, 5);
    }
    let second = sb.ferry_snapshot(&src, &["--parent", &first]).snapshot_id;
    // The victim looks like version two by size and mtime.
    let victim = outside.join("victim");
    fs::write(&victim, b"outside, keep me\n").expect("write the victim");
    set_mtime(&victim, 1_700_000_000, 5);
    let before = fingerprint(&outside);

    for (i, extra) in variants(&first).iter().enumerate() {
        let t = sb.dir(&format!("t{i}"));
        restore_ok(&sb, &first, &t, &[]);
        for rel in ["f", "sub/f"] {
            fs::remove_file(t.join(rel)).expect("remove a restored f");
            symlink(&victim, t.join(rel)).expect("plant a symlink");
        }
        restore_ok(&sb, &second, &t, &strs(extra));
        assert_eq!(
            fingerprint(&outside),
            before,
            "restore {extra:?} wrote through a planted symlink"
        );
        assert_trees_equal(&src, &t, &CompareOptions::exact());
    }
}

// ---------------------------------------------------------------------------------------------
// Crafted snapshots
// ---------------------------------------------------------------------------------------------

/// Writes blobs, trees and snapshots straight into a repository with ferry's library, so that
/// trees can hold what the archiver never writes.
struct Crafter {
    rt: tokio::runtime::Runtime,
    repo: Arc<Repository>,
    pending: Vec<(BlobType, Id, Vec<u8>)>,
    queued: HashSet<(BlobType, Id)>,
    uid: u32,
    gid: u32,
}

impl Crafter {
    /// Opens the sandbox's repository, which must exist.
    fn open(sb: &Sandbox) -> Crafter {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("build a tokio runtime");
        let location = sb
            .repo
            .to_str()
            .expect("the sandbox path is UTF-8")
            .to_owned();
        let repo = rt.block_on(async {
            let backend = Backend::open(&location, &BackendOptions::default())
                .expect("open the repository's backend");
            Repository::open(backend, PASSWORD.as_bytes())
                .await
                .expect("open the repository")
        });
        let meta = fs::metadata(sb.root()).expect("stat the sandbox");
        Crafter {
            rt,
            repo: Arc::new(repo),
            pending: Vec::new(),
            queued: HashSet::new(),
            uid: meta.uid(),
            gid: meta.gid(),
        }
    }

    fn queue(&mut self, blob_type: BlobType, plaintext: Vec<u8>) -> Id {
        let id = Id::hash(&plaintext);
        if self.queued.insert((blob_type, id)) {
            self.pending.push((blob_type, id, plaintext));
        }
        id
    }

    /// A data blob; its id.
    fn data(&mut self, content: &[u8]) -> BlobId {
        BlobId(self.queue(BlobType::Data, content.to_vec()))
    }

    /// A tree blob of `nodes` exactly in the order given, duplicates and all:
    /// `{"nodes":[` + node JSONs joined by `,` + `]}` + newline.
    fn tree(&mut self, nodes: &[Node]) -> TreeId {
        let mut json = b"{\"nodes\":[".to_vec();
        for (i, node) in nodes.iter().enumerate() {
            if i > 0 {
                json.push(b',');
            }
            json.extend_from_slice(&node.to_json());
        }
        json.extend_from_slice(b"]}\n");
        TreeId(self.queue(BlobType::Tree, json))
    }

    fn base_node(&self, name: &[u8], node_type: NodeType, mode: u32) -> Node {
        let t = Timestamp {
            secs: 1_700_000_000,
            nanos: 0,
        };
        let mut node = Node::new(name.to_vec(), node_type);
        node.mode = mode;
        node.mtime = t;
        node.atime = t;
        node.ctime = t;
        node.uid = self.uid;
        node.gid = self.gid;
        node
    }

    fn file(&mut self, name: &[u8], content: &[u8]) -> Node {
        let blob = self.data(content);
        let mut node = self.base_node(name, NodeType::File, 0o644);
        node.size = content.len() as u64;
        node.content = Some(vec![blob]);
        node
    }

    fn dir(&mut self, name: &[u8], children: &[Node]) -> Node {
        let subtree = self.tree(children);
        let mut node = self.base_node(name, NodeType::Dir, MODE_DIR | 0o755);
        node.subtree = Some(subtree);
        node
    }

    fn symlink(&self, name: &[u8], target: &Path) -> Node {
        let mut node = self.base_node(name, NodeType::Symlink, MODE_SYMLINK | 0o777);
        node.link_target = target.as_os_str().as_bytes().to_vec();
        node
    }

    /// Stores every pending blob in new packs, writes their index, and a snapshot of `root`;
    /// returns the snapshot id.
    fn snapshot(&mut self, root: TreeId) -> String {
        let pending = std::mem::take(&mut self.pending);
        let repo = Arc::clone(&self.repo);
        let id = self.rt.block_on(async move {
            let saver = PackSaver::start(Arc::clone(&repo), 1, WriteGate::opened());
            let sender = saver.sender();
            let mut codec = BlobCodec::new();
            for (blob_type, id, plaintext) in pending {
                let sealed = codec
                    .seal(
                        repo.key(),
                        id,
                        &plaintext,
                        repo.compression(),
                        Default::default(),
                    )
                    .expect("seal a crafted blob");
                sender
                    .send(blob_type, sealed)
                    .expect("queue a crafted blob");
            }
            drop(sender);
            let packs = saver.finish().await.expect("store the crafted packs");
            repo.save_index(packs)
                .await
                .expect("save the crafted index");
            let snapshot = Snapshot {
                time: "2024-05-01T10:00:00Z".to_owned(),
                parent: None,
                tree: root,
                paths: vec!["/crafted".to_owned()],
                hostname: "crafted".to_owned(),
                username: String::new(),
                uid: 0,
                gid: 0,
                excludes: Vec::new(),
                tags: Vec::new(),
                original: None,
                program_version: "ferry tests".to_owned(),
                summary: None,
            };
            repo.save_snapshot(&snapshot)
                .await
                .expect("save the crafted snapshot")
        });
        id.to_hex()
    }
}

/// A sandbox with a repository and an `outside` directory, and a nested place for targets so
/// that names climbing out of a target land somewhere watched.
struct Arena {
    sb: Sandbox,
    outside: PathBuf,
    /// Targets are `watched/deeper/<name>`; `..`-style escapes land in `watched`.
    watched: PathBuf,
}

impl Arena {
    fn new() -> Arena {
        let sb = Sandbox::new();
        let outside = sb.dir("outside");
        fs::write(outside.join("existing"), b"must stay as it is\n").expect("write a sentinel");
        let watched = sb.dir("watched");
        sb.dir("watched/deeper");
        sb.init_with_ferry();
        Arena {
            sb,
            outside,
            watched,
        }
    }

    /// Everything a restore must leave alone: the outside directory, and the watched directory
    /// except the target's own subtree.
    fn untouchable(&self, target_name: &str) -> BTreeMap<PathBuf, String> {
        let own = Path::new("deeper").join(target_name);
        let mut all: BTreeMap<PathBuf, String> = fingerprint(&self.watched)
            .into_iter()
            .filter(|(rel, _)| !rel.starts_with(&own))
            .map(|(rel, v)| (Path::new("watched").join(rel), v))
            .collect();
        for (rel, v) in fingerprint(&self.outside) {
            all.insert(Path::new("outside").join(rel), v);
        }
        // The target's parent gains the target itself; its mtime is the target's business.
        all.remove(&Path::new("watched").join("deeper"));
        all
    }

    /// Restores crafted snapshot `id` into a fresh target with each of `extras`; asserts that
    /// every restore fails without panicking, names `tree` in its error, and writes nothing
    /// outside the target.
    #[track_caller]
    fn assert_refused(&self, what: &str, id: &str, tree: &TreeId, extras: &[&[&str]]) {
        for (i, extra) in extras.iter().enumerate() {
            let name = format!("target-{}-{i}", id.get(..8).unwrap_or(id));
            let target = self.watched.join("deeper").join(&name);
            let before = self.untouchable(&name);
            let run = restore(&self.sb, id, &target, extra);
            eprintln!(
                "{what} {extra:?}: {}",
                run.stderr.trim().replace('\n', " | ")
            );
            assert!(
                run.code.is_some_and(|c| c != 0),
                "restoring a snapshot with {what} must fail\n{run}"
            );
            assert!(
                run.stderr.contains(&tree.short()),
                "the error for {what} should name tree {}\n{run}",
                tree.short()
            );
            assert_eq!(
                self.untouchable(&name),
                before,
                "restoring a snapshot with {what} ({extra:?}) wrote outside its target\n{run}"
            );
        }
    }
}

#[test]
fn tree_with_duplicate_names_is_refused_as_corrupt() {
    let arena = Arena::new();
    let mut c = Crafter::open(&arena.sb);
    let victim = arena.outside.join("victim");

    let link_a = c.symlink(b"a", &arena.outside);
    let x = c.file(b"x", b"must not land outside\n");
    let dir_a = c.dir(b"a", &[x]);
    let file_f = c.file(b"f", b"must not land outside either\n");
    let link_f = c.symlink(b"f", &victim);
    let cases: Vec<(&str, Vec<Node>)> = vec![
        (
            "a symlink a to the outside, then a directory a holding x",
            vec![link_a.clone(), dir_a.clone()],
        ),
        (
            "a directory a holding x, then a symlink a to the outside",
            vec![dir_a, link_a],
        ),
        (
            "a symlink f to an outside path, then a file f",
            vec![link_f.clone(), file_f.clone()],
        ),
        (
            "a file f, then a symlink f to an outside path",
            vec![file_f, link_f],
        ),
    ];
    let mut crafted = Vec::new();
    for (what, nodes) in cases {
        let root = c.tree(&nodes);
        let id = c.snapshot(root);
        crafted.push((what, id, root));
    }
    for (what, id, root) in &crafted {
        arena.assert_refused(what, id, root, &[&[], &["--delete"]]);
    }
}

#[test]
fn tree_with_unsafe_names_is_refused() {
    let arena = Arena::new();
    let mut c = Crafter::open(&arena.sb);
    let absolute = arena.outside.join("absolute-escape");
    let absolute = absolute.as_os_str().as_bytes().to_vec();

    let escape = || b"escaped the target\n".as_slice();
    let ok = c.file(b"ok.txt", b"an ordinary file\n");
    let mut cases: Vec<(String, Vec<Node>)> = Vec::new();
    for name in [b"..".as_slice(), b"."] {
        let inner = c.file(b"escape", escape());
        let dir = c.dir(name, &[inner]);
        cases.push((
            format!("a directory named {:?}", String::from_utf8_lossy(name)),
            vec![dir, ok.clone()],
        ));
    }
    for name in [
        b"../escape".as_slice(),
        b"../../escape",
        absolute.as_slice(),
        b"",
        b"nul\0name",
    ] {
        let file = c.file(name, escape());
        cases.push((
            format!("a file named {:?}", String::from_utf8_lossy(name)),
            vec![file, ok.clone()],
        ));
    }
    // With a real `sub` before it, `sub/../../escape` resolves to the target's parent.
    let sub = c.dir(b"sub", &[]);
    let climbing = c.file(b"sub/../../escape", escape());
    cases.push((
        "a file named \"sub/../../escape\" after a directory sub".to_owned(),
        vec![ok.clone(), sub, climbing],
    ));

    let mut crafted = Vec::new();
    for (what, mut nodes) in cases {
        // Sorted like an honest tree, so that the name is the only thing wrong.
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let root = c.tree(&nodes);
        let id = c.snapshot(root);
        crafted.push((what, id, root));
    }
    for (what, id, root) in &crafted {
        arena.assert_refused(what, id, root, &[&[], &["--delete"]]);
    }
}
