//! Pod volumes on this node, found through the kubelet's directory layout.
//!
//! This module owns the mapping from a volume reference (a pod UID and the volume's directory
//! name, or a PersistentVolume name) to the canonical path of the volume's data, and the
//! confinement that keeps every such request inside `<kubelet_root>/pods`: names must be single
//! plain path components before they are joined to anything, every candidate is canonicalised and
//! must equal the path the kubelet layout predicts (so no component on the way, pod directory,
//! `volumes` directory, plugin directory, volume directory or CSI `mount`, may be a symlink), and
//! plugins that carry Secrets or configuration rather than data are refused, which keeps Secrets
//! out of backups. Block volumes are the one place a symlink is followed, and only to a block
//! device node. The module also measures how many bytes a volume uses.
//!
//! It does not read or write volume data, talk to the Kubernetes API or know which pods are
//! running: it trusts only what is on disk. A path it returns is checked at the moment of the
//! call; the kubelet may unmount or remove the volume afterwards, so callers that open it must
//! still handle the path vanishing.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The escaped name of the CSI plugin directory.
const CSI_PLUGIN: &str = "kubernetes.io~csi";

/// Plugins whose volumes carry Secrets or configuration, never data: they are not listed and
/// are refused when addressed.
const REFUSED_PLUGINS: [&str; 5] = [
    "kubernetes.io~secret",
    "kubernetes.io~configmap",
    "kubernetes.io~projected",
    "kubernetes.io~downward-api",
    "kubernetes.io~git-repo",
];

/// In-tree plugins whose volume directory is named after the PersistentVolume.
const PERSISTENT_PLUGINS: [&str; 13] = [
    "kubernetes.io~nfs",
    "kubernetes.io~local-volume",
    "kubernetes.io~iscsi",
    "kubernetes.io~fc",
    "kubernetes.io~rbd",
    "kubernetes.io~cephfs",
    "kubernetes.io~glusterfs",
    "kubernetes.io~aws-ebs",
    "kubernetes.io~gce-pd",
    "kubernetes.io~azure-disk",
    "kubernetes.io~azure-file",
    "kubernetes.io~vsphere-volume",
    "kubernetes.io~portworx-volume",
];

/// The longest accepted name, in bytes (a Kubernetes DNS subdomain name).
const MAX_NAME_LEN: usize = 253;

/// How much of an offending name an error message shows, in characters.
const SHOWN_NAME_CHARS: usize = 64;

/// The largest `vol_data.json` read; the kubelet writes a few hundred bytes.
const VOL_DATA_LIMIT: u64 = 64 * 1024;

/// How a volume is presented to the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeMode {
    /// A mounted directory tree.
    Filesystem,
    /// A raw block device (or, in tests, a regular file standing in for one).
    Block,
}

/// One data volume of one pod, as found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The pod's UID (its directory name under `pods`).
    pub pod_uid: String,
    /// The volume's directory (filesystem) or entry (block) name under its plugin directory.
    pub volume_name: String,
    /// The escaped plugin name, e.g. `kubernetes.io~csi`.
    pub plugin: String,
    /// The PersistentVolume name, or empty when the layout does not give it.
    pub pv_name: String,
    /// The CSI driver name, or empty when the volume is not CSI or the driver is unknown.
    pub csi_driver: String,
    /// Filesystem or block.
    pub mode: VolumeMode,
    /// The canonical path of the data: a directory for filesystem volumes (CSI: `<dir>/mount`),
    /// the canonical device node or regular file for block volumes.
    pub path: PathBuf,
}

/// What a request names.
#[derive(Clone, Debug)]
pub enum VolumeRef {
    /// A volume of one pod, by its directory name under the plugin directory.
    Pod {
        /// The pod's UID.
        pod_uid: String,
        /// The volume's directory or entry name.
        volume_name: String,
    },
    /// A PersistentVolume mounted by some pod on this node.
    Pv(String),
}

/// Why a volume could not be listed, resolved or measured.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The request was malformed or would leave the kubelet pods directory: a bad name, a
    /// symlink where the layout has none, a refused plugin, an ambiguous name.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such pod, volume or PersistentVolume on this node.
    #[error("{0}")]
    NotFound(String),
    /// A file system call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The path involved, lossily converted to UTF-8.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A name that passed [`check_name`]: the only kind of request text ever joined to a path.
#[derive(Clone, Copy, Debug)]
struct Name<'a>(&'a str);

impl Name<'_> {
    fn as_str(&self) -> &str {
        self.0
    }
}

/// Accepts `value` as a single, non-empty path component of at most 253 bytes made only of
/// ASCII letters, digits and `-_.~`, other than `.` and `..`; `field` names it in the error.
fn check_name<'a>(field: &str, value: &'a str) -> Result<Name<'a>, VolumeError> {
    let why = if value.is_empty() {
        Some("it is empty")
    } else if value.len() > MAX_NAME_LEN {
        Some("it is longer than 253 bytes")
    } else if value == "." || value == ".." {
        Some("it is a relative directory reference")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
    {
        Some("only ASCII letters, digits and -_.~ are allowed")
    } else {
        None
    };
    match why {
        None => Ok(Name(value)),
        Some(why) => Err(VolumeError::InvalidArgument(format!(
            "invalid {field} {:?}: {why}",
            shown(value)
        ))),
    }
}

/// The first characters of a name, for error messages.
fn shown(value: &str) -> String {
    value.chars().take(SHOWN_NAME_CHARS).collect()
}

fn is_refused(plugin: &str) -> bool {
    REFUSED_PLUGINS.contains(&plugin)
}

fn names_pv(plugin: &str) -> bool {
    plugin == CSI_PLUGIN || PERSISTENT_PLUGINS.contains(&plugin)
}

