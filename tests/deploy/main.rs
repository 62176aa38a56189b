//! The Kubernetes deployment under `deploy/`: the kustomize bases and overlays, the image's
//! Dockerfile, and the operator's guide `deploy/README.md`.
//!
//! These tests read the tree as files and render each overlay with the real `kubectl kustomize`
//! (Debian's kubernetes-client in CI, which embeds kustomize v2.0.3, so only the kustomization
//! fields that version knows are allowed). Every object is checked against the k8s-openapi types
//! with unknown fields rejected, which the types themselves do not do: an object is decoded,
//! encoded again, and every key of the original must survive the round trip. The rendered
//! objects are then checked against each other (selectors, references, namespace, RBAC) and
//! against the real `ferry` binary's `--help`, so a flag the binary does not know fails here
//! rather than in a crash-looping pod.
//!
//! Nothing here talks to a cluster; what a cluster would do with the objects (admission, the
//! kubelet's behaviour) is out of scope.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PersistentVolumeClaim, PodSpec, PodTemplateSpec, Secret,
    Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope, Resource};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The namespace every namespaced object of every overlay lives in.
const NAMESPACE: &str = "ferry";

/// The capabilities the agent needs to read and restore any file with its owner and mode, and
/// nothing more.
const AGENT_CAPABILITIES: [&str; 6] = [
    "DAC_READ_SEARCH",
    "DAC_OVERRIDE",
    "CHOWN",
    "FOWNER",
    "FSETID",
    "MKNOD",
];

/// The only overlay allowed to run the agent privileged: on OpenShift, SELinux keeps an
/// unprivileged container from reading other pods' volumes, whatever its capabilities.
const PRIVILEGED_OVERLAY: &str = "openshift";

mod containers;
mod files;
mod kustomize;
mod render;
mod strict;

use containers::*;
use files::*;
use kustomize::*;
use render::*;
use strict::*;

// ---------------------------------------------------------------------------------------------
// 1. Every manifest is made of fields Kubernetes knows
// ---------------------------------------------------------------------------------------------

#[test]
fn every_base_manifest_parses_into_its_kubernetes_type_without_unknown_fields() {
    let mut violations = Vec::new();
    let manifests: Vec<PathBuf> = files_under(&deploy_dir().join("base"))
        .into_iter()
        .filter(|p| is_yaml(p) && !is_kustomization(p))
        .collect();
    if manifests.is_empty() {
        violations.push("deploy/base holds no manifest".into());
    }
    for path in manifests {
        let here = shown(&path);
        let docs = match fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_documents(&text))
        {
            Ok(docs) => docs,
            Err(e) => {
                violations.push(format!("{here}: {e}"));
                continue;
            }
        };
        for (i, doc) in docs.iter().enumerate() {
            let at = format!("{here} document {} ({})", i + 1, object_id(doc));
            match unknown_fields(doc) {
                Ok(unknown) => violations.extend(
                    unknown
                        .into_iter()
                        .map(|p| format!("{at}: {p} is not a field of {}", str_at(doc, "/kind"))),
                ),
                Err(e) => violations.push(format!("{at}: {e}")),
            }
        }
    }
    assert_none("base manifests with unknown fields", &violations);
}

/// The real agent DaemonSet from deploy/base, as JSON.
fn base_agent_daemonset() -> Value {
    for path in files_under(&deploy_dir().join("base")) {
        if !is_yaml(&path) || is_kustomization(&path) {
            continue;
        }
        let text = fs::read_to_string(&path).expect("reading a base manifest");
        for doc in parse_documents(&text).unwrap_or_default() {
            if !agent_containers("base", std::slice::from_ref(&doc), &mut Vec::new()).is_empty() {
                return doc;
            }
        }
    }
    panic!("deploy/base holds no DaemonSet running `agent serve`");
}

