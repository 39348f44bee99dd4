//! An emulated Kubernetes API server over real HTTP, for the real `kube` client and
//! the real `kubectl`: the semantics tlsward relies on, and no more.
//!
//! What it does like the real API server:
//! - LIST / GET / WATCH with resourceVersions; a watch from a compacted resourceVersion
//!   gets an ERROR event with a 410 `Expired` status (as kube-apiserver sends once the
//!   watch has started), so clients relist.
//! - create (`AlreadyExists` 409), replace with a stale `metadata.resourceVersion`
//!   (`Conflict` 409), delete (`NotFound` 404; `preconditions` on uid or
//!   resourceVersion that do not hold: `Conflict` 409): errors in the `metav1.Status` shape.
//! - the `status` subresource of Services, Gateways and VirtualServices: a write to the
//!   main resource keeps `.status`, a write to `/status` changes only `.status`.
//! - label selectors (`a=b`, `a!=b`, `a`, `!a`, comma-joined).
//! - server-side apply (`application/apply-patch+yaml`) with field ownership per
//!   manager: applying a field another manager owns with a different value is a 409
//!   `Conflict` naming the manager and field unless `force=true`, which takes it over;
//!   fields a manager stops applying are removed unless someone else owns them; an
//!   apply that changes nothing does not bump the resourceVersion. Creates and replaces
//!   take ownership of the fields they change, as `Update` operations do.
//! - discovery (`/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`) for kubectl,
//!   with shortNames (`ns`, `svc`, `ev`, `gw`, `vs`).
//! - merge patch (RFC 7386) and JSON patch (RFC 6902) on every resource and on the
//!   status subresource; applying another manager's field with the same value shares it.
//! - a request body over 3 MiB is refused (413), an object over etcd's 1.5 MiB cannot be
//!   stored (500 `etcdserver: request is too large`); a watcher that falls behind is
//!   disconnected, never skipped over.
//! - admission where tlsward or a kubectl user meets it: Secret `stringData` merged into
//!   `data` and dropped, `type` defaulted to `Opaque` and immutable (422),
//!   `kubernetes.io/tls` without `tls.crt`/`tls.key` (422), label keys and values
//!   validated (422), an events.k8s.io Event `note` over 1024 bytes (422).
//! - `metadata.generation`: 1 at creation, one more on every change outside metadata and
//!   status (what a controller's `observedGeneration` is compared with).
//! - timestamps in whole seconds.
//!
//! Where it is simpler than the real API server (the real behaviour in brackets):
//! - one global resourceVersion counter as a decimal string [opaque, etcd revision].
//! - lists are atomic in apply [list-map keys such as `port` merge per item]; a
//!   strategic merge patch is served as a merge patch [built-in kinds merge lists by key].
//! - no schema validation or defaulting beyond the admission below [all of them];
//!   `/openapi/v3` lists each resource's write operations with the `fieldValidation`
//!   parameter, so `kubectl apply` validates server-side, but `fieldValidation=Strict` is
//!   not enforced [unknown fields are refused] and no schemas are served [they are].
//! - authentication by token only: `emulator` is an administrator, `sa:<ns>:<name>` a
//!   ServiceAccount [service-account JWTs], over plain HTTP [TLS only]; kubectl sends no
//!   token over plain HTTP, so a request without one is the administrator
//!   [system:anonymous], who may impersonate a ServiceAccount (`kubectl --as`);
//!   authorization from Roles and ClusterRoles: a RoleBinding grants its Role or
//!   ClusterRole in its namespace, a ClusterRoleBinding its ClusterRole everywhere
//!   [also aggregation, non-resource URLs].
//! - LIST pages (`limit`/`continue`) are cut from the current objects [from the snapshot
//!   of the first page's resourceVersion]; the token is readable [opaque].
//! - watch bookmarks and `sendInitialEvents` are not served [they are];
//!   `timeoutSeconds` ends a watch like the real server.
//! - compaction happens only when a test calls `compact()` [periodically].
//! - the Istio and Gateway API kinds are opaque objects [validated against their CRD
//!   schema]; ReferenceGrant is served as v1 and v1beta1, stored apart [one object].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

/// (group, version, resource, kind, namespaced, has a status subresource)
const RESOURCES: &[(&str, &str, &str, &str, bool, bool)] = &[
    ("", "v1", "secrets", "Secret", true, false),
    ("", "v1", "configmaps", "ConfigMap", true, false),
    ("", "v1", "services", "Service", true, true),
    ("", "v1", "pods", "Pod", true, true),
    ("", "v1", "events", "Event", true, false),
    ("", "v1", "namespaces", "Namespace", false, false),
    ("coordination.k8s.io", "v1", "leases", "Lease", true, false),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", true, false),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        false,
    ),
    (
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        false,
    ),
    ("events.k8s.io", "v1", "events", "Event", true, false),
    ("networking.istio.io", "v1", "gateways", "Gateway", true, true),
    (
        "networking.istio.io",
        "v1",
        "virtualservices",
        "VirtualService",
        true,
        true,
    ),
    (
        "networking.istio.io",
        "v1",
        "destinationrules",
        "DestinationRule",
        true,
        true,
    ),
    (
        "networking.istio.io",
        "v1beta1",
        "destinationrules",
        "DestinationRule",
        true,
        true,
    ),
    (
        "networking.istio.io",
        "v1",
        "serviceentries",
        "ServiceEntry",
        true,
        true,
    ),
    (
        "networking.istio.io",
        "v1beta1",
        "serviceentries",
        "ServiceEntry",
        true,
        true,
    ),
    (
        "security.istio.io",
        "v1",
        "peerauthentications",
        "PeerAuthentication",
        true,
        true,
    ),
    (
        "security.istio.io",
        "v1beta1",
        "peerauthentications",
        "PeerAuthentication",
        true,
        true,
    ),
    (
        "security.istio.io",
        "v1",
        "authorizationpolicies",
        "AuthorizationPolicy",
        true,
        true,
    ),
    (
        "security.istio.io",
        "v1beta1",
        "authorizationpolicies",
        "AuthorizationPolicy",
        true,
        true,
    ),
    (
        "security.istio.io",
        "v1",
        "requestauthentications",
        "RequestAuthentication",
        true,
        true,
    ),
    (
        "security.istio.io",
        "v1beta1",
        "requestauthentications",
        "RequestAuthentication",
        true,
        true,
    ),
    ("networking.istio.io", "v1beta1", "gateways", "Gateway", true, true),
    (
        "networking.istio.io",
        "v1beta1",
        "virtualservices",
        "VirtualService",
        true,
        true,
    ),
    ("gateway.networking.k8s.io", "v1", "gateways", "Gateway", true, true),
    ("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute", true, true),
    (
        "gateway.networking.k8s.io",
        "v1",
        "referencegrants",
        "ReferenceGrant",
        true,
        false,
    ),
    (
        "gateway.networking.k8s.io",
        "v1beta1",
        "referencegrants",
        "ReferenceGrant",
        true,
        false,
    ),
];

/// The Istio API the emulator serves: both versions (Istio ≥ 1.22), or only v1beta1
/// (older Istio), as `TLSWARD_EMULATOR_ISTIO=v1beta1` asks (scripts/test.sh runs the
/// Kubernetes scenarios both ways). The two versions are stored apart [the real server
/// serves one object under both].
pub fn istio_versions() -> &'static [&'static str] {
    match std::env::var("TLSWARD_EMULATOR_ISTIO").as_deref() {
        Ok("v1beta1") => &["v1beta1"],
        _ => &["v1", "v1beta1"],
    }
}

