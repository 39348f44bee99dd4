//! The Kubernetes store's side of `gateway.api: gateway-api`: the Gateway and
//! HTTPRoutes in the gateway namespace and the ReferenceGrants beside the backends,
//! applied by server-side apply without force, listed by owner label (the Gateway API's
//! objects are not watched: each pass lists them, so a hand edit is seen at once),
//! deleted only when they carry tlsward's owner label, and the Secrets the live Gateway
//! names read back before a removed site's credential goes.

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde_json::Value;

use super::{KubeStore, ObjectView, StoreError, list_pages, object_fields};
use crate::model::names;
use crate::render::gateway_api::GROUP;

/// The kinds, their plurals, and whether they live in the gateway namespace.
const KINDS: [(&str, &str, bool); 3] = [
    ("Gateway", "gateways", true),
    ("HTTPRoute", "httproutes", true),
    ("ReferenceGrant", "referencegrants", false),
];

fn resource(kind: &str, version: &str) -> ApiResource {
    let plural = KINDS.iter().find(|k| k.0 == kind).map_or("gateways", |k| k.1);
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, version, kind), plural)
}

/// An object as compared before an apply (see `object_fields`), with the version and
/// kind it was read or applied as: its key is `store::object_key`'s.
fn view(object: &DynamicObject, version: &str, kind: &str) -> Value {
    let mut view = object_fields(object);
    view["apiVersion"] = Value::String(format!("{GROUP}/{version}"));
    view["kind"] = Value::String(kind.to_string());
    view
}

/// A Gateway API key (`kind.group/[namespace/]name`) as (kind, namespace, name).
fn parse_key<'a>(key: &'a str, gateway_namespace: &'a str) -> Option<(&'static str, &'a str, &'a str)> {
    let (kind, rest) = key.split_once('/')?;
    let kind = kind.strip_suffix(&format!(".{GROUP}"))?;
    let (kind, local) = KINDS
        .iter()
        .find(|k| k.0.eq_ignore_ascii_case(kind))
        .map(|k| (k.0, k.2))?;
    if local {
        Some((kind, gateway_namespace, rest))
    } else {
        let (ns, name) = rest.split_once('/')?;
        Some((kind, ns, name))
    }
}