/// Renames the first key `from` found in `value`, depth first, to `to`; returns its new path.
fn rename_first_key(value: &mut Value, path: &str, from: &str, to: &str) -> Option<String> {
    match value {
        Value::Object(map) => {
            if let Some(v) = map.remove(from) {
                map.insert(to.to_owned(), v);
                return Some(join_key(path, to));
            }
            map.iter_mut()
                .find_map(|(k, v)| rename_first_key(v, &join_key(path, k), from, to))
        }
        Value::Array(items) => items
            .iter_mut()
            .enumerate()
            .find_map(|(i, v)| rename_first_key(v, &format!("{path}[{i}]"), from, to)),
        _ => None,
    }
}

#[test]
fn the_strict_check_reports_a_misspelled_field_by_its_path() {
    let agent = base_agent_daemonset();
    assert_eq!(
        unknown_fields(&agent),
        Ok(vec![]),
        "the agent DaemonSet as written"
    );

    let mut misspelled = agent.clone();
    let path = rename_first_key(&mut misspelled, "", "mountPropagation", "mountPropogation")
        .expect("the agent DaemonSet sets mountPropagation on its kubelet mount");
    assert!(
        path.starts_with("spec.template.spec.containers[") && path.contains(".volumeMounts["),
        "mountPropagation was found at {path}"
    );
    assert_eq!(unknown_fields(&misspelled), Ok(vec![path]));

    // Tolerations sit directly in the pod spec; when the agent has none, the misspelling is
    // added instead, which the checker must report all the same.
    let mut misspelled = agent.clone();
    let pod = misspelled
        .pointer_mut("/spec/template/spec")
        .and_then(Value::as_object_mut)
        .expect("the agent DaemonSet has a pod spec");
    let tolerations = pod
        .remove("tolerations")
        .unwrap_or_else(|| serde_json::json!([{ "operator": "Exists" }]));
    pod.insert("tolerashuns".into(), tolerations);
    assert_eq!(
        unknown_fields(&misspelled),
        Ok(vec!["spec.template.spec.tolerashuns".to_owned()])
    );

    // A null the type drops is no field lost.
    let mut nulled = agent.clone();
    nulled["metadata"]["creationTimestamp"] = Value::Null;
    assert_eq!(unknown_fields(&nulled), Ok(vec![]));

    let mut unknown = agent;
    unknown["kind"] = "DaemonSett".into();
    let err = unknown_fields(&unknown).expect_err("an unknown kind is an error");
    assert!(err.contains("DaemonSett"), "{err}");
}

#[test]
fn multi_document_yaml_yields_every_non_empty_document() {
    let text = "---\n# only a comment\n---\na: 1\n---\n---\nb: [x]\n...\n";
    assert_eq!(
        parse_documents(text),
        Ok(vec![
            serde_json::json!({"a": 1}),
            serde_json::json!({"b": ["x"]})
        ])
    );
}

#[test]
fn every_kustomization_uses_only_kustomize_v2_fields_and_names_existing_files() {
    let mut violations = Vec::new();
    let all = files_under(&deploy_dir());
    let kustomizations: Vec<&PathBuf> = all.iter().filter(|p| is_kustomization(p)).collect();
    if kustomizations.is_empty() {
        violations.push("deploy holds no kustomization.yaml".into());
    }
    let mut named = BTreeSet::new();
    // Files beside a kustomization that does not parse may well be named by it.
    let mut unknown_dirs = Vec::new();
    for path in &kustomizations {
        match check_kustomization(path, &mut violations) {
            Some(files) => named.extend(files),
            None => unknown_dirs.extend(path.parent().map(Path::to_path_buf)),
        }
    }
    for path in &all {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if matches!(name.as_ref(), "kustomization.yml" | "Kustomization") {
            violations.push(format!("{}: name it kustomization.yaml", shown(path)));
        }
        let under_kustomize = ["base", "overlays"]
            .iter()
            .any(|d| path.starts_with(deploy_dir().join(d)));
        let unknown = unknown_dirs
            .iter()
            .any(|d| path.parent() == Some(d.as_path()));
        if under_kustomize
            && is_yaml(path)
            && !is_kustomization(path)
            && !named.contains(path)
            && !unknown
        {
            violations.push(format!(
                "{}: no kustomization names this file, so no overlay deploys it",
                shown(path)
            ));
        }
    }
    assert_none("kustomizations", &violations);
}