/// The apiVersion tlsward should use against this emulator (the newest served).
pub fn istio_api() -> String {
    format!("networking.istio.io/{}", istio_versions()[0])
}

/// The apiVersion of Istio's security kinds against this emulator (the newest served).
pub fn security_api() -> String {
    format!("security.istio.io/{}", istio_versions()[0])
}

fn served(group: &str, version: &str) -> bool {
    !group.ends_with(".istio.io") || istio_versions().contains(&version)
}

/// Whether one resource is served: as `served`, and ReferenceGrant only as v1beta1 on
/// the older cluster `TLSWARD_EMULATOR_ISTIO=v1beta1` stands for (Gateway API releases
/// before ReferenceGrant v1). [The two versions are stored apart, as for Istio's.]
fn served_resource(group: &str, version: &str, resource: &str) -> bool {
    served(group, version) && !(resource == "referencegrants" && version == "v1" && istio_versions() == ["v1beta1"])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Resource {
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
}

impl Resource {
    fn find(group: &str, version: &str, resource: &str) -> Option<Resource> {
        RESOURCES
            .iter()
            .find(|r| r.0 == group && r.1 == version && r.2 == resource)
            .map(|r| Resource {
                group: r.0,
                version: r.1,
                resource: r.2,
                kind: r.3,
                namespaced: r.4,
                status: r.5,
            })
    }
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

type Key = (String, String, String, String); // (apiVersion, resource, namespace, name)
pub type Path = Vec<String>;

#[derive(Clone)]
struct Stored {
    object: Value,
    /// manager → (operation, owned leaf paths)
    managers: BTreeMap<String, (String, BTreeSet<Path>)>,
}

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    api_version: String,
    resource: String,
    kind: &'static str,
    object: Value,
}

/// One write the emulator received, in order (for tests of write ordering).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub method: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    /// Whether it changed anything.
    pub changed: bool,
}

/// One read a client made: `get`, `list` or `watch`.
#[derive(Clone, Debug)]
pub struct Read {
    pub verb: &'static str,
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

#[derive(Default)]
struct Db {
    /// Objects whose next replace meets a concurrent writer first (a test's hook).
    interfere: BTreeSet<String>,
    rv: u64,
    objects: BTreeMap<Key, Stored>,
    history: Vec<Event>,
    reads: Vec<Read>,
    compacted: u64,
    writes: Vec<Write>,
    /// A fault (a test's hook): writes are accepted and never answered.
    stall_writes: bool,
    /// Writes held that way so far.
    stalled: usize,
}

#[derive(Clone)]
pub struct Emulator {
    db: Arc<Mutex<Db>>,
    events: broadcast::Sender<Event>,
    /// Bumped to end every open watch (as a restarting API server does).
    closes: tokio::sync::watch::Sender<u64>,
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok_json(code: StatusCode, v: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// Leaf paths of the fields a client sets (lists and scalars are leaves); identity and
/// server-owned metadata are not fields anyone owns.
pub fn fields(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, path: &mut Path, out: &mut BTreeSet<Path>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    path.push(k.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone());
            }
        }
    }
    let mut out = BTreeSet::new();
    if let Value::Object(m) = v {
        for (k, child) in m {
            match k.as_str() {
                "apiVersion" | "kind" | "status" => {}
                "metadata" => {
                    for sub in ["labels", "annotations"] {
                        if let Some(c) = child.get(sub) {
                            walk(c, &mut vec!["metadata".into(), sub.into()], &mut out);
                        }
                    }
                }
                _ => walk(child, &mut vec![k.clone()], &mut out),
            }
        }
    }
    out
}

fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn set_path(v: &mut Value, path: &[String], value: Value) {
    let mut cur = v;
    for (i, k) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let m = cur.as_object_mut().unwrap();
        if i == path.len() - 1 {
            m.insert(k.clone(), value);
            return;
        }
        cur = m.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
    }
}

fn remove_path(v: &mut Value, path: &[String]) {
    if let Some((last, parents)) = path.split_last() {
        let mut cur = &mut *v;
        for k in parents {
            match cur.get_mut(k) {
                Some(next) => cur = next,
                None => return,
            }
        }
        if let Some(m) = cur.as_object_mut() {
            m.remove(last);
        }
        // Drop emptied parents.
        if !parents.is_empty() && get_path(v, parents).is_some_and(|p| p.as_object().is_some_and(Map::is_empty)) {
            remove_path(v, parents);
        }
    }
}

fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Value::Object(Map::new());
    for p in paths {
        let keys: Path = p.iter().map(|k| format!("f:{k}")).collect();
        set_path(&mut root, &keys, json!({}));
    }
    root
}

pub fn label_selector_matches(selector: &str, labels: &Map<String, Value>) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let get = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
        if let Some((k, v)) = term.split_once("!=") {
            get(k) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k).is_none()
        } else {
            get(term).is_some()
        }
    })
}

/// Now, as the API server writes timestamps: RFC 3339 in whole seconds, UTC.
fn now() -> String {
    let t = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// A 422 `Invalid` Status, as validation failures come back.
fn invalid(t: &Target, name: &str, causes: &[String]) -> Box<Response> {
    Box::new(status(
        422,
        "Invalid",
        format!("{} \"{name}\" is invalid: {}", t.resource.kind, causes.join(", ")),
    ))
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters, alphanumeric at both ends, `-`, `_`, `.` inside.
fn label_name_ok(name: &str) -> bool {
    let (prefix, name) = match name.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, name),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
    });
    prefix_ok && !name.is_empty() && label_value_ok(name)
}

/// A label value: empty, or at most 63 characters, alphanumeric at both ends.
fn label_value_ok(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

/// What the API server does to an object before it stores it, where tlsward or a kubectl
/// user can meet it: Secret `stringData` merged into `data` and dropped, `type`
/// defaulted and immutable, `kubernetes.io/tls` keys required, label keys and values
/// validated, an Event's `note` at most 1024 bytes.
/// kube-apiserver's limit on a request body (`--max-request-bytes` of its HTTP server).
const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024;
/// etcd's default `--max-request-bytes`: a larger object cannot be stored.
const MAX_OBJECT_BYTES: usize = 1536 * 1024;

/// Admission, then etcd's size limit on what would be stored.
fn admit(t: &Target, name: &str, old: Option<&Value>, new: &mut Value) -> Result<(), Box<Response>> {
    admit_fields(t, name, old, new)?;
    let size = serde_json::to_vec(new).map(|b| b.len()).unwrap_or_default();
    if size > MAX_OBJECT_BYTES {
        return Err(Box::new(status(
            500,
            "InternalError",
            "etcdserver: request is too large".into(),
        )));
    }
    Ok(())
}

fn admit_fields(t: &Target, name: &str, old: Option<&Value>, new: &mut Value) -> Result<(), Box<Response>> {
    let mut causes = Vec::new();
    if let Some(labels) = new["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            if !label_name_ok(k) {
                causes.push(format!("metadata.labels: Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
            match v.as_str() {
                Some(v) if label_value_ok(v) => {}
                _ => causes.push(format!("metadata.labels: Invalid value: {v}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (at most 63 characters)")),
            }
        }
    }
    if t.resource.kind == "Secret" && t.subresource.is_none() {
        use base64::Engine;
        if let Some(Value::Object(string_data)) = new.as_object_mut().and_then(|o| o.remove("stringData")) {
            for (k, v) in string_data {
                let text = v.as_str().unwrap_or_default();
                new["data"][k.as_str()] = json!(base64::engine::general_purpose::STANDARD.encode(text));
            }
        }
        if new.get("type").is_none_or(Value::is_null) {
            new["type"] = json!("Opaque");
        }
        let kind = new["type"].as_str().unwrap_or_default().to_string();
        if let Some(old_kind) = old.and_then(|o| o["type"].as_str())
            && old_kind != kind
        {
            causes.push(format!("type: Invalid value: \"{kind}\": field is immutable"));
        }
        if kind == "kubernetes.io/tls" {
            for key in ["tls.crt", "tls.key"] {
                if new["data"].get(key).is_none() {
                    causes.push(format!("data[{key}]: Required value"));
                }
            }
        }
    }
    if t.resource.group == "events.k8s.io"
        && let Some(note) = new["note"].as_str()
        && note.len() > 1024
    {
        causes.push(format!(
            "note: Too long: may not be more than 1024 bytes (got {})",
            note.len()
        ));
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(t, name, &causes))
    }
}

/// What a request addresses.
struct Target {
    resource: Resource,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_target(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest): (String, &[&str]) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
        _ => (String::new(), rest),
    };
    let (resource, name, sub) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(n.to_string()), None),
        [r, n, s] => (*r, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    if !served_resource(group, version, resource) {
        return None;
    }
    let resource = Resource::find(group, version, resource)?;
    Some(Target {
        resource,
        namespace,
        name,
        subresource: sub,
    })
}

