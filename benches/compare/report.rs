//! What was measured and how it is shown: the operations, the per-tool results, the table of
//! medians with peer/ferry ratios, and the JSON line of raw figures.
//!
//! It computes nothing but medians and ratios and reads no files; everything it prints comes
//! from the [`Report`] it is given.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::json;

use crate::dataset::Dataset;
use crate::fstree::TreeSummary;
use crate::measure::Sample;
use crate::store::Store;
use crate::tools::{Kind, Tool};
use crate::{Config, MIB};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    First = 0,
    Unchanged = 1,
    Changed = 2,
    Restore = 3,
    FinalRestore = 4,
}

impl Op {
    const ALL: [Op; 5] = [
        Op::First,
        Op::Unchanged,
        Op::Changed,
        Op::Restore,
        Op::FinalRestore,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Op::First => "first_snapshot",
            Op::Unchanged => "unchanged_snapshot",
            Op::Changed => "changed_snapshot",
            Op::Restore => "restore",
            Op::FinalRestore => "final_restore",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Op::First => "first snapshot",
            Op::Unchanged => "unchanged re-snapshot",
            Op::Changed => "1%-changed snapshot",
            Op::Restore => "full restore",
            Op::FinalRestore => "final restore into the staged copy",
        }
    }
}

/// Everything measured for one tool, one entry per run.
#[derive(Default)]
pub struct Results {
    pub samples: [Vec<Sample>; 5],
    pub repo_after_first: Vec<u64>,
    pub repo_after_all: Vec<u64>,
    pub restore_mismatches: Vec<String>,
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

/// `n` with commas between groups of three digits.
pub fn thousands(n: u64) -> String {
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

pub struct Report<'a> {
    pub cfg: &'a Config,
    pub tools: &'a [Tool],
    pub results: &'a [Results],
    pub dataset: &'a Dataset,
    pub changed: TreeSummary,
    pub restore_target: &'a Path,
    pub store: &'a Store,
    /// Lines on tools that were not run.
    pub notes: &'a [String],
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

fn row(label: &'static str, higher_is_better: bool, decimals: usize, values: Series) -> Row {
    Row {
        label,
        higher_is_better,
        decimals,
        values,
    }
}

/// A series of one figure of each sample of `op`.
fn per_sample(op: Op, figure: impl Fn(&Sample) -> f64 + 'static) -> Series {
    Box::new(move |r: &Results| r.samples[op as usize].iter().map(&figure).collect())
}

impl Report<'_> {
    fn rows(&self) -> Vec<Row> {
        let wall = |op| per_sample(op, |s| s.wall);
        let cpu = |op| per_sample(op, Sample::cpu);
        let rss = |op| per_sample(op, |s| s.max_rss_kib as f64 / 1024.0);
        let rate = |op, bytes: u64| per_sample(op, move |s| bytes as f64 / 1e6 / s.wall);
        let server = |op| per_sample(op, |s| s.store_cpu.unwrap_or(f64::NAN));
        let mib = |v: &[u64]| -> Vec<f64> { v.iter().map(|b| *b as f64 / MIB as f64).collect() };
        let with_server = self.store.has_server();

        let mut rows = vec![
            row("first snapshot, wall s", false, 2, wall(Op::First)),
            row("first snapshot, CPU s", false, 2, cpu(Op::First)),
        ];
        if with_server {
            rows.push(row(
                "first snapshot, S3 server CPU s",
                false,
                2,
                server(Op::First),
            ));
        }
        rows.extend([
            row(
                "first snapshot, MB/s",
                true,
                1,
                rate(Op::First, self.dataset.summary.bytes),
            ),
            row("first snapshot, peak RSS MiB", false, 1, rss(Op::First)),
            row(
                "unchanged re-snapshot, wall s",
                false,
                2,
                wall(Op::Unchanged),
            ),
            row("unchanged re-snapshot, CPU s", false, 2, cpu(Op::Unchanged)),
            row("1%-changed snapshot, wall s", false, 2, wall(Op::Changed)),
            row("1%-changed snapshot, CPU s", false, 2, cpu(Op::Changed)),
            row("full restore, wall s", false, 2, wall(Op::Restore)),
            row("full restore, CPU s", false, 2, cpu(Op::Restore)),
        ]);
        if with_server {
            rows.push(row(
                "full restore, S3 server CPU s",
                false,
                2,
                server(Op::Restore),
            ));
        }
        rows.extend([
            row(
                "full restore, MB/s",
                true,
                1,
                rate(Op::Restore, self.dataset.summary.bytes),
            ),
            row("full restore, peak RSS MiB", false, 1, rss(Op::Restore)),
            row(
                "final restore into staged copy, wall s",
                false,
                2,
                wall(Op::FinalRestore),
            ),
            row(
                "final restore into staged copy, CPU s",
                false,
                2,
                cpu(Op::FinalRestore),
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
        ]);
        rows
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let versions: Vec<String> = self.tools.iter().map(|t| t.version.clone()).collect();
        let _ = writeln!(out, "\n== ferry vs peers ({}) ==", versions.join("; "));
        let _ = writeln!(out, "store: {}", self.store.describe());
        for note in self.notes {
            let _ = writeln!(out, "{note}");
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
        let _ = writeln!(out, "repo size: {}", self.store.size_method());
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

    pub fn json(&self) -> String {
        let mut tools = serde_json::Map::new();
        for (t, r) in self.tools.iter().zip(self.results) {
            let mut entry = serde_json::Map::new();
            entry.insert("version".into(), json!(t.version));
            for op in Op::ALL {
                let samples: Vec<_> = r.samples[op as usize]
                    .iter()
                    .map(|s| {
                        let mut v = json!({
                            "wall_s": s.wall,
                            "user_s": s.user,
                            "sys_s": s.sys,
                            "max_rss_kib": s.max_rss_kib,
                        });
                        if let (Some(c), Some(map)) = (s.store_cpu, v.as_object_mut()) {
                            map.insert("store_cpu_s".into(), json!(c));
                        }
                        v
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
            "store": self.store.kind().name(),
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

#[cfg(test)]
mod tests {
    // The bench target is compiled with cfg(test) but without the test harness, which drops
    // the tests themselves; see the note in compare.rs on running them.
    #[allow(unused_imports)]
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(434_825_317), "434,825,317");
    }
}
