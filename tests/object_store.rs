//! ferry and restic sharing repositories in an S3-compatible store (moto), and ferry riding out
//! a store that fails: a repository ferry writes to S3 passes `restic check --read-data` and
//! restores with restic, and the reverse; through a proxy that throttles, errors, resets and
//! stalls a share of requests, every ferry command still completes and leaves a repository
//! restic accepts; and when the store is down, ferry fails with one clear line and a plain
//! re-run after the store is back completes.
//!
//! Each test starts its own moto server and skips, with a note, when moto is not installed.
//! No test asserts on durations.

mod common;

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::time::Duration;

use common::fault_proxy::{Fault, FaultPlan, FaultProxy};
use common::s3::{MotoServer, ferry_s3, restic_s3};
use common::{
    CompareOptions, Run, Sandbox, Summary, assert_trees_equal, write_mixed_tree, write_random_file,
};

/// Flags for ferry behind the faulty proxy: a short request timeout, so that a stalled request
/// is abandoned quickly, and retries enough that a 15 % fault rate cannot exhaust them.
const FAULTY_FLAGS: [&str; 4] = ["--request-timeout", "2", "--max-retries", "10"];
/// How long the proxy holds a stalled request: well past the 2 s request timeout.
const STALL: Duration = Duration::from_secs(5);
/// Flags for ferry against a store that is down: give up after two quick retries.
const IMPATIENT_FLAGS: [&str; 4] = ["--request-timeout", "2", "--max-retries", "2"];

/// A sandbox whose repository is the S3 location `url`.
fn s3_sandbox(url: &str) -> Sandbox {
    let mut sb = Sandbox::new();
    sb.repo = url.into();
    sb
}

/// `ferry agent snapshot SRC --json FLAGS...` as arguments.
fn snapshot_args(src: &Path, flags: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["agent".into(), "snapshot".into(), src.into()];
    args.push("--json".into());
    args.extend(flags.iter().map(OsString::from));
    args
}

/// `ferry agent restore latest --target TARGET FLAGS...` as arguments.
fn restore_args(target: &Path, flags: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["agent", "restore", "latest", "--target"]
        .into_iter()
        .map(OsString::from)
        .collect();
    args.push(target.into());
    args.extend(flags.iter().map(OsString::from));
    args
}

/// `args` followed by `flags`.
fn with_flags<'a>(args: &[&'a str], flags: &[&'a str]) -> Vec<&'a str> {
    args.iter().chain(flags).copied().collect()
}

/// A ferry snapshot over S3, asserting success; returns its summary.
#[track_caller]
fn ferry_snapshot_s3(sb: &Sandbox, src: &Path, flags: &[&str], env: &[(&str, &str)]) -> Summary {
    let run = ferry_s3(sb, snapshot_args(src, flags), env).ok();
    run.summary()
}

/// Asserts that a failed command printed exactly one line on stderr, a `ferry:` error that
/// names the store (its endpoint and bucket).
#[track_caller]
fn assert_one_clear_error(run: &Run, endpoint: &str, bucket: &str) {
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one error line on stderr\n{run}"
    );
    let line = lines[0];
    eprintln!("{}: {line}", run.what);
    assert!(
        line.starts_with("ferry: "),
        "expected a ferry: error line\n{run}"
    );
    let host_port = endpoint.trim_start_matches("http://");
    assert!(
        line.contains(host_port) && line.contains(bucket),
        "the error line does not name the store {endpoint} (bucket {bucket})\n{run}"
    );
}

#[test]
fn ferry_repository_in_s3_passes_restic_check_and_restores_with_restic() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    moto.create_bucket("ferry-a");
    let sb = s3_sandbox(&moto.url("ferry-a", "backups/vol-1"));
    let src = sb.dir("src");
    write_mixed_tree(&src, 21);

    ferry_s3(&sb, ["init"], &[]).ok();
    let summary = ferry_snapshot_s3(&sb, &src, &[], &[]);

    let listed = restic_s3(&sb, ["snapshots", "--json"]).ok().json();
    assert_eq!(
        listed[0]["id"],
        summary.snapshot_id.as_str(),
        "restic lists {listed}"
    );
    restic_s3(&sb, ["check", "--read-data"]).ok();
    let target = sb.dir("restored-by-restic");
    restic_s3(
        &sb,
        [
            OsStr::new("restore"),
            OsStr::new("latest"),
            OsStr::new("--target"),
            target.as_os_str(),
        ],
    )
    .ok();
    assert_trees_equal(&src, &target, &CompareOptions::restic_0_14());
}

