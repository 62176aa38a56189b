//! A plan as requested, split into what may be stored and shown (`PlanSpec`) and what must be
//! sealed (`PlanSecrets`), and joined back into the repository spec agents need.
//!
//! `from_request` is the only place a `CreatePlanRequest` is taken apart; `repository_spec` is
//! the only place secrets are put back together, right before a call to an agent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model::{self, Endpoint, Method, Options, VolumeSpec};
use super::secrets::Secret;
use super::store::PlanSecrets;
use crate::rpc::pb;

/// Store settings of the repository: everything but credentials.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSettings {
    pub s3_endpoint: String,
    pub s3_region: String,
    pub s3_path_style: bool,
    pub ca_pem: Vec<u8>,
    pub insecure_tls: bool,
    pub request_timeout_seconds: u32,
    pub connections: u32,
    /// `StoreOptions.compression` as given (empty: auto); plans stored before it existed
    /// read as empty.
    #[serde(default)]
    pub compression: String,
    /// `StoreOptions.no_extra_verify`; plans stored before it existed read as false.
    #[serde(default)]
    pub no_extra_verify: bool,
}

/// The non-secret part of a plan, stored as JSON and shown by `GetPlan`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSpec {
    pub name: String,
    pub source_cluster: String,
    pub dest_cluster: String,
    /// Whether a kubeconfig was given for each side (the kubeconfigs themselves are sealed).
    pub source_kubeconfig: bool,
    pub dest_kubeconfig: bool,
    pub repository_location: String,
    pub store: StoreSettings,
}

/// Why a plan request was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A field is missing or wrong.
    #[error("plan {plan:?}: {reason}")]
    Invalid {
        /// The plan's name.
        plan: String,
        /// What is wrong.
        reason: String,
    },
    /// The volumes do not make a valid plan.
    #[error("plan {plan:?}: {source}")]
    Model {
        /// The plan's name.
        plan: String,
        /// The cause.
        #[source]
        source: model::ModelError,
    },
}

/// Kubeconfig keys in `PlanSecrets::kubeconfigs`.
pub const SOURCE: &str = "source";
/// See [`SOURCE`].
pub const DEST: &str = "dest";

