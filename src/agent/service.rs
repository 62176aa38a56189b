//! `ferry.v1.AgentService`: RPCs in, `operations` out.
//!
//! Each call resolves its volume by name (never a path) before anything starts, then becomes a
//! job: a tracked task that waits for a slot, opens the repository with the credentials the
//! request carries, runs the same operation the `ferry agent` commands run, and streams
//! progress. The job task, not the RPC, owns the operation: when the caller goes away or its
//! deadline passes, the job is cancelled and still runs to its end, releasing its lock. Errors
//! become gRPC statuses in one place ([`status_of`]); no password, key or token reaches a
//! status, a log line or an event.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use super::jobs::{self, Job, Jobs};
use super::metrics::{JobKind, Metrics, Outcome};
use super::volumes::{Kubelet, VolumeError, VolumeInfo, VolumeMode, VolumeRef};
use crate::backend::{Backend, BackendOptions};
use crate::fsmeta::ReadOptions;
use crate::location::Location;
use crate::operations::{self, OpError};
use crate::repository::{Compression, RepoError, Repository, SelfCheck};
use crate::restorer::RestoreStats;
use crate::rpc::pb;

/// How often a running job reports progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Events buffered per call before progress events are dropped for a slow reader.
const EVENT_QUEUE: usize = 16;

/// The default concurrent requests of a job (restic's), when the request does not say.
pub const DEFAULT_CONNECTIONS: usize = 5;

type EventSender = mpsc::Sender<Result<pb::JobEvent, Status>>;

/// The agent's implementation of `AgentService`.
pub struct AgentService {
    node_name: String,
    cluster_name: String,
    kubelet: Arc<Kubelet>,
    jobs: Arc<Jobs>,
    metrics: Arc<Metrics>,
    workers: usize,
    local_repositories: Vec<PathBuf>,
    static_volumes: Vec<VolumeInfo>,
    lock_wait: std::time::Duration,
}

impl AgentService {
    /// The service for `config`, sharing `jobs` and `metrics` with the server.
    pub fn new(
        config: &super::AgentConfig,
        kubelet: Kubelet,
        jobs: Arc<Jobs>,
        metrics: Arc<Metrics>,
    ) -> AgentService {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let workers = if config.job_workers == 0 {
            (cores / jobs.max()).max(1)
        } else {
            config.job_workers
        };
        let local_repositories = config
            .local_repositories
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            .collect();
        let static_volumes = config
            .static_volumes
            .iter()
            .filter_map(|(name, path)| match std::fs::canonicalize(path) {
                Ok(path) => Some(VolumeInfo {
                    pod_uid: String::new(),
                    volume_name: name.clone(),
                    plugin: "static".into(),
                    pv_name: String::new(),
                    csi_driver: String::new(),
                    mode: if path.is_dir() {
                        VolumeMode::Filesystem
                    } else {
                        VolumeMode::Block
                    },
                    path,
                }),
                Err(e) => {
                    tracing::warn!("static volume {name} at {}: {e}", path.display());
                    None
                }
            })
            .collect();
        AgentService {
            static_volumes,
            node_name: config.node_name.clone(),
            cluster_name: config.cluster_name.clone(),
            kubelet: Arc::new(kubelet),
            jobs,
            metrics,
            workers,
            local_repositories,
            lock_wait: config.lock_wait,
        }
    }

    /// Worker threads per job stage.
    pub fn workers(&self) -> usize {
        self.workers
    }

