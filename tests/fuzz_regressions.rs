//! Replays the fuzz corpus and every fuzz finding on stable, in the normal test suite.
//!
//! The target bodies live in `tests/fuzz/src/lib.rs`, shared with the `cargo fuzz` targets,
//! so what runs here is exactly what libFuzzer ran. Every file under
//! `tests/fuzz/corpus/<target>/` must run without a panic. Every input under
//! `tests/fuzz/regressions/<target>/` (a crash, timeout or out-of-memory the fuzzer found)
//! must run without a panic and end as its `<input>.expect` file says: `ok`, or a text the
//! error message must contain. This file does not fuzz and does not build seeds; see
//! `tests/fuzz/README.md`.

#[path = "fuzz/src/lib.rs"]
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use ferry::crypto::Key;
use ferry::id::{BlobType, Id};
use ferry::keyfile::{KdfParams, KeyFile};
use ferry::node::{Node, NodeType};
use ferry::pack::PackedBlob;
use ferry::tree::Tree;
use ferry::unpacked;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz")
}

/// The inputs of one directory, by file name; `.expect` files are not inputs.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_none_or(|ext| ext != "expect"))
        .collect();
    files.sort();
    files
}

/// Runs `target` on `bytes`, turning a panic into a message.
fn run(target: targets::Target, bytes: &[u8]) -> Result<targets::Outcome, String> {
    catch_unwind(AssertUnwindSafe(|| target(bytes))).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".to_string())
    })
}

#[test]
fn corpus_replays_without_panics() {
    let mut failures = Vec::new();
    let mut count = 0;
    for (name, target) in targets::TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        let files = inputs(&dir);
        assert!(
            !files.is_empty(),
            "no corpus for target {name} in {}",
            dir.display()
        );
        for path in files {
            count += 1;
            let bytes = std::fs::read(&path).expect("reading a corpus file");
            if let Err(panic) = run(*target, &bytes) {
                failures.push(format!("{}: panicked: {panic}", path.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} corpus inputs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn regressions_end_as_expected() {
    let mut failures = Vec::new();
    for (name, target) in targets::TARGETS {
        for path in inputs(&fuzz_dir().join("regressions").join(name)) {
            let bytes = std::fs::read(&path).expect("reading a regression input");
            let expect_path = path.with_file_name(format!(
                "{}.expect",
                path.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
            ));
            let Ok(expected) = std::fs::read_to_string(&expect_path) else {
                failures.push(format!("{}: no {}", path.display(), expect_path.display()));
                continue;
            };
            let expected = expected.trim();
            match run(*target, &bytes) {
                Err(panic) => failures.push(format!("{}: panicked: {panic}", path.display())),
                Ok(Ok(())) if expected == "ok" => {}
                Ok(Err(e)) if expected != "ok" && e.contains(expected) => {}
                Ok(outcome) => failures.push(format!(
                    "{}: ended {outcome:?}, expected {expected:?}",
                    path.display()
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Valid inputs built with ferry's own encoders pass every layer of their target, so the
/// targets really reach the parsers behind the fuzz key's MAC.
#[test]
fn valid_inputs_pass_every_layer() {
    let mut file = Node::new("a", NodeType::File);
    file.content = Some(vec![]);
    let tree = Tree::from_nodes(vec![file.clone(), Node::new("b", NodeType::Dir)])
        .expect("tree of two names")
        .to_json();
    let lock = br#"{"time":"2024-05-01T10:00:00Z","exclusive":false,"hostname":"h","username":"u","pid":1}"#;
    let index = br#"{"packs":[{"id":"0000000000000000000000000000000000000000000000000000000000000001","blobs":[{"id":"0000000000000000000000000000000000000000000000000000000000000002","type":"tree","offset":0,"length":40,"uncompressed_length":9}]}]}"#;
    let snapshot = br#"{"time":"2024-05-01T10:00:00Z","tree":"0000000000000000000000000000000000000000000000000000000000000003","paths":["/d"]}"#;
    let plain_blob = b"blob bytes";
    let zstd_blob = zstd_frame(plain_blob);
    let blob_id = Id::hash(plain_blob);
    let entry = PackedBlob {
        blob_type: BlobType::Data,
        id: blob_id,
        offset: 0,
        length: 0,
        uncompressed_length: plain_blob.len() as u32,
    };
    let keyfile = KeyFile::create(
        targets::fuzz_key(),
        targets::FUZZ_PASSWORD,
        KdfParams { n: 16, r: 1, p: 1 },
        "u",
        "h",
        "2024-05-01T10:00:00Z",
    )
    .expect("cheap key file")
    .to_json();
    let config = ferry::config::Config::new_v2().to_json();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("envelope", targets::seal(b"x")),
        ("master_key", Key::random().to_master_json()),
        ("keyfile", keyfile),
        ("config", config),
        ("unpacked", unpacked::compress(b"{}")),
        ("index", unpacked::compress(index)),
        ("index", index.to_vec()),
        ("snapshot", unpacked::compress(snapshot)),
        ("lockfile", unpacked::compress(lock)),
        (
            "pack",
            targets::build_pack(&[(entry, targets::seal(&zstd_blob))]),
        ),
        ("pack_header", ferry::pack::encode_header(&[entry])),
        (
            "blob",
            targets::blob_input(plain_blob.len() as u32, &blob_id, &zstd_blob),
        ),
        ("blob", targets::blob_input(0, &blob_id, plain_blob)),
        ("tree", tree),
        ("node", file.to_json()),
    ];
    for (name, input) in cases {
        let (_, target) = targets::TARGETS
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a known target");
        assert_eq!(run(*target, &input), Ok(Ok(())), "target {name}");
    }
}

/// A zstd frame of `data`, as a compressed blob stores it.
fn zstd_frame(data: &[u8]) -> Vec<u8> {
    let mut framed = unpacked::compress(data);
    framed.remove(0);
    framed
}
