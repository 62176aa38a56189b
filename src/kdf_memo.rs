//! A process-wide memo of password-derived user keys, so that a long-running agent or
//! coordinator that opens the same repository with the same password job after job runs
//! scrypt once rather than once per job.
//!
//! scrypt is meant to be slow: with the parameters `restic init` calibrates (N=32768, r=8,
//! p≈9 on these machines) one derivation takes about 0.3 s of two cores and 64 MiB, which
//! is more than a whole unchanged re-snapshot of a small volume costs. The memo maps a
//! fingerprint of (password, salt, N, r, p) to the user key scrypt produced for them; the
//! result is a pure function of those inputs, so a hit returns exactly what scrypt would.
//!
//! Contracts:
//! - Only keys that opened their key file's sealed master key are remembered
//!   ([`Memo::remember`] is called after the MAC check), so a wrong password never enters the memo and a
//!   lookup with one always misses: the password is checked by scrypt every time it is new.
//! - The fingerprint is SHA-256 over a random per-process secret followed by the inputs, so
//!   what the memo holds is not a fast hash of the password that could be attacked offline
//!   with precomputed tables; the password itself is never stored.
//! - [`Memo::global`] holds at most [`CAPACITY`] keys; the least recently used is dropped first.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

use crate::crypto::Key;
use crate::keyfile::KdfParams;

/// Most user keys held at once: one per (repository key file, password) a process uses.
pub const CAPACITY: usize = 8;

/// Identifies one scrypt derivation without holding its password.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fingerprint(..)")
    }
}

impl Fingerprint {
    /// The fingerprint of deriving a key from `password` with `salt` and `params`.
    pub fn of(password: &[u8], salt: &[u8], params: KdfParams) -> Fingerprint {
        let mut h = Sha256::new();
        h.update(secret());
        h.update(params.n.to_le_bytes());
        h.update(params.r.to_le_bytes());
        h.update(params.p.to_le_bytes());
        // Lengths first, so that no two (salt, password) pairs feed the same bytes.
        h.update((salt.len() as u64).to_le_bytes());
        h.update(salt);
        h.update((password.len() as u64).to_le_bytes());
        h.update(password);
        Fingerprint(h.finalize().into())
    }
}

/// A bounded, least-recently-used map from [`Fingerprint`] to user key.
pub struct Memo {
    entries: Mutex<VecDeque<(Fingerprint, Key)>>,
    capacity: usize,
}

impl Memo {
    /// An empty memo holding at most `capacity` keys.
    pub fn new(capacity: usize) -> Memo {
        Memo {
            entries: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    /// The memo the whole process shares, holding at most [`CAPACITY`] keys.
    pub fn global() -> &'static Memo {
        static MEMO: OnceLock<Memo> = OnceLock::new();
        MEMO.get_or_init(|| Memo::new(CAPACITY))
    }

    /// The key remembered for `fp`, if any; a hit becomes the most recently used entry.
    pub fn recall(&self, fp: &Fingerprint) -> Option<Key> {
        let mut entries = self.lock();
        let at = entries.iter().position(|(f, _)| f == fp)?;
        let entry = entries.remove(at)?;
        let key = entry.1.clone();
        entries.push_front(entry);
        Some(key)
    }

    /// Remembers `key` as the result of the derivation `fp`, dropping the least recently
    /// used entry when the memo is full. Callers pass only keys that opened their key file.
    pub fn remember(&self, fp: Fingerprint, key: &Key) {
        let mut entries = self.lock();
        entries.retain(|(f, _)| *f != fp);
        entries.push_front((fp, key.clone()));
        entries.truncate(self.capacity);
    }

    /// The entries. Poisoning is ignored: every step of a change leaves a list of distinct
    /// fingerprints with valid keys, whatever point a panic stopped it at.
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Fingerprint, Key)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Random bytes drawn once per process.
///
/// # Panics
/// When the operating system's random number generator fails.
fn secret() -> &'static [u8; 32] {
    static SECRET: OnceLock<[u8; 32]> = OnceLock::new();
    SECRET.get_or_init(|| {
        let mut s = [0u8; 32];
        getrandom::fill(&mut s).expect("operating system random number generator failed");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: KdfParams = KdfParams {
        n: 1024,
        r: 8,
        p: 1,
    };

    /// A fresh random salt.
    fn salt() -> Vec<u8> {
        let mut s = vec![0u8; 64];
        getrandom::fill(&mut s).unwrap();
        s
    }

    #[test]
    fn fingerprints_tell_every_input_apart() {
        let s = salt();
        let base = Fingerprint::of(b"pw", &s, PARAMS);
        assert_eq!(base, Fingerprint::of(b"pw", &s, PARAMS));
        assert_ne!(base, Fingerprint::of(b"pW", &s, PARAMS));
        assert_ne!(base, Fingerprint::of(b"pw", &salt(), PARAMS));
        for other in [
            KdfParams { n: 2048, ..PARAMS },
            KdfParams { r: 4, ..PARAMS },
            KdfParams { p: 2, ..PARAMS },
        ] {
            assert_ne!(base, Fingerprint::of(b"pw", &s, other));
        }
        // Moving a byte from the salt to the password changes the fingerprint.
        let (a, b) = s.split_at(63);
        let mut pw = b.to_vec();
        pw.extend_from_slice(b"pw");
        assert_ne!(base, Fingerprint::of(&pw, a, PARAMS));
        assert_eq!(format!("{base:?}"), "Fingerprint(..)");
    }

    #[test]
    fn remembered_keys_are_recalled_and_others_miss() {
        let memo = Memo::new(CAPACITY);
        let s = salt();
        let fp = Fingerprint::of(b"pw", &s, PARAMS);
        assert!(memo.recall(&fp).is_none());
        let key = Key::random();
        memo.remember(fp, &key);
        assert_eq!(memo.recall(&fp), Some(key.clone()));
        assert!(
            memo.recall(&Fingerprint::of(b"other", &s, PARAMS))
                .is_none()
        );
        // Remembering again replaces rather than duplicates.
        let newer = Key::random();
        memo.remember(fp, &newer);
        assert_eq!(memo.recall(&fp), Some(newer));
        assert_eq!(memo.lock().len(), 1);
    }

    #[test]
    fn the_least_recently_used_key_is_dropped_first() {
        let memo = Memo::new(3);
        let s = salt();
        let fps: Vec<Fingerprint> = (0..4u32)
            .map(|i| Fingerprint::of(&i.to_le_bytes(), &s, PARAMS))
            .collect();
        let keys: Vec<Key> = fps.iter().map(|_| Key::random()).collect();
        for (fp, key) in fps[..3].iter().zip(&keys) {
            memo.remember(*fp, key);
        }
        // Touching the oldest makes the second the least recently used.
        assert_eq!(memo.recall(&fps[0]).as_ref(), Some(&keys[0]));
        memo.remember(fps[3], &keys[3]);
        assert!(memo.recall(&fps[1]).is_none());
        for i in [0, 2, 3] {
            assert_eq!(memo.recall(&fps[i]).as_ref(), Some(&keys[i]), "entry {i}");
        }
        assert_eq!(memo.lock().len(), 3);
    }
}