/// Takes a request apart: the stored spec, the volumes, the options and the secrets.
pub fn from_request(
    r: pb::CreatePlanRequest,
) -> Result<(PlanSpec, Vec<VolumeSpec>, Options, PlanSecrets), SpecError> {
    let name = r.name.trim().to_string();
    let invalid = |reason: &str| SpecError::Invalid {
        plan: name.clone(),
        reason: reason.to_string(),
    };
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(invalid(
            "the name must be 1 to 63 letters, digits, '-', '_' or '.'",
        ));
    }
    let source = r.source_cluster.unwrap_or_default();
    let dest = r.dest_cluster.unwrap_or_default();
    if source.name.is_empty() || dest.name.is_empty() {
        return Err(invalid("both clusters need a name"));
    }
    let repo = r
        .repository
        .ok_or_else(|| invalid("the plan names no repository"))?;
    if repo.location.is_empty() {
        return Err(invalid("the repository location is empty"));
    }
    if repo.password.is_empty() {
        return Err(invalid("the repository password is empty"));
    }
    let o = repo.options.unwrap_or_default();
    if let Err(reason) = o.compression.parse::<crate::repository::Compression>() {
        return Err(invalid(&reason));
    }
    let c = repo.credentials.unwrap_or_default();
    let mut creds = BTreeMap::new();
    for (k, v) in [
        ("aws_access_key_id", c.aws_access_key_id),
        ("aws_secret_access_key", c.aws_secret_access_key),
        ("aws_session_token", c.aws_session_token),
        ("azure_account_name", c.azure_account_name),
        ("azure_account_key", c.azure_account_key),
        ("google_service_account_json", c.google_service_account_json),
    ] {
        if !v.is_empty() {
            creds.insert(k.to_string(), Secret::new(v));
        }
    }
    let mut kubeconfigs = BTreeMap::new();
    if !source.kubeconfig.is_empty() {
        kubeconfigs.insert(SOURCE.to_string(), Secret::new(source.kubeconfig));
    }
    if !dest.kubeconfig.is_empty() {
        kubeconfigs.insert(DEST.to_string(), Secret::new(dest.kubeconfig));
    }
    let spec = PlanSpec {
        name: name.clone(),
        source_cluster: source.name.clone(),
        dest_cluster: dest.name.clone(),
        source_kubeconfig: kubeconfigs.contains_key(SOURCE),
        dest_kubeconfig: kubeconfigs.contains_key(DEST),
        repository_location: repo.location,
        store: StoreSettings {
            s3_endpoint: o.s3_endpoint,
            s3_region: o.s3_region,
            s3_path_style: o.s3_path_style,
            ca_pem: o.ca_pem,
            insecure_tls: o.insecure_tls,
            request_timeout_seconds: o.request_timeout_seconds,
            connections: o.connections,
            compression: o.compression,
            no_extra_verify: o.no_extra_verify,
        },
    };
    let endpoint = |cluster: &str, m: Option<pb::Mount>| {
        m.map(|m| Endpoint {
            cluster: cluster.to_string(),
            node: m.node,
            pod_uid: m.pod_uid,
            volume_name: m.volume_name,
        })
    };
    let volumes: Vec<VolumeSpec> = r
        .volumes
        .into_iter()
        .map(|v| VolumeSpec {
            method: if v.method == pb::Method::Move as i32 {
                Method::Move
            } else {
                Method::Copy
            },
            source: endpoint(&source.name, v.source),
            dest: endpoint(&dest.name, v.dest),
            pv_name: v.pv_name,
            source_namespace: v.source_namespace,
            source_pvc: v.source_pvc,
            dest_namespace: v.dest_namespace,
            dest_pvc: v.dest_pvc,
            size_bytes: v.size_bytes,
        })
        .collect();
    let po = r.options.unwrap_or_default();
    let defaults = Options::default();
    let options = Options {
        jobs_per_node: nonzero(po.jobs_per_node, defaults.jobs_per_node),
        jobs_total: nonzero(po.jobs_total, defaults.jobs_total),
        verify: !po.skip_verify,
        max_attempts: nonzero(po.max_attempts, defaults.max_attempts),
        ..defaults
    };
    model::validate(&volumes, &options).map_err(|source| SpecError::Model {
        plan: name.clone(),
        source,
    })?;
    let secrets = PlanSecrets {
        repository_password: Secret::new(repo.password),
        store_credentials: creds,
        kubeconfigs,
    };
    Ok((spec, volumes, options, secrets))
}

fn nonzero(v: u32, default: u32) -> u32 {
    if v == 0 { default } else { v }
}