fn lossy(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn io_error(what: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> VolumeError {
    let what = what.into();
    let path = lossy(path);
    move |source| VolumeError::Io { what, path, source }
}

/// The two places a pod's volumes live.
#[derive(Clone, Copy)]
enum Area {
    Volumes,
    VolumeDevices,
}

impl Area {
    fn dir_name(self) -> &'static str {
        match self {
            Area::Volumes => "volumes",
            Area::VolumeDevices => "volumeDevices",
        }
    }

    fn mode(self) -> VolumeMode {
        match self {
            Area::Volumes => VolumeMode::Filesystem,
            Area::VolumeDevices => VolumeMode::Block,
        }
    }
}

/// The kubelet directory as mounted into the agent's pod.
#[derive(Clone, Debug)]
pub struct Kubelet {
    root: PathBuf,
    /// `<root>/pods`, canonicalised once at [`Kubelet::new`]; every returned path lies under it
    /// except block device nodes.
    pods: PathBuf,
}

impl Kubelet {
    /// Opens the kubelet root; fails (Io) when `<root>/pods` does not exist or is not a
    /// directory. `<root>/pods` is canonicalised once, here, so the root itself may be reached
    /// through symlinks.
    pub fn new(root: &Path) -> Result<Kubelet, VolumeError> {
        let pods = root.join("pods");
        let canonical =
            fs::canonicalize(&pods).map_err(io_error("open kubelet pods directory", &pods))?;
        let meta = fs::metadata(&canonical)
            .map_err(io_error("open kubelet pods directory", &canonical))?;
        if !meta.is_dir() {
            return Err(io_error("open kubelet pods directory", &canonical)(
                io::Error::from(io::ErrorKind::NotADirectory),
            ));
        }
        Ok(Kubelet {
            root: root.to_path_buf(),
            pods: canonical,
        })
    }

    /// The root as given to [`Kubelet::new`].
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The canonical `<root>/pods` directory.
    pub fn pods_dir(&self) -> &Path {
        &self.pods
    }

    /// Every data volume on the node (or of one pod), sorted by (pod_uid, plugin,
    /// volume_name). Volumes of refused plugins are left out. Entries that cannot be read, have
    /// names outside the allowed alphabet or escape the pods directory are skipped with a
    /// warning naming the path, never returned.
    ///
    /// With a pod UID, a bad UID is InvalidArgument, a missing pod NotFound, and a pod
    /// directory that is a symlink InvalidArgument. Without one, only a failure to read the pods
    /// directory itself is an error.
    pub fn list(&self, pod_uid: Option<&str>) -> Result<Vec<VolumeInfo>, VolumeError> {
        let mut out = Vec::new();
        match pod_uid {
            Some(uid) => {
                let uid = check_name("pod_uid", uid)?;
                self.check_pod(uid)?;
                self.list_pod(uid, &mut out);
            }
            None => {
                let uids = self.read_names("list pods", &self.pods)?;
                for uid in &uids {
                    let uid = Name(uid);
                    match self.check_pod(uid) {
                        Ok(()) => self.list_pod(uid, &mut out),
                        Err(e) => tracing::warn!(
                            path = %self.pods.join(uid.as_str()).display(),
                            error = %e,
                            "skipping pod directory"
                        ),
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            (&a.pod_uid, &a.plugin, &a.volume_name).cmp(&(&b.pod_uid, &b.plugin, &b.volume_name))
        });
        Ok(out)
    }

    /// Resolves a reference to one data volume, with every confinement check.
    ///
    /// A pod reference is looked up under every plugin directory of the pod's `volumes`, then
    /// `volumeDevices`: a name found under two data plugins is ambiguous (InvalidArgument), a
    /// name found only under a refused plugin is InvalidArgument, a name found nowhere NotFound.
    /// A PV reference resolves to the first match in [`Kubelet::list`] order (pods on one node
    /// that mount the same PV see the same data); no match is NotFound.
    pub fn resolve(&self, r: &VolumeRef) -> Result<VolumeInfo, VolumeError> {
        match r {
            VolumeRef::Pod {
                pod_uid,
                volume_name,
            } => {
                let uid = check_name("pod_uid", pod_uid)?;
                let name = check_name("volume_name", volume_name)?;
                self.resolve_pod(uid, name)
            }
            VolumeRef::Pv(pv) => {
                let pv = check_name("pv name", pv)?;
                self.list(None)?
                    .into_iter()
                    .find(|v| v.pv_name == pv.as_str())
                    .ok_or_else(|| {
                        VolumeError::NotFound(format!(
                            "no pod on this node mounts persistent volume {:?}",
                            pv.as_str()
                        ))
                    })
            }
        }
    }

    /// Bytes used by a volume.
    ///
    /// Filesystem mode: when `info.path` is a mount point (its device differs from its parent
    /// directory's), the file system's used blocks times its fragment size; otherwise the sum
    /// of allocated blocks (`st_blocks * 512`) over a walk that follows no symlinks, stays on
    /// the starting file system and counts a hard-linked inode once. Block mode: the device's
    /// or file's size.
    ///
    /// `info.path` is checked again (canonical, confined as [`Kubelet::resolve`] requires), so a
    /// hand-made `VolumeInfo` cannot point the measurement elsewhere. `cancel` is polled before
    /// each directory; once it returns true the walk stops and the partial sum is returned.
    /// Directories below the volume's top that cannot be read are skipped with a warning.
    pub fn bytes_used(
        &self,
        info: &VolumeInfo,
        cancel: &dyn Fn() -> bool,
    ) -> Result<u64, VolumeError> {
        let path = &info.path;
        match info.mode {
            VolumeMode::Filesystem => {
                let what = format!("volume path {:?}", lossy(path));
                self.confine(&what, path)?;
                let meta = fs::symlink_metadata(path).map_err(io_error("stat volume", path))?;
                if !meta.is_dir() {
                    return Err(VolumeError::InvalidArgument(format!(
                        "{what} is not a directory"
                    )));
                }
                // A confined path lies strictly under the pods directory, so it has a parent.
                let parent = path.parent().unwrap_or(path);
                let parent_meta =
                    fs::symlink_metadata(parent).map_err(io_error("stat directory", parent))?;
                if meta.dev() != parent_meta.dev() {
                    statvfs_used(path).map_err(io_error("statvfs volume", path))
                } else {
                    walk_used(path, &meta, cancel)
                }
            }
            VolumeMode::Block => {
                let what = format!("block volume path {:?}", lossy(path));
                let canonical =
                    fs::canonicalize(path).map_err(io_error("resolve block volume", path))?;
                if &canonical != path {
                    return Err(VolumeError::InvalidArgument(format!(
                        "{what} is not canonical"
                    )));
                }
                let meta = fs::metadata(path).map_err(io_error("stat block volume", path))?;
                let acceptable = meta.file_type().is_block_device()
                    || (self.is_under_pods(path) && meta.is_file());
                if !acceptable {
                    return Err(VolumeError::InvalidArgument(format!(
                        "{what} is neither a block device nor a regular file under the kubelet pods directory"
                    )));
                }
                let mut file = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(path)
                    .map_err(io_error("open block volume", path))?;
                file.seek(SeekFrom::End(0))
                    .map_err(io_error("seek to end of block volume", path))
            }
        }
    }

    fn is_under_pods(&self, path: &Path) -> bool {
        path.starts_with(&self.pods) && path != self.pods
    }

    /// Canonicalises `path` (built from checked names under the pods directory) and requires it
    /// to be `path` itself, which holds only when no component below the pods directory is a
    /// symlink. A missing path is NotFound.
    fn confine(&self, what: &str, path: &Path) -> Result<(), VolumeError> {
        let canonical = match fs::canonicalize(path) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(match fs::symlink_metadata(path) {
                    // The entry exists, so something on the way is a dangling symlink.
                    Ok(_) => VolumeError::InvalidArgument(format!(
                        "{what} is a symlink that does not resolve"
                    )),
                    Err(_) => VolumeError::NotFound(format!("{what} not found on this node")),
                });
            }
            Err(e) => return Err(io_error(format!("resolve {what}"), path)(e)),
        };
        if !self.is_under_pods(&canonical) {
            return Err(VolumeError::InvalidArgument(format!(
                "{what} resolves outside the kubelet pods directory"
            )));
        }
        if canonical != path {
            return Err(VolumeError::InvalidArgument(format!(
                "{what} is a symlink or lies behind one"
            )));
        }
        Ok(())
    }

    /// Like [`Kubelet::confine`], and requires a directory.
    fn confine_dir(&self, what: &str, path: &Path) -> Result<(), VolumeError> {
        self.confine(what, path)?;
        let meta = fs::metadata(path).map_err(io_error(format!("stat {what}"), path))?;
        if meta.is_dir() {
            Ok(())
        } else {
            Err(VolumeError::InvalidArgument(format!(
                "{what} is not a directory"
            )))
        }
    }

    /// Checks that the pod's directory exists and is a real directory in the pods directory.
    fn check_pod(&self, uid: Name<'_>) -> Result<(), VolumeError> {
        let what = format!("pod {:?}", uid.as_str());
        self.confine_dir(&what, &self.pods.join(uid.as_str()))
    }

    /// The entry names of a directory that pass [`check_name`], sorted; others are skipped with
    /// a warning. The directory itself must already be confined.
    fn read_names(&self, what: &str, dir: &Path) -> Result<Vec<String>, VolumeError> {
        let entries = fs::read_dir(dir).map_err(io_error(what, dir))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(path = %dir.display(), error = %e, "skipping unreadable entry");
                    continue;
                }
            };
            let os_name = entry.file_name();
            match os_name.to_str().map(|n| check_name("entry name", n)) {
                Some(Ok(name)) => names.push(name.as_str().to_owned()),
                _ => tracing::warn!(
                    path = %entry.path().display(),
                    "skipping entry whose name is not a plain kubelet name"
                ),
            }
        }
        names.sort();
        Ok(names)
    }

    /// The plugin directory names of one area of a pod, or none when the area does not exist.
    /// The area directory must be a real directory.
    fn plugins(&self, uid: Name<'_>, area: Area) -> Result<Vec<String>, VolumeError> {
        let dir = self.pods.join(uid.as_str()).join(area.dir_name());
        let what = format!("{} directory of pod {:?}", area.dir_name(), uid.as_str());
        match self.confine_dir(&what, &dir) {
            Ok(()) => self.read_names(&format!("list {what}"), &dir),
            Err(VolumeError::NotFound(_)) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Appends the data volumes of one pod, skipping (with a warning) what cannot be used.
    fn list_pod(&self, uid: Name<'_>, out: &mut Vec<VolumeInfo>) {
        for area in [Area::Volumes, Area::VolumeDevices] {
            let plugins = match self.plugins(uid, area) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(
                        path = %self.pods.join(uid.as_str()).join(area.dir_name()).display(),
                        error = %e,
                        "skipping volume area"
                    );
                    continue;
                }
            };
            for plugin in plugins.iter().filter(|p| !is_refused(p)) {
                let plugin = Name(plugin);
                let dir = self
                    .pods
                    .join(uid.as_str())
                    .join(area.dir_name())
                    .join(plugin.as_str());
                let what = format!(
                    "plugin directory {:?} of pod {:?}",
                    plugin.as_str(),
                    uid.as_str()
                );
                let names = self
                    .confine_dir(&what, &dir)
                    .and_then(|()| self.read_names(&format!("list {what}"), &dir));
                let names = match names {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(path = %dir.display(), error = %e, "skipping plugin directory");
                        continue;
                    }
                };
                for name in &names {
                    match self.volume(uid, area, plugin, Name(name)) {
                        Ok(info) => out.push(info),
                        Err(e) => tracing::warn!(
                            path = %dir.join(name).display(),
                            error = %e,
                            "skipping volume"
                        ),
                    }
                }
            }
        }
    }

    fn resolve_pod(&self, uid: Name<'_>, name: Name<'_>) -> Result<VolumeInfo, VolumeError> {
        self.check_pod(uid)?;
        let mut data: Vec<(Area, String)> = Vec::new();
        let mut refused: Option<String> = None;
        for area in [Area::Volumes, Area::VolumeDevices] {
            for plugin in self.plugins(uid, area)? {
                let entry = self
                    .pods
                    .join(uid.as_str())
                    .join(area.dir_name())
                    .join(&plugin)
                    .join(name.as_str());
                match fs::symlink_metadata(&entry) {
                    Ok(_) if is_refused(&plugin) => refused = Some(plugin),
                    Ok(_) => data.push((area, plugin)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    // A plugin directory that is not a directory has no volumes.
                    Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {}
                    Err(e) => return Err(io_error("look up volume", &entry)(e)),
                }
            }
        }
        match data.as_slice() {
            [(area, plugin)] => self.volume(uid, *area, Name(plugin), name),
            [] => match refused {
                Some(plugin) => Err(VolumeError::InvalidArgument(format!(
                    "volume {:?} of pod {:?}: plugin {plugin:?} is not a data volume",
                    name.as_str(),
                    uid.as_str()
                ))),
                None => Err(VolumeError::NotFound(format!(
                    "volume {:?} of pod {:?} not found on this node",
                    name.as_str(),
                    uid.as_str()
                ))),
            },
            several => {
                let plugins: Vec<String> = several
                    .iter()
                    .map(|(area, plugin)| format!("{}/{plugin}", area.dir_name()))
                    .collect();
                Err(VolumeError::InvalidArgument(format!(
                    "volume {:?} of pod {:?} is ambiguous: it exists under {}",
                    name.as_str(),
                    uid.as_str(),
                    plugins.join(", ")
                )))
            }
        }
    }

    /// Builds the description of one volume with every confinement check.
    fn volume(
        &self,
        uid: Name<'_>,
        area: Area,
        plugin: Name<'_>,
        name: Name<'_>,
    ) -> Result<VolumeInfo, VolumeError> {
        let what = format!(
            "volume {:?} of pod {:?} (plugin {:?})",
            name.as_str(),
            uid.as_str(),
            plugin.as_str()
        );
        if is_refused(plugin.as_str()) {
            return Err(VolumeError::InvalidArgument(format!(
                "{what}: plugin {:?} is not a data volume",
                plugin.as_str()
            )));
        }
        let plugin_dir = self
            .pods
            .join(uid.as_str())
            .join(area.dir_name())
            .join(plugin.as_str());
        let entry = plugin_dir.join(name.as_str());
        let mut info = VolumeInfo {
            pod_uid: uid.as_str().to_owned(),
            volume_name: name.as_str().to_owned(),
            plugin: plugin.as_str().to_owned(),
            pv_name: String::new(),
            csi_driver: String::new(),
            mode: area.mode(),
            path: PathBuf::new(),
        };
        match area {
            Area::Volumes => {
                self.confine_dir(&what, &entry)?;
                if plugin.as_str() == CSI_PLUGIN {
                    let mount = entry.join("mount");
                    self.confine_dir(&format!("mount directory of {what}"), &mount)?;
                    info.path = mount;
                    match read_vol_data(&entry.join("vol_data.json")) {
                        Some(data) if data.ephemeral => info.csi_driver = data.driver,
                        Some(data) => {
                            info.pv_name = if data.spec_vol_id.is_empty() {
                                name.as_str().to_owned()
                            } else {
                                data.spec_vol_id
                            };
                            info.csi_driver = data.driver;
                        }
                        None => info.pv_name = name.as_str().to_owned(),
                    }
                } else {
                    info.path = entry;
                    if names_pv(plugin.as_str()) {
                        info.pv_name = name.as_str().to_owned();
                    }
                }
            }
            Area::VolumeDevices => {
                self.confine_dir(
                    &format!(
                        "block plugin directory {:?} of pod {:?}",
                        plugin.as_str(),
                        uid.as_str()
                    ),
                    &plugin_dir,
                )?;
                info.path = self.block_entry(&what, &entry)?;
                if names_pv(plugin.as_str()) {
                    info.pv_name = name.as_str().to_owned();
                }
            }
        }
        Ok(info)
    }

    /// Resolves a block volume entry whose directory is already confined: a symlink must lead
    /// to a block device node (anywhere; the kubelet links to device nodes outside the pods
    /// directory); an entry that is not a symlink must be a block device or a regular file.
    fn block_entry(&self, what: &str, entry: &Path) -> Result<PathBuf, VolumeError> {
        let link_meta = match fs::symlink_metadata(entry) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VolumeError::NotFound(format!(
                    "{what} not found on this node"
                )));
            }
            Err(e) => return Err(io_error("stat block volume", entry)(e)),
        };
        if !link_meta.file_type().is_symlink() {
            let ft = link_meta.file_type();
            return if ft.is_block_device() || ft.is_file() {
                Ok(entry.to_path_buf())
            } else {
                Err(VolumeError::InvalidArgument(format!(
                    "{what} is neither a block device nor a regular file"
                )))
            };
        }
        let target = match fs::canonicalize(entry) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VolumeError::InvalidArgument(format!(
                    "{what} is a symlink that does not resolve"
                )));
            }
            Err(e) => return Err(io_error("resolve block volume", entry)(e)),
        };
        let meta = fs::metadata(&target).map_err(io_error("stat block volume", &target))?;
        if meta.file_type().is_block_device() {
            Ok(target)
        } else if self.is_under_pods(&target) {
            // Only a block device justifies a symlink; a link to a file inside the pods
            // directory could expose another volume's (or a Secret's) contents.
            Err(VolumeError::InvalidArgument(format!(
                "{what} is a symlink to something that is not a block device"
            )))
        } else {
            Err(VolumeError::InvalidArgument(format!(
                "{what} resolves outside the kubelet pods directory to something that is not a block device"
            )))
        }
    }
}

