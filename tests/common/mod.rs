//! Shared helpers for ferry's integration tests: running the `ferry` binary and the real `restic`
//! program against a repository in a per-test temporary directory, generating source trees (a
//! plain mix of small and large files, and an "awkward" tree of everything a filesystem can hold
//! that a backup tool tends to get wrong), and comparing two trees entry by entry.
//!
//! The helpers never decide what a test expects: they run a command and hand back its exit code
//! and output, and only the `*_ok` conveniences assert success. The one assertion every runner
//! makes is that `ferry` did not panic, because a panic is a bug whatever the test is about.
//! Nothing here reads repository bytes; tests that need to damage a repository do it with plain
//! file operations on the paths `Sandbox` exposes.

// Each test crate compiles this module separately and uses a different subset of it.
#![allow(dead_code)]

pub mod agent;
pub mod cluster;
pub mod fault_proxy;
pub mod s3;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr, OsString};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;
use tempfile::TempDir;

pub mod migration;

/// The password of every repository a test creates.
pub const PASSWORD: &str = "ferry integration test password";

/// Variables of the caller's environment that would change which repository or password a command
/// uses; every command starts without them.
const RESTIC_ENV: &[&str] = &[
    "RESTIC_REPOSITORY",
    "RESTIC_REPOSITORY_FILE",
    "RESTIC_PASSWORD",
    "RESTIC_PASSWORD_FILE",
    "RESTIC_PASSWORD_COMMAND",
    "RESTIC_KEY_HINT",
    "RESTIC_CACHE_DIR",
    "RESTIC_PACK_SIZE",
    "RESTIC_COMPRESSION",
    "RESTIC_HOST",
    "RESTIC_FEATURES",
];

/// Whether the tests run as root, which decides what the awkward tree can contain (devices,
/// foreign owners, trusted.* xattrs) and whether owners are compared after a restore.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The finished run of one command: its exit code and everything it printed.
pub struct Run {
    /// The command line, for messages.
    pub what: String,
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    /// Stdout as text (lossy), for commands that print text.
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Asserts exit code 0 and returns the run.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, Some(0), "expected success\n{self}");
        self
    }

    /// Asserts the given exit code and returns the run.
    #[track_caller]
    pub fn code(self, code: i32) -> Self {
        assert_eq!(self.code, Some(code), "expected exit code {code}\n{self}");
        self
    }

    /// Asserts that stderr contains `needle`, ignoring ASCII case, and returns the run.
    #[track_caller]
    pub fn stderr_mentions(self, needle: &str) -> Self {
        assert!(
            self.stderr.to_lowercase().contains(&needle.to_lowercase()),
            "expected stderr to mention {needle:?}\n{self}"
        );
        self
    }

    /// The JSON value of every stdout line that parses as JSON.
    pub fn json_lines(&self) -> Vec<Value> {
        self.out()
            .lines()
            .filter_map(|line| serde_json::from_str(line.trim()).ok())
            .collect()
    }

    /// The whole of stdout parsed as one JSON document.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document: {e}\n{self}"))
    }

    /// The `"message_type":"summary"` line of a `--json` backup or snapshot.
    #[track_caller]
    pub fn summary(&self) -> Summary {
        let value = self
            .json_lines()
            .into_iter()
            .find(|v| v["message_type"] == "summary")
            .unwrap_or_else(|| panic!("no summary line in the JSON output\n{self}"));
        Summary::from_json(value, self)
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const LIMIT: usize = 6000;
        let clip = |s: &str| -> String {
            // The end of the output is where errors and summaries are.
            if s.len() <= LIMIT {
                s.to_owned()
            } else {
                let mut start = s.len() - LIMIT;
                while !s.is_char_boundary(start) {
                    start += 1;
                }
                format!("({start} bytes left out) …{}", &s[start..])
            }
        };
        writeln!(f, "command: {}", self.what)?;
        writeln!(f, "exit code: {:?}", self.code)?;
        writeln!(f, "stdout:\n{}", clip(&self.out()))?;
        write!(f, "stderr:\n{}", clip(&self.stderr))
    }
}

/// The fields of a backup summary the tests look at.
#[derive(Debug, Clone)]
pub struct Summary {
    pub snapshot_id: String,
    pub files_new: u64,
    pub data_blobs: u64,
    pub data_added: u64,
    pub raw: Value,
}

impl Summary {
    #[track_caller]
    fn from_json(raw: Value, run: &Run) -> Summary {
        let snapshot_id = raw["snapshot_id"]
            .as_str()
            .unwrap_or_else(|| panic!("summary has no snapshot_id string\n{run}"))
            .to_owned();
        let number = |key: &str| {
            raw[key]
                .as_u64()
                .unwrap_or_else(|| panic!("summary has no unsigned integer {key:?}\n{run}"))
        };
        Summary {
            files_new: number("files_new"),
            data_blobs: number("data_blobs"),
            data_added: number("data_added"),
            snapshot_id,
            raw,
        }
    }
}