    fn new_job(&self, kind: JobKind) -> Result<Job, Status> {
        self.jobs
            .new_job(kind)
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    /// Resolves a volume reference on a blocking thread (it touches the disk).
    async fn resolve(&self, r: Option<pb::VolumeRef>) -> Result<VolumeInfo, Status> {
        let r = volume_ref(r)?;
        if let VolumeRef::Pod {
            pod_uid,
            volume_name,
        } = &r
            && pod_uid.is_empty()
            && !self.static_volumes.is_empty()
        {
            // A name lookup, never a path join: only what the operator configured matches.
            return self
                .static_volumes
                .iter()
                .find(|v| &v.volume_name == volume_name)
                .cloned()
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "no static volume named {:?} on this node",
                        volume_name.chars().take(64).collect::<String>()
                    ))
                });
        }
        let kubelet = Arc::clone(&self.kubelet);
        tokio::task::spawn_blocking(move || kubelet.resolve(&r))
            .await
            .map_err(|e| Status::internal(format!("resolve volume: {e}")))?
            .map_err(Status::from)
    }

    /// Checks the repository spec before the job starts, so that a bad request fails at once.
    fn repository_plan(&self, spec: Option<pb::RepositorySpec>) -> Result<RepoPlan, Status> {
        let spec =
            spec.ok_or_else(|| Status::invalid_argument("the request names no repository"))?;
        if spec.location.trim().is_empty() {
            return Err(Status::invalid_argument("the repository location is empty"));
        }
        if spec.password.is_empty() {
            return Err(Status::invalid_argument("the repository password is empty"));
        }
        let location =
            Location::parse(&spec.location).map_err(|e| Status::invalid_argument(e.to_string()))?;
        match &location {
            Location::Memory => {
                return Err(Status::invalid_argument(
                    "an in-memory repository cannot be used through the agent",
                ));
            }
            Location::Local(path) => self.check_local(path)?,
            _ => {}
        }
        let o = spec.options.unwrap_or_default();
        let connections = o.connections as usize;
        let compression: Compression = o
            .compression
            .parse()
            .map_err(|e: String| Status::invalid_argument(e))?;
        let self_check = if o.no_extra_verify {
            SelfCheck::Skip
        } else {
            SelfCheck::Verify
        };
        let options = crate::rpc::backend_options(o, spec.credentials.unwrap_or_default());
        Ok(RepoPlan {
            location: spec.location,
            password: spec.password.into_bytes(),
            options,
            connections,
            compression,
            self_check,
            lock_wait: self.lock_wait,
        })
    }

    /// A local repository must exist under one of the allowed directories.
    fn check_local(&self, path: &Path) -> Result<(), Status> {
        let canonical = std::fs::canonicalize(path).map_err(|e| {
            Status::failed_precondition(format!("local repository {}: {e}", path.display()))
        })?;
        if self
            .local_repositories
            .iter()
            .any(|root| canonical.starts_with(root))
        {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "local repository {} is not under a directory the agent allows \
                 (--allow-local-repository)",
                path.display()
            )))
        }
    }

    /// Starts `run` as a job whose events go to the returned stream.
    fn start_streaming<F, Fut>(
        &self,
        job: Job,
        deadline: Option<Instant>,
        run: F,
    ) -> Response<ReceiverStream<Result<pb::JobEvent, Status>>>
    where
        F: FnOnce(JobContext) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<pb::job_event::Event, Status>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let jobs = Arc::clone(&self.jobs);
        let span = tracing::info_span!("job", job_id = %job.id, kind = job.kind.as_str());
        let task = async move {
            let id = job.id.clone();
            let event = |e| pb::JobEvent {
                job_id: id.clone(),
                event: Some(e),
            };
            let queued_tx = tx.clone();
            let queued_event = event;
            let waited = jobs.acquire(&job, move |position| {
                let _ = queued_tx.try_send(Ok(queued_event(pb::job_event::Event::Queued(
                    pb::Queued { position },
                ))));
            });
            let Some(slot) = watch(&tx, &job, deadline, waited).await else {
                tracing::info!("job cancelled while waiting for a slot");
                let _ = tx.send(Err(cancelled_status(&job, deadline))).await;
                return;
            };
            tracing::info!("job started");
            let ctx = JobContext {
                tx: tx.clone(),
                job,
                deadline,
                job_id: id.clone(),
            };
            let job = ctx.job.clone();
            let result = run(ctx).await;
            let outcome = finish_outcome(&result, &job);
            slot.finish(outcome);
            match result {
                Ok(e) => {
                    tracing::info!("job done");
                    let _ = tx.send(Ok(event(e))).await;
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), error = status.message(), "job failed");
                    let _ = tx.send(Err(status)).await;
                }
            }
        };
        self.jobs.spawn(task.instrument(span));
        Response::new(ReceiverStream::new(rx))
    }
}