impl Emulator {
    pub fn new() -> Emulator {
        let (events, _) = broadcast::channel(4096);
        let (closes, _) = tokio::sync::watch::channel(0);
        Emulator {
            db: Arc::new(Mutex::new(Db::default())),
            events,
            closes,
        }
    }

    /// Forgets the watch history and ends every open watch: a client that watches
    /// again from an older resourceVersion gets 410 and must relist.
    pub fn compact(&self) {
        let mut db = self.db.lock().unwrap();
        // As in etcd, the revision moves on (other writes happen); everything before it
        // is gone, so a client resuming from any resourceVersion it has seen gets 410.
        db.rv += 1;
        db.compacted = db.rv;
        db.history.clear();
        self.closes.send_modify(|n| *n += 1);
    }

    /// Makes the next replace of `name` lose a race: someone else changes the object
    /// just before it lands, so the writer's resourceVersion is stale (409).
    pub fn interfere_with_next_replace(&self, name: &str) {
        self.db.lock().unwrap().interfere.insert(name.to_string());
    }

    /// From now on every write (anything but GET) is read and never answered, like an
    /// API server whose etcd stopped responding; reads go on.
    pub fn stall_writes(&self) {
        self.db.lock().unwrap().stall_writes = true;
    }

    /// How many writes are being held by `stall_writes`.
    pub fn stalled(&self) -> usize {
        self.db.lock().unwrap().stalled
    }

    /// Stores an RBAC object (Role, RoleBinding) as an administrator would create it.
    pub fn load_rbac(&self, object: &Value) {
        assert!(
            matches!(
                object["kind"].as_str(),
                Some("Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding")
            ),
            "not an RBAC object: {object}"
        );
        self.put(object);
    }

    /// Creates or replaces any object the emulator serves (with its status), as test
    /// setup: not a write under test, so it is not among `writes()`.
    pub fn put(&self, object: &Value) {
        let api_version = object["apiVersion"].as_str().expect("apiVersion");
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let kind = object["kind"].as_str().expect("kind");
        let resource = RESOURCES
            .iter()
            .find(|r| r.0 == group && r.1 == version && r.3 == kind)
            .and_then(|r| Resource::find(r.0, r.1, r.2))
            .unwrap_or_else(|| panic!("the emulator does not serve {api_version} {kind}"));
        let name = object["metadata"]["name"].as_str().expect("metadata.name").to_string();
        let t = Target {
            resource,
            namespace: if resource.namespaced {
                object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("default")
                    .to_string()
            } else {
                String::new()
            },
            name: None,
            subresource: None,
        };
        let existing = self
            .db
            .lock()
            .unwrap()
            .objects
            .get(&key(&t, &name))
            .map(|s| s.object.clone());
        let response = match existing {
            None => create(self, &t, object.clone(), "setup".into()),
            Some(current) => {
                let mut v = object.clone();
                v["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
                let response = replace(self, &t, &name, v.clone(), "setup".into());
                if resource.status && v.get("status").is_some() {
                    let mut db = self.db.lock().unwrap();
                    if let Some(s) = db.objects.get_mut(&key(&t, &name)) {
                        s.object["status"] = v["status"].clone();
                    }
                }
                response
            }
        };
        assert!(
            response.status().is_success(),
            "putting {kind} {name}: {}",
            response.status()
        );
        self.db.lock().unwrap().writes.pop();
    }

    /// Every write received so far, in order.
    /// Every read so far (GET, LIST, WATCH), in order.
    pub fn reads(&self) -> Vec<Read> {
        self.db.lock().unwrap().reads.clone()
    }

    pub fn writes(&self) -> Vec<Write> {
        self.db.lock().unwrap().writes.clone()
    }

    /// Every stored object of a resource in a namespace.
    pub fn list(&self, api_version: &str, resource: &str, namespace: &str) -> Vec<Value> {
        let db = self.db.lock().unwrap();
        db.objects
            .iter()
            .filter(|((av, r, ns, _), _)| av == api_version && r == resource && ns == namespace)
            .map(|(_, s)| render(s))
            .collect()
    }

    /// The stored object, as a GET would return it.
    pub fn get(&self, api_version: &str, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let db = self.db.lock().unwrap();
        db.objects
            .get(&(api_version.into(), resource.into(), namespace.into(), name.into()))
            .map(render)
    }

    pub fn router(&self) -> Router {
        Router::new()
            .fallback(handle)
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(self.clone())
    }

    /// Serves on `listener` until the returned handle is aborted or the runtime ends.
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        let _ = axum::serve(listener, self.router()).await;
    }

    fn record(&self, db: &mut Db, method: &str, t: &Target, name: &str, changed: bool) {
        db.writes.push(Write {
            method: method.into(),
            resource: t.resource.resource.into(),
            namespace: t.namespace.clone(),
            name: name.into(),
            changed,
        });
    }

    fn emit(&self, db: &mut Db, t: &Target, kind: &'static str, object: &Value) {
        let event = Event {
            rv: db.rv,
            api_version: t.resource.api_version(),
            resource: t.resource.resource.into(),
            kind,
            object: object.clone(),
        };
        db.history.push(event.clone());
        let _ = self.events.send(event);
    }
}

impl Default for Emulator {
    fn default() -> Self {
        Self::new()
    }
}

/// The object as served: with its managedFields.
fn render(s: &Stored) -> Value {
    let mut o = s.object.clone();
    let api_version = o["apiVersion"].clone();
    let managed: Vec<Value> = s
        .managers
        .iter()
        .map(|(m, (op, paths))| json!({"manager": m, "operation": op, "apiVersion": api_version, "fieldsType": "FieldsV1", "fieldsV1": fields_v1(paths)}))
        .collect();
    o["metadata"]["managedFields"] = Value::Array(managed);
    o
}

