//! The node agent's metrics: a small registry of atomic counters, gauges and one histogram, its
//! Prometheus text exposition (format 0.0.4), and the HTTP server that serves it next to the
//! `/healthz` and `/readyz` probes.
//!
//! This module owns the names, help texts, label sets and bucket bounds of every metric the agent
//! exports, so the exposition is fixed and every label combination is present from the start.
//! It deliberately does not know what a job is or when one starts: the job runner calls the
//! recording methods, and whoever starts the agent binds the listener and decides readiness. It
//! is not a general-purpose metrics library; there is no dynamic registration and no label value
//! that comes from outside this file, so nothing here needs escaping.

use std::fmt::{self, Display, Write as _};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// The content type of the Prometheus text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (inclusive, in seconds) of the finite buckets of
/// `ferry_agent_job_duration_seconds`; a final `+Inf` bucket follows them.
pub const DURATION_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The kind of job, a label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    Snapshot,
    Restore,
    Verify,
}

impl JobKind {
    /// Every kind, in the order the exposition lists them.
    pub const ALL: [JobKind; 3] = [JobKind::Snapshot, JobKind::Restore, JobKind::Verify];

    /// The `kind` label value: `"snapshot"`, `"restore"` or `"verify"`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Snapshot => "snapshot",
            JobKind::Restore => "restore",
            JobKind::Verify => "verify",
        }
    }

    fn index(self) -> usize {
        match self {
            JobKind::Snapshot => 0,
            JobKind::Restore => 1,
            JobKind::Verify => 2,
        }
    }
}

/// How a started job ended, a label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed,
    Cancelled,
}

impl Outcome {
    /// Every outcome, in the order the exposition lists them.
    pub const ALL: [Outcome; 3] = [Outcome::Done, Outcome::Failed, Outcome::Cancelled];

    /// The `outcome` label value: `"done"`, `"failed"` or `"cancelled"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }

    fn index(self) -> usize {
        match self {
            Outcome::Done => 0,
            Outcome::Failed => 1,
            Outcome::Cancelled => 2,
        }
    }
}

/// One job-duration histogram. Each slot counts the observations that fell into that bucket
/// alone (the last slot is `+Inf`); the exposition accumulates them, and derives `_count` from
/// the same snapshot so that `_count` always equals the `+Inf` bucket.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    /// The sum of all observations, as `f64` bits.
    sum_bits: AtomicU64,
}

impl Histogram {
    fn observe(&self, seconds: f64) {
        let slot = DURATION_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(DURATION_BUCKETS.len());
        if let Some(bucket) = self.buckets.get(slot) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        // The closure always returns Some, so the update cannot fail.
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + seconds).to_bits())
            });
    }

    /// Cumulative bucket counts (the last is `+Inf`, which is also the total count) and the sum.
    fn snapshot(&self) -> ([u64; DURATION_BUCKETS.len() + 1], f64) {
        let mut cumulative = [0u64; DURATION_BUCKETS.len() + 1];
        let mut running = 0u64;
        for (out, bucket) in cumulative.iter_mut().zip(&self.buckets) {
            running = running.saturating_add(bucket.load(Ordering::Relaxed));
            *out = running;
        }
        (
            cumulative,
            f64::from_bits(self.sum_bits.load(Ordering::Relaxed)),
        )
    }
}

/// Everything the agent counts.
///
/// Shared as `Arc<Metrics>`; every method takes `&self` and is lock-free. Counters only grow
/// (they wrap only after 2^64 increments); gauges saturate at 0 rather than underflow, so an
/// unmatched `job_finished` or an extra negative `job_queued` cannot make them nonsensical.
/// Values are read independently by [`Metrics::render`], so a render that races with updates
/// may see one family updated and another not yet; each histogram is still self-consistent.
#[derive(Debug, Default)]
pub struct Metrics {
    bytes_read: AtomicU64,
    bytes_stored: AtomicU64,
    bytes_restored: AtomicU64,
    /// Indexed by [`JobKind::index`].
    files: [AtomicU64; 3],
    /// Indexed by [`JobKind::index`].
    running: [AtomicU64; 3],
    queued: AtomicU64,
    /// Indexed by [`JobKind::index`], then [`Outcome::index`].
    jobs: [[AtomicU64; 3]; 3],
    /// Indexed by [`JobKind::index`].
    durations: [Histogram; 3],
}

