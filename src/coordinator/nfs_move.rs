//! The MOVE method: re-attaching an NFS export on the destination cluster instead of copying it.
//!
//! This module owns the Kubernetes side of moving an NFS-backed persistent volume: it reads the
//! source PV ([`check`], what *stage* reports), and at *final* ([`move_volume`]) pins the source
//! PV's reclaim policy to `Retain`, creates a destination PV that names the same
//! `nfs.server`/`nfs.path`, and pre-binds it to the destination PVC. It also builds the
//! [`kube::Client`]s those calls need. It does not sequence plans, quiesce applications, talk to
//! agents, or touch the data on the export; that is the coordinator's job. It never deletes
//! anything, so a failed or repeated run leaves both clusters in a state a rerun can finish.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    NFSVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Annotation on the source PV that keeps the reclaim policy it had before ferry set `Retain`.
pub const RECLAIM_ANNOTATION: &str = "ferry.io/original-reclaim-policy";

/// Label (when the name fits a label value) and annotation (always) on a destination PV naming
/// the source PV it was moved from.
pub const MOVED_FROM_KEY: &str = "ferry.io/moved-from-pv";

const RETAIN: &str = "Retain";
const FILESYSTEM: &str = "Filesystem";
const STORAGE: &str = "storage";

/// Which volume to move and where its claim lives on the destination cluster.
///
/// The destination PV gets the same name as the source PV (`pv_name`), so a PV name identifies
/// one export across both clusters and a rerun finds what an earlier run created. A move within
/// a single cluster is therefore not possible: the "destination" PV would be the source PV, and
/// [`move_volume`] reports that as [`MoveError::Conflict`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MoveSpec {
    /// Name of the NFS PV on the source cluster, and of the PV created on the destination.
    pub pv_name: String,
    /// Namespace of the destination PVC.
    pub dest_namespace: String,
    /// Name of the destination PVC the new PV is pre-bound to.
    pub dest_pvc: String,
}

/// What *final* will re-attach, read from the source PV by [`check`].
///
/// Strings that Kubernetes leaves unset are empty, except `volume_mode`, which is reported as
/// `Filesystem` (the API server's default) when unset.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NfsCheck {
    /// `spec.nfs.server`.
    pub server: String,
    /// `spec.nfs.path`.
    pub path: String,
    /// `spec.nfs.readOnly` (false when unset).
    pub read_only: bool,
    /// `spec.capacity.storage`, as the quantity string Kubernetes stores (`10Gi`).
    pub capacity: String,
    /// `spec.accessModes`.
    pub access_modes: Vec<String>,
    /// `spec.storageClassName`.
    pub storage_class: String,
    /// The source PV's current `spec.persistentVolumeReclaimPolicy`.
    pub reclaim_policy: String,
    /// `spec.volumeMode`.
    pub volume_mode: String,
    /// `spec.mountOptions`.
    pub mount_options: Vec<String>,
}

impl NfsCheck {
    /// One line for a stage report: what final will do for `spec`.
    pub fn summary(&self, spec: &MoveSpec) -> String {
        format!(
            "final will re-attach {}:{} as PV {} bound to {}/{}",
            self.server, self.path, spec.pv_name, spec.dest_namespace, spec.dest_pvc
        )
    }
}

/// What one [`move_volume`] run changed. A run that finds everything in place reports all false.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveReport {
    /// The source PV's reclaim policy was set to `Retain` by this run.
    pub source_retained: bool,
    /// The destination PV was created by this run.
    pub dest_pv_created: bool,
    /// The destination PVC was created, or its `spec.volumeName` set, by this run.
    pub dest_pvc_changed: bool,
}

/// Why a move, a check or building a client failed.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// An object the move needs does not exist.
    #[error("{kind} {name} not found")]
    NotFound {
        /// Object kind, such as `persistentvolume`.
        kind: &'static str,
        /// Object name (`namespace/name` for namespaced objects).
        name: String,
    },
    /// The source PV has no `spec.nfs`, so it cannot be moved by re-attachment.
    #[error("persistentvolume {pv} is not an nfs volume (no spec.nfs); use the copy method")]
    NotNfs {
        /// The source PV.
        pv: String,
    },
    /// An object on the destination exists and disagrees with the move.
    #[error("conflict: {what}")]
    Conflict {
        /// Which object, and how it disagrees.
        what: String,
    },
    /// The spec itself cannot name Kubernetes objects.
    #[error("invalid move spec: {0}")]
    InvalidSpec(String),
    /// An API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// The call, naming its object (`creating persistentvolume pv-1 on the destination`).
        what: String,
        /// What the client or the API server said.
        source: kube::Error,
    },
    /// A client configuration could not be built.
    #[error("building kubernetes client: {0}")]
    Config(String),
}