fn parse_body(body: &Bytes) -> Result<Value, Box<Response>> {
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    let text = String::from_utf8_lossy(body);
    tlsward::config::yaml::parse(&text).map(|(v, _)| v).map_err(|e| {
        Box::new(status(
            400,
            "BadRequest",
            format!("the body is neither JSON nor YAML: {e}"),
        ))
    })
}

async fn handle(
    State(emu): State<Emulator>,
    method: Method,
    uri: Uri,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if body.len() > MAX_REQUEST_BYTES {
        return status(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {MAX_REQUEST_BYTES}"),
        );
    }
    if method != Method::GET {
        let stall = {
            let mut db = emu.db.lock().unwrap();
            db.stalled += usize::from(db.stall_writes);
            db.stall_writes
        };
        if stall {
            std::future::pending::<()>().await;
        }
    }
    if method == Method::GET
        && let Some(r) = discovery(&path)
    {
        return ok_json(StatusCode::OK, &r);
    }
    let Some(t) = parse_target(&path) else {
        return status(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        );
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // kubectl sends no token over plain HTTP; the administrator may impersonate (`--as`).
    let impersonated = headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .and_then(|u| u.strip_prefix("system:serviceaccount:"))
        .map(|sa| format!("sa:{sa}"));
    let token = match (token, &impersonated) {
        ("" | "emulator", Some(sa)) => sa.as_str(),
        ("", None) => "emulator",
        (t, _) => t,
    };
    if let Some(denied) = authorize(&emu, token, &method, &t, &q) {
        return denied;
    }
    if method == Method::GET {
        let verb = match &t.name {
            Some(_) => "get",
            None if q.get("watch").is_some_and(|w| w == "1" || w == "true") => "watch",
            None => "list",
        };
        emu.db.lock().unwrap().reads.push(Read {
            verb,
            resource: t.resource.resource.into(),
            namespace: t.namespace.clone(),
            name: t.name.clone().unwrap_or_default(),
        });
    }
    match (method.as_str(), &t.name) {
        ("GET", None) if q.get("watch").is_some_and(|w| w == "1" || w == "true") => watch(&emu, &t, &q),
        ("GET", None) => list(&emu, &t, &q),
        ("GET", Some(name)) => {
            let db = emu.db.lock().unwrap();
            match db.objects.get(&key(&t, name)) {
                Some(s) => ok_json(StatusCode::OK, &render(s)),
                None => not_found(&t, name),
            }
        }
        ("POST", None) => match parse_body(&body) {
            Ok(v) => create(
                &emu,
                &t,
                v,
                q.get("fieldManager").cloned().unwrap_or_else(|| "unknown".into()),
            ),
            Err(r) => *r,
        },
        ("PUT", Some(name)) => match parse_body(&body) {
            Ok(v) => replace(
                &emu,
                &t,
                name,
                v,
                q.get("fieldManager").cloned().unwrap_or_else(|| "unknown".into()),
            ),
            Err(r) => *r,
        },
        ("PATCH", Some(name)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !content_type.starts_with("application/apply-patch") {
                let manager = q.get("fieldManager").cloned().unwrap_or_else(|| "unknown".into());
                return patch(&emu, &t, name, content_type, &body, manager);
            }
            let Some(manager) = q.get("fieldManager") else {
                return status(
                    400,
                    "BadRequest",
                    "PATCH with application/apply-patch+yaml requires a fieldManager".into(),
                );
            };
            match parse_body(&body) {
                Ok(v) => apply(&emu, &t, name, v, manager, q.get("force").is_some_and(|f| f == "true")),
                Err(r) => *r,
            }
        }
        ("DELETE", Some(name)) => delete(&emu, &t, name, &body),
        _ => status(405, "MethodNotAllowed", format!("{method} is not served on {path}")),
    }
}

/// RBAC as kube-apiserver applies it to a ServiceAccount: the token `emulator` is an
/// administrator; `sa:<namespace>:<name>` is that ServiceAccount, allowed only what a
/// Role bound to it in the request's namespace grants (verbs, API groups, resources
/// with subresources, resourceNames, which never match create, list or watch); any
/// other token is 401. `None` when allowed.
fn authorize(
    emu: &Emulator,
    token: &str,
    method: &Method,
    t: &Target,
    q: &BTreeMap<String, String>,
) -> Option<Response> {
    if token == "emulator" {
        return None;
    }
    let Some((sa_ns, sa_name)) = token.strip_prefix("sa:").and_then(|r| r.split_once(':')) else {
        return Some(status(401, "Unauthorized", "Unauthorized".into()));
    };
    let verb = match (method.as_str(), &t.name) {
        ("GET", Some(_)) => "get",
        ("GET", None) if q.get("watch").is_some_and(|w| w == "1" || w == "true") => "watch",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        _ => "unknown",
    };
    let resource = match &t.subresource {
        Some(sub) => format!("{}/{sub}", t.resource.resource),
        None => t.resource.resource.to_string(),
    };
    let db = emu.db.lock().unwrap();
    let rbac = "rbac.authorization.k8s.io/v1";
    let has = |list: &Value, x: &str| list.as_array().is_some_and(|l| l.iter().any(|v| v == x || v == "*"));
    let binds_us = |b: &Value| {
        b["subjects"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa_name && s["namespace"] == sa_ns)
        })
    };
    let role = |kind: &str, namespace: &str, name: &str| {
        let resource = if kind == "Role" { "roles" } else { "clusterroles" };
        db.objects.get(&(
            rbac.to_string(),
            resource.to_string(),
            namespace.to_string(),
            name.to_string(),
        ))
    };
    // RoleBindings of the request's namespace (a Role there, or a ClusterRole), then
    // ClusterRoleBindings (a ClusterRole, everywhere and for cluster-scoped resources).
    let granted = db
        .objects
        .iter()
        .filter(|((av, r, ns, _), _)| {
            av == rbac
                && ((r == "rolebindings" && !t.namespace.is_empty() && *ns == t.namespace)
                    || r == "clusterrolebindings")
        })
        .map(|(_, b)| &b.object)
        .filter(|b| binds_us(b))
        .filter_map(|b| {
            let name = b["roleRef"]["name"].as_str()?;
            match (b["kind"].as_str()?, b["roleRef"]["kind"].as_str()?) {
                ("RoleBinding", "Role") => role("Role", &t.namespace, name),
                (_, "ClusterRole") => role("ClusterRole", "", name),
                _ => None,
            }
        });
    let allowed = granted
        .flat_map(|role| role.object["rules"].as_array().cloned().unwrap_or_default())
        .any(|rule| {
            has(&rule["apiGroups"], t.resource.group)
                && has(&rule["resources"], &resource)
                && has(&rule["verbs"], verb)
                && match rule["resourceNames"].as_array().filter(|n| !n.is_empty()) {
                    None => true,
                    Some(names) => t.name.as_ref().is_some_and(|n| names.iter().any(|x| x == n.as_str())),
                }
        });
    if allowed {
        return None;
    }
    let what = match &t.name {
        Some(n) => format!("{} \"{n}\"", t.resource.resource),
        None => t.resource.resource.to_string(),
    };
    Some(status(
        403,
        "Forbidden",
        format!(
            "{what} is forbidden: User \"system:serviceaccount:{sa_ns}:{sa_name}\" cannot {verb} resource \"{resource}\" in API group \"{}\" in the namespace \"{}\"",
            t.resource.group, t.namespace
        ),
    ))
}

fn key(t: &Target, name: &str) -> Key {
    (
        t.resource.api_version(),
        t.resource.resource.into(),
        t.namespace.clone(),
        name.into(),
    )
}

