//! Go `io/fs.FileMode` bits, as restic stores them in a node's `mode`, and Unix `st_mode`.
//!
//! Restic records Go's FileMode masked to the permission, type, setuid, setgid and sticky bits
//! (`restic-format.md` A10). Go keeps the file type and the setuid/setgid/sticky flags in the
//! high bits and has no `S_IFMT` field, so the two encodings must be converted both ways. This
//! module only converts numbers; it reads nothing from the filesystem.

use crate::node::NodeType;

/// `fs.ModeDir`.
pub const MODE_DIR: u32 = 1 << 31;
/// `fs.ModeAppend` (never set by restic; listed for completeness).
pub const MODE_APPEND: u32 = 1 << 30;
/// `fs.ModeExclusive` (never set by restic).
pub const MODE_EXCLUSIVE: u32 = 1 << 29;
/// `fs.ModeTemporary` (never set by restic).
pub const MODE_TEMPORARY: u32 = 1 << 28;
/// `fs.ModeSymlink`.
pub const MODE_SYMLINK: u32 = 1 << 27;
/// `fs.ModeDevice`: set for block and character devices.
pub const MODE_DEVICE: u32 = 1 << 26;
/// `fs.ModeNamedPipe`.
pub const MODE_NAMED_PIPE: u32 = 1 << 25;
/// `fs.ModeSocket`.
pub const MODE_SOCKET: u32 = 1 << 24;
/// `fs.ModeSetuid`.
pub const MODE_SETUID: u32 = 1 << 23;
/// `fs.ModeSetgid`.
pub const MODE_SETGID: u32 = 1 << 22;
/// `fs.ModeCharDevice`: set together with [`MODE_DEVICE`] for character devices.
pub const MODE_CHAR_DEVICE: u32 = 1 << 21;
/// `fs.ModeSticky`.
pub const MODE_STICKY: u32 = 1 << 20;
/// `fs.ModeIrregular`.
pub const MODE_IRREGULAR: u32 = 1 << 19;
/// `fs.ModePerm`: the rwx bits for owner, group and others.
pub const MODE_PERM: u32 = 0o777;
/// `fs.ModeType`: every type bit.
pub const MODE_TYPE: u32 = MODE_DIR
    | MODE_SYMLINK
    | MODE_NAMED_PIPE
    | MODE_SOCKET
    | MODE_DEVICE
    | MODE_CHAR_DEVICE
    | MODE_IRREGULAR;
/// The bits restic keeps of a FileMode: permissions, type, setuid, setgid and sticky.
pub const MODE_RESTIC_MASK: u32 = MODE_PERM | MODE_TYPE | MODE_SETUID | MODE_SETGID | MODE_STICKY;

/// Unix `S_IFMT` and the file type values within it (the same on every Unix ferry targets).
pub const S_IFMT: u32 = 0o170000;
/// Unix socket.
pub const S_IFSOCK: u32 = 0o140000;
/// Unix symbolic link.
pub const S_IFLNK: u32 = 0o120000;
/// Unix regular file.
pub const S_IFREG: u32 = 0o100000;
/// Unix block device.
pub const S_IFBLK: u32 = 0o060000;
/// Unix directory.
pub const S_IFDIR: u32 = 0o040000;
/// Unix character device.
pub const S_IFCHR: u32 = 0o020000;
/// Unix fifo.
pub const S_IFIFO: u32 = 0o010000;
/// Unix setuid bit.
pub const S_ISUID: u32 = 0o4000;
/// Unix setgid bit.
pub const S_ISGID: u32 = 0o2000;
/// Unix sticky bit.
pub const S_ISVTX: u32 = 0o1000;

/// The Go FileMode restic stores for a Unix `st_mode`: type bits as Go's `os.Stat` sets them
/// (a character device gets both [`MODE_DEVICE`] and [`MODE_CHAR_DEVICE`]), permissions
/// 0o777, and setuid/setgid/sticky moved to their Go bits. A file type Unix does not define
/// gets [`MODE_IRREGULAR`].
pub fn go_mode_from_unix(st_mode: u32) -> u32 {
    let type_bits = match st_mode & S_IFMT {
        S_IFREG => 0,
        S_IFDIR => MODE_DIR,
        S_IFLNK => MODE_SYMLINK,
        S_IFBLK => MODE_DEVICE,
        S_IFCHR => MODE_DEVICE | MODE_CHAR_DEVICE,
        S_IFIFO => MODE_NAMED_PIPE,
        S_IFSOCK => MODE_SOCKET,
        _ => MODE_IRREGULAR,
    };
    let mut mode = type_bits | (st_mode & MODE_PERM);
    if st_mode & S_ISUID != 0 {
        mode |= MODE_SETUID;
    }
    if st_mode & S_ISGID != 0 {
        mode |= MODE_SETGID;
    }
    if st_mode & S_ISVTX != 0 {
        mode |= MODE_STICKY;
    }
    mode
}

