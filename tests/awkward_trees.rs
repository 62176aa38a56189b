//! Awkward trees through ferry and restic in both directions: names that are not UTF-8 or need
//! quoting, 255-byte names, 5,000 entries in one directory, 50 levels of nesting, empty files
//! and directories, symlinks of every kind, hard links, a fifo and devices, setuid/setgid/sticky
//! modes, foreign owners, xattrs, nanosecond and pre-1970 mtimes, and a 1 GiB sparse file.
//!
//! The first test runs restic against itself, so that the comparison options used for restic's
//! restores are checked against the judge before ferry is judged with them.

mod common;

use std::path::{Path, PathBuf};

use common::{
    AwkwardOptions, CompareOptions, SPARSE_SIZE, Sandbox, allocated_bytes, assert_trees_equal,
    write_awkward_tree,
};

/// A restored sparse file may allocate its data chunks in full, but not its holes: 64 MiB is
/// eight maximum-size chunks, far below the 1 GiB a dense restore takes.
const SPARSE_ALLOCATION_LIMIT: u64 = 64 << 20;

fn awkward_source(sb: &Sandbox, opts: &AwkwardOptions) -> (PathBuf, common::Awkward) {
    let src = sb.dir("src");
    let made = write_awkward_tree(&src, opts);
    for note in &made.notes {
        eprintln!("note: {note}");
    }
    (src, made)
}

#[track_caller]
fn assert_restored_sparse(target: &Path, made: &common::Awkward) {
    let Some(rel) = &made.sparse_file else { return };
    if !made.sparse_source_has_holes {
        eprintln!("note: not checking sparseness; this filesystem does not keep holes");
        return;
    }
    let path = target.join(rel);
    let allocated = allocated_bytes(&path);
    assert!(
        allocated < SPARSE_ALLOCATION_LIMIT,
        "{} restored dense: {allocated} bytes allocated for a {SPARSE_SIZE}-byte file with \
         192 KiB of data (limit {SPARSE_ALLOCATION_LIMIT})",
        path.display()
    );
}

#[test]
fn restic_round_trip_of_awkward_tree_matches_under_restic_0_14_options() {
    let sb = Sandbox::new();
    let (src, _made) = awkward_source(&sb, &AwkwardOptions::default());
    sb.init_with_restic();
    let id = sb.restic_backup(&src);
    let target = sb.dir("restored-by-restic");
    sb.restic_restore(&id, &target);
    assert_trees_equal(&src, &target, &CompareOptions::restic_0_14());
}

#[test]
fn ferry_snapshot_of_awkward_tree_restores_identically_with_ferry() {
    let sb = Sandbox::new();
    let (src, made) = awkward_source(&sb, &AwkwardOptions::default());
    sb.init_with_ferry();
    let summary = sb.ferry_snapshot(&src, &[]);
    let target = sb.dir("restored-by-ferry");
    sb.ferry_restore(&summary.snapshot_id, &target);
    assert_trees_equal(&src, &target, &CompareOptions::exact());
    assert_restored_sparse(&target, &made);
}

#[test]
fn ferry_snapshot_of_awkward_tree_passes_restic_check_and_restores_with_restic() {
    let sb = Sandbox::new();
    let (src, _made) = awkward_source(&sb, &AwkwardOptions::default());
    sb.init_with_ferry();
    let summary = sb.ferry_snapshot(&src, &[]);
    sb.restic(["check", "--read-data"]).ok();
    let target = sb.dir("restored-by-restic");
    // restic 0.14 writes holes as zeros, so only the content of the sparse file is compared.
    sb.restic_restore(&summary.snapshot_id, &target);
    assert_trees_equal(&src, &target, &CompareOptions::restic_0_14());
}

#[test]
fn restic_snapshot_of_awkward_tree_passes_ferry_check_and_restores_identically_with_ferry() {
    let sb = Sandbox::new();
    let (src, made) = awkward_source(&sb, &AwkwardOptions::default());
    sb.init_with_restic();
    let id = sb.restic_backup(&src);
    sb.ferry(["check", "--read-data"]).ok();
    let target = sb.dir("restored-by-ferry");
    sb.ferry_restore(&id, &target);
    // restic 0.14 stored the non-UTF-8 symlink target lossily, so no restorer can bring it back.
    assert_trees_equal(&src, &target, &CompareOptions::restic_0_14());
    assert_restored_sparse(&target, &made);
}

/// The comparison is the judge of every restore test, so it is itself checked: two awkward trees
/// written the same way compare equal, and each kind of damage to one of them is reported.
#[test]
fn tree_comparison_reports_each_kind_of_difference() {
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};

    let sb = Sandbox::new();
    let opts = AwkwardOptions {
        sparse_gib: false,
        non_utf8_link_target: true,
    };
    let a = sb.dir("a");
    let b = sb.dir("b");
    write_awkward_tree(&a, &opts);
    let made = write_awkward_tree(&b, &opts);
    assert_trees_equal(&a, &b, &CompareOptions::exact());

    let mut expected: Vec<&str> = Vec::new();
    fs::write(b.join("names/plain.txt"), b"plain.tx_").unwrap();
    common::set_mtime(&b.join("names/plain.txt"), 1_500_003_607, 0);
    expected.push("content differs at byte 8");
    fs::set_permissions(b.join("modes/setuid"), fs::Permissions::from_mode(0o755)).unwrap();
    expected.push("mode 4755 vs 0755");
    common::set_mtime(&b.join("times/one-nanosecond"), 1_700_000_000, 2);
    expected.push("mtime 1700000000.000000001 vs 1700000000.000000002");
    fs::remove_file(b.join("links/dangling")).unwrap();
    symlink("no/such/targeT", b.join("links/dangling")).unwrap();
    expected.push("symlink target");
    fs::remove_file(b.join("hardlinks/b")).unwrap();
    fs::write(b.join("hardlinks/b"), b"shared content of three names\n").unwrap();
    expected.push("hard-link peers differ");
    fs::remove_file(b.join("empty/empty-file")).unwrap();
    expected.push("missing from the copy");
    fs::write(b.join("extra"), b"").unwrap();
    expected.push("only in the copy");
    fs::remove_file(b.join("special/fifo")).unwrap();
    fs::write(b.join("special/fifo"), b"").unwrap();
    expected.push("type Fifo vs File");
    if made.user_xattrs {
        xattr::set(b.join("xattrs/file"), "user.comment", b"changed").unwrap();
        expected.push("xattrs");
    }
    if made.root_only_entries {
        std::os::unix::fs::lchown(b.join("owners/file-1234"), Some(1234), Some(5679)).unwrap();
        expected.push("owner 1234:5678 vs 1234:5679");
    }

    let report = common::tree_differences(&a, &b, &CompareOptions::exact()).join("\n");
    for needle in expected {
        assert!(
            report.contains(needle),
            "the comparison did not report {needle:?}; it reported:\n{report}"
        );
    }
}
