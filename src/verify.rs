//! A canonical digest of a directory tree, for checking that a restore reproduced its source.
//!
//! After the final restore of a migration, the source and the destination each call [`digest`]
//! on their tree and the coordinator compares the two 32-byte results. This module owns the
//! walk, the content hashing and the byte encoding behind that digest; it does not compare
//! digests, decide what to do about a mismatch, or know anything about snapshots or
//! repositories. Equal trees give equal digests on any Linux machine; a difference in any
//! covered field changes the digest.
//!
//! # What is covered
//!
//! Every entry *below* the root, visited in canonical order: sorted by the raw bytes of its
//! path relative to the root, components joined with `/`. Per entry:
//!
//! | Field | Covered for | Encoding |
//! |---|---|---|
//! | relative path (raw bytes, need not be UTF-8) | all | length-prefixed bytes |
//! | type: file, directory, symlink, fifo, socket, block device, char device | all | one byte |
//! | permission bits incl. setuid, setgid, sticky (`st_mode & 0o7777`) | all but symlinks | u32 |
//! | numeric uid and gid | all | u32 each |
//! | mtime seconds and nanoseconds | all | i64 each |
//! | size and BLAKE3 of the content (holes read as zeros) | regular files | u64, 32 bytes |
//! | hard-link group: path of the first entry (canonical order) with the same inode | regular files | flag byte, then length-prefixed bytes |
//! | target (raw bytes) | symlinks | length-prefixed bytes |
//! | device major and minor (`st_rdev`) | block and char devices | u32 each |
//! | extended attributes not excluded by [`VerifyOptions::exclude_xattr`], sorted by name bytes | all | count, then length-prefixed name and value |
//!
//! POSIX ACLs and file capabilities are covered as the extended attributes the kernel shows
//! them as (`system.posix_acl_access`, `security.capability`, ...).
//!
//! A regular file is in a hard-link group only when at least one other name of its inode is
//! inside the tree; a file whose other links are all outside the tree is encoded exactly like a
//! file with one link. Every member of a group, the first included, records the first member's
//! path, so the link structure is covered but inode numbers are not.
//!
//! # What is not covered
//!
//! - the root directory's own metadata (a snapshot records no node for its root);
//! - inode numbers, link counts as such, and the device id of the filesystem;
//! - atime (reading changes it) and ctime (it cannot be set);
//! - permission bits of symlinks (Linux cannot set them);
//! - directory sizes, block counts and the placement of holes in sparse files;
//! - the order in which a directory lists its entries;
//! - extended attributes whose names match an exclude pattern.
//!
//! # Walk
//!
//! Symlinks are never followed, except that `root` itself may be a symlink to a directory.
//! The walk does not stop at mount points below the root. The tree must be quiescent: a
//! regular file whose size or inode changes while it is hashed is an error, not a silent
//! mismatch. Directories are listed and their entries stat'ed in parallel, and file contents are
//! hashed in parallel, on a rayon pool of [`VerifyOptions::threads`] threads; the results are
//! then fed in canonical order into one BLAKE3 hasher in key-derivation mode, so the thread
//! count never changes the digest.
//!
//! # Stream format
//!
//! Every field is a one-byte tag followed by a fixed-width little-endian integer or by a u64
//! length and that many bytes, and which fields follow depends only on the type byte, so the
//! stream decodes in exactly one way and no two different entry lists produce the same bytes.
//! The stream ends with an end tag and the number of entries.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::fsapply::glob_match;
use crate::fsmeta;

/// What [`digest`] leaves out and how it runs.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Extended attributes whose names match one of these patterns are not covered (e.g.
    /// `security.selinux`). `*` matches any run of characters (dots included), `?` exactly one
    /// character, anything else itself; the same patterns as the restore's excludes. Names
    /// that are not UTF-8 are matched in their lossy UTF-8 form.
    pub exclude_xattr: Vec<String>,
    /// Worker threads for walking and hashing; 0 = one per core. Does not affect the digest.
    pub threads: usize,
    /// Cancelling ends the digest with [`VerifyError::Cancelled`] at the next directory or file.
    pub cancel: tokio_util::sync::CancellationToken,
}

/// The digest of a tree and what it covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// The tree digest; compare this.
    pub digest: [u8; 32],
    /// Entries below the root, of every type.
    pub entries: u64,
    /// Regular files among them, each name of a hard-linked inode counted.
    pub files: u64,
    /// Sum of the sizes of those files, each name of a hard-linked inode counted.
    pub bytes: u64,
}

impl VerifyReport {
    /// The digest as 64 lower-case hex digits.
    pub fn hex(&self) -> String {
        use std::fmt::Write;
        self.digest
            .iter()
            .fold(String::with_capacity(64), |mut s, b| {
                // Writing to a String cannot fail.
                let _ = write!(s, "{b:02x}");
                s
            })
    }
}

/// Why a tree could not be digested.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The digest was cancelled.
    #[error("verify cancelled")]
    Cancelled,
    /// A system call on an entry failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done, e.g. `read directory`.
        what: &'static str,
        /// The entry, lossily converted to UTF-8.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The root is not a directory.
    #[error("digest tree {0}: not a directory")]
    NotADirectory(String),
    /// A file was replaced, grew or shrank while it was hashed.
    #[error("hash file {0}: it changed while it was read")]
    Changed(String),
    /// `st_mode` has a file type Linux does not define.
    #[error("stat {path}: unknown file type in mode {mode:#o}")]
    UnknownType {
        /// The entry, lossily converted to UTF-8.
        path: String,
        /// The raw `st_mode`.
        mode: u32,
    },
    /// The worker pool could not be started.
    #[error("start digest worker threads: {0}")]
    Pool(String),
}

