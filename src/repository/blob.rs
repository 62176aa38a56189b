//! Sealing and opening single blobs: zstd compression plus the encryption envelope.
//!
//! A sealed blob is `IV ‖ CT ‖ MAC` of either the plaintext or its zstd frame. Sealing checks
//! its own output by opening it again and comparing with the input, as restic does before it
//! uploads anything, so that a fault in compression or encryption never reaches the repository.
//! Opening verifies that the plaintext hashes to the blob's id. No I/O happens here.

use crate::crypto::{self, Key};
use crate::id::Id;

/// The largest plaintext ferry accepts for one blob (tree blobs of huge directories included).
/// Larger claims in a hostile index are refused instead of allocated.
pub const MAX_BLOB_PLAINTEXT: usize = 1 << 30;

/// The zstd level of `auto`, ferry's default for blobs. Level 1 compresses about 1.5 times as
/// fast as level 3 and gives a repository 3-5% larger (measured in `benches/micro.rs` and
/// `benches/compare`); the repositories a migration writes are short-lived, so speed wins.
pub const DEFAULT_LEVEL: i32 = 1;

/// The zstd level of `max`: slow, for repositories that are kept.
pub const MAX_LEVEL: i32 = 19;

/// How new blobs are compressed: restic's `--compression` values plus explicit zstd levels.
/// Reading never depends on it (every compressed blob records its uncompressed length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Stored as plaintext (the only choice in a version 1 repository).
    Off,
    /// zstd at this level (1 to [`MAX_LEVEL`]).
    Zstd(i32),
}

impl Default for Compression {
    /// `auto`: zstd at [`DEFAULT_LEVEL`].
    fn default() -> Compression {
        Compression::Zstd(DEFAULT_LEVEL)
    }
}

impl std::str::FromStr for Compression {
    type Err = String;

    /// Parses `auto`, `off`, `max` or a zstd level from 1 to [`MAX_LEVEL`].
    fn from_str(s: &str) -> Result<Compression, String> {
        match s {
            "auto" | "" => Ok(Compression::default()),
            "off" => Ok(Compression::Off),
            "max" => Ok(Compression::Zstd(MAX_LEVEL)),
            _ => match s.parse::<i32>() {
                Ok(level) if (1..=MAX_LEVEL).contains(&level) => Ok(Compression::Zstd(level)),
                _ => Err(format!(
                    "compression {s:?} is not auto, off, max or a zstd level from 1 to {MAX_LEVEL}"
                )),
            },
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Compression::Off => f.write_str("off"),
            Compression::Zstd(level) => write!(f, "zstd level {level}"),
        }
    }
}

/// Whether [`BlobCodec::seal`] opens each sealed blob again (MAC, decryption, decompression)
/// and compares it with the plaintext before handing it on. The check catches a compressor or
/// cipher fault, or memory corrupted between sealing and storing, before a bad blob reaches
/// the repository; restic 0.17 and later do the same by default and skip it with
/// `--no-extra-verify`. It costs about a fifth of a first snapshot's CPU time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SelfCheck {
    /// Open and compare every blob (the default).
    #[default]
    Verify,
    /// Store blobs unchecked; `check --read-data` is then the only test that they open.
    Skip,
}

/// The capacity a codec's buffers keep between blobs: twice the average data chunk. Larger
/// ones are shrunk back after the blob (glibc remaps large blocks in place, so nothing is
/// copied): keeping room for the largest chunk would hold 8 MiB per buffer and thread for
/// the rare chunk that needs it.
const KEEP_BUFFER: usize = 2 << 20;

/// A blob ready to go into a pack.
#[derive(Debug)]
pub struct SealedBlob {
    /// The blob's id (SHA-256 of the plaintext).
    pub id: Id,
    /// `IV ‖ CT ‖ MAC`.
    pub bytes: Vec<u8>,
    /// The plaintext length when compressed, 0 when stored uncompressed.
    pub uncompressed_length: u32,
}

