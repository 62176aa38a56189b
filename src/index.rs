//! Index files and the in-memory index of every blob in a repository.
//!
//! [`IndexFile`] is the codec for one `index/<id>` file's JSON (after decryption and
//! decompression, which the caller does with the crypto and [`crate::unpacked`] modules).
//! [`MasterIndex`] is the union of all index files: it answers "in which pack, at which offset,
//! is blob (type, id)?" and, for `check`, lists every pack with the blobs the index files
//! claim for it. Neither does any I/O or decides which index files to load or rewrite.
//!
//! Index files may overlap: the same pack can be listed by several files, and the same blob
//! can live in several packs. The master index keeps the first location it was given for a
//! blob and remembers the others only for [`MasterIndex::packs`].

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::id::{BlobType, Id, PackId};
use crate::pack::PackedBlob;

/// One index file: the packs it describes and their blobs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexFile {
    /// Packs in file order.
    pub packs: Vec<IndexPack>,
}

/// One pack as an index file lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexPack {
    /// The pack's id (SHA-256 of the pack file).
    pub id: PackId,
    /// Its blobs, with explicit offsets, normally in pack order.
    pub blobs: Vec<PackedBlob>,
}

/// Why an index file's JSON could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Not JSON, or JSON of the wrong shape (unknown blob type word, wrong value types, missing
    /// fields).
    #[error("decoding index json: {0}")]
    Json(#[from] serde_json::Error),
    /// A blob carries `uncompressed_length` in a repository without compression.
    #[error(
        "decoding index json: blob {blob} in pack {pack} is compressed in a version 1 repository"
    )]
    CompressedInV1 {
        /// The pack listing the blob.
        pack: PackId,
        /// The blob.
        blob: Id,
    },
}

#[derive(Serialize, Deserialize, Clone, Copy)]
enum WireType {
    #[serde(rename = "data")]
    Data,
    #[serde(rename = "tree")]
    Tree,
}

impl From<BlobType> for WireType {
    fn from(t: BlobType) -> WireType {
        match t {
            BlobType::Data => WireType::Data,
            BlobType::Tree => WireType::Tree,
        }
    }
}

impl From<WireType> for BlobType {
    fn from(t: WireType) -> BlobType {
        match t {
            WireType::Data => BlobType::Data,
            WireType::Tree => BlobType::Tree,
        }
    }
}

#[derive(Serialize)]
struct IndexOut<'a> {
    packs: Vec<PackOut<'a>>,
}

#[derive(Serialize)]
struct PackOut<'a> {
    id: &'a PackId,
    blobs: Vec<BlobWire>,
}

#[derive(Serialize, Deserialize)]
struct BlobWire {
    id: Id,
    #[serde(rename = "type")]
    blob_type: WireType,
    offset: u32,
    length: u32,
    #[serde(
        default,
        skip_serializing_if = "crate::gojson::is_zero",
        deserialize_with = "crate::gojson::null_as_default"
    )]
    uncompressed_length: u32,
}

#[derive(Deserialize)]
struct IndexIn {
    #[serde(default, deserialize_with = "crate::gojson::null_as_default")]
    packs: Vec<PackIn>,
}

#[derive(Deserialize)]
struct PackIn {
    id: PackId,
    #[serde(default, deserialize_with = "crate::gojson::null_as_default")]
    blobs: Vec<BlobWire>,
}

impl IndexFile {
    /// The JSON restic writes, followed by a newline:
    /// `{"packs":[{"id":..,"blobs":[{"id":..,"type":"data"|"tree","offset":N,"length":N,
    /// "uncompressed_length":N}]}]}`, with `uncompressed_length` omitted when 0. An empty
    /// blob list is written as `[]`.
    pub fn to_json(&self) -> Vec<u8> {
        let out = IndexOut {
            packs: self
                .packs
                .iter()
                .map(|p| PackOut {
                    id: &p.id,
                    blobs: p
                        .blobs
                        .iter()
                        .map(|b| BlobWire {
                            id: b.id,
                            blob_type: b.blob_type.into(),
                            offset: b.offset,
                            length: b.length,
                            uncompressed_length: b.uncompressed_length,
                        })
                        .collect(),
                })
                .collect(),
        };
        // Serialising plain structs of strings and integers into a Vec cannot fail.
        let mut json = serde_json::to_vec(&out).expect("index json serialisation");
        json.push(b'\n');
        json
    }

