//! `cargo bench --bench micro`: single-core throughput of each CPU stage of ferry's snapshot
//! pipeline, measured through ferry's own functions on one generated buffer, and the compute
//! floor that an end-to-end snapshot is held to.
//!
//! What it measures, in this order, each on the same bytes:
//!
//! - chunking: `chunker::Chunker::next_chunk` over the whole buffer (the reader is the buffer
//!   itself, so the copy into the chunker's buffer stands in for `read(2)`);
//! - SHA-256 of every chunk with `id::Id::hash`, the blob id the file saver computes;
//! - zstd compression of every chunk at `repository::blob::DEFAULT_LEVEL` with the frame settings
//!   of `BlobCodec` (content size, no checksum), and decompression back;
//! - sealing (`crypto::Key::seal`: AES-256-CTR + Poly1305) of every compressed chunk, and
//!   opening (`Key::open_in_place`: MAC check, then decryption);
//! - `repository::blob::BlobCodec::seal` and `::open`, the blob saver's and the loader's real
//!   calls: compression, sealing and the self-check (open, decompress, compare) in one, and
//!   opening, decompressing and checking the id in the other;
//! - pack assembly with `repository::packer::Packer` (`add` until `is_full`, then `finish`:
//!   `pack::encode_header`, sealing the header, and the SHA-256 pack id), as the pack saver's
//!   packer thread does;
//! - BLAKE3 of the buffer in 1 MiB steps, as `verify` hashes file contents, for reference;
//! - the compute floor: SHA-256, zstd and sealing of each chunk in one pass;
//! - the pipeline: everything the snapshot's CPU stages do per new chunk (chunking, zero check,
//!   SHA-256, the copy into the blob saver's queue, `BlobCodec::seal`, `Packer`) in one pass.
//!
//! Every stage runs on one thread. No I/O, no deduplication lookups, no channels and no
//! uploads are measured: this is the CPU work per byte, not a snapshot.
//!
//! How to run: `cargo bench --bench micro`. `FERRY_MICRO_MIB` (default 256) sets the buffer size
//! in MiB and `FERRY_MICRO_RUNS` (default 5) the number of timed runs. `FERRY_MICRO_DATA=DIR`
//! measures the regular files under `DIR` instead (read into memory, each file chunked on its
//! own as a snapshot chunks it), so that the floor of a `benches/compare` dataset is measured
//! on the very bytes the end-to-end snapshot reads. The buffer is the same on
//! every machine: alternating segments of pseudo-random bytes (incompressible) and text-like
//! lines (words of a small vocabulary and numbers, which zstd shrinks about as it shrinks
//! prose), half of each. Progress goes to stderr. Without the `--bench` argument that
//! `cargo bench` passes (as when `cargo test --benches` runs this target) it exits at once.
//!
//! Method: before any timing, every stage's output is checked once (chunks cover the buffer,
//! compressed and sealed chunks open back to their plaintext, packs parse back to their
//! blobs). Then every stage runs once to warm up, and `FERRY_MICRO_RUNS` rounds follow in each
//! of which every stage runs once in turn, so that a busy moment on a shared machine spreads
//! over all stages rather than spoiling one. `Instant` times only a stage's work (the fresh
//! copies that opening in place needs are made before the clock starts); the figure is the
//! median run, and the JSON lines carry the fastest and slowest too. MB are decimal (10^6
//! bytes), MiB binary. A stage's rate is over the bytes it consumes: the input for most, the
//! zstd output for sealing and opening, the sealed blobs for packing. Nothing is asserted
//! about speed.
//!
//! Output on stdout: the CPU model and whether it has `sha_ni`, `aes` and `avx2` (SHA-256,
//! AES and BLAKE3 rates depend on them), a Markdown table (stage | MB/s | MiB/s | note), one
//! JSON line per stage (`{"stage":…,"mb_per_s":…,"mib_per_s":…,…}`, lines starting with `{`),
//! and the floor.
//!
//! Reading the floor. Every new byte of a snapshot must at least be hashed, compressed and
//! sealed; the floor is the time those three take in sequence per chunk, single-threaded,
//! given as seconds per GiB of input and as MB/s. Chunks are independent, so the floor on two
//! cores is the single-core time halved. An end-to-end first snapshot of incompressible-and-text
//! data like this one that runs within 1.5× of the two-core floor spends little beyond the
//! unavoidable work; the pipeline figure shows how much of the gap ferry's own extra per-byte
//! work (chunking, the seal self-check, the pack id) already accounts for.

