//! Creating special nodes and applying a [`Node`]'s metadata during a restore (Linux).
//!
//! This module owns the metadata syscalls of a restore: `mknod` for fifos and devices,
//! `symlink`, and `lchown`, `lsetxattr`/`lremovexattr`, `chmod` and `utimensat` on an entry
//! that already exists. It does not create directories or regular files, write file content,
//! decide what to restore or walk trees; that is the restorer's job. Paths are raw bytes and
//! never need to be UTF-8.
//!
//! Every call works on the path it is given. `lchown`, the xattr calls and `utimensat` never
//! follow a final symlink; `chmod` does (Linux has no `lchmod`), which is why it is skipped for
//! symlink nodes. The caller must therefore create and own the directories it restores into.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::filemode::unix_permissions_from_go;
use crate::fsmeta::{bytes_cstring, is_unsupported, list_xattr_names, path_cstring};
use crate::node::{ExtendedAttribute, Node, NodeType, Timestamp};

/// What [`apply_metadata`] and [`remove_extra_xattrs`] restore.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// Restore numeric owner and group with `lchown`; only root may give files away, so this
    /// is true exactly when running as root.
    pub owners: bool,
    /// Restore extended attributes.
    pub xattrs: bool,
    /// Extended attributes whose names match one of these patterns are neither set nor
    /// removed. `*` matches any run of characters (dots included) and `?` one character;
    /// everything else matches itself, so `security.*` excludes the whole namespace and
    /// `security.selinux` one attribute.
    pub exclude_xattr: Vec<String>,
}

impl ApplyOptions {
    /// Owners when the effective uid is 0, xattrs on, no excludes.
    pub fn for_current_user() -> ApplyOptions {
        // SAFETY: geteuid takes no arguments, touches no memory of ours, cannot fail and is
        // thread-safe.
        let euid = unsafe { libc::geteuid() };
        ApplyOptions {
            owners: euid == 0,
            xattrs: true,
            exclude_xattr: Vec::new(),
        }
    }

    /// Whether the attribute `name` matches one of the exclude patterns.
    pub fn is_xattr_excluded(&self, name: &str) -> bool {
        self.exclude_xattr.iter().any(|p| glob_match(p, name))
    }
}

/// Why a restore step failed.
///
/// The functions of this module return these inside an [`io::Error`] of the same kind as the
/// underlying cause (`InvalidInput` for [`ApplyError::InvalidPath`]); `io::Error::get_ref`
/// and `downcast_ref::<ApplyError>` recover the variant. The cause is part of the message and
/// deliberately not a `source`, so that error chains do not print it twice.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The path contains a NUL byte and cannot be passed to the kernel.
    #[error("invalid path {}: contains a NUL byte", .path.display())]
    InvalidPath {
        /// The path.
        path: PathBuf,
    },
    /// `mknod` failed, or the node is not a fifo, device or socket.
    #[error("create {kind} {}: {cause}", .path.display())]
    CreateSpecial {
        /// `fifo`, `block device`, `char device` or the node type that was refused.
        kind: &'static str,
        /// Where the node was to be created.
        path: PathBuf,
        /// The syscall's error.
        cause: io::Error,
    },
    /// `symlink` failed.
    #[error("create symlink {}: {cause}", .path.display())]
    CreateSymlink {
        /// Where the link was to be created.
        path: PathBuf,
        /// The syscall's error.
        cause: io::Error,
    },
    /// `lchown` failed.
    #[error("chown {uid}:{gid} {}: {cause}", .path.display())]
    Chown {
        /// The entry.
        path: PathBuf,
        /// The owner that was to be set.
        uid: u32,
        /// The group that was to be set.
        gid: u32,
        /// The syscall's error.
        cause: io::Error,
    },
    /// `chmod` failed.
    #[error("chmod {mode:o} {}: {cause}", .path.display())]
    Chmod {
        /// The entry.
        path: PathBuf,
        /// The Unix permission bits (including setuid/setgid/sticky) that were to be set.
        mode: u32,
        /// The syscall's error.
        cause: io::Error,
    },
    /// `utimensat` failed, or the node's times cannot be represented.
    #[error("set times of {}: {cause}", .path.display())]
    SetTimes {
        /// The entry.
        path: PathBuf,
        /// The syscall's error.
        cause: io::Error,
    },
    /// `llistxattr` failed.
    #[error("list extended attributes of {}: {cause}", .path.display())]
    ListXattrs {
        /// The entry.
        path: PathBuf,
        /// The syscall's error.
        cause: io::Error,
    },
    /// `lsetxattr` failed.
    #[error("set extended attribute {name} on {}: {cause}", .path.display())]
    SetXattr {
        /// The entry.
        path: PathBuf,
        /// The attribute's name.
        name: String,
        /// The syscall's error.
        cause: io::Error,
    },
    /// `lremovexattr` failed.
    #[error("remove extended attribute {name} from {}: {cause}", .path.display())]
    RemoveXattr {
        /// The entry.
        path: PathBuf,
        /// The attribute's name (lossy UTF-8).
        name: String,
        /// The syscall's error.
        cause: io::Error,
    },
}

