//! Migrating a volume the way ferry's controller does it: a stage snapshot taken while the
//! application runs and restored to the destination; a final snapshot with the stage as its
//! parent, restored with `--delete` (and optionally `--base`) so that the destination becomes
//! an exact mirror; then `verify` on both sides.
//!
//! Beyond the plain scenario: destinations changed behind ferry's back (a tamper at the top
//! level must be caught by `--base`'s cheap check; one deep inside an unchanged subtree may be
//! missed, and `verify` must then tell), a final restore interrupted by a missing pack (no real
//! name may hold a half-written file), the verify digest itself, and block volumes.

mod common;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::migration::{
    Changes, SAME_SIZE_BYTES, TOP_CONFIG, TOP_README, apply_final_changes, assert_mirror,
    migration_snapshot, regular_files, restore, restore_ok, same_content, summary_count,
    tree_bytes, verify_digest, verify_json, write_migration_source,
};
use common::{
    CompareOptions, Rng, Sandbox, Summary, assert_trees_equal, first_difference, is_root,
    object_id, run, set_mtime, tree_differences, write_random_file,
};

/// The largest chunk ferry cuts. A change re-chunks the chunk it falls in, so the data a
/// snapshot adds for one change is at most about one maximum chunk beyond the changed bytes.
const MAX_CHUNK: u64 = 8 << 20;

/// A volume that has been staged: the source, a repository holding the stage snapshot, and a
/// destination into which the stage was restored and checked.
struct Staged {
    sb: Sandbox,
    src: PathBuf,
    dest: PathBuf,
    stage_id: String,
}

/// Builds the migration source (with the awkward tree when asked), takes the stage snapshot,
/// restores it into `dest` and asserts that `dest` equals the source.
#[track_caller]
fn stage(with_awkward: bool) -> Staged {
    let sb = Sandbox::new();
    let src = sb.dir("src");
    write_migration_source(&src, with_awkward);
    sb.init_with_ferry();
    let stage = migration_snapshot(&sb, &src, &[]);
    let dest = sb.dir("dest");
    restore_ok(&sb, &stage.snapshot_id, &dest, &[]);
    assert_trees_equal(&src, &dest, &CompareOptions::exact());
    Staged {
        sb,
        src,
        dest,
        stage_id: stage.snapshot_id,
    }
}

/// Takes the final snapshot with the stage as parent and checks from its summary that the
/// unchanged files were reused and that only the changed data was added.
#[track_caller]
fn final_snapshot(st: &Staged, changes: &Changes) -> Summary {
    let summary = migration_snapshot(&st.sb, &st.src, &["--parent", &st.stage_id]);
    let unmodified = summary_count(&summary, "files_unmodified");
    let changed = summary_count(&summary, "files_changed");
    let new = summary_count(&summary, "files_new");
    let total = tree_bytes(&st.src);
    eprintln!(
        "final snapshot: {new} new, {changed} changed, {unmodified} unmodified files; \
         {} bytes added to a tree of {total} bytes",
        summary.data_added
    );
    assert!(
        unmodified > 0 && unmodified > new + changed,
        "the final snapshot should reuse most files from the stage: {}",
        summary.raw
    );
    assert!(
        summary.data_added >= changes.new_random_bytes,
        "the final snapshot added {} bytes, less than the {} bytes of new random data it must \
         hold: {}",
        summary.data_added,
        changes.new_random_bytes,
        summary.raw
    );
    // New random data, the rewritten same-size file, and at most one re-cut maximum-size
    // chunk, plus small files and trees.
    let limit = changes.new_random_bytes + SAME_SIZE_BYTES + MAX_CHUNK + (1 << 20);
    assert!(
        summary.data_added <= limit && summary.data_added * 2 < total,
        "the final snapshot added {} bytes for a tree of {total} bytes (limit {limit}): only \
         the changed data should be added: {}",
        summary.data_added,
        summary.raw
    );
    summary
}

