//! `cargo bench --bench compare`: ferry against restic (and rustic when it is installed) on one
//! dataset, end to end, through each program's command line.
//!
//! The harness owns the whole comparison: it generates (or copies) a dataset, runs each tool's
//! first snapshot, unchanged re-snapshot, 1%-changed snapshot and full restore against fresh
//! local repositories, measures every child process (wall time, user+sys CPU and peak RSS, all
//! from `wait4`), and prints medians as a table followed by one JSON line of raw figures. It
//! checks correctness only cheaply (file count and byte total of each restore); comparing trees
//! byte for byte is the test suite's job. It never runs under `cargo test`: without the `--bench`
//! argument that `cargo bench` passes, it prints a note and exits.
//!
//! Method. Every run creates a fresh repository per tool. Operations are interleaved: all tools
//! do their first snapshot, then all their unchanged re-snapshot, and so on, and the order of the
//! tools rotates from run to run. Before each timed command the harness calls `sync(2)`, so that
//! writeback left over from earlier work does not land in the measurement, and then reads the
//! command's input (the dataset and the repository for a snapshot, the repository for a restore)
//! so that the page cache is warm, because this machine evicts idle cache within about a minute.
//!
//! The 1% change is applied in place and undone afterwards. One small file in every hundred
//! (in path order) gets a 25-byte marker written over its middle and a line appended, and the
//! largest file (first in path order on a tie) grows by 1% of its size of pseudo-random bytes.
//! The originals of the small files are kept in memory and written back, and the large file is
//! truncated to its old length, once every tool has snapshotted and restored the changed tree.
//! Modification times are not put back, which does not matter because each run starts from
//! fresh repositories. A dataset named by `FERRY_BENCH_DATA` is copied first, so that the
//! harness never writes to it.
//!
//! Environment:
//! - `FERRY_BENCH_SCALE` (default 1.0): size of the generated dataset. At 1.0 it holds 20,000
//!   small text files of 1–64 KiB, about 50 per directory, plus two 256 MiB pseudo-random files
//!   and two 256 MiB text files that zstd level 3 shrinks about 3:1; file counts and large-file
//!   sizes scale linearly.
//! - `FERRY_BENCH_RUNS` (default 3): runs per tool; the table shows medians.
//! - `FERRY_BENCH_DATA`: use (a copy of) this directory instead of generating a dataset.
//! - `FERRY_BENCH_DIR`: where data, repositories and restores go (default: a fresh temporary
//!   directory, removed at the end). A generated dataset is kept there and reused by later runs
//!   with the same scale.
//! - `FERRY_BENCH_RESTORE_DIR`: where restores go, e.g. a tmpfs mount to take the disk out of
//!   the restore figures (default: inside the work directory).
//! - `FERRY_BENCH_TOOLS`: comma-separated subset of `ferry,restic,rustic` (default: all found).
//! - `FERRY_BIN`: the ferry binary to run (default: the one cargo built for this bench, which
//!   uses the release settings through the bench profile).

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use serde_json::json;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Seed of every pseudo-random choice in the dataset and the change.
const SEED: u64 = 0x6665_7272_7962_656e;
/// The repository password handed to every tool; the repositories are throwaway.
const PASSWORD: &str = "ferry-bench-password";
/// Files below this size are "small" when choosing which files the 1% change touches.
const SMALL_LIMIT: u64 = MIB;
/// Small files per leaf directory and leaf directories per parent in the generated tree.
const FILES_PER_DIR: usize = 50;
const DIRS_PER_PARENT: usize = 20;

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!("compare: runs only under `cargo bench --bench compare`; skipped");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cfg = Config::from_env()?;
    let tools = find_tools(&cfg)?;
    let missing_rustic = !tools.iter().any(|t| t.kind == Kind::Rustic);

    // The temporary root (when no FERRY_BENCH_DIR is given) lives until the end of this function,
    // so that everything under it is removed on success and on error alike.
    let (temp, root) = match &cfg.dir {
        Some(d) => {
            fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            (None, d.clone())
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("ferry-bench-")
                .tempdir()
                .context("create a temporary directory")?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    let work = root.join(format!("work-{}", std::process::id()));
    let dirs = WorkDirs::create(&work, cfg.restore_dir.as_deref())?;

    let dataset = Dataset::prepare(&cfg, &root, &work)?;
    let plan = ChangePlan::new(&dataset.path)?;
    eprintln!(
        "compare: dataset {} ({}); change touches {} small files{}",
        dataset.path.display(),
        dataset.summary.describe(),
        plan.small.len(),
        match &plan.large {
            Some(p) => format!(" and appends to {}", p.display()),
            None => String::new(),
        }
    );

    let mut results: Vec<Results> = tools.iter().map(|_| Results::default()).collect();
    let mut changed_summary = dataset.summary;
    for run in 0..cfg.runs {
        let order: Vec<usize> = (0..tools.len()).map(|i| (i + run) % tools.len()).collect();
        let tag = format!("run {}/{}", run + 1, cfg.runs);
        for &t in &order {
            let repo = dirs.repo(&tools[t]);
            if repo.exists() {
                fs::remove_dir_all(&repo).with_context(|| format!("remove {}", repo.display()))?;
            }
            let label = format!("r{run}-init-{}", tools[t].name());
            measure(&mut tools[t].init(&repo, &dirs), &dirs.logs, &label)?;
        }

        for op in [Op::First, Op::Unchanged] {
            for &t in &order {
                let sample = timed_snapshot(&tools[t], &dataset.path, &dirs, run, op)?;
                report_progress(&tag, op, &tools[t], &sample);
                results[t].samples[op as usize].push(sample);
            }
            if op == Op::First {
                for &t in &order {
                    results[t]
                        .repo_after_first
                        .push(disk_usage(&dirs.repo(&tools[t]))?);
                }
            }
        }

        dataset.set_pristine(false)?;
        let applied = plan.apply()?;
        changed_summary = summarize(&dataset.path)?;
        for &t in &order {
            let sample = timed_snapshot(&tools[t], &dataset.path, &dirs, run, Op::Changed)?;
            report_progress(&tag, Op::Changed, &tools[t], &sample);
            results[t].samples[Op::Changed as usize].push(sample);
        }
        for &t in &order {
            results[t]
                .repo_after_all
                .push(disk_usage(&dirs.repo(&tools[t]))?);
        }

        for &t in &order {
            let tool = &tools[t];
            let target = dirs.restore.join(format!("{}-run{run}", tool.name()));
            fresh_dir(&target)?;
            let repo = dirs.repo(tool);
            settle_and_warm(&[&repo, &dirs.cache])?;
            let label = format!("r{run}-restore-{}", tool.name());
            let sample = measure(&mut tool.restore(&repo, &target, &dirs), &dirs.logs, &label)?;
            report_progress(&tag, Op::Restore, tool, &sample);
            results[t].samples[Op::Restore as usize].push(sample);
            let restored = summarize(&target)?;
            if restored != changed_summary {
                let msg = format!(
                    "{} restored {} but the source holds {}",
                    tool.name(),
                    restored.describe(),
                    changed_summary.describe()
                );
                if tool.kind == Kind::Ferry {
                    bail!("restore check failed in run {}: {msg}", run + 1);
                }
                eprintln!("compare: WARNING: {msg}");
                results[t].restore_mismatches.push(msg);
            }
            fs::remove_dir_all(&target).with_context(|| format!("remove {}", target.display()))?;
        }

        plan.revert(applied)?;
        ensure!(
            summarize(&dataset.path)? == dataset.summary,
            "the dataset differs from its original after undoing the change"
        );
        dataset.set_pristine(true)?;
        for &t in &order {
            let repo = dirs.repo(&tools[t]);
            fs::remove_dir_all(&repo).with_context(|| format!("remove {}", repo.display()))?;
        }
    }

    let report = Report {
        cfg: &cfg,
        tools: &tools,
        results: &results,
        dataset: &dataset,
        changed: changed_summary,
        restore_target: &dirs.restore,
        missing_rustic,
    };
    print!("{}", report.table());
    println!("{}", report.json());

    fs::remove_dir_all(&work).with_context(|| format!("remove {}", work.display()))?;
    if let Some(custom) = &cfg.restore_dir {
        let ours = custom.join(format!("ferry-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(ours);
    }
    drop(temp);
    Ok(())
}

/// Settings read from the environment; see the module documentation.
struct Config {
    scale: f64,
    runs: usize,
    data: Option<PathBuf>,
    dir: Option<PathBuf>,
    restore_dir: Option<PathBuf>,
    ferry: PathBuf,
    only: Option<Vec<String>>,
}

impl Config {
    fn from_env() -> anyhow::Result<Self> {
        let scale: f64 = env_parse("FERRY_BENCH_SCALE", 1.0)?;
        ensure!(
            scale.is_finite() && scale > 0.0,
            "FERRY_BENCH_SCALE must be a positive number, not {scale}"
        );
        let runs: usize = env_parse("FERRY_BENCH_RUNS", 3)?;
        ensure!(runs > 0, "FERRY_BENCH_RUNS must be at least 1");
        let path = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let ferry = path("FERRY_BIN").unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_ferry")));
        let only = std::env::var("FERRY_BENCH_TOOLS")
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
        Ok(Config {
            scale,
            runs,
            data: path("FERRY_BENCH_DATA"),
            dir: path("FERRY_BENCH_DIR"),
            restore_dir: path("FERRY_BENCH_RESTORE_DIR"),
            ferry,
            only,
        })
    }

    fn wants(&self, kind: Kind) -> bool {
        self.only
            .as_ref()
            .is_none_or(|list| list.iter().any(|n| n == kind.name()))
    }
}

fn env_parse<T: FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("parse {name}={v}: {e}")),
        _ => Ok(default),
    }
}

