//! The Kubernetes store: credentials as Secrets in the gateway namespace, in the
//! format Istio's SDS reads for `credentialName`; tlsward's own state (CA keys, ACME
//! account) in Secrets beside them; the Gateway and VirtualServices by server-side
//! apply with field manager `tlsward`.
//!
//! A Secret without tlsward's owner label is never written or deleted: it is reported.
//! A credential Secret is replaced whole with its resourceVersion, so a concurrent
//! change makes the write fail (409) and it is retried from a fresh read. An object
//! whose applied fields already hold tlsward's values is not written at all: a no-op
//! pass makes no write calls.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind, ObjectMeta};
use serde_json::Value;

use super::mirror::{Freshness, Mirror};
use super::{
    CredentialBundle, CredentialStore, EventSink, KeyPairPem, MeshView, Notice, ObjectStore, StateFile, StateStore,
    StoreError, StoredCredentials, verify_bundle,
};
use crate::config::SecretFormat;
use crate::model::names;
use crate::pki::PrivateKeyPem;

/// Annotation naming the issuer that signed a credential.
const ISSUER_ANNOTATION: &str = "tlsward.io/issuer";
/// Label on tlsward's state Secrets (value: the state name, `/` as `.`).
const STATE_LABEL: &str = "tlsward.io/state";
const CLIENTS_SUFFIX: &str = "-client-credentials";
const WRITE_ATTEMPTS: u32 = 4;

pub struct KubeStore {
    recorder: kube::runtime::events::Recorder,
    client: kube::Client,
    namespace: String,
    owner: String,
    /// The API server's URL, for errors that never reached an answer.
    server: String,
    /// Where tlsward's own state lives (its release namespace in a chart install).
    state_namespace: String,
    /// Whether the Role forbids listing Secrets, so credentials are read by name and
    /// the index of written credentials is kept (found by the last `credentials`).
    by_name: std::sync::atomic::AtomicBool,
    /// One index update at a time: concurrent issuances must not lose each other's entry.
    index_lock: tokio::sync::Mutex<()>,
    /// Credential Secrets (with their `-cacert` and client siblings) as last seen: fed
    /// by a watch where the Role allows it, else by each pass's own reads.
    secrets: Arc<Mirror<SecretView>>,
    /// tlsward's Gateways and VirtualServices by name (without bookkeeping) as last
    /// seen, to skip writes that change nothing; fed by watches, else by each LIST.
    gateways: Arc<Mirror<ObjectView>>,
    virtual_services: Arc<Mirror<ObjectView>>,
    /// How long a pass waits for a watch's first list before reading the API itself
    /// (`deadlines.request`).
    sync_deadline: std::time::Duration,
    /// The served version of networking.istio.io, discovered once.
    istio_version: tokio::sync::OnceCell<&'static str>,
    /// `gateway.api: gateway-api`: the sites are routed by the Gateway API's objects.
    gateway_api: bool,
    /// tlsward's Gateway API objects by key, as last listed or applied.
    gateway_api_seen: Arc<Mirror<ObjectView>>,
    /// The served version of ReferenceGrant, discovered once.
    grant_version: tokio::sync::OnceCell<&'static str>,
    /// Conditions the Gateway API's controller reported `False`, as last listed.
    gateway_api_problems: std::sync::Mutex<Vec<(String, String)>>,
}

#[path = "kube_gateway_api.rs"]
mod gateway_api;

/// The API server refuses an Event note over 1024 bytes: longer messages are cut on a
/// character boundary and end in `…`.
fn event_note(message: &str) -> String {
    const LIMIT: usize = 1024;
    if message.len() <= LIMIT {
        return message.to_string();
    }
    let mut end = LIMIT - '…'.len_utf8();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// What the store needs of a Secret that may hold a credential: its owner mark, type,
/// issuer and data (text). A Secret without the owner mark keeps no data.
#[derive(Clone, Debug)]
pub struct SecretView {
    owned: bool,
    type_: Option<String>,
    issuer: Option<String>,
    data: BTreeMap<String, String>,
}

/// Whether a Secret's name is one a credential may occupy (see `credential_secret_names`).
fn may_hold_credential(name: &str) -> bool {
    name.ends_with("-credential") || name.ends_with("-credential-cacert") || name.ends_with(CLIENTS_SUFFIX)
}

/// The view of `secret` for `owner`, when its name may hold a credential.
fn secret_view(owner: &str, secret: &Secret) -> Option<SecretView> {
    let name = secret.metadata.name.as_deref()?;
    if !may_hold_credential(name) {
        return None;
    }
    let owned = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(names::OWNER))
        .map(String::as_str)
        == Some(owner);
    Some(SecretView {
        owned,
        type_: secret.type_.clone(),
        issuer: secret
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ISSUER_ANNOTATION))
            .cloned(),
        data: match (owned, &secret.data) {
            (true, Some(d)) => d
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                .collect(),
            _ => BTreeMap::new(),
        },
    })
}

fn text(secret: &SecretView, key: &str) -> Option<String> {
    secret.data.get(key).cloned()
}

/// An Istio object as compared before an apply, as compact JSON (10,000 of them fit in
/// a few MiB, where parsed values would take tens).
type ObjectView = Arc<str>;

/// An Istio object as compared before an apply: no bookkeeping, no status.
fn object_view(object: &DynamicObject) -> ObjectView {
    Arc::from(object_fields(object).to_string())
}

fn object_fields(object: &DynamicObject) -> Value {
    let mut v = serde_json::to_value(object).unwrap_or_default();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.retain(|k, _| matches!(k.as_str(), "name" | "namespace" | "labels" | "annotations"));
    }
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
    }
    v
}

/// tlsward's index of the credential Secrets it wrote (state `credentials`, file `sites`).
const WRITTEN_INDEX: &str = "credentials";
const WRITTEN_FILE: &str = "sites";

