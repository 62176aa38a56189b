//! Snapshot files (`snapshots/<id>`): the JSON codec.
//!
//! A snapshot names the root tree of one backup and describes it (time, paths, host, tags,
//! summary). This module converts between [`Snapshot`] and the JSON restic writes, with Go's
//! field order, omitempty rules and string escaping, so that restic reads our snapshots and we
//! read restic's (and rustic's, whose extra fields are ignored). It does not compress, encrypt,
//! name or store the file, and it keeps times as the text stored, without interpreting them.

use serde::{Deserialize, Serialize};

use crate::id::{SnapshotId, TreeId};

/// One snapshot as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When the backup started, RFC 3339 with up to nanoseconds, as stored.
    pub time: String,
    /// The snapshot this one was based on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<SnapshotId>,
    /// The root tree; it holds the full path of each backed-up directory.
    pub tree: TreeId,
    /// The absolute paths backed up.
    #[serde(deserialize_with = "crate::gojson::null_as_default")]
    pub paths: Vec<String>,
    /// Host name (restic's `--host`).
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "crate::gojson::null_as_default"
    )]
    pub hostname: String,
    /// User name of the process that made the backup.
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "crate::gojson::null_as_default"
    )]
    pub username: String,
    /// Its user id; 0 is omitted.
    #[serde(
        default,
        skip_serializing_if = "crate::gojson::is_zero",
        deserialize_with = "crate::gojson::null_as_default"
    )]
    pub uid: u32,
    /// Its group id; 0 is omitted.
    #[serde(
        default,
        skip_serializing_if = "crate::gojson::is_zero",
        deserialize_with = "crate::gojson::null_as_default"
    )]
    pub gid: u32,
    /// Exclude patterns in effect.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::gojson::null_as_default"
    )]
    pub excludes: Vec<String>,
    /// Tags.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "crate::gojson::null_as_default"
    )]
    pub tags: Vec<String>,
    /// For a rewritten snapshot, the id of the first version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<SnapshotId>,
    /// The writing program and version, e.g. `restic 0.17.3`.
    #[serde(
        default,
        skip_serializing_if = "String::is_empty",
        deserialize_with = "crate::gojson::null_as_default"
    )]
    pub program_version: String,
    /// Backup statistics, written by restic since 0.17.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<SnapshotSummary>,
}

/// Backup statistics stored in a snapshot (restic 0.17's field names and order). Missing
/// fields read as zero or empty, as Go's decoder leaves them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotSummary {
    /// When reading started, RFC 3339.
    pub backup_start: String,
    /// When the snapshot was complete, RFC 3339.
    pub backup_end: String,
    /// Files not in the parent snapshot.
    pub files_new: u64,
    /// Files whose content or metadata changed.
    pub files_changed: u64,
    /// Files reused from the parent.
    pub files_unmodified: u64,
    /// Directories not in the parent snapshot.
    pub dirs_new: u64,
    /// Directories that changed.
    pub dirs_changed: u64,
    /// Directories reused from the parent.
    pub dirs_unmodified: u64,
    /// Data blobs added to the repository.
    pub data_blobs: u64,
    /// Tree blobs added to the repository.
    pub tree_blobs: u64,
    /// Plaintext bytes added.
    pub data_added: u64,
    /// Bytes added after compression and encryption.
    pub data_added_packed: u64,
    /// Files looked at.
    pub total_files_processed: u64,
    /// Bytes looked at.
    pub total_bytes_processed: u64,
}

