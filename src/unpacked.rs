//! The compression layer of "unpacked" repository files (index, snapshot and lock files).
//!
//! In a version 2 repository the plaintext of these files is `0x02 ‖ zstd frame(JSON)`; files
//! written by version 1 (or before `migrate upgrade_repo_v2`) hold the raw JSON, recognised by
//! its first byte `[` or `{`. This module converts between JSON and that plaintext. It does not
//! encrypt (the caller seals the result with the crypto module), does no I/O, and never applies
//! to `config`, which restic stores uncompressed even in version 2.

use std::io::Read;

/// The first plaintext byte that marks a zstd-compressed unpacked file.
pub const COMPRESSED_MARKER: u8 = 0x02;

/// The zstd level used when writing: 3, what klauspost's `SpeedDefault` used by restic
/// approximates.
pub const ZSTD_LEVEL: i32 = 3;

/// The default ceiling on decompressed size, 4 GiB.
///
/// Index files (restic flushes them at 50 000 blobs), snapshots and locks are a few MiB at
/// most, so this only guards against decompression bombs; restic's own decoder limit is 16 GiB.
pub const DEFAULT_LIMIT: usize = 1 << 32;

/// Decompressed bytes are preallocated up to this size from the frame's declared content size;
/// beyond it the buffer grows as data actually arrives, so a lying frame header cannot make us
/// allocate gigabytes up front.
const MAX_PREALLOC: usize = 16 << 20;

/// How much decompressed data is read at a time.
const READ_CHUNK: usize = 64 << 10;

/// Why an unpacked file's plaintext could not be turned into JSON.
#[derive(Debug, thiserror::Error)]
pub enum UnpackedError {
    /// The first byte is neither `[`, `{` nor `0x02`.
    #[error("decoding unpacked file: unsupported encoding format, first byte {byte:#04x}")]
    UnknownFormat {
        /// The offending first byte.
        byte: u8,
    },
    /// The zstd stream is corrupt or truncated.
    #[error("decompressing unpacked file of {compressed} bytes: {source}")]
    Zstd {
        /// Size of the compressed stream (without the marker byte).
        compressed: usize,
        /// The decoder's complaint.
        source: std::io::Error,
    },
    /// The decompressed data would exceed the caller's limit.
    #[error(
        "decompressing unpacked file of {compressed} bytes: output exceeds the limit of {limit} bytes"
    )]
    TooLarge {
        /// Size of the compressed stream (without the marker byte).
        compressed: usize,
        /// The limit that was hit.
        limit: usize,
    },
}

/// Encodes `json` as version 2 unpacked plaintext: `0x02 ‖ zstd frame(json)`.
///
/// The frame is a single zstd frame at level [`ZSTD_LEVEL`] that records the content size and
/// carries no checksum, as restic writes it. Any input is accepted; the caller guarantees it is
/// JSON starting with `{` or `[` if it wants v1 readers' fallback to make sense.
pub fn compress(json: &[u8]) -> Vec<u8> {
    // Compressing an in-memory buffer at a valid level only fails on allocation failure, which
    // aborts anyway, so a failure here is a broken invariant of the zstd binding.
    let frame = zstd::bulk::compress(json, ZSTD_LEVEL).expect("zstd compression of a buffer");
    let mut out = Vec::with_capacity(frame.len() + 1);
    out.push(COMPRESSED_MARKER);
    out.extend_from_slice(&frame);
    out
}

/// Decodes the plaintext of an index, snapshot or lock file into its JSON bytes.
///
/// - first byte `[` or `{`: the whole input, including that byte, is raw JSON and is returned
///   unchanged (v1 repositories and files from before the v2 upgrade);
/// - first byte `0x02`: the rest is zstd data (one or more frames), decoded and returned;
/// - empty input: returned as is;
/// - anything else: [`UnpackedError::UnknownFormat`].
///
/// Decoding stops with [`UnpackedError::TooLarge`] as soon as the output would pass `limit`
/// bytes, so a small hostile file cannot exhaust memory. The limit does not apply to raw JSON,
/// which the caller already holds in memory. The result is not checked to be valid JSON.
pub fn decompress(plain: Vec<u8>, limit: usize) -> Result<Vec<u8>, UnpackedError> {
    let Some(&first) = plain.first() else {
        return Ok(plain);
    };
    match first {
        b'[' | b'{' => Ok(plain),
        COMPRESSED_MARKER => decode_zstd(plain.get(1..).unwrap_or_default(), limit),
        byte => Err(UnpackedError::UnknownFormat { byte }),
    }
}