/// The fields of a CSI volume's `vol_data.json` that matter here.
struct VolData {
    spec_vol_id: String,
    driver: String,
    ephemeral: bool,
}

/// Reads a CSI volume's `vol_data.json`, or `None` when it is missing, not a regular file, too
/// large or not a JSON object. The file is opened without following a symlink and without
/// blocking, so a planted link or FIFO cannot redirect or stall the read.
fn read_vol_data(path: &Path) -> Option<VolData> {
    let bytes = match read_small_file(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable vol_data.json");
            return None;
        }
    };
    let value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring malformed vol_data.json");
            return None;
        }
    };
    let Some(object) = value.as_object() else {
        tracing::warn!(path = %path.display(), "ignoring vol_data.json that is not an object");
        return None;
    };
    let field = |key: &str| {
        object
            .get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Some(VolData {
        spec_vol_id: field("specVolID"),
        driver: field("driverName"),
        ephemeral: field("volumeLifecycleMode") == "Ephemeral",
    })
}

fn read_small_file(path: &Path) -> io::Result<Vec<u8>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(VOL_DATA_LIMIT + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > VOL_DATA_LIMIT {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "file too large"));
    }
    Ok(bytes)
}

/// Used bytes of the file system mounted at `path`.
fn statvfs_used(path: &Path) -> io::Result<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a `CString` alive across the call (valid, NUL-terminated);
    // `st.as_mut_ptr()` points to a live, aligned, writable `libc::statvfs`, exactly the
    // struct statvfs fills. statvfs is thread-safe (a plain system call).
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, and on success it fills in the whole struct (every field
    // is a plain integer, so no bit pattern is invalid).
    let st = unsafe { st.assume_init() };
    #[allow(clippy::useless_conversion)] // The field types differ between targets.
    let (blocks, free, frsize) = (
        u64::from(st.f_blocks),
        u64::from(st.f_bfree),
        u64::from(st.f_frsize),
    );
    Ok(blocks.saturating_sub(free).saturating_mul(frsize))
}

