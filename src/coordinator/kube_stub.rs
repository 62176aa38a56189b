//! A stand-in Kubernetes API server for tests: plain HTTP on a loopback port, objects in memory.
//!
//! [`KubeStub`] serves the slice of the REST API that the coordinator's Kubernetes calls use:
//! get, list, create, replace, merge-patch and delete of core (`/api/v1`) and group
//! (`/apis/{group}/{version}`) resources, cluster-scoped or namespaced, with Kubernetes-shaped
//! `Status` errors (404 `NotFound`, 409 `AlreadyExists` and `Conflict`, 415 for patch types it
//! does not implement). It assigns `metadata.uid` and an incrementing `metadata.resourceVersion`,
//! honours a `resourceVersion` sent with a PUT or PATCH as a precondition, and records every
//! mutating request so a test can assert exactly what a client changed. It deliberately does not
//! validate schemas, run admission, bind claims, watch, serve subresources (`/status`) or
//! discovery, or speak TLS or check credentials: it stands in for a cluster's storage, not its
//! controllers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::coordinator::nfs_move::client_from_config;

/// One recorded mutating request: method, path (without query) and JSON body (`Null` when the
/// body is empty or not JSON).
pub type RecordedRequest = (String, String, Value);

#[derive(Default)]
struct Store {
    /// Objects by item path, such as `/api/v1/namespaces/app/persistentvolumeclaims/data`.
    objects: BTreeMap<String, Value>,
    requests: Vec<RecordedRequest>,
    /// The last resourceVersion handed out; one counter for all objects, as etcd has.
    revision: u64,
    /// The last uid serial handed out.
    uids: u64,
}

impl Store {
    fn next_revision(&mut self) -> String {
        self.revision += 1;
        self.revision.to_string()
    }

    fn next_uid(&mut self) -> String {
        self.uids += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.uids)
    }
}

type Shared = Arc<Mutex<Store>>;

fn lock(store: &Shared) -> MutexGuard<'_, Store> {
    // A test that panicked while holding the lock must not hide its own failure behind a
    // poisoned-lock panic in the next request.
    store.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running stand-in API server. Stops when dropped or by [`KubeStub::stop`].
pub struct KubeStub {
    addr: SocketAddr,
    store: Shared,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl KubeStub {
    /// Binds `127.0.0.1:0` and serves until stopped. Must run inside a tokio runtime.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound: the test cannot run at all then.
    pub async fn start() -> KubeStub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port for the kube stub");
        let addr = listener
            .local_addr()
            .expect("reading the kube stub's bound address");
        let store = Shared::default();
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&store));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "kube stub stopped with an error");
            }
        });
        KubeStub {
            addr,
            store,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every POST, PUT, PATCH and DELETE received so far, in arrival order, including ones that
    /// failed. Seeding with [`KubeStub::put_object`] is not recorded.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.store).requests.clone()
    }

    /// The stored object at an item path such as `/api/v1/persistentvolumes/pv-1`.
    pub fn object(&self, path: &str) -> Option<Value> {
        lock(&self.store).objects.get(path).cloned()
    }

    /// Stores `object` at an item path, replacing what was there, without recording a request.
    /// Fills `metadata.name` (and `metadata.namespace` for namespaced paths) from the path, and
    /// `metadata.uid` and `metadata.resourceVersion` when absent.
    pub fn put_object(&self, path: &str, mut object: Value) {
        let mut store = lock(&self.store);
        if let Some(Target {
            name: Some(name),
            namespace,
            ..
        }) = parse_path(path)
            && let Some(meta) = metadata_mut(&mut object)
        {
            meta.insert("name".into(), json!(name));
            if let Some(ns) = namespace {
                meta.insert("namespace".into(), json!(ns));
            }
            if !meta.contains_key("uid") {
                meta.insert("uid".into(), json!(store.next_uid()));
            }
            if !meta.contains_key("resourceVersion") {
                meta.insert("resourceVersion".into(), json!(store.next_revision()));
            }
        }
        store.objects.insert(path.to_owned(), object);
    }

    /// A client for this server: its URL, namespace `default`, no credentials.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as building any [`kube::Client`] does.
    pub fn client(&self) -> kube::Client {
        let url = self
            .url()
            .parse()
            .expect("a loopback socket address is a valid uri");
        client_from_config(kube::Config::new(url))
            .expect("building a plain-http kube client for the kube stub")
    }

    /// A kubeconfig whose current context points at this server, with a dummy bearer token.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: kube-stub
  cluster:
    server: {url}
