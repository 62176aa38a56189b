//! One entry of a directory listing: restic's `Node`.
//!
//! A [`Node`] holds what restic records about a file, directory, symlink, device, fifo or
//! socket. Names and link targets are raw bytes, because Linux file names need not be UTF-8.
//! This module owns the node's data and its exact JSON form (see `restic-format.md` A10); it
//! reads nothing from the filesystem (that is `fsmeta`).
//!
//! Writing follows Go's `encoding/json` on restic's `Node` struct field by field, so a node
//! restic wrote decodes and re-encodes to the same bytes. Reading is as lenient as restic's:
//! unknown keys (including `generic_attributes`) are ignored and `null` counts as absent.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use serde::Deserialize;

use crate::gojson::{
    go_quote, go_unquote, parse_rfc3339, write_json_bytes_lossy, write_json_string,
    write_rfc3339_nano,
};
use crate::id::{BlobId, Id, TreeId};

/// A point in time with nanosecond precision, as seconds and nanoseconds since the Unix epoch
/// in UTC. Restic writes times in the machine's zone; ferry always writes UTC (`Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z (negative before it).
    pub secs: i64,
    /// Nanoseconds within the second, `0..1_000_000_000`.
    pub nanos: u32,
}

/// The kind of a node, spelled as restic spells it in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeType {
    /// `"file"`: a regular file.
    File,
    /// `"dir"`: a directory, with a subtree.
    Dir,
    /// `"symlink"`.
    Symlink,
    /// `"dev"`: a block device.
    Dev,
    /// `"chardev"`: a character device.
    CharDev,
    /// `"fifo"`: a named pipe.
    Fifo,
    /// `"socket"`: a Unix socket.
    Socket,
    /// `"irregular"`: anything else.
    Irregular,
}

/// One extended attribute as restic stores it: a name and raw value bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtendedAttribute {
    /// The attribute's full name, for example `user.comment`.
    pub name: String,
    /// The raw value (base64 in JSON).
    pub value: Vec<u8>,
}

/// One entry of a tree.
///
/// Field meanings and the zero values that are omitted in JSON follow restic's `Node`
/// (`restic-format.md` A10). `mode` holds Go `io/fs.FileMode` bits, not Unix `st_mode` bits;
/// `filemode` converts between the two.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The entry's name within its directory: raw bytes, never empty, never containing `/`.
    pub name: Vec<u8>,
    /// The kind of entry.
    pub node_type: NodeType,
    /// Go FileMode bits (type bits, setuid/setgid/sticky in the high bits, permissions 0o777).
    pub mode: u32,
    /// Modification time.
    pub mtime: Timestamp,
    /// Access time (restic stores mtime here unless asked for atime).
    pub atime: Timestamp,
    /// Status change time.
    pub ctime: Timestamp,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Owner name, empty when unknown.
    pub user: String,
    /// Group name, empty when unknown.
    pub group: String,
    /// Inode number, 0 when not recorded.
    pub inode: u64,
    /// `st_dev` of the filesystem holding the node, 0 when not recorded.
    pub device_id: u64,
    /// File size in bytes; only meaningful for files and equal to the sum of the plaintext
    /// lengths of `content`.
    pub size: u64,
    /// Hard link count, 0 when not recorded.
    pub links: u64,
    /// Symlink target as raw bytes; empty for everything but symlinks.
    pub link_target: Vec<u8>,
    /// Extended attributes in the order they were listed.
    pub extended_attributes: Vec<ExtendedAttribute>,
    /// `st_rdev` for block and character devices.
    pub device: u64,
    /// The data blobs of a file, in order; `Some(vec![])` for an empty file, `None` for
    /// everything that is not a file.
    pub content: Option<Vec<BlobId>>,
    /// The tree of a directory; `None` for everything else.
    pub subtree: Option<TreeId>,
    /// An error recorded while reading the node, empty when none.
    pub error: String,
}

