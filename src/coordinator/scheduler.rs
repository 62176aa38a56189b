//! The coordinator's scheduler: which steps of a plan start next, and how a step's outcome moves a
//! volume along.
//!
//! Everything here is a pure function of [`PlanState`] and a time in milliseconds passed in by the
//! caller: no I/O, no clock, no async. The glue that owns the plan calls [`next_actions`], starts
//! each action's step on an agent (or runs an NFS step itself), records it with [`mark_started`],
//! feeds the outcome back with [`apply_result`], and persists the plan after every change. What
//! this module deliberately does not do: talk to agents or Kubernetes, persist anything, remove
//! repository locks, or decide how an error is classified (the caller says transient or
//! permanent).
//!
//! The flow of one volume:
//!
//! - COPY stage (each [`request_stage`] is a new generation): `StageSnapshot` then `StageRestore`
//!   of that snapshot, repeated until the volume has restored the latest requested generation.
//! - COPY final (after [`request_final`], once the volume has done every requested stage and at
//!   least one): `FinalSnapshot`, `FinalRestore`, then, with `Options::verify`, `VerifySource` and
//!   `VerifyDest` side by side; equal digests complete the volume, different ones fail it.
//! - MOVE stage: `NfsCheck`. MOVE final: `NfsMove`, which needs a successful `NfsCheck`; when the
//!   final is requested on a volume that was never checked, the scheduler schedules the
//!   `NfsCheck` itself first, so the glue never runs a check implicitly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::model::{Method, PlanState, Running, Step, VolumePhase, VolumeState};

/// Something the glue should do now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Start `step` on `volume` (an index into `PlanState::volumes`), then call [`mark_started`].
    Start { volume: usize, step: Step },
}

/// What a step produced when it succeeded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepResult {
    /// From `StageSnapshot` and `FinalSnapshot`: the new snapshot and the bytes it uploaded.
    Snapshot { snapshot_id: String, bytes: u64 },
    /// From `StageRestore` and `FinalRestore`: the bytes written to the destination.
    Restore { bytes: u64 },
    /// From `VerifySource` and `VerifyDest`: the digest of that side's volume tree.
    Digest { digest: String },
    /// From `NfsCheck`.
    NfsChecked,
    /// From `NfsMove`.
    NfsMoved,
}

impl StepResult {
    fn kind(&self) -> &'static str {
        match self {
            StepResult::Snapshot { .. } => "snapshot",
            StepResult::Restore { .. } => "restore",
            StepResult::Digest { .. } => "digest",
            StepResult::NfsChecked => "nfs_checked",
            StepResult::NfsMoved => "nfs_moved",
        }
    }
}

/// Why a step failed, as classified by the glue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// Worth retrying (agent unreachable, lock held, object store hiccup): retried with backoff
    /// until `Options::max_attempts` attempts failed.
    Transient(String),
    /// Retrying cannot help (volume gone, repository corrupt): fails the volume at once.
    Permanent(String),
}

/// A request the plan cannot take in its current state.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("{doing}: the plan is cancelled")]
    Cancelled { doing: &'static str },
    #[error("requesting a stage: the final is already requested")]
    FinalRequested,
    #[error("requesting the final: copy volumes need a stage first")]
    StageRequired,
    #[error("starting {step} on volume #{volume}: the plan has no such volume")]
    NoSuchVolume { volume: usize, step: Step },
    #[error("starting {step} on volume {pv}: the volume does not need that step now")]
    NotNeeded { pv: String, step: Step },
}

/// Asks for one more stage of every unfinished volume and returns the new generation.
///
/// Rejected once the final is requested (the applications are quiesced then; a stage would only
/// delay the final) and on a cancelled plan.
pub fn request_stage(plan: &mut PlanState) -> Result<u32, ScheduleError> {
    if plan.cancelled {
        return Err(ScheduleError::Cancelled {
            doing: "requesting a stage",
        });
    }
    if plan.final_requested {
        return Err(ScheduleError::FinalRequested);
    }
    plan.stage_requested = plan.stage_requested.saturating_add(1);
    Ok(plan.stage_requested)
}

/// Asks for the final of every volume. Idempotent. A plan with COPY volumes needs a stage
/// requested first; a volume whose requested stage is not done yet finishes it before its final
/// starts.
pub fn request_final(plan: &mut PlanState) -> Result<(), ScheduleError> {
    if plan.cancelled {
        return Err(ScheduleError::Cancelled {
            doing: "requesting the final",
        });
    }
    let has_copy = plan.volumes.iter().any(|v| v.spec.method == Method::Copy);
    if has_copy && plan.stage_requested == 0 {
        return Err(ScheduleError::StageRequired);
    }
    plan.final_requested = true;
    Ok(())
}

/// The steps `v` needs next from its state alone, ignoring what is running and any backoff.
/// At most two (the verify pair); empty for a finished volume or a cancelled plan.
fn wanted_steps(plan: &PlanState, v: &VolumeState) -> Vec<Step> {
    if plan.cancelled || v.phase.is_terminal() {
        return Vec::new();
    }
    let stage_pending = plan.stage_requested > v.stage_generation_done;
    match v.spec.method {
        Method::Copy => match v.phase {
            VolumePhase::Verifying => {
                let mut steps = Vec::with_capacity(2);
                if v.source_digest.is_none() {
                    steps.push(Step::VerifySource);
                }
                if v.dest_digest.is_none() {
                    steps.push(Step::VerifyDest);
                }
                steps
            }
            VolumePhase::Finalizing if v.final_snapshot.is_none() => vec![Step::FinalSnapshot],
            VolumePhase::Finalizing => vec![Step::FinalRestore],
            _ if stage_pending => {
                // A snapshot newer than what reached the destination is restored before another
                // is taken, so a stage requested while one runs costs one more round, not a skip.
                let unrestored = v.stage_snapshot.is_some()
                    && v.stage_snapshot_generation > v.stage_generation_done;
                if unrestored {
                    vec![Step::StageRestore]
                } else {
                    vec![Step::StageSnapshot]
                }
            }
            // The final is incremental on a stage: without one that succeeded it waits.
            _ if plan.final_requested && v.stage_generation_done >= 1 => vec![Step::FinalSnapshot],
            _ => Vec::new(),
        },
        Method::Move => match v.phase {
            VolumePhase::Finalizing => vec![Step::NfsMove],
            _ if stage_pending => vec![Step::NfsCheck],
            _ if plan.final_requested && v.nfs_checked => vec![Step::NfsMove],
            _ if plan.final_requested => vec![Step::NfsCheck],
            _ => Vec::new(),
        },
    }
}

