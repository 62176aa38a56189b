//! The tree every tool snapshots: generating it (or copying a given one), and the 1% change
//! applied to it in place and undone afterwards.
//!
//! Generation is deterministic: every pseudo-random choice derives from [`SEED`], so the same
//! scale gives the same bytes on every machine. This module does not run tools or measure.

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use crate::fstree::{TreeSummary, copy_tree, summarize, visit};
use crate::report::thousands;
use crate::{Config, KIB, MIB};

/// Seed of every pseudo-random choice in the dataset and the change.
const SEED: u64 = 0x6665_7272_7962_656e;
/// Files below this size are "small" when choosing which files the 1% change touches.
const SMALL_LIMIT: u64 = MIB;
/// Small files per leaf directory and leaf directories per parent in the generated tree.
const FILES_PER_DIR: usize = 50;
const DIRS_PER_PARENT: usize = 20;

/// The tree every tool snapshots.
pub struct Dataset {
    pub path: PathBuf,
    pub summary: TreeSummary,
    pub description: String,
    /// For a generated dataset kept in `FERRY_BENCH_DIR`: the file whose presence says the
    /// dataset is complete and unmodified, so a later invocation may reuse it.
    marker: Option<PathBuf>,
}

impl Dataset {
    /// Copies `FERRY_BENCH_DATA` into `work`, or generates the dataset for the configured scale
    /// in `root`, reusing one a previous invocation left complete and unmodified there.
    pub fn prepare(cfg: &Config, root: &Path, work: &Path) -> anyhow::Result<Self> {
        if let Some(src) = &cfg.data {
            let path = work.join("data");
            eprintln!(
                "compare: copying {} to {} (the bench modifies its input)",
                src.display(),
                path.display()
            );
            copy_tree(src, &path)?;
            let summary = summarize(&path)?;
            return Ok(Dataset {
                path,
                summary,
                description: format!("a copy of {}", src.display()),
                marker: None,
            });
        }
        let name = format!("data-scale-{}", cfg.scale);
        let path = root.join(&name);
        let marker = root.join(format!("{name}.complete"));
        let description = match fs::read_to_string(&marker) {
            Ok(d) if path.is_dir() => {
                eprintln!("compare: reusing the dataset in {}", path.display());
                d
            }
            _ => {
                if path.exists() {
                    fs::remove_dir_all(&path)
                        .with_context(|| format!("remove {}", path.display()))?;
                }
                eprintln!("compare: generating the dataset in {}", path.display());
                let started = Instant::now();
                let d = generate(&path, cfg.scale)?;
                eprintln!(
                    "compare: generated in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                d
            }
        };
        let dataset = Dataset {
            summary: summarize(&path)?,
            path,
            description,
            marker: Some(marker),
        };
        dataset.set_pristine(true)?;
        Ok(dataset)
    }

    /// Records whether the dataset is in its original state.
    pub fn set_pristine(&self, pristine: bool) -> anyhow::Result<()> {
        let Some(marker) = &self.marker else {
            return Ok(());
        };
        if pristine {
            fs::write(marker, &self.description)
                .with_context(|| format!("write {}", marker.display()))
        } else {
            match fs::remove_file(marker) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("remove {}", marker.display()))
                }
                _ => Ok(()),
            }
        }
    }
}

/// xorshift64* (Vigna): small, fast and good enough to make test data; not for anything secret.
struct Rng(u64);