impl Node {
    /// A node of the given name and type with every other field at its zero value
    /// (`content` is `Some(vec![])` for files and `None` otherwise).
    pub fn new(name: impl Into<Vec<u8>>, node_type: NodeType) -> Node {
        Node {
            name: name.into(),
            node_type,
            mode: 0,
            mtime: Timestamp::default(),
            atime: Timestamp::default(),
            ctime: Timestamp::default(),
            uid: 0,
            gid: 0,
            user: String::new(),
            group: String::new(),
            inode: 0,
            device_id: 0,
            size: 0,
            links: 0,
            link_target: Vec::new(),
            extended_attributes: Vec::new(),
            device: 0,
            content: if node_type == NodeType::File {
                Some(Vec::new())
            } else {
                None
            },
            subtree: None,
            error: String::new(),
        }
    }
}

impl Timestamp {
    /// Go's zero `time.Time` (0001-01-01T00:00:00Z); what restic reads for a missing time.
    pub const GO_ZERO: Timestamp = Timestamp {
        secs: -62_135_596_800,
        nanos: 0,
    };
}

impl NodeType {
    /// The word restic uses for this type in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::File => "file",
            NodeType::Dir => "dir",
            NodeType::Symlink => "symlink",
            NodeType::Dev => "dev",
            NodeType::CharDev => "chardev",
            NodeType::Fifo => "fifo",
            NodeType::Socket => "socket",
            NodeType::Irregular => "irregular",
        }
    }

    /// The type restic spells `s`; `None` for any other word (matching is case-sensitive).
    pub fn parse(s: &str) -> Option<NodeType> {
        Some(match s {
            "file" => NodeType::File,
            "dir" => NodeType::Dir,
            "symlink" => NodeType::Symlink,
            "dev" => NodeType::Dev,
            "chardev" => NodeType::CharDev,
            "fifo" => NodeType::Fifo,
            "socket" => NodeType::Socket,
            "irregular" => NodeType::Irregular,
            _ => return None,
        })
    }
}

impl fmt::Display for NodeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a node's JSON could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum NodeJsonError {
    /// The bytes are not JSON of the expected shape (wrong value types, bad ids, syntax).
    #[error("decoding node json: {0}")]
    Json(String),
    /// The JSON is well-formed but a field's value is not acceptable.
    #[error("invalid node {name}: {reason}")]
    Invalid {
        /// The node's name, Go-quoted (or its raw JSON text when that is what is broken),
        /// at most 100 characters.
        name: String,
        /// What was wrong.
        reason: String,
    },
}

/// Base64 as Go's `encoding/json` reads `[]byte`: standard alphabet with padding, and
/// (unlike a strict decoder) non-zero trailing bits are tolerated.
const GO_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Appends the decimal form of `n`.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends `"<64 hex>"`.
fn push_id(out: &mut Vec<u8>, id: &Id) {
    let mut buf = [0u8; 64];
    // The buffer is exactly twice the id length, so encoding cannot fail.
    let _ = hex::encode_to_slice(id.0, &mut buf);
    out.push(b'"');
    out.extend_from_slice(&buf);
    out.push(b'"');
}

fn push_time(out: &mut Vec<u8>, key: &[u8], t: Timestamp) {
    out.extend_from_slice(key);
    out.push(b'"');
    write_rfc3339_nano(out, t);
    out.push(b'"');
}

fn push_nonzero(out: &mut Vec<u8>, key: &[u8], n: u64) {
    if n != 0 {
        out.extend_from_slice(key);
        push_u64(out, n);
    }
}

fn push_nonempty(out: &mut Vec<u8>, key: &[u8], s: &str) {
    if !s.is_empty() {
        out.extend_from_slice(key);
        write_json_string(out, s);
    }
}

/// A name for error messages: Go-quoted and cut to 100 characters.
pub(crate) fn display_name(name: &[u8]) -> String {
    go_quote(name).chars().take(100).collect()
}