fn istio(version: &str, kind: &str) -> ApiResource {
    let group = match kind {
        "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication" => SECURITY_GROUP,
        _ => ISTIO_GROUP,
    };
    let lower = kind.to_ascii_lowercase();
    // English plurals as the CRDs spell them: policy → policies, gateway → gateways.
    let plural = match lower.strip_suffix('y') {
        Some(stem) if !stem.ends_with(['a', 'e', 'i', 'o', 'u']) => format!("{stem}ies"),
        _ => format!("{lower}s"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural)
}

const ISTIO_GROUP: &str = "networking.istio.io";
const SECURITY_GROUP: &str = "security.istio.io";

/// A Secret read by name as the JSON doctor reads (typed reads carry no kind).
fn secret_json(mut secret: Secret) -> Value {
    secret.metadata.managed_fields = None;
    let mut v = serde_json::to_value(secret).unwrap_or_default();
    v["apiVersion"] = "v1".into();
    v["kind"] = "Secret".into();
    v
}

/// What doctor reads of a Pod (labels, annotations, containers and their ports, service
/// account, IP): a cluster's pods are many and the rest of each is large.
fn slim_pod(pod: Value) -> Value {
    let spec = &pod["spec"];
    let containers: Vec<Value> = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| serde_json::json!({"name": c["name"], "ports": c["ports"]}))
        .collect();
    let meta = &pod["metadata"];
    let mut slim = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"],
            "labels": meta["labels"], "annotations": meta["annotations"],
        },
        "spec": {"serviceAccountName": spec["serviceAccountName"], "containers": containers},
        "status": {"podIP": pod["status"]["podIP"]},
    });
    drop_nulls(&mut slim);
    slim
}

/// Removes null members (fields the object did not have), recursively.
fn drop_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, x| !x.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}
const ISTIO_KINDS: [&str; 2] = ["Gateway", "VirtualService"];

/// Objects per LIST page: a page, not the whole namespace, is in memory at once.
const LIST_PAGE: u32 = 500;