/// The repository spec an agent call carries: the stored settings with the secrets put back.
pub fn repository_spec(spec: &PlanSpec, secrets: &PlanSecrets) -> pb::RepositorySpec {
    let cred = |k: &str| {
        secrets
            .store_credentials
            .get(k)
            .map(|s| s.expose().to_string())
            .unwrap_or_default()
    };
    let s = &spec.store;
    pb::RepositorySpec {
        location: spec.repository_location.clone(),
        password: secrets.repository_password.expose().to_string(),
        options: Some(pb::StoreOptions {
            s3_endpoint: s.s3_endpoint.clone(),
            s3_region: s.s3_region.clone(),
            s3_path_style: s.s3_path_style,
            ca_pem: s.ca_pem.clone(),
            insecure_tls: s.insecure_tls,
            request_timeout_seconds: s.request_timeout_seconds,
            connections: s.connections,
            compression: s.compression.clone(),
            no_extra_verify: s.no_extra_verify,
        }),
        credentials: Some(pb::StoreCredentials {
            aws_access_key_id: cred("aws_access_key_id"),
            aws_secret_access_key: cred("aws_secret_access_key"),
            aws_session_token: cred("aws_session_token"),
            azure_account_name: cred("azure_account_name"),
            azure_account_key: cred("azure_account_key"),
            google_service_account_json: cred("google_service_account_json"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> pb::CreatePlanRequest {
        let mount = |n: &str| pb::Mount {
            node: n.into(),
            pod_uid: "uid-1".into(),
            volume_name: "pv-a".into(),
        };
        pb::CreatePlanRequest {
            name: "p1".into(),
            source_cluster: Some(pb::ClusterSpec {
                name: "src".into(),
                kubeconfig: "kubeconfig-secret-token".into(),
            }),
            dest_cluster: Some(pb::ClusterSpec {
                name: "dst".into(),
                kubeconfig: String::new(),
            }),
            repository: Some(pb::RepositorySpec {
                location: "s3:http://127.0.0.1:9000/bucket".into(),
                password: "pw-secret".into(),
                options: None,
                credentials: Some(pb::StoreCredentials {
                    aws_secret_access_key: "aws-secret".into(),
                    ..Default::default()
                }),
            }),
            volumes: vec![pb::PlanVolume {
                pv_name: "pv-a".into(),
                source_namespace: "ns".into(),
                source_pvc: "data".into(),
                dest_namespace: "ns".into(),
                dest_pvc: "data".into(),
                method: pb::Method::Copy as i32,
                source: Some(mount("n1")),
                dest: Some(mount("n2")),
                size_bytes: 10,
            }],
            options: None,
        }
    }

    #[test]
    fn secrets_are_split_off_and_joined_back() {
        let (spec, volumes, options, secrets) = from_request(request()).unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        for secret in ["kubeconfig-secret-token", "pw-secret", "aws-secret"] {
            assert!(!json.contains(secret), "{json}");
        }
        assert!(spec.source_kubeconfig && !spec.dest_kubeconfig);
        assert_eq!(volumes[0].source.as_ref().unwrap().cluster, "src");
        assert_eq!(volumes[0].dest.as_ref().unwrap().node, "n2");
        assert_eq!(options.jobs_per_node, 2);
        assert!(options.verify);
        let repo = repository_spec(&spec, &secrets);
        assert_eq!(repo.password, "pw-secret");
        assert_eq!(
            repo.credentials.unwrap().aws_secret_access_key,
            "aws-secret"
        );
    }

    #[test]
    fn store_settings_reach_the_agents_and_old_plans_read_with_defaults() {
        let mut r = request();
        r.repository.as_mut().unwrap().options = Some(pb::StoreOptions {
            compression: "max".into(),
            no_extra_verify: true,
            ..Default::default()
        });
        let (spec, _, _, secrets) = from_request(r).unwrap();
        let options = repository_spec(&spec, &secrets).options.unwrap();
        assert_eq!(options.compression, "max");
        assert!(options.no_extra_verify);
        // A plan stored before these settings existed.
        let mut json = serde_json::to_value(&spec).unwrap();
        let store = json["store"].as_object_mut().unwrap();
        store.remove("compression");
        store.remove("no_extra_verify");
        let old: PlanSpec = serde_json::from_value(json).unwrap();
        let options = repository_spec(&old, &secrets).options.unwrap();
        assert_eq!(options.compression, "");
        assert!(!options.no_extra_verify);
    }

    #[test]
    fn bad_requests_are_refused_with_the_plan_named() {
        let mut r = request();
        r.name = "../x".into();
        assert!(from_request(r).is_err());
        let mut r = request();
        r.repository.as_mut().unwrap().password.clear();
        let e = from_request(r).unwrap_err().to_string();
        assert!(e.contains("p1") && e.contains("password"), "{e}");
        let mut r = request();
        r.volumes[0].source = None;
        assert!(from_request(r).is_err());
    }
}
