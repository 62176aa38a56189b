//! The strict round trip: an object is decoded into its k8s-openapi type, encoded again, and
//! every key of the original must survive; a key that does not is an unknown (misspelled) field.

use super::*;

// ---------------------------------------------------------------------------------------------
// The strict round trip through the k8s-openapi types
// ---------------------------------------------------------------------------------------------

/// Whether a k8s-openapi scope marker is a namespace.
pub(crate) trait Scope {
    const NAMESPACED: bool;
}

impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// A kind the manifests may use, with the k8s-openapi type that decodes it.
pub(crate) struct KnownKind {
    pub(crate) api_version: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) namespaced: bool,
    pub(crate) round_trip: fn(&Value) -> Result<Value, String>,
}

pub(crate) fn round_trip<T: DeserializeOwned + Serialize>(object: &Value) -> Result<Value, String> {
    let typed: T = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

pub(crate) fn known<T>() -> KnownKind
where
    T: Resource + DeserializeOwned + Serialize,
    T::Scope: Scope,
{
    KnownKind {
        api_version: T::API_VERSION,
        kind: T::KIND,
        namespaced: <T::Scope as Scope>::NAMESPACED,
        round_trip: round_trip::<T>,
    }
}

pub(crate) fn known_kinds() -> &'static [KnownKind] {
    static KINDS: OnceLock<Vec<KnownKind>> = OnceLock::new();
    KINDS.get_or_init(|| {
        vec![
            known::<DaemonSet>(),
            known::<Deployment>(),
            known::<Namespace>(),
            known::<ServiceAccount>(),
            known::<Service>(),
            known::<PersistentVolumeClaim>(),
            known::<ConfigMap>(),
            known::<Secret>(),
            known::<ClusterRole>(),
            known::<ClusterRoleBinding>(),
            known::<Role>(),
            known::<RoleBinding>(),
            known::<NetworkPolicy>(),
        ]
    })
}

pub(crate) fn known_kind(object: &Value) -> Option<&'static KnownKind> {
    let (api_version, kind) = (str_at(object, "/apiVersion"), str_at(object, "/kind"));
    known_kinds()
        .iter()
        .find(|k| k.api_version == api_version && k.kind == kind)
}

/// The JSON path of every key of `object` that its k8s-openapi type does not know.
///
/// Errs when the apiVersion and kind name no known type or the object does not decode.
pub(crate) fn unknown_fields(object: &Value) -> Result<Vec<String>, String> {
    let Some(known) = known_kind(object) else {
        return Err(format!(
            "apiVersion {:?} kind {:?} is not a kind these tests know",
            str_at(object, "/apiVersion"),
            str_at(object, "/kind")
        ));
    };
    let back = (known.round_trip)(object)
        .map_err(|e| format!("does not decode as {}: {e}", known.kind))?;
    let mut dropped = Vec::new();
    dropped_keys(object, &back, "", &mut dropped);
    Ok(dropped)
}

/// Appends to `out` the path of every key of `original` missing from `back` at the same place.
///
/// Only keys are compared: values may come back in another spelling (quantities, int-or-string
/// ports). A key whose value is null counts as present only when it comes back absent or null.
pub(crate) fn dropped_keys(original: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(original), Value::Object(back)) => {
            for (key, value) in original {
                let path = join_key(path, key);
                match (value, back.get(key)) {
                    (Value::Null, None | Some(Value::Null)) => {}
                    (Value::Null, Some(other)) => {
                        out.push(format!("{path} (null came back as {other})"))
                    }
                    (_, None) => out.push(path),
                    (value, Some(other)) => dropped_keys(value, other, &path, out),
                }
            }
        }
        (Value::Array(original), Value::Array(back)) => {
            for (i, value) in original.iter().enumerate() {
                let path = format!("{path}[{i}]");
                match back.get(i) {
                    Some(other) => dropped_keys(value, other, &path, out),
                    None => out.push(path),
                }
            }
        }
        _ => {}
    }
}

pub(crate) fn join_key(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{key:?}]"),
    }
}
