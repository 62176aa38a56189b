//! The coordinator end to end: real `ferry coordinator serve` and `ferry agent serve` processes
//! on loopback, driven by the `ferry plan …` client as an operator would drive them.
//!
//! COPY volumes are staged, changed, finalized and verified between two kubelet-like
//! directories through a local repository and through an S3 store (moto), and the result is
//! judged by a tree comparison and by `restic check --read-data`; a coordinator killed in the
//! middle of a stage resumes from its database; a step whose agent is down is retried until the
//! agent comes up, and a step that cannot succeed fails its volume alone; an NFS volume is moved
//! between two stand-in Kubernetes API servers with exactly the objects the design promises, and
//! moving it again changes nothing; and the database holds no secret in plaintext.
//!
//! Waits are bounded only so that a hang becomes a failure with a message; no test asserts on
//! how long anything took.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::cluster::{
    AgentOptions, Coordinator, DELETED, HANG_BOUND, Node, agent_flag, change_volume_tree,
    copy_volume, event_lines, free_port, listing, local_repository, show_events, start_agent, text,
    volume, wait_for_locks_gone, write_plan_file, write_volume_tree,
};
use common::migration::verify_digest;
use common::s3::{ACCESS_KEY_ID, MotoServer, REGION, SECRET_ACCESS_KEY, ferry_s3, restic_s3};
use common::{CompareOptions, Run, Sandbox, assert_trees_equal, is_full_id, write_random_file};
use ferry::coordinator::kube_stub::KubeStub;
use serde_json::{Value, json};

/// The UID of the source pod on the source node.
const POD_SRC: &str = "0a1b2c3d-1111-4222-8333-000000000001";
/// The UID of the destination pod on the destination node.
const POD_DST: &str = "0a1b2c3d-1111-4222-8333-000000000002";

/// Every phase a COPY volume passes through, in order, from stage to a verified final.
const COPY_PHASES: [&str; 5] = ["staging", "staged", "finalizing", "verifying", "completed"];
/// Every step a COPY volume runs from stage to a verified final.
const COPY_STEPS: [&str; 6] = [
    "stage_snapshot",
    "stage_restore",
    "final_snapshot",
    "final_restore",
    "verify_source",
    "verify_dest",
];

/// A source node `n1` of cluster `src` and a destination node `n2` of cluster `dst`, with
/// kubelet directories in the sandbox.
fn two_nodes(sb: &Sandbox) -> (Node, Node) {
    (
        Node::new("src", "n1", sb.root().join("kubelet-src")),
        Node::new("dst", "n2", sb.root().join("kubelet-dst")),
    )
}

/// The plan file `<sandbox>/<name>.yaml` for COPY volumes through the sandbox's local
/// repository.
fn local_plan(sb: &Sandbox, name: &str, volumes: Vec<Value>) -> std::path::PathBuf {
    let path = sb.root().join(format!("{name}.yaml"));
    write_plan_file(
        &path,
        &json!({
            "name": name,
            "source_cluster": { "name": "src" },
            "dest_cluster": { "name": "dst" },
            "repository": local_repository(&sb.repo, &sb.password_file),
            "volumes": volumes,
        }),
    );
    path
}

/// The set of `(pv, value)` pairs of the `plan_event` lines with `kind`, taking `field`.
fn seen(events: &[Value], kind: &str, field: &str) -> BTreeSet<(String, String)> {
    events
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| (text(e, "pv").to_owned(), text(e, field).to_owned()))
        .collect()
}

/// Asserts that a finished plan reports every volume in `pvs` completed, with equal 64-hex
/// source and destination digests and both snapshots recorded.
#[track_caller]
fn assert_completed_and_verified(plan: &Value, pvs: &[&str]) {
    assert_eq!(plan["phase"], "completed", "{plan:#}");
    for pv in pvs {
        let v = volume(plan, pv);
        assert_eq!(v["phase"], "completed", "{pv}: {v:#}");
        assert_eq!(text(v, "step"), "", "{pv} still runs a step: {v:#}");
        assert_eq!(text(v, "last_error"), "", "{pv}: {v:#}");
        let (s, d) = (text(v, "source_digest"), text(v, "dest_digest"));
        assert!(is_full_id(s), "{pv}: source digest {s:?} is not 64 hex");
        assert_eq!(s, d, "{pv}: source and destination digests differ: {v:#}");
        assert!(is_full_id(text(v, "stage_snapshot")), "{pv}: {v:#}");
        assert!(is_full_id(text(v, "final_snapshot")), "{pv}: {v:#}");
    }
}

/// Asserts that `plan watch NAME --json` (of a finished plan) reports, for every volume in
/// `pvs`, every phase of `COPY_PHASES` and a `step_done` of every step of `COPY_STEPS`.
#[track_caller]
fn assert_watch_reports_every_phase_and_step(coordinator: &Coordinator, name: &str, pvs: &[&str]) {
    let watch = coordinator.plan_ok(&["watch", name, "--json"]);
    let events = event_lines(&watch);
    assert!(
        events.iter().all(|e| e["plan"] == name),
        "events of another plan\n{watch}"
    );
    let phases = seen(&events, "phase", "phase");
    let done = seen(&events, "step_done", "step");
    for pv in pvs {
        for phase in COPY_PHASES {
            assert!(
                phases.contains(&((*pv).to_owned(), phase.to_owned())),
                "plan watch reported no phase {phase} for {pv}\n{watch}"
            );
        }
        for step in COPY_STEPS {
            assert!(
                done.contains(&((*pv).to_owned(), step.to_owned())),
                "plan watch reported no step_done {step} for {pv}\n{watch}"
            );
        }
    }
    let last_plan_phase = events
        .iter()
        .rfind(|e| e["kind"] == "plan" && !text(e, "phase").is_empty())
        .map(|e| text(e, "phase").to_owned());
    assert_eq!(
        last_plan_phase.as_deref(),
        Some("completed"),
        "the last plan phase event\n{watch}"
    );
}