users:
- name: kube-stub
  user:
    token: kube-stub-token
contexts:
- name: kube-stub
  context:
    cluster: kube-stub
    user: kube-stub
    namespace: default
current-context: kube-stub
",
            url = self.url()
        )
    }

    /// Stops accepting connections and waits (at most five seconds) for the server to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for KubeStub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// `/api/v1` or `/apis/{group}/{version}`.
    prefix: String,
    /// The plural resource name, such as `persistentvolumes`.
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

impl Target {
    fn collection_path(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/namespaces/{ns}/{}", self.prefix, self.resource),
            None => format!("{}/{}", self.prefix, self.resource),
        }
    }

    fn api_version(&self) -> String {
        self.prefix
            .strip_prefix("/api/")
            .or_else(|| self.prefix.strip_prefix("/apis/"))
            .unwrap_or("v1")
            .to_owned()
    }

    /// The kind for a few well-known resources, else the plural name itself.
    fn kind(&self) -> String {
        let known = [
            ("persistentvolumes", "PersistentVolume"),
            ("persistentvolumeclaims", "PersistentVolumeClaim"),
            ("namespaces", "Namespace"),
            ("pods", "Pod"),
            ("secrets", "Secret"),
            ("configmaps", "ConfigMap"),
            ("nodes", "Node"),
            ("services", "Service"),
            ("storageclasses", "StorageClass"),
        ];
        known
            .iter()
            .find(|(plural, _)| *plural == self.resource)
            .map_or_else(|| self.resource.clone(), |(_, kind)| (*kind).to_owned())
    }
}

/// Splits `/api/v1/...` and `/apis/{group}/{version}/...` paths; anything else is `None`.
fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (prefix, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("/api/v1".to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("/apis/{group}/{version}"), rest),
        _ => return None,
    };
    if rest.iter().any(|s| s.is_empty()) {
        return None;
    }
    let (namespace, resource, name) = match rest {
        [resource] => (None, *resource, None),
        [resource, name] => (None, *resource, Some(*name)),
        ["namespaces", ns, resource] => (Some(*ns), *resource, None),
        ["namespaces", ns, resource, name] => (Some(*ns), *resource, Some(*name)),
        _ => return None,
    };
    Some(Target {
        prefix,
        resource: resource.to_owned(),
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
    })
}

fn metadata_mut(object: &mut Value) -> Option<&mut Map<String, Value>> {
    let object = object.as_object_mut()?;
    let meta = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    meta.as_object_mut()
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

/// Applies an RFC 7386 JSON merge patch to `target`: objects merge recursively, `null` removes
/// a member, anything else replaces. Recursion depth is bounded by serde_json's parse limit.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(fields) = target {
        for (key, value) in members {
            if value.is_null() {
                fields.remove(key);
            } else {
                merge_patch(fields.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// A Kubernetes `Status` failure response.
fn status(code: StatusCode, reason: &str, message: String, target: Option<&Target>) -> Response {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if let Some(t) = target {
        body["details"] = json!({ "name": t.name.clone().unwrap_or_default(), "kind": t.resource });
    }
    (code, axum::Json(body)).into_response()
}

fn not_found(target: &Target) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "{} \"{}\" not found",
            target.resource,
            target.name.as_deref().unwrap_or_default()
        ),
        Some(target),
    )
}

fn bad_request(message: String, target: &Target) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message, Some(target))
}

fn stale(target: &Target) -> Response {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
            target.resource,
            target.name.as_deref().unwrap_or_default()
        ),
        Some(target),
    )
}

async fn handle(
    AxumState(store): AxumState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    let mutating = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE].contains(&method);
    let mut store = lock(&store);
    if mutating {
        store.requests.push((
            method.to_string(),
            path.clone(),
            parsed.clone().unwrap_or(Value::Null),
        ));
    }
    let Some(target) = parse_path(&path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the requested resource {path}"),
            None,
        );
    };
    match (&method, target.name.is_some()) {
        (&Method::GET, false) => list(&store, &target),
        (&Method::GET, true) => match store.objects.get(&path) {
            Some(object) => (StatusCode::OK, axum::Json(object.clone())).into_response(),
            None => not_found(&target),
        },
        (&Method::POST, false) => create(&mut store, &target, parsed),
        (&Method::PUT, true) => replace(&mut store, &target, &path, parsed),
        (&Method::PATCH, true) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            patch(&mut store, &target, &path, content_type, parsed)
        }
        (&Method::DELETE, true) => match store.objects.remove(&path) {
            Some(object) => (StatusCode::OK, axum::Json(object)).into_response(),
            None => not_found(&target),
        },
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the server does not allow {method} on {path}"),
            Some(&target),
        ),
    }
}

