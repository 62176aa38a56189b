//! Bounded memory: the peak resident set of `ferry agent snapshot`, and of the restore and the
//! `restic check` that follow it, on the shapes that make a backup tool hold the most at once:
//! one directory of a million entries (one tree blob of a million nodes), two hundred
//! directories of a thousand entries, and a 20 GiB sparse file. Each peak is the child's own
//! `ru_maxrss` as `wait4` reports it, which is exact, and is held to a stated bound.
//!
//! The files of the single directory are empty, so that what is measured is the tree of a
//! million nodes. The files of the many directories hold a few distinct bytes each, so that
//! every entry is also a data blob: the index, the set of blobs claimed by the run and the
//! content lists are in play (those files take a 4 KiB block each: about 0.8 GiB of disk at
//! 200,000, and the source is removed before the restore). Snapshots run with `--workers 2`, so that the figures
//! do not depend on the machine's cores.
//! Nothing here asserts a duration: wall times are printed for the record only, and so is
//! `restic check`'s peak, which is restic's business.
//!
//! Scale: `FERRY_BOUNDED_MEMORY_ENTRIES` (default 1,000,000) sets the number of entries of the
//! single directory, `FERRY_BOUNDED_MEMORY_NESTED_ENTRIES` (default 200,000) those spread over
//! directories, and `FERRY_BOUNDED_MEMORY_SPARSE_GIB` (default 20) the sparse file's size; the
//! bounds scale with them. At these sizes the three tests take about three minutes in release
//! on two cores; at a million nested entries, about ten and 8 GiB of disk.

mod common;

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Rng, Run, Sandbox, allocated_bytes, is_full_id};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What any ferry command may hold before it holds a single entry: the runtime, the scrypt
/// work area of the key file (32 MiB at restic's parameters), a pack being built, buffers.
/// An empty snapshot peaks at about 46 MiB.
const BASE: u64 = 64 * MIB;

/// The snapshot's allowance per entry of one huge directory. Measured: about 640 bytes of
/// empty files (the walker's nodes at 304 bytes each plus their names and owner strings, then
/// the tree's JSON at ~240 bytes per entry; the nodes are freed before the JSON is sealed, and
/// the seal checks its work without a second copy of the JSON). A million one-line files, each
/// its own blob, peak at about 920 MiB.
const SNAPSHOT_FLAT_PER_ENTRY: u64 = 800;

/// The snapshot's allowance per entry when the entries are spread over directories of a
/// thousand: only the index, the claimed-blob set and the pack records grow with the count.
/// Measured: about 200 bytes.
const SNAPSHOT_NESTED_PER_ENTRY: u64 = 320;

/// The restore's allowance per file: its plan holds every file to restore with its node, path
/// and blob uses. Measured: about 700 bytes for empty files, 1.1 KiB for one-line files.
const RESTORE_PER_FILE: u64 = 1536;

/// The bound for a snapshot or a restore of one sparse file, whatever its size.
const SPARSE_BOUND: u64 = 150 * MIB;

/// Bytes of real data written at each of the sparse file's data offsets.
const SPARSE_DATA: usize = 3 << 20;

/// Entries of the single directory (`FERRY_BOUNDED_MEMORY_ENTRIES`, default 1,000,000).
fn entries() -> u64 {
    env_number("FERRY_BOUNDED_MEMORY_ENTRIES", 1_000_000)
}

/// Entries spread over directories of a thousand (`FERRY_BOUNDED_MEMORY_NESTED_ENTRIES`,
/// default 200,000).
fn nested_entries() -> u64 {
    env_number("FERRY_BOUNDED_MEMORY_NESTED_ENTRIES", 200_000)
}

/// The sparse file's size in GiB (`FERRY_BOUNDED_MEMORY_SPARSE_GIB`, default 20).
fn sparse_gib() -> u64 {
    env_number("FERRY_BOUNDED_MEMORY_SPARSE_GIB", 20)
}

fn env_number(var: &str, default: u64) -> u64 {
    match std::env::var(var) {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|e| panic!("{var}={v:?} is not a positive number: {e}")),
        Err(_) => default,
    }
}

/// A finished command with its peak resident set.
struct Measured {
    run: Run,
    peak: u64,
    wall: Duration,
}

impl Measured {
    /// Prints the figures for the record (visible with `--nocapture`).
    fn report(&self, label: &str) {
        eprintln!(
            "{label}: peak RSS {:.1} MiB, wall {:.1} s",
            self.peak as f64 / MIB as f64,
            self.wall.as_secs_f64()
        );
    }

    #[track_caller]
    fn ok(self) -> Self {
        assert_eq!(self.run.code, Some(0), "expected success\n{}", self.run);
        self
    }