/// The wanted steps that may start now given what `v` already runs: only the verify pair ever runs
/// side by side.
fn startable_steps(plan: &PlanState, v: &VolumeState) -> Vec<Step> {
    if !v.running.is_empty() && v.phase != VolumePhase::Verifying {
        return Vec::new();
    }
    let mut steps = wanted_steps(plan, v);
    steps.retain(|s| !v.is_running(*s));
    steps
}

/// The steps to start now, in the order to start them.
///
/// A volume takes part when it needs a step that is not running and its backoff has passed
/// (`not_before_ms <= now_ms`). Candidates go largest `size_bytes` first (ties: lower index, then
/// step order), each taken unless its node already runs `jobs_per_node` steps; counting stops at
/// `jobs_total`. Running steps of the whole plan count, including one still running on a volume
/// that has already failed. Starting every returned action keeps both limits; nothing is returned
/// for a cancelled plan.
pub fn next_actions(plan: &PlanState, now_ms: u64) -> Vec<Action> {
    if plan.cancelled {
        return Vec::new();
    }
    let mut per_node: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    let mut total = 0u64;
    for v in &plan.volumes {
        for r in &v.running {
            total += 1;
            if let Some(node) = r.step.node(&v.spec) {
                *per_node.entry(node).or_default() += 1;
            }
        }
    }
    let mut candidates: Vec<(u64, usize, Step, &VolumeState)> = Vec::new();
    for (index, v) in plan.volumes.iter().enumerate() {
        if v.not_before_ms > now_ms {
            continue;
        }
        for step in startable_steps(plan, v) {
            candidates.push((v.spec.size_bytes, index, step, v));
        }
    }
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));

    let mut actions = Vec::new();
    for (_, volume, step, v) in candidates {
        if total >= u64::from(plan.options.jobs_total) {
            break;
        }
        if let Some(node) = step.node(&v.spec) {
            let count = per_node.entry(node).or_default();
            if *count >= plan.options.jobs_per_node {
                continue;
            }
            *count += 1;
        }
        total += 1;
        actions.push(Action::Start { volume, step });
    }
    actions
}

/// The earliest time after `now_ms` at which a volume waiting out a retry backoff needs a step,
/// so the glue knows when to call [`next_actions`] again without a new result. `None` when no
/// volume is backing off.
pub fn next_wake_ms(plan: &PlanState, now_ms: u64) -> Option<u64> {
    plan.volumes
        .iter()
        .filter(|v| v.not_before_ms > now_ms && !startable_steps(plan, v).is_empty())
        .map(|v| v.not_before_ms)
        .min()
}

/// Records that `step` of `volume` was handed to an executor at `now_ms`.
///
/// Call it for an action of [`next_actions`] before (or as) the step is started, and persist the
/// plan, so that a coordinator restart finds the step in [`recover_after_restart`]. The step must
/// be one the volume needs now and is not running. It moves the volume to `Staging`,
/// `Finalizing` or `Verifying`. Limits and backoff are not checked here: they are
/// [`next_actions`]'s business.
pub fn mark_started(
    plan: &mut PlanState,
    volume: usize,
    step: Step,
    job_id: Option<String>,
    now_ms: u64,
) -> Result<(), ScheduleError> {
    if plan.cancelled {
        return Err(ScheduleError::Cancelled {
            doing: "starting a step",
        });
    }
    let generation = plan.stage_requested;
    let Some(v) = plan.volumes.get(volume) else {
        return Err(ScheduleError::NoSuchVolume { volume, step });
    };
    if !startable_steps(plan, v).contains(&step) {
        return Err(ScheduleError::NotNeeded {
            pv: v.spec.pv_name.clone(),
            step,
        });
    }
    let Some(v) = plan.volumes.get_mut(volume) else {
        return Err(ScheduleError::NoSuchVolume { volume, step });
    };
    v.running.push(Running {
        step,
        job_id,
        started_ms: now_ms,
        generation,
    });
    v.phase = match step {
        Step::StageSnapshot | Step::StageRestore | Step::NfsCheck => VolumePhase::Staging,
        Step::FinalSnapshot | Step::FinalRestore | Step::NfsMove => VolumePhase::Finalizing,
        Step::VerifySource | Step::VerifyDest => VolumePhase::Verifying,
    };
    Ok(())
}

/// Records the executor's job id of a running step, when it is only known after the start.
/// Returns false when `step` is not running on `volume`.
pub fn record_job_id(plan: &mut PlanState, volume: usize, step: Step, job_id: String) -> bool {
    let running = plan
        .volumes
        .get_mut(volume)
        .and_then(|v| v.running.iter_mut().find(|r| r.step == step));
    match running {
        Some(r) => {
            r.job_id = Some(job_id);
            true
        }
        None => false,
    }
}