/// Whether `s` is a repository object id as restic writes it: 64 lower-case hex digits.
pub fn is_full_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Runs a prepared command to completion with stdin closed.
pub fn run(mut cmd: Command) -> Run {
    let what = describe(&cmd);
    cmd.stdin(Stdio::null());
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    Run {
        what,
        code: output.status.code(),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs a `ferry` command and fails the test if ferry panicked, whatever the exit code.
#[track_caller]
pub fn run_ferry(cmd: Command) -> Run {
    let run = run(cmd);
    assert!(
        !run.stderr.contains("panicked"),
        "ferry panicked; errors must be reported, never panic\n{run}"
    );
    assert_ne!(run.code, None, "ferry was killed by a signal\n{run}");
    run
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    if let Some(dir) = cmd.get_current_dir() {
        let _ = write!(s, " (in {})", dir.display());
    }
    s
}

/// A command with the environment every test command gets: no inherited repository or password
/// settings, TZ=UTC, stdin closed, and the given cache directory.
fn base_command(program: &OsStr, cache_dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    for var in RESTIC_ENV {
        cmd.env_remove(var);
    }
    cmd.env("TZ", "UTC")
        .env("RESTIC_CACHE_DIR", cache_dir)
        .stdin(Stdio::null());
    cmd
}

/// The path of the `ferry` binary built for these tests.
pub fn ferry_bin() -> &'static OsStr {
    OsStr::new(env!("CARGO_BIN_EXE_ferry"))
}

/// The path of the `restic` program, or a test failure that says how to get it.
pub fn restic_bin() -> OsString {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("restic"))
            .find(|p| p.is_file())
    });
    match found {
        Some(path) => path.into_os_string(),
        None => panic!(
            "the restic program is not on PATH; it is the judge of compatibility \
             (install the Debian package `restic`, as .ci/run does)"
        ),
    }
}