#[test]
fn ferry_accepts_an_s3_url_with_an_endpoint_flag() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    moto.create_bucket("ferry-b");
    let sb = s3_sandbox("s3://ferry-b/object-store/form");
    let endpoint = moto.endpoint();
    let flags = ["--s3-endpoint", endpoint.as_str()];
    let src = sb.dir("src");
    write_mixed_tree(&src, 22);

    ferry_s3(&sb, with_flags(&["init"], &flags), &[]).ok();
    ferry_snapshot_s3(&sb, &src, &flags, &[]);
    let target = sb.dir("restored-by-ferry");
    ferry_s3(&sb, restore_args(&target, &flags), &[]).ok();
    assert_trees_equal(&src, &target, &CompareOptions::exact());

    // The same objects, named in restic's form, are a repository restic accepts.
    let restic_view = s3_sandbox(&moto.url("ferry-b", "object-store/form"));
    restic_s3(&restic_view, ["check", "--read-data"]).ok();
}

#[test]
fn restic_repository_in_s3_passes_ferry_check_and_restores_with_ferry() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    moto.create_bucket("restic-c");
    let sb = s3_sandbox(&moto.url("restic-c", "made/by/restic"));
    let src = sb.dir("src");
    write_mixed_tree(&src, 23);

    restic_s3(&sb, ["init"]).ok();
    let mut backup = sb.restic_cmd(&sb.password_file, ["backup", "--json", "."]);
    common::s3::s3_env(&mut backup);
    backup.current_dir(&src);
    common::run(backup).ok();

    ferry_s3(&sb, ["check", "--read-data"], &[]).ok();
    let target = sb.dir("restored-by-ferry");
    ferry_s3(&sb, restore_args(&target, &[]), &[]).ok();
    assert_trees_equal(&src, &target, &CompareOptions::exact());
}

#[test]
fn ferry_completes_every_command_through_a_faulty_store() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    moto.create_bucket("faulty");
    // With this seed the proxy's 4th fault falls on its 24th request, and the kinds take turns,
    // so all four kinds occur long before the ~70 requests these commands make without faults.
    let proxy = FaultProxy::start(moto.addr(), FaultPlan::mixed(0.15, 0x5EED_F00D, STALL));
    let sb = s3_sandbox(&proxy.url("faulty", "repo"));
    let src = sb.dir("src");
    write_mixed_tree(&src, 24);
    let debug = [("FERRY_LOG", "debug")];

    let mut stderr = String::new();
    stderr += &ferry_s3(&sb, with_flags(&["init"], &FAULTY_FLAGS), &debug)
        .ok()
        .stderr;
    let snapshot = ferry_s3(&sb, snapshot_args(&src, &FAULTY_FLAGS), &debug).ok();
    snapshot.summary();
    stderr += &snapshot.stderr;
    let target = sb.dir("restored");
    stderr += &ferry_s3(&sb, restore_args(&target, &FAULTY_FLAGS), &debug)
        .ok()
        .stderr;
    stderr += &ferry_s3(
        &sb,
        with_flags(&["check", "--read-data"], &FAULTY_FLAGS),
        &debug,
    )
    .ok()
    .stderr;
    assert_trees_equal(&src, &target, &CompareOptions::exact());

    // The test is only worth something if every kind of fault really happened.
    let counts = proxy.counts();
    eprintln!("fault proxy: {counts:?}");
    for kind in Fault::ALL {
        assert!(
            counts.of(kind) > 0,
            "the proxy never injected {kind:?}; counts {counts:?}"
        );
    }
    // A retry line names the operation and the object key, e.g.
    // "write repo/data/ab/ab…  failed (…); retry 1 of 10 in 180 ms".
    let names_a_key = |line: &str| {
        ["write", "read", "read range of", "stat", "list", "remove"]
            .iter()
            .any(|op| line.contains(&format!("{op} repo/")))
    };
    let retry_line = stderr
        .lines()
        .find(|l| names_a_key(l) && l.contains(" failed (") && l.contains("; retry "));
    eprintln!("a retry line: {retry_line:?}");
    assert!(
        retry_line.is_some(),
        "no debug line reports a retry of a request naming its object key; counts {counts:?}\n\
         stderr:\n{stderr}"
    );

    // restic, talking to the store directly, accepts what ferry wrote through the faults.
    let direct = s3_sandbox(&moto.url("faulty", "repo"));
    restic_s3(&direct, ["check", "--read-data"]).ok();
}