fn list(store: &Store, target: &Target) -> Response {
    let prefix = format!("{}/", target.collection_path());
    let items: Vec<Value> = store
        .objects
        .range(prefix.clone()..)
        .take_while(|(path, _)| path.starts_with(&prefix))
        .filter(|(path, _)| !path[prefix.len()..].contains('/'))
        .map(|(_, object)| object.clone())
        .collect();
    let body = json!({
        "kind": format!("{}List", target.kind()),
        "apiVersion": target.api_version(),
        "metadata": { "resourceVersion": store.revision.to_string() },
        "items": items,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn create(store: &mut Store, target: &Target, body: Option<Value>) -> Response {
    let Some(mut object) = body.filter(Value::is_object) else {
        return bad_request("the request body is not a JSON object".into(), target);
    };
    let name = match meta_str(&object, "name") {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => match meta_str(&object, "generateName") {
            Some(base) => format!("{base}{:05x}", store.uids + 1),
            None => {
                return status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!(
                        "{} is invalid: metadata.name: Required value",
                        target.kind()
                    ),
                    Some(target),
                );
            }
        },
    };
    if let (Some(ns), Some(given)) = (&target.namespace, meta_str(&object, "namespace"))
        && !given.is_empty()
        && given != ns
    {
        return bad_request(
            format!(
                "the namespace of the provided object ({given}) does not match the namespace sent on the request ({ns})"
            ),
            target,
        );
    }
    let item = Target {
        prefix: target.prefix.clone(),
        resource: target.resource.clone(),
        namespace: target.namespace.clone(),
        name: Some(name.clone()),
    };
    let path = format!("{}/{name}", target.collection_path());
    if store.objects.contains_key(&path) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", target.resource),
            Some(&item),
        );
    }
    let (uid, revision) = (store.next_uid(), store.next_revision());
    if let Some(fields) = object.as_object_mut() {
        fields
            .entry("apiVersion")
            .or_insert_with(|| json!(target.api_version()));
        fields.entry("kind").or_insert_with(|| json!(target.kind()));
    }
    if let Some(meta) = metadata_mut(&mut object) {
        meta.insert("name".into(), json!(name));
        if let Some(ns) = &target.namespace {
            meta.insert("namespace".into(), json!(ns));
        }
        meta.insert("uid".into(), json!(uid));
        meta.insert("resourceVersion".into(), json!(revision));
    }
    store.objects.insert(path, object.clone());
    (StatusCode::CREATED, axum::Json(object)).into_response()
}

fn replace(store: &mut Store, target: &Target, path: &str, body: Option<Value>) -> Response {
    let Some(mut object) = body.filter(Value::is_object) else {
        return bad_request("the request body is not a JSON object".into(), target);
    };
    let Some(current) = store.objects.get(path) else {
        return not_found(target);
    };
    let name = target.name.as_deref().unwrap_or_default();
    if meta_str(&object, "name").is_some_and(|n| n != name) {
        return bad_request(
            format!("the name of the object does not match the name on the URL ({name})"),
            target,
        );
    }
    if let Some(rv) = meta_str(&object, "resourceVersion")
        && Some(rv) != meta_str(current, "resourceVersion")
    {
        return stale(target);
    }
    let uid = meta_str(current, "uid").map(str::to_owned);
    let revision = store.next_revision();
    if let Some(meta) = metadata_mut(&mut object) {
        meta.insert("name".into(), json!(name));
        if let Some(ns) = &target.namespace {
            meta.insert("namespace".into(), json!(ns));
        }
        if let Some(uid) = uid {
            meta.insert("uid".into(), json!(uid));
        }
        meta.insert("resourceVersion".into(), json!(revision));
    }
    store.objects.insert(path.to_owned(), object.clone());
    (StatusCode::OK, axum::Json(object)).into_response()
}

