//! Running one child process and measuring what it cost, and preparing the machine for it.
//!
//! Wall time comes from the clock around spawn and reap, user and system CPU and peak RSS from
//! `wait4`'s `rusage`, so the figures cover the child alone (not the harness, not an S3 server).
//! It does not decide what to run or what the figures mean.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::MIB;
use crate::fstree::visit;

/// What one child process cost.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub wall: f64,
    pub user: f64,
    pub sys: f64,
    pub max_rss_kib: u64,
    /// CPU seconds the S3 server spent while the child ran; `None` for local repositories.
    pub store_cpu: Option<f64>,
}

impl Sample {
    pub fn cpu(&self) -> f64 {
        self.user + self.sys
    }
}

/// Runs `cmd` to completion with its output in `logs/label.{out,err}` and measures it; a non-zero
/// exit is an error that quotes the end of the child's stderr.
pub fn measure(cmd: &mut Command, logs: &Path, label: &str) -> anyhow::Result<Sample> {
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
        store_cpu: None,
    })
}

/// The last few KB of a log file, for error messages.
pub fn tail(path: &Path) -> String {
    let text = fs::read(path).unwrap_or_default();
    let start = text.len().saturating_sub(3000);
    String::from_utf8_lossy(text.get(start..).unwrap_or_default()).into_owned()
}

/// Flushes dirty pages, so that writeback from earlier steps does not run during the next
/// measurement, then reads every file under `roots` so the next command finds them cached.
pub fn settle_and_warm(roots: &[&Path]) -> anyhow::Result<()> {
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
