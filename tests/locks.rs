//! Repository locks against real processes: the staleness rule of `ferry::lockfile` as ferry
//! applies it (a killed ferry's lock is removed by the next run or by `ferry unlock`, a live
//! process's lock never; a restarted pid 1 in a fresh pid namespace, as after a container
//! restart, does not keep its predecessor's lock alive), and the bounded wait for an exclusive
//! lock held by `restic prune` (`--retry-lock`, `FERRY_RETRY_LOCK`): exit 11 naming the holder
//! when the bound passes, success when the prune ends during the wait.
//!
//! Live lock holders are made deterministic instead of caught by timing: a ferry snapshot of a
//! FIFO (`--block`) holds its lock while it waits for a writer, and `restic prune` holds its
//! exclusive lock while it waits to read an index file that was swapped for a FIFO. The unit
//! tests of the rule itself are in `src/lockfile.rs` and `src/repository/lock.rs`.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{CompareOptions, Run, Sandbox, assert_trees_equal, write_random_file};

const EXIT_LOCKED: i32 = 11;

/// The longest any awaited event may take before the test gives up: far beyond what it needs,
/// so that only a hang fails a test, never a slow machine.
const PATIENCE: Duration = Duration::from_secs(120);

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// Polls `probe` until it gives a value; panics after [`PATIENCE`].
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{what} did not happen within {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The decrypted JSON of a lock file, as `ferry cat lock` prints it.
fn lock_json(sb: &Sandbox, id: &str) -> serde_json::Value {
    let run = sb.ferry(["cat", "lock", id]).ok();
    serde_json::from_slice(&run.stdout).unwrap_or_else(|e| panic!("lock json: {e}\n{run}"))
}

/// A `ferry agent snapshot --block FIFO` that holds its repository lock while it waits for a
/// writer on the FIFO: a live lock holder for as long as the test wants.
struct BlockedSnapshot {
    child: Child,
    fifo: PathBuf,
    /// The FIFO's write end, opened once the snapshot opened its read end.
    writer: Option<File>,
    lock: String,
}

impl BlockedSnapshot {
    /// Starts the snapshot (through `wrapper`, e.g. `unshare …`, when given) and waits until its
    /// lock file appears and it opened the FIFO, which it does only once its lock is confirmed:
    /// from then on it does nothing more to the repository's locks until it is fed. (Its
    /// second look at the locks, 200 ms after writing its own, removes any lock of a process
    /// proven dead by then; a test that killed a process in that window would race with it.)
    fn start(sb: &Sandbox, name: &str, wrapper: &[&str]) -> BlockedSnapshot {
        let fifo = sb.root().join(name);
        mkfifo(&fifo);
        let before = sb.lock_ids();
        let ferry = sb.ferry_cmd([
            OsStr::new("agent"),
            OsStr::new("snapshot"),
            OsStr::new("--block"),
            fifo.as_os_str(),
        ]);
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(ferry.get_program()).args(ferry.get_args());
                for (k, v) in ferry.get_envs() {
                    match v {
                        Some(v) => c.env(k, v),
                        None => c.env_remove(k),
                    };
                }
                c
            }
            None => ferry,
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(sb.root().join(format!("{name}.log"))).unwrap());
        let mut child = cmd.spawn().expect("start a blocked ferry snapshot");
        let lock = wait_for("the blocked snapshot's lock", || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the blocked snapshot ended ({status}):\n{}",
                    fs::read_to_string(sb.root().join(format!("{name}.log"))).unwrap_or_default()
                );
            }
            sb.lock_ids().difference(&before).next().cloned()
        });
        // A non-blocking open of a FIFO's write end fails (ENXIO) until a reader has it open.
        let probe = wait_for("the blocked snapshot to open its FIFO", || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the blocked snapshot ended ({status})");
            }
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .ok()
        });
        let writer = OpenOptions::new().write(true).open(&fifo).unwrap();
        drop(probe);
        BlockedSnapshot {
            child,
            fifo,
            writer: Some(writer),
            lock,
        }
    }

    /// Feeds the FIFO and lets the snapshot finish; returns its exit status.
    fn finish(mut self) -> std::process::ExitStatus {
        let mut writer = self.writer.take().expect("fed once");
        writer.write_all(&vec![7u8; 3 << 20]).unwrap();
        // The end of input: the snapshot sees EOF when the last writer closes.
        drop(writer);
        self.child.wait().unwrap()
    }

    /// SIGKILLs the snapshot and reaps it: its lock stays behind.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for BlockedSnapshot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_killed_ferrys_lock_is_removed_by_the_next_run_and_then_prune_can_run() {
    let sb = Sandbox::new();
    sb.init_with_ferry();
    let src = sb.dir("src");
    write_random_file(&src.join("a.bin"), 1 << 20, 1);

    let blocked = BlockedSnapshot::start(&sb, "fifo", &[]);
    let pid = blocked.child.id();
    let lock = blocked.lock.clone();
    let json = lock_json(&sb, &lock);
    assert_eq!(json["pid"], pid, "{json}");
    assert!(
        json["ferry_boot_id"].is_string() && json["ferry_start_ticks"].is_u64(),
        "ferry records its process incarnation: {json}"
    );
    blocked.kill();
    assert_eq!(
        sb.lock_ids(),
        BTreeSet::from([lock.clone()]),
        "SIGKILL left the lock"
    );

    // restic keeps a dead holder's lock until someone unlocks: its exclusive commands fail.
    let run = sb.restic(["prune"]);
    assert_ne!(
        run.code,
        Some(0),
        "restic prune must see the dead lock\n{run}"
    );
    assert!(run.stderr.contains("locked"), "{run}");

    // The next ferry run proves the holder gone (same machine and boot, pid gone) and removes
    // its lock; it also releases its own.
    sb.ferry_snapshot(&src, &[]);
    assert!(sb.lock_ids().is_empty(), "the dead holder's lock is gone");
    sb.restic(["prune"]).ok();
    sb.restic(["check", "--read-data"]).ok();
}

