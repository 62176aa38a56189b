//! Reading a filesystem entry's metadata into a [`Node`] during a snapshot (Linux).
//!
//! This module owns the translation from `lstat`, `readlink` and the extended-attribute
//! syscalls to the fields restic records (`restic-format.md` A10), and the uid/gid → name
//! lookup ([`NameCache`]). It never follows symlinks. It does not read file content (the
//! caller fills `content`), does not walk directories and does not write anything; applying
//! metadata on restore is `fsapply`.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::filemode::{go_mode_from_unix, node_type_from_unix};
use crate::node::{ExtendedAttribute, Node, NodeType, Timestamp};

/// Options for reading metadata.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// Record the real access time; when false, `atime` is set to `mtime` as restic does
    /// without `--with-atime` (so reading a file does not change its tree bytes).
    pub with_atime: bool,
    /// Record extended attributes (true in practice; the derived default is false).
    pub xattrs: bool,
}

/// Why the metadata of an entry could not be read.
///
/// [`read_node`] returns these inside an [`io::Error`] whose kind is the kind of the
/// underlying cause; `io::Error::get_ref` and `downcast_ref::<ReadError>` recover the variant.
/// The cause is part of the message and deliberately not a `source`, so that error chains do
/// not print it twice.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// `readlink` failed.
    #[error("read link target of {}: {cause}", .path.display())]
    ReadLink {
        /// The symlink.
        path: PathBuf,
        /// The syscall's error.
        cause: io::Error,
    },
    /// `llistxattr` failed with something other than "not supported".
    #[error("list extended attributes of {}: {cause}", .path.display())]
    ListXattrs {
        /// The entry.
        path: PathBuf,
        /// The syscall's error.
        cause: io::Error,
    },
    /// `lgetxattr` failed with something other than "no such attribute" or "not supported".
    #[error("read extended attribute {name} of {}: {cause}", .path.display())]
    GetXattr {
        /// The entry.
        path: PathBuf,
        /// The attribute's name (lossy UTF-8).
        name: String,
        /// The syscall's error.
        cause: io::Error,
    },
}

impl ReadError {
    fn into_io(self) -> io::Error {
        let kind = match &self {
            ReadError::ReadLink { cause, .. }
            | ReadError::ListXattrs { cause, .. }
            | ReadError::GetXattr { cause, .. } => cause.kind(),
        };
        io::Error::new(kind, self)
    }
}

/// Caches uid → user name and gid → group name.
///
/// Built once from `/etc/passwd` and `/etc/group` (the container's own files, which is what a
/// statically linked restic consults too); lookups never touch the filesystem again. Unknown
/// ids, and missing or unreadable files, give `""`, which restic omits from the JSON. When an
/// id appears on several lines the first line wins. The cache is immutable after construction
/// and therefore `Sync`. `NameCache::default()` is an empty cache that knows no names.
#[derive(Clone, Debug, Default)]
pub struct NameCache {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl NameCache {
    /// Reads `/etc/passwd` and `/etc/group`.
    pub fn new() -> NameCache {
        let passwd = std::fs::read("/etc/passwd").unwrap_or_default();
        let group = std::fs::read("/etc/group").unwrap_or_default();
        NameCache::from_bytes(&passwd, &group)
    }

    /// Builds the cache from the contents of a passwd file (`name:pw:uid:…`) and a group file
    /// (`name:pw:gid:…`). Malformed lines, comments and `+`/`-` NIS lines are ignored; names
    /// that are not UTF-8 are converted lossily (restic's JSON encoder does the same).
    pub fn from_bytes(passwd: &[u8], group: &[u8]) -> NameCache {
        NameCache {
            users: parse_id_file(passwd),
            groups: parse_id_file(group),
        }
    }

    /// The user name of `uid`, or `""` when unknown.
    pub fn user(&self, uid: u32) -> String {
        self.users.get(&uid).cloned().unwrap_or_default()
    }

