//! Builds the seed inputs of every fuzz target from repositories the real `restic` wrote.
//!
//! `seed <work-dir> <out-dir>` makes a small varied source tree in `<work-dir>/src` (files,
//! directories, a symlink, a dangling symlink, a hard link, a fifo, an empty file, odd and
//! non-UTF-8 names, an extended attribute when the file system allows one, and files over
//! 1 MiB so that several chunks are cut), backs it up twice with `restic` into a version 2
//! repository and once into a version 1 repository, holds a restic lock open long enough to
//! copy it, and then reads those repositories with ferry's codecs only: key files are opened
//! with the password, every other file with the master key. It writes one file per seed into
//! `<out-dir>/<target>/`, re-sealed under the fuzz key where a target expects sealed bytes.
//! It does not minimise anything (`cargo fuzz cmin` does) and never touches `corpus/`.
//!
//! The `restic` program is `$RESTIC` or `restic` on `PATH`; its password is fixed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry::crypto::Key;
use ferry::id::{BlobType, Id};
use ferry::keyfile::{KdfParams, KeyFile};
use ferry::lockfile::LockFile;
use ferry::pack;
use ferry::repository::blob::BlobCodec;
use ferry::tree::Tree;
use ferry::unpacked;
use ferry_fuzz::{FUZZ_BOOT_ID, FUZZ_HOST, FUZZ_PASSWORD, blob_input, build_pack, fuzz_key, seal};

/// The password of the seed repositories.
const PASSWORD: &str = "ferry-fuzz-seed";

/// Largest stored blob copied into `blob` and `pack` seeds; bigger ones are skipped so the
/// seeds stay small.
const MAX_SEED_BLOB: usize = 64 << 10;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [work, out] = args.as_slice() else {
        return Err("usage: seed <work-dir> <out-dir>".into());
    };
    if work.exists() {
        std::fs::remove_dir_all(work)?;
    }
    std::fs::create_dir_all(work)?;
    let restic = std::env::var_os("RESTIC").map_or_else(|| PathBuf::from("restic"), PathBuf::from);
    let src = work.join("src");
    make_tree(&src)?;

    let v2 = work.join("repo-v2");
    run(&restic, &v2, &["init"])?;
    let src_text = src.to_str().ok_or("source path is not UTF-8")?;
    run(
        &restic,
        &v2,
        &["backup", "--host", "seed-host", "--tag", "fuzz", src_text],
    )?;
    std::fs::write(src.join("a.txt"), b"hello again\n")?;
    std::fs::write(src.join("sub/new.txt"), b"added for the second snapshot\n")?;
    run(&restic, &v2, &["backup", "--host", "seed-host", src_text])?;
    let lock = hold_lock(&restic, &v2)?;

    let v1 = work.join("repo-v1");
    run(&restic, &v1, &["init", "--repository-version", "1"])?;
    run(&restic, &v1, &["backup", "--host", "seed-host", src_text])?;

    let mut seeds = Seeds::default();
    for (name, repo) in [("v2", &v2), ("v1", &v1)] {
        harvest(&mut seeds, name, repo)?;
    }
    let master = open_master(&v2)?;
    let plain = master.open(&lock)?;
    seeds.add("unpacked", "restic-lock", &plain);
    seeds.add("lockfile", "restic-lock", &plain);
    seeds.add(
        "lockfile",
        "restic-lock-json",
        &unpacked::decompress(plain, unpacked::DEFAULT_LIMIT)?,
    );
    // Built from text rather than a struct literal so that new lock fields do not break the
    // seed builder; every field ferry writes is present.
    let ours = LockFile::from_json(
        format!(
            r#"{{"time":"2024-05-01T10:00:00.123456789+02:00","exclusive":true,"hostname":"{FUZZ_HOST}","username":"root","pid":3,"ferry_job":"job-0001","ferry_boot_id":"{FUZZ_BOOT_ID}","ferry_start_ticks":21}}"#
        )
        .as_bytes(),
    )?;
    seeds.add("lockfile", "ferry-lock", &unpacked::compress(&ours.to_json()));
    seeds.add("lockfile", "ferry-lock-json", &ours.to_json());

    for (n, r, p) in [(16, 1, 1), (1024, 1, 1), (4, 2, 3)] {
        let file = KeyFile::create(
            fuzz_key(),
            FUZZ_PASSWORD,
            KdfParams { n, r, p },
            "fuzz",
            FUZZ_HOST,
            "2024-05-01T10:00:00Z",
        )?;
        seeds.add("keyfile", &format!("fuzz-n{n}-r{r}-p{p}"), &file.to_json());
    }
    seeds.add("master_key", "fuzz-key", &fuzz_key().to_master_json());
    seeds.add("envelope", "empty", &seal(b""));
    seeds.add("envelope", "short", &seal(b"x")[..20]);
    seeds.write(out)
}