/// What went wrong sealing or opening a blob.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The MAC did not match: wrong key or damaged bytes.
    #[error("blob {id} cannot be decrypted: {source}")]
    Decrypt {
        /// The blob.
        id: Id,
        /// The cause.
        #[source]
        source: crypto::CryptoError,
    },
    /// The zstd frame was invalid or had the wrong length.
    #[error("blob {id} cannot be decompressed: {reason}")]
    Decompress {
        /// The blob.
        id: Id,
        /// Why.
        reason: String,
    },
    /// The plaintext does not hash to the id.
    #[error("blob {id} is corrupt: its content hashes to {actual}")]
    HashMismatch {
        /// The expected id.
        id: Id,
        /// The hash of what was found.
        actual: Id,
    },
    /// Sealing produced bytes that do not open to the input.
    #[error("sealing blob {id} failed its own check: {reason}")]
    SelfCheck {
        /// The blob.
        id: Id,
        /// Why.
        reason: String,
    },
    /// The claimed size is over [`MAX_BLOB_PLAINTEXT`].
    #[error("blob {id} claims {len} bytes of plaintext, more than ferry accepts")]
    TooLarge {
        /// The blob.
        id: Id,
        /// The claimed length.
        len: u64,
    },
    /// zstd failed to compress.
    #[error("compress blob {id}: {reason}")]
    Compress {
        /// The blob.
        id: Id,
        /// Why.
        reason: String,
    },
}

/// Plaintexts longer than this (tree blobs of huge directories; data chunks are at most
/// 8 MiB) are compared with their decompressed form piece by piece, so that the self-check
/// does not hold a second full copy: 300 MiB for a directory of a million entries.
const STREAMED_CHECK_ABOVE: usize = 16 << 20;

/// Whether the zstd frame `compressed` decompresses to exactly `plaintext`, decompressing
/// 1 MiB at a time.
fn decompressed_equals(compressed: &[u8], plaintext: &[u8]) -> std::io::Result<bool> {
    use std::io::Read;
    let mut decoder = zstd::stream::read::Decoder::with_buffer(compressed)?;
    let mut piece = vec![0u8; 1 << 20];
    let mut rest = plaintext;
    loop {
        let n = decoder.read(&mut piece)?;
        if n == 0 {
            return Ok(rest.is_empty());
        }
        match rest.split_at_checked(n) {
            Some((head, tail)) if head == &piece[..n] => rest = tail,
            _ => return Ok(false),
        }
    }
}

/// A reusable compressor and decompressor for one thread.
pub struct BlobCodec {
    compressor: zstd::bulk::Compressor<'static>,
    /// The compressor's current level.
    level: i32,
    decompressor: zstd::bulk::Decompressor<'static>,
    /// The compressed payload of the blob being sealed.
    scratch: Vec<u8>,
    /// The self-check's decompressed plaintext (and [`BlobCodec::open_borrowed`]'s); kept
    /// between blobs so that each check does not fault in fresh pages.
    check_out: Vec<u8>,
}

impl BlobCodec {
    /// A codec; frames carry their content size and no checksum. The level follows each
    /// [`BlobCodec::seal`] call's [`Compression`].
    pub fn new() -> BlobCodec {
        let mut compressor =
            zstd::bulk::Compressor::new(DEFAULT_LEVEL).expect("zstd compressor at a valid level");
        // Both settings are accepted by every zstd build; failure would be a broken library.
        let _ = compressor.include_checksum(false);
        let _ = compressor.include_contentsize(true);
        BlobCodec {
            compressor,
            level: DEFAULT_LEVEL,
            decompressor: zstd::bulk::Decompressor::new().expect("zstd decompressor"),
            scratch: Vec::new(),
            check_out: Vec::new(),
        }
    }

