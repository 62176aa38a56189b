//! The bodies of ferry's fuzz targets: one function per parser of repository bytes.
//!
//! Each function takes the fuzzer's bytes, feeds them to ferry through the same calls the
//! repository, checker and restorer make on bytes loaded from a store, and returns `Ok` or
//! the error ferry gave. Encrypted formats are sealed first under a fixed key ([`fuzz_key`]),
//! so the fuzzer works on the plaintext layers behind a valid MAC; the `envelope` and `pack`
//! targets take raw sealed bytes instead and exercise the MAC check itself. Where a codec
//! promises a round trip, the function asserts it, so a broken promise is a crash.
//!
//! This file is both the library of the `ferry-fuzz` crate (used by `fuzz_targets/*.rs` and
//! the seed builder) and, through `#[path]`, a module of `tests/fuzz_regressions.rs`, which
//! replays the committed corpus and every finding on stable. It therefore uses nothing but
//! `ferry` and `std`. It does not generate seeds or run libFuzzer.

use std::sync::OnceLock;

use ferry::config::Config;
use ferry::crypto::Key;
use ferry::id::Id;
use ferry::index::{IndexFile, MasterIndex};
use ferry::keyfile::{KDF_SCRYPT, KdfParams, KeyFile, SALT_LEN};
use ferry::lockfile::{LockFile, Machine, Process};
use ferry::node::Node;
use ferry::pack::{self, PackedBlob};
use ferry::repository::blob::BlobCodec;
use ferry::snapshot::Snapshot;
use ferry::tree::Tree;
use ferry::unpacked;

/// What one target run ended with: `Ok`, or ferry's error message.
pub type Outcome = Result<(), String>;

/// A target body.
pub type Target = fn(&[u8]) -> Outcome;

/// Every target by name; the names are those of `fuzz_targets/<name>.rs` and of the
/// `corpus/<name>` and `regressions/<name>` directories.
pub const TARGETS: &[(&str, Target)] = &[
    ("envelope", envelope),
    ("master_key", master_key),
    ("keyfile", keyfile),
    ("config", config),
    ("unpacked", unpacked),
    ("index", index),
    ("snapshot", snapshot),
    ("lockfile", lockfile),
    ("pack", pack),
    ("pack_header", pack_header),
    ("blob", blob),
    ("tree", tree),
    ("node", node),
];

/// The password the `keyfile` target opens key files with; the seed builder wraps the fuzz key
/// under it.
pub const FUZZ_PASSWORD: &[u8] = b"ferry-fuzz";

/// Key files whose scrypt working set is above this are not opened by the `keyfile` target.
///
/// ferry itself accepts up to `keyfile::MAX_KDF_BYTES` (4 GiB), which is restic's policy and
/// right for real repositories, but one such run takes seconds to minutes, so a fuzz input
/// asking for it is only parsed and validated, never derived.
pub const CHEAP_KDF_BYTES: u64 = 1 << 20;

/// Key files whose scrypt work `N·r·p` is above this are not opened either (`p` multiplies
/// the time without adding to the table).
pub const CHEAP_KDF_WORK: u64 = 1 << 13;

/// The ceiling on decompressed unpacked files in every target that decompresses one.
///
/// ferry reads them with `unpacked::DEFAULT_LIMIT` (4 GiB), its policy for real repositories;
/// a zstd frame of a few hundred KB reaches that, which would only show up here as libFuzzer
/// running out of its 2 GiB. The decoding path is the same below any ceiling, so the targets
/// use a small one and a bomb ends as `TooLarge`.
pub const FUZZ_UNPACKED_LIMIT: usize = 8 << 20;

/// The `time` "now" the `lockfile` target judges staleness against (2024-05-01T00:00:00Z).
const NOW_UNIX_SECS: i64 = 1_714_521_600;

/// The host name the `lockfile` target claims to run on.
pub const FUZZ_HOST: &str = "ferry-fuzz";

/// The boot id the `lockfile` target claims for its machine.
pub const FUZZ_BOOT_ID: &str = "00000000-0000-4000-8000-00000000f022";

