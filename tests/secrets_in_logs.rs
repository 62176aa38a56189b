//! Secrets never appear in what ferry prints or logs. Every command and daemon here runs with
//! the most verbose logging (`FERRY_LOG=trace`, which also turns on the trace logs of the HTTP,
//! gRPC and object-store libraries), and everything they print — stdout, stderr, the daemons'
//! log files, the gRPC statuses a client receives, the S3 test server's log — is searched for
//! every secret in play: the repository password, a wrong password, the agents' bearer token
//! and a wrong one, the S3 secret key and a refused one, a secret embedded in a location URL,
//! the repository's master keys (encryption and MAC, read from the repository with the library)
//! and the coordinator's sealing key, the keys in hex (both cases) and in every base64 alphabet.
//!
//! Errors are provoked on purpose, because error paths are where secrets slip out: a wrong
//! password, a wrong bearer token, a store that refuses the S3 credentials, a store that is
//! down, a location with credentials in it. The store is `moto_server` when it is installed
//! (as `.ci/run` installs it), else a local directory with the S3 secret still in the
//! environment. What this does not cover: the coordinator's database files (the coordinator's
//! own end-to-end test scans those) and TLS private keys.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use ferry::keyfile::KeyFile;
use ferry::rpc::pb::{
    GetInfoRequest, RepositorySpec, RestoreRequest, SnapshotRequest, StoreCredentials, StoreOptions,
};
use serde_json::{Value, json};
use tonic::Code;

use common::agent::{
    client, collect_events, plain_channel, pod_volume, restore_done, snapshot_done,
};
use common::cluster::{
    Coordinator, Daemon, HANG_BOUND, Node, agent_flag, copy_volume, ferry_command, free_port,
    run_bounded, write_plan_file, write_volume_tree,
};
use common::s3::{ACCESS_KEY_ID, MotoServer, REGION, s3_env};
use common::{Run, Sandbox};

/// The secrets, each distinctive enough that finding it anywhere means it leaked.
const PASSWORD: &str = "secrets-test-repository-password-5e0c9a71b2d4";
const WRONG_PASSWORD: &str = "secrets-test-wrong-password-18f3c6a0e7";
const AWS_SECRET: &str = "secrets-test-aws-secret-key-c2e84f19d6";
const REFUSED_AWS_SECRET: &str = "secrets-test-refused-aws-secret-7a5d03be";
const URL_SECRET: &str = "secrets-test-url-embedded-secret-93b1";
const TOKEN: &str = "secrets-test-agent-bearer-token-4f1b9e62c8a3";
const WRONG_TOKEN: &str = "secrets-test-wrong-bearer-token-0d7e52a9";

/// The pod UIDs of the source and destination volumes.
const POD_SRC: &str = "0b6f7a52-1c3d-4e5f-8a9b-0c1d2e3f4a5b";
const POD_DST: &str = "7c8d9e0f-2a3b-4c5d-9e6f-1a2b3c4d5e6f";

/// Every form in which a secret would be recognisable.
#[derive(Default)]
struct Secrets(Vec<(String, Vec<u8>)>);

impl Secrets {
    /// A secret as text.
    fn text(&mut self, label: &str, secret: &str) {
        self.0.push((label.to_owned(), secret.as_bytes().to_vec()));
    }

    /// Raw key bytes, as hex in both cases and in the four base64 alphabets.
    fn key(&mut self, label: &str, raw: &[u8]) {
        assert!(raw.len() >= 16, "{label}: too short to search for");
        let forms = [
            ("hex", hex::encode(raw)),
            ("HEX", hex::encode_upper(raw)),
            ("base64", STANDARD.encode(raw)),
            ("base64 without padding", STANDARD_NO_PAD.encode(raw)),
            ("url-safe base64", URL_SAFE.encode(raw)),
            (
                "url-safe base64 without padding",
                URL_SAFE_NO_PAD.encode(raw),
            ),
        ];
        for (form, text) in forms {
            self.0
                .push((format!("{label} ({form})"), text.into_bytes()));
        }
    }

    /// Asserts that no secret occurs in any part of `transcript`; a failure lists every leak.
    #[track_caller]
    fn assert_absent(&self, transcript: &Transcript) {
        let mut leaks = Vec::new();
        for (what, bytes) in &transcript.0 {
            for (label, secret) in &self.0 {
                if let Some(at) = bytes.windows(secret.len()).position(|w| w == secret) {
                    let start = at.saturating_sub(200);
                    let end = (at + secret.len() + 200).min(bytes.len());
                    leaks.push(format!(
                        "{what} holds the {label}, around:\n{}",
                        String::from_utf8_lossy(&bytes[start..end])
                    ));
                }
            }
        }
        assert!(leaks.is_empty(), "{}", leaks.join("\n\n"));
    }
}