    /// Compresses (unless `compression` is off or the plaintext is empty), encrypts, and
    /// checks the result by opening it again (the self-check) unless `check` is
    /// [`SelfCheck::Skip`]. `id` must be the hash of `plaintext`.
    pub fn seal(
        &mut self,
        key: &Key,
        id: Id,
        plaintext: &[u8],
        compression: Compression,
        check: SelfCheck,
    ) -> Result<SealedBlob, BlobError> {
        self.seal_into(key, id, plaintext, compression, check, Vec::new())
    }

    /// As [`BlobCodec::seal`], writing the sealed bytes into `out` (cleared first), a buffer
    /// given back by a later stage, so that its pages are reused rather than mapped afresh.
    pub fn seal_into(
        &mut self,
        key: &Key,
        id: Id,
        plaintext: &[u8],
        compression: Compression,
        check: SelfCheck,
        out: Vec<u8>,
    ) -> Result<SealedBlob, BlobError> {
        let level = match compression {
            Compression::Zstd(level) if !plaintext.is_empty() => Some(level),
            _ => None,
        };
        let uncompressed_length = if let Some(level) = level {
            if level != self.level {
                self.compressor
                    .set_compression_level(level)
                    .map_err(|e| BlobError::Compress {
                        id,
                        reason: format!("set zstd level {level}: {e}"),
                    })?;
                self.level = level;
            }
            self.scratch.clear();
            self.scratch
                .reserve(zstd::zstd_safe::compress_bound(plaintext.len()));
            self.compressor
                .compress_to_buffer(plaintext, &mut self.scratch)
                .map_err(|e| BlobError::Compress {
                    id,
                    reason: e.to_string(),
                })?;
            u32::try_from(plaintext.len()).map_err(|_| BlobError::TooLarge {
                id,
                len: plaintext.len() as u64,
            })?
        } else {
            0
        };
        let payload: &[u8] = if uncompressed_length != 0 {
            &self.scratch
        } else {
            plaintext
        };
        let mut bytes = out;
        bytes.clear();
        bytes.reserve_exact(payload.len() + crypto::EXTENSION);
        key.seal_append(payload, &mut bytes);
        let checked = match check {
            SelfCheck::Verify => self.verify(key, id, &bytes, uncompressed_length, plaintext),
            SelfCheck::Skip => Ok(()),
        };
        self.trim();
        checked?;
        Ok(SealedBlob {
            id,
            bytes,
            uncompressed_length,
        })
    }

    /// Shrinks buffers grown past [`KEEP_BUFFER`] by a large blob (the tree of a directory
    /// with a million entries is hundreds of MiB), so that a thread's codec does not hold them
    /// for the rest of the run.
    fn trim(&mut self) {
        for buf in [&mut self.scratch, &mut self.check_out] {
            if buf.capacity() > KEEP_BUFFER {
                buf.clear();
                buf.shrink_to(KEEP_BUFFER);
            }
        }
    }

    /// The self-check: `sealed` must open to the payload that was encrypted (`self.scratch`
    /// when compressed, else `plaintext`), and a compressed payload must decompress to
    /// `plaintext`. Together that is what opening the blob later does.
    fn verify(
        &mut self,
        key: &Key,
        id: Id,
        sealed: &[u8],
        uncompressed_length: u32,
        plaintext: &[u8],
    ) -> Result<(), BlobError> {
        let fail = |reason: String| BlobError::SelfCheck { id, reason };
        let payload: &[u8] = if uncompressed_length != 0 {
            &self.scratch
        } else {
            plaintext
        };
        let same = key
            .opens_to(sealed, payload)
            .map_err(|e| fail(e.to_string()))?
            && if uncompressed_length == 0 {
                true
            } else if uncompressed_length as usize > STREAMED_CHECK_ABOVE {
                decompressed_equals(payload, plaintext).map_err(|e| fail(e.to_string()))?
            } else {
                self.check_out.clear();
                self.check_out.reserve(uncompressed_length as usize);
                self.decompressor
                    .decompress_to_buffer(payload, &mut self.check_out)
                    .map_err(|e| fail(e.to_string()))?;
                self.check_out == plaintext
            };
        if same {
            Ok(())
        } else {
            Err(fail("opened bytes differ from the input".into()))
        }
    }

