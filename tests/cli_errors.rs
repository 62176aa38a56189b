//! How the `ferry` command fails: the exit codes restic 0.17+ uses (1 error, 3 partial snapshot,
//! 10 no repository, 11 locked, 12 wrong password), one clear line on stderr naming what failed,
//! and never a panic (every ferry run in these tests is checked for one).
//!
//! Repositories here are written by restic where possible, so that a failure points at how
//! ferry reads and reports, not at how it writes.

mod common;

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use common::{CompareOptions, Sandbox, assert_trees_equal, object_id, write_random_file};

const EXIT_ERROR: i32 = 1;
const EXIT_PARTIAL: i32 = 3;
const EXIT_NO_REPOSITORY: i32 = 10;
const EXIT_LOCKED: i32 = 11;
const EXIT_WRONG_PASSWORD: i32 = 12;

/// A restic repository holding one snapshot of a small tree; returns the source and the id.
fn restic_repository_with_snapshot(sb: &Sandbox) -> (PathBuf, String) {
    let src = sb.dir("src");
    fs::write(src.join("small.txt"), b"small file\n").unwrap();
    write_random_file(&src.join("big.bin"), 2 << 20, 11);
    sb.init_with_restic();
    let id = sb.restic_backup(&src);
    (src, id)
}

fn restore_args<'a>(id: &'a str, target: &'a Path) -> [&'a OsStr; 5] {
    [
        OsStr::new("agent"),
        OsStr::new("restore"),
        OsStr::new(id),
        OsStr::new("--target"),
        target.as_os_str(),
    ]
}

fn snapshot_args(src: &Path) -> [&OsStr; 3] {
    [OsStr::new("agent"), OsStr::new("snapshot"), src.as_os_str()]
}

/// Asserts that stderr says why the command failed, in plain text: stderr here is a pipe, not a
/// terminal, so colour and cursor escape sequences would only garble logs.
#[track_caller]
fn assert_clear_error(run: &common::Run) {
    assert!(
        !run.stderr.trim().is_empty(),
        "a failure must say why on stderr\n{run}"
    );
    assert!(
        !run.stderr.contains('\u{1b}'),
        "stderr is not a terminal but holds escape sequences\n{run}"
    );
}

#[test]
fn wrong_password_exits_12() {
    let sb = Sandbox::new();
    let (src, id) = restic_repository_with_snapshot(&sb);
    let wrong = sb.password_file_with("wrong-password", "not the password");
    let target = sb.dir("target");

    for args in [
        vec![OsStr::new("snapshots")],
        snapshot_args(&src).to_vec(),
        restore_args(&id, &target).to_vec(),
        vec![OsStr::new("check")],
    ] {
        let run = common::run_ferry(sb.ferry_cmd_with_password(&wrong, args));
        let run = run.code(EXIT_WRONG_PASSWORD);
        assert_clear_error(&run);
        run.stderr_mentions("password");
    }
    assert_eq!(
        sb.restic_snapshots_count(),
        1,
        "a failed snapshot must not add one"
    );

    // The same through RESTIC_PASSWORD and --password-command.
    sb.ferry_bare(
        ["snapshots"],
        &[
            ("RESTIC_REPOSITORY", sb.repo.as_os_str()),
            ("RESTIC_PASSWORD", OsStr::new("not the password")),
        ],
    )
    .code(EXIT_WRONG_PASSWORD);
    sb.ferry_bare(
        [
            OsStr::new("snapshots"),
            OsStr::new("-r"),
            sb.repo.as_os_str(),
            OsStr::new("--password-command"),
            OsStr::new("echo not-the-password"),
        ],
        &[],
    )
    .code(EXIT_WRONG_PASSWORD);
}