/// One test's private world: a temporary directory holding a repository path (`repo`, not
/// created until a test initialises it), a password file, a cache directory, and any source or
/// target directories the test asks for. Everything is removed when the sandbox drops.
pub struct Sandbox {
    tmp: TempDir,
    pub repo: PathBuf,
    pub password_file: PathBuf,
    pub cache_dir: PathBuf,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let tmp = tempfile::Builder::new()
            .prefix("ferry-it-")
            .tempdir()
            .expect("create a temporary directory");
        let root = tmp.path().to_path_buf();
        let password_file = root.join("password");
        fs::write(&password_file, format!("{PASSWORD}\n")).expect("write the password file");
        let cache_dir = root.join("cache");
        fs::create_dir(&cache_dir).expect("create the cache directory");
        Sandbox {
            repo: root.join("repo"),
            password_file,
            cache_dir,
            tmp,
        }
    }

    /// The sandbox's own directory.
    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    /// Creates (if needed) and returns the directory `name` inside the sandbox.
    pub fn dir(&self, name: &str) -> PathBuf {
        let path = self.root().join(name);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        path
    }

    /// Writes a password file named `name` inside the sandbox and returns its path.
    pub fn password_file_with(&self, name: &str, password: &str) -> PathBuf {
        let path = self.root().join(name);
        fs::write(&path, format!("{password}\n")).expect("write a password file");
        path
    }

    /// A `ferry` command: `args`, then `-r REPO --password-file PASSWORD_FILE`.
    pub fn ferry_cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.ferry_cmd_with_password(&self.password_file, args)
    }

    /// A `ferry` command: `args`, then `-r REPO --password-file PASSWORD_FILE`.
    pub fn ferry_cmd_with_password<I, S>(&self, password_file: &Path, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = base_command(ferry_bin(), &self.cache_dir);
        cmd.args(args)
            .arg("-r")
            .arg(&self.repo)
            .arg("--password-file")
            .arg(password_file);
        cmd
    }

    /// Runs `ferry ARGS -r REPO --password-file PASSWORD_FILE`.
    #[track_caller]
    pub fn ferry<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_ferry(self.ferry_cmd(args))
    }

    /// Runs `ferry` with no repository or password options added: the test supplies them.
    #[track_caller]
    pub fn ferry_bare<I, S>(&self, args: I, env: &[(&str, &OsStr)]) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = base_command(ferry_bin(), &self.cache_dir);
        cmd.args(args);
        for (key, value) in env {
            cmd.env(key, value);
        }
        run_ferry(cmd)
    }

    /// A `restic` command: `--no-cache -r REPO -p PASSWORD_FILE ARGS`.
    pub fn restic_cmd<I, S>(&self, password_file: &Path, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = base_command(&restic_bin(), &self.cache_dir);
        cmd.arg("--no-cache")
            .arg("-r")
            .arg(&self.repo)
            .arg("--password-file")
            .arg(password_file)
            .args(args);
        cmd
    }

    /// Runs `restic --no-cache -r REPO -p PASSWORD_FILE ARGS`.
    pub fn restic<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.restic_cmd(&self.password_file, args))
    }

    /// `ferry init`, asserting success.
    #[track_caller]
    pub fn init_with_ferry(&self) {
        self.ferry(["init"]).ok();
        assert!(
            self.repo.join("config").is_file(),
            "ferry init left no config file in {}",
            self.repo.display()
        );
    }

    /// `restic init`, asserting success.
    #[track_caller]
    pub fn init_with_restic(&self) {
        self.restic(["init"]).ok();
    }

    /// `ferry agent snapshot SRC --json EXTRA...`, asserting success; returns the summary.
    #[track_caller]
    pub fn ferry_snapshot(&self, src: &Path, extra: &[&str]) -> Summary {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("agent"),
            OsStr::new("snapshot"),
            src.as_os_str(),
            OsStr::new("--json"),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let run = self.ferry(args).ok();
        let summary = run.summary();
        assert!(
            is_full_id(&summary.snapshot_id),
            "the summary's snapshot_id {:?} is not 64 lower-case hex digits\n{run}",
            summary.snapshot_id
        );
        summary
    }

    /// `restic backup --json .` run inside `src`, asserting success; returns the full snapshot
    /// id (restic 0.14's summary names only the short id, so it is looked up).
    #[track_caller]
    pub fn restic_backup(&self, src: &Path) -> String {
        self.restic_backup_with(src, &[])
    }

    /// `restic backup --json EXTRA... .` run inside `src`, asserting success; returns the full
    /// snapshot id.
    #[track_caller]
    pub fn restic_backup_with(&self, src: &Path, extra: &[&str]) -> String {
        let mut args = vec!["backup", "--json"];
        args.extend_from_slice(extra);
        args.push(".");
        let mut cmd = self.restic_cmd(&self.password_file, args);
        cmd.current_dir(src);
        let short = run(cmd).ok().summary().snapshot_id;
        self.restic_full_snapshot_id(&short)
    }

    /// The full id of the snapshot whose id starts with `prefix`, as `restic snapshots` lists it.
    #[track_caller]
    pub fn restic_full_snapshot_id(&self, prefix: &str) -> String {
        let run = self.restic(["snapshots", "--json"]).ok();
        let listed = run.json();
        let ids: Vec<&str> = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["id"].as_str())
            .filter(|id| id.starts_with(prefix))
            .collect();
        assert_eq!(
            ids.len(),
            1,
            "expected one snapshot with id prefix {prefix}\n{run}"
        );
        ids[0].to_owned()
    }

    /// `ferry agent restore ID --target TARGET`, asserting success.
    #[track_caller]
    pub fn ferry_restore(&self, id: &str, target: &Path) -> Run {
        self.ferry([
            OsStr::new("agent"),
            OsStr::new("restore"),
            OsStr::new(id),
            OsStr::new("--target"),
            target.as_os_str(),
        ])
        .ok()
    }

    /// `restic restore ID --target TARGET`, asserting success.
    #[track_caller]
    pub fn restic_restore(&self, id: &str, target: &Path) -> Run {
        self.restic([
            OsStr::new("restore"),
            OsStr::new(id),
            OsStr::new("--target"),
            target.as_os_str(),
        ])
        .ok()
    }

    /// How many snapshots `restic snapshots` lists; without locking, so that it also works
    /// while another process holds an exclusive lock.
    #[track_caller]
    pub fn restic_snapshots_count(&self) -> usize {
        let run = self.restic(["--no-lock", "snapshots", "--json"]).ok();
        run.json().as_array().map_or(0, Vec::len)
    }

    /// The data blobs restic lists in the repository's index.
    #[track_caller]
    pub fn restic_data_blobs(&self) -> BTreeSet<String> {
        let run = self.restic(["list", "blobs"]).ok();
        run.out()
            .lines()
            .filter_map(|line| line.strip_prefix("data "))
            .map(|id| id.trim().to_owned())
            .collect()
    }

    /// The files under `REPO/<kind>` (recursively, so `data` lists packs), sorted.
    pub fn repo_files(&self, kind: &str) -> Vec<PathBuf> {
        let mut files = Vec::new();
        collect_files(&self.repo.join(kind), &mut files);
        files.sort();
        files
    }

    /// The ids of the repository's lock files. A process killed while writing its lock can
    /// leave the store's temporary file (`locks/<id>#<n>` in a local repository): that is not
    /// a lock (restic and ferry skip names that are not ids) and nothing removes it yet (see
    /// SECURITY.md), so it is not listed.
    pub fn lock_ids(&self) -> BTreeSet<String> {
        self.repo_files("locks")
            .iter()
            .map(|p| object_id(p))
            .filter(|id| is_full_id(id))
            .collect()
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => collect_files(&path, out),
            Ok(_) => out.push(path),
            Err(_) => {}
        }
    }
}

/// The file name of a repository object, which is its id.
pub fn object_id(path: &Path) -> String {
    path.file_name()
        .expect("repository object has a file name")
        .to_string_lossy()
        .into_owned()
}

// ---------------------------------------------------------------------------------------------
// Tree generation
// ---------------------------------------------------------------------------------------------

/// A small deterministic generator (xorshift64*), so that trees and file contents are the same
/// on every run without a random-number dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.fill(&mut buf);
        buf
    }
}

/// Writes `size` incompressible pseudo-random bytes derived from `seed` to `path`.
pub fn write_random_file(path: &Path, size: u64, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        file.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        left -= n as u64;
    }
}