#[test]
fn ferry_unlock_removes_a_killed_processs_lock_and_nothing_removes_a_live_ones() {
    let sb = Sandbox::new();
    sb.init_with_ferry();
    let src = sb.dir("src");
    write_random_file(&src.join("a.bin"), 1 << 20, 2);

    let dead = BlockedSnapshot::start(&sb, "fifo-dead", &[]);
    let dead_lock = dead.lock.clone();
    dead.kill();
    let live = BlockedSnapshot::start(&sb, "fifo-live", &[]);
    let live_lock = live.lock.clone();
    // The live snapshot started after the other was killed: its run removed the dead lock
    // already. Plant the situation again with a second killed snapshot.
    assert!(
        !sb.lock_ids().contains(&dead_lock),
        "the second run removed the dead lock"
    );
    let dead = BlockedSnapshot::start(&sb, "fifo-dead-2", &[]);
    let dead_lock = dead.lock.clone();
    dead.kill();
    // The running snapshot was alive when the second one started, so its lock stayed.
    assert_eq!(
        sb.lock_ids(),
        BTreeSet::from([dead_lock.clone(), live_lock.clone()])
    );

    let run = sb.ferry(["unlock"]).ok();
    assert!(run.out().contains("removed 1 locks"), "{run}");
    assert_eq!(
        sb.lock_ids(),
        BTreeSet::from([live_lock.clone()]),
        "unlock removed the dead lock and kept the live one"
    );
    // Another snapshot runs beside the live holder and leaves its lock alone.
    sb.ferry_snapshot(&src, &[]);
    assert_eq!(sb.lock_ids(), BTreeSet::from([live_lock.clone()]));
    // A process stopped with SIGSTOP is alive too.
    // SAFETY: plain signals to a child this test started and still owns.
    unsafe { libc::kill(live.child.id() as libc::pid_t, libc::SIGSTOP) };
    sb.ferry(["unlock"]).ok();
    assert_eq!(sb.lock_ids(), BTreeSet::from([live_lock.clone()]));
    // SAFETY: as above.
    unsafe { libc::kill(live.child.id() as libc::pid_t, libc::SIGCONT) };

    assert!(live.finish().success());
    assert!(sb.lock_ids().is_empty());
    sb.restic(["check"]).ok();
}