/// The directories one invocation works in; all of it is removed at the end.
struct WorkDirs {
    repos: PathBuf,
    restore: PathBuf,
    logs: PathBuf,
    /// `XDG_CACHE_HOME` of every child, so that restic's and rustic's caches stay in here.
    cache: PathBuf,
}

impl WorkDirs {
    fn create(work: &Path, restore_dir: Option<&Path>) -> anyhow::Result<Self> {
        let restore = match restore_dir {
            Some(d) => d.join(format!("ferry-bench-{}", std::process::id())),
            None => work.join("restore"),
        };
        let dirs = WorkDirs {
            repos: work.join("repos"),
            restore,
            logs: work.join("logs"),
            cache: work.join("cache"),
        };
        for d in [&dirs.repos, &dirs.restore, &dirs.logs, &dirs.cache] {
            fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        Ok(dirs)
    }

    fn repo(&self, tool: &Tool) -> PathBuf {
        self.repos.join(tool.name())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Ferry,
    Restic,
    Rustic,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ferry => "ferry",
            Kind::Restic => "restic",
            Kind::Rustic => "rustic",
        }
    }
}

/// One program under test and how to drive it.
struct Tool {
    kind: Kind,
    program: PathBuf,
    version: String,
}

fn find_tools(cfg: &Config) -> anyhow::Result<Vec<Tool>> {
    let mut tools = Vec::new();
    for kind in [Kind::Ferry, Kind::Restic, Kind::Rustic] {
        if !cfg.wants(kind) {
            continue;
        }
        let program = match kind {
            Kind::Ferry => {
                ensure!(
                    cfg.ferry.is_file(),
                    "ferry binary {} does not exist",
                    cfg.ferry.display()
                );
                cfg.ferry.clone()
            }
            Kind::Restic | Kind::Rustic => match on_path(kind.name()) {
                Some(p) => p,
                None if kind == Kind::Rustic => continue,
                None => bail!("{} is not on PATH", kind.name()),
            },
        };
        let version_arg = if kind == Kind::Restic {
            "version"
        } else {
            "--version"
        };
        let out = Command::new(&program)
            .arg(version_arg)
            .output()
            .with_context(|| format!("run {} {version_arg}", program.display()))?;
        let version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        tools.push(Tool {
            kind,
            program,
            version,
        });
    }
    ensure!(!tools.is_empty(), "FERRY_BENCH_TOOLS selects no tool");
    Ok(tools)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
}