/// Lists every object `params` selects, page by page, handing each to `each`.
async fn list_pages<K>(api: &Api<K>, params: ListParams, each: &mut impl FnMut(K)) -> Result<(), kube::Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut params = params.limit(LIST_PAGE);
    loop {
        let page = api.list(&params).await?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        page.items.into_iter().for_each(&mut *each);
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

impl KubeStore {
    /// A kube error as a store error: the API's own Status, or the transport failure
    /// with its whole cause chain and the server it was sent to.
    fn api_error(&self, what: String) -> impl FnOnce(kube::Error) -> StoreError + use<> {
        let server = self.server.clone();
        move |e| StoreError::Kube {
            what,
            detail: match &e {
                // The API server's own words: its message, code and reason.
                kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
                _ if crate::deadline::timed_out(&e) => format!(
                    "API server {server}: no answer within the request deadline (deadlines.request): {}",
                    crate::deadline::chain(&e)
                ),
                _ => format!("API server {server}: {}", crate::deadline::chain(&e)),
            },
        }
    }

    /// The served Istio networking version: `v1` (Istio ≥ 1.22), else `v1beta1`, whose
    /// Gateway and VirtualService have the same schema. Discovered once, and logged.
    async fn istio_version(&self) -> Result<&'static str, StoreError> {
        self.istio_version
            .get_or_try_init(|| async {
                let what = || format!("the Istio API ({ISTIO_GROUP})");
                let groups = self.client.list_api_groups().await.map_err(self.api_error(what()))?;
                let served: Vec<String> = groups
                    .groups
                    .iter()
                    .filter(|g| g.name == ISTIO_GROUP)
                    .flat_map(|g| g.versions.iter().map(|v| v.version.clone()))
                    .collect();
                let version = if served.iter().any(|v| v == "v1") {
                    "v1"
                } else if served.iter().any(|v| v == "v1beta1") {
                    "v1beta1"
                } else {
                    return Err(StoreError::Kube {
                        what: what(),
                        detail: format!(
                            "API server {} serves neither v1 nor v1beta1 (served: [{}]): is Istio installed?",
                            self.server,
                            served.join(", ")
                        ),
                    });
                };
                if version == "v1" {
                    tracing::info!(api = %format!("{ISTIO_GROUP}/v1"), "Istio API");
                } else {
                    tracing::info!(api = %format!("{ISTIO_GROUP}/v1beta1"), "Istio API (v1 is not served: Istio before 1.22)");
                }
                Ok(version)
            })
            .await
            .copied()
    }

    /// The store in `namespace` of the cluster at `server` (named in errors).
    /// Credentials in `namespace`, tlsward's own state in `state_namespace`.
    pub fn new(
        client: kube::Client,
        server: &str,
        namespace: &str,
        state_namespace: &str,
        owner: &str,
        request_deadline: std::time::Duration,
    ) -> KubeStore {
        let reporter = kube::runtime::events::Reporter {
            controller: names::FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        KubeStore {
            recorder: kube::runtime::events::Recorder::new(client.clone(), reporter),
            client,
            server: server.to_string(),
            namespace: namespace.to_string(),
            state_namespace: state_namespace.to_string(),
            by_name: std::sync::atomic::AtomicBool::new(false),
            index_lock: tokio::sync::Mutex::new(()),
            owner: owner.to_string(),
            secrets: Arc::default(),
            gateways: Arc::default(),
            virtual_services: Arc::default(),
            sync_deadline: request_deadline,
            istio_version: tokio::sync::OnceCell::new(),
            gateway_api: false,
            gateway_api_seen: Arc::default(),
            grant_version: tokio::sync::OnceCell::new(),
            gateway_api_problems: std::sync::Mutex::default(),
        }
    }

    /// This store routing sites through the Gateway API's objects (`gateway.api`).
    pub fn with_gateway_api(mut self, on: bool) -> KubeStore {
        self.gateway_api = on;
        self
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secrets_in(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The Secrets a site's credential may occupy.
    fn credential_secret_names(site: &str) -> [String; 3] {
        [
            names::credential_secret(site),
            names::cacert_secret(site),
            format!("{site}{CLIENTS_SUFFIX}"),
        ]
    }

    /// Every Secret of `sites` and of the sites tlsward wrote before, read one by one:
    /// for a Role that grants only those names (no list).
    async fn secrets_by_name(&self, sites: &[String]) -> Result<Vec<Secret>, StoreError> {
        let mut all: std::collections::BTreeSet<String> = self.written_sites().await?;
        all.extend(sites.iter().cloned());
        let names = all
            .iter()
            .flat_map(|site| Self::credential_secret_names(site))
            .collect();
        let mut out = Vec::new();
        self.named_secrets(&names, &mut |s| out.push(s)).await?;
        Ok(out)
    }

    /// doctor's Secrets from the watch: tlsward's own credentials as the watch holds them
    /// (a hundred at a time, so neither the lock nor a copy is held long), then the other
    /// `names` the Gateways use by name.
    async fn watched_secrets(
        &self,
        names: &std::collections::BTreeSet<String>,
        each: &mut (dyn FnMut(Value) + Send),
    ) -> Result<(), StoreError> {
        let watched = self.secrets.names();
        let mut served = std::collections::BTreeSet::new();
        for chunk in watched.chunks(100) {
            let views: Vec<(String, SecretView)> = self.secrets.with(|all| {
                chunk
                    .iter()
                    .filter_map(|n| all.get(n).filter(|v| v.owned).map(|v| (n.clone(), v.clone())))
                    .collect()
            });
            for (name, view) in views {
                each(serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": view.type_,
                    "metadata": {"name": name, "namespace": self.namespace},
                    "stringData": view.data,
                }));
                served.insert(name);
            }
        }
        let rest: std::collections::BTreeSet<String> = names.difference(&served).cloned().collect();
        self.named_secrets(&rest, &mut |secret| each(secret_json(secret))).await
    }

    /// The Secrets of these names in the gateway namespace, one GET each; a name the Role
    /// does not grant (a site removed since) reads as absent.
    async fn named_secrets(
        &self,
        names: &std::collections::BTreeSet<String>,
        keep: &mut (dyn FnMut(Secret) + Send),
    ) -> Result<(), StoreError> {
        let api = self.secrets();
        for name in names {
            match api.get_opt(name).await {
                Ok(Some(s)) => keep(s),
                Ok(None) => {}
                Err(kube::Error::Api(s)) if s.code == 403 => {
                    tracing::debug!(secret = %name, "not granted by the Role: read as absent");
                }
                Err(e) => return Err(self.api_error(format!("Secret {}/{name}", self.namespace))(e)),
            }
        }
        Ok(())
    }

    /// The sites whose credentials tlsward has written (its own index, in its state).
    async fn written_sites(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        Ok(self
            .read_state(WRITTEN_INDEX)
            .await?
            .and_then(|files| files.get(WRITTEN_FILE).cloned())
            .map(|bytes| String::from_utf8_lossy(&bytes).lines().map(str::to_string).collect())
            .unwrap_or_default())
    }

    /// Adds or removes `site` in the index of written credentials, where the index is
    /// needed (Secrets read by name); with LIST allowed the namespace itself is the index.
    async fn note_written(&self, site: &str, written: bool) -> Result<(), StoreError> {
        if !self.by_name.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let _one_at_a_time = self.index_lock.lock().await;
        let mut sites = self.written_sites().await?;
        let changed = if written {
            sites.insert(site.to_string())
        } else {
            sites.remove(site)
        };
        if !changed {
            return Ok(());
        }
        let text: Vec<&str> = sites.iter().map(String::as_str).collect();
        self.write_state(
            WRITTEN_INDEX,
            &[StateFile::public(WRITTEN_FILE, &(text.join("\n") + "\n"))],
        )
        .await
    }

    fn owned(&self, meta: &ObjectMeta) -> bool {
        meta.labels.as_ref().and_then(|l| l.get(names::OWNER)) == Some(&self.owner)
    }

    fn labels(&self, site: Option<&str>) -> BTreeMap<String, String> {
        let mut l = BTreeMap::from([
            (names::MANAGED_BY.to_string(), names::MANAGED_BY_VALUE.to_string()),
            (names::OWNER.to_string(), self.owner.clone()),
        ]);
        if let Some(site) = site {
            l.insert(names::SITE.to_string(), site.to_string());
        }
        l
    }

    /// Writes a Secret whole: create, or replace with the resourceVersion just read.
    /// Never touches one without our owner label.
    async fn put_secret(&self, mut secret: Secret) -> Result<(), StoreError> {
        let namespace = secret
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| self.namespace.clone());
        let api = self.secrets_in(&namespace);
        let name = secret.metadata.name.clone().unwrap_or_default();
        let what = || format!("Secret {namespace}/{name}");
        let params = PostParams {
            field_manager: Some(names::FIELD_MANAGER.into()),
            ..Default::default()
        };
        for attempt in 1..=WRITE_ATTEMPTS {
            let current = api.get_opt(&name).await.map_err(self.api_error(what()))?;
            let result = match current {
                Some(c) if !self.owned(&c.metadata) => {
                    return Err(StoreError::Foreign {
                        what: what(),
                        owner: self.owner.clone(),
                    });
                }
                Some(c)
                    if c.data == secret.data
                        && c.type_ == secret.type_
                        && c.metadata.labels == secret.metadata.labels
                        && c.metadata.annotations == secret.metadata.annotations =>
                {
                    return Ok(());
                }
                // A Secret's type is immutable: a new layout replaces the Secret, with
                // preconditions so that nothing written meanwhile is deleted.
                Some(c) if c.type_ != secret.type_ => {
                    let delete = DeleteParams {
                        preconditions: Some(kube::api::Preconditions {
                            resource_version: c.metadata.resource_version.clone(),
                            uid: c.metadata.uid.clone(),
                        }),
                        ..Default::default()
                    };
                    match api.delete(&name, &delete).await {
                        Ok(_) => {
                            tracing::info!(secret = %name, from = ?c.type_, to = ?secret.type_, "Secret type changed: replaced");
                            secret.metadata.resource_version = None;
                            api.create(&params, &secret).await
                        }
                        Err(e) => Err(e),
                    }
                }
                Some(c) => {
                    secret.metadata.resource_version = c.metadata.resource_version;
                    api.replace(&name, &params, &secret).await
                }
                None => {
                    secret.metadata.resource_version = None;
                    api.create(&params, &secret).await
                }
            };
            match result {
                Ok(written) => {
                    if namespace == self.namespace {
                        self.secrets.saw(
                            &name,
                            written.metadata.resource_version.as_deref(),
                            secret_view(&self.owner, &written),
                        );
                    }
                    return Ok(());
                }
                Err(e) if is_conflict(&e) && attempt < WRITE_ATTEMPTS => {
                    tracing::debug!(secret = %name, attempt, "changed meanwhile (409): reading it again");
                }
                Err(e) => return Err(self.api_error(what())(e)),
            }
        }
        unreachable!("the last attempt returns")
    }

    async fn delete_owned_secret(&self, name: &str) -> Result<(), StoreError> {
        let api = self.secrets();
        let what = format!("Secret {}/{name}", self.namespace);
        match api.get_opt(name).await.map_err(self.api_error(what.clone()))? {
            None => Ok(()),
            Some(s) if !self.owned(&s.metadata) => Err(StoreError::Foreign {
                what,
                owner: self.owner.clone(),
            }),
            Some(_) => {
                api.delete(name, &DeleteParams::default())
                    .await
                    .map_err(self.api_error(what))?;
                self.secrets.saw(name, None, None);
                Ok(())
            }
        }
    }

    fn mirror_of(&self, kind: &str) -> Option<&Arc<Mirror<ObjectView>>> {
        match kind {
            "Gateway" => Some(&self.gateways),
            "VirtualService" => Some(&self.virtual_services),
            _ => None,
        }
    }

    /// The names of tlsward's objects of `kind`: from the watch's mirror, else listed
    /// (and remembered, to skip writes that change nothing).
    async fn owned_of(&self, kind: &str) -> Result<Vec<String>, StoreError> {
        let mirror = self.mirror_of(kind).expect("an Istio kind");
        if self.mirrored(mirror).await {
            return Ok(mirror.names());
        }
        // The site objects: the mesh step's own (labelled with their part) are not these.
        let selector = format!("{}={},!{}", names::OWNER, self.owner, names::PART);
        let version = self.istio_version().await?;
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.namespace, &istio(version, kind));
        let mut seen: BTreeMap<String, (Option<String>, ObjectView)> = BTreeMap::new();
        list_pages(
            &api,
            ListParams::default().labels(&selector),
            &mut |o: DynamicObject| {
                seen.insert(
                    o.metadata.name.clone().unwrap_or_default(),
                    (o.metadata.resource_version.clone(), object_view(&o)),
                );
            },
        )
        .await
        .map_err(self.api_error(format!("{kind}s in {}", self.namespace)))?;
        let names = seen.keys().cloned().collect();
        mirror.replace(seen);
        Ok(names)
    }

    /// Whether `mirror` can answer for the API server: a watch keeps it, and its first
    /// list completed (waited for up to the request deadline).
    async fn mirrored<T: Clone>(&self, mirror: &Mirror<T>) -> bool {
        if !mirror.has_watch() {
            return false;
        }
        match mirror.ready_within(self.sync_deadline).await {
            Freshness::Synced => true,
            Freshness::Forbidden => false,
            Freshness::Syncing => {
                tracing::warn!(namespace = %self.namespace, "a watch has not completed its first list: reading the API server");
                false
            }
        }
    }

    /// Starts the watches that keep the credential Secrets and tlsward's Istio objects
    /// in memory (`client`: one for long-lived requests). A watch the Role does not allow
    /// leaves that read to each pass. Returns the tasks (abort them to stop).
    pub fn watch(self: &Arc<Self>, client: kube::Client) -> Vec<tokio::task::JoinHandle<()>> {
        use kube::runtime::watcher;
        let mut tasks = Vec::new();
        let owner = self.owner.clone();
        tasks.push(tokio::spawn(super::mirror::follow(
            Api::<Secret>::namespaced(client.clone(), &self.namespace),
            watcher::Config::default(),
            self.secrets.clone(),
            format!("Secrets in {}", self.namespace),
            move |s: &Secret| secret_view(&owner, s),
        )));
        let store = self.clone();
        // Marked before the version is known, so that a pass waits for these watches.
        self.gateways.expect_watch();
        self.virtual_services.expect_watch();
        tasks.push(tokio::spawn(async move {
            let version = loop {
                match store.istio_version().await {
                    Ok(v) => break v,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch the Istio objects yet; retrying");
                        tokio::time::sleep(store.sync_deadline.min(std::time::Duration::from_secs(10))).await;
                    }
                }
            };
            let selector = format!("{}={},!{}", names::OWNER, store.owner, names::PART);
            let follow = |kind: &'static str| {
                super::mirror::follow(
                    Api::<DynamicObject>::namespaced_with(client.clone(), &store.namespace, &istio(version, kind)),
                    watcher::Config::default().labels(&selector),
                    store.mirror_of(kind).expect("an Istio kind").clone(),
                    format!("{kind}s in {}", store.namespace),
                    |o: &DynamicObject| Some(object_view(o)),
                )
            };
            futures::join!(follow("Gateway"), follow("VirtualService"));
        }));
        tasks
    }

    /// The stored credentials, from the Secrets that may hold them.
    fn assemble(&self, by_name: &BTreeMap<String, SecretView>) -> StoredCredentials {
        let mut owned = BTreeMap::new();
        let mut out = self.assemble_each(by_name, &mut |bundle| {
            owned.insert(bundle.site.clone(), bundle);
        });
        out.owned = owned;
        out
    }

    /// Builds each stored credential in turn and hands it to `each`; returns the sites
    /// whose place is foreign or unreadable (`owned` left empty).
    fn assemble_each(
        &self,
        by_name: &BTreeMap<String, SecretView>,
        each: &mut dyn FnMut(CredentialBundle),
    ) -> StoredCredentials {
        let mut out = StoredCredentials::default();
        for (name, secret) in by_name {
            let Some(site) = name.strip_suffix("-credential") else {
                continue;
            };
            if !secret.owned {
                out.foreign.insert(
                    site.to_string(),
                    format!("Secret {}/{name} exists without tlsward's owner label", self.namespace),
                );
                continue;
            }
            let (crt, key) = match secret.type_.as_deref() {
                Some(names::SECRET_TYPE_TLS) => (text(secret, names::TLS_CRT), text(secret, names::TLS_KEY)),
                _ => (text(secret, names::GENERIC_CERT), text(secret, names::GENERIC_KEY)),
            };
            let (Some(chain_pem), Some(key)) = (crt, key) else {
                out.unreadable.insert(
                    site.to_string(),
                    format!("Secret {}/{name} lacks its certificate or key", self.namespace),
                );
                continue;
            };
            let split_ca = by_name
                .get(&format!("{name}-cacert"))
                .and_then(|s| text(s, names::CA_CRT));
            let client_ca_pem = text(secret, names::CA_CRT)
                .or_else(|| text(secret, names::GENERIC_CACERT))
                .or_else(|| split_ca.clone());
            let mut clients = BTreeMap::new();
            if let Some(cs) = by_name.get(&format!("{site}{CLIENTS_SUFFIX}")).filter(|s| s.owned) {
                for k in cs.data.keys() {
                    if let Some(client) = k.strip_suffix(".crt")
                        && let (Some(c), Some(k)) = (text(cs, k), text(cs, &format!("{client}.key")))
                    {
                        clients.insert(
                            client.to_string(),
                            KeyPairPem {
                                chain_pem: c,
                                key: PrivateKeyPem::new(k),
                            },
                        );
                    }
                }
            }
            let issuer = secret.issuer.clone().unwrap_or_default();
            each(CredentialBundle {
                site: site.to_string(),
                issuer,
                server: KeyPairPem {
                    chain_pem,
                    key: PrivateKeyPem::new(key),
                },
                client_ca_pem,
                clients,
                format: match secret.type_.as_deref() {
                    Some(names::SECRET_TYPE_TLS) if split_ca.is_some() => SecretFormat::Split,
                    Some(names::SECRET_TYPE_TLS) => SecretFormat::Tls,
                    _ => SecretFormat::Generic,
                },
            });
        }
        out
    }

    fn state_secret_name(name: &str) -> String {
        format!("tlsward-state-{}", name.replace('/', "-"))
    }
}