/// Computes the digest of the tree under `root`.
///
/// `root`'s own metadata is not covered, and `root` may be a symlink to a directory; nothing
/// below it is followed. See the module documentation for exactly what is covered. Fails on
/// the first entry that cannot be read; the digest of a partly readable tree is never returned.
/// Blocks on file I/O and runs its own thread pool; from async code call it through
/// `spawn_blocking`.
pub fn digest(root: &Path, opts: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let meta = fs::metadata(root).map_err(io_error("stat", root))?;
    if !meta.is_dir() {
        return Err(VerifyError::NotADirectory(lossy(root)));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        // Each directory level nests a few rayon frames; deep trees need room.
        .stack_size(16 << 20)
        .thread_name(|i| format!("ferry-verify-{i}"))
        .build()
        .map_err(|e| VerifyError::Pool(e.to_string()))?;
    pool.install(|| digest_in_pool(root, opts))
}

fn digest_in_pool(root: &Path, opts: &VerifyOptions) -> Result<VerifyReport, VerifyError> {
    let mut entries = walk_dir(root, &[], opts)?;
    entries.par_sort_unstable_by(|a, b| a.rel.cmp(&b.rel));

    let links = link_groups(&entries);
    // Only the first name of an inode is read; the others share its hash.
    let to_hash: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(i, e)| e.kind == Kind::File && links.inode_first.get(i).is_none_or(|f| f == i))
        .map(|(i, _)| i)
        .collect();
    let hashes: Vec<(usize, [u8; 32])> = to_hash
        .par_iter()
        .map(|&i| {
            if opts.cancel.is_cancelled() {
                return Err(VerifyError::Cancelled);
            }
            hash_file(root, &entries[i]).map(|h| (i, h))
        })
        .collect::<Result<_, _>>()?;
    let mut content: Vec<Option<[u8; 32]>> = vec![None; entries.len()];
    for (i, h) in hashes {
        content[i] = Some(h);
    }

    let mut hasher = blake3::Hasher::new_derive_key(DIGEST_CONTEXT);
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut buf = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let file = if entry.kind == Kind::File {
            files += 1;
            bytes = bytes.saturating_add(entry.size);
            let first = links.inode_first.get(&i).copied().unwrap_or(i);
            let hash = content.get(first).copied().flatten().unwrap_or([0; 32]);
            let group = links
                .group_first
                .get(&i)
                .map(|&f| entries[f].rel.as_slice());
            Some((hash, group))
        } else {
            None
        };
        buf.clear();
        encode_entry(&mut buf, entry, file);
        hasher.update(&buf);
    }
    buf.clear();
    encode_end(&mut buf, entries.len() as u64);
    hasher.update(&buf);
    Ok(VerifyReport {
        digest: *hasher.finalize().as_bytes(),
        entries: entries.len() as u64,
        files,
        bytes,
    })
}

/// The BLAKE3 key-derivation context; changing the stream format must change it.
const DIGEST_CONTEXT: &str = "ferry 2025 tree verification digest v1";

/// One entry below the root, as the walk found it.
#[derive(Clone, Debug, Default)]
struct Entry {
    /// Path relative to the root, `/`-separated, raw bytes.
    rel: Vec<u8>,
    kind: Kind,
    /// `st_mode & 0o7777`.
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: i64,
    size: u64,
    nlink: u64,
    dev: u64,
    ino: u64,
    /// Device major and minor, for block and char devices.
    rdev: (u32, u32),
    /// Symlink target.
    target: Vec<u8>,
    /// Covered attributes, sorted by name.
    xattrs: Vec<Xattr>,
}

/// An extended attribute: name and value, raw bytes.
type Xattr = (Vec<u8>, Vec<u8>);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Kind {
    #[default]
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    BlockDevice,
    CharDevice,
}

impl Kind {
    /// The type byte of the stream; never reuse a value.
    fn code(self) -> u8 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
            Kind::Fifo => 4,
            Kind::Socket => 5,
            Kind::BlockDevice => 6,
            Kind::CharDevice => 7,
        }
    }
}

/// Lists `dir_rel` and returns its entries and, recursively, those of its subdirectories, in
/// no particular order. Entries of one directory are stat'ed in parallel and subdirectories
/// walked in parallel.
fn walk_dir(root: &Path, dir_rel: &[u8], opts: &VerifyOptions) -> Result<Vec<Entry>, VerifyError> {
    if opts.cancel.is_cancelled() {
        return Err(VerifyError::Cancelled);
    }
    let dir = abs_path(root, dir_rel);
    let mut names = Vec::new();
    for item in fs::read_dir(&dir).map_err(io_error("read directory", &dir))? {
        let item = item.map_err(io_error("read directory", &dir))?;
        names.push(item.file_name().into_vec());
    }
    let parts: Vec<Vec<Entry>> = names
        .into_par_iter()
        .map(|name| {
            let rel = if dir_rel.is_empty() {
                name
            } else {
                let mut rel = Vec::with_capacity(dir_rel.len() + 1 + name.len());
                rel.extend_from_slice(dir_rel);
                rel.push(b'/');
                rel.extend_from_slice(&name);
                rel
            };
            let entry = stat_entry(root, rel, opts)?;
            if entry.kind == Kind::Dir {
                let mut below = walk_dir(root, &entry.rel, opts)?;
                below.push(entry);
                Ok(below)
            } else {
                Ok(vec![entry])
            }
        })
        .collect::<Result<_, VerifyError>>()?;
    Ok(parts.into_iter().flatten().collect())
}