impl Rng {
    /// Mixes `seed` with splitmix64 first, so neighbouring seeds give unrelated streams.
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n`, for `n` below 2^32.
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() >> 32) * n) >> 32
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A fixed vocabulary of made-up words: 4,096 of them gives zstd level 3 about 3:1 on the text.
fn vocabulary() -> Vec<Vec<u8>> {
    let mut rng = Rng::new(SEED ^ 0x0076_6f63_6162);
    (0..4096)
        .map(|_| {
            let len = 2 + rng.below(8) as usize;
            (0..len).map(|_| b'a' + rng.below(26) as u8).collect()
        })
        .collect()
}

/// Text-like bytes: lines of words drawn with a skew towards the front of the vocabulary, and
/// one line in five a repeat of a recent line.
struct TextGen<'a> {
    words: &'a [Vec<u8>],
    recent: Vec<Vec<u8>>,
    rng: Rng,
}

impl<'a> TextGen<'a> {
    fn new(words: &'a [Vec<u8>], seed: u64) -> Self {
        TextGen {
            words,
            recent: Vec::new(),
            rng: Rng::new(seed),
        }
    }

    /// Appends exactly `len` bytes of text to `out`.
    fn fill(&mut self, out: &mut Vec<u8>, len: usize) {
        let end = out.len() + len;
        while out.len() < end {
            self.line(out);
        }
        out.truncate(end);
    }

    fn line(&mut self, out: &mut Vec<u8>) {
        if self.recent.len() >= 16 && self.rng.below(5) == 0 {
            let i = self.rng.below(self.recent.len() as u64) as usize;
            out.extend_from_slice(&self.recent[i]);
            return;
        }
        let n = self.words.len() as u64;
        let mut line = Vec::with_capacity(96);
        for k in 0..4 + self.rng.below(12) {
            if k > 0 {
                line.push(b' ');
            }
            // The product of two uniform draws favours small indices, like word frequencies.
            let idx = self.rng.below(n) * self.rng.below(n) / n;
            line.extend_from_slice(&self.words[idx as usize]);
        }
        line.extend_from_slice(b".\n");
        out.extend_from_slice(&line);
        if self.recent.len() < 64 {
            self.recent.push(line);
        } else {
            let i = self.rng.below(64) as usize;
            self.recent[i] = line;
        }
    }
}

/// Writes the generated dataset into `dir` and returns its description.
fn generate(dir: &Path, scale: f64) -> anyhow::Result<String> {
    let words = vocabulary();
    let small = ((20_000.0 * scale).round() as usize).max(1);
    let large = ((256.0 * scale * MIB as f64) as u64).max(MIB);
    let mut buf = Vec::with_capacity(64 * KIB as usize);
    for i in 0..small {
        let leaf = i / FILES_PER_DIR;
        let parent = dir
            .join("small")
            .join(format!("p{:03}", leaf / DIRS_PER_PARENT))
            .join(format!("d{leaf:04}"));
        if i % FILES_PER_DIR == 0 {
            fs::create_dir_all(&parent).with_context(|| format!("create {}", parent.display()))?;
        }
        let mut rng = Rng::new(SEED ^ (i as u64).wrapping_mul(0x1000_0000_01b3));
        let len = (KIB + rng.below(63 * KIB + 1)) as usize;
        buf.clear();
        TextGen::new(&words, rng.next()).fill(&mut buf, len);
        let path = parent.join(format!("f{i:05}.txt"));
        fs::write(&path, &buf).with_context(|| format!("write {}", path.display()))?;
    }

    let large_dir = dir.join("large");
    fs::create_dir_all(&large_dir).with_context(|| format!("create {}", large_dir.display()))?;
    let block = 4 * MIB as usize;
    for k in 0..2u64 {
        let path = large_dir.join(format!("random-{k}.bin"));
        let mut rng = Rng::new(SEED ^ 0x7261_6e64 ^ k);
        write_blocks(&path, large, block, |b, n| {
            b.resize(n, 0);
            rng.fill(b);
        })?;
        let path = large_dir.join(format!("text-{k}.txt"));
        let mut text = TextGen::new(&words, SEED ^ 0x7465_7874 ^ k);
        write_blocks(&path, large, block, |b, n| text.fill(b, n))?;
    }

    let sample = large.min(8 * MIB);
    let ratio = zstd_ratio(&large_dir.join("text-0.txt"), sample)?;
    Ok(format!(
        "generated at scale {scale}: {} small text files of 1-64 KiB (~{FILES_PER_DIR} per \
         directory), 2 x {} MiB pseudo-random, 2 x {} MiB text (zstd-3 ratio {ratio:.2}:1 on \
         its first {} MiB)",
        thousands(small as u64),
        large / MIB,
        large / MIB,
        sample / MIB
    ))
}

/// Writes `size` bytes to `path`, asking `make(buf, n)` to fill an empty buffer with `n` bytes
/// at a time.
fn write_blocks(
    path: &Path,
    size: u64,
    block: usize,
    mut make: impl FnMut(&mut Vec<u8>, usize),
) -> anyhow::Result<()> {
    let mut f = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut buf = Vec::with_capacity(block);
    let mut left = size;
    while left > 0 {
        let n = left.min(block as u64) as usize;
        buf.clear();
        make(&mut buf, n);
        f.write_all(&buf)
            .with_context(|| format!("write {}", path.display()))?;
        left -= n as u64;
    }
    Ok(())
}

/// How much zstd level 3 shrinks the first `limit` bytes of `path`.
fn zstd_ratio(path: &Path, limit: u64) -> anyhow::Result<f64> {
    let mut sample = Vec::new();
    File::open(path)
        .with_context(|| format!("open {}", path.display()))?
        .take(limit)
        .read_to_end(&mut sample)
        .with_context(|| format!("read {}", path.display()))?;
    let packed = zstd::bulk::compress(&sample, 3).context("compress a sample")?;
    Ok(sample.len() as f64 / packed.len().max(1) as f64)
}

/// Which files the 1% change touches; fixed once, so every run changes the same bytes.
pub struct ChangePlan {
    pub small: Vec<PathBuf>,
    pub large: Option<PathBuf>,
}

/// What [`ChangePlan::apply`] overwrote, for [`ChangePlan::revert`].
pub struct Applied {
    originals: Vec<Vec<u8>>,
    large_len: Option<u64>,
}

impl ChangePlan {
    pub fn new(data: &Path) -> anyhow::Result<Self> {
        let mut files: Vec<(PathBuf, u64)> = Vec::new();
        visit(data, &mut |path, meta| {
            if meta.is_file() {
                files.push((path.to_path_buf(), meta.len()));
            }
            Ok(())
        })?;
        files.sort();
        let small = files
            .iter()
            .filter(|(_, len)| *len < SMALL_LIMIT)
            .enumerate()
            .filter(|(i, _)| i % 100 == 0)
            .map(|(_, (p, _))| p.clone())
            .collect();
        // The first of the largest files in path order, if it is large at all.
        let mut large: Option<&(PathBuf, u64)> = None;
        for f in &files {
            if f.1 >= SMALL_LIMIT && large.is_none_or(|l| f.1 > l.1) {
                large = Some(f);
            }
        }
        Ok(ChangePlan {
            small,
            large: large.map(|(p, _)| p.clone()),
        })
    }

    /// Changes the planned files in place and returns what [`ChangePlan::revert`] needs.
    pub fn apply(&self) -> anyhow::Result<Applied> {
        let mut originals = Vec::with_capacity(self.small.len());
        for (i, path) in self.small.iter().enumerate() {
            let old = fs::read(path).with_context(|| format!("read {}", path.display()))?;
            let mut new = old.clone();
            let patch = format!("<changed {i:06} by bench>");
            let mid = new.len() / 2;
            for (dst, src) in new.iter_mut().skip(mid).zip(patch.bytes()) {
                *dst = src;
            }
            new.extend_from_slice(b"\na line appended by the ferry bench\n");
            fs::write(path, &new).with_context(|| format!("write {}", path.display()))?;
            originals.push(old);
        }
        let large_len = match &self.large {
            Some(path) => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .with_context(|| format!("open {}", path.display()))?;
                let len = f
                    .seek(SeekFrom::End(0))
                    .with_context(|| format!("seek {}", path.display()))?;
                let mut extra = vec![0u8; (len / 100).max(64 * KIB) as usize];
                Rng::new(SEED ^ 0x6170_7065_6e64).fill(&mut extra);
                f.write_all(&extra)
                    .with_context(|| format!("append to {}", path.display()))?;
                Some(len)
            }
            None => None,
        };
        Ok(Applied {
            originals,
            large_len,
        })
    }

    /// Puts the original contents and length back; modification times stay changed.
    pub fn revert(&self, applied: Applied) -> anyhow::Result<()> {
        for (path, old) in self.small.iter().zip(applied.originals) {
            fs::write(path, old).with_context(|| format!("write {}", path.display()))?;
        }
        if let (Some(path), Some(len)) = (&self.large, applied.large_len) {
            fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(len))
                .with_context(|| format!("truncate {}", path.display()))?;
        }
        Ok(())
    }
}
