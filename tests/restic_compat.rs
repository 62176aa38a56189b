//! Compatibility with the real `restic` program, which is the judge of the repository format:
//! repositories ferry writes pass `restic check --read-data` and restore with restic;
//! repositories restic writes pass `ferry check --read-data` and restore with ferry; keys added
//! by either open the repository in the other; ferry reports restic's metadata as restic does;
//! unchanged and slightly changed data add no or few blobs; blobs stored without ferry's
//! self-check (`--no-extra-verify`) read back in restic too; and ferry leaves no locks behind.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;

use common::{
    CompareOptions, Sandbox, assert_trees_equal, object_id, write_mixed_tree, write_random_file,
};
use serde_json::Value;

/// A changed region re-chunks into at most a few blobs, and with restic's chunk sizes (maximum
/// 8 MiB) their total stays well below this bound, half of the 20 MiB file.
const CHANGED_DATA_LIMIT: u64 = 10 << 20;
/// The most new data blobs one local change may produce: the chunk holding the change, and
/// rarely one more when the change moves a nearby cut point or pushes a chunk past its maximum.
const CHANGED_BLOBS_LIMIT: u64 = 3;

/// The snapshot list `restic snapshots --json` prints.
#[track_caller]
fn restic_snapshots(sb: &Sandbox) -> Vec<Value> {
    let run = sb.restic(["snapshots", "--json"]).ok();
    run.json()
        .as_array()
        .unwrap_or_else(|| panic!("restic snapshots --json is not an array\n{run}"))
        .clone()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

#[test]
fn ferry_repository_passes_restic_check_and_restores_with_restic() {
    let sb = Sandbox::new();
    let src = sb.dir("src");
    write_mixed_tree(&src, 1);
    sb.init_with_ferry();
    let config = sb.restic(["cat", "config"]).ok().json();
    assert_eq!(
        config["version"], 2,
        "ferry must write repository format 2: {config}"
    );

    let summary = sb.ferry_snapshot(
        &src,
        &[
            "--tag",
            "plan=p1",
            "--tag",
            "pv=data-vol",
            "--host",
            "ferry",
        ],
    );
    let snapshots = restic_snapshots(&sb);
    assert_eq!(snapshots.len(), 1, "restic lists {snapshots:?}");
    let snap = &snapshots[0];
    assert_eq!(
        snap["id"],
        summary.snapshot_id.as_str(),
        "restic lists {snap}"
    );
    assert_eq!(snap["hostname"], "ferry", "restic lists {snap}");
    let tags: BTreeSet<String> = strings(&snap["tags"]).into_iter().collect();
    let expected: BTreeSet<String> = ["plan=p1", "pv=data-vol"].map(String::from).into();
    assert_eq!(tags, expected, "restic lists {snap}");
    let paths = strings(&snap["paths"]);
    assert!(
        paths.len() == 1 && paths[0].starts_with('/'),
        "a snapshot has one absolute path; restic lists {snap}"
    );

    sb.restic(["check", "--read-data"]).ok();
    let target = sb.dir("restored-by-restic");
    sb.restic_restore(&summary.snapshot_id, &target);
    assert_trees_equal(&src, &target, &CompareOptions::exact());
}

/// `--no-extra-verify` skips only ferry's own check of each blob before it is stored; what is
/// stored is the same format, which restic reads back in full.
#[test]
fn unchecked_blobs_pass_restic_check_and_restore_with_restic() {
    let sb = Sandbox::new();
    let src = sb.dir("src");
    write_mixed_tree(&src, 2);
    sb.init_with_ferry();
    let summary = sb.ferry_snapshot(&src, &["--no-extra-verify"]);
    sb.restic(["check", "--read-data"]).ok();
    let target = sb.dir("restored-by-restic");
    sb.restic_restore(&summary.snapshot_id, &target);
    assert_trees_equal(&src, &target, &CompareOptions::exact());
}

#[test]
fn ferry_snapshot_without_json_prints_the_snapshot_id() {
    let sb = Sandbox::new();
    let src = sb.dir("src");
    std::fs::write(src.join("file"), b"content\n").unwrap();
    sb.init_with_ferry();
    let run = sb
        .ferry([OsStr::new("agent"), OsStr::new("snapshot"), src.as_os_str()])
        .ok();
    let snapshots = restic_snapshots(&sb);
    assert_eq!(snapshots.len(), 1, "restic lists {snapshots:?}");
    let short_id = snapshots[0]["short_id"].as_str().unwrap_or_default();
    assert!(
        !short_id.is_empty() && run.out().contains(short_id),
        "ferry's output does not show the snapshot id {short_id}\n{run}"
    );
}

#[test]
fn restic_repository_passes_ferry_check_and_restores_with_ferry() {
    let sb = Sandbox::new();
    let src = sb.dir("src");
    write_mixed_tree(&src, 2);
    sb.init_with_restic();
    let id = sb.restic_backup(&src);
    sb.ferry(["check", "--read-data"]).ok();

    let by_id = sb.dir("by-full-id");
    sb.ferry_restore(&id, &by_id);
    assert_trees_equal(&src, &by_id, &CompareOptions::exact());

    let by_prefix = sb.dir("by-prefix");
    sb.ferry_restore(&id[..8], &by_prefix);
    assert_trees_equal(&src, &by_prefix, &CompareOptions::exact());

    let latest = sb.dir("latest");
    sb.ferry_restore("latest", &latest);
    assert_trees_equal(&src, &latest, &CompareOptions::exact());
}

#[test]
fn ferry_reports_restic_metadata_as_restic_does() {
    let sb = Sandbox::new();
    let src = sb.dir("src");
    write_mixed_tree(&src, 3);
    sb.init_with_restic();
    let id = sb.restic_backup_with(&src, &["--tag", "plan=p7", "--host", "h1"]);

    // Snapshot list: the fields restic's JSON has.
    let theirs = restic_snapshots(&sb);
    let run = sb.ferry(["snapshots", "--json"]).ok();
    let ours = run.json();
    let ours = ours
        .as_array()
        .unwrap_or_else(|| panic!("ferry snapshots --json is not an array\n{run}"));
    assert_eq!(
        ours.len(),
        theirs.len(),
        "ferry lists {ours:?}, restic {theirs:?}"
    );
    for key in ["id", "short_id", "tree", "paths", "hostname", "tags"] {
        assert_eq!(
            ours[0][key], theirs[0][key],
            "field {key:?}: ferry {ours:?}, restic {theirs:?}"
        );
    }
    let instant = |v: &Value| {
        v.as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .unwrap_or_else(|| panic!("time {v} is not RFC 3339"))
    };
    assert_eq!(instant(&ours[0]["time"]), instant(&theirs[0]["time"]));

    // cat config / snapshot / index: the same JSON documents.
    let json_of = |run: common::Run| -> Value { run.ok().json() };
    assert_eq!(
        json_of(sb.ferry(["cat", "config"])),
        json_of(sb.restic(["cat", "config"])),
        "cat config"
    );
    assert_eq!(
        json_of(sb.ferry(["cat", "snapshot", &id])),
        json_of(sb.restic(["cat", "snapshot", &id])),
        "cat snapshot"
    );
    for index in sb.repo_files("index") {
        let index_id = object_id(&index);
        assert_eq!(
            json_of(sb.ferry(["cat", "index", &index_id])),
            json_of(sb.restic(["cat", "index", &index_id])),
            "cat index {index_id}"
        );
    }

    // cat tree: the root tree as restic's `cat blob` prints it; cat blob: the same bytes.
    let tree = theirs[0]["tree"]
        .as_str()
        .expect("restic lists a tree id")
        .to_owned();
    assert_eq!(
        json_of(sb.ferry(["cat", "tree", &tree])),
        json_of(sb.restic(["cat", "blob", &tree])),
        "cat tree {tree}"
    );
    let blob = sb
        .restic_data_blobs()
        .into_iter()
        .next()
        .expect("the backup stored data blobs");
    let ours = sb.ferry(["cat", "blob", &blob]).ok();
    let theirs_blob = sb.restic(["cat", "blob", &blob]).ok();
    assert!(
        ours.stdout == theirs_blob.stdout,
        "cat blob {blob}: ferry printed {} bytes, restic {}",
        ours.stdout.len(),
        theirs_blob.stdout.len()
    );

    // ls: every path restic lists, ferry lists too.
    let ours_ls = sb.ferry(["ls", &id]).ok().out();
    let ours_lines: BTreeSet<&str> = ours_ls.lines().map(str::trim).collect();
    let theirs_ls = sb.restic(["ls", &id]).ok().out();
    let missing: Vec<&str> = theirs_ls
        .lines()
        .filter(|l| l.starts_with('/'))
        .filter(|l| !ours_lines.contains(l.trim()))
        .collect();
    assert!(
        missing.is_empty(),
        "ferry ls lacks paths restic lists: {missing:?}\nferry:\n{ours_ls}"
    );
}

#[test]
fn restic_key_added_to_ferry_repository_opens_it_in_ferry() {
    let sb = Sandbox::new();
    let src = sb.dir("src");
    write_mixed_tree(&src, 4);
    sb.init_with_ferry();
    let summary = sb.ferry_snapshot(&src, &[]);
    let new_password = sb.password_file_with("new-password", "a second password from restic");
    sb.restic([
        OsStr::new("key"),
        OsStr::new("add"),
        OsStr::new("--new-password-file"),
        new_password.as_os_str(),
    ])
    .ok();
    assert_eq!(
        sb.repo_files("keys").len(),
        2,
        "restic key add wrote a second key"
    );

    let run =
        common::run_ferry(sb.ferry_cmd_with_password(&new_password, ["snapshots", "--json"])).ok();
    assert!(
        run.out().contains(&summary.snapshot_id),
        "ferry with restic's new key does not list the snapshot\n{run}"
    );
    let target = sb.dir("restored");
    common::run_ferry(sb.ferry_cmd_with_password(
        &new_password,
        [
            OsStr::new("agent"),
            OsStr::new("restore"),
            OsStr::new("latest"),
            OsStr::new("--target"),
            target.as_os_str(),
        ],
    ))
    .ok();
    assert_trees_equal(&src, &target, &CompareOptions::exact());
    // The first password still works.
    sb.ferry(["snapshots"]).ok();
}

#[test]
fn ferry_key_added_to_restic_repository_opens_it_in_restic() {
    let sb = Sandbox::new();
    let src = sb.dir("src");
    write_mixed_tree(&src, 5);
    sb.init_with_restic();
    let id = sb.restic_backup(&src);
    let new_password = sb.password_file_with("new-password", "a second password from ferry");
    sb.ferry([
        OsStr::new("key"),
        OsStr::new("add"),
        OsStr::new("--new-password-file"),
        new_password.as_os_str(),
    ])
    .ok();
    assert_eq!(
        sb.repo_files("keys").len(),
        2,
        "ferry key add wrote a second key"
    );

    let run = common::run(sb.restic_cmd(&new_password, ["snapshots", "--json"])).ok();
    assert!(
        run.out().contains(&id),
        "restic with ferry's new key does not list the snapshot\n{run}"
    );
    common::run(sb.restic_cmd(&new_password, ["check"])).ok();
    let keys = common::run(sb.restic_cmd(&new_password, ["key", "list", "--json"]))
        .ok()
        .json();
    assert_eq!(
        keys.as_array().map(Vec::len),
        Some(2),
        "restic key list: {keys}"
    );
    // The first password still works.
    sb.restic(["snapshots"]).ok();
}

#[test]
fn ferry_key_list_and_remove_agree_with_restic() {
    let sb = Sandbox::new();
    sb.init_with_restic();
    let first_key = object_id(&sb.repo_files("keys")[0]);
    let new_password = sb.password_file_with("new-password", "a key to be removed");
    sb.restic([
        OsStr::new("key"),
        OsStr::new("add"),
        OsStr::new("--new-password-file"),
        new_password.as_os_str(),
    ])
    .ok();
    let second_key = sb
        .repo_files("keys")
        .iter()
        .map(|p| object_id(p))
        .find(|id| *id != first_key)
        .expect("restic added a key file");

    let listed = sb.ferry(["key", "list"]).ok();
    for key in [&first_key, &second_key] {
        assert!(
            listed.out().contains(&key[..8]),
            "ferry key list does not show {key}\n{listed}"
        );
    }

    // The key in use cannot be removed, as in restic: that could lock everyone out.
    sb.ferry(["key", "remove", &first_key[..8]]).code(1);
    assert_eq!(
        sb.repo_files("keys").len(),
        2,
        "ferry removed the key in use"
    );

    sb.ferry(["key", "remove", &second_key[..8]]).ok();
    let keys: Vec<String> = sb.repo_files("keys").iter().map(|p| object_id(p)).collect();
    assert_eq!(keys, vec![first_key], "ferry key remove left {keys:?}");
    let run = common::run(sb.restic_cmd(&new_password, ["snapshots"]));
    assert_ne!(
        run.code,
        Some(0),
        "restic still opens the repository with the removed key\n{run}"
    );
    sb.restic(["snapshots"]).ok();
}

#[test]
fn second_snapshot_of_unchanged_data_adds_no_data_blobs() {
    let sb = Sandbox::new();
    let src = sb.dir("src");
    write_mixed_tree(&src, 6);
    sb.init_with_ferry();
    let first = sb.ferry_snapshot(&src, &[]);
    assert!(
        first.data_blobs > 0,
        "the first snapshot stored no data: {:?}",
        first.raw
    );
    let blobs = sb.restic_data_blobs();

    let second = sb.ferry_snapshot(&src, &["--parent", &first.snapshot_id]);
    assert_eq!(
        second.data_blobs, 0,
        "unchanged data added blobs: {:?}",
        second.raw
    );
    assert_eq!(
        second.files_new, 0,
        "unchanged files counted as new: {:?}",
        second.raw
    );
    assert_eq!(sb.restic_data_blobs(), blobs, "restic sees new data blobs");

    // Without a parent every file is read again, and still nothing new is stored.
    let third = sb.ferry_snapshot(&src, &[]);
    assert_eq!(
        third.data_blobs, 0,
        "re-read unchanged data added blobs: {:?}",
        third.raw
    );
    assert_eq!(sb.restic_data_blobs(), blobs, "restic sees new data blobs");

    let snapshots = restic_snapshots(&sb);
    assert_eq!(snapshots.len(), 3, "restic lists {snapshots:?}");
    let listed = snapshots
        .iter()
        .find(|s| s["id"] == second.snapshot_id.as_str())
        .expect("restic lists the second snapshot");
    assert_eq!(
        listed["parent"],
        first.snapshot_id.as_str(),
        "the second snapshot's parent"
    );
    sb.restic(["check", "--read-data"]).ok();
}

#[test]
fn changing_a_20_mib_file_adds_only_its_changed_chunks() {
    let sb = Sandbox::new();
    let src = sb.dir("src");
    let big = src.join("big.bin");
    write_random_file(&big, 20 << 20, 7);
    std::fs::write(src.join("small.txt"), b"unchanged\n").unwrap();
    sb.init_with_ferry();
    let first = sb.ferry_snapshot(&src, &[]);
    let blobs_before = sb.restic_data_blobs();

    // Overwrite 100 bytes in the middle.
    let file = OpenOptions::new().write(true).open(&big).unwrap();
    file.write_all_at(&[0xA5; 100], 10 << 20).unwrap();
    drop(file);
    let second = sb.ferry_snapshot(&src, &["--parent", &first.snapshot_id]);
    assert_small_change(
        &sb,
        &second,
        &blobs_before,
        "overwriting 100 bytes in the middle",
    );

    // Append 100 KiB.
    let blobs_before = sb.restic_data_blobs();
    let mut file = OpenOptions::new().append(true).open(&big).unwrap();
    file.write_all(&common::Rng::new(8).bytes(100 << 10))
        .unwrap();
    drop(file);
    let third = sb.ferry_snapshot(&src, &["--parent", &second.snapshot_id]);
    assert_small_change(&sb, &third, &blobs_before, "appending 100 KiB");

    sb.restic(["check", "--read-data"]).ok();
    let target = sb.dir("restored-by-restic");
    sb.restic_restore(&third.snapshot_id, &target);
    assert_trees_equal(&src, &target, &CompareOptions::exact());
}

#[track_caller]
fn assert_small_change(
    sb: &Sandbox,
    summary: &common::Summary,
    blobs_before: &BTreeSet<String>,
    change: &str,
) {
    assert!(
        (1..=CHANGED_BLOBS_LIMIT).contains(&summary.data_blobs),
        "{change}: expected 1 to {CHANGED_BLOBS_LIMIT} new data blobs: {:?}",
        summary.raw
    );
    assert!(
        summary.data_added > 0 && summary.data_added < CHANGED_DATA_LIMIT,
        "{change}: expected less than {CHANGED_DATA_LIMIT} bytes added: {:?}",
        summary.raw
    );
    let after = sb.restic_data_blobs();
    let new = after.difference(blobs_before).count() as u64;
    assert_eq!(
        new, summary.data_blobs,
        "{change}: restic sees {new} new data blobs, the summary says {}",
        summary.data_blobs
    );
}

#[test]
fn ferry_commands_leave_no_lock_files() {
    let sb = Sandbox::new();
    let src = sb.dir("src");
    write_mixed_tree(&src, 9);
    sb.init_with_ferry();
    let assert_no_locks = |after: &str| {
        let locks = sb.repo_files("locks");
        assert!(locks.is_empty(), "after {after}, locks remain: {locks:?}");
    };
    let summary = sb.ferry_snapshot(&src, &[]);
    assert_no_locks("ferry agent snapshot");
    let target = sb.dir("restored");
    sb.ferry_restore(&summary.snapshot_id, &target);
    assert_no_locks("ferry agent restore");
    sb.ferry(["check", "--read-data"]).ok();
    assert_no_locks("ferry check --read-data");
    sb.ferry(["snapshots"]).ok();
    assert_no_locks("ferry snapshots");
    let new_password = sb.password_file_with("new-password", "another");
    sb.ferry([
        OsStr::new("key"),
        OsStr::new("add"),
        OsStr::new("--new-password-file"),
        new_password.as_os_str(),
    ])
    .ok();
    assert_no_locks("ferry key add");
    let listed = sb.restic(["list", "locks"]).ok();
    assert!(
        listed.out().trim().is_empty(),
        "restic lists locks\n{listed}"
    );
}