#[test]
fn store_down_fails_with_one_clear_line_and_a_rerun_completes() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    moto.create_bucket("down");
    let proxy = FaultProxy::start(moto.addr(), FaultPlan::none());
    let endpoint = proxy.endpoint();
    let sb = s3_sandbox(&proxy.url("down", "repo"));
    let src = sb.dir("src");
    write_mixed_tree(&src, 25);

    proxy.set_down(true);
    let init = ferry_s3(&sb, with_flags(&["init"], &IMPATIENT_FLAGS), &[]).code(1);
    assert_one_clear_error(&init, &endpoint, "down");
    proxy.set_down(false);
    ferry_s3(&sb, with_flags(&["init"], &IMPATIENT_FLAGS), &[]).ok();

    proxy.set_down(true);
    let failed = ferry_s3(&sb, snapshot_args(&src, &IMPATIENT_FLAGS), &[]).code(1);
    assert_one_clear_error(&failed, &endpoint, "down");
    assert!(
        proxy.counts().refused_while_down > 0,
        "the proxy refused nothing while down: {:?}",
        proxy.counts()
    );

    // The store is back: the same command completes, with no repair in between.
    proxy.set_down(false);
    ferry_snapshot_s3(&sb, &src, &IMPATIENT_FLAGS, &[]);
    let direct = s3_sandbox(&moto.url("down", "repo"));
    restic_s3(&direct, ["check", "--read-data"]).ok();
    let target = sb.dir("restored");
    restic_s3(
        &direct,
        [
            OsStr::new("restore"),
            OsStr::new("latest"),
            OsStr::new("--target"),
            target.as_os_str(),
        ],
    )
    .ok();
    assert_trees_equal(&src, &target, &CompareOptions::restic_0_14());
}

#[test]
fn store_going_down_mid_snapshot_fails_and_a_rerun_completes() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    moto.create_bucket("midrun");
    let proxy = FaultProxy::start(moto.addr(), FaultPlan::none());
    let endpoint = proxy.endpoint();
    let sb = s3_sandbox(&proxy.url("midrun", "repo"));
    let src = sb.dir("src");
    write_mixed_tree(&src, 26);
    // Enough incompressible data for several packs, so that the store can fail between them.
    write_random_file(&src.join("large/more-random.bin"), 40 << 20, 26);
    ferry_s3(&sb, with_flags(&["init"], &IMPATIENT_FLAGS), &[]).ok();

    // The store goes away right after the first pack has been stored.
    proxy.go_down_after("PUT /midrun/repo/data/", 1);
    let failed = ferry_s3(&sb, snapshot_args(&src, &IMPATIENT_FLAGS), &[]).code(1);
    assert!(
        proxy.is_down(),
        "the snapshot stored no pack before failing\n{failed}"
    );
    assert_one_clear_error(&failed, &endpoint, "midrun");

    proxy.set_down(false);
    let summary = ferry_snapshot_s3(&sb, &src, &IMPATIENT_FLAGS, &[]);
    let direct = s3_sandbox(&moto.url("midrun", "repo"));
    // The failed run could not remove its lock from a store that was down; a stale lock is
    // what any interrupted client leaves, so restic checks without locking.
    restic_s3(&direct, ["--no-lock", "check", "--read-data"]).ok();
    let target = sb.dir("restored");
    ferry_s3(&sb, restore_args(&target, &[]), &[]).ok();
    assert_trees_equal(&src, &target, &CompareOptions::exact());
    let listed = restic_s3(&direct, ["--no-lock", "snapshots", "--json"])
        .ok()
        .json();
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(1),
        "only the completed snapshot exists: {listed}"
    );
    assert_eq!(listed[0]["id"], summary.snapshot_id.as_str());
}
