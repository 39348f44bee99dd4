//! Where credentials, objects and tlsward's own state live, behind four narrow traits
//! (`CredentialStore`, `StateStore`, `ObjectStore`, `EventSink`; `Store` is all four): a
//! directory (`files`) or the Kubernetes API (`kubernetes`). A store writes what it is given, whole,
//! and refuses a key that does not match its certificate; it never touches what
//! carries no tlsward ownership mark. It decides nothing else.

pub mod files;
pub mod kubernetes;
pub mod lease;
pub mod mirror;

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::Value;

use crate::pki::PrivateKeyPem;

/// One file of a state set (CA keys, …).
#[derive(Clone, Debug)]
pub struct StateFile {
    pub name: String,
    pub contents: Vec<u8>,
    pub secret: bool,
}

impl StateFile {
    pub fn public(name: &str, contents: &str) -> StateFile {
        StateFile {
            name: name.into(),
            contents: contents.as_bytes().to_vec(),
            secret: false,
        }
    }
    pub fn secret(name: &str, contents: &str) -> StateFile {
        StateFile {
            name: name.into(),
            contents: contents.as_bytes().to_vec(),
            secret: true,
        }
    }
}

/// A certificate chain (leaf first) with its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPairPem {
    pub chain_pem: String,
    pub key: PrivateKeyPem,
}

/// Everything a store holds for one site, written and read as one unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialBundle {
    pub site: String,
    /// The issuer that signed `server` (recorded to detect an issuer change).
    pub issuer: String,
    pub server: KeyPairPem,
    /// The client CA that MUTUAL servers verify clients against.
    pub client_ca_pem: Option<String>,
    pub clients: BTreeMap<String, KeyPairPem>,
    /// The Secret layout SDS reads (the files store always writes `tls.crt`/`tls.key`).
    pub format: crate::config::SecretFormat,
}

/// What a store found: tlsward's credentials, and names it must leave alone.
#[derive(Clone, Debug, Default)]
pub struct StoredCredentials {
    pub owned: BTreeMap<String, CredentialBundle>,
    /// Sites whose credential location holds something tlsward does not own.
    pub foreign: BTreeMap<String, String>,
    /// Owned credentials that could not be read (reissued by the plan).
    pub unreadable: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {action}: {source}")]
    Io {
        path: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to write the credential of site `{site}`: {reason}")]
    Refused { site: String, reason: String },
    #[error("{what} is not tlsward's (no owner mark for `{owner}`): left untouched")]
    Foreign { what: String, owner: String },
    #[error("{what}: {detail}")]
    Kube { what: String, detail: String },
}

/// What happened to a site's credential, for the people watching the cluster's events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    Issued,
    Renewed,
    Failed,
    Conflict,
}

/// Everything a store is: four narrow seams, each used where only it is needed (an
/// issuer keeps its state through `StateStore` and sees nothing else).
pub trait Store: CredentialStore + StateStore + ObjectStore + EventSink {}

impl<T: CredentialStore + StateStore + ObjectStore + EventSink> Store for T {}

/// Where the people watching the cluster learn what happened to a credential.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Tells what happened to a site's credential where the store's users look (the
    /// Kubernetes store records an Event on the credential Secret; files have no such place).
    async fn notify(&self, _site: &str, _notice: Notice, _message: &str) {}
    /// Tells a doctor finding on the object it concerns (a Kubernetes Event of type
    /// Warning, reason = the finding's code); objects outside the cluster have no such place.
    async fn finding(&self, _object: &crate::mesh::ObjectRef, _code: &str, _message: &str) {}
}