fn patch(
    store: &mut Store,
    target: &Target,
    path: &str,
    content_type: &str,
    body: Option<Value>,
) -> Response {
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    // A strategic merge patch differs from a merge patch only in how it merges lists with patch
    // keys; the stub treats both as RFC 7386.
    if media_type != "application/merge-patch+json"
        && media_type != "application/strategic-merge-patch+json"
    {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the kube stub does not implement patch type {media_type:?}"),
            Some(target),
        );
    }
    let Some(patch) = body.filter(Value::is_object) else {
        return bad_request("the patch is not a JSON object".into(), target);
    };
    let Some(current) = store.objects.get(path) else {
        return not_found(target);
    };
    if let Some(rv) = meta_str(&patch, "resourceVersion")
        && Some(rv) != meta_str(current, "resourceVersion")
    {
        return stale(target);
    }
    let mut object = current.clone();
    let keep = |field: &str| meta_str(current, field).map(str::to_owned);
    let (name, namespace, uid) = (keep("name"), keep("namespace"), keep("uid"));
    merge_patch(&mut object, &patch);
    let revision = store.next_revision();
    if let Some(meta) = metadata_mut(&mut object) {
        // Identity is immutable: a patch cannot rename an object or change its uid.
        for (field, value) in [("name", name), ("namespace", namespace), ("uid", uid)] {
            match value {
                Some(v) => meta.insert(field.into(), json!(v)),
                None => meta.remove(field),
            };
        }
        meta.insert("resourceVersion".into(), json!(revision));
    }
    store.objects.insert(path.to_owned(), object.clone());
    (StatusCode::OK, axum::Json(object)).into_response()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
    use proptest::prelude::*;

    use super::*;

    fn pvc(name: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({ "metadata": { "name": name } })).unwrap()
    }

    #[test]
    fn paths_parse() {
        assert_eq!(
            parse_path("/api/v1/namespaces/app/persistentvolumeclaims/data"),
            Some(Target {
                prefix: "/api/v1".into(),
                resource: "persistentvolumeclaims".into(),
                namespace: Some("app".into()),
                name: Some("data".into()),
            })
        );
        assert_eq!(
            parse_path("/api/v1/persistentvolumes")
                .unwrap()
                .collection_path(),
            "/api/v1/persistentvolumes"
        );
        let sc = parse_path("/apis/storage.k8s.io/v1/storageclasses/nfs").unwrap();
        assert_eq!(
            (sc.api_version(), sc.kind()),
            ("storage.k8s.io/v1".into(), "StorageClass".into())
        );
        for bad in [
            "/",
            "/api",
            "/api/v2/pods",
            "/api/v1/persistentvolumes/a/status/x",
            "/api/v1//x",
        ] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn merge_patch_follows_rfc_7386_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (
                json!({"a":"b","b":"c"}),
                json!({"a":null}),
                json!({"b":"c"}),
            ),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (
                json!({"a":{"b":"c"}}),
                json!({"a":{"b":"d","c":null}}),
                json!({"a":{"b":"d"}}),
            ),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (
                json!({}),
                json!({"a":{"bb":{"ccc":null}}}),
                json!({"a":{"bb":{}}}),
            ),
        ];
        for (target, patch, want) in cases {
            let mut got = target.clone();
            merge_patch(&mut got, &patch);
            assert_eq!(got, want, "{target} + {patch}");
        }
    }

    #[tokio::test]
    async fn create_get_and_errors_look_like_kubernetes() {
        let stub = KubeStub::start().await;
        let api: Api<PersistentVolumeClaim> = Api::namespaced(stub.client(), "app");

        let err = api.get("data").await.unwrap_err();
        let kube::Error::Api(s) = err else {
            panic!("{err:?}")
        };
        assert!(s.is_not_found() && s.code == 404, "{s:?}");

        let created = api
            .create(&PostParams::default(), &pvc("data"))
            .await
            .unwrap();
        assert_eq!(created.metadata.namespace.as_deref(), Some("app"));
        assert!(created.metadata.uid.is_some());
        let rv = created.metadata.resource_version.clone().unwrap();

        let err = api
            .create(&PostParams::default(), &pvc("data"))
            .await
            .unwrap_err();
        let kube::Error::Api(s) = err else {
            panic!("{err:?}")
        };
        assert!(s.is_already_exists() && s.code == 409, "{s:?}");

        let listed = api.list(&Default::default()).await.unwrap();
        assert_eq!(listed.items.len(), 1);
        let other: Api<PersistentVolumeClaim> = Api::namespaced(stub.client(), "other");
        assert!(
            other
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .is_empty()
        );

        let got = api.get("data").await.unwrap();
        assert_eq!(got.metadata.resource_version.as_deref(), Some(rv.as_str()));
        assert_eq!(
            stub.requests()
                .iter()
                .map(|(m, p, _)| format!("{m} {p}"))
                .collect::<Vec<_>>(),
            vec![
                "POST /api/v1/namespaces/app/persistentvolumeclaims",
                "POST /api/v1/namespaces/app/persistentvolumeclaims",
            ]
        );
        stub.stop().await;
    }

    #[tokio::test]
    async fn patch_merges_deletes_with_null_and_checks_the_resource_version() {
        let stub = KubeStub::start().await;
        let path = "/api/v1/persistentvolumes/pv-1";
        stub.put_object(
            path,
            json!({ "metadata": { "labels": { "a": "1", "b": "2" } }, "spec": { "capacity": { "storage": "1Gi" } } }),
        );
        let api: Api<PersistentVolume> = Api::all(stub.client());
        let patched = api
            .patch(
                "pv-1",
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "labels": { "a": null, "c": "3" } } })),
            )
            .await
            .unwrap();
        let labels = patched.metadata.labels.unwrap();
        assert_eq!(labels.keys().collect::<Vec<_>>(), ["b", "c"]);
        let stored = stub.object(path).unwrap();
        assert_eq!(stored["spec"]["capacity"]["storage"], "1Gi");
        assert_eq!(stored["metadata"]["name"], "pv-1");

        let err = api
            .patch(
                "pv-1",
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "resourceVersion": "1" }, "spec": {} })),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
            "{err:?}"
        );

        let err = api
            .patch(
                "pv-1",
                &PatchParams::apply("kube-stub-test"),
                &Patch::Apply(json!({ "spec": {} })),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 415),
            "{err:?}"
        );

        let strategic = api
            .patch(
                "pv-1",
                &PatchParams::default(),
                &Patch::Strategic(json!({ "spec": { "storageClassName": "nfs" } })),
            )
            .await
            .unwrap();
        assert_eq!(
            strategic.spec.unwrap().storage_class_name.as_deref(),
            Some("nfs")
        );

        let err = api
            .patch("absent", &PatchParams::default(), &Patch::Merge(json!({})))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(s) if s.is_not_found()),
            "{err:?}"
        );
        assert_eq!(stub.requests().len(), 5);
    }

    #[tokio::test]
    async fn replace_keeps_the_uid_and_refuses_stale_versions() {
        let stub = KubeStub::start().await;
        let api: Api<PersistentVolume> = Api::all(stub.client());
        let created = api
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({ "metadata": { "name": "pv-1" } })).unwrap(),
            )
            .await
            .unwrap();
        let mut next = created.clone();
        next.metadata.labels = Some([("x".to_owned(), "y".to_owned())].into());
        let replaced = api
            .replace("pv-1", &PostParams::default(), &next)
            .await
            .unwrap();
        assert_eq!(replaced.metadata.uid, created.metadata.uid);
        assert_ne!(
            replaced.metadata.resource_version,
            created.metadata.resource_version
        );
        // `next` still carries the old resourceVersion.
        let err = api
            .replace("pv-1", &PostParams::default(), &next)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 409),
            "{err:?}"
        );

        api.delete("pv-1", &DeleteParams::default()).await.unwrap();
        assert!(api.get_opt("pv-1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_stopped_stub_refuses_connections() {
        let stub = KubeStub::start().await;
        let client = stub.client();
        stub.stop().await;
        let api: Api<PersistentVolume> = Api::all(client);
        assert!(api.get_opt("pv-1").await.is_err());
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            "[a-z]{0,4}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                proptest::collection::btree_map("[a-c]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn merge_patch_is_idempotent(target in json_value(), patch in json_value()) {
            let mut once = target.clone();
            merge_patch(&mut once, &patch);
            let mut twice = once.clone();
            merge_patch(&mut twice, &patch);
            prop_assert_eq!(once, twice);
        }

        #[test]
        fn a_patch_of_a_whole_document_without_nulls_yields_it(target in json_value(), doc in json_value()) {
            // Patching with the document itself gives back a document whose members all equal
            // the patch's (RFC 7386 section 1: objects merge, everything else replaces).
            prop_assume!(!doc.to_string().contains("null"));
            let mut got = target.clone();
            merge_patch(&mut got, &doc);
            if let (Value::Object(got), Value::Object(doc)) = (&got, &doc) {
                for (k, v) in doc {
                    prop_assert!(got.get(k).is_some());
                    if !v.is_object() {
                        prop_assert_eq!(got.get(k), Some(v));
                    }
                }
            } else {
                prop_assert_eq!(got, doc);
            }
        }
    }
}