/// Reads the source PV and reports what [`move_volume`] would re-attach. Changes nothing.
pub async fn check(source: &kube::Client, spec: &MoveSpec) -> Result<NfsCheck, MoveError> {
    validate_spec(spec)?;
    let pv = get_source_pv(source, &spec.pv_name).await?;
    nfs_check(&pv, &spec.pv_name)
}

/// Moves the NFS volume named by `spec` from `source` to `dest` by re-attachment.
///
/// In order, and each step only when needed:
/// 1. the source PV's reclaim policy becomes `Retain` (merge patch, conditional on the
///    resourceVersion read), and its old value is kept in [`RECLAIM_ANNOTATION`] unless that
///    annotation is already there, so deleting the source PVC can never delete the data;
/// 2. a destination PV named like the source PV is created with the same `nfs` source, mount
///    options, capacity, access modes, storage class and volume mode, reclaim policy `Retain`,
///    and a `claimRef` pre-binding it to `dest_namespace/dest_pvc`; annotations such as
///    `pv.kubernetes.io/provisioned-by` are deliberately not copied, so no provisioner on the
///    destination considers the export its own to delete. An existing destination PV is left
///    untouched if it names the same export and claim, and is a [`MoveError::Conflict`] if not;
/// 3. the destination PVC is created with `spec.volumeName` set to the PV, or, if it exists
///    unbound with an empty `volumeName`, that field is set (Kubernetes lets `volumeName` be set
///    once on a claim that has none). A PVC whose `volumeName` names another PV, or whose storage
///    class or volume mode cannot bind to the new PV, is a [`MoveError::Conflict`].
///
/// Idempotent: a run after a successful run sends no mutating request and reports all false;
/// a run after a partial failure finishes the remaining steps. Nothing is ever deleted.
pub async fn move_volume(
    source: &kube::Client,
    dest: &kube::Client,
    spec: &MoveSpec,
) -> Result<MoveReport, MoveError> {
    validate_spec(spec)?;
    let pv = get_source_pv(source, &spec.pv_name).await?;
    let nfs = nfs_check(&pv, &spec.pv_name)?;

    let source_retained = retain_source(source, &pv, &nfs, &spec.pv_name).await?;
    let dest_pv_created = ensure_dest_pv(dest, &pv, spec).await?;
    let dest_pvc_changed = ensure_dest_pvc(dest, &pv, &nfs, spec).await?;

    Ok(MoveReport {
        source_retained,
        dest_pv_created,
        dest_pvc_changed,
    })
}

/// Builds a client from kubeconfig text, using its current context.
///
/// Async because kube resolves credentials (exec plugins, token files) while loading. Must run
/// inside a tokio runtime, as every [`kube::Client`] does. Error messages never include the
/// kubeconfig's contents.
pub async fn client_from_kubeconfig(yaml: &str) -> Result<kube::Client, MoveError> {
    let kubeconfig = Kubeconfig::from_yaml(yaml).map_err(|e| match e {
        KubeconfigError::Parse(_) => MoveError::Config(redacted_yaml_error(&e.to_string())),
        other => MoveError::Config(format!("parsing kubeconfig: {other}")),
    })?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| MoveError::Config(format!("loading kubeconfig: {e}")))?;
    client_from_config(config)
}

/// Builds a client from the pod's service account (`KUBERNETES_SERVICE_HOST`/`_PORT` and the
/// token and CA under `/var/run/secrets/kubernetes.io/serviceaccount/`).
pub async fn in_cluster_client() -> Result<kube::Client, MoveError> {
    let config = kube::Config::incluster()
        .map_err(|e| MoveError::Config(format!("loading in-cluster config: {e}")))?;
    client_from_config(config)
}

/// Builds a client from a ready [`kube::Config`], first making sure rustls has a process-wide
/// crypto provider (ring, as tonic uses; an already installed provider is kept). Must run
/// inside a tokio runtime.
pub fn client_from_config(config: kube::Config) -> Result<kube::Client, MoveError> {
    // rustls cannot pick a provider by itself when more than one is compiled into the binary
    // (object_store brings aws-lc-rs, tonic brings ring); installing fails harmlessly when one
    // is already installed.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    kube::Client::try_from(config).map_err(|e| MoveError::Config(e.to_string()))
}

/// The YAML parser's message quotes the lines around the error, which may hold a token or a
/// private key; only the position survives.
fn redacted_yaml_error(message: &str) -> String {
    let position = message.split_once("line ").and_then(|(_, rest)| {
        let line: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let rest = rest.get(line.len()..)?.strip_prefix(" column ")?;
        let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
        (!line.is_empty() && !column.is_empty()).then(|| format!(" at line {line} column {column}"))
    });
    format!(
        "parsing kubeconfig: invalid yaml{}",
        position.unwrap_or_default()
    )
}

