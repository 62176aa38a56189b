//! One entry of a directory listing: restic's `Node`.
//!
//! A [`Node`] holds what restic records about a file, directory, symlink, device, fifo or
//! socket. Names and link targets are raw bytes, because Linux file names need not be UTF-8.
//! This module owns the node's data and its exact JSON form (see `restic-format.md` A10); it
//! reads nothing from the filesystem (that is `fsmeta`).

use crate::id::{BlobId, TreeId};

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
