//! Rendering each overlay with `kubectl kustomize`, once per test run, and reading workloads,
//! selectors and objects out of the result.

use super::*;

// ---------------------------------------------------------------------------------------------
// Rendering the overlays
// ---------------------------------------------------------------------------------------------

/// One overlay as `kubectl kustomize` renders it.
pub(crate) struct Render {
    pub(crate) overlay: String,
    /// The rendered objects, or why kubectl failed.
    pub(crate) objects: Result<Vec<Value>, String>,
}

/// Every directory directly under deploy/overlays holding a kustomization.yaml.
pub(crate) fn overlay_dirs() -> Vec<PathBuf> {
    let overlays = deploy_dir().join("overlays");
    let mut dirs: Vec<PathBuf> = match fs::read_dir(&overlays) {
        Ok(entries) => entries
            .map(|e| e.expect("reading deploy/overlays").path())
            .filter(|p| p.join("kustomization.yaml").is_file())
            .collect(),
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("listing {}: {e}", shown(&overlays)),
    };
    dirs.sort();
    dirs
}

/// Renders one overlay. The outer error means kubectl cannot run at all.
pub(crate) fn render(program: &str, dir: &Path) -> Result<Result<Vec<Value>, String>, String> {
    let output = match Command::new(program).arg("kustomize").arg(dir).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(format!(
                "{program} is not installed, so no overlay can be rendered (FERRY_KUBECTL names \
                 another program); .ci/run installs Debian's kubernetes-client package, which \
                 provides kubectl"
            ));
        }
        Err(e) => return Err(format!("running {program} kustomize: {e}")),
    };
    if !output.status.success() {
        return Ok(Err(format!(
            "{program} kustomize {} failed ({}): {}",
            shown(dir),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8(output.stdout)
        .map_err(|e| format!("rendered YAML: {e}"))
        .and_then(|text| parse_documents(&text))
        .map_err(|e| format!("parsing the rendered YAML: {e}")))
}

/// Every overlay, rendered once for all the tests of this file; an error when kubectl cannot
/// run.
pub(crate) fn renders() -> &'static Result<Vec<Render>, String> {
    static RENDERS: OnceLock<Result<Vec<Render>, String>> = OnceLock::new();
    RENDERS.get_or_init(|| {
        let program = std::env::var("FERRY_KUBECTL").unwrap_or_else(|_| "kubectl".into());
        overlay_dirs()
            .iter()
            .map(|dir| {
                Ok(Render {
                    overlay: dir
                        .file_name()
                        .expect("an overlay directory has a name")
                        .to_string_lossy()
                        .into_owned(),
                    objects: render(&program, dir)?,
                })
            })
            .collect()
    })
}

/// The overlays that rendered, with their objects, and whether that is all of them. Every
/// overlay that did not render, and the lack of any, is a violation, so that no property
/// passes for want of objects.
pub(crate) fn rendered(
    violations: &mut Vec<String>,
) -> (Vec<(&'static str, &'static [Value])>, bool) {
    let renders = match renders() {
        Ok(renders) => renders,
        Err(e) => {
            violations.push(e.clone());
            return (Vec::new(), false);
        }
    };
    if renders.is_empty() {
        violations.push("no overlay under deploy/overlays holds a kustomization.yaml".into());
    }
    let mut out = Vec::new();
    for render in renders {
        match &render.objects {
            Ok(objects) => out.push((render.overlay.as_str(), objects.as_slice())),
            Err(e) => violations.push(format!("overlay {}: did not render: {e}", render.overlay)),
        }
    }
    let complete = !renders.is_empty() && out.len() == renders.len();
    (out, complete)
}

/// `object` decoded as `T`; a failure becomes a violation.
pub(crate) fn decode<T: DeserializeOwned>(
    overlay: &str,
    object: &Value,
    violations: &mut Vec<String>,
) -> Option<T> {
    match serde_json::from_value(object.clone()) {
        Ok(typed) => Some(typed),
        Err(e) => {
            violations.push(format!(
                "overlay {overlay}: {}: does not decode: {e}",
                object_id(object)
            ));
            None
        }
    }
}

pub(crate) fn of_kind<'a>(
    objects: &'a [Value],
    kind: &'a str,
) -> impl Iterator<Item = &'a Value> + 'a {
    objects.iter().filter(move |o| str_at(o, "/kind") == kind)
}

pub(crate) fn has_object(objects: &[Value], kind: &str, name: &str) -> bool {
    of_kind(objects, kind).any(|o| str_at(o, "/metadata/name") == name)
}

/// A DaemonSet or Deployment of a render.
pub(crate) struct Workload {
    pub(crate) id: String,
    pub(crate) selector: LabelSelector,
    pub(crate) template: PodTemplateSpec,
}

impl Workload {
    pub(crate) fn labels(&self) -> BTreeMap<String, String> {
        self.template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default()
    }

    pub(crate) fn pod(&self) -> PodSpec {
        self.template.spec.clone().unwrap_or_default()
    }
}

pub(crate) fn workloads(
    overlay: &str,
    objects: &[Value],
    violations: &mut Vec<String>,
) -> Vec<Workload> {
    let mut out = Vec::new();
    for object in objects {
        let id = object_id(object);
        match str_at(object, "/kind") {
            "DaemonSet" => {
                if let Some(ds) = decode::<DaemonSet>(overlay, object, violations) {
                    let spec = ds.spec.unwrap_or_default();
                    out.push(Workload {
                        id,
                        selector: spec.selector,
                        template: spec.template,
                    });
                }
            }
            "Deployment" => {
                if let Some(d) = decode::<Deployment>(overlay, object, violations) {
                    let spec = d.spec.unwrap_or_default();
                    out.push(Workload {
                        id,
                        selector: spec.selector,
                        template: spec.template,
                    });
                }
            }
            _ => {}
        }
    }
    out
}

pub(crate) fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// A selector as `{k=v, key In [a, b]}`, for messages.
pub(crate) fn show_selector(selector: &LabelSelector) -> String {
    let labels = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"));
    let expressions = selector.match_expressions.iter().flatten().map(|e| {
        let values = e.values.clone().unwrap_or_default().join(", ");
        format!("{} {} [{values}]", e.key, e.operator)
    });
    format!(
        "{{{}}}",
        labels.chain(expressions).collect::<Vec<_>>().join(", ")
    )
}

pub(crate) fn map_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