/// Rejects names that cannot be Kubernetes object names, before they reach a URL path.
fn validate_spec(spec: &MoveSpec) -> Result<(), MoveError> {
    for (field, value) in [
        ("pv_name", &spec.pv_name),
        ("dest_namespace", &spec.dest_namespace),
        ("dest_pvc", &spec.dest_pvc),
    ] {
        let valid = !value.is_empty()
            && value.len() <= 253
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && value
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && value
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if !valid {
            return Err(MoveError::InvalidSpec(format!(
                "{field} {value:?} is not a valid kubernetes object name"
            )));
        }
    }
    Ok(())
}

/// True when `value` may be used as a label value (at most 63 characters, alphanumerics with
/// `-`, `_` and `.` inside).
fn is_label_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && value
            .bytes()
            .next()
            .is_none_or(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .last()
            .is_none_or(|b| b.is_ascii_alphanumeric())
}

async fn get_source_pv(source: &kube::Client, name: &str) -> Result<PersistentVolume, MoveError> {
    let api: Api<PersistentVolume> = Api::all(source.clone());
    api.get_opt(name)
        .await
        .map_err(|e| MoveError::Kube {
            what: format!("reading persistentvolume {name} on the source"),
            source: e,
        })?
        .ok_or_else(|| MoveError::NotFound {
            kind: "persistentvolume",
            name: name.to_owned(),
        })
}

fn nfs_check(pv: &PersistentVolume, name: &str) -> Result<NfsCheck, MoveError> {
    let spec = pv.spec.as_ref();
    let nfs = spec
        .and_then(|s| s.nfs.as_ref())
        .ok_or_else(|| MoveError::NotNfs {
            pv: name.to_owned(),
        })?;
    let spec = spec.cloned().unwrap_or_default();
    Ok(NfsCheck {
        server: nfs.server.clone(),
        path: nfs.path.clone(),
        read_only: nfs.read_only.unwrap_or(false),
        capacity: spec
            .capacity
            .as_ref()
            .and_then(|c| c.get(STORAGE))
            .map(|q| q.0.clone())
            .unwrap_or_default(),
        access_modes: spec.access_modes.unwrap_or_default(),
        storage_class: spec.storage_class_name.unwrap_or_default(),
        reclaim_policy: spec.persistent_volume_reclaim_policy.unwrap_or_default(),
        volume_mode: spec.volume_mode.unwrap_or_else(|| FILESYSTEM.to_owned()),
        mount_options: spec.mount_options.unwrap_or_default(),
    })
}

/// Step 1. Returns whether the policy was changed.
async fn retain_source(
    source: &kube::Client,
    pv: &PersistentVolume,
    nfs: &NfsCheck,
    name: &str,
) -> Result<bool, MoveError> {
    if nfs.reclaim_policy == RETAIN {
        return Ok(false);
    }
    let has_annotation = pv
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(RECLAIM_ANNOTATION));
    let mut metadata = serde_json::Map::new();
    // The resourceVersion makes the patch conditional: if the PV changed since it was read, the
    // API server answers 409 and a rerun decides again from the new state.
    if let Some(rv) = &pv.metadata.resource_version {
        metadata.insert("resourceVersion".into(), json!(rv));
    }
    if !has_annotation {
        metadata.insert(
            "annotations".into(),
            json!({ RECLAIM_ANNOTATION: nfs.reclaim_policy }),
        );
    }
    let patch = json!({
        "metadata": metadata,
        "spec": { "persistentVolumeReclaimPolicy": RETAIN },
    });
    let api: Api<PersistentVolume> = Api::all(source.clone());
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| MoveError::Kube {
            what: format!("setting reclaim policy Retain on source persistentvolume {name}"),
            source: e,
        })?;
    tracing::info!(pv = name, previous = %nfs.reclaim_policy, "source pv reclaim policy set to Retain");
    Ok(true)
}

/// Step 2. Returns whether the destination PV was created.
async fn ensure_dest_pv(
    dest: &kube::Client,
    source_pv: &PersistentVolume,
    spec: &MoveSpec,
) -> Result<bool, MoveError> {
    let api: Api<PersistentVolume> = Api::all(dest.clone());
    let name = &spec.pv_name;
    let read = |e| MoveError::Kube {
        what: format!("reading persistentvolume {name} on the destination"),
        source: e,
    };
    if let Some(existing) = api.get_opt(name).await.map_err(read)? {
        verify_dest_pv(&existing, source_pv, spec)?;
        return Ok(false);
    }
    let pv = dest_pv(source_pv, spec);
    match api.create(&PostParams::default(), &pv).await {
        Ok(_) => {
            tracing::info!(pv = %name, ns = %spec.dest_namespace, pvc = %spec.dest_pvc, "destination pv created");
            Ok(true)
        }
        // Someone created it between the read and the create: judge what is there now.
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let existing = api.get_opt(name).await.map_err(read)?.ok_or_else(|| {
                MoveError::Conflict {
                    what: format!(
                        "persistentvolume {name} on the destination was reported to exist but cannot be read"
                    ),
                }
            })?;
            verify_dest_pv(&existing, source_pv, spec)?;
            Ok(false)
        }
        Err(e) => Err(MoveError::Kube {
            what: format!("creating persistentvolume {name} on the destination"),
            source: e,
        }),
    }
}