/// A validated repository spec, opened inside the job.
struct RepoPlan {
    location: String,
    password: Vec<u8>,
    options: BackendOptions,
    connections: usize,
    compression: Compression,
    self_check: SelfCheck,
    lock_wait: std::time::Duration,
}

impl RepoPlan {
    /// Opens the repository and loads its index.
    async fn open(&self, job_id: &str) -> Result<(Arc<Repository>, usize), OpError> {
        let backend = Backend::open(&self.location, &self.options).map_err(RepoError::from)?;
        let default = if backend.is_local() {
            2
        } else {
            DEFAULT_CONNECTIONS
        };
        let connections = match self.connections {
            0 => default,
            n => n.min(jobs::MAX_CONNECTIONS),
        };
        let mut repo = Repository::open(backend, &self.password).await?;
        repo.set_lock_tag(Some(job_id.to_string()));
        repo.set_lock_wait(self.lock_wait);
        repo.set_compression(self.compression)?;
        repo.set_self_check(self.self_check);
        repo.load_index().await?;
        Ok((Arc::new(repo), connections))
    }
}

/// What a running job needs to report.
struct JobContext {
    tx: EventSender,
    job: Job,
    deadline: Option<Instant>,
    job_id: String,
}

impl JobContext {
    /// Drives `op` to its end while sending progress every second, cancelling the job when
    /// the caller goes away or the deadline passes. `op` is never dropped early: a cancelled
    /// operation still releases its lock.
    async fn drive<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, OpError>>,
        progress: impl Fn() -> pb::Progress,
    ) -> Result<T, Status> {
        let send = |p: pb::Progress| {
            let _ = self.tx.try_send(Ok(pb::JobEvent {
                job_id: self.job_id.clone(),
                event: Some(pb::job_event::Event::Progress(p)),
            }));
        };
        let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut op = std::pin::pin!(op);
        let result = watch(&self.tx, &self.job, self.deadline, async {
            loop {
                tokio::select! {
                    r = &mut op => break r,
                    _ = ticker.tick() => send(progress()),
                }
            }
        })
        .await;
        send(progress());
        result.map_err(|e| {
            if e.is_cancelled() {
                cancelled_status(&self.job, self.deadline)
            } else {
                status_of(&e)
            }
        })
    }

    /// Opens the repository; dropping the open is safe (no lock is taken yet).
    async fn open(&self, plan: &RepoPlan) -> Result<(Arc<Repository>, usize), Status> {
        let opened = watch(&self.tx, &self.job, self.deadline, async {
            tokio::select! {
                r = plan.open(&self.job_id) => Some(r),
                () = self.job.cancel.cancelled() => None,
            }
        })
        .await;
        match opened {
            Some(r) => r.map_err(|e| status_of(&e)),
            None => Err(cancelled_status(&self.job, self.deadline)),
        }
    }
}

/// Runs `fut` to its end, cancelling `job` (but still awaiting `fut`) when the receiver of
/// `tx` is dropped or `deadline` passes.
async fn watch<T>(
    tx: &EventSender,
    job: &Job,
    deadline: Option<Instant>,
    fut: impl std::future::Future<Output = T>,
) -> T {
    let mut fut = std::pin::pin!(fut);
    let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let sleep = tokio::time::sleep_until(deadline.unwrap_or(far).into());
    let mut sleep = std::pin::pin!(sleep);
    let (mut closed, mut expired) = (false, false);
    loop {
        tokio::select! {
            r = &mut fut => return r,
            () = tx.closed(), if !closed => {
                closed = true;
                tracing::info!("the caller went away: cancelling the job");
                job.cancel.cancel();
            }
            () = &mut sleep, if !expired && deadline.is_some() => {
                expired = true;
                tracing::info!("the call's deadline passed: cancelling the job");
                job.cancel.cancel();
            }
        }
    }
}

