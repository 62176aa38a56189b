//! Helpers for the migration tests (stage snapshot and restore, final snapshot and mirror
//! restore, verify) and the hostile-restore tests: running `ferry agent restore` and
//! `ferry agent verify`, a source tree with one entry for every kind of change a final snapshot
//! has to carry to the destination, and fingerprints of directories a restore must not touch.
//!
//! Like the rest of `common`, nothing here decides what a test expects beyond the `*_ok`
//! conveniences; the change list is data that the tests assert on.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::{
    AwkwardOptions, CompareOptions, Rng, Run, Sandbox, Summary, assert_trees_equal,
    first_difference, is_full_id, is_root, set_mtime, write_awkward_tree, write_mixed_tree,
    write_random_file,
};

/// The path every migration snapshot records, as the controller passes it.
pub const AS_PATH: &str = "/ns/pvc";
/// The host every migration snapshot records.
pub const HOST: &str = "ferry";

/// Bytes appended to the large random file of the mixed tree by the final changes.
pub const APPENDED_BYTES: u64 = 512 << 10;
/// Size of the new random file the final changes add.
pub const NEW_RANDOM_BYTES: u64 = 1 << 20;
/// Size of the file whose content changes without a change of size.
pub const SAME_SIZE_BYTES: u64 = 256 << 10;

// ---------------------------------------------------------------------------------------------
// Running ferry
// ---------------------------------------------------------------------------------------------

/// `ferry agent restore ID --target TARGET EXTRA...`, whatever its outcome.
#[track_caller]
pub fn restore(sb: &Sandbox, id: &str, target: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("agent"),
        OsStr::new("restore"),
        OsStr::new(id),
        OsStr::new("--target"),
        target.as_os_str(),
    ];
    args.extend(extra.iter().map(OsStr::new));
    sb.ferry(args)
}

/// `ferry agent restore ID --target TARGET EXTRA...`, asserting success.
#[track_caller]
pub fn restore_ok(sb: &Sandbox, id: &str, target: &Path, extra: &[&str]) -> Run {
    restore(sb, id, target, extra).ok()
}

/// `ferry agent snapshot SRC --json --as-path /ns/pvc --host ferry EXTRA...`, asserting
/// success; returns the summary.
#[track_caller]
pub fn migration_snapshot(sb: &Sandbox, src: &Path, extra: &[&str]) -> Summary {
    let mut args = vec!["--as-path", AS_PATH, "--host", HOST];
    args.extend_from_slice(extra);
    sb.ferry_snapshot(src, &args)
}

/// An unsigned counter of a snapshot summary (`files_unmodified`, `files_changed`, …).
#[track_caller]
pub fn summary_count(summary: &Summary, key: &str) -> u64 {
    summary.raw[key].as_u64().unwrap_or_else(|| {
        panic!(
            "the summary has no unsigned integer {key:?}: {}",
            summary.raw
        )
    })
}

/// What `ferry agent verify --json` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub digest: String,
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