/// Seeds by target, then by name.
#[derive(Default)]
struct Seeds(BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>);

impl Seeds {
    fn add(&mut self, target: &'static str, name: &str, bytes: &[u8]) {
        self.0
            .entry(target)
            .or_default()
            .insert(name.to_string(), bytes.to_vec());
    }

    fn write(&self, out: &Path) -> Result<()> {
        for (target, files) in &self.0 {
            let dir = out.join(target);
            std::fs::create_dir_all(&dir)?;
            for (name, bytes) in files {
                std::fs::write(dir.join(name), bytes)?;
            }
            let body = ferry_fuzz::TARGETS
                .iter()
                .find(|(name, _)| name == target)
                .map(|(_, body)| *body)
                .ok_or_else(|| format!("seeds for unknown target {target}"))?;
            let passing = files.values().filter(|b| body(b).is_ok()).count();
            println!(
                "{target}: {} seeds, {passing} pass every layer",
                files.len()
            );
        }
        Ok(())
    }
}

/// Writes the source tree the backups are made of.
fn make_tree(src: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;

    std::fs::create_dir_all(src.join("sub/deeper"))?;
    std::fs::create_dir_all(src.join("empty-dir"))?;
    std::fs::write(src.join("a.txt"), b"hello\n")?;
    std::fs::write(src.join("empty"), b"")?;
    std::fs::write(src.join("sub/b.txt"), b"world\n")?;
    std::fs::write(
        src.join("sub/deeper/c.json"),
        br#"{"html":"<a href='x'>&amp;</a>","n":[1,2,3]}"#,
    )?;
    std::fs::write(src.join("name with spaces \u{fc}\u{f1}\u{ed} \u{2028}"), b"u")?;
    std::fs::write(src.join("quote\"back\\slash\ttab"), b"q")?;
    std::fs::write(
        src.join(std::ffi::OsStr::from_bytes(b"not-utf8-\xff\xfe")),
        b"b",
    )?;
    std::fs::write(src.join("run.sh"), b"#!/bin/sh\necho hi\n")?;
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::symlink("sub/b.txt", src.join("link"))?;
    std::os::unix::fs::symlink("/nonexistent/target", src.join("dangling"))?;
    std::fs::hard_link(src.join("sub/b.txt"), src.join("hard"))?;
    // Optional kinds: skipped where the file system or tools do not allow them.
    let _ = Command::new("mkfifo").arg(src.join("fifo")).status();
    let _ = Command::new("setfattr")
        .args(["-n", "user.fuzz", "-v", "value"])
        .arg(src.join("a.txt"))
        .status();
    // Pseudo-random bytes so that the chunker cuts several blobs, and zeros that compress to
    // almost nothing (a compressed blob with a large uncompressed length).
    let mut x = 0x1234_5678_9abc_def0u64;
    let big: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(src.join("sub/big.bin"), big)?;
    std::fs::write(src.join("zeros.bin"), vec![0u8; 2 << 20])?;
    Ok(())
}

fn restic_command(restic: &Path, repo: &Path) -> Command {
    let mut cmd = Command::new(restic);
    cmd.arg("-r")
        .arg(repo)
        .arg("--no-cache")
        .env("RESTIC_PASSWORD", PASSWORD)
        .env_remove("RESTIC_REPOSITORY")
        .env_remove("RESTIC_PASSWORD_FILE")
        .env_remove("RESTIC_PASSWORD_COMMAND");
    cmd
}