#[test]
fn password_from_environment_or_command_opens_the_repository() {
    let sb = Sandbox::new();
    let (_src, id) = restic_repository_with_snapshot(&sb);
    let cat = format!("cat '{}'", sb.password_file.display());
    let runs = [
        sb.ferry_bare(
            ["snapshots", "--json"],
            &[
                ("RESTIC_REPOSITORY", sb.repo.as_os_str()),
                ("RESTIC_PASSWORD", OsStr::new(common::PASSWORD)),
            ],
        ),
        sb.ferry_bare(
            ["snapshots", "--json"],
            &[
                ("RESTIC_REPOSITORY", sb.repo.as_os_str()),
                ("RESTIC_PASSWORD_FILE", sb.password_file.as_os_str()),
            ],
        ),
        sb.ferry_bare(
            ["snapshots", "--json"],
            &[
                ("RESTIC_REPOSITORY", sb.repo.as_os_str()),
                ("RESTIC_PASSWORD_COMMAND", OsStr::new(&cat)),
            ],
        ),
        sb.ferry_bare(
            [
                OsStr::new("snapshots"),
                OsStr::new("--json"),
                OsStr::new("--repo"),
                sb.repo.as_os_str(),
                OsStr::new("--password-command"),
                OsStr::new(&cat),
            ],
            &[],
        ),
    ];
    for run in runs {
        let run = run.ok();
        assert!(run.out().contains(&id), "the snapshot is not listed\n{run}");
    }
}

#[test]
fn missing_repository_exits_10_and_creates_nothing() {
    let sb = Sandbox::new();
    let src = sb.dir("src");
    fs::write(src.join("file"), b"x").unwrap();
    let target = sb.dir("target");
    let missing = sb.repo.to_string_lossy().into_owned();

    for args in [
        vec![OsStr::new("snapshots")],
        snapshot_args(&src).to_vec(),
        restore_args("latest", &target).to_vec(),
        vec![OsStr::new("check")],
    ] {
        let run = sb.ferry(args).code(EXIT_NO_REPOSITORY);
        assert_clear_error(&run);
        run.stderr_mentions(&missing);
    }
    assert!(
        !sb.repo.exists(),
        "a command other than init created the repository"
    );

    // An empty directory is not a repository either.
    fs::create_dir(&sb.repo).unwrap();
    let run = sb.ferry(snapshot_args(&src)).code(EXIT_NO_REPOSITORY);
    assert_clear_error(&run);
    let left: Vec<_> = fs::read_dir(&sb.repo).unwrap().collect();
    assert!(
        left.is_empty(),
        "a failed snapshot wrote into an empty directory: {left:?}"
    );
}

#[test]
fn init_refuses_an_existing_repository() {
    let sb = Sandbox::new();
    sb.init_with_restic();
    let config = fs::read(sb.repo.join("config")).unwrap();
    let keys = sb.repo_files("keys");
    let run = sb.ferry(["init"]).code(EXIT_ERROR);
    assert_clear_error(&run);
    assert_eq!(
        fs::read(sb.repo.join("config")).unwrap(),
        config,
        "init overwrote the config"
    );
    assert_eq!(sb.repo_files("keys"), keys, "init changed the keys");
    sb.restic(["check"]).ok();
}

#[test]
fn unknown_snapshot_is_a_clear_error() {
    let sb = Sandbox::new();
    let (_src, _id) = restic_repository_with_snapshot(&sb);
    let target = sb.dir("target");
    let run = sb.ferry(restore_args("deadbeef", &target)).code(EXIT_ERROR);
    assert_clear_error(&run);
    run.stderr_mentions("deadbeef");
}

/// Holds restic's exclusive lock on a repository for as long as a test needs it: `restic prune`
/// takes the lock and then opens the repository's one index file, which this replaces with a
/// fifo that is opened for writing but never written. The real index is put back as soon as
/// restic is blocked, so other programs see an ordinary repository with a live lock.
struct ResticHoldingLock {
    child: Child,
    _fifo_writer: fs::File,
}

