//! `cargo bench --bench compare`: ferry against restic (and rustic when it is installed) on one
//! dataset, end to end, through each program's command line.
//!
//! The harness owns the whole comparison: it generates (or copies) a dataset, runs each tool's
//! first snapshot, unchanged re-snapshot, full restore (the staged copy), 1%-changed snapshot
//! and final restore of it into the staged copy against fresh repositories, either local directories or buckets in an S3 server it starts itself, measures
//! every child process (wall time, user+sys CPU and peak RSS, all from `wait4`), and prints
//! medians as a table followed by one JSON line of raw figures. It checks correctness only
//! cheaply (file count and byte total of each restore); comparing trees byte for byte is the test
//! suite's job. It never runs under `cargo test`: without the `--bench` argument that
//! `cargo bench` passes, it prints a note and exits.
//!
//! Method. Every run creates a fresh repository per tool. Operations are interleaved: all tools
//! do their first snapshot, then all their unchanged re-snapshot, and so on, and the order of the
//! tools rotates from run to run. Before each timed command the harness calls `sync(2)`, so that
//! writeback left over from earlier work does not land in the measurement, and then reads the
//! command's local input (the dataset, a local repository, the tools' caches) so that the page
//! cache is warm, because this machine evicts idle cache within about a minute.
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
//! The code is split by concern: [`dataset`] makes the tree and the change, [`fstree`] walks
//! and sizes trees, [`measure`] runs and measures children, [`tools`] knows each program's
//! command line, [`store`] provides the repositories, [`s3`] runs the S3 server for them, and
//! [`report`] turns samples into the table and the JSON line. This file reads the settings and
//! drives the runs.
//!
//! Unit tests. Cargo builds this target with `cfg(test)` but without the test harness (it has
//! `harness = false`), so `cargo test` does not run the `#[cfg(test)]` modules. Run them by
//! compiling the file with `rustc --edition 2024 --test` against the rlibs of a
//! `cargo bench --no-run` (take the `-L` and `--extern` flags from `cargo bench -v`, and set
//! `CARGO_BIN_EXE_ferry` to any path).
//!
//! Environment:
//! - `FERRY_BENCH_SCALE` (default 1.0): size of the generated dataset. At 1.0 it holds 20,000
//!   small text files of 1–64 KiB, about 50 per directory, plus two 256 MiB pseudo-random files
//!   and two 256 MiB text files that zstd level 3 shrinks about 3:1; file counts and large-file
//!   sizes scale linearly.
//! - `FERRY_BENCH_RUNS` (default 3): runs per tool; the table shows medians.
//! - `FERRY_BENCH_STORE` (default `local`): where repositories live. `local`: a directory per
//!   tool and run. `s3`: the harness starts `moto_server` on a free port of 127.0.0.1, gives
//!   each tool a fresh bucket per run (location `s3:http://127.0.0.1:PORT/BUCKET/repo`, dummy
//!   AWS credentials), sizes repositories by listing their objects, and stops the server at the
//!   end. rustic is not run in S3 mode.
//! - `FERRY_BENCH_MOTO` (default `moto_server` on `PATH`): the S3 server program for `s3` mode;
//!   it must accept `-H 127.0.0.1 -p 0` and print ` * Running on http://HOST:PORT`.
//! - `FERRY_BENCH_DATA`: use (a copy of) this directory instead of generating a dataset.
//! - `FERRY_BENCH_DIR`: where data, repositories and restores go (default: a fresh temporary
//!   directory, removed at the end). A generated dataset is kept there and reused by later runs
//!   with the same scale.
//! - `FERRY_BENCH_RESTORE_DIR`: where restores go, e.g. a tmpfs mount to take the disk out of
//!   the restore figures (default: inside the work directory). Each tool's staged copy stays
//!   until its final restore, so this needs room for one copy of the dataset per tool.
//! - `FERRY_BENCH_TOOLS`: comma-separated subset of `ferry,restic,rustic` (default: all found).
//! - `FERRY_BIN`: the ferry binary to run (default: the one cargo built for this bench, which
//!   uses the release settings through the bench profile).