/// Everything that was printed or logged, each part named for failure messages.
#[derive(Default)]
struct Transcript(Vec<(String, Vec<u8>)>);

impl Transcript {
    fn add(&mut self, what: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.0.push((what.into(), bytes.into()));
    }

    fn run(&mut self, run: &Run) {
        self.add(format!("stdout of {}", run.what), run.stdout.clone());
        self.add(format!("stderr of {}", run.what), run.stderr.clone());
    }

    /// Whether any part holds `needle`; used to show that the search covers real logs.
    fn mentions(&self, needle: &str) -> bool {
        self.0
            .iter()
            .any(|(_, b)| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
    }

    /// Asserts the logs are really at trace level, so that searching them means something.
    #[track_caller]
    fn assert_verbose(&self) {
        assert!(
            self.mentions("TRACE") && self.mentions("DEBUG"),
            "no TRACE or DEBUG line was logged: FERRY_LOG=trace had no effect"
        );
    }
}

/// The repository store: moto when installed, else a local directory.
struct Store {
    moto: Option<MotoServer>,
    location: String,
}

impl Store {
    fn start(sb: &Sandbox, bucket: &str) -> Store {
        match MotoServer::start() {
            Some(moto) => {
                moto.create_bucket(bucket);
                let location = moto.url(bucket, "repo");
                Store {
                    moto: Some(moto),
                    location,
                }
            }
            None => Store {
                moto: None,
                location: sb.root().join("repo").to_str().expect("UTF-8").to_owned(),
            },
        }
    }

    /// The repository as a gRPC request names it, with the secrets in it.
    fn spec(&self, password: &str, aws_secret: &str) -> Option<RepositorySpec> {
        Some(RepositorySpec {
            location: self.location.clone(),
            password: password.to_owned(),
            options: Some(StoreOptions {
                s3_region: REGION.to_owned(),
                s3_path_style: true,
                ..Default::default()
            }),
            credentials: Some(StoreCredentials {
                aws_access_key_id: ACCESS_KEY_ID.to_owned(),
                aws_secret_access_key: aws_secret.to_owned(),
                ..Default::default()
            }),
        })
    }

    /// The repository as a plan file names it.
    fn plan_repository(&self, password_file: &Path) -> Value {
        match &self.moto {
            Some(moto) => json!({
                "location": self.location,
                "password_file": password_file,
                "s3_endpoint": moto.endpoint(),
                "s3_region": REGION,
                "s3_path_style": true,
                "credentials_from_env": true,
            }),
            None => json!({ "location": self.location, "password_file": password_file }),
        }
    }

    fn log(&self) -> String {
        self.moto
            .as_ref()
            .map(MotoServer::log_tail)
            .unwrap_or_default()
    }
}

/// The S3 environment with the test's secret key, and trace logging.
fn secret_env(cmd: &mut Command, aws_secret: &str) {
    s3_env(cmd);
    cmd.env("AWS_SECRET_ACCESS_KEY", aws_secret)
        .env("FERRY_LOG", "trace");
}

/// `ferry ARGS -r LOCATION --password-file FILE` at trace level with the S3 secret in the
/// environment, whatever its outcome.
fn ferry(location: &str, password_file: &Path, aws_secret: &str, args: &[&str]) -> Run {
    let mut cmd = ferry_command(args);
    cmd.arg("-r")
        .arg(location)
        .arg("--password-file")
        .arg(password_file);
    secret_env(&mut cmd, aws_secret);
    run_bounded(cmd, HANG_BOUND)
}

/// Reads the repository's master keys with the library (the key file, opened with the
/// password) and adds their encryption and MAC parts to `secrets`.
fn add_master_keys(secrets: &mut Secrets, transcript: &mut Transcript, location: &str, pw: &Path) {
    let list = ferry(location, pw, AWS_SECRET, &["key", "list", "--json"]);
    transcript.run(&list);
    let ids: Vec<String> = list
        .json()
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["id"].as_str().map(str::to_owned))
        .collect();
    assert!(!ids.is_empty(), "key list names no key\n{list}");
    for id in ids {
        let cat = ferry(location, pw, AWS_SECRET, &["cat", "key", &id]);
        transcript.run(&cat);
        assert_eq!(cat.code, Some(0), "{cat}");
        let key_file = KeyFile::from_json(cat.stdout.trim_ascii())
            .unwrap_or_else(|e| panic!("key file {id}: {e}"));
        let master = key_file
            .open(PASSWORD.as_bytes())
            .unwrap_or_else(|e| panic!("open key file {id}: {e}"));
        let json: Value =
            serde_json::from_slice(&master.to_master_json()).expect("master key JSON");
        for (label, part) in [
            ("master encryption key", &json["encrypt"]),
            ("master MAC key k", &json["mac"]["k"]),
            ("master MAC key r", &json["mac"]["r"]),
        ] {
            let raw = STANDARD
                .decode(part.as_str().expect("a base64 string"))
                .expect("base64 key part");
            secrets.key(label, &raw);
        }
    }
}