#[async_trait]
impl EventSink for KubeStore {
    async fn notify(&self, site: &str, notice: Notice, message: &str) {
        use kube::runtime::events::{Event, EventType};
        let (type_, reason, action) = match notice {
            Notice::Issued => (EventType::Normal, "Issued", "Issue"),
            Notice::Renewed => (EventType::Normal, "Renewed", "Issue"),
            Notice::Failed => (EventType::Warning, "IssuanceFailed", "Issue"),
            Notice::Conflict => (EventType::Warning, "Conflict", "Write"),
        };
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Secret".into()),
            name: Some(names::credential_secret(site)),
            namespace: Some(self.namespace.clone()),
            ..Default::default()
        };
        // Events are explanations, not state: failing to record one fails nothing.
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(event_note(message)),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::debug!(site = %site, error = %e, "event not recorded");
        }
    }

    async fn finding(&self, object: &crate::mesh::ObjectRef, code: &str, message: &str) {
        use kube::runtime::events::{Event, EventType};
        let api_version = match object.kind.as_str() {
            "Secret" | "Service" | "Pod" | "Namespace" => "v1".to_string(),
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => "apps/v1".into(),
            "Job" => "batch/v1".into(),
            "Gateway" | "VirtualService" | "DestinationRule" => {
                format!("{ISTIO_GROUP}/{}", self.istio_version().await.unwrap_or("v1"))
            }
            "PeerAuthentication" | "AuthorizationPolicy" | "RequestAuthentication" => {
                format!("{SECURITY_GROUP}/{}", self.istio_version().await.unwrap_or("v1"))
            }
            _ => return, // not a Kubernetes object (a DNS name)
        };
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(api_version),
            kind: Some(object.kind.clone()),
            name: Some(object.name.clone()),
            namespace: (!object.namespace.is_empty()).then(|| object.namespace.clone()),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: code.into(),
            note: Some(event_note(message)),
            action: "Diagnose".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::debug!(object = %object, error = %e, "event not recorded");
        }
    }
}

