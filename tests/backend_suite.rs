//! One conformance suite for `ferry::backend::Backend`, run against every kind of store it
//! serves: a local directory, memory, and an S3-compatible server (moto; skipped with a note
//! when moto is not installed). Whatever the store, a backend must keep the same contract:
//! whole and ranged reads return exactly what was saved, sizes and listings are exact, listings
//! hold ids of one kind only (packs under `data/xx/`, names that are not ids skipped), a missing
//! object is a matchable "not found" everywhere, removal is idempotent, saving an id again is
//! harmless, and objects past the multipart threshold survive the trip.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Once;

use bytes::Bytes;
use common::Rng;
use common::s3::{self, MotoServer};
use ferry::backend::{Backend, BackendOptions, FileType, Listed, MULTIPART_THRESHOLD};
use ferry::id::Id;

/// A large object: past the multipart threshold and not a whole number of 16 MiB parts.
const LARGE_SIZE: usize = MULTIPART_THRESHOLD + (5 << 20) + 12_345;

/// Every kind that holds many files (all but the config).
const KINDS: [FileType; 5] = [
    FileType::Key,
    FileType::Snapshot,
    FileType::Index,
    FileType::Lock,
    FileType::Pack,
];

/// Writes an object at `prefix/rel` directly in the store beneath a backend.
type Plant<'a> = &'a dyn Fn(&str, &[u8]);

/// How the suite reaches around the backend to the store beneath, for what a backend never
/// writes itself.
struct Store<'a> {
    /// What the store is, for messages.
    name: &'a str,
    /// The object-key prefix the backend writes under, without slashes at either end.
    prefix: String,
    /// Writes an object at `prefix/rel` directly, if the store allows it.
    plant: Option<Plant<'a>>,
    /// Whether to run the large-object round trip.
    large: bool,
}

/// Deterministic content of `len` bytes for object number `n`.
fn content(n: u64, len: usize) -> Bytes {
    Bytes::from(Rng::new(0xC0FFEE ^ n).bytes(len))
}

/// Saves content under its own id, as a repository does, and returns the id.
async fn save_new(b: &Backend, t: FileType, bytes: &Bytes) -> Id {
    let id = Id::hash(bytes);
    b.save(t, &id, bytes.clone())
        .await
        .unwrap_or_else(|e| panic!("save {} {id}: {e}", t.noun()));
    id
}

#[track_caller]
fn expect_not_found<T: std::fmt::Debug>(
    store: &Store<'_>,
    what: &str,
    r: Result<T, ferry::backend::BackendError>,
) {
    match r {
        Err(e) if e.is_not_found() => {}
        Err(e) => panic!("{}: {what}: expected not found, got error {e}", store.name),
        Ok(v) => panic!("{}: {what}: expected not found, got {v:?}", store.name),
    }
}