    /// Parses an index file's JSON.
    ///
    /// Unknown fields are ignored: restic's obsolete `supersedes` and rustic's per-pack `time`
    /// and `size` and top-level `packs_to_delete` (whose packs, like restic, this does not add
    /// to the index). `null` lists read as empty. The blob type must be exactly `"data"` or
    /// `"tree"`. With `allow_compressed == false` (a version 1 repository) a nonzero
    /// `uncompressed_length` is an error. Lengths and offsets are not checked for consistency
    /// with each other; `check` does that against the pack files.
    pub fn from_json(bytes: &[u8], allow_compressed: bool) -> Result<IndexFile, IndexError> {
        let parsed: IndexIn = serde_json::from_slice(bytes)?;
        let mut packs = Vec::with_capacity(parsed.packs.len());
        for pack in parsed.packs {
            let mut blobs = Vec::with_capacity(pack.blobs.len());
            for b in pack.blobs {
                if b.uncompressed_length != 0 && !allow_compressed {
                    return Err(IndexError::CompressedInV1 {
                        pack: pack.id,
                        blob: b.id,
                    });
                }
                blobs.push(PackedBlob {
                    blob_type: b.blob_type.into(),
                    id: b.id,
                    offset: b.offset,
                    length: b.length,
                    uncompressed_length: b.uncompressed_length,
                });
            }
            packs.push(IndexPack { id: pack.id, blobs });
        }
        Ok(IndexFile { packs })
    }

    /// Number of blob entries over all packs.
    pub fn blob_count(&self) -> usize {
        self.packs.iter().map(|p| p.blobs.len()).sum()
    }
}

/// Where a blob lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    /// The pack holding it.
    pub pack: PackId,
    /// Its offset in the pack.
    pub offset: u32,
    /// Its stored (encrypted) length.
    pub length: u32,
    /// Its uncompressed plaintext length, 0 when not compressed.
    pub uncompressed_length: u32,
}

impl BlobLocation {
    /// The plaintext size: `uncompressed_length` when compressed, otherwise `length - 32`
    /// (saturating at 0).
    pub fn plaintext_len(&self) -> u32 {
        if self.uncompressed_length != 0 {
            self.uncompressed_length
        } else {
            self.length.saturating_sub(crate::pack::CRYPTO_OVERHEAD)
        }
    }
}

/// A location with the pack as an index into [`MasterIndex::pack_ids`]: 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Slot {
    pack: u32,
    offset: u32,
    length: u32,
    uncompressed_length: u32,
}

/// A hasher for ids, which are SHA-256 outputs and therefore already uniform: it keeps the
/// first 8 bytes written and mixes them with per-map random keys, so that an index file with
/// crafted ids sharing low bits cannot degrade the map to linear probing.
#[derive(Clone, Copy)]
pub struct IdHashBuilder {
    k0: u64,
    k1: u64,
}

impl Default for IdHashBuilder {
    fn default() -> IdHashBuilder {
        let seed = std::collections::hash_map::RandomState::new();
        IdHashBuilder {
            k0: seed.hash_one(0u8),
            k1: seed.hash_one(1u8) | 1,
        }
    }
}

impl BuildHasher for IdHashBuilder {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            keys: *self,
            state: 0,
        }
    }
}

/// The hasher [`IdHashBuilder`] builds.
pub struct IdHasher {
    keys: IdHashBuilder,
    state: u64,
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // `Id` hashes as a length prefix and then its 32 bytes; 8 bytes of the digest are
        // plenty of entropy, shorter writes (the prefix, other keys) are folded in whole.
        match bytes.first_chunk::<8>() {
            Some(head) => self.state = self.state.rotate_left(29) ^ u64::from_le_bytes(*head),
            None => {
                for &b in bytes {
                    self.state = self.state.rotate_left(8) ^ u64::from(b);
                }
            }
        }
    }

    fn finish(&self) -> u64 {
        let product = u128::from(self.state ^ self.keys.k0) * u128::from(self.keys.k1);
        (product as u64) ^ ((product >> 64) as u64)
    }
}

