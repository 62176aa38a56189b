//! Key files (`keys/<id>`): the master key wrapped under a password.
//!
//! A key file is plain JSON (neither encrypted nor compressed). Its `data` field is the master
//! key JSON sealed (see `crypto`) under a user key that scrypt derives from the password and
//! the file's 64-byte salt. This module owns that JSON, scrypt parameter checks (including a
//! memory budget against hostile files) and wrapping/unwrapping the master key. It does not
//! list or store key files, and it does not try several files in turn; callers do that and
//! skip files that fail with [`KeyError::WrongPassword`].

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::crypto::{CryptoError, Key};
use crate::kdf_memo::{Fingerprint, Memo};

/// Salt length restic requires.
pub const SALT_LEN: usize = 64;

/// The only key derivation function restic knows.
pub const KDF_SCRYPT: &str = "scrypt";

/// Most scrypt lanes (the `p` parameter's independent `ROMix` computations) run at once, each
/// on a thread of its own with its own `128·r·N`-byte table. `restic init` calibrates p to
/// about 9 on these machines; two lanes at a time halve the time that key takes to open
/// (0.46 s to 0.31 s measured) for one more table in memory (32 MiB at N=32768, r=8).
pub const KDF_LANES: u32 = 2;

/// Largest scrypt working set (`128·r·N + 128·r·p` bytes) a key file may ask for.
pub const MAX_KDF_BYTES: u64 = 4 << 30;

/// scrypt cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// CPU/memory cost; a power of two greater than 1.
    pub n: u64,
    /// Block size.
    pub r: u32,
    /// Parallelism.
    pub p: u32,
}

/// N=32768, r=8, p=1: 32 MiB and a fraction of a second, which keeps tests and CI fast.
impl Default for KdfParams {
    fn default() -> KdfParams {
        KdfParams {
            n: 32768,
            r: 8,
            p: 1,
        }
    }
}

impl KdfParams {
    /// Bytes scrypt allocates for these parameters (`128·r·N` for the table of each of the
    /// up to [`KDF_LANES`] lanes that run at once, plus `128·r·p` for the blocks), saturating.
    pub fn memory_bytes(&self) -> u64 {
        let r128 = 128u64.saturating_mul(u64::from(self.r));
        r128.saturating_mul(self.n)
            .saturating_mul(u64::from(self.lanes()))
            .saturating_add(r128.saturating_mul(u64::from(self.p)))
    }

    /// How many of scrypt's `p` independent lanes [`KeyFile::open`] runs at once.
    pub fn lanes(&self) -> u32 {
        self.p.clamp(1, KDF_LANES)
    }

    /// Checks the parameters without allocating and returns scrypt's.
    ///
    /// # Errors
    /// [`KeyError::InvalidParams`] unless N is a power of two above 1, r ≥ 1, p ≥ 1 and
    /// r·p < 2^30; [`KeyError::TooExpensive`] above [`MAX_KDF_BYTES`].
    pub fn validate(&self) -> Result<scrypt::Params, KeyError> {
        let invalid = KeyError::InvalidParams {
            n: self.n,
            r: self.r,
            p: self.p,
        };
        if self.n < 2
            || !self.n.is_power_of_two()
            || self.r == 0
            || self.p == 0
            || u64::from(self.r) * u64::from(self.p) >= 1 << 30
        {
            return Err(invalid);
        }
        let bytes = self.memory_bytes();
        if bytes > MAX_KDF_BYTES {
            return Err(KeyError::TooExpensive { bytes });
        }
        let log_n = u8::try_from(self.n.trailing_zeros()).map_err(|_| KeyError::InvalidParams {
            n: self.n,
            r: self.r,
            p: self.p,
        })?;
        scrypt::Params::new(log_n, self.r, self.p).map_err(|_| invalid)
    }
}