/// The suite. Every check names the store in its message.
async fn conformance(b: &Backend, store: &Store<'_>) {
    let name = store.name;

    // An empty repository.
    assert!(
        !b.has_config().await.expect("has_config on an empty store"),
        "{name}: has_config before any config was saved"
    );
    for t in KINDS {
        let listed = b.list(t).await.expect("list an empty store");
        assert!(
            listed.is_empty(),
            "{name}: empty store lists {t:?}: {listed:?}"
        );
    }

    // Missing objects are "not found" for every read, and removing one is fine.
    let missing = Id::hash(b"never saved");
    for t in KINDS {
        expect_not_found(store, "load of a missing id", b.load(t, &missing).await);
        expect_not_found(
            store,
            "load_range of a missing id",
            b.load_range(t, &missing, 0..10).await,
        );
        expect_not_found(store, "size of a missing id", b.size(t, &missing).await);
        b.remove(t, &missing)
            .await
            .unwrap_or_else(|e| panic!("{name}: remove a missing {}: {e}", t.noun()));
    }

    // The config.
    let config = content(1, 155);
    b.save(FileType::Config, &Id::NULL, config.clone())
        .await
        .expect("save the config");
    assert!(
        b.has_config().await.expect("has_config after saving it"),
        "{name}: has_config is false after saving the config"
    );
    assert_eq!(
        b.load(FileType::Config, &Id::NULL)
            .await
            .expect("load the config"),
        config,
        "{name}: the config read back differs"
    );
    assert!(
        b.list(FileType::Key).await.expect("list keys").is_empty(),
        "{name}: the config is listed as a key"
    );

    // A few files of every kind; packs with different two-digit directories.
    let mut saved: Vec<(FileType, Id, Bytes)> = Vec::new();
    let mut n = 10;
    for t in KINDS {
        let count = if t == FileType::Pack { 6 } else { 2 };
        for _ in 0..count {
            n += 1;
            let bytes = content(n, 1000 + (n as usize * 7919) % 40_000);
            let id = save_new(b, t, &bytes).await;
            saved.push((t, id, bytes));
        }
    }
    let empty = Bytes::new();
    let empty_id = save_new(b, FileType::Snapshot, &empty).await;
    saved.push((FileType::Snapshot, empty_id, empty));

    for (t, id, bytes) in &saved {
        let read = b
            .load(*t, id)
            .await
            .unwrap_or_else(|e| panic!("{name}: load {} {id}: {e}", t.noun()));
        assert_eq!(&read, bytes, "{name}: {} {id} read back differs", t.noun());
        let size = b
            .size(*t, id)
            .await
            .unwrap_or_else(|e| panic!("{name}: size of {} {id}: {e}", t.noun()));
        assert_eq!(
            size,
            bytes.len() as u64,
            "{name}: size of {} {id}",
            t.noun()
        );
        if bytes.len() >= 100 {
            check_ranges(b, store, *t, id, bytes).await;
        }
    }

    // Packs live under data/<first two hex digits>/.
    for (t, id, _) in saved.iter().filter(|(t, _, _)| *t == FileType::Pack) {
        let hex = id.to_hex();
        let rel = format!("data/{}/{hex}", &hex[..2]);
        let expected = if store.prefix.is_empty() {
            rel
        } else {
            format!("{}/{rel}", store.prefix)
        };
        assert_eq!(b.key(*t, id), expected, "{name}: key of pack {id}");
    }

    // Names that are not ids, and objects outside the layout, are never listed.
    if let Some(plant) = store.plant {
        let hex = saved
            .iter()
            .find(|(t, _, _)| *t == FileType::Pack)
            .map(|(_, id, _)| id.to_hex())
            .expect("a pack was saved");
        plant(&format!("data/{}/not-an-id", &hex[..2]), b"junk");
        plant(&format!("data/{}/{}", &hex[..2], &hex[..63]), b"junk");
        plant(&format!("data/{}/{hex}.tmp", &hex[..2]), b"junk");
        plant("snapshots/README", b"junk");
        plant(&format!("unrelated/{hex}"), b"junk");
    }
    check_listing(b, store, &saved).await;

    // Saving an id again with the same bytes changes nothing.
    for (t, id, bytes) in saved.iter().take(3) {
        b.save(*t, id, bytes.clone())
            .await
            .unwrap_or_else(|e| panic!("{name}: save {} {id} a second time: {e}", t.noun()));
        assert_eq!(
            &b.load(*t, id).await.expect("load after the second save"),
            bytes,
            "{name}: {} {id} differs after saving it again",
            t.noun()
        );
    }
    check_listing(b, store, &saved).await;

    // Removal, twice.
    let (removed, kept) = saved.split_at(saved.len() / 2);
    for (t, id, _) in removed {
        b.remove(*t, id)
            .await
            .unwrap_or_else(|e| panic!("{name}: remove {} {id}: {e}", t.noun()));
        b.remove(*t, id)
            .await
            .unwrap_or_else(|e| panic!("{name}: remove {} {id} again: {e}", t.noun()));
        expect_not_found(store, "load after remove", b.load(*t, id).await);
        expect_not_found(store, "size after remove", b.size(*t, id).await);
    }
    check_listing(b, store, kept).await;
    for (t, id, _) in kept {
        b.remove(*t, id).await.expect("remove the rest");
    }
    check_listing(b, store, &[]).await;

    b.remove(FileType::Config, &Id::NULL)
        .await
        .expect("remove the config");
    assert!(
        !b.has_config().await.expect("has_config after removing it"),
        "{name}: has_config after the config was removed"
    );

    if store.large {
        large_object(b, store).await;
    }
}