/// Writes "many small files and a few large ones" under `root`: 8 directories of 40 files of
/// 0–20 KiB, and under `large/` an 8 MiB random file, a 4 MiB compressible log and a 3 MiB
/// file of zeros. About 17 MiB in all.
pub fn write_mixed_tree(root: &Path, seed: u64) {
    let mut rng = Rng::new(seed);
    for d in 0..8 {
        let dir = root.join(format!("dir-{d}"));
        fs::create_dir_all(&dir).expect("create a directory of the mixed tree");
        for f in 0..40 {
            let size = rng.below(20 * 1024) as usize;
            let content = rng.bytes(size);
            fs::write(dir.join(format!("file-{f:02}.dat")), content)
                .expect("write a small file of the mixed tree");
        }
    }
    let large = root.join("large");
    fs::create_dir_all(&large).expect("create large/");
    write_random_file(&large.join("random.bin"), 8 << 20, seed ^ 0xA5A5);
    let mut log = Vec::with_capacity(4 << 20);
    let mut line = 0u64;
    while log.len() < 4 << 20 {
        let _ = writeln!(
            StringSink(&mut log),
            "2024-05-01T10:00:{:02}Z level=info request={line} status=200 bytes={}",
            line % 60,
            rng.below(100_000)
        );
        line += 1;
    }
    fs::write(large.join("text.log"), &log).expect("write large/text.log");
    fs::write(large.join("zeros.img"), vec![0u8; 3 << 20]).expect("write large/zeros.img");
}

/// Lets `write!` append formatted text to a byte vector.
struct StringSink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for StringSink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// What `write_awkward_tree` should include beyond its fixed content.
#[derive(Debug, Clone)]
pub struct AwkwardOptions {
    /// Include `sparse/sparse-1g.img`: 1 GiB, data only at its start, middle and end.
    pub sparse_gib: bool,
    /// Include a symlink whose target is not valid UTF-8 (restic 0.14 cannot store one).
    pub non_utf8_link_target: bool,
}

impl Default for AwkwardOptions {
    fn default() -> Self {
        AwkwardOptions {
            sparse_gib: true,
            non_utf8_link_target: true,
        }
    }
}

/// What `write_awkward_tree` actually made, which depends on privileges and the filesystem.
#[derive(Debug, Clone, Default)]
pub struct Awkward {
    /// The 1 GiB sparse file, relative to the root, if made.
    pub sparse_file: Option<PathBuf>,
    /// Whether the source sparse file really has holes on this filesystem.
    pub sparse_source_has_holes: bool,
    /// Devices, foreign owners, mode-000 entries and trusted.* xattrs (root only).
    pub root_only_entries: bool,
    /// Whether the filesystem accepted user.* xattrs.
    pub user_xattrs: bool,
    /// Things left out, and why.
    pub notes: Vec<String>,
}

/// The size of the sparse file in the awkward tree.
pub const SPARSE_SIZE: u64 = 1 << 30;
/// Bytes of data written at each of the three places in the sparse file.
const SPARSE_DATA: usize = 64 * 1024;

fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

fn cstring(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("test paths have no NUL byte")
}

fn mkfifo(path: &Path, mode: u32) {
    let c = cstring(path);
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), mode as libc::mode_t) };
    assert_eq!(
        rc,
        0,
        "mkfifo {}: {}",
        path.display(),
        io::Error::last_os_error()
    );
}

fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    let c = cstring(path);
    let dev = libc::makedev(major, minor);
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | 0o600, dev) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        io::Error::last_os_error()
    );
}

fn lchown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("lchown {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, path.display()));
}

/// Sets the mtime (and atime, to the same value) of `path` itself, not of a symlink's target.
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let c = cstring(path);
    let ts = libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    };
    let times = [ts, ts];
    // SAFETY: `c` is a valid NUL-terminated path and `times` two valid timespecs; both outlive
    // the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "utimensat {}: {}",
        path.display(),
        io::Error::last_os_error()
    );
}

fn write(path: &Path, content: &[u8]) {
    fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn mkdir(path: &Path) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
}

/// Sets an xattr; returns false when the filesystem does not support the namespace.
fn try_setxattr(path: &Path, name: &str, value: &[u8]) -> bool {
    match xattr::set(path, name, value) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => false,
        Err(e) => panic!("setxattr {name} on {}: {e}", path.display()),
    }
}

/// Names that trip up encoders: invalid UTF-8, control characters, quotes, backslashes, HTML
/// characters (Go escapes `<>&` in JSON), runes Go's strconv.Quote escapes as non-printable,
/// 255-byte names, and names that sort differently as bytes and as text.
pub fn awkward_names() -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = vec![
        b"plain.txt".to_vec(),
        b"invalid-utf8-\xff\xfe".to_vec(),
        b"latin1-caf\xe9".to_vec(),
        b"line\nbreak".to_vec(),
        b"carriage\rreturn".to_vec(),
        b"tab\there".to_vec(),
        b"ctrl-\x01-\x1b-\x7f".to_vec(),
        b"double\"quote".to_vec(),
        b"single'quote".to_vec(),
        b"back\\slash".to_vec(),
        b"html <b>&amp;<\\b> & <>".to_vec(),
        b" leading space".to_vec(),
        b"trailing space ".to_vec(),
        b"-dash-first".to_vec(),
        b".hidden".to_vec(),
        b"A-upper".to_vec(),
        b"a-lower".to_vec(),
        b"_underscore".to_vec(),
        b"~tilde".to_vec(),
        "unicode-日本語-🦀".as_bytes().to_vec(),
        "combining-e\u{301}".as_bytes().to_vec(),
        "nbsp\u{a0}zwsp\u{200b}bom\u{feff}".as_bytes().to_vec(),
        "separator\u{2028}\u{2029}".as_bytes().to_vec(),
        "percent-%41-%ff".as_bytes().to_vec(),
    ];
    names.push(vec![b'a'; 255]);
    let mut multibyte = "é".repeat(127).into_bytes();
    multibyte.push(b'x');
    assert_eq!(multibyte.len(), 255);
    names.push(multibyte);
    names
}