/// The fixed master key every sealed target input is sealed and opened with.
pub fn fuzz_key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut encrypt = [0u8; 32];
        let mut mac_k = [0u8; 16];
        let mut mac_r = [0u8; 16];
        for (i, b) in encrypt.iter_mut().enumerate() {
            *b = 0x40 + i as u8;
        }
        for (i, b) in mac_k.iter_mut().enumerate() {
            *b = 0x80 + i as u8;
        }
        for (i, b) in mac_r.iter_mut().enumerate() {
            *b = 0xc0 + i as u8;
        }
        Key::from_parts(encrypt, mac_k, mac_r)
    })
}

/// `IV ‖ CT ‖ MAC` of `plain` under [`fuzz_key`].
pub fn seal(plain: &[u8]) -> Vec<u8> {
    fuzz_key().seal(plain)
}

/// The input of the `blob` target: `uncompressed_length` (u32 LE) ‖ id ‖ payload, where the
/// payload is the blob's plaintext or its zstd frame, as stored before encryption.
pub fn blob_input(uncompressed_length: u32, id: &Id, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 32 + payload.len());
    out.extend_from_slice(&uncompressed_length.to_le_bytes());
    out.extend_from_slice(&id.0);
    out.extend_from_slice(payload);
    out
}

/// A pack of `blobs` (each already sealed) with its header sealed under [`fuzz_key`]: the
/// input of the `pack` target.
pub fn build_pack(blobs: &[(PackedBlob, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut entries = Vec::with_capacity(blobs.len());
    for (entry, sealed) in blobs {
        let mut entry = *entry;
        entry.offset = u32::try_from(out.len()).unwrap_or(u32::MAX);
        entry.length = u32::try_from(sealed.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(sealed);
        entries.push(entry);
    }
    let header = seal(&pack::encode_header(&entries));
    out.extend_from_slice(&header);
    out.extend_from_slice(
        &u32::try_from(header.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// What `Repository::load_unpacked` does with a loaded index, snapshot or lock file (with
/// [`FUZZ_UNPACKED_LIMIT`] for ferry's 4 GiB ceiling). The decompressed buffer must never
/// have reserved more than the ceiling.
fn open_unpacked(sealed: &[u8]) -> Result<Vec<u8>, String> {
    let plain = fuzz_key().open(sealed).map_err(err)?;
    let json = unpacked::decompress(plain, FUZZ_UNPACKED_LIMIT).map_err(err)?;
    assert!(
        json.len() <= FUZZ_UNPACKED_LIMIT && json.capacity() <= FUZZ_UNPACKED_LIMIT,
        "decompressed buffer past the limit"
    );
    Ok(json)
}

/// What `checker::read_pack` does to find a pack's header: length field, slice, open, parse.
fn read_pack_header(bytes: &[u8], allow_compressed: bool) -> Result<Vec<PackedBlob>, String> {
    let n = bytes.len();
    let tail = bytes.get(n.saturating_sub(4)..).unwrap_or_default();
    let hlen = pack::header_length(tail, n as u64).map_err(err)?;
    let start = usize::try_from(pack::header_offset(n as u64, hlen)).map_err(err)?;
    let sealed = bytes
        .get(start..n.saturating_sub(4))
        .ok_or_else(|| "header lies outside the pack".to_string())?;
    let plain = fuzz_key().open(sealed).map_err(err)?;
    pack::parse_header(&plain, allow_compressed).map_err(err)
}

/// Raw sealed bytes into `Key::open` and `Key::open_in_place` under the fuzz key; both must
/// agree.
pub fn envelope(data: &[u8]) -> Outcome {
    let key = fuzz_key();
    let opened = key.open(data);
    let mut copy = data.to_vec();
    let in_place = key.open_in_place(&mut copy).map(|p| p.to_vec());
    match (&opened, &in_place) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "open and open_in_place disagree"),
        (Err(_), Err(_)) => assert_eq!(copy, data, "failed open_in_place changed its input"),
        _ => panic!("open and open_in_place disagree on success"),
    }
    opened.map(drop).map_err(err)
}

/// The master key JSON found inside a key file, into `Key::from_master_json`.
pub fn master_key(data: &[u8]) -> Outcome {
    let key = Key::from_master_json(data).map_err(err)?;
    let again = Key::from_master_json(&key.to_master_json()).expect("master key json round trip");
    assert!(again == key, "master key json round trip changed the key");
    Ok(())
}

/// A key file (plain JSON) into `KeyFile::from_json`, then `KeyFile::open` with
/// [`FUZZ_PASSWORD`] unless scrypt would be expensive (see [`CHEAP_KDF_BYTES`]).
pub fn keyfile(data: &[u8]) -> Outcome {
    let file = KeyFile::from_json(data).map_err(err)?;
    let json = file.to_json();
    let again = KeyFile::from_json(&json).expect("key file json round trip");
    assert_eq!(again.to_json(), json, "key file json round trip");
    let KdfParams { n, r, p } = file.params();
    let work = n.saturating_mul(u64::from(r)).saturating_mul(u64::from(p));
    let expensive = file.params().memory_bytes() > CHEAP_KDF_BYTES || work > CHEAP_KDF_WORK;
    // `open` refuses a wrong KDF name, bad parameters and a bad salt before it runs scrypt, so
    // those inputs are opened whatever their cost; only the ones that would derive are skipped.
    if expensive
        && file.kdf == KDF_SCRYPT
        && file.params().validate().is_ok()
        && file.salt.len() == SALT_LEN
    {
        return Err("skipped: scrypt parameters too expensive to derive while fuzzing".into());
    }
    file.open(FUZZ_PASSWORD).map(drop).map_err(err)
}

/// A config plaintext, sealed, then opened and parsed as `Repository::open` does.
pub fn config(data: &[u8]) -> Outcome {
    let plain = fuzz_key().open(&seal(data)).map_err(err)?;
    let config = Config::from_json(&plain).map_err(err)?;
    let again = Config::from_json(&config.to_json()).expect("config json round trip");
    assert_eq!(again, config, "config json round trip");
    Ok(())
}

/// An unpacked file's plaintext (`0x02 ‖ zstd` or raw JSON), sealed, then opened and
/// decompressed.
pub fn unpacked(data: &[u8]) -> Outcome {
    open_unpacked(&seal(data)).map(drop)
}

/// An index file's plaintext, sealed, loaded as `Repository::load_index` does (version 2 and
/// version 1 rules), then added to a master index and looked up.
pub fn index(data: &[u8]) -> Outcome {
    let json = open_unpacked(&seal(data))?;
    let v1 = IndexFile::from_json(&json, false);
    let file = IndexFile::from_json(&json, true).map_err(err)?;
    if let Ok(v1) = v1 {
        assert_eq!(v1, file, "version 1 and 2 readings differ");
    }
    let again = IndexFile::from_json(&file.to_json(), true).expect("index json round trip");
    assert_eq!(again, file, "index json round trip");
    let mut master = MasterIndex::new();
    master.add_file(&file);
    for pack in &file.packs {
        for blob in &pack.blobs {
            assert!(
                master.lookup(blob.blob_type, &blob.id).is_some(),
                "indexed blob not found"
            );
        }
    }
    let listed: usize = master.packs().map(|(_, blobs)| blobs.len()).sum();
    assert!(
        listed >= master.len(),
        "packs() lists fewer blobs than the index holds"
    );
    assert_eq!(master.iter().count(), master.len());
    Ok(())
}

/// A snapshot file's plaintext, sealed, loaded as `Repository::load_snapshot` does, and its
/// time read as snapshot listing orders by it.
pub fn snapshot(data: &[u8]) -> Outcome {
    let json = open_unpacked(&seal(data))?;
    let snap = Snapshot::from_json(&json).map_err(err)?;
    let again = Snapshot::from_json(&snap.to_json()).expect("snapshot json round trip");
    assert_eq!(again, snap, "snapshot json round trip");
    let _ = ferry::repository::snapshot_time(&snap);
    Ok(())
}

/// A lock file's plaintext, sealed, loaded as `Repository::list_locks` does, and judged stale
/// or not on a fixed machine.
pub fn lockfile(data: &[u8]) -> Outcome {
    let json = open_unpacked(&seal(data))?;
    let lock = LockFile::from_json(&json).map_err(err)?;
    let again = LockFile::from_json(&lock.to_json()).expect("lock json round trip");
    assert_eq!(again, lock, "lock json round trip");
    // A deterministic stand-in for the process table: even pids are gone, odd ones run and
    // started at a tick derived from the pid, so every staleness rule is reachable.
    let probe = |pid: u32| {
        if pid.is_multiple_of(2) {
            Process::Gone
        } else {
            Process::Running {
                start_ticks: Some(u64::from(pid) * 7),
            }
        }
    };
    let here = Machine {
        hostname: FUZZ_HOST,
        boot_id: Some(FUZZ_BOOT_ID),
        probe: &probe,
    };
    let verdict = lock.staleness(NOW_UNIX_SECS, &here);
    assert_eq!(verdict.is_some(), lock.is_stale(NOW_UNIX_SECS, &here));
    Ok(())
}

/// A whole pack file (header sealed under the fuzz key) read as `check --read-data` reads it:
/// header length, header, then every blob the header lists.
pub fn pack(data: &[u8]) -> Outcome {
    let tail = data
        .get(data.len().saturating_sub(pack::TAIL_EAGER)..)
        .unwrap_or_default();
    let _ = pack::header_length(tail, data.len() as u64);
    let _ = read_pack_header(data, false);
    let header = read_pack_header(data, true)?;
    let mut codec = BlobCodec::new();
    let mut first_error = None;
    for b in &header {
        let start = b.offset as usize;
        let Some(sealed) = data.get(start..start.saturating_add(b.length as usize)) else {
            first_error.get_or_insert_with(|| format!("blob {} lies beyond the pack", b.id));
            continue;
        };
        let mut buf = sealed.to_vec();
        if let Err(e) = codec.open(fuzz_key(), b.id, &mut buf, b.uncompressed_length) {
            first_error.get_or_insert_with(|| e.to_string());
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// A plain pack header, parsed directly (version 2 and version 1 rules) and, sealed into a
/// pack of its own, read back as `check` reads a header.
pub fn pack_header(data: &[u8]) -> Outcome {
    let _ = pack::parse_header(data, false);
    let parsed = pack::parse_header(data, true).map_err(err)?;
    assert_eq!(pack::encode_header(&parsed), data, "pack header round trip");
    let _ = pack::pack_size(&parsed);
    let mut file = seal(data);
    let len = u32::try_from(file.len()).map_err(err)?;
    file.extend_from_slice(&len.to_le_bytes());
    let read = read_pack_header(&file, true)?;
    assert_eq!(
        read, parsed,
        "header read from a pack differs from the plain parse"
    );
    Ok(())
}

/// `uncompressed_length` (u32 LE) ‖ blob id ‖ payload: the payload is sealed and opened with
/// `BlobCodec::open` as the restorer and `check` open blobs.
pub fn blob(data: &[u8]) -> Outcome {
    let (head, payload) = data
        .split_first_chunk::<36>()
        .ok_or_else(|| "input shorter than the 36-byte blob prefix".to_string())?;
    let (ulen, id) = head.split_at(4);
    let ulen = u32::from_le_bytes(ulen.try_into().map_err(err)?);
    let id = Id(id.try_into().map_err(err)?);
    let mut sealed = seal(payload);
    let plain = BlobCodec::new()
        .open(fuzz_key(), id, &mut sealed, ulen)
        .map_err(err)?;
    assert_eq!(Id::hash(&plain), id, "opened blob does not hash to its id");
    Ok(())
}

/// A tree blob's plaintext, stored as an uncompressed blob and loaded as
/// `Repository::load_tree` does, then checked as the restorer checks trees. A tree ferry
/// decoded must encode into one it can decode again.
pub fn tree(data: &[u8]) -> Outcome {
    let id = Id::hash(data);
    let mut sealed = seal(data);
    let plain = BlobCodec::new()
        .open(fuzz_key(), id, &mut sealed, 0)
        .map_err(err)?;
    let tree = Tree::from_json(&plain).map_err(err)?;
    let order = tree.check_order();
    let names = tree.check_names();
    let again = Tree::from_json(&tree.to_json()).expect("tree json re-encoding decodes");
    assert_eq!(again.nodes.len(), tree.nodes.len(), "tree re-encoding");
    for (a, b) in again.nodes.iter().zip(&tree.nodes) {
        assert_eq!(a.name, b.name, "tree re-encoding changed a name");
    }
    order.and(names).map_err(err)
}

/// One node's JSON into `Node::from_json`; the node must encode into JSON that decodes again.
pub fn node(data: &[u8]) -> Outcome {
    let node = Node::from_json(data).map_err(err)?;
    let again = Node::from_json(&node.to_json()).expect("node json re-encoding decodes");
    assert_eq!(again.name, node.name, "node re-encoding changed the name");
    assert_eq!(
        again.content, node.content,
        "node re-encoding changed the content"
    );
    Ok(())
}