impl Tool {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// A command for this tool with a clean, explicit environment for repository settings.
    fn command(&self, dirs: &WorkDirs) -> Command {
        let mut c = Command::new(&self.program);
        for var in [
            "RESTIC_REPOSITORY",
            "RESTIC_REPOSITORY_FILE",
            "RESTIC_PASSWORD_FILE",
            "RESTIC_PASSWORD_COMMAND",
            "RESTIC_COMPRESSION",
            "RESTIC_PACK_SIZE",
            "RESTIC_CACHE_DIR",
            "RUSTIC_REPOSITORY",
            "RUSTIC_PASSWORD_FILE",
            "RUSTIC_PASSWORD_COMMAND",
        ] {
            c.env_remove(var);
        }
        match self.kind {
            Kind::Ferry | Kind::Restic => c.env("RESTIC_PASSWORD", PASSWORD),
            Kind::Rustic => c.env("RUSTIC_PASSWORD", PASSWORD),
        };
        c.env("XDG_CACHE_HOME", &dirs.cache);
        c
    }

    fn init(&self, repo: &Path, dirs: &WorkDirs) -> Command {
        let mut c = self.command(dirs);
        match self.kind {
            Kind::Ferry => c.arg("init").arg("-r").arg(repo),
            Kind::Restic => c
                .arg("-r")
                .arg(repo)
                .args(["init", "--repository-version", "2"]),
            Kind::Rustic => c.arg("-r").arg(repo).arg("init"),
        };
        c
    }

    /// Snapshots `data` so that its content is the snapshot's root: ferry takes the path, the
    /// others back up `.` from inside it.
    fn snapshot(&self, data: &Path, repo: &Path, dirs: &WorkDirs) -> Command {
        let mut c = self.command(dirs);
        match self.kind {
            Kind::Ferry => c
                .args(["agent", "snapshot"])
                .arg(data)
                .arg("-r")
                .arg(repo)
                .arg("--json"),
            Kind::Restic | Kind::Rustic => c
                .current_dir(data)
                .arg("-r")
                .arg(repo)
                .args(["backup", "."]),
        };
        c
    }

    fn restore(&self, repo: &Path, target: &Path, dirs: &WorkDirs) -> Command {
        let mut c = self.command(dirs);
        match self.kind {
            Kind::Ferry => c
                .args(["agent", "restore", "latest", "--target"])
                .arg(target)
                .arg("-r")
                .arg(repo),
            Kind::Restic => c
                .arg("-r")
                .arg(repo)
                .args(["restore", "latest", "--target"])
                .arg(target),
            Kind::Rustic => c
                .arg("-r")
                .arg(repo)
                .args(["restore", "latest"])
                .arg(target),
        };
        c
    }
}

fn timed_snapshot(
    tool: &Tool,
    data: &Path,
    dirs: &WorkDirs,
    run: usize,
    op: Op,
) -> anyhow::Result<Sample> {
    let repo = dirs.repo(tool);
    settle_and_warm(&[data, &repo, &dirs.cache])?;
    let label = format!("r{run}-{}-{}", op.key(), tool.name());
    measure(&mut tool.snapshot(data, &repo, dirs), &dirs.logs, &label)
}

