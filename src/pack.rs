//! The pack file header codec.
//!
//! A pack is `Blob_1 ‖ … ‖ Blob_n ‖ EncryptedHeader ‖ HeaderLength(u32 LE)`. This module owns
//! the plain (decrypted) header bytes, the trailing length field and the size arithmetic that
//! `check` relies on. It does not read or write packs, encrypt or decrypt the header or the
//! blobs, or decide when a pack is full enough to upload; callers do that with the crypto and
//! backend modules.
//!
//! Each header entry is a type byte followed by the encrypted length, for compressed types the
//! uncompressed length, then the 32-byte id. Offsets are not stored: a blob starts where the
//! previous one ends, the first at 0.

use crate::id::{BlobType, ID_LEN, Id};

/// Bytes added by encryption: 16-byte IV and 16-byte MAC.
pub const CRYPTO_OVERHEAD: u32 = 32;

/// Size of the trailing header length field.
pub const LENGTH_FIELD: u32 = 4;

/// Plain header entry size of an uncompressed blob (types 0 and 1).
pub const ENTRY_PLAIN: usize = 1 + 4 + ID_LEN;

/// Plain header entry size of a compressed blob (types 2 and 3).
pub const ENTRY_COMPRESSED: usize = 1 + 4 + 4 + ID_LEN;

/// How many bytes of a pack's end to read first: enough for a header of 15 compressed entries,
/// its encryption overhead and the length field, as restic reads them.
pub const TAIL_EAGER: usize = 15 * 41 + 32 + 4;

/// The largest encrypted header accepted or written, 16 MiB.
pub const MAX_HEADER: u32 = 16 * 1024 * 1024;

/// One blob as a pack header and an index describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedBlob {
    /// Data or tree.
    pub blob_type: BlobType,
    /// SHA-256 of the uncompressed plaintext.
    pub id: Id,
    /// Start of the blob in the pack; in a header this is implicit, the running sum of the
    /// lengths before it.
    pub offset: u32,
    /// Stored (encrypted) length: IV, ciphertext and MAC.
    pub length: u32,
    /// Length after decryption and decompression; 0 means the blob is not compressed.
    pub uncompressed_length: u32,
}

impl PackedBlob {
    /// The blob's plaintext size: `uncompressed_length` when compressed, otherwise
    /// `length - 32` (0 for a corrupt entry shorter than the encryption overhead, which will
    /// fail to decrypt anyway).
    pub fn plaintext_len(&self) -> u32 {
        if self.is_compressed() {
            self.uncompressed_length
        } else {
            self.length.saturating_sub(CRYPTO_OVERHEAD)
        }
    }

    /// Whether the blob's plaintext is zstd-compressed (`uncompressed_length != 0`).
    pub fn is_compressed(&self) -> bool {
        self.uncompressed_length != 0
    }

    /// The end of the blob in the pack, `offset + length`, as a u64 so that it cannot overflow.
    pub fn end(&self) -> u64 {
        u64::from(self.offset) + u64::from(self.length)
    }

    /// Size of this blob's plain header entry: 41 bytes when compressed, otherwise 37.
    pub fn entry_len(&self) -> usize {
        if self.is_compressed() {
            ENTRY_COMPRESSED
        } else {
            ENTRY_PLAIN
        }
    }

    fn type_byte(&self) -> u8 {
        match (self.blob_type, self.is_compressed()) {
            (BlobType::Data, false) => 0,
            (BlobType::Tree, false) => 1,
            (BlobType::Data, true) => 2,
            (BlobType::Tree, true) => 3,
        }
    }
}

