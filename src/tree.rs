//! Tree blobs: a directory listing as restic stores it, byte for byte.
//!
//! A tree blob is `{"nodes":[` + node JSONs joined by `,` + `]}` + `\n`, with nodes strictly
//! ascending by raw name bytes (`restic-format.md` A10). Its id is the SHA-256 of exactly
//! those bytes, so [`Tree::to_json`] must match restic for ferry's trees to deduplicate with
//! restic's. This module encodes and decodes that JSON and checks order and names; it does no
//! I/O, does not compress or encrypt, and knows nothing about packs or where subtrees live.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::node::{JsonStr, Node, NodeJsonError, RawNode, display_name};

/// One directory listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    /// The entries, strictly ascending by raw name when built by [`Tree::from_nodes`]; a
    /// decoded tree keeps the order it was stored in (see [`Tree::check_order`]).
    pub nodes: Vec<Node>,
}

/// Why a tree could not be built, decoded or checked. Names in messages are Go-quoted and cut
/// to 100 characters.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The bytes are not tree JSON.
    #[error("decoding tree json: {0}")]
    Json(String),
    /// Two nodes share a name.
    #[error("duplicate node name \"{0}\" in tree")]
    DuplicateName(String),
    /// A node's name is smaller than its predecessor's.
    #[error("tree nodes not sorted: \"{0}\" follows a greater name")]
    NotSorted(String),
    /// A node's fields are not acceptable.
    #[error("invalid node \"{name}\" in tree: {reason}")]
    InvalidNode {
        /// The node's name.
        name: String,
        /// What was wrong.
        reason: String,
    },
}

impl From<NodeJsonError> for TreeError {
    fn from(e: NodeJsonError) -> TreeError {
        match e {
            NodeJsonError::Json(text) => TreeError::Json(text),
            NodeJsonError::Invalid { name, reason } => TreeError::InvalidNode { name, reason },
        }
    }
}

impl Tree {
    /// A tree of `nodes` sorted by raw name bytes (Go string order).
    ///
    /// Fails with [`TreeError::DuplicateName`] when two nodes share a name; names are not
    /// otherwise checked (see [`Tree::check_names`]).
    pub fn from_nodes(mut nodes: Vec<Node>) -> Result<Tree, TreeError> {
        nodes.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        for pair in nodes.windows(2) {
            if let [a, b] = pair
                && a.name == b.name
            {
                return Err(TreeError::DuplicateName(display_name(&b.name)));
            }
        }
        Ok(Tree { nodes })
    }

