//! Kustomization files, held to the fields kustomize v2.0.3 (Debian's kubectl 1.20) knows, and
//! the files they name.

use super::*;

// ---------------------------------------------------------------------------------------------
// Kustomizations (kustomize v2.0.3, as embedded in Debian's kubectl 1.20)
// ---------------------------------------------------------------------------------------------

/// The kustomization fields kustomize v2.0.3 understands and these manifests may use. Newer
/// fields (`patches`, `components`, `labels`, the deprecated `commonLabels`) are rejected by
/// `deny_unknown_fields`, as v2.0.3 itself rejects what it does not know.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Kustomization {
    pub(crate) api_version: Option<String>,
    pub(crate) kind: Option<String>,
    pub(crate) namespace: Option<String>,
    #[serde(rename = "namePrefix")]
    pub(crate) _name_prefix: Option<IgnoredAny>,
    #[serde(default)]
    pub(crate) resources: Vec<String>,
    #[serde(default)]
    pub(crate) bases: Vec<String>,
    #[serde(default)]
    pub(crate) patches_strategic_merge: Vec<String>,
    #[serde(default, rename = "patchesJson6902")]
    pub(crate) patches_json6902: Vec<JsonPatch>,
    #[serde(default)]
    pub(crate) images: Vec<Image>,
    #[serde(default)]
    pub(crate) config_map_generator: Vec<Generator>,
    #[serde(default)]
    pub(crate) secret_generator: Vec<Generator>,
    #[serde(rename = "generatorOptions")]
    pub(crate) _generator_options: Option<GeneratorOptions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JsonPatch {
    pub(crate) target: PatchTarget,
    pub(crate) path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PatchTarget {
    #[serde(rename = "group")]
    pub(crate) _group: Option<IgnoredAny>,
    #[serde(rename = "version")]
    pub(crate) _version: Option<IgnoredAny>,
    pub(crate) kind: String,
    pub(crate) name: String,
    #[serde(rename = "namespace")]
    pub(crate) _namespace: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct Image {
    pub(crate) name: String,
    pub(crate) new_name: Option<String>,
    pub(crate) new_tag: Option<String>,
    pub(crate) digest: Option<String>,
}

/// A v2.0.3 generator: `env` names one file (`envs` came later).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Generator {
    pub(crate) name: String,
    pub(crate) namespace: Option<String>,
    #[serde(rename = "behavior")]
    pub(crate) _behavior: Option<IgnoredAny>,
    #[serde(default)]
    pub(crate) files: Vec<String>,
    #[serde(rename = "literals")]
    pub(crate) _literals: Option<IgnoredAny>,
    pub(crate) env: Option<String>,
    /// Only for secretGenerator; v2.0.3 accepts it on both.
    #[serde(rename = "type")]
    pub(crate) _type: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GeneratorOptions {
    #[serde(rename = "labels")]
    pub(crate) _labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "annotations")]
    pub(crate) _annotations: Option<BTreeMap<String, String>>,
    #[serde(rename = "disableNameSuffixHash")]
    pub(crate) _disable_name_suffix_hash: Option<bool>,
}

/// What a kustomization names on disk: files that must be files, directories that must be
/// kustomizations.
pub(crate) struct Named {
    pub(crate) files: Vec<(String, String)>,
    pub(crate) bases: Vec<String>,
}

impl Kustomization {
    /// Everything this kustomization names, each with the field naming it.
    pub(crate) fn named(&self) -> Named {
        let mut files = Vec::new();
        files.extend(
            self.resources
                .iter()
                .map(|r| ("resources".into(), r.clone())),
        );
        files.extend(
            self.patches_strategic_merge
                .iter()
                .map(|p| ("patchesStrategicMerge".into(), p.clone())),
        );
        files.extend(self.patches_json6902.iter().map(|p| {
            let field = format!(
                "patchesJson6902 (target {}/{})",
                p.target.kind, p.target.name
            );
            (field, p.path.clone())
        }));
        for (field, generators) in [
            ("configMapGenerator", &self.config_map_generator),
            ("secretGenerator", &self.secret_generator),
        ] {
            for g in generators {
                let field = format!("{field} {}", g.name);
                for source in &g.files {
                    // `key=path` names the key the file's content is stored under.
                    let path = source.split_once('=').map_or(source.as_str(), |(_, p)| p);
                    files.push((field.clone(), path.to_owned()));
                }
                files.extend(g.env.iter().map(|e| (field.clone(), e.clone())));
            }
        }
        Named {
            files,
            bases: self.bases.clone(),
        }
    }

    /// Violations of what the fields' values must be, apart from the files they name.
    pub(crate) fn value_violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(v) = &self.api_version
            && v != "kustomize.config.k8s.io/v1beta1"
        {
            out.push(format!(
                "apiVersion is {v:?}, not kustomize.config.k8s.io/v1beta1"
            ));
        }
        if let Some(k) = &self.kind
            && k != "Kustomization"
        {
            out.push(format!("kind is {k:?}, not Kustomization"));
        }
        for namespace in self.namespace.iter().chain(
            self.config_map_generator
                .iter()
                .chain(&self.secret_generator)
                .filter_map(|g| g.namespace.as_ref()),
        ) {
            if namespace != NAMESPACE {
                out.push(format!("namespace is {namespace:?}, not {NAMESPACE:?}"));
            }
        }
        for image in &self.images {
            if image.new_name.is_none() && image.new_tag.is_none() && image.digest.is_none() {
                out.push(format!("images entry {} changes nothing", image.name));
            }
        }
        out
    }
}

/// Checks one kustomization.yaml; returns the files it names, so that unnamed files can be
/// found, or None when it does not parse and what it names is unknown.
pub(crate) fn check_kustomization(
    path: &Path,
    violations: &mut Vec<String>,
) -> Option<BTreeSet<PathBuf>> {
    let mut named_paths = BTreeSet::new();
    let here = shown(path);
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            violations.push(format!("{here}: reading: {e}"));
            return None;
        }
    };
    let kustomization: Kustomization = match serde_yaml::from_str(&text) {
        Ok(k) => k,
        Err(e) => {
            violations.push(format!(
                "{here}: not a kustomize v2.0.3 kustomization (Debian's kubectl 1.20 must render it; \
                 patches, components, commonLabels and labels are not allowed): {e}"
            ));
            return None;
        }
    };
    violations.extend(
        kustomization
            .value_violations()
            .into_iter()
            .map(|v| format!("{here}: {v}")),
    );
    let dir = path.parent().expect("a kustomization.yaml has a directory");
    let named = kustomization.named();
    for (field, name) in named.files {
        let target = dir.join(&name);
        if target.is_dir() {
            violations.push(format!(
                "{here}: {field} names the directory {name}; kustomize v2.0.3 takes only files \
                 there (directories go under bases)"
            ));
        } else if !target.is_file() {
            violations.push(format!(
                "{here}: {field} names {name}, which does not exist"
            ));
        }
        named_paths.insert(normalize(&target));
    }
    for name in named.bases {
        let target = dir.join(&name);
        if !target.join("kustomization.yaml").is_file() {
            violations.push(format!(
                "{here}: bases names {name}, which is not a directory holding kustomization.yaml"
            ));
        }
    }
    Some(named_paths)
}

/// `path` with `.` and `..` resolved lexically, so that names from different kustomizations
/// compare equal.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