/// Reads the metadata, symlink target and extended attributes of one entry, never following
/// a symlink.
fn stat_entry(root: &Path, rel: Vec<u8>, opts: &VerifyOptions) -> Result<Entry, VerifyError> {
    let path = abs_path(root, &rel);
    let meta = fs::symlink_metadata(&path).map_err(io_error("stat", &path))?;
    let ft = meta.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else if ft.is_block_device() {
        Kind::BlockDevice
    } else if ft.is_char_device() {
        Kind::CharDevice
    } else {
        return Err(VerifyError::UnknownType {
            path: lossy(&path),
            mode: meta.mode(),
        });
    };
    let target = if kind == Kind::Symlink {
        fs::read_link(&path)
            .map_err(io_error("read symlink", &path))?
            .into_os_string()
            .into_vec()
    } else {
        Vec::new()
    };
    let rdev = if matches!(kind, Kind::BlockDevice | Kind::CharDevice) {
        let raw = meta.rdev() as libc::dev_t;
        (libc::major(raw), libc::minor(raw))
    } else {
        (0, 0)
    };
    let xattrs = read_xattrs(&path, opts)?;
    Ok(Entry {
        rel,
        kind,
        perm: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: meta.mtime(),
        mtime_nsec: meta.mtime_nsec(),
        size: if kind == Kind::File { meta.len() } else { 0 },
        nlink: meta.nlink(),
        dev: meta.dev(),
        ino: meta.ino(),
        rdev,
        target,
        xattrs,
    })
}

/// Hard-link structure of the sorted entry list, by entry index.
#[derive(Debug, Default)]
struct Links {
    /// For every regular file with more than one link: the first entry of its inode, which
    /// may be the entry itself. Used to hash each inode once.
    inode_first: HashMap<usize, usize>,
    /// For regular files whose inode has at least two names in the tree: the first of them.
    group_first: HashMap<usize, usize>,
}

fn link_groups(entries: &[Entry]) -> Links {
    let mut first_of: HashMap<(u64, u64), (usize, usize)> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if e.kind == Kind::File && e.nlink > 1 {
            first_of.entry((e.dev, e.ino)).or_insert((i, 0)).1 += 1;
        }
    }
    let mut links = Links::default();
    for (i, e) in entries.iter().enumerate() {
        if let Some(&(first, names)) = first_of.get(&(e.dev, e.ino))
            && e.kind == Kind::File
            && e.nlink > 1
        {
            links.inode_first.insert(i, first);
            if names > 1 {
                links.group_first.insert(i, first);
            }
        }
    }
    links
}