#[async_trait]
impl CredentialStore for KubeStore {
    async fn credentials_each(
        &self,
        sites: &[String],
        each: &mut (dyn FnMut(CredentialBundle) + Send),
    ) -> Result<StoredCredentials, StoreError> {
        if self.mirrored(&self.secrets).await {
            return Ok(self.secrets.with(|all| self.assemble_each(all, each)));
        }
        let mut all = self.credentials(sites).await?;
        std::mem::take(&mut all.owned).into_values().for_each(each);
        Ok(all)
    }

    async fn credentials(&self, sites: &[String]) -> Result<StoredCredentials, StoreError> {
        if self.mirrored(&self.secrets).await {
            return Ok(self.secrets.with(|all| self.assemble(all)));
        }
        // A LIST (in pages) where the Role allows it; else each Secret by name (least
        // privilege).
        use std::sync::atomic::Ordering::Relaxed;
        let mut views: BTreeMap<String, SecretView> = BTreeMap::new();
        let mut keep = |s: Secret| {
            if let (Some(name), Some(view)) = (s.metadata.name.clone(), secret_view(&self.owner, &s)) {
                views.insert(name, view);
            }
        };
        match list_pages(&self.secrets(), ListParams::default(), &mut keep).await {
            Ok(()) => self.by_name.store(false, Relaxed),
            Err(kube::Error::Api(s)) if s.code == 403 => {
                self.by_name.store(true, Relaxed);
                self.secrets_by_name(sites).await?.into_iter().for_each(keep);
            }
            Err(e) => return Err(self.api_error(format!("Secrets in {}", self.namespace))(e)),
        }
        Ok(self.assemble(&views))
    }

