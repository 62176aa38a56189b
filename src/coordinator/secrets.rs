//! Sealing of the coordinator's secrets at rest.
//!
//! The coordinator keeps repository passwords, object-store credentials and kubeconfigs in its
//! SQLite store, and those must never reach the disk in plaintext. This module owns the
//! [`SealingKey`] (a 32-byte AES-256 key read from a file the operator provides), the sealed
//! format produced by [`seal`] and read by [`open`] (`0x01 ‖ 12-byte random nonce ‖ AES-256-GCM
//! ciphertext ‖ 16-byte tag`, with caller-chosen associated data binding the value to its row),
//! and the [`Secret`] string wrapper that keeps secrets out of logs and `Debug` output. It does
//! no database I/O and knows nothing about plans; the store decides what is sealed and with
//! which associated data.

use std::fmt;
use std::path::{Path, PathBuf};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use serde::{Deserialize, Serialize};

/// Length of a sealing key in bytes.
pub const KEY_LEN: usize = 32;

/// Length of the random nonce in a sealed value.
const NONCE_LEN: usize = 12;

/// Length of the GCM authentication tag.
const TAG_LEN: usize = 16;

/// The first byte of every value sealed by this version of the format.
const FORMAT_VERSION: u8 = 1;

/// A key file larger than this is rejected without being read fully; every valid form is far
/// smaller (base64 with a CRLF is 46 bytes).
const MAX_KEY_FILE_LEN: u64 = 4096;

/// Why a key could not be loaded or a sealed value could not be opened.
///
/// No variant carries key material, plaintext or ciphertext bytes.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key file could not be read.
    #[error("read sealing key file {path}: {source}")]
    KeyFileRead {
        /// The key file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file holds none of the accepted forms.
    #[error(
        "sealing key file {path} holds no valid key: expected exactly 32 raw bytes, \
         64 hexadecimal characters, or the base64 encoding of 32 bytes"
    )]
    KeyFileFormat {
        /// The key file.
        path: PathBuf,
    },
    /// A sealed value failed authentication: it was sealed under another key or other
    /// associated data, or its bytes were altered or truncated.
    #[error("could not open sealed secret: wrong sealing key or tampered data")]
    Unauthentic,
}

/// The 32-byte AES-256-GCM key that seals the coordinator's secrets.
///
/// `Debug` prints no key bytes; the bytes are overwritten (best effort) when the key is dropped.
#[derive(Clone)]
pub struct SealingKey([u8; KEY_LEN]);

impl SealingKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SealingKey {
        SealingKey(bytes)
    }

    /// Reads a key file holding exactly 32 raw bytes, 64 hexadecimal characters, or the base64
    /// (standard alphabet, padded or not) of 32 bytes; the two text forms may end in one
    /// newline (`\n` or `\r\n`) and may be surrounded by ASCII whitespace.
    ///
    /// A 32-byte file is always taken as raw bytes (no text form is 32 bytes long). Errors name
    /// the path and the accepted forms, never the file's content.
    pub fn from_file(path: impl AsRef<Path>) -> Result<SealingKey, SecretError> {
        use std::io::Read;

        let path = path.as_ref();
        let read_err = |source| SecretError::KeyFileRead {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut content = Vec::new();
        file.take(MAX_KEY_FILE_LEN + 1)
            .read_to_end(&mut content)
            .map_err(read_err)?;
        let key = SealingKey::parse(&content);
        content.fill(0);
        std::hint::black_box(&content);
        key.ok_or_else(|| SecretError::KeyFileFormat {
            path: path.to_path_buf(),
        })
    }

    /// Decodes the content of a key file; `None` when it holds none of the accepted forms.
    fn parse(content: &[u8]) -> Option<SealingKey> {
        if let Ok(raw) = <[u8; KEY_LEN]>::try_from(content) {
            return Some(SealingKey(raw));
        }
        let text = std::str::from_utf8(content).ok()?.trim_ascii();
        let mut out = [0u8; KEY_LEN];
        if text.len() == 2 * KEY_LEN {
            if hex::decode_to_slice(text, &mut out).is_ok() {
                return Some(SealingKey(out));
            }
            return None;
        }
        for engine in [&STANDARD, &STANDARD_NO_PAD] {
            // `decode_slice` refuses output that would not fit, so a longer decoding cannot
            // pass; the length check rejects shorter ones.
            if let Ok(KEY_LEN) = engine.decode_slice(text, &mut out) {
                return Some(SealingKey(out));
            }
        }
        None
    }

    /// A fresh random key from the operating system's generator.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails, which leaves no safe way on.
    pub fn generate() -> SealingKey {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).expect("the operating system random number generator failed");
        SealingKey(bytes)
    }

    /// The key as padded standard base64 (44 characters), the form `ferry coordinator` writes
    /// to a new key file. The caller owns keeping the returned string secret.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.0.into())
    }
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(<redacted>)")
    }
}