use std::hint::black_box;
use std::io::Write as _;
use std::ops::Range;
use std::time::Instant;

use ferry::chunker::{self, Chunker};
use ferry::crypto::{self, Key};
use ferry::id::{BlobType, Id};
use ferry::pack;
use ferry::repository::blob::{BlobCodec, Compression, DEFAULT_LEVEL, SealedBlob, SelfCheck};
use ferry::repository::packer::{FinishedPack, Packer, TARGET_PACK_SIZE};
use serde_json::{Map, Value, json};

const DEFAULT_MIB: usize = 256;
const DEFAULT_RUNS: usize = 5;
/// Fixed so that every machine measures the same bytes.
const SEED: u64 = 0x6665_7272_792d_6d63;
const MB: f64 = 1e6;
const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;
/// The cores the two-core floor assumes; ferry runs one blob saver per core.
const FLOOR_CORES: f64 = 2.0;
/// `verify` feeds BLAKE3 1 MiB per read (its `READ_BUFFER` is private).
const BLAKE3_STEP: usize = 1 << 20;

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("micro: measures nothing without --bench; run `cargo bench --bench micro`");
        return;
    }
    let mib = env_positive("FERRY_MICRO_MIB", DEFAULT_MIB);
    let runs = env_positive("FERRY_MICRO_RUNS", DEFAULT_RUNS);
    let cpu = Cpu::read();

    let (data, files, what) = match std::env::var_os("FERRY_MICRO_DATA") {
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            eprintln!("micro: reading the files under {}", dir.display());
            let (data, files) = read_tree(&dir);
            let what = format!(
                "{} ({} files, {:.1} MiB)",
                dir.display(),
                files.len(),
                data.len() as f64 / MIB
            );
            (data, files, what)
        }
        None => {
            eprintln!("micro: generating {mib} MiB of mixed data");
            let data = generate(mib << 20, SEED);
            let whole: Range<usize> = 0..data.len();
            let files = std::iter::once(whole).collect();
            (
                data,
                files,
                format!("{mib} MiB, half pseudo-random and half text"),
            )
        }
    };
    eprintln!("micro: preparing and checking every stage's input once");
    let input = Input::prepare(&data, files);

    let mut stages = vec![
        chunking(&input),
        sha256(&input),
        zstd_compress(&input),
        zstd_decompress(&input),
        seal(&input),
        open(&input),
        blob_seal(&input),
        blob_open(&input),
        packing(&input),
        blake3_digest(&input),
        floor(&input),
        pipeline(&input),
    ];
    run_all(&mut stages, runs);
    report(&cpu, &what, runs, &input, &stages);
}

/// The regular files under `dir` (symbolic links not followed), in path order, read into one
/// buffer, and where each lies in it.
fn read_tree(dir: &std::path::Path) -> (Vec<u8>, Vec<Range<usize>>) {
    let mut paths = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d).unwrap_or_else(|e| {
            eprintln!("micro: list {}: {e}", d.display());
            std::process::exit(2);
        });
        for entry in entries {
            let entry = entry.expect("a directory entry");
            let kind = entry.file_type().expect("an entry's type");
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                paths.push(entry.path());
            }
        }
    }
    paths.sort();
    let mut data = Vec::new();
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let start = data.len();
        let mut f = std::fs::File::open(&path).unwrap_or_else(|e| {
            eprintln!("micro: open {}: {e}", path.display());
            std::process::exit(2);
        });
        std::io::Read::read_to_end(&mut f, &mut data).expect("reading a file");
        files.push(start..data.len());
    }
    (data, files)
}