/// `ferry agent verify PATH EXTRA...` without repository options, asserting success; returns
/// the digest, which is the last line of the output.
#[track_caller]
pub fn verify_digest(sb: &Sandbox, path: &Path, extra: &[&str]) -> String {
    let mut args: Vec<&OsStr> = vec![OsStr::new("agent"), OsStr::new("verify"), path.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    let run = sb.ferry_bare(args, &[]).ok();
    let out = run.out();
    let last = out
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_owned();
    assert!(
        is_full_id(&last),
        "the last line of verify's output is not a 64-hex digest\n{run}"
    );
    last
}

/// `ferry agent verify PATH --json EXTRA...`, asserting success; returns the last line's
/// fields.
#[track_caller]
pub fn verify_json(sb: &Sandbox, path: &Path, extra: &[&str]) -> Verified {
    let mut args: Vec<&OsStr> = vec![
        OsStr::new("agent"),
        OsStr::new("verify"),
        path.as_os_str(),
        OsStr::new("--json"),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let run = sb.ferry_bare(args, &[]).ok();
    let out = run.out();
    let last = out
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the last line of verify --json is not JSON: {e}\n{run}"));
    assert_eq!(
        value["message_type"], "verify",
        "the last line of verify --json is not a verify message\n{run}"
    );
    let number = |key: &str| {
        value[key]
            .as_u64()
            .unwrap_or_else(|| panic!("verify --json has no unsigned integer {key:?}\n{run}"))
    };
    let digest = value["digest"].as_str().unwrap_or_default().to_owned();
    assert!(
        is_full_id(&digest),
        "verify --json's digest is not 64 hex digits\n{run}"
    );
    Verified {
        digest,
        entries: number("entries"),
        files: number("files"),
        bytes: number("bytes"),
    }
}

/// Asserts that `dest` is an exact mirror of `src`: every entry compared by
/// `assert_trees_equal` with `CompareOptions::exact()`, and equal `verify` digests.
#[track_caller]
pub fn assert_mirror(sb: &Sandbox, src: &Path, dest: &Path) {
    assert_trees_equal(src, dest, &CompareOptions::exact());
    let a = verify_digest(sb, src, &[]);
    let b = verify_digest(sb, dest, &[]);
    assert_eq!(
        a,
        b,
        "the trees compare equal but verify digests differ: {} vs {}",
        src.display(),
        dest.display()
    );
}

// ---------------------------------------------------------------------------------------------
// The migration source and its changes
// ---------------------------------------------------------------------------------------------

fn write(path: &Path, content: &[u8]) {
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    xattr::set(path, name, value)
        .unwrap_or_else(|e| panic!("setxattr {name} on {}: {e}", path.display()));
}

fn mtime_of(path: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    (m.mtime(), m.mtime_nsec())
}

/// Top-level files of the migration source that no change touches; the tamper tests damage
/// them in the destination.
pub const TOP_README: &str = "README.txt";
pub const TOP_CONFIG: &str = "top-config.json";

/// Writes the stage version of the migration source under `root` (which must exist):
/// `mixed/` (the mixed tree, about 17 MiB), `awkward/` (the awkward tree without its 1 GiB
/// sparse file) when asked, two top-level files no change touches (`TOP_README`,
/// `TOP_CONFIG`) and one the final changes delete, and `changes/`, which holds one entry for
/// each change `apply_final_changes` makes.
pub fn write_migration_source(root: &Path, with_awkward: bool) {
    write_mixed_tree(&root.join("mixed"), 0x316);
    if with_awkward {
        let awkward = root.join("awkward");
        mkdir(&awkward);
        let made = write_awkward_tree(
            &awkward,
            &AwkwardOptions {
                sparse_gib: false,
                non_utf8_link_target: true,
            },
        );
        for note in &made.notes {
            eprintln!("note: {note}");
        }
    }
    write(&root.join(TOP_README), b"a volume that is being migrated\n");
    write(
        &root.join(TOP_CONFIG),
        b"{\"replicas\": 3, \"mode\": \"stage\"}\n",
    );
    write(
        &root.join("top-delete-me.txt"),
        b"gone in the final snapshot\n",
    );

    let c = root.join("changes");
    mkdir(&c);
    write(&c.join("unchanged.txt"), b"nothing happens to this file\n");
    write(
        &c.join("delete-me.txt"),
        b"deleted before the final snapshot\n",
    );
    mkdir(&c.join("delete-dir/inner"));
    write(&c.join("delete-dir/one.txt"), b"one\n");
    write(&c.join("delete-dir/inner/two.txt"), b"two\n");
    write(
        &c.join("rename-me.txt"),
        b"renamed before the final snapshot\n",
    );
    mkdir(&c.join("rename-dir/sub"));
    write(&c.join("rename-dir/a.txt"), b"in a renamed directory\n");
    write(
        &c.join("rename-dir/sub/b.txt"),
        b"deeper in a renamed directory\n",
    );
    write(&c.join("chmod-only.txt"), b"only the mode changes\n");
    chmod(&c.join("chmod-only.txt"), 0o644);
    write(&c.join("chown-only.txt"), b"only the owner changes\n");
    write_random_file(&c.join("truncate-me.bin"), 200 << 10, 0x7001);
    write(&c.join("file-to-dir"), b"a file that becomes a directory\n");
    mkdir(&c.join("dir-to-symlink/sub"));
    write(
        &c.join("dir-to-symlink/x.txt"),
        b"in a directory that becomes a symlink\n",
    );
    write(&c.join("dir-to-symlink/sub/y.txt"), b"deeper\n");
    write(&c.join("hl-add-a"), b"gets a second name\n");
    write(&c.join("hl-break-a"), b"two names that are split apart\n");
    fs::hard_link(c.join("hl-break-a"), c.join("hl-break-b")).expect("hard link hl-break-b");
    write(&c.join("xattr-add.txt"), b"gains an xattr\n");
    write(&c.join("xattr-remove.txt"), b"loses an xattr\n");
    set_xattr(&c.join("xattr-remove.txt"), "user.gone", b"soon removed");
    write(&c.join("xattr-change.txt"), b"an xattr changes value\n");
    set_xattr(&c.join("xattr-change.txt"), "user.value", b"value-1");
    write_random_file(&c.join("same-size.bin"), SAME_SIZE_BYTES, 0x5A3E);
    symlink("target-a", c.join("retarget-link")).expect("symlink retarget-link");
}

/// What `apply_final_changes` did, for the tests' expectations.
#[derive(Debug, Clone)]
pub struct Changes {
    /// Incompressible bytes the final snapshot must add: the appended and the new random data.
    pub new_random_bytes: u64,
}

/// Turns the stage source under `root` into the final source: files added and deleted, a file
/// and a directory renamed, a mode changed alone, an owner changed alone (as root), a file
/// truncated, data appended to a large file, a file replaced by a directory and a directory by
/// a symlink, a hard link added and one broken (one name replaced by a copy with the same
/// content, mode and mtime), an xattr added, one removed and one changed, a file's content
/// changed without a change of size but with a new mtime, and a symlink retargeted.
pub fn apply_final_changes(root: &Path) -> Changes {
    let c = root.join("changes");

    // Additions, at the top level and below.
    write(&root.join("top-added.txt"), b"new in the final snapshot\n");
    mkdir(&c.join("added/nested"));
    write_random_file(&c.join("added/new-random.bin"), NEW_RANDOM_BYTES, 0xADD);
    write(
        &c.join("added/nested/notes.txt"),
        b"a new file in a new directory\n",
    );

    // Deletions.
    fs::remove_file(root.join("top-delete-me.txt")).expect("delete top-delete-me.txt");
    fs::remove_file(c.join("delete-me.txt")).expect("delete delete-me.txt");
    fs::remove_dir_all(c.join("delete-dir")).expect("delete delete-dir");

    // Renames.
    fs::rename(c.join("rename-me.txt"), c.join("renamed.txt")).expect("rename a file");
    fs::rename(c.join("rename-dir"), c.join("renamed-dir")).expect("rename a directory");

    // Metadata only.
    chmod(&c.join("chmod-only.txt"), 0o600);
    if is_root() {
        std::os::unix::fs::lchown(c.join("chown-only.txt"), Some(1000), Some(1001))
            .expect("chown chown-only.txt");
    }

    // Truncation and appending.
    OpenOptions::new()
        .write(true)
        .open(c.join("truncate-me.bin"))
        .and_then(|f| f.set_len(10 << 10))
        .expect("truncate truncate-me.bin");
    let big = root.join("mixed/large/random.bin");
    let mut file = OpenOptions::new()
        .append(true)
        .open(&big)
        .expect("open the large file for appending");
    file.write_all(&Rng::new(0xA99E).bytes(APPENDED_BYTES as usize))
        .expect("append to the large file");
    drop(file);

    // Type changes.
    fs::remove_file(c.join("file-to-dir")).expect("remove file-to-dir");
    mkdir(&c.join("file-to-dir"));
    write(&c.join("file-to-dir/inside.txt"), b"was a file\n");
    fs::remove_dir_all(c.join("dir-to-symlink")).expect("remove dir-to-symlink");
    symlink("../mixed/dir-0", c.join("dir-to-symlink")).expect("symlink dir-to-symlink");

    // Hard links: one added; one broken by a copy that keeps content, mode and mtime, as
    // `cp -p` would, so that only the link structure tells the difference.
    fs::hard_link(c.join("hl-add-a"), c.join("hl-add-b")).expect("hard link hl-add-b");
    let broken = c.join("hl-break-b");
    let content = fs::read(&broken).expect("read hl-break-b");
    let (sec, nsec) = mtime_of(&broken);
    let mode = fs::metadata(&broken).expect("stat hl-break-b").mode() & 0o7777;
    fs::remove_file(&broken).expect("unlink hl-break-b");
    write(&broken, &content);
    chmod(&broken, mode);
    set_mtime(&broken, sec, nsec);

    // Extended attributes, which change ctime but not mtime.
    set_xattr(&c.join("xattr-add.txt"), "user.added", b"new attribute");
    xattr::remove(c.join("xattr-remove.txt"), "user.gone").expect("remove user.gone");
    set_xattr(&c.join("xattr-change.txt"), "user.value", b"value-2");

    // Same size, new content, new mtime.
    let same = c.join("same-size.bin");
    let (sec, nsec) = mtime_of(&same);
    let f = OpenOptions::new()
        .write(true)
        .open(&same)
        .expect("open same-size.bin");
    f.write_all_at(&Rng::new(0x5A3F).bytes(4096), SAME_SIZE_BYTES / 2)
        .expect("rewrite the middle of same-size.bin");
    drop(f);
    set_mtime(&same, sec + 1, (nsec + 1) % 1_000_000_000);

    // A symlink with a new target of the same length.
    fs::remove_file(c.join("retarget-link")).expect("remove retarget-link");
    symlink("target-b", c.join("retarget-link")).expect("symlink retarget-link");

    Changes {
        new_random_bytes: APPENDED_BYTES + NEW_RANDOM_BYTES,
    }
}

/// Bytes of regular-file content under `root`, each inode counted once.
pub fn tree_bytes(root: &Path) -> u64 {
    let mut seen = std::collections::BTreeSet::new();
    let mut total = 0;
    for rel in regular_files(root) {
        let m = fs::symlink_metadata(root.join(&rel)).expect("lstat a regular file");
        if seen.insert((m.dev(), m.ino())) {
            total += m.size();
        }
    }
    total
}

/// The relative paths of every regular file below `root`, sorted; symlinks are not followed.
pub fn regular_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    collect_regular(root, Path::new(""), &mut out);
    out.sort();
    out
}

fn collect_regular(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.expect("directory entry");
        let kind = entry.file_type().expect("file type of a directory entry");
        let child_rel = rel.join(entry.file_name());
        if kind.is_dir() {
            collect_regular(&entry.path(), &child_rel, out);
        } else if kind.is_file() {
            out.push(child_rel);
        }
    }
}

