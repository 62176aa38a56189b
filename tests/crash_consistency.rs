//! Crash consistency: a `ferry agent snapshot` or `ferry agent restore` killed with SIGKILL at
//! any point loses nothing and corrupts nothing, and running it again completes the work.
//!
//! Each test runs its operation once undisturbed to learn how long it takes (the snapshot test
//! keeps learning from its re-runs), then kills it in every trial after a delay that a seeded
//! PRNG draws from an even spread over that time (one stratum per trial), from "just started"
//! to "nearly done"; eight more snapshot kills aim at the end, where the index and the snapshot
//! are written: four in the last 15 % of the run, and four the moment the first index file, or
//! the snapshot file, has been stored. Every delay is valid: what is
//! asserted after each kill holds wherever it landed, so pass or fail never depends on timing;
//! the timing only decides how well the phases are covered, which each trial prints (run with
//! `--nocapture`). `FERRY_CRASH_SEED` repeats a run's delays, `FERRY_CRASH_TRIALS` changes the
//! number of trials (20 per operation).
//!
//! After a killed snapshot: `restic check` (without a lock, since the killed process's lock is
//! still there) reports nothing but packs no index refers to, which restic itself calls
//! harmless; the re-run completes and removes the dead process's lock (it was written on this
//! machine during this boot by a process that is gone: see `ferry::lockfile`); `restic check
//! --read-data`, which takes an exclusive lock and so also proves the lock gone, passes; and
//! `restic restore` of the new snapshot equals the source in content and metadata. After a
//! killed restore: the re-run completes, the target equals the snapshot's source and no
//! `.ferry-restore-tmp.*` file is left. The repositories are local directories in temporary
//! directories; the source trees are about 100 MiB: 300 small files, 12 random files of 4–12 MiB,
//! zeros, links, modes, xattrs and nanosecond times.
//!
//! This file owns only these campaigns; locking as such is tested in `tests/locks.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{CompareOptions, Rng, Run, Sandbox, assert_trees_equal, set_mtime, write_random_file};

/// Trials per operation unless `FERRY_CRASH_TRIALS` says otherwise.
const DEFAULT_TRIALS: usize = 20;

/// The path every snapshot records, so that both versions of the tree share their parents.
const AS_PATH: &str = "/data";

/// The labels of every snapshot: path and host.
const LABELS: [&str; 4] = ["--as-path", AS_PATH, "--host", "crash"];