/// A positive integer from the environment, or `default` when unset; anything else ends the
/// run with a message.
fn env_positive(name: &str, default: usize) -> usize {
    let Ok(text) = std::env::var(name) else {
        return default;
    };
    match text.trim().parse::<usize>() {
        Ok(n) if n > 0 => n,
        _ => {
            eprintln!("micro: {name}={text:?} is not a positive integer");
            std::process::exit(2);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The machine.

/// What `/proc/cpuinfo` says about the first CPU.
struct Cpu {
    model: String,
    flags: Vec<String>,
    cores: usize,
}

impl Cpu {
    fn read() -> Cpu {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(key, _)| key.trim() == name)
                .map(|(_, value)| value.trim().to_string())
        };
        Cpu {
            model: field("model name").unwrap_or_else(|| "unknown".into()),
            flags: field("flags")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

// ---------------------------------------------------------------------------------------------
// The input.

/// xorshift64*: fast and deterministic; nothing here needs more.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`, for `n` below 2^32.
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() >> 32) * n) >> 32
    }
}

/// Words for the text segments, most frequent first.
const VOCABULARY: &str = "\
    the of and to in is that for it as with was on be at by this from or an are not but \
    which have all were when there can more one file volume snapshot restore backup node \
    cluster pod storage claim bucket object index pack blob tree chunk key lock repository \
    error warning info debug request response status timeout retry connection server client \
    user group time date size count offset length value name path directory mode owner read \
    write open close start stop begin end first last next previous new old large small fast \
    slow true false none some every other between after before during because however \
    therefore would could should must may might data system process thread memory disk \
    network report result total average
";

/// `len` bytes of alternating segments, pseudo-random then text, about half of each.
fn generate(len: usize, seed: u64) -> Vec<u8> {
    let segment = (len / 8).clamp(64 << 10, 4 << 20);
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(len + 256);
    let mut text = false;
    while out.len() < len {
        let end = (out.len() + segment).min(len);
        if text {
            fill_text(&mut out, end, &mut rng);
        } else {
            fill_random(&mut out, end, &mut rng);
        }
        text = !text;
    }
    out
}

fn fill_random(out: &mut Vec<u8>, end: usize, rng: &mut Rng) {
    while out.len() < end {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(end);
}

/// Lines of 4–15 words, frequent words more likely than rare ones, every sixth word a number.
fn fill_text(out: &mut Vec<u8>, end: usize, rng: &mut Rng) {
    let vocabulary: Vec<&str> = VOCABULARY.split_whitespace().collect();
    let words = vocabulary.len() as u64;
    while out.len() < end {
        for i in 0..4 + rng.below(12) {
            if i > 0 {
                let separator: &[u8] = if rng.below(10) == 0 { b", " } else { b" " };
                out.extend_from_slice(separator);
            }
            if rng.below(6) == 0 {
                // Writing to a Vec cannot fail.
                let _ = write!(out, "{}", rng.below(100_000));
            } else {
                let word = rng.below(words).min(rng.below(words)) as usize;
                out.extend_from_slice(vocabulary[word].as_bytes());
            }
        }
        out.extend_from_slice(b".\n");
    }
    out.truncate(end);
}

/// Every stage's input, made and checked once before anything is timed.
struct Input<'a> {
    data: &'a [u8],
    /// Where each file lies in `data` (one range for the generated buffer); each is chunked on
    /// its own.
    files: Vec<Range<usize>>,
    key: Key,
    /// Where each chunk lies in `data`.
    chunks: Vec<Range<usize>>,
    ids: Vec<Id>,
    /// zstd frames of the chunks.
    compressed: Vec<Vec<u8>>,
    /// `Key::seal` of each frame.
    sealed: Vec<Vec<u8>>,
    /// `BlobCodec::seal` of each chunk.
    blobs: Vec<SealedBlob>,
    /// Sizes of the packs `Packer` makes of `blobs`.
    pack_sizes: Vec<usize>,
}