// ---------------------------------------------------------------------------------------------
// 2. Every overlay renders into objects that fit together
// ---------------------------------------------------------------------------------------------

#[test]
fn every_overlay_renders_with_kubectl_into_objects_without_unknown_fields() {
    let mut violations = Vec::new();
    for (overlay, objects) in rendered(&mut violations).0 {
        if objects.is_empty() {
            violations.push(format!("overlay {overlay}: renders no objects"));
        }
        for object in objects {
            let at = format!("overlay {overlay}: {}", object_id(object));
            match unknown_fields(object) {
                Ok(unknown) => {
                    violations.extend(unknown.into_iter().map(|p| {
                        format!("{at}: {p} is not a field of {}", str_at(object, "/kind"))
                    }))
                }
                Err(e) => violations.push(format!("{at}: {e}")),
            }
        }
    }
    assert_none("rendered overlays with unknown fields", &violations);
}

#[test]
fn workload_selectors_are_non_empty_subsets_of_their_pod_labels() {
    let mut violations = Vec::new();
    for (overlay, objects) in rendered(&mut violations).0 {
        for w in workloads(overlay, objects, &mut violations) {
            let at = format!("overlay {overlay}: {}", w.id);
            let selector = w.selector.clone();
            if selector.match_expressions.is_some() {
                violations.push(format!("{at}: spec.selector uses matchExpressions"));
            }
            let match_labels = selector.match_labels.unwrap_or_default();
            if match_labels.is_empty() {
                violations.push(format!("{at}: spec.selector.matchLabels is empty"));
            }
            let labels = w.labels();
            for (k, v) in &match_labels {
                if labels.get(k) != Some(v) {
                    violations.push(format!(
                        "{at}: spec.selector.matchLabels {k}={v} is not a label of \
                         spec.template.metadata.labels {labels:?}"
                    ));
                }
            }
        }
    }
    assert_none("workload selectors", &violations);
}

/// The labels of the ferry namespace: those the render gives it, and the name label the API
/// server adds to every namespace.
fn namespace_labels(objects: &[Value]) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = of_kind(objects, "Namespace")
        .find(|n| str_at(n, "/metadata/name") == NAMESPACE)
        .and_then(|n| n.pointer("/metadata/labels"))
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    labels.insert("kubernetes.io/metadata.name".into(), NAMESPACE.into());
    labels
}

#[test]
fn services_and_network_policies_select_pods_of_the_same_render() {
    let mut violations = Vec::new();
    for (overlay, objects) in rendered(&mut violations).0 {
        let pods: Vec<BTreeMap<String, String>> = workloads(overlay, objects, &mut violations)
            .iter()
            .map(Workload::labels)
            .collect();
        let namespace_labels = namespace_labels(objects);
        for object in of_kind(objects, "Service") {
            let at = format!("overlay {overlay}: {}", object_id(object));
            let Some(service) = decode::<Service>(overlay, object, &mut violations) else {
                continue;
            };
            let selector = service.spec.and_then(|s| s.selector).unwrap_or_default();
            if selector.is_empty() {
                violations.push(format!("{at}: spec.selector is empty"));
            } else if !pods.iter().any(|labels| map_matches(&selector, labels)) {
                violations.push(format!(
                    "{at}: spec.selector {selector:?} matches no pod template of the render"
                ));
            }
        }
        for object in of_kind(objects, "NetworkPolicy") {
            let at = format!("overlay {overlay}: {}", object_id(object));
            let Some(policy) = decode::<NetworkPolicy>(overlay, object, &mut violations) else {
                continue;
            };
            let spec = policy.spec.unwrap_or_default();
            let selector = spec.pod_selector.unwrap_or_default();
            if !pods
                .iter()
                .any(|labels| selector_matches(&selector, labels))
            {
                violations.push(format!(
                    "{at}: spec.podSelector {} matches no pod template of the render",
                    show_selector(&selector)
                ));
            }
            for (i, rule) in spec.ingress.iter().flatten().enumerate() {
                for (j, peer) in rule.from.iter().flatten().enumerate() {
                    // A peer whose namespaceSelector leaves out ferry selects pods of other
                    // namespaces, which no render holds.
                    let in_ferry = peer
                        .namespace_selector
                        .as_ref()
                        .is_none_or(|s| selector_matches(s, &namespace_labels));
                    let Some(selector) = peer.pod_selector.as_ref().filter(|_| in_ferry) else {
                        continue;
                    };
                    if !pods.iter().any(|labels| selector_matches(selector, labels)) {
                        violations.push(format!(
                            "{at}: spec.ingress[{i}].from[{j}].podSelector {} matches no pod \
                             template of the render",
                            show_selector(selector)
                        ));
                    }
                }
            }
        }
    }
    assert_none("service and network policy selectors", &violations);
}