    /// Opens a sealed blob in place and returns its plaintext, verified against `id`.
    /// `uncompressed_length` is the index's value (0 = stored uncompressed).
    pub fn open(
        &mut self,
        key: &Key,
        id: Id,
        sealed: &mut [u8],
        uncompressed_length: u32,
    ) -> Result<Vec<u8>, BlobError> {
        let plain = self
            .open_borrowed(key, id, sealed, uncompressed_length)
            .map(<[u8]>::to_vec);
        self.trim();
        plain
    }

    /// As [`BlobCodec::open`], without allocating: the plaintext is `sealed`'s own bytes
    /// (decrypted in place) or, for a compressed blob, the codec's reusable buffer, valid
    /// until the codec's next call.
    pub fn open_borrowed<'a>(
        &'a mut self,
        key: &Key,
        id: Id,
        sealed: &'a mut [u8],
        uncompressed_length: u32,
    ) -> Result<&'a [u8], BlobError> {
        let opened = key
            .open_in_place(sealed)
            .map_err(|source| BlobError::Decrypt { id, source })?;
        let plain: &[u8] = if uncompressed_length != 0 {
            let n = uncompressed_length as usize;
            if n > MAX_BLOB_PLAINTEXT {
                return Err(BlobError::TooLarge { id, len: n as u64 });
            }
            self.check_out.clear();
            self.check_out.reserve(n);
            self.decompressor
                .decompress_to_buffer(&*opened, &mut self.check_out)
                .map_err(|e| BlobError::Decompress {
                    id,
                    reason: e.to_string(),
                })?;
            if self.check_out.len() != n {
                return Err(BlobError::Decompress {
                    id,
                    reason: format!("{} bytes instead of {n}", self.check_out.len()),
                });
            }
            &self.check_out
        } else {
            opened
        };
        let actual = Id::hash(plain);
        if actual != id {
            return Err(BlobError::HashMismatch { id, actual });
        }
        Ok(plain)
    }
}