impl<'a> Input<'a> {
    fn prepare(data: &'a [u8], files: Vec<Range<usize>>) -> Input<'a> {
        let key = Key::random();
        let chunks: Vec<Range<usize>> = files
            .iter()
            .flat_map(|file| {
                let at = file.start;
                cut(&data[file.clone()])
                    .into_iter()
                    .map(move |r| r.start + at..r.end + at)
            })
            .collect();
        let ids: Vec<Id> = chunks.iter().map(|r| Id::hash(&data[r.clone()])).collect();

        let mut compressor = blob_compressor();
        let mut decompressor = zstd::bulk::Decompressor::new().expect("zstd decompressor");
        let mut compressed = Vec::with_capacity(chunks.len());
        let mut sealed = Vec::with_capacity(chunks.len());
        let mut codec = BlobCodec::new();
        let mut blobs = Vec::with_capacity(chunks.len());
        for (range, &id) in chunks.iter().zip(&ids) {
            let plain = &data[range.clone()];
            let frame = compressor.compress(plain).expect("zstd compresses a chunk");
            let back = decompressor
                .decompress(&frame, plain.len())
                .expect("zstd decompresses its own frame");
            assert!(back == plain, "zstd round trip changed a chunk");
            let envelope = key.seal(&frame);
            assert!(
                key.open(&envelope).expect("a sealed frame opens") == frame,
                "seal round trip changed a frame"
            );
            let blob = codec
                .seal(&key, id, plain, Compression::default(), SelfCheck::Verify)
                .expect("BlobCodec seals a chunk");
            let mut copy = blob.bytes.clone();
            let opened = codec
                .open(&key, id, &mut copy, blob.uncompressed_length)
                .expect("a sealed blob opens");
            assert!(opened == plain, "BlobCodec round trip changed a chunk");
            compressed.push(frame);
            sealed.push(envelope);
            blobs.push(blob);
        }
        let pack_sizes = check_packs(&key, &blobs, &ids);
        Input {
            data,
            files,
            key,
            chunks,
            ids,
            compressed,
            sealed,
            blobs,
            pack_sizes,
        }
    }

    fn plain(&self, i: usize) -> &[u8] {
        &self.data[self.chunks[i].clone()]
    }

    fn input_bytes(&self) -> u64 {
        self.data.len() as u64
    }

    fn compressed_bytes(&self) -> u64 {
        self.compressed.iter().map(|c| c.len() as u64).sum()
    }

    fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.bytes.len() as u64).sum()
    }
}

/// The chunks of `data` as ranges, checked against the bytes the chunker hands out.
fn cut(data: &[u8]) -> Vec<Range<usize>> {
    let mut chunker = Chunker::new();
    let mut reader = data;
    let mut ranges = Vec::new();
    let mut start = 0;
    while let Some(chunk) = chunker.next_chunk(&mut reader).expect("reading a slice") {
        let range = start..start + chunk.len();
        assert!(
            chunk == &data[range.clone()],
            "chunk {} differs",
            ranges.len()
        );
        start = range.end;
        ranges.push(range);
    }
    assert_eq!(start, data.len(), "chunks cover the input");
    ranges
}

/// Packs the blobs once and reads every pack back (size, id, header, blob order); returns the
/// packs' sizes.
fn check_packs(key: &Key, blobs: &[SealedBlob], ids: &[Id]) -> Vec<usize> {
    let mut packs = Vec::new();
    pack_each(key, blobs, |p| packs.push(p));
    let mut next = 0;
    for finished in &packs {
        let bytes = &finished.bytes;
        let n = bytes.len();
        assert_eq!(n as u64, pack::pack_size(&finished.blobs), "pack size");
        assert_eq!(finished.id.0, Id::hash(bytes), "pack id");
        let header_len =
            pack::header_length(&bytes[n - 4..], n as u64).expect("pack header length") as usize;
        let header = key
            .open(&bytes[n - 4 - header_len..n - 4])
            .expect("pack header opens");
        let parsed = pack::parse_header(&header, true).expect("pack header parses");
        assert_eq!(parsed, finished.blobs, "pack header");
        for entry in &parsed {
            assert_eq!(entry.id, ids[next], "blob order in packs");
            next += 1;
        }
    }
    assert_eq!(next, blobs.len(), "every blob packed once");
    packs.iter().map(|p| p.bytes.len()).collect()
}

/// A compressor set up as `BlobCodec::new` sets up its own, which is private.
fn blob_compressor() -> zstd::bulk::Compressor<'static> {
    let mut compressor = zstd::bulk::Compressor::new(DEFAULT_LEVEL).expect("zstd compressor");
    compressor
        .include_checksum(false)
        .expect("zstd checksum setting");
    compressor
        .include_contentsize(true)
        .expect("zstd content size setting");
    compressor
}

/// Compresses into `scratch` as `BlobCodec::seal` does, returning the frame's length.
fn compress_into(
    compressor: &mut zstd::bulk::Compressor<'static>,
    plain: &[u8],
    scratch: &mut Vec<u8>,
) -> usize {
    scratch.clear();
    scratch.reserve(zstd::zstd_safe::compress_bound(plain.len()));
    compressor
        .compress_to_buffer(plain, scratch)
        .expect("zstd compresses a chunk")
}

