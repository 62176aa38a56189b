//! The programs under test: finding them, and the command line of each operation.
//!
//! Every command gets an explicit environment: repository settings a user may have exported
//! are removed, the password and the cache directory are set, and so is whatever the store
//! needs (S3 credentials). Repositories are passed as location strings, which both ferry and
//! restic read the same way (a directory path, or `s3:http://host:port/bucket/prefix`). This
//! module does not run or measure the commands.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

use crate::Config;
use crate::store::StoreKind;

/// The repository password handed to every tool; the repositories are throwaway.
const PASSWORD: &str = "ferry-bench-password";

/// Variables that would point a child at another repository, password, cache, endpoint or
/// account than the one the harness chose; removed from every child's environment.
const CLEARED: &[&str] = &[
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
    "FERRY_S3_ENDPOINT",
    "AWS_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Ferry,
    Restic,
    Rustic,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ferry => "ferry",
            Kind::Restic => "restic",
            Kind::Rustic => "rustic",
        }
    }
}

/// One program under test and how to drive it.
pub struct Tool {
    pub kind: Kind,
    pub program: PathBuf,
    pub version: String,
}

/// What every child's environment holds besides its password.
pub struct ChildEnv {
    /// `XDG_CACHE_HOME`, so that restic's and rustic's caches stay in the work directory.
    pub cache: PathBuf,
    /// Variables the store needs, such as S3 credentials.
    pub set: Vec<(&'static str, String)>,
}

/// Finds the selected tools; returns them with notes for the report on the ones left out.
pub fn find_tools(cfg: &Config) -> anyhow::Result<(Vec<Tool>, Vec<String>)> {
    let mut tools = Vec::new();
    let mut notes = Vec::new();
    for kind in [Kind::Ferry, Kind::Restic, Kind::Rustic] {
        if !cfg.wants(kind) {
            continue;
        }
        // rustic reaches S3 through its own backend options rather than restic's `s3:`
        // location strings, so the same command lines would not work for it.
        if kind == Kind::Rustic && cfg.store == StoreKind::S3 {
            notes.push("rustic: not run in S3 mode".to_string());
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
                None if kind == Kind::Rustic => {
                    notes.push("rustic: not on PATH, skipped".to_string());
                    continue;
                }
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
    Ok((tools, notes))
}

/// The first executable file called `name` in a `PATH` directory.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
}

impl Tool {
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// A command for this tool with a clean, explicit environment for repository settings.
    fn command(&self, env: &ChildEnv) -> Command {
        let mut c = Command::new(&self.program);
        for var in CLEARED {
            c.env_remove(var);
        }
        match self.kind {
            Kind::Ferry | Kind::Restic => c.env("RESTIC_PASSWORD", PASSWORD),
            Kind::Rustic => c.env("RUSTIC_PASSWORD", PASSWORD),
        };
        c.env("XDG_CACHE_HOME", &env.cache);
        for (name, value) in &env.set {
            c.env(name, value);
        }
        c
    }

    pub fn init(&self, repo: &OsStr, env: &ChildEnv) -> Command {
        let mut c = self.command(env);
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
    pub fn snapshot(&self, data: &Path, repo: &OsStr, env: &ChildEnv) -> Command {
        let mut c = self.command(env);
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

    /// Restores the latest snapshot into `target`, which holds an earlier restore, so that it
    /// ends up equal to that snapshot: ferry with `--delete` (no `--base`, so it compares what
    /// is on disk), rustic with `--delete`, and restic 0.14, which has no `--delete` and
    /// rewrites every file (the harness's change removes no file, so the trees still agree).
    pub fn final_restore(&self, repo: &OsStr, target: &Path, env: &ChildEnv) -> Command {
        let mut c = self.restore(repo, target, env);
        match self.kind {
            Kind::Ferry | Kind::Rustic => {
                c.arg("--delete");
            }
            Kind::Restic => {}
        }
        c
    }

    pub fn restore(&self, repo: &OsStr, target: &Path, env: &ChildEnv) -> Command {
        let mut c = self.command(env);
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
