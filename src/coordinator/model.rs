//! The state of a migration plan as the coordinator keeps it: what each volume is, which steps it
//! has done, what it is running, and how it failed.
//!
//! Every type here is plain data that serializes to JSON, so the coordinator can persist a plan
//! after every change and pick it up again after a restart. This module owns the shape of that
//! state, the plan-level phase derived from it, and the validation of a plan before it is
//! accepted. It deliberately decides nothing about *what runs next*: that is
//! `coordinator::scheduler`, a pure function of this state. Nothing here does I/O or reads a
//! clock; times are milliseconds passed in by the caller.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How a volume's data reaches the destination cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Snapshot on the source, restore on the destination, then verify (any storage).
    Copy,
    /// Re-attach the same NFS export on the destination; no data is copied.
    Move,
}

/// Where a COPY volume is mounted: the node agent that serves it and the pod volume it resolves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub cluster: String,
    pub node: String,
    pub pod_uid: String,
    pub volume_name: String,
}

/// One volume of a plan, as the orchestrator described it.
///
/// A COPY volume needs both `source` and `dest`; the destination names are then informational (the
/// endpoint is what the restore writes to) and may be empty. A MOVE volume needs `dest_namespace`
/// and `dest_pvc` (the claim the new PV is pre-bound to) and ignores the endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub pv_name: String,
    pub source_namespace: String,
    pub source_pvc: String,
    pub dest_namespace: String,
    pub dest_pvc: String,
    pub method: Method,
    pub source: Option<Endpoint>,
    pub dest: Option<Endpoint>,
    /// The capacity or used size; only orders the work (largest first).
    pub size_bytes: u64,
}

/// Limits and policies of one plan. Missing fields in JSON take their defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Options {
    /// Steps running at once on one node (source and destination nodes alike).
    pub jobs_per_node: u32,
    /// Steps running at once in the whole plan, coordinator-side NFS steps included.
    pub jobs_total: u32,
    /// Whether the final restore is followed by a digest comparison of both sides.
    pub verify: bool,
    /// Attempts of one step (the first included) before a transient failure fails the volume.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for each further one.
    pub backoff_base_ms: u64,
    /// Upper bound of the retry delay.
    pub backoff_max_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            jobs_per_node: 2,
            jobs_total: 8,
            verify: true,
            max_attempts: 5,
            backoff_base_ms: 2000,
            backoff_max_ms: 60_000,
        }
    }
}

impl Options {
    /// The retry delay after the `attempts`-th failed attempt of a step:
    /// `min(backoff_max_ms, backoff_base_ms * 2^(attempts-1))`, saturating instead of overflowing.
    pub fn backoff_ms(&self, attempts: u32) -> u64 {
        let factor = 2u64.saturating_pow(attempts.saturating_sub(1));
        self.backoff_base_ms
            .saturating_mul(factor)
            .min(self.backoff_max_ms)
    }
}

/// One unit of work on one volume, executed by a node agent or by the coordinator itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// COPY stage: snapshot the source volume (parent: the volume's previous snapshot).
    StageSnapshot,
    /// COPY stage: restore that snapshot into the destination volume, incrementally.
    StageRestore,
    /// COPY final: one more incremental snapshot with the applications quiesced.
    FinalSnapshot,
    /// COPY final: restore it so the destination mirrors the source exactly (deletions included).
    FinalRestore,
    /// COPY verify: digest of the source volume tree.
    VerifySource,
    /// COPY verify: digest of the destination volume tree.
    VerifyDest,
    /// MOVE stage: check that the NFS export can be re-attached on the destination.
    NfsCheck,
    /// MOVE final: retain the source PV and create the pre-bound destination PV.
    NfsMove,
}