/// Why a pack header or its length field is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackError {
    /// The header names a type byte outside 0..=3.
    #[error("parsing pack header entry {index} at byte {position}: unknown blob type byte {byte}")]
    UnknownType {
        /// Entry number, from 0.
        index: usize,
        /// Position of the type byte in the plain header.
        position: usize,
        /// The byte found.
        byte: u8,
    },
    /// A compressed entry (type 2 or 3) in a repository that does not allow compression.
    #[error(
        "parsing pack header entry {index} at byte {position}: compressed blob type {byte} in a version 1 repository"
    )]
    CompressedInV1 {
        /// Entry number, from 0.
        index: usize,
        /// Position of the type byte in the plain header.
        position: usize,
        /// The type byte, 2 or 3.
        byte: u8,
    },
    /// A compressed entry claims an uncompressed length of 0.
    #[error(
        "parsing pack header entry {index} at byte {position}: compressed blob with uncompressed length 0"
    )]
    ZeroUncompressed {
        /// Entry number, from 0.
        index: usize,
        /// Position of the type byte in the plain header.
        position: usize,
    },
    /// The header ends inside an entry.
    #[error(
        "parsing pack header entry {index} at byte {position}: truncated, {needed} bytes needed but {available} left"
    )]
    Truncated {
        /// Entry number, from 0.
        index: usize,
        /// Position of the type byte in the plain header.
        position: usize,
        /// Size of the entry.
        needed: usize,
        /// Bytes left in the header.
        available: usize,
    },
    /// The running offset passes 4 GiB.
    #[error(
        "parsing pack header entry {index}: blob offset {offset} plus length {length} overflows"
    )]
    OffsetOverflow {
        /// Entry number, from 0.
        index: usize,
        /// Offset of the blob.
        offset: u32,
        /// Its length.
        length: u32,
    },
    /// Fewer than 4 tail bytes, or a pack too small to hold a length field.
    #[error(
        "reading pack header length: {tail} tail bytes of a {pack_size}-byte pack, need at least 4 and at most the pack size"
    )]
    ShortTail {
        /// Bytes the caller provided.
        tail: usize,
        /// Size of the pack.
        pack_size: u64,
    },
    /// The header length field is out of range.
    #[error(
        "reading pack header length: header length {header_len} invalid for a {pack_size}-byte pack (must be at least 32, at most the pack size minus 4 and at most {max})"
    )]
    BadHeaderLength {
        /// The length field's value.
        header_len: u32,
        /// Size of the pack.
        pack_size: u64,
        /// [`MAX_HEADER`].
        max: u32,
    },
}

/// Encodes the plain header (before encryption) for `blobs` in pack order.
///
/// Each entry is the type byte (0 data, 1 tree, 2 compressed data, 3 compressed tree), the
/// `length` as u32 LE, for compressed blobs the `uncompressed_length` as u32 LE, then the id.
/// A blob is written as compressed exactly when `uncompressed_length != 0`. The `offset`
/// fields are ignored: the header implies them, so the caller must pass blobs in the order
/// they are stored, contiguous from offset 0.
pub fn encode_header(blobs: &[PackedBlob]) -> Vec<u8> {
    let mut out = Vec::with_capacity(plain_header_len(blobs));
    for blob in blobs {
        out.push(blob.type_byte());
        out.extend_from_slice(&blob.length.to_le_bytes());
        if blob.is_compressed() {
            out.extend_from_slice(&blob.uncompressed_length.to_le_bytes());
        }
        out.extend_from_slice(&blob.id.0);
    }
    out
}

/// Size of the plain header [`encode_header`] produces for `blobs`.
pub fn plain_header_len(blobs: &[PackedBlob]) -> usize {
    blobs.iter().map(PackedBlob::entry_len).sum()
}