/// Size of the read buffer of each hashing thread.
const READ_BUFFER: usize = 1 << 20;

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The BLAKE3 of a regular file's content, read through the file system (holes read as
/// zeros). Fails with [`VerifyError::Changed`] when the file is no longer the inode the walk
/// saw or its length differs from the walk's size.
fn hash_file(root: &Path, entry: &Entry) -> Result<[u8; 32], VerifyError> {
    let path = abs_path(root, &entry.rel);
    let mut file = open_for_hashing(&path).map_err(io_error("open", &path))?;
    let meta = file.metadata().map_err(io_error("stat", &path))?;
    if !meta.is_file() || meta.ino() != entry.ino || meta.dev() != entry.dev {
        return Err(VerifyError::Changed(lossy(&path)));
    }
    let mut hasher = blake3::Hasher::new();
    BUFFER
        .with_borrow_mut(|buf| {
            buf.resize(READ_BUFFER, 0);
            loop {
                match file.read(buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        hasher.update(buf.get(..n).unwrap_or_default());
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .map_err(io_error("read", &path))?;
    if hasher.count() != entry.size {
        return Err(VerifyError::Changed(lossy(&path)));
    }
    Ok(*hasher.finalize().as_bytes())
}

/// Opens without following a final symlink, without blocking should a fifo have replaced the
/// file, and without touching atime where the kernel allows it (`O_NOATIME` needs ownership
/// or `CAP_FOWNER`; without them the open is retried plainly).
fn open_for_hashing(path: &Path) -> io::Result<fs::File> {
    let flags = libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let noatime = fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags | libc::O_NOATIME)
        .open(path);
    match noatime {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(path),
        other => other,
    }
}

/// The covered extended attributes of `path` itself, sorted by name. A file system without
/// xattr support has none; an attribute removed between listing and reading is skipped.
fn read_xattrs(path: &Path, opts: &VerifyOptions) -> Result<Vec<Xattr>, VerifyError> {
    let cpath = fsmeta::path_cstring(path).map_err(io_error("list xattrs of", path))?;
    let names = match fsmeta::list_xattr_names(&cpath) {
        Ok(names) => names,
        Err(e) if fsmeta::is_unsupported(&e) => return Ok(Vec::new()),
        Err(e) => return Err(io_error("list xattrs of", path)(e)),
    };
    let mut attrs = Vec::new();
    for cname in names {
        let name = cname.as_bytes();
        if is_excluded(&opts.exclude_xattr, name) {
            continue;
        }
        match fsmeta::get_xattr(&cpath, &cname) {
            Ok(value) => attrs.push((name.to_vec(), value)),
            Err(e) if fsmeta::is_unsupported(&e) || e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(io_error("read xattr of", path)(e)),
        }
    }
    attrs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(attrs)
}

/// Whether an attribute name matches one of the exclude patterns (the restore's globs).
fn is_excluded(patterns: &[String], name: &[u8]) -> bool {
    if patterns.is_empty() {
        return false;
    }
    let name = String::from_utf8_lossy(name);
    patterns.iter().any(|p| glob_match(p, &name))
}

// Field tags of the stream. Each tag is followed by the encoding its comment names.
/// Start of an entry; no payload.
const TAG_ENTRY: u8 = b'E';
/// Relative path: u64 length, bytes.
const TAG_PATH: u8 = b'p';
/// Type: one byte, [`Kind::code`].
const TAG_KIND: u8 = b'k';
/// Permission bits: u32.
const TAG_PERM: u8 = b'm';
/// Owner: u32 uid, u32 gid.
const TAG_OWNER: u8 = b'o';
/// Modification time: i64 seconds, i64 nanoseconds.
const TAG_MTIME: u8 = b't';
/// Regular file content: u64 size, 32-byte BLAKE3.
const TAG_CONTENT: u8 = b'c';
/// Hard-link group: byte 0 (none) or byte 1, u64 length, path bytes of the first member.
const TAG_LINK: u8 = b'h';
/// Symlink target: u64 length, bytes.
const TAG_TARGET: u8 = b'l';
/// Device: u32 major, u32 minor.
const TAG_RDEV: u8 = b'r';
/// Extended attributes: u64 count, then per attribute u64 length and name bytes, u64 length
/// and value bytes.
const TAG_XATTRS: u8 = b'x';
/// End of the stream: u64 number of entries.
const TAG_END: u8 = b'Z';

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Appends the stream bytes of one entry to `out`. `file` is the content hash and hard-link
/// group of a regular file.
fn encode_entry(out: &mut Vec<u8>, e: &Entry, file: Option<([u8; 32], Option<&[u8]>)>) {
    out.extend_from_slice(&[TAG_ENTRY, TAG_PATH]);
    put_bytes(out, &e.rel);
    out.extend_from_slice(&[TAG_KIND, e.kind.code()]);
    if e.kind != Kind::Symlink {
        out.push(TAG_PERM);
        out.extend_from_slice(&e.perm.to_le_bytes());
    }
    out.push(TAG_OWNER);
    out.extend_from_slice(&e.uid.to_le_bytes());
    out.extend_from_slice(&e.gid.to_le_bytes());
    out.push(TAG_MTIME);
    out.extend_from_slice(&e.mtime.to_le_bytes());
    out.extend_from_slice(&e.mtime_nsec.to_le_bytes());
    match e.kind {
        Kind::File => {
            let (hash, group) = file.unwrap_or_default();
            out.push(TAG_CONTENT);
            out.extend_from_slice(&e.size.to_le_bytes());
            out.extend_from_slice(&hash);
            if let Some(first) = group {
                out.extend_from_slice(&[TAG_LINK, 1]);
                put_bytes(out, first);
            } else {
                out.extend_from_slice(&[TAG_LINK, 0]);
            }
        }
        Kind::Symlink => {
            out.push(TAG_TARGET);
            put_bytes(out, &e.target);
        }
        Kind::BlockDevice | Kind::CharDevice => {
            out.push(TAG_RDEV);
            out.extend_from_slice(&e.rdev.0.to_le_bytes());
            out.extend_from_slice(&e.rdev.1.to_le_bytes());
        }
        Kind::Dir | Kind::Fifo | Kind::Socket => {}
    }
    out.push(TAG_XATTRS);
    out.extend_from_slice(&(e.xattrs.len() as u64).to_le_bytes());
    for (name, value) in &e.xattrs {
        put_bytes(out, name);
        put_bytes(out, value);
    }
}

/// Appends the end of the stream to `out`.
fn encode_end(out: &mut Vec<u8>, entries: u64) {
    out.push(TAG_END);
    out.extend_from_slice(&entries.to_le_bytes());
}

fn abs_path(root: &Path, rel: &[u8]) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

fn lossy(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> VerifyError + 'a {
    move |source| VerifyError::Io {
        what,
        path: lossy(path),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::process::Command;
    use tempfile::TempDir;

    /// The fixed mtime that [`pin_times`] gives every entry.
    const PINNED: (i64, i64) = (1_600_000_000, 123_456_789);

    fn is_root() -> bool {
        // SAFETY: geteuid takes no arguments, touches no memory of ours and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    fn cstr(path: &Path) -> std::ffi::CString {
        fsmeta::path_cstring(path).unwrap()
    }

    use crate::fsmeta::tests::set_xattr_raw as set_xattr;

    /// Sets atime and mtime of `path` itself; `None` leaves that time alone.
    fn set_times(path: &Path, atime: Option<(i64, i64)>, mtime: Option<(i64, i64)>) {
        let ts = |t: Option<(i64, i64)>| match t {
            Some((s, ns)) => libc::timespec {
                tv_sec: s,
                tv_nsec: ns,
            },
            None => libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
        };
        let times = [ts(atime), ts(mtime)];
        let p = cstr(path);
        // SAFETY: `p` is a `CString` alive across the call (valid, NUL-terminated); `times` is a
        // local array of the two initialised timespecs utimensat reads.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                p.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(
            r,
            0,
            "utimensat {}: {}",
            path.display(),
            io::Error::last_os_error()
        );
    }

    fn lchown(path: &Path, uid: u32, gid: u32) {
        let p = cstr(path);
        // SAFETY: `p` is a `CString` alive across the call (valid, NUL-terminated); lchown only
        // reads it.
        assert_eq!(unsafe { libc::lchown(p.as_ptr(), uid, gid) }, 0);
    }

    fn mknod(path: &Path, mode: libc::mode_t, major: u32, minor: u32) {
        let p = cstr(path);
        // SAFETY: `p` is a `CString` alive across the call (valid, NUL-terminated); mknod only
        // reads it.
        let r = unsafe { libc::mknod(p.as_ptr(), mode, libc::makedev(major, minor)) };
        assert_eq!(
            r,
            0,
            "mknod {}: {}",
            path.display(),
            io::Error::last_os_error()
        );
    }

    /// A temporary directory on a file system with `user.*` xattrs: /tmp when it has them,
    /// otherwise one under the crate's target directory.
    fn test_dir() -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        fs::write(&probe, b"").unwrap();
        if set_xattr(&probe, "user.probe", b"1").is_ok() {
            fs::remove_file(&probe).unwrap();
            return dir;
        }
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        fs::create_dir_all(&base).unwrap();
        tempfile::tempdir_in(base).unwrap()
    }

    /// `cp -a` of `src` to the new directory `dst`, writing holes out as zeros.
    fn cp_a(src: &Path, dst: &Path) {
        let status = Command::new("cp")
            .args(["-a", "--sparse=never"])
            .arg(src)
            .arg(dst)
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Sets the mtime of every entry below `root` to [`PINNED`], so that a mutation's side
    /// effect on its own and its parent's mtime does not decide a test.
    fn pin_times(root: &Path) {
        for entry in fs::read_dir(root).unwrap() {
            let path = entry.unwrap().path();
            if fs::symlink_metadata(&path).unwrap().is_dir() {
                pin_times(&path);
            }
            set_times(&path, None, Some(PINNED));
        }
    }

    fn hash(root: &Path) -> VerifyReport {
        digest(root, &VerifyOptions::default()).unwrap()
    }

    /// A tree with every entry type this user can create, hard links, a sparse file,
    /// xattrs and (as root) devices, foreign owners and setuid bits.
    fn build_tree(root: &Path) {
        fs::create_dir_all(root.join("dir/sub")).unwrap();
        fs::create_dir(root.join("empty")).unwrap();
        fs::write(root.join("a.txt"), b"hello world").unwrap();
        fs::write(root.join("dir/b"), vec![7u8; 3 * READ_BUFFER + 5]).unwrap();
        fs::write(root.join("dir/sub/c"), b"c").unwrap();
        fs::write(root.join("empty-file"), b"").unwrap();
        let sparse = fs::File::create(root.join("sparse")).unwrap();
        sparse.set_len(4 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&sparse, b"tail", 3 << 20).unwrap();
        drop(sparse);
        fs::write(root.join("h1"), b"linked").unwrap();
        fs::hard_link(root.join("h1"), root.join("dir/h2")).unwrap();
        symlink("dir", root.join("link")).unwrap();
        symlink("nowhere/at/all", root.join("dangling")).unwrap();
        mknod(&root.join("fifo"), libc::S_IFIFO | 0o640, 0, 0);
        fs::set_permissions(root.join("dir/sub/c"), fs::Permissions::from_mode(0o600)).unwrap();
        set_xattr(&root.join("a.txt"), "user.one", b"1").unwrap();
        set_xattr(&root.join("dir"), "user.two", b"").unwrap();
        set_xattr(&root.join("a.txt"), "user.skip", b"x").unwrap();
        set_times(
            &root.join("a.txt"),
            Some((5, 0)),
            Some((1_500_000_000, 999_999_999)),
        );
        if is_root() {
            mknod(&root.join("cdev"), libc::S_IFCHR | 0o600, 1, 3);
            mknod(&root.join("bdev"), libc::S_IFBLK | 0o600, 7, 0);
            lchown(&root.join("dir/sub/c"), 1000, 2000);
            lchown(&root.join("link"), 3000, 4000);
            fs::set_permissions(root.join("dir/b"), fs::Permissions::from_mode(0o4755)).unwrap();
            fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o1777)).unwrap();
            set_xattr(&root.join("link"), "trusted.t", b"on a symlink").unwrap();
        }
    }

    /// Builds a tree and a `cp -a` copy, pins both, applies `mutate` to the copy and returns
    /// the digests of the original and the mutated copy.
    fn mutated(mutate: impl FnOnce(&Path), pin_after: bool) -> (VerifyReport, VerifyReport) {
        let dir = test_dir();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        build_tree(&a);
        pin_times(&a);
        cp_a(&a, &b);
        assert_eq!(hash(&a), hash(&b), "the copy differs before the mutation");
        mutate(&b);
        if pin_after {
            pin_times(&b);
        }
        (hash(&a), hash(&b))
    }

    fn assert_changes(mutate: impl FnOnce(&Path)) {
        let (a, b) = mutated(mutate, true);
        assert_ne!(a.digest, b.digest);
    }

    #[test]
    fn copy_with_cp_a_has_the_same_digest() {
        let dir = test_dir();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        build_tree(&a);
        if is_root() {
            let sock = std::os::unix::net::UnixListener::bind(a.join("sock")).unwrap();
            drop(sock);
        }
        cp_a(&a, &b);
        // The copy is dense and on other inodes, which the digest does not see.
        let blocks = |p: &Path| fs::metadata(p).unwrap().blocks();
        assert!(blocks(&b.join("sparse")) > blocks(&a.join("sparse")));
        assert_ne!(
            fs::metadata(a.join("h1")).unwrap().ino(),
            fs::metadata(b.join("h1")).unwrap().ino()
        );
        let (ra, rb) = (hash(&a), hash(&b));
        assert_eq!(ra, rb);
        let specials = if is_root() { 3 } else { 0 };
        assert_eq!(ra.entries, 13 + specials);
        assert_eq!(ra.files, 7);
        assert_eq!(
            ra.bytes,
            11 + 3 * READ_BUFFER as u64 + 5 + 1 + (4 << 20) + 12
        );
        assert_eq!(ra.hex().len(), 64);
        // A different thread count gives the same digest.
        let one = digest(
            &a,
            &VerifyOptions {
                threads: 1,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(one, ra);
    }

    #[test]
    fn content_byte_is_covered() {
        assert_changes(|b| {
            // Flip one bit in the third buffer, in place so mode and owner stay.
            let offset = 2 * READ_BUFFER as u64 + 1;
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(b.join("dir/b"))
                .unwrap();
            let mut byte = [0u8; 1];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut byte, offset).unwrap();
            byte[0] ^= 1;
            std::os::unix::fs::FileExt::write_all_at(&file, &byte, offset).unwrap();
        });
        assert_changes(|b| fs::write(b.join("a.txt"), b"hello world!").unwrap());
    }

    #[test]
    fn mode_is_covered() {
        assert_changes(|b| {
            fs::set_permissions(b.join("dir/sub/c"), fs::Permissions::from_mode(0o640)).unwrap()
        });
        assert_changes(|b| {
            fs::set_permissions(b.join("dir"), fs::Permissions::from_mode(0o700)).unwrap()
        });
    }

    #[test]
    fn setuid_and_sticky_bits_are_covered() {
        if !is_root() {
            return;
        }
        assert_changes(|b| {
            fs::set_permissions(b.join("dir/b"), fs::Permissions::from_mode(0o755)).unwrap()
        });
        assert_changes(|b| {
            fs::set_permissions(b.join("empty"), fs::Permissions::from_mode(0o777)).unwrap()
        });
    }

    #[test]
    fn owner_is_covered() {
        if !is_root() {
            return;
        }
        assert_changes(|b| lchown(&b.join("dir/sub/c"), 1001, 2000));
        assert_changes(|b| lchown(&b.join("dir/sub/c"), 1000, 2001));
        assert_changes(|b| lchown(&b.join("link"), 3000, 4001));
        assert_changes(|b| lchown(&b.join("fifo"), 5, 5));
    }

    #[test]
    fn mtime_nanoseconds_are_covered() {
        let (a, b) = mutated(
            |b| set_times(&b.join("a.txt"), None, Some((PINNED.0, PINNED.1 + 1))),
            false,
        );
        assert_ne!(a.digest, b.digest);
        let (a, b) = mutated(
            |b| set_times(&b.join("link"), None, Some((PINNED.0, PINNED.1 + 1))),
            false,
        );
        assert_ne!(a.digest, b.digest);
        let (a, b) = mutated(
            |b| set_times(&b.join("dir/sub"), None, Some((PINNED.0 + 1, PINNED.1))),
            false,
        );
        assert_ne!(a.digest, b.digest);
    }

    #[test]
    fn symlink_target_is_covered() {
        assert_changes(|b| {
            fs::remove_file(b.join("link")).unwrap();
            symlink("dir/", b.join("link")).unwrap();
            if is_root() {
                lchown(&b.join("link"), 3000, 4000);
                set_xattr(&b.join("link"), "trusted.t", b"on a symlink").unwrap();
            }
        });
    }

    #[test]
    fn xattrs_are_covered() {
        assert_changes(|b| set_xattr(&b.join("a.txt"), "user.one", b"2").unwrap());
        assert_changes(|b| set_xattr(&b.join("dir/sub/c"), "user.new", b"").unwrap());
        assert_changes(|b| set_xattr(&b.join("dir"), "user.two", b"\0").unwrap());
        if is_root() {
            assert_changes(|b| set_xattr(&b.join("link"), "trusted.t", b"changed").unwrap());
        }
    }

    #[test]
    fn excluded_xattr_atime_and_inodes_are_not_covered() {
        let opts = VerifyOptions {
            exclude_xattr: vec!["user.sk?p*".into()],
            threads: 2,
            ..VerifyOptions::default()
        };
        let dir = test_dir();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        build_tree(&a);
        cp_a(&a, &b);
        set_xattr(&b.join("a.txt"), "user.skip", b"other").unwrap();
        set_xattr(&b.join("dir/b"), "user.skipped", b"new").unwrap();
        set_times(&b.join("a.txt"), Some((99, 1)), None);
        set_times(&b.join("dir"), Some((99, 2)), None);
        set_times(&b.join("link"), Some((99, 3)), None);
        assert_eq!(digest(&a, &opts).unwrap(), digest(&b, &opts).unwrap());
        // Without the exclude the difference shows.
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn adding_removing_and_renaming_entries_is_covered() {
        assert_changes(|b| fs::write(b.join("dir/new"), b"").unwrap());
        assert_changes(|b| fs::create_dir(b.join("empty/new")).unwrap());
        assert_changes(|b| fs::remove_file(b.join("dir/sub/c")).unwrap());
        assert_changes(|b| fs::remove_dir(b.join("empty")).unwrap());
        assert_changes(|b| fs::rename(b.join("a.txt"), b.join("a.tx")).unwrap());
        assert_changes(|b| fs::rename(b.join("dir/sub"), b.join("dir/sub2")).unwrap());
        // Moving a file to another directory under the same name.
        assert_changes(|b| fs::rename(b.join("dir/sub/c"), b.join("empty/c")).unwrap());
    }

    #[test]
    fn breaking_a_hard_link_is_covered() {
        assert_changes(|b| {
            let tmp = b.join("dir/h2.tmp");
            let status = Command::new("cp")
                .arg("-p")
                .arg(b.join("dir/h2"))
                .arg(&tmp)
                .status()
                .unwrap();
            assert!(status.success());
            fs::rename(&tmp, b.join("dir/h2")).unwrap();
            assert_eq!(fs::metadata(b.join("h1")).unwrap().nlink(), 1);
        });
    }

    #[test]
    fn which_names_share_an_inode_is_covered() {
        // Three equal files: none linked, f+g linked, g+h linked, all three linked.
        let dir = test_dir();
        let layouts: [&[(&str, &str)]; 4] =
            [&[], &[("f", "g")], &[("g", "h")], &[("f", "g"), ("f", "h")]];
        let mut digests = Vec::new();
        for (i, links) in layouts.iter().enumerate() {
            let root = dir.path().join(i.to_string());
            fs::create_dir(&root).unwrap();
            for name in ["f", "g", "h"] {
                fs::write(root.join(name), b"same").unwrap();
            }
            for (from, to) in *links {
                fs::remove_file(root.join(to)).unwrap();
                fs::hard_link(root.join(from), root.join(to)).unwrap();
            }
            pin_times(&root);
            digests.push(hash(&root).digest);
        }
        for (i, a) in digests.iter().enumerate() {
            for b in &digests[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn link_outside_the_tree_counts_as_no_group() {
        let dir = test_dir();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::write(a.join("f"), b"x").unwrap();
        fs::hard_link(a.join("f"), dir.path().join("outside")).unwrap();
        cp_a(&a, &b);
        assert_eq!(fs::metadata(b.join("f")).unwrap().nlink(), 1);
        assert_eq!(hash(&a), hash(&b));
    }

    #[test]
    fn a_fifo_differs_from_an_empty_file() {
        let dir = test_dir();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(a.join("x"), b"").unwrap();
        mknod(&b.join("x"), libc::S_IFIFO | 0o644, 0, 0);
        fs::set_permissions(a.join("x"), fs::Permissions::from_mode(0o644)).unwrap();
        pin_times(&a);
        pin_times(&b);
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn device_numbers_are_covered() {
        if !is_root() {
            return;
        }
        for (mode, major, minor) in [(libc::S_IFCHR, 1, 5), (libc::S_IFCHR, 2, 3)] {
            assert_changes(|b| {
                fs::remove_file(b.join("cdev")).unwrap();
                mknod(&b.join("cdev"), mode | 0o600, major, minor);
            });
        }
        // The same numbers as a block device.
        assert_changes(|b| {
            fs::remove_file(b.join("cdev")).unwrap();
            mknod(&b.join("cdev"), libc::S_IFBLK | 0o600, 1, 3);
        });
    }

    #[test]
    fn non_utf8_names_work() {
        let dir = test_dir();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(a.join(OsStr::from_bytes(b"caf\xe9")), b"1").unwrap();
        fs::write(b.join(OsStr::from_bytes(b"caf\xe8")), b"1").unwrap();
        symlink(OsStr::from_bytes(b"\xff\xfe"), a.join("l")).unwrap();
        symlink(OsStr::from_bytes(b"\xff\xfe"), b.join("l")).unwrap();
        pin_times(&a);
        pin_times(&b);
        assert_ne!(hash(&a), hash(&b));
        let c = dir.path().join("c");
        cp_a(&a, &c);
        assert_eq!(hash(&a), hash(&c));
    }

    #[test]
    fn symlink_to_a_directory_is_not_followed() {
        let dir = test_dir();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("f"), b"1").unwrap();
        symlink(&outside, root.join("l")).unwrap();
        let before = hash(&root);
        assert_eq!(before.entries, 1);
        assert_eq!(before.files, 0);
        fs::write(outside.join("f"), b"2").unwrap();
        fs::write(outside.join("g"), b"").unwrap();
        assert_eq!(hash(&root), before);
    }

    #[test]
    fn root_may_be_a_symlink_but_not_a_file() {
        let dir = test_dir();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("f"), b"1").unwrap();
        symlink(&root, dir.path().join("via")).unwrap();
        assert_eq!(hash(&root), hash(&dir.path().join("via")));
        let err = digest(&root.join("f"), &VerifyOptions::default()).unwrap_err();
        assert!(matches!(err, VerifyError::NotADirectory(_)), "{err}");
        let err = digest(&root.join("missing"), &VerifyOptions::default()).unwrap_err();
        assert!(err.to_string().starts_with("stat "), "{err}");
    }

    #[test]
    fn root_metadata_is_not_covered() {
        let dir = test_dir();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::create_dir(&a).unwrap();
        fs::write(a.join("f"), b"1").unwrap();
        cp_a(&a, &b);
        fs::set_permissions(&b, fs::Permissions::from_mode(0o700)).unwrap();
        set_times(&b, None, Some((1, 1)));
        set_xattr(&b, "user.root", b"1").unwrap();
        assert_eq!(hash(&a), hash(&b));
    }

    #[test]
    fn order_on_disk_does_not_matter() {
        // Names whose byte order differs from a component-wise order: "a.b" < "a/b" < "a0".
        let names = ["a", "a.b", "a0", "b", "B", "a-"];
        let dir = test_dir();
        let (x, y) = (dir.path().join("x"), dir.path().join("y"));
        for (root, order) in [
            (&x, names.to_vec()),
            (&y, names.iter().rev().copied().collect()),
        ] {
            fs::create_dir(root).unwrap();
            for name in &order {
                if *name == "a" {
                    fs::create_dir(root.join(name)).unwrap();
                    for sub in ["b", "c", "a"] {
                        fs::write(root.join(name).join(sub), sub).unwrap();
                    }
                } else {
                    fs::write(root.join(name), name).unwrap();
                }
            }
            pin_times(root);
        }
        assert_eq!(hash(&x), hash(&y));
    }

    #[test]
    fn encoding_matches_the_documented_stream() {
        let file = Entry {
            rel: b"d/f".to_vec(),
            perm: 0o644,
            uid: 1000,
            gid: 7,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            size: 3,
            xattrs: vec![(b"user.a".to_vec(), b"v".to_vec())],
            ..Default::default()
        };
        let mut out = Vec::new();
        encode_entry(&mut out, &file, Some(([0xab; 32], Some(b"a"))));
        let mut want: Vec<u8> = b"Ep".to_vec();
        want.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(b"d/fk\x01m");
        want.extend_from_slice(&[0xa4, 0x01, 0, 0]);
        want.push(b'o');
        want.extend_from_slice(&[0xe8, 0x03, 0, 0, 7, 0, 0, 0]);
        want.push(b't');
        want.extend_from_slice(&[0x00, 0xf1, 0x53, 0x65, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]);
        want.push(b'c');
        want.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0xab; 32]);
        want.extend_from_slice(b"h\x01");
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, b'a']);
        want.push(b'x');
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(b"user.a");
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, b'v']);
        assert_eq!(out, want);

        // A symlink has no permission field, a target instead; a device its numbers.
        let link = Entry {
            rel: b"l".to_vec(),
            kind: Kind::Symlink,
            target: b"t".to_vec(),
            perm: 0o777,
            ..Default::default()
        };
        out.clear();
        encode_entry(&mut out, &link, None);
        let mut want: Vec<u8> = b"Ep".to_vec();
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, b'l', b'k', 3, b'o']);
        want.extend_from_slice(&[0; 8]);
        want.push(b't');
        want.extend_from_slice(&[0; 16]);
        want.push(b'l');
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, b't', b'x']);
        want.extend_from_slice(&[0; 8]);
        assert_eq!(out, want);

        let dev = Entry {
            rel: b"n".to_vec(),
            kind: Kind::BlockDevice,
            rdev: (8, 1),
            ..Default::default()
        };
        out.clear();
        encode_entry(&mut out, &dev, None);
        let tail = [b'r', 8, 0, 0, 0, 1, 0, 0, 0, b'x', 0, 0, 0, 0, 0, 0, 0, 0];
        assert!(out.ends_with(&tail), "{out:?}");
        assert_eq!(out.get(11..13), Some(&[b'k', 6][..]));
    }

    #[test]
    fn digest_of_a_fixed_tree_is_stable() {
        // A known answer, so that an accidental change of the stream (which would make
        // binaries of different versions disagree) fails here. Only root can pin the owner.
        if !is_root() {
            return;
        }
        let dir = test_dir();
        let root = dir.path().join("r");
        fs::create_dir_all(root.join("d")).unwrap();
        fs::write(root.join("d/f"), b"abc").unwrap();
        fs::set_permissions(root.join("d/f"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(root.join("d"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::hard_link(root.join("d/f"), root.join("g")).unwrap();
        symlink("d/f", root.join("l")).unwrap();
        mknod(&root.join("n"), libc::S_IFCHR | 0o600, 1, 3);
        set_xattr(&root.join("d/f"), "user.a", b"v").unwrap();
        for p in ["d", "d/f", "l", "n"] {
            lchown(&root.join(p), 0, 0);
        }
        pin_times(&root);
        assert_eq!(
            hash(&root).hex(),
            "0105d6194373e905a0765e7b4453497c1fb6fa2b3f0a12c8fa2daf8d5b846fc1"
        );
    }

    #[test]
    fn a_file_that_changed_since_the_walk_is_an_error() {
        let dir = test_dir();
        fs::write(dir.path().join("f"), b"abc").unwrap();
        let meta = fs::metadata(dir.path().join("f")).unwrap();
        let entry = Entry {
            rel: b"f".to_vec(),
            size: 3,
            dev: meta.dev(),
            ino: meta.ino(),
            ..Default::default()
        };
        assert_eq!(
            hash_file(dir.path(), &entry).unwrap(),
            *blake3::hash(b"abc").as_bytes()
        );
        let grown = Entry {
            size: 2,
            ..entry.clone()
        };
        assert!(matches!(
            hash_file(dir.path(), &grown),
            Err(VerifyError::Changed(_))
        ));
        let replaced = Entry {
            ino: meta.ino() + 1,
            ..entry
        };
        let err = hash_file(dir.path(), &replaced).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "hash file {}: it changed while it was read",
                dir.path().join("f").display()
            )
        );
    }

    #[test]
    fn glob_matches_like_the_restore_excludes() {
        assert!(glob_match("security.selinux", "security.selinux"));
        assert!(!glob_match("security.selinux", "security.selinux2"));
        assert!(glob_match("security.*", "security.capability"));
        assert!(glob_match("*", ""));
        assert!(glob_match("user.?", "user.a"));
        assert!(!glob_match("user.?", "user.ab"));
        assert!(glob_match("*.a*b", "x.aab.ab"));
        assert!(!glob_match("a*b", "acbc"));
        assert!(is_excluded(&["user.*".into()], b"user.\xff"));
    }

    #[derive(Clone, Debug)]
    enum Node {
        File(Vec<u8>, u32),
        Dir(Vec<(u8, Node)>),
        Link(u8),
    }

    fn node() -> impl Strategy<Value = Node> {
        let leaf = prop_oneof![
            (proptest::collection::vec(any::<u8>(), 0..64), 0u32..0o1000)
                .prop_map(|(d, m)| Node::File(d, m)),
            (1u8..=255).prop_map(Node::Link),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            proptest::collection::vec((0u8..8, inner), 0..5).prop_map(Node::Dir)
        })
    }

    fn create(path: &Path, node: &Node) {
        match node {
            Node::File(data, mode) => {
                fs::write(path, data).unwrap();
                fs::set_permissions(path, fs::Permissions::from_mode(*mode | 0o400)).unwrap();
            }
            Node::Link(t) => symlink(OsStr::from_bytes(&[b'x', *t]), path).unwrap(),
            Node::Dir(children) => {
                fs::create_dir(path).unwrap();
                for (name, child) in children {
                    let child_path = path.join(OsStr::from_bytes(&[b'a' + name, 0xc0 + name]));
                    if fs::symlink_metadata(&child_path).is_err() {
                        create(&child_path, child);
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
        #[test]
        fn random_trees_equal_their_copies(children in proptest::collection::vec((0u8..8, node()), 0..6)) {
            let dir = test_dir();
            let (a, b) = (dir.path().join("a"), dir.path().join("b"));
            create(&a, &Node::Dir(children));
            cp_a(&a, &b);
            prop_assert_eq!(hash(&a), hash(&b));
        }
    }
}