type IdMap<K, V> = HashMap<K, V, IdHashBuilder>;

/// The union of all index files: (type, id) → location.
///
/// Memory per unique blob is one 32-byte id and a 16-byte location (the pack is an index into
/// a list of pack ids) plus the hash table's slack. Blobs found in a second pack (duplicates)
/// are kept in a side list and only show up in [`MasterIndex::packs`].
#[derive(Default)]
pub struct MasterIndex {
    data: IdMap<Id, Slot>,
    tree: IdMap<Id, Slot>,
    pack_ids: Vec<PackId>,
    pack_numbers: IdMap<PackId, u32>,
    duplicates: Vec<(BlobType, Id, Slot)>,
    /// Per-pack blob lists, built by the first [`MasterIndex::packs`] call after a change.
    pack_lists: OnceLock<Vec<Vec<PackedBlob>>>,
}

impl MasterIndex {
    /// An empty index.
    pub fn new() -> MasterIndex {
        MasterIndex::default()
    }

    fn pack_number(&mut self, pack: PackId) -> u32 {
        let next = self.pack_ids.len();
        *self.pack_numbers.entry(pack).or_insert_with(|| {
            // Four billion packs would need far more memory than the rest of this index.
            let number = u32::try_from(next).expect("fewer than 2^32 packs");
            self.pack_ids.push(pack);
            number
        })
    }

    /// Adds every blob of `pack`.
    ///
    /// A blob already known at another location keeps its first location; the new one is
    /// still recorded for [`MasterIndex::packs`]. Adding the same pack and blobs again (index
    /// files that overlap) changes nothing visible. A pack with no blobs is still recorded.
    pub fn add_pack(&mut self, pack: PackId, blobs: &[PackedBlob]) {
        self.pack_lists = OnceLock::new();
        let number = self.pack_number(pack);
        for blob in blobs {
            let slot = Slot {
                pack: number,
                offset: blob.offset,
                length: blob.length,
                uncompressed_length: blob.uncompressed_length,
            };
            let map = match blob.blob_type {
                BlobType::Data => &mut self.data,
                BlobType::Tree => &mut self.tree,
            };
            match map.entry(blob.id) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(slot);
                }
                std::collections::hash_map::Entry::Occupied(o) => {
                    if *o.get() != slot {
                        self.duplicates.push((blob.blob_type, blob.id, slot));
                    }
                }
            }
        }
    }

    /// Adds every pack of an index file, in file order.
    pub fn add_file(&mut self, file: &IndexFile) {
        for pack in &file.packs {
            self.add_pack(pack.id, &pack.blobs);
        }
    }

    fn map(&self, blob_type: BlobType) -> &IdMap<Id, Slot> {
        match blob_type {
            BlobType::Data => &self.data,
            BlobType::Tree => &self.tree,
        }
    }

    fn location(&self, slot: &Slot) -> Option<BlobLocation> {
        let pack = *self.pack_ids.get(usize::try_from(slot.pack).ok()?)?;
        Some(BlobLocation {
            pack,
            offset: slot.offset,
            length: slot.length,
            uncompressed_length: slot.uncompressed_length,
        })
    }

    /// The first location recorded for blob (type, id).
    pub fn lookup(&self, blob_type: BlobType, id: &Id) -> Option<BlobLocation> {
        self.map(blob_type)
            .get(id)
            .and_then(|slot| self.location(slot))
    }

    /// Whether blob (type, id) is in some pack.
    pub fn contains(&self, blob_type: BlobType, id: &Id) -> bool {
        self.map(blob_type).contains_key(id)
    }

    /// Number of distinct blobs (a data and a tree blob with the same id count twice).
    pub fn len(&self) -> usize {
        self.data.len() + self.tree.len()
    }

    /// Whether no blob is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of distinct packs added.
    pub fn pack_count(&self) -> usize {
        self.pack_ids.len()
    }

    /// The ids of all packs, in the order they were first added.
    pub fn pack_ids(&self) -> &[PackId] {
        &self.pack_ids
    }

    /// Every blob with its first location, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (BlobType, Id, BlobLocation)> + '_ {
        let data = self.data.iter().map(|(id, s)| (BlobType::Data, *id, s));
        let tree = self.tree.iter().map(|(id, s)| (BlobType::Tree, *id, s));
        data.chain(tree)
            .filter_map(|(t, id, s)| self.location(s).map(|loc| (t, id, loc)))
    }

    /// Every pack with all blobs the index files list for it, duplicates included, for
    /// `check` to compare with pack sizes and headers.
    ///
    /// Each pack appears once, in the order it was first added; its blobs are sorted by offset
    /// (then type, id and length), with exact repeats removed. The per-pack lists are not
    /// kept while blobs are being added: the first call builds them in one pass over all
    /// blobs and caches them until the next [`MasterIndex::add_pack`], so only `check` pays
    /// their memory.
    pub fn packs(&self) -> impl Iterator<Item = (PackId, &[PackedBlob])> + '_ {
        let lists = self.pack_lists.get_or_init(|| self.build_pack_lists());
        self.pack_ids
            .iter()
            .copied()
            .zip(lists.iter().map(Vec::as_slice))
    }

    fn build_pack_lists(&self) -> Vec<Vec<PackedBlob>> {
        let mut lists: Vec<Vec<PackedBlob>> = vec![Vec::new(); self.pack_ids.len()];
        let all = self
            .data
            .iter()
            .map(|(id, s)| (BlobType::Data, id, s))
            .chain(self.tree.iter().map(|(id, s)| (BlobType::Tree, id, s)))
            .chain(self.duplicates.iter().map(|(t, id, s)| (*t, id, s)));
        for (blob_type, id, slot) in all {
            let Some(list) = usize::try_from(slot.pack)
                .ok()
                .and_then(|n| lists.get_mut(n))
            else {
                continue;
            };
            list.push(PackedBlob {
                blob_type,
                id: *id,
                offset: slot.offset,
                length: slot.length,
                uncompressed_length: slot.uncompressed_length,
            });
        }
        for blobs in &mut lists {
            blobs.sort_unstable_by_key(|b| (b.offset, b.blob_type, b.id, b.length));
            blobs.dedup();
            blobs.shrink_to_fit();
        }
        lists
    }
}