fn not_found(t: &Target, name: &str) -> Response {
    status(
        404,
        "NotFound",
        format!("{}.{} \"{name}\" not found", t.resource.resource, t.resource.group).replace(". \"", " \""),
    )
}

fn list(emu: &Emulator, t: &Target, q: &BTreeMap<String, String>) -> Response {
    let db = emu.db.lock().unwrap();
    let selector = q.get("labelSelector").cloned().unwrap_or_default();
    // Pages: `limit` items, then a `continue` token naming where the next page starts.
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let after: Option<(String, String)> = q
        .get("continue")
        .and_then(|c| c.split_once('/'))
        .map(|(ns, name)| (ns.to_string(), name.to_string()));
    let mut matching = db
        .objects
        .iter()
        .filter(|((av, r, ns, name), _)| {
            *av == t.resource.api_version()
                && r == t.resource.resource
                && (t.namespace.is_empty() || *ns == t.namespace)
                && after.as_ref().is_none_or(|(a_ns, a_name)| (ns, name) > (a_ns, a_name))
        })
        .map(|((_, _, ns, name), s)| ((ns, name), render(s)))
        .filter(|(_, o)| label_selector_matches(&selector, o["metadata"]["labels"].as_object().unwrap_or(&Map::new())));
    let mut items = Vec::new();
    let mut last = None;
    for (at, o) in matching.by_ref().take(limit) {
        items.push(o);
        last = Some(at);
    }
    let remaining = matching.count();
    let mut metadata = json!({"resourceVersion": db.rv.to_string()});
    if remaining > 0
        && let Some((ns, name)) = last
    {
        metadata["continue"] = json!(format!("{ns}/{name}"));
        metadata["remainingItemCount"] = json!(remaining);
    }
    let body = json!({
        "kind": format!("{}List", t.resource.kind),
        "apiVersion": t.resource.api_version(),
        "metadata": metadata,
        "items": items,
    });
    ok_json(StatusCode::OK, &body)
}

