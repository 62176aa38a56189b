//! Identifiers of repository objects.
//!
//! Every object in a restic repository is named by a 32-byte SHA-256 digest written as 64
//! lowercase hex characters. [`Id`] is that digest; [`BlobId`], [`TreeId`], [`PackId`],
//! [`SnapshotId`], [`IndexId`], [`KeyId`] and [`LockId`] are distinct newtypes over it so that
//! a tree id cannot be passed where a pack id is expected. This module does no I/O.

use std::fmt;

use sha2::{Digest, Sha256};

/// Length of an id in bytes.
pub const ID_LEN: usize = 32;

/// A 32-byte SHA-256 digest naming a repository object.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Id(pub [u8; ID_LEN]);

/// The SHA-256 of bytes given in pieces ([`Id::hasher`]).
#[derive(Clone, Default)]
pub struct IdHasher(Sha256);

impl IdHasher {
    /// Adds the next piece.
    pub fn update(&mut self, piece: &[u8]) {
        self.0.update(piece);
    }

    /// The id of every piece so far, in order; the hasher starts over.
    pub fn finish_reset(&mut self) -> Id {
        Id(self.0.finalize_reset().into())
    }
}

/// Why a string is not an id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid id {text:?}: expected 64 hexadecimal characters")]
pub struct ParseIdError {
    /// The text that failed to parse (at most its first 80 characters).
    pub text: String,
}

impl Id {
    /// The SHA-256 of `data`.
    pub fn hash(data: &[u8]) -> Id {
        Id(Sha256::digest(data).into())
    }

    /// A hasher for an object whose bytes come in pieces: the id of their concatenation.
    pub fn hasher() -> IdHasher {
        IdHasher(Sha256::new())
    }

    /// The null id (all zero bytes); restic names the config file with it.
    pub const NULL: Id = Id([0; ID_LEN]);

    /// Parses 64 hex characters (either case).
    pub fn parse(text: &str) -> Result<Id, ParseIdError> {
        let mut out = [0u8; ID_LEN];
        match hex::decode_to_slice(text, &mut out) {
            Ok(()) => Ok(Id(out)),
            Err(_) => Err(ParseIdError {
                text: text.chars().take(80).collect(),
            }),
        }
    }

    /// The 64-character lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The 8-character prefix restic shows as a short id.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// Whether this is the all-zero id.
    pub fn is_null(&self) -> bool {
        self.0 == [0; ID_LEN]
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.short())
    }
}

impl std::str::FromStr for Id {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Id, ParseIdError> {
        Id::parse(s)
    }
}

impl serde::Serialize for Id {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Id {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Id::parse(&text).map_err(serde::de::Error::custom)
    }
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Id);

        impl $name {
            /// The 64-character lowercase hex form.
            pub fn to_hex(&self) -> String {
                self.0.to_hex()
            }
            /// The 8-character short form.
            pub fn short(&self) -> String {
                self.0.short()
            }
            /// Parses 64 hex characters.
            pub fn parse(text: &str) -> Result<Self, ParseIdError> {
                Id::parse(text).map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.short())
            }
        }

        impl From<Id> for $name {
            fn from(id: Id) -> Self {
                $name(id)
            }
        }

        impl From<$name> for Id {
            fn from(id: $name) -> Id {
                id.0
            }
        }
    };
}

typed_id!(
    /// The id of a data blob: SHA-256 of its uncompressed plaintext.
    BlobId
);
typed_id!(
    /// The id of a tree blob: SHA-256 of its JSON bytes.
    TreeId
);
typed_id!(
    /// The id of a pack file: SHA-256 of the whole file.
    PackId
);
typed_id!(
    /// The id of a snapshot file: SHA-256 of its encrypted bytes.
    SnapshotId
);
typed_id!(
    /// The id of an index file: SHA-256 of its encrypted bytes.
    IndexId
);
typed_id!(
    /// The id of a key file: SHA-256 of its JSON bytes.
    KeyId
);
typed_id!(
    /// The id of a lock file: SHA-256 of its encrypted bytes.
    LockId
);

/// The two kinds of blob; data and tree blobs live in separate namespaces.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum BlobType {
    /// File content.
    Data,
    /// A directory listing (tree JSON).
    Tree,
}

impl BlobType {
    /// The word restic uses in index JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            BlobType::Data => "data",
            BlobType::Tree => "tree",
        }
    }
}

impl fmt::Display for BlobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_tree_id_matches_restic() {
        let id = Id::hash(b"{\"nodes\":[]}\n");
        assert_eq!(
            id.to_hex(),
            "ac08ce34ba4f8123618661bef2425f7028ffb9ac740578a3ee88684d2523fee8"
        );
    }

    #[test]
    fn zero_chunk_id_matches_restic() {
        let id = Id::hash(&vec![0u8; 512 * 1024]);
        assert_eq!(
            id.to_hex(),
            "07854d2fef297a06ba81685e660c332de36d5d18d546927d30daad6d7fda1541"
        );
    }

    #[test]
    fn parse_round_trips_and_rejects_garbage() {
        let id = Id::hash(b"x");
        assert_eq!(Id::parse(&id.to_hex()).unwrap(), id);
        assert!(Id::parse("abc").is_err());
        assert!(Id::parse(&"g".repeat(64)).is_err());
        assert_eq!(id.short().len(), 8);
    }
}