impl Step {
    /// The stable lower-case name used in messages and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::StageSnapshot => "stage_snapshot",
            Step::StageRestore => "stage_restore",
            Step::FinalSnapshot => "final_snapshot",
            Step::FinalRestore => "final_restore",
            Step::VerifySource => "verify_source",
            Step::VerifyDest => "verify_dest",
            Step::NfsCheck => "nfs_check",
            Step::NfsMove => "nfs_move",
        }
    }

    /// The `(cluster, node)` whose agent runs this step for `spec`: the source endpoint for
    /// snapshots and the source digest, the destination endpoint for restores and the destination
    /// digest. `None` for the NFS steps, which the coordinator runs itself (they count against
    /// `jobs_total` only), and for an agent step whose endpoint is missing (a spec that
    /// [`validate`] rejects).
    pub fn node(self, spec: &VolumeSpec) -> Option<(&str, &str)> {
        let endpoint = match self {
            Step::StageSnapshot | Step::FinalSnapshot | Step::VerifySource => spec.source.as_ref(),
            Step::StageRestore | Step::FinalRestore | Step::VerifyDest => spec.dest.as_ref(),
            Step::NfsCheck | Step::NfsMove => None,
        }?;
        Some((endpoint.cluster.as_str(), endpoint.node.as_str()))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one volume is in its migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumePhase {
    /// Nothing has started yet.
    Pending,
    /// A stage (COPY snapshot and restore, or MOVE check) is wanted or running.
    Staging,
    /// Every requested stage is done; the volume waits for another stage or the final.
    Staged,
    /// The final snapshot/restore (COPY) or the NFS move (MOVE) is running or wanted.
    Finalizing,
    /// The final restore is done; the digests of both sides are being computed.
    Verifying,
    /// Done: the destination holds the data (and the digests matched when verifying).
    Completed,
    /// Done: a step failed permanently, ran out of attempts, or the digests differed.
    Failed,
    /// Done: the plan was cancelled before the volume finished.
    Cancelled,
}

impl VolumePhase {
    /// Whether nothing more will ever be scheduled for a volume in this phase.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            VolumePhase::Completed | VolumePhase::Failed | VolumePhase::Cancelled
        )
    }
}

/// A step that has been handed to an executor and has not reported back yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub step: Step,
    /// The executor's id for the job (an agent job id), once known.
    pub job_id: Option<String>,
    pub started_ms: u64,
    /// `PlanState::stage_requested` when the step started: the stage generation a
    /// `StageSnapshot` or `NfsCheck` satisfies once it succeeds.
    pub generation: u32,
}

/// Everything the coordinator knows about one volume.
///
/// `running` holds at most one step, except while verifying, when `VerifySource` and `VerifyDest`
/// may run side by side. A volume in a terminal phase may still list a running step (the other
/// verify side, when the first one failed the volume); it counts against the limits until its
/// result arrives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeState {
    pub spec: VolumeSpec,
    pub phase: VolumePhase,
    /// The highest stage generation that reached the destination (COPY) or was checked (MOVE).
    pub stage_generation_done: u32,
    /// The latest stage snapshot taken: the parent of the next snapshot.
    pub stage_snapshot: Option<String>,
    /// The generation `stage_snapshot` was taken for.
    pub stage_snapshot_generation: u32,
    /// The snapshot the destination is known to hold: the base of the next restore.
    pub restored_snapshot: Option<String>,
    pub final_snapshot: Option<String>,
    pub source_digest: Option<String>,
    pub dest_digest: Option<String>,
    /// Whether an `NfsCheck` has succeeded (MOVE): `NfsMove` requires it.
    pub nfs_checked: bool,
    pub running: Vec<Running>,
    /// Failed attempts of the current step; reset by any success.
    pub attempts: u32,
    /// No step of this volume starts before this time (the retry backoff).
    pub not_before_ms: u64,
    /// Why the last attempt failed; cleared by a success.
    pub last_error: Option<String>,
    /// Bytes reported by the steps: uploaded by snapshots plus written by restores.
    pub bytes_moved: u64,
}