fn finish_outcome<T>(result: &Result<T, Status>, job: &Job) -> Outcome {
    match result {
        Ok(_) => Outcome::Done,
        Err(_) if job.cancel.is_cancelled() => Outcome::Cancelled,
        Err(_) => Outcome::Failed,
    }
}

fn cancelled_status(job: &Job, deadline: Option<Instant>) -> Status {
    if deadline.is_some_and(|d| Instant::now() >= d) {
        Status::deadline_exceeded(format!("job {}: the call's deadline passed", job.id))
    } else {
        Status::cancelled(format!("job {} cancelled", job.id))
    }
}

/// The call's deadline from its `grpc-timeout` header (`<digits><H|M|S|m|u|n>`).
fn deadline_of<T>(request: &Request<T>) -> Option<Instant> {
    let raw = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_grpc_timeout(raw)?;
    Instant::now().checked_add(timeout)
}

fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn volume_ref(r: Option<pb::VolumeRef>) -> Result<VolumeRef, Status> {
    match r.and_then(|r| r.target) {
        Some(pb::volume_ref::Target::PodVolume(p)) => Ok(VolumeRef::Pod {
            pod_uid: p.pod_uid,
            volume_name: p.volume_name,
        }),
        Some(pb::volume_ref::Target::PvName(pv)) => Ok(VolumeRef::Pv(pv)),
        None => Err(Status::invalid_argument("the request names no volume")),
    }
}

fn mode_of(m: VolumeMode) -> pb::VolumeMode {
    match m {
        VolumeMode::Filesystem => pb::VolumeMode::Filesystem,
        VolumeMode::Block => pb::VolumeMode::Block,
    }
}

impl From<VolumeError> for Status {
    fn from(e: VolumeError) -> Status {
        match &e {
            VolumeError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
            VolumeError::NotFound(_) => Status::not_found(e.to_string()),
            VolumeError::Io { .. } => Status::internal(e.to_string()),
        }
    }
}

/// The status for a failed operation: the code says what kind of failure, the message (the
/// whole error chain) says what was being done and with what.
pub fn status_of(e: &OpError) -> Status {
    use crate::archiver::ArchiveError;
    use crate::restorer::RestoreError;
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = s.source();
    }
    let code = match e.repo_error() {
        Some(RepoError::NoRepository { .. }) => Code::FailedPrecondition,
        Some(RepoError::WrongPassword { .. }) => Code::PermissionDenied,
        Some(RepoError::Locked { .. }) => Code::Aborted,
        Some(RepoError::SnapshotNotFound(_)) => Code::NotFound,
        Some(RepoError::AmbiguousSnapshot(_)) => Code::InvalidArgument,
        Some(RepoError::Corrupt { .. }) => Code::DataLoss,
        Some(RepoError::Backend(b)) if b.is_not_found() => Code::NotFound,
        Some(RepoError::Backend(_)) => Code::Unavailable,
        Some(_) => Code::Internal,
        None => match e {
            OpError::Archive(ArchiveError::Source { .. })
            | OpError::Restore(RestoreError::Block { .. }) => Code::FailedPrecondition,
            _ if e.is_cancelled() => Code::Cancelled,
            _ => Code::Internal,
        },
    };
    Status::new(code, message)
}

type EventStream = ReceiverStream<Result<pb::JobEvent, Status>>;