#[path = "compare/dataset.rs"]
mod dataset;
#[path = "compare/fstree.rs"]
mod fstree;
#[path = "compare/measure.rs"]
mod measure;
#[path = "compare/report.rs"]
mod report;
#[path = "compare/s3.rs"]
mod s3;
#[path = "compare/store.rs"]
mod store;
#[path = "compare/tools.rs"]
mod tools;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::str::FromStr;

use anyhow::{Context, bail, ensure};

use dataset::{ChangePlan, Dataset};
use fstree::{TreeSummary, fresh_dir, summarize};
use measure::{Sample, measure, settle_and_warm};
use report::{Op, Report, Results};
use store::{Repo, Store, StoreKind};
use tools::{ChildEnv, Kind, Tool, find_tools};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

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
    let (tools, notes) = find_tools(&cfg)?;

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
    // The store (and with it an S3 server) is dropped before `work` is removed, which stops the
    // server on every path out of this function.
    let store = Store::start(cfg.store, &cfg.moto, &work.join("repos"), &dirs.logs)?;
    eprintln!("compare: store: {}", store.describe());
    let env = ChildEnv {
        cache: dirs.cache.clone(),
        set: store.child_env(),
    };
    let bench = Bench {
        store: &store,
        env: &env,
        logs: &dirs.logs,
    };

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
        let repos = tools
            .iter()
            .map(|t| store.fresh_repo(t.name(), run))
            .collect::<anyhow::Result<Vec<Repo>>>()?;
        for &t in &order {
            let label = format!("r{run}-init-{}", tools[t].name());
            measure(
                &mut tools[t].init(&repos[t].location, &env),
                &dirs.logs,
                &label,
            )?;
        }

        for op in [Op::First, Op::Unchanged] {
            for &t in &order {
                let sample = bench.snapshot(&tools[t], &dataset.path, &repos[t], run, op)?;
                report_progress(&tag, op, &tools[t], &sample);
                results[t].samples[op as usize].push(sample);
            }
            if op == Op::First {
                for &t in &order {
                    results[t].repo_after_first.push(store.size(&repos[t])?);
                }
            }
        }

        // The full restore of the unchanged tree: the staged copy the final restore updates.
        let mut staged = Vec::new();
        for &t in &order {
            let tool = &tools[t];
            let target = dirs.restore.join(format!("{}-run{run}", tool.name()));
            fresh_dir(&target)?;
            warm(&repos[t], &[&dirs.cache])?;
            let label = format!("r{run}-restore-{}", tool.name());
            let mut cmd = tool.restore(&repos[t].location, &target, &env);
            let sample = bench.timed(&mut cmd, &label)?;
            report_progress(&tag, Op::Restore, tool, &sample);
            results[t].samples[Op::Restore as usize].push(sample);
            check_restore(tool, &target, &dataset.summary, run, &mut results[t])?;
            staged.push((t, target));
        }

        dataset.set_pristine(false)?;
        let applied = plan.apply()?;
        changed_summary = summarize(&dataset.path)?;
        for &t in &order {
            let sample = bench.snapshot(&tools[t], &dataset.path, &repos[t], run, Op::Changed)?;
            report_progress(&tag, Op::Changed, &tools[t], &sample);
            results[t].samples[Op::Changed as usize].push(sample);
        }
        for &t in &order {
            results[t].repo_after_all.push(store.size(&repos[t])?);
        }

        for (t, target) in &staged {
            let tool = &tools[*t];
            warm(&repos[*t], &[&dirs.cache, target])?;
            let label = format!("r{run}-final-restore-{}", tool.name());
            let mut cmd = tool.final_restore(&repos[*t].location, target, &env);
            let sample = bench.timed(&mut cmd, &label)?;
            report_progress(&tag, Op::FinalRestore, tool, &sample);
            results[*t].samples[Op::FinalRestore as usize].push(sample);
            check_restore(tool, target, &changed_summary, run, &mut results[*t])?;
            fs::remove_dir_all(target).with_context(|| format!("remove {}", target.display()))?;
        }

        plan.revert(applied)?;
        ensure!(
            summarize(&dataset.path)? == dataset.summary,
            "the dataset differs from its original after undoing the change"
        );
        dataset.set_pristine(true)?;
        store.discard(repos)?;
    }

    let report = Report {
        cfg: &cfg,
        tools: &tools,
        results: &results,
        dataset: &dataset,
        changed: changed_summary,
        restore_target: &dirs.restore,
        store: &store,
        notes: &notes,
    };
    print!("{}", report.table());
    println!("{}", report.json());

    drop(store);
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
    store: StoreKind,
    moto: PathBuf,
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
        let store: StoreKind = env_parse("FERRY_BENCH_STORE", StoreKind::Local)?;
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
            store,
            moto: path("FERRY_BENCH_MOTO").unwrap_or_else(|| PathBuf::from("moto_server")),
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
            restore,
            logs: work.join("logs"),
            cache: work.join("cache"),
        };
        for d in [&dirs.restore, &dirs.logs, &dirs.cache] {
            fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
        }
        Ok(dirs)
    }
}