    async fn write_credential(&self, bundle: &CredentialBundle) -> Result<(), StoreError> {
        verify_bundle(bundle)?;
        let site = &bundle.site;
        // Indexed before it exists: a crash between the two leaves an entry that reads
        // as absent, never a Secret tlsward forgot it wrote.
        self.note_written(site, true).await?;
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        // Clients first: the credential Secret that names their CA comes last.
        if !bundle.clients.is_empty() {
            let mut data = BTreeMap::new();
            for (name, pair) in &bundle.clients {
                data.insert(format!("{name}.crt"), bytes(&pair.chain_pem));
                data.insert(format!("{name}.key"), bytes(pair.key.expose()));
            }
            let clients = Secret {
                metadata: ObjectMeta {
                    name: Some(format!("{site}{CLIENTS_SUFFIX}")),
                    namespace: Some(self.namespace.clone()),
                    labels: Some(self.labels(Some(site))),
                    ..Default::default()
                },
                type_: Some(names::SECRET_TYPE_OPAQUE.into()),
                data: Some(data),
                ..Default::default()
            };
            self.put_secret(clients).await?;
        }
        // The keys Istio's SDS reads for `credentialName`, by format.
        let (crt, key, ca, kind) = match bundle.format {
            SecretFormat::Tls | SecretFormat::Split => {
                (names::TLS_CRT, names::TLS_KEY, names::CA_CRT, names::SECRET_TYPE_TLS)
            }
            SecretFormat::Generic => (
                names::GENERIC_CERT,
                names::GENERIC_KEY,
                names::GENERIC_CACERT,
                names::SECRET_TYPE_OPAQUE,
            ),
        };
        let mut data = BTreeMap::from([
            (crt.to_string(), bytes(&bundle.server.chain_pem)),
            (key.to_string(), bytes(bundle.server.key.expose())),
        ]);
        let cacert = names::cacert_secret(site);
        match (&bundle.client_ca_pem, bundle.format) {
            (Some(pem), SecretFormat::Split) => {
                // Written before the credential that relies on it.
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(cacert.clone()),
                        namespace: Some(self.namespace.clone()),
                        labels: Some(self.labels(Some(site))),
                        ..Default::default()
                    },
                    type_: Some(names::SECRET_TYPE_OPAQUE.into()),
                    data: Some(BTreeMap::from([(names::CA_CRT.to_string(), bytes(pem))])),
                    ..Default::default()
                };
                self.put_secret(secret).await?;
            }
            (Some(pem), _) => {
                data.insert(ca.to_string(), bytes(pem));
            }
            (None, _) => {}
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(names::credential_secret(site)),
                namespace: Some(self.namespace.clone()),
                labels: Some(self.labels(Some(site))),
                annotations: Some(BTreeMap::from([(ISSUER_ANNOTATION.to_string(), bundle.issuer.clone())])),
                ..Default::default()
            },
            type_: Some(kind.into()),
            data: Some(data),
            ..Default::default()
        };
        self.put_secret(secret).await?;
        if bundle.clients.is_empty() {
            self.delete_owned_secret(&format!("{site}{CLIENTS_SUFFIX}")).await?;
        }
        if bundle.client_ca_pem.is_none() || bundle.format != SecretFormat::Split {
            self.delete_owned_secret(&cacert).await?;
        }
        Ok(())
    }

    async fn delete_credential(&self, site: &str) -> Result<(), StoreError> {
        for name in Self::credential_secret_names(site) {
            self.delete_owned_secret(&name).await?;
        }
        self.note_written(site, false).await
    }

    fn credentials_generation(&self) -> Option<u64> {
        self.secrets.watched_generation()
    }
}

#[async_trait]
impl StateStore for KubeStore {
    async fn read_state(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, StoreError> {
        let secret_name = Self::state_secret_name(name);
        let found = self
            .secrets_in(&self.state_namespace)
            .get_opt(&secret_name)
            .await
            .map_err(self.api_error(format!("Secret {}/{secret_name}", self.state_namespace)))?;
        Ok(found
            .filter(|s| self.owned(&s.metadata))
            .map(|s| s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()))
    }

    async fn write_state(&self, name: &str, files: &[StateFile]) -> Result<(), StoreError> {
        let mut labels = self.labels(None);
        labels.insert(STATE_LABEL.into(), name.replace('/', "."));
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(Self::state_secret_name(name)),
                namespace: Some(self.state_namespace.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            type_: Some(names::SECRET_TYPE_OPAQUE.into()),
            data: Some(
                files
                    .iter()
                    .map(|f| (f.name.clone(), ByteString(f.contents.clone())))
                    .collect(),
            ),
            ..Default::default()
        };
        self.put_secret(secret).await
    }

    async fn write_trust(&self, _issuer: &str, _pem: &str) -> Result<bool, StoreError> {
        // In a cluster the root lives in the issuer's state Secret (`root.crt`).
        Ok(false)
    }
}

#[async_trait]
impl ObjectStore for KubeStore {
    async fn owned_objects(&self) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        // Istio's objects in either mode: after a switch to the Gateway API, the old
        // Gateway and VirtualServices are unwanted and go.
        for kind in ISTIO_KINDS {
            keys.extend(
                self.owned_of(kind)
                    .await?
                    .into_iter()
                    .map(|name| format!("{}/{name}", kind.to_ascii_lowercase())),
            );
        }
        if self.gateway_api {
            keys.extend(self.owned_gateway_api().await?);
        }
        Ok(keys)
    }

    async fn apply_object(&self, object: &Value) -> Result<bool, StoreError> {
        let kind = object["kind"].as_str().unwrap_or_default();
        if kind == "Secret" {
            // Credential Secrets are written whole by write_credential, never applied.
            return Ok(false);
        }
        if object["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with(crate::render::gateway_api::GROUP))
        {
            return self.apply_gateway_api(object).await;
        }
        let version = self.istio_version().await?;
        // Rendered as v1; the same schema is served as v1beta1 by older Istio.
        let mut object = object.clone();
        object["apiVersion"] = Value::String(format!("{ISTIO_GROUP}/{version}"));
        let object = &object;
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let Some(seen) = self.mirror_of(kind) else {
            return Ok(false);
        };
        let unchanged = seen.with(|seen| {
            seen.get(name)
                .and_then(|current| serde_json::from_str::<Value>(current).ok())
                .is_some_and(|current| super::contains(&current, object))
        });
        if unchanged {
            return Ok(false);
        }
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.namespace, &istio(version, kind));
        // Never forced: a field another manager owns is a conflict to report, not to take.
        let applied = api
            .patch(name, &PatchParams::apply(names::FIELD_MANAGER), &Patch::Apply(object))
            .await
            .map_err(self.api_error(format!("{kind} {}/{name}", self.namespace)))?;
        seen.saw(
            name,
            applied.metadata.resource_version.as_deref(),
            Some(object_view(&applied)),
        );
        Ok(true)
    }

