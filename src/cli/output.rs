//! Output of the command line: logging, progress and byte formatting.
//!
//! Logs go to standard error through `tracing` (JSON when `--json`), filtered by `FERRY_LOG`
//! (default `warn`). Progress is a bar on a terminal, `status` JSON lines with `--json`, and
//! nothing otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Sets up logging to standard error.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.without_time().try_init();
    }
}

/// JSON log lines on stderr at `info` (or `FERRY_LOG`), with the fields of the current span
/// (a job's id) on every line.
pub fn init_daemon_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .try_init();
}

/// Bytes in restic's style: `1.234 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.3} {}", UNITS[u])
    }
}

/// How progress is shown.
pub enum Progress {
    /// Nothing.
    Silent,
    /// A bar on the terminal.
    Bar(indicatif::ProgressBar),
    /// `status` JSON lines once a second.
    Json,
}

impl Progress {
    /// Chooses the display for the flags and whether standard error is a terminal.
    pub fn new(json: bool, quiet: bool) -> Progress {
        if json {
            Progress::Json
        } else if quiet || !std::io::stderr().is_terminal() {
            Progress::Silent
        } else {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(200));
            Progress::Bar(bar)
        }
    }

    /// Shows the counters: files and bytes done, and totals when known (0 = unknown).
    pub fn update(&self, started: Instant, files: u64, bytes_done: u64, bytes_total: u64) {
        let secs = started.elapsed().as_secs_f64();
        match self {
            Progress::Silent => {}
            Progress::Bar(bar) => {
                let rate = if secs > 0.0 {
                    bytes(((bytes_done as f64) / secs) as u64)
                } else {
                    "-".into()
                };
                let total = if bytes_total > 0 {
                    format!(" of {}", self::bytes(bytes_total))
                } else {
                    String::new()
                };
                bar.set_message(format!(
                    "[{secs:.0}s] {files} files, {}{total}, {rate}/s",
                    self::bytes(bytes_done)
                ));
            }
            Progress::Json => {
                let percent = if bytes_total > 0 {
                    bytes_done as f64 / bytes_total as f64
                } else {
                    0.0
                };
                println!(
                    "{}",
                    serde_json::json!({
                        "message_type": "status",
                        "seconds_elapsed": secs as u64,
                        "percent_done": percent,
                        "files_done": files,
                        "bytes_done": bytes_done,
                        "total_bytes": bytes_total,
                    })
                );
            }
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
