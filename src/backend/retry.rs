//! Retrying store requests that failed for a reason that may pass.
//!
//! Server errors, throttling, timeouts, resets and refused connections are retried with
//! exponential backoff and full jitter, up to a bound; a missing object, a conflict, a refused
//! credential or a request the store does not support is final at once. Every retry is logged
//! at debug level with the operation and the object key.

use std::future::Future;
use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 disables retrying.
    pub max_retries: u32,
    /// The backoff before the first retry; each further retry doubles it.
    pub base: Duration,
    /// The longest backoff.
    pub cap: Duration,
}

impl RetryPolicy {
    /// No retries (local directories: a failing disk does not heal by waiting).
    pub const NONE: RetryPolicy = RetryPolicy {
        max_retries: 0,
        base: Duration::from_millis(0),
        cap: Duration::from_millis(0),
    };

    /// The default for network stores: 6 retries from 250 ms, doubling to at most 8 s
    /// (at most about 16 s of waiting in all).
    pub const NETWORK: RetryPolicy = RetryPolicy {
        max_retries: 6,
        base: Duration::from_millis(250),
        cap: Duration::from_secs(8),
    };

    /// The wait before retry number `attempt` (1-based): a random duration up to
    /// `min(cap, base · 2^(attempt-1))`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(
            1u32.checked_shl(attempt.saturating_sub(1))
                .unwrap_or(u32::MAX),
        );
        let ceiling = exp.min(self.cap);
        let mut r = [0u8; 8];
        // Jitter needs no cryptographic quality; without randomness, wait the full ceiling.
        let frac = match getrandom::fill(&mut r) {
            Ok(()) => (u64::from_le_bytes(r) >> 11) as f64 / (1u64 << 53) as f64,
            Err(_) => 1.0,
        };
        ceiling.mul_f64(frac)
    }
}

/// Whether an `object_store` error may pass on retry.
pub fn is_transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        E::NotFound { .. }
        | E::AlreadyExists { .. }
        | E::Precondition { .. }
        | E::NotModified { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::InvalidPath { .. }
        | E::UnknownConfigurationKey { .. } => false,
        E::Generic { source, .. } => !is_client_error(&source.to_string()),
        _ => true,
    }
}

/// A 4xx answer other than timeout (408) and throttling (429) will not change on retry.
/// `object_store` keeps its HTTP error type private, so the status is read from the message
/// it writes: `… status code: 400 Bad Request …`.
fn is_client_error(message: &str) -> bool {
    message
        .match_indices("status code: ")
        .filter_map(|(i, m)| message.get(i + m.len()..i + m.len() + 3))
        .any(|code| code.starts_with('4') && code != "408" && code != "429")
}

/// Runs `op` until it succeeds, fails for good, or the policy's retries are spent. `what`
/// and `key` name the request in the debug log.
pub async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    key: &str,
    mut op: F,
) -> Result<T, object_store::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, object_store::Error>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < policy.max_retries && is_transient(&e) => {
                attempt += 1;
                let wait = policy.backoff(attempt);
                tracing::debug!(
                    "{what} {key} failed ({e}); retry {attempt} of {} in {} ms",
                    policy.max_retries,
                    wait.as_millis()
                );
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn generic(msg: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "test",
            source: msg.to_string().into(),
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::NETWORK;
        for attempt in 1..20 {
            let w = p.backoff(attempt);
            assert!(w <= p.cap, "{attempt}: {w:?}");
            let ceiling = p.base * 2u32.saturating_pow(attempt - 1).min(1 << 20);
            assert!(w <= ceiling.min(p.cap));
        }
    }

    #[test]
    fn classification() {
        let status = |code: &str| {
            generic(&format!(
                "Error performing PUT http://h/b/k in 1ms - Server returned non-2xx status code: {code}: body"
            ))
        };
        assert!(is_transient(&status("503 Service Unavailable")));
        assert!(is_transient(&status("429 Too Many Requests")));
        assert!(is_transient(&status("408 Request Timeout")));
        assert!(!is_transient(&status("400 Bad Request")));
        assert!(is_transient(&generic(
            "error sending request: connection reset"
        )));
        assert!(!is_transient(&object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into()
        }));
        assert!(!is_transient(&object_store::Error::Unauthenticated {
            path: "x".into(),
            source: "bad key".into()
        }));
    }

    #[tokio::test]
    async fn retries_transient_failures_then_succeeds_and_stops_on_final_ones() {
        let policy = RetryPolicy {
            max_retries: 3,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
        };
        let calls = AtomicU32::new(0);
        let r = with_retries(&policy, "read", "k", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(generic("status code: 500 Internal Server Error"))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let r: Result<(), _> = with_retries(&policy, "read", "k", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(generic("status code: 500 Internal Server Error"))
        })
        .await;
        assert!(r.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "first try plus three retries"
        );

        let calls = AtomicU32::new(0);
        let r: Result<(), _> = with_retries(&policy, "read", "k", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(object_store::Error::NotFound {
                path: "k".into(),
                source: "no".into(),
            })
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