#[test]
fn every_namespaced_object_lives_in_the_ferry_namespace() {
    let mut violations = Vec::new();
    for (overlay, objects) in rendered(&mut violations).0 {
        for object in objects {
            let at = format!("overlay {overlay}: {}", object_id(object));
            let Some(known) = known_kind(object) else {
                continue; // Reported by the unknown-fields test.
            };
            let namespace = str_at(object, "/metadata/namespace");
            if known.namespaced && namespace != NAMESPACE {
                violations.push(format!(
                    "{at}: namespace is {namespace:?}, not {NAMESPACE:?}"
                ));
            }
            if matches!(known.kind, "RoleBinding" | "ClusterRoleBinding") {
                let subjects = object.get("subjects").and_then(Value::as_array);
                for (i, subject) in subjects.into_iter().flatten().enumerate() {
                    let namespace = str_at(subject, "/namespace");
                    if str_at(subject, "/kind") == "ServiceAccount" && namespace != NAMESPACE {
                        violations.push(format!(
                            "{at}: subjects[{i}] ServiceAccount {} is in namespace {namespace:?}, \
                             not {NAMESPACE:?}",
                            str_at(subject, "/name")
                        ));
                    }
                }
            }
        }
    }
    assert_none("namespaces", &violations);
}

/// The objects a pod refers to by name, by kind.
#[derive(Default)]
struct PodReferences {
    secrets: BTreeSet<String>,
    config_maps: BTreeSet<String>,
    claims: BTreeSet<String>,
    service_account: Option<String>,
}

fn pod_references(pod: &PodSpec) -> PodReferences {
    let mut refs = PodReferences {
        service_account: pod
            .service_account_name
            .clone()
            .or_else(|| pod.service_account.clone()),
        ..Default::default()
    };
    for volume in pod.volumes.iter().flatten() {
        if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            refs.secrets.insert(name);
        }
        if let Some(cm) = &volume.config_map {
            refs.config_maps.insert(cm.name.clone());
        }
        if let Some(claim) = &volume.persistent_volume_claim {
            refs.claims.insert(claim.claim_name.clone());
        }
        for source in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(s) = &source.secret {
                refs.secrets.insert(s.name.clone());
            }
            if let Some(cm) = &source.config_map {
                refs.config_maps.insert(cm.name.clone());
            }
        }
    }
    refs.secrets.extend(
        pod.image_pull_secrets
            .iter()
            .flatten()
            .map(|s| s.name.clone()),
    );
    for (_, c) in all_containers(pod) {
        for from in c.env_from.iter().flatten() {
            refs.secrets
                .extend(from.secret_ref.iter().map(|s| s.name.clone()));
            refs.config_maps
                .extend(from.config_map_ref.iter().map(|s| s.name.clone()));
        }
        for value_from in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            refs.secrets
                .extend(value_from.secret_key_ref.iter().map(|s| s.name.clone()));
            refs.config_maps
                .extend(value_from.config_map_key_ref.iter().map(|s| s.name.clone()));
        }
    }
    refs
}

