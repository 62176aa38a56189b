//! Content-defined chunking of a byte stream with FastCDC.
//!
//! [`Chunker`] cuts a reader's bytes into chunks of 512 KiB to 8 MiB (1 MiB on average), the
//! sizes restic uses, with the `fastcdc` crate's 2020 algorithm at normalization level 1.
//! Restic reads chunks cut by any algorithm; only deduplication against chunks that restic cut
//! with its Rabin chunker is lost. The chunker keeps one reusable buffer, so cutting a file
//! allocates nothing; it hands out borrowed slices and leaves copying to the caller.

use std::io::{self, Read};

/// Smallest chunk, except for the last chunk of a stream.
pub const MIN_SIZE: usize = 512 * 1024;
/// Target average chunk size.
pub const AVG_SIZE: usize = 1024 * 1024;
/// Largest chunk.
pub const MAX_SIZE: usize = 8 * 1024 * 1024;

/// Normalization level 1 around a 2^20 average: a stricter mask before the average size and a
/// looser one after it, as the FastCDC paper describes.
const MASK_S: u64 = fastcdc::v2020::MASKS[21];
const MASK_L: u64 = fastcdc::v2020::MASKS[19];

/// A streaming chunker with a reusable buffer.
pub struct Chunker {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl Default for Chunker {
    fn default() -> Self {
        Chunker::new()
    }
}

impl Chunker {
    /// A chunker with an empty buffer of [`MAX_SIZE`] bytes.
    pub fn new() -> Chunker {
        Chunker {
            buf: vec![0; MAX_SIZE],
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// Forgets any buffered bytes, ready for a new stream.
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
        self.eof = false;
    }

    /// The next chunk of `reader`, or `None` at its end. The same reader must be passed until
    /// `None` is returned (or [`Chunker::reset`] is called). An interrupted read is retried.
    ///
    /// A cut depends only on the bytes before it, so a boundary found in what is buffered is
    /// final; the buffer is compacted and refilled only when the buffered rest holds none.
    /// This moves each byte about once per [`MAX_SIZE`] of input instead of once per chunk.
    pub fn next_chunk<R: Read>(&mut self, reader: &mut R) -> io::Result<Option<&[u8]>> {
        let buffered = self.end - self.start;
        if buffered < MAX_SIZE && !self.eof {
            if buffered > MIN_SIZE {
                let len = cut_point(&self.buf[self.start..self.end]);
                if len < buffered {
                    return Ok(Some(self.take(len)));
                }
            }
            self.fill(reader)?;
        }
        if self.start == self.end {
            return Ok(None);
        }
        let len = cut_point(&self.buf[self.start..self.end]);
        Ok(Some(self.take(len)))
    }

    /// Hands out the next `len` buffered bytes.
    fn take(&mut self, len: usize) -> &[u8] {
        let chunk = &self.buf[self.start..self.start + len];
        self.start += len;
        chunk
    }

    /// Moves the buffered rest to the front and reads until the buffer is full or the stream
    /// ends.
    fn fill<R: Read>(&mut self, reader: &mut R) -> io::Result<()> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while self.end < MAX_SIZE {
            match reader.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The length of the first chunk of `data`, which holds either at least [`MAX_SIZE`] bytes or
/// everything that is left of the stream.
pub fn cut_point(data: &[u8]) -> usize {
    if data.len() <= MIN_SIZE {
        return data.len();
    }
    let (_, cut) = fastcdc::v2020::cut(
        data,
        MIN_SIZE,
        AVG_SIZE,
        MAX_SIZE,
        MASK_S,
        MASK_L,
        MASK_S << 1,
        MASK_L << 1,
    );
    cut.clamp(1, data.len())
}

/// Whether every byte is zero, a word at a time.
pub fn is_zero(data: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: every 8-byte pattern is a valid `u64` and `u64` has no drop glue, so reading
        // bytes as `u64` is sound; `align_to` puts only the part of `data` that is suitably
        // aligned for `u64` into the middle slice (within `data`'s bounds and lifetime) and
        // leaves the rest in `head` and `tail`.
        unsafe { data.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 1001]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!is_zero(&v));
        v[4098] = 0;
        v[3] = 9;
        assert!(!is_zero(&v));
    }

    fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            out.extend_from_slice(&seed.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn chunks_of(data: &[u8]) -> Vec<Vec<u8>> {
        let mut c = Chunker::new();
        let mut r = data;
        let mut out = Vec::new();
        while let Some(ch) = c.next_chunk(&mut r).unwrap() {
            out.push(ch.to_vec());
        }
        out
    }

    #[test]
    fn chunks_cover_input_within_bounds() {
        let data = pseudo_random(40 * 1024 * 1024 + 123, 7);
        let chunks = chunks_of(&data);
        assert_eq!(chunks.concat(), data);
        for c in &chunks[..chunks.len() - 1] {
            assert!(c.len() >= MIN_SIZE && c.len() <= MAX_SIZE, "{}", c.len());
        }
        let avg = data.len() / chunks.len();
        assert!(avg > 600 * 1024 && avg < 2 * 1024 * 1024, "average {avg}");
    }

    #[test]
    fn small_and_empty_inputs() {
        assert!(chunks_of(b"").is_empty());
        assert_eq!(chunks_of(b"abc"), vec![b"abc".to_vec()]);
        let zeros = vec![0u8; 20 * 1024 * 1024];
        let chunks = chunks_of(&zeros);
        assert_eq!(chunks.concat(), zeros);
        assert!(chunks.iter().all(|c| c.len() <= MAX_SIZE));
    }

    #[test]
    fn an_insertion_changes_few_chunks() {
        let data = pseudo_random(30 * 1024 * 1024, 99);
        let mut changed = data.clone();
        changed.splice(10_000_000..10_000_000, b"inserted bytes".iter().copied());
        let a: std::collections::HashSet<_> = chunks_of(&data).into_iter().collect();
        let b = chunks_of(&changed);
        let new = b.iter().filter(|c| !a.contains(*c)).count();
        assert!(new <= 2, "{new} chunks changed");
    }

    /// A reader that returns at most 1000 bytes per call, as pipes and sockets do.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(1000);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn short_reads_give_the_same_cuts() {
        let data = pseudo_random(12 * 1024 * 1024, 3);
        let mut c = Chunker::new();
        let mut r = Trickle(&data);
        let mut lens = Vec::new();
        while let Some(ch) = c.next_chunk(&mut r).unwrap() {
            lens.push(ch.len());
        }
        let direct: Vec<usize> = chunks_of(&data).iter().map(|c| c.len()).collect();
        assert_eq!(lens, direct);
    }

    /// The cuts when every cut is looked for in the whole rest of the stream (up to
    /// [`MAX_SIZE`]): what the buffered chunker must reproduce.
    fn reference_cuts(data: &[u8]) -> Vec<usize> {
        let mut lens = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let len = cut_point(&data[pos..(pos + MAX_SIZE).min(data.len())]);
            lens.push(len);
            pos += len;
        }
        lens
    }

    #[test]
    fn cuts_found_in_a_partly_filled_buffer_are_the_cuts_of_the_whole_stream() {
        // Random stretches cut often; long zero runs reach MAX_SIZE without a boundary, so
        // refills happen at every position relative to the cuts.
        let mut data = pseudo_random(9 * 1024 * 1024 + 17, 11);
        data.extend(std::iter::repeat_n(0u8, 11 * 1024 * 1024 + 5));
        data.extend(pseudo_random(5 * 1024 * 1024 + 999, 12));
        data.extend(std::iter::repeat_n(7u8, 700 * 1024));
        data.extend(pseudo_random(23 * 1024 * 1024 + 1, 13));
        let expected = reference_cuts(&data);
        let direct: Vec<usize> = chunks_of(&data).iter().map(|c| c.len()).collect();
        assert_eq!(direct, expected);
        let mut c = Chunker::new();
        let mut r = Trickle(&data);
        let mut lens = Vec::new();
        while let Some(ch) = c.next_chunk(&mut r).unwrap() {
            lens.push(ch.len());
        }
        assert_eq!(lens, expected);
    }
}