impl Node {
    /// Appends this node's JSON exactly as restic (Go `encoding/json` on `Node`) writes it.
    ///
    /// Keys in Go field order: `name`, `type`, `mode`, `mtime`, `atime`, `ctime`, `uid`,
    /// `gid`, `user`, `group`, `inode`, `device_id`, `size`, `links`, `linktarget`,
    /// `linktarget_raw`, `extended_attributes`, `device`, `content`, `subtree`, `error`.
    /// Zero numbers, empty strings and empty lists are omitted except `uid`, `gid`, the three
    /// times and `content` (`null` when `None`, `[]` when empty). The name is Go-quoted
    /// before JSON encoding. A link target that is not valid UTF-8 is written lossily as
    /// `linktarget` plus its exact bytes as base64 `linktarget_raw`. Times outside years
    /// 0..=9999 are clamped as restic does, and are then not read back unchanged.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"name\":");
        // Most names are printable ASCII without quotes or backslashes, which Go's Quote
        // leaves unchanged; skip building the quoted copy for them.
        match std::str::from_utf8(&self.name) {
            Ok(plain)
                if plain
                    .bytes()
                    .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\') =>
            {
                write_json_string(out, plain)
            }
            _ => write_json_string(out, &go_quote(&self.name)),
        }
        out.extend_from_slice(b",\"type\":\"");
        out.extend_from_slice(self.node_type.as_str().as_bytes());
        out.push(b'"');
        push_nonzero(out, b",\"mode\":", u64::from(self.mode));
        push_time(out, b",\"mtime\":", self.mtime);
        push_time(out, b",\"atime\":", self.atime);
        push_time(out, b",\"ctime\":", self.ctime);
        out.extend_from_slice(b",\"uid\":");
        push_u64(out, u64::from(self.uid));
        out.extend_from_slice(b",\"gid\":");
        push_u64(out, u64::from(self.gid));
        push_nonempty(out, b",\"user\":", &self.user);
        push_nonempty(out, b",\"group\":", &self.group);
        push_nonzero(out, b",\"inode\":", self.inode);
        push_nonzero(out, b",\"device_id\":", self.device_id);
        push_nonzero(out, b",\"size\":", self.size);
        push_nonzero(out, b",\"links\":", self.links);
        if !self.link_target.is_empty() {
            out.extend_from_slice(b",\"linktarget\":");
            write_json_bytes_lossy(out, &self.link_target);
            if std::str::from_utf8(&self.link_target).is_err() {
                out.extend_from_slice(b",\"linktarget_raw\":\"");
                out.extend_from_slice(GO_BASE64.encode(&self.link_target).as_bytes());
                out.push(b'"');
            }
        }
        if !self.extended_attributes.is_empty() {
            out.extend_from_slice(b",\"extended_attributes\":[");
            for (i, attr) in self.extended_attributes.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"name\":");
                write_json_string(out, &attr.name);
                out.extend_from_slice(b",\"value\":\"");
                out.extend_from_slice(GO_BASE64.encode(&attr.value).as_bytes());
                out.extend_from_slice(b"\"}");
            }
            out.push(b']');
        }
        push_nonzero(out, b",\"device\":", self.device);
        out.extend_from_slice(b",\"content\":");
        match &self.content {
            None => out.extend_from_slice(b"null"),
            Some(blobs) => {
                out.push(b'[');
                for (i, blob) in blobs.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    push_id(out, &blob.0);
                }
                out.push(b']');
            }
        }
        if let Some(subtree) = &self.subtree {
            out.extend_from_slice(b",\"subtree\":");
            push_id(out, &subtree.0);
        }
        push_nonempty(out, b",\"error\":", &self.error);
        out.push(b'}');
    }

    /// This node's JSON as a new buffer; see [`Node::write_json`].
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(400);
        self.write_json(&mut out);
        out
    }

    /// Decodes one node's JSON as restic does; see [`RawNode`] for the leniency rules.
    pub fn from_json(bytes: &[u8]) -> Result<Node, NodeJsonError> {
        let raw: RawNode<'_> =
            serde_json::from_slice(bytes).map_err(|e| NodeJsonError::Json(e.to_string()))?;
        raw.into_node()
    }
}

/// A JSON string borrowed from the input when it has no escapes, owned otherwise.
#[derive(Debug)]
pub(crate) struct JsonStr<'a>(pub(crate) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for JsonStr<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = JsonStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// One extended attribute as it appears in JSON.
#[derive(Debug, Deserialize)]
pub(crate) struct RawXattr<'a> {
    #[serde(borrow, default)]
    name: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    value: Option<JsonStr<'a>>,
}