impl VolumeState {
    /// A volume that has done nothing yet.
    pub fn new(spec: VolumeSpec) -> Self {
        VolumeState {
            spec,
            phase: VolumePhase::Pending,
            stage_generation_done: 0,
            stage_snapshot: None,
            stage_snapshot_generation: 0,
            restored_snapshot: None,
            final_snapshot: None,
            source_digest: None,
            dest_digest: None,
            nfs_checked: false,
            running: Vec::new(),
            attempts: 0,
            not_before_ms: 0,
            last_error: None,
            bytes_moved: 0,
        }
    }

    /// Whether `step` is among this volume's running steps.
    pub fn is_running(&self, step: Step) -> bool {
        self.running.iter().any(|r| r.step == step)
    }
}

/// Where a whole plan is, derived from its volumes and requests by [`PlanState::phase`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanPhase {
    /// No stage or final requested yet.
    Created,
    /// A stage is requested and some unfinished volume has not reached it.
    Staging,
    /// Every unfinished volume has done the latest requested stage.
    Staged,
    /// The final is requested and some volume has not finished.
    Finalizing,
    /// Every volume completed.
    Completed,
    /// Every volume finished and at least one failed.
    Failed,
    /// The plan was cancelled (volumes may still be finishing their running steps).
    Cancelled,
}

/// A migration plan: the requests made on it and the state of each of its volumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanState {
    /// Stage generation counter: each stage request increments it.
    pub stage_requested: u32,
    pub final_requested: bool,
    pub cancelled: bool,
    pub options: Options,
    pub volumes: Vec<VolumeState>,
}

impl PlanState {
    /// A plan with every volume pending and nothing requested. It does not validate: call
    /// [`validate`] first on specs that come from outside.
    pub fn new(volumes: Vec<VolumeSpec>, options: Options) -> PlanState {
        PlanState {
            stage_requested: 0,
            final_requested: false,
            cancelled: false,
            options,
            volumes: volumes.into_iter().map(VolumeState::new).collect(),
        }
    }

    /// The plan's phase. Cancellation wins; then, once every volume is terminal, `Completed` or
    /// `Failed`; then the latest request decides (final over stage).
    pub fn phase(&self) -> PlanPhase {
        if self.cancelled {
            return PlanPhase::Cancelled;
        }
        if self.volumes.iter().all(|v| v.phase.is_terminal()) && !self.volumes.is_empty() {
            return if self.volumes.iter().any(|v| v.phase == VolumePhase::Failed) {
                PlanPhase::Failed
            } else {
                PlanPhase::Completed
            };
        }
        if self.final_requested {
            return PlanPhase::Finalizing;
        }
        if self.stage_requested == 0 {
            return PlanPhase::Created;
        }
        let staged = self
            .volumes
            .iter()
            .filter(|v| !v.phase.is_terminal())
            .all(|v| v.stage_generation_done >= self.stage_requested && v.running.is_empty());
        if staged {
            PlanPhase::Staged
        } else {
            PlanPhase::Staging
        }
    }

    /// Steps handed out and not reported back, over the whole plan.
    pub fn running_count(&self) -> usize {
        self.volumes.iter().map(|v| v.running.len()).sum()
    }
}