#[test]
fn pod_templates_refer_only_to_rendered_objects_and_to_secrets_the_guide_creates() {
    let mut violations = Vec::new();
    let guide = readme();
    let mut operator_secrets = BTreeMap::<String, BTreeSet<String>>::new();
    let (renders, complete) = rendered(&mut violations);
    for (overlay, objects) in renders {
        for w in workloads(overlay, objects, &mut violations) {
            let at = format!("overlay {overlay}: {}", w.id);
            let refs = pod_references(&w.pod());
            if let Some(sa) = &refs.service_account
                && !has_object(objects, "ServiceAccount", sa)
            {
                violations.push(format!(
                    "{at}: serviceAccountName {sa} is not in the render"
                ));
            }
            for claim in &refs.claims {
                if !has_object(objects, "PersistentVolumeClaim", claim) {
                    violations.push(format!(
                        "{at}: persistentVolumeClaim {claim} is not in the render"
                    ));
                }
            }
            for cm in &refs.config_maps {
                if !has_object(objects, "ConfigMap", cm) {
                    violations.push(format!("{at}: ConfigMap {cm} is not in the render"));
                }
            }
            for secret in &refs.secrets {
                if has_object(objects, "Secret", secret) {
                    continue;
                }
                if !mentions(&guide, secret) {
                    violations.push(format!(
                        "{at}: Secret {secret} is not in the render and deploy/README.md does \
                         not tell the operator to create it"
                    ));
                }
                operator_secrets
                    .entry(secret.clone())
                    .or_default()
                    .insert(overlay.to_owned());
            }
        }
    }
    // Which Secrets no overlay uses is known only when every overlay rendered.
    let created = secrets_created_by_readme(&guide);
    let used: BTreeSet<String> = operator_secrets.keys().cloned().collect();
    let unused = if complete {
        created.difference(&used).cloned().collect()
    } else {
        BTreeSet::new()
    };
    for secret in used.difference(&created) {
        violations.push(format!(
            "Secret {secret} (used by overlays {:?}) has no `kubectl create secret` command in \
             deploy/README.md",
            operator_secrets[secret]
        ));
    }
    for secret in unused {
        violations.push(format!(
            "deploy/README.md tells the operator to create Secret {secret}, which no overlay uses"
        ));
    }
    assert_none("pod template references", &violations);
}

#[test]
fn agent_daemonsets_mount_the_kubelet_root_they_pass_to_the_agent_with_host_to_container_propagation()
 {
    let mut violations = Vec::new();
    for (overlay, objects) in rendered(&mut violations).0 {
        for (at, pod, c) in agent_containers(overlay, objects, &mut violations) {
            let root = match kubelet_root(&c) {
                Ok(root) => root,
                Err(e) => {
                    violations.push(format!("{at}: {e}"));
                    continue;
                }
            };
            let mount = c
                .volume_mounts
                .iter()
                .flatten()
                .find(|m| m.mount_path.trim_end_matches('/') == root.trim_end_matches('/'));
            let Some(mount) = mount else {
                violations.push(format!(
                    "{at}: nothing is mounted at the kubelet root {root}"
                ));
                continue;
            };
            let host_path = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .and_then(|v| v.host_path.as_ref())
                .map(|h| h.path.clone());
            match host_path {
                Some(path) if path.trim_end_matches('/') == root.trim_end_matches('/') => {}
                Some(path) => violations.push(format!(
                    "{at}: volume {} mounted at {root} is hostPath {path}, not {root}",
                    mount.name
                )),
                None => violations.push(format!(
                    "{at}: volume {} mounted at {root} is not a hostPath volume",
                    mount.name
                )),
            }
            let propagation = mount.mount_propagation.as_deref().unwrap_or("None");
            if propagation != "HostToContainer" {
                violations.push(format!(
                    "{at}: the kubelet mount {} has mountPropagation {propagation}, not \
                 HostToContainer",
                    mount.name
                ));
            }
        }
    }
    assert_none("kubelet mounts", &violations);
}