/// Asserts what `restic snapshots --json` lists: for every `(pv, pvc)` exactly one stage and
/// one final snapshot tagged `plan=NAME`, `pv=PV`, `phase=…`, with path `/app/PVC` and host
/// `ferry`, the final one naming the stage one as its parent, and both the ones the plan
/// reports.
#[track_caller]
fn assert_snapshots(listed: &Run, plan: &Value, name: &str, volumes: &[(&str, &str)]) {
    let snapshots = listed.json();
    let snapshots = snapshots
        .as_array()
        .unwrap_or_else(|| panic!("restic snapshots --json is not a list\n{listed}"));
    assert_eq!(
        snapshots.len(),
        volumes.len() * 2,
        "expected one stage and one final snapshot per volume\n{listed}"
    );
    for (pv, pvc) in volumes {
        let v = volume(plan, pv);
        let mut by_phase = BTreeMap::new();
        for s in snapshots {
            let tags: BTreeSet<&str> = s["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !tags.contains(format!("pv={pv}").as_str()) {
                continue;
            }
            let phase = if tags.contains("phase=stage") {
                "stage"
            } else {
                "final"
            };
            let want: BTreeSet<String> = [
                format!("plan={name}"),
                format!("pv={pv}"),
                format!("phase={phase}"),
            ]
            .into();
            let have: BTreeSet<String> = tags.iter().map(|t| (*t).to_owned()).collect();
            assert_eq!(have, want, "tags of a snapshot of {pv}\n{listed}");
            assert_eq!(
                s["paths"],
                json!([format!("/app/{pvc}")]),
                "paths of a snapshot of {pv}\n{listed}"
            );
            assert_eq!(
                s["hostname"], "ferry",
                "host of a snapshot of {pv}\n{listed}"
            );
            assert!(
                by_phase.insert(phase, s.clone()).is_none(),
                "two {phase} snapshots of {pv}\n{listed}"
            );
        }
        let stage = by_phase
            .get("stage")
            .unwrap_or_else(|| panic!("no stage snapshot of {pv}\n{listed}"));
        let fin = by_phase
            .get("final")
            .unwrap_or_else(|| panic!("no final snapshot of {pv}\n{listed}"));
        assert_eq!(stage["id"], v["stage_snapshot"], "{pv}\n{listed}");
        assert_eq!(fin["id"], v["final_snapshot"], "{pv}\n{listed}");
        assert_eq!(
            fin["parent"], stage["id"],
            "the final snapshot of {pv} does not name the stage snapshot as its parent\n{listed}"
        );
    }
}

/// Asserts that none of `DELETED` exists in `dest`.
#[track_caller]
fn assert_deleted_gone(dest: &Path) {
    for gone in DELETED {
        assert!(
            fs::symlink_metadata(dest.join(gone)).is_err(),
            "{gone} was deleted on the source but is still in {}: {:?}",
            dest.display(),
            listing(dest)
        );
    }
}

#[test]
fn three_copy_volumes_stage_change_final_mirror_and_verify() {
    let sb = Sandbox::new();
    sb.init_with_ferry();
    let (src, dst) = two_nodes(&sb);
    // (pv, pvc, seed, size of the large file): three volumes of different sizes.
    let specs = [
        ("pv-large", "db", 11, 3 << 20),
        ("pv-medium", "uploads", 12, 1 << 20),
        ("pv-small", "config", 13, 40 << 10),
    ];
    let mut mounts = Vec::new();
    let mut volumes = Vec::new();
    for (pv, pvc, seed, size) in specs {
        let s = src.csi_volume(POD_SRC, pv);
        write_volume_tree(&s, seed, size);
        let d = dst.csi_volume(POD_DST, pv);
        mounts.push((pv, s, d));
        volumes.push(copy_volume(
            pv,
            pvc,
            src.mount(POD_SRC, pv),
            dst.mount(POD_DST, pv),
        ));
    }
    let logs = sb.dir("logs");
    let allow = AgentOptions {
        allow_local: vec![sb.repo.as_path()],
        ..AgentOptions::default()
    };
    let src_agent = start_agent(&src, &logs, &allow);
    let dst_agent = start_agent(&dst, &logs, &allow);
    let coordinator = Coordinator::start(
        &sb.root().join("coordinator"),
        &[
            agent_flag("src", "n1", &src_agent.url()),
            agent_flag("dst", "n2", &dst_agent.url()),
        ],
        &[],
    );
    let name = "three-volumes";
    let file = local_plan(&sb, name, volumes);
    coordinator.create_plan(&file, &[]);

    coordinator.plan_ok(&["stage", name, "--wait"]);
    let staged = coordinator.get(name);
    assert_eq!(staged["phase"], "staged", "{staged:#}");
    for (pv, s, d) in &mounts {
        assert_eq!(volume(&staged, pv)["phase"], "staged", "{staged:#}");
        assert_trees_equal(s, d, &CompareOptions::exact());
    }

    for (i, (_, s, _)) in mounts.iter().enumerate() {
        change_volume_tree(s, 100 + i as u64);
    }
    coordinator.plan_ok(&["final", name, "--wait"]);

    for (_, s, d) in &mounts {
        assert_trees_equal(s, d, &CompareOptions::exact());
        assert_deleted_gone(d);
    }
    let plan = coordinator.get(name);
    let pvs: Vec<&str> = specs.iter().map(|s| s.0).collect();
    assert_completed_and_verified(&plan, &pvs);
    for (pv, s, _) in &mounts {
        assert_eq!(
            text(volume(&plan, pv), "source_digest"),
            verify_digest(&sb, s, &[]),
            "{pv}: the plan's digest is not what `ferry agent verify` computes for the source"
        );
    }
    assert_watch_reports_every_phase_and_step(&coordinator, name, &pvs);

    sb.restic(["check", "--read-data"]).ok();
    let listed = sb.restic(["snapshots", "--json"]).ok();
    let pvcs: Vec<(&str, &str)> = specs.iter().map(|s| (s.0, s.1)).collect();
    assert_snapshots(&listed, &plan, name, &pvcs);
}