#[tonic::async_trait]
impl pb::agent_service_server::AgentService for AgentService {
    async fn get_info(
        &self,
        _request: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::AgentInfo>, Status> {
        Ok(Response::new(pb::AgentInfo {
            node_name: self.node_name.clone(),
            cluster_name: self.cluster_name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            kubelet_root: self.kubelet.root().display().to_string(),
            max_concurrent_jobs: u32::try_from(self.jobs.max()).unwrap_or(u32::MAX),
            job_memory_budget_bytes: jobs::memory_budget(self.workers, DEFAULT_CONNECTIONS),
            jobs_running: self.jobs.running(),
            jobs_queued: self.jobs.queued(),
            running_jobs: self.jobs.running_ids(),
        }))
    }

    async fn list_volumes(
        &self,
        request: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let r = request.into_inner();
        let kubelet = Arc::clone(&self.kubelet);
        let statics = self.static_volumes.clone();
        let listed = tokio::task::spawn_blocking(move || {
            let pod = (!r.pod_uid.is_empty()).then_some(r.pod_uid.as_str());
            let mut infos = kubelet.list(pod)?;
            if pod.is_none() {
                infos.extend(statics);
            }
            let mut out = Vec::with_capacity(infos.len());
            for info in infos {
                let bytes_used = if r.with_usage {
                    kubelet.bytes_used(&info, &|| false).unwrap_or_else(|e| {
                        tracing::warn!("measure volume {}: {e}", info.path.display());
                        0
                    })
                } else {
                    0
                };
                out.push(pb::Volume {
                    pod_uid: info.pod_uid,
                    volume_name: info.volume_name,
                    plugin: info.plugin,
                    pv_name: info.pv_name,
                    mode: mode_of(info.mode).into(),
                    bytes_used,
                    csi_driver: info.csi_driver,
                });
            }
            Ok::<_, VolumeError>(out)
        })
        .await
        .map_err(|e| Status::internal(format!("list volumes: {e}")))??;
        Ok(Response::new(pb::ListVolumesResponse { volumes: listed }))
    }

    type SnapshotStream = EventStream;

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let deadline = deadline_of(&request);
        let r = request.into_inner();
        let volume = self.resolve(r.volume).await?;
        let plan = self.repository_plan(r.repository)?;
        let job = self.new_job(JobKind::Snapshot)?;
        let metrics = Arc::clone(&self.metrics);
        let workers = self.workers;
        let parent = (!r.parent.is_empty()).then_some(r.parent);
        let as_path = (!r.as_path.is_empty()).then_some(r.as_path);
        let host = if r.host.is_empty() {
            "ferry".to_string()
        } else {
            r.host
        };
        let (tags, with_atime) = (r.tags, r.with_atime);
        tracing::info!(
            job_id = %job.id,
            pod_uid = %volume.pod_uid,
            volume = %volume.volume_name,
            repository = %plan.location,
            "snapshot requested"
        );
        Ok(self.start_streaming(job, deadline, move |ctx| async move {
            let (repo, connections) = ctx.open(&plan).await?;
            let req = operations::SnapshotRequest {
                source: volume.path.clone(),
                as_path,
                host,
                tags,
                parent,
                block: volume.mode == VolumeMode::Block,
                read_options: ReadOptions {
                    with_atime,
                    xattrs: true,
                },
                workers,
                connections,
            };
            let state = Arc::new(operations::SnapshotProgress::default());
            let started = Instant::now();
            let rate = RateMeter::new();
            let op = operations::snapshot(repo, req, Arc::clone(&state), ctx.job.cancel.clone());
            let done = ctx
                .drive(op, || {
                    let bytes = state.stats.bytes_processed.load(Ordering::Relaxed);
                    pb::Progress {
                        files_done: state.stats.files_processed.load(Ordering::Relaxed),
                        bytes_done: bytes,
                        files_total: state.totals.files.load(Ordering::Relaxed),
                        bytes_total: state.totals.bytes.load(Ordering::Relaxed),
                        totals_final: state.totals.done.load(Ordering::Relaxed),
                        bytes_per_second: rate.update(bytes),
                        elapsed_seconds: started.elapsed().as_secs_f64(),
                    }
                })
                .await;
            metrics.add_bytes_read(state.stats.bytes_read.load(Ordering::Relaxed));
            let done = done?;
            let s = done.outcome.snapshot.summary.clone().unwrap_or_default();
            metrics.add_bytes_stored(s.data_added_packed);
            metrics.add_files(JobKind::Snapshot, s.total_files_processed);
            Ok(pb::job_event::Event::SnapshotDone(pb::SnapshotDone {
                snapshot_id: done.outcome.id.to_hex(),
                parent_id: done.parent.map(|p| p.to_hex()).unwrap_or_default(),
                files_new: s.files_new,
                files_changed: s.files_changed,
                files_unmodified: s.files_unmodified,
                dirs_new: s.dirs_new,
                dirs_changed: s.dirs_changed,
                dirs_unmodified: s.dirs_unmodified,
                data_blobs: s.data_blobs,
                tree_blobs: s.tree_blobs,
                data_added: s.data_added,
                data_added_packed: s.data_added_packed,
                total_files_processed: s.total_files_processed,
                total_bytes_processed: s.total_bytes_processed,
                seconds: done.seconds,
                warnings: done.outcome.warnings,
            }))
        }))
    }