/// Asserts what `restic snapshots` records for the final snapshot: the stage as parent, the
/// `--as-path` path and the host.
#[track_caller]
fn assert_final_recorded(st: &Staged, final_id: &str) {
    let listed = st.sb.restic(["snapshots", "--json"]).ok().json();
    let snap = listed
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"] == final_id)
        .unwrap_or_else(|| panic!("restic does not list the final snapshot: {listed}"));
    assert_eq!(snap["parent"], st.stage_id.as_str(), "{snap}");
    assert_eq!(snap["paths"], serde_json::json!(["/ns/pvc"]), "{snap}");
    assert_eq!(snap["hostname"], "ferry", "{snap}");
}

#[test]
fn final_restore_with_delete_makes_the_destination_an_exact_mirror() {
    let st = stage(true);
    let changes = apply_final_changes(&st.src);
    let fin = final_snapshot(&st, &changes);
    assert_final_recorded(&st, &fin.snapshot_id);
    restore_ok(&st.sb, &fin.snapshot_id, &st.dest, &["--delete"]);
    assert_mirror(&st.sb, &st.src, &st.dest);
    st.sb.restic(["check", "--read-data"]).ok();
}

#[test]
fn final_restore_with_base_makes_the_destination_an_exact_mirror() {
    let st = stage(true);
    let changes = apply_final_changes(&st.src);
    let fin = final_snapshot(&st, &changes);
    restore_ok(
        &st.sb,
        &fin.snapshot_id,
        &st.dest,
        &["--delete", "--base", &st.stage_id],
    );
    assert_mirror(&st.sb, &st.src, &st.dest);
    // The destination now holds the final snapshot: restoring it again on that base changes
    // nothing.
    restore_ok(
        &st.sb,
        &fin.snapshot_id,
        &st.dest,
        &["--delete", "--base", &fin.snapshot_id],
    );
    assert_mirror(&st.sb, &st.src, &st.dest);
    st.sb.restic(["check", "--read-data"]).ok();
}

// ---------------------------------------------------------------------------------------------
// Destinations changed behind ferry's back
// ---------------------------------------------------------------------------------------------

/// Subtrees of the mixed tree that no final change touches; tampers in them are "deep".
const DEEP_STRAY: &str = "mixed/dir-2/stray.txt";
const DEEP_CHMOD: &str = "mixed/dir-1/file-03.dat";

/// Tampers inside subtrees that are the same in the stage and the final snapshot: a stray file
/// and a changed mode.
fn tamper_deep(dest: &Path) {
    fs::write(dest.join(DEEP_STRAY), b"left behind by someone\n").expect("write a stray file");
    fs::set_permissions(dest.join(DEEP_CHMOD), fs::Permissions::from_mode(0o600))
        .expect("chmod a nested file");
}

#[test]
fn base_restore_catches_a_deleted_top_level_file_and_mends_the_whole_tree() {
    let st = stage(false);
    fs::remove_file(st.dest.join(TOP_README)).expect("delete a top-level file");
    tamper_deep(&st.dest);
    let changes = apply_final_changes(&st.src);
    let fin = final_snapshot(&st, &changes);
    restore_ok(
        &st.sb,
        &fin.snapshot_id,
        &st.dest,
        &["--base", &st.stage_id, "--delete"],
    );
    assert_mirror(&st.sb, &st.src, &st.dest);
}

#[test]
fn base_restore_catches_a_rewritten_top_level_file_and_mends_the_whole_tree() {
    let st = stage(false);
    let config = st.dest.join(TOP_CONFIG);
    fs::write(&config, b"{\"replicas\": 9, \"mode\": \"tampered!\"}\n")
        .expect("rewrite a top-level file");
    set_mtime(&config, 1_234_567_890, 42);
    tamper_deep(&st.dest);
    let changes = apply_final_changes(&st.src);
    let fin = final_snapshot(&st, &changes);
    restore_ok(
        &st.sb,
        &fin.snapshot_id,
        &st.dest,
        &["--base", &st.stage_id, "--delete"],
    );
    assert_mirror(&st.sb, &st.src, &st.dest);
}

