//! Driving plans: one task per plan asks the scheduler what to start, starts it, and records
//! every change durably before anything else sees it.
//!
//! The plan's state lives in memory behind a mutex that is never held across an await; after
//! every change the whole state and the events it produced are written to SQLite in one
//! transaction. A step runs as its own task and reports back through the scheduler's
//! `apply_result`. When the coordinator stops, running calls are dropped (so the agents cancel
//! their jobs and release their locks) and their results are not recorded: after a restart the
//! scheduler's recovery re-runs them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::agents::Agents;
use super::model::{PlanPhase, PlanState, Step, VolumePhase, VolumeSpec};
use super::scheduler::{self, Action, Failure, StepResult};
use super::spec::PlanSpec;
use super::steps::{self, StepInput, StepObserver};
use super::store::{PlanSecrets, Store, StoreError};

/// Progress events are recorded at most this often per step.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// One recorded event, as stored (JSON) and streamed by `WatchPlan`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Empty for plan-wide events.
    pub pv_name: String,
    /// `phase`, `step_started`, `step_done`, `retry`, `error`, `progress`, `plan`.
    pub kind: String,
    pub phase: String,
    pub step: String,
    pub bytes: u64,
    pub message: String,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Lower-case names as the API shows them.
pub fn phase_name<T: Serialize>(phase: &T) -> String {
    serde_json::to_value(phase)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A plan being driven.
pub struct PlanRun {
    /// The stored spec.
    pub spec: PlanSpec,
    secrets: PlanSecrets,
    state: Mutex<PlanState>,
    wake: Notify,
    /// Cancelled by `Cancel`: running calls are dropped.
    cancel: CancellationToken,
}

impl PlanRun {
    /// The plan's secrets (for the coordinator's own repository work).
    pub fn secrets(&self) -> &PlanSecrets {
        &self.secrets
    }

    /// A copy of the current state.
    pub fn state(&self) -> PlanState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Every plan the coordinator drives.
pub struct Runner {
    store: Arc<Store>,
    agents: Arc<Agents>,
    plans: Mutex<HashMap<String, Arc<PlanRun>>>,
    changed: broadcast::Sender<String>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// Why a plan operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store failed or the plan is unknown.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The plan's state does not allow the request.
    #[error(transparent)]
    Schedule(#[from] scheduler::ScheduleError),
    /// A stored state could not be read.
    #[error("plan {plan:?}: stored state: {reason}")]
    Corrupt {
        /// The plan.
        plan: String,
        /// Why.
        reason: String,
    },
}

impl Runner {
    /// Loads every stored plan, recovers the steps that were running when the coordinator
    /// stopped, and starts driving them.
    pub fn start(store: Arc<Store>, agents: Arc<Agents>) -> Result<Arc<Runner>, RunError> {
        let (changed, _) = broadcast::channel(256);
        let runner = Arc::new(Runner {
            store,
            agents,
            plans: Mutex::new(HashMap::new()),
            changed,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let mut abandoned: HashMap<String, Vec<super::store::JobRow>> = HashMap::new();
        for job in runner.store.unfinished_jobs()? {
            // Its call died with the previous coordinator, so a live agent cancelled the job;
            // a dead agent left its lock, which the cleanup below removes.
            tracing::info!(job_id = %job.job_id, plan = %job.plan, "job abandoned by a restart");
            runner
                .store
                .job_ended(&job.job_id, "abandoned", ms_i64(now_ms()))?;
            abandoned.entry(job.plan.clone()).or_default().push(job);
        }
        for row in runner.store.list_plans()? {
            let spec: PlanSpec =
                serde_json::from_str(&row.spec_json).map_err(|e| RunError::Corrupt {
                    plan: row.name.clone(),
                    reason: e.to_string(),
                })?;
            let mut state: PlanState =
                serde_json::from_str(&row.state_json).map_err(|e| RunError::Corrupt {
                    plan: row.name.clone(),
                    reason: e.to_string(),
                })?;
            let secrets = runner.store.plan_secrets(&row.name)?;
            let recovered = scheduler::recover_after_restart(&mut state);
            let events: Vec<EventRecord> = recovered
                .iter()
                .map(|(i, r)| EventRecord {
                    pv_name: state.volumes[*i].spec.pv_name.clone(),
                    kind: "retry".into(),
                    step: r.step.as_str().into(),
                    message: format!(
                        "{} was running when the coordinator stopped: running it again",
                        r.step
                    ),
                    ..EventRecord::default()
                })
                .collect();
            runner.commit(&row.name, &state, &events)?;
            if let Some(jobs) = abandoned.remove(&row.name) {
                let agents = Arc::clone(&runner.agents);
                let (spec, secrets) = (spec.clone(), secrets.clone());
                runner.tracker.spawn(async move {
                    match super::locks::remove_dead_job_locks(&agents, &spec, &secrets, &jobs)
                        .await
                    {
                        Ok(n) => tracing::info!(plan = %spec.name, removed = n, "dead jobs' locks checked"),
                        Err(e) => tracing::warn!(plan = %spec.name, "check dead jobs' locks: {e}"),
                    }
                });
            }
            runner.adopt(spec, secrets, state);
        }
        Ok(runner)
    }

    /// Notified with a plan's name whenever it has new events.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.changed.subscribe()
    }

    /// Cancelled when the coordinator stops (watchers end their streams).
    pub fn stopping(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The store (for events and listing).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The plan named `name`.
    pub fn plan(&self, name: &str) -> Result<Arc<PlanRun>, RunError> {
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(format!("plan {name:?} not found")).into())
    }

    /// Every plan, by name.
    pub fn plans(&self) -> Vec<Arc<PlanRun>> {
        let plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = plans.values().cloned().collect();
        all.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        all
    }

    /// Stores a new plan and starts driving it (it waits for `Stage` or `Final`).
    pub fn create(
        self: &Arc<Self>,
        spec: PlanSpec,
        volumes: Vec<VolumeSpec>,
        options: super::model::Options,
        secrets: PlanSecrets,
    ) -> Result<Arc<PlanRun>, RunError> {
        let state = PlanState::new(volumes, options);
        let spec_json = serde_json::to_string(&spec).map_err(|e| corrupt(&spec.name, &e))?;
        let state_json = serde_json::to_string(&state).map_err(|e| corrupt(&spec.name, &e))?;
        self.store.create_plan(
            &spec.name,
            &spec_json,
            &state_json,
            &secrets,
            ms_i64(now_ms()),
        )?;
        let name = spec.name.clone();
        let event = EventRecord {
            kind: "plan".into(),
            phase: phase_name(&state.phase()),
            message: format!("plan created with {} volumes", state.volumes.len()),
            ..EventRecord::default()
        };
        self.commit(&name, &state, &[event])?;
        Ok(self.adopt(spec, secrets, state))
    }

    fn adopt(
        self: &Arc<Self>,
        spec: PlanSpec,
        secrets: PlanSecrets,
        state: PlanState,
    ) -> Arc<PlanRun> {
        let run = Arc::new(PlanRun {
            spec,
            secrets,
            state: Mutex::new(state),
            wake: Notify::new(),
            cancel: self.shutdown.child_token(),
        });
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run.spec.name.clone(), Arc::clone(&run));
        let me = Arc::clone(self);
        let driven = Arc::clone(&run);
        self.tracker.spawn(async move { me.drive(driven).await });
        run
    }

    /// Applies a request (`Stage`, `Final`, `Cancel`) to a plan, records it and wakes it.
    pub fn request(
        &self,
        name: &str,
        what: &str,
        change: impl FnOnce(&mut PlanState) -> Result<String, scheduler::ScheduleError>,
    ) -> Result<PlanState, RunError> {
        let run = self.plan(name)?;
        let state = {
            let mut st = run.state.lock().unwrap_or_else(|e| e.into_inner());
            let mut next = st.clone();
            let message = change(&mut next)?;
            let mut events = vec![EventRecord {
                kind: "plan".into(),
                phase: phase_name(&next.phase()),
                message: format!("{what}: {message}"),
                ..EventRecord::default()
            }];
            events.extend(changes(&st, &next).into_iter().filter(|e| e.kind != "plan"));
            self.commit(name, &next, &events)?;
            *st = next.clone();
            next
        };
        if what == "cancel" {
            run.cancel.cancel();
        }
        run.wake.notify_one();
        Ok(state)
    }

    /// Forgets a plan: cancels it and removes it from the store.
    pub fn delete(&self, name: &str) -> Result<Arc<PlanRun>, RunError> {
        let run = self.plan(name)?;
        {
            let mut st = run.state.lock().unwrap_or_else(|e| e.into_inner());
            scheduler::cancel(&mut st);
        }
        run.cancel.cancel();
        run.wake.notify_one();
        self.plans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.store.delete_plan(name)?;
        let _ = self.changed.send(name.to_string());
        Ok(run)
    }

    /// Stops driving: running calls are dropped (their agents cancel the jobs); returns when
    /// every task has ended. Results that arrive meanwhile are not recorded.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Writes the state and events of a plan in one transaction and tells the watchers.
    fn commit(
        &self,
        name: &str,
        state: &PlanState,
        events: &[EventRecord],
    ) -> Result<(), RunError> {
        let state_json = serde_json::to_string(state).map_err(|e| corrupt(name, &e))?;
        let events: Vec<String> = events
            .iter()
            .filter_map(|e| serde_json::to_string(e).ok())
            .collect();
        self.store
            .save_state_with_events(name, &state_json, &events, ms_i64(now_ms()))?;
        let _ = self.changed.send(name.to_string());
        Ok(())
    }

    /// Records `events` for a plan, logging instead of failing (used from step tasks, which
    /// have no caller to report to).
    fn commit_or_log(&self, name: &str, state: &PlanState, events: &[EventRecord]) {
        if let Err(e) = self.commit(name, state, events) {
            tracing::error!(plan = %name, "record the plan's state: {e}");
        }
    }

    async fn drive(self: Arc<Self>, run: Arc<PlanRun>) {
        let name = run.spec.name.clone();
        loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let now = now_ms();
            let (inputs, state, done, wake_at) = {
                let mut st = run.state.lock().unwrap_or_else(|e| e.into_inner());
                let before = st.clone();
                let mut inputs = Vec::new();
                for action in scheduler::next_actions(&st, now) {
                    let Action::Start { volume, step } = action;
                    if scheduler::mark_started(&mut st, volume, step, None, now).is_ok() {
                        let v = &st.volumes[volume];
                        inputs.push((
                            volume,
                            StepInput {
                                plan: name.clone(),
                                step,
                                volume: v.spec.clone(),
                                stage_snapshot: v.stage_snapshot.clone(),
                                final_snapshot: v.final_snapshot.clone(),
                                restored_snapshot: v.restored_snapshot.clone(),
                            },
                        ));
                    }
                }
                let mut events = changes(&before, &st);
                for (_, input) in &inputs {
                    events.push(EventRecord {
                        pv_name: input.volume.pv_name.clone(),
                        kind: "step_started".into(),
                        step: input.step.as_str().into(),
                        ..EventRecord::default()
                    });
                }
                let done = st.running_count() == 0
                    && matches!(
                        st.phase(),
                        PlanPhase::Completed | PlanPhase::Failed | PlanPhase::Cancelled
                    )
                    && st.volumes.iter().all(|v| v.phase.is_terminal());
                let wake_at = scheduler::next_wake_ms(&st, now);
                // Committed under the lock: whoever sees this state finds its events stored.
                if !events.is_empty() {
                    self.commit_or_log(&name, &st, &events);
                }
                (inputs, st.clone(), done, wake_at)
            };
            for (volume, input) in inputs {
                let me = Arc::clone(&self);
                let r = Arc::clone(&run);
                self.tracker
                    .spawn(async move { me.run_step(r, volume, input).await });
            }
            if done {
                tracing::info!(plan = %name, phase = ?state.phase(), "plan finished");
                return;
            }
            let sleep = wake_at.map_or(Duration::from_secs(3600), |at| {
                Duration::from_millis(at.saturating_sub(now_ms()))
            });
            tokio::select! {
                () = run.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    async fn run_step(self: Arc<Self>, run: Arc<PlanRun>, volume: usize, input: StepInput) {
        let name = run.spec.name.clone();
        let side = match input.step {
            Step::StageSnapshot | Step::FinalSnapshot | Step::VerifySource => &input.volume.source,
            _ => &input.volume.dest,
        };
        let observer = Observer {
            runner: &self,
            run: &run,
            volume,
            step: input.step,
            agent: side
                .as_ref()
                .map(|e| format!("{}/{}", e.cluster, e.node))
                .unwrap_or_default(),
            job: Mutex::new(None),
            last_progress: Mutex::new(None),
        };
        let result = steps::run(
            &self.agents,
            &run.spec,
            &run.secrets,
            &input,
            &observer,
            &run.cancel,
        )
        .await;
        let job = observer
            .job
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if self.shutdown.is_cancelled() {
            // Not recorded: after a restart the step runs again.
            return;
        }
        if let Some(job) = &job {
            let outcome = if result.is_ok() { "done" } else { "failed" };
            if let Err(e) = self.store.job_ended(job, outcome, ms_i64(now_ms())) {
                tracing::warn!(plan = %name, job_id = %job, "record the job's end: {e}");
            }
        }
        {
            let mut st = run.state.lock().unwrap_or_else(|e| e.into_inner());
            let before = st.clone();
            let outcome = result_event(&input, &result);
            scheduler::apply_result(&mut st, volume, input.step, result, now_ms());
            let mut events = vec![outcome];
            events.extend(changes(&before, &st));
            self.commit_or_log(&name, &st, &events);
        }
        run.wake.notify_one();
    }
}

fn corrupt(plan: &str, e: &serde_json::Error) -> RunError {
    RunError::Corrupt {
        plan: plan.to_string(),
        reason: e.to_string(),
    }
}

/// The event that reports a step's outcome.
fn result_event(input: &StepInput, result: &Result<StepResult, Failure>) -> EventRecord {
    let base = EventRecord {
        pv_name: input.volume.pv_name.clone(),
        step: input.step.as_str().into(),
        ..EventRecord::default()
    };
    match result {
        Ok(r) => {
            let (bytes, message) = match r {
                StepResult::Snapshot { snapshot_id, bytes } => {
                    (*bytes, format!("snapshot {snapshot_id}"))
                }
                StepResult::Restore { bytes } => (*bytes, String::new()),
                StepResult::Digest { digest } => (0, format!("digest {digest}")),
                StepResult::NfsChecked => (0, "the source PV is NFS".into()),
                StepResult::NfsMoved => (0, "the export is attached on the destination".into()),
            };
            EventRecord {
                kind: "step_done".into(),
                bytes,
                message,
                ..base
            }
        }
        Err(Failure::Transient(m)) => EventRecord {
            kind: "retry".into(),
            message: m.clone(),
            ..base
        },
        Err(Failure::Permanent(m)) => EventRecord {
            kind: "error".into(),
            message: m.clone(),
            ..base
        },
    }
}

/// Events for volume and plan phase changes between two states.
fn changes(before: &PlanState, after: &PlanState) -> Vec<EventRecord> {
    let mut events: Vec<EventRecord> = scheduler::volume_phase_changes(before, after)
        .into_iter()
        .map(|(i, _, to)| {
            let v = &after.volumes[i];
            EventRecord {
                pv_name: v.spec.pv_name.clone(),
                kind: "phase".into(),
                phase: phase_name(&to),
                bytes: v.bytes_moved,
                message: match to {
                    VolumePhase::Failed => v.last_error.clone().unwrap_or_default(),
                    _ => String::new(),
                },
                ..EventRecord::default()
            }
        })
        .collect();
    if before.phase() != after.phase() {
        events.push(EventRecord {
            kind: "plan".into(),
            phase: phase_name(&after.phase()),
            ..EventRecord::default()
        });
    }
    events
}

/// Records a step's job id and throttled progress.
struct Observer<'a> {
    runner: &'a Runner,
    run: &'a PlanRun,
    volume: usize,
    step: Step,
    agent: String,
    job: Mutex<Option<String>>,
    last_progress: Mutex<Option<std::time::Instant>>,
}

impl StepObserver for Observer<'_> {
    fn job_started(&self, job_id: &str) {
        *self.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job_id.to_string());
        let name = &self.run.spec.name;
        {
            let mut st = self.run.state.lock().unwrap_or_else(|e| e.into_inner());
            scheduler::record_job_id(&mut st, self.volume, self.step, job_id.to_string());
        }
        if let Err(e) = self.runner.store.job_started(
            name,
            self.volume,
            self.step.as_str(),
            job_id,
            &self.agent,
            ms_i64(now_ms()),
        ) {
            tracing::warn!(plan = %name, job_id, "record the job: {e}");
        }
    }

    fn progress(&self, bytes_done: u64, bytes_total: u64) {
        {
            let mut last = self.last_progress.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let st = self.run.state.lock().unwrap_or_else(|e| e.into_inner());
        let event = EventRecord {
            pv_name: st.volumes[self.volume].spec.pv_name.clone(),
            kind: "progress".into(),
            step: self.step.as_str().into(),
            bytes: bytes_done,
            message: format!("{bytes_done} of {bytes_total} bytes"),
            ..EventRecord::default()
        };
        self.runner
            .commit_or_log(&self.run.spec.name, &st, &[event]);
    }
}