/// Why a key file could not be made or opened.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file's MAC did not verify under the derived user key.
    #[error("opening key file: wrong password or no key found")]
    WrongPassword,
    /// The key file names a KDF other than scrypt.
    #[error("opening key file: unsupported key derivation function {0:?}")]
    UnsupportedKdf(String),
    /// The scrypt parameters are out of range.
    #[error("scrypt parameters n={n} r={r} p={p} are invalid")]
    InvalidParams {
        /// scrypt N.
        n: u64,
        /// scrypt r.
        r: u32,
        /// scrypt p.
        p: u32,
    },
    /// The salt is not 64 bytes long.
    #[error("opening key file: salt is {len} bytes, want 64")]
    InvalidSalt {
        /// Length of the salt found.
        len: usize,
    },
    /// The scrypt parameters would need more memory than [`MAX_KDF_BYTES`].
    #[error("scrypt parameters need {bytes} bytes of memory, above the 4 GiB limit")]
    TooExpensive {
        /// Memory the parameters ask for.
        bytes: u64,
    },
    /// The key file is not the expected JSON.
    #[error("parsing key file json: {0}")]
    Json(String),
    /// The password was right but the wrapped master key is unusable.
    #[error("opening key file: bad master key: {0}")]
    MasterKey(String),
    /// scrypt itself refused to run.
    #[error("deriving key with scrypt: {0}")]
    Kdf(String),
}

/// One key file as stored in `keys/<id>`.
///
/// Field order is restic's (Go struct order), so [`KeyFile::to_json`] writes the same shape.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct KeyFile {
    /// Creation time, RFC 3339 (informational).
    pub created: String,
    /// User who created the key (informational).
    pub username: String,
    /// Host the key was created on (informational).
    pub hostname: String,
    /// Key derivation function; only `"scrypt"` is supported.
    pub kdf: String,
    /// scrypt N.
    #[serde(rename = "N")]
    pub n: u64,
    /// scrypt r.
    pub r: u32,
    /// scrypt p.
    pub p: u32,
    /// scrypt salt; standard base64 in JSON.
    #[serde(with = "base64_bytes")]
    pub salt: Vec<u8>,
    /// Sealed master key JSON (`IV ‖ CT ‖ MAC`); standard base64 in JSON.
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

impl KeyFile {
    /// Wraps `master` under `password` with a fresh 64-byte salt.
    ///
    /// # Errors
    /// [`KeyError::InvalidParams`] or [`KeyError::TooExpensive`] for bad `params`;
    /// [`KeyError::Kdf`] if scrypt fails.
    ///
    /// # Panics
    /// When the operating system's random number generator fails.
    pub fn create(
        master: &Key,
        password: &[u8],
        params: KdfParams,
        username: &str,
        hostname: &str,
        created: &str,
    ) -> Result<KeyFile, KeyError> {
        let scrypt_params = params.validate()?;
        let mut salt = vec![0u8; SALT_LEN];
        getrandom::fill(&mut salt).expect("operating system random number generator failed");
        let user = derive(password, &salt, &scrypt_params)?;
        let mut plain = master.to_master_json();
        let data = user.seal(&plain);
        plain.fill(0);
        Ok(KeyFile {
            created: created.to_string(),
            username: username.to_string(),
            hostname: hostname.to_string(),
            kdf: KDF_SCRYPT.to_string(),
            n: params.n,
            r: params.r,
            p: params.p,
            salt,
            data,
        })
    }