/// Why a plan was rejected before it started.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ModelError {
    #[error("validating plan: it has no volumes")]
    NoVolumes,
    #[error("validating volume #{index}: pv_name is empty")]
    EmptyPvName { index: usize },
    #[error("validating volume {pv}: {field} is empty")]
    EmptyField { pv: String, field: &'static str },
    #[error("validating volume {pv}: the pv appears more than once in the plan")]
    DuplicatePv { pv: String },
    #[error("validating copy volume {pv}: the {side} endpoint is missing")]
    MissingEndpoint { pv: String, side: &'static str },
    #[error("validating move volume {pv}: dest_pvc is empty")]
    MissingDestPvc { pv: String },
    #[error("validating plan options: {option} must be at least 1")]
    ZeroLimit { option: &'static str },
}

/// Checks a plan before it is accepted: limits not zero, at least one volume, pv names present and
/// unique, the names each method needs present, and both endpoints (with every field) for COPY.
/// Reports the first problem found, naming the volume.
pub fn validate(specs: &[VolumeSpec], options: &Options) -> Result<(), ModelError> {
    for (option, value) in [
        ("jobs_per_node", options.jobs_per_node),
        ("jobs_total", options.jobs_total),
        ("max_attempts", options.max_attempts),
    ] {
        if value == 0 {
            return Err(ModelError::ZeroLimit { option });
        }
    }
    if specs.is_empty() {
        return Err(ModelError::NoVolumes);
    }
    let mut seen = BTreeSet::new();
    for (index, spec) in specs.iter().enumerate() {
        if spec.pv_name.is_empty() {
            return Err(ModelError::EmptyPvName { index });
        }
        if !seen.insert(spec.pv_name.as_str()) {
            return Err(ModelError::DuplicatePv {
                pv: spec.pv_name.clone(),
            });
        }
        validate_spec(spec)?;
    }
    Ok(())
}

fn validate_spec(spec: &VolumeSpec) -> Result<(), ModelError> {
    let empty = |field| ModelError::EmptyField {
        pv: spec.pv_name.clone(),
        field,
    };
    if spec.source_namespace.is_empty() {
        return Err(empty("source_namespace"));
    }
    if spec.source_pvc.is_empty() {
        return Err(empty("source_pvc"));
    }
    match spec.method {
        Method::Move => {
            if spec.dest_namespace.is_empty() {
                return Err(empty("dest_namespace"));
            }
            if spec.dest_pvc.is_empty() {
                return Err(ModelError::MissingDestPvc {
                    pv: spec.pv_name.clone(),
                });
            }
        }
        Method::Copy => {
            let sides = [
                (
                    "source",
                    &spec.source,
                    ["source.cluster", "source.node", "source.volume_name"],
                ),
                (
                    "destination",
                    &spec.dest,
                    ["dest.cluster", "dest.node", "dest.volume_name"],
                ),
            ];
            for (side, endpoint, fields) in sides {
                let Some(endpoint) = endpoint else {
                    return Err(ModelError::MissingEndpoint {
                        pv: spec.pv_name.clone(),
                        side,
                    });
                };
                // An empty pod UID names a static volume of the agent (outside Kubernetes).
                let values = [&endpoint.cluster, &endpoint.node, &endpoint.volume_name];
                if let Some((field, _)) = fields.iter().zip(values).find(|(_, v)| v.is_empty()) {
                    return Err(empty(field));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(cluster: &str, node: &str) -> Endpoint {
        Endpoint {
            cluster: cluster.into(),
            node: node.into(),
            pod_uid: "uid-1".into(),
            volume_name: "data".into(),
        }
    }

    fn copy_spec(pv: &str) -> VolumeSpec {
        VolumeSpec {
            pv_name: pv.into(),
            source_namespace: "ns".into(),
            source_pvc: "claim".into(),
            dest_namespace: "ns".into(),
            dest_pvc: "claim".into(),
            method: Method::Copy,
            source: Some(endpoint("src", "n1")),
            dest: Some(endpoint("dst", "m1")),
            size_bytes: 10,
        }
    }

    fn move_spec(pv: &str) -> VolumeSpec {
        VolumeSpec {
            method: Method::Move,
            source: None,
            dest: None,
            ..copy_spec(pv)
        }
    }

    #[test]
    fn options_default_values() {
        let o = Options::default();
        assert_eq!(
            (o.jobs_per_node, o.jobs_total, o.verify, o.max_attempts),
            (2, 8, true, 5)
        );
        assert_eq!((o.backoff_base_ms, o.backoff_max_ms), (2000, 60_000));
        let partial: Options = serde_json::from_str(r#"{"jobs_total": 3}"#).unwrap();
        assert_eq!(partial.jobs_total, 3);
        assert_eq!(partial.jobs_per_node, 2);
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let o = Options::default();
        let delays: Vec<u64> = (1..=7).map(|n| o.backoff_ms(n)).collect();
        assert_eq!(delays, [2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000]);
        assert_eq!(o.backoff_ms(u32::MAX), 60_000);
    }

    #[test]
    fn step_nodes_follow_the_endpoint_of_their_side() {
        let spec = copy_spec("pv-a");
        for step in [Step::StageSnapshot, Step::FinalSnapshot, Step::VerifySource] {
            assert_eq!(step.node(&spec), Some(("src", "n1")), "{step}");
        }
        for step in [Step::StageRestore, Step::FinalRestore, Step::VerifyDest] {
            assert_eq!(step.node(&spec), Some(("dst", "m1")), "{step}");
        }
        for step in [Step::NfsCheck, Step::NfsMove] {
            assert_eq!(step.node(&spec), None);
        }
    }

    #[test]
    fn validate_accepts_a_good_plan() {
        let specs = vec![copy_spec("a"), move_spec("b")];
        assert_eq!(validate(&specs, &Options::default()), Ok(()));
    }

    #[test]
    fn validate_rejects_bad_plans_naming_the_volume() {
        let o = Options::default();
        assert_eq!(validate(&[], &o), Err(ModelError::NoVolumes));

        let mut no_dest = copy_spec("a");
        no_dest.dest = None;
        let err = validate(&[no_dest], &o).unwrap_err();
        assert_eq!(
            err,
            ModelError::MissingEndpoint {
                pv: "a".into(),
                side: "destination"
            }
        );
        assert_eq!(
            err.to_string(),
            "validating copy volume a: the destination endpoint is missing"
        );

        let mut no_pvc = move_spec("m");
        no_pvc.dest_pvc.clear();
        assert_eq!(
            validate(&[no_pvc], &o),
            Err(ModelError::MissingDestPvc { pv: "m".into() })
        );

        assert_eq!(
            validate(&[copy_spec("a"), move_spec("a")], &o),
            Err(ModelError::DuplicatePv { pv: "a".into() })
        );

        assert_eq!(
            validate(&[copy_spec("")], &o),
            Err(ModelError::EmptyPvName { index: 0 })
        );

        let mut empty_node = copy_spec("a");
        if let Some(e) = empty_node.source.as_mut() {
            e.node.clear();
        }
        assert_eq!(
            validate(&[empty_node], &o),
            Err(ModelError::EmptyField {
                pv: "a".into(),
                field: "source.node"
            })
        );

        let mut no_ns = copy_spec("a");
        no_ns.source_namespace.clear();
        assert!(matches!(
            validate(&[no_ns], &o),
            Err(ModelError::EmptyField {
                field: "source_namespace",
                ..
            })
        ));

        for (option, zeroed) in [
            (
                "jobs_per_node",
                Options {
                    jobs_per_node: 0,
                    ..o
                },
            ),
            ("jobs_total", Options { jobs_total: 0, ..o }),
            (
                "max_attempts",
                Options {
                    max_attempts: 0,
                    ..o
                },
            ),
        ] {
            assert_eq!(
                validate(&[copy_spec("a")], &zeroed),
                Err(ModelError::ZeroLimit { option })
            );
        }
    }

    #[test]
    fn plan_phase_follows_requests_and_volumes() {
        let mut plan = PlanState::new(vec![copy_spec("a"), copy_spec("b")], Options::default());
        assert_eq!(plan.phase(), PlanPhase::Created);
        plan.stage_requested = 1;
        assert_eq!(plan.phase(), PlanPhase::Staging);
        for v in &mut plan.volumes {
            v.stage_generation_done = 1;
            v.phase = VolumePhase::Staged;
        }
        assert_eq!(plan.phase(), PlanPhase::Staged);
        plan.final_requested = true;
        assert_eq!(plan.phase(), PlanPhase::Finalizing);
        plan.volumes[0].phase = VolumePhase::Completed;
        assert_eq!(plan.phase(), PlanPhase::Finalizing);
        plan.volumes[1].phase = VolumePhase::Completed;
        assert_eq!(plan.phase(), PlanPhase::Completed);
        plan.volumes[1].phase = VolumePhase::Failed;
        assert_eq!(plan.phase(), PlanPhase::Failed);
        plan.cancelled = true;
        assert_eq!(plan.phase(), PlanPhase::Cancelled);
    }

    #[test]
    fn plan_state_survives_json() {
        let mut plan = PlanState::new(vec![copy_spec("a"), move_spec("b")], Options::default());
        plan.stage_requested = 2;
        plan.volumes[0].running.push(Running {
            step: Step::StageRestore,
            job_id: Some("job-1".into()),
            started_ms: 5,
            generation: 2,
        });
        plan.volumes[0].stage_snapshot = Some("abc".into());
        plan.volumes[1].phase = VolumePhase::Failed;
        plan.volumes[1].last_error = Some("nfs_check failed: no export".into());
        let json = serde_json::to_string(&plan).unwrap();
        assert!(json.contains("\"stage_restore\""));
        let back: PlanState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, plan);
    }

    fn opt_text() -> impl proptest::strategy::Strategy<Value = Option<String>> {
        proptest::option::of("[a-z0-9 :]{0,12}")
    }

    const STEPS: [Step; 8] = [
        Step::StageSnapshot,
        Step::StageRestore,
        Step::FinalSnapshot,
        Step::FinalRestore,
        Step::VerifySource,
        Step::VerifyDest,
        Step::NfsCheck,
        Step::NfsMove,
    ];

    const PHASES: [VolumePhase; 8] = [
        VolumePhase::Pending,
        VolumePhase::Staging,
        VolumePhase::Staged,
        VolumePhase::Finalizing,
        VolumePhase::Verifying,
        VolumePhase::Completed,
        VolumePhase::Failed,
        VolumePhase::Cancelled,
    ];

    type Counters = (u32, u32, u32, u64, u64);
    type Texts = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );

    fn volume_with(
        mut v: VolumeState,
        phase: usize,
        counters: Counters,
        texts: Texts,
    ) -> VolumeState {
        v.phase = PHASES[phase % PHASES.len()];
        (
            v.stage_generation_done,
            v.stage_snapshot_generation,
            v.attempts,
            v.not_before_ms,
            v.bytes_moved,
        ) = counters;
        (
            v.stage_snapshot,
            v.restored_snapshot,
            v.final_snapshot,
            v.source_digest,
            v.dest_digest,
            v.last_error,
        ) = texts;
        v
    }

    proptest::proptest! {
        #[test]
        fn any_plan_state_round_trips_through_json(
            stage in 0u32..5,
            flags: (bool, bool, bool, bool),
            size: u64,
            counters in (0u32..5, 0u32..5, 0u32..9, 0u64..u64::MAX, 0u64..u64::MAX),
            texts in (opt_text(), opt_text(), opt_text(), opt_text(), opt_text(), opt_text()),
            running in proptest::option::of((0usize..8, opt_text(), 0u64..u64::MAX)),
            phase in 0usize..8,
        ) {
            let (final_requested, cancelled, is_copy, nfs_checked) = flags;
            let mut spec = if is_copy { copy_spec("pv") } else { move_spec("pv") };
            spec.size_bytes = size;
            let mut plan = PlanState::new(Vec::new(), Options::default());
            plan.stage_requested = stage;
            plan.final_requested = final_requested;
            plan.cancelled = cancelled;
            let mut v = volume_with(VolumeState::new(spec), phase, counters, texts);
            v.nfs_checked = nfs_checked;
            if let Some((step, job_id, started_ms)) = running {
                let step = STEPS[step % STEPS.len()];
                v.running.push(Running { step, job_id, started_ms, generation: stage });
            }
            plan.volumes.push(v);
            let json = serde_json::to_string(&plan).unwrap();
            let back: PlanState = serde_json::from_str(&json).unwrap();
            proptest::prop_assert_eq!(back, plan);
        }
    }
}