fn report_progress(tag: &str, op: Op, tool: &Tool, s: &Sample) {
    eprintln!(
        "compare: {tag} {:<24} {:<7} {:>7.2} s wall {:>7.2} s cpu {:>7.1} MiB rss",
        op.label(),
        tool.name(),
        s.wall,
        s.cpu(),
        s.max_rss_kib as f64 / 1024.0
    );
}

/// What one child process cost.
#[derive(Clone, Copy, Debug)]
struct Sample {
    wall: f64,
    user: f64,
    sys: f64,
    max_rss_kib: u64,
}

impl Sample {
    fn cpu(&self) -> f64 {
        self.user + self.sys
    }
}

/// Runs `cmd` to completion with its output in `logs/label.{out,err}` and measures it; a non-zero
/// exit is an error that quotes the end of the child's stderr.
fn measure(cmd: &mut Command, logs: &Path, label: &str) -> anyhow::Result<Sample> {
    let out_path = logs.join(format!("{label}.out"));
    let err_path = logs.join(format!("{label}.err"));
    let out = File::create(&out_path).with_context(|| format!("create {}", out_path.display()))?;
    let err = File::create(&err_path).with_context(|| format!("create {}", err_path.display()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("start {label}: {cmd:?}"))?;
    let pid = libc::pid_t::try_from(child.id()).context("child pid out of range")?;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data for which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: the pointers refer to live locals, and `pid` is our own unreaped child (the
        // `Child` handle is dropped below without waiting, so nothing else reaps it).
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(e).with_context(|| format!("wait for {label}"));
        }
    }
    let wall = started.elapsed().as_secs_f64();
    drop(child);
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let how = if libc::WIFEXITED(status) {
            format!("exit code {}", libc::WEXITSTATUS(status))
        } else {
            format!("signal {}", libc::WTERMSIG(status))
        };
        bail!(
            "{label} failed with {how}: {cmd:?}\n--- end of {} ---\n{}",
            err_path.display(),
            tail(&err_path)
        );
    }
    Ok(Sample {
        wall,
        user: seconds(usage.ru_utime),
        sys: seconds(usage.ru_stime),
        // On Linux ru_maxrss is in KiB.
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
    })
}

fn tail(path: &Path) -> String {
    let text = fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(3000);
    String::from_utf8_lossy(text.get(start..).unwrap_or_default()).into_owned()
}