#[test]
fn one_copy_volume_through_an_s3_repository_stages_changes_finalizes_and_verifies() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    moto.create_bucket("plans");
    let mut sb = Sandbox::new();
    sb.repo = moto.url("plans", "repo").into();
    ferry_s3(&sb, ["init"], &[]).ok();
    let (src, dst) = two_nodes(&sb);
    let pv = "pv-s3";
    let s = src.csi_volume(POD_SRC, pv);
    write_volume_tree(&s, 21, 2 << 20);
    let d = dst.csi_volume(POD_DST, pv);
    let logs = sb.dir("logs");
    // The agents get no credentials of their own: the plan carries them.
    let src_agent = start_agent(&src, &logs, &AgentOptions::default());
    let dst_agent = start_agent(&dst, &logs, &AgentOptions::default());
    let coordinator = Coordinator::start(
        &sb.root().join("coordinator"),
        &[
            agent_flag("src", "n1", &src_agent.url()),
            agent_flag("dst", "n2", &dst_agent.url()),
        ],
        &[],
    );
    let name = "s3-volume";
    let file = sb.root().join("s3-plan.yaml");
    write_plan_file(
        &file,
        &json!({
            "name": name,
            "source_cluster": { "name": "src" },
            "dest_cluster": { "name": "dst" },
            "repository": {
                "location": moto.url("plans", "repo"),
                "password_file": sb.password_file,
                "s3_endpoint": moto.endpoint(),
                "s3_region": REGION,
                "s3_path_style": true,
                "credentials_from_env": true,
            },
            "volumes": [copy_volume(pv, "media", src.mount(POD_SRC, pv), dst.mount(POD_DST, pv))],
        }),
    );
    coordinator.create_plan(
        &file,
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY),
        ],
    );

    coordinator.plan_ok(&["stage", name, "--wait"]);
    assert_trees_equal(&s, &d, &CompareOptions::exact());
    change_volume_tree(&s, 22);
    coordinator.plan_ok(&["final", name, "--wait"]);

    assert_trees_equal(&s, &d, &CompareOptions::exact());
    assert_deleted_gone(&d);
    let plan = coordinator.get(name);
    assert_completed_and_verified(&plan, &[pv]);
    assert_watch_reports_every_phase_and_step(&coordinator, name, &[pv]);
    restic_s3(&sb, ["check", "--read-data"]).ok();
    let listed = restic_s3(&sb, ["snapshots", "--json"]).ok();
    assert_snapshots(&listed, &plan, name, &[(pv, "media")]);
}

#[test]
fn coordinator_killed_mid_stage_resumes_and_completes() {
    let sb = Sandbox::new();
    sb.init_with_ferry();
    let (src, dst) = two_nodes(&sb);
    let pv = "pv-big";
    let s = src.csi_volume(POD_SRC, pv);
    // Large enough that the stage is still running when the coordinator is killed.
    write_random_file(&s.join("big.bin"), 300 << 20, 0xB16);
    write_volume_tree(&s.join("small"), 31, 64 << 10);
    let d = dst.csi_volume(POD_DST, pv);
    let logs = sb.dir("logs");
    let options = AgentOptions {
        allow_local: vec![sb.repo.as_path()],
        job_workers: 1,
        ..AgentOptions::default()
    };
    let src_agent = start_agent(&src, &logs, &options);
    let dst_agent = start_agent(&dst, &logs, &options);
    let mut coordinator = Coordinator::start(
        &sb.root().join("coordinator"),
        &[
            agent_flag("src", "n1", &src_agent.url()),
            agent_flag("dst", "n2", &dst_agent.url()),
        ],
        &[],
    );
    let name = "killed";
    let file = local_plan(
        &sb,
        name,
        vec![copy_volume(
            pv,
            "big",
            src.mount(POD_SRC, pv),
            dst.mount(POD_DST, pv),
        )],
    );
    coordinator.create_plan(&file, &[]);
    coordinator.plan_ok(&["stage", name]);

    let running = coordinator.wait_for_plan(name, "a step running", HANG_BOUND, |p| {
        !text(volume(p, pv), "step").is_empty() || p["phase"] != "staging"
    });
    let step = text(volume(&running, pv), "step").to_owned();
    assert!(
        !step.is_empty(),
        "the stage ended before a running step was seen; the volume is too small to kill the \
         coordinator mid-stage: {running:#}"
    );
    eprintln!("note: killing the coordinator while {step} of {pv} runs");
    coordinator.kill();
    coordinator.restart();

    let staged = coordinator.wait_for_plan(name, "staged after the restart", HANG_BOUND, |p| {
        p["phase"] == "staged" || p["phase"] == "failed"
    });
    assert_eq!(staged["phase"], "staged", "{staged:#}");
    let events = coordinator.events(name);
    eprintln!("events after the restart:\n{}", show_events(&events));
    assert!(
        events.iter().any(|e| e.kind == "retry"
            && e.pv_name == pv
            && e.step == step
            && e.message.contains("coordinator stopped")),
        "no event says {step} was run again after the restart:\n{}",
        show_events(&events)
    );

    coordinator.plan_ok(&["final", name, "--wait"]);
    assert_trees_equal(&s, &d, &CompareOptions::exact());
    let plan = coordinator.get(name);
    assert_completed_and_verified(&plan, &[pv]);
    sb.restic(["check"]).ok();
    wait_for_locks_gone(&sb.repo, Duration::from_secs(60));
}