/// Whether this machine can run a command as pid 1 of a new pid namespace.
fn pid_namespaces_work() -> bool {
    common::is_root()
        && Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

const AS_PID_1: &[&str] = &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"];

/// Whether a process whose command line mentions `needle` still exists.
fn any_process_mentions(needle: &str) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
    })
}

#[test]
fn a_restarted_pid_1_does_not_keep_its_predecessors_lock_alive() {
    if !pid_namespaces_work() {
        eprintln!("skipped: needs root and unshare(1) for pid namespaces");
        return;
    }
    let sb = Sandbox::new();
    sb.init_with_ferry();
    let src = sb.dir("src");
    write_random_file(&src.join("a.bin"), 1 << 20, 3);

    // ferry as pid 1 of its own pid namespace, as in a container, then killed.
    let blocked = BlockedSnapshot::start(&sb, "fifo-pod", AS_PID_1);
    let lock = blocked.lock.clone();
    let json = lock_json(&sb, &lock);
    assert_eq!(json["pid"], 1, "{json}");
    let fifo = blocked.fifo.display().to_string();
    blocked.kill();
    wait_for("the namespaced ferry to exit", || {
        (!any_process_mentions(&fifo)).then_some(())
    });

    // The restarted container: a new pid 1 with the same host name. restic's rule (same host,
    // pid 1 exists) calls the lock live.
    let mut restic = sb.restic_cmd(&sb.password_file, ["unlock"]);
    let mut wrapped = Command::new(AS_PID_1[0]);
    wrapped
        .args(&AS_PID_1[1..])
        .arg(restic.get_program())
        .args(restic.get_args());
    for (k, v) in restic.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    restic = wrapped;
    common::run(restic).ok();
    assert_eq!(
        sb.lock_ids(),
        BTreeSet::from([lock.clone()]),
        "restic kept it"
    );

    // ferry's record (boot id and start time) shows pid 1 is another process now.
    let mut ferry = Command::new(AS_PID_1[0]);
    let inner = sb.ferry_cmd([OsStr::new("agent"), OsStr::new("snapshot"), src.as_os_str()]);
    ferry
        .args(&AS_PID_1[1..])
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => ferry.env(k, v),
            None => ferry.env_remove(k),
        };
    }
    common::run_ferry(ferry).ok();
    assert!(
        sb.lock_ids().is_empty(),
        "the predecessor's lock was removed"
    );
    sb.restic(["check"]).ok();
}

/// Holds restic's exclusive lock for as long as a test needs: `restic prune` takes the lock and
/// then reads the index files, one of which is swapped for a FIFO that is opened for writing but
/// not written yet. As soon as restic has the FIFO open, the real file is put back, so that
/// everyone else sees an ordinary repository with a live exclusive lock; [`GatedPrune::release`]
/// feeds restic the real bytes and lets the prune run to its end.
struct GatedPrune {
    child: Child,
    writer: Option<File>,
    index_bytes: Vec<u8>,
    log: PathBuf,
}