/// Ranged reads of the middle, the end, the whole, and a single byte at either end, with
/// `load_range` and with `load_range_into` reusing one buffer that holds other bytes.
async fn check_ranges(b: &Backend, store: &Store<'_>, t: FileType, id: &Id, bytes: &Bytes) {
    let len = bytes.len() as u64;
    let ranges = [
        len / 3..len / 3 * 2,
        len - 37..len,
        0..len,
        0..1,
        len - 1..len,
    ];
    let mut reused = vec![0xa5u8; bytes.len() + 100];
    for range in ranges {
        let want = bytes.slice(range.start as usize..range.end as usize);
        let read = b
            .load_range(t, id, range.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: load_range {range:?} of {id}: {e}", store.name));
        assert_eq!(
            read,
            want,
            "{}: load_range {range:?} of {} {id}",
            store.name,
            t.noun()
        );
        reused = b
            .load_range_into(t, id, range.clone(), reused)
            .await
            .unwrap_or_else(|e| panic!("{}: load_range_into {range:?} of {id}: {e}", store.name));
        assert_eq!(
            reused,
            want,
            "{}: load_range_into {range:?} of {} {id}",
            store.name,
            t.noun()
        );
    }
    let missing = Id::hash(b"no such file");
    let err = b
        .load_range_into(FileType::Pack, &missing, 0..1, reused)
        .await
        .expect_err("a missing file has no range to read");
    assert!(
        err.is_not_found(),
        "{}: load_range_into of a missing file: {err}",
        store.name
    );
}

/// Asserts that each kind lists exactly the ids and sizes of `expected`, in id order.
async fn check_listing(b: &Backend, store: &Store<'_>, expected: &[(FileType, Id, Bytes)]) {
    for t in KINDS {
        let mut want: Vec<Listed> = expected
            .iter()
            .filter(|(k, _, _)| *k == t)
            .map(|(_, id, bytes)| Listed {
                id: *id,
                size: bytes.len() as u64,
            })
            .collect();
        want.sort_by_key(|l| l.id);
        let got = b
            .list(t)
            .await
            .unwrap_or_else(|e| panic!("{}: list {}: {e}", store.name, t.noun()));
        assert_eq!(got, want, "{}: listing of {}", store.name, t.noun());
    }
}

/// An object past the multipart threshold: saved in parts, read whole and across a part
/// boundary, sized and listed exactly, then removed.
async fn large_object(b: &Backend, store: &Store<'_>) {
    let name = store.name;
    let bytes = content(99, LARGE_SIZE);
    let id = save_new(b, FileType::Pack, &bytes).await;
    assert_eq!(
        b.size(FileType::Pack, &id)
            .await
            .expect("size of the large pack"),
        LARGE_SIZE as u64,
        "{name}: size of the large pack"
    );
    let read = b
        .load(FileType::Pack, &id)
        .await
        .expect("load the large pack");
    assert!(
        read.len() == bytes.len() && Id::hash(&read) == id,
        "{name}: the large pack read back differs ({} bytes read)",
        read.len()
    );
    let boundary = 16u64 << 20;
    let range = boundary - 1000..boundary + 1000;
    let part = b
        .load_range(FileType::Pack, &id, range.clone())
        .await
        .expect("load a range across a part boundary");
    assert_eq!(
        part,
        bytes.slice(range.start as usize..range.end as usize),
        "{name}: range across a part boundary"
    );
    assert_eq!(
        b.list(FileType::Pack).await.expect("list the large pack"),
        vec![Listed {
            id,
            size: LARGE_SIZE as u64
        }],
        "{name}: listing of the large pack"
    );
    b.remove(FileType::Pack, &id)
        .await
        .expect("remove the large pack");
    assert!(
        b.list(FileType::Pack).await.expect("list").is_empty(),
        "{name}: the large pack is still listed after removal"
    );
}

fn plant_file(root: &Path, rel: &str, bytes: &[u8]) {
    let path: PathBuf = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create a directory for a planted file");
    }
    std::fs::write(&path, bytes).expect("plant a file");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_directory_conforms() {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let root = dir.path().join("repo");
    let b = Backend::open(
        root.to_str().expect("temporary paths are UTF-8"),
        &BackendOptions::default(),
    )
    .expect("open a local backend");
    b.create_layout().expect("create the local layout");
    let plant = |rel: &str, bytes: &[u8]| plant_file(&root, rel, bytes);
    let prefix = b.key(FileType::Config, &Id::NULL);
    let prefix = prefix.trim_end_matches("config").trim_end_matches('/');
    conformance(
        &b,
        &Store {
            name: "local directory",
            prefix: prefix.to_owned(),
            plant: Some(&plant),
            large: true,
        },
    )
    .await;
    // Packs are files at data/xx/<id>, where restic looks for them.
    let bytes = content(7, 5000);
    let id = save_new(&b, FileType::Pack, &bytes).await;
    let hex = id.to_hex();
    assert!(
        root.join("data").join(&hex[..2]).join(&hex).is_file(),
        "the pack is not at data/{}/{hex}",
        &hex[..2]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_conforms() {
    let b = Backend::memory();
    conformance(
        &b,
        &Store {
            name: "memory",
            prefix: String::new(),
            plant: None,
            large: true,
        },
    )
    .await;
}

/// Puts the S3 test environment into this process, once: `Backend::open` reads credentials
/// from the environment, as ferry does.
fn s3_environment() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the other tests of this binary run concurrently but only use the local file
        // system and memory; none of them reads the environment from C code (getaddrinfo,
        // localtime, ...), and Rust's own environment access is synchronized.
        unsafe {
            std::env::set_var("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY_ID);
            std::env::set_var("AWS_SECRET_ACCESS_KEY", s3::SECRET_ACCESS_KEY);
            std::env::set_var("AWS_DEFAULT_REGION", s3::REGION);
            std::env::set_var("NO_PROXY", "127.0.0.1,localhost");
            for var in [
                "AWS_SESSION_TOKEN",
                "AWS_PROFILE",
                "AWS_REGION",
                "AWS_ENDPOINT",
                "AWS_ENDPOINT_URL",
                "AWS_SKIP_SIGNATURE",
                "HTTP_PROXY",
                "http_proxy",
                "HTTPS_PROXY",
                "https_proxy",
                "ALL_PROXY",
                "all_proxy",
            ] {
                std::env::remove_var(var);
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_conforms() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    s3_environment();
    let bucket = "suite";
    moto.create_bucket(bucket);

    // Under a prefix, with the large object.
    let b = Backend::open(&moto.url(bucket, "team/repo"), &BackendOptions::default())
        .expect("open an S3 backend");
    let plant =
        |rel: &str, bytes: &[u8]| moto.put_object(bucket, &format!("team/repo/{rel}"), bytes);
    conformance(
        &b,
        &Store {
            name: "s3 under a prefix",
            prefix: "team/repo".into(),
            plant: Some(&plant),
            large: true,
        },
    )
    .await;

    // At the root of another bucket, through the s3:// form and an endpoint option.
    moto.create_bucket("bare");
    let opts = BackendOptions {
        s3_endpoint: Some(moto.endpoint()),
        ..BackendOptions::default()
    };
    let b = Backend::open("s3://bare", &opts).expect("open an S3 backend at a bucket's root");
    let plant = |rel: &str, bytes: &[u8]| moto.put_object("bare", rel, bytes);
    conformance(
        &b,
        &Store {
            name: "s3 at a bucket's root",
            prefix: String::new(),
            plant: Some(&plant),
            large: false,
        },
    )
    .await;
}