#[test]
fn transient_failure_is_retried_and_permanent_failure_is_reported() {
    let sb = Sandbox::new();
    sb.init_with_ferry();
    let (src, dst) = two_nodes(&sb);
    let mut mounts = BTreeMap::new();
    for (pv, seed) in [("pv-flaky", 41), ("pv-fine", 42)] {
        let s = src.csi_volume(POD_SRC, pv);
        write_volume_tree(&s, seed, 256 << 10);
        mounts.insert(pv, (s, dst.csi_volume(POD_DST, pv)));
    }
    // On the destination only: the source node has no such volume.
    dst.csi_volume(POD_DST, "pv-ghost");
    let logs = sb.dir("logs");
    let src_agent = start_agent(
        &src,
        &logs,
        &AgentOptions {
            allow_local: vec![sb.repo.as_path()],
            ..AgentOptions::default()
        },
    );
    // The coordinator knows the destination agent's endpoint, but nothing listens there yet.
    let dst_port = free_port();
    let dst_url = format!("http://127.0.0.1:{dst_port}");
    let coordinator = Coordinator::start(
        &sb.root().join("coordinator"),
        &[
            agent_flag("src", "n1", &src_agent.url()),
            agent_flag("dst", "n2", &dst_url),
        ],
        &[],
    );

    // Transient: the destination agent is down, then comes up.
    let flaky = "flaky";
    let file = local_plan(
        &sb,
        flaky,
        vec![copy_volume(
            "pv-flaky",
            "flaky",
            src.mount(POD_SRC, "pv-flaky"),
            dst.mount(POD_DST, "pv-flaky"),
        )],
    );
    coordinator.create_plan(&file, &[]);
    coordinator.plan_ok(&["stage", flaky]);
    common::cluster::wait_until("a retry of stage_restore", HANG_BOUND, || {
        let events = coordinator.events(flaky);
        if events
            .iter()
            .any(|e| e.kind == "retry" && e.pv_name == "pv-flaky" && e.step == "stage_restore")
        {
            Ok(())
        } else {
            Err(show_events(&events))
        }
    });
    let retrying = coordinator.get(flaky);
    let v = volume(&retrying, "pv-flaky");
    assert_eq!(v["phase"], "staging", "{retrying:#}");
    assert!(
        v["attempts"].as_u64().unwrap_or(0) >= 1,
        "a failed attempt is not counted: {retrying:#}"
    );
    assert!(
        text(v, "last_error").contains(&dst_port.to_string()),
        "the last error does not name the unreachable agent {dst_url}: {retrying:#}"
    );
    let dst_agent = start_agent(
        &dst,
        &logs,
        &AgentOptions {
            listen: format!("127.0.0.1:{dst_port}"),
            allow_local: vec![sb.repo.as_path()],
            ..AgentOptions::default()
        },
    );
    assert_eq!(dst_agent.url(), dst_url);
    let staged = coordinator.wait_for_plan(flaky, "staged once the agent is up", HANG_BOUND, |p| {
        p["phase"] == "staged" || p["phase"] == "failed"
    });
    assert_eq!(staged["phase"], "staged", "{staged:#}");
    assert_eq!(volume(&staged, "pv-flaky")["attempts"], 0, "{staged:#}");
    let (s, d) = &mounts["pv-flaky"];
    assert_trees_equal(s, d, &CompareOptions::exact());

    // Permanent: one volume names a volume the source node does not have.
    let broken = "broken";
    let file = local_plan(
        &sb,
        broken,
        vec![
            copy_volume(
                "pv-ghost",
                "ghost",
                src.mount(POD_SRC, "pv-ghost"),
                dst.mount(POD_DST, "pv-ghost"),
            ),
            copy_volume(
                "pv-fine",
                "fine",
                src.mount(POD_SRC, "pv-fine"),
                dst.mount(POD_DST, "pv-fine"),
            ),
        ],
    );
    coordinator.create_plan(&file, &[]);
    coordinator.plan_ok(&["stage", broken]);
    let staged = coordinator.wait_for_plan(
        broken,
        "the ghost failed, the other staged",
        HANG_BOUND,
        |p| volume(p, "pv-ghost")["phase"] == "failed" && volume(p, "pv-fine")["phase"] == "staged",
    );
    let ghost = volume(&staged, "pv-ghost");
    assert!(
        text(ghost, "last_error").contains("pv-ghost"),
        "the error does not name the missing volume: {staged:#}"
    );
    let final_run = coordinator.plan(&["final", broken, "--wait"]);
    assert_eq!(
        final_run.code,
        Some(1),
        "final --wait of a plan with a failed volume must exit 1\n{final_run}"
    );
    let plan = coordinator.get(broken);
    assert_eq!(plan["phase"], "failed", "{plan:#}");
    let ghost = volume(&plan, "pv-ghost");
    assert_eq!(ghost["phase"], "failed", "{plan:#}");
    assert!(
        text(ghost, "last_error").contains("pv-ghost"),
        "the error does not name the missing volume: {plan:#}"
    );
    let fine = volume(&plan, "pv-fine");
    assert_eq!(fine["phase"], "completed", "{plan:#}");
    assert_eq!(fine["source_digest"], fine["dest_digest"], "{plan:#}");
    assert!(is_full_id(text(fine, "source_digest")), "{plan:#}");
    let (s, d) = &mounts["pv-fine"];
    assert_trees_equal(s, d, &CompareOptions::exact());
    let events = coordinator.events(broken);
    assert!(
        !events
            .iter()
            .any(|e| e.pv_name == "pv-ghost" && e.kind == "retry"),
        "a permanent failure was retried:\n{}",
        show_events(&events)
    );
    assert!(
        events
            .iter()
            .any(|e| e.pv_name == "pv-ghost" && e.kind == "error" && e.step == "stage_snapshot"),
        "no error event for the ghost's stage_snapshot:\n{}",
        show_events(&events)
    );
}