impl ApplyError {
    fn into_io(self) -> io::Error {
        let kind = match &self {
            ApplyError::InvalidPath { .. } => io::ErrorKind::InvalidInput,
            ApplyError::CreateSpecial { cause, .. }
            | ApplyError::CreateSymlink { cause, .. }
            | ApplyError::Chown { cause, .. }
            | ApplyError::Chmod { cause, .. }
            | ApplyError::SetTimes { cause, .. }
            | ApplyError::ListXattrs { cause, .. }
            | ApplyError::SetXattr { cause, .. }
            | ApplyError::RemoveXattr { cause, .. } => cause.kind(),
        };
        io::Error::new(kind, self)
    }
}

/// The path as a C string, or an [`ApplyError::InvalidPath`].
fn c_path(path: &Path) -> io::Result<std::ffi::CString> {
    path_cstring(path).map_err(|_| {
        ApplyError::InvalidPath {
            path: path.to_path_buf(),
        }
        .into_io()
    })
}

/// Turns a libc return value into a result, reading `errno` on `-1`.
fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Creates the fifo, block device or character device `node` describes at `path`.
///
/// The new entry gets the permission bits of `node.mode` (minus the umask; setuid, setgid
/// and sticky are left to [`apply_metadata`], which must be called afterwards anyway) and, for
/// devices, `node.device` as its device number. Creating a device needs `CAP_MKNOD`; without
/// it the kernel's `EPERM` is returned (kind `PermissionDenied`).
///
/// Socket nodes create nothing and return `Ok(())`: a socket is only meaningful while a
/// process listens on it, and restic skips sockets on restore too. Callers must therefore not
/// apply metadata to a socket's path. Any other node type is an `InvalidInput` error. An
/// existing entry at `path` is an `AlreadyExists` error.
pub fn create_special(path: &Path, node: &Node) -> io::Result<()> {
    let (kind, file_type) = match node.node_type {
        NodeType::Fifo => ("fifo", libc::S_IFIFO),
        NodeType::Dev => ("block device", libc::S_IFBLK),
        NodeType::CharDev => ("char device", libc::S_IFCHR),
        NodeType::Socket => return Ok(()),
        other => {
            return Err(ApplyError::CreateSpecial {
                kind: node_type_word(other),
                path: path.to_path_buf(),
                cause: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a fifo, device or socket node",
                ),
            }
            .into_io());
        }
    };
    let device = if file_type == libc::S_IFIFO {
        0
    } else {
        node.device
    };
    let cpath = c_path(path)?;
    let mode = file_type | (unix_permissions_from_go(node.mode) & 0o777);
    // SAFETY: `cpath` is a `CString` owned here and alive across the call, so its pointer is
    // valid and NUL-terminated; mknod only reads it. `mode` and `device` are plain integers.
    check(unsafe { libc::mknod(cpath.as_ptr(), mode, device) }).map_err(|cause| {
        ApplyError::CreateSpecial {
            kind,
            path: path.to_path_buf(),
            cause,
        }
        .into_io()
    })
}

/// The JSON word of a node type, for messages.
fn node_type_word(t: NodeType) -> &'static str {
    match t {
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

/// Creates a symlink at `path` pointing to the raw bytes `target` (which need not be UTF-8 and
/// need not exist). An existing entry at `path` is an `AlreadyExists` error; an empty target
/// or one containing NUL is refused by the kernel or std.
pub fn create_symlink(path: &Path, target: &[u8]) -> io::Result<()> {
    std::os::unix::fs::symlink(OsStr::from_bytes(target), path).map_err(|cause| {
        ApplyError::CreateSymlink {
            path: path.to_path_buf(),
            cause,
        }
        .into_io()
    })
}

/// The part of a node that [`apply_metadata`] and [`remove_extra_xattrs`] apply, borrowed from
/// a [`Node`] or from a restore plan's more compact record of one.
#[derive(Clone, Copy, Debug)]
pub struct Metadata<'a> {
    /// The node's type (a symlink's mode is not applied).
    pub node_type: NodeType,
    /// Go `os.FileMode` bits, as in [`Node::mode`].
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Access time.
    pub atime: Timestamp,
    /// Modification time.
    pub mtime: Timestamp,
    /// Extended attributes.
    pub xattrs: &'a [ExtendedAttribute],
}

