//! The repository `config` file's JSON.
//!
//! restic stores `{"version":2,"id":"<64 hex>","chunker_polynomial":"<hex>"}` encrypted with
//! the master key (never compressed, since it must be read before the version is known). This
//! module owns that JSON: building a fresh version-2 config, writing it in restic's field order
//! and validating what it reads (version, polynomial, repository id). Encryption, storage and
//! the chunker itself live elsewhere. Unknown fields, such as the ones rustic adds, are ignored.

use crate::polynomial::{CHUNKER_DEGREE, Polynomial};

/// Oldest repository format version this crate reads.
pub const MIN_VERSION: u32 = 1;
/// Newest repository format version this crate reads and the one it writes.
pub const MAX_VERSION: u32 = 2;

/// The decoded `config` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Repository format version, 1 or 2.
    pub version: u32,
    /// Repository id; restic also names the local cache directory after it.
    pub id: String,
    /// Irreducible polynomial of degree 53 for the content-defined chunker.
    pub chunker_polynomial: Polynomial,
}

/// Why a `config` file's JSON was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The bytes are not the expected JSON object.
    #[error("parsing repository config json: {0}")]
    Json(String),
    /// The repository format version is outside 1..=2.
    #[error("reading repository config: unsupported repository version {0} (supported: 1 and 2)")]
    UnsupportedVersion(u32),
    /// The chunker polynomial is not valid hex or not irreducible.
    #[error("reading repository config: chunker polynomial {0:?} is not an irreducible polynomial")]
    ReduciblePolynomial(String),
    /// The chunker polynomial is irreducible but not of degree 53, which restic always uses
    /// and the chunker's tables assume.
    #[error(
        "reading repository config: chunker polynomial {polynomial} has degree {degree}, want 53"
    )]
    PolynomialDegree {
        /// The polynomial in hex.
        polynomial: String,
        /// Its degree.
        degree: i32,
    },
    /// The repository id is empty, too long or not safe as a directory name.
    #[error("reading repository config: invalid repository id {0:?}")]
    InvalidId(String),
}

/// Longest repository id accepted; restic writes 64 characters.
const MAX_ID_LEN: usize = 128;

#[derive(serde::Serialize, serde::Deserialize)]
struct ConfigJson {
    version: u32,
    id: String,
    chunker_polynomial: String,
}

impl Config {
    /// A fresh version-2 config: 32 random bytes as the 64-hex id and a random irreducible
    /// degree-53 polynomial.
    ///
    /// # Panics
    /// When the operating system's random number generator fails.
    pub fn new_v2() -> Config {
        let mut id = [0u8; 32];
        getrandom::fill(&mut id).expect("operating system random number generator failed");
        Config {
            version: 2,
            id: hex::encode(id),
            chunker_polynomial: Polynomial::random_irreducible(),
        }
    }