fn decode_zstd(data: &[u8], limit: usize) -> Result<Vec<u8>, UnpackedError> {
    let compressed = data.len();
    let zstd_err = |source| UnpackedError::Zstd { compressed, source };
    let declared = zstd::zstd_safe::get_frame_content_size(data)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(0);
    let mut out = Vec::with_capacity(declared.min(limit).min(MAX_PREALLOC));
    let mut decoder = zstd::stream::read::Decoder::with_buffer(data).map_err(zstd_err)?;
    // Grow by hand rather than with `read_to_end`, whose doubling would reserve up to twice
    // the limit for a frame that decodes to just over it (a 130 KB file made 8 GiB).
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(zstd_err(e)),
        };
        let room = limit - out.len();
        if n > room {
            return Err(UnpackedError::TooLarge { compressed, limit });
        }
        if out.capacity() - out.len() < n {
            out.reserve_exact(out.len().max(n).min(room));
        }
        out.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compressed_form_is_marker_then_single_frame_with_size() {
        let json = br#"{"packs":[]}"#;
        let out = compress(json);
        assert_eq!(out[0], 0x02);
        // zstd magic number, little-endian.
        assert_eq!(&out[1..5], &[0x28, 0xb5, 0x2f, 0xfd]);
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&out[1..]).unwrap(),
            Some(json.len() as u64)
        );
        // Frame header descriptor bit 2 is the content checksum flag.
        assert_eq!(out[5] & 0x04, 0, "no checksum");
        assert_eq!(decompress(out, DEFAULT_LIMIT).unwrap(), json);
    }

    #[test]
    fn raw_json_passes_through() {
        for text in [&b"{\"a\":1}"[..], b"[1,2]", b"{", b""] {
            assert_eq!(decompress(text.to_vec(), 0).unwrap(), text);
        }
    }

    #[test]
    fn unknown_first_byte_is_rejected() {
        for first in [0u8, 1, 3, b' ', b'x', 0xff] {
            let err = decompress(vec![first, b'{'], DEFAULT_LIMIT).unwrap_err();
            assert!(matches!(err, UnpackedError::UnknownFormat { byte } if byte == first));
            assert!(err.to_string().contains("unsupported encoding format"));
        }
    }

    #[test]
    fn marker_alone_decodes_to_empty_or_errors_without_panic() {
        // An empty zstd stream is zero frames; either answer is acceptable, a panic is not.
        let _ = decompress(vec![0x02], DEFAULT_LIMIT);
    }

    #[test]
    fn corrupt_and_truncated_streams_are_errors() {
        let good = compress(&[b'{'; 5000]);
        let truncated = good[..good.len() - 3].to_vec();
        assert!(matches!(
            decompress(truncated, DEFAULT_LIMIT),
            Err(UnpackedError::Zstd { .. })
        ));
        let mut garbage = vec![0x02];
        garbage.extend_from_slice(b"not a zstd frame at all");
        assert!(matches!(
            decompress(garbage, DEFAULT_LIMIT),
            Err(UnpackedError::Zstd { .. })
        ));
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"junk");
        assert!(decompress(trailing, DEFAULT_LIMIT).is_err());
    }

    #[test]
    fn bomb_past_the_limit_is_refused() {
        // 64 MiB of zeros compresses to a few KiB.
        let bomb = compress(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 64 << 10);
        let err = decompress(bomb.clone(), 1 << 20).unwrap_err();
        assert!(matches!(err, UnpackedError::TooLarge { limit, .. } if limit == 1 << 20));
        assert!(err.to_string().contains("limit of 1048576 bytes"));
        // Exactly at the limit is fine.
        let exact = compress(&[7u8; 1000]);
        assert_eq!(decompress(exact.clone(), 1000).unwrap().len(), 1000);
        assert!(decompress(exact, 999).is_err());
    }

    #[test]
    fn output_buffer_never_grows_past_the_limit() {
        // A streamed frame declares no size, so the buffer grows as data arrives; found while
        // fuzzing: doubling used to reserve up to twice the limit.
        let limit = (3 << 20) + 1;
        let mut framed = vec![COMPRESSED_MARKER];
        framed.extend(zstd::stream::encode_all(&vec![0u8; limit][..], 3).unwrap());
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&framed[1..]).unwrap(),
            None
        );
        let out = decompress(framed, limit).unwrap();
        assert_eq!(out.len(), limit);
        assert!(
            out.capacity() <= limit,
            "capacity {} over {limit}",
            out.capacity()
        );
    }

    #[test]
    fn concatenated_frames_decode() {
        let mut two = compress(b"{\"a\":");
        two.extend_from_slice(&zstd::bulk::compress(b"1}", 3).unwrap());
        assert_eq!(decompress(two, DEFAULT_LIMIT).unwrap(), b"{\"a\":1}");
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let out = compress(&data);
            prop_assert_eq!(decompress(out, DEFAULT_LIMIT).unwrap(), data);
        }

        #[test]
        fn hostile_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decompress(data.clone(), 1 << 16);
            let mut marked = vec![0x02];
            marked.extend_from_slice(&data);
            let _ = decompress(marked, 1 << 16);
        }
    }
}