fn verify_dest_pv(
    existing: &PersistentVolume,
    source_pv: &PersistentVolume,
    spec: &MoveSpec,
) -> Result<(), MoveError> {
    let name = &spec.pv_name;
    let want = source_pv.spec.as_ref().and_then(|s| s.nfs.as_ref());
    let have = existing.spec.as_ref().and_then(|s| s.nfs.as_ref());
    let same_export = match (want, have) {
        (Some(w), Some(h)) => w.server == h.server && w.path == h.path,
        _ => false,
    };
    if !same_export {
        let have = have.map_or_else(
            || "no nfs export".to_owned(),
            |h| format!("{}:{}", h.server, h.path),
        );
        let want = want.map_or_else(String::new, |w| format!("{}:{}", w.server, w.path));
        return Err(MoveError::Conflict {
            what: format!(
                "persistentvolume {name} already exists on the destination and points at {have}, not {want}"
            ),
        });
    }
    let claim = existing.spec.as_ref().and_then(|s| s.claim_ref.as_ref());
    let bound_to_dest = claim.is_some_and(|c| {
        c.namespace.as_deref() == Some(spec.dest_namespace.as_str())
            && c.name.as_deref() == Some(spec.dest_pvc.as_str())
    });
    if !bound_to_dest {
        let have = claim.map_or_else(
            || "no claim".to_owned(),
            |c| {
                format!(
                    "claim {}/{}",
                    c.namespace.as_deref().unwrap_or_default(),
                    c.name.as_deref().unwrap_or_default()
                )
            },
        );
        return Err(MoveError::Conflict {
            what: format!(
                "persistentvolume {name} already exists on the destination with {have}, not {}/{}",
                spec.dest_namespace, spec.dest_pvc
            ),
        });
    }
    Ok(())
}

/// The destination PV: the source's export and shape, `Retain`, pre-bound to the destination
/// claim. Nothing that identifies the source object (uid, resourceVersion, annotations) is copied.
fn dest_pv(source_pv: &PersistentVolume, spec: &MoveSpec) -> PersistentVolume {
    let src = source_pv.spec.clone().unwrap_or_default();
    let nfs = src.nfs.map(|n| NFSVolumeSource {
        server: n.server,
        path: n.path,
        read_only: n.read_only,
    });
    let mut labels = BTreeMap::new();
    if is_label_value(&spec.pv_name) {
        labels.insert(MOVED_FROM_KEY.to_owned(), spec.pv_name.clone());
    }
    let annotations = BTreeMap::from([(MOVED_FROM_KEY.to_owned(), spec.pv_name.clone())]);
    PersistentVolume {
        metadata: ObjectMeta {
            name: Some(spec.pv_name.clone()),
            labels: (!labels.is_empty()).then_some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            nfs,
            mount_options: src.mount_options,
            capacity: src.capacity,
            access_modes: src.access_modes,
            storage_class_name: src.storage_class_name,
            volume_mode: src.volume_mode,
            persistent_volume_reclaim_policy: Some(RETAIN.to_owned()),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("PersistentVolumeClaim".to_owned()),
                namespace: Some(spec.dest_namespace.clone()),
                name: Some(spec.dest_pvc.clone()),
                ..ObjectReference::default()
            }),
            ..PersistentVolumeSpec::default()
        }),
        status: None,
    }
}