/// NOTE: `--base` trusts that the target holds the base snapshot after a cheap check of the
/// target's top level, so a tamper deep inside a subtree that is the same in both snapshots
/// may be left in place; that is documented, and it is why `verify` exists. This test asserts
/// that whatever the `--base` restore leaves different, verify's digests tell, and that a
/// restore without `--base` then mends it.
#[test]
fn verify_detects_a_deep_tamper_that_a_base_restore_may_leave() {
    let st = stage(false);
    tamper_deep(&st.dest);
    let changes = apply_final_changes(&st.src);
    let fin = final_snapshot(&st, &changes);
    restore_ok(
        &st.sb,
        &fin.snapshot_id,
        &st.dest,
        &["--base", &st.stage_id, "--delete"],
    );
    let left = tree_differences(&st.src, &st.dest, &CompareOptions::exact());
    let src_digest = verify_digest(&st.sb, &st.src, &[]);
    let dest_digest = verify_digest(&st.sb, &st.dest, &[]);
    if left.is_empty() {
        eprintln!("note: the --base restore mended the deep tamper as well");
        assert_eq!(
            src_digest, dest_digest,
            "the trees are equal; so must the digests be"
        );
    } else {
        eprintln!("the --base restore left the deep tamper, as documented: {left:?}");
        for d in &left {
            assert!(
                d.contains("mixed/dir-1") || d.contains("mixed/dir-2"),
                "the --base restore left a difference outside the tampered subtrees: {d}\n\
                 all differences: {left:?}"
            );
        }
        assert_ne!(
            src_digest, dest_digest,
            "verify must detect what the --base restore left different: {left:?}"
        );
    }
    restore_ok(&st.sb, &fin.snapshot_id, &st.dest, &["--delete"]);
    assert_mirror(&st.sb, &st.src, &st.dest);
}

// ---------------------------------------------------------------------------------------------
// An interrupted final restore
// ---------------------------------------------------------------------------------------------

/// The packs named by the index file `index_id`, with whether they hold only data blobs and the
/// bytes of their blobs, as restic reads the index.
#[track_caller]
fn index_packs(sb: &Sandbox, index_id: &str) -> Vec<(String, bool, u64)> {
    let index = sb.restic(["cat", "index", index_id]).ok().json();
    let mut out = Vec::new();
    for pack in index["packs"].as_array().into_iter().flatten() {
        let id = pack["id"].as_str().unwrap_or_default().to_owned();
        let blobs = pack["blobs"].as_array().cloned().unwrap_or_default();
        let only_data = !blobs.is_empty() && blobs.iter().all(|b| b["type"] == "data");
        let bytes = blobs.iter().filter_map(|b| b["length"].as_u64()).sum();
        out.push((id, only_data, bytes));
    }
    out
}

/// The path of pack `id` in the repository.
fn pack_path(sb: &Sandbox, id: &str) -> PathBuf {
    sb.repo.join("data").join(&id[..2]).join(id)
}

#[test]
fn interrupted_final_restore_leaves_every_real_name_whole() {
    let st = stage(false);
    // An independent copy of the stage, to tell stage versions of files apart.
    let stage_copy = st.sb.dir("stage-copy");
    restore_ok(&st.sb, &st.stage_id, &stage_copy, &[]);
    let indexes_before: BTreeSet<String> = st
        .sb
        .repo_files("index")
        .iter()
        .map(|p| object_id(p))
        .collect();

    let changes = apply_final_changes(&st.src);
    let fin = final_snapshot(&st, &changes);
    let new_indexes: Vec<String> = st
        .sb
        .repo_files("index")
        .iter()
        .map(|p| object_id(p))
        .filter(|id| !indexes_before.contains(id))
        .collect();
    let (pack, _, pack_bytes) = new_indexes
        .iter()
        .flat_map(|id| index_packs(&st.sb, id))
        .filter(|(_, only_data, _)| *only_data)
        .max_by_key(|(_, _, bytes)| *bytes)
        .expect("the final snapshot stored at least one data pack");
    eprintln!("removing data pack {pack} ({pack_bytes} bytes of blobs) before the final restore");
    let stored = pack_path(&st.sb, &pack);
    let held = st.sb.root().join("held-pack");
    fs::rename(&stored, &held).expect("move a pack out of the repository");

    let failed = restore(&st.sb, &fin.snapshot_id, &st.dest, &["--delete"]).code(1);

    // Every file under a name the stage or the final snapshot has must be one version or the
    // other, whole; anything else is a temporary file, which may remain.
    let mut checked = 0;
    let mut temporaries = Vec::new();
    for rel in regular_files(&st.dest) {
        let here = st.dest.join(&rel);
        let (stage_version, final_version) = (stage_copy.join(&rel), st.src.join(&rel));
        let known = [&stage_version, &final_version]
            .iter()
            .any(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file()));
        if !known {
            temporaries.push(rel);
            continue;
        }
        checked += 1;
        assert!(
            same_content(&here, &stage_version) || same_content(&here, &final_version),
            "after the failed restore {} is neither the stage nor the final version: a \
             half-written file under a real name",
            rel.display()
        );
    }
    eprintln!("{checked} files whole after the failed restore; other files left: {temporaries:?}");
    assert!(checked > 0, "the failed restore left no files to check");
    failed.stderr_mentions(&pack[..8]);

    fs::rename(&held, &stored).expect("put the pack back");
    restore_ok(&st.sb, &fin.snapshot_id, &st.dest, &["--delete"]);
    assert_mirror(&st.sb, &st.src, &st.dest);
}

