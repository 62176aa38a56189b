//! The containers of the rendered workloads: the `ferry` command each runs, its flags and
//! variables, the kubelet root it is given; the binary's `--help`; and the operator's guide.

use super::*;

// ---------------------------------------------------------------------------------------------
// Containers and the ferry command they run
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Serve {
    Agent,
    Coordinator,
}

impl Serve {
    pub(crate) fn words(self) -> [&'static str; 2] {
        match self {
            Serve::Agent => ["agent", "serve"],
            Serve::Coordinator => ["coordinator", "serve"],
        }
    }

    pub(crate) fn name(self) -> String {
        self.words().join(" ")
    }
}

/// Every container of a pod, init containers first, with `containers[i]`-style paths.
pub(crate) fn all_containers(pod: &PodSpec) -> Vec<(String, &Container)> {
    let init = pod.init_containers.iter().flatten().enumerate();
    let main = pod.containers.iter().enumerate();
    init.map(|(i, c)| (format!("initContainers[{i}] {}", c.name), c))
        .chain(main.map(|(i, c)| (format!("containers[{i}] {}", c.name), c)))
        .collect()
}

/// The words after the `ferry` executable: `args` when the image's ENTRYPOINT runs, or
/// `command` without its first word when that word is ferry. None when something else runs.
pub(crate) fn ferry_words(container: &Container) -> Option<Vec<String>> {
    let args = container.args.clone().unwrap_or_default();
    match container.command.as_deref() {
        None | Some([]) => Some(args),
        Some([program, rest @ ..]) if program == "ferry" || program.ends_with("/ferry") => {
            Some(rest.iter().cloned().chain(args).collect())
        }
        Some(_) => None,
    }
}

pub(crate) fn serve_command(container: &Container) -> Option<Serve> {
    let words = ferry_words(container)?;
    [Serve::Agent, Serve::Coordinator]
        .into_iter()
        .find(|s| words.len() >= 2 && words[..2] == s.words())
}

pub(crate) fn runs_ferry_image(container: &Container) -> bool {
    container.image.as_deref().unwrap_or("").contains("ferry")
}

/// Every `--flag` of `words` with its value (`--flag=value` or `--flag value`).
pub(crate) fn flags(words: &[String]) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        i += 1;
        if word == "--" {
            break;
        }
        if !word.starts_with("--") {
            continue;
        }
        match word.split_once('=') {
            Some((flag, value)) => out.push((flag.to_owned(), Some(value.to_owned()))),
            None => {
                let value = words.get(i).filter(|w| !w.starts_with('-')).cloned();
                if value.is_some() {
                    i += 1;
                }
                out.push((word.clone(), value));
            }
        }
    }
    out
}

/// The names referenced as `$(NAME)` in `text`, Kubernetes' substitution syntax.
pub(crate) fn substitutions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("$(") {
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else { break };
        // `$$(NAME)` is an escaped, literal `$(NAME)`.
        if !rest[..start].ends_with('$') {
            out.push(after[..end].to_owned());
        }
        rest = &after[end + 1..];
    }
    out
}

/// The literal value of environment variable `name` in `container`, if set to one.
pub(crate) fn env_value<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// The kubelet root the agent container is told about, by env or flag.
pub(crate) fn kubelet_root(container: &Container) -> Result<String, String> {
    let by_env = env_value(container, "FERRY_KUBELET_ROOT");
    let words = ferry_words(container).unwrap_or_default();
    let by_flag = flags(&words)
        .into_iter()
        .find(|(f, _)| f == "--kubelet-root")
        .map(|(_, v)| v.unwrap_or_default());
    match (by_env, by_flag) {
        (Some(env), Some(flag)) if env != flag => Err(format!(
            "FERRY_KUBELET_ROOT={env} and --kubelet-root {flag} disagree"
        )),
        (Some(env), _) => Ok(env.to_owned()),
        (None, Some(flag)) => Ok(flag),
        (None, None) => Err(
            "sets neither FERRY_KUBELET_ROOT nor --kubelet-root, so its mount and the agent \
             can drift apart"
                .into(),
        ),
    }
}

