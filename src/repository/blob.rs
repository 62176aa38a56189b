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

/// zstd level used for blobs and unpacked files; restic's `auto` is comparable.
pub const ZSTD_LEVEL: i32 = 3;

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

/// A reusable compressor and decompressor for one thread.
pub struct BlobCodec {
    compressor: zstd::bulk::Compressor<'static>,
    decompressor: zstd::bulk::Decompressor<'static>,
    scratch: Vec<u8>,
}

impl BlobCodec {
    /// A codec at [`ZSTD_LEVEL`]; frames carry their content size and no checksum.
    pub fn new() -> BlobCodec {
        let mut compressor =
            zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd compressor at a valid level");
        // Both settings are accepted by every zstd build; failure would be a broken library.
        let _ = compressor.include_checksum(false);
        let _ = compressor.include_contentsize(true);
        BlobCodec {
            compressor,
            decompressor: zstd::bulk::Decompressor::new().expect("zstd decompressor"),
            scratch: Vec::new(),
        }
    }

    /// Compresses (when `compress` and the plaintext is not empty), encrypts, and checks the
    /// result by opening it again. `id` must be the hash of `plaintext`.
    pub fn seal(
        &mut self,
        key: &Key,
        id: Id,
        plaintext: &[u8],
        compress: bool,
    ) -> Result<SealedBlob, BlobError> {
        let uncompressed_length = if compress && !plaintext.is_empty() {
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
        let mut bytes = Vec::with_capacity(payload.len() + crypto::EXTENSION);
        key.seal_append(payload, &mut bytes);
        self.verify(key, id, &bytes, uncompressed_length, plaintext)?;
        Ok(SealedBlob {
            id,
            bytes,
            uncompressed_length,
        })
    }

    fn verify(
        &mut self,
        key: &Key,
        id: Id,
        sealed: &[u8],
        uncompressed_length: u32,
        plaintext: &[u8],
    ) -> Result<(), BlobError> {
        let mut copy = sealed.to_vec();
        let opened = key
            .open_in_place(&mut copy)
            .map_err(|e| BlobError::SelfCheck {
                id,
                reason: e.to_string(),
            })?;
        let same = if uncompressed_length != 0 {
            let out = self
                .decompressor
                .decompress(opened, uncompressed_length as usize)
                .map_err(|e| BlobError::SelfCheck {
                    id,
                    reason: e.to_string(),
                })?;
            out == plaintext
        } else {
            &*opened == plaintext
        };
        if same {
            Ok(())
        } else {
            Err(BlobError::SelfCheck {
                id,
                reason: "opened bytes differ from the input".into(),
            })
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
        let opened = key
            .open_in_place(sealed)
            .map_err(|source| BlobError::Decrypt { id, source })?;
        let plain = if uncompressed_length != 0 {
            let n = uncompressed_length as usize;
            if n > MAX_BLOB_PLAINTEXT {
                return Err(BlobError::TooLarge { id, len: n as u64 });
            }
            let out =
                self.decompressor
                    .decompress(opened, n)
                    .map_err(|e| BlobError::Decompress {
                        id,
                        reason: e.to_string(),
                    })?;
            if out.len() != n {
                return Err(BlobError::Decompress {
                    id,
                    reason: format!("{} bytes instead of {n}", out.len()),
                });
            }
            out
        } else {
            opened.to_vec()
        };
        let actual = Id::hash(&plain);
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
            for compress in [false, true] {
                let id = Id::hash(data);
                let mut s = codec.seal(&key, id, data, compress).unwrap();
                if data.is_empty() || !compress {
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
    fn tampering_and_wrong_ids_are_caught() {
        let key = Key::random();
        let mut codec = BlobCodec::new();
        let data = b"some content";
        let id = Id::hash(data);
        let s = codec.seal(&key, id, data, true).unwrap();
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
}