/// A node as it appears in tree JSON, borrowing its strings from the input where it can.
///
/// Like Go's decoder into restic's `Node`: unknown keys are ignored, `null` or a missing key
/// leaves the zero value (a missing time is Go's zero time), and `content` keeps the
/// difference between `null` and `[]`. Unlike Go, key names are matched case-sensitively,
/// and a missing name or an unknown type is an error, because such a node cannot be
/// represented.
#[derive(Debug, Deserialize)]
pub(crate) struct RawNode<'a> {
    #[serde(borrow, default)]
    name: Option<JsonStr<'a>>,
    #[serde(rename = "type", borrow, default)]
    node_type: Option<JsonStr<'a>>,
    #[serde(default)]
    mode: Option<u32>,
    #[serde(borrow, default)]
    mtime: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    atime: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    ctime: Option<JsonStr<'a>>,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gid: Option<u32>,
    #[serde(borrow, default)]
    user: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    group: Option<JsonStr<'a>>,
    #[serde(default)]
    inode: Option<u64>,
    #[serde(default)]
    device_id: Option<u64>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    links: Option<u64>,
    #[serde(borrow, default)]
    linktarget: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    linktarget_raw: Option<JsonStr<'a>>,
    #[serde(borrow, default)]
    extended_attributes: Option<Vec<RawXattr<'a>>>,
    #[serde(default)]
    device: Option<u64>,
    #[serde(default)]
    content: Option<Vec<BlobId>>,
    #[serde(default)]
    subtree: Option<TreeId>,
    #[serde(borrow, default)]
    error: Option<JsonStr<'a>>,
}

fn owned(s: Option<JsonStr<'_>>) -> String {
    s.map(|s| s.0.into_owned()).unwrap_or_default()
}

impl RawNode<'_> {
    /// Converts to a [`Node`], unquoting the name, parsing times and decoding base64.
    pub(crate) fn into_node(self) -> Result<Node, NodeJsonError> {
        let Some(quoted) = self.name else {
            return Err(NodeJsonError::Invalid {
                name: String::new(),
                reason: "missing name".to_owned(),
            });
        };
        let name = go_unquote(&quoted.0).map_err(|e| NodeJsonError::Invalid {
            name: quoted.0.chars().take(100).collect(),
            reason: e.to_string(),
        })?;
        let invalid = |reason: String| NodeJsonError::Invalid {
            name: display_name(&name),
            reason,
        };
        let node_type = match &self.node_type {
            None => return Err(invalid("missing type".to_owned())),
            Some(t) => NodeType::parse(&t.0).ok_or_else(|| {
                invalid(format!(
                    "unknown type {:?}",
                    t.0.chars().take(40).collect::<String>()
                ))
            })?,
        };
        let time = |t: &Option<JsonStr<'_>>| match t {
            None => Ok(Timestamp::GO_ZERO),
            Some(t) => parse_rfc3339(&t.0).map_err(|e| invalid(e.to_string())),
        };
        let mtime = time(&self.mtime)?;
        let atime = time(&self.atime)?;
        let ctime = time(&self.ctime)?;
        // As in restic, linktarget_raw (when present, even if empty) replaces linktarget.
        let link_target = match (&self.linktarget_raw, self.linktarget) {
            (Some(raw), _) => GO_BASE64
                .decode(raw.0.as_bytes())
                .map_err(|e| invalid(format!("decoding linktarget_raw: {e}")))?,
            (None, Some(target)) => target.0.into_owned().into_bytes(),
            (None, None) => Vec::new(),
        };
        let mut extended_attributes = Vec::new();
        for attr in self.extended_attributes.unwrap_or_default() {
            let attr_name = owned(attr.name);
            let value = match attr.value {
                None => Vec::new(),
                Some(v) => GO_BASE64.decode(v.0.as_bytes()).map_err(|e| {
                    invalid(format!(
                        "decoding value of extended attribute {:?}: {e}",
                        attr_name.chars().take(100).collect::<String>()
                    ))
                })?,
            };
            extended_attributes.push(ExtendedAttribute {
                name: attr_name,
                value,
            });
        }
        Ok(Node {
            name,
            node_type,
            mode: self.mode.unwrap_or(0),
            mtime,
            atime,
            ctime,
            uid: self.uid.unwrap_or(0),
            gid: self.gid.unwrap_or(0),
            user: owned(self.user),
            group: owned(self.group),
            inode: self.inode.unwrap_or(0),
            device_id: self.device_id.unwrap_or(0),
            size: self.size.unwrap_or(0),
            links: self.links.unwrap_or(0),
            link_target,
            extended_attributes,
            device: self.device.unwrap_or(0),
            content: self.content,
            subtree: self.subtree,
            error: owned(self.error),
        })
    }
}