/// Packs `blobs` in order as the pack saver's packer thread does, handing each finished pack
/// to `each` (the packer thread hands it to the upload task, which drops it once stored).
fn pack_each(key: &Key, blobs: &[SealedBlob], mut each: impl FnMut(FinishedPack)) {
    let mut packer = Packer::new(BlobType::Data);
    for blob in blobs {
        packer.add(blob);
        if packer.is_full() {
            each(packer.finish(key));
        }
    }
    if !packer.is_empty() {
        each(packer.finish(key));
    }
}

// ---------------------------------------------------------------------------------------------
// Timing.

/// One measured stage: what it is, and one run of it.
struct Stage<'a> {
    stage: &'static str,
    label: &'static str,
    /// The bytes one run consumes, which the rates are over.
    bytes: u64,
    note: String,
    extra: Map<String, Value>,
    /// Does any untimed preparation, then one timed run; returns the timed seconds.
    run: Box<dyn FnMut() -> f64 + 'a>,
    /// Seconds of the timed runs, sorted once all have run.
    seconds: Vec<f64>,
}

impl<'a> Stage<'a> {
    fn new(
        stage: &'static str,
        label: &'static str,
        bytes: u64,
        run: impl FnMut() -> f64 + 'a,
    ) -> Stage<'a> {
        Stage {
            stage,
            label,
            bytes,
            note: String::new(),
            extra: Map::new(),
            run: Box::new(run),
            seconds: Vec::new(),
        }
    }

    fn note(mut self, note: impl Into<String>) -> Stage<'a> {
        self.note = note.into();
        self
    }

    fn extra(mut self, name: &str, value: Value) -> Stage<'a> {
        self.extra.insert(name.into(), value);
        self
    }

    /// The median run, or of the two middle runs their mean.
    fn median(&self) -> f64 {
        let s = &self.seconds;
        let mid = s.len() / 2;
        if s.len() % 2 == 1 {
            s[mid]
        } else {
            (s[mid - 1] + s[mid]) / 2.0
        }
    }

    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.median() / MB
    }

    fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / self.median() / MIB
    }

    fn seconds_per_gib(&self) -> f64 {
        self.median() / (self.bytes as f64 / GIB)
    }
}

/// Times `f` alone; its result is kept opaque to the optimiser and dropped after the clock
/// stops.
fn timed<R>(f: impl FnOnce() -> R) -> f64 {
    let start = Instant::now();
    let out = black_box(f());
    let seconds = start.elapsed().as_secs_f64();
    drop(out);
    seconds
}

/// Runs every stage once to warm up, then `runs` rounds of every stage in turn. Interleaving
/// spreads the noise of a shared machine over all stages instead of spoiling one.
fn run_all(stages: &mut [Stage], runs: usize) {
    for round in 0..=runs {
        if round == 0 {
            eprintln!("micro: warm-up round");
        } else {
            eprintln!("micro: round {round} of {runs}");
        }
        for stage in stages.iter_mut() {
            let seconds = (stage.run)();
            if round > 0 {
                stage.seconds.push(seconds);
            }
        }
    }
    for stage in stages.iter_mut() {
        stage.seconds.sort_by(f64::total_cmp);
    }
}

// ---------------------------------------------------------------------------------------------
// The stages.

fn chunking<'a>(input: &'a Input) -> Stage<'a> {
    let mut chunker = Chunker::new();
    let run = move || {
        timed(|| {
            let mut count = 0usize;
            for file in &input.files {
                chunker.reset();
                let mut reader = &input.data[file.clone()];
                while let Some(chunk) = chunker.next_chunk(&mut reader).expect("reading a slice") {
                    black_box(chunk);
                    count += 1;
                }
            }
            count
        })
    };
    let count = input.chunks.len();
    let mean = input.data.len() as f64 / count as f64;
    Stage::new("chunk", "chunking (FastCDC)", input.input_bytes(), run)
        .note(format!(
            "`chunker::Chunker::next_chunk`; {count} chunks, mean {:.0} KiB",
            mean / 1024.0
        ))
        .extra("chunks", json!(count))
        .extra("mean_chunk_bytes", json!(mean.round()))
}