/// Helpers for tests that drive the `restic` program; shared by the codec modules' tests.
#[cfg(test)]
pub(crate) mod restic_cli {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A restic repository in a temporary directory, with one backup of a small tree.
    pub struct Repo {
        /// Keeps the temporary directory alive for the repository's lifetime.
        pub _dir: tempfile::TempDir,
        pub path: PathBuf,
    }

    /// Whether `restic` is on PATH; prints a note when it is not.
    pub fn available() -> bool {
        let ok = Command::new("restic")
            .arg("version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("note: restic is not on PATH, skipping the interop test");
        }
        ok
    }

    /// A `restic` command for `repo` with password `pw` and no cache.
    pub fn command(repo: &Path) -> Command {
        let mut cmd = Command::new("restic");
        cmd.arg("-r")
            .arg(repo)
            .arg("--no-cache")
            .env("RESTIC_PASSWORD", "pw")
            .env_remove("RESTIC_REPOSITORY");
        cmd
    }

    /// Runs restic with `args` and returns its stdout, panicking with stderr on failure.
    pub fn run(repo: &Path, args: &[&str]) -> Vec<u8> {
        let out = command(repo).args(args).output().expect("running restic");
        assert!(
            out.status.success(),
            "restic {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The ids `restic list <kind>` prints.
    pub fn list(repo: &Path, kind: &str) -> Vec<String> {
        String::from_utf8(run(repo, &["--no-lock", "list", kind]))
            .expect("utf-8 ids")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Initialises a repository and backs up a few files, one of them large enough to be
    /// split into several blobs.
    pub fn with_backup() -> Repo {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("repo");
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).expect("mkdir");
        std::fs::write(src.join("a.txt"), b"hello\n").expect("write");
        std::fs::write(src.join("sub/b.txt"), b"world\n").expect("write");
        std::fs::write(src.join("empty"), b"").expect("write");
        // Pseudo-random bytes so that the chunker cuts several blobs.
        let mut x = 0x1234_5678_9abc_def0u64;
        let big: Vec<u8> = (0..3 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(src.join("sub/big.bin"), big).expect("write");
        run(&path, &["init"]);
        let src_text = src.to_str().expect("utf-8 temp path");
        run(&path, &["backup", "--host", "ferry-test", src_text]);
        Repo { _dir: dir, path }
    }

    /// Removes insignificant whitespace from JSON (outside strings), to compare restic's
    /// indented output with compact output byte for byte.
    pub fn compact(json: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(json.len());
        let (mut in_string, mut escaped) = (false, false);
        for &b in json {
            if in_string {
                out.push(b);
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
            } else if !b.is_ascii_whitespace() {
                if b == b'"' {
                    in_string = true;
                }
                out.push(b);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blob(blob_type: BlobType, seed: u8, offset: u32, length: u32, unc: u32) -> PackedBlob {
        PackedBlob {
            blob_type,
            id: Id([seed; 32]),
            offset,
            length,
            uncompressed_length: unc,
        }
    }

    #[test]
    fn exact_json_form() {
        let file = IndexFile {
            packs: vec![
                IndexPack {
                    id: PackId(Id([0xab; 32])),
                    blobs: vec![
                        blob(BlobType::Data, 1, 0, 100, 0),
                        blob(BlobType::Tree, 2, 100, 50, 300),
                    ],
                },
                IndexPack {
                    id: PackId(Id([0xcd; 32])),
                    blobs: vec![],
                },
            ],
        };
        let json = String::from_utf8(file.to_json()).unwrap();
        let expected = format!(
            "{{\"packs\":[{{\"id\":\"{}\",\"blobs\":[{{\"id\":\"{}\",\"type\":\"data\",\"offset\":0,\"length\":100}},{{\"id\":\"{}\",\"type\":\"tree\",\"offset\":100,\"length\":50,\"uncompressed_length\":300}}]}},{{\"id\":\"{}\",\"blobs\":[]}}]}}\n",
            "ab".repeat(32),
            "01".repeat(32),
            "02".repeat(32),
            "cd".repeat(32)
        );
        assert_eq!(json, expected);
        assert!(json.ends_with("}\n"));
        assert_eq!(IndexFile::from_json(json.as_bytes(), true).unwrap(), file);
        assert_eq!(IndexFile::default().to_json(), b"{\"packs\":[]}\n");
    }

    #[test]
    fn tolerates_extra_fields_and_nulls() {
        let id = "11".repeat(32);
        let json = format!(
            r#"{{"supersedes":["{id}"],"packs":[{{"id":"{id}","time":"2024-01-01T00:00:00Z","size":123,
               "blobs":[{{"id":"{id}","type":"tree","offset":0,"length":40,"uncompressed_length":null,"extra":{{"x":[1]}}}}]}},
               {{"id":"{id}","blobs":null}}],"packs_to_delete":[{{"id":"{id}","blobs":[]}}]}}"#
        );
        let file = IndexFile::from_json(json.as_bytes(), false).unwrap();
        assert_eq!(file.packs.len(), 2);
        assert_eq!(file.packs[0].blobs[0].uncompressed_length, 0);
        assert!(file.packs[1].blobs.is_empty());
        assert_eq!(file.blob_count(), 1);
        assert_eq!(
            IndexFile::from_json(b"{\"packs\":null}", true).unwrap(),
            IndexFile::default()
        );
        assert_eq!(
            IndexFile::from_json(b"{}", true).unwrap(),
            IndexFile::default()
        );
    }

    #[test]
    fn rejects_bad_input() {
        let id = "11".repeat(32);
        let cases = [
            format!(
                r#"{{"packs":[{{"id":"{id}","blobs":[{{"id":"{id}","type":"Data","offset":0,"length":40}}]}}]}}"#
            ),
            format!(
                r#"{{"packs":[{{"id":"{id}","blobs":[{{"id":"{id}","type":"data","offset":-1,"length":40}}]}}]}}"#
            ),
            format!(
                r#"{{"packs":[{{"id":"{id}","blobs":[{{"id":"{id}","type":"data","offset":0,"length":"40"}}]}}]}}"#
            ),
            format!(
                r#"{{"packs":[{{"id":"{id}","blobs":[{{"id":"{id}","type":"data","offset":0,"length":4294967296}}]}}]}}"#
            ),
            format!(
                r#"{{"packs":[{{"id":"{id}","blobs":[{{"id":"xyz","type":"data","offset":0,"length":40}}]}}]}}"#
            ),
            format!(
                r#"{{"packs":[{{"id":"{id}","blobs":[{{"id":"{id}","type":"data","length":40}}]}}]}}"#
            ),
            r#"{"packs":[{"blobs":[]}]}"#.to_owned(),
            r#"{"packs":{}}"#.to_owned(),
            r#"[{"id":"x"}]"#.to_owned(),
            r#"{"packs":["#.to_owned(),
            String::new(),
        ];
        for case in cases {
            let err = IndexFile::from_json(case.as_bytes(), true).unwrap_err();
            assert!(
                err.to_string().starts_with("decoding index json"),
                "{case}: {err}"
            );
        }
        let v2 = format!(
            r#"{{"packs":[{{"id":"{id}","blobs":[{{"id":"{id}","type":"data","offset":0,"length":40,"uncompressed_length":9}}]}}]}}"#
        );
        assert!(IndexFile::from_json(v2.as_bytes(), true).is_ok());
        assert!(matches!(
            IndexFile::from_json(v2.as_bytes(), false),
            Err(IndexError::CompressedInV1 { .. })
        ));
    }

    #[test]
    fn master_index_keeps_first_location_and_lists_duplicates() {
        let p1 = PackId(Id([1; 32]));
        let p2 = PackId(Id([2; 32]));
        let shared = blob(BlobType::Data, 9, 0, 100, 0);
        let mut index = MasterIndex::new();
        index.add_pack(p1, &[shared, blob(BlobType::Data, 8, 100, 40, 0)]);
        index.add_pack(
            p2,
            &[
                blob(BlobType::Tree, 9, 0, 60, 90),
                PackedBlob {
                    offset: 60,
                    ..shared
                },
            ],
        );
        // The same pack listed again by an overlapping index file.
        index.add_pack(p1, &[shared]);
        index.add_pack(PackId(Id([3; 32])), &[]);

        assert_eq!(index.len(), 3);
        assert_eq!(index.pack_count(), 3);
        assert!(!index.is_empty());
        let loc = index.lookup(BlobType::Data, &Id([9; 32])).unwrap();
        assert_eq!(loc.pack, p1);
        assert_eq!(loc.offset, 0);
        assert_eq!(loc.plaintext_len(), 68);
        let tree = index.lookup(BlobType::Tree, &Id([9; 32])).unwrap();
        assert_eq!(
            (tree.pack, tree.uncompressed_length, tree.plaintext_len()),
            (p2, 90, 90)
        );
        assert!(!index.contains(BlobType::Tree, &Id([8; 32])));
        assert!(index.lookup(BlobType::Data, &Id([7; 32])).is_none());
        assert_eq!(index.iter().count(), 3);

        let packs: Vec<_> = index.packs().collect();
        assert_eq!(packs.len(), 3);
        assert_eq!(packs[0].0, p1);
        assert_eq!(
            packs[0].1.iter().map(|b| b.offset).collect::<Vec<_>>(),
            [0, 100]
        );
        assert_eq!(packs[1].0, p2);
        assert_eq!(packs[1].1.len(), 2);
        assert_eq!(packs[1].1[1].offset, 60);
        assert_eq!(packs[1].1[1].blob_type, BlobType::Data);
        assert!(packs[2].1.is_empty());

        // Adding after a packs() call invalidates the cached lists.
        index.add_pack(p1, &[blob(BlobType::Tree, 5, 140, 40, 0)]);
        let again: Vec<_> = index.packs().collect();
        assert_eq!(again.len(), 3);
        assert_eq!(again[0].1.len(), 3);
    }

    #[test]
    fn hasher_spreads_ids() {
        let build = IdHashBuilder::default();
        let a = build.hash_one(Id([0; 32]));
        let b = build.hash_one(Id([1; 32]));
        assert_ne!(a, b);
        assert_eq!(a, build.hash_one(Id([0; 32])));
    }

    #[test]
    fn restic_written_index_parses() {
        if !restic_cli::available() {
            return;
        }
        let repo = restic_cli::with_backup();
        let mut index = MasterIndex::new();
        let mut files = Vec::new();
        for id in restic_cli::list(&repo.path, "index") {
            let json = restic_cli::run(&repo.path, &["cat", "index", &id]);
            let file = IndexFile::from_json(&json, true)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json)));
            // Our encoding of what we parsed is restic's JSON, modulo whitespace.
            assert_eq!(
                restic_cli::compact(&file.to_json()),
                restic_cli::compact(&json),
                "re-encoded index differs"
            );
            index.add_file(&file);
            files.push(file);
        }
        assert!(!files.is_empty());
        let mut total = 0;
        for file in &files {
            for pack in &file.packs {
                for b in &pack.blobs {
                    total += 1;
                    let loc = index.lookup(b.blob_type, &b.id).expect("listed blob");
                    assert_eq!(loc.pack, pack.id);
                    assert_eq!((loc.offset, loc.length), (b.offset, b.length));
                    assert_eq!(loc.uncompressed_length, b.uncompressed_length);
                }
            }
        }
        assert_eq!(index.len(), total);
        assert!(
            total >= 5,
            "a few data blobs and trees expected, got {total}"
        );
        assert!(
            files
                .iter()
                .flat_map(|f| &f.packs)
                .flat_map(|p| &p.blobs)
                .any(|b| b.is_compressed())
        );
        let listed: std::collections::HashSet<String> =
            restic_cli::list(&repo.path, "packs").into_iter().collect();
        let indexed: std::collections::HashSet<String> =
            index.packs().map(|(p, _)| p.to_hex()).collect();
        assert_eq!(listed, indexed);
        for (pack, blobs) in index.packs() {
            let hex = pack.to_hex();
            let file = repo.path.join("data").join(&hex[..2]).join(&hex);
            let bytes = std::fs::read(&file).expect("pack file");
            let size = bytes.len() as u64;
            assert_eq!(size, crate::pack::pack_size(blobs), "pack {hex}");
            let tail_start = bytes.len().saturating_sub(crate::pack::TAIL_EAGER);
            let header_len = crate::pack::header_length(&bytes[tail_start..], size).unwrap();
            let expected = crate::pack::plain_header_len(blobs) + 32;
            assert_eq!(header_len as usize, expected, "pack {hex}");
            // The blobs the index lists are contiguous from 0 up to the header.
            let mut end = 0u64;
            for b in blobs {
                assert_eq!(u64::from(b.offset), end, "pack {hex}");
                end = b.end();
            }
            assert_eq!(
                end,
                crate::pack::header_offset(size, header_len),
                "pack {hex}"
            );
        }
    }

    fn arb_blob() -> impl Strategy<Value = PackedBlob> {
        (
            any::<bool>(),
            any::<[u8; 32]>(),
            any::<u32>(),
            any::<u32>(),
            prop_oneof![Just(0u32), any::<u32>()],
        )
            .prop_map(|(tree, id, offset, length, unc)| PackedBlob {
                blob_type: if tree { BlobType::Tree } else { BlobType::Data },
                id: Id(id),
                offset,
                length,
                uncompressed_length: unc,
            })
    }

    proptest! {
        #[test]
        fn json_round_trip(packs in proptest::collection::vec(
            (any::<[u8; 32]>(), proptest::collection::vec(arb_blob(), 0..8)), 0..6)) {
            let file = IndexFile {
                packs: packs.into_iter().map(|(id, blobs)| IndexPack { id: PackId(Id(id)), blobs }).collect(),
            };
            let json = file.to_json();
            prop_assert_eq!(json.last(), Some(&b'\n'));
            prop_assert_eq!(IndexFile::from_json(&json, true).unwrap(), file.clone());
            let mut index = MasterIndex::new();
            index.add_file(&file);
            for pack in &file.packs {
                for b in &pack.blobs {
                    prop_assert!(index.contains(b.blob_type, &b.id));
                }
            }
        }

        #[test]
        fn hostile_json_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = IndexFile::from_json(&data, true);
        }
    }
}