impl<'a> From<&'a Node> for Metadata<'a> {
    fn from(node: &'a Node) -> Metadata<'a> {
        Metadata {
            node_type: node.node_type,
            mode: node.mode,
            uid: node.uid,
            gid: node.gid,
            atime: node.atime,
            mtime: node.mtime,
            xattrs: &node.extended_attributes,
        }
    }
}

/// Applies `node`'s metadata to the existing entry at `path`.
///
/// Steps, in this order:
/// 1. `lchown(uid, gid)` when `opts.owners`. It comes first because changing the owner makes
///    the kernel drop setuid/setgid bits and the `security.capability` attribute, which the
///    later steps then restore.
/// 2. `lsetxattr` for each of the node's extended attributes when `opts.xattrs`, skipping names
///    that match `opts.exclude_xattr`. `ENOTSUP` (a filesystem or namespace without xattr
///    support) is ignored. Attributes present on `path` but not in `node` are left alone;
///    see [`remove_extra_xattrs`]. This precedes `chmod` so that a read-only mode cannot block
///    writing `user.*` attributes.
/// 3. `chmod` to the permission bits including setuid/setgid/sticky, except for symlinks
///    (Linux has no `lchmod`, and `chmod` would change the target).
/// 4. `utimensat(AT_SYMLINK_NOFOLLOW)` with atime and mtime to the nanosecond, so a
///    symlink's own times are set. It comes last so that nothing above can disturb them.
///
/// A directory must get its metadata after its entries have been created, because creating
/// entries changes its mtime. ctime cannot be set and is left to the kernel. A failing step does not stop the later
/// ones (a missing owner should not also lose the mtime); the first error is returned, as an
/// [`io::Error`] wrapping an [`ApplyError`] with the path. Restic additionally hides
/// permission errors when not running as root; that policy is the caller's.
pub fn apply_metadata<'a>(
    path: &Path,
    node: impl Into<Metadata<'a>>,
    opts: &ApplyOptions,
) -> io::Result<()> {
    let node = node.into();
    let cpath = c_path(path)?;
    let mut first: Option<io::Error> = None;
    let mut keep_first = |result: io::Result<()>| {
        if let Err(e) = result {
            first.get_or_insert(e);
        }
    };

    if opts.owners {
        // SAFETY: `cpath` is a `CString` owned by this function and alive across the call, so
        // its pointer is valid and NUL-terminated; lchown only reads it.
        keep_first(
            check(unsafe { libc::lchown(cpath.as_ptr(), node.uid, node.gid) }).map_err(|cause| {
                ApplyError::Chown {
                    path: path.to_path_buf(),
                    uid: node.uid,
                    gid: node.gid,
                    cause,
                }
                .into_io()
            }),
        );
    }

    if opts.xattrs {
        for attr in node.xattrs {
            if opts.is_xattr_excluded(&attr.name) {
                continue;
            }
            let set_error = |cause| {
                ApplyError::SetXattr {
                    path: path.to_path_buf(),
                    name: attr.name.clone(),
                    cause,
                }
                .into_io()
            };
            let result = bytes_cstring(attr.name.as_bytes())
                .and_then(|name| set_xattr(&cpath, &name, &attr.value));
            match result {
                Err(e) if is_unsupported(&e) => {}
                other => keep_first(other.map_err(set_error)),
            }
        }
    }

    if node.node_type != NodeType::Symlink {
        let mode = unix_permissions_from_go(node.mode);
        // SAFETY: `cpath` is a `CString` owned by this function and alive across the call, so
        // its pointer is valid and NUL-terminated; chmod only reads it.
        keep_first(
            check(unsafe { libc::chmod(cpath.as_ptr(), mode) }).map_err(|cause| {
                ApplyError::Chmod {
                    path: path.to_path_buf(),
                    mode,
                    cause,
                }
                .into_io()
            }),
        );
    }

    keep_first(set_times(&cpath, node.atime, node.mtime).map_err(|cause| {
        ApplyError::SetTimes {
            path: path.to_path_buf(),
            cause,
        }
        .into_io()
    }));

    first.map_or(Ok(()), Err)
}