fn sha256<'a>(input: &'a Input) -> Stage<'a> {
    let run = move || {
        timed(|| {
            for i in 0..input.chunks.len() {
                black_box(Id::hash(input.plain(i)));
            }
        })
    };
    Stage::new("sha256", "SHA-256 per chunk", input.input_bytes(), run)
        .note("`id::Id::hash` (sha2)")
}

fn zstd_compress<'a>(input: &'a Input) -> Stage<'a> {
    let mut compressor = blob_compressor();
    let mut scratch = Vec::new();
    let run = move || {
        timed(|| {
            let mut out = 0usize;
            for i in 0..input.chunks.len() {
                out += compress_into(&mut compressor, input.plain(i), &mut scratch);
                black_box(&scratch);
            }
            out
        })
    };
    let ratio = input.input_bytes() as f64 / input.compressed_bytes() as f64;
    Stage::new("zstd_compress", "zstd compress", input.input_bytes(), run)
        .note(format!(
            "level {DEFAULT_LEVEL} (`repository::blob::DEFAULT_LEVEL`); {:.1} MiB out, ratio {ratio:.2}:1",
            input.compressed_bytes() as f64 / MIB
        ))
        .extra("level", json!(DEFAULT_LEVEL))
        .extra("compressed_bytes", json!(input.compressed_bytes()))
        .extra("ratio", json!(ratio))
}

fn zstd_decompress<'a>(input: &'a Input) -> Stage<'a> {
    let mut decompressor = zstd::bulk::Decompressor::new().expect("zstd decompressor");
    let run = move || {
        timed(|| {
            for (i, frame) in input.compressed.iter().enumerate() {
                let plain = decompressor
                    .decompress(frame, input.chunks[i].len())
                    .expect("zstd decompresses a frame");
                black_box(plain);
            }
        })
    };
    Stage::new(
        "zstd_decompress",
        "zstd decompress",
        input.input_bytes(),
        run,
    )
    .note("as `BlobCodec::open` does it; rate over the decompressed bytes")
}

fn seal<'a>(input: &'a Input) -> Stage<'a> {
    let run = move || {
        timed(|| {
            for frame in &input.compressed {
                black_box(input.key.seal(frame));
            }
        })
    };
    let label = "seal (AES-256-CTR + Poly1305)";
    Stage::new("seal", label, input.compressed_bytes(), run)
        .note("`crypto::Key::seal` of each zstd frame; rate over the frames' bytes")
}

fn open<'a>(input: &'a Input) -> Stage<'a> {
    let run = move || {
        let mut sealed = input.sealed.clone();
        timed(|| {
            for envelope in &mut sealed {
                let plain = input
                    .key
                    .open_in_place(envelope)
                    .expect("a sealed frame opens");
                black_box(plain);
            }
        })
    };
    let label = "open (verify MAC + decrypt)";
    Stage::new("open", label, input.compressed_bytes(), run)
        .note("`crypto::Key::open_in_place`; rate over the frames' bytes")
}

fn blob_seal<'a>(input: &'a Input) -> Stage<'a> {
    let mut codec = BlobCodec::new();
    let run = move || {
        timed(|| {
            for (i, &id) in input.ids.iter().enumerate() {
                let blob = codec
                    .seal(
                        &input.key,
                        id,
                        input.plain(i),
                        Compression::default(),
                        SelfCheck::Verify,
                    )
                    .expect("BlobCodec seals a chunk");
                black_box(blob);
            }
        })
    };
    let label = "blob seal (zstd + seal + self-check)";
    Stage::new("blob_seal", label, input.input_bytes(), run)
        .note("`repository::BlobCodec::seal`, the blob saver's call")
}

fn blob_open<'a>(input: &'a Input) -> Stage<'a> {
    let mut codec = BlobCodec::new();
    let run = move || {
        let mut sealed: Vec<Vec<u8>> = input.blobs.iter().map(|b| b.bytes.clone()).collect();
        timed(|| {
            for (bytes, blob) in sealed.iter_mut().zip(&input.blobs) {
                let plain = codec
                    .open(&input.key, blob.id, bytes, blob.uncompressed_length)
                    .expect("a sealed blob opens");
                black_box(plain);
            }
        })
    };
    let label = "blob open (open + zstd + SHA-256)";
    Stage::new("blob_open", label, input.input_bytes(), run)
        .note("`repository::BlobCodec::open`, what restore and check do per blob")
}

