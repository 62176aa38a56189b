//! Finding the files under `deploy/`, parsing multi-document YAML, and collecting violations
//! so that a test reports all of them at once.

use super::*;

// ---------------------------------------------------------------------------------------------
// Files and violations
// ---------------------------------------------------------------------------------------------

pub(crate) fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

/// `path` relative to the repository root, for messages.
pub(crate) fn shown(path: &Path) -> String {
    let root = repo_root();
    path.strip_prefix(&root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every file under `dir`, sorted; a missing `dir` yields nothing.
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => panic!("listing {}: {e}", shown(&dir)),
        };
        for entry in entries {
            let path = entry.expect("reading a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

pub(crate) fn is_kustomization(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == "kustomization.yaml")
}

pub(crate) fn is_yaml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml")
}

/// Panics with every violation, one a line, so one run shows everything that is wrong.
pub(crate) fn assert_none(what: &str, violations: &[String]) {
    if !violations.is_empty() {
        panic!(
            "{what}: {} violation(s):\n  - {}",
            violations.len(),
            violations.join("\n  - ")
        );
    }
}

/// The documents of a multi-document YAML text as JSON values; empty documents are skipped.
pub(crate) fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

pub(crate) fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// `Kind/name` of an object, for messages.
pub(crate) fn object_id(object: &Value) -> String {
    format!(
        "{}/{}",
        str_at(object, "/kind"),
        str_at(object, "/metadata/name")
    )
}