/// The NFS PV the source cluster holds.
const NFS_PV: &str = "pv-nfs";
const NFS_PV_PATH: &str = "/api/v1/persistentvolumes/pv-nfs";
const DEST_PVC_PATH: &str = "/api/v1/namespaces/app/persistentvolumeclaims/shared";

fn nfs_pv() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": NFS_PV,
            "annotations": { "pv.kubernetes.io/provisioned-by": "nfs-subdir-provisioner" }
        },
        "spec": {
            "nfs": { "server": "filer.example.internal", "path": "/exports/shared", "readOnly": false },
            "mountOptions": ["nfsvers=4.1", "hard", "noatime"],
            "capacity": { "storage": "25Gi" },
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "nfs-shared",
            "volumeMode": "Filesystem",
            "persistentVolumeReclaimPolicy": "Delete",
            "claimRef": { "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                          "namespace": "legacy", "name": "shared", "uid": "old-claim-uid" }
        },
        "status": { "phase": "Bound" }
    })
}

/// A plan file moving the NFS PV to claim `app/shared`, with kubeconfig files for both stubs.
fn nfs_plan(sb: &Sandbox, name: &str, source: &KubeStub, dest: &KubeStub) -> std::path::PathBuf {
    let source_kc = sb.root().join("source.kubeconfig");
    let dest_kc = sb.root().join("dest.kubeconfig");
    fs::write(&source_kc, source.kubeconfig_yaml()).expect("write the source kubeconfig");
    fs::write(&dest_kc, dest.kubeconfig_yaml()).expect("write the dest kubeconfig");
    let path = sb.root().join(format!("{name}.yaml"));
    write_plan_file(
        &path,
        &json!({
            "name": name,
            "source_cluster": { "name": "old", "kubeconfig_file": source_kc },
            "dest_cluster": { "name": "new", "kubeconfig_file": dest_kc },
            "repository": local_repository(&sb.repo, &sb.password_file),
            "volumes": [{
                "pv_name": NFS_PV,
                "method": "move",
                "source_namespace": "legacy",
                "source_pvc": "shared",
                "dest_namespace": "app",
                "dest_pvc": "shared",
            }],
        }),
    );
    path
}

/// Method and path of every mutating request a stub received.
fn mutations(stub: &KubeStub) -> Vec<(String, String)> {
    stub.requests()
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect()
}