#[test]
fn each_distribution_overlay_uses_its_kubelet_root() {
    const DEFAULT_ROOT: &str = "/var/lib/kubelet";
    let expected: [(&str, Option<&str>); 5] = [
        ("control-plane", Some(DEFAULT_ROOT)),
        ("agents", Some(DEFAULT_ROOT)),
        ("k0s", Some("/var/lib/k0s/kubelet")),
        (
            "microk8s",
            Some("/var/snap/microk8s/common/var/lib/kubelet"),
        ),
        // RKE's root is whatever the manifests chose; it only has to differ from the default.
        ("rke", None),
    ];
    let mut violations = Vec::new();
    let (renders, _) = rendered(&mut violations);
    let exists = |overlay: &str| overlay_dirs().iter().any(|d| d.ends_with(overlay));
    for (overlay, want) in expected {
        let Some((_, objects)) = renders.iter().find(|(name, _)| *name == overlay) else {
            // An overlay that did not render is a violation already.
            if !exists(overlay) {
                violations.push(format!("overlay {overlay} does not exist"));
            }
            continue;
        };
        let roots = agent_kubelet_roots(overlay, objects, &mut violations);
        if roots.is_empty() {
            violations.push(format!(
                "overlay {overlay}: renders no DaemonSet running agent serve"
            ));
        }
        for (at, root) in roots {
            match want {
                Some(want) if root != want => {
                    violations.push(format!("{at}: kubelet root is {root}, not {want}"));
                }
                None if root == DEFAULT_ROOT => {
                    violations.push(format!("{at}: kubelet root is the default {DEFAULT_ROOT}"));
                }
                _ => {}
            }
        }
    }
    assert_none("distribution kubelet roots", &violations);
}

#[test]
fn the_agent_adds_only_file_capabilities_and_the_coordinator_runs_as_non_root() {
    let mut violations = Vec::new();
    let wanted: BTreeSet<String> = AGENT_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    let mut agents = 0;
    let mut coordinators = 0;
    let (renders, complete) = rendered(&mut violations);
    for (overlay, objects) in renders {
        for w in workloads(overlay, objects, &mut violations) {
            let pod = w.pod();
            let pod_non_root = pod
                .security_context
                .as_ref()
                .and_then(|s| s.run_as_non_root);
            let pod_user = pod.security_context.as_ref().and_then(|s| s.run_as_user);
            for (at, c) in all_containers(&pod) {
                let at = format!("overlay {overlay}: {} {at}", w.id);
                let security = c.security_context.clone().unwrap_or_default();
                let privileged = security.privileged == Some(true);
                if privileged && overlay != PRIVILEGED_OVERLAY {
                    violations.push(format!(
                        "{at}: privileged outside the {PRIVILEGED_OVERLAY} overlay"
                    ));
                }
                match serve_command(c) {
                    Some(Serve::Agent) => {
                        agents += 1;
                        // A privileged container gets every capability; add and drop are moot.
                        if privileged {
                            continue;
                        }
                        let caps = security.capabilities.unwrap_or_default();
                        let add: BTreeSet<String> = caps.add.into_iter().flatten().collect();
                        let drop: Vec<String> = caps.drop.unwrap_or_default();
                        if add != wanted {
                            let extra: Vec<_> = add.difference(&wanted).collect();
                            let missing: Vec<_> = wanted.difference(&add).collect();
                            violations.push(format!(
                                "{at}: securityContext.capabilities.add has {extra:?} too many \
                                 and lacks {missing:?}"
                            ));
                        }
                        if drop != ["ALL"] {
                            violations.push(format!(
                                "{at}: securityContext.capabilities.drop is {drop:?}, not [\"ALL\"]"
                            ));
                        }
                    }
                    Some(Serve::Coordinator) => {
                        coordinators += 1;
                        if security.run_as_non_root.or(pod_non_root) != Some(true) {
                            violations.push(format!("{at}: runAsNonRoot is not true"));
                        }
                        if security.run_as_user.or(pod_user) == Some(0) {
                            violations.push(format!("{at}: runAsUser is 0"));
                        }
                    }
                    None => {}
                }
            }
        }
    }
    if complete && agents == 0 {
        violations.push("no overlay renders a container running agent serve".into());
    }
    if complete && coordinators == 0 {
        violations.push("no overlay renders a container running coordinator serve".into());
    }
    assert_none("container security", &violations);
}