    /// The group name of `gid`, or `""` when unknown.
    pub fn group(&self, gid: u32) -> String {
        self.groups.get(&gid).cloned().unwrap_or_default()
    }
}

/// Parses `name:password:id:…` lines into id → name, keeping the first name per id.
fn parse_id_file(contents: &[u8]) -> HashMap<u32, String> {
    let mut map = HashMap::new();
    for line in contents.split(|&b| b == b'\n') {
        let mut fields = line.split(|&b| b == b':');
        let (Some(name), Some(_password), Some(id)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if name.is_empty()
            || name.starts_with(b"#")
            || name.starts_with(b"+")
            || name.starts_with(b"-")
        {
            continue;
        }
        let Some(id) = std::str::from_utf8(id)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            continue;
        };
        map.entry(id)
            .or_insert_with(|| String::from_utf8_lossy(name).into_owned());
    }
    map
}

/// Builds a [`Node`] for `path`, named `name` in its parent, from its `lstat` metadata `meta`.
///
/// Fills type, Go mode, mtime/atime/ctime to the nanosecond (atime = mtime unless
/// `opts.with_atime`), uid/gid and their names, inode and `device_id` (`st_dev`) for files with
/// more than one link only (see below), `size` (files only), `links` (`st_nlink`, recorded for files, symlinks and devices only, as restic does;
/// 0 for directories, fifos and sockets), the raw `readlink` bytes for symlinks, `st_rdev` as
/// `device` for block and character devices, and, when `opts.xattrs`, the extended attributes
/// of every namespace the kernel lists (`user.`, `trusted.`, `security.`, `system.`), in
/// `llistxattr` order. Nothing is followed: a symlink to a directory is a symlink node and
/// its own xattrs are read.
///
/// `meta` must come from `lstat` (`std::fs::symlink_metadata` or `DirEntry::metadata`), not
/// `stat`. `content` is `Some(vec![])` for files and `None` otherwise; the caller fills it.
///
/// Errors: a filesystem without xattr support gives no attributes; an attribute that vanished
/// or cannot be read because its namespace is unsupported (`ENODATA`, `ENOTSUP`) is skipped;
/// any other failure is returned as an [`io::Error`] wrapping a [`ReadError`].
pub fn read_node(
    path: &Path,
    name: &[u8],
    meta: &Metadata,
    names: &NameCache,
    opts: &ReadOptions,
) -> io::Result<Node> {
    let st_mode = meta.mode();
    let node_type = node_type_from_unix(st_mode);
    let mut node = Node::new(name.to_vec(), node_type);
    node.mode = go_mode_from_unix(st_mode);
    node.mtime = timestamp(meta.mtime(), meta.mtime_nsec());
    node.atime = if opts.with_atime {
        timestamp(meta.atime(), meta.atime_nsec())
    } else {
        node.mtime
    };
    node.ctime = timestamp(meta.ctime(), meta.ctime_nsec());
    node.uid = meta.uid();
    node.gid = meta.gid();
    node.user = names.user(node.uid);
    node.group = names.group(node.gid);

    match node_type {
        NodeType::File => {
            node.size = meta.size();
            node.links = meta.nlink();
            // Inode and device identify hard links and nothing else here. They change when a
            // volume is mounted on another node, so recording them for every file would make
            // the trees of an unchanged volume differ from one node to the next (restic's
            // device-id-for-hardlinks feature goes half this way).
            if node.links > 1 {
                node.inode = meta.ino();
                node.device_id = meta.dev();
            }
        }
        NodeType::Symlink => {
            node.links = meta.nlink();
            node.link_target = std::fs::read_link(path)
                .map_err(|cause| {
                    ReadError::ReadLink {
                        path: path.to_path_buf(),
                        cause,
                    }
                    .into_io()
                })?
                .into_os_string()
                .into_vec();
        }
        NodeType::Dev | NodeType::CharDev => {
            node.links = meta.nlink();
            node.device = meta.rdev();
        }
        NodeType::Dir | NodeType::Fifo | NodeType::Socket | NodeType::Irregular => {}
    }

    if opts.xattrs {
        node.extended_attributes = read_xattrs(path)?;
    }
    Ok(node)
}

/// A timestamp from `st_*time` and `st_*time_nsec`, normalising a nanosecond field outside
/// `0..1e9` (which no sane filesystem reports) instead of trusting it.
fn timestamp(secs: i64, nsecs: i64) -> Timestamp {
    const NANOS: i64 = 1_000_000_000;
    Timestamp {
        secs: secs.saturating_add(nsecs.div_euclid(NANOS)),
        // rem_euclid of a positive modulus lies in 0..1e9, which fits in u32.
        nanos: nsecs.rem_euclid(NANOS) as u32,
    }
}

/// Reads every extended attribute of `path` (not following symlinks), in list order.
fn read_xattrs(path: &Path) -> io::Result<Vec<ExtendedAttribute>> {
    let cpath = path_cstring(path)?;
    let names = match list_xattr_names(&cpath) {
        Ok(names) => names,
        Err(e) if is_unsupported(&e) => return Ok(Vec::new()),
        Err(cause) => {
            return Err(ReadError::ListXattrs {
                path: path.to_path_buf(),
                cause,
            }
            .into_io());
        }
    };
    let mut attrs = Vec::with_capacity(names.len());
    for name in names {
        match get_xattr(&cpath, &name) {
            Ok(value) => attrs.push(ExtendedAttribute {
                name: String::from_utf8_lossy(name.to_bytes()).into_owned(),
                value,
            }),
            Err(e) if is_unsupported(&e) || e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(cause) => {
                return Err(ReadError::GetXattr {
                    path: path.to_path_buf(),
                    name: String::from_utf8_lossy(name.to_bytes()).into_owned(),
                    cause,
                }
                .into_io());
            }
        }
    }
    Ok(attrs)
}

/// Whether an xattr syscall failed because the filesystem or namespace has no xattr support.
pub(crate) fn is_unsupported(e: &io::Error) -> bool {
    // EOPNOTSUPP has the same value as ENOTSUP on Linux.
    e.raw_os_error() == Some(libc::ENOTSUP)
}

/// The path as a NUL-terminated C string, from its raw bytes (names need not be UTF-8).
pub(crate) fn path_cstring(path: &Path) -> io::Result<CString> {
    bytes_cstring(path.as_os_str().as_bytes())
}

/// Raw bytes as a C string; an interior NUL is an `InvalidInput` error.
pub(crate) fn bytes_cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains a NUL byte"))
}