    #[track_caller]
    fn assert_peak_below(&self, bound: u64, what: &str) {
        assert!(
            self.peak <= bound,
            "{what} peaked at {:.1} MiB of resident memory, over its bound of {:.1} MiB\n{}",
            self.peak as f64 / MIB as f64,
            bound as f64 / MIB as f64,
            self.run
        );
    }
}

/// Runs `cmd` with its output in files under `dir` and returns its exit code, output and peak
/// resident set (the child's own `ru_maxrss`, which `wait4` reports when it reaps the child).
fn measure(mut cmd: Command, dir: &Path, label: &str) -> Measured {
    let what = format!("{cmd:?}");
    let out_path = dir.join(format!("{label}.stdout"));
    let err_path = dir.join(format!("{label}.stderr"));
    let out = File::create(&out_path).expect("create the stdout file");
    let err = File::create(&err_path).expect("create the stderr file");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let start = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is a plain C struct of integers and `timeval`s, for which all-zero bytes
    // are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are live, aligned, writable locals of the types wait4
        // writes; `pid` is this test's own child, which nothing else reaps (the `Child` handle
        // is never waited on, and dropping it neither waits nor kills).
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            break;
        }
        let e = io::Error::last_os_error();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted, "wait4 {what}: {e}");
    }
    let wall = start.elapsed();
    drop(child);
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let run = Run {
        what,
        code,
        stdout: fs::read(&out_path).expect("read the stdout file"),
        stderr: String::from_utf8_lossy(&fs::read(&err_path).expect("read the stderr file"))
            .into_owned(),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "the command panicked\n{run}"
    );
    // Linux reports ru_maxrss in KiB.
    let peak = u64::try_from(usage.ru_maxrss).expect("ru_maxrss is not negative") * 1024;
    Measured { run, peak, wall }
}

/// Whether files hold a line of their own or nothing.
#[derive(Clone, Copy)]
enum Content {
    Empty,
    OneLine,
}

/// The content of entry `i`: nothing, or a few bytes of its own so that each file is a
/// distinct blob.
fn content(kind: Content, i: u64) -> String {
    match kind {
        Content::Empty => String::new(),
        Content::OneLine => format!("{i}\n"),
    }
}