fn trials() -> usize {
    std::env::var("FERRY_CRASH_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(DEFAULT_TRIALS)
}

/// The PRNG seed: `FERRY_CRASH_SEED`, else the clock. Printed so that a run can be repeated.
fn seed(what: &str) -> u64 {
    let seed = std::env::var("FERRY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("{what}: seed {seed} (FERRY_CRASH_SEED={seed} repeats these delays)");
    seed
}

/// For trial `k` of `n` of one kind, a uniform draw from the `k`-th of `n` equal strata of
/// `[lo, hi)`, so that the draws cover the interval evenly.
fn stratum(rng: &mut Rng, lo: f64, hi: f64, k: usize, n: usize) -> f64 {
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    lo + (hi - lo) * (k as f64 + u) / n as f64
}

/// A kill delay: a [`stratum`] of `[0, duration)`.
fn delay(rng: &mut Rng, duration: Duration, k: usize, n: usize) -> Duration {
    duration.mul_f64(stratum(rng, 0.0, 1.0, k, n))
}

/// When a snapshot trial's kill comes: at a fraction of the run time, or as soon as a file of
/// the given kind (`index`, `snapshots`) has been stored.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
enum Trigger {
    At(f64),
    OnFirst(&'static str),
}

/// Extra kills of full snapshots drawn from the last 15 % of the run, where the index and the
/// snapshot are written and the lock released: a window of a few per cent that an even spread
/// alone hits rarely.
const TAIL_TRIALS: usize = 4;

// ---------------------------------------------------------------------------------------------
// The source trees
// ---------------------------------------------------------------------------------------------

/// The first version: 10 directories of 30 files of 0–48 KiB, 12 random files of 4–12 MiB
/// (90 MiB), 2 MiB of zeros, and a directory of modes, a hard-link pair, a symlink, xattrs and
/// an empty directory; every entry gets a distinct time with nanoseconds.
fn write_v1(root: &Path, seed: u64) {
    let mut rng = Rng::new(seed);
    for d in 0..10 {
        let dir = root.join(format!("dir-{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..30 {
            let size = rng.below(48 << 10) as usize;
            fs::write(dir.join(format!("file-{f:02}.dat")), rng.bytes(size)).unwrap();
        }
    }
    let big = root.join("big");
    fs::create_dir_all(&big).unwrap();
    for i in 0..12u64 {
        let mib = 4 + (i * 5) % 9;
        write_random_file(&big.join(format!("b{i:02}.bin")), mib << 20, seed ^ (i + 1));
    }
    fs::write(big.join("zeros.img"), vec![0u8; 2 << 20]).unwrap();
    let meta = root.join("meta");
    fs::create_dir_all(meta.join("empty")).unwrap();
    for (name, mode) in [
        ("exec.sh", 0o755),
        ("private.key", 0o600),
        ("group.txt", 0o640),
    ] {
        let p = meta.join(name);
        fs::write(&p, rng.bytes(1000)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
    fs::write(meta.join("link-a"), rng.bytes(5000)).unwrap();
    fs::hard_link(meta.join("link-a"), meta.join("link-b")).unwrap();
    std::os::unix::fs::symlink("../dir-0/file-00.dat", meta.join("sym")).unwrap();
    fs::write(meta.join("tagged"), b"tagged\n").unwrap();
    set_xattr(&meta.join("tagged"), "user.crash", b"v1");
    set_times(root, &mut 0);
}

/// Turns a copy of the first version into the second: parts of big files rewritten, one
/// appended to, one removed and one added, small files removed and added, a mode, an xattr and
/// a file replaced by a directory.
fn mutate_to_v2(root: &Path, seed: u64) {
    let mut rng = Rng::new(seed ^ 0x5EED);
    let big = root.join("big");
    let f = fs::OpenOptions::new()
        .write(true)
        .open(big.join("b01.bin"))
        .unwrap();
    f.write_all_at(&rng.bytes(1 << 20), 2 << 20).unwrap();
    let f = fs::OpenOptions::new()
        .append(true)
        .open(big.join("b03.bin"))
        .unwrap();
    f.write_all_at(&rng.bytes(1 << 20), f.metadata().unwrap().len())
        .unwrap();
    fs::remove_file(big.join("b05.bin")).unwrap();
    write_random_file(&big.join("new.bin"), 6 << 20, seed ^ 0xABC);
    let d3 = root.join("dir-3");
    for f in 0..10 {
        fs::remove_file(d3.join(format!("file-{f:02}.dat"))).unwrap();
    }
    for f in 0..20 {
        let size = rng.below(48 << 10) as usize;
        fs::write(d3.join(format!("new-{f:02}.dat")), rng.bytes(size)).unwrap();
    }
    let meta = root.join("meta");
    fs::set_permissions(meta.join("private.key"), fs::Permissions::from_mode(0o644)).unwrap();
    set_xattr(&meta.join("tagged"), "user.crash", b"v2");
    fs::remove_file(meta.join("group.txt")).unwrap();
    fs::create_dir(meta.join("group.txt")).unwrap();
    fs::write(meta.join("group.txt/inside"), b"now a directory\n").unwrap();
    let mut counter = 10_000;
    for p in [
        big.join("b01.bin"),
        big.join("b03.bin"),
        big.join("new.bin"),
        meta.join("group.txt/inside"),
        meta.join("group.txt"),
        meta.clone(),
        d3.clone(),
        big,
    ] {
        counter += 1;
        set_mtime(
            &p,
            1_600_000_000 + counter * 61,
            counter * 7_654_321 % 1_000_000_000,
        );
    }
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    match xattr::set(path, name, value) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {}
        Err(e) => panic!("setxattr {name} on {}: {e}", path.display()),
    }
}

/// Distinct times with nanoseconds on every entry, children before their directory.
fn set_times(path: &Path, counter: &mut i64) {
    let meta = fs::symlink_metadata(path).unwrap();
    if meta.is_dir() {
        let mut children: Vec<PathBuf> = fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        children.sort();
        for child in children {
            set_times(&child, counter);
        }
    }
    *counter += 1;
    set_mtime(
        path,
        1_500_000_000 + *counter * 3_607,
        (*counter * 123_456_789 + 7) % 1_000_000_000,
    );
}

/// `cp -a`: a copy with modes, times, xattrs and hard links.
fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

fn remove_tree(path: &Path) {
    match fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", path.display()),
    }
}

/// Every path under `root`, relative, files only.
fn files_under(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out
}

fn is_restore_temp(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(".ferry-restore-tmp."))
}

// ---------------------------------------------------------------------------------------------
// Running and killing
// ---------------------------------------------------------------------------------------------

/// Runs `cmd` and SIGKILLs it after `delay`, unless it ended before. Returns whether it was
/// killed, and its exit code when it was not.
fn run_and_kill(cmd: Command, delay: Duration) -> (bool, Option<i32>) {
    run_and_kill_when(cmd, |elapsed| elapsed >= delay)
}

/// Runs `cmd` and SIGKILLs it as soon as `now(elapsed)` says so (asked every millisecond),
/// unless it ended before.
fn run_and_kill_when(
    mut cmd: Command,
    mut now: impl FnMut(Duration) -> bool,
) -> (bool, Option<i32>) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("start ferry");
    let ended = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if now(started.elapsed()) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    if ended.is_none() {
        child.kill().unwrap();
    }
    let status = child.wait().unwrap();
    match ended {
        Some(s) => (false, s.code()),
        None => (status.signal() == Some(libc::SIGKILL), status.code()),
    }
}

/// Asserts that a `restic check` succeeded and printed nothing but its progress, its verdict and
/// the one finding restic calls harmless: packs that no index refers to. Returns how many such
/// packs it reported.
#[track_caller]
fn assert_check_clean(run: &Run) -> usize {
    assert_eq!(run.code, Some(0), "restic check failed\n{run}");
    let mut unreferenced = 0;
    let text = format!("{}\n{}", run.out(), run.stderr);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let benign = matches!(
            line,
            "create exclusive lock for repository"
                | "load indexes"
                | "check all packs"
                | "check snapshots, trees and blobs"
                | "read all data"
                | "no errors were found"
                | "This is non-critical, you can run `restic prune` to correct this."
        ) || line.starts_with('[')
            || line.ends_with(
                "additional files were found in the repo, which likely contain duplicate data.",
            );
        if line.starts_with("pack ") && line.ends_with(": not referenced in any index") {
            unreferenced += 1;
        } else {
            assert!(
                benign,
                "restic check printed an unexpected line: {line:?}\n{run}"
            );
        }
    }
    unreferenced
}

/// The files of a repository directory by kind (`data`, `index`, …), valid object names only;
/// and how many other files (a killed write's temporary file) there are.
fn repo_contents(repo: &Path) -> (BTreeMap<&'static str, BTreeSet<PathBuf>>, usize) {
    let mut by_kind = BTreeMap::new();
    let mut other = 0;
    for kind in ["data", "index", "snapshots", "locks"] {
        let mut set = BTreeSet::new();
        for f in files_under(&repo.join(kind)) {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            if common::is_full_id(&name) {
                set.insert(f);
            } else {
                other += 1;
            }
        }
        by_kind.insert(kind, set);
    }
    (by_kind, other)
}

/// Which part of a snapshot a kill interrupted, as the repository shows it.
fn snapshot_phase(
    killed: bool,
    before: &BTreeMap<&'static str, BTreeSet<PathBuf>>,
    repo: &Path,
) -> (String, String) {
    let (now, partial) = repo_contents(repo);
    let new = |kind: &str| now[kind].difference(&before[kind]).count();
    let (packs, indexes, snapshots, locks) = (
        new("data"),
        new("index"),
        new("snapshots"),
        now["locks"].len(),
    );
    let phase = if !killed {
        "completed before the kill"
    } else if snapshots > 0 {
        if locks > 0 {
            "snapshot written, lock not released"
        } else {
            "after releasing the lock"
        }
    } else if indexes > 0 {
        "index written, snapshot not"
    } else if packs > 0 || partial > 0 {
        "packing and uploading"
    } else if locks > 0 {
        "walking and chunking, nothing stored yet"
    } else {
        "opening, before the lock"
    };
    let detail = format!(
        "{packs} packs, {partial} partial files, {indexes} index, {snapshots} snapshot, {locks} lock"
    );
    (phase.to_string(), detail)
}

fn snapshot_args(src: &Path) -> Vec<&OsStr> {
    let mut args = vec![OsStr::new("agent"), OsStr::new("snapshot"), src.as_os_str()];
    args.extend(LABELS.iter().map(OsStr::new));
    args
}

/// Replaces the sandbox's repository by a copy of `template`.
fn fresh_repo(sb: &Sandbox, template: &Path) {
    remove_tree(&sb.repo);
    copy_tree(template, &sb.repo);
}

#[test]
fn snapshot_killed_at_random_points_leaves_a_repository_that_checks_and_a_rerun_completes() {
    let started = Instant::now();
    let sb = Sandbox::new();
    let seed = seed("snapshot campaign");
    let mut rng = Rng::new(seed);
    let src1 = sb.root().join("src-v1");
    write_v1(&src1, 1);
    let src2 = sb.root().join("src-v2");
    copy_tree(&src1, &src2);

    // Two starting points: an empty repository (a full snapshot of v1), and one holding a
    // snapshot of the tree that then becomes v2 (an incremental snapshot with a parent).
    sb.init_with_ferry();
    let empty = sb.root().join("template-empty");
    copy_tree(&sb.repo, &empty);
    sb.ferry_snapshot(&src2, &LABELS);
    let with_parent = sb.root().join("template-parent");
    copy_tree(&sb.repo, &with_parent);
    mutate_to_v2(&src2, 1);

    struct Kind<'a> {
        name: &'static str,
        template: &'a Path,
        src: &'a Path,
        /// How long an undisturbed run takes now: the latest whole re-run, or less when a run
        /// ended before its kill.
        estimate: Duration,
        trials: Vec<usize>,
        before: BTreeMap<&'static str, BTreeSet<PathBuf>>,
    }
    let n = trials();
    let mut kinds = Vec::new();
    for (name, template, src) in [
        ("full", &empty, &src1),
        ("incremental", &with_parent, &src2),
    ] {
        // One undisturbed run, for its duration.
        fresh_repo(&sb, template);
        let t = Instant::now();
        sb.ferry_snapshot(src, &LABELS);
        let estimate = t.elapsed();
        eprintln!(
            "{name} snapshot: {:.0} ms undisturbed",
            estimate.as_secs_f64() * 1e3
        );
        let (before, _) = repo_contents(template);
        kinds.push(Kind {
            name,
            template,
            src,
            estimate,
            trials: Vec::new(),
            before,
        });
    }
    // Two full snapshots for each incremental one.
    for t in 0..n {
        kinds[usize::from(t % 3 == 2)].trials.push(t);
    }
    // Each kill lands at a fraction of the kind's run time, which the re-runs keep measuring.
    let mut schedule = Vec::new();
    for (k, kind) in kinds.iter().enumerate() {
        for (j, &t) in kind.trials.iter().enumerate() {
            let fraction = stratum(&mut rng, 0.0, 1.0, j, kind.trials.len());
            schedule.push((t, k, Trigger::At(fraction)));
        }
    }
    for j in 0..TAIL_TRIALS {
        schedule.push((
            n + j,
            0,
            Trigger::At(stratum(&mut rng, 0.85, 1.0, j, TAIL_TRIALS)),
        ));
    }
    // And kills the moment the index, then the snapshot, has been stored.
    for (j, kind) in ["index", "snapshots", "index", "snapshots"]
        .into_iter()
        .enumerate()
    {
        schedule.push((n + TAIL_TRIALS + j, 0, Trigger::OnFirst(kind)));
    }
    schedule.sort_by_key(|s| s.0);

    let restored = sb.root().join("restored");
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    let mut total_unreferenced = 0;
    let kills = schedule.len();
    for (t, k, trigger) in schedule {
        let kind = &kinds[k];
        let estimate = kind.estimate;
        fresh_repo(&sb, kind.template);
        let cmd = sb.ferry_cmd(snapshot_args(kind.src));
        let (mut delay, mut when) = (Duration::ZERO, String::new());
        let (killed, code) = match trigger {
            Trigger::At(fraction) => {
                delay = estimate.mul_f64(fraction);
                when = format!("{fraction:.2} of {:.0} ms", estimate.as_secs_f64() * 1e3);
                run_and_kill(cmd, delay)
            }
            Trigger::OnFirst(dir) => {
                let dir_path = sb.repo.join(dir);
                let known = kind.before[dir].len();
                run_and_kill_when(cmd, |elapsed| {
                    let stored = fs::read_dir(&dir_path).map_or(0, |d| {
                        d.flatten()
                            .filter(|e| common::is_full_id(&e.file_name().to_string_lossy()))
                            .count()
                    });
                    delay = elapsed;
                    when = format!("the first new file in {dir}/");
                    stored > known
                })
            }
        };
        if !killed {
            assert_eq!(
                code,
                Some(0),
                "trial {t}: the snapshot ended on its own but failed"
            );
        }
        let (phase, detail) = snapshot_phase(killed, &kind.before, &sb.repo);
        eprintln!(
            "trial {t:02} {:<11} kill after {:>5.0} ms ({when}): {phase} ({detail})",
            kind.name,
            delay.as_secs_f64() * 1e3,
        );
        *phases.entry(phase).or_default() += 1;

        // The repository as the kill left it, lock and all.
        let unreferenced = assert_check_clean(&sb.restic(["--no-lock", "check"]));
        total_unreferenced += unreferenced;
        let (left, _) = repo_contents(&sb.repo);
        let left_locks = left["locks"].len();
        // A re-run is a whole undisturbed run unless the killed one stored its snapshot first,
        // which then serves as the parent.
        let whole = left["snapshots"].len() == kind.before["snapshots"].len();

        // The re-run completes and removes the dead process's lock.
        let rerun = Instant::now();
        let summary = sb.ferry_snapshot(kind.src, &LABELS);
        if whole {
            kinds[k].estimate = rerun.elapsed();
        }
        if !killed {
            kinds[k].estimate = kinds[k].estimate.min(delay);
        }
        let kind = &kinds[k];
        let locks = repo_contents(&sb.repo).0["locks"].clone();
        assert!(
            locks.is_empty(),
            "trial {t}: the re-run left locks ({left_locks} before it): {locks:?}"
        );
        // With an exclusive lock, which the dead lock would have prevented.
        assert_check_clean(&sb.restic(["check", "--read-data"]));
        remove_tree(&restored);
        sb.restic_restore(&summary.snapshot_id, &restored);
        assert_trees_equal(kind.src, &restored, &CompareOptions::restic_0_14());
    }
    remove_tree(&restored);
    eprintln!(
        "snapshot campaign: {kills} kills, phases {phases:?}, {total_unreferenced} unreferenced packs \
         reported in all, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn restore_killed_at_random_points_is_completed_by_a_rerun() {
    let started = Instant::now();
    let sb = Sandbox::new();
    let seed = seed("restore campaign");
    let mut rng = Rng::new(seed.rotate_left(17));
    let src1 = sb.root().join("src-v1");
    write_v1(&src1, 2);
    let src2 = sb.root().join("src-v2");
    copy_tree(&src1, &src2);
    mutate_to_v2(&src2, 2);
    sb.init_with_ferry();
    let id1 = sb.ferry_snapshot(&src1, &LABELS).snapshot_id;
    let id2 = sb.ferry_snapshot(&src2, &LABELS).snapshot_id;
    let versions = [(&id1, &src1), (&id2, &src2)];
    let target = sb.root().join("target");
    let restore = |id: &str| {
        sb.ferry_cmd([
            OsStr::new("agent"),
            OsStr::new("restore"),
            OsStr::new(id),
            OsStr::new("--target"),
            target.as_os_str(),
            OsStr::new("--delete"),
        ])
    };

    // Undisturbed: into an empty target, and from one version to the other.
    let t = Instant::now();
    common::run_ferry(restore(&id1)).ok();
    let into_empty = t.elapsed();
    assert_trees_equal(&src1, &target, &CompareOptions::exact());
    let t = Instant::now();
    common::run_ferry(restore(&id2)).ok();
    let switching = t.elapsed();
    assert_trees_equal(&src2, &target, &CompareOptions::exact());
    eprintln!(
        "restore: {:.0} ms into an empty target, {:.0} ms from v1 to v2",
        into_empty.as_secs_f64() * 1e3,
        switching.as_secs_f64() * 1e3
    );

    // Every fourth trial starts from an empty target; the others find the other version there.
    let n = trials();
    let empty_trials: Vec<usize> = (0..n).filter(|t| t % 4 == 0).collect();
    let switch_trials: Vec<usize> = (0..n).filter(|t| t % 4 != 0).collect();
    let mut delays = BTreeMap::new();
    for (list, d) in [(&empty_trials, into_empty), (&switch_trials, switching)] {
        for (j, &t) in list.iter().enumerate() {
            delays.insert(t, delay(&mut rng, d, j, list.len()));
        }
    }
    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    for (t, delay) in delays {
        let (id, src) = versions[t % 2];
        let from_empty = t % 4 == 0;
        if from_empty {
            remove_tree(&target);
            fs::create_dir(&target).unwrap();
        }
        let (killed, code) = run_and_kill(restore(id), delay);
        if !killed {
            assert_eq!(
                code,
                Some(0),
                "trial {t}: the restore ended on its own but failed"
            );
        }
        let files = files_under(&target);
        let temps = files.iter().filter(|p| is_restore_temp(p)).count();
        let locks = sb.lock_ids().len();
        let phase = match (killed, temps, locks) {
            (false, _, _) => "completed before the kill",
            (true, 0, 0) => "before the lock, or after releasing it",
            (true, 0, _) if files.is_empty() => "planning",
            (true, 0, _) => "planning, comparing or finishing (no temporary file)",
            (true, _, _) => "writing temporary files",
        };
        *phases.entry(phase).or_default() += 1;
        eprintln!(
            "trial {t:02} {:<10} kill after {:>5.0} ms: {phase} ({} files, {temps} temporary, \
             {locks} lock)",
            if from_empty { "empty" } else { "switching" },
            delay.as_secs_f64() * 1e3,
            files.len()
        );

        common::run_ferry(restore(id)).ok();
        let left: Vec<_> = files_under(&target)
            .into_iter()
            .filter(|p| is_restore_temp(p))
            .collect();
        assert!(left.is_empty(), "trial {t}: temporary files left: {left:?}");
        assert_trees_equal(src, &target, &CompareOptions::exact());
        assert!(sb.lock_ids().is_empty(), "trial {t}: the re-run left locks");
    }
    // The repository took no harm either (restore only reads it), and no dead lock is left.
    assert_check_clean(&sb.restic(["check"]));
    eprintln!(
        "restore campaign: {n} kills, phases {phases:?}, {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