/// Removes every extended attribute of `path` that `node` does not list, for restores into
/// an existing target. Names matching `opts.exclude_xattr` are kept; nothing happens when
/// `opts.xattrs` is false or the filesystem has no xattr support. An attribute that vanishes
/// meanwhile is not an error. Every removal is attempted; the first error is returned.
/// Without privileges, `trusted.*` attributes are not even listed and so are kept.
pub fn remove_extra_xattrs<'a>(
    path: &Path,
    node: impl Into<Metadata<'a>>,
    opts: &ApplyOptions,
) -> io::Result<()> {
    let node = node.into();
    if !opts.xattrs {
        return Ok(());
    }
    let cpath = c_path(path)?;
    let names = match list_xattr_names(&cpath) {
        Ok(names) => names,
        Err(e) if is_unsupported(&e) => return Ok(()),
        Err(cause) => {
            return Err(ApplyError::ListXattrs {
                path: path.to_path_buf(),
                cause,
            }
            .into_io());
        }
    };
    let mut first: Option<io::Error> = None;
    for name in names {
        let bytes = name.to_bytes();
        if node.xattrs.iter().any(|a| a.name.as_bytes() == bytes) {
            continue;
        }
        let lossy = String::from_utf8_lossy(bytes);
        if opts.is_xattr_excluded(&lossy) {
            continue;
        }
        // SAFETY: `cpath` and `name` are `CString`s alive across the call, so both pointers are
        // valid and NUL-terminated; lremovexattr only reads them.
        match check(unsafe { libc::lremovexattr(cpath.as_ptr(), name.as_ptr()) }) {
            Ok(()) => {}
            Err(e) if is_unsupported(&e) || e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(cause) => {
                first.get_or_insert(
                    ApplyError::RemoveXattr {
                        path: path.to_path_buf(),
                        name: lossy.into_owned(),
                        cause,
                    }
                    .into_io(),
                );
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// `lsetxattr(path, name, value)`, creating or replacing the attribute.
fn set_xattr(path: &CStr, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `path` and `name` are borrowed `CStr`s, valid and NUL-terminated for the whole
    // call; `value` is a borrowed slice, readable for exactly the `value.len()` bytes passed.
    // lsetxattr only reads all three.
    check(unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// Sets atime and mtime of `path` itself (not a symlink's target).
fn set_times(path: &CStr, atime: Timestamp, mtime: Timestamp) -> io::Result<()> {
    let times = [timespec(atime)?, timespec(mtime)?];
    // SAFETY: `path` is a borrowed `CStr`, valid and NUL-terminated for the whole call;
    // `times` is a local array of the two initialised timespecs utimensat reads (nanoseconds
    // checked by `timespec`, so neither is mistaken for UTIME_NOW or UTIME_OMIT).
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// A `timespec` for `t`. Nanoseconds of 1e9 or more are refused here rather than passed on,
/// because the kernel reads two such values as `UTIME_NOW`/`UTIME_OMIT`.
fn timespec(t: Timestamp) -> io::Result<libc::timespec> {
    if t.nanos >= 1_000_000_000 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("nanoseconds {} out of range", t.nanos),
        ));
    }
    Ok(libc::timespec {
        tv_sec: t.secs,
        tv_nsec: i64::from(t.nanos),
    })
}

/// Matches `name` against a pattern where `*` is any run of characters and `?` one
/// character. Runs in O(len(pattern) × len(name)) by backtracking only to the last `*`.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    // The position after the last `*` seen and the name position it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi + 1, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == n.get(ni) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((after, tried)) => {
                    pi = after;
                    ni = tried + 1;
                    star = Some((after, tried + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filemode::{MODE_CHAR_DEVICE, MODE_DEVICE, MODE_NAMED_PIPE};
    use crate::fsmeta::tests::{
        is_root, read, set_times_raw, set_xattr_raw, sorted_xattrs, test_dir,
    };
    use crate::node::ExtendedAttribute;
    use proptest::prelude::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn opts() -> ApplyOptions {
        ApplyOptions {
            owners: is_root(),
            xattrs: true,
            exclude_xattr: Vec::new(),
        }
    }

    /// Asserts that everything a restore should carry over is equal.
    fn assert_restored(orig: &Node, restored: &Node) {
        assert_eq!(restored.node_type, orig.node_type);
        assert_eq!(
            restored.mode, orig.mode,
            "mode {:o} vs {:o}",
            restored.mode, orig.mode
        );
        assert_eq!(restored.mtime, orig.mtime);
        assert_eq!(restored.atime, orig.atime);
        assert_eq!((restored.uid, restored.gid), (orig.uid, orig.gid));
        assert_eq!((&restored.user, &restored.group), (&orig.user, &orig.group));
        assert_eq!(restored.size, orig.size);
        assert_eq!(restored.link_target, orig.link_target);
        assert_eq!(restored.device, orig.device);
        assert_eq!(restored.content, orig.content);
        assert_eq!(sorted_xattrs(restored), sorted_xattrs(orig));
    }

    fn chown_if_root(path: &Path) {
        if is_root() {
            std::os::unix::fs::lchown(path, Some(1234), Some(5678)).unwrap();
        }
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Sets `user.*` attributes (and `trusted.*`/`security.*` ones as root) on `path`.
    fn add_xattrs(path: &Path, user: bool) {
        if user {
            set_xattr_raw(path, "user.comment", b"hi").unwrap();
            set_xattr_raw(path, "user.bytes", &(0..=255).collect::<Vec<u8>>()).unwrap();
            set_xattr_raw(path, "user.empty", b"").unwrap();
        }
        if is_root() {
            set_xattr_raw(path, "trusted.t", b"trusted value").unwrap();
            set_xattr_raw(path, "security.ferry", b"security value").unwrap();
        }
    }

    #[test]
    fn file_round_trips() {
        let dir = test_dir();
        let src = dir.path().join("src");
        std::fs::write(&src, b"hello").unwrap();
        chown_if_root(&src);
        chmod(&src, 0o4755);
        add_xattrs(&src, true);
        set_times_raw(
            &src,
            (1_600_000_000, 123_456_789),
            (1_500_000_000, 987_654_321),
        );
        let orig = read(&src);
        assert_eq!(orig.mode, 8389101);
        assert!(orig.extended_attributes.len() >= 3);
        if is_root() {
            assert_eq!((orig.uid, orig.gid), (1234, 5678));
            assert_eq!(orig.extended_attributes.len(), 5);
        }

        let dst = dir.path().join("dst");
        std::fs::write(&dst, b"hello").unwrap();
        chmod(&dst, 0o600);
        apply_metadata(&dst, &orig, &opts()).unwrap();
        assert_restored(&orig, &read(&dst));
    }

    #[test]
    fn empty_file_and_setgid_round_trip() {
        let dir = test_dir();
        let src = dir.path().join("empty");
        std::fs::write(&src, b"").unwrap();
        chown_if_root(&src);
        chmod(&src, 0o2751);
        set_times_raw(&src, (1, 2), (3, 4));
        let orig = read(&src);
        assert_eq!(orig.size, 0);
        assert_eq!(orig.content, Some(vec![]));

        let dst = dir.path().join("dst");
        std::fs::write(&dst, b"").unwrap();
        apply_metadata(&dst, &orig, &opts()).unwrap();
        assert_restored(&orig, &read(&dst));
    }

    #[test]
    fn directories_round_trip_with_sticky_and_setgid() {
        let dir = test_dir();
        for (i, mode) in [0o1777u32, 0o2755, 0o700].into_iter().enumerate() {
            let src = dir.path().join(format!("src{i}"));
            std::fs::create_dir(&src).unwrap();
            chown_if_root(&src);
            chmod(&src, mode);
            add_xattrs(&src, true);
            set_times_raw(&src, (1_700_000_000, 5), (1_700_000_001, 999_999_999));
            let orig = read(&src);
            assert_eq!(orig.node_type, NodeType::Dir);

            let dst = dir.path().join(format!("dst{i}"));
            std::fs::create_dir(&dst).unwrap();
            apply_metadata(&dst, &orig, &opts()).unwrap();
            assert_restored(&orig, &read(&dst));
        }
    }

    #[test]
    fn symlink_round_trips_with_raw_target_and_own_times() {
        let dir = test_dir();
        let target: &[u8] = b"../t\xffarget/\x01x";
        let src = dir.path().join("src");
        create_symlink(&src, target).unwrap();
        chown_if_root(&src);
        if is_root() {
            set_xattr_raw(&src, "trusted.link", b"on the link").unwrap();
        }
        set_times_raw(&src, (1_400_000_000, 11), (1_400_000_001, 22));
        let orig = read(&src);
        assert_eq!(orig.node_type, NodeType::Symlink);
        assert_eq!(orig.link_target, target);

        let dst = dir.path().join("dst");
        create_symlink(&dst, &orig.link_target).unwrap();
        apply_metadata(&dst, &orig, &opts()).unwrap();
        let restored = read(&dst);
        assert_restored(&orig, &restored);
        assert!(
            std::fs::metadata(&dst).is_err(),
            "the dangling target was created"
        );
    }

    #[test]
    fn symlink_times_do_not_touch_the_target_dir() {
        let dir = test_dir();
        let target = dir.path().join("d");
        std::fs::create_dir(&target).unwrap();
        chmod(&target, 0o711);
        set_times_raw(&target, (10, 10), (20, 20));
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&target, &link).unwrap();

        let mut node = read(&link);
        assert_eq!(node.node_type, NodeType::Symlink);
        node.mtime = Timestamp {
            secs: 1_000_000,
            nanos: 1,
        };
        node.atime = Timestamp {
            secs: 2_000_000,
            nanos: 2,
        };
        apply_metadata(&link, &node, &opts()).unwrap();

        let l = read(&link);
        assert_eq!((l.mtime, l.atime), (node.mtime, node.atime));
        let d = read(&target);
        assert_eq!(
            d.mtime,
            Timestamp {
                secs: 20,
                nanos: 20
            }
        );
        assert_eq!(
            d.atime,
            Timestamp {
                secs: 10,
                nanos: 10
            }
        );
        assert_eq!(d.mode & 0o777, 0o711);
    }

    #[test]
    fn fifo_round_trips() {
        let dir = test_dir();
        let mut template = Node::new("p", NodeType::Fifo);
        template.mode = MODE_NAMED_PIPE | 0o640;
        let src = dir.path().join("src");
        create_special(&src, &template).unwrap();
        chmod(&src, 0o640);
        chown_if_root(&src);
        add_xattrs(&src, false);
        set_times_raw(&src, (5, 6), (7, 8));
        let orig = read(&src);
        assert_eq!(orig.node_type, NodeType::Fifo);
        assert_eq!(orig.mode, MODE_NAMED_PIPE | 0o640);

        let dst = dir.path().join("dst");
        create_special(&dst, &orig).unwrap();
        apply_metadata(&dst, &orig, &opts()).unwrap();
        assert_restored(&orig, &read(&dst));
    }

    #[test]
    fn devices_round_trip_as_root_and_fail_otherwise() {
        let dir = test_dir();
        let mut chardev = Node::new("null", NodeType::CharDev);
        chardev.mode = MODE_DEVICE | MODE_CHAR_DEVICE | 0o666;
        chardev.device = libc::makedev(1, 3);
        if !is_root() {
            let err = create_special(&dir.path().join("null"), &chardev).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
            assert!(err.to_string().starts_with("create char device "));
            return;
        }
        let mut blockdev = Node::new("loop", NodeType::Dev);
        blockdev.mode = MODE_DEVICE | 0o660;
        blockdev.device = libc::makedev(7, 200);

        for template in [chardev, blockdev] {
            let src = dir.path().join("src");
            create_special(&src, &template).unwrap();
            chmod(&src, template.mode & 0o777);
            chown_if_root(&src);
            add_xattrs(&src, false);
            set_times_raw(&src, (50, 60), (70, 80));
            let orig = read(&src);
            assert_eq!(orig.node_type, template.node_type);
            assert_eq!(orig.device, template.device);
            assert_eq!(orig.mode, template.mode);
            assert_eq!(orig.links, 1);

            let dst = dir.path().join("dst");
            create_special(&dst, &orig).unwrap();
            apply_metadata(&dst, &orig, &opts()).unwrap();
            let restored = read(&dst);
            assert_restored(&orig, &restored);
            assert_eq!(
                std::fs::symlink_metadata(&dst).unwrap().rdev(),
                template.device
            );
            std::fs::remove_file(&src).unwrap();
            std::fs::remove_file(&dst).unwrap();
        }
    }

    #[test]
    fn sockets_are_skipped_and_other_types_refused() {
        let dir = test_dir();
        let path = dir.path().join("s");
        create_special(&path, &Node::new("s", NodeType::Socket)).unwrap();
        assert!(std::fs::symlink_metadata(&path).is_err());

        let err = create_special(&path, &Node::new("f", NodeType::File)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().starts_with("create file "));
        assert!(std::fs::symlink_metadata(&path).is_err());
    }

    #[test]
    fn excluded_xattrs_are_not_set() {
        let dir = test_dir();
        let mut node = Node::new("f", NodeType::File);
        node.mode = 0o644;
        for name in ["user.keep", "user.skip.a", "user.skip.b", "user.x1"] {
            node.extended_attributes.push(ExtendedAttribute {
                name: name.into(),
                value: name.as_bytes().to_vec(),
            });
        }
        if is_root() {
            node.extended_attributes.push(ExtendedAttribute {
                name: "security.ferry".into(),
                value: b"s".to_vec(),
            });
        }
        let path = dir.path().join("f");
        std::fs::write(&path, b"").unwrap();
        let o = ApplyOptions {
            exclude_xattr: vec!["user.skip*".into(), "security.*".into(), "user.x?".into()],
            ..opts()
        };
        apply_metadata(&path, &node, &o).unwrap();
        let got: Vec<String> = read(&path)
            .extended_attributes
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(got, vec!["user.keep".to_string()]);

        let none = ApplyOptions {
            xattrs: false,
            ..opts()
        };
        let other = dir.path().join("g");
        std::fs::write(&other, b"").unwrap();
        apply_metadata(&other, &node, &none).unwrap();
        assert!(read(&other).extended_attributes.is_empty());
    }

    #[test]
    fn extra_xattrs_are_removed_except_excluded_ones() {
        let dir = test_dir();
        let path = dir.path().join("f");
        std::fs::write(&path, b"").unwrap();
        for name in ["user.a", "user.b", "user.c", "user.d"] {
            set_xattr_raw(&path, name, b"old").unwrap();
        }
        if is_root() {
            set_xattr_raw(&path, "trusted.gone", b"old").unwrap();
        }
        let mut node = Node::new("f", NodeType::File);
        node.mode = 0o644;
        node.extended_attributes.push(ExtendedAttribute {
            name: "user.a".into(),
            value: b"new".to_vec(),
        });
        let o = ApplyOptions {
            exclude_xattr: vec!["user.c".into()],
            ..opts()
        };

        let off = ApplyOptions {
            xattrs: false,
            ..o.clone()
        };
        remove_extra_xattrs(&path, &node, &off).unwrap();
        assert!(read(&path).extended_attributes.len() >= 4);

        remove_extra_xattrs(&path, &node, &o).unwrap();
        apply_metadata(&path, &node, &o).unwrap();
        assert_eq!(
            sorted_xattrs(&read(&path)),
            vec![
                ("user.a".to_string(), b"new".to_vec()),
                ("user.c".to_string(), b"old".to_vec())
            ]
        );
    }

    /// Capability number of CAP_NET_RAW (linux/capability.h).
    const CAP_NET_RAW: u32 = 13;

    /// `security.capability` for a v2 capability set with only CAP_NET_RAW permitted.
    fn net_raw_capability() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&0x0200_0000u32.to_le_bytes());
        v.extend_from_slice(&(1u32 << CAP_NET_RAW).to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v
    }

    #[test]
    fn file_capabilities_survive_the_chown() {
        if !is_root() {
            return;
        }
        let dir = test_dir();
        let src = dir.path().join("src");
        std::fs::write(&src, b"#!/bin/true\n").unwrap();
        chown_if_root(&src);
        chmod(&src, 0o755);
        set_xattr_raw(&src, "security.capability", &net_raw_capability()).unwrap();
        let orig = read(&src);
        assert!(
            orig.extended_attributes
                .iter()
                .any(|a| a.name == "security.capability")
        );

        let dst = dir.path().join("dst");
        std::fs::write(&dst, b"#!/bin/true\n").unwrap();
        apply_metadata(&dst, &orig, &opts()).unwrap();
        assert_restored(&orig, &read(&dst));
    }

    #[test]
    fn times_before_1970_round_trip() {
        let dir = test_dir();
        let src = dir.path().join("old");
        std::fs::write(&src, b"x").unwrap();
        set_times_raw(&src, (-1, 0), (-2, 500_000_000));
        let orig = read(&src);
        assert_eq!(
            orig.mtime,
            Timestamp {
                secs: -2,
                nanos: 500_000_000
            }
        );
        let dst = dir.path().join("new");
        std::fs::write(&dst, b"x").unwrap();
        apply_metadata(&dst, &orig, &opts()).unwrap();
        assert_restored(&orig, &read(&dst));
    }

    #[test]
    fn errors_carry_the_path_and_keep_going() {
        let dir = test_dir();
        let missing = dir.path().join("missing\u{e9}");
        let node = Node::new("x", NodeType::File);
        let err = apply_metadata(&missing, &node, &opts()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let msg = err.to_string();
        let first = if is_root() { "chown 0:0 " } else { "chmod 0 " };
        assert!(
            msg.starts_with(&format!("{first}{}: ", missing.display())),
            "{msg}"
        );
        assert!(
            err.get_ref()
                .unwrap()
                .downcast_ref::<ApplyError>()
                .is_some()
        );

        // An impossible nanosecond value fails the times step but not the chmod before it.
        let path = dir.path().join("f");
        std::fs::write(&path, b"").unwrap();
        let mut bad = Node::new("f", NodeType::File);
        bad.mode = 0o604;
        bad.mtime.nanos = 1_073_741_823;
        let err = apply_metadata(&path, &bad, &opts()).unwrap_err();
        assert!(err.to_string().starts_with("set times of "), "{err}");
        assert_eq!(read(&path).mode, 0o604);

        let err = apply_metadata(Path::new("a\0b"), &bad, &opts()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn non_utf8_paths_work() {
        let dir = test_dir();
        let path = dir.path().join(OsStr::from_bytes(b"\xff\xfe name"));
        std::fs::write(&path, b"").unwrap();
        let mut node = Node::new(&b"\xff\xfe name"[..], NodeType::File);
        node.mode = 0o640;
        node.mtime = Timestamp { secs: 9, nanos: 9 };
        node.atime = node.mtime;
        node.extended_attributes.push(ExtendedAttribute {
            name: "user.k".into(),
            value: vec![0, 1, 2],
        });
        apply_metadata(&path, &node, &opts()).unwrap();
        let got = read(&path);
        assert_eq!(got.mode, 0o640);
        assert_eq!(got.mtime, node.mtime);
        assert_eq!(got.extended_attributes, node.extended_attributes);
    }

    #[test]
    fn glob_examples() {
        assert!(glob_match("security.selinux", "security.selinux"));
        assert!(!glob_match("security.selinux", "security.selinux2"));
        assert!(glob_match("security.*", "security.selinux"));
        assert!(glob_match("security.*", "security."));
        assert!(!glob_match("security.*", "user.security.x"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*.*x", "a.b.cx"));
        assert!(glob_match("u?er.*", "user.a"));
        assert!(!glob_match("u?er.*", "uer.a"));
        assert!(!glob_match("", "a"));
        assert!(glob_match("a**b", "ab"));
    }

    #[test]
    fn for_current_user_matches_euid() {
        let o = ApplyOptions::for_current_user();
        assert_eq!(o.owners, is_root());
        assert!(o.xattrs);
        assert!(o.exclude_xattr.is_empty());
    }

    proptest! {
        #[test]
        fn glob_literal_matches_only_itself(a in "[a-z.]{0,12}", b in "[a-z.]{0,12}") {
            prop_assert!(glob_match(&a, &a));
            prop_assert_eq!(glob_match(&a, &b), a == b);
        }

        #[test]
        fn glob_prefix_star_matches_extensions(p in "[a-z.]{0,8}", s in "[a-z.?*]{0,8}") {
            let name = format!("{p}{s}");
            let pattern = format!("{p}*");
            prop_assert!(glob_match(&pattern, &name));
            prop_assert!(glob_match("*", &name));
        }

        #[test]
        fn glob_question_marks_match_any_char(name in "[a-zé.]{1,12}", mask in any::<u16>()) {
            let pattern: String = name
                .chars()
                .enumerate()
                .map(|(i, c)| if mask & (1 << (i % 16)) != 0 { '?' } else { c })
                .collect();
            prop_assert!(glob_match(&pattern, &name));
            let longer = format!("{name}x");
            prop_assert!(!glob_match(&pattern, &longer));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn apply_then_read_round_trips(
            perm in 0u32..0o10000,
            mtime in (-2_000_000_000i64..5_000_000_000, 0u32..1_000_000_000),
            atime in (-2_000_000_000i64..5_000_000_000, 0u32..1_000_000_000),
            xattrs in proptest::collection::btree_map("[a-z0-9._-]{1,20}",
                proptest::collection::vec(any::<u8>(), 0..300), 0..5),
        ) {
            // Reading `user.*` attributes needs read permission unless running as root.
            let perm = if is_root() { perm } else { perm | 0o400 };
            let dir = test_dir();
            let path = dir.path().join("f");
            std::fs::write(&path, b"").unwrap();
            let mut node = Node::new("f", NodeType::File);
            node.mode = crate::filemode::go_mode_from_unix(libc::S_IFREG | perm);
            node.mtime = Timestamp { secs: mtime.0, nanos: mtime.1 };
            node.atime = Timestamp { secs: atime.0, nanos: atime.1 };
            let meta = std::fs::symlink_metadata(&path).unwrap();
            node.uid = meta.uid();
            node.gid = meta.gid();
            node.extended_attributes = xattrs
                .into_iter()
                .map(|(k, v)| ExtendedAttribute { name: format!("user.{k}"), value: v })
                .collect();
            apply_metadata(&path, &node, &opts()).unwrap();
            let got = read(&path);
            prop_assert_eq!(got.mode, node.mode);
            prop_assert_eq!(got.mtime, node.mtime);
            prop_assert_eq!(got.atime, node.atime);
            prop_assert_eq!(sorted_xattrs(&got), sorted_xattrs(&node));
        }
    }
}