impl ResticHoldingLock {
    fn start(sb: &Sandbox) -> ResticHoldingLock {
        let indexes = sb.repo_files("index");
        assert_eq!(indexes.len(), 1, "expected one index file: {indexes:?}");
        let index = &indexes[0];
        let saved = sb.root().join("index.saved");
        fs::rename(index, &saved).unwrap();
        let c = std::ffi::CString::new(index.as_os_str().to_string_lossy().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");

        let log = sb.root().join("prune.log");
        let mut cmd = sb.restic_cmd(&sb.password_file, ["prune"]);
        cmd.stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("start restic prune");

        // Opening the fifo's write end without blocking succeeds once restic has opened the
        // read end, that is, once it holds its lock and is loading the index.
        let writer = loop {
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(index)
            {
                Ok(w) => break w,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    if let Some(status) = child.try_wait().unwrap() {
                        panic!(
                            "restic prune ended ({status}) before opening the index:\n{}",
                            fs::read_to_string(&log).unwrap_or_default()
                        );
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("open the index fifo: {e}"),
            }
        };
        fs::remove_file(index).unwrap();
        fs::rename(&saved, index).unwrap();
        let locks = sb.repo_files("locks");
        assert_eq!(
            locks.len(),
            1,
            "restic prune should hold one lock: {locks:?}"
        );
        ResticHoldingLock {
            child,
            _fifo_writer: writer,
        }
    }

    /// Kills restic without letting it clean up, which leaves its lock behind, stale.
    fn kill(self) {
        drop(self);
    }
}

impl Drop for ResticHoldingLock {
    /// A restic blocked on the fifo would wait forever, so it is killed on every path out of a
    /// test, failures included.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn exclusive_lock_of_another_process_exits_11() {
    let sb = Sandbox::new();
    let (src, id) = restic_repository_with_snapshot(&sb);
    let target = sb.dir("target");

    let holder = ResticHoldingLock::start(&sb);
    let run = sb.ferry(snapshot_args(&src)).code(EXIT_LOCKED);
    assert_clear_error(&run);
    run.stderr_mentions("lock");
    let run = sb.ferry(restore_args(&id, &target)).code(EXIT_LOCKED);
    run.stderr_mentions("lock");

    // Killed, restic leaves its lock behind. A stale lock still blocks until it is removed
    // explicitly, as in restic.
    holder.kill();
    assert_eq!(
        sb.repo_files("locks").len(),
        1,
        "the killed restic left its lock"
    );
    let run = sb.ferry(snapshot_args(&src)).code(EXIT_LOCKED);
    assert_clear_error(&run);
    run.stderr_mentions("lock");
    assert_eq!(
        sb.restic_snapshots_count(),
        1,
        "a locked-out snapshot must not add one"
    );

    sb.restic(["unlock", "--remove-all"]).ok();
    sb.ferry(snapshot_args(&src)).ok();
    assert_eq!(sb.restic_snapshots_count(), 2);
}

/// The largest pack (the data pack, since restic keeps data and trees apart) and the ids of the
/// blobs restic's index places in it.
fn largest_pack_and_its_blobs(sb: &Sandbox) -> (PathBuf, Vec<String>) {
    let pack = sb
        .repo_files("data")
        .into_iter()
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("the repository has packs");
    let pack_id = object_id(&pack);
    let mut blobs = Vec::new();
    for index in sb.repo_files("index") {
        let json = sb.restic(["cat", "index", &object_id(&index)]).ok().json();
        for p in json["packs"].as_array().into_iter().flatten() {
            if p["id"] == pack_id.as_str() {
                for b in p["blobs"].as_array().into_iter().flatten() {
                    if let Some(id) = b["id"].as_str() {
                        blobs.push(id.to_owned());
                    }
                }
            }
        }
    }
    (pack, blobs)
}

fn flip_byte(path: &Path, offset: u64) {
    // Repository files are read-only; make this one writable for the damage.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x40;
    file.write_all_at(&byte, offset).unwrap();
}

#[test]
fn corrupted_pack_fails_check_naming_the_pack_and_fails_restore() {
    let sb = Sandbox::new();
    let (_src, id) = restic_repository_with_snapshot(&sb);
    let (pack, blobs) = largest_pack_and_its_blobs(&sb);
    let pack_id = object_id(&pack);
    let size = fs::metadata(&pack).unwrap().len();
    // The middle of a 2 MiB data pack is inside a blob's ciphertext.
    flip_byte(&pack, size / 2);
    let judge = sb.restic(["check", "--read-data"]);
    assert_ne!(
        judge.code,
        Some(0),
        "restic does not see the damage\n{judge}"
    );

    let run = sb.ferry(["check", "--read-data"]).code(EXIT_ERROR);
    assert_clear_error(&run);
    run.stderr_mentions(&pack_id[..8]);

    let target = sb.dir("target");
    let run = sb.ferry(restore_args(&id, &target)).code(EXIT_ERROR);
    assert_clear_error(&run);
    let named = std::iter::once("big.bin")
        .chain(std::iter::once(&pack_id[..8]))
        .chain(blobs.iter().map(|b| &b[..8]))
        .any(|needle| run.stderr.contains(needle));
    assert!(
        named,
        "the restore error names neither the file, the pack nor a blob\n{run}"
    );
}

#[test]
fn truncated_index_is_a_clear_error_naming_it() {
    let sb = Sandbox::new();
    let (src, id) = restic_repository_with_snapshot(&sb);
    let indexes = sb.repo_files("index");
    let index = &indexes[0];
    let index_id = object_id(index);
    let len = fs::metadata(index).unwrap().len();
    fs::set_permissions(index, fs::Permissions::from_mode(0o600)).unwrap();
    OpenOptions::new()
        .write(true)
        .open(index)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let judge = sb.restic(["check"]);
    assert_ne!(
        judge.code,
        Some(0),
        "restic does not see the damage\n{judge}"
    );

    let run = sb.ferry(["check"]).code(EXIT_ERROR);
    assert_clear_error(&run);
    run.stderr_mentions(&index_id[..8]);

    // A restore either succeeds without the index (the packs hold everything) or fails naming
    // it; it never restores wrong data.
    let target = sb.dir("target");
    let run = sb.ferry(restore_args(&id, &target));
    if run.code == Some(0) {
        assert_trees_equal(&src, &target, &CompareOptions::exact());
    } else {
        let run = run.code(EXIT_ERROR);
        assert_clear_error(&run);
        run.stderr_mentions(&index_id[..8]);
    }
}

/// A source tree with a readable part and one thing ferry cannot read, snapshotted by a user
/// for whom it is unreadable: as root, ferry runs as `nobody` over a tree `nobody` owns.
struct Unreadable {
    sb: Sandbox,
    src: PathBuf,
}

const NOBODY: u32 = 65534;

impl Unreadable {
    fn new(make_unreadable: impl FnOnce(&Path)) -> Unreadable {
        let sb = Sandbox::new();
        sb.init_with_restic();
        let src = sb.dir("src");
        let readable = src.join("readable");
        fs::create_dir(&readable).unwrap();
        fs::write(readable.join("a.txt"), b"can be read\n").unwrap();
        write_random_file(&readable.join("b.bin"), 100_000, 3);
        make_unreadable(&src);
        if common::is_root() {
            chown_tree(sb.root(), NOBODY).unwrap();
        }
        Unreadable { sb, src }
    }

    fn snapshot(&self) -> common::Run {
        let mut cmd = self.sb.ferry_cmd(snapshot_args(&self.src));
        if common::is_root() {
            cmd.uid(NOBODY).gid(NOBODY);
        }
        common::run_ferry(cmd)
    }

    /// The snapshot exists, restic accepts it, and the readable part restores intact.
    fn assert_readable_part_saved(&self) {
        let listed = self.sb.restic(["snapshots", "--json"]).ok().json();
        let ids: Vec<&str> = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["id"].as_str())
            .collect();
        assert_eq!(ids.len(), 1, "a partial snapshot is still saved: {listed}");
        self.sb.restic(["check", "--read-data"]).ok();
        let target = self.sb.dir("target");
        self.sb.restic_restore(ids[0], &target);
        assert_trees_equal(
            &self.src.join("readable"),
            &target.join("readable"),
            &CompareOptions {
                owners: false,
                ..CompareOptions::exact()
            },
        );
    }
}

fn chown_tree(path: &Path, id: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(id), Some(id))?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path(), id)?;
        }
    }
    Ok(())
}

#[test]
fn unreadable_file_gives_a_partial_snapshot_and_exit_3() {
    let case = Unreadable::new(|src| {
        let secret = src.join("secret.txt");
        fs::write(&secret, b"nobody may read this\n").unwrap();
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o000)).unwrap();
    });
    let run = case.snapshot().code(EXIT_PARTIAL);
    assert_clear_error(&run);
    run.stderr_mentions("secret.txt");
    case.assert_readable_part_saved();
}

#[test]
fn unreadable_directory_gives_a_partial_snapshot_and_exit_3() {
    let case = Unreadable::new(|src| {
        let closed = src.join("closed-dir");
        fs::create_dir(&closed).unwrap();
        fs::write(closed.join("inside.txt"), b"behind a closed door\n").unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o000)).unwrap();
    });
    let run = case.snapshot().code(EXIT_PARTIAL);
    assert_clear_error(&run);
    run.stderr_mentions("closed-dir");
    case.assert_readable_part_saved();
}