impl GatedPrune {
    fn start(sb: &Sandbox) -> GatedPrune {
        let index = sb
            .repo_files("index")
            .into_iter()
            .next()
            .expect("an index file");
        let index_bytes = fs::read(&index).unwrap();
        fs::remove_file(&index).unwrap();
        mkfifo(&index);
        let log = sb.root().join("prune.log");
        let mut cmd = sb.restic_cmd(&sb.password_file, ["prune"]);
        cmd.stdout(File::create(sb.root().join("prune.out")).unwrap())
            .stderr(File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("start restic prune");
        // Opening the write end without blocking succeeds once restic has opened the read end,
        // that is, once it holds its lock and is loading the index.
        let writer = wait_for(
            "restic prune to open the index",
            || match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&index)
            {
                Ok(w) => Some(w),
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    if let Some(status) = child.try_wait().unwrap() {
                        panic!(
                            "restic prune ended ({status}) before opening the index:\n{}",
                            fs::read_to_string(&log).unwrap_or_default()
                        );
                    }
                    None
                }
                Err(e) => panic!("open the index fifo: {e}"),
            },
        );
        // Blocking writes from here on: restic reads as we write.
        // SAFETY: fcntl on a descriptor this function owns.
        unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETFL, 0) };
        fs::remove_file(&index).unwrap();
        fs::write(&index, &index_bytes).unwrap();
        assert_eq!(sb.lock_ids().len(), 1, "restic prune holds one lock");
        GatedPrune {
            child,
            writer: Some(writer),
            index_bytes,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the prune read its index and finish; asserts that it succeeded.
    fn release(mut self) {
        let mut w = self.writer.take().unwrap();
        w.write_all(&self.index_bytes).unwrap();
        drop(w);
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "restic prune failed ({status}):\n{}",
            fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for GatedPrune {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn snapshot_cmd(sb: &Sandbox, src: &Path, extra: &[&str]) -> Command {
    let mut args = vec![OsStr::new("agent"), OsStr::new("snapshot"), src.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    let mut cmd = sb.ferry_cmd(args);
    cmd.env_remove("FERRY_RETRY_LOCK");
    cmd
}

#[track_caller]
fn assert_names_exclusive_holder(run: &Run, pid: u32) {
    let holder = format!("(pid {pid})");
    assert!(
        run.stderr.contains("exclusive lock") && run.stderr.contains(&holder),
        "the message names the exclusive lock and its holder {holder}\n{run}"
    );
}

#[test]
fn an_exclusive_prune_lock_makes_ferry_wait_its_bound_then_exit_11() {
    let sb = Sandbox::new();
    let src = sb.dir("src");
    write_random_file(&src.join("a.bin"), 2 << 20, 4);
    fs::write(src.join("small"), b"small\n").unwrap();
    sb.init_with_restic();
    let id = sb.restic_backup(&src);
    let prune = GatedPrune::start(&sb);
    // ferry cuts other chunks than restic, so a snapshot that got through would add packs.
    // The pipeline runs while the lock is being taken; its writes must wait for the lock.
    let packs = sb.repo_files("data");
    let nothing_written = |when: &str| {
        assert_eq!(sb.repo_files("data"), packs, "no pack was stored {when}");
        assert_eq!(
            sb.repo_files("index").len(),
            1,
            "no index was stored {when}"
        );
    };

    // restic's default: no wait.
    let started = Instant::now();
    let run = common::run_ferry(snapshot_cmd(&sb, &src, &[])).code(EXIT_LOCKED);
    assert_names_exclusive_holder(&run, prune.pid());
    nothing_written("without a wait");
    eprintln!("no wait: exit 11 after {:?}", started.elapsed());

    // A bound from the environment: it waits, says so naming the holder, then gives up.
    let mut cmd = snapshot_cmd(&sb, &src, &[]);
    cmd.env("FERRY_RETRY_LOCK", "2s");
    let started = Instant::now();
    let run = common::run_ferry(cmd).code(EXIT_LOCKED);
    let waited = started.elapsed();
    assert_names_exclusive_holder(&run, prune.pid());
    run.stderr_mentions("waiting up to 2.0s")
        .stderr_mentions("gave up after waiting");
    assert!(
        waited >= Duration::from_secs(2),
        "it waited its bound: {waited:?}"
    );
    // Its pipeline read and sealed everything long before it gave up.
    nothing_written("after waiting");
    eprintln!("FERRY_RETRY_LOCK=2s: exit 11 after {waited:?}");

    // The flag, on a restore too.
    let restore = |target: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            OsStr::new("agent"),
            OsStr::new("restore"),
            OsStr::new(&id),
            OsStr::new("--target"),
            target.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        sb.ferry(args).code(EXIT_LOCKED)
    };
    let target = sb.dir("target");
    let run = restore(&target, &["--retry-lock", "1s"]);
    assert_names_exclusive_holder(&run, prune.pid());
    run.stderr_mentions("gave up after waiting");
    assert_eq!(sb.restic_snapshots_count(), 1, "nothing was written");
    assert_eq!(
        fs::read_dir(&target).unwrap().count(),
        0,
        "the target is as empty as it was"
    );
    // Without a wait the restore starts beside its lock attempt; what it added goes again.
    // A target it had to create goes too.
    let fresh = sb.root().join("fresh-target");
    restore(&fresh, &[]);
    assert!(!fresh.exists(), "no target was left behind");
    // A target holding other content, restored over with --delete: nothing is removed,
    // replaced or added.
    let held = sb.dir("held");
    fs::write(held.join("small"), b"other content\n").unwrap();
    fs::create_dir(held.join("extra")).unwrap();
    fs::write(held.join("extra").join("x"), b"x\n").unwrap();
    fs::write(held.join("a.bin"), b"not the snapshot's a.bin").unwrap();
    let before = listing(&held);
    restore(&held, &["--delete"]);
    assert_eq!(listing(&held), before, "the held target is unchanged");

    // Once the prune has finished, the same command succeeds.
    prune.release();
    let run = common::run_ferry(snapshot_cmd(&sb, &src, &["--retry-lock", "2s"])).ok();
    assert!(
        !run.stderr.contains("waiting"),
        "no lock to wait for\n{run}"
    );
    assert!(sb.lock_ids().is_empty());
    sb.restic(["check", "--read-data"]).ok();
}

#[test]
fn ferry_waiting_for_a_prune_continues_when_it_ends_and_reads_the_index_it_left() {
    let sb = Sandbox::new();
    // The prune will delete the packs of `gone` (its only snapshot is forgotten); ferry then
    // snapshots the very same data. An index loaded before the prune would make ferry think the
    // data is stored and refer to deleted packs.
    let gone = sb.dir("gone");
    write_random_file(&gone.join("a.bin"), 3 << 20, 5);
    write_random_file(&gone.join("b.bin"), 600 << 10, 6);
    let kept = sb.dir("kept");
    write_random_file(&kept.join("c.bin"), 1 << 20, 7);
    sb.init_with_restic();
    let forgotten = sb.restic_backup(&gone);
    sb.restic_backup(&kept);
    sb.restic(["forget", &forgotten]).ok();
    let prune = GatedPrune::start(&sb);

    let mut cmd = snapshot_cmd(&sb, &gone, &["--retry-lock", "5m", "--json"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut ferry = cmd.spawn().expect("start ferry");
    let (tx, rx) = mpsc::channel();
    let stderr = ferry.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    // Wait until ferry says it is waiting; only then let the prune go on.
    let waiting = loop {
        match rx.recv_timeout(PATIENCE) {
            Ok(line) if line.contains("waiting up to") => break line,
            Ok(_) => {}
            Err(e) => panic!("ferry never said it waits ({e}): {:?}", ferry.try_wait()),
        }
    };
    assert!(waiting.contains("exclusive lock"), "{waiting}");
    assert!(
        waiting.contains(&format!("(pid {})", prune.pid())),
        "{waiting}"
    );
    prune.release();
    let out = ferry.wait_with_output().unwrap();
    let stderr = reader.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "ferry succeeds within its bound\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(sb.lock_ids().is_empty());
    // Every blob the new snapshot refers to exists: ferry stored the pruned data anew.
    sb.restic(["check", "--read-data"]).ok();
    let restored = sb.dir("restored");
    sb.restic_restore("latest", &restored);
    assert_trees_equal(&gone, &restored, &CompareOptions::restic_0_14());
}

/// Every entry under `dir` with its content (files) or a marker (directories), sorted.
fn listing(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
                out.push((p, None));
            } else {
                out.push((p.clone(), Some(fs::read(&p).unwrap())));
            }
        }
    }
    out.sort();
    out
}