/// A stand-in S3 server that refuses every request's signature with `403
/// SignatureDoesNotMatch`, as S3 does for a wrong secret key. Stops when dropped.
struct RefusingStore {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl RefusingStore {
    fn start() -> RefusingStore {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(conn) = conn {
                    thread::spawn(move || refuse(conn));
                }
            }
        });
        RefusingStore { addr, stop }
    }

    fn location(&self) -> String {
        format!("s3:http://{}/refusing/repo", self.addr)
    }
}

impl Drop for RefusingStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads one request (head and `Content-Length` body) and answers 403.
fn refuse(conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(&conn);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SignatureDoesNotMatch</Code>\
               <Message>The request signature we calculated does not match the signature you \
               provided. Check your key and signing method.</Message></Error>";
    let answer = format!(
        "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{xml}",
        xml.len()
    );
    let _ = (&conn).write_all(answer.as_bytes());
}

/// The commands of a user's session, and the errors a user meets, at trace level.
#[test]
fn the_command_line_at_trace_level_prints_no_secret() {
    let sb = Sandbox::new();
    let store = Store::start(&sb, "cli-secrets");
    let location = store.location.clone();
    let pw = sb.password_file_with("secret-password", PASSWORD);
    let src = sb.dir("src");
    write_volume_tree(&src, 3, 1 << 20);
    let target = sb.dir("restored");
    let mut t = Transcript::default();
    let mut run = |args: &[&str], expect: i32| {
        let run = ferry(&location, &pw, AWS_SECRET, args);
        assert_eq!(run.code, Some(expect), "{run}");
        t.run(&run);
        run
    };
    run(&["init"], 0);
    let src_text = src.to_str().expect("UTF-8");
    let target_text = target.to_str().expect("UTF-8");
    run(&["agent", "snapshot", src_text, "--json"], 0);
    run(&["agent", "snapshot", src_text], 0);
    run(&["snapshots", "--json"], 0);
    run(&["ls", "latest"], 0);
    run(&["check", "--read-data"], 0);
    run(&["agent", "restore", "latest", "--target", target_text], 0);
    run(&["agent", "verify", target_text], 0);
    run(&["cat", "config"], 0);
    run(&["cat", "masterkey"], 1);

    // A wrong password: exit 12, and neither password printed.
    let wrong = sb.password_file_with("wrong-password", WRONG_PASSWORD);
    let run = ferry(&location, &wrong, AWS_SECRET, &["snapshots"]);
    assert_eq!(run.code, Some(12), "{run}");
    t.run(&run);

    // A store that refuses the credentials, and one that is down.
    let refusing = RefusingStore::start();
    for (what, loc) in [
        ("refusing", refusing.location()),
        (
            "down",
            format!("s3:http://127.0.0.1:{}/down/repo", free_port()),
        ),
    ] {
        let run = ferry(
            &loc,
            &pw,
            REFUSED_AWS_SECRET,
            &["--max-retries", "0", "snapshots"],
        );
        assert_ne!(run.code, Some(0), "a {what} store was accepted\n{run}");
        t.run(&run);
    }
    drop(refusing);

    // Credentials embedded in a location are refused, not echoed.
    for loc in [
        format!("s3:http://AKIAEXAMPLE:{URL_SECRET}@127.0.0.1:9/bucket/repo"),
        format!("s3://AKIAEXAMPLE:{URL_SECRET}@bucket/repo"),
    ] {
        let run = ferry(&loc, &pw, AWS_SECRET, &["snapshots"]);
        assert_ne!(
            run.code,
            Some(0),
            "a location with credentials was accepted\n{run}"
        );
        t.run(&run);
    }

    let mut secrets = Secrets::default();
    for (label, s) in [
        ("repository password", PASSWORD),
        ("wrong password", WRONG_PASSWORD),
        ("S3 secret key", AWS_SECRET),
        ("refused S3 secret key", REFUSED_AWS_SECRET),
        ("secret in a location URL", URL_SECRET),
    ] {
        secrets.text(label, s);
    }
    add_master_keys(&mut secrets, &mut t, &location, &pw);
    t.add("the S3 server's log", store.log());
    t.assert_verbose();
    secrets.assert_absent(&t);
}