/// Step 3. Returns whether the destination PVC was created or patched.
async fn ensure_dest_pvc(
    dest: &kube::Client,
    source_pv: &PersistentVolume,
    nfs: &NfsCheck,
    spec: &MoveSpec,
) -> Result<bool, MoveError> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(dest.clone(), &spec.dest_namespace);
    let claim = format!("{}/{}", spec.dest_namespace, spec.dest_pvc);
    let pv_name = &spec.pv_name;
    let existing = api
        .get_opt(&spec.dest_pvc)
        .await
        .map_err(|e| MoveError::Kube {
            what: format!("reading persistentvolumeclaim {claim} on the destination"),
            source: e,
        })?;

    let Some(existing) = existing else {
        let pvc = dest_pvc(source_pv, spec);
        api.create(&PostParams::default(), &pvc)
            .await
            .map_err(|e| MoveError::Kube {
                what: format!("creating persistentvolumeclaim {claim} on the destination"),
                source: e,
            })?;
        tracing::info!(pvc = %claim, pv = %pv_name, "destination pvc created");
        return Ok(true);
    };

    let pvc_spec = existing.spec.clone().unwrap_or_default();
    match pvc_spec.volume_name.as_deref().unwrap_or_default() {
        "" => {}
        bound if bound == pv_name => return Ok(false),
        other => {
            return Err(MoveError::Conflict {
                what: format!(
                    "persistentvolumeclaim {claim} on the destination is bound to persistentvolume {other}, not {pv_name}"
                ),
            });
        }
    }
    // The claim has no volume yet. Refuse what the binder would refuse, rather than leave a
    // claim that stays Pending forever.
    if let Some(class) = pvc_spec.storage_class_name.as_deref()
        && class != nfs.storage_class
    {
        return Err(MoveError::Conflict {
            what: format!(
                "persistentvolumeclaim {claim} on the destination has storage class {class:?} but persistentvolume {pv_name} has {:?}",
                nfs.storage_class
            ),
        });
    }
    let mode = pvc_spec.volume_mode.as_deref().unwrap_or(FILESYSTEM);
    if mode != nfs.volume_mode {
        return Err(MoveError::Conflict {
            what: format!(
                "persistentvolumeclaim {claim} on the destination has volume mode {mode} but persistentvolume {pv_name} has {}",
                nfs.volume_mode
            ),
        });
    }
    let mut metadata = serde_json::Map::new();
    if let Some(rv) = &existing.metadata.resource_version {
        metadata.insert("resourceVersion".into(), json!(rv));
    }
    let patch = json!({ "metadata": metadata, "spec": { "volumeName": pv_name } });
    api.patch(
        &spec.dest_pvc,
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|e| MoveError::Kube {
        what: format!(
            "setting volumeName {pv_name} on persistentvolumeclaim {claim} on the destination"
        ),
        source: e,
    })?;
    tracing::info!(pvc = %claim, pv = %pv_name, "destination pvc volumeName set");
    Ok(true)
}