/// Flushes dirty pages, so that writeback from earlier steps does not run during the next
/// measurement, then reads every file under `roots` so the next command finds them cached.
fn settle_and_warm(roots: &[&Path]) -> anyhow::Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let mut buf = vec![0u8; MIB as usize];
    for root in roots {
        visit(root, &mut |path, meta| {
            if meta.is_file() {
                let mut f = File::open(path).with_context(|| format!("open {}", path.display()))?;
                while f
                    .read(&mut buf)
                    .with_context(|| format!("read {}", path.display()))?
                    > 0
                {}
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Calls `f` for every entry under `root` (not `root` itself), without following symlinks.
fn visit(
    root: &Path,
    f: &mut dyn FnMut(&Path, &fs::Metadata) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("list {}", dir.display()))?;
            let path = entry.path();
            let meta =
                fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
            f(&path, &meta)?;
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// Counts of what a tree holds; two trees with equal summaries pass the cheap restore check.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct TreeSummary {
    files: u64,
    dirs: u64,
    symlinks: u64,
    /// Sum of the regular files' lengths.
    bytes: u64,
}

impl TreeSummary {
    fn describe(&self) -> String {
        let mut s = format!(
            "{} files, {} directories, {} bytes ({:.1} MiB)",
            thousands(self.files),
            thousands(self.dirs),
            thousands(self.bytes),
            self.bytes as f64 / MIB as f64
        );
        if self.symlinks > 0 {
            let _ = write!(s, ", {} symlinks", thousands(self.symlinks));
        }
        s
    }
}

fn summarize(root: &Path) -> anyhow::Result<TreeSummary> {
    let mut s = TreeSummary::default();
    visit(root, &mut |_, meta| {
        if meta.is_file() {
            s.files += 1;
            s.bytes += meta.len();
        } else if meta.is_dir() {
            s.dirs += 1;
        } else if meta.file_type().is_symlink() {
            s.symlinks += 1;
        }
        Ok(())
    })?;
    Ok(s)
}

/// Allocated bytes under `root`, counting `root` itself, the way `du` counts them.
fn disk_usage(root: &Path) -> anyhow::Result<u64> {
    let mut total = fs::symlink_metadata(root)
        .with_context(|| format!("stat {}", root.display()))?
        .blocks()
        * 512;
    visit(root, &mut |_, meta| {
        total += meta.blocks() * 512;
        Ok(())
    })?;
    Ok(total)
}

fn fresh_dir(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        fs::remove_dir_all(path).with_context(|| format!("remove {}", path.display()))?;
    }
    fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The tree every tool snapshots.
struct Dataset {
    path: PathBuf,
    summary: TreeSummary,
    description: String,
    /// For a generated dataset kept in `FERRY_BENCH_DIR`: the file whose presence says the
    /// dataset is complete and unmodified, so a later invocation may reuse it.
    marker: Option<PathBuf>,
}

impl Dataset {
    fn prepare(cfg: &Config, root: &Path, work: &Path) -> anyhow::Result<Self> {
        if let Some(src) = &cfg.data {
            let path = work.join("data");
            eprintln!(
                "compare: copying {} to {} (the bench modifies its input)",
                src.display(),
                path.display()
            );
            copy_tree(src, &path)?;
            let summary = summarize(&path)?;
            return Ok(Dataset {
                path,
                summary,
                description: format!("a copy of {}", src.display()),
                marker: None,
            });
        }
        let name = format!("data-scale-{}", cfg.scale);
        let path = root.join(&name);
        let marker = root.join(format!("{name}.complete"));
        let description = match fs::read_to_string(&marker) {
            Ok(d) if path.is_dir() => {
                eprintln!("compare: reusing the dataset in {}", path.display());
                d
            }
            _ => {
                if path.exists() {
                    fs::remove_dir_all(&path)
                        .with_context(|| format!("remove {}", path.display()))?;
                }
                eprintln!("compare: generating the dataset in {}", path.display());
                let started = Instant::now();
                let d = generate(&path, cfg.scale)?;
                eprintln!(
                    "compare: generated in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                d
            }
        };
        let dataset = Dataset {
            summary: summarize(&path)?,
            path,
            description,
            marker: Some(marker),
        };
        dataset.set_pristine(true)?;
        Ok(dataset)
    }

    /// Records whether the dataset is in its original state.
    fn set_pristine(&self, pristine: bool) -> anyhow::Result<()> {
        let Some(marker) = &self.marker else {
            return Ok(());
        };
        if pristine {
            fs::write(marker, &self.description)
                .with_context(|| format!("write {}", marker.display()))
        } else {
            match fs::remove_file(marker) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("remove {}", marker.display()))
                }
                _ => Ok(()),
            }
        }
    }
}

fn copy_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    fresh_dir(dst)?;
    visit(src, &mut |path, meta| {
        let rel = path
            .strip_prefix(src)
            .context("walk left the source tree")?;
        let to = dst.join(rel);
        if meta.is_dir() {
            fs::create_dir_all(&to).with_context(|| format!("create {}", to.display()))?;
        } else if meta.is_file() {
            fs::copy(path, &to).with_context(|| format!("copy {}", path.display()))?;
        } else if meta.file_type().is_symlink() {
            let link = fs::read_link(path).with_context(|| format!("read {}", path.display()))?;
            std::os::unix::fs::symlink(link, &to)
                .with_context(|| format!("create {}", to.display()))?;
        } else {
            eprintln!("compare: skipping special file {}", path.display());
        }
        Ok(())
    })
}

/// xorshift64* (Vigna): small, fast and good enough to make test data; not for anything secret.
struct Rng(u64);