/// Allocated bytes under `root`, staying on its file system and following no symlinks.
fn walk_used(
    root: &Path,
    root_meta: &fs::Metadata,
    cancel: &dyn Fn() -> bool,
) -> Result<u64, VolumeError> {
    let dev = root_meta.dev();
    let mut total = root_meta.blocks().saturating_mul(512);
    let mut seen_links: HashSet<u64> = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if cancel() {
            return Ok(total);
        }
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if dir == root => return Err(io_error("read volume directory", &dir)(e)),
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "skipping unreadable directory");
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(path = %dir.display(), error = %e, "skipping unreadable entry");
                    continue;
                }
            };
            // DirEntry::metadata does not follow symlinks.
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(path = %entry.path().display(), error = %e, "skipping entry");
                    continue;
                }
            };
            if meta.dev() != dev {
                // Another file system mounted inside the volume is not the volume's data.
                continue;
            }
            if !meta.is_dir() && meta.nlink() > 1 && !seen_links.insert(meta.ino()) {
                continue;
            }
            total = total.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::os::unix::fs::symlink;

    const POD_A: &str = "0a1b2c3d-aaaa-4000-8000-000000000001";
    const POD_B: &str = "0a1b2c3d-bbbb-4000-8000-000000000002";

    /// A kubelet root with two pods:
    /// pod A: a CSI PV (`pvc-a`, spec name `pv-alpha`), an NFS PV, an emptyDir, a secret;
    /// pod B: a CSI block PV stood in for by a regular file, an emptyDir.
    struct Fixture {
        dir: tempfile::TempDir,
        kubelet: Kubelet,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            let a = root.join("pods").join(POD_A);
            let csi = a.join("volumes/kubernetes.io~csi/pvc-a");
            fs::create_dir_all(csi.join("mount")).unwrap();
            fs::write(csi.join("mount/data.bin"), vec![7u8; 10_000]).unwrap();
            fs::write(
                csi.join("vol_data.json"),
                r#"{"attachmentID":"x","driverName":"ebs.csi.aws.com","nodeName":"n1","specVolID":"pv-alpha","volumeHandle":"vol-123","volumeLifecycleMode":"Persistent"}"#,
            )
            .unwrap();
            let nfs = a.join("volumes/kubernetes.io~nfs/pv-nfs");
            fs::create_dir_all(nfs.join("sub")).unwrap();
            fs::write(nfs.join("sub/file"), b"hello").unwrap();
            fs::create_dir_all(a.join("volumes/kubernetes.io~empty-dir/cache")).unwrap();
            let secret = a.join("volumes/kubernetes.io~secret/token");
            fs::create_dir_all(&secret).unwrap();
            fs::write(secret.join("password"), b"hunter2").unwrap();

            let b = root.join("pods").join(POD_B);
            let dev = b.join("volumeDevices/kubernetes.io~csi");
            fs::create_dir_all(&dev).unwrap();
            fs::write(dev.join("pv-block"), vec![0u8; 8192]).unwrap();
            fs::create_dir_all(b.join("volumes/kubernetes.io~empty-dir/scratch")).unwrap();

            let kubelet = Kubelet::new(root).unwrap();
            Fixture { dir, kubelet }
        }

        fn pod(&self, uid: &str) -> PathBuf {
            self.kubelet.pods_dir().join(uid)
        }
    }

    fn pod_ref(uid: &str, name: &str) -> VolumeRef {
        VolumeRef::Pod {
            pod_uid: uid.into(),
            volume_name: name.into(),
        }
    }

    fn invalid(r: Result<VolumeInfo, VolumeError>) -> String {
        match r {
            Err(VolumeError::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn not_found(r: Result<VolumeInfo, VolumeError>) -> String {
        match r {
            Err(VolumeError::NotFound(m)) => m,
            other => panic!("expected NotFound, got {other:?}"),
        }
    }

    fn summary(list: &[VolumeInfo]) -> Vec<(&str, &str, &str)> {
        list.iter()
            .map(|v| {
                (
                    v.pod_uid.as_str(),
                    v.plugin.as_str(),
                    v.volume_name.as_str(),
                )
            })
            .collect()
    }

    #[test]
    fn new_fails_without_pods_dir() {
        let dir = tempfile::tempdir().unwrap();
        match Kubelet::new(dir.path()) {
            Err(VolumeError::Io { .. }) => {}
            other => panic!("expected Io, got {other:?}"),
        }
        fs::write(dir.path().join("pods"), b"").unwrap();
        assert!(matches!(
            Kubelet::new(dir.path()),
            Err(VolumeError::Io { .. })
        ));
    }

    #[test]
    fn new_canonicalises_pods_dir() {
        let f = Fixture::new();
        let link = tempfile::tempdir().unwrap();
        let root_link = link.path().join("kubelet");
        symlink(f.dir.path(), &root_link).unwrap();
        let k = Kubelet::new(&root_link).unwrap();
        assert_eq!(k.root(), root_link);
        assert_eq!(k.pods_dir(), f.kubelet.pods_dir());
        assert_eq!(k.list(None).unwrap(), f.kubelet.list(None).unwrap());
    }

    #[test]
    fn list_finds_exactly_the_data_volumes() {
        let f = Fixture::new();
        let list = f.kubelet.list(None).unwrap();
        assert_eq!(
            summary(&list),
            vec![
                (POD_A, "kubernetes.io~csi", "pvc-a"),
                (POD_A, "kubernetes.io~empty-dir", "cache"),
                (POD_A, "kubernetes.io~nfs", "pv-nfs"),
                (POD_B, "kubernetes.io~csi", "pv-block"),
                (POD_B, "kubernetes.io~empty-dir", "scratch"),
            ]
        );
        let pods = f.kubelet.pods_dir();
        assert_eq!(
            list[0],
            VolumeInfo {
                pod_uid: POD_A.into(),
                volume_name: "pvc-a".into(),
                plugin: "kubernetes.io~csi".into(),
                pv_name: "pv-alpha".into(),
                csi_driver: "ebs.csi.aws.com".into(),
                mode: VolumeMode::Filesystem,
                path: pods
                    .join(POD_A)
                    .join("volumes/kubernetes.io~csi/pvc-a/mount"),
            }
        );
        assert_eq!(list[1].pv_name, "");
        assert_eq!(list[1].csi_driver, "");
        assert_eq!(
            list[1].path,
            pods.join(POD_A)
                .join("volumes/kubernetes.io~empty-dir/cache")
        );
        assert_eq!(list[2].pv_name, "pv-nfs");
        assert_eq!(list[2].csi_driver, "");
        assert_eq!(list[2].mode, VolumeMode::Filesystem);
        assert_eq!(
            list[2].path,
            pods.join(POD_A).join("volumes/kubernetes.io~nfs/pv-nfs")
        );
        assert_eq!(list[3].pv_name, "pv-block");
        assert_eq!(list[3].mode, VolumeMode::Block);
        assert_eq!(
            list[3].path,
            pods.join(POD_B)
                .join("volumeDevices/kubernetes.io~csi/pv-block")
        );
        assert!(
            list.iter()
                .all(|v| !v.path.to_string_lossy().contains("secret"))
        );
    }

    #[test]
    fn list_of_one_pod() {
        let f = Fixture::new();
        let list = f.kubelet.list(Some(POD_B)).unwrap();
        assert_eq!(
            summary(&list),
            vec![
                (POD_B, "kubernetes.io~csi", "pv-block"),
                (POD_B, "kubernetes.io~empty-dir", "scratch"),
            ]
        );
        assert!(matches!(
            f.kubelet.list(Some("no-such-pod")),
            Err(VolumeError::NotFound(_))
        ));
        assert!(matches!(
            f.kubelet.list(Some("../x")),
            Err(VolumeError::InvalidArgument(_))
        ));
    }

    #[test]
    fn csi_vol_data_variants() {
        let f = Fixture::new();
        let base = f.pod(POD_A).join("volumes/kubernetes.io~csi");
        // Ephemeral inline volume: no PV name, driver known.
        fs::create_dir_all(base.join("inline/mount")).unwrap();
        fs::write(
            base.join("inline/vol_data.json"),
            r#"{"driverName":"secrets-store.csi.k8s.io","specVolID":"inline","volumeLifecycleMode":"Ephemeral"}"#,
        )
        .unwrap();
        // No vol_data.json: the directory name, driver unknown.
        fs::create_dir_all(base.join("pvc-bare/mount")).unwrap();
        // Malformed vol_data.json: same fallback.
        fs::create_dir_all(base.join("pvc-junk/mount")).unwrap();
        fs::write(base.join("pvc-junk/vol_data.json"), b"[1,2").unwrap();
        // vol_data.json as a symlink to a readable JSON file elsewhere is not followed.
        fs::create_dir_all(base.join("pvc-link/mount")).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let planted = elsewhere.path().join("v.json");
        fs::write(&planted, r#"{"specVolID":"stolen","driverName":"evil"}"#).unwrap();
        symlink(&planted, base.join("pvc-link/vol_data.json")).unwrap();
        // No lifecycle mode means persistent.
        fs::create_dir_all(base.join("pvc-old/mount")).unwrap();
        fs::write(
            base.join("pvc-old/vol_data.json"),
            r#"{"driverName":"d","specVolID":"pv-old"}"#,
        )
        .unwrap();

        let get = |name: &str| f.kubelet.resolve(&pod_ref(POD_A, name)).unwrap();
        let inline = get("inline");
        assert_eq!(
            (inline.pv_name.as_str(), inline.csi_driver.as_str()),
            ("", "secrets-store.csi.k8s.io")
        );
        let bare = get("pvc-bare");
        assert_eq!(
            (bare.pv_name.as_str(), bare.csi_driver.as_str()),
            ("pvc-bare", "")
        );
        let junk = get("pvc-junk");
        assert_eq!(
            (junk.pv_name.as_str(), junk.csi_driver.as_str()),
            ("pvc-junk", "")
        );
        let link = get("pvc-link");
        assert_eq!(
            (link.pv_name.as_str(), link.csi_driver.as_str()),
            ("pvc-link", "")
        );
        let old = get("pvc-old");
        assert_eq!(
            (old.pv_name.as_str(), old.csi_driver.as_str()),
            ("pv-old", "d")
        );
        // A CSI volume without a mount directory is not mounted.
        fs::create_dir_all(base.join("pvc-unmounted")).unwrap();
        not_found(f.kubelet.resolve(&pod_ref(POD_A, "pvc-unmounted")));
    }

    #[test]
    fn resolve_by_pod_ref() {
        let f = Fixture::new();
        let list = f.kubelet.list(None).unwrap();
        for v in &list {
            let got = f
                .kubelet
                .resolve(&pod_ref(&v.pod_uid, &v.volume_name))
                .unwrap();
            assert_eq!(&got, v);
        }
    }

    #[test]
    fn resolve_by_pv() {
        let f = Fixture::new();
        let csi = f
            .kubelet
            .resolve(&VolumeRef::Pv("pv-alpha".into()))
            .unwrap();
        assert_eq!(csi.pod_uid, POD_A);
        assert_eq!(csi.volume_name, "pvc-a");
        let nfs = f.kubelet.resolve(&VolumeRef::Pv("pv-nfs".into())).unwrap();
        assert_eq!(nfs.plugin, "kubernetes.io~nfs");
        let block = f
            .kubelet
            .resolve(&VolumeRef::Pv("pv-block".into()))
            .unwrap();
        assert_eq!(block.mode, VolumeMode::Block);
        assert_eq!(block.pod_uid, POD_B);
        // The PV name is the spec name, not the directory name.
        not_found(f.kubelet.resolve(&VolumeRef::Pv("pvc-a".into())));
        not_found(f.kubelet.resolve(&VolumeRef::Pv("pv-missing".into())));
        // emptyDirs have no PV name, so their names never match.
        not_found(f.kubelet.resolve(&VolumeRef::Pv("cache".into())));
    }

    #[test]
    fn resolve_by_pv_takes_first_pod_in_order() {
        let f = Fixture::new();
        let dir = f.pod(POD_B).join("volumes/kubernetes.io~nfs/pv-nfs");
        fs::create_dir_all(&dir).unwrap();
        let got = f.kubelet.resolve(&VolumeRef::Pv("pv-nfs".into())).unwrap();
        assert_eq!(got.pod_uid, POD_A);
    }

    #[test]
    fn not_found_for_unknown_pod_volume_pv() {
        let f = Fixture::new();
        let m = not_found(f.kubelet.resolve(&pod_ref("no-such-pod", "pvc-a")));
        assert!(m.contains("no-such-pod"), "{m}");
        let m = not_found(f.kubelet.resolve(&pod_ref(POD_A, "no-such-volume")));
        assert!(m.contains("no-such-volume"), "{m}");
        not_found(f.kubelet.resolve(&VolumeRef::Pv("no-such-pv".into())));
        // A pod without any volume directories.
        fs::create_dir_all(f.pod("empty-pod")).unwrap();
        not_found(f.kubelet.resolve(&pod_ref("empty-pod", "x")));
        assert_eq!(f.kubelet.list(Some("empty-pod")).unwrap(), vec![]);
    }

    #[test]
    fn secret_volume_is_refused() {
        let f = Fixture::new();
        let m = invalid(f.kubelet.resolve(&pod_ref(POD_A, "token")));
        assert!(
            m.contains("kubernetes.io~secret") && m.contains("not a data volume"),
            "{m}"
        );
        for plugin in REFUSED_PLUGINS {
            let dir = f.pod(POD_B).join("volumes").join(plugin).join("cfg");
            fs::create_dir_all(&dir).unwrap();
        }
        invalid(f.kubelet.resolve(&pod_ref(POD_B, "cfg")));
        assert!(
            f.kubelet
                .list(Some(POD_B))
                .unwrap()
                .iter()
                .all(|v| v.volume_name != "cfg")
        );
    }

    #[test]
    fn ambiguous_name_is_refused() {
        let f = Fixture::new();
        fs::create_dir_all(f.pod(POD_A).join("volumes/kubernetes.io~nfs/cache")).unwrap();
        let m = invalid(f.kubelet.resolve(&pod_ref(POD_A, "cache")));
        assert!(m.contains("ambiguous"), "{m}");
        // Same name as a filesystem and a block volume.
        let dev = f.pod(POD_A).join("volumeDevices/kubernetes.io~csi");
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("pv-nfs"), b"x").unwrap();
        let m = invalid(f.kubelet.resolve(&pod_ref(POD_A, "pv-nfs")));
        assert!(m.contains("ambiguous"), "{m}");
    }

    #[test]
    fn traversal_names_are_refused() {
        let f = Fixture::new();
        let long = "a".repeat(254);
        let bad = [
            "..",
            ".",
            "../x",
            "a/b",
            "/etc",
            "",
            "a\0b",
            long.as_str(),
            "x y",
            "é",
            "a\\b",
        ];
        for name in bad {
            let m = invalid(f.kubelet.resolve(&pod_ref(POD_A, name)));
            assert!(m.contains("volume_name"), "{m}");
            let m = invalid(f.kubelet.resolve(&pod_ref(name, "pvc-a")));
            assert!(m.contains("pod_uid"), "{m}");
            let m = invalid(f.kubelet.resolve(&VolumeRef::Pv(name.into())));
            assert!(m.contains("pv name"), "{m}");
        }
        // The offending value is shown escaped and truncated.
        let m = invalid(f.kubelet.resolve(&pod_ref(POD_A, &long)));
        assert!(m.contains(&format!("{:?}", "a".repeat(64))), "{m}");
        assert!(!m.contains(&"a".repeat(65)), "{m}");
        let m = invalid(f.kubelet.resolve(&pod_ref(POD_A, "a\0b")));
        assert!(m.contains(r#""a\0b""#), "{m}");
        // 253 bytes is still a valid name.
        not_found(f.kubelet.resolve(&pod_ref(POD_A, &"a".repeat(253))));
    }

    #[test]
    fn volume_dir_symlink_outside_is_refused() {
        let f = Fixture::new();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("loot"), b"x").unwrap();
        symlink(
            outside.path(),
            f.pod(POD_A).join("volumes/kubernetes.io~empty-dir/escape"),
        )
        .unwrap();
        let m = invalid(f.kubelet.resolve(&pod_ref(POD_A, "escape")));
        assert!(m.contains("outside the kubelet pods directory"), "{m}");
        assert!(
            f.kubelet
                .list(None)
                .unwrap()
                .iter()
                .all(|v| v.volume_name != "escape")
        );
    }

    #[test]
    fn volume_dir_symlink_to_other_pod_is_refused() {
        let f = Fixture::new();
        symlink(
            f.pod(POD_A).join("volumes/kubernetes.io~nfs/pv-nfs"),
            f.pod(POD_B)
                .join("volumes/kubernetes.io~empty-dir/borrowed"),
        )
        .unwrap();
        let m = invalid(f.kubelet.resolve(&pod_ref(POD_B, "borrowed")));
        assert!(m.contains("symlink"), "{m}");
        assert!(
            f.kubelet
                .list(None)
                .unwrap()
                .iter()
                .all(|v| v.volume_name != "borrowed")
        );
        // A relative link to the same place is no different.
        symlink(
            "../../../".to_owned() + POD_A + "/volumes/kubernetes.io~nfs/pv-nfs",
            f.pod(POD_B).join("volumes/kubernetes.io~empty-dir/rel"),
        )
        .unwrap();
        invalid(f.kubelet.resolve(&pod_ref(POD_B, "rel")));
        // Nor one to a secret of another pod.
        symlink(
            f.pod(POD_A).join("volumes/kubernetes.io~secret/token"),
            f.pod(POD_B).join("volumes/kubernetes.io~empty-dir/sneaky"),
        )
        .unwrap();
        invalid(f.kubelet.resolve(&pod_ref(POD_B, "sneaky")));
    }

    #[test]
    fn csi_mount_symlink_is_refused() {
        let f = Fixture::new();
        let outside = tempfile::tempdir().unwrap();
        let vol = f.pod(POD_B).join("volumes/kubernetes.io~csi/pvc-evil");
        fs::create_dir_all(&vol).unwrap();
        symlink(outside.path(), vol.join("mount")).unwrap();
        let m = invalid(f.kubelet.resolve(&pod_ref(POD_B, "pvc-evil")));
        assert!(m.contains("mount") && m.contains("outside"), "{m}");
        // Pointing inside the pods directory does not help.
        let vol2 = f.pod(POD_B).join("volumes/kubernetes.io~csi/pvc-evil2");
        fs::create_dir_all(&vol2).unwrap();
        symlink(
            f.pod(POD_A).join("volumes/kubernetes.io~csi/pvc-a/mount"),
            vol2.join("mount"),
        )
        .unwrap();
        let m = invalid(f.kubelet.resolve(&pod_ref(POD_B, "pvc-evil2")));
        assert!(m.contains("symlink"), "{m}");
        let list = f.kubelet.list(None).unwrap();
        assert!(list.iter().all(|v| !v.volume_name.starts_with("pvc-evil")));
        not_found(f.kubelet.resolve(&VolumeRef::Pv("pvc-evil".into())));
    }

    #[test]
    fn pod_dir_symlink_is_refused() {
        let f = Fixture::new();
        let outside = tempfile::tempdir().unwrap();
        let fake = outside.path().join("volumes/kubernetes.io~empty-dir/x");
        fs::create_dir_all(&fake).unwrap();
        symlink(outside.path(), f.pod("evil-pod")).unwrap();
        let m = invalid(f.kubelet.resolve(&pod_ref("evil-pod", "x")));
        assert!(m.contains("outside the kubelet pods directory"), "{m}");
        assert!(matches!(
            f.kubelet.list(Some("evil-pod")),
            Err(VolumeError::InvalidArgument(_))
        ));
        // Listing everything skips the pod instead of failing.
        let list = f.kubelet.list(None).unwrap();
        assert!(list.iter().all(|v| v.pod_uid != "evil-pod"));
        // A pod directory linked to another pod is refused too.
        symlink(f.pod(POD_A), f.pod("alias-pod")).unwrap();
        invalid(f.kubelet.resolve(&pod_ref("alias-pod", "pvc-a")));
    }

    #[test]
    fn volumes_and_plugin_dir_symlinks_are_refused() {
        let f = Fixture::new();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir_all(outside.path().join("kubernetes.io~nfs/pv-x")).unwrap();
        let pod = f.pod("pod-c");
        fs::create_dir_all(&pod).unwrap();
        symlink(outside.path(), pod.join("volumes")).unwrap();
        invalid(f.kubelet.resolve(&pod_ref("pod-c", "pv-x")));
        assert_eq!(f.kubelet.list(Some("pod-c")).unwrap(), vec![]);

        let pod = f.pod("pod-d");
        fs::create_dir_all(pod.join("volumes")).unwrap();
        symlink(
            outside.path().join("kubernetes.io~nfs"),
            pod.join("volumes/kubernetes.io~nfs"),
        )
        .unwrap();
        let m = invalid(f.kubelet.resolve(&pod_ref("pod-d", "pv-x")));
        assert!(m.contains("outside"), "{m}");
        assert_eq!(f.kubelet.list(Some("pod-d")).unwrap(), vec![]);
        not_found(f.kubelet.resolve(&VolumeRef::Pv("pv-x".into())));
    }

    #[test]
    fn block_symlink_to_file_outside_is_refused() {
        let f = Fixture::new();
        let outside = tempfile::tempdir().unwrap();
        let file = outside.path().join("shadow");
        fs::write(&file, b"root:x").unwrap();
        let dev = f.pod(POD_B).join("volumeDevices/kubernetes.io~csi");
        symlink(&file, dev.join("pv-file")).unwrap();
        let m = invalid(f.kubelet.resolve(&pod_ref(POD_B, "pv-file")));
        assert!(m.contains("outside"), "{m}");
        symlink(outside.path(), dev.join("pv-dir")).unwrap();
        invalid(f.kubelet.resolve(&pod_ref(POD_B, "pv-dir")));
        // A link to a regular file inside the pods directory is not a device either.
        symlink(
            f.pod(POD_A)
                .join("volumes/kubernetes.io~secret/token/password"),
            dev.join("pv-secret"),
        )
        .unwrap();
        invalid(f.kubelet.resolve(&pod_ref(POD_B, "pv-secret")));
        // A directory entry is neither a device nor a file.
        fs::create_dir(dev.join("pv-subdir")).unwrap();
        invalid(f.kubelet.resolve(&pod_ref(POD_B, "pv-subdir")));
        let names: Vec<String> = f
            .kubelet
            .list(Some(POD_B))
            .unwrap()
            .into_iter()
            .map(|v| v.volume_name)
            .collect();
        assert_eq!(names, vec!["pv-block", "scratch"]);
    }

    #[test]
    fn block_symlink_to_device_node_is_accepted() {
        let Some(device) = fs::read_dir("/dev").ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_block_device()))
        }) else {
            return; // No block device node visible here.
        };
        let f = Fixture::new();
        let dev = f.pod(POD_B).join("volumeDevices/kubernetes.io~rbd");
        fs::create_dir_all(&dev).unwrap();
        symlink(&device, dev.join("pv-rbd")).unwrap();
        let got = f.kubelet.resolve(&pod_ref(POD_B, "pv-rbd")).unwrap();
        assert_eq!(got.path, fs::canonicalize(&device).unwrap());
        assert_eq!(got.mode, VolumeMode::Block);
        assert_eq!(got.pv_name, "pv-rbd");
        assert!(f.kubelet.bytes_used(&got, &|| false).is_ok());
    }

    #[test]
    fn statvfs_reports_used_bytes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(statvfs_used(dir.path()).is_ok());
        assert!(statvfs_used(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn bytes_used_walks_a_directory() {
        let f = Fixture::new();
        let info = f.kubelet.resolve(&pod_ref(POD_A, "pvc-a")).unwrap();
        let used = f.kubelet.bytes_used(&info, &|| false).unwrap();
        let expected = fs::metadata(&info.path).unwrap().blocks() * 512
            + fs::metadata(info.path.join("data.bin")).unwrap().blocks() * 512;
        assert_eq!(used, expected);
        assert!(used >= 10_000, "{used}");

        // Symlinks are counted as themselves, not followed; hard links once.
        let nfs = f.kubelet.resolve(&pod_ref(POD_A, "pv-nfs")).unwrap();
        let before = f.kubelet.bytes_used(&nfs, &|| false).unwrap();
        symlink(info.path.join("data.bin"), nfs.path.join("link")).unwrap();
        fs::hard_link(nfs.path.join("sub/file"), nfs.path.join("hard")).unwrap();
        let link_blocks = fs::symlink_metadata(nfs.path.join("link"))
            .unwrap()
            .blocks()
            * 512;
        assert_eq!(
            f.kubelet.bytes_used(&nfs, &|| false).unwrap(),
            before + link_blocks
        );
    }

    #[test]
    fn bytes_used_stops_when_cancelled() {
        let f = Fixture::new();
        let info = f.kubelet.resolve(&pod_ref(POD_A, "pv-nfs")).unwrap();
        let full = f.kubelet.bytes_used(&info, &|| false).unwrap();
        let calls = Cell::new(0);
        let cancel = || {
            calls.set(calls.get() + 1);
            calls.get() > 1
        };
        let partial = f.kubelet.bytes_used(&info, &cancel).unwrap();
        assert!(partial < full, "{partial} {full}");
        assert_eq!(
            f.kubelet.bytes_used(&info, &|| true).unwrap(),
            fs::metadata(&info.path).unwrap().blocks() * 512
        );
    }

    #[test]
    fn bytes_used_of_block_file_is_its_size() {
        let f = Fixture::new();
        let info = f.kubelet.resolve(&pod_ref(POD_B, "pv-block")).unwrap();
        assert_eq!(f.kubelet.bytes_used(&info, &|| false).unwrap(), 8192);
    }

    #[test]
    fn bytes_used_rechecks_the_path() {
        let f = Fixture::new();
        let outside = tempfile::tempdir().unwrap();
        let file = outside.path().join("f");
        fs::write(&file, b"1234").unwrap();
        let mut info = f.kubelet.resolve(&pod_ref(POD_A, "cache")).unwrap();
        info.path = outside.path().to_path_buf();
        assert!(matches!(
            f.kubelet.bytes_used(&info, &|| false),
            Err(VolumeError::InvalidArgument(_))
        ));
        info.path = f.kubelet.pods_dir().to_path_buf();
        assert!(matches!(
            f.kubelet.bytes_used(&info, &|| false),
            Err(VolumeError::InvalidArgument(_))
        ));
        info.mode = VolumeMode::Block;
        info.path = fs::canonicalize(&file).unwrap();
        assert!(matches!(
            f.kubelet.bytes_used(&info, &|| false),
            Err(VolumeError::InvalidArgument(_))
        ));
    }

    #[test]
    fn listing_skips_entries_with_odd_names() {
        let f = Fixture::new();
        fs::create_dir_all(
            f.pod(POD_A)
                .join("volumes/kubernetes.io~empty-dir/with space"),
        )
        .unwrap();
        fs::create_dir_all(f.kubelet.pods_dir().join("pod with space/volumes/x/y")).unwrap();
        let list = f.kubelet.list(None).unwrap();
        assert_eq!(list.len(), 5);
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]
        #[test]
        fn check_name_accepts_only_plain_components(s in "\\PC{0,40}|[A-Za-z0-9._~-]{1,300}") {
            let plain = !s.is_empty()
                && s.len() <= MAX_NAME_LEN
                && s != "."
                && s != ".."
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b));
            let got = check_name("name", &s);
            proptest::prop_assert_eq!(got.is_ok(), plain);
            if got.is_ok() {
                let joined = Path::new("/base").join(&s);
                proptest::prop_assert_eq!(joined.parent(), Some(Path::new("/base")));
            }
        }

        #[test]
        fn resolve_never_leaves_the_pods_dir(
            uid in proptest::prop_oneof![
                proptest::strategy::Just(POD_A.to_owned()),
                proptest::strategy::Just("evil-pod".to_owned()),
                "[a-zA-Z0-9./~-]{0,12}",
            ],
            name in proptest::prop_oneof![
                proptest::strategy::Just("pvc-a".to_owned()),
                proptest::strategy::Just("token".to_owned()),
                proptest::strategy::Just("escape".to_owned()),
                proptest::strategy::Just("x".to_owned()),
                "[a-zA-Z0-9./~-]{0,12}",
            ],
        ) {
            let f = Fixture::new();
            let outside = tempfile::tempdir().unwrap();
            fs::create_dir_all(outside.path().join("volumes/kubernetes.io~empty-dir/x")).unwrap();
            symlink(outside.path(), f.pod("evil-pod")).unwrap();
            symlink(
                outside.path(),
                f.pod(POD_A).join("volumes/kubernetes.io~empty-dir/escape"),
            )
            .unwrap();
            for r in [pod_ref(&uid, &name), VolumeRef::Pv(name.clone())] {
                if let Ok(info) = f.kubelet.resolve(&r) {
                    proptest::prop_assert!(info.path.starts_with(f.kubelet.pods_dir()));
                    proptest::prop_assert!(!info.path.to_string_lossy().contains("secret"));
                }
            }
        }
    }
}