    /// The JSON stored as `keys/<id>` (the id is the SHA-256 of exactly these bytes), with
    /// fields in restic's order: created, username, hostname, kdf, N, r, p, salt, data.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings, integers and base64 text always serialise.
        serde_json::to_vec(self).expect("key file json serialisation cannot fail")
    }

    /// Parses a key file; unknown fields are ignored. Nothing is validated beyond the JSON
    /// shape and base64; [`KeyFile::open`] checks the rest.
    ///
    /// # Errors
    /// [`KeyError::Json`].
    pub fn from_json(bytes: &[u8]) -> Result<KeyFile, KeyError> {
        serde_json::from_slice(bytes).map_err(|e| KeyError::Json(e.to_string()))
    }

    /// The scrypt parameters this file was written with.
    pub fn params(&self) -> KdfParams {
        KdfParams {
            n: self.n,
            r: self.r,
            p: self.p,
        }
    }

    /// Derives the user key from `password` with scrypt and unwraps the master key.
    ///
    /// Every check that needs no work (KDF name, parameters, memory budget, salt length) runs
    /// before scrypt allocates anything. A user key this process derived before for the same
    /// password, salt and parameters is taken from [`Memo::global`] instead of running scrypt
    /// again; a key is remembered only once it has opened the master key.
    ///
    /// # Errors
    /// [`KeyError::WrongPassword`] when the MAC fails (wrong password, or a file for another
    /// repository); [`KeyError::UnsupportedKdf`], [`KeyError::InvalidParams`],
    /// [`KeyError::TooExpensive`], [`KeyError::InvalidSalt`] for unusable files;
    /// [`KeyError::MasterKey`] when the unwrapped key is unreadable or invalid.
    pub fn open(&self, password: &[u8]) -> Result<Key, KeyError> {
        self.open_with(password, Memo::global())
    }

    /// [`KeyFile::open`] with user keys remembered in and recalled from `memo`.
    ///
    /// # Errors
    /// As [`KeyFile::open`].
    pub fn open_with(&self, password: &[u8], memo: &Memo) -> Result<Key, KeyError> {
        if self.kdf != KDF_SCRYPT {
            return Err(KeyError::UnsupportedKdf(
                self.kdf.chars().take(64).collect(),
            ));
        }
        let scrypt_params = self.params().validate()?;
        if self.salt.len() != SALT_LEN {
            return Err(KeyError::InvalidSalt {
                len: self.salt.len(),
            });
        }
        let fingerprint = Fingerprint::of(password, &self.salt, self.params());
        let remembered = memo.recall(&fingerprint);
        let user = match &remembered {
            Some(key) => key.clone(),
            None => derive(password, &self.salt, &scrypt_params)?,
        };
        let mut plain = user.open(&self.data).map_err(|e| match e {
            CryptoError::Unauthenticated => KeyError::WrongPassword,
            other => KeyError::MasterKey(other.to_string()),
        })?;
        if remembered.is_none() {
            memo.remember(fingerprint, &user);
        }
        let master = Key::from_master_json(&plain).map_err(|e| KeyError::MasterKey(e.to_string()));
        plain.fill(0);
        master
    }
}

/// Runs scrypt with a 64-byte output, its lanes on a pool of at most [`KDF_LANES`] threads
/// of its own (so that the memory [`KdfParams::memory_bytes`] states holds on any machine),
/// and splits the output into a user key.
fn derive(password: &[u8], salt: &[u8], params: &scrypt::Params) -> Result<Key, KeyError> {
    let lanes = params.p().clamp(1, KDF_LANES);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(lanes as usize)
        .thread_name(|i| format!("ferry-kdf-{i}"))
        .build()
        .map_err(|e| KeyError::Kdf(format!("starting {lanes} scrypt threads: {e}")))?;
    let mut out = [0u8; 64];
    pool.install(|| scrypt::scrypt(password, salt, params, &mut out))
        .map_err(|e| KeyError::Kdf(e.to_string()))?;
    let key = Key::from_kdf_output(&out);
    out.fill(0);
    Ok(key)
}

/// `Vec<u8>` as standard base64 with padding, like Go's `encoding/json` does for `[]byte`.
mod base64_bytes {
    use super::{B64, Engine};

    pub(super) fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        B64.decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use proptest::prelude::*;

    /// Cheap parameters so the tests do not spend their time in scrypt.
    const FAST: KdfParams = KdfParams {
        n: 1024,
        r: 8,
        p: 1,
    };

    fn key_file() -> (Key, KeyFile) {
        let master = Key::random();
        let kf = KeyFile::create(
            &master,
            b"secret",
            FAST,
            "me",
            "box",
            "2024-05-01T10:00:00Z",
        )
        .unwrap();
        (master, kf)
    }