/// Applies the outcome of `step` on `volume`; returns whether it was applied.
///
/// A result for a step that is not running on the volume (stale: reported twice, or from before a
/// restart that re-ran it) is ignored and returns false. Otherwise the step stops running and:
///
/// - success records what the step produced (see [`StepResult`]), adds its bytes to
///   `bytes_moved`, resets `attempts` and `last_error`, and advances the phase; when both digests
///   are known they are compared: equal completes the volume, different fails it with
///   `digest mismatch: source X, destination Y`. A result of the wrong kind for the step is a
///   glue bug and fails the volume.
/// - `Transient` counts an attempt; below `max_attempts` the same step is retried no earlier than
///   `now_ms + Options::backoff_ms(attempts)`, otherwise the volume fails with
///   `<step> failed after N attempts: <reason>`.
/// - `Permanent` fails the volume with `<step> failed: <reason>`.
///
/// A volume that already failed (its other verify side failed) only stops counting the step. On
/// a cancelled plan the outcome is recorded first (a completed NFS move stays completed, a
/// permanent failure stays failed); a volume left unfinished with nothing running is cancelled.
pub fn apply_result(
    plan: &mut PlanState,
    volume: usize,
    step: Step,
    result: Result<StepResult, Failure>,
    now_ms: u64,
) -> bool {
    let (stage_requested, cancelled, options) =
        (plan.stage_requested, plan.cancelled, plan.options);
    let Some(v) = plan.volumes.get_mut(volume) else {
        return false;
    };
    let Some(position) = v.running.iter().position(|r| r.step == step) else {
        return false;
    };
    let running = v.running.remove(position);
    if v.phase.is_terminal() {
        return true;
    }
    match result {
        Ok(result) => apply_success(v, &running, result, stage_requested, options.verify),
        Err(Failure::Transient(reason)) => {
            v.attempts = v.attempts.saturating_add(1);
            if v.attempts < options.max_attempts {
                v.not_before_ms = now_ms.saturating_add(options.backoff_ms(v.attempts));
                v.last_error = Some(format!(
                    "{step} failed (attempt {} of {}): {reason}",
                    v.attempts, options.max_attempts
                ));
            } else {
                let attempts = v.attempts;
                fail(
                    v,
                    format!("{step} failed after {attempts} attempts: {reason}"),
                );
            }
        }
        Err(Failure::Permanent(reason)) => fail(v, format!("{step} failed: {reason}")),
    }
    if cancelled && !v.phase.is_terminal() && v.running.is_empty() {
        v.phase = VolumePhase::Cancelled;
    }
    true
}

fn fail(v: &mut VolumeState, error: String) {
    v.phase = VolumePhase::Failed;
    v.last_error = Some(error);
}

fn apply_success(
    v: &mut VolumeState,
    running: &Running,
    result: StepResult,
    stage_requested: u32,
    verify: bool,
) {
    match (running.step, result) {
        (Step::StageSnapshot, StepResult::Snapshot { snapshot_id, bytes }) => {
            v.stage_snapshot = Some(snapshot_id);
            v.stage_snapshot_generation = running.generation;
            v.bytes_moved = v.bytes_moved.saturating_add(bytes);
        }
        (Step::StageRestore, StepResult::Restore { bytes }) => {
            v.restored_snapshot.clone_from(&v.stage_snapshot);
            v.stage_generation_done = v.stage_generation_done.max(v.stage_snapshot_generation);
            v.bytes_moved = v.bytes_moved.saturating_add(bytes);
            if v.stage_generation_done >= stage_requested {
                v.phase = VolumePhase::Staged;
            }
        }
        (Step::FinalSnapshot, StepResult::Snapshot { snapshot_id, bytes }) => {
            v.final_snapshot = Some(snapshot_id);
            v.bytes_moved = v.bytes_moved.saturating_add(bytes);
        }
        (Step::FinalRestore, StepResult::Restore { bytes }) => {
            v.restored_snapshot.clone_from(&v.final_snapshot);
            v.bytes_moved = v.bytes_moved.saturating_add(bytes);
            v.phase = if verify {
                VolumePhase::Verifying
            } else {
                VolumePhase::Completed
            };
        }
        (Step::VerifySource, StepResult::Digest { digest }) => {
            v.source_digest = Some(digest);
        }
        (Step::VerifyDest, StepResult::Digest { digest }) => {
            v.dest_digest = Some(digest);
        }
        (Step::NfsCheck, StepResult::NfsChecked) => {
            v.nfs_checked = true;
            v.stage_generation_done = v.stage_generation_done.max(running.generation);
            if v.stage_generation_done >= stage_requested {
                v.phase = VolumePhase::Staged;
            }
        }
        (Step::NfsMove, StepResult::NfsMoved) => v.phase = VolumePhase::Completed,
        (step, other) => {
            let kind = other.kind();
            fail(v, format!("{step} returned an unexpected {kind} result"));
            return;
        }
    }
    v.attempts = 0;
    v.last_error = None;
    if let (Some(source), Some(dest)) = (&v.source_digest, &v.dest_digest) {
        if source == dest {
            v.phase = VolumePhase::Completed;
        } else {
            let error = format!("digest mismatch: source {source}, destination {dest}");
            fail(v, error);
        }
    }
}

/// Takes back every step that was running when the coordinator stopped, so that it runs again.
///
/// Returns them with their job ids: the glue removes those jobs' stale repository locks (and
/// cancels any job still alive) before calling [`next_actions`]. An interrupted step does not
/// count as a failed attempt and keeps no backoff of its own. On a cancelled plan the volumes
/// left unfinished become `Cancelled`, since nothing will run again.
pub fn recover_after_restart(plan: &mut PlanState) -> Vec<(usize, Running)> {
    let cancelled = plan.cancelled;
    let mut interrupted = Vec::new();
    for (index, v) in plan.volumes.iter_mut().enumerate() {
        interrupted.extend(v.running.drain(..).map(|r| (index, r)));
        if cancelled && !v.phase.is_terminal() {
            v.phase = VolumePhase::Cancelled;
        }
    }
    interrupted
}

/// Cancels the plan: nothing new starts. Unfinished volumes with nothing running become
/// `Cancelled` now; the others when their running steps report back through [`apply_result`].
/// Idempotent.
pub fn cancel(plan: &mut PlanState) {
    plan.cancelled = true;
    for v in &mut plan.volumes {
        if !v.phase.is_terminal() && v.running.is_empty() {
            v.phase = VolumePhase::Cancelled;
        }
    }
}