// ---------------------------------------------------------------------------------------------
// The verify digest
// ---------------------------------------------------------------------------------------------

/// A small tree with each kind of thing the digest covers: files, a directory, a symlink, a
/// hard link and an xattr.
fn write_verify_tree(root: &Path) {
    fs::create_dir_all(root.join("dir")).expect("mkdir dir");
    fs::write(root.join("a.txt"), b"a small file\n").expect("write a.txt");
    write_random_file(&root.join("dir/b.bin"), 100 << 10, 0xB1);
    std::os::unix::fs::symlink("a.txt", root.join("link")).expect("symlink link");
    fs::hard_link(root.join("a.txt"), root.join("dir/a-again")).expect("hard link a-again");
    xattr::set(root.join("a.txt"), "user.note", b"noted").expect("set user.note");
    fs::set_permissions(root.join("a.txt"), fs::Permissions::from_mode(0o644))
        .expect("chmod a.txt");
}

fn mtime_of(path: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(path).expect("lstat");
    (m.mtime(), m.mtime_nsec())
}

#[test]
fn verify_digest_tracks_every_recorded_property() {
    let sb = Sandbox::new();
    let src = sb.dir("src");
    write_verify_tree(&src);
    sb.init_with_ferry();
    let snap = sb.ferry_snapshot(&src, &[]);
    let copy = sb.dir("copy");
    restore_ok(&sb, &snap.snapshot_id, &copy, &[]);

    let original = verify_digest(&sb, &src, &[]);
    assert_eq!(
        original,
        verify_digest(&sb, &copy, &[]),
        "a tree and its restore"
    );
    let (js, jc) = (verify_json(&sb, &src, &[]), verify_json(&sb, &copy, &[]));
    assert_eq!(js, jc, "verify --json of a tree and its restore");
    assert_eq!(
        js.digest, original,
        "verify and verify --json give one digest"
    );
    assert!(js.files >= 2 && js.entries >= 5, "{js:?}");
    assert!(js.bytes > 100 << 10, "{js:?}");

    // The root's own metadata is not part of the digest.
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o700)).expect("chmod the root");
    set_mtime(&copy, 1_000_000_000, 1);
    assert_eq!(
        original,
        verify_digest(&sb, &copy, &[]),
        "root metadata changed"
    );

    let same = |what: &str| {
        assert_eq!(
            original,
            verify_digest(&sb, &copy, &[]),
            "after undoing {what}"
        );
    };
    let differs = |what: &str| {
        assert_ne!(original, verify_digest(&sb, &copy, &[]), "after {what}");
    };

    // One nanosecond of one mtime.
    let b = copy.join("dir/b.bin");
    let (sec, nsec) = mtime_of(&b);
    set_mtime(&b, sec, (nsec + 1) % 1_000_000_000);
    differs("changing an mtime by one nanosecond");
    set_mtime(&b, sec, nsec);
    same("the mtime change");

    // One mode bit.
    let a = copy.join("a.txt");
    fs::set_permissions(&a, fs::Permissions::from_mode(0o645)).expect("chmod");
    differs("changing one mode bit");
    fs::set_permissions(&a, fs::Permissions::from_mode(0o644)).expect("chmod back");
    same("the mode change");

    // One byte, with size and mtime kept.
    let flip = |path: &Path| {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("open for the byte flip");
        let mut content = Vec::new();
        f.read_to_end(&mut content).expect("read");
        content[5000] ^= 0x01;
        drop(f);
        fs::write(path, &content).expect("write back");
    };
    flip(&b);
    set_mtime(&b, sec, nsec);
    differs("changing one byte");
    flip(&b);
    set_mtime(&b, sec, nsec);
    same("the byte change");

    // The hard link broken by a copy with the same content, mode and mtime.
    let peer = copy.join("dir/a-again");
    let (lsec, lnsec) = mtime_of(&peer);
    let content = fs::read(&peer).expect("read a-again");
    fs::remove_file(&peer).expect("unlink a-again");
    fs::write(&peer, &content).expect("write a-again");
    fs::set_permissions(&peer, fs::Permissions::from_mode(0o644)).expect("chmod a-again");
    xattr::set(&peer, "user.note", b"noted").expect("set user.note on the copy");
    set_mtime(&peer, lsec, lnsec);
    set_mtime(
        &copy.join("dir"),
        mtime_of(&src.join("dir")).0,
        mtime_of(&src.join("dir")).1,
    );
    differs("breaking a hard link");
    fs::remove_file(&peer).expect("unlink the copy");
    fs::hard_link(&a, &peer).expect("link again");
    set_mtime(
        &copy.join("dir"),
        mtime_of(&src.join("dir")).0,
        mtime_of(&src.join("dir")).1,
    );
    same("the broken hard link");

    // An xattr only the copy has, ignored when excluded on both sides.
    let (name, pattern) = match xattr::set(&a, "security.selinux", b"system_u:object_r:tmp_t:s0") {
        Ok(()) => ("security.selinux", "security.selinux"),
        Err(e) => {
            eprintln!("note: cannot set security.selinux here ({e}); using user.test");
            xattr::set(&a, "user.test", b"test").expect("set user.test");
            ("user.test", "user.*")
        }
    };
    differs(&format!("adding {name}"));
    assert_eq!(
        verify_digest(&sb, &src, &["--exclude-xattr", pattern]),
        verify_digest(&sb, &copy, &["--exclude-xattr", pattern]),
        "{name} must not count with --exclude-xattr {pattern}"
    );
}