fn run(restic: &Path, repo: &Path, args: &[&str]) -> Result<()> {
    let out = restic_command(restic, repo).args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "restic {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// Starts `restic backup --stdin`, which writes its lock before it reads stdin, copies the
/// lock file while restic waits, then lets restic finish.
fn hold_lock(restic: &Path, repo: &Path) -> Result<Vec<u8>> {
    let mut child = restic_command(restic, repo)
        .args(["backup", "--host", "seed-host", "--stdin"])
        .args(["--stdin-filename", "stream.txt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let locks = repo.join("locks");
    let deadline = Instant::now() + Duration::from_secs(60);
    let found = loop {
        let first = std::fs::read_dir(&locks)?.next().transpose()?;
        if let Some(entry) = first {
            let bytes = std::fs::read(entry.path())?;
            if !bytes.is_empty() {
                break Some(bytes);
            }
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(b"streamed through stdin\n")?;
    }
    let status = child.wait()?;
    match found {
        Some(bytes) if status.success() => Ok(bytes),
        Some(_) => Err(format!("restic backup --stdin failed: {status}").into()),
        None => Err("restic wrote no lock file within 60 s".into()),
    }
}

fn files(repo: &Path, dir: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut stack = vec![repo.join(dir)];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            } else {
                let name = entry.file_name().to_string_lossy().into_owned();
                out.push((name, std::fs::read(entry.path())?));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Opens the first key file of `repo` with the seed password.
fn open_master(repo: &Path) -> Result<Key> {
    for (_, raw) in files(repo, "keys")? {
        if let Ok(key) = KeyFile::from_json(&raw)?.open(PASSWORD.as_bytes()) {
            return Ok(key);
        }
    }
    Err(format!("no key of {} opens with the seed password", repo.display()).into())
}

/// Reads one restic repository with ferry's codecs and adds its seeds.
fn harvest(seeds: &mut Seeds, tag: &str, repo: &Path) -> Result<()> {
    for (name, raw) in files(repo, "keys")? {
        seeds.add("keyfile", &format!("restic-{tag}-{}", &name[..8]), &raw);
    }
    let master = open_master(repo)?;
    let config = master.open(&std::fs::read(repo.join("config"))?)?;
    seeds.add("config", &format!("restic-{tag}"), &config);
    seeds.add("envelope", &format!("config-{tag}"), &seal(&config));
    for (dir, target) in [("index", "index"), ("snapshots", "snapshot")] {
        for (name, raw) in files(repo, dir)? {
            let plain = master.open(&raw)?;
            let json = unpacked::decompress(plain.clone(), unpacked::DEFAULT_LIMIT)?;
            let short = &name[..8];
            seeds.add("unpacked", &format!("{target}-{tag}-{short}"), &plain);
            seeds.add(target, &format!("restic-{tag}-{short}"), &plain);
            seeds.add(target, &format!("restic-{tag}-{short}-json"), &json);
        }
    }
    let mut codec = BlobCodec::new();
    for (name, raw) in files(repo, "data")? {
        let short = &name[..8];
        let n = raw.len();
        let hlen = pack::header_length(&raw[n - 4..], n as u64)? as usize;
        let header_plain = master.open(&raw[n - 4 - hlen..n - 4])?;
        let header = pack::parse_header(&header_plain, true)?;
        seeds.add("pack_header", &format!("restic-{tag}-{short}"), &header_plain);
        let mut small = Vec::new();
        for b in &header {
            let stored = &raw[b.offset as usize..b.end() as usize];
            let payload = master.open(stored)?;
            let id_short = &b.id.to_hex()[..8];
            if b.blob_type == BlobType::Tree {
                let mut copy = stored.to_vec();
                let json = codec.open(&master, b.id, &mut copy, b.uncompressed_length)?;
                seeds.add("tree", &format!("restic-{tag}-{id_short}"), &json);
                seeds.add("envelope", &format!("tree-{tag}-{id_short}"), &seal(&json));
                for node in Tree::from_json(&json)?.nodes {
                    let node_id = &Id::hash(&node.name).to_hex()[..8];
                    seeds.add("node", &format!("restic-{tag}-{node_id}"), &node.to_json());
                }
            }
            if payload.len() <= MAX_SEED_BLOB {
                seeds.add(
                    "blob",
                    &format!("restic-{tag}-{id_short}"),
                    &blob_input(b.uncompressed_length, &b.id, &payload),
                );
                small.push((*b, seal(&payload)));
            }
        }
        if !small.is_empty() {
            seeds.add("pack", &format!("restic-{tag}-{short}"), &build_pack(&small));
        }
    }
    Ok(())
}