/// Whether `a` and `b` are both regular files with the same content.
pub fn same_content(a: &Path, b: &Path) -> bool {
    let is_file = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
    is_file(a) && is_file(b) && matches!(first_difference(a, b), Ok(None))
}

/// Every entry below `dir`, and `dir` itself, described by type, mode, size, mtime and (for
/// files and symlinks) content or target: equal fingerprints mean nothing was created,
/// removed, written or re-timed there.
pub fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    fingerprint_into(dir, Path::new(""), &mut out);
    out
}

fn fingerprint_into(path: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let m = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let kind = m.file_type();
    let detail = if kind.is_file() {
        let mut content = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut content))
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        format!("file {:?}", String::from_utf8_lossy(&content))
    } else if kind.is_symlink() {
        format!("symlink -> {:?}", fs::read_link(path).expect("readlink"))
    } else if kind.is_dir() {
        "dir".to_owned()
    } else {
        "other".to_owned()
    };
    out.insert(
        rel.to_path_buf(),
        format!(
            "{detail} mode {:o} size {} mtime {}.{:09}",
            m.mode(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        ),
    );
    if kind.is_dir() {
        for entry in fs::read_dir(path).expect("read_dir while fingerprinting") {
            let entry = entry.expect("directory entry");
            fingerprint_into(&entry.path(), &rel.join(entry.file_name()), out);
        }
    }
}