    type RestoreStream = EventStream;

    async fn restore(
        &self,
        request: Request<pb::RestoreRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let deadline = deadline_of(&request);
        let r = request.into_inner();
        if r.snapshot.is_empty() {
            return Err(Status::invalid_argument("the request names no snapshot"));
        }
        let volume = self.resolve(r.volume).await?;
        let plan = self.repository_plan(r.repository)?;
        let job = self.new_job(JobKind::Restore)?;
        let metrics = Arc::clone(&self.metrics);
        let workers = self.workers;
        tracing::info!(
            job_id = %job.id,
            pod_uid = %volume.pod_uid,
            volume = %volume.volume_name,
            repository = %plan.location,
            snapshot = %r.snapshot,
            "restore requested"
        );
        Ok(self.start_streaming(job, deadline, move |ctx| async move {
            let (repo, connections) = ctx.open(&plan).await?;
            let req = operations::RestoreRequest {
                snapshot: r.snapshot,
                target: volume.path.clone(),
                delete: r.delete,
                base: (!r.base.is_empty()).then_some(r.base),
                exclude_xattr: r.exclude_xattr,
                block: volume.mode == VolumeMode::Block,
                workers,
                connections,
            };
            let stats = RestoreStats::default();
            let started = Instant::now();
            let rate = RateMeter::new();
            // Boxed as `dyn Send` here, where the compiler can see the future is Send (it
            // cannot prove it through the closure's higher-ranked lifetimes otherwise).
            let op: Pin<Box<dyn std::future::Future<Output = _> + Send + '_>> = Box::pin(
                operations::restore(repo, req, &stats, ctx.job.cancel.clone()),
            );
            let done = ctx
                .drive(op, || {
                    let bytes = stats.bytes_done.load(Ordering::Relaxed);
                    let total = stats.bytes_total.load(Ordering::Relaxed);
                    pb::Progress {
                        files_done: 0,
                        bytes_done: bytes,
                        files_total: stats.files_total.load(Ordering::Relaxed),
                        bytes_total: total,
                        totals_final: total > 0,
                        bytes_per_second: rate.update(bytes),
                        elapsed_seconds: started.elapsed().as_secs_f64(),
                    }
                })
                .await;
            metrics.add_bytes_restored(stats.bytes_done.load(Ordering::Relaxed));
            let done = done?;
            let o = &done.outcome;
            metrics.add_files(JobKind::Restore, o.files_written);
            Ok(pb::job_event::Event::RestoreDone(pb::RestoreDone {
                snapshot_id: done.snapshot.to_hex(),
                files: o.files,
                files_written: o.files_written,
                dirs: o.dirs,
                others: o.others,
                bytes_written: o.bytes,
                bytes_fetched: o.bytes_fetched,
                removed: o.removed,
                skipped_by_base: o.skipped_by_base,
                base_rejected: o.base_rejected,
                seconds: done.seconds,
            }))
        }))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let deadline = deadline_of(&request);
        let r = request.into_inner();
        let volume = self.resolve(r.volume).await?;
        let job = self.new_job(JobKind::Verify)?;
        let jobs = Arc::clone(&self.jobs);
        let metrics = Arc::clone(&self.metrics);
        let workers = self.workers;
        let (result_tx, mut result_rx) = tokio::sync::oneshot::channel();
        let span = tracing::info_span!("job", job_id = %job.id, kind = "verify");
        let task = async move {
            let mut result_tx = result_tx;
            // Dropping the call drops the receiver: cancel the job, as for the streams.
            let watched = async {
                let Some(slot) = jobs.acquire(&job, |_| {}).await else {
                    return (None, Err(cancelled_status(&job, deadline)));
                };
                let op = operations::verify(
                    volume.path.clone(),
                    volume.mode == VolumeMode::Block,
                    r.exclude_xattr,
                    workers,
                    job.cancel.clone(),
                );
                let r = op.await.map_err(|e| {
                    if e.is_cancelled() {
                        cancelled_status(&job, deadline)
                    } else {
                        status_of(&e)
                    }
                });
                (Some(slot), r)
            };
            let mut watched = std::pin::pin!(watched);
            let far = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
            let mut sleep =
                std::pin::pin!(tokio::time::sleep_until(deadline.unwrap_or(far).into()));
            let (mut closed, mut expired) = (false, false);
            let (slot, result) = loop {
                tokio::select! {
                    r = &mut watched => break r,
                    () = result_tx.closed(), if !closed => {
                        closed = true;
                        job.cancel.cancel();
                    }
                    () = &mut sleep, if !expired && deadline.is_some() => {
                        expired = true;
                        job.cancel.cancel();
                    }
                }
            };
            if let Some(slot) = slot {
                slot.finish(finish_outcome(&result, &job));
            }
            if let Ok(report) = &result {
                metrics.add_files(JobKind::Verify, report.files);
            }
            let response = result.map(|report| pb::VerifyResponse {
                job_id: job.id.clone(),
                digest: report.hex(),
                entries: report.entries,
                files: report.files,
                bytes: report.bytes,
            });
            let _ = result_tx.send(response);
        };
        self.jobs.spawn(task.instrument(span));
        let result = Pin::new(&mut result_rx)
            .await
            .map_err(|_| Status::internal("the verify job ended without a result"))?;
        result.map(Response::new)
    }
}