#[test]
fn the_coordinator_cluster_role_grants_exactly_pv_and_pvc_get_create_patch() {
    let wanted: BTreeSet<(String, String, String)> =
        ["persistentvolumes", "persistentvolumeclaims"]
            .iter()
            .flat_map(|r| {
                ["get", "create", "patch"]
                    .iter()
                    .map(move |v| (String::new(), r.to_string(), v.to_string()))
            })
            .collect();
    let mut violations = Vec::new();
    for (overlay, objects) in rendered(&mut violations).0 {
        let roles: Vec<&Value> = of_kind(objects, "ClusterRole")
            .filter(|r| str_at(r, "/metadata/name").contains("coordinator"))
            .collect();
        for object in &roles {
            let at = format!("overlay {overlay}: {}", object_id(object));
            let Some(role) = decode::<ClusterRole>(overlay, object, &mut violations) else {
                continue;
            };
            if role.aggregation_rule.is_some() {
                violations.push(format!("{at}: has an aggregationRule"));
            }
            let mut granted = BTreeSet::new();
            for (i, rule) in role.rules.iter().flatten().enumerate() {
                if rule.non_resource_urls.is_some() || rule.resource_names.is_some() {
                    violations.push(format!(
                        "{at}: rules[{i}] uses nonResourceURLs or resourceNames"
                    ));
                }
                for group in rule.api_groups.iter().flatten() {
                    for resource in rule.resources.iter().flatten() {
                        for verb in &rule.verbs {
                            granted.insert((group.clone(), resource.clone(), verb.clone()));
                        }
                    }
                }
            }
            for (group, resource, verb) in granted.difference(&wanted) {
                violations.push(format!(
                    "{at}: grants {verb} on {resource} in group {group:?}, which the coordinator \
                     does not need"
                ));
            }
            for (_, resource, verb) in wanted.difference(&granted) {
                violations.push(format!("{at}: does not grant {verb} on core {resource}"));
            }
        }

        // Wherever the coordinator runs, its ServiceAccount is bound to exactly one such role.
        for w in workloads(overlay, objects, &mut violations) {
            let pod = w.pod();
            if !pod
                .containers
                .iter()
                .any(|c| serve_command(c) == Some(Serve::Coordinator))
            {
                continue;
            }
            let at = format!("overlay {overlay}: {}", w.id);
            if roles.len() != 1 {
                violations.push(format!(
                    "{at}: the render holds {} ClusterRoles named for the coordinator, not 1",
                    roles.len()
                ));
                continue;
            }
            let role = str_at(roles[0], "/metadata/name");
            let sa = pod
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into());
            let bound = of_kind(objects, "ClusterRoleBinding").any(|b| {
                str_at(b, "/roleRef/kind") == "ClusterRole"
                    && str_at(b, "/roleRef/name") == role
                    && b.get("subjects")
                        .and_then(Value::as_array)
                        .is_some_and(|s| {
                            s.iter().any(|s| {
                                str_at(s, "/kind") == "ServiceAccount"
                                    && str_at(s, "/name") == sa
                                    && str_at(s, "/namespace") == NAMESPACE
                            })
                        })
            });
            if !bound {
                violations.push(format!(
                    "{at}: no ClusterRoleBinding binds ClusterRole {role} to ServiceAccount \
                     {NAMESPACE}/{sa}"
                ));
            }
        }
    }
    assert_none("coordinator ClusterRole", &violations);
}

// ---------------------------------------------------------------------------------------------
// 3. The manifests speak the binary's language
// ---------------------------------------------------------------------------------------------