/// Writes the awkward tree under `root` (which must exist and be empty) and returns what it
/// made. Every entry gets a distinct mtime with nanoseconds, directories included, set after
/// their contents so that they stick.
pub fn write_awkward_tree(root: &Path, opts: &AwkwardOptions) -> Awkward {
    let root_user = is_root();
    let mut made = Awkward {
        root_only_entries: root_user,
        user_xattrs: true,
        ..Awkward::default()
    };
    if !root_user {
        made.notes.push(
            "not root: no devices, foreign owners, mode-000 entries or trusted.* xattrs".into(),
        );
    }

    // Awkward names, each a file whose content is its own name.
    let names = root.join("names");
    mkdir(&names);
    for name in awkward_names() {
        write(&names.join(os(&name)), &name);
    }
    let odd_dir = names.join(os(b"dir-\xff with \"quotes\" & <html>\n"));
    mkdir(&odd_dir);
    write(&odd_dir.join(os(b"inner-\xfe")), b"inner");

    // 5,000 entries in one directory: a third empty, the rest small and distinct.
    let many = root.join("many");
    mkdir(&many);
    for i in 0..5000u32 {
        let path = many.join(format!("entry-{i:05}"));
        if i % 3 == 0 {
            write(&path, b"");
        } else {
            write(&path, format!("{i}\n").as_bytes());
        }
    }

    // 50 levels of nesting.
    let mut deep = root.join("deep");
    for level in 1..=50 {
        deep.push(format!("level-{level:02}"));
    }
    mkdir(&deep);
    write(&deep.join("bottom.txt"), b"fifty levels down\n");

    // Empty things.
    let empty = root.join("empty");
    mkdir(&empty.join("empty-dir"));
    mkdir(&empty.join("private-empty-dir"));
    chmod(&empty.join("private-empty-dir"), 0o700);
    write(&empty.join("empty-file"), b"");

    // Symlinks.
    let links = root.join("links");
    mkdir(&links);
    let link = |target: &[u8], name: &str| {
        symlink(os(target), links.join(name)).unwrap_or_else(|e| panic!("symlink {name}: {e}"));
    };
    link(b"../names/plain.txt", "to-file");
    link(b"../deep", "to-dir");
    link(b"no/such/target", "dangling");
    link(b"/etc/passwd", "absolute");
    link(b"loop", "loop");
    link(b".", "dot");
    link("ターゲット & <target>".as_bytes(), "unicode-target");
    link("x/".repeat(500).as_bytes(), "long-target");
    if opts.non_utf8_link_target {
        link(b"target-\xff\xfe-not-utf8", "non-utf8-target");
    }

    // Hard links: a group of three across directories, a pair of empty files, and a link into
    // another top-level directory.
    let hard = root.join("hardlinks");
    mkdir(&hard.join("sub"));
    write(&hard.join("a"), b"shared content of three names\n");
    fs::hard_link(hard.join("a"), hard.join("b")).expect("hard link b");
    fs::hard_link(hard.join("a"), hard.join("sub").join("c")).expect("hard link sub/c");
    write(&hard.join("empty-1"), b"");
    fs::hard_link(hard.join("empty-1"), hard.join("empty-2")).expect("hard link empty-2");
    fs::hard_link(names.join("plain.txt"), hard.join("plain-elsewhere"))
        .expect("hard link plain-elsewhere");

    // Special files.
    let special = root.join("special");
    mkdir(&special);
    mkfifo(&special.join("fifo"), 0o640);
    chmod(&special.join("fifo"), 0o640);
    if root_user {
        mknod(&special.join("null-char-dev"), libc::S_IFCHR, 1, 3);
        chmod(&special.join("null-char-dev"), 0o666);
        mknod(&special.join("loop-block-dev"), libc::S_IFBLK, 7, 200);
        chmod(&special.join("loop-block-dev"), 0o660);
    }

    // Modes, including setuid, setgid and sticky. Owners are set first because chown clears
    // setuid and setgid.
    let modes = root.join("modes");
    mkdir(&modes);
    for (name, mode) in [
        ("setuid", 0o4755),
        ("setgid", 0o2755),
        ("all-special-bits", 0o7777),
        ("read-only", 0o444),
        ("exec-only", 0o111),
        ("group-write", 0o664),
    ] {
        let path = modes.join(name);
        write(&path, name.as_bytes());
        chmod(&path, mode);
    }
    mkdir(&modes.join("sticky-dir"));
    write(
        &modes.join("sticky-dir").join("inside"),
        b"inside a sticky dir\n",
    );
    chmod(&modes.join("sticky-dir"), 0o1777);
    mkdir(&modes.join("setgid-dir"));
    chmod(&modes.join("setgid-dir"), 0o2775);
    if root_user {
        write(&modes.join("no-perms"), b"only root reads this\n");
        chmod(&modes.join("no-perms"), 0o000);
        // A directory nobody may enter, with content: a restorer must fill it before it sets
        // the mode.
        mkdir(&modes.join("no-perms-dir"));
        write(
            &modes.join("no-perms-dir").join("hidden"),
            b"behind a mode-000 dir\n",
        );
        chmod(&modes.join("no-perms-dir"), 0o000);
    }

    // Owners (root only).
    if root_user {
        let owners = root.join("owners");
        mkdir(&owners.join("dir-4321"));
        write(&owners.join("file-1234"), b"owned by 1234:5678\n");
        lchown(&owners.join("file-1234"), 1234, 5678);
        lchown(&owners.join("dir-4321"), 4321, 8765);
        write(
            &owners.join("dir-4321").join("root-owned"),
            b"root inside 4321\n",
        );
        symlink("file-1234", owners.join("link-2222")).expect("symlink owners/link-2222");
        lchown(&owners.join("link-2222"), 2222, 3333);
        write(&owners.join("big-ids"), b"large ids\n");
        lchown(&owners.join("big-ids"), 2_000_000_000, 3_000_000_000);
        write(&owners.join("setuid-1234"), b"setuid and owned\n");
        lchown(&owners.join("setuid-1234"), 1234, 5678);
        chmod(&owners.join("setuid-1234"), 0o6750);
    }

    // Extended attributes.
    let xattrs = root.join("xattrs");
    mkdir(&xattrs.join("dir"));
    let xfile = xattrs.join("file");
    write(&xfile, b"has xattrs\n");
    let mut user_ok = try_setxattr(&xfile, "user.comment", b"hello, xattr");
    user_ok &= try_setxattr(&xfile, "user.binary", b"\x00\x01\xff\xfe\x00");
    user_ok &= try_setxattr(&xfile, "user.empty", b"");
    user_ok &= try_setxattr(&xattrs.join("dir"), "user.on-dir", b"directory attribute");
    if !user_ok {
        made.user_xattrs = false;
        made.notes
            .push("the filesystem does not support user.* xattrs; none were set".into());
    }
    if root_user {
        assert!(
            try_setxattr(&xfile, "trusted.ferry", b"root-only attribute"),
            "setting a trusted.* xattr as root failed"
        );
        assert!(
            try_setxattr(&xattrs.join("dir"), "trusted.dir", b"\x00trusted\xff"),
            "setting a trusted.* xattr on a directory as root failed"
        );
    }

    // Files with explicit, awkward times.
    let times = root.join("times");
    mkdir(&times);
    let fixed_times: [(&str, i64, i64); 5] = [
        ("before-1970", -1, 500_000_000),
        ("epoch", 0, 0),
        ("whole-second", 1_700_000_000, 0),
        ("one-nanosecond", 1_700_000_000, 1),
        ("after-2038", 2_200_000_000, 999_999_999),
    ];
    for (name, _, _) in fixed_times {
        write(&times.join(name), name.as_bytes());
    }

    // The sparse file.
    if opts.sparse_gib {
        let rel = PathBuf::from("sparse/sparse-1g.img");
        mkdir(&root.join("sparse"));
        write_sparse_file(&root.join(&rel), 0x5EED);
        made.sparse_source_has_holes = allocated_bytes(&root.join(&rel)) < SPARSE_SIZE / 16;
        if !made.sparse_source_has_holes {
            made.notes
                .push("the filesystem did not keep the sparse file's holes".into());
        }
        made.sparse_file = Some(rel);
    }

    // Times last, children before parents; the explicit times override the generated ones.
    let mut counter = 0i64;
    set_times_post_order(root, &mut counter);
    for (name, sec, nsec) in fixed_times {
        set_mtime(&times.join(name), sec, nsec);
    }
    set_mtime(&times, 1_600_000_000, 123_456_789);
    made
}

