//! The node agent, driven the way the controller drives it: `ferry::agent::serve` on
//! `127.0.0.1:0` in-process (and the `ferry agent serve` binary for start-up and SIGTERM),
//! a kubelet directory laid out in a sandbox, gRPC clients with a bearer token or client
//! certificates, and the real `restic` program as the judge of every repository the agent
//! writes.
//!
//! Covered: volume discovery, snapshot and restore streams and what they leave in the
//! repository and the volumes, block volumes, cancellation (a dropped stream and a passed
//! deadline) and the lock it must release, confinement of volume names to the kubelet pods
//! directory, authentication, health and reflection, GetInfo, refusing to start without
//! authentication, metrics, graceful shutdown of the binary, and the job queue.

mod common;

use std::fs::{self, File};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::agent::{
    Agent, Bearer, CLUSTER_NAME, CSI, CSI_DRIVER, Client, EMPTY_DIR, HANG_BOUND, KubeletDir, NFS,
    NODE_NAME, POD_A, POD_B, POD_UNKNOWN, TOKEN, TestCa, agent_config, client, collect_events,
    get_info, http_get, metric_value, mtls_auth, next_event, plain_channel, pod_volume, pv_volume,
    repo_spec, restore_done, snapshot_done, start_agent, start_agent_with_metrics,
    streaming_error_code, tls_endpoint, token_auth, token_client, wait_until_idle,
};
use common::{
    CompareOptions, Sandbox, assert_trees_equal, ferry_bin, is_full_id, write_mixed_tree,
    write_random_file,
};
use ferry::agent::metrics::Metrics;
use ferry::agent::{AgentConfig, AuthConfig, TlsConfig};
use ferry::rpc::pb::{
    JobEvent, ListVolumesRequest, Progress, RestoreRequest, SnapshotDone, SnapshotRequest,
    VerifyRequest, VerifyResponse, Volume, VolumeMode, VolumeRef, job_event,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tonic::{Code, Request};

/// What the snapshots of the source volume record.
const AS_PATH: &str = "/shop/orders-db";
const HOST: &str = "cluster-east";
const TAGS: [&str; 2] = ["plan=p1", "volume=orders-db"];

/// The size of the sparse block volume that stands in for a volume too big to finish
/// snapshotting while a test watches: 64 GiB of holes.
const HUGE_BLOCK: u64 = 64 << 30;

/// Runs a blocking command (ferry, restic) from an async test without stalling the runtime
/// that serves the agent.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Fills pod A's CSI volume `pv-src` with the mixed tree (about 17 MiB in nested directories)
/// and a directory of symlinks; returns its mount directory.
fn write_source_volume(k: &KubeletDir) -> PathBuf {
    let src = k.csi_volume(POD_A, "pv-src");
    write_mixed_tree(&src, 7);
    let links = src.join("links");
    fs::create_dir(&links).expect("create links/");
    symlink("../dir-0/file-00.dat", links.join("to-file")).expect("symlink to a file");
    symlink("../large", links.join("to-dir")).expect("symlink to a directory");
    symlink("nowhere/at/all", links.join("dangling")).expect("dangling symlink");
    src
}

/// A few small files for jobs whose content does not matter.
fn write_small_tree(dir: &Path, seed: u64) {
    fs::create_dir_all(dir.join("sub")).expect("create sub/");
    write_random_file(&dir.join("a.bin"), 300 << 10, seed);
    write_random_file(&dir.join("sub/b.bin"), 20 << 10, seed + 1);
    fs::write(dir.join("sub/c.txt"), b"hello from a small volume\n").expect("write c.txt");
}

fn snapshot_request(sb: &Sandbox, volume: Option<VolumeRef>) -> SnapshotRequest {
    SnapshotRequest {
        volume,
        repository: repo_spec(sb),
        as_path: AS_PATH.to_owned(),
        host: HOST.to_owned(),
        tags: TAGS.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    }
}

fn restore_request(sb: &Sandbox, volume: Option<VolumeRef>, snapshot: &str) -> RestoreRequest {
    RestoreRequest {
        volume,
        repository: repo_spec(sb),
        snapshot: snapshot.to_owned(),
        ..Default::default()
    }
}

/// Runs a snapshot to its end, asserting success; returns its events and its `SnapshotDone`.
async fn snapshot_ok(client: &mut Client, req: SnapshotRequest) -> (Vec<JobEvent>, SnapshotDone) {
    let events = collect_events(client.snapshot(req).await)
        .await
        .unwrap_or_else(|s| panic!("the snapshot failed: {s:?}"));
    let done = snapshot_done(&events);
    assert!(
        is_full_id(&done.snapshot_id),
        "snapshot_id {:?} is not 64 lower-case hex digits",
        done.snapshot_id
    );
    (events, done)
}

/// Runs a restore to its end, asserting success.
async fn restore_ok(client: &mut Client, req: RestoreRequest) {
    let events = collect_events(client.restore(req).await)
        .await
        .unwrap_or_else(|s| panic!("the restore failed: {s:?}"));
    restore_done(&events);
}

/// Verify, asserting success and a 64-hex digest.
async fn verify_ok(client: &mut Client, volume: Option<VolumeRef>) -> VerifyResponse {
    let response = client
        .verify(VerifyRequest {
            volume,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("Verify failed: {s:?}"))
        .into_inner();
    assert!(
        is_full_id(&response.digest),
        "the digest {:?} is not 64 hex digits",
        response.digest
    );
    response
}

/// The Progress events of a stream.
fn progress_events(events: &[JobEvent]) -> Vec<&Progress> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            Some(job_event::Event::Progress(p)) => Some(p),
            _ => None,
        })
        .collect()
}

