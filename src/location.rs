//! Repository locations: restic's syntax and `object_store`'s URLs, parsed into one form.
//!
//! Accepted: a path (`/path`, `relative/path`), `local:/path`, `file:///path`, `memory:`,
//! `s3:https://host[:port]/bucket[/prefix]` (also `http://`, and `s3:host/bucket/prefix`, which
//! means https), `s3://bucket/prefix`, `gs:bucket:/prefix`, `gs://bucket/prefix`,
//! `azure:container:/prefix`, `az://container/prefix` and `azure://container/prefix`. This
//! module only parses; connecting is `backend`'s job. A location never carries credentials: a
//! user-info part in an endpoint is refused, so a secret cannot leak through messages that
//! name the location.

use std::fmt;
use std::path::PathBuf;

/// Where a repository lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local directory (absolute or relative to the working directory).
    Local(PathBuf),
    /// An in-process store, empty at start (for tests).
    Memory,
    /// Amazon S3 or an S3-compatible store.
    S3 {
        /// `scheme://host[:port]` of an S3-compatible store; `None` for AWS itself.
        endpoint: Option<String>,
        /// The bucket.
        bucket: String,
        /// The key prefix inside the bucket, without leading or trailing `/` (may be empty).
        prefix: String,
    },
    /// Google Cloud Storage.
    Gcs {
        /// The bucket.
        bucket: String,
        /// The key prefix.
        prefix: String,
    },
    /// Azure Blob Storage.
    Azure {
        /// The container.
        container: String,
        /// The key prefix.
        prefix: String,
    },
}

/// Why a location string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid repository location {location:?}: {reason}")]
pub struct LocationError {
    /// The location as given (with any user-info part removed).
    pub location: String,
    /// What is wrong with it.
    pub reason: String,
}

fn err(location: &str, reason: impl Into<String>) -> LocationError {
    LocationError {
        location: redact(location),
        reason: reason.into(),
    }
}

/// Removes a `user:secret@` part from a URL-like string, for messages.
fn redact(s: &str) -> String {
    if let Some(scheme_end) = s.find("://") {
        let rest = &s[scheme_end + 3..];
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{}://***@{}", &s[..scheme_end], &rest[at + 1..]);
        }
    }
    s.to_string()
}

fn trim_prefix(p: &str) -> String {
    p.trim_matches('/').to_string()
}

/// Splits `bucket/prefix/...` into the bucket and the prefix.
fn bucket_and_prefix(location: &str, rest: &str) -> Result<(String, String), LocationError> {
    let rest = rest.trim_start_matches('/');
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(err(location, "no bucket given"));
    }
    // No bucket or container name holds an `@`: in `s3://key:secret@bucket/…` it marks a
    // user-info part, which an HTTP client would otherwise carry into its logs.
    if bucket.contains('@') {
        return Err(err(
            location,
            "credentials in the location are not accepted; give them in the environment",
        ));
    }
    Ok((bucket.to_string(), trim_prefix(prefix)))
}

/// Splits restic's `name:/prefix` form.
fn colon_form(location: &str, rest: &str, what: &str) -> Result<(String, String), LocationError> {
    let (name, prefix) = rest.split_once(':').unwrap_or((rest, ""));
    if name.is_empty() {
        return Err(err(location, format!("no {what} given")));
    }
    Ok((name.to_string(), trim_prefix(prefix)))
}

impl Location {
    /// Parses a location string.
    pub fn parse(s: &str) -> Result<Location, LocationError> {
        if s.is_empty() {
            return Err(err(s, "empty"));
        }
        if s == "memory:" {
            return Ok(Location::Memory);
        }
        if let Some(rest) = s.strip_prefix("local:") {
            return local(s, rest);
        }
        if let Some(rest) = s.strip_prefix("file://") {
            return local(s, rest);
        }
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = bucket_and_prefix(s, rest)?;
            return Ok(Location::S3 {
                endpoint: None,
                bucket,
                prefix,
            });
        }
        if let Some(rest) = s.strip_prefix("s3:") {
            return s3(s, rest);
        }
        if let Some(rest) = s.strip_prefix("gs://") {
            let (bucket, prefix) = bucket_and_prefix(s, rest)?;
            return Ok(Location::Gcs { bucket, prefix });
        }
        if let Some(rest) = s.strip_prefix("gs:") {
            let (bucket, prefix) = colon_form(s, rest, "bucket")?;
            return Ok(Location::Gcs { bucket, prefix });
        }
        for scheme in ["az://", "azure://"] {
            if let Some(rest) = s.strip_prefix(scheme) {
                let (container, prefix) = bucket_and_prefix(s, rest)?;
                return Ok(Location::Azure { container, prefix });
            }
        }
        if let Some(rest) = s.strip_prefix("azure:") {
            let (container, prefix) = colon_form(s, rest, "container")?;
            return Ok(Location::Azure { container, prefix });
        }
        for unsupported in [
            "rest:", "sftp:", "b2:", "swift:", "rclone:", "http://", "https://",
        ] {
            if s.starts_with(unsupported) {
                return Err(err(
                    s,
                    format!(
                        "{unsupported} repositories are not supported; use a directory, s3:, gs: or azure:"
                    ),
                ));
            }
        }
        if s.contains("://") {
            return Err(err(s, "unknown URL scheme"));
        }
        Ok(Location::Local(PathBuf::from(s)))
    }
}