#[test]
fn nfs_move_against_a_stand_in_kubernetes_api() {
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime for the stand-in APIs");
    let source = rt.block_on(KubeStub::start());
    let dest = rt.block_on(KubeStub::start());
    source.put_object(NFS_PV_PATH, nfs_pv());
    let sb = Sandbox::new();
    let coordinator = Coordinator::start(&sb.root().join("coordinator"), &[], &[]);

    let name = "nfs-move";
    coordinator.create_plan(&nfs_plan(&sb, name, &source, &dest), &[]);
    coordinator.plan_ok(&["stage", name, "--wait"]);
    let staged = coordinator.get(name);
    assert_eq!(staged["phase"], "staged", "{staged:#}");
    assert_eq!(volume(&staged, NFS_PV)["phase"], "staged", "{staged:#}");
    assert_eq!(
        mutations(&source),
        vec![],
        "the stage changed the source cluster"
    );
    assert_eq!(
        mutations(&dest),
        vec![],
        "the stage changed the destination cluster"
    );

    coordinator.plan_ok(&["final", name, "--wait"]);
    let plan = coordinator.get(name);
    assert_eq!(plan["phase"], "completed", "{plan:#}");
    assert_eq!(volume(&plan, NFS_PV)["phase"], "completed", "{plan:#}");

    let src_pv = source
        .object(NFS_PV_PATH)
        .expect("the source PV still exists");
    assert_eq!(
        src_pv["spec"]["persistentVolumeReclaimPolicy"], "Retain",
        "{src_pv:#}"
    );
    assert_eq!(
        src_pv["metadata"]["annotations"]["ferry.io/original-reclaim-policy"], "Delete",
        "{src_pv:#}"
    );
    assert_eq!(src_pv["spec"]["nfs"], nfs_pv()["spec"]["nfs"], "{src_pv:#}");

    let want = nfs_pv();
    let dest_pv = dest
        .object(NFS_PV_PATH)
        .unwrap_or_else(|| panic!("no PV on the destination; requests: {:?}", dest.requests()));
    let spec = &dest_pv["spec"];
    assert_eq!(spec["nfs"], want["spec"]["nfs"], "{dest_pv:#}");
    for field in [
        "mountOptions",
        "capacity",
        "accessModes",
        "storageClassName",
        "volumeMode",
    ] {
        assert_eq!(
            spec[field], want["spec"][field],
            "{field} of the destination PV: {dest_pv:#}"
        );
    }
    assert_eq!(spec["claimRef"]["namespace"], "app", "{dest_pv:#}");
    assert_eq!(spec["claimRef"]["name"], "shared", "{dest_pv:#}");
    assert_eq!(
        spec["claimRef"]["kind"], "PersistentVolumeClaim",
        "{dest_pv:#}"
    );
    assert_eq!(
        spec["persistentVolumeReclaimPolicy"], "Retain",
        "{dest_pv:#}"
    );
    assert!(
        dest_pv["metadata"]["annotations"]
            .get("pv.kubernetes.io/provisioned-by")
            .is_none(),
        "the destination PV claims a provisioner, which could delete the export: {dest_pv:#}"
    );
    let pvc = dest.object(DEST_PVC_PATH).unwrap_or_else(|| {
        panic!(
            "no PVC app/shared on the destination: {:?}",
            dest.requests()
        )
    });
    assert_eq!(pvc["spec"]["volumeName"], NFS_PV, "{pvc:#}");
    assert_eq!(pvc["spec"]["storageClassName"], "nfs-shared", "{pvc:#}");
    assert_eq!(
        pvc["spec"]["accessModes"], want["spec"]["accessModes"],
        "{pvc:#}"
    );

    let source_after = mutations(&source);
    let dest_after = mutations(&dest);
    assert_eq!(
        source_after,
        vec![("PATCH".to_owned(), NFS_PV_PATH.to_owned())],
        "requests to the source cluster"
    );
    assert_eq!(
        dest_after,
        vec![
            ("POST".to_owned(), "/api/v1/persistentvolumes".to_owned()),
            (
                "POST".to_owned(),
                "/api/v1/namespaces/app/persistentvolumeclaims".to_owned()
            ),
        ],
        "requests to the destination cluster"
    );

    // The same move again, by another plan: everything is in place, nothing changes.
    let again = "nfs-move-again";
    coordinator.create_plan(&nfs_plan(&sb, again, &source, &dest), &[]);
    coordinator.plan_ok(&["stage", again, "--wait"]);
    coordinator.plan_ok(&["final", again, "--wait"]);
    let plan = coordinator.get(again);
    assert_eq!(plan["phase"], "completed", "{plan:#}");
    assert_eq!(
        mutations(&source),
        source_after,
        "the second move changed the source"
    );
    assert_eq!(
        mutations(&dest),
        dest_after,
        "the second move changed the destination"
    );
    assert_eq!(
        dest.object(NFS_PV_PATH),
        Some(dest_pv),
        "the destination PV changed"
    );
    assert_eq!(
        dest.object(DEST_PVC_PATH),
        Some(pvc),
        "the destination PVC changed"
    );
    drop((source, dest));
}

/// The plaintext secrets of the secrets test, each distinctive enough that finding it
/// anywhere means it leaked.
const SECRET_PASSWORD: &str = "repo-password-ferry-e2e-5d1c0f7a9b3e";
const SECRET_AWS_KEY: &str = "aws-secret-key-ferry-e2e-8e2a61c4d07f";
const SECRET_AWS_SESSION: &str = "aws-session-token-ferry-e2e-3f9b27d15c60";
const SECRET_KUBE_TOKEN: &str = "kube-bearer-token-ferry-e2e-a47c3e90b1d2";

/// Asserts that none of the secrets appears in `bytes` (named `what`).
#[track_caller]
fn assert_no_secret(what: &str, bytes: &[u8]) {
    for secret in [
        SECRET_PASSWORD,
        SECRET_AWS_KEY,
        SECRET_AWS_SESSION,
        SECRET_KUBE_TOKEN,
    ] {
        let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
        assert!(!found, "{what} holds the secret {secret:?} in plaintext");
    }
}

/// Asserts the database files (main, WAL, shared memory) hold no secret, and that they do
/// hold the plan's repository location (stored in the clear), so that the search is known to
/// find what is there.
#[track_caller]
fn assert_database_clean(database: &Path, when: &str) {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", database.display());
        if let Ok(bytes) = fs::read(&path) {
            assert_no_secret(&format!("{path} ({when})"), &bytes);
            all.extend_from_slice(&bytes);
        }
    }
    let visible = b"s3:http://127.0.0.1:9/secret-bucket/repo";
    assert!(
        all.windows(visible.len()).any(|w| w == visible),
        "the database files at {} ({when}) do not hold the plan's repository location, so \
         looking for secrets in them means nothing",
        database.display()
    );
}