fn packing<'a>(input: &'a Input) -> Stage<'a> {
    let run = move || {
        timed(|| {
            let mut packs = 0usize;
            pack_each(&input.key, &input.blobs, |p| {
                black_box(p);
                packs += 1;
            });
            packs
        })
    };
    let sizes = &input.pack_sizes;
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    let largest = sizes.iter().copied().max().unwrap_or_default();
    Stage::new("pack", "pack assembly", input.blob_bytes(), run)
        .note(format!(
            "`repository::packer::Packer` add/finish (header, its seal, SHA-256 pack id); \
             {} packs, mean {:.2} MiB, largest {:.2} MiB (target {} MiB)",
            sizes.len(),
            mean / MIB,
            largest as f64 / MIB,
            TARGET_PACK_SIZE >> 20
        ))
        .extra("packs", json!(sizes.len()))
        .extra("largest_pack_bytes", json!(largest))
        .extra("mean_pack_bytes", json!(mean.round()))
}

fn blake3_digest<'a>(input: &'a Input) -> Stage<'a> {
    let run = move || {
        timed(|| {
            let mut hasher = blake3::Hasher::new();
            for step in input.data.chunks(BLAKE3_STEP) {
                hasher.update(step);
            }
            *hasher.finalize().as_bytes()
        })
    };
    Stage::new("blake3", "BLAKE3 (reference)", input.input_bytes(), run)
        .note("`blake3::Hasher::update` in 1 MiB steps, one thread, as `verify` hashes files")
}

/// SHA-256, zstd and sealing of each chunk in one pass: what every new byte costs at least.
fn floor<'a>(input: &'a Input) -> Stage<'a> {
    let mut compressor = blob_compressor();
    let mut scratch = Vec::new();
    let run = move || {
        timed(|| {
            for i in 0..input.chunks.len() {
                let plain = input.plain(i);
                black_box(Id::hash(plain));
                let n = compress_into(&mut compressor, plain, &mut scratch);
                let mut sealed = Vec::with_capacity(n + crypto::EXTENSION);
                input.key.seal_append(&scratch, &mut sealed);
                black_box(sealed);
            }
        })
    };
    let label = "floor: SHA-256 + zstd + seal";
    Stage::new("floor", label, input.input_bytes(), run)
        .note("one core, per chunk in sequence; see the floor below")
}

/// The CPU work ferry's snapshot pipeline does per new chunk, on one thread.
fn pipeline<'a>(input: &'a Input) -> Stage<'a> {
    let mut chunker = Chunker::new();
    let mut codec = BlobCodec::new();
    let run = move || {
        timed(|| {
            let mut packer = Packer::new(BlobType::Data);
            let mut packs = 0usize;
            for file in &input.files {
                chunker.reset();
                let mut reader = &input.data[file.clone()];
                while let Some(chunk) = chunker.next_chunk(&mut reader).expect("reading a slice") {
                    // The file saver checks for an all-zero chunk before hashing.
                    black_box(chunker::is_zero(chunk));
                    let id = Id::hash(chunk);
                    let data = chunk.to_vec();
                    let blob = codec
                        .seal(
                            &input.key,
                            id,
                            &data,
                            Compression::default(),
                            SelfCheck::Verify,
                        )
                        .expect("BlobCodec seals a chunk");
                    packer.add(&blob);
                    if packer.is_full() {
                        black_box(packer.finish(&input.key));
                        packs += 1;
                    }
                }
            }
            if !packer.is_empty() {
                black_box(packer.finish(&input.key));
                packs += 1;
            }
            packs
        })
    };
    let label = "pipeline: ferry's per-chunk work";
    Stage::new("pipeline", label, input.input_bytes(), run)
        .note("chunk, `is_zero`, SHA-256, copy, `BlobCodec::seal`, `Packer`: one core, no I/O")
}

// ---------------------------------------------------------------------------------------------
// The report.