fn watch(emu: &Emulator, t: &Target, q: &BTreeMap<String, String>) -> Response {
    let selector = q.get("labelSelector").cloned().unwrap_or_default();
    let timeout = q.get("timeoutSeconds").and_then(|s| s.parse().ok()).unwrap_or(1800u64);
    let from: Option<u64> = q
        .get("resourceVersion")
        .and_then(|s| s.parse().ok())
        .filter(|rv| *rv > 0);
    let (api_version, resource, namespace) = (
        t.resource.api_version(),
        t.resource.resource.to_string(),
        t.namespace.clone(),
    );
    let matches = move |e: &Event| {
        e.api_version == api_version
            && e.resource == resource
            && (namespace.is_empty() || e.object["metadata"]["namespace"].as_str() == Some(namespace.as_str()))
            && label_selector_matches(
                &selector,
                e.object["metadata"]["labels"].as_object().unwrap_or(&Map::new()),
            )
    };
    let line = |kind: &str, object: &Value| Bytes::from(format!("{}\n", json!({"type": kind, "object": object})));
    let mut initial: Vec<Bytes> = Vec::new();
    let (rx, mut closed) = {
        let db = emu.db.lock().unwrap();
        match from {
            Some(rv) if rv < db.compacted => {
                let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {rv} ({})", db.compacted), "reason": "Expired", "code": 410});
                let body = Body::from(line("ERROR", &gone));
                return (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response();
            }
            Some(rv) => {
                for e in db.history.iter().filter(|e| e.rv > rv && matches(e)) {
                    initial.push(line(e.kind, &e.object));
                }
            }
            None => {
                // Without a resourceVersion a watch starts with every object as ADDED.
                for ((av, r, _, _), s) in db.objects.iter() {
                    let e = Event {
                        rv: 0,
                        api_version: av.clone(),
                        resource: r.clone(),
                        kind: "ADDED",
                        object: render(s),
                    };
                    if matches(&e) {
                        initial.push(line("ADDED", &e.object));
                    }
                }
            }
        }
        (emu.events.subscribe(), emu.closes.subscribe())
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    closed.borrow_and_update();
    let live = futures::stream::unfold((rx, closed, matches), move |(mut rx, mut closed, matches)| async move {
        loop {
            tokio::select! {
                _ = closed.changed() => return None,
                got = tokio::time::timeout_at(deadline, rx.recv()) => match got {
                    Ok(Ok(e)) if matches(&e) => {
                        let bytes = Bytes::from(format!("{}\n", json!({"type": e.kind, "object": e.object})));
                        return Some((Ok::<Bytes, std::io::Error>(bytes), (rx, closed, matches)));
                    }
                    Ok(Ok(_)) => continue,
                    // A watcher too slow to keep up is closed, never silently skipped:
                    // it resumes from its last resourceVersion (the history replays).
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) => return None,
                    _ => return None,
                },
            }
        }
    });
    let stream = futures::StreamExt::chain(futures::stream::iter(initial.into_iter().map(Ok)), live);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn create(emu: &Emulator, t: &Target, mut v: Value, manager: String) -> Response {
    let Some(name) = v["metadata"]["name"].as_str().map(str::to_string) else {
        return status(422, "Invalid", "metadata.name is required".into());
    };
    let mut db = emu.db.lock().unwrap();
    let k = key(t, &name);
    if db.objects.contains_key(&k) {
        emu.record(&mut db, "POST", t, &name, false);
        return status(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", t.resource.resource),
        );
    }
    if let Err(r) = admit(t, &name, None, &mut v) {
        emu.record(&mut db, "POST", t, &name, false);
        return *r;
    }
    db.rv += 1;
    v["apiVersion"] = json!(t.resource.api_version());
    v["kind"] = json!(t.resource.kind);
    let meta = v["metadata"].as_object_mut().unwrap();
    if t.resource.namespaced {
        meta.insert("namespace".into(), json!(t.namespace));
    }
    meta.insert("resourceVersion".into(), json!(db.rv.to_string()));
    meta.insert("uid".into(), json!(format!("uid-{}", db.rv)));
    meta.insert("creationTimestamp".into(), json!(now()));
    meta.insert("generation".into(), json!(1));
    meta.remove("managedFields");
    let owned = fields(&v);
    let stored = Stored {
        object: v.clone(),
        managers: BTreeMap::from([(manager, ("Update".to_string(), owned))]),
    };
    let rendered = render(&stored);
    db.objects.insert(k, stored);
    emu.record(&mut db, "POST", t, &name, true);
    emu.emit(&mut db, t, "ADDED", &rendered);
    ok_json(StatusCode::CREATED, &rendered)
}

fn replace(emu: &Emulator, t: &Target, name: &str, mut v: Value, manager: String) -> Response {
    let mut db = emu.db.lock().unwrap();
    let k = key(t, name);
    if db.interfere.remove(name) {
        db.rv += 1;
        let rv = db.rv.to_string();
        if let Some(s) = db.objects.get_mut(&k) {
            s.object["metadata"]["resourceVersion"] = json!(rv);
            s.object["metadata"]["annotations"]["interfered"] = json!("true");
        }
    }
    let Some(current) = db.objects.get(&k).cloned() else {
        emu.record(&mut db, "PUT", t, name, false);
        return not_found(t, name);
    };
    let current_rv = current.object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or("")
        .to_string();
    if let Some(rv) = v["metadata"]["resourceVersion"].as_str()
        && rv != current_rv
    {
        emu.record(&mut db, "PUT", t, name, false);
        return stale(t, name);
    }
    let to_status = t.subresource.as_deref() == Some("status");
    let mut next = current.object.clone();
    if to_status {
        next["status"] = v.get("status").cloned().unwrap_or(Value::Null);
    } else {
        v["apiVersion"] = json!(t.resource.api_version());
        v["kind"] = json!(t.resource.kind);
        for k in ["namespace", "uid", "creationTimestamp", "resourceVersion"] {
            if let Some(x) = current.object["metadata"].get(k) {
                v["metadata"][k] = x.clone();
            }
        }
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        if t.resource.status {
            keep_status(&mut v, &current.object);
        }
        next = v;
    }
    commit_update(emu, &mut db, t, name, current, next, manager, "PUT")
}

/// The 409 a write with a stale `metadata.resourceVersion` gets.
fn stale(t: &Target, name: &str) -> Response {
    status(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            t.resource.resource
        ),
    )
}

/// Gives `target` the `.status` of `source` (none if `source` has none): a write to
/// one half of an object (main resource or status subresource) keeps the other half.
fn keep_status(target: &mut Value, source: &Value) {
    match source.get("status") {
        Some(s) => target["status"] = s.clone(),
        None => {
            if let Some(m) = target.as_object_mut() {
                m.remove("status");
            }
        }
    }
}

/// Stores `next` in place of `current` as an update by `manager` (a replace or a
/// patch): admission first, then ownership of the changed fields moves to `manager`.
/// `metadata.generation` after a write: 1 for a new object, one more whenever anything
/// but metadata and status changed (as the API server counts spec changes).
fn next_generation(before: Option<&Value>, after: &Value) -> Value {
    let spec = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        v
    };
    match before {
        None => json!(1),
        Some(b) => {
            let g = b["metadata"]["generation"].as_u64().unwrap_or(1);
            json!(if spec(b) == spec(after) { g } else { g + 1 })
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn commit_update(
    emu: &Emulator,
    db: &mut Db,
    t: &Target,
    name: &str,
    current: Stored,
    mut next: Value,
    manager: String,
    method: &str,
) -> Response {
    let k = key(t, name);
    if let Err(r) = admit(t, name, Some(&current.object), &mut next) {
        emu.record(db, method, t, name, false);
        return *r;
    }
    let changed = next != current.object;
    let mut stored = current.clone();
    if changed {
        // An update owns the fields it changed; nobody else does any more.
        let changed_paths: BTreeSet<Path> = fields(&next)
            .union(&fields(&current.object))
            .filter(|p| get_path(&next, p) != get_path(&current.object, p))
            .cloned()
            .collect();
        for (_, (_, paths)) in stored.managers.iter_mut() {
            paths.retain(|p| !changed_paths.iter().any(|c| overlaps(p, c)));
        }
        let entry = stored
            .managers
            .entry(manager)
            .or_insert(("Update".into(), BTreeSet::new()));
        entry
            .1
            .extend(changed_paths.into_iter().filter(|p| get_path(&next, p).is_some()));
        stored.managers.retain(|_, (_, p)| !p.is_empty());
        db.rv += 1;
        next["metadata"]["resourceVersion"] = json!(db.rv.to_string());
        next["metadata"]["generation"] = next_generation(Some(&current.object), &next);
        stored.object = next;
    }
    let rendered = render(&stored);
    db.objects.insert(k, stored);
    emu.record(db, method, t, name, changed);
    if changed {
        emu.emit(db, t, "MODIFIED", &rendered);
    }
    ok_json(StatusCode::OK, &rendered)
}

/// A merge patch (RFC 7386; a strategic merge patch is served as one for built-in
/// kinds) or a JSON patch (RFC 6902), on the object or its status subresource.
fn patch(emu: &Emulator, t: &Target, name: &str, content_type: &str, body: &Bytes, manager: String) -> Response {
    let mut db = emu.db.lock().unwrap();
    let Some(current) = db.objects.get(&key(t, name)).cloned() else {
        emu.record(&mut db, "PATCH", t, name, false);
        return not_found(t, name);
    };
    let built_in = !t.resource.group.contains('.') || t.resource.group.ends_with(".k8s.io");
    let mut next = current.object.clone();
    let applied = if content_type.starts_with("application/merge-patch+json")
        || (content_type.starts_with("application/strategic-merge-patch+json") && built_in)
    {
        serde_json::from_slice::<Value>(body)
            .map_err(|e| e.to_string())
            .map(|p| json_patch::merge(&mut next, &p))
    } else if content_type.starts_with("application/json-patch+json") {
        serde_json::from_slice::<json_patch::Patch>(body)
            .map_err(|e| e.to_string())
            .and_then(|p| json_patch::patch(&mut next, &p).map_err(|e| e.to_string()))
    } else {
        emu.record(&mut db, "PATCH", t, name, false);
        return status(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (not {content_type})"
            ),
        );
    };
    if let Err(e) = applied {
        emu.record(&mut db, "PATCH", t, name, false);
        return status(422, "Invalid", format!("the patch cannot be applied: {e}"));
    }
    if let Some(rv) = next["metadata"]["resourceVersion"].as_str()
        && Some(rv) != current.object["metadata"]["resourceVersion"].as_str()
    {
        emu.record(&mut db, "PATCH", t, name, false);
        return stale(t, name);
    }
    // Identity and the other half (object vs status) are not the patch's to change.
    for k in ["name", "namespace", "uid", "creationTimestamp", "resourceVersion"] {
        match current.object["metadata"].get(k) {
            Some(x) => next["metadata"][k] = x.clone(),
            None => {
                if let Some(m) = next["metadata"].as_object_mut() {
                    m.remove(k);
                }
            }
        }
    }
    if let Some(m) = next["metadata"].as_object_mut() {
        m.remove("managedFields");
    }
    let to_status = t.subresource.as_deref() == Some("status");
    if to_status {
        // Only .status changes: the object as it was, with the patched status.
        let mut object = current.object.clone();
        keep_status(&mut object, &next);
        next = object;
    } else if t.resource.status {
        keep_status(&mut next, &current.object);
    }
    commit_update(emu, &mut db, t, name, current, next, manager, "PATCH")
}

fn apply(emu: &Emulator, t: &Target, name: &str, patch: Value, manager: &str, force: bool) -> Response {
    let mut db = emu.db.lock().unwrap();
    let k = key(t, name);
    let to_status = t.subresource.as_deref() == Some("status");
    let applied: BTreeSet<Path> = if to_status {
        patch
            .get("status")
            .map(|s| {
                let mut out = BTreeSet::new();
                for p in fields(&json!({"x": s})) {
                    let mut full = vec!["status".to_string()];
                    full.extend(p.into_iter().skip(1));
                    out.insert(full);
                }
                out
            })
            .unwrap_or_default()
    } else {
        fields(&patch)
    };
    let existing = db.objects.get(&k).cloned();
    let mut stored = existing.clone().unwrap_or_else(|| Stored {
        object: json!({"apiVersion": t.resource.api_version(), "kind": t.resource.kind, "metadata": {"name": name}}),
        managers: BTreeMap::new(),
    });
    // Conflicts: a field another manager owns, applied with a different value.
    let mut conflicts = Vec::new();
    for (other, (_, paths)) in stored.managers.iter() {
        if other == manager {
            continue;
        }
        for p in &applied {
            if paths.iter().any(|o| overlaps(o, p)) && get_path(&stored.object, p) != get_path(&patch, p) {
                conflicts.push(format!("conflict with \"{other}\": .{}", p.join(".")));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        emu.record(&mut db, "PATCH", t, name, false);
        return status(
            409,
            "Conflict",
            format!(
                "Apply failed with {} conflict{}: {}",
                conflicts.len(),
                if conflicts.len() == 1 { "" } else { "s" },
                conflicts.join(", ")
            ),
        );
    }
    let before = stored.object.clone();
    let previously: BTreeSet<Path> = stored.managers.get(manager).map(|(_, p)| p.clone()).unwrap_or_default();
    // Applying another manager's field with the same value shares it (both own it, and
    // a later change by either is a conflict); only a forced change takes it over.
    let current_object = stored.object.clone();
    for (other, (_, paths)) in stored.managers.iter_mut() {
        if other != manager {
            paths.retain(|o| {
                !applied
                    .iter()
                    .any(|p| overlaps(o, p) && get_path(&current_object, p) != get_path(&patch, p))
            });
        }
    }
    let owned_by_others: BTreeSet<Path> = stored
        .managers
        .iter()
        .filter(|(m, _)| *m != manager)
        .flat_map(|(_, (_, p))| p.clone())
        .collect();
    for p in previously.difference(&applied) {
        if !owned_by_others.iter().any(|o| overlaps(o, p)) {
            remove_path(&mut stored.object, p);
        }
    }
    for p in &applied {
        if let Some(v) = get_path(&patch, p) {
            set_path(&mut stored.object, p, v.clone());
        }
    }
    stored.managers.insert(manager.to_string(), ("Apply".into(), applied));
    stored.managers.retain(|_, (_, p)| !p.is_empty());
    if let Err(r) = admit(t, name, existing.as_ref().map(|e| &e.object), &mut stored.object) {
        emu.record(&mut db, "PATCH", t, name, false);
        return *r;
    }
    let changed = existing.is_none() || stored.object != before;
    if changed {
        db.rv += 1;
        let meta = stored.object["metadata"].as_object_mut().unwrap();
        if t.resource.namespaced {
            meta.insert("namespace".into(), json!(t.namespace));
        }
        meta.insert("resourceVersion".into(), json!(db.rv.to_string()));
        meta.entry("uid").or_insert(json!(format!("uid-{}", db.rv)));
        meta.entry("creationTimestamp").or_insert(json!(now()));
        let generation = next_generation(existing.as_ref().map(|e| &e.object), &stored.object);
        stored.object["metadata"]["generation"] = generation;
    }
    let rendered = render(&stored);
    db.objects.insert(k, stored);
    emu.record(&mut db, "PATCH", t, name, changed);
    if changed {
        emu.emit(
            &mut db,
            t,
            if existing.is_none() { "ADDED" } else { "MODIFIED" },
            &rendered,
        );
    }
    ok_json(
        if existing.is_none() {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &rendered,
    )
}

fn delete(emu: &Emulator, t: &Target, name: &str, body: &Bytes) -> Response {
    let options: Value = if body.is_empty() {
        json!({})
    } else {
        match parse_body(body) {
            Ok(v) => v,
            Err(r) => return *r,
        }
    };
    let mut db = emu.db.lock().unwrap();
    let Some(current) = db.objects.get(&key(t, name)) else {
        emu.record(&mut db, "DELETE", t, name, false);
        return not_found(t, name);
    };
    let preconditions = &options["preconditions"];
    for (field, shown) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
        if let Some(wanted) = preconditions[field].as_str()
            && current.object["metadata"][field].as_str() != Some(wanted)
        {
            let now = current.object["metadata"][field]
                .as_str()
                .unwrap_or_default()
                .to_string();
            emu.record(&mut db, "DELETE", t, name, false);
            return status(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {}.{} \"{name}\": Precondition failed: {shown} in precondition: {wanted}, {shown} in object meta: {now}",
                    t.resource.resource, t.resource.group
                ),
            );
        }
    }
    let stored = db.objects.remove(&key(t, name)).expect("just read");
    db.rv += 1;
    let mut rendered = render(&stored);
    rendered["metadata"]["resourceVersion"] = json!(db.rv.to_string());
    emu.record(&mut db, "DELETE", t, name, true);
    emu.emit(&mut db, t, "DELETED", &rendered);
    ok_json(
        StatusCode::OK,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": name, "kind": t.resource.resource}}),
    )
}

/// Keeps the first of equal items, wherever they stand (`dedup` only drops neighbours).
fn first_of_each<T: PartialEq + Copy>(items: &mut Vec<T>) {
    let mut kept: Vec<T> = Vec::with_capacity(items.len());
    for item in items.iter() {
        if !kept.contains(item) {
            kept.push(*item);
        }
    }
    *items = kept;
}

fn discovery(path: &str) -> Option<Value> {
    let resources_of = |group: &str, version: &str| -> Value {
        let list: Vec<Value> = RESOURCES
            .iter()
            .filter(|r| r.0 == group && r.1 == version && served_resource(r.0, r.1, r.2))
            .flat_map(|r| {
                let short: &[&str] = match r.2 {
                    "services" => &["svc"],
                    "namespaces" => &["ns"],
                    "events" => &["ev"],
                    "gateways" => &["gw"],
                    "virtualservices" => &["vs"],
                    _ => &[],
                };
                let main = json!({"name": r.2, "singularName": r.3.to_ascii_lowercase(), "namespaced": r.4, "kind": r.3,
                    "shortNames": short, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]});
                let status = json!({"name": format!("{}/status", r.2), "singularName": "", "namespaced": r.4, "kind": r.3, "verbs": ["get", "patch", "update"]});
                if r.5 { vec![main, status] } else { vec![main] }
            })
            .collect();
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
    };
    match path.trim_end_matches('/') {
        "/api" => Some(
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        ),
        "/apis" => {
            let mut groups: Vec<&str> = RESOURCES.iter().map(|r| r.0).filter(|g| !g.is_empty()).collect();
            first_of_each(&mut groups);
            let groups: Vec<Value> = groups
                .iter()
                .map(|g| {
                    let mut versions: Vec<&str> = RESOURCES
                        .iter()
                        .filter(|r| r.0 == *g && served(r.0, r.1))
                        .map(|r| r.1)
                        .collect();
                    first_of_each(&mut versions);
                    let versions: Vec<Value> = versions
                        .iter()
                        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                        .collect();
                    json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        "/api/v1" => Some(resources_of("", "v1")),
        "/openapi/v3" => {
            let mut paths = Map::new();
            let mut gvs: Vec<(&str, &str)> = RESOURCES
                .iter()
                .filter(|r| served(r.0, r.1))
                .map(|r| (r.0, r.1))
                .collect();
            first_of_each(&mut gvs);
            for (g, v) in gvs {
                let key = if g.is_empty() {
                    format!("api/{v}")
                } else {
                    format!("apis/{g}/{v}")
                };
                paths.insert(
                    key.clone(),
                    json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash=emulator")}),
                );
            }
            Some(json!({"paths": paths}))
        }
        "/version" => Some(json!({"major": "1", "minor": "31", "gitVersion": "v1.31.0-tlsward-emulator"})),
        p => {
            let segs: Vec<&str> = p.trim_matches('/').split('/').collect();
            match segs.as_slice() {
                ["openapi", "v3", "api", v] => Some(openapi_v3("", v)),
                ["openapi", "v3", "apis", g, v] if served(g, v) => Some(openapi_v3(g, v)),
                ["apis", g, v] if served(g, v) && RESOURCES.iter().any(|r| r.0 == *g && r.1 == *v) => {
                    Some(resources_of(g, v))
                }
                ["apis", g] if RESOURCES.iter().any(|r| r.0 == *g) => {
                    let versions: Vec<Value> = RESOURCES
                        .iter()
                        .filter(|r| r.0 == *g && served(r.0, r.1))
                        .map(|r| json!({"groupVersion": format!("{g}/{}", r.1), "version": r.1}))
                        .collect::<Vec<_>>()
                        .into_iter()
                        .fold(Vec::new(), |mut acc: Vec<Value>, v| {
                            if !acc.contains(&v) {
                                acc.push(v);
                            }
                            acc
                        });
                    Some(
                        json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": versions, "preferredVersion": versions[0]}),
                    )
                }
                _ => None,
            }
        }
    }
}

/// An OpenAPI v3 document for one group/version: every resource's write operations with
/// their `x-kubernetes-group-version-kind` and the `fieldValidation` parameter, which is
/// what kubectl looks for before it sends its objects for server-side validation.
/// [The real documents carry full schemas; these objects accept any fields.]
fn openapi_v3(group: &str, version: &str) -> Value {
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = Map::new();
    for r in RESOURCES.iter().filter(|r| r.0 == group && r.1 == version) {
        let gvk = json!({"group": group, "version": version, "kind": r.3});
        let op = |action: &str| {
            json!({"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": action,
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                               {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}}],
                "responses": {"200": {"description": "OK"}}})
        };
        let base = if r.4 {
            format!("{prefix}/namespaces/{{namespace}}/{}", r.2)
        } else {
            format!("{prefix}/{}", r.2)
        };
        paths.insert(base.clone(), json!({"post": op("post"), "get": op("list")}));
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"put": op("put"), "patch": op("patch"), "get": op("get"), "delete": op("delete")}),
        );
    }
    json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.31.0-tlsward-emulator"}, "paths": paths,
        "components": {"schemas": {}}})
}