impl KubeStore {
    /// The version a kind is applied at: v1, except ReferenceGrant where the cluster
    /// serves it only as v1beta1 (Gateway API before it graduated). Discovered once.
    async fn gateway_api_version(&self, kind: &str) -> Result<&'static str, StoreError> {
        if kind != "ReferenceGrant" {
            return Ok("v1");
        }
        self.grant_version
            .get_or_try_init(|| async {
                let served = match self.client.list_api_group_resources(&format!("{GROUP}/v1")).await {
                    Ok(list) => list.resources.iter().any(|r| r.name == "referencegrants"),
                    Err(kube::Error::Api(s)) if s.code == 404 => false,
                    Err(e) => return Err(self.api_error(format!("the Gateway API ({GROUP}/v1)"))(e)),
                };
                let version = if served { "v1" } else { "v1beta1" };
                tracing::info!(api = %format!("{GROUP}/{version}"), "ReferenceGrant API");
                Ok(version)
            })
            .await
            .copied()
    }

    fn gateway_api(&self, kind: &str, version: &str, namespace: Option<&str>) -> Api<DynamicObject> {
        let r = resource(kind, version);
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &r),
            None => Api::all_with(self.client.clone(), &r),
        }
    }

    /// Keys of tlsward's Gateway API objects, as listed now (and remembered, to skip
    /// applies that change nothing).
    pub(super) async fn owned_gateway_api(&self) -> Result<Vec<String>, StoreError> {
        let mut seen = std::collections::BTreeMap::new();
        let mut problems = Vec::new();
        for (kind, _, local) in KINDS {
            let version = self.gateway_api_version(kind).await?;
            let selector = format!("{}={},!{}", names::OWNER, self.owner, names::PART);
            let api = self.gateway_api(kind, version, local.then_some(self.namespace.as_str()));
            let where_ = if local {
                self.namespace.as_str()
            } else {
                "all namespaces"
            };
            list_pages(
                &api,
                ListParams::default().labels(&selector),
                &mut |o: DynamicObject| {
                    let subject = format!(
                        "{kind} {}/{}",
                        o.metadata.namespace.as_deref().unwrap_or_default(),
                        o.metadata.name.as_deref().unwrap_or_default()
                    );
                    problems.extend(crate::render::gateway_api::false_conditions(
                        &subject,
                        o.metadata.generation,
                        &o.data["status"],
                    ));
                    let view = view(&o, version, kind);
                    seen.insert(
                        super::super::object_key(&view),
                        (o.metadata.resource_version.clone(), ObjectView::from(view.to_string())),
                    );
                },
            )
            .await
            .map_err(self.api_error(format!("{kind}s in {where_}")))?;
        }
        let keys = seen.keys().cloned().collect();
        self.gateway_api_seen.replace(seen);
        *self.gateway_api_problems.lock().unwrap_or_else(|e| e.into_inner()) = problems;
        Ok(keys)
    }

    /// Applies one Gateway API object unless what was last seen already holds it.
    pub(super) async fn apply_gateway_api(&self, object: &Value) -> Result<bool, StoreError> {
        let kind = object["kind"].as_str().unwrap_or_default();
        let version = self.gateway_api_version(kind).await?;
        let mut object = object.clone();
        object["apiVersion"] = Value::String(format!("{GROUP}/{version}"));
        let key = super::super::object_key(&object);
        let unchanged = self
            .gateway_api_seen
            .get(&key)
            .and_then(|current| serde_json::from_str::<Value>(&current).ok())
            .is_some_and(|current| super::super::contains(&current, &object));
        if unchanged {
            return Ok(false);
        }
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or(&self.namespace);
        let api = self.gateway_api(kind, version, Some(namespace));
        // Never forced: a field another manager owns is a conflict to report.
        let applied = api
            .patch(name, &PatchParams::apply(names::FIELD_MANAGER), &Patch::Apply(&object))
            .await
            .map_err(self.api_error(format!("{kind} {namespace}/{name}")))?;
        let view = view(&applied, version, kind);
        self.gateway_api_seen.saw(
            &key,
            applied.metadata.resource_version.as_deref(),
            Some(ObjectView::from(view.to_string())),
        );
        Ok(true)
    }

    /// Deletes one of tlsward's Gateway API objects; `Ok(false)` for a key that is not
    /// the Gateway API's.
    pub(super) async fn delete_gateway_api(&self, key: &str) -> Result<bool, StoreError> {
        let Some((kind, namespace, name)) = parse_key(key, &self.namespace) else {
            return Ok(false);
        };
        let version = self.gateway_api_version(kind).await?;
        let api = self.gateway_api(kind, version, Some(namespace));
        let what = format!("{kind} {namespace}/{name}");
        match api.get_opt(name).await.map_err(self.api_error(what.clone()))? {
            Some(o) if o.metadata.labels.as_ref().and_then(|l| l.get(names::OWNER)) == Some(&self.owner) => {
                api.delete(name, &DeleteParams::default())
                    .await
                    .map_err(self.api_error(what))?;
                self.gateway_api_seen.saw(key, None, None);
                Ok(true)
            }
            Some(_) => Err(StoreError::Foreign {
                what,
                owner: self.owner.clone(),
            }),
            None => Ok(true),
        }
    }

    /// What the Gateway API's controller reported against tlsward's objects as last
    /// listed (subject, condition).
    pub(super) fn gateway_api_status(&self) -> Vec<(String, String)> {
        self.gateway_api_problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The Secrets the live Gateway API Gateway `name` names in its listeners.
    pub(super) async fn gateway_api_credentials(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let api = self.gateway_api("Gateway", "v1", Some(&self.namespace));
        let live = api
            .get_opt(name)
            .await
            .map_err(self.api_error(format!("Gateway {}/{name}", self.namespace)))?;
        Ok(live
            .map(|g| {
                g.data["spec"]["listeners"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|l| l["tls"]["certificateRefs"].as_array().cloned().unwrap_or_default())
                    .filter_map(|r| r["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_to_kind_namespace_and_name() {
        assert_eq!(
            parse_key("gateway.gateway.networking.k8s.io/tlsward-gateway", "istio-system"),
            Some(("Gateway", "istio-system", "tlsward-gateway"))
        );
        assert_eq!(
            parse_key("httproute.gateway.networking.k8s.io/http-a", "istio-system"),
            Some(("HTTPRoute", "istio-system", "http-a"))
        );
        assert_eq!(
            parse_key(
                "referencegrant.gateway.networking.k8s.io/ux/tlsward-from-istio-system",
                "istio-system"
            ),
            Some(("ReferenceGrant", "ux", "tlsward-from-istio-system"))
        );
        assert_eq!(parse_key("gateway/tlsward-gateway", "istio-system"), None);
    }
}