/// The volumes whose phase differs between two states of the same plan, as
/// `(index, before, after)`, in index order, for the glue to emit as events.
pub fn volume_phase_changes(
    before: &PlanState,
    after: &PlanState,
) -> Vec<(usize, VolumePhase, VolumePhase)> {
    before
        .volumes
        .iter()
        .zip(&after.volumes)
        .enumerate()
        .filter(|(_, (b, a))| b.phase != a.phase)
        .map(|(index, (b, a))| (index, b.phase, a.phase))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::model::{Endpoint, Options, PlanPhase, VolumeSpec};
    use proptest::prelude::*;

    fn endpoint(cluster: &str, node: &str) -> Endpoint {
        Endpoint {
            cluster: cluster.into(),
            node: node.into(),
            pod_uid: format!("uid-{node}"),
            volume_name: "data".into(),
        }
    }

    fn copy(pv: &str, src_node: &str, dst_node: &str, size: u64) -> VolumeSpec {
        VolumeSpec {
            pv_name: pv.into(),
            source_namespace: "app".into(),
            source_pvc: pv.into(),
            dest_namespace: "app".into(),
            dest_pvc: pv.into(),
            method: Method::Copy,
            source: Some(endpoint("src", src_node)),
            dest: Some(endpoint("dst", dst_node)),
            size_bytes: size,
        }
    }

    fn nfs(pv: &str, size: u64) -> VolumeSpec {
        VolumeSpec {
            method: Method::Move,
            source: None,
            dest: None,
            ..copy(pv, "-", "-", size)
        }
    }

    fn plan(specs: Vec<VolumeSpec>, options: Options) -> PlanState {
        PlanState::new(specs, options)
    }

    fn start(volume: usize, step: Step) -> Action {
        Action::Start { volume, step }
    }

    /// The success a well-behaved executor reports for `step`.
    fn ok(step: Step, tag: &str) -> Result<StepResult, Failure> {
        Ok(match step {
            Step::StageSnapshot | Step::FinalSnapshot => StepResult::Snapshot {
                snapshot_id: format!("{step}-{tag}"),
                bytes: 100,
            },
            Step::StageRestore | Step::FinalRestore => StepResult::Restore { bytes: 10 },
            Step::VerifySource | Step::VerifyDest => StepResult::Digest { digest: "d".into() },
            Step::NfsCheck => StepResult::NfsChecked,
            Step::NfsMove => StepResult::NfsMoved,
        })
    }

    /// Starts and succeeds the single step `volume` needs, asserting it is `step`.
    fn run_ok(p: &mut PlanState, volume: usize, step: Step, now: u64) {
        let actions = next_actions(p, now);
        assert!(
            actions.contains(&start(volume, step)),
            "{step} not offered: {actions:?}"
        );
        mark_started(p, volume, step, None, now).unwrap();
        assert!(apply_result(p, volume, step, ok(step, "x"), now));
    }

    #[test]
    fn per_node_limit_is_honoured_across_the_plan() {
        let specs = (0..4)
            .map(|i| copy(&format!("pv{i}"), "n1", &format!("m{i}"), 10))
            .collect();
        let mut p = plan(specs, Options::default());
        request_stage(&mut p).unwrap();
        let actions = next_actions(&p, 0);
        assert_eq!(
            actions,
            vec![start(0, Step::StageSnapshot), start(1, Step::StageSnapshot)]
        );
        for a in &actions {
            let Action::Start { volume, step } = a;
            mark_started(&mut p, *volume, *step, None, 0).unwrap();
        }
        assert!(next_actions(&p, 0).is_empty());
        // Volume 0's restore runs on another node, so it starts although n1 is full.
        assert!(apply_result(
            &mut p,
            0,
            Step::StageSnapshot,
            ok(Step::StageSnapshot, "a"),
            1
        ));
        assert_eq!(
            next_actions(&p, 1),
            vec![start(0, Step::StageRestore), start(2, Step::StageSnapshot)]
        );
    }

    #[test]
    fn global_limit_counts_nfs_steps_too() {
        let options = Options {
            jobs_total: 3,
            ..Options::default()
        };
        let mut specs: Vec<_> = (0..3)
            .map(|i| copy(&format!("c{i}"), &format!("n{i}"), &format!("m{i}"), 5))
            .collect();
        specs.extend((0..3).map(|i| nfs(&format!("m{i}"), 50)));
        let mut p = plan(specs, options);
        request_stage(&mut p).unwrap();
        let actions = next_actions(&p, 0);
        assert_eq!(
            actions,
            vec![
                start(3, Step::NfsCheck),
                start(4, Step::NfsCheck),
                start(5, Step::NfsCheck)
            ]
        );
        mark_started(&mut p, 3, Step::NfsCheck, None, 0).unwrap();
        assert_eq!(next_actions(&p, 0).len(), 2);
    }

    #[test]
    fn largest_volume_goes_first_ties_by_index() {
        let specs = vec![
            copy("a", "n0", "m0", 10),
            copy("b", "n1", "m1", 30),
            copy("c", "n2", "m2", 20),
            copy("d", "n3", "m3", 30),
        ];
        let mut p = plan(specs, Options::default());
        request_stage(&mut p).unwrap();
        let order: Vec<usize> = next_actions(&p, 0)
            .into_iter()
            .map(|Action::Start { volume, .. }| volume)
            .collect();
        assert_eq!(order, vec![1, 3, 2, 0]);
    }

    #[test]
    fn restore_starts_only_after_its_snapshot() {
        let mut p = plan(vec![copy("a", "n", "m", 1)], Options::default());
        assert!(next_actions(&p, 0).is_empty());
        request_stage(&mut p).unwrap();
        assert_eq!(next_actions(&p, 0), vec![start(0, Step::StageSnapshot)]);
        assert!(mark_started(&mut p, 0, Step::StageRestore, None, 0).is_err());
        mark_started(&mut p, 0, Step::StageSnapshot, Some("j1".into()), 0).unwrap();
        assert_eq!(p.volumes[0].phase, VolumePhase::Staging);
        assert!(next_actions(&p, 0).is_empty());
        let snap = Ok(StepResult::Snapshot {
            snapshot_id: "s1".into(),
            bytes: 7,
        });
        assert!(apply_result(&mut p, 0, Step::StageSnapshot, snap, 1));
        assert_eq!(next_actions(&p, 1), vec![start(0, Step::StageRestore)]);
        run_ok(&mut p, 0, Step::StageRestore, 2);
        let v = &p.volumes[0];
        assert_eq!(v.restored_snapshot.as_deref(), Some("s1"));
        assert_eq!((v.stage_generation_done, v.phase), (1, VolumePhase::Staged));
        assert_eq!(v.bytes_moved, 17);
        assert_eq!(p.phase(), PlanPhase::Staged);
        assert!(next_actions(&p, 3).is_empty());
    }

    #[test]
    fn final_waits_for_a_successful_stage() {
        let mut p = plan(vec![copy("a", "n", "m", 1)], Options::default());
        assert_eq!(request_final(&mut p), Err(ScheduleError::StageRequired));
        // Even when the flag is forced, a copy volume without a stage gets nothing.
        p.final_requested = true;
        assert!(next_actions(&p, 0).is_empty());
        p.final_requested = false;

        request_stage(&mut p).unwrap();
        request_final(&mut p).unwrap();
        assert_eq!(request_stage(&mut p), Err(ScheduleError::FinalRequested));
        assert_eq!(next_actions(&p, 0), vec![start(0, Step::StageSnapshot)]);
        mark_started(&mut p, 0, Step::StageSnapshot, None, 0).unwrap();
        apply_result(
            &mut p,
            0,
            Step::StageSnapshot,
            Err(Failure::Transient("x".into())),
            0,
        );
        assert_eq!(
            next_actions(&p, 10_000),
            vec![start(0, Step::StageSnapshot)]
        );
        run_ok(&mut p, 0, Step::StageSnapshot, 10_000);
        run_ok(&mut p, 0, Step::StageRestore, 10_001);
        assert_eq!(
            next_actions(&p, 10_002),
            vec![start(0, Step::FinalSnapshot)]
        );
    }

    #[test]
    fn final_after_a_second_stage_request_waits_for_that_stage() {
        let mut p = plan(vec![copy("a", "n", "m", 1)], Options::default());
        request_stage(&mut p).unwrap();
        run_ok(&mut p, 0, Step::StageSnapshot, 0);
        // A second stage requested while the first one is still restoring.
        mark_started(&mut p, 0, Step::StageRestore, None, 1).unwrap();
        assert_eq!(request_stage(&mut p), Ok(2));
        request_final(&mut p).unwrap();
        apply_result(&mut p, 0, Step::StageRestore, ok(Step::StageRestore, ""), 2);
        assert_eq!(p.volumes[0].stage_generation_done, 1);
        assert_eq!(p.volumes[0].phase, VolumePhase::Staging);
        run_ok(&mut p, 0, Step::StageSnapshot, 3);
        assert_eq!(p.volumes[0].stage_snapshot_generation, 2);
        run_ok(&mut p, 0, Step::StageRestore, 4);
        assert_eq!(p.volumes[0].stage_generation_done, 2);
        assert_eq!(next_actions(&p, 5), vec![start(0, Step::FinalSnapshot)]);
    }

    fn finalize_copy(p: &mut PlanState) {
        request_stage(p).unwrap();
        run_ok(p, 0, Step::StageSnapshot, 0);
        run_ok(p, 0, Step::StageRestore, 0);
        request_final(p).unwrap();
        run_ok(p, 0, Step::FinalSnapshot, 0);
        mark_started(p, 0, Step::FinalRestore, None, 0).unwrap();
        assert_eq!(p.volumes[0].phase, VolumePhase::Finalizing);
        apply_result(p, 0, Step::FinalRestore, ok(Step::FinalRestore, ""), 0);
        assert_eq!(
            p.volumes[0].restored_snapshot.as_deref(),
            Some("final_snapshot-x")
        );
    }

    fn digest(d: &str) -> Result<StepResult, Failure> {
        Ok(StepResult::Digest { digest: d.into() })
    }

    #[test]
    fn verify_runs_both_sides_then_completes_or_fails() {
        for (dest, phase) in [
            ("abc", VolumePhase::Completed),
            ("abd", VolumePhase::Failed),
        ] {
            let mut p = plan(vec![copy("a", "n", "m", 1)], Options::default());
            finalize_copy(&mut p);
            assert_eq!(p.volumes[0].phase, VolumePhase::Verifying);
            let both = vec![start(0, Step::VerifySource), start(0, Step::VerifyDest)];
            assert_eq!(next_actions(&p, 1), both);
            mark_started(&mut p, 0, Step::VerifySource, None, 1).unwrap();
            assert_eq!(next_actions(&p, 1), vec![start(0, Step::VerifyDest)]);
            mark_started(&mut p, 0, Step::VerifyDest, None, 1).unwrap();
            assert!(apply_result(&mut p, 0, Step::VerifyDest, digest(dest), 2));
            assert_eq!(p.volumes[0].phase, VolumePhase::Verifying);
            assert!(apply_result(
                &mut p,
                0,
                Step::VerifySource,
                digest("abc"),
                3
            ));
            assert_eq!(p.volumes[0].phase, phase);
            if phase == VolumePhase::Failed {
                assert_eq!(
                    p.volumes[0].last_error.as_deref(),
                    Some("digest mismatch: source abc, destination abd")
                );
                assert_eq!(p.phase(), PlanPhase::Failed);
            } else {
                assert_eq!(p.phase(), PlanPhase::Completed);
            }
        }
    }

    #[test]
    fn without_verify_the_final_restore_completes() {
        let options = Options {
            verify: false,
            ..Options::default()
        };
        let mut p = plan(vec![copy("a", "n", "m", 1)], options);
        finalize_copy(&mut p);
        assert_eq!(p.volumes[0].phase, VolumePhase::Completed);
        assert!(next_actions(&p, 1).is_empty());
    }

    #[test]
    fn failing_verify_side_fails_the_volume_while_the_other_still_counts() {
        let options = Options {
            jobs_per_node: 1,
            ..Options::default()
        };
        // Volume b is snapshotted on the node that volume a restores to.
        let mut b = copy("b", "x", "y", 1);
        b.source = Some(endpoint("dst", "m"));
        let mut p = plan(vec![copy("a", "n", "m", 10), b], options);
        finalize_copy(&mut p);
        mark_started(&mut p, 0, Step::VerifySource, None, 0).unwrap();
        mark_started(&mut p, 0, Step::VerifyDest, None, 0).unwrap();
        let gone = Err(Failure::Permanent("volume gone".into()));
        assert!(apply_result(&mut p, 0, Step::VerifySource, gone, 1));
        assert_eq!(p.volumes[0].phase, VolumePhase::Failed);
        // VerifyDest still occupies node m, so b's snapshot waits.
        assert!(next_actions(&p, 1).is_empty());
        assert!(apply_result(&mut p, 0, Step::VerifyDest, digest("d"), 2));
        assert_eq!(p.volumes[0].phase, VolumePhase::Failed);
        assert_eq!(
            p.volumes[0].last_error.as_deref(),
            Some("verify_source failed: volume gone")
        );
        assert_eq!(next_actions(&p, 2), vec![start(1, Step::StageSnapshot)]);
    }

    #[test]
    fn transient_failures_back_off_exponentially_then_succeed() {
        let options = Options {
            backoff_base_ms: 2000,
            backoff_max_ms: 5000,
            max_attempts: 5,
            ..Options::default()
        };
        let mut p = plan(vec![copy("a", "n", "m", 1)], options);
        request_stage(&mut p).unwrap();
        let mut now = 100;
        // 100 + 2000; 3000 + 4000; 7900 + min(5000, 8000).
        for expected in [2100, 7000, 12_900] {
            assert_eq!(next_actions(&p, now), vec![start(0, Step::StageSnapshot)]);
            mark_started(&mut p, 0, Step::StageSnapshot, None, now).unwrap();
            let busy = Err(Failure::Transient("repository locked".into()));
            assert!(apply_result(&mut p, 0, Step::StageSnapshot, busy, now));
            assert_eq!(p.volumes[0].not_before_ms, expected);
            assert!(next_actions(&p, expected - 1).is_empty());
            assert_eq!(next_wake_ms(&p, expected - 1), Some(expected));
            now = expected + 900;
        }
        let v = &p.volumes[0];
        assert_eq!(v.attempts, 3);
        assert_eq!(
            v.last_error.as_deref(),
            Some("stage_snapshot failed (attempt 3 of 5): repository locked")
        );
        run_ok(&mut p, 0, Step::StageSnapshot, now);
        assert_eq!(p.volumes[0].attempts, 0);
        assert_eq!(p.volumes[0].last_error, None);
        assert_eq!(next_wake_ms(&p, now), None);
    }

    /// Drives every volume to the end with successes, returning the number of steps run.
    fn run_all_ok(p: &mut PlanState, mut now: u64) -> usize {
        let mut steps = 0;
        loop {
            let actions = next_actions(p, now);
            if actions.is_empty() {
                match next_wake_ms(p, now) {
                    Some(t) => {
                        now = t;
                        continue;
                    }
                    None => return steps,
                }
            }
            for Action::Start { volume, step } in actions {
                mark_started(p, volume, step, None, now).unwrap();
                assert!(apply_result(p, volume, step, ok(step, "x"), now));
                steps += 1;
            }
        }
    }

    #[test]
    fn exhausted_attempts_fail_one_volume_and_the_others_complete() {
        let options = Options {
            max_attempts: 2,
            backoff_base_ms: 10,
            ..Options::default()
        };
        let mut p = plan(
            vec![copy("a", "n", "m", 1), copy("b", "n", "m", 2), nfs("c", 3)],
            options,
        );
        request_stage(&mut p).unwrap();
        request_final(&mut p).unwrap();
        for now in [0, 10] {
            mark_started(&mut p, 0, Step::StageSnapshot, None, now).unwrap();
            let timeout = Err(Failure::Transient("timeout".into()));
            assert!(apply_result(&mut p, 0, Step::StageSnapshot, timeout, now));
        }
        let v = &p.volumes[0];
        assert_eq!(v.phase, VolumePhase::Failed);
        assert_eq!(
            v.last_error.as_deref(),
            Some("stage_snapshot failed after 2 attempts: timeout")
        );
        run_all_ok(&mut p, 20);
        assert_eq!(p.volumes[1].phase, VolumePhase::Completed);
        assert_eq!(p.volumes[2].phase, VolumePhase::Completed);
        assert_eq!(p.phase(), PlanPhase::Failed);
    }

    #[test]
    fn permanent_failure_fails_at_once() {
        let mut p = plan(vec![copy("a", "n", "m", 1)], Options::default());
        request_stage(&mut p).unwrap();
        run_ok(&mut p, 0, Step::StageSnapshot, 0);
        mark_started(&mut p, 0, Step::StageRestore, None, 0).unwrap();
        let full = Err(Failure::Permanent("disk full".into()));
        assert!(apply_result(&mut p, 0, Step::StageRestore, full, 0));
        let v = &p.volumes[0];
        assert_eq!((v.phase, v.attempts), (VolumePhase::Failed, 0));
        assert_eq!(
            v.last_error.as_deref(),
            Some("stage_restore failed: disk full")
        );
        assert!(next_actions(&p, 0).is_empty());
    }

    #[test]
    fn wrong_result_kind_fails_the_volume() {
        let mut p = plan(vec![copy("a", "n", "m", 1)], Options::default());
        request_stage(&mut p).unwrap();
        mark_started(&mut p, 0, Step::StageSnapshot, None, 0).unwrap();
        let wrong = Ok(StepResult::Restore { bytes: 1 });
        assert!(apply_result(&mut p, 0, Step::StageSnapshot, wrong, 0));
        assert_eq!(p.volumes[0].phase, VolumePhase::Failed);
        assert_eq!(
            p.volumes[0].last_error.as_deref(),
            Some("stage_snapshot returned an unexpected restore result")
        );
    }

    #[test]
    fn stale_results_are_ignored() {
        let mut p = plan(vec![copy("a", "n", "m", 1)], Options::default());
        request_stage(&mut p).unwrap();
        let before = p.clone();
        assert!(!apply_result(
            &mut p,
            0,
            Step::StageSnapshot,
            ok(Step::StageSnapshot, "a"),
            0
        ));
        assert!(!apply_result(
            &mut p,
            7,
            Step::StageSnapshot,
            ok(Step::StageSnapshot, "a"),
            0
        ));
        assert_eq!(p, before);
        mark_started(&mut p, 0, Step::StageSnapshot, None, 0).unwrap();
        assert!(!apply_result(
            &mut p,
            0,
            Step::StageRestore,
            ok(Step::StageRestore, ""),
            0
        ));
        assert!(apply_result(
            &mut p,
            0,
            Step::StageSnapshot,
            ok(Step::StageSnapshot, "a"),
            0
        ));
        let after = p.clone();
        let late = Err(Failure::Permanent("late".into()));
        assert!(!apply_result(&mut p, 0, Step::StageSnapshot, late, 0));
        assert_eq!(p, after);
    }

    #[test]
    fn recovery_reschedules_running_steps_without_counting_attempts() {
        let mut p = plan(
            vec![copy("a", "n", "m", 2), nfs("b", 1)],
            Options::default(),
        );
        request_stage(&mut p).unwrap();
        mark_started(&mut p, 0, Step::StageSnapshot, None, 0).unwrap();
        apply_result(
            &mut p,
            0,
            Step::StageSnapshot,
            Err(Failure::Transient("t".into())),
            0,
        );
        mark_started(&mut p, 0, Step::StageSnapshot, Some("job-7".into()), 5000).unwrap();
        mark_started(&mut p, 1, Step::NfsCheck, None, 5000).unwrap();
        assert!(record_job_id(&mut p, 1, Step::NfsCheck, "job-8".into()));
        let mut restored: PlanState =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        let interrupted = recover_after_restart(&mut restored);
        let ids: Vec<_> = interrupted
            .iter()
            .map(|(i, r)| (*i, r.step, r.job_id.as_deref(), r.started_ms))
            .collect();
        assert_eq!(
            ids,
            vec![
                (0, Step::StageSnapshot, Some("job-7"), 5000),
                (1, Step::NfsCheck, Some("job-8"), 5000)
            ]
        );
        assert_eq!(restored.running_count(), 0);
        assert_eq!(restored.volumes[0].attempts, 1);
        assert_eq!(
            next_actions(&restored, 6000),
            vec![start(0, Step::StageSnapshot), start(1, Step::NfsCheck)]
        );
        // The old job's late report is stale after the step was taken back.
        assert!(!apply_result(
            &mut restored,
            1,
            Step::NfsCheck,
            ok(Step::NfsCheck, ""),
            6000
        ));
    }

    #[test]
    fn cancel_stops_pending_volumes_now_and_running_ones_when_they_report() {
        let mut p = plan(
            vec![
                copy("a", "n", "m", 3),
                copy("b", "n2", "m2", 2),
                nfs("c", 1),
            ],
            Options::default(),
        );
        request_stage(&mut p).unwrap();
        request_final(&mut p).unwrap();
        run_ok(&mut p, 2, Step::NfsCheck, 0);
        run_ok(&mut p, 2, Step::NfsMove, 0);
        mark_started(&mut p, 0, Step::StageSnapshot, None, 0).unwrap();
        let before = p.clone();
        cancel(&mut p);
        assert_eq!(p.phase(), PlanPhase::Cancelled);
        assert_eq!(
            volume_phase_changes(&before, &p),
            vec![(1, VolumePhase::Pending, VolumePhase::Cancelled)]
        );
        assert_eq!(p.volumes[0].phase, VolumePhase::Staging);
        assert_eq!(p.volumes[2].phase, VolumePhase::Completed);
        assert!(next_actions(&p, 0).is_empty());
        assert_eq!(
            mark_started(&mut p, 1, Step::StageSnapshot, None, 0),
            Err(ScheduleError::Cancelled {
                doing: "starting a step"
            })
        );
        assert!(request_stage(&mut p).is_err());
        assert!(apply_result(
            &mut p,
            0,
            Step::StageSnapshot,
            ok(Step::StageSnapshot, "a"),
            1
        ));
        assert_eq!(p.volumes[0].phase, VolumePhase::Cancelled);
        assert_eq!(
            p.volumes[0].stage_snapshot.as_deref(),
            Some("stage_snapshot-a")
        );
        assert_eq!(p.running_count(), 0);
    }

    #[test]
    fn recovery_of_a_cancelled_plan_cancels_what_was_running() {
        let mut p = plan(vec![copy("a", "n", "m", 3)], Options::default());
        request_stage(&mut p).unwrap();
        mark_started(&mut p, 0, Step::StageSnapshot, None, 0).unwrap();
        cancel(&mut p);
        assert_eq!(recover_after_restart(&mut p).len(), 1);
        assert_eq!(p.volumes[0].phase, VolumePhase::Cancelled);
    }

    #[test]
    fn move_checks_at_stage_and_moves_at_final() {
        let mut p = plan(vec![nfs("a", 1)], Options::default());
        request_stage(&mut p).unwrap();
        assert_eq!(next_actions(&p, 0), vec![start(0, Step::NfsCheck)]);
        run_ok(&mut p, 0, Step::NfsCheck, 0);
        assert_eq!(p.volumes[0].phase, VolumePhase::Staged);
        assert_eq!(p.phase(), PlanPhase::Staged);
        assert!(next_actions(&p, 0).is_empty());
        request_final(&mut p).unwrap();
        let before = p.clone();
        run_ok(&mut p, 0, Step::NfsMove, 0);
        assert_eq!(
            volume_phase_changes(&before, &p),
            vec![(0, VolumePhase::Staged, VolumePhase::Completed)]
        );
        assert_eq!(p.phase(), PlanPhase::Completed);
    }

    #[test]
    fn move_final_without_stage_checks_first() {
        let mut p = plan(vec![nfs("a", 1)], Options::default());
        request_final(&mut p).unwrap();
        assert_eq!(next_actions(&p, 0), vec![start(0, Step::NfsCheck)]);
        assert!(mark_started(&mut p, 0, Step::NfsMove, None, 0).is_err());
        run_ok(&mut p, 0, Step::NfsCheck, 0);
        run_ok(&mut p, 0, Step::NfsMove, 0);
        assert_eq!(p.volumes[0].phase, VolumePhase::Completed);
    }

    #[test]
    fn plan_round_trips_through_json_mid_flight() {
        let mut p = plan(
            vec![copy("a", "n", "m", 2), nfs("b", 1)],
            Options::default(),
        );
        request_stage(&mut p).unwrap();
        run_ok(&mut p, 0, Step::StageSnapshot, 3);
        mark_started(&mut p, 0, Step::StageRestore, Some("j".into()), 4).unwrap();
        apply_result(&mut p, 1, Step::NfsCheck, ok(Step::NfsCheck, ""), 4);
        let json = serde_json::to_string(&p).unwrap();
        let back: PlanState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        assert_eq!(next_actions(&back, 5), next_actions(&p, 5));
    }

    #[derive(Clone, Debug)]
    enum Outcome {
        Success,
        Mismatch,
        Transient,
        Permanent,
        Restart,
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            6 => Just(Outcome::Success),
            1 => Just(Outcome::Mismatch),
            3 => Just(Outcome::Transient),
            1 => Just(Outcome::Permanent),
            1 => Just(Outcome::Restart),
        ]
    }

    fn spec_strategy() -> impl Strategy<Value = (bool, u8, u8, u64)> {
        (any::<bool>(), 0u8..3, 0u8..3, 0u64..5)
    }

    fn assert_limits(p: &PlanState) {
        assert!(p.running_count() <= p.options.jobs_total as usize);
        let mut per_node: BTreeMap<(&str, &str), u32> = BTreeMap::new();
        for v in &p.volumes {
            assert!(
                v.running.len() <= 1
                    || v.phase == VolumePhase::Verifying
                    || v.phase == VolumePhase::Failed
            );
            for r in &v.running {
                if let Some(node) = r.step.node(&v.spec) {
                    *per_node.entry(node).or_default() += 1;
                }
            }
        }
        assert!(per_node.values().all(|c| *c <= p.options.jobs_per_node));
    }

    proptest! {
        #[test]
        fn random_runs_keep_limits_and_terminate(
            specs in prop::collection::vec(spec_strategy(), 1..7),
            jobs_per_node in 1u32..3,
            jobs_total in 1u32..5,
            max_attempts in 1u32..4,
            verify in any::<bool>(),
            second_stage_at in 0usize..30,
            final_at in 0usize..40,
            outcomes in prop::collection::vec(outcome(), 0..120),
            picks in prop::collection::vec(any::<prop::sample::Index>(), 0..120),
        ) {
            let specs = specs
                .iter()
                .enumerate()
                .map(|(i, (is_copy, s, d, size))| {
                    let pv = format!("pv{i}");
                    if *is_copy {
                        copy(&pv, &format!("n{s}"), &format!("m{d}"), *size)
                    } else {
                        nfs(&pv, *size)
                    }
                })
                .collect();
            let options = Options {
                jobs_per_node,
                jobs_total,
                max_attempts,
                verify,
                backoff_base_ms: 5,
                backoff_max_ms: 20,
            };
            let mut p = PlanState::new(specs, options);
            request_stage(&mut p).unwrap();
            let mut now = 0u64;
            let mut outcomes = outcomes.into_iter();
            let mut picks = picks.into_iter();
            let mut in_flight: Vec<(usize, Step)> = Vec::new();
            let mut round = 0usize;
            loop {
                round += 1;
                prop_assert!(round < 5000, "did not terminate");
                if round == second_stage_at && !p.final_requested {
                    request_stage(&mut p).unwrap();
                }
                if round >= final_at && !p.final_requested {
                    request_final(&mut p).unwrap();
                }
                for Action::Start { volume, step } in next_actions(&p, now) {
                    mark_started(&mut p, volume, step, None, now).unwrap();
                    in_flight.push((volume, step));
                    assert_limits(&p);
                }
                if in_flight.is_empty() {
                    match next_wake_ms(&p, now) {
                        Some(t) => { now = t; continue; }
                        None if p.final_requested => break,
                        None => continue,
                    }
                }
                let pick = picks.next().map_or(0, |i| i.index(in_flight.len()));
                let (volume, step) = in_flight.swap_remove(pick);
                now += 1;
                let result = match outcomes.next().unwrap_or(Outcome::Success) {
                    Outcome::Success => ok(step, &round.to_string()),
                    Outcome::Mismatch if step == Step::VerifyDest => digest("other"),
                    Outcome::Mismatch => ok(step, &round.to_string()),
                    Outcome::Transient => Err(Failure::Transient("flaky".into())),
                    Outcome::Permanent => Err(Failure::Permanent("broken".into())),
                    Outcome::Restart => {
                        in_flight.push((volume, step));
                        let mut back: PlanState =
                            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
                        let taken = recover_after_restart(&mut back);
                        prop_assert_eq!(taken.len(), in_flight.len());
                        p = back;
                        in_flight.clear();
                        continue;
                    }
                };
                prop_assert!(apply_result(&mut p, volume, step, result, now));
                assert_limits(&p);
            }
            prop_assert_eq!(p.running_count(), 0);
            for v in &p.volumes {
                prop_assert!(
                    matches!(v.phase, VolumePhase::Completed | VolumePhase::Failed),
                    "volume {} ended {:?}", v.spec.pv_name, v.phase
                );
            }
            prop_assert!(matches!(p.phase(), PlanPhase::Completed | PlanPhase::Failed));
        }
    }
}