fn report(cpu: &Cpu, what: &str, runs: usize, input: &Input, rows: &[Stage]) {
    let yes_no = |flag: &str| if cpu.has(flag) { "yes" } else { "no" };
    println!("# ferry micro-benchmarks");
    println!();
    println!(
        "CPU: {} ({} cores available); sha_ni {}, aes {}, avx2 {} (vaes {}, avx512f {})",
        cpu.model,
        cpu.cores,
        yes_no("sha_ni"),
        yes_no("aes"),
        yes_no("avx2"),
        yes_no("vaes"),
        yes_no("avx512f")
    );
    println!(
        "Input: {what}; {} chunks; zstd level {DEFAULT_LEVEL} \
         to {:.1} MiB. Median of {runs} runs after one warm-up, single thread.",
        input.chunks.len(),
        input.compressed_bytes() as f64 / MIB
    );
    println!();
    println!("| stage | MB/s | MiB/s | note |");
    println!("|---|---:|---:|---|");
    for row in rows {
        println!(
            "| {} | {:.1} | {:.1} | {} |",
            row.label,
            row.mb_per_s(),
            row.mib_per_s(),
            row.note
        );
    }
    println!();

    println!(
        "{}",
        json!({
            "machine": cpu.model,
            "cores": cpu.cores,
            "sha_ni": cpu.has("sha_ni"),
            "aes": cpu.has("aes"),
            "avx2": cpu.has("avx2"),
            "input_bytes": input.input_bytes(),
            "runs": runs,
        })
    );
    for row in rows {
        let mut fields = Map::new();
        fields.insert("mb_per_s".into(), json!(row.mb_per_s()));
        fields.insert("mib_per_s".into(), json!(row.mib_per_s()));
        fields.insert("bytes".into(), json!(row.bytes));
        fields.insert("seconds_median".into(), json!(row.median()));
        fields.insert("seconds_min".into(), json!(row.seconds.first()));
        fields.insert("seconds_max".into(), json!(row.seconds.last()));
        fields.insert("runs".into(), json!(runs));
        fields.extend(row.extra.clone());
        println!("{}", json_line(row.stage, &Value::Object(fields)));
    }

    let floor = rows
        .iter()
        .find(|r| r.stage == "floor")
        .expect("the floor row");
    let pipeline = rows
        .iter()
        .find(|r| r.stage == "pipeline")
        .expect("the pipeline row");
    let one = floor.seconds_per_gib();
    let two = one / FLOOR_CORES;
    let rate = |seconds_per_gib: f64| GIB / seconds_per_gib / MB;
    let summary = json!({
        "seconds_per_gib": two,
        "mb_per_s": rate(two),
        "mib_per_s": GIB / two / MIB,
        "seconds_per_gib_1core": one,
        "mb_per_s_1core": rate(one),
        "pipeline_seconds_per_gib_1core": pipeline.seconds_per_gib(),
    });
    println!("{}", json_line("floor_2cores", &summary));
    println!();
    println!("## Compute floor (SHA-256 + zstd level {DEFAULT_LEVEL} + seal per chunk)");
    println!();
    println!(
        "- 1 core:  {one:.3} s/GiB = {:.1} MB/s ({:.1} MiB/s)",
        rate(one),
        GIB / one / MIB
    );
    println!(
        "- 2 cores: {two:.3} s/GiB = {:.1} MB/s ({:.1} MiB/s) (1-core time / 2: chunks are independent)",
        rate(two),
        GIB / two / MIB
    );
    println!(
        "- 1.5x the 2-core floor: {:.3} s/GiB = {:.1} MB/s, the bound for an end-to-end first snapshot",
        two * 1.5,
        rate(two * 1.5)
    );
    println!(
        "- ferry's own per-chunk work (pipeline row): {:.3} s/GiB on 1 core, {:.3} s/GiB on 2, \
         {:.2}x the floor",
        pipeline.seconds_per_gib(),
        pipeline.seconds_per_gib() / FLOOR_CORES,
        pipeline.seconds_per_gib() / one
    );
}

/// `fields` (an object) on one line with `stage` first, so that people can read the lines
/// too (serde_json sorts the other keys).
fn json_line(stage: &str, fields: &Value) -> String {
    let stage = json!(stage);
    match fields.to_string().strip_prefix('{') {
        Some("}") | None => format!("{{\"stage\":{stage}}}"),
        Some(rest) => format!("{{\"stage\":{stage},{rest}"),
    }
}