/// Settles writeback and warms `roots` plus the repository when it is a local directory; an S3
/// repository lives in the server, which the harness can neither warm nor flush.
fn warm(repo: &Repo, roots: &[&Path]) -> anyhow::Result<()> {
    let mut all: Vec<&Path> = roots.to_vec();
    all.extend(repo.local_dir());
    settle_and_warm(&all)
}

/// What every timed command of one invocation shares.
struct Bench<'a> {
    store: &'a Store,
    env: &'a ChildEnv,
    logs: &'a Path,
}

impl Bench<'_> {
    /// Measures `cmd` and, when the store runs a server, the CPU time the server spent meanwhile.
    fn timed(&self, cmd: &mut Command, label: &str) -> anyhow::Result<Sample> {
        let before = self.store.server_cpu_seconds();
        let mut sample = measure(cmd, self.logs, label)?;
        if let (Some(a), Some(b)) = (before, self.store.server_cpu_seconds()) {
            sample.store_cpu = Some(b - a);
        }
        Ok(sample)
    }

    fn snapshot(
        &self,
        tool: &Tool,
        data: &Path,
        repo: &Repo,
        run: usize,
        op: Op,
    ) -> anyhow::Result<Sample> {
        warm(repo, &[data, &self.env.cache])?;
        let label = format!("r{run}-{}-{}", op.key(), tool.name());
        self.timed(&mut tool.snapshot(data, &repo.location, self.env), &label)
    }
}

/// Compares a restore's file count and bytes with the source's: a mismatch fails the run for
/// ferry and is recorded as a warning for the others.
fn check_restore(
    tool: &Tool,
    target: &Path,
    want: &TreeSummary,
    run: usize,
    results: &mut Results,
) -> anyhow::Result<()> {
    let restored = summarize(target)?;
    if restored != *want {
        let msg = format!(
            "{} restored {} into {} but the source holds {}",
            tool.name(),
            restored.describe(),
            target.display(),
            want.describe()
        );
        if tool.kind == Kind::Ferry {
            bail!("restore check failed in run {}: {msg}", run + 1);
        }
        eprintln!("compare: WARNING: {msg}");
        results.restore_mismatches.push(msg);
    }
    Ok(())
}

fn report_progress(tag: &str, op: Op, tool: &Tool, s: &Sample) {
    let server = match s.store_cpu {
        Some(c) => format!(" {c:>7.2} s server cpu"),
        None => String::new(),
    };
    eprintln!(
        "compare: {tag} {:<24} {:<7} {:>7.2} s wall {:>7.2} s cpu {:>7.1} MiB rss{server}",
        op.label(),
        tool.name(),
        s.wall,
        s.cpu(),
        s.max_rss_kib as f64 / 1024.0
    );
}