/// The destination PVC, naming the destination PV. An unset storage class becomes `""`, so the
/// default-class admission plugin cannot give the claim a class the PV does not have.
fn dest_pvc(source_pv: &PersistentVolume, spec: &MoveSpec) -> PersistentVolumeClaim {
    let src = source_pv.spec.clone().unwrap_or_default();
    let requests = src
        .capacity
        .and_then(|c| c.get(STORAGE).cloned())
        .map(|q| BTreeMap::from([(STORAGE.to_owned(), q)]));
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(spec.dest_pvc.clone()),
            namespace: Some(spec.dest_namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: src.access_modes,
            resources: Some(VolumeResourceRequirements {
                requests,
                limits: None,
            }),
            storage_class_name: Some(src.storage_class_name.unwrap_or_default()),
            volume_mode: src.volume_mode,
            volume_name: Some(spec.pv_name.clone()),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::coordinator::kube_stub::KubeStub;

    const PV_PATH: &str = "/api/v1/persistentvolumes/pv-nfs-1";
    const PVC_PATH: &str = "/api/v1/namespaces/app/persistentvolumeclaims/data";

    fn spec() -> MoveSpec {
        MoveSpec {
            pv_name: "pv-nfs-1".into(),
            dest_namespace: "app".into(),
            dest_pvc: "data".into(),
        }
    }

    fn nfs_pv(name: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": name,
                "annotations": { "pv.kubernetes.io/provisioned-by": "nfs-provisioner" }
            },
            "spec": {
                "nfs": { "server": "nfs.example.com", "path": "/exports/app", "readOnly": false },
                "mountOptions": ["nfsvers=4.1", "hard"],
                "capacity": { "storage": "10Gi" },
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "nfs",
                "volumeMode": "Filesystem",
                "persistentVolumeReclaimPolicy": "Delete",
                "claimRef": { "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                              "namespace": "old", "name": "data", "uid": "source-claim-uid" }
            },
            "status": { "phase": "Bound" }
        })
    }

    /// A source and a destination cluster, the source seeded with the NFS PV.
    async fn clusters() -> (KubeStub, KubeStub) {
        let source = KubeStub::start().await;
        let dest = KubeStub::start().await;
        source.put_object(PV_PATH, nfs_pv("pv-nfs-1"));
        (source, dest)
    }

    fn methods_and_paths(stub: &KubeStub) -> Vec<(String, String)> {
        stub.requests()
            .into_iter()
            .map(|(m, p, _)| (m, p))
            .collect()
    }

    #[tokio::test]
    async fn check_reports_the_export() {
        let (source, _dest) = clusters().await;
        let got = check(&source.client(), &spec()).await.unwrap();
        assert_eq!(
            got,
            NfsCheck {
                server: "nfs.example.com".into(),
                path: "/exports/app".into(),
                read_only: false,
                capacity: "10Gi".into(),
                access_modes: vec!["ReadWriteMany".into()],
                storage_class: "nfs".into(),
                reclaim_policy: "Delete".into(),
                volume_mode: "Filesystem".into(),
                mount_options: vec!["nfsvers=4.1".into(), "hard".into()],
            }
        );
        assert_eq!(
            got.summary(&spec()),
            "final will re-attach nfs.example.com:/exports/app as PV pv-nfs-1 bound to app/data"
        );
        assert!(source.requests().is_empty());
    }

    #[tokio::test]
    async fn check_of_a_missing_pv_is_not_found() {
        let (source, _dest) = clusters().await;
        let mut s = spec();
        s.pv_name = "absent".into();
        let err = check(&source.client(), &s).await.unwrap_err();
        assert!(
            matches!(&err, MoveError::NotFound { kind: "persistentvolume", name } if name == "absent"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn move_sends_exactly_three_mutations_then_none() {
        let (source, dest) = clusters().await;
        let (sc, dc) = (source.client(), dest.client());

        let report = move_volume(&sc, &dc, &spec()).await.unwrap();
        assert_eq!(
            report,
            MoveReport {
                source_retained: true,
                dest_pv_created: true,
                dest_pvc_changed: true
            }
        );

        let src_requests = source.requests();
        assert_eq!(src_requests.len(), 1, "{src_requests:?}");
        let (method, path, body) = &src_requests[0];
        assert_eq!((method.as_str(), path.as_str()), ("PATCH", PV_PATH));
        assert_eq!(
            body["spec"],
            json!({ "persistentVolumeReclaimPolicy": "Retain" })
        );
        assert_eq!(
            body["metadata"]["annotations"],
            json!({ RECLAIM_ANNOTATION: "Delete" })
        );
        let patched = source.object(PV_PATH).unwrap();
        assert_eq!(patched["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(
            patched["metadata"]["annotations"][RECLAIM_ANNOTATION],
            "Delete"
        );
        assert_eq!(
            patched["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"],
            "nfs-provisioner"
        );

        assert_eq!(
            methods_and_paths(&dest),
            vec![
                ("POST".to_owned(), "/api/v1/persistentvolumes".to_owned()),
                (
                    "POST".to_owned(),
                    "/api/v1/namespaces/app/persistentvolumeclaims".to_owned()
                ),
            ]
        );
        let dest_requests = dest.requests();
        let pv_body = &dest_requests[0].2;
        assert_eq!(
            pv_body,
            &json!({
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {
                    "name": "pv-nfs-1",
                    "labels": { MOVED_FROM_KEY: "pv-nfs-1" },
                    "annotations": { MOVED_FROM_KEY: "pv-nfs-1" }
                },
                "spec": {
                    "nfs": { "server": "nfs.example.com", "path": "/exports/app", "readOnly": false },
                    "mountOptions": ["nfsvers=4.1", "hard"],
                    "capacity": { "storage": "10Gi" },
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "nfs",
                    "volumeMode": "Filesystem",
                    "persistentVolumeReclaimPolicy": "Retain",
                    "claimRef": { "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                  "namespace": "app", "name": "data" }
                }
            })
        );
        let pvc_body = &dest_requests[1].2;
        assert_eq!(
            pvc_body,
            &json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": { "name": "data", "namespace": "app" },
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "resources": { "requests": { "storage": "10Gi" } },
                    "storageClassName": "nfs",
                    "volumeMode": "Filesystem",
                    "volumeName": "pv-nfs-1"
                }
            })
        );

        let again = move_volume(&sc, &dc, &spec()).await.unwrap();
        assert_eq!(
            again,
            MoveReport {
                source_retained: false,
                dest_pv_created: false,
                dest_pvc_changed: false
            }
        );
        assert_eq!(source.requests().len(), 1);
        assert_eq!(dest.requests().len(), 2);
    }

    #[tokio::test]
    async fn an_existing_annotation_keeps_the_first_policy() {
        let (source, dest) = clusters().await;
        let mut pv = nfs_pv("pv-nfs-1");
        pv["metadata"]["annotations"][RECLAIM_ANNOTATION] = json!("Recycle");
        source.put_object(PV_PATH, pv);
        move_volume(&source.client(), &dest.client(), &spec())
            .await
            .unwrap();
        let body = &source.requests()[0].2;
        assert!(body["metadata"].get("annotations").is_none(), "{body}");
        assert_eq!(
            source.object(PV_PATH).unwrap()["metadata"]["annotations"][RECLAIM_ANNOTATION],
            "Recycle"
        );
    }

    #[tokio::test]
    async fn a_retained_source_is_not_patched() {
        let (source, dest) = clusters().await;
        let mut pv = nfs_pv("pv-nfs-1");
        pv["spec"]["persistentVolumeReclaimPolicy"] = json!("Retain");
        source.put_object(PV_PATH, pv);
        let report = move_volume(&source.client(), &dest.client(), &spec())
            .await
            .unwrap();
        assert!(!report.source_retained);
        assert!(source.requests().is_empty());
    }

    #[tokio::test]
    async fn a_pv_without_nfs_is_not_nfs() {
        let (source, dest) = clusters().await;
        let mut pv = nfs_pv("pv-nfs-1");
        pv["spec"].as_object_mut().unwrap().remove("nfs").unwrap();
        pv["spec"]["csi"] = json!({ "driver": "ebs.csi.aws.com", "volumeHandle": "vol-1" });
        source.put_object(PV_PATH, pv);
        let err = move_volume(&source.client(), &dest.client(), &spec())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, MoveError::NotNfs { pv } if pv == "pv-nfs-1"),
            "{err:?}"
        );
        assert!(
            check(&source.client(), &spec()).await.is_err(),
            "check must refuse it too"
        );
        assert!(source.requests().is_empty());
        assert!(dest.requests().is_empty());
    }

    #[tokio::test]
    async fn a_dest_pv_on_another_export_is_a_conflict() {
        let (source, dest) = clusters().await;
        let mut other = nfs_pv("pv-nfs-1");
        other["spec"]["nfs"]["path"] = json!("/exports/other");
        other["spec"]["claimRef"] = json!({ "namespace": "app", "name": "data" });
        dest.put_object(PV_PATH, other);
        let err = move_volume(&source.client(), &dest.client(), &spec())
            .await
            .unwrap_err();
        let MoveError::Conflict { what } = &err else {
            panic!("{err:?}")
        };
        assert!(
            what.contains("pv-nfs-1") && what.contains("/exports/other"),
            "{what}"
        );
        assert!(dest.requests().is_empty());
    }

    #[tokio::test]
    async fn a_dest_pv_bound_to_another_claim_is_a_conflict() {
        let (source, dest) = clusters().await;
        // The same export, but still claimed by the source-side claim: a same-cluster move.
        dest.put_object(PV_PATH, nfs_pv("pv-nfs-1"));
        let err = move_volume(&source.client(), &dest.client(), &spec())
            .await
            .unwrap_err();
        let MoveError::Conflict { what } = &err else {
            panic!("{err:?}")
        };
        assert!(
            what.contains("old/data") && what.contains("app/data"),
            "{what}"
        );
    }

    #[tokio::test]
    async fn a_pending_dest_pvc_gets_its_volume_name() {
        let (source, dest) = clusters().await;
        dest.put_object(
            PVC_PATH,
            json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": { "name": "data", "namespace": "app" },
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "resources": { "requests": { "storage": "10Gi" } },
                    "storageClassName": "nfs"
                },
                "status": { "phase": "Pending" }
            }),
        );
        let report = move_volume(&source.client(), &dest.client(), &spec())
            .await
            .unwrap();
        assert!(report.dest_pvc_changed);
        let requests = dest.requests();
        assert_eq!(requests.len(), 2, "{requests:?}");
        let (method, path, body) = &requests[1];
        assert_eq!((method.as_str(), path.as_str()), ("PATCH", PVC_PATH));
        assert_eq!(body["spec"], json!({ "volumeName": "pv-nfs-1" }));
        assert!(body["metadata"]["resourceVersion"].is_string(), "{body}");
        assert_eq!(
            dest.object(PVC_PATH).unwrap()["spec"]["volumeName"],
            "pv-nfs-1"
        );

        let again = move_volume(&source.client(), &dest.client(), &spec())
            .await
            .unwrap();
        assert!(!again.dest_pvc_changed);
        assert_eq!(dest.requests().len(), 2);
    }

    #[tokio::test]
    async fn a_dest_pvc_bound_elsewhere_is_a_conflict() {
        let (source, dest) = clusters().await;
        dest.put_object(
            PVC_PATH,
            json!({
                "metadata": { "name": "data", "namespace": "app" },
                "spec": { "volumeName": "pvc-1234", "storageClassName": "nfs" }
            }),
        );
        let err = move_volume(&source.client(), &dest.client(), &spec())
            .await
            .unwrap_err();
        let MoveError::Conflict { what } = &err else {
            panic!("{err:?}")
        };
        assert!(
            what.contains("app/data") && what.contains("pvc-1234"),
            "{what}"
        );
    }

    #[tokio::test]
    async fn a_dest_pvc_of_another_class_is_a_conflict() {
        let (source, dest) = clusters().await;
        dest.put_object(
            PVC_PATH,
            json!({
                "metadata": { "name": "data", "namespace": "app" },
                "spec": { "storageClassName": "gp3" }
            }),
        );
        let err = move_volume(&source.client(), &dest.client(), &spec())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, MoveError::Conflict { what } if what.contains("gp3")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn an_unnamed_storage_class_becomes_empty_on_the_claim() {
        let (source, dest) = clusters().await;
        let mut pv = nfs_pv("pv-nfs-1");
        pv["spec"]
            .as_object_mut()
            .unwrap()
            .remove("storageClassName");
        source.put_object(PV_PATH, pv);
        move_volume(&source.client(), &dest.client(), &spec())
            .await
            .unwrap();
        let requests = dest.requests();
        assert!(requests[0].2["spec"].get("storageClassName").is_none());
        assert_eq!(requests[1].2["spec"]["storageClassName"], "");
    }

    #[tokio::test]
    async fn a_long_pv_name_is_an_annotation_not_a_label() {
        let source = KubeStub::start().await;
        let dest = KubeStub::start().await;
        let name = format!("pv-{}", "a".repeat(70));
        source.put_object(&format!("/api/v1/persistentvolumes/{name}"), nfs_pv(&name));
        let s = MoveSpec {
            pv_name: name.clone(),
            ..spec()
        };
        move_volume(&source.client(), &dest.client(), &s)
            .await
            .unwrap();
        let body = &dest.requests()[0].2;
        assert!(body["metadata"].get("labels").is_none(), "{body}");
        assert_eq!(body["metadata"]["annotations"][MOVED_FROM_KEY], name);
    }

    #[tokio::test]
    async fn invalid_names_are_refused_before_any_request() {
        let (source, dest) = clusters().await;
        for bad in ["", "a/b", "Upper", "-lead", "trail-", "../x"] {
            let s = MoveSpec {
                dest_pvc: bad.into(),
                ..spec()
            };
            let err = move_volume(&source.client(), &dest.client(), &s)
                .await
                .unwrap_err();
            assert!(matches!(err, MoveError::InvalidSpec(_)), "{bad}: {err:?}");
        }
        assert!(source.requests().is_empty() && dest.requests().is_empty());
    }

    #[tokio::test]
    async fn a_client_from_the_stub_kubeconfig_reaches_the_stub() {
        let (source, _dest) = clusters().await;
        let client = client_from_kubeconfig(&source.kubeconfig_yaml())
            .await
            .unwrap();
        assert_eq!(check(&client, &spec()).await.unwrap().capacity, "10Gi");
    }

    #[tokio::test]
    async fn a_broken_kubeconfig_is_a_config_error_without_its_secrets() {
        let yaml = "users:\n- name: a\n  user:\n    token: [SECRET-TOKEN\n";
        let err = client_from_kubeconfig(yaml).await.err().unwrap();
        assert!(matches!(err, MoveError::Config(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "building kubernetes client: parsing kubeconfig: invalid yaml at line 4 column 12"
        );
        assert!(!format!("{err:?}").contains("SECRET"));
    }

    #[tokio::test]
    async fn errors_name_their_objects() {
        let err = MoveError::NotFound {
            kind: "persistentvolume",
            name: "pv-1".into(),
        };
        assert_eq!(err.to_string(), "persistentvolume pv-1 not found");
        let stub = KubeStub::start().await;
        let url = stub.kubeconfig_yaml();
        stub.stop().await;
        // Nothing listens any more: the error names the call and the object.
        let client = client_from_kubeconfig(&url).await.unwrap();
        let err = check(&client, &spec()).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("reading persistentvolume pv-nfs-1 on the source: "),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn nfs_check_round_trips_through_json(
            server in "[a-z0-9.-]{1,20}",
            path in "/[ -~]{0,30}",
            read_only in any::<bool>(),
            capacity in "[0-9]{1,4}(Gi|Mi|Ti)",
            access_modes in proptest::collection::vec("[A-Za-z]{1,16}", 0..3),
            storage_class in "[a-z0-9-]{0,12}",
            mount_options in proptest::collection::vec("[ -~]{0,12}", 0..4),
        ) {
            let c = NfsCheck {
                server, path, read_only, capacity, access_modes, storage_class,
                reclaim_policy: "Delete".into(), volume_mode: "Block".into(), mount_options,
            };
            let text = serde_json::to_string(&c).unwrap();
            prop_assert_eq!(serde_json::from_str::<NfsCheck>(&text).unwrap(), c);
        }

        #[test]
        fn valid_object_names_pass_and_slashes_never_do(name in "[a-z0-9][a-z0-9.-]{0,40}[a-z0-9]", junk in "[/ A-Z_]") {
            let ok = MoveSpec { pv_name: name.clone(), ..spec() };
            prop_assert!(validate_spec(&ok).is_ok());
            let bad = MoveSpec { pv_name: format!("{name}{junk}x"), ..spec() };
            prop_assert!(validate_spec(&bad).is_err());
        }
    }
}