/// Parses a decrypted header into its blobs, in pack order, with offsets as running sums of
/// the lengths starting at 0.
///
/// Errors on a type byte outside 0..=3, a compressed entry whose uncompressed length is 0, an
/// entry cut short by the end of the header, or offsets passing `u32::MAX`. With
/// `allow_compressed == false` (a version 1 repository) types 2 and 3 are errors too. An empty
/// header yields no blobs. Lengths below the encryption overhead are accepted here; such a blob
/// fails when it is decrypted.
pub fn parse_header(plain: &[u8], allow_compressed: bool) -> Result<Vec<PackedBlob>, PackError> {
    let mut blobs = Vec::with_capacity(plain.len() / ENTRY_COMPRESSED);
    let mut position = 0usize;
    let mut offset = 0u32;
    while let Some(rest) = plain.get(position..).filter(|rest| !rest.is_empty()) {
        let index = blobs.len();
        let byte = rest.first().copied().unwrap_or_default();
        let (blob_type, compressed) = match byte {
            0 => (BlobType::Data, false),
            1 => (BlobType::Tree, false),
            2 => (BlobType::Data, true),
            3 => (BlobType::Tree, true),
            _ => {
                return Err(PackError::UnknownType {
                    index,
                    position,
                    byte,
                });
            }
        };
        if compressed && !allow_compressed {
            return Err(PackError::CompressedInV1 {
                index,
                position,
                byte,
            });
        }
        let needed = if compressed {
            ENTRY_COMPRESSED
        } else {
            ENTRY_PLAIN
        };
        let entry = rest.get(..needed).ok_or(PackError::Truncated {
            index,
            position,
            needed,
            available: rest.len(),
        })?;
        let mut cursor = Cursor(entry.get(1..).unwrap_or_default());
        let length = cursor.u32();
        let uncompressed_length = if compressed { cursor.u32() } else { 0 };
        let id = cursor.id();
        if compressed && uncompressed_length == 0 {
            return Err(PackError::ZeroUncompressed { index, position });
        }
        blobs.push(PackedBlob {
            blob_type,
            id,
            offset,
            length,
            uncompressed_length,
        });
        offset = offset
            .checked_add(length)
            .ok_or(PackError::OffsetOverflow {
                index,
                offset,
                length,
            })?;
        position += needed;
    }
    Ok(blobs)
}

/// Reads fixed-size fields off a slice whose length the caller has already checked; a short
/// slice yields zeros rather than a panic.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some((head, tail)) = self.0.split_first_chunk::<N>() {
            out = *head;
            self.0 = tail;
        }
        out
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn id(&mut self) -> Id {
        Id(self.take())
    }
}

/// Reads and validates the encrypted header length from the end of a pack.
///
/// `tail` is the last bytes of the pack (at least 4, at most `pack_size`, typically
/// [`TAIL_EAGER`]); `pack_size` is the pack's full size. The length must be at least 32 (an
/// empty header still has IV and MAC), at most `pack_size - 4` and at most [`MAX_HEADER`]. The
/// encrypted header then occupies `[pack_size - 4 - len, pack_size - 4)`, see
/// [`header_offset`].
pub fn header_length(tail: &[u8], pack_size: u64) -> Result<u32, PackError> {
    let short = || PackError::ShortTail {
        tail: tail.len(),
        pack_size,
    };
    if u64::try_from(tail.len()).map_or(true, |n| n > pack_size) {
        return Err(short());
    }
    let (_, field) = tail.split_last_chunk::<4>().ok_or_else(short)?;
    let header_len = u32::from_le_bytes(*field);
    let room = pack_size.saturating_sub(u64::from(LENGTH_FIELD));
    if header_len < CRYPTO_OVERHEAD || u64::from(header_len) > room || header_len > MAX_HEADER {
        return Err(PackError::BadHeaderLength {
            header_len,
            pack_size,
            max: MAX_HEADER,
        });
    }
    Ok(header_len)
}

/// Where the encrypted header of a validated length starts: `pack_size - 4 - header_len`
/// (saturating at 0 for inputs [`header_length`] would have rejected).
pub fn header_offset(pack_size: u64, header_len: u32) -> u64 {
    pack_size
        .saturating_sub(u64::from(LENGTH_FIELD))
        .saturating_sub(u64::from(header_len))
}

/// Whether an encrypted header of `count` entries, each counted at the compressed size of 41
/// bytes, would exceed [`MAX_HEADER`]. A packer that holds `n` blobs may take one more while
/// `!header_full(n + 1)`.
pub fn header_full(count: usize) -> bool {
    let size = (count as u128) * (ENTRY_COMPRESSED as u128) + u128::from(CRYPTO_OVERHEAD);
    size > u128::from(MAX_HEADER)
}