/// Bytes per second between successive progress reports.
struct RateMeter {
    last: std::sync::Mutex<(Instant, u64)>,
}

impl RateMeter {
    fn new() -> RateMeter {
        RateMeter {
            last: std::sync::Mutex::new((Instant::now(), 0)),
        }
    }

    fn update(&self, bytes: u64) -> f64 {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let secs = now.duration_since(last.0).as_secs_f64();
        let rate = if secs > 0.0 {
            bytes.saturating_sub(last.1) as f64 / secs
        } else {
            0.0
        };
        *last = (now, bytes);
        rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12"), None);
        assert_eq!(parse_grpc_timeout("1x"), None);
        assert_eq!(parse_grpc_timeout("1234567890S"), None);
    }

    #[test]
    fn statuses_name_the_kind_of_failure() {
        let locked = OpError::Repo(RepoError::SnapshotNotFound("abc".into()));
        assert_eq!(status_of(&locked).code(), Code::NotFound);
        let cancelled = OpError::Verify(crate::verify::VerifyError::Cancelled);
        assert_eq!(status_of(&cancelled).code(), Code::Cancelled);
        let e: Status = VolumeError::InvalidArgument("pod uid \"..\"".into()).into();
        assert_eq!(e.code(), Code::InvalidArgument);
    }

    #[test]
    fn rate_is_bytes_over_time() {
        let m = RateMeter::new();
        std::thread::sleep(Duration::from_millis(20));
        assert!(m.update(1_000_000) > 0.0);
        assert_eq!(m.update(1_000_000), 0.0);
    }
}