    #[test]
    fn create_open_round_trip_through_json() {
        let (master, kf) = key_file();
        let json = kf.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.starts_with(
            r#"{"created":"2024-05-01T10:00:00Z","username":"me","hostname":"box","kdf":"scrypt","N":1024,"r":8,"p":1,"salt":""#
        ));
        let back = KeyFile::from_json(&json).unwrap();
        assert_eq!(back.salt.len(), SALT_LEN);
        assert_eq!(back.params(), FAST);
        assert_eq!(back.open(b"secret").unwrap(), master);
    }

    #[test]
    fn default_params_work() {
        let master = Key::random();
        let kf = KeyFile::create(&master, b"pw", KdfParams::default(), "u", "h", "t").unwrap();
        assert_eq!(kf.open(b"pw").unwrap(), master);
    }

    #[test]
    fn wrong_password_is_reported() {
        let (_, kf) = key_file();
        let err = kf.open(b"Secret").unwrap_err();
        assert!(matches!(err, KeyError::WrongPassword));
        assert_eq!(
            err.to_string(),
            "opening key file: wrong password or no key found"
        );
    }

    #[test]
    fn only_keys_that_open_the_file_are_remembered() {
        let (master, kf) = key_file();
        let memo = &Memo::new(2);
        let right = Fingerprint::of(b"secret", &kf.salt, kf.params());
        let wrong = Fingerprint::of(b"Secret", &kf.salt, kf.params());
        assert!(kf.open_with(b"Secret", memo).is_err());
        assert!(memo.recall(&wrong).is_none());
        assert_eq!(kf.open_with(b"secret", memo).unwrap(), master);
        let remembered = memo.recall(&right).expect("the user key is remembered");
        // The remembered key is scrypt's own result, and opening with it still checks the
        // file: a changed sealed master key fails its MAC on the remembered path too.
        let params = kf.params().validate().unwrap();
        assert_eq!(remembered, derive(b"secret", &kf.salt, &params).unwrap());
        assert_eq!(kf.open_with(b"secret", memo).unwrap(), master);
        let mut tampered = kf.clone();
        tampered.data[20] ^= 1;
        let opened = tampered.open_with(b"secret", memo);
        assert!(matches!(opened, Err(KeyError::WrongPassword)));
        assert!(
            kf.open_with(b"Secret", memo).is_err(),
            "a wrong password still misses"
        );
        assert!(memo.recall(&wrong).is_none());
    }

    #[test]
    fn bad_salt_is_rejected() {
        let (_, mut kf) = key_file();
        for len in [0, 32, 63, 65] {
            kf.salt = vec![1; len];
            assert!(
                matches!(kf.open(b"secret"), Err(KeyError::InvalidSalt { len: l }) if l == len)
            );
        }
    }

    #[test]
    fn hostile_params_are_rejected_without_work() {
        let (_, kf) = key_file();
        let with = |n: u64, r: u32, p: u32| KeyFile {
            n,
            r,
            p,
            ..kf.clone()
        };
        // Lanes that run at once each hold a table: one 2 GiB table fits the budget, two do
        // not, and more lanes than run at once cost only their blocks.
        let big = KdfParams {
            n: 1 << 21,
            r: 8,
            p: 1,
        };
        assert!(big.validate().is_ok());
        assert!(matches!(
            KdfParams { p: 2, ..big }.validate(),
            Err(KeyError::TooExpensive { bytes }) if bytes == (4 << 30) + 2048
        ));
        let restic = KdfParams { p: 9, ..FAST };
        assert_eq!(restic.lanes(), KDF_LANES);
        assert_eq!(restic.memory_bytes(), 2 * 128 * 8 * 1024 + 9 * 128 * 8);
        // These would take gigabytes or hours if scrypt ran; they must fail at once.
        assert!(matches!(
            with(1 << 40, 8, 1).open(b"x"),
            Err(KeyError::TooExpensive { .. })
        ));
        assert!(matches!(
            with(1 << 62, 1, 1).open(b"x"),
            Err(KeyError::TooExpensive { .. })
        ));
        assert!(matches!(
            with(1 << 63, u32::MAX, u32::MAX).open(b"x"),
            Err(KeyError::InvalidParams { .. })
        ));
        assert!(
            matches!(with(1 << 22, 8, 1).open(b"x"), Err(KeyError::TooExpensive { bytes }) if bytes > MAX_KDF_BYTES)
        );
        for (n, r, p) in [
            (0, 8, 1),
            (1, 8, 1),
            (1000, 8, 1),
            (1024, 0, 1),
            (1024, 8, 0),
            (2, 1 << 15, 1 << 15),
        ] {
            assert!(
                matches!(
                    with(n, r, p).open(b"x"),
                    Err(KeyError::InvalidParams { .. })
                ),
                "{n} {r} {p}"
            );
        }
        let mut other = kf.clone();
        other.kdf = "argon2".into();
        assert!(matches!(other.open(b"x"), Err(KeyError::UnsupportedKdf(_))));
    }

    #[test]
    fn damaged_data_is_reported() {
        let (_, mut kf) = key_file();
        kf.data.truncate(10);
        assert!(matches!(kf.open(b"secret"), Err(KeyError::MasterKey(_))));
        let (_, mut kf) = key_file();
        let last = kf.data.len() - 1;
        kf.data[last] ^= 1;
        assert!(matches!(kf.open(b"secret"), Err(KeyError::WrongPassword)));
    }

    #[test]
    fn bad_json_is_rejected() {
        assert!(matches!(KeyFile::from_json(b"{}"), Err(KeyError::Json(_))));
        let (_, kf) = key_file();
        let text = String::from_utf8(kf.to_json())
            .unwrap()
            .replace(r#""salt":""#, r#""salt":"!"#);
        assert!(matches!(
            KeyFile::from_json(text.as_bytes()),
            Err(KeyError::Json(_))
        ));
    }

    /// Opens a key file and config written by the real `restic` binary, when installed.
    #[test]
    fn opens_repository_made_by_restic() {
        let Ok(path) = std::env::var("PATH") else {
            return;
        };
        if !std::env::split_paths(&path).any(|d| d.join("restic").is_file()) {
            eprintln!("restic not on PATH; skipping the interoperability test");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let status = std::process::Command::new("restic")
            .arg("-r")
            .arg(&repo)
            .arg("init")
            .env("RESTIC_PASSWORD", "correct horse")
            .env("RESTIC_CACHE_DIR", dir.path().join("cache"))
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let keys: Vec<_> = std::fs::read_dir(repo.join("keys")).unwrap().collect();
        assert_eq!(keys.len(), 1);
        let key_json = std::fs::read(keys[0].as_ref().unwrap().path()).unwrap();
        let kf = KeyFile::from_json(&key_json).unwrap();
        assert!(matches!(kf.open(b"wrong"), Err(KeyError::WrongPassword)));
        let master = kf.open(b"correct horse").unwrap();
        let sealed = std::fs::read(repo.join("config")).unwrap();
        let config = Config::from_json(&master.open(&sealed).unwrap()).unwrap();
        assert_eq!(config.version, 2);
        assert_eq!(config.id.len(), 64);
        // Our own re-wrap of restic's master key must open too.
        let again = KeyFile::create(&master, b"second", FAST, "u", "h", "t").unwrap();
        assert_eq!(again.open(b"second").unwrap(), master);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn from_json_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(kf) = KeyFile::from_json(&data) {
                let _ = kf.open(b"pw");
            }
        }

        #[test]
        fn any_password_round_trips(password in proptest::collection::vec(any::<u8>(), 0..40)) {
            let master = Key::random();
            let kf = KeyFile::create(&master, &password, KdfParams { n: 16, r: 1, p: 1 }, "", "", "").unwrap();
            let back = KeyFile::from_json(&kf.to_json()).unwrap();
            prop_assert_eq!(back.open(&password).unwrap(), master);
        }
    }
}