/// The containers running `ferry agent serve` in the DaemonSets of a render, each with where
/// it is (for messages) and its pod's spec.
pub(crate) fn agent_containers(
    overlay: &str,
    objects: &[Value],
    violations: &mut Vec<String>,
) -> Vec<(String, PodSpec, Container)> {
    let mut out = Vec::new();
    for object in of_kind(objects, "DaemonSet") {
        let Some(ds) = decode::<DaemonSet>(overlay, object, violations) else {
            continue;
        };
        let pod = ds
            .spec
            .unwrap_or_default()
            .template
            .spec
            .unwrap_or_default();
        for (at, c) in all_containers(&pod) {
            if serve_command(c) == Some(Serve::Agent) {
                let here = format!("overlay {overlay}: {} {at}", object_id(object));
                out.push((here, pod.clone(), c.clone()));
            }
        }
    }
    out
}

/// The agent containers of every DaemonSet of a render, with their kubelet roots.
pub(crate) fn agent_kubelet_roots(
    overlay: &str,
    objects: &[Value],
    violations: &mut Vec<String>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (at, _, c) in agent_containers(overlay, objects, violations) {
        match kubelet_root(&c) {
            Ok(root) => out.push((at, root)),
            Err(e) => violations.push(format!("{at}: {e}")),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// ferry --help
// ---------------------------------------------------------------------------------------------

/// `ferry <command> --help`, whitespace collapsed so that wrapped lines do not split a match.
pub(crate) fn help(command: Serve) -> &'static Result<String, String> {
    static AGENT: OnceLock<Result<String, String>> = OnceLock::new();
    static COORDINATOR: OnceLock<Result<String, String>> = OnceLock::new();
    let cell = match command {
        Serve::Agent => &AGENT,
        Serve::Coordinator => &COORDINATOR,
    };
    cell.get_or_init(|| {
        // A clean environment, so that no inherited variable shows up as an env default.
        let output = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(command.words())
            .arg("--help")
            .env_clear()
            .output()
            .map_err(|e| format!("running ferry {} --help: {e}", command.name()))?;
        if !output.status.success() {
            return Err(format!(
                "ferry {} --help failed ({}): {}",
                command.name(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
    })
}

/// Whether `help` lists `flag` as a whole word (`--repo` does not match `--repository`).
pub(crate) fn help_has_flag(help: &str, flag: &str) -> bool {
    let part_of_word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    help.match_indices(flag).any(|(at, _)| {
        let before = help[..at].chars().next_back();
        let after = help[at + flag.len()..].chars().next();
        !before.is_some_and(part_of_word) && !after.is_some_and(part_of_word)
    })
}

/// Whether `help` names `var` as an argument's environment variable, as clap prints it:
/// `[env: NAME=value]`, or `[env: NAME]` when the argument hides its value.
pub(crate) fn help_has_env(help: &str, var: &str) -> bool {
    help.contains(&format!("[env: {var}=")) || help.contains(&format!("[env: {var}]"))
}

// ---------------------------------------------------------------------------------------------
// The operator's guide
// ---------------------------------------------------------------------------------------------

pub(crate) fn readme() -> String {
    fs::read_to_string(deploy_dir().join("README.md")).unwrap_or_default()
}

/// Whether `text` holds `name` as a whole Kubernetes name.
pub(crate) fn mentions(text: &str, name: &str) -> bool {
    let part_of_name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        // A sentence may end right after a name.
        let after_ok = match after {
            Some('.') => text[at + name.len() + 1..]
                .chars()
                .next()
                .is_none_or(|c| !part_of_name(c)),
            other => !other.is_some_and(part_of_name),
        };
        !before.is_some_and(part_of_name) && after_ok
    })
}

/// The names of the Secrets the guide's `kubectl … create secret <type> <name>` commands
/// create. Only lines that are commands count, so prose about the command names nothing.
pub(crate) fn secrets_created_by_readme(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().skip_while(|w| *w == "$").collect();
        if words.first() != Some(&"kubectl") {
            continue;
        }
        let Some(at) = words
            .windows(2)
            .position(|pair| pair == ["create", "secret"])
        else {
            continue;
        };
        // After the type (generic, tls, docker-registry), the first word that is neither a
        // flag nor a flag's value.
        let mut rest = words.iter().skip(at + 3);
        while let Some(word) = rest.next() {
            if word.starts_with('-') {
                if !word.contains('=') {
                    rest.next();
                }
                continue;
            }
            out.insert(word.trim_matches(|c| c == '`' || c == '\\').to_owned());
            break;
        }
    }
    out
}