/// How often a list/get is retried when the attribute grows between the size query and the
/// read (`ERANGE`).
const XATTR_RETRIES: usize = 8;

/// The attribute names of `path` (`llistxattr`, not following symlinks), in kernel order.
pub(crate) fn list_xattr_names(path: &CStr) -> io::Result<Vec<CString>> {
    let buf = xattr_call(|buf, len| {
        // SAFETY: `path` is a borrowed `CStr`, valid and NUL-terminated for the call.
        // `xattr_call` passes either a null `buf` with `len` 0 (a size query, which writes
        // nothing) or the pointer and length of its own initialised `Vec`, so the kernel
        // writes at most `len` bytes into memory we own.
        unsafe { libc::llistxattr(path.as_ptr(), buf.cast(), len) }
    })?;
    Ok(buf
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        // Names split on NUL contain no NUL, so CString::new cannot fail here.
        .filter_map(|n| CString::new(n).ok())
        .collect())
}

/// The value of attribute `name` of `path` (`lgetxattr`, not following symlinks).
pub(crate) fn get_xattr(path: &CStr, name: &CStr) -> io::Result<Vec<u8>> {
    xattr_call(|buf, len| {
        // SAFETY: `path` and `name` are borrowed `CStr`s, valid and NUL-terminated for the
        // call. `xattr_call` passes either a null `buf` with `len` 0 (a size query, which
        // writes nothing) or the pointer and length of its own initialised `Vec`, so the
        // kernel writes at most `len` bytes into memory we own.
        unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.cast(), len) }
    })
}