/// A kubeconfig for a client of the emulator on `port`.
pub fn kubeconfig(port: u16) -> String {
    kubeconfig_with_token(port, "emulator")
}

/// A kubeconfig authenticating with `token` (`sa:<ns>:<name>` for a ServiceAccount).
pub fn kubeconfig_with_token(port: u16, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: emulator\n  cluster:\n    server: http://127.0.0.1:{port}\nusers:\n- name: emulator\n  user:\n    token: {token}\ncontexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: emulator\n    namespace: default\ncurrent-context: emulator\n"
    )
}

/// The Roles and RoleBindings of the chart installed as release `tlsward` in `namespace`
/// (also the gateway namespace), listing Secrets allowed (`helm template`, real helm).
pub fn chart_rbac(namespace: &str) -> Vec<Value> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join(".tools/layer/helm/helm"))
        .args(["template", "tlsward", "charts/tlsward", "--namespace", namespace])
        .args([
            "--set",
            "rbac.listSecrets=true",
            "--set",
            "rbac.mesh=true",
            "--set",
            "rbac.gatewayApi=true",
            "--set",
            &format!("config.gateway.namespace={namespace}"),
        ])
        .current_dir(root)
        .output()
        .expect("helm (installed by scripts/test.sh)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .split("\n---")
        .filter_map(|doc| tlsward::config::yaml::parse(doc).ok().map(|(v, _)| v))
        .filter(|v| {
            matches!(
                v["kind"].as_str(),
                Some("Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding")
            )
        })
        .collect()
}