/// The sites' credentials, read and written whole.
#[async_trait]
pub trait CredentialStore: Send + Sync {
    /// The stored credentials, read back whole; `sites` are the configured ones (a store
    /// that cannot list reads theirs, and those it wrote before, by name).
    async fn credentials(&self, sites: &[String]) -> Result<StoredCredentials, StoreError>;
    /// `credentials`, one at a time: each owned credential is handed to `each` instead of
    /// being kept (10,000 sites need not be in memory at once); returns the foreign and
    /// unreadable ones.
    async fn credentials_each(
        &self,
        sites: &[String],
        each: &mut (dyn FnMut(CredentialBundle) + Send),
    ) -> Result<StoredCredentials, StoreError> {
        let mut all = self.credentials(sites).await?;
        std::mem::take(&mut all.owned).into_values().for_each(each);
        Ok(all)
    }
    /// Writes a site's credential whole, after checking every key against its certificate.
    async fn write_credential(&self, bundle: &CredentialBundle) -> Result<(), StoreError>;
    /// Removes an owned credential of a site no longer configured.
    async fn delete_credential(&self, site: &str) -> Result<(), StoreError>;
    /// A number that changes whenever a Secret that may hold a credential changes, while
    /// a watch keeps them in memory; `None` when they are read on every pass.
    fn credentials_generation(&self) -> Option<u64> {
        None
    }
}

/// tlsward's own state: CA keys, the ACME account, published trust.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Reads a set of state files, `None` when absent.
    async fn read_state(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, StoreError>;
    /// Writes a set of state files as one unit.
    async fn write_state(&self, name: &str, files: &[StateFile]) -> Result<(), StoreError>;
    /// Publishes the root clients of an issuer trust; returns whether it changed.
    async fn write_trust(&self, issuer: &str, pem: &str) -> Result<bool, StoreError>;
}

/// The Gateways and VirtualServices (and Secret metadata) tlsward owns.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Names (`kind/name`) of the objects tlsward owns in the store.
    async fn owned_objects(&self) -> Result<Vec<String>, StoreError>;
    /// Creates or updates an object (Gateway, VirtualService, Secret metadata); returns
    /// whether anything changed.
    async fn apply_object(&self, object: &Value) -> Result<bool, StoreError>;
    /// Deletes an object tlsward owns (`kind/name`).
    async fn delete_object(&self, key: &str) -> Result<(), StoreError>;
    /// The credential Secrets the live `gateways` name (`credentialName` → the Gateway),
    /// as read back from the store; a credential named there is never deleted.
    async fn credentials_named_by_gateways(
        &self,
        _gateways: &[String],
    ) -> Result<BTreeMap<String, String>, StoreError> {
        Ok(BTreeMap::new())
    }
    /// A number that changes whenever any object tlsward owns changes, while watches keep
    /// them in memory; `None` when objects are read on every pass.
    fn objects_generation(&self) -> Option<u64> {
        None
    }
    /// What the routing API's controller reports wrong with tlsward's objects, as of the
    /// last `owned_objects` (subject, condition): the Gateway API's `False` conditions.
    fn routing_status(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// The apiVersion Istio objects are written with, where a server decides it
    /// (`networking.istio.io/v1`, or `v1beta1` before Istio 1.22); `None` for files.
    async fn istio_api(&self) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
    /// Every object `doctor` reads, as this store sees the mesh (a cluster's objects of
    /// every kind that decides traffic; the files store's outputs), handed to `each` one
    /// at a time (Secrets with their keys: never logged). `kinds` limits the kinds read
    /// (all when empty).
    async fn mesh_objects(&self, kinds: &[&str], each: &mut (dyn FnMut(Value) + Send)) -> Result<MeshView, StoreError>;
    /// Creates or updates a mesh policy object (PeerAuthentication, DestinationRule,
    /// AuthorizationPolicy, RequestAuthentication) in its own namespace: server-side
    /// apply, never forced; one that exists without tlsward's owner label is refused.
    async fn apply_policy(&self, object: &Value) -> Result<(), StoreError>;
    /// Deletes a mesh policy object tlsward owns (refused for any other).
    async fn delete_policy(&self, object: &crate::mesh::ObjectRef) -> Result<(), StoreError>;
}