/// The snapshot `id` as `restic snapshots --json` lists it.
#[track_caller]
fn restic_snapshot(sb: &Sandbox, id: &str) -> Value {
    let listed = sb.restic(["snapshots", "--json"]).ok().json();
    listed
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("restic does not list snapshot {id}: {listed}"))
}

/// Asserts that no lock file is left in the repository, that `restic check` passes and that
/// the repository holds no snapshot.
#[track_caller]
fn assert_repository_clean_and_empty(sb: &Sandbox, after: &str) {
    let locks = sb.repo_files("locks");
    assert!(
        locks.is_empty(),
        "{after}: lock files are left in the repository: {locks:?}"
    );
    sb.restic(["check"]).ok();
    let listed = sb.restic(["snapshots", "--json"]).ok().json();
    assert_eq!(listed, json!([]), "{after}: the repository holds snapshots");
}

// ---------------------------------------------------------------------------------------------
// Volumes
// ---------------------------------------------------------------------------------------------

/// What ListVolumes must say about one volume; `driver: None` leaves the CSI driver unchecked.
struct Listed {
    pod: &'static str,
    name: &'static str,
    plugin: &'static str,
    pv: &'static str,
    driver: Option<&'static str>,
    mode: VolumeMode,
}

impl Listed {
    fn new(
        pod: &'static str,
        name: &'static str,
        plugin: &'static str,
        pv: &'static str,
        driver: Option<&'static str>,
        mode: VolumeMode,
    ) -> Listed {
        Listed {
            pod,
            name,
            plugin,
            pv,
            driver,
            mode,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_volumes_finds_csi_nfs_empty_dir_and_block_but_not_secrets() {
    let sb = Sandbox::new();
    let k = KubeletDir::in_sandbox(&sb);
    let src = k.csi_volume(POD_A, "pv-src");
    write_random_file(&src.join("data.bin"), 1 << 20, 1);
    k.nfs_volume(POD_A, "pv-nfs");
    k.empty_dir(POD_A, "cache");
    k.secret_volume(POD_A, "default-token-abcde");
    k.block_volume(POD_A, "pv-block", 1 << 20);
    k.empty_dir(POD_B, "scratch");
    k.csi_volume(POD_B, "pv-dst");
    k.secret_volume(POD_B, "db-credentials");

    let agent = start_agent(agent_config(&sb, &k, token_auth())).await;
    let mut c = token_client(&agent).await;

    let list = |pod_uid: &str, with_usage: bool| ListVolumesRequest {
        pod_uid: pod_uid.to_owned(),
        with_usage,
    };
    let mut all = c
        .list_volumes(list("", false))
        .await
        .unwrap_or_else(|s| panic!("ListVolumes failed: {s:?}"))
        .into_inner()
        .volumes;
    all.sort_by(|a, b| (&a.pod_uid, &a.volume_name).cmp(&(&b.pod_uid, &b.volume_name)));

    // A block volume's CSI driver is not in the pod's directory, so it is not checked.
    let (fsys, block) = (VolumeMode::Filesystem, VolumeMode::Block);
    let expected = [
        Listed::new(POD_A, "cache", EMPTY_DIR, "", Some(""), fsys),
        Listed::new(POD_A, "pv-block", CSI, "pv-block", None, block),
        Listed::new(POD_A, "pv-nfs", NFS, "pv-nfs", Some(""), fsys),
        Listed::new(POD_A, "pv-src", CSI, "pv-src", Some(CSI_DRIVER), fsys),
        Listed::new(POD_B, "pv-dst", CSI, "pv-dst", Some(CSI_DRIVER), fsys),
        Listed::new(POD_B, "scratch", EMPTY_DIR, "", Some(""), fsys),
    ];
    let listed: Vec<(&str, &str)> = all
        .iter()
        .map(|v| (v.pod_uid.as_str(), v.volume_name.as_str()))
        .collect();
    let wanted: Vec<(&str, &str)> = expected.iter().map(|e| (e.pod, e.name)).collect();
    assert_eq!(
        listed, wanted,
        "the listed volumes (no secrets) differ: {all:#?}"
    );
    for (v, want) in all.iter().zip(&expected) {
        assert_eq!(v.plugin, want.plugin, "plugin of {v:?}");
        assert_eq!(v.pv_name, want.pv, "pv_name of {v:?}");
        if let Some(driver) = want.driver {
            assert_eq!(v.csi_driver, driver, "csi_driver of {v:?}");
        }
        assert_eq!(v.mode(), want.mode, "mode of {v:?}");
        assert_eq!(v.bytes_used, 0, "bytes_used without with_usage: {v:?}");
    }

    let with_usage = c
        .list_volumes(list("", true))
        .await
        .unwrap_or_else(|s| panic!("ListVolumes with usage failed: {s:?}"))
        .into_inner()
        .volumes;
    let find = |vols: &[Volume], pod: &str, name: &str| -> Volume {
        vols.iter()
            .find(|v| v.pod_uid == pod && v.volume_name == name)
            .cloned()
            .unwrap_or_else(|| panic!("volume {name} of pod {pod} not listed: {vols:#?}"))
    };
    let used = find(&with_usage, POD_A, "pv-src").bytes_used;
    assert!(used > 0, "pv-src holds a 1 MiB file but bytes_used is 0");

    let only_b: Vec<(String, String)> = c
        .list_volumes(list(POD_B, false))
        .await
        .unwrap_or_else(|s| panic!("ListVolumes of pod B failed: {s:?}"))
        .into_inner()
        .volumes
        .into_iter()
        .map(|v| (v.pod_uid, v.volume_name))
        .collect();
    let mut only_b = only_b;
    only_b.sort();
    assert_eq!(
        only_b,
        vec![
            (POD_B.to_owned(), "pv-dst".to_owned()),
            (POD_B.to_owned(), "scratch".to_owned())
        ],
        "the pod_uid filter"
    );
}

// ---------------------------------------------------------------------------------------------
// Snapshot, restore, verify
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_streams_progress_and_restic_checks_it() {
    let sb = Sandbox::new();
    let k = KubeletDir::in_sandbox(&sb);
    write_source_volume(&k);
    blocking(|| sb.init_with_ferry());
    let agent = start_agent(agent_config(&sb, &k, token_auth())).await;
    let mut c = token_client(&agent).await;

    let (events, done) =
        snapshot_ok(&mut c, snapshot_request(&sb, pod_volume(POD_A, "pv-src"))).await;
    assert!(
        events.len() >= 2,
        "expected at least one queued or progress event before snapshot_done: {events:?}"
    );
    let job_id = &events[0].job_id;
    assert!(!job_id.is_empty(), "events carry no job id: {events:?}");
    assert!(
        events.iter().all(|e| &e.job_id == job_id),
        "the events of one job carry different job ids: {events:?}"
    );
    let mut last: Option<&Progress> = None;
    for p in progress_events(&events) {
        if let Some(prev) = last {
            assert!(
                p.files_done >= prev.files_done && p.bytes_done >= prev.bytes_done,
                "progress went backwards: {prev:?} then {p:?}"
            );
        }
        if p.totals_final {
            assert!(
                p.files_done <= p.files_total && p.bytes_done <= p.bytes_total,
                "progress beyond its final totals: {p:?}"
            );
        }
        last = Some(p);
    }
    assert!(
        done.files_new > 0,
        "the first snapshot has new files: {done:?}"
    );

    blocking(|| {
        sb.restic(["check", "--read-data"]).ok();
        let snap = restic_snapshot(&sb, &done.snapshot_id);
        assert_eq!(snap["paths"], json!([AS_PATH]), "{snap}");
        assert_eq!(snap["hostname"], HOST, "{snap}");
        assert_eq!(snap["tags"], json!(TAGS), "{snap}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_fills_another_pods_volume_equal_to_source() {
    let sb = Sandbox::new();
    let k = KubeletDir::in_sandbox(&sb);
    let src = write_source_volume(&k);
    let dst = k.empty_dir(POD_B, "restored");
    blocking(|| sb.init_with_ferry());
    let agent = start_agent(agent_config(&sb, &k, token_auth())).await;
    let mut c = token_client(&agent).await;
    let source = || pod_volume(POD_A, "pv-src");
    let target = || pod_volume(POD_B, "restored");

    let (_, first) = snapshot_ok(&mut c, snapshot_request(&sb, source())).await;
    restore_ok(&mut c, restore_request(&sb, target(), &first.snapshot_id)).await;
    assert_trees_equal(&src, &dst, &CompareOptions::exact());
    let (a, b) = (
        verify_ok(&mut c, source()).await,
        verify_ok(&mut c, target()).await,
    );
    assert_eq!(
        a.digest, b.digest,
        "Verify digests after the first restore: {a:?} vs {b:?}"
    );

    // A change in the source, a second snapshot on the first, and a mirror restore based on
    // the first.
    write_random_file(&src.join("dir-3/file-07.dat"), 70 << 10, 99);
    fs::write(
        src.join("dir-5/new.txt"),
        b"added after the first snapshot\n",
    )
    .expect("add a file");
    fs::remove_file(src.join("dir-6/file-00.dat")).expect("remove a file");
    let (_, second) = snapshot_ok(&mut c, snapshot_request(&sb, source())).await;
    assert_eq!(
        second.parent_id, first.snapshot_id,
        "the second snapshot's parent: {second:?}"
    );
    let mut req = restore_request(&sb, target(), &second.snapshot_id);
    req.delete = true;
    req.base = first.snapshot_id.clone();
    restore_ok(&mut c, req).await;
    assert_trees_equal(&src, &dst, &CompareOptions::exact());
    let (a, b) = (
        verify_ok(&mut c, source()).await,
        verify_ok(&mut c, target()).await,
    );
    assert_eq!(
        a.digest, b.digest,
        "Verify digests after the second restore: {a:?} vs {b:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_volume_snapshot_restore_and_verify() {
    let sb = Sandbox::new();
    let k = KubeletDir::in_sandbox(&sb);
    let src = k.block_volume(POD_A, "pv-block-src", 0);
    write_random_file(&src, 8 << 20, 42);
    let dst = k.block_volume(POD_B, "pv-block-dst", 8 << 20);
    blocking(|| sb.init_with_ferry());
    let agent = start_agent(agent_config(&sb, &k, token_auth())).await;
    let mut c = token_client(&agent).await;

    let (_, done) = snapshot_ok(&mut c, snapshot_request(&sb, pv_volume("pv-block-src"))).await;
    restore_ok(
        &mut c,
        restore_request(&sb, pod_volume(POD_B, "pv-block-dst"), &done.snapshot_id),
    )
    .await;
    let (a, b) = (
        fs::read(&src).expect("read src"),
        fs::read(&dst).expect("read dst"),
    );
    assert!(
        a == b,
        "the restored block volume's bytes differ from the source's"
    );
    let va = verify_ok(&mut c, pod_volume(POD_A, "pv-block-src")).await;
    let vb = verify_ok(&mut c, pod_volume(POD_B, "pv-block-dst")).await;
    assert_eq!(
        va.digest, vb.digest,
        "Verify digests of the block volumes: {va:?} vs {vb:?}"
    );
    blocking(|| sb.restic(["check", "--read-data"]).ok());
}

// ---------------------------------------------------------------------------------------------
// Cancellation and the queue
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_snapshot_releases_the_lock_and_keeps_the_repository_valid() {
    let sb = Sandbox::new();
    let k = KubeletDir::in_sandbox(&sb);
    k.block_volume(POD_A, "pv-huge", HUGE_BLOCK);
    blocking(|| sb.init_with_ferry());
    let agent = start_agent(agent_config(&sb, &k, token_auth())).await;
    let mut c = token_client(&agent).await;
    let huge = || pod_volume(POD_A, "pv-huge");

    // The caller goes away after the first event.
    let mut stream = c
        .snapshot(snapshot_request(&sb, huge()))
        .await
        .unwrap_or_else(|s| panic!("the snapshot call failed: {s:?}"))
        .into_inner();
    let first = next_event(&mut stream, "the snapshot of the huge volume").await;
    assert!(
        !matches!(first.event, Some(job_event::Event::SnapshotDone(_))),
        "a 64 GiB volume was snapshotted before the test could cancel it: {first:?}"
    );
    drop(stream);
    wait_until_idle(&mut c, "after dropping the snapshot stream").await;
    blocking(|| assert_repository_clean_and_empty(&sb, "after dropping the stream"));

    // The call's deadline passes.
    let mut req = Request::new(snapshot_request(&sb, huge()));
    req.set_timeout(Duration::from_secs(2));
    let call = c.snapshot(req).await;
    // The deadline is 2 s; waiting 60 s more only turns an agent that ignores it into a
    // failure with a message instead of a hang.
    let outcome = tokio::time::timeout(Duration::from_secs(62), collect_events(call)).await;
    match outcome {
        Err(_) => panic!("the call was still streaming a minute after its 2 s deadline"),
        Ok(Ok(events)) => panic!("the call ended OK despite its deadline: {events:?}"),
        Ok(Err(status)) => assert_ne!(status.code(), Code::Ok, "{status:?}"),
    }
    wait_until_idle(&mut c, "after the deadline passed").await;
    blocking(|| assert_repository_clean_and_empty(&sb, "after the deadline passed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_beyond_the_limit_wait_in_order() {
    let sb = Sandbox::new();
    let k = KubeletDir::in_sandbox(&sb);
    k.block_volume(POD_A, "pv-huge", HUGE_BLOCK);
    write_small_tree(&k.csi_volume(POD_B, "pv-small-1"), 1);
    write_small_tree(&k.csi_volume(POD_B, "pv-small-2"), 2);
    blocking(|| sb.init_with_ferry());
    let config = AgentConfig {
        max_jobs: 1,
        ..agent_config(&sb, &k, token_auth())
    };
    let agent = start_agent(config).await;
    let mut c = token_client(&agent).await;

    let mut long = c
        .snapshot(snapshot_request(&sb, pod_volume(POD_A, "pv-huge")))
        .await
        .unwrap_or_else(|s| panic!("the long snapshot call failed: {s:?}"))
        .into_inner();
    next_event(&mut long, "the long snapshot").await;
    // The long job must hold the only slot before the others arrive.
    let mut holding = false;
    for _ in 0..600 {
        if get_info(&mut c).await.jobs_running == 1 {
            holding = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        holding,
        "the long snapshot never showed as running in GetInfo"
    );

    let small = |name: &str, as_path: &str| SnapshotRequest {
        as_path: as_path.to_owned(),
        ..snapshot_request(&sb, pod_volume(POD_B, name))
    };
    let mut second = c
        .snapshot(small("pv-small-1", "/queue/second"))
        .await
        .unwrap_or_else(|s| panic!("the second snapshot call failed: {s:?}"))
        .into_inner();
    let second_first = next_event(&mut second, "the second snapshot").await;
    let Some(job_event::Event::Queued(q2)) = second_first.event else {
        panic!("the second job's first event is not queued: {second_first:?}");
    };
    let mut third = c
        .snapshot(small("pv-small-2", "/queue/third"))
        .await
        .unwrap_or_else(|s| panic!("the third snapshot call failed: {s:?}"))
        .into_inner();
    let third_first = next_event(&mut third, "the third snapshot").await;
    let Some(job_event::Event::Queued(q3)) = third_first.event else {
        panic!("the third job's first event is not queued: {third_first:?}");
    };
    assert!(
        q3.position > q2.position,
        "the third job is not behind the second: {q2:?} then {q3:?}"
    );

    drop(long);
    let drain = |mut stream: tonic::Streaming<JobEvent>| async move {
        let mut events = Vec::new();
        loop {
            match tokio::time::timeout(HANG_BOUND, stream.message()).await {
                Err(_) => panic!("a queued job's stream neither ended nor failed"),
                Ok(Err(s)) => panic!("a queued job failed: {s:?}"),
                Ok(Ok(None)) => return events,
                Ok(Ok(Some(e))) => events.push(e),
            }
        }
    };
    let (e2, e3) = tokio::join!(drain(second), drain(third));
    let d2 = snapshot_done(&e2);
    let d3 = snapshot_done(&e3);

    // One slot means the third ran only after the second had finished, so it started later.
    blocking(|| {
        let time = |id: &str| {
            let snap = restic_snapshot(&sb, id);
            let t = snap["time"].as_str().unwrap_or_default().to_owned();
            chrono::DateTime::parse_from_rfc3339(&t)
                .unwrap_or_else(|e| panic!("snapshot time {t:?}: {e}"))
        };
        let (t2, t3) = (time(&d2.snapshot_id), time(&d3.snapshot_id));
        assert!(
            t2 < t3,
            "the queued jobs ran out of order: second at {t2}, third at {t3}"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Confinement
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_and_symlinked_volumes_are_refused() {
    let sb = Sandbox::new();
    let k = KubeletDir::in_sandbox(&sb);
    write_small_tree(&k.csi_volume(POD_A, "pv-src"), 3);
    k.secret_volume(POD_A, "default-token-abcde");
    let outside = sb.dir("outside");
    fs::write(outside.join("keep.txt"), b"outside the kubelet root\n").expect("write keep.txt");
    k.symlinked_empty_dir(POD_A, "linked", &outside);
    // A snapshot in the repository, so that a restore fails on its volume and nothing else.
    let tiny = sb.dir("tiny");
    fs::write(tiny.join("x"), b"x\n").expect("write x");
    blocking(|| {
        sb.init_with_ferry();
        sb.ferry_snapshot(&tiny, &[]);
    });
    let agent = start_agent(agent_config(&sb, &k, token_auth())).await;
    let mut c = token_client(&agent).await;

    let mut invalid: Vec<(String, Option<VolumeRef>)> = Vec::new();
    for bad in ["..", "../x", "a/b", "/etc", "", "x\0y"] {
        // An empty pod UID names a static volume only when the operator configured some;
        // there are none here, so it is a malformed pod UID like the others.
        invalid.push((format!("pod_uid {bad:?}"), pod_volume(bad, "pv-src")));
        invalid.push((format!("volume_name {bad:?}"), pod_volume(POD_A, bad)));
        invalid.push((format!("pv_name {bad:?}"), pv_volume(bad)));
    }
    invalid.push(("pv_name \"../../etc\"".into(), pv_volume("../../etc")));
    invalid.push((
        "an emptyDir that is a symlink out of the root".into(),
        pod_volume(POD_A, "linked"),
    ));
    invalid.push((
        "a secret volume".into(),
        pod_volume(POD_A, "default-token-abcde"),
    ));
    invalid.push(("no volume".into(), None));
    invalid.push((
        "an empty pod_uid with a traversing name".into(),
        pod_volume("", "../pods"),
    ));

    let not_found = vec![
        (
            "an unknown pod".to_owned(),
            pod_volume(POD_UNKNOWN, "pv-src"),
        ),
        ("an unknown volume".to_owned(), pod_volume(POD_A, "pv-nope")),
    ];

    let mut wrong = Vec::new();
    for (want, cases) in [
        (Code::InvalidArgument, &invalid),
        (Code::NotFound, &not_found),
    ] {
        for (what, volume) in cases.iter() {
            let snapshot = streaming_error_code(
                c.snapshot(snapshot_request(&sb, volume.clone())).await,
                &format!("Snapshot of {what}"),
            )
            .await;
            let restore = streaming_error_code(
                c.restore(restore_request(&sb, volume.clone(), "latest"))
                    .await,
                &format!("Restore into {what}"),
            )
            .await;
            let verify = match c
                .verify(VerifyRequest {
                    volume: volume.clone(),
                    ..Default::default()
                })
                .await
            {
                Ok(r) => panic!("Verify of {what} succeeded: {:?}", r.into_inner()),
                Err(s) => s.code(),
            };
            for (call, got) in [
                ("Snapshot", snapshot),
                ("Restore", restore),
                ("Verify", verify),
            ] {
                if got != want {
                    wrong.push(format!("{call} of {what}: {got:?}, expected {want:?}"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "wrong status codes:\n{}",
        wrong.join("\n")
    );

    let left: Vec<String> = fs::read_dir(&outside)
        .expect("list the outside directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec!["keep.txt"],
        "the directory outside the root was touched"
    );
    assert_eq!(
        fs::read(outside.join("keep.txt")).expect("read keep.txt"),
        b"outside the kubelet root\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Authentication, health, reflection, info
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_valid_credentials_are_refused() {
    let sb = Sandbox::new();
    let k = KubeletDir::in_sandbox(&sb);
    k.empty_dir(POD_A, "cache");

    // Bearer token.
    let agent = start_agent(agent_config(&sb, &k, token_auth())).await;
    let channel = plain_channel(agent.addr).await;
    let wrong_token = format!("{TOKEN}x");
    for (who, token) in [
        ("no token", None),
        ("a wrong token", Some(wrong_token.as_str())),
    ] {
        let mut c = client(channel.clone(), token);
        let info = c.get_info(ferry::rpc::pb::GetInfoRequest {}).await;
        assert_eq!(
            info.as_ref().map_err(|s| s.code()).err(),
            Some(Code::Unauthenticated),
            "GetInfo with {who}: {info:?}"
        );
        let list = c.list_volumes(ListVolumesRequest::default()).await;
        assert_eq!(
            list.as_ref().map_err(|s| s.code()).err(),
            Some(Code::Unauthenticated),
            "ListVolumes with {who}: {list:?}"
        );
    }
    let mut right = client(channel, Some(TOKEN));
    get_info(&mut right).await;
    right
        .list_volumes(ListVolumesRequest::default())
        .await
        .unwrap_or_else(|s| panic!("ListVolumes with the right token: {s:?}"));

    // Mutual TLS with CA A.
    let ca_a = TestCa::new("ferry test CA A");
    let ca_b = TestCa::new("ferry test CA B");
    let server = ca_a.server_cert();
    let agent = start_agent(agent_config(&sb, &k, mtls_auth(&ca_a, &server))).await;
    let from_a = ca_a.client_cert("controller");
    let channel = match tls_endpoint(agent.addr, &ca_a, Some(&from_a))
        .connect()
        .await
    {
        Ok(channel) => channel,
        Err(e) => panic!(
            "connect with a certificate from the agent's CA: {e:?}\nthe agent returned: {:?}",
            agent.stop().await
        ),
    };
    let mut trusted = client(channel, None);
    let info = get_info(&mut trusted).await;
    assert_eq!(info.node_name, NODE_NAME);

    let from_b = ca_b.client_cert("intruder");
    for (who, identity) in [
        ("a certificate from another CA", Some(&from_b)),
        ("no certificate", None),
    ] {
        match tls_endpoint(agent.addr, &ca_a, identity).connect().await {
            Err(_) => {}
            Ok(channel) => {
                let info = client(channel, None)
                    .get_info(ferry::rpc::pb::GetInfoRequest {})
                    .await;
                assert!(info.is_err(), "GetInfo with {who} succeeded: {info:?}");
            }
        }
    }
    // The refusals were the agent's, not a server that had gone away.
    get_info(&mut trusted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_agent_service_and_health_serves() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let sb = Sandbox::new();
    let k = KubeletDir::in_sandbox(&sb);
    let agent = start_agent(agent_config(&sb, &k, token_auth())).await;
    let channel = plain_channel(agent.addr).await;

    let mut reflection =
        ServerReflectionClient::with_interceptor(channel.clone(), Bearer::new(Some(TOKEN)));
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap_or_else(|s| panic!("reflection call failed: {s:?}"))
        .into_inner();
    let response = tokio::time::timeout(HANG_BOUND, responses.message())
        .await
        .expect("no reflection response")
        .unwrap_or_else(|s| panic!("reflection failed: {s:?}"))
        .expect("the reflection stream ended without a response");
    let services: Vec<String> = match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("not a list of services: {other:?}"),
    };
    for name in ["ferry.v1.AgentService", "grpc.health.v1.Health"] {
        assert!(
            services.iter().any(|s| s == name),
            "reflection does not list {name}: {services:?}"
        );
    }

    let mut health = HealthClient::with_interceptor(channel, Bearer::new(Some(TOKEN)));
    for service in ["", "ferry.v1.AgentService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap_or_else(|s| panic!("health check of {service:?} failed: {s:?}"))
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "health of {service:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_info_reports_node_and_limits() {
    let sb = Sandbox::new();
    let k = KubeletDir::in_sandbox(&sb);
    let config = AgentConfig {
        max_jobs: 3,
        ..agent_config(&sb, &k, token_auth())
    };
    let agent = start_agent(config).await;
    let info = get_info(&mut token_client(&agent).await).await;
    assert_eq!(info.node_name, NODE_NAME, "{info:?}");
    assert_eq!(info.cluster_name, CLUSTER_NAME, "{info:?}");
    assert_eq!(Path::new(&info.kubelet_root), k.root.as_path(), "{info:?}");
    assert_eq!(info.max_concurrent_jobs, 3, "{info:?}");
    assert!(!info.version.is_empty(), "{info:?}");
    assert!(info.job_memory_budget_bytes > 0, "{info:?}");
    assert_eq!((info.jobs_running, info.jobs_queued), (0, 0), "{info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_without_auth_refuses_to_start() {
    let sb = Sandbox::new();
    let k = KubeletDir::in_sandbox(&sb);
    let ca = TestCa::new("ferry test CA");
    let server = ca.server_cert();
    let server_only_tls = AuthConfig {
        tls: Some(TlsConfig {
            cert_pem: server.cert_pem.into_bytes(),
            key_pem: server.key_pem.into_bytes(),
            client_ca_pem: None,
        }),
        token: None,
        insecure: false,
    };
    for (what, auth) in [
        ("no auth at all", AuthConfig::default()),
        ("TLS without a client CA", server_only_tls),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        // The shutdown is already complete: an agent that wrongly starts returns Ok at once.
        let result = ferry::agent::serve(
            listener,
            agent_config(&sb, &k, auth),
            Arc::new(Metrics::new()),
            async {},
        )
        .await;
        assert!(result.is_err(), "serve with {what} returned {result:?}");
    }

    let mut cmd = tokio::process::Command::new(ferry_bin());
    cmd.args([
        "agent",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .arg("--kubelet-root")
    .arg(&k.root)
    .args(["--node-name", NODE_NAME, "--cluster-name", CLUSTER_NAME])
    .env_remove("NODE_NAME")
    .env_remove("CLUSTER_NAME")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let child = cmd.spawn().expect("start ferry agent serve");
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("ferry agent serve without auth did not exit (it should refuse to start)")
        .expect("wait for ferry agent serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && output.status.code().is_some(),
        "ferry agent serve without auth: {:?}\nstderr: {stderr}",
        output.status
    );
    assert!(!stderr.trim().is_empty(), "no message on stderr");
    assert!(!stderr.contains("panicked"), "ferry panicked: {stderr}");
}

// ---------------------------------------------------------------------------------------------
// Metrics and the binary
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_jobs() {
    let sb = Sandbox::new();
    let k = KubeletDir::in_sandbox(&sb);
    write_small_tree(&k.csi_volume(POD_A, "pv-src"), 4);
    blocking(|| sb.init_with_ferry());
    let metrics = Arc::new(Metrics::new());
    let agent: Agent =
        start_agent_with_metrics(agent_config(&sb, &k, token_auth()), Arc::clone(&metrics)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_addr = listener.local_addr().expect("metrics address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ferry::agent::metrics::serve(
        listener,
        Arc::clone(&metrics),
        Arc::new(|| true),
        async move {
            let _ = stopped.await;
        },
    ));

    let mut c = token_client(&agent).await;
    snapshot_ok(&mut c, snapshot_request(&sb, pod_volume(POD_A, "pv-src"))).await;
    wait_until_idle(&mut c, "after the snapshot").await;

    let (status, body) = http_get(metrics_addr, "/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {body}");
    let done = metric_value(
        &body,
        r#"ferry_agent_jobs_total{kind="snapshot",outcome="done"}"#,
    );
    assert!(done >= 1.0, "no finished snapshot counted:\n{body}");
    let read = metric_value(&body, "ferry_agent_bytes_read_total");
    assert!(read > 0.0, "no bytes read counted:\n{body}");
    let (status, _) = http_get(metrics_addr, "/healthz").await;
    assert_eq!(status, 200, "GET /healthz");

    let _ = stop.send(());
    tokio::time::timeout(HANG_BOUND, server)
        .await
        .expect("the metrics server did not stop")
        .expect("the metrics server panicked")
        .expect("the metrics server failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_binary_gracefully() {
    let sb = Sandbox::new();
    let k = KubeletDir::in_sandbox(&sb);
    k.empty_dir(POD_A, "cache");
    let stderr_path = sb.root().join("agent.stderr");
    let stderr = File::create(&stderr_path).expect("create the stderr file");
    let mut cmd = tokio::process::Command::new(ferry_bin());
    cmd.args(["agent", "serve", "--insecure", "--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .arg("--kubelet-root")
        .arg(&k.root)
        .args(["--node-name", NODE_NAME, "--cluster-name", CLUSTER_NAME])
        .env_remove("NODE_NAME")
        .env_remove("CLUSTER_NAME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("start ferry agent serve");
    let logs = || fs::read_to_string(&stderr_path).unwrap_or_default();

    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(HANG_BOUND, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("no listening line\nstderr: {}", logs()))
        .expect("read stdout")
        .unwrap_or_else(|| panic!("stdout closed without a listening line\nstderr: {}", logs()));
    let listening: Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the listening line {line:?} is not JSON: {e}"));
    assert_eq!(listening["message_type"], "listening", "{line}");
    let grpc: std::net::SocketAddr = listening["grpc"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no gRPC address in {line}"));
    let metrics: std::net::SocketAddr = listening["metrics"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in {line}"));

    let info = get_info(&mut client(plain_channel(grpc).await, None)).await;
    assert_eq!(info.node_name, NODE_NAME, "{info:?}");
    assert_eq!(info.cluster_name, CLUSTER_NAME, "{info:?}");
    let (status, _) = http_get(metrics, "/healthz").await;
    assert_eq!(status, 200, "GET /healthz of the binary");

    let pid = child.id().expect("the agent is running") as libc::pid_t;
    // SAFETY: kill has no memory-safety preconditions; pid is our own child, not yet reaped.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "send SIGTERM: {}", std::io::Error::last_os_error());
    let status = tokio::time::timeout(HANG_BOUND, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the agent did not exit after SIGTERM\nstderr: {}", logs()))
        .expect("wait for the agent");
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status:?}\nstderr: {}",
        logs()
    );
    assert!(!logs().contains("panicked"), "ferry panicked: {}", logs());
}