impl Rng {
    /// Mixes `seed` with splitmix64 first, so neighbouring seeds give unrelated streams.
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n`, for `n` below 2^32.
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() >> 32) * n) >> 32
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A fixed vocabulary of made-up words: 4,096 of them gives zstd level 3 about 3:1 on the text.
fn vocabulary() -> Vec<Vec<u8>> {
    let mut rng = Rng::new(SEED ^ 0x0076_6f63_6162);
    (0..4096)
        .map(|_| {
            let len = 2 + rng.below(8) as usize;
            (0..len).map(|_| b'a' + rng.below(26) as u8).collect()
        })
        .collect()
}

/// Text-like bytes: lines of words drawn with a skew towards the front of the vocabulary, and
/// one line in five a repeat of a recent line.
struct TextGen<'a> {
    words: &'a [Vec<u8>],
    recent: Vec<Vec<u8>>,
    rng: Rng,
}

impl<'a> TextGen<'a> {
    fn new(words: &'a [Vec<u8>], seed: u64) -> Self {
        TextGen {
            words,
            recent: Vec::new(),
            rng: Rng::new(seed),
        }
    }

    /// Appends exactly `len` bytes of text to `out`.
    fn fill(&mut self, out: &mut Vec<u8>, len: usize) {
        let end = out.len() + len;
        while out.len() < end {
            self.line(out);
        }
        out.truncate(end);
    }

    fn line(&mut self, out: &mut Vec<u8>) {
        if self.recent.len() >= 16 && self.rng.below(5) == 0 {
            let i = self.rng.below(self.recent.len() as u64) as usize;
            out.extend_from_slice(&self.recent[i]);
            return;
        }
        let n = self.words.len() as u64;
        let mut line = Vec::with_capacity(96);
        for k in 0..4 + self.rng.below(12) {
            if k > 0 {
                line.push(b' ');
            }
            // The product of two uniform draws favours small indices, like word frequencies.
            let idx = self.rng.below(n) * self.rng.below(n) / n;
            line.extend_from_slice(&self.words[idx as usize]);
        }
        line.extend_from_slice(b".\n");
        out.extend_from_slice(&line);
        if self.recent.len() < 64 {
            self.recent.push(line);
        } else {
            let i = self.rng.below(64) as usize;
            self.recent[i] = line;
        }
    }
}

/// Writes the generated dataset into `dir` and returns its description.
fn generate(dir: &Path, scale: f64) -> anyhow::Result<String> {
    let words = vocabulary();
    let small = ((20_000.0 * scale).round() as usize).max(1);
    let large = ((256.0 * scale * MIB as f64) as u64).max(MIB);
    let mut buf = Vec::with_capacity(64 * KIB as usize);
    for i in 0..small {
        let leaf = i / FILES_PER_DIR;
        let parent = dir
            .join("small")
            .join(format!("p{:03}", leaf / DIRS_PER_PARENT))
            .join(format!("d{leaf:04}"));
        if i % FILES_PER_DIR == 0 {
            fs::create_dir_all(&parent).with_context(|| format!("create {}", parent.display()))?;
        }
        let mut rng = Rng::new(SEED ^ (i as u64).wrapping_mul(0x1000_0000_01b3));
        let len = (KIB + rng.below(63 * KIB + 1)) as usize;
        buf.clear();
        TextGen::new(&words, rng.next()).fill(&mut buf, len);
        let path = parent.join(format!("f{i:05}.txt"));
        fs::write(&path, &buf).with_context(|| format!("write {}", path.display()))?;
    }

    let large_dir = dir.join("large");
    fs::create_dir_all(&large_dir).with_context(|| format!("create {}", large_dir.display()))?;
    let block = 4 * MIB as usize;
    for k in 0..2u64 {
        let path = large_dir.join(format!("random-{k}.bin"));
        let mut rng = Rng::new(SEED ^ 0x7261_6e64 ^ k);
        write_blocks(&path, large, block, |b, n| {
            b.resize(n, 0);
            rng.fill(b);
        })?;
        let path = large_dir.join(format!("text-{k}.txt"));
        let mut text = TextGen::new(&words, SEED ^ 0x7465_7874 ^ k);
        write_blocks(&path, large, block, |b, n| text.fill(b, n))?;
    }

    let sample = large.min(8 * MIB);
    let ratio = zstd_ratio(&large_dir.join("text-0.txt"), sample)?;
    Ok(format!(
        "generated at scale {scale}: {} small text files of 1-64 KiB (~{FILES_PER_DIR} per \
         directory), 2 x {} MiB pseudo-random, 2 x {} MiB text (zstd-3 ratio {ratio:.2}:1 on \
         its first {} MiB)",
        thousands(small as u64),
        large / MIB,
        large / MIB,
        sample / MIB
    ))
}

/// Writes `size` bytes to `path`, asking `make(buf, n)` to fill an empty buffer with `n` bytes
/// at a time.
fn write_blocks(
    path: &Path,
    size: u64,
    block: usize,
    mut make: impl FnMut(&mut Vec<u8>, usize),
) -> anyhow::Result<()> {
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut buf = Vec::with_capacity(block);
    let mut left = size;
    while left > 0 {
        let n = left.min(block as u64) as usize;
        buf.clear();
        make(&mut buf, n);
        f.write_all(&buf)
            .with_context(|| format!("write {}", path.display()))?;
        left -= n as u64;
    }
    Ok(())
}

/// How much zstd level 3 shrinks the first `limit` bytes of `path`.
fn zstd_ratio(path: &Path, limit: u64) -> anyhow::Result<f64> {
    let mut sample = Vec::new();
    File::open(path)
        .with_context(|| format!("open {}", path.display()))?
        .take(limit)
        .read_to_end(&mut sample)
        .with_context(|| format!("read {}", path.display()))?;
    let packed = zstd::bulk::compress(&sample, 3).context("compress a sample")?;
    Ok(sample.len() as f64 / packed.len().max(1) as f64)
}

/// Which files the 1% change touches; fixed once, so every run changes the same bytes.
struct ChangePlan {
    small: Vec<PathBuf>,
    large: Option<PathBuf>,
}

/// What [`ChangePlan::apply`] overwrote, for [`ChangePlan::revert`].
struct Applied {
    originals: Vec<Vec<u8>>,
    large_len: Option<u64>,
}

impl ChangePlan {
    fn new(data: &Path) -> anyhow::Result<Self> {
        let mut files: Vec<(PathBuf, u64)> = Vec::new();
        visit(data, &mut |path, meta| {
            if meta.is_file() {
                files.push((path.to_path_buf(), meta.len()));
            }
            Ok(())
        })?;
        files.sort();
        let small = files
            .iter()
            .filter(|(_, len)| *len < SMALL_LIMIT)
            .enumerate()
            .filter(|(i, _)| i % 100 == 0)
            .map(|(_, (p, _))| p.clone())
            .collect();
        // The first of the largest files in path order, if it is large at all.
        let mut large: Option<&(PathBuf, u64)> = None;
        for f in &files {
            if f.1 >= SMALL_LIMIT && large.is_none_or(|l| f.1 > l.1) {
                large = Some(f);
            }
        }
        Ok(ChangePlan {
            small,
            large: large.map(|(p, _)| p.clone()),
        })
    }

    fn apply(&self) -> anyhow::Result<Applied> {
        let mut originals = Vec::with_capacity(self.small.len());
        for (i, path) in self.small.iter().enumerate() {
            let old = fs::read(path).with_context(|| format!("read {}", path.display()))?;
            let mut new = old.clone();
            let patch = format!("<changed {i:06} by bench>");
            let mid = new.len() / 2;
            for (dst, src) in new.iter_mut().skip(mid).zip(patch.bytes()) {
                *dst = src;
            }
            new.extend_from_slice(b"\na line appended by the ferry bench\n");
            fs::write(path, &new).with_context(|| format!("write {}", path.display()))?;
            originals.push(old);
        }
        let large_len = match &self.large {
            Some(path) => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .with_context(|| format!("open {}", path.display()))?;
                let len = f
                    .seek(SeekFrom::End(0))
                    .with_context(|| format!("seek {}", path.display()))?;
                let mut extra = vec![0u8; (len / 100).max(64 * KIB) as usize];
                Rng::new(SEED ^ 0x6170_7065_6e64).fill(&mut extra);
                f.write_all(&extra)
                    .with_context(|| format!("append to {}", path.display()))?;
                Some(len)
            }
            None => None,
        };
        Ok(Applied {
            originals,
            large_len,
        })
    }

    fn revert(&self, applied: Applied) -> anyhow::Result<()> {
        for (path, old) in self.small.iter().zip(applied.originals) {
            fs::write(path, old).with_context(|| format!("write {}", path.display()))?;
        }
        if let (Some(path), Some(len)) = (&self.large, applied.large_len) {
            fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(len))
                .with_context(|| format!("truncate {}", path.display()))?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    First = 0,
    Unchanged = 1,
    Changed = 2,
    Restore = 3,
}

impl Op {
    const ALL: [Op; 4] = [Op::First, Op::Unchanged, Op::Changed, Op::Restore];

    fn key(self) -> &'static str {
        match self {
            Op::First => "first_snapshot",
            Op::Unchanged => "unchanged_snapshot",
            Op::Changed => "changed_snapshot",
            Op::Restore => "restore",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Op::First => "first snapshot",
            Op::Unchanged => "unchanged re-snapshot",
            Op::Changed => "1%-changed snapshot",
            Op::Restore => "full restore",
        }
    }
}

/// Everything measured for one tool, one entry per run.
#[derive(Default)]
struct Results {
    samples: [Vec<Sample>; 4],
    repo_after_first: Vec<u64>,
    repo_after_all: Vec<u64>,
    restore_mismatches: Vec<String>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

struct Report<'a> {
    cfg: &'a Config,
    tools: &'a [Tool],
    results: &'a [Results],
    dataset: &'a Dataset,
    changed: TreeSummary,
    restore_target: &'a Path,
    missing_rustic: bool,
}

/// Extracts one figure per run from a tool's results.
type Series = Box<dyn Fn(&Results) -> Vec<f64>>;

/// One table row: a figure per run for each tool, and whether more is better.
struct Row {
    label: &'static str,
    higher_is_better: bool,
    decimals: usize,
    values: Series,
}

impl Report<'_> {
    fn rows(&self) -> Vec<Row> {
        let walls = |op: Op| {
            move |r: &Results| -> Vec<f64> {
                r.samples[op as usize].iter().map(|s| s.wall).collect()
            }
        };
        let cpus = |op: Op| {
            move |r: &Results| -> Vec<f64> {
                r.samples[op as usize].iter().map(|s| s.cpu()).collect()
            }
        };
        let rss = |op: Op| {
            move |r: &Results| -> Vec<f64> {
                r.samples[op as usize]
                    .iter()
                    .map(|s| s.max_rss_kib as f64 / 1024.0)
                    .collect()
            }
        };
        let rate = |op: Op, bytes: u64| {
            move |r: &Results| -> Vec<f64> {
                r.samples[op as usize]
                    .iter()
                    .map(|s| bytes as f64 / 1e6 / s.wall)
                    .collect()
            }
        };
        let mib = |v: &[u64]| -> Vec<f64> { v.iter().map(|b| *b as f64 / MIB as f64).collect() };
        let row = |label, higher_is_better, decimals, f: Series| Row {
            label,
            higher_is_better,
            decimals,
            values: f,
        };
        vec![
            row(
                "first snapshot, wall s",
                false,
                2,
                Box::new(walls(Op::First)),
            ),
            row("first snapshot, CPU s", false, 2, Box::new(cpus(Op::First))),
            row(
                "first snapshot, MB/s",
                true,
                1,
                Box::new(rate(Op::First, self.dataset.summary.bytes)),
            ),
            row(
                "first snapshot, peak RSS MiB",
                false,
                1,
                Box::new(rss(Op::First)),
            ),
            row(
                "unchanged re-snapshot, wall s",
                false,
                2,
                Box::new(walls(Op::Unchanged)),
            ),
            row(
                "unchanged re-snapshot, CPU s",
                false,
                2,
                Box::new(cpus(Op::Unchanged)),
            ),
            row(
                "1%-changed snapshot, wall s",
                false,
                2,
                Box::new(walls(Op::Changed)),
            ),
            row(
                "1%-changed snapshot, CPU s",
                false,
                2,
                Box::new(cpus(Op::Changed)),
            ),
            row(
                "full restore, wall s",
                false,
                2,
                Box::new(walls(Op::Restore)),
            ),
            row("full restore, CPU s", false, 2, Box::new(cpus(Op::Restore))),
            row(
                "full restore, MB/s",
                true,
                1,
                Box::new(rate(Op::Restore, self.changed.bytes)),
            ),
            row(
                "full restore, peak RSS MiB",
                false,
                1,
                Box::new(rss(Op::Restore)),
            ),
            row(
                "repo size after 1st snapshot, MiB",
                false,
                1,
                Box::new(move |r: &Results| mib(&r.repo_after_first)),
            ),
            row(
                "repo size after 3 snapshots, MiB",
                false,
                1,
                Box::new(move |r: &Results| mib(&r.repo_after_all)),
            ),
        ]
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let versions: Vec<String> = self.tools.iter().map(|t| t.version.clone()).collect();
        let _ = writeln!(out, "\n== ferry vs peers ({}) ==", versions.join("; "));
        if self.missing_rustic && self.cfg.wants(Kind::Rustic) {
            let _ = writeln!(out, "rustic: not on PATH, skipped");
        }
        if let Some(t) = self.tools.iter().find(|t| t.kind == Kind::Ferry) {
            let _ = writeln!(out, "ferry binary: {}", t.program.display());
        }
        let _ = writeln!(out, "dataset: {}", self.dataset.description);
        let _ = writeln!(out, "         {}", self.dataset.summary.describe());
        let _ = writeln!(
            out,
            "runs: {}, tools alternated per operation, sync + page cache warmed before each timed \
             command; medians; restores into {}",
            self.cfg.runs,
            self.restore_target.display()
        );
        let _ = writeln!(
            out,
            "ratio = peer/ferry (for MB/s rows ferry/peer): above 1 favours ferry\n"
        );

        let ferry = self.tools.iter().position(|t| t.kind == Kind::Ferry);
        let _ = write!(out, "{:<36}", "operation");
        for t in self.tools {
            let _ = write!(out, "{:>11}", t.name());
            if t.kind != Kind::Ferry && ferry.is_some() {
                let _ = write!(out, "{:>14}", format!("{}/ferry", t.name()));
            }
        }
        out.push('\n');
        for row in self.rows() {
            let _ = write!(out, "{:<36}", row.label);
            let ferry_median = ferry.map(|i| median(&(row.values)(&self.results[i])));
            for (t, r) in self.tools.iter().zip(self.results) {
                let m = median(&(row.values)(r));
                let _ = write!(out, "{:>11.*}", row.decimals, m);
                if let (Some(f), true) = (ferry_median, t.kind != Kind::Ferry) {
                    let ratio = if row.higher_is_better { f / m } else { m / f };
                    let _ = write!(out, "{:>14.2}", ratio);
                }
            }
            out.push('\n');
        }
        for (t, r) in self.tools.iter().zip(self.results) {
            for m in &r.restore_mismatches {
                let _ = writeln!(out, "WARNING ({}): {m}", t.name());
            }
        }
        out.push('\n');
        out
    }

    fn json(&self) -> String {
        let mut tools = serde_json::Map::new();
        for (t, r) in self.tools.iter().zip(self.results) {
            let mut entry = serde_json::Map::new();
            entry.insert("version".into(), json!(t.version));
            for op in Op::ALL {
                let samples: Vec<_> = r.samples[op as usize]
                    .iter()
                    .map(|s| {
                        json!({
                            "wall_s": s.wall,
                            "user_s": s.user,
                            "sys_s": s.sys,
                            "max_rss_kib": s.max_rss_kib,
                        })
                    })
                    .collect();
                entry.insert(op.key().into(), json!(samples));
            }
            entry.insert("repo_bytes_after_first".into(), json!(r.repo_after_first));
            entry.insert("repo_bytes_after_all".into(), json!(r.repo_after_all));
            entry.insert("restore_mismatches".into(), json!(r.restore_mismatches));
            tools.insert(t.name().into(), serde_json::Value::Object(entry));
        }
        let summary = |s: &TreeSummary| {
            json!({
                "files": s.files,
                "dirs": s.dirs,
                "symlinks": s.symlinks,
                "bytes": s.bytes,
            })
        };
        json!({
            "bench": "compare",
            "scale": self.cfg.scale,
            "runs": self.cfg.runs,
            "dataset": {
                "description": self.dataset.description,
                "original": summary(&self.dataset.summary),
                "changed": summary(&self.changed),
            },
            "restore_target": self.restore_target.display().to_string(),
            "tools": tools,
        })
        .to_string()
    }
}