/// How much of the mesh a store could show `doctor`.
#[derive(Default)]
pub struct MeshView {
    /// Whether these are all the objects of the kinds doctor reads (a cluster the
    /// store could list everywhere), not a part of them.
    pub complete: bool,
    /// Whether the store sees the pods that run workloads at all.
    pub sees_workloads: bool,
    /// Kinds that could not be read, and why.
    pub notes: Vec<String>,
}

/// Whether `current` already holds every field of `wanted` (maps may hold more: what
/// the server adds); an apply of `wanted` would change nothing.
pub fn contains(current: &Value, wanted: &Value) -> bool {
    match (current, wanted) {
        (Value::Object(c), Value::Object(w)) => w.iter().all(|(k, v)| c.get(k).is_some_and(|cv| contains(cv, v))),
        (c, w) => c == w,
    }
}

/// `kind/name` of an object, as `owned_objects` lists them (`kind.group/name` for the
/// Gateway API's kinds).
pub fn object_key(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or_default().to_ascii_lowercase();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let group = object["apiVersion"]
        .as_str()
        .and_then(|v| v.split_once('/'))
        .map(|(g, _)| g);
    match group {
        // The Gateway API's kinds by `kind.group` (its Gateway is not Istio's), and a
        // ReferenceGrant, which lives beside what it grants, with its namespace.
        Some(g) if g == crate::render::gateway_api::GROUP => {
            if kind == "referencegrant" {
                let ns = object["metadata"]["namespace"].as_str().unwrap_or_default();
                format!("{kind}.{g}/{ns}/{name}")
            } else {
                format!("{kind}.{g}/{name}")
            }
        }
        _ => format!("{kind}/{name}"),
    }
}

/// Checks every key of a bundle against its certificate; the one gate before any write.
pub fn verify_bundle(bundle: &CredentialBundle) -> Result<(), StoreError> {
    let refuse = |reason: String| StoreError::Refused {
        site: bundle.site.clone(),
        reason,
    };
    let mut pairs = vec![("server".to_string(), &bundle.server)];
    pairs.extend(bundle.clients.iter().map(|(n, p)| (format!("client `{n}`"), p)));
    for (what, pair) in pairs {
        match crate::pki::key_matches(&pair.chain_pem, &pair.key) {
            Ok(true) => {}
            Ok(false) => return Err(refuse(format!("the {what} key does not match its certificate"))),
            Err(e) => return Err(refuse(format!("the {what} certificate or key is unreadable: {e}"))),
        }
    }
    if let Some(ca) = &bundle.client_ca_pem {
        crate::pki::certificates_der(ca).map_err(|e| refuse(format!("the client CA is unreadable: {e}")))?;
    }
    Ok(())
}

impl CredentialBundle {
    /// The facts the core plans from. Fails only when a certificate is unreadable.
    pub fn observe(&self) -> Result<crate::model::ObservedCredential, crate::pki::PkiError> {
        let server = crate::pki::facts(&self.server.chain_pem)?;
        let key_matches = crate::pki::key_matches(&self.server.chain_pem, &self.server.key).unwrap_or(false);
        let client_ca_fingerprint = match &self.client_ca_pem {
            Some(pem) => Some(crate::pki::fingerprint(&crate::pki::certificates_der(pem)?[0])),
            None => None,
        };
        let client_ca_not_after = match &self.client_ca_pem {
            Some(pem) => Some(crate::pki::facts(pem)?.not_after),
            None => None,
        };
        let mut clients = Vec::new();
        for (name, pair) in &self.clients {
            let matches = crate::pki::key_matches(&pair.chain_pem, &pair.key).unwrap_or(false);
            // A client whose key does not match counts as missing: it is reissued.
            if matches {
                clients.push((name.clone(), crate::pki::facts(&pair.chain_pem)?));
            }
        }
        Ok(crate::model::ObservedCredential {
            site: self.site.clone(),
            issuer: self.issuer.clone(),
            server,
            key_matches,
            client_ca_fingerprint,
            client_ca_not_after,
            clients,
            format: self.format,
        })
    }
}
