//! Walking, summarizing, sizing and copying directory trees on the local disk.
//!
//! It owns the cheap restore check ([`TreeSummary`]: counts and byte totals, not contents) and
//! the local repository size ([`disk_usage`]); it knows nothing about repositories or tools.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Context;

use crate::MIB;
use crate::report::thousands;

/// Calls `f` for every entry under `root` (not `root` itself), without following symlinks.
pub fn visit(
    root: &Path,
    f: &mut dyn FnMut(&Path, &fs::Metadata) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
            let entry = entry.with_context(|| format!("list {}", dir.display()))?;
            let path = entry.path();
            let meta =
                fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
            f(&path, &meta)?;
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// Counts of what a tree holds; two trees with equal summaries pass the cheap restore check.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct TreeSummary {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Sum of the regular files' lengths.
    pub bytes: u64,
}

impl TreeSummary {
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} files, {} directories, {} bytes ({:.1} MiB)",
            thousands(self.files),
            thousands(self.dirs),
            thousands(self.bytes),
            self.bytes as f64 / MIB as f64
        );
        if self.symlinks > 0 {
            let _ = write!(s, ", {} symlinks", thousands(self.symlinks));
        }
        s
    }
}

pub fn summarize(root: &Path) -> anyhow::Result<TreeSummary> {
    let mut s = TreeSummary::default();
    visit(root, &mut |_, meta| {
        if meta.is_file() {
            s.files += 1;
            s.bytes += meta.len();
        } else if meta.is_dir() {
            s.dirs += 1;
        } else if meta.file_type().is_symlink() {
            s.symlinks += 1;
        }
        Ok(())
    })?;
    Ok(s)
}

/// Allocated bytes under `root`, counting `root` itself, the way `du` counts them.
pub fn disk_usage(root: &Path) -> anyhow::Result<u64> {
    let mut total = fs::symlink_metadata(root)
        .with_context(|| format!("stat {}", root.display()))?
        .blocks()
        * 512;
    visit(root, &mut |_, meta| {
        total += meta.blocks() * 512;
        Ok(())
    })?;
    Ok(total)
}

/// Makes `path` an empty directory, removing whatever was there.
pub fn fresh_dir(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        fs::remove_dir_all(path).with_context(|| format!("remove {}", path.display()))?;
    }
    fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))
}

/// Copies directories, regular files and symlinks from `src` into a fresh `dst`; other special
/// files are skipped with a note.
pub fn copy_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    fresh_dir(dst)?;
    visit(src, &mut |path, meta| {
        let rel = path
            .strip_prefix(src)
            .context("walk left the source tree")?;
        let to = dst.join(rel);
        if meta.is_dir() {
            fs::create_dir_all(&to).with_context(|| format!("create {}", to.display()))?;
        } else if meta.is_file() {
            fs::copy(path, &to).with_context(|| format!("copy {}", path.display()))?;
        } else if meta.file_type().is_symlink() {
            let link = fs::read_link(path).with_context(|| format!("read {}", path.display()))?;
            std::os::unix::fs::symlink(link, &to)
                .with_context(|| format!("create {}", to.display()))?;
        } else {
            eprintln!("compare: skipping special file {}", path.display());
        }
        Ok(())
    })
}