/// The field managers of an object, as its `managedFields` name them.
pub fn managers(object: &Value) -> Vec<&str> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["manager"].as_str())
        .collect()
}

/// An emulator serving on a free loopback port from its own thread, for a test.
pub struct Running {
    pub emulator: Emulator,
    pub port: u16,
    /// tlsward's kubeconfig: the administrator, or with `TLSWARD_EMULATOR_RBAC=chart` the
    /// chart's ServiceAccount, bound to the Roles the chart renders (installed in the
    /// gateway namespace, with `rbac.listSecrets=true` so that any site name is granted).
    pub kubeconfig: tempfile::NamedTempFile,
    /// The administrator's kubeconfig, for the tests' own reads and writes.
    admin_kubeconfig: tempfile::NamedTempFile,
    /// kubectl's discovery cache, this emulator's own: a cache shared through $HOME
    /// would answer for an earlier emulator on the same port (another Istio version).
    kubectl_home: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

impl Running {
    pub fn start() -> Running {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let emulator = Emulator::new();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        runtime.spawn(emulator.clone().serve(listener));
        let admin_kubeconfig = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(admin_kubeconfig.path(), self::kubeconfig(port)).unwrap();
        let kubeconfig = tempfile::NamedTempFile::new().unwrap();
        let token = match std::env::var("TLSWARD_EMULATOR_RBAC").as_deref() {
            Ok("chart") => {
                for object in chart_rbac("istio-system") {
                    emulator.load_rbac(&object);
                }
                "sa:istio-system:tlsward-tlsward".to_string()
            }
            _ => "emulator".to_string(),
        };
        std::fs::write(kubeconfig.path(), kubeconfig_with_token(port, &token)).unwrap();
        Running {
            emulator,
            port,
            kubeconfig,
            admin_kubeconfig,
            kubectl_home: tempfile::tempdir().unwrap(),
            _runtime: runtime,
        }
    }

    /// Asserts that the emulator received no write since it had `before` of them.
    pub fn assert_no_writes_since(&self, before: usize) {
        let writes = self.emulator.writes();
        assert_eq!(
            writes.len(),
            before,
            "writes: {:?}",
            &writes[before.min(writes.len())..]
        );
    }

    /// The real kubectl 1.31 (installed by scripts/test.sh), pointed at this emulator.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Command {
        let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/layer/kubectl/kubectl");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/test.sh, which installs it",
            bin.display()
        );
        let mut c = std::process::Command::new(bin);
        c.env("KUBECONFIG", self.kubeconfig.path())
            .env("HOME", self.kubectl_home.path())
            .args(args);
        c
    }

    /// kubectl `args` on `object`, handed over as a file (`-f`); (exit code, output).
    pub fn kubectl_on(&self, args: &[&str], object: &Value) -> (i32, String) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), object.to_string()).unwrap();
        let mut cmd = self.kubectl(args);
        cmd.args(["-f"]).arg(file.path());
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// A `kube` client for this emulator, from its kubeconfig.
    pub async fn client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.admin_kubeconfig.path()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// Creates the gateway Service `istio-ingressgateway` in `namespace` if needed and
    /// sets its load balancer `ingress` by a status patch (the caller reads nothing, so
    /// that the reads of the process under test can be counted).
    pub fn set_load_balancer(&self, namespace: &str, ingress: Value) {
        use k8s_openapi::api::core::v1::Service;
        use kube::api::{Api, Patch, PatchParams, PostParams};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let api: Api<Service> = Api::namespaced(self.client().await, namespace);
            let status = Patch::Merge(json!({"status": {"loadBalancer": {"ingress": ingress}}}));
            let name = "istio-ingressgateway";
            if api.patch_status(name, &PatchParams::default(), &status).await.is_err() {
                let svc: Service = serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"type": "LoadBalancer", "ports": [{"name": "https", "port": 443}]},
                }))
                .unwrap();
                api.create(&PostParams::default(), &svc).await.unwrap();
                api.patch_status(name, &PatchParams::default(), &status).await.unwrap();
            }
        });
    }
}