#[test]
fn database_holds_no_plaintext_secret() {
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime for the stand-in APIs");
    let source = rt.block_on(KubeStub::start());
    let dest = rt.block_on(KubeStub::start());
    source.put_object(NFS_PV_PATH, nfs_pv());
    let sb = Sandbox::new();
    let mut coordinator = Coordinator::start(
        &sb.root().join("coordinator"),
        &[],
        &[("FERRY_LOG", "debug")],
    );

    let password_file = sb.password_file_with("secret-password", SECRET_PASSWORD);
    let kubeconfig = |stub: &KubeStub, file: &str| {
        let yaml = stub.kubeconfig_yaml();
        assert!(
            yaml.contains("kube-stub-token"),
            "the stub's kubeconfig changed: {yaml}"
        );
        let path = sb.root().join(file);
        fs::write(&path, yaml.replace("kube-stub-token", SECRET_KUBE_TOKEN))
            .expect("write a kubeconfig");
        path
    };
    let name = "secretive";
    let file = sb.root().join("secretive.yaml");
    write_plan_file(
        &file,
        &json!({
            "name": name,
            "source_cluster": { "name": "old", "kubeconfig_file": kubeconfig(&source, "src.kubeconfig") },
            "dest_cluster": { "name": "new", "kubeconfig_file": kubeconfig(&dest, "dst.kubeconfig") },
            "repository": {
                "location": "s3:http://127.0.0.1:9/secret-bucket/repo",
                "password_file": password_file,
                "s3_endpoint": "http://127.0.0.1:9",
                "s3_path_style": true,
                "credentials_from_env": true,
            },
            "volumes": [{
                "pv_name": NFS_PV,
                "method": "move",
                "source_namespace": "legacy",
                "source_pvc": "shared",
                "dest_namespace": "app",
                "dest_pvc": "shared",
            }],
        }),
    );
    let created = coordinator.create_plan(
        &file,
        &[
            ("AWS_ACCESS_KEY_ID", "AKIAFERRYE2ETEST"),
            ("AWS_SECRET_ACCESS_KEY", SECRET_AWS_KEY),
            ("AWS_SESSION_TOKEN", SECRET_AWS_SESSION),
        ],
    );
    // The coordinator uses the kubeconfigs: a stage checks the source, a final moves.
    let stage = coordinator.plan_ok(&["stage", name, "--wait", "--json"]);
    let fin = coordinator.plan_ok(&["final", name, "--wait", "--json"]);
    assert_eq!(
        dest.object(NFS_PV_PATH).map(|pv| pv["spec"]["nfs"].clone()),
        Some(nfs_pv()["spec"]["nfs"].clone()),
        "the move did not happen, so the kubeconfigs were not used"
    );
    let get = coordinator.plan_ok(&["get", name, "--json"]);
    let list = coordinator.plan_ok(&["list", "--json"]);
    let watch = coordinator.plan_ok(&["watch", name, "--json"]);
    for run in [&created, &stage, &fin, &get, &list, &watch] {
        assert_no_secret(&run.what, &run.stdout);
        assert_no_secret(&run.what, run.stderr.as_bytes());
    }
    assert!(
        get.out().contains("secret-bucket"),
        "plan get does not show the repository at all, so the check means nothing\n{get}"
    );

    assert_database_clean(&coordinator.database, "while running");
    let status = coordinator.daemon.terminate();
    assert!(
        status.success(),
        "the coordinator exited with {status} on SIGTERM"
    );
    assert_database_clean(&coordinator.database, "after SIGTERM");

    let log = coordinator.all_logs();
    assert!(
        log.contains("plan created") && log.contains(name),
        "the coordinator's log does not mention the plan, so the check means nothing:\n{log}"
    );
    assert_no_secret("the coordinator's stderr", log.as_bytes());
    drop((source, dest));
}

// ---------------------------------------------------------------------------------------------
// The deployed shape: mutual TLS everywhere, agents that register themselves, probe ports
// ---------------------------------------------------------------------------------------------

/// Writes `pem` to `<dir>/<name>` and returns the path as text, for a flag or variable.
fn pem_file(dir: &Path, name: &str, pem: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.to_string_lossy().into_owned()
}

/// `grpc.health.v1.Health/Check` for `service` on the plaintext port `addr`.
fn health_status(addr: &str, service: &str) -> Result<i32, String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("health address {addr}: {e}"))?
            .connect()
            .await
            .map_err(|e| format!("connect to the health port {addr}: {e}"))?;
        let mut client = HealthClient::new(channel);
        let response = client
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map_err(|s| format!("check {service:?} on {addr}: {s:?}"))?;
        Ok(response.into_inner().status)
    })
}

/// `SERVING` in `grpc.health.v1.HealthCheckResponse.ServingStatus`.
const SERVING: i32 = 1;

