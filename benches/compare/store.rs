//! Where the repositories live: a local directory per tool, or a bucket per tool and run in the
//! S3 server of [`crate::s3`], started with the [`Store`] and stopped when it is dropped.
//!
//! A store hands out fresh repository locations, the environment the tools need to reach them
//! (dummy AWS credentials for S3), their sizes and their removal. It does not run the tools.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, bail};

use crate::fstree::disk_usage;
use crate::s3::S3Server;

/// The key prefix of every repository inside its bucket, so that the tools' prefix handling
/// is exercised too.
const PREFIX: &str = "repo";

/// The kind of store, as `FERRY_BENCH_STORE` names it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StoreKind {
    Local,
    S3,
}

impl StoreKind {
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Local => "local",
            StoreKind::S3 => "s3",
        }
    }
}

impl FromStr for StoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "local" => Ok(StoreKind::Local),
            "s3" => Ok(StoreKind::S3),
            other => Err(format!("unknown store {other:?}; expected local or s3")),
        }
    }
}

/// One tool's repository in one run.
pub struct Repo {
    /// What the tool gets after `-r`.
    pub location: OsString,
    place: Place,
}

enum Place {
    Dir(PathBuf),
    Bucket(String),
}

impl Repo {
    /// The repository's directory, when it is on the local disk (and so can be warmed).
    pub fn local_dir(&self) -> Option<&Path> {
        match &self.place {
            Place::Dir(d) => Some(d),
            Place::Bucket(_) => None,
        }
    }
}

pub enum Store {
    Local { repos: PathBuf },
    S3(S3Server),
}

impl Store {
    /// Prepares the store: creates `repos` for local repositories, or starts the S3 server
    /// `moto` with its output in `logs`.
    pub fn start(kind: StoreKind, moto: &Path, repos: &Path, logs: &Path) -> anyhow::Result<Self> {
        match kind {
            StoreKind::Local => {
                fs::create_dir_all(repos).with_context(|| format!("create {}", repos.display()))?;
                Ok(Store::Local {
                    repos: repos.to_path_buf(),
                })
            }
            StoreKind::S3 => Ok(Store::S3(S3Server::start(
                moto,
                &logs.join("s3-server.log"),
            )?)),
        }
    }

    pub fn kind(&self) -> StoreKind {
        match self {
            Store::Local { .. } => StoreKind::Local,
            Store::S3(_) => StoreKind::S3,
        }
    }

    /// One line for the report's header.
    pub fn describe(&self) -> String {
        match self {
            Store::Local { repos } => format!("local directories under {}", repos.display()),
            Store::S3(s) => format!(
                "S3, {} at http://{} (path-style, plain HTTP), a fresh bucket per tool and run \
                 with the repository under {PREFIX}/",
                s.program().display(),
                s.addr()
            ),
        }
    }

    /// How [`Store::size`] measures, for the report's header.
    pub fn size_method(&self) -> &'static str {
        match self {
            Store::Local { .. } => "blocks allocated on disk under the repository (like du)",
            Store::S3(_) => "sum of the object sizes under the repository prefix (ListObjectsV2)",
        }
    }

    pub fn has_server(&self) -> bool {
        matches!(self, Store::S3(_))
    }

    /// Environment variables every tool needs to reach this store.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        match self {
            Store::Local { .. } => Vec::new(),
            Store::S3(_) => {
                let local = "127.0.0.1,localhost".to_string();
                vec![
                    ("AWS_ACCESS_KEY_ID", "ferry-bench".to_string()),
                    ("AWS_SECRET_ACCESS_KEY", "ferry-bench-secret".to_string()),
                    ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
                    // The server is local; a proxy configured for this machine must not see it.
                    ("NO_PROXY", local.clone()),
                    ("no_proxy", local),
                ]
            }
        }
    }

    /// An empty repository location for `tool` in run `run`: a removed-and-absent directory,
    /// or a prefix in a newly created bucket.
    pub fn fresh_repo(&self, tool: &str, run: usize) -> anyhow::Result<Repo> {
        match self {
            Store::Local { repos } => {
                let dir = repos.join(tool);
                if dir.exists() {
                    fs::remove_dir_all(&dir)
                        .with_context(|| format!("remove {}", dir.display()))?;
                }
                Ok(Repo {
                    location: dir.clone().into_os_string(),
                    place: Place::Dir(dir),
                })
            }
            Store::S3(s) => {
                let bucket = format!("bench-r{run}-{tool}");
                s.create_bucket(&bucket)?;
                Ok(Repo {
                    location: format!("s3:http://{}/{bucket}/{PREFIX}", s.addr()).into(),
                    place: Place::Bucket(bucket),
                })
            }
        }
    }

    /// The repository's size in bytes; see [`Store::size_method`].
    pub fn size(&self, repo: &Repo) -> anyhow::Result<u64> {
        match (self, &repo.place) {
            (_, Place::Dir(d)) => disk_usage(d),
            (Store::S3(s), Place::Bucket(b)) => s.bytes_under(b, &format!("{PREFIX}/")),
            (Store::Local { .. }, Place::Bucket(_)) => bail!("a bucket in a local store"),
        }
    }

    /// Removes the repositories and everything in them. An S3 server forgets all its buckets,
    /// so `repos` must be every repository handed out since the last call.
    pub fn discard(&self, repos: Vec<Repo>) -> anyhow::Result<()> {
        match self {
            Store::Local { .. } => {
                for dir in repos.iter().filter_map(Repo::local_dir) {
                    fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
                }
                Ok(())
            }
            Store::S3(s) => s.reset(),
        }
    }

    /// CPU seconds the store's server has used so far, if there is a server.
    pub fn server_cpu_seconds(&self) -> Option<f64> {
        match self {
            Store::Local { .. } => None,
            Store::S3(s) => s.cpu_seconds(),
        }
    }
}

#[cfg(test)]
mod tests {
    // The bench target is compiled with cfg(test) but without the test harness, which drops
    // the tests themselves; see the note in compare.rs on running them.
    #[allow(unused_imports)]
    use super::*;

    #[test]
    fn store_kind_parses_both_names_only() {
        assert_eq!("local".parse::<StoreKind>(), Ok(StoreKind::Local));
        assert_eq!("S3".parse::<StoreKind>(), Ok(StoreKind::S3));
        assert!("gcs".parse::<StoreKind>().is_err());
    }
}