fn local(s: &str, rest: &str) -> Result<Location, LocationError> {
    if rest.is_empty() {
        return Err(err(s, "no path given"));
    }
    Ok(Location::Local(PathBuf::from(rest)))
}

/// restic's `s3:` forms: `s3:https://host[:port]/bucket/prefix`, `s3:host/bucket/prefix`.
fn s3(s: &str, rest: &str) -> Result<Location, LocationError> {
    let (scheme, after) = if let Some(a) = rest.strip_prefix("https://") {
        ("https", a)
    } else if let Some(a) = rest.strip_prefix("http://") {
        ("http", a)
    } else {
        ("https", rest)
    };
    let (host, path) = after.split_once('/').unwrap_or((after, ""));
    if host.is_empty() {
        return Err(err(s, "no host given"));
    }
    if host.contains('@') {
        return Err(err(
            s,
            "credentials in the location are not accepted; use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ));
    }
    let (bucket, prefix) = bucket_and_prefix(s, path)?;
    let aws = host == "s3.amazonaws.com"
        || (host.starts_with("s3.") && host.ends_with(".amazonaws.com") && scheme == "https");
    Ok(Location::S3 {
        endpoint: if aws {
            None
        } else {
            Some(format!("{scheme}://{host}"))
        },
        bucket,
        prefix,
    })
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slash = |p: &str| {
            if p.is_empty() {
                String::new()
            } else {
                format!("/{p}")
            }
        };
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Memory => write!(f, "memory:"),
            Location::S3 {
                endpoint: Some(e),
                bucket,
                prefix,
            } => write!(f, "s3:{e}/{bucket}{}", slash(prefix)),
            Location::S3 {
                endpoint: None,
                bucket,
                prefix,
            } => write!(f, "s3:s3.amazonaws.com/{bucket}{}", slash(prefix)),
            Location::Gcs { bucket, prefix } => write!(f, "gs:{bucket}:/{prefix}"),
            Location::Azure { container, prefix } => write!(f, "azure:{container}:/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(endpoint: Option<&str>, bucket: &str, prefix: &str) -> Location {
        Location::S3 {
            endpoint: endpoint.map(str::to_string),
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn restic_forms() {
        assert_eq!(
            Location::parse("/srv/repo").unwrap(),
            Location::Local("/srv/repo".into())
        );
        assert_eq!(
            Location::parse("local:/srv/repo").unwrap(),
            Location::Local("/srv/repo".into())
        );
        assert_eq!(
            Location::parse("s3:https://minio.lab:9000/bkt/a/b").unwrap(),
            s3(Some("https://minio.lab:9000"), "bkt", "a/b")
        );
        assert_eq!(
            Location::parse("s3:http://127.0.0.1:4566/bkt").unwrap(),
            s3(Some("http://127.0.0.1:4566"), "bkt", "")
        );
        assert_eq!(
            Location::parse("s3:s3.amazonaws.com/bkt/prefix").unwrap(),
            s3(None, "bkt", "prefix")
        );
        assert_eq!(
            Location::parse("s3:rgw.example.org/bkt/p/").unwrap(),
            s3(Some("https://rgw.example.org"), "bkt", "p")
        );
        assert_eq!(
            Location::parse("gs:bkt:/prefix/x").unwrap(),
            Location::Gcs {
                bucket: "bkt".into(),
                prefix: "prefix/x".into()
            }
        );
        assert_eq!(
            Location::parse("azure:cont:/").unwrap(),
            Location::Azure {
                container: "cont".into(),
                prefix: "".into()
            }
        );
    }

    #[test]
    fn object_store_urls() {
        assert_eq!(Location::parse("s3://bkt/p").unwrap(), s3(None, "bkt", "p"));
        assert_eq!(
            Location::parse("gs://bkt").unwrap(),
            Location::Gcs {
                bucket: "bkt".into(),
                prefix: "".into()
            }
        );
        assert_eq!(
            Location::parse("az://c/p").unwrap(),
            Location::Azure {
                container: "c".into(),
                prefix: "p".into()
            }
        );
        assert_eq!(
            Location::parse("file:///tmp/r").unwrap(),
            Location::Local("/tmp/r".into())
        );
        assert_eq!(Location::parse("memory:").unwrap(), Location::Memory);
    }

    #[test]
    fn refusals_name_the_problem_and_hide_secrets() {
        assert!(Location::parse("s3:https:///bkt").is_err());
        assert!(Location::parse("s3://").is_err());
        assert!(Location::parse("sftp:host:/x").is_err());
        assert!(Location::parse("ftp://host/x").is_err());
        for url in [
            "s3:https://key:secret@host/bkt",
            "s3://key:secret@bkt/p",
            "gs://key:secret@bkt/p",
            "az://key:secret@container/p",
            "azure://key:secret@container/p",
        ] {
            let e = Location::parse(url).unwrap_err();
            assert!(!e.to_string().contains("secret"), "{e}");
            assert!(e.to_string().contains("credentials"), "{e}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "s3:https://minio.lab:9000/bkt/a/b",
            "s3:s3.amazonaws.com/bkt/p",
            "gs:bkt:/p",
            "azure:c:/p",
            "memory:",
        ] {
            let l = Location::parse(s).unwrap();
            assert_eq!(Location::parse(&l.to_string()).unwrap(), l, "{s}");
        }
    }
}