    /// restic's byte form: `{"version":2,"id":"..","chunker_polynomial":".."}` with no
    /// trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let json = ConfigJson {
            version: self.version,
            id: self.id.clone(),
            chunker_polynomial: self.chunker_polynomial.to_hex(),
        };
        // Serialising a struct of plain strings and integers cannot fail.
        serde_json::to_vec(&json).expect("config json serialisation cannot fail")
    }

    /// Parses and validates a decrypted `config` file.
    ///
    /// Accepts versions 1 and 2, an irreducible degree-53 polynomial written as hex, and a
    /// non-empty id of at most 128 ASCII letters, digits, `-` or `_` (restic writes 64 hex;
    /// the id becomes a cache directory name, so anything path-like is refused). Unknown
    /// fields are ignored.
    ///
    /// # Errors
    /// One [`ConfigError`] variant per rule above.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        let json: ConfigJson =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Json(e.to_string()))?;
        if !(MIN_VERSION..=MAX_VERSION).contains(&json.version) {
            return Err(ConfigError::UnsupportedVersion(json.version));
        }
        let id_ok = !json.id.is_empty()
            && json.id.len() <= MAX_ID_LEN
            && json
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(ConfigError::InvalidId(
                json.id.chars().take(MAX_ID_LEN).collect(),
            ));
        }
        let text: String = json.chunker_polynomial.chars().take(32).collect();
        let pol = Polynomial::from_hex(&json.chunker_polynomial)
            .filter(|p| p.is_irreducible())
            .ok_or(ConfigError::ReduciblePolynomial(text))?;
        if pol.degree() != CHUNKER_DEGREE {
            return Err(ConfigError::PolynomialDegree {
                polynomial: pol.to_hex(),
                degree: pol.degree(),
            });
        }
        Ok(Config {
            version: json.version,
            id: json.id,
            chunker_polynomial: pol,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &str = "5e6a0dd6a1b3e7c2f3b6d3a5d1e0f2b4c6a8e0d2f4b6a8c0e2d4f6a8b0c2e4f6";

    #[test]
    fn writes_restic_field_order() {
        let cfg = Config {
            version: 2,
            id: ID.to_string(),
            chunker_polynomial: Polynomial(0x3DA3358B4DC173),
        };
        let json = String::from_utf8(cfg.to_json()).unwrap();
        assert_eq!(
            json,
            format!(r#"{{"version":2,"id":"{ID}","chunker_polynomial":"3da3358b4dc173"}}"#)
        );
        assert_eq!(Config::from_json(json.as_bytes()).unwrap(), cfg);
    }

    #[test]
    fn new_v2_round_trips() {
        let cfg = Config::new_v2();
        assert_eq!(cfg.version, 2);
        assert_eq!(cfg.id.len(), 64);
        assert!(
            cfg.id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(Config::from_json(&cfg.to_json()).unwrap(), cfg);
    }

    #[test]
    fn tolerates_rustic_fields() {
        let json = format!(
            r#"{{"version":2,"id":"{ID}","chunker_polynomial":"3da3358b4dc173","compression":3,"treepack_size":null,"is_hot":false,"append_only":true}}"#
        );
        assert_eq!(Config::from_json(json.as_bytes()).unwrap().version, 2);
    }

    #[test]
    fn rejects_bad_configs() {
        let with = |version: &str, id: &str, pol: &str| {
            format!(r#"{{"version":{version},"id":"{id}","chunker_polynomial":"{pol}"}}"#)
        };
        let pol = "3da3358b4dc173";
        assert!(matches!(
            Config::from_json(with("3", ID, pol).as_bytes()),
            Err(ConfigError::UnsupportedVersion(3))
        ));
        assert!(matches!(
            Config::from_json(with("0", ID, pol).as_bytes()),
            Err(ConfigError::UnsupportedVersion(0))
        ));
        assert!(Config::from_json(with("1", ID, pol).as_bytes()).is_ok());
        for bad_pol in ["3da3358b4dc172", "", "xyz", "0x3da3358b4dc173", "0"] {
            assert!(
                matches!(
                    Config::from_json(with("2", ID, bad_pol).as_bytes()),
                    Err(ConfigError::ReduciblePolynomial(_))
                ),
                "{bad_pol}"
            );
        }
        assert!(matches!(
            Config::from_json(with("2", ID, "3").as_bytes()),
            Err(ConfigError::PolynomialDegree { degree: 1, .. })
        ));
        for bad_id in ["", "../x", "a/b", "a b"] {
            assert!(
                matches!(
                    Config::from_json(with("2", bad_id, pol).as_bytes()),
                    Err(ConfigError::InvalidId(_))
                ),
                "{bad_id}"
            );
        }
        for junk in [&b""[..], b"[]", b"{}", br#"{"version":"2"}"#, b"\xff"] {
            assert!(matches!(Config::from_json(junk), Err(ConfigError::Json(_))));
        }
    }

    proptest! {
        #[test]
        fn from_json_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Config::from_json(&data);
        }
    }
}