/// Writes a `SPARSE_SIZE` file with `SPARSE_DATA` pseudo-random bytes at its start, its middle
/// and its end, and holes elsewhere.
pub fn write_sparse_file(path: &Path, seed: u64) {
    let file = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.set_len(SPARSE_SIZE).expect("extend the sparse file");
    let mut rng = Rng::new(seed);
    for offset in [0, SPARSE_SIZE / 2, SPARSE_SIZE - SPARSE_DATA as u64] {
        file.write_all_at(&rng.bytes(SPARSE_DATA), offset)
            .expect("write data into the sparse file");
    }
}

fn set_times_post_order(path: &Path, counter: &mut i64) {
    let meta = fs::symlink_metadata(path).expect("lstat while setting times");
    if meta.is_dir() {
        let mut children: Vec<PathBuf> = fs::read_dir(path)
            .expect("read_dir while setting times")
            .map(|e| e.expect("directory entry").path())
            .collect();
        children.sort();
        for child in children {
            set_times_post_order(&child, counter);
        }
    }
    *counter += 1;
    let sec = 1_500_000_000 + *counter * 3_607;
    let nsec = (*counter * 123_456_789 + 7) % 1_000_000_000;
    set_mtime(path, sec, nsec);
}

/// Bytes actually allocated on disk for `path` (st_blocks × 512).
pub fn allocated_bytes(path: &Path) -> u64 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
        .blocks()
        * 512
}

// ---------------------------------------------------------------------------------------------
// Tree comparison
// ---------------------------------------------------------------------------------------------