    /// The tree's blob bytes: `{"nodes":[` + node JSONs joined by `,` + `]}` + `\n`, written
    /// into one buffer. Nodes are written in their current order, which must already be
    /// sorted for restic to accept the tree ([`Tree::from_nodes`] guarantees it).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.nodes.len() * 400);
        out.extend_from_slice(b"{\"nodes\":[");
        for (i, node) in self.nodes.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            node.write_json(&mut out);
        }
        out.extend_from_slice(b"]}\n");
        out
    }

    /// Decodes tree JSON as restic writes it, in one pass and linear time.
    ///
    /// Unknown top-level keys are ignored, a missing or `null` `"nodes"` is an empty tree,
    /// and node JSON is decoded as [`Node::from_json`] does. Order and names are not checked
    /// here; restic's `check` reports those separately, and so do [`Tree::check_order`] and
    /// [`Tree::check_names`].
    pub fn from_json(bytes: &[u8]) -> Result<Tree, TreeError> {
        let mut failure = None;
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let parsed = TreeSeed {
            failure: &mut failure,
        }
        .deserialize(&mut de)
        .and_then(|nodes| de.end().map(|()| nodes));
        match (parsed, failure) {
            // A node that failed conversion aborts the parse; report it rather than the
            // placeholder error serde carried out.
            (_, Some(e)) => Err(e.into()),
            (Ok(nodes), None) => Ok(Tree { nodes }),
            (Err(e), None) => Err(TreeError::Json(e.to_string())),
        }
    }

    /// Checks that names are strictly ascending by raw bytes, as restic's tree builder and
    /// `check` require.
    pub fn check_order(&self) -> Result<(), TreeError> {
        for pair in self.nodes.windows(2) {
            if let [a, b] = pair {
                match a.name.cmp(&b.name) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => {
                        return Err(TreeError::DuplicateName(display_name(&b.name)));
                    }
                    std::cmp::Ordering::Greater => {
                        return Err(TreeError::NotSorted(display_name(&b.name)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks that every name can safely be a path component: not empty, not `.` or `..`,
    /// and without `/` or NUL. Restic never writes such names; a tree that has them is
    /// corrupt or hostile, and restoring it as-is could write outside the target.
    pub fn check_names(&self) -> Result<(), TreeError> {
        for node in &self.nodes {
            let bad = node.name.is_empty()
                || node.name == b"."
                || node.name == b".."
                || node.name.contains(&b'/')
                || node.name.contains(&0);
            if bad {
                return Err(TreeError::InvalidNode {
                    name: display_name(&node.name),
                    reason: "name is not a single path component".to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// Decodes the top-level object, keeping only `"nodes"`.
struct TreeSeed<'f> {
    failure: &'f mut Option<NodeJsonError>,
}

impl<'de> DeserializeSeed<'de> for TreeSeed<'_> {
    type Value = Vec<Node>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Node>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TreeSeed<'_> {
    type Value = Vec<Node>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tree object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Vec<Node>, A::Error> {
        let mut nodes = None;
        while let Some(key) = map.next_key::<JsonStr<'de>>()? {
            if key.0 == "nodes" {
                if nodes.is_some() {
                    return Err(serde::de::Error::duplicate_field("nodes"));
                }
                nodes = Some(map.next_value_seed(NodesSeed {
                    failure: &mut *self.failure,
                })?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(nodes.unwrap_or_default())
    }
}

/// Decodes `"nodes"` (a list or `null`), converting each node as soon as it is parsed so that
/// only one raw node is alive at a time.
struct NodesSeed<'f> {
    failure: &'f mut Option<NodeJsonError>,
}

impl<'de> DeserializeSeed<'de> for NodesSeed<'_> {
    type Value = Vec<Node>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Node>, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for NodesSeed<'_> {
    type Value = Vec<Node>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of nodes or null")
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<Vec<Node>, E> {
        Ok(Vec::new())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<Vec<Node>, E> {
        Ok(Vec::new())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Vec<Node>, D::Error> {
        d.deserialize_seq(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Node>, A::Error> {
        let mut nodes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(raw) = seq.next_element::<RawNode<'de>>()? {
            match raw.into_node() {
                Ok(node) => nodes.push(node),
                Err(e) => {
                    *self.failure = Some(e);
                    return Err(serde::de::Error::custom("invalid node"));
                }
            }
        }
        Ok(nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filemode::{go_mode_from_unix, node_type_from_unix};
    use crate::gojson::parse_rfc3339;
    use crate::id::{BlobId, Id, TreeId};
    use crate::node::{ExtendedAttribute, NodeType, Timestamp};
    use proptest::prelude::*;

    fn t(s: &str) -> Timestamp {
        parse_rfc3339(s).unwrap()
    }

    #[test]
    fn empty_tree_matches_restic() {
        let tree = Tree::from_nodes(Vec::new()).unwrap();
        let json = tree.to_json();
        assert_eq!(json, b"{\"nodes\":[]}\n");
        assert_eq!(
            Id::hash(&json).to_hex(),
            "ac08ce34ba4f8123618661bef2425f7028ffb9ac740578a3ee88684d2523fee8"
        );
        assert_eq!(Tree::from_json(&json).unwrap(), tree);
        assert_eq!(Tree::from_json(b"{}").unwrap(), tree);
        assert_eq!(Tree::from_json(b"{\"nodes\":null}").unwrap(), tree);
    }

    fn example_dir() -> (Node, String) {
        let hex = "5ed3a8e5b2a9f3e4d1c0b9a8f7e6d5c4b3a29180f7e6d5c4b3a2918007f6e5d4";
        let mut n = Node::new("d", NodeType::Dir);
        n.mode = 2147484141;
        n.mtime = t("2024-05-01T10:00:00.123456789Z");
        n.atime = n.mtime;
        n.ctime = t("2024-05-01T10:00:01Z");
        n.user = "root".into();
        n.group = "root".into();
        n.inode = 131;
        n.device_id = 2049;
        n.subtree = Some(TreeId::parse(hex).unwrap());
        let json = format!(
            "{{\"name\":\"d\",\"type\":\"dir\",\"mode\":2147484141,\
             \"mtime\":\"2024-05-01T10:00:00.123456789Z\",\
             \"atime\":\"2024-05-01T10:00:00.123456789Z\",\
             \"ctime\":\"2024-05-01T10:00:01Z\",\"uid\":0,\"gid\":0,\"user\":\"root\",\
             \"group\":\"root\",\"inode\":131,\"device_id\":2049,\"content\":null,\
             \"subtree\":\"{hex}\"}}"
        );
        (n, json)
    }

    fn example_file(name: &str, size: u64, content: Vec<BlobId>) -> Node {
        let mut n = Node::new(name, NodeType::File);
        n.mode = 420;
        n.mtime = t("2024-05-01T10:00:00Z");
        n.atime = n.mtime;
        n.ctime = n.mtime;
        n.uid = 1000;
        n.gid = 1000;
        n.inode = 132;
        n.device_id = 2049;
        n.size = size;
        n.links = 1;
        n.content = Some(content);
        n
    }

    #[test]
    fn a10_examples_byte_for_byte() {
        let (dir, dir_json) = example_dir();
        assert_eq!(String::from_utf8(dir.to_json()).unwrap(), dir_json);
        assert_eq!(Node::from_json(dir_json.as_bytes()).unwrap(), dir);

        let blob = BlobId(Id::hash(b"hello"));
        let file = example_file("a.txt", 5, vec![blob]);
        let file_json = format!(
            "{{\"name\":\"a.txt\",\"type\":\"file\",\"mode\":420,\
             \"mtime\":\"2024-05-01T10:00:00Z\",\"atime\":\"2024-05-01T10:00:00Z\",\
             \"ctime\":\"2024-05-01T10:00:00Z\",\"uid\":1000,\"gid\":1000,\"inode\":132,\
             \"device_id\":2049,\"size\":5,\"links\":1,\"content\":[\"{}\"]}}",
            blob.to_hex()
        );
        assert_eq!(String::from_utf8(file.to_json()).unwrap(), file_json);
        assert_eq!(Node::from_json(file_json.as_bytes()).unwrap(), file);

        let empty = example_file("e", 0, Vec::new());
        let empty_json = String::from_utf8(empty.to_json()).unwrap();
        assert!(
            empty_json.ends_with(",\"links\":1,\"content\":[]}"),
            "{empty_json}"
        );
        assert!(!empty_json.contains("\"size\""));
        assert_eq!(Node::from_json(empty_json.as_bytes()).unwrap(), empty);

        let tree = Tree::from_nodes(vec![file.clone(), dir.clone(), empty.clone()]).unwrap();
        let expected = format!("{{\"nodes\":[{file_json},{dir_json},{empty_json}]}}\n");
        assert_eq!(String::from_utf8(tree.to_json()).unwrap(), expected);
        let back = Tree::from_json(expected.as_bytes()).unwrap();
        assert_eq!(back, tree);
        back.check_order().unwrap();
    }

    #[test]
    fn names_are_quoted_then_json_escaped() {
        let cases: &[(&[u8], &str)] = &[
            (b"a\"b", "a\\\\\\\"b"),
            (b"back\\slash", "back\\\\\\\\slash"),
            (b"new\nline", "new\\\\nline"),
            (b"tab\t", "tab\\\\t"),
            (b"del\x7f", "del\\\\x7f"),
            (b"bad\xff", "bad\\\\xff"),
            (b"<a>&b", "\\u003ca\\u003e\\u0026b"),
            ("nb\u{a0}".as_bytes(), "nb\\\\u00a0"),
            ("zw\u{200b}".as_bytes(), "zw\\\\u200b"),
            ("ls\u{2028}".as_bytes(), "ls\\\\u2028"),
            ("😀".as_bytes(), "😀"),
        ];
        for (raw, json_name) in cases {
            let node = Node::new(*raw, NodeType::Fifo);
            let json = String::from_utf8(node.to_json()).unwrap();
            let prefix = format!("{{\"name\":\"{json_name}\",\"type\":\"fifo\",");
            assert!(json.starts_with(&prefix), "{raw:?}: {json}");
            assert_eq!(Node::from_json(json.as_bytes()).unwrap(), node);
        }
        let long = vec![0xe9u8; 255];
        let node = Node::new(long, NodeType::File);
        assert_eq!(Node::from_json(&node.to_json()).unwrap(), node);
    }

    #[test]
    fn link_targets_and_xattrs() {
        let mut node = Node::new("l", NodeType::Symlink);
        node.link_target = b"to<&>\xff\"x".to_vec();
        node.extended_attributes = vec![
            ExtendedAttribute {
                name: "user.a<b".into(),
                value: b"\x00\x01v".to_vec(),
            },
            ExtendedAttribute {
                name: "user.empty".into(),
                value: Vec::new(),
            },
        ];
        node.device = 7;
        node.error = "oops\n".into();
        let json = String::from_utf8(node.to_json()).unwrap();
        assert!(json.contains(
            ",\"linktarget\":\"to\\u003c\\u0026\\u003e\\ufffd\\\"x\",\"linktarget_raw\":\"dG88Jj7/Ing=\",\
             \"extended_attributes\":[{\"name\":\"user.a\\u003cb\",\"value\":\"AAF2\"},\
             {\"name\":\"user.empty\",\"value\":\"\"}],\"device\":7,\"content\":null,\
             \"error\":\"oops\\n\"}"
        ), "{json}");
        assert_eq!(Node::from_json(json.as_bytes()).unwrap(), node);

        node.link_target = "ok→".into();
        let json = String::from_utf8(node.to_json()).unwrap();
        assert!(!json.contains("linktarget_raw"));
        assert_eq!(Node::from_json(json.as_bytes()).unwrap(), node);
    }

    #[test]
    fn decoding_is_lenient_like_restic() {
        let json = br#"{"extra":1,"nodes":[{"name":"x","type":"file","mode":4294967295,
            "mtime":"2024-05-01T12:00:00.5+02:00","atime":null,"uid":null,"gid":5,
            "generic_attributes":{"windows.creation_time":"AAA="},"unknown":[1,{"a":2}],
            "linktarget":"lossy","linktarget_raw":"/w==",
            "extended_attributes":[{"name":"user.n","value":null}],"content":[]}],"more":{}}"#;
        let tree = Tree::from_json(json).unwrap();
        let n = &tree.nodes[0];
        assert_eq!(n.mode, u32::MAX);
        assert_eq!(
            n.mtime,
            Timestamp {
                secs: 1_714_557_600,
                nanos: 500_000_000
            }
        );
        assert_eq!(n.atime, Timestamp::GO_ZERO);
        assert_eq!(n.ctime, Timestamp::GO_ZERO);
        assert_eq!((n.uid, n.gid), (0, 5));
        assert_eq!(n.link_target, b"\xff");
        assert_eq!(n.extended_attributes[0].value, b"");
        assert_eq!(n.content, Some(Vec::new()));
    }

    #[test]
    fn decoding_rejects_broken_nodes() {
        let bad: &[(&[u8], &str)] = &[
            (b"{\"nodes\":[{\"type\":\"file\"}]}", "missing name"),
            (b"{\"nodes\":[{\"name\":\"x\"}]}", "missing type"),
            (
                b"{\"nodes\":[{\"name\":\"x\",\"type\":\"door\"}]}",
                "unknown type",
            ),
            (
                b"{\"nodes\":[{\"name\":\"x\\\\q\",\"type\":\"file\"}]}",
                "unquoting",
            ),
            (
                b"{\"nodes\":[{\"name\":\"x\",\"type\":\"file\",\"mtime\":\"now\"}]}",
                "rfc3339",
            ),
            (
                b"{\"nodes\":[{\"name\":\"x\",\"type\":\"symlink\",\"linktarget_raw\":\"!\"}]}",
                "linktarget_raw",
            ),
        ];
        for (json, what) in bad {
            let e = Tree::from_json(json).unwrap_err();
            assert!(matches!(e, TreeError::InvalidNode { .. }), "{e}");
            assert!(e.to_string().contains(what), "{e}");
        }
        for json in [
            &b""[..],
            b"[]",
            b"{\"nodes\":[1]}",
            b"{\"nodes\":[]}x",
            b"{\"nodes\":[{\"name\":\"x\",\"type\":\"file\",\"mode\":-1}]}",
            b"{\"nodes\":[{\"name\":\"x\",\"type\":\"file\",\"content\":[\"zz\"]}]}",
            b"{\"nodes\":[],\"nodes\":[]}",
            b"{\"nodes\":[{\"name\":\"\xff\",\"type\":\"file\"}]}",
        ] {
            assert!(matches!(Tree::from_json(json), Err(TreeError::Json(_))));
        }
    }

    #[test]
    fn order_and_names_are_checked() {
        let a = Node::new("a", NodeType::File);
        let b = Node::new("b", NodeType::File);
        let hi = Node::new(b"\xff".to_vec(), NodeType::File);
        let tree = Tree::from_nodes(vec![hi.clone(), b.clone(), a.clone()]).unwrap();
        assert_eq!(tree.nodes, vec![a.clone(), b.clone(), hi.clone()]);
        tree.check_order().unwrap();
        tree.check_names().unwrap();
        assert!(matches!(
            Tree::from_nodes(vec![a.clone(), b.clone(), a.clone()]),
            Err(TreeError::DuplicateName(n)) if n == "a"
        ));
        let unsorted = Tree {
            nodes: vec![b.clone(), a.clone()],
        };
        assert!(matches!(unsorted.check_order(), Err(TreeError::NotSorted(n)) if n == "a"));
        let dup = Tree {
            nodes: vec![a.clone(), a.clone()],
        };
        assert!(matches!(
            dup.check_order(),
            Err(TreeError::DuplicateName(_))
        ));
        for name in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
            let tree = Tree {
                nodes: vec![Node::new(name, NodeType::File)],
            };
            assert!(matches!(
                tree.check_names(),
                Err(TreeError::InvalidNode { .. })
            ));
        }
    }

    #[test]
    fn large_tree_round_trips() {
        let nodes: Vec<Node> = (0..100_000u32)
            .map(|i| {
                let mut n = example_file(
                    &format!("file-{i:06}"),
                    1,
                    vec![BlobId(Id::hash(&i.to_le_bytes()))],
                );
                n.inode = u64::from(i);
                n
            })
            .collect();
        let tree = Tree::from_nodes(nodes).unwrap();
        let json = tree.to_json();
        let back = Tree::from_json(&json).unwrap();
        assert_eq!(back, tree);
    }

    fn arb_time() -> impl Strategy<Value = Timestamp> {
        (-62_167_219_200i64..253_402_300_800i64, 0u32..1_000_000_000)
            .prop_map(|(secs, nanos)| Timestamp { secs, nanos })
    }

    fn arb_node() -> impl Strategy<Value = Node> {
        let kinds = prop_oneof![
            Just(NodeType::File),
            Just(NodeType::Dir),
            Just(NodeType::Symlink),
            Just(NodeType::Dev),
            Just(NodeType::CharDev),
            Just(NodeType::Fifo),
            Just(NodeType::Socket),
            Just(NodeType::Irregular),
        ];
        let names = proptest::collection::vec(any::<u8>(), 1..40);
        let ids = proptest::collection::vec(any::<[u8; 32]>(), 0..4);
        let xattrs = proptest::collection::vec(
            ("\\PC{0,12}", proptest::collection::vec(any::<u8>(), 0..12)),
            0..3,
        );
        (
            (
                names,
                kinds,
                any::<u32>(),
                arb_time(),
                arb_time(),
                arb_time(),
            ),
            (
                any::<u32>(),
                any::<u32>(),
                "\\PC{0,8}",
                ".{0,8}",
                any::<u64>(),
                any::<u64>(),
            ),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..20),
            ),
            (
                xattrs,
                any::<u64>(),
                proptest::option::of(ids),
                proptest::option::of(any::<[u8; 32]>()),
                ".{0,8}",
            ),
        )
            .prop_map(|(a, b, c, d)| {
                let (name, node_type, mode, mtime, atime, ctime) = a;
                let (uid, gid, user, group, inode, device_id) = b;
                let (size, links, link_target) = c;
                let (xattrs, device, content, subtree, error) = d;
                Node {
                    name,
                    node_type,
                    mode,
                    mtime,
                    atime,
                    ctime,
                    uid,
                    gid,
                    user,
                    group,
                    inode,
                    device_id,
                    size,
                    links,
                    link_target,
                    extended_attributes: xattrs
                        .into_iter()
                        .map(|(name, value)| ExtendedAttribute { name, value })
                        .collect(),
                    device,
                    content: content.map(|c| c.into_iter().map(|b| BlobId(Id(b))).collect()),
                    subtree: subtree.map(|s| TreeId(Id(s))),
                    error,
                }
            })
    }

    proptest! {
        #[test]
        fn node_round_trips(node in arb_node()) {
            let json = node.to_json();
            let back = Node::from_json(&json).unwrap();
            prop_assert_eq!(&back, &node);
            prop_assert_eq!(back.to_json(), json);
        }

        #[test]
        fn tree_round_trips(nodes in proptest::collection::vec(arb_node(), 0..12)) {
            let mut seen = std::collections::HashSet::new();
            let nodes: Vec<Node> = nodes.into_iter().filter(|n| seen.insert(n.name.clone())).collect();
            let tree = Tree::from_nodes(nodes).unwrap();
            tree.check_order().unwrap();
            let json = tree.to_json();
            let back = Tree::from_json(&json).unwrap();
            prop_assert_eq!(&back, &tree);
            prop_assert_eq!(back.to_json(), json);
        }

        #[test]
        fn from_json_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Tree::from_json(&bytes);
        }
    }

    #[test]
    fn mode_helpers_agree_with_node_types() {
        assert_eq!(node_type_from_unix(0o040755), NodeType::Dir);
        assert_eq!(go_mode_from_unix(0o040755), 2147484141);
    }

    mod restic_interop {
        use super::super::*;
        use crate::id::Id;
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        use std::path::Path;
        use std::process::Command;

        fn restic(repo: &Path, cwd: &Path, args: &[&str]) -> Vec<u8> {
            let out = Command::new("restic")
                .arg("-r")
                .arg(repo)
                .arg("--no-cache")
                .args(args)
                .current_dir(cwd)
                .env("RESTIC_PASSWORD", "pw")
                .env("TZ", "UTC")
                .output()
                .expect("running restic");
            assert!(
                out.status.success(),
                "restic {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        }

        fn restic_on_path() -> bool {
            Command::new("restic")
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        }

        /// Re-encodes every tree reachable from `id` and compares with restic's bytes;
        /// returns every name seen.
        fn check_tree(repo: &Path, cwd: &Path, id: &str, names: &mut Vec<Vec<u8>>) {
            let stored = restic(repo, cwd, &["cat", "blob", id]);
            assert_eq!(
                Id::hash(&stored).to_hex(),
                id,
                "restic cat blob returned other bytes"
            );
            let tree = Tree::from_json(&stored).unwrap();
            tree.check_order().unwrap();
            tree.check_names().unwrap();
            let ours = tree.to_json();
            assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&stored),
                "tree {id} re-encodes differently"
            );
            assert_eq!(ours, stored);
            for node in &tree.nodes {
                names.push(node.name.clone());
                if let Some(sub) = node.subtree {
                    check_tree(repo, cwd, &sub.to_hex(), names);
                }
            }
        }

        #[test]
        fn restic_trees_re_encode_byte_for_byte() {
            if !restic_on_path() {
                eprintln!("skipping: restic is not on PATH");
                return;
            }
            let data = tempfile::tempdir().unwrap();
            let repo = tempfile::tempdir().unwrap();
            let d = data.path();
            let files: Vec<&[u8]> = vec![
                b"a<b>&c.txt",
                b"quote\"d",
                b"new\nline",
                b"bad\xffbyte",
                b"back\\slash",
                b"tab\tname",
                b"del\x7f",
                "nb\u{a0}sp zw\u{200b} ls\u{2028} bom\u{feff}".as_bytes(),
                "emoji 😀 grüße".as_bytes(),
                b"plain",
            ];
            for (i, name) in files.iter().enumerate() {
                std::fs::write(d.join(OsStr::from_bytes(name)), format!("content {i}\n")).unwrap();
            }
            std::fs::write(d.join("empty"), b"").unwrap();
            std::fs::write(d.join(OsStr::from_bytes(&[b'x'; 255])), b"long").unwrap();
            std::fs::create_dir(d.join("emptydir")).unwrap();
            std::fs::create_dir(d.join("sub<dir>")).unwrap();
            std::fs::write(d.join("sub<dir>").join("inner&file"), b"inner").unwrap();
            // restic 0.14 predates linktarget_raw, so the target must be valid UTF-8 here.
            std::os::unix::fs::symlink("target<&>\"é", d.join("sym")).unwrap();

            restic(repo.path(), d, &["init"]);
            restic(repo.path(), d, &["backup", "."]);
            let snaps = restic(repo.path(), d, &["snapshots", "--json"]);
            let snaps: serde_json::Value = serde_json::from_slice(&snaps).unwrap();
            let root = snaps[0]["tree"].as_str().unwrap().to_owned();

            let mut names = Vec::new();
            check_tree(repo.path(), d, &root, &mut names);
            for name in files
                .iter()
                .chain([&b"empty"[..], b"emptydir", b"sym", b"inner&file"].iter())
            {
                assert!(
                    names.iter().any(|n| n == name),
                    "restic tree lacks {name:?}"
                );
            }
        }
    }
}