/// Writes `count` files named `f0000000`… with [`content`] `first..first + count` into `dir`.
fn write_files(dir: &Path, kind: Content, first: u64, count: u64) {
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    for i in first..first + count {
        let path = dir.join(format!("f{i:07}"));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        f.write_all(content(kind, i).as_bytes())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

/// Asserts that `dir` holds exactly the files [`write_files`] wrote for `first..first + count`.
#[track_caller]
fn assert_files(dir: &Path, kind: Content, first: u64, count: u64) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").file_name())
        .collect();
    names.sort();
    assert_eq!(
        names.len() as u64,
        count,
        "{} holds the wrong number of entries",
        dir.display()
    );
    for (i, name) in (first..).zip(&names) {
        assert_eq!(
            name,
            OsStr::new(&format!("f{i:07}")),
            "in {}",
            dir.display()
        );
        let path = dir.join(name);
        let got = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        assert_eq!(
            got,
            content(kind, i).as_bytes(),
            "content of {}",
            path.display()
        );
    }
}

/// `ferry agent snapshot SRC --json --workers 2`, measured; returns the run and the snapshot id.
fn snapshot(sb: &Sandbox, src: &Path, label: &str) -> (Measured, String) {
    let cmd = sb.ferry_cmd([
        OsStr::new("agent"),
        OsStr::new("snapshot"),
        src.as_os_str(),
        OsStr::new("--json"),
        OsStr::new("--workers"),
        OsStr::new("2"),
    ]);
    let m = measure(cmd, sb.root(), label).ok();
    let id = m.run.summary().snapshot_id;
    assert!(is_full_id(&id), "bad snapshot id {id:?}\n{}", m.run);
    (m, id)
}

/// `ferry agent restore ID --target TARGET`, measured.
fn restore(sb: &Sandbox, id: &str, target: &Path, label: &str) -> Measured {
    let cmd = sb.ferry_cmd([
        OsStr::new("agent"),
        OsStr::new("restore"),
        OsStr::new(id),
        OsStr::new("--target"),
        target.as_os_str(),
    ]);
    measure(cmd, sb.root(), label).ok()
}

/// `restic check`, measured; restic must accept what ferry wrote.
fn restic_check(sb: &Sandbox, label: &str) -> Measured {
    let cmd = sb.restic_cmd(&sb.password_file, ["check"]);
    let m = measure(cmd, sb.root(), label).ok();
    assert!(
        m.run.out().contains("no errors were found"),
        "restic check did not report a clean repository\n{}",
        m.run
    );
    m
}

#[test]
fn one_directory_of_a_million_entries() {
    let n = entries();
    let sb = Sandbox::new();
    let src = sb.root().join("flat");
    write_files(&src, Content::Empty, 0, n);
    sb.init_with_ferry();

    let (snap, id) = snapshot(&sb, &src, "snapshot");
    snap.report(&format!("snapshot of one directory of {n} entries"));
    assert_eq!(snap.run.summary().files_new, n, "{}", snap.run);
    snap.assert_peak_below(
        BASE + SNAPSHOT_FLAT_PER_ENTRY * n,
        "the snapshot of one huge directory",
    );

    restic_check(&sb, "restic-check").report("restic check of that repository");

    let target = sb.dir("restored");
    let rest = restore(&sb, &id, &target, "restore");
    rest.report(&format!("restore of {n} files"));
    rest.assert_peak_below(
        BASE + RESTORE_PER_FILE * n,
        "the restore of one huge directory",
    );
    assert_files(&target, Content::Empty, 0, n);
}

#[test]
fn directories_of_a_thousand_entries() {
    let n = nested_entries();
    let per_dir = n.clamp(1, 1000);
    let dirs = n.div_ceil(per_dir);
    let sb = Sandbox::new();
    let src = sb.root().join("nested");
    let dir_of = |root: &Path, d: u64| -> PathBuf { root.join(format!("d{d:04}")) };
    for d in 0..dirs {
        write_files(&dir_of(&src, d), Content::OneLine, d * per_dir, per_dir);
    }
    sb.init_with_ferry();

    let (snap, id) = snapshot(&sb, &src, "snapshot");
    snap.report(&format!(
        "snapshot of {dirs} directories of {per_dir} entries"
    ));
    assert_eq!(snap.run.summary().files_new, dirs * per_dir, "{}", snap.run);
    snap.assert_peak_below(
        BASE + SNAPSHOT_NESTED_PER_ENTRY * dirs * per_dir,
        "the snapshot of many directories",
    );

    restic_check(&sb, "restic-check").report("restic check of that repository");
    // The restore needs only the repository; the source's blocks go first.
    fs::remove_dir_all(&src).expect("remove the source");

    let target = sb.dir("restored");
    let rest = restore(&sb, &id, &target, "restore");
    rest.report(&format!("restore of {} files", dirs * per_dir));
    rest.assert_peak_below(
        BASE + RESTORE_PER_FILE * dirs * per_dir,
        "the restore of many directories",
    );
    for d in 0..dirs {
        assert_files(&dir_of(&target, d), Content::OneLine, d * per_dir, per_dir);
    }
}

#[test]
fn a_sparse_file_of_twenty_gib() {
    let size = sparse_gib() * GIB;
    let sb = Sandbox::new();
    let src = sb.dir("sparse");
    let path = src.join("volume.img");
    let file = File::create(&path).expect("create the sparse file");
    file.set_len(size).expect("extend the sparse file");
    let mut rng = Rng::new(20);
    let data_offsets = [
        0,
        size / 4 + 12_345,
        size / 2 + 1,
        size - SPARSE_DATA as u64,
    ];
    let mut written = Vec::new();
    for offset in data_offsets {
        let bytes = rng.bytes(SPARSE_DATA);
        file.write_all_at(&bytes, offset)
            .expect("write data into the sparse file");
        written.push((offset, bytes));
    }
    drop(file);
    assert!(
        allocated_bytes(&path) < size / 2,
        "the filesystem under {} does not keep files sparse",
        src.display()
    );
    sb.init_with_ferry();

    let (snap, id) = snapshot(&sb, &src, "snapshot");
    snap.report(&format!("snapshot of a {} GiB sparse file", size / GIB));
    snap.assert_peak_below(SPARSE_BOUND, "the snapshot of a sparse file");

    restic_check(&sb, "restic-check").report("restic check of that repository");

    let target = sb.dir("restored");
    let rest = restore(&sb, &id, &target, "restore");
    rest.report(&format!("restore of a {} GiB sparse file", size / GIB));
    rest.assert_peak_below(SPARSE_BOUND, "the restore of a sparse file");
    let restored = target.join("volume.img");
    let back = File::open(&restored).expect("open the restored file");
    assert_eq!(back.metadata().expect("stat").len(), size);
    for (offset, bytes) in &written {
        let mut got = vec![0; bytes.len()];
        back.read_exact_at(&mut got, *offset)
            .expect("read the restored file");
        assert!(got == *bytes, "restored data differs at offset {offset}");
    }
    // The holes stay holes: all-zero blobs are skipped, not written.
    assert!(
        allocated_bytes(&restored) < size / 2,
        "the restored file is not sparse: {} bytes allocated",
        allocated_bytes(&restored)
    );
}