/// What `assert_trees_equal` compares. `exact()` is everything; the restic 0.14 preset leaves
/// out what that version cannot store or restore.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// uid and gid (only meaningful when the restore ran as root).
    pub owners: bool,
    /// mtime of symlinks.
    pub symlink_mtime: bool,
    /// mtime of directories.
    pub dir_mtime: bool,
    /// user.* and trusted.* xattrs.
    pub xattrs: bool,
    /// Entries that share an inode in the source share one in the copy, and no others do.
    pub hard_links: bool,
    /// Do not compare the targets of symlinks whose source target is not valid UTF-8.
    pub skip_non_utf8_link_targets: bool,
    /// Compare the mode, owner and mtime of the two roots themselves.
    pub root_metadata: bool,
}

impl CompareOptions {
    /// Everything a restore should reproduce; owners only when running as root.
    pub fn exact() -> CompareOptions {
        CompareOptions {
            owners: is_root(),
            symlink_mtime: false,
            dir_mtime: true,
            xattrs: true,
            hard_links: true,
            skip_non_utf8_link_targets: false,
            root_metadata: false,
        }
    }

    /// What restic 0.14 can restore: no non-UTF-8 symlink targets.
    pub fn restic_0_14() -> CompareOptions {
        CompareOptions {
            skip_non_utf8_link_targets: true,
            ..CompareOptions::exact()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDevice,
    BlockDevice,
    Socket,
    Unknown,
}

#[derive(Debug)]
struct Entry {
    kind: Kind,
    perm: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    inode: (u64, u64),
    rdev: u64,
    link_target: Option<Vec<u8>>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn kind_of(t: fs::FileType) -> Kind {
    if t.is_file() {
        Kind::File
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_symlink() {
        Kind::Symlink
    } else if t.is_fifo() {
        Kind::Fifo
    } else if t.is_char_device() {
        Kind::CharDevice
    } else if t.is_block_device() {
        Kind::BlockDevice
    } else if t.is_socket() {
        Kind::Socket
    } else {
        Kind::Unknown
    }
}

fn read_entry(path: &Path) -> io::Result<Entry> {
    let meta = fs::symlink_metadata(path)?;
    let kind = kind_of(meta.file_type());
    let link_target = if kind == Kind::Symlink {
        Some(fs::read_link(path)?.into_os_string().into_vec())
    } else {
        None
    };
    let mut xattrs = BTreeMap::new();
    match xattr::list(path) {
        Ok(names) => {
            for name in names {
                let bytes = name.as_bytes();
                if !(bytes.starts_with(b"user.") || bytes.starts_with(b"trusted.")) {
                    continue;
                }
                let value = xattr::get(path, &name)?.unwrap_or_default();
                xattrs.insert(bytes.to_vec(), value);
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => {}
        Err(e) => return Err(e),
    }
    Ok(Entry {
        kind,
        perm: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        size: meta.size(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        inode: (meta.dev(), meta.ino()),
        rdev: meta.rdev(),
        link_target,
        xattrs,
    })
}

/// Every entry below `root` (not `root` itself unless `with_root`), keyed by its path relative
/// to `root` as bytes.
fn walk(root: &Path, with_root: bool) -> io::Result<BTreeMap<Vec<u8>, Entry>> {
    let mut out = BTreeMap::new();
    if with_root {
        out.insert(Vec::new(), read_entry(root)?);
    }
    walk_into(root, &mut Vec::new(), &mut out)?;
    Ok(out)
}

fn walk_into(dir: &Path, rel: &mut Vec<u8>, out: &mut BTreeMap<Vec<u8>, Entry>) -> io::Result<()> {
    for item in fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        let path = item.path();
        let len = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(name.as_bytes());
        let entry = read_entry(&path)?;
        let is_dir = entry.kind == Kind::Dir;
        out.insert(rel.clone(), entry);
        if is_dir {
            walk_into(&path, rel, out)?;
        }
        rel.truncate(len);
    }
    Ok(())
}

/// The offset of the first byte at which two files differ, or None when they are equal.
pub fn first_difference(a: &Path, b: &Path) -> io::Result<Option<u64>> {
    let mut fa = File::open(a)?;
    let mut fb = File::open(b)?;
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        let n = na.min(nb);
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Ok(Some(offset + i as u64));
        }
        if na != nb {
            return Ok(Some(offset + n as u64));
        }
        if na == 0 {
            return Ok(None);
        }
        offset += n as u64;
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn show(rel: &[u8]) -> String {
    if rel.is_empty() {
        "<root>".to_owned()
    } else {
        format!("{:?}", os(rel))
    }
}

/// Hard-link peers: for each path, the other paths that share its inode.
fn link_peers(entries: &BTreeMap<Vec<u8>, Entry>) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
    let mut groups: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    for (rel, entry) in entries {
        if entry.kind != Kind::Dir && !rel.is_empty() {
            groups.entry(entry.inode).or_default().push(rel.clone());
        }
    }
    let mut peers = BTreeMap::new();
    for members in groups.values() {
        for m in members {
            let others: Vec<Vec<u8>> = members.iter().filter(|o| *o != m).cloned().collect();
            peers.insert(m.clone(), others);
        }
    }
    peers
}

/// Walks `src` and `dst` with lstat and compares every entry: type, size, content, permission
/// bits including setuid/setgid/sticky, owner, mtime to the nanosecond (directories too;
/// symlinks only when asked), symlink targets as bytes, hard-link groups, user.* and trusted.*
/// xattrs, and device numbers. Panics listing every difference found.
#[track_caller]
pub fn assert_trees_equal(src: &Path, dst: &Path, opts: &CompareOptions) {
    let differences = tree_differences(src, dst, opts);
    if differences.is_empty() {
        return;
    }
    const SHOWN: usize = 150;
    let mut msg = format!(
        "trees differ: {} (source) vs {} (copy), {} difference(s), options {opts:?}:\n",
        src.display(),
        dst.display(),
        differences.len()
    );
    for d in differences.iter().take(SHOWN) {
        msg.push_str("  ");
        msg.push_str(d);
        msg.push('\n');
    }
    if differences.len() > SHOWN {
        let _ = writeln!(msg, "  … and {} more", differences.len() - SHOWN);
    }
    panic!("{msg}");
}

/// The differences `assert_trees_equal` would report, one line each.
pub fn tree_differences(src: &Path, dst: &Path, opts: &CompareOptions) -> Vec<String> {
    let a = walk(src, opts.root_metadata)
        .unwrap_or_else(|e| panic!("walk the source tree {}: {e}", src.display()));
    let b = match walk(dst, opts.root_metadata) {
        Ok(b) => b,
        Err(e) => return vec![format!("cannot walk the copy {}: {e}", dst.display())],
    };
    let mut diffs = Vec::new();
    for rel in a.keys().filter(|k| !b.contains_key(*k)) {
        diffs.push(format!("{}: missing from the copy", show(rel)));
    }
    for rel in b.keys().filter(|k| !a.contains_key(*k)) {
        diffs.push(format!("{}: only in the copy", show(rel)));
    }
    for (rel, x) in &a {
        let Some(y) = b.get(rel) else { continue };
        compare_entry(rel, x, y, src, dst, opts, &mut diffs);
    }
    if opts.hard_links {
        let pa = link_peers(&a);
        let pb = link_peers(&b);
        for (rel, peers_a) in &pa {
            let Some(peers_b) = pb.get(rel) else { continue };
            if peers_a != peers_b {
                let list = |v: &Vec<Vec<u8>>| v.iter().map(|p| show(p)).collect::<Vec<_>>();
                diffs.push(format!(
                    "{}: hard-link peers differ: source {:?}, copy {:?}",
                    show(rel),
                    list(peers_a),
                    list(peers_b)
                ));
            }
        }
    }
    diffs
}

fn compare_entry(
    rel: &[u8],
    x: &Entry,
    y: &Entry,
    src: &Path,
    dst: &Path,
    opts: &CompareOptions,
    diffs: &mut Vec<String>,
) {
    let name = show(rel);
    if x.kind != y.kind {
        diffs.push(format!("{name}: type {:?} vs {:?}", x.kind, y.kind));
        return;
    }
    let is_root = rel.is_empty();
    if x.perm != y.perm && x.kind != Kind::Symlink {
        diffs.push(format!("{name}: mode {:04o} vs {:04o}", x.perm, y.perm));
    }
    if opts.owners && (x.uid, x.gid) != (y.uid, y.gid) {
        diffs.push(format!(
            "{name}: owner {}:{} vs {}:{}",
            x.uid, x.gid, y.uid, y.gid
        ));
    }
    let check_mtime = match x.kind {
        Kind::Symlink => opts.symlink_mtime,
        Kind::Dir => opts.dir_mtime,
        _ => true,
    };
    if check_mtime && x.mtime != y.mtime {
        diffs.push(format!(
            "{name}: mtime {}.{:09} vs {}.{:09}",
            x.mtime.0, x.mtime.1, y.mtime.0, y.mtime.1
        ));
    }
    if opts.xattrs && x.xattrs != y.xattrs {
        diffs.push(format!(
            "{name}: xattrs {} vs {}",
            show_xattrs(&x.xattrs),
            show_xattrs(&y.xattrs)
        ));
    }
    match x.kind {
        Kind::File if !is_root => {
            if x.size != y.size {
                diffs.push(format!("{name}: size {} vs {}", x.size, y.size));
            } else {
                let (pa, pb) = (src.join(os(rel)), dst.join(os(rel)));
                match first_difference(&pa, &pb) {
                    Ok(None) => {}
                    Ok(Some(at)) => diffs.push(format!("{name}: content differs at byte {at}")),
                    Err(e) => diffs.push(format!("{name}: cannot compare content: {e}")),
                }
            }
        }
        Kind::Symlink => {
            let target = x.link_target.as_deref().unwrap_or_default();
            let skip = opts.skip_non_utf8_link_targets && std::str::from_utf8(target).is_err();
            if !skip && x.link_target != y.link_target {
                diffs.push(format!(
                    "{name}: symlink target {:?} vs {:?}",
                    os(target),
                    os(y.link_target.as_deref().unwrap_or_default())
                ));
            }
        }
        Kind::CharDevice | Kind::BlockDevice if x.rdev != y.rdev => {
            diffs.push(format!(
                "{name}: device {}:{} vs {}:{}",
                libc::major(x.rdev),
                libc::minor(x.rdev),
                libc::major(y.rdev),
                libc::minor(y.rdev)
            ));
        }
        _ => {}
    }
}

fn show_xattrs(map: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let items: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{}={:?}", String::from_utf8_lossy(k), os(v)))
        .collect();
    format!("{{{}}}", items.join(", "))
}