impl Default for BlobCodec {
    fn default() -> Self {
        BlobCodec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_compressed_and_not() {
        let key = Key::random();
        let mut codec = BlobCodec::new();
        for data in [&b""[..], b"hello hello hello hello", &[7u8; 100_000]] {
            let modes = [
                Compression::Off,
                Compression::default(),
                Compression::Zstd(MAX_LEVEL),
                Compression::Zstd(3),
            ];
            let checks = [SelfCheck::Verify, SelfCheck::Skip];
            for (compression, check) in modes.into_iter().flat_map(|m| checks.map(|c| (m, c))) {
                let id = Id::hash(data);
                let mut s = codec.seal(&key, id, data, compression, check).unwrap();
                if data.is_empty() || compression == Compression::Off {
                    assert_eq!(s.uncompressed_length, 0);
                } else {
                    assert_eq!(s.uncompressed_length as usize, data.len());
                }
                let back = codec
                    .open(&key, id, &mut s.bytes, s.uncompressed_length)
                    .unwrap();
                assert_eq!(back, data);
            }
        }
    }

    #[test]
    fn the_self_check_catches_a_wrong_envelope_or_a_wrong_frame() {
        let key = Key::random();
        let mut codec = BlobCodec::new();
        let a = vec![b'a'; 300_000];
        let b = vec![b'b'; 300_000];
        let (ida, idb) = (Id::hash(&a), Id::hash(&b));
        let sealed_b = codec
            .seal(&key, idb, &b, Compression::default(), SelfCheck::Verify)
            .unwrap();
        // Sealing `a` leaves its frame in the codec's scratch buffer, as during a real seal.
        let sealed_a = codec
            .seal(&key, ida, &a, Compression::default(), SelfCheck::Verify)
            .unwrap();
        let len = sealed_a.uncompressed_length;
        codec.verify(&key, ida, &sealed_a.bytes, len, &a).unwrap();
        // An envelope that does not hold the frame just made.
        let err = codec
            .verify(&key, ida, &sealed_b.bytes, len, &a)
            .unwrap_err();
        assert!(matches!(err, BlobError::SelfCheck { .. }), "{err}");
        // A damaged envelope.
        let mut bad = sealed_a.bytes.clone();
        bad[40] ^= 4;
        let err = codec.verify(&key, ida, &bad, len, &a).unwrap_err();
        assert!(matches!(err, BlobError::SelfCheck { .. }), "{err}");
        // A frame that does not decompress to the input.
        let mut other = a.clone();
        other[123_456] = b'z';
        let err = codec
            .verify(&key, ida, &sealed_a.bytes, len, &other)
            .unwrap_err();
        assert!(matches!(err, BlobError::SelfCheck { .. }), "{err}");
        // Uncompressed blobs are compared with the input itself.
        let plain = codec
            .seal(&key, ida, &a, Compression::Off, SelfCheck::Verify)
            .unwrap();
        let err = codec
            .verify(&key, ida, &plain.bytes, 0, &other)
            .unwrap_err();
        assert!(matches!(err, BlobError::SelfCheck { .. }), "{err}");
    }

    #[test]
    fn tampering_and_wrong_ids_are_caught() {
        let key = Key::random();
        let mut codec = BlobCodec::new();
        let data = b"some content";
        let id = Id::hash(data);
        let s = codec
            .seal(&key, id, data, Compression::default(), SelfCheck::Verify)
            .unwrap();
        let mut bad = s.bytes.clone();
        bad[20] ^= 1;
        assert!(matches!(
            codec.open(&key, id, &mut bad, s.uncompressed_length),
            Err(BlobError::Decrypt { .. })
        ));
        let mut ok = s.bytes.clone();
        let other = Id::hash(b"other");
        assert!(matches!(
            codec.open(&key, other, &mut ok, s.uncompressed_length),
            Err(BlobError::HashMismatch { .. })
        ));
        let mut ok = s.bytes.clone();
        assert!(codec.open(&key, id, &mut ok, 5).is_err());
    }

    #[test]
    fn large_plaintexts_are_checked_piece_by_piece() {
        let data: Vec<u8> = (0..STREAMED_CHECK_ABOVE as u32 + 3_000_001)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let frame = zstd::bulk::compress(&data, 1).unwrap();
        assert!(decompressed_equals(&frame, &data).unwrap());
        let mut changed = data.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert!(!decompressed_equals(&frame, &changed).unwrap());
        assert!(!decompressed_equals(&frame, &data[..data.len() - 1]).unwrap());
        let mut longer = data.clone();
        longer.push(0);
        assert!(!decompressed_equals(&frame, &longer).unwrap());

        let key = Key::random();
        let mut codec = BlobCodec::new();
        let id = Id::hash(&data);
        let mut s = codec
            .seal(&key, id, &data, Compression::default(), SelfCheck::Verify)
            .unwrap();
        assert_eq!(s.uncompressed_length as usize, data.len());
        let back = codec
            .open(&key, id, &mut s.bytes, s.uncompressed_length)
            .unwrap();
        assert!(back == data);
    }

    #[test]
    fn compression_modes_parse_as_restic_names_or_levels() {
        assert_eq!("auto".parse(), Ok(Compression::Zstd(DEFAULT_LEVEL)));
        assert_eq!("off".parse(), Ok(Compression::Off));
        assert_eq!("max".parse(), Ok(Compression::Zstd(MAX_LEVEL)));
        assert_eq!("7".parse(), Ok(Compression::Zstd(7)));
        for bad in ["0", "20", "-1", "fast", "AUTO"] {
            let err = bad.parse::<Compression>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }
}