    async fn credentials_named_by_gateways(&self, gateways: &[String]) -> Result<BTreeMap<String, String>, StoreError> {
        let mut named = BTreeMap::new();
        if self.gateway_api {
            for name in gateways {
                for credential in self.gateway_api_credentials(name).await? {
                    named.insert(credential, name.clone());
                }
            }
        }
        let version = self.istio_version().await?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.namespace, &istio(version, "Gateway"));
        for name in gateways {
            let live = api
                .get_opt(name)
                .await
                .map_err(self.api_error(format!("Gateway {}/{name}", self.namespace)))?;
            let servers = live
                .map(|g| g.data["spec"]["servers"].as_array().cloned().unwrap_or_default())
                .unwrap_or_default();
            for credential in servers.iter().filter_map(|s| s["tls"]["credentialName"].as_str()) {
                named.insert(credential.to_string(), name.clone());
            }
        }
        Ok(named)
    }

    fn routing_status(&self) -> Vec<(String, String)> {
        self.gateway_api_status()
    }

    fn objects_generation(&self) -> Option<u64> {
        if self.gateway_api {
            // The Gateway API's objects are not watched: every pass compares them.
            return None;
        }
        // Generations are process-wide and increasing: the newer one moves with either.
        Some(
            self.gateways
                .watched_generation()?
                .max(self.virtual_services.watched_generation()?),
        )
    }

    async fn istio_api(&self) -> Result<Option<String>, StoreError> {
        Ok(Some(format!("{ISTIO_GROUP}/{}", self.istio_version().await?)))
    }

    async fn mesh_objects(&self, only: &[&str], each: &mut (dyn FnMut(Value) + Send)) -> Result<MeshView, StoreError> {
        let version = self.istio_version().await?;
        let mut out = MeshView {
            complete: true,
            sees_workloads: true,
            notes: Vec::new(),
        };
        // (group, version, kind, plural, only the gateway namespace); Gateways before
        // Secrets, so the credentials they name are known if Secrets must be read by name.
        let mut kinds: Vec<(&str, &str, &str, &str, bool)> = vec![
            ("", "v1", "Namespace", "namespaces", false),
            ("", "v1", "Pod", "pods", false),
            ("", "v1", "Service", "services", false),
            (ISTIO_GROUP, version, "Gateway", "gateways", false),
            ("", "v1", "Secret", "secrets", true),
            (ISTIO_GROUP, version, "VirtualService", "virtualservices", false),
            (ISTIO_GROUP, version, "DestinationRule", "destinationrules", false),
            (ISTIO_GROUP, version, "ServiceEntry", "serviceentries", false),
            (
                SECURITY_GROUP,
                version,
                "PeerAuthentication",
                "peerauthentications",
                false,
            ),
            (
                SECURITY_GROUP,
                version,
                "AuthorizationPolicy",
                "authorizationpolicies",
                false,
            ),
            (
                SECURITY_GROUP,
                version,
                "RequestAuthentication",
                "requestauthentications",
                false,
            ),
        ];
        if self.gateway_api {
            // Their controller's conditions (doctor's GatewayApiConditionFalse).
            let group = crate::render::gateway_api::GROUP;
            kinds.push((group, "v1", "Gateway", "gateways", false));
            kinds.push((group, "v1", "HTTPRoute", "httproutes", false));
        }
        let mut credential_names: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for (group, version, kind, plural, namespaced) in kinds {
            if !only.is_empty() && !only.contains(&kind) {
                continue;
            }
            // The credentials the Secrets watch already holds are not listed again; the
            // Secrets it keeps no data of (not tlsward's, or other names) are read by name.
            if kind == "Secret" && self.mirrored(&self.secrets).await {
                self.watched_secrets(&credential_names, each).await?;
                continue;
            }
            let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
            let api: Api<DynamicObject> = if namespaced {
                Api::namespaced_with(self.client.clone(), &self.namespace, &resource)
            } else {
                Api::all_with(self.client.clone(), &resource)
            };
            let types = kube::core::TypeMeta {
                api_version: resource.api_version.clone(),
                kind: kind.to_string(),
            };
            // One page at a time is in memory, never the whole list.
            let mut page = |mut o: DynamicObject| {
                o.metadata.managed_fields = None;
                // The object's fields are moved, not copied: a page of Secrets is large.
                let mut v = std::mem::take(&mut o.data);
                if !v.is_object() {
                    return;
                }
                v["metadata"] = serde_json::to_value(&o.metadata).unwrap_or_default();
                v["apiVersion"] = Value::String(types.api_version.clone());
                v["kind"] = Value::String(types.kind.clone());
                if kind == "Gateway" && group == ISTIO_GROUP {
                    for server in v["spec"]["servers"].as_array().into_iter().flatten() {
                        if let Some(name) = server["tls"]["credentialName"].as_str() {
                            credential_names.insert(name.to_string());
                            credential_names.insert(format!("{name}-cacert"));
                        }
                    }
                }
                each(if kind == "Pod" { slim_pod(v) } else { v });
            };
            match list_pages(&api, ListParams::default(), &mut page).await {
                Ok(()) => {}
                // A kind the cluster does not serve (Istio's security CRDs absent) has no objects.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                // The chart's default Role reads credential Secrets by name only.
                Err(kube::Error::Api(status)) if status.code == 403 && kind == "Secret" => {
                    self.named_secrets(&credential_names, &mut |secret| each(secret_json(secret)))
                        .await?;
                }
                Err(kube::Error::Api(status)) if status.code == 403 => {
                    out.complete = false;
                    out.sees_workloads &= kind != "Pod";
                    out.notes
                        .push(format!("{kind}: not allowed to list ({})", status.message));
                }
                Err(e) => return Err(self.api_error(format!("listing {plural}"))(e)),
            }
        }
        // Istio's mesh config (its outboundTrafficPolicy), read by name where istiod runs.
        if only.is_empty() || only.contains(&"ConfigMap") {
            let namespace = crate::mesh::inventory::DEFAULT_ROOT_NAMESPACE;
            let name = crate::mesh::inventory::MESH_CONFIG;
            let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(self.client.clone(), namespace);
            match api.get_opt(name).await {
                Ok(Some(config)) => {
                    let mut v = serde_json::to_value(config).unwrap_or_default();
                    v["apiVersion"] = Value::String("v1".into());
                    v["kind"] = Value::String("ConfigMap".into());
                    each(v);
                }
                Ok(None) => {}
                Err(kube::Error::Api(status)) if status.code == 403 => out.notes.push(format!(
                    "ConfigMap {namespace}/{name}: not allowed to read ({})",
                    status.message
                )),
                Err(e) => return Err(self.api_error(format!("ConfigMap {namespace}/{name}"))(e)),
            }
        }
        Ok(out)
    }

    async fn apply_policy(&self, object: &Value) -> Result<(), StoreError> {
        let (kind, namespace, name) = (
            object["kind"].as_str().unwrap_or_default(),
            object["metadata"]["namespace"].as_str().unwrap_or_default(),
            object["metadata"]["name"].as_str().unwrap_or_default(),
        );
        let version = self.istio_version().await?;
        let resource = istio(version, kind);
        let mut object = object.clone();
        object["apiVersion"] = Value::String(resource.api_version.clone());
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &resource);
        let what = format!("{kind} {namespace}/{name}");
        // Checked first: server-side apply would take over fields nobody else manages.
        if let Some(live) = api.get_opt(name).await.map_err(self.api_error(what.clone()))?
            && !self.owned(&live.metadata)
        {
            return Err(StoreError::Foreign {
                what,
                owner: self.owner.clone(),
            });
        }
        api.patch(name, &PatchParams::apply(names::FIELD_MANAGER), &Patch::Apply(&object))
            .await
            .map_err(self.api_error(what))?;
        Ok(())
    }

    async fn delete_policy(&self, object: &crate::mesh::ObjectRef) -> Result<(), StoreError> {
        let version = self.istio_version().await?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &object.namespace, &istio(version, &object.kind));
        let what = format!("{} {}/{}", object.kind, object.namespace, object.name);
        match api.get_opt(&object.name).await.map_err(self.api_error(what.clone()))? {
            Some(live) if self.owned(&live.metadata) => {
                // Deleted only as it was read: a replacement made since is not ours to remove.
                let params = DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        uid: live.metadata.uid.clone(),
                        resource_version: live.metadata.resource_version.clone(),
                    }),
                    ..DeleteParams::default()
                };
                api.delete(&object.name, &params).await.map_err(self.api_error(what))?;
                Ok(())
            }
            Some(_) => Err(StoreError::Foreign {
                what,
                owner: self.owner.clone(),
            }),
            None => Ok(()),
        }
    }

    async fn delete_object(&self, key: &str) -> Result<(), StoreError> {
        if self.delete_gateway_api(key).await? {
            return Ok(());
        }
        let Some((kind, name)) = key.split_once('/') else {
            return Ok(());
        };
        let kind = match kind {
            "gateway" => "Gateway",
            "virtualservice" => "VirtualService",
            _ => return Ok(()),
        };
        let version = self.istio_version().await?;
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.namespace, &istio(version, kind));
        let what = format!("{kind} {}/{name}", self.namespace);
        match api.get_opt(name).await.map_err(self.api_error(what.clone()))? {
            Some(o) if o.metadata.labels.as_ref().and_then(|l| l.get(names::OWNER)) == Some(&self.owner) => {
                api.delete(name, &DeleteParams::default())
                    .await
                    .map_err(self.api_error(what))?;
                if let Some(seen) = self.mirror_of(kind) {
                    seen.saw(name, None, None);
                }
                Ok(())
            }
            Some(_) => Err(StoreError::Foreign {
                what,
                owner: self.owner.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// The ConfigMap (in the gateway namespace) through which the leader hands its pending
/// HTTP-01 answers to every replica behind the solver Service. Key authorizations are
/// public by design (the CA fetches them over plain HTTP): no Secret needed.
pub const HTTP01_CONFIGMAP: &str = "tlsward-acme-http01";

/// Keeps `answers` equal to the published HTTP-01 answers (the ConfigMap, when tlsward
/// owns it) for as long as it runs: every replica serves what the leader published.
pub async fn watch_http01_answers(
    client: kube::Client,
    namespace: String,
    owner: String,
    answers: std::sync::Arc<crate::issuer::acme::Http01Challenges>,
) {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::watcher;
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={HTTP01_CONFIGMAP}"));
    let mut stream = watcher(api, config).boxed();
    let ours = |cm: &ConfigMap| {
        cm.metadata.name.as_deref() == Some(HTTP01_CONFIGMAP)
            && cm.metadata.labels.as_ref().and_then(|l| l.get(names::OWNER)) == Some(&owner)
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Apply(cm)) | Ok(watcher::Event::InitApply(cm)) if ours(&cm) => {
                answers.set_shared(cm.data.unwrap_or_default().into_iter().collect());
            }
            Ok(watcher::Event::Delete(cm)) if ours(&cm) => answers.set_shared(Default::default()),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(configmap = %HTTP01_CONFIGMAP, error = %e, "watching the HTTP-01 answers failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

#[async_trait]
impl crate::issuer::acme::ChallengeBoard for KubeStore {
    async fn publish(&self, answers: &BTreeMap<String, String>) -> Result<(), StoreError> {
        use k8s_openapi::api::core::v1::ConfigMap;
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.state_namespace);
        let what = format!("ConfigMap {}/{HTTP01_CONFIGMAP}", self.state_namespace);
        if let Some(current) = api
            .get_opt(HTTP01_CONFIGMAP)
            .await
            .map_err(self.api_error(what.clone()))?
            && !self.owned(&current.metadata)
        {
            return Err(StoreError::Foreign {
                what,
                owner: self.owner.clone(),
            });
        }
        let object = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": HTTP01_CONFIGMAP, "namespace": self.state_namespace, "labels": self.labels(None)},
            "data": answers,
        });
        api.patch(
            HTTP01_CONFIGMAP,
            &PatchParams::apply(names::FIELD_MANAGER),
            &Patch::Apply(&object),
        )
        .await
        .map(|_| ())
        .map_err(self.api_error(what))
    }
}

#[cfg(test)]
mod tests {
    use super::event_note;

    #[test]
    fn event_notes_fit_1024_bytes_and_cut_on_a_character_boundary() {
        assert_eq!(event_note("short"), "short");
        let exact = "a".repeat(1024);
        assert_eq!(event_note(&exact), exact);
        for text in ["é".repeat(600), "€".repeat(400), format!("a{}", "😀".repeat(300))] {
            let note = event_note(&text);
            assert!(note.len() <= 1024, "{} bytes", note.len());
            assert!(note.ends_with('…'));
            assert!(text.starts_with(note.trim_end_matches('…')));
        }
    }
}