/// The Unix permission bits (a subset of 0o7777) a Go FileMode stands for: permissions plus
/// `S_ISUID`, `S_ISGID` and `S_ISVTX` from the Go setuid/setgid/sticky bits. Type bits and
/// any unknown bits are ignored.
pub fn unix_permissions_from_go(go_mode: u32) -> u32 {
    let mut perm = go_mode & MODE_PERM;
    if go_mode & MODE_SETUID != 0 {
        perm |= S_ISUID;
    }
    if go_mode & MODE_SETGID != 0 {
        perm |= S_ISGID;
    }
    if go_mode & MODE_STICKY != 0 {
        perm |= S_ISVTX;
    }
    perm
}

/// The `S_IFMT` bits for a node type; 0 for [`NodeType::Irregular`], which has no Unix type.
pub fn unix_type_bits(node_type: NodeType) -> u32 {
    match node_type {
        NodeType::File => S_IFREG,
        NodeType::Dir => S_IFDIR,
        NodeType::Symlink => S_IFLNK,
        NodeType::Dev => S_IFBLK,
        NodeType::CharDev => S_IFCHR,
        NodeType::Fifo => S_IFIFO,
        NodeType::Socket => S_IFSOCK,
        NodeType::Irregular => 0,
    }
}

/// The node type restic records for a Unix `st_mode`; unknown file types are
/// [`NodeType::Irregular`].
pub fn node_type_from_unix(st_mode: u32) -> NodeType {
    match st_mode & S_IFMT {
        S_IFREG => NodeType::File,
        S_IFDIR => NodeType::Dir,
        S_IFLNK => NodeType::Symlink,
        S_IFBLK => NodeType::Dev,
        S_IFCHR => NodeType::CharDev,
        S_IFIFO => NodeType::Fifo,
        S_IFSOCK => NodeType::Socket,
        _ => NodeType::Irregular,
    }
}

/// The node type a Go FileMode's type bits describe, checked in the order Go's and restic's
/// type switches use; no type bit means a regular file.
pub fn node_type_from_go(go_mode: u32) -> NodeType {
    if go_mode & MODE_DIR != 0 {
        NodeType::Dir
    } else if go_mode & MODE_SYMLINK != 0 {
        NodeType::Symlink
    } else if go_mode & MODE_DEVICE != 0 {
        if go_mode & MODE_CHAR_DEVICE != 0 {
            NodeType::CharDev
        } else {
            NodeType::Dev
        }
    } else if go_mode & MODE_CHAR_DEVICE != 0 {
        NodeType::CharDev
    } else if go_mode & MODE_NAMED_PIPE != 0 {
        NodeType::Fifo
    } else if go_mode & MODE_SOCKET != 0 {
        NodeType::Socket
    } else if go_mode & MODE_IRREGULAR != 0 {
        NodeType::Irregular
    } else {
        NodeType::File
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every worked value of `restic-format.md` A10, as (st_mode, Go mode, node type).
    const WORKED: &[(u32, u32, NodeType)] = &[
        (S_IFDIR | 0o755, 2147484141, NodeType::Dir),
        (S_IFREG | 0o644, 420, NodeType::File),
        (S_IFLNK | 0o777, 134218239, NodeType::Symlink),
        (S_IFCHR | 0o666, 69206454, NodeType::CharDev),
        (S_IFBLK | 0o660, 67109296, NodeType::Dev),
        (S_IFIFO | 0o644, 33554852, NodeType::Fifo),
        (S_IFSOCK | 0o755, 16777709, NodeType::Socket),
        (S_IFREG | 0o4755, 8389101, NodeType::File),
        (S_IFDIR | 0o2755, 2151678445, NodeType::Dir),
        (S_IFDIR | 0o1777, 2148532735, NodeType::Dir),
    ];

    #[test]
    fn worked_values_match_a10() {
        for &(st_mode, go, node_type) in WORKED {
            assert_eq!(go_mode_from_unix(st_mode), go, "st_mode {st_mode:o}");
            assert_eq!(unix_permissions_from_go(go), st_mode & 0o7777);
            assert_eq!(node_type_from_unix(st_mode), node_type);
            assert_eq!(node_type_from_go(go), node_type);
            assert_eq!(unix_type_bits(node_type), st_mode & S_IFMT);
            assert_eq!(go & !MODE_RESTIC_MASK, 0);
        }
    }

    #[test]
    fn old_dir_mode_without_type_bits_keeps_permissions() {
        // design.rst's old example stores a directory as plain 493 (0o755).
        assert_eq!(unix_permissions_from_go(493), 0o755);
    }

    #[test]
    fn unknown_unix_type_is_irregular() {
        assert_eq!(node_type_from_unix(0o170644), NodeType::Irregular);
        assert_eq!(go_mode_from_unix(0o170644), MODE_IRREGULAR | 0o644);
        assert_eq!(node_type_from_unix(0o644), NodeType::Irregular);
    }

    proptest! {
        #[test]
        fn permissions_round_trip(perm in 0u32..0o10000, kind in 0usize..7) {
            let types = [S_IFREG, S_IFDIR, S_IFLNK, S_IFBLK, S_IFCHR, S_IFIFO, S_IFSOCK];
            let st_mode = types[kind] | perm;
            let go = go_mode_from_unix(st_mode);
            prop_assert_eq!(unix_permissions_from_go(go), perm);
            prop_assert_eq!(node_type_from_go(go), node_type_from_unix(st_mode));
        }
    }
}