impl Metrics {
    /// A registry with every counter, gauge and histogram at zero.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Counts bytes of volume files read by snapshots (`ferry_agent_bytes_read_total`).
    pub fn add_bytes_read(&self, n: u64) {
        self.bytes_read.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts bytes added to repositories, packed and after compression
    /// (`ferry_agent_bytes_stored_total`).
    pub fn add_bytes_stored(&self, n: u64) {
        self.bytes_stored.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts bytes written into volumes by restores (`ferry_agent_bytes_restored_total`).
    pub fn add_bytes_restored(&self, n: u64) {
        self.bytes_restored.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts files processed by a job of `kind` (`ferry_agent_files_total{kind}`).
    pub fn add_files(&self, kind: JobKind, n: u64) {
        self.files[kind.index()].fetch_add(n, Ordering::Relaxed);
    }

    /// Marks a job of `kind` as running (`ferry_agent_jobs_running{kind}` +1). Every call must
    /// be matched by one [`Metrics::job_finished`] with the same kind.
    pub fn job_started(&self, kind: JobKind) {
        self.running[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Moves the queue gauge `ferry_agent_jobs_queued` by `delta`: +1 when a job starts waiting,
    /// -1 when it leaves the queue. The gauge saturates at 0 and at `u64::MAX`.
    pub fn job_queued(&self, delta: i64) {
        saturating_add_signed(&self.queued, delta);
    }

    /// Ends a started job: `ferry_agent_jobs_running{kind}` -1 (saturating at 0),
    /// `ferry_agent_jobs_total{kind,outcome}` +1, and `seconds` observed in
    /// `ferry_agent_job_duration_seconds{kind}`. A negative or NaN duration is observed as 0;
    /// an infinite one lands in the `+Inf` bucket and makes `_sum` infinite.
    pub fn job_finished(&self, kind: JobKind, outcome: Outcome, seconds: f64) {
        saturating_add_signed(&self.running[kind.index()], -1);
        self.jobs[kind.index()][outcome.index()].fetch_add(1, Ordering::Relaxed);
        let seconds = if seconds.is_nan() || seconds < 0.0 {
            0.0
        } else {
            seconds
        };
        self.durations[kind.index()].observe(seconds);
    }

    /// The number of running jobs, summed over kinds.
    pub fn jobs_running(&self) -> u64 {
        self.running
            .iter()
            .fold(0u64, |sum, g| sum.saturating_add(g.load(Ordering::Relaxed)))
    }

    /// The number of queued jobs.
    pub fn jobs_queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    ///
    /// Every family has its `# HELP` and `# TYPE` lines before its samples, and every label
    /// combination (each kind, each kind × outcome) is present even at zero, so dashboards and
    /// `rate()` see a series from the agent's first scrape. `ferry_agent_up` is always 1.
    /// Histogram buckets are cumulative, `le="+Inf"` last, followed by `_sum` and `_count`.
    /// The text ends with a newline.
    pub fn render(&self) -> String {
        let mut out = Exposition(String::with_capacity(4096));

        out.family(
            "ferry_agent_up",
            "Whether the ferry node agent is up.",
            "gauge",
        );
        out.sample("ferry_agent_up", &[], 1);

        let totals = [
            (
                "ferry_agent_bytes_read_total",
                "Bytes of volume files read by snapshots.",
                &self.bytes_read,
            ),
            (
                "ferry_agent_bytes_stored_total",
                "Bytes added to repositories, packed and after compression.",
                &self.bytes_stored,
            ),
            (
                "ferry_agent_bytes_restored_total",
                "Bytes written into volumes by restores.",
                &self.bytes_restored,
            ),
        ];
        for (name, help, counter) in totals {
            out.family(name, help, "counter");
            out.sample(name, &[], counter.load(Ordering::Relaxed));
        }

        let name = "ferry_agent_files_total";
        out.family(name, "Files processed by jobs.", "counter");
        for kind in JobKind::ALL {
            let value = self.files[kind.index()].load(Ordering::Relaxed);
            out.sample(name, &[("kind", kind.as_str())], value);
        }

        let name = "ferry_agent_jobs_running";
        out.family(name, "Jobs currently running.", "gauge");
        for kind in JobKind::ALL {
            let value = self.running[kind.index()].load(Ordering::Relaxed);
            out.sample(name, &[("kind", kind.as_str())], value);
        }

        let name = "ferry_agent_jobs_queued";
        out.family(name, "Jobs waiting for a free slot.", "gauge");
        out.sample(name, &[], self.jobs_queued());

        let name = "ferry_agent_jobs_total";
        out.family(name, "Jobs finished, by outcome.", "counter");
        for kind in JobKind::ALL {
            for outcome in Outcome::ALL {
                let value = self.jobs[kind.index()][outcome.index()].load(Ordering::Relaxed);
                let labels = [("kind", kind.as_str()), ("outcome", outcome.as_str())];
                out.sample(name, &labels, value);
            }
        }

        let name = "ferry_agent_job_duration_seconds";
        out.family(name, "Duration of finished jobs in seconds.", "histogram");
        for kind in JobKind::ALL {
            let (cumulative, sum) = self.durations[kind.index()].snapshot();
            let kind = kind.as_str();
            let bounds = DURATION_BUCKETS.iter().map(|&b| Float(b).to_string());
            for (le, count) in bounds
                .chain(std::iter::once("+Inf".to_string()))
                .zip(cumulative)
            {
                out.sample(
                    "ferry_agent_job_duration_seconds_bucket",
                    &[("kind", kind), ("le", &le)],
                    count,
                );
            }
            let total = cumulative.last().copied().unwrap_or(0);
            out.sample(
                "ferry_agent_job_duration_seconds_sum",
                &[("kind", kind)],
                Float(sum),
            );
            out.sample(
                "ferry_agent_job_duration_seconds_count",
                &[("kind", kind)],
                total,
            );
        }

        out.0
    }
}

/// Adds `delta` to `gauge`, saturating at 0 and at `u64::MAX`.
fn saturating_add_signed(gauge: &AtomicU64, delta: i64) {
    // The closure always returns Some, so the update cannot fail.
    let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_add_signed(delta))
    });
}

/// A float formatted the way the exposition format reads it: a plain decimal (`12.5`, `1`),
/// `+Inf`, `-Inf` or `NaN`.
struct Float(f64);

impl Display for Float {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v.is_infinite() {
            f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
        } else {
            // Rust's Display for f64 never uses an exponent and round-trips exactly.
            write!(f, "{v}")
        }
    }
}

/// The exposition being written. Names, help texts and label values are constants of this
/// module and contain no characters that would need escaping.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, help: &str, kind: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"{value}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// What the HTTP handlers share.
#[derive(Clone)]
struct ServerState {
    metrics: Arc<Metrics>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// Serves the agent's observability endpoints on `listener` until `shutdown` completes:
///
/// - `GET /metrics`: 200 with [`Metrics::render`] as `text/plain; version=0.0.4; charset=utf-8`;
/// - `GET /healthz`: 200 `ok` whenever the server answers at all;
/// - `GET /readyz`: 200 `ready` while `ready()` returns true, else 503 `not ready`;
/// - any other path: 404.
///
/// `ready` is called once per `/readyz` request, on a runtime worker, so it must be quick and
/// must not block. When `shutdown` completes the server stops accepting, lets requests in
/// flight finish, and returns `Ok(())`; it returns an error only if serving itself fails.
/// The caller binds the listener (tests bind `127.0.0.1:0`) and keeps ownership of shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving agent metrics and health probes");
    }
    let router = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz_handler))
        .route("/readyz", get(readyz_handler))
        .with_state(ServerState { metrics, ready });
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_handler(State(state): State<ServerState>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        state.metrics.render(),
    )
}