// ---------------------------------------------------------------------------------------------
// Block volumes
// ---------------------------------------------------------------------------------------------

/// The size of the stand-in block device.
const BLOCK_SIZE: u64 = 64 << 20;
/// Bytes of data at each of its start, middle and end.
const BLOCK_DATA: usize = 256 << 10;
/// A bound on what a block snapshot may add: the 64 MiB less at least three deduplicated
/// maximum-size chunks of zeros.
const BLOCK_ADDED_LIMIT: u64 = BLOCK_SIZE - 3 * MAX_CHUNK;

/// Writes a `BLOCK_SIZE` file with random data at its start, middle and end, zeros elsewhere.
fn write_block_image(path: &Path) {
    let file = File::create(path).expect("create the block image");
    file.set_len(BLOCK_SIZE).expect("size the block image");
    let mut rng = Rng::new(0xB10C);
    for offset in [0, BLOCK_SIZE / 2, BLOCK_SIZE - BLOCK_DATA as u64] {
        std::os::unix::fs::FileExt::write_all_at(&file, &rng.bytes(BLOCK_DATA), offset)
            .expect("write data into the block image");
    }
}

/// Writes `size` bytes of 0xff to `path`.
fn write_ff_file(path: &Path, size: u64) {
    let mut f = File::create(path).expect("create a 0xff file");
    let buf = vec![0xffu8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).expect("write 0xff");
        left -= n as u64;
    }
}

/// Reads `len` bytes from `path` at `offset`.
fn read_range(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; len];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, offset)
        .unwrap_or_else(|e| panic!("read {} at {offset}: {e}", path.display()));
    buf
}