impl Drop for SealingKey {
    fn drop(&mut self) {
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

/// Seals `plaintext` under `key`, authenticating `aad` alongside it.
///
/// The output is `0x01 ‖ nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`, 29 bytes longer than
/// the plaintext. Each call draws a fresh random nonce, so sealing the same plaintext twice
/// gives different bytes. [`open`] succeeds only with the same key and the same `aad`, which is
/// how a caller binds a sealed value to the row it belongs to.
///
/// # Panics
///
/// If the operating system's random number generator fails, or the plaintext exceeds GCM's
/// limit of 64 GiB.
pub fn seal(key: &SealingKey, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("the operating system random number generator failed");
    let ciphertext = key
        .cipher()
        .encrypt(
            &nonce.into(),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("plaintext within AES-GCM's length limit");
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

/// Opens a value produced by [`seal`] with the same `key` and `aad`.
///
/// Every failure — wrong key, wrong `aad`, any altered bit (the version byte included), a
/// truncated value — is [`SecretError::Unauthentic`]; no partial plaintext is ever returned.
pub fn open(key: &SealingKey, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SecretError> {
    let Some((&version, rest)) = sealed.split_first() else {
        return Err(SecretError::Unauthentic);
    };
    if version != FORMAT_VERSION || rest.len() < NONCE_LEN + TAG_LEN {
        return Err(SecretError::Unauthentic);
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SecretError::Unauthentic)?;
    key.cipher()
        .decrypt(
            &nonce.into(),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| SecretError::Unauthentic)
}

/// A secret string: a password, a credential, a kubeconfig.
///
/// `Debug` and `Display` print `<redacted>`; only [`Secret::expose`] reveals the value.
/// Serde reads and writes it as a plain JSON string, so request structs can carry it. On drop
/// the bytes are overwritten with zeros (best effort: copies made earlier, e.g. by a `String`
/// reallocating, are out of reach).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret value. Callers must not log or echo it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe_string(&mut self.0);
    }
}

/// Overwrites a string's bytes with zeros (best effort) and leaves it empty.
pub(crate) fn wipe_string(value: &mut String) {
    let mut bytes = std::mem::take(value).into_bytes();
    bytes.fill(0);
    std::hint::black_box(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(byte: u8) -> SealingKey {
        SealingKey::from_bytes([byte; KEY_LEN])
    }

    proptest! {
        #[test]
        fn seal_open_round_trip(
            plaintext in proptest::collection::vec(any::<u8>(), 0..2048),
            aad in proptest::collection::vec(any::<u8>(), 0..64),
            key_bytes in any::<[u8; KEY_LEN]>(),
        ) {
            let key = SealingKey::from_bytes(key_bytes);
            let sealed = seal(&key, &plaintext, &aad);
            prop_assert_eq!(sealed.len(), plaintext.len() + 1 + NONCE_LEN + TAG_LEN);
            prop_assert_eq!(sealed[0], FORMAT_VERSION);
            prop_assert_eq!(open(&key, &sealed, &aad).unwrap(), plaintext);
        }

        #[test]
        fn any_flipped_bit_is_unauthentic(
            plaintext in proptest::collection::vec(any::<u8>(), 0..256),
            bit in any::<proptest::sample::Index>(),
        ) {
            let key = key(7);
            let mut sealed = seal(&key, &plaintext, b"aad");
            let bit = bit.index(sealed.len() * 8);
            sealed[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(matches!(open(&key, &sealed, b"aad"), Err(SecretError::Unauthentic)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            prop_assert!(open(&key(1), &bytes, b"").is_err());
        }
    }

    #[test]
    fn same_plaintext_seals_differently() {
        let key = key(3);
        assert_ne!(seal(&key, b"same", b""), seal(&key, b"same", b""));
    }

    #[test]
    fn wrong_key_is_unauthentic() {
        let sealed = seal(&key(1), b"hunter2", b"row 1");
        assert!(matches!(
            open(&key(2), &sealed, b"row 1"),
            Err(SecretError::Unauthentic)
        ));
    }

    #[test]
    fn wrong_aad_is_unauthentic() {
        let sealed = seal(&key(1), b"hunter2", b"ferry plan 1 secrets");
        assert!(matches!(
            open(&key(1), &sealed, b"ferry plan 2 secrets"),
            Err(SecretError::Unauthentic)
        ));
    }

    #[test]
    fn truncated_and_empty_are_unauthentic() {
        let sealed = seal(&key(1), b"hunter2", b"");
        for len in 0..sealed.len() {
            assert!(matches!(
                open(&key(1), &sealed[..len], b""),
                Err(SecretError::Unauthentic)
            ));
        }
    }

    #[test]
    fn unauthentic_message_names_no_bytes() {
        let message = SecretError::Unauthentic.to_string();
        assert_eq!(
            message,
            "could not open sealed secret: wrong sealing key or tampered data"
        );
    }

    fn write_key_file(content: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sealing.key");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    fn expected() -> [u8; KEY_LEN] {
        let mut bytes = [0u8; KEY_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        bytes
    }

    #[test]
    fn key_file_accepts_all_three_forms() {
        let bytes = expected();
        let hex_lower = hex::encode(bytes);
        let b64 = STANDARD.encode(bytes);
        let forms: Vec<Vec<u8>> = vec![
            bytes.to_vec(),
            hex_lower.clone().into_bytes(),
            format!("{hex_lower}\n").into_bytes(),
            format!("{}\r\n", hex_lower.to_uppercase()).into_bytes(),
            b64.clone().into_bytes(),
            format!("{b64}\n").into_bytes(),
            format!("{}\n", STANDARD_NO_PAD.encode(bytes)).into_bytes(),
        ];
        for content in forms {
            let (_dir, path) = write_key_file(&content);
            let key = SealingKey::from_file(&path).unwrap();
            assert_eq!(key.0, bytes);
        }
    }

    #[test]
    fn raw_key_with_newline_like_bytes_is_raw() {
        let mut bytes = [b'a'; KEY_LEN];
        bytes[KEY_LEN - 1] = b'\n';
        let (_dir, path) = write_key_file(&bytes);
        assert_eq!(SealingKey::from_file(&path).unwrap().0, bytes);
    }

    #[test]
    fn key_file_rejects_bad_forms() {
        let bytes = expected();
        let bad: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"\n".to_vec(),
            bytes[..31].to_vec(),
            [&bytes[..], b"\x00"].concat(),
            hex::encode(&bytes[..31]).into_bytes(),
            format!("{}zz", &hex::encode(bytes)[..62]).into_bytes(),
            STANDARD.encode(&bytes[..31]).into_bytes(),
            STANDARD
                .encode([bytes.as_slice(), b"x"].concat())
                .into_bytes(),
            b"not a key at all, just some words in a file".to_vec(),
            vec![0xff; 64],
            vec![b'a'; 10_000],
        ];
        for content in bad {
            let (_dir, path) = write_key_file(&content);
            let err = SealingKey::from_file(&path).unwrap_err();
            let message = err.to_string();
            assert!(
                matches!(err, SecretError::KeyFileFormat { .. }),
                "{message}"
            );
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("32 raw bytes"), "{message}");
            assert!(message.contains("64 hexadecimal"), "{message}");
            assert!(message.contains("base64"), "{message}");
        }
    }

    #[test]
    fn key_file_error_never_echoes_content() {
        let content = "SECRET-LOOKING-CONTENT-THAT-IS-NOT-A-KEY\n";
        let (_dir, path) = write_key_file(content.as_bytes());
        let message = SealingKey::from_file(&path).unwrap_err().to_string();
        assert!(!message.contains("SECRET-LOOKING"), "{message}");
    }

    #[test]
    fn missing_key_file_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.key");
        let err = SealingKey::from_file(&path).unwrap_err();
        assert!(matches!(err, SecretError::KeyFileRead { .. }));
        assert!(err.to_string().contains("absent.key"));
    }

    #[test]
    fn generated_key_round_trips_through_base64_file() {
        let key = SealingKey::generate();
        assert_ne!(key.0, SealingKey::generate().0);
        let encoded = key.to_base64();
        assert_eq!(encoded.len(), 44);
        let (_dir, path) = write_key_file(format!("{encoded}\n").as_bytes());
        let loaded = SealingKey::from_file(&path).unwrap();
        let sealed = seal(&key, b"payload", b"aad");
        assert_eq!(open(&loaded, &sealed, b"aad").unwrap(), b"payload");
    }

    #[test]
    fn debug_hides_key_and_secret() {
        let key = SealingKey::from_bytes([0xAB; KEY_LEN]);
        let printed = format!("{key:?} {key:#?}");
        assert!(!printed.to_lowercase().contains("ab"), "{printed}");
        assert!(!printed.contains("171"), "{printed}");
        assert!(!printed.contains(&key.to_base64()), "{printed}");

        let secret = Secret::new("hunter2-very-secret-pw");
        let printed = format!("{secret:?} {secret} {secret:#?} {:?}", Some(&secret));
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("<redacted>"));
        assert_eq!(secret.expose(), "hunter2-very-secret-pw");
    }

    #[test]
    fn secret_serializes_as_plain_string() {
        let secret = Secret::from("p@ss\"word");
        let json = serde_json::to_string(&secret).unwrap();
        assert_eq!(json, r#""p@ss\"word""#);
        let back: Secret = serde_json::from_str(&json).unwrap();
        assert_eq!(back, secret);
        assert!(serde_json::from_str::<Secret>("42").is_err());
    }

    #[test]
    fn wipe_string_empties() {
        let mut value = String::from("secret");
        wipe_string(&mut value);
        assert!(value.is_empty());
    }
}