/// `ferry agent serve` with a bearer token on two nodes, jobs over gRPC (with the repository
/// password and S3 credentials in the requests), a coordinator driving a plan through them,
/// and the errors of a wrong token, a wrong password and refused credentials.
#[test]
fn the_agents_and_the_coordinator_at_trace_level_log_no_secret() {
    let sb = Sandbox::new();
    let store = Store::start(&sb, "daemon-secrets");
    let pw = sb.password_file_with("secret-password", PASSWORD);
    let token_file = sb.password_file_with("agent-token", TOKEN);
    let mut t = Transcript::default();
    let init = ferry(&store.location, &pw, AWS_SECRET, &["init"]);
    assert_eq!(init.code, Some(0), "{init}");
    t.run(&init);

    let logs = sb.dir("logs");
    let src = Node::new("src", "n1", sb.root().join("kubelet-src"));
    let dst = Node::new("dst", "n2", sb.root().join("kubelet-dst"));
    let agent = |node: &Node| -> Daemon {
        let mut cmd = ferry_command([
            "agent",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--node-name",
            &node.name,
            "--cluster-name",
            &node.cluster,
            "--job-workers",
            "2",
            "--shutdown-grace",
            "2",
        ]);
        cmd.arg("--kubelet-root")
            .arg(&node.kubelet)
            .arg("--token-file")
            .arg(&token_file)
            .arg("--allow-local-repository")
            .arg(sb.root())
            .env("FERRY_LOG", "trace");
        Daemon::spawn(
            cmd,
            logs.join(format!("agent-{}-{}.log", node.cluster, node.name)),
        )
    };
    let mut src_agent = agent(&src);
    let mut dst_agent = agent(&dst);

    // Jobs over gRPC, straight from a client holding the token.
    let pv = "pv-direct";
    write_volume_tree(&src.csi_volume(POD_SRC, pv), 5, 1 << 20);
    dst.csi_volume(POD_DST, pv);
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    rt.block_on(async {
        let mut to_src = client(plain_channel(src_agent.grpc_addr()).await, Some(TOKEN));
        let mut to_dst = client(plain_channel(dst_agent.grpc_addr()).await, Some(TOKEN));
        let events = collect_events(
            to_src
                .snapshot(SnapshotRequest {
                    volume: pod_volume(POD_SRC, pv),
                    repository: store.spec(PASSWORD, AWS_SECRET),
                    as_path: "/app/direct".into(),
                    ..Default::default()
                })
                .await,
        )
        .await
        .unwrap_or_else(|s| panic!("the snapshot job failed: {s:?}"));
        t.add("the snapshot job's events", format!("{events:?}"));
        let done = snapshot_done(&events);
        let events = collect_events(
            to_dst
                .restore(RestoreRequest {
                    volume: pod_volume(POD_DST, pv),
                    repository: store.spec(PASSWORD, AWS_SECRET),
                    snapshot: done.snapshot_id.clone(),
                    ..Default::default()
                })
                .await,
        )
        .await
        .unwrap_or_else(|s| panic!("the restore job failed: {s:?}"));
        t.add("the restore job's events", format!("{events:?}"));
        restore_done(&events);

        // A wrong token and no token: refused, and the refusal names neither token.
        for token in [Some(WRONG_TOKEN), None] {
            let mut c = client(plain_channel(src_agent.grpc_addr()).await, token);
            let status = c
                .get_info(GetInfoRequest {})
                .await
                .expect_err("a call with a wrong token or none was accepted");
            assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
            t.add(
                "the status of a call with a wrong token",
                format!("{status:?}"),
            );
        }

        // Jobs that fail on a wrong password and on refused credentials.
        let refusing = RefusingStore::start();
        let refused_spec = Some(RepositorySpec {
            location: refusing.location(),
            ..store.spec(PASSWORD, REFUSED_AWS_SECRET).expect("a spec")
        });
        for (what, repository) in [
            ("wrong password", store.spec(WRONG_PASSWORD, AWS_SECRET)),
            ("refused credentials", refused_spec),
        ] {
            let result = collect_events(
                to_src
                    .snapshot(SnapshotRequest {
                        volume: pod_volume(POD_SRC, pv),
                        repository,
                        ..Default::default()
                    })
                    .await,
            )
            .await;
            let Err(status) = result else {
                panic!("a job with a {what} succeeded");
            };
            t.add(
                format!("the status of a job with a {what}"),
                format!("{status:?}"),
            );
        }
    });

    // A coordinator that calls the agents with the token and runs a plan through them.
    let coordinator = Coordinator::start(
        &sb.root().join("coordinator"),
        &[
            agent_flag("src", "n1", &src_agent.url()),
            agent_flag("dst", "n2", &dst_agent.url()),
        ],
        &[
            ("FERRY_LOG", "trace"),
            (
                "FERRY_AGENT_TOKEN_FILE",
                token_file.to_str().expect("UTF-8"),
            ),
        ],
    );
    let planned = "pv-planned";
    write_volume_tree(&src.csi_volume(POD_SRC, planned), 7, 1 << 20);
    dst.csi_volume(POD_DST, planned);
    let plan_file = sb.root().join("plan.yaml");
    write_plan_file(
        &plan_file,
        &json!({
            "name": "secretive",
            "source_cluster": { "name": "src" },
            "dest_cluster": { "name": "dst" },
            "repository": store.plan_repository(&pw),
            "volumes": [copy_volume(
                planned,
                "data",
                src.mount(POD_SRC, planned),
                dst.mount(POD_DST, planned),
            )],
        }),
    );
    let aws_env = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
        ("FERRY_LOG", "trace"),
    ];
    let created = coordinator.create_plan(&plan_file, &aws_env);
    t.run(&created);
    for args in [
        &["stage", "secretive", "--wait", "--json"][..],
        &["final", "secretive", "--wait", "--json"][..],
        &["get", "secretive", "--json"][..],
        &["watch", "secretive", "--json"][..],
        &["list"][..],
    ] {
        let run = coordinator.plan_with_env(args, &[("FERRY_LOG", "trace")]);
        assert_eq!(
            run.code,
            Some(0),
            "{run}\ncoordinator log:\n{}",
            coordinator.all_logs()
        );
        t.run(&run);
    }
    let plan = coordinator.get("secretive");
    assert_eq!(
        plan["phase"], "completed",
        "the plan did not complete, so its secrets were not all used: {plan}"
    );

    let mut secrets = Secrets::default();
    for (label, s) in [
        ("repository password", PASSWORD),
        ("wrong password", WRONG_PASSWORD),
        ("S3 secret key", AWS_SECRET),
        ("refused S3 secret key", REFUSED_AWS_SECRET),
        ("bearer token", TOKEN),
        ("wrong bearer token", WRONG_TOKEN),
    ] {
        secrets.text(label, s);
    }
    let sealing = fs::read(&coordinator.key_file).expect("read the sealing key file");
    let sealing_text = String::from_utf8_lossy(&sealing).trim().to_owned();
    secrets.text("sealing key file", &sealing_text);
    let raw = STANDARD
        .decode(&sealing_text)
        .or_else(|_| hex::decode(&sealing_text))
        .unwrap_or(sealing.clone());
    secrets.key("sealing key", &raw);
    add_master_keys(&mut secrets, &mut t, &store.location, &pw);

    let mut coordinator = coordinator;
    let status = coordinator.daemon.terminate();
    assert!(status.success(), "the coordinator exited with {status}");
    for daemon in [&mut src_agent, &mut dst_agent] {
        let status = daemon.terminate();
        assert!(status.success(), "an agent exited with {status}");
    }
    t.add("the coordinator's log", coordinator.all_logs());
    t.add("the source agent's log", src_agent.log_text());
    t.add("the destination agent's log", dst_agent.log_text());
    t.add("the S3 server's log", store.log());
    assert!(
        t.mentions("authorization") || t.mentions("Unauthenticated"),
        "nothing about the bearer token was logged or returned, so searching means little"
    );
    t.assert_verbose();
    secrets.assert_absent(&t);
}