async fn healthz_handler() -> impl IntoResponse {
    (StatusCode::OK, "ok")
}

async fn readyz_handler(State(state): State<ServerState>) -> impl IntoResponse {
    if (state.ready)() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::AtomicBool;

    /// Checks that `text` is a valid 0.0.4 exposition as this module writes it: every line is a
    /// HELP, TYPE or sample line; every sample belongs to the family whose HELP and TYPE came
    /// last; no family appears twice; no series appears twice. Returns every series (name and
    /// label text as written) with its value.
    fn parse_exposition(text: &str) -> HashMap<String, f64> {
        assert!(text.ends_with('\n'), "exposition must end with a newline");
        let mut series = HashMap::new();
        let mut seen_families = HashSet::new();
        let mut help: Option<String> = None;
        let mut family: Option<(String, String)> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, text) = rest.split_once(' ').expect("HELP has name and text");
                assert!(valid_name(name), "bad family name in {line:?}");
                assert!(!text.is_empty(), "empty help in {line:?}");
                assert!(
                    seen_families.insert(name.to_string()),
                    "family {name} twice"
                );
                help = Some(name.to_string());
                family = None;
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has name and type");
                assert_eq!(help.as_deref(), Some(name), "TYPE without HELP: {line:?}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "bad type in {line:?}"
                );
                family = Some((name.to_string(), kind.to_string()));
            } else {
                assert!(!line.starts_with('#'), "unexpected comment {line:?}");
                let (series_text, value) = line.rsplit_once(' ').expect("sample has a value");
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    v => v.parse::<f64>().expect("sample value is a float"),
                };
                let (name, labels) = match series_text.split_once('{') {
                    Some((name, labels)) => {
                        let labels = labels.strip_suffix('}').expect("labels close with }");
                        (name, Some(labels))
                    }
                    None => (series_text, None),
                };
                assert!(valid_name(name), "bad sample name in {line:?}");
                if let Some(labels) = labels {
                    for pair in labels.split(',') {
                        let (key, value) = pair.split_once('=').expect("label is key=value");
                        assert!(valid_name(key), "bad label name in {line:?}");
                        assert!(
                            value.len() >= 2 && value.starts_with('"') && value.ends_with('"'),
                            "label value must be quoted in {line:?}"
                        );
                    }
                }
                let (family_name, kind) = family.as_ref().expect("sample before HELP/TYPE");
                let belongs = if kind == "histogram" {
                    ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_suffix(s) == Some(family_name))
                } else {
                    name == family_name
                };
                assert!(belongs, "sample {name} outside its family {family_name}");
                assert!(
                    series.insert(series_text.to_string(), value).is_none(),
                    "series {series_text} twice"
                );
            }
        }
        series
    }

    fn valid_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn value(series: &HashMap<String, f64>, key: &str) -> f64 {
        *series
            .get(key)
            .unwrap_or_else(|| panic!("series {key} missing"))
    }

    #[test]
    fn label_values() {
        let kinds: Vec<_> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(kinds, ["snapshot", "restore", "verify"]);
        let outcomes: Vec<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(outcomes, ["done", "failed", "cancelled"]);
    }

    #[test]
    fn counters_add_up() {
        let m = Metrics::new();
        m.add_bytes_read(10);
        m.add_bytes_read(32);
        m.add_bytes_stored(7);
        m.add_bytes_restored(5);
        m.add_bytes_restored(0);
        m.add_files(JobKind::Snapshot, 3);
        m.add_files(JobKind::Snapshot, 4);
        m.add_files(JobKind::Verify, 1);
        let s = parse_exposition(&m.render());
        assert_eq!(value(&s, "ferry_agent_bytes_read_total"), 42.0);
        assert_eq!(value(&s, "ferry_agent_bytes_stored_total"), 7.0);
        assert_eq!(value(&s, "ferry_agent_bytes_restored_total"), 5.0);
        assert_eq!(value(&s, "ferry_agent_files_total{kind=\"snapshot\"}"), 7.0);
        assert_eq!(value(&s, "ferry_agent_files_total{kind=\"restore\"}"), 0.0);
        assert_eq!(value(&s, "ferry_agent_files_total{kind=\"verify\"}"), 1.0);
        assert_eq!(value(&s, "ferry_agent_up"), 1.0);
    }

    #[test]
    fn counters_add_up_across_threads() {
        let m = Arc::new(Metrics::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.add_bytes_stored(2);
                        m.job_started(JobKind::Restore);
                        m.job_finished(JobKind::Restore, Outcome::Done, 0.5);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("worker thread");
        }
        let s = parse_exposition(&m.render());
        assert_eq!(value(&s, "ferry_agent_bytes_stored_total"), 8000.0);
        let done = "ferry_agent_jobs_total{kind=\"restore\",outcome=\"done\"}";
        assert_eq!(value(&s, done), 4000.0);
        let count = "ferry_agent_job_duration_seconds_count{kind=\"restore\"}";
        assert_eq!(value(&s, count), 4000.0);
        assert_eq!(
            value(&s, "ferry_agent_job_duration_seconds_sum{kind=\"restore\"}"),
            2000.0
        );
        assert_eq!(m.jobs_running(), 0);
    }

    #[test]
    fn gauges_go_up_and_down_and_saturate_at_zero() {
        let m = Metrics::new();
        m.job_started(JobKind::Snapshot);
        m.job_started(JobKind::Snapshot);
        m.job_started(JobKind::Verify);
        assert_eq!(m.jobs_running(), 3);
        m.job_finished(JobKind::Snapshot, Outcome::Done, 1.0);
        assert_eq!(m.jobs_running(), 2);
        // A finish without a start must not wrap the gauge around.
        m.job_finished(JobKind::Restore, Outcome::Failed, 1.0);
        assert_eq!(m.jobs_running(), 2);
        let s = parse_exposition(&m.render());
        assert_eq!(
            value(&s, "ferry_agent_jobs_running{kind=\"snapshot\"}"),
            1.0
        );
        assert_eq!(value(&s, "ferry_agent_jobs_running{kind=\"restore\"}"), 0.0);
        assert_eq!(value(&s, "ferry_agent_jobs_running{kind=\"verify\"}"), 1.0);

        m.job_queued(1);
        m.job_queued(1);
        m.job_queued(1);
        assert_eq!(m.jobs_queued(), 3);
        m.job_queued(-1);
        assert_eq!(m.jobs_queued(), 2);
        m.job_queued(-5);
        assert_eq!(m.jobs_queued(), 0);
        m.job_queued(i64::MIN);
        assert_eq!(m.jobs_queued(), 0);
        m.job_queued(2);
        let s = parse_exposition(&m.render());
        assert_eq!(value(&s, "ferry_agent_jobs_queued"), 2.0);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_count_matches() {
        let m = Metrics::new();
        // 1.0 is on a bound and belongs to le="1" (bounds are inclusive).
        let observations = [0.2, 1.0, 3.0, 12.5, 4000.0, 59.9];
        for &sec in &observations {
            m.job_started(JobKind::Snapshot);
            m.job_finished(JobKind::Snapshot, Outcome::Done, sec);
        }
        let text = m.render();
        let s = parse_exposition(&text);
        let bucket = |le: &str| {
            value(
                &s,
                &format!(
                    "ferry_agent_job_duration_seconds_bucket{{kind=\"snapshot\",le=\"{le}\"}}"
                ),
            )
        };
        assert_eq!(bucket("1"), 2.0);
        assert_eq!(bucket("5"), 3.0);
        assert_eq!(bucket("15"), 4.0);
        assert_eq!(bucket("30"), 4.0);
        assert_eq!(bucket("60"), 5.0);
        assert_eq!(bucket("3600"), 5.0);
        assert_eq!(bucket("+Inf"), 6.0);
        let count = "ferry_agent_job_duration_seconds_count{kind=\"snapshot\"}";
        assert_eq!(value(&s, count), observations.len() as f64);
        let sum = value(
            &s,
            "ferry_agent_job_duration_seconds_sum{kind=\"snapshot\"}",
        );
        assert!((sum - observations.iter().sum::<f64>()).abs() < 1e-9);
        // Plain decimals, and the buckets in ascending order with +Inf last.
        assert!(text.contains("ferry_agent_job_duration_seconds_sum{kind=\"snapshot\"} 4076.6"));
        let les: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("ferry_agent_job_duration_seconds_bucket{kind=\"snapshot\""))
            .map(|l| l.split("le=\"").nth(1).and_then(|r| r.split('"').next()))
            .collect();
        let expected: Vec<_> = [
            "1", "5", "15", "30", "60", "120", "300", "600", "1800", "3600", "+Inf",
        ]
        .into_iter()
        .map(Some)
        .collect();
        assert_eq!(les, expected);
    }

    #[test]
    fn bad_durations_do_not_poison_the_histogram() {
        let m = Metrics::new();
        m.job_finished(JobKind::Verify, Outcome::Cancelled, -3.0);
        m.job_finished(JobKind::Verify, Outcome::Cancelled, f64::NAN);
        let s = parse_exposition(&m.render());
        let le1 = "ferry_agent_job_duration_seconds_bucket{kind=\"verify\",le=\"1\"}";
        assert_eq!(value(&s, le1), 2.0);
        assert_eq!(
            value(&s, "ferry_agent_job_duration_seconds_sum{kind=\"verify\"}"),
            0.0
        );
    }

    #[test]
    fn jobs_total_counts_by_kind_and_outcome() {
        let m = Metrics::new();
        m.job_started(JobKind::Restore);
        m.job_finished(JobKind::Restore, Outcome::Cancelled, 2.0);
        m.job_started(JobKind::Verify);
        m.job_finished(JobKind::Verify, Outcome::Failed, 2.0);
        let s = parse_exposition(&m.render());
        for kind in JobKind::ALL {
            for outcome in Outcome::ALL {
                let key = format!(
                    "ferry_agent_jobs_total{{kind=\"{}\",outcome=\"{}\"}}",
                    kind.as_str(),
                    outcome.as_str()
                );
                let expected = match (kind, outcome) {
                    (JobKind::Restore, Outcome::Cancelled) | (JobKind::Verify, Outcome::Failed) => {
                        1.0
                    }
                    _ => 0.0,
                };
                assert_eq!(value(&s, &key), expected, "{key}");
            }
        }
    }

    #[test]
    fn fresh_render_has_every_series_at_zero() {
        let text = Metrics::default().render();
        let s = parse_exposition(&text);
        for kind in JobKind::ALL {
            let k = kind.as_str();
            for outcome in Outcome::ALL {
                let o = outcome.as_str();
                let key = format!("ferry_agent_jobs_total{{kind=\"{k}\",outcome=\"{o}\"}}");
                assert_eq!(value(&s, &key), 0.0);
            }
            for family in ["ferry_agent_files_total", "ferry_agent_jobs_running"] {
                assert_eq!(value(&s, &format!("{family}{{kind=\"{k}\"}}")), 0.0);
            }
            for suffix in ["_sum", "_count"] {
                let key = format!("ferry_agent_job_duration_seconds{suffix}{{kind=\"{k}\"}}");
                assert_eq!(value(&s, &key), 0.0);
            }
            let inf =
                format!("ferry_agent_job_duration_seconds_bucket{{kind=\"{k}\",le=\"+Inf\"}}");
            assert_eq!(value(&s, &inf), 0.0);
        }
        // 1 up + 3 byte counters + 3 files + 3 running + 1 queued + 9 jobs + 3 × (11 + 2).
        assert_eq!(s.len(), 1 + 3 + 3 + 3 + 1 + 9 + 3 * 13);
        let types: Vec<_> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(
            types,
            [
                "ferry_agent_up gauge",
                "ferry_agent_bytes_read_total counter",
                "ferry_agent_bytes_stored_total counter",
                "ferry_agent_bytes_restored_total counter",
                "ferry_agent_files_total counter",
                "ferry_agent_jobs_running gauge",
                "ferry_agent_jobs_queued gauge",
                "ferry_agent_jobs_total counter",
                "ferry_agent_job_duration_seconds histogram",
            ]
        );
    }

    #[test]
    fn floats_are_plain_decimals() {
        assert_eq!(Float(12.5).to_string(), "12.5");
        assert_eq!(Float(1.0).to_string(), "1");
        assert_eq!(Float(0.0).to_string(), "0");
        assert_eq!(Float(1e20).to_string(), "100000000000000000000");
        assert_eq!(Float(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Float(f64::NEG_INFINITY).to_string(), "-Inf");
        assert_eq!(Float(f64::NAN).to_string(), "NaN");
    }

    proptest! {
        #[test]
        fn histogram_matches_observations(
            obs in proptest::collection::vec(
                prop_oneof![0.0f64..5000.0, Just(1.0), Just(3600.0), Just(f64::INFINITY)],
                0..64,
            )
        ) {
            let m = Metrics::new();
            for &sec in &obs {
                m.job_finished(JobKind::Verify, Outcome::Done, sec);
            }
            let s = parse_exposition(&m.render());
            let count = "ferry_agent_job_duration_seconds_count{kind=\"verify\"}";
            prop_assert_eq!(value(&s, count), obs.len() as f64);
            let mut previous = 0.0;
            let les = DURATION_BUCKETS.iter().map(|&b| (Float(b).to_string(), b))
                .chain(std::iter::once(("+Inf".to_string(), f64::INFINITY)));
            for (le, bound) in les {
                let key = format!(
                    "ferry_agent_job_duration_seconds_bucket{{kind=\"verify\",le=\"{le}\"}}"
                );
                let got = value(&s, &key);
                let expected = obs.iter().filter(|&&o| o <= bound).count() as f64;
                prop_assert_eq!(got, expected);
                prop_assert!(got >= previous);
                previous = got;
            }
            prop_assert_eq!(previous, obs.len() as f64);
        }
    }

    /// Sends one HTTP/1.1 GET for `path` and returns the status code, the headers (names
    /// lower-cased) and the body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, HashMap<String, String>, String) {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // The readiness-based calls need no tokio feature beyond `net`, which the crate has.
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut unsent = request.as_bytes();
        while !unsent.is_empty() {
            stream.writable().await.expect("writable");
            match stream.try_write(unsent) {
                Ok(n) => unsent = &unsent[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("write request: {e}"),
            }
        }
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            stream.readable().await.expect("readable");
            match stream.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read response: {e}"),
            }
        }
        let response = String::from_utf8(received).expect("utf-8 response");
        let (head, body) = response.split_once("\r\n\r\n").expect("header end");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers, body.to_string())
    }

    #[tokio::test]
    async fn http_endpoints_answer_and_shutdown_returns_ok() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let metrics = Arc::new(Metrics::new());
        let ready_flag = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ready_flag);
        let ready: Arc<dyn Fn() -> bool + Send + Sync> =
            Arc::new(move || flag.load(Ordering::SeqCst));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::clone(&metrics), ready, async move {
            let _ = stopped.await;
        }));

        metrics.add_bytes_read(42);
        let (status, headers, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            Some(CONTENT_TYPE)
        );
        assert!(body.lines().any(|l| l == "ferry_agent_bytes_read_total 42"));
        parse_exposition(&body);

        let (status, _, body) = get(addr, "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok"));

        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (503, "not ready"));
        ready_flag.store(true, Ordering::SeqCst);
        let (status, _, body) = get(addr, "/readyz").await;
        assert_eq!((status, body.as_str()), (200, "ready"));

        let (status, _, _) = get(addr, "/nope").await;
        assert_eq!(status, 404);

        stop.send(()).expect("server still running");
        let result = tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .expect("serve returns after shutdown")
            .expect("server task");
        assert!(result.is_ok(), "serve failed: {result:?}");
    }
}