/// Runs a size-query-then-read xattr call: `call(null, 0)` returns the needed size,
/// `call(buf, len)` fills the buffer and returns the bytes written, both -1 on error. Retried
/// when the attribute grows between the two calls (`ERANGE`).
fn xattr_call(mut call: impl FnMut(*mut u8, usize) -> isize) -> io::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::new();
    for _ in 0..XATTR_RETRIES {
        let Ok(needed) = usize::try_from(call(std::ptr::null_mut(), 0)) else {
            return Err(io::Error::last_os_error());
        };
        if needed == 0 {
            return Ok(Vec::new());
        }
        buf.resize(needed, 0);
        let Ok(got) = usize::try_from(call(buf.as_mut_ptr(), buf.len())) else {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        };
        buf.truncate(got);
        return Ok(buf);
    }
    Err(io::Error::from_raw_os_error(libc::ERANGE))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::ffi::OsStr;
    use std::os::unix::fs::PermissionsExt;
    use tempfile::TempDir;

    /// Whether the tests run as root (chown, mknod and `trusted.*` need it).
    pub(crate) fn is_root() -> bool {
        // SAFETY: geteuid takes no arguments, touches no memory of ours and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    /// A temporary directory on a filesystem that supports `user.*` xattrs: /tmp when it
    /// does, otherwise one under the crate's target directory.
    pub(crate) fn test_dir() -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        std::fs::write(&probe, b"").unwrap();
        if set_xattr_raw(&probe, "user.probe", b"1").is_ok() {
            std::fs::remove_file(&probe).unwrap();
            return dir;
        }
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&base).unwrap();
        tempfile::tempdir_in(base).unwrap()
    }

    pub(crate) fn set_xattr_raw(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
        let p = path_cstring(path)?;
        let n = bytes_cstring(name.as_bytes())?;
        // SAFETY: `p` and `n` are `CString`s alive across the call (valid, NUL-terminated);
        // `value` is readable for the `value.len()` bytes passed. lsetxattr only reads them.
        let r = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Sets atime and mtime of `path` itself, not following symlinks.
    pub(crate) fn set_times_raw(path: &Path, atime: (i64, i64), mtime: (i64, i64)) {
        let p = path_cstring(path).unwrap();
        let ts = [
            libc::timespec {
                tv_sec: atime.0,
                tv_nsec: atime.1,
            },
            libc::timespec {
                tv_sec: mtime.0,
                tv_nsec: mtime.1,
            },
        ];
        // SAFETY: `p` is a `CString` alive across the call (valid, NUL-terminated); `ts` is a
        // local array of the two initialised timespecs utimensat reads.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                p.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(r, 0, "utimensat: {}", io::Error::last_os_error());
    }

    /// Reads `path` with real atime and xattrs, named after its last component.
    pub(crate) fn read(path: &Path) -> Node {
        let meta = std::fs::symlink_metadata(path).unwrap();
        let name = path.file_name().unwrap().as_bytes();
        let opts = ReadOptions {
            with_atime: true,
            xattrs: true,
        };
        read_node(path, name, &meta, &NameCache::new(), &opts).unwrap()
    }

    /// The attribute names of a node, sorted (xattr listing order is filesystem-defined).
    pub(crate) fn sorted_xattrs(node: &Node) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = node
            .extended_attributes
            .iter()
            .map(|a| (a.name.clone(), a.value.clone()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn file_fields_are_read() {
        let dir = test_dir();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, b"hello").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o4755)).unwrap();
        set_times_raw(&path, (1_600_000_000, 1), (1_500_000_000, 987_654_321));
        let meta = std::fs::symlink_metadata(&path).unwrap();

        let node = read(&path);
        assert_eq!(node.name, b"a.txt");
        assert_eq!(node.node_type, NodeType::File);
        assert_eq!(node.mode, 8389101);
        assert_eq!(
            node.mtime,
            Timestamp {
                secs: 1_500_000_000,
                nanos: 987_654_321
            }
        );
        assert_eq!(
            node.atime,
            Timestamp {
                secs: 1_600_000_000,
                nanos: 1
            }
        );
        assert_eq!(node.ctime.secs, meta.ctime());
        assert_eq!(node.uid, meta.uid());
        assert_eq!(node.gid, meta.gid());
        assert_eq!(
            (node.inode, node.device_id),
            (0, 0),
            "single links record no inode"
        );
        assert_eq!(node.size, 5);
        assert_eq!(node.links, 1);
        assert_eq!(node.content, Some(vec![]));
        assert!(node.link_target.is_empty());
        assert_eq!(node.device, 0);
        if is_root() {
            assert_eq!(node.user, "root");
            assert_eq!(node.group, "root");
        }
    }

    #[test]
    fn atime_is_mtime_unless_asked() {
        let dir = test_dir();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        set_times_raw(&path, (100, 5), (200, 7));
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let opts = ReadOptions {
            with_atime: false,
            xattrs: true,
        };
        let node = read_node(&path, b"f", &meta, &NameCache::default(), &opts).unwrap();
        assert_eq!(
            node.atime,
            Timestamp {
                secs: 200,
                nanos: 7
            }
        );
        assert_eq!(node.mtime, node.atime);
    }

    #[test]
    fn hard_links_are_counted_and_dirs_have_none() {
        let dir = test_dir();
        let a = dir.path().join("a");
        std::fs::write(&a, b"x").unwrap();
        std::fs::hard_link(&a, dir.path().join("b")).unwrap();
        let linked = read(&a);
        assert_eq!(linked.links, 2);
        let meta = std::fs::symlink_metadata(&a).unwrap();
        assert_eq!((linked.inode, linked.device_id), (meta.ino(), meta.dev()));
        let d = dir.path().join("d");
        std::fs::create_dir(&d).unwrap();
        let node = read(&d);
        assert_eq!(node.node_type, NodeType::Dir);
        assert_eq!(node.links, 0);
        assert_eq!(node.size, 0);
        assert_eq!(node.content, None);
        assert_eq!(
            node.mode & crate::filemode::MODE_DIR,
            crate::filemode::MODE_DIR
        );
    }

    #[test]
    fn symlink_to_dir_is_not_followed() {
        let dir = test_dir();
        let target = dir.path().join("d");
        std::fs::create_dir(&target).unwrap();
        set_xattr_raw(&target, "user.dir", b"1").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let node = read(&link);
        assert_eq!(node.node_type, NodeType::Symlink);
        assert_eq!(node.mode, 134218239);
        assert_eq!(node.link_target, target.as_os_str().as_bytes());
        assert_eq!(node.size, 0);
        assert_eq!(node.links, 1);
        assert!(
            node.extended_attributes
                .iter()
                .all(|a| a.name != "user.dir")
        );
    }

    #[test]
    fn non_utf8_names_and_targets_are_raw_bytes() {
        let dir = test_dir();
        let name: &[u8] = b"n\xff\xfe";
        let path = dir.path().join(OsStr::from_bytes(name));
        let target: &[u8] = b"t\x80rget";
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &path).unwrap();
        let node = read(&path);
        assert_eq!(node.name, name);
        assert_eq!(node.link_target, target);
    }

    #[test]
    fn xattrs_are_read_in_list_order_with_raw_values() {
        let dir = test_dir();
        let path = dir.path().join("f");
        std::fs::write(&path, b"").unwrap();
        let all: Vec<u8> = (0..=255).collect();
        set_xattr_raw(&path, "user.b", &all).unwrap();
        set_xattr_raw(&path, "user.a", b"").unwrap();
        set_xattr_raw(&path, "user.big", &vec![7u8; 3000]).unwrap();
        if is_root() {
            set_xattr_raw(&path, "trusted.t", b"tv").unwrap();
        }
        let node = read(&path);
        let listed = list_xattr_names(&path_cstring(&path).unwrap()).unwrap();
        let names: Vec<&str> = node
            .extended_attributes
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        let listed: Vec<&str> = listed.iter().map(|n| n.to_str().unwrap()).collect();
        assert_eq!(names, listed);
        let get = |n: &str| {
            node.extended_attributes
                .iter()
                .find(|a| a.name == n)
                .map(|a| a.value.clone())
        };
        assert_eq!(get("user.b"), Some(all));
        assert_eq!(get("user.a"), Some(vec![]));
        assert_eq!(get("user.big"), Some(vec![7u8; 3000]));
        if is_root() {
            assert_eq!(get("trusted.t"), Some(b"tv".to_vec()));
        }

        let meta = std::fs::symlink_metadata(&path).unwrap();
        let without = read_node(
            &path,
            b"f",
            &meta,
            &NameCache::default(),
            &ReadOptions::default(),
        )
        .unwrap();
        assert!(without.extended_attributes.is_empty());
    }

    #[test]
    fn fifo_and_socket_have_no_links_or_size() {
        let dir = test_dir();
        let fifo = dir.path().join("p");
        let c = path_cstring(&fifo).unwrap();
        // SAFETY: `c` is a `CString` alive across the call (valid, NUL-terminated); mkfifo
        // only reads it.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
        let node = read(&fifo);
        assert_eq!(node.node_type, NodeType::Fifo);
        assert_eq!(node.mode, crate::filemode::MODE_NAMED_PIPE | 0o640);
        assert_eq!((node.links, node.size, node.device), (0, 0, 0));

        let sock = dir.path().join("s");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let node = read(&sock);
        assert_eq!(node.node_type, NodeType::Socket);
        assert_eq!(node.content, None);
        assert_eq!((node.links, node.size), (0, 0));
    }

    #[test]
    fn char_device_records_rdev() {
        if !is_root() {
            return;
        }
        let dir = test_dir();
        let path = dir.path().join("null");
        let c = path_cstring(&path).unwrap();
        let dev = libc::makedev(1, 3);
        // SAFETY: `c` is a `CString` alive across the call (valid, NUL-terminated); mknod only
        // reads it.
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, dev) };
        assert_eq!(rc, 0);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let node = read(&path);
        assert_eq!(node.node_type, NodeType::CharDev);
        assert_eq!(node.mode, 69206454);
        assert_eq!(node.device, dev);
        assert_eq!(node.links, 1);
        assert_eq!(node.size, 0);
    }

    #[test]
    fn name_cache_parses_passwd_and_group() {
        let passwd = b"# comment\nroot:x:0:0:root:/root:/bin/sh\n+nis::7::\nbad line\n\
                       alice:x:1000:1000::/home/alice:/bin/sh\nalias:x:1000:1::/:/bin/sh\n\
                       caf\xc3\xa9:x:1001:1::/:\nweird:x:notanumber:1\n";
        let group = b"root:x:0:\nstaff:x:50:alice,bob\n";
        let names = NameCache::from_bytes(passwd, group);
        assert_eq!(names.user(0), "root");
        assert_eq!(names.user(1000), "alice");
        assert_eq!(names.user(1001), "caf\u{e9}");
        assert_eq!(names.user(7), "");
        assert_eq!(names.user(4242), "");
        assert_eq!(names.group(50), "staff");
        assert_eq!(names.group(1000), "");
    }

    #[test]
    fn name_cache_is_sync() {
        fn assert_sync<T: Sync + Send>() {}
        assert_sync::<NameCache>();
    }

    #[test]
    fn read_errors_name_the_path() {
        let e = ReadError::ListXattrs {
            path: PathBuf::from("/x/y"),
            cause: io::Error::from_raw_os_error(libc::EIO),
        }
        .into_io();
        assert_eq!(e.kind(), io::Error::from_raw_os_error(libc::EIO).kind());
        assert!(
            e.to_string()
                .starts_with("list extended attributes of /x/y: ")
        );
        assert!(e.get_ref().unwrap().downcast_ref::<ReadError>().is_some());
    }

    proptest! {
        #[test]
        fn timestamp_normalises_any_nanoseconds(secs in -(1i64 << 40)..(1i64 << 40), nsecs in any::<i64>()) {
            let t = timestamp(secs, nsecs);
            prop_assert!(t.nanos < 1_000_000_000);
            let total = i128::from(t.secs) * 1_000_000_000 + i128::from(t.nanos);
            prop_assert_eq!(total, i128::from(secs) * 1_000_000_000 + i128::from(nsecs));
        }

        #[test]
        fn timestamp_keeps_valid_pairs(secs in any::<i64>(), nanos in 0u32..1_000_000_000) {
            prop_assert_eq!(timestamp(secs, i64::from(nanos)), Timestamp { secs, nanos });
        }

        #[test]
        fn name_cache_round_trips_generated_lines(
            entries in proptest::collection::vec(("[a-z_][a-z0-9_-]{0,15}", any::<u32>()), 0..20)
        ) {
            let mut text = String::new();
            for (name, id) in &entries {
                text.push_str(&format!("{name}:x:{id}:{id}:gecos:/home/{name}:/bin/sh\n"));
            }
            let names = NameCache::from_bytes(text.as_bytes(), text.as_bytes());
            for (_, id) in &entries {
                let first = &entries.iter().find(|(_, i)| i == id).unwrap().0;
                prop_assert_eq!(&names.user(*id), first);
                prop_assert_eq!(&names.group(*id), first);
            }
        }

        #[test]
        fn name_cache_never_panics_on_garbage(a in proptest::collection::vec(any::<u8>(), 0..400),
                                              b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let names = NameCache::from_bytes(&a, &b);
            let _ = names.user(0);
            let _ = names.group(0);
        }
    }
}