#[test]
fn every_flag_and_env_var_the_manifests_pass_is_in_ferry_serve_help() {
    let mut violations = Vec::new();
    // (command, `--flag` or env var) -> where it is used; grouped so that one unknown flag
    // used by every overlay is one line.
    let mut unknown = BTreeMap::<(Serve, String), BTreeSet<String>>::new();
    for (overlay, objects) in rendered(&mut violations).0 {
        for w in workloads(overlay, objects, &mut violations) {
            for (at, c) in all_containers(&w.pod()) {
                let at = format!("overlay {overlay}: {} {at}", w.id);
                let Some(command) = serve_command(c) else {
                    if runs_ferry_image(c) {
                        violations.push(format!(
                            "{at}: runs the ferry image but neither `agent serve` nor \
                             `coordinator serve` (args {:?})",
                            c.args.clone().unwrap_or_default()
                        ));
                    }
                    continue;
                };
                let help = match help(command) {
                    Ok(help) => help,
                    Err(e) => {
                        violations.push(e.clone());
                        continue;
                    }
                };
                let words = ferry_words(c).unwrap_or_default();
                for (flag, _) in flags(&words[2..]) {
                    if !help_has_flag(help, &flag) {
                        unknown
                            .entry((command, flag))
                            .or_default()
                            .insert(at.clone());
                    }
                }
                let env = c.env.clone().unwrap_or_default();
                // Kubernetes substitutes `$(NAME)` in env values and args; a variable that
                // exists only to be substituted need not be ferry's.
                let referenced: BTreeSet<String> = env
                    .iter()
                    .filter_map(|e| e.value.as_deref())
                    .chain(words.iter().map(String::as_str))
                    .flat_map(substitutions)
                    .collect();
                for var in env.iter().map(|e| &e.name) {
                    if !help_has_env(help, var) && !referenced.contains(var) {
                        unknown
                            .entry((command, format!("env {var}")))
                            .or_default()
                            .insert(at.clone());
                    }
                }
            }
        }
    }
    for ((command, item), places) in unknown {
        violations.push(format!(
            "ferry {} --help does not list {item}, used by {}",
            command.name(),
            places.into_iter().collect::<Vec<_>>().join("; ")
        ));
    }
    assert_none("flags and env vars unknown to ferry", &violations);
}

#[test]
fn the_dockerfile_is_multi_stage_with_a_ferry_entrypoint_and_a_non_root_user() {
    let path = deploy_dir().join("Dockerfile");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", shown(&path)));
    // Instructions with their line continuations joined, comments dropped.
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let keyword = |i: &str| {
        i.split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase()
    };
    let argument = |i: &str| {
        i.split_once(char::is_whitespace)
            .map_or("", |(_, a)| a.trim())
            .to_owned()
    };
    let mut violations = Vec::new();
    let stages: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| keyword(i) == "FROM")
        .map(|(n, _)| n)
        .collect();
    if stages.len() < 2 {
        violations.push(format!(
            "has {} FROM lines, not a multi-stage build",
            stages.len()
        ));
    }
    let last = &instructions[stages.last().copied().unwrap_or(0)..];
    match last.iter().rev().find(|i| keyword(i) == "ENTRYPOINT") {
        None => violations.push("the final stage has no ENTRYPOINT".into()),
        Some(entrypoint) => {
            let argument = argument(entrypoint);
            // The manifests' args start with the subcommand, so the entrypoint must be ferry
            // alone.
            let exec: Option<Vec<String>> = serde_json::from_str(&argument).ok();
            if exec.as_deref() != Some(&["/usr/local/bin/ferry".to_owned()]) {
                violations.push(format!(
                    "ENTRYPOINT is {argument}, not [\"/usr/local/bin/ferry\"]"
                ));
            }
        }
    }
    match last.iter().rev().find(|i| keyword(i) == "USER") {
        None => violations.push("the final stage sets no USER".into()),
        Some(user) => {
            let argument = argument(user);
            let uid = argument.split(':').next().unwrap_or("");
            match uid.parse::<u32>() {
                Ok(0) => violations.push("the final stage's USER is root (0)".into()),
                Ok(_) => {}
                Err(_) => violations.push(format!(
                    "the final stage's USER {argument} is not a numeric uid, so Kubernetes \
                     cannot verify runAsNonRoot"
                )),
            }
        }
    }
    let violations: Vec<String> = violations
        .into_iter()
        .map(|v| format!("{}: {v}", shown(&path)))
        .collect();
    assert_none("Dockerfile", &violations);
}