/// Asserts that the first `BLOCK_SIZE` bytes of `restored` equal `source`, and that the
/// `tail` bytes after them are still 0xff.
#[track_caller]
fn assert_block_restored(source: &Path, restored: &Path, tail: u64) {
    const STEP: usize = 1 << 20;
    let mut offset = 0;
    while offset < BLOCK_SIZE {
        let a = read_range(source, offset, STEP);
        let b = read_range(restored, offset, STEP);
        if a != b {
            let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(0) as u64;
            panic!(
                "{} differs from the source at byte {} (restored {:#04x}, source {:#04x})",
                restored.display(),
                offset + at,
                b[at as usize],
                a[at as usize]
            );
        }
        offset += STEP as u64;
    }
    if tail > 0 {
        let rest = read_range(restored, BLOCK_SIZE, tail as usize);
        assert!(
            rest.iter().all(|&b| b == 0xff),
            "the block restore changed {} beyond the snapshot's {BLOCK_SIZE} bytes",
            restored.display()
        );
    }
}

#[track_caller]
fn assert_block_dedup(summary: &Summary) {
    eprintln!(
        "block snapshot added {} bytes ({} stored)",
        summary.data_added, summary.raw["data_added_packed"]
    );
    assert!(
        summary.data_added <= BLOCK_ADDED_LIMIT,
        "a {BLOCK_SIZE}-byte volume with {} bytes of data added {} bytes; zero chunks should \
         deduplicate (limit {BLOCK_ADDED_LIMIT}): {}",
        3 * BLOCK_DATA,
        summary.data_added,
        summary.raw
    );
}

#[test]
fn block_volume_restores_byte_for_byte_and_writes_zeros_over_old_data() {
    let sb = Sandbox::new();
    let image = sb.root().join("volume.img");
    write_block_image(&image);
    sb.init_with_ferry();
    let summary = sb.ferry_snapshot(&image, &["--block"]);
    assert_block_dedup(&summary);

    let fresh = sb.root().join("fresh.img");
    restore_ok(&sb, &summary.snapshot_id, &fresh, &["--block"]);
    assert_eq!(fs::metadata(&fresh).expect("stat").len(), BLOCK_SIZE);
    assert_eq!(first_difference(&image, &fresh).expect("compare"), None);

    // A larger target full of old data: the zero ranges must be written, not skipped.
    let used = sb.root().join("used.img");
    let tail = 1 << 20;
    write_ff_file(&used, BLOCK_SIZE + tail);
    restore_ok(&sb, &summary.snapshot_id, &used, &["--block"]);
    assert_block_restored(&image, &used, tail);
}

/// A loop device attached for one test and detached when dropped.
struct LoopDevice(PathBuf);

impl LoopDevice {
    /// `losetup -f --show FILE`; `None` when loop devices cannot be set up here.
    fn attach(file: &Path) -> Option<LoopDevice> {
        let mut cmd = Command::new("losetup");
        cmd.arg("-f").arg("--show").arg(file);
        let r = run(cmd);
        if r.code != Some(0) {
            eprintln!("note: losetup failed, skipping the loop device test\n{r}");
            return None;
        }
        let dev = r.out().trim().to_owned();
        if !dev.starts_with("/dev/loop") {
            eprintln!("note: losetup printed {dev:?}, skipping the loop device test");
            return None;
        }
        Some(LoopDevice(PathBuf::from(dev)))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let mut cmd = Command::new("losetup");
        cmd.arg("-d").arg(&self.0);
        let r = run(cmd);
        if r.code != Some(0) {
            eprintln!("warning: could not detach {}\n{r}", self.0.display());
        }
    }
}

#[test]
fn block_volume_on_a_loop_device_restores_onto_another() {
    if !is_root() {
        eprintln!("note: not root, skipping the loop device test");
        return;
    }
    let sb = Sandbox::new();
    let image = sb.root().join("volume.img");
    write_block_image(&image);
    let used = sb.root().join("used.img");
    let tail = 1 << 20;
    write_ff_file(&used, BLOCK_SIZE + tail);
    let Some(source) = LoopDevice::attach(&image) else {
        return;
    };
    let Some(target) = LoopDevice::attach(&used) else {
        return;
    };
    sb.init_with_ferry();
    let summary = sb.ferry_snapshot(&source.0, &["--block"]);
    assert_block_dedup(&summary);
    restore_ok(&sb, &summary.snapshot_id, &target.0, &["--block"]);
    assert_block_restored(&image, &target.0, tail);
}