/// Total size of a pack holding exactly `blobs`: the sum of their lengths, the header's
/// encryption overhead, the plain header size and the 4-byte length field. `restic check`
/// requires a pack file to have exactly this size.
pub fn pack_size(blobs: &[PackedBlob]) -> u64 {
    let data: u64 = blobs.iter().map(|b| u64::from(b.length)).sum();
    data + u64::from(CRYPTO_OVERHEAD) + plain_header_len(blobs) as u64 + u64::from(LENGTH_FIELD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blob(blob_type: BlobType, seed: u8, length: u32, uncompressed_length: u32) -> PackedBlob {
        PackedBlob {
            blob_type,
            id: Id([seed; 32]),
            offset: 0,
            length,
            uncompressed_length,
        }
    }

    #[test]
    fn encodes_the_four_entry_types() {
        let blobs = [
            blob(BlobType::Data, 1, 0x0102_0304, 0),
            blob(BlobType::Tree, 2, 40, 0),
            blob(BlobType::Data, 3, 50, 0x0a0b_0c0d),
            blob(BlobType::Tree, 4, 60, 70),
        ];
        let plain = encode_header(&blobs);
        assert_eq!(plain.len(), 37 + 37 + 41 + 41);
        assert_eq!(&plain[..5], &[0, 4, 3, 2, 1]);
        assert_eq!(&plain[5..37], &[1; 32]);
        assert_eq!(plain[37], 1);
        assert_eq!(plain[74], 2);
        assert_eq!(&plain[75..83], &[50, 0, 0, 0, 0x0d, 0x0c, 0x0b, 0x0a]);
        assert_eq!(plain[115], 3);

        let parsed = parse_header(&plain, true).unwrap();
        let offsets: Vec<u32> = parsed.iter().map(|b| b.offset).collect();
        assert_eq!(
            offsets,
            [0, 0x0102_0304, 0x0102_0304 + 40, 0x0102_0304 + 90]
        );
        assert_eq!(parsed[2].plaintext_len(), 0x0a0b_0c0d);
        assert_eq!(parsed[1].plaintext_len(), 8);
        assert!(!parsed[1].is_compressed());
        assert!(parsed[3].is_compressed());
    }

    #[test]
    fn v1_rejects_compressed_entries() {
        let plain = encode_header(&[
            blob(BlobType::Data, 1, 40, 0),
            blob(BlobType::Tree, 2, 50, 9),
        ]);
        assert_eq!(parse_header(&plain, true).unwrap().len(), 2);
        assert_eq!(
            parse_header(&plain, false),
            Err(PackError::CompressedInV1 {
                index: 1,
                position: 37,
                byte: 3
            })
        );
    }

    #[test]
    fn hostile_headers_are_errors() {
        let plain = encode_header(&[
            blob(BlobType::Data, 1, 40, 0),
            blob(BlobType::Data, 2, 50, 60),
        ]);
        for cut in [1, 5, 36, 38, 70, plain.len() - 1] {
            let err = parse_header(&plain[..cut], true).unwrap_err();
            assert!(matches!(err, PackError::Truncated { .. }), "{cut}: {err}");
        }
        let mut bad = plain.clone();
        bad[37] = 4;
        let err = parse_header(&bad, true).unwrap_err();
        assert_eq!(
            err,
            PackError::UnknownType {
                index: 1,
                position: 37,
                byte: 4
            }
        );
        assert!(err.to_string().contains("unknown blob type byte 4"));

        let zero = encode_header(&[blob(BlobType::Data, 1, 40, 0)]);
        let mut zero_compressed = vec![2];
        zero_compressed.extend_from_slice(&zero[1..5]);
        zero_compressed.extend_from_slice(&[0; 4]);
        zero_compressed.extend_from_slice(&zero[5..]);
        assert!(matches!(
            parse_header(&zero_compressed, true),
            Err(PackError::ZeroUncompressed { index: 0, .. })
        ));

        let overflow = encode_header(&[
            blob(BlobType::Data, 1, u32::MAX, 0),
            blob(BlobType::Data, 2, 1, 0),
        ]);
        assert!(matches!(
            parse_header(&overflow, true),
            Err(PackError::OffsetOverflow { index: 1, .. })
        ));
        assert_eq!(parse_header(&[], true).unwrap(), vec![]);
    }

    #[test]
    fn header_length_validation() {
        let tail = |n: u32| n.to_le_bytes().to_vec();
        assert_eq!(header_length(&tail(32), 36), Ok(32));
        assert_eq!(header_length(&tail(69), 1000), Ok(69));
        let mut long = vec![9u8; TAIL_EAGER - 4];
        long.extend_from_slice(&tail(100));
        assert_eq!(header_length(&long, 5000), Ok(100));
        for (value, size) in [(0, 100), (31, 100), (97, 100), (MAX_HEADER + 1, u64::MAX)] {
            let err = header_length(&tail(value), size).unwrap_err();
            assert!(matches!(err, PackError::BadHeaderLength { .. }), "{value}");
            assert!(err.to_string().contains(&format!("header length {value}")));
        }
        assert_eq!(header_length(&tail(MAX_HEADER), u64::MAX), Ok(MAX_HEADER));
        assert!(matches!(
            header_length(&[1, 2, 3], 100),
            Err(PackError::ShortTail { .. })
        ));
        assert!(matches!(
            header_length(&tail(32), 3),
            Err(PackError::ShortTail { .. })
        ));
        assert!(header_length(&tail(32), 0).is_err());
        assert_eq!(header_offset(1000, 69), 927);
        assert_eq!(header_offset(10, 69), 0);
    }

    #[test]
    fn header_full_at_the_limit() {
        let max_entries = (MAX_HEADER as usize - 32) / 41;
        assert!(!header_full(0));
        assert!(!header_full(max_entries));
        assert!(header_full(max_entries + 1));
        assert!(header_full(usize::MAX));
    }

    #[test]
    fn pack_size_counts_everything() {
        assert_eq!(pack_size(&[]), 36);
        let blobs = [
            blob(BlobType::Data, 1, 100, 0),
            blob(BlobType::Data, 2, 50, 70),
        ];
        assert_eq!(pack_size(&blobs), 150 + 32 + 37 + 41 + 4);
        let plain = encode_header(&blobs);
        assert_eq!(pack_size(&blobs), 150 + 32 + plain.len() as u64 + 4);
    }

    fn arb_blob() -> impl Strategy<Value = PackedBlob> {
        (
            any::<bool>(),
            any::<[u8; 32]>(),
            0u32..1 << 24,
            prop_oneof![Just(0u32), 1u32..],
        )
            .prop_map(|(tree, id, length, uncompressed_length)| PackedBlob {
                blob_type: if tree { BlobType::Tree } else { BlobType::Data },
                id: Id(id),
                offset: 0,
                length,
                uncompressed_length,
            })
    }

    proptest! {
        #[test]
        fn header_round_trip(mut blobs in proptest::collection::vec(arb_blob(), 0..64)) {
            let mut offset = 0u32;
            for b in &mut blobs {
                b.offset = offset;
                offset += b.length;
            }
            let plain = encode_header(&blobs);
            prop_assert_eq!(plain.len(), plain_header_len(&blobs));
            prop_assert_eq!(parse_header(&plain, true).unwrap(), blobs.clone());
            let any_compressed = blobs.iter().any(PackedBlob::is_compressed);
            prop_assert_eq!(parse_header(&plain, false).is_err(), any_compressed);
        }

        #[test]
        fn hostile_header_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_header(&data, true);
            let _ = parse_header(&data, false);
        }

        #[test]
        fn hostile_tail_never_panics(data in proptest::collection::vec(any::<u8>(), 0..10), size in any::<u64>()) {
            if let Ok(len) = header_length(&data, size) {
                prop_assert!(len >= 32 && u64::from(len) + 4 <= size && len <= MAX_HEADER);
            }
        }
    }
}