/// Why a snapshot file's JSON could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("decoding snapshot json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Snapshot {
    /// The JSON restic's `json.Marshal` writes: Go field order (time, parent, tree, paths,
    /// hostname, username, uid, gid, excludes, tags, original, program_version, summary),
    /// empty optional fields omitted, `<`, `>`, `&`, U+2028 and U+2029 escaped as Go does, no
    /// trailing newline. `paths` is always written, `[]` when empty.
    pub fn to_json(&self) -> Vec<u8> {
        crate::gojson::go_json(self)
    }

    /// Parses a snapshot file's JSON. Unknown fields (rustic's `label`, `description`,
    /// `delete`, `id`, ...) are ignored; `null` strings, lists and numbers read as empty.
    /// `time`, `tree` and `paths` are required.
    pub fn from_json(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use proptest::prelude::*;

    fn minimal() -> Snapshot {
        Snapshot {
            time: "2024-05-01T10:00:00.123456789Z".into(),
            parent: None,
            tree: TreeId(Id([0xaa; 32])),
            paths: vec!["/data".into()],
            hostname: String::new(),
            username: String::new(),
            uid: 0,
            gid: 0,
            excludes: vec![],
            tags: vec![],
            original: None,
            program_version: String::new(),
            summary: None,
        }
    }

    #[test]
    fn minimal_snapshot_omits_empty_fields() {
        let json = String::from_utf8(minimal().to_json()).unwrap();
        assert_eq!(
            json,
            format!(
                r#"{{"time":"2024-05-01T10:00:00.123456789Z","tree":"{}","paths":["/data"]}}"#,
                "aa".repeat(32)
            )
        );
        let empty_paths = Snapshot {
            paths: vec![],
            ..minimal()
        };
        assert!(
            String::from_utf8(empty_paths.to_json())
                .unwrap()
                .ends_with(r#""paths":[]}"#)
        );
    }

    #[test]
    fn full_snapshot_in_go_field_order() {
        let sn = Snapshot {
            parent: Some(SnapshotId(Id([1; 32]))),
            hostname: "velero".into(),
            username: "root".into(),
            uid: 1000,
            gid: 100,
            excludes: vec!["*.tmp".into()],
            tags: vec!["a&b".into(), "<x>".into()],
            original: Some(SnapshotId(Id([2; 32]))),
            program_version: "ferry 0.1.0".into(),
            summary: Some(SnapshotSummary {
                backup_start: "2024-05-01T10:00:00Z".into(),
                backup_end: "2024-05-01T10:00:05.5Z".into(),
                files_new: 1,
                files_changed: 2,
                files_unmodified: 3,
                dirs_new: 4,
                dirs_changed: 5,
                dirs_unmodified: 6,
                data_blobs: 7,
                tree_blobs: 8,
                data_added: 9,
                data_added_packed: 10,
                total_files_processed: 11,
                total_bytes_processed: 12,
            }),
            ..minimal()
        };
        let json = String::from_utf8(sn.to_json()).unwrap();
        let expected = format!(
            concat!(
                r#"{{"time":"2024-05-01T10:00:00.123456789Z","parent":"{p}","tree":"{t}","paths":["/data"],"#,
                r#""hostname":"velero","username":"root","uid":1000,"gid":100,"excludes":["*.tmp"],"#,
                r#""tags":["a\u0026b","\u003cx\u003e"],"original":"{o}","program_version":"ferry 0.1.0","#,
                r#""summary":{{"backup_start":"2024-05-01T10:00:00Z","backup_end":"2024-05-01T10:00:05.5Z","#,
                r#""files_new":1,"files_changed":2,"files_unmodified":3,"dirs_new":4,"dirs_changed":5,"#,
                r#""dirs_unmodified":6,"data_blobs":7,"tree_blobs":8,"data_added":9,"data_added_packed":10,"#,
                r#""total_files_processed":11,"total_bytes_processed":12}}}}"#
            ),
            p = "01".repeat(32),
            t = "aa".repeat(32),
            o = "02".repeat(32)
        );
        assert_eq!(json, expected);
        assert_eq!(Snapshot::from_json(json.as_bytes()).unwrap(), sn);
    }

    #[test]
    fn go_escapes_survive_round_trip() {
        let sn = Snapshot {
            paths: vec!["/a\u{2028}b\u{2029}\"\\\n\u{1}<&>é".into()],
            ..minimal()
        };
        let json = String::from_utf8(sn.to_json()).unwrap();
        assert!(
            json.contains(r#"/a\u2028b\u2029\"\\\n\u0001\u003c\u0026\u003eé"#),
            "{json}"
        );
        assert_eq!(Snapshot::from_json(json.as_bytes()).unwrap(), sn);
    }

    #[test]
    fn tolerates_rustic_fields_and_nulls() {
        let json = format!(
            r#"{{"time":"2024-01-01T00:00:00+02:00","tree":"{t}","paths":null,"hostname":"h",
               "label":"l","description":"d","delete":"Never","id":"{t}","tags":null,
               "summary":{{"files_new":3,"backup_start":"2024-01-01T00:00:00Z","future_field":1}}}}"#,
            t = "aa".repeat(32)
        );
        let sn = Snapshot::from_json(json.as_bytes()).unwrap();
        assert!(sn.paths.is_empty());
        assert!(sn.tags.is_empty());
        assert_eq!(sn.hostname, "h");
        let summary = sn.summary.unwrap();
        assert_eq!(summary.files_new, 3);
        assert_eq!(summary.backup_end, "");
    }

    #[test]
    fn rejects_wrong_types_and_missing_fields() {
        let t = "aa".repeat(32);
        let cases = [
            format!(r#"{{"time":"x","tree":"{t}","paths":["/"],"uid":-1}}"#),
            format!(r#"{{"time":"x","tree":"{t}","paths":["/"],"uid":"0"}}"#),
            format!(r#"{{"time":"x","tree":"{t}","paths":"/"}}"#),
            format!(r#"{{"time":5,"tree":"{t}","paths":["/"]}}"#),
            r#"{"time":"x","tree":"abc","paths":["/"]}"#.to_owned(),
            format!(r#"{{"tree":"{t}","paths":["/"]}}"#),
            r#"{"time":"x","paths":["/"]}"#.to_owned(),
            format!(r#"{{"time":"x","tree":"{t}"}}"#),
            format!(r#"{{"time":"x","tree":"{t}","paths":["/"],"parent":"zz"}}"#),
            format!(r#"{{"time":"x","tree":"{t}","paths":["/"],"summary":{{"files_new":-3}}}}"#),
            format!(r#"{{"time":"x","tree":"{t}","paths":["/"]"#),
            "[]".to_owned(),
        ];
        for case in cases {
            let err = Snapshot::from_json(case.as_bytes()).unwrap_err();
            assert!(
                err.to_string().starts_with("decoding snapshot json"),
                "{case}"
            );
        }
    }

    #[test]
    fn restic_written_snapshot_parses() {
        use crate::index::restic_cli;
        if !restic_cli::available() {
            return;
        }
        let repo = restic_cli::with_backup();
        let ids = restic_cli::list(&repo.path, "snapshots");
        assert_eq!(ids.len(), 1);
        let json = restic_cli::run(&repo.path, &["cat", "snapshot", &ids[0]]);
        let sn = Snapshot::from_json(&json)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json)));
        assert_eq!(sn.hostname, "ferry-test");
        assert_eq!(sn.paths.len(), 1);
        assert!(sn.paths[0].ends_with("/src"));
        assert_eq!(sn.parent, None);
        // Our encoding of what we parsed is restic's JSON, modulo indentation.
        assert_eq!(
            String::from_utf8(restic_cli::compact(&sn.to_json())).unwrap(),
            String::from_utf8(restic_cli::compact(&json)).unwrap()
        );
        // The tree restic names is in its index.
        let tree = restic_cli::run(&repo.path, &["cat", "blob", &sn.tree.to_hex()]);
        assert!(tree.starts_with(b"{\"nodes\":["));
    }

    fn arb_text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), any::<String>(), "[a-z<>&/ ]{0,12}"]
    }

    fn arb_id() -> impl Strategy<Value = Option<SnapshotId>> {
        proptest::option::of(any::<[u8; 32]>().prop_map(|b| SnapshotId(Id(b))))
    }

    proptest! {
        #[test]
        fn json_round_trip(
            time in arb_text(),
            parent in arb_id(),
            original in arb_id(),
            tree in any::<[u8; 32]>(),
            paths in proptest::collection::vec(arb_text(), 0..3),
            hostname in arb_text(),
            username in arb_text(),
            uid in prop_oneof![Just(0u32), any::<u32>()],
            gid in prop_oneof![Just(0u32), any::<u32>()],
            tags in proptest::collection::vec(arb_text(), 0..3),
            excludes in proptest::collection::vec(arb_text(), 0..3),
            program_version in arb_text(),
            counts in any::<[u64; 12]>(),
            with_summary in any::<bool>(),
        ) {
            let summary = with_summary.then(|| SnapshotSummary {
                backup_start: time.clone(),
                backup_end: hostname.clone(),
                files_new: counts[0], files_changed: counts[1], files_unmodified: counts[2],
                dirs_new: counts[3], dirs_changed: counts[4], dirs_unmodified: counts[5],
                data_blobs: counts[6], tree_blobs: counts[7], data_added: counts[8],
                data_added_packed: counts[9], total_files_processed: counts[10],
                total_bytes_processed: counts[11],
            });
            let sn = Snapshot {
                time, parent, tree: TreeId(Id(tree)), paths, hostname, username, uid, gid,
                excludes, tags, original, program_version, summary,
            };
            let json = sn.to_json();
            prop_assert_eq!(Snapshot::from_json(&json).unwrap(), sn.clone());
            let text = String::from_utf8(json).unwrap();
            prop_assert_eq!(text.contains("\"uid\""), sn.uid != 0);
            prop_assert!(!text.contains('<') && !text.contains('>') && !text.contains('&'));
        }

        #[test]
        fn hostile_json_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Snapshot::from_json(&data);
        }
    }
}