#[test]
fn agents_register_themselves_over_mutual_tls_and_serve_a_plan() {
    use common::agent::TestCa;
    use common::cluster::{Daemon, ferry_command};

    let sb = Sandbox::new();
    sb.init_with_ferry();
    let (src, dst) = two_nodes(&sb);
    let pki = sb.dir("pki");
    let ca = TestCa::new("ferry test CA");
    let ca_file = pem_file(&pki, "ca.crt", &ca.cert_pem);
    // Servers: CN ferry-agent, SANs localhost and 127.0.0.1. Each role its own client cert.
    let server = ca.server_cert();
    let server_crt = pem_file(&pki, "server.crt", &server.cert_pem);
    let server_key = pem_file(&pki, "server.key", &server.key_pem);
    let cert_pair = |name: &str| {
        let c = ca.client_cert(name);
        (
            pem_file(&pki, &format!("{name}.crt"), &c.cert_pem),
            pem_file(&pki, &format!("{name}.key"), &c.key_pem),
        )
    };
    let (coord_crt, coord_key) = cert_pair("coordinator");
    let (agent_crt, agent_key) = cert_pair("agent");
    let (op_crt, op_key) = cert_pair("operator");

    // The coordinator knows no agent: they must register.
    let coordinator = Coordinator::start(
        &sb.root().join("coordinator"),
        &[],
        &[
            ("FERRY_TLS_CERT", &server_crt),
            ("FERRY_TLS_KEY", &server_key),
            ("FERRY_TLS_CLIENT_CA", &ca_file),
            ("FERRY_AGENT_CA", &ca_file),
            ("FERRY_AGENT_CERT", &coord_crt),
            ("FERRY_AGENT_KEY", &coord_key),
            // Agents are called at 127.0.0.1 but checked against a name, as in a cluster.
            ("FERRY_AGENT_TLS_DOMAIN", "localhost"),
            ("FERRY_HEALTH_LISTEN", "127.0.0.1:0"),
        ],
    );
    let coordinator_url = format!("https://{}", coordinator.daemon.grpc_addr());
    let operator_env = [
        ("FERRY_COORDINATOR", coordinator_url.as_str()),
        ("FERRY_COORDINATOR_CA", ca_file.as_str()),
        ("FERRY_COORDINATOR_CERT", op_crt.as_str()),
        ("FERRY_COORDINATOR_KEY", op_key.as_str()),
    ];
    let operator = |args: &[&str]| {
        let run = coordinator.plan_with_env(args, &operator_env);
        assert_eq!(
            run.code,
            Some(0),
            "ferry plan {args:?}: {}\n{}",
            run.stderr,
            coordinator.all_logs()
        );
        run
    };

    let logs = sb.dir("logs");
    let start = |node: &Node| {
        let port = free_port();
        let mut cmd = ferry_command(["agent", "serve", "--metrics-listen", "127.0.0.1:0"]);
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--health-listen", "127.0.0.1:0"])
            .args(["--node-name", &node.name, "--cluster-name", &node.cluster])
            .arg("--kubelet-root")
            .arg(&node.kubelet)
            .arg("--allow-local-repository")
            .arg(&sb.repo)
            .args(["--tls-cert", &server_crt, "--tls-key", &server_key])
            .args(["--tls-client-ca", &ca_file])
            .args(["--shutdown-grace", "2"])
            .env("FERRY_REGISTER_WITH", &coordinator_url)
            .env("FERRY_ADVERTISE", format!("https://127.0.0.1:{port}"))
            .env("FERRY_COORDINATOR_CA", &ca_file)
            .env("FERRY_COORDINATOR_CERT", &agent_crt)
            .env("FERRY_COORDINATOR_KEY", &agent_key);
        let log = logs.join(format!("agent-{}.log", node.name));
        (Daemon::spawn(cmd, log), port)
    };
    let (src_agent, src_port) = start(&src);
    let (dst_agent, dst_port) = start(&dst);

    // Both agents appear, at the addresses they advertise.
    let want = BTreeSet::from([
        ("src/n1".to_owned(), format!("https://127.0.0.1:{src_port}")),
        ("dst/n2".to_owned(), format!("https://127.0.0.1:{dst_port}")),
    ]);
    common::cluster::wait_until("both agents registered", HANG_BOUND, || {
        let listed = operator(&["agents", "--json"]);
        let got: BTreeSet<(String, String)> = listed
            .json_lines()
            .iter()
            .filter(|a| a["message_type"] == "agent" && a["last_seen_ms"].as_i64() > Some(0))
            .map(|a| {
                (
                    format!("{}/{}", text(a, "cluster"), text(a, "node")),
                    text(a, "endpoint").to_owned(),
                )
            })
            .collect();
        if got == want {
            Ok(())
        } else {
            Err(format!("listed {got:?}"))
        }
    });

    // The probe ports answer without credentials, and say only whether each serves.
    for (daemon, service) in [
        (&src_agent, "ferry.v1.AgentService"),
        (&dst_agent, "ferry.v1.AgentService"),
        (&coordinator.daemon, "ferry.v1.CoordinatorService"),
    ] {
        let addr = text(&daemon.listening, "health").to_owned();
        assert_eq!(health_status(&addr, ""), Ok(SERVING));
        assert_eq!(health_status(&addr, service), Ok(SERVING), "{service}");
    }

    // An operator without a client certificate is turned away.
    let refused = coordinator.plan_with_env(
        &["list"],
        &[
            ("FERRY_COORDINATOR", coordinator_url.as_str()),
            ("FERRY_COORDINATOR_CA", ca_file.as_str()),
        ],
    );
    assert_ne!(refused.code, Some(0), "listed plans without a client cert");

    // A plan runs on the registered agents alone.
    let s = src.csi_volume(POD_SRC, "pv-reg");
    write_volume_tree(&s, 21, 1 << 20);
    let d = dst.csi_volume(POD_DST, "pv-reg");
    let name = "registered";
    let file = local_plan(
        &sb,
        name,
        vec![copy_volume(
            "pv-reg",
            "data",
            src.mount(POD_SRC, "pv-reg"),
            dst.mount(POD_DST, "pv-reg"),
        )],
    );
    operator(&["create", "-f", &file.to_string_lossy()]);
    operator(&["stage", name, "--wait"]);
    change_volume_tree(&s, 22);
    operator(&["final", name, "--wait"]);
    assert_trees_equal(&s, &d, &CompareOptions::exact());
    let plan = operator(&["get", name, "--json"])
        .json_lines()
        .into_iter()
        .find(|v| v["message_type"] == "plan")
        .expect("plan get --json prints the plan");
    assert_completed_and_verified(&plan, &["pv-reg"]);
    sb.restic(["check", "--read-data"]).ok();
}
