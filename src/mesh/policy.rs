//! Mesh policy from intent: which mutual TLS mode each namespace, service or port runs,
//! which service accounts may call a service, and which ingress paths need a JWT —
//! turned into PeerAuthentications, DestinationRules, AuthorizationPolicies and
//! RequestAuthentications that cannot conflict, or refused with the reason.
//!
//! Pure: selectors come from the Services in an `Inventory`; what the objects would do
//! is judged by the same evaluator and checks `doctor` runs, so nothing written here is
//! ever flagged by doctor. It never writes and never reads a cluster itself.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::inventory::{Inventory, Service};
use super::{Mesh, hosts};
use crate::config::{MeshSpec, PeerModeSpec};

/// The ingress gateway: its identity is allowed to every Service a published site routes
/// to, and JWT rules are checked on its pods.
#[derive(Clone, Debug, Default)]
pub struct Ingress {
    pub namespace: String,
    pub service_account: String,
    /// The labels of the gateway's pods.
    pub selector: super::inventory::Labels,
    /// (namespace, Service) of each published route target.
    pub route_targets: Vec<(String, String)>,
    /// Each published site's name and hosts.
    pub sites: Vec<(String, Vec<String>)>,
}

/// Why an intent cannot be written as asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{rule}: {message}")]
pub struct Refused {
    /// Which rule (`mesh.mtls[2]`, `mesh.allow[0]`).
    pub rule: String,
    pub message: String,
}

const API_SECURITY: &str = "security.istio.io/v1";
const API_NETWORKING: &str = "networking.istio.io/v1";

fn object(api: &str, kind: &str, namespace: &str, name: &str, labels: &Value, spec: Value) -> Value {
    json!({
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": spec,
    })
}

fn service<'a>(mesh: &Mesh<'a>, namespace: &str, name: &str, rule: &str) -> Result<&'a Service, Refused> {
    let svc = mesh.service(namespace, name).ok_or_else(|| Refused {
        rule: rule.to_string(),
        message: format!("Service {namespace}/{name} does not exist: its pods cannot be selected"),
    })?;
    if svc.selector.is_none() {
        return Err(Refused {
            rule: rule.to_string(),
            message: format!("Service {namespace}/{name} has no selector: there are no pods to apply a policy to"),
        });
    }
    Ok(svc)
}

fn selector(svc: &Service) -> Value {
    json!({"matchLabels": svc.selector.clone().unwrap_or_default()})
}

/// The workload port a Service port reaches, when every selected pod agrees on it.
fn target_port(mesh: &Mesh<'_>, svc: &Service, port: u32, rule: &str) -> Result<u32, Refused> {
    if !svc.ports.iter().any(|p| p.port == port) {
        return Err(Refused {
            rule: rule.to_string(),
            message: format!(
                "Service {}/{} has no port {port} (it has {})",
                svc.meta.namespace,
                svc.meta.name,
                svc.ports
                    .iter()
                    .map(|p| p.port.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let workloads = mesh.workloads_of(svc);
    let mut targets: Vec<u32> = workloads.iter().map(|w| Mesh::target_port(svc, port, w)).collect();
    targets.sort_unstable();
    targets.dedup();
    match targets.as_slice() {
        [one] => Ok(*one),
        // No pods yet: a numeric targetPort (or the port itself) is still known.
        [] => Ok(
            match svc
                .ports
                .iter()
                .find(|p| p.port == port)
                .and_then(|p| p.target_port.as_ref())
            {
                Some(Value::Number(n)) => n.as_u64().map_or(port, |n| n as u32),
                Some(Value::String(name)) => {
                    return Err(Refused {
                        rule: rule.to_string(),
                        message: format!(
                            "port {port} targets the named port {name}, and no pod says which number that is"
                        ),
                    });
                }
                _ => port,
            },
        ),
        several => Err(Refused {
            rule: rule.to_string(),
            message: format!("port {port} reaches different pod ports ({several:?}): name one Service per port"),
        }),
    }
}

/// The objects the intent needs, labelled with `labels`, or every reason it cannot be
/// written. `inventory` is the mesh as it stands (its own previous policies included
/// or not: they are replaced by these).
pub fn objects(
    intent: &MeshSpec,
    inventory: &Inventory,
    ingress: &Ingress,
    labels: &Value,
) -> Result<Vec<Value>, Vec<Refused>> {
    let out = render(intent, inventory, ingress, labels)?;
    let mut after = inventory.clone();
    after.root_namespace = intent.root_namespace.clone();
    for o in &out {
        after.add(o.clone(), "default").map_err(|e| {
            vec![Refused {
                rule: "mesh".into(),
                message: e.to_string(),
            }]
        })?;
    }
    let refused = judge(intent, inventory, &after);
    if refused.is_empty() { Ok(out) } else { Err(refused) }
}

/// The objects as the intent states them, not yet judged; refused only where a rule
/// names what does not exist or cannot be expressed.
fn render(
    intent: &MeshSpec,
    inventory: &Inventory,
    ingress: &Ingress,
    labels: &Value,
) -> Result<Vec<Value>, Vec<Refused>> {
    let mesh = Mesh::new(inventory);
    let mut out = Vec::new();
    let mut refused = Vec::new();

    // mTLS: one PeerAuthentication per namespace and per service (ports inside it).
    type ServiceModes = (Option<PeerModeSpec>, BTreeMap<u32, (u32, PeerModeSpec)>); // (service mode, service port -> (target, mode))
    let mut namespaces: BTreeMap<&str, PeerModeSpec> = BTreeMap::new();
    let mut services: BTreeMap<(&str, &str), ServiceModes> = BTreeMap::new();
    for (i, rule) in intent.mtls.iter().enumerate() {
        let at = format!("mesh.mtls[{i}]");
        match (&rule.service, rule.port) {
            (None, None) => {
                if namespaces.insert(&rule.namespace, rule.mode).is_some() {
                    refused.push(Refused {
                        rule: at,
                        message: format!("namespace {} already has a mode", rule.namespace),
                    });
                }
            }
            (None, Some(_)) => refused.push(Refused {
                rule: at,
                message: "a port belongs to a service: name the service too".into(),
            }),
            (Some(name), port) => match service(&mesh, &rule.namespace, name, &at) {
                Err(e) => refused.push(e),
                Ok(svc) => {
                    let entry = services.entry((&rule.namespace, name)).or_default();
                    match port {
                        None => entry.0 = Some(rule.mode),
                        Some(port) => match target_port(&mesh, svc, port, &at) {
                            Ok(target) => {
                                entry.1.insert(port, (target, rule.mode));
                            }
                            Err(e) => refused.push(e),
                        },
                    }
                }
            },
        }
    }
    for (ns, mode) in &namespaces {
        out.push(object(
            API_SECURITY,
            "PeerAuthentication",
            ns,
            "default",
            labels,
            json!({"mtls": {"mode": mode.peer_mode().as_str()}}),
        ));
    }
    for ((ns, name), (mode, ports)) in &services {
        let Ok(svc) = service(&mesh, ns, name, "") else {
            continue;
        };
        let mut spec = json!({"selector": selector(svc)});
        if let Some(mode) = mode {
            spec["mtls"] = json!({"mode": mode.peer_mode().as_str()});
        }
        if !ports.is_empty() {
            let levels: serde_json::Map<String, Value> = ports
                .values()
                .map(|(target, mode)| (target.to_string(), json!({"mode": mode.peer_mode().as_str()})))
                .collect();
            spec["portLevelMtls"] = Value::Object(levels);
        }
        out.push(object(API_SECURITY, "PeerAuthentication", ns, name, labels, spec));
        // Clients keep sending mutual TLS to a port whose mTLS is off unless told: a
        // DestinationRule in the Service's namespace, which every client without its own
        // rule for this host uses.
        let host = hosts::service_fqdn(svc, &inventory.domain);
        let disabled: Vec<Value> = ports
            .iter()
            .filter(|(_, (_, m))| *m == PeerModeSpec::Disable)
            .map(|(port, _)| json!({"port": {"number": port}, "tls": {"mode": "DISABLE"}}))
            .collect();
        let whole = *mode == Some(PeerModeSpec::Disable);
        if whole || !disabled.is_empty() {
            let mut policy = json!({});
            if whole {
                policy["tls"] = json!({"mode": "DISABLE"});
            }
            if !disabled.is_empty() {
                policy["portLevelSettings"] = Value::Array(disabled);
            }
            out.push(object(
                API_NETWORKING,
                "DestinationRule",
                ns,
                &format!("{name}-mtls"),
                labels,
                json!({"host": host, "trafficPolicy": policy}),
            ));
        }
    }

    // Allow-lists: ALLOW with the callers' principals (and the ingress gateway's, where
    // a published site routes to the service).
    for (i, rule) in intent.allow.iter().enumerate() {
        let at = format!("mesh.allow[{i}]");
        let svc = match service(&mesh, &rule.namespace, &rule.to, &at) {
            Ok(s) => s,
            Err(e) => {
                refused.push(e);
                continue;
            }
        };
        let td = &intent.trust_domain;
        let mut principals: Vec<String> = rule
            .from
            .iter()
            .map(|sa| format!("{td}/ns/{}/sa/{sa}", rule.namespace))
            .collect();
        if ingress
            .route_targets
            .iter()
            .any(|(ns, name)| ns == &rule.namespace && name == &rule.to)
        {
            principals.push(format!("{td}/ns/{}/sa/{}", ingress.namespace, ingress.service_account));
        }
        out.push(object(
            API_SECURITY,
            "AuthorizationPolicy",
            &rule.namespace,
            &format!("{}-allow", rule.to),
            labels,
            json!({
                "selector": selector(svc),
                "action": "ALLOW",
                "rules": [{"from": [{"source": {"principals": principals}}]}],
            }),
        ));
    }
    // JWT at the ingress: the gateway validates tokens of the issuer, and refuses requests
    // to the listed paths of the site's hosts that carry none (a token is only checked
    // when present: RequestAuthentication alone lets anonymous requests through).
    for (i, rule) in intent.ingress_jwt.iter().enumerate() {
        let at = format!("mesh.ingress_jwt[{i}]");
        let Some((_, site_hosts)) = ingress.sites.iter().find(|(name, _)| name == &rule.site) else {
            refused.push(Refused {
                rule: at,
                message: format!("no site named {}", rule.site),
            });
            continue;
        };
        if ingress.selector.is_empty() {
            refused.push(Refused {
                rule: at,
                message: "the ingress gateway has no selector to put the JWT rule on".into(),
            });
            continue;
        }
        let selector = json!({"matchLabels": ingress.selector});
        let name = format!("{}-jwt", rule.site);
        out.push(object(
            API_SECURITY,
            "RequestAuthentication",
            &ingress.namespace,
            &name,
            labels,
            json!({"selector": selector, "jwtRules": [{"issuer": rule.issuer, "jwksUri": rule.jwks_uri}]}),
        ));
        // A Host header may carry the port: match both forms.
        let hosts: Vec<String> = site_hosts.iter().flat_map(|h| [h.clone(), format!("{h}:*")]).collect();
        out.push(object(
            API_SECURITY,
            "AuthorizationPolicy",
            &ingress.namespace,
            &name,
            labels,
            json!({
                "selector": selector,
                "action": "DENY",
                "rules": [{
                    "from": [{"source": {"notRequestPrincipals": ["*"]}}],
                    "to": [{"operation": {"hosts": hosts, "paths": rule.paths}}],
                }],
            }),
        ));
    }
    if refused.is_empty() { Ok(out) } else { Err(refused) }
}

/// What the mesh step does: the objects the intent wants, the writes and removals that
/// get there from what tlsward owns now, and the matrix the result gives.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct MeshPlan {
    /// Every object wanted (`Kind/namespace/name`).
    pub objects: Vec<String>,
    /// Objects to create or change.
    pub apply: Vec<String>,
    /// Objects tlsward owns and no longer wants.
    pub delete: Vec<String>,
    /// Why the intent is not written (nothing is then applied or deleted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// Where policies tlsward does not own change the result its own would give.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub foreign: Vec<ForeignEffect>,
    /// Callers whose connections work now and would break under the intent (a TLS
    /// mismatch: a STRICT server that a caller without a sidecar reaches, …).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub breaks: Vec<String>,
    /// The callers still sending plaintext to a service the intent makes STRICT, as a
    /// configured Prometheus saw them (filled in by the runtime).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plaintext_callers: Vec<PlaintextCaller>,
    /// What the plan could not look at (a Prometheus that did not answer).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub matrix: Vec<super::matrix::Row>,
    /// The objects to create or change, whole.
    #[serde(skip)]
    pub writes: Vec<Value>,
}

/// A workload that sent plaintext requests to a Service, as Istio's metrics show it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PlaintextCaller {
    /// `namespace/service`.
    pub service: String,
    /// `namespace/workload`.
    pub caller: String,
    /// Requests in the window.
    pub requests: f64,
}

impl MeshPlan {
    /// Keeps the plaintext callers of services whose ports the intent makes STRICT:
    /// each of those connections would be refused.
    pub fn keep_plaintext_to_strict(&mut self, seen: Vec<PlaintextCaller>) {
        let strict: std::collections::BTreeSet<&str> = self
            .matrix
            .iter()
            .filter(|r| r.mode == "STRICT")
            .filter_map(|r| r.server.rsplit_once(':').map(|(service, _)| service))
            .collect();
        self.plaintext_callers = seen
            .into_iter()
            .filter(|c| strict.contains(c.service.as_str()))
            .collect();
    }
}

/// A Service port whose verdicts policies tlsward does not own change.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct ForeignEffect {
    pub server: String,
    /// `caller: tlsward's verdict → the mesh's`.
    pub changes: Vec<String>,
    /// The foreign policies in scope (the server's namespace and the root namespace).
    pub policies: Vec<super::ObjectRef>,
}

impl std::fmt::Display for ForeignEffect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let policies: Vec<String> = self.policies.iter().map(|p| p.to_string()).collect();
        write!(
            f,
            "{}: policies tlsward does not own change the result ({}); in scope: {}",
            self.server,
            self.changes.join(", "),
            policies.join(", ")
        )
    }
}

/// Which object this is (kind, namespace, name).
pub fn object_ref(object: &Value) -> super::ObjectRef {
    let s = |p: &str| object.pointer(p).and_then(Value::as_str).unwrap_or_default();
    super::ObjectRef::new(s("/kind"), s("/metadata/namespace"), s("/metadata/name"))
}

/// The namespaces the intent speaks about.
pub fn namespaces(intent: &MeshSpec) -> std::collections::BTreeSet<String> {
    intent
        .mtls
        .iter()
        .map(|r| r.namespace.clone())
        .chain(intent.allow.iter().map(|r| r.namespace.clone()))
        .collect()
}

/// Plans the mesh step. `current` is the mesh without tlsward's own objects, `owned`
/// those objects as they are now; `also` are more objects the step writes (egress),
/// judged and applied with the intent's.
pub fn plan(
    intent: &MeshSpec,
    current: &Inventory,
    owned: &BTreeMap<super::ObjectRef, Value>,
    ingress: &Ingress,
    labels: &Value,
    also: &[Value],
) -> MeshPlan {
    let mut out = MeshPlan::default();
    let with = |objects: &mut dyn Iterator<Item = &Value>, base: &Inventory| -> Result<Inventory, Refused> {
        let mut inv = base.clone();
        inv.root_namespace = intent.root_namespace.clone();
        for o in objects {
            inv.add(o.clone(), "default").map_err(|e| Refused {
                rule: "mesh".into(),
                message: e.to_string(),
            })?;
        }
        Ok(inv)
    };
    // The mesh as the intent would leave it, built once: judged, and its matrix shown.
    let proposed = render(intent, current, ingress, labels).and_then(|mut objects| {
        objects.extend(also.iter().cloned());
        with(&mut objects.iter(), current)
            .map(|inv| (objects, inv))
            .map_err(|e| vec![e])
    });
    let scope = namespaces(intent);
    let caller = (!ingress.service_account.is_empty()).then(|| super::matrix::Caller {
        namespace: ingress.namespace.clone(),
        service_account: ingress.service_account.clone(),
        sidecar: true,
    });
    let published = ingress.route_targets.iter().cloned().collect();
    let matrix =
        |inv: &Inventory| super::matrix::matrix(inv, &intent.trust_domain, &scope, caller.as_ref(), &published);
    // The mesh as it is (tlsward's own policies included), when something needs it.
    let now = || {
        with(&mut owned.values(), current)
            .map(|inv| matrix(&inv))
            .unwrap_or_default()
    };
    let mut proposed_matrix = None;
    let wanted = match proposed {
        Err(refused) => Err(refused),
        Ok((wanted, after)) => {
            let then = matrix(&after);
            if then.iter().any(|r| !r.broken.is_empty()) {
                out.breaks = breaks(&now(), &then);
            }
            proposed_matrix = Some(then);
            let mut refused = judge(intent, current, &after);
            refused.extend(
                wanted
                    .iter()
                    .map(object_ref)
                    .filter(|r| current.holds(r))
                    .map(|r| Refused {
                        rule: "mesh".into(),
                        message: format!(
                            "{r} exists and is not tlsward's: it is left alone, and the intent is not written until it is removed"
                        ),
                    }),
            );
            if refused.is_empty() { Ok(wanted) } else { Err(refused) }
        }
    };
    match wanted {
        Err(refused) => {
            out.refused = refused.iter().map(|r| r.to_string()).collect();
            out.objects = owned.keys().map(|r| r.to_string()).collect();
            out.matrix = now();
        }
        Ok(wanted) => {
            let mut keys = std::collections::BTreeSet::new();
            for object in wanted.iter() {
                let key = object_ref(object);
                let mut compared = object.clone();
                // The served version may differ (v1beta1 before Istio 1.22): same schema.
                compared.as_object_mut().map(|o| o.remove("apiVersion"));
                if !owned.get(&key).is_some_and(|o| crate::store::contains(o, &compared)) {
                    out.apply.push(key.to_string());
                    out.writes.push(object.clone());
                }
                out.objects.push(key.to_string());
                keys.insert(key);
            }
            out.delete = owned
                .keys()
                .filter(|k| !keys.contains(k))
                .map(|k| k.to_string())
                .collect();
            out.matrix = proposed_matrix.unwrap_or_default();
            let has_foreign = !(current.peer_authentications.is_empty()
                && current.destination_rules.is_empty()
                && current.authorization_policies.is_empty()
                && current.request_authentications.is_empty());
            if has_foreign {
                if let Ok(alone) = with(&mut wanted.iter(), &current.without_policies()) {
                    out.foreign = differences(&matrix(&alone), &out.matrix, current);
                }
            }
        }
    }
    out
}

/// The callers whose connections work now (mTLS or plaintext) and would break.
fn breaks(now: &[super::matrix::Row], then: &[super::matrix::Row]) -> Vec<String> {
    let before: BTreeMap<&str, &super::matrix::Row> = now.iter().map(|r| (r.server.as_str(), r)).collect();
    let mut out = Vec::new();
    for row in then {
        let Some(was) = before.get(row.server.as_str()) else {
            continue;
        };
        for (why, callers) in &row.broken {
            for caller in callers {
                if let Some(verdict @ ("mtls" | "plaintext")) = was.verdict(caller) {
                    out.push(format!(
                        "{} from {caller}: {verdict} now, broken then ({why})",
                        row.server
                    ));
                }
            }
        }
    }
    out
}

/// Each row whose verdicts differ between tlsward's policies alone and the whole mesh.
fn differences(alone: &[super::matrix::Row], whole: &[super::matrix::Row], current: &Inventory) -> Vec<ForeignEffect> {
    let mut out = Vec::new();
    let in_scope = |ns: &str| -> Vec<super::ObjectRef> {
        let metas = current
            .peer_authentications
            .iter()
            .map(|p| ("PeerAuthentication", &p.meta))
            .chain(current.destination_rules.iter().map(|p| ("DestinationRule", &p.meta)))
            .chain(
                current
                    .authorization_policies
                    .iter()
                    .map(|p| ("AuthorizationPolicy", &p.meta)),
            );
        metas
            .filter(|(_, m)| m.namespace == ns || m.namespace == current.root_namespace)
            .map(|(kind, m)| super::ObjectRef::new(kind, &m.namespace, &m.name))
            .collect()
    };
    for (a, w) in alone.iter().zip(whole) {
        let changed: Vec<String> = w
            .cells()
            .filter_map(|(caller, verdict)| {
                let own = a.verdict(caller)?;
                (own != verdict).then(|| format!("{caller}: {own} → {verdict}"))
            })
            .collect();
        if !changed.is_empty() {
            let ns = w.server.split('/').next().unwrap_or_default();
            out.push(ForeignEffect {
                server: w.server.clone(),
                changes: changed,
                policies: in_scope(ns),
            });
        }
    }
    out
}

/// The mesh with these objects added, through doctor's checks: a finding (error or
/// warning) that the mesh without them does not have refuses the intent.
fn judge(intent: &MeshSpec, before: &Inventory, after: &Inventory) -> Vec<Refused> {
    let options = crate::doctor::Options {
        now: time::OffsetDateTime::UNIX_EPOCH,
        renew_before: crate::config::ConfigFile::default_renew_before(),
        complete: true,
        sees_workloads: true,
        outbound_policy: None,
    };
    let findings = |inv: &Inventory| -> BTreeMap<(crate::doctor::Code, super::ObjectRef), String> {
        crate::doctor::diagnose(inv, &options)
            .findings
            .into_iter()
            .filter(|f| f.severity != crate::doctor::Severity::Info)
            .map(|f| ((f.code, f.object), f.message))
            .collect()
    };
    let before = if before.root_namespace == intent.root_namespace {
        findings(before)
    } else {
        let mut rooted = before.clone();
        rooted.root_namespace = intent.root_namespace.clone();
        findings(&rooted)
    };
    findings(after)
        .into_iter()
        .filter(|(key, _)| !before.contains_key(key))
        .map(|((code, object), message)| Refused {
            rule: "mesh".into(),
            message: format!("{} {object}: {message}", code.as_str()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::mesh::inventory_of as inventory;

    /// The strict-mTLS chapter's blog-app: six services, each with its own account.
    fn blog_app(extra: &str) -> Inventory {
        let mut text = String::from(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: blog-app, labels: {istio-injection: enabled}}\n",
        );
        for app in ["frontend", "posts", "reviews", "ratings", "users", "mongodb"] {
            let port = if app == "mongodb" {
                "{name: tcp-mongo, port: 27017}"
            } else {
                "{name: http, port: 80, targetPort: 8080}"
            };
            text.push_str(&format!(
                "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {app}, namespace: blog-app}}\n\
                 spec: {{template: {{metadata: {{labels: {{app: {app}}}}}, spec: {{serviceAccountName: {app}, containers: [{{name: {app}}}]}}}}}}\n\
                 ---\napiVersion: v1\nkind: Service\nmetadata: {{name: {app}, namespace: blog-app}}\nspec: {{selector: {{app: {app}}}, ports: [{port}]}}\n"
            ));
        }
        text.push_str(extra);
        inventory(&text)
    }

    fn intent(yaml: &str) -> MeshSpec {
        serde_json::from_value(crate::config::yaml::parse(yaml).unwrap().0).unwrap()
    }

    fn labels() -> Value {
        json!({"tlsward.io/owner": "test"})
    }

    #[test]
    fn the_blog_app_allow_list_becomes_strict_mtls_and_one_allow_policy_per_service() {
        let inv = blog_app("");
        let ingress = Ingress {
            namespace: "istio-system".into(),
            service_account: "istio-ingressgateway-service-account".into(),
            route_targets: vec![("blog-app".into(), "frontend".into())],
            ..Ingress::default()
        };
        let intent = intent(
            "mtls: [{namespace: blog-app, mode: STRICT}]\n\
             allow:\n  - {namespace: blog-app, to: posts, from: [frontend, reviews, users]}\n  - {namespace: blog-app, to: ratings, from: [reviews]}\n\
             \x20 - {namespace: blog-app, to: mongodb, from: [posts, reviews, users, ratings]}\n  - {namespace: blog-app, to: frontend, from: []}\n",
        );
        let objects = objects(&intent, &inv, &ingress, &labels()).unwrap();
        let names: Vec<String> = objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["namespace"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "PeerAuthentication/blog-app/default",
                "AuthorizationPolicy/blog-app/posts-allow",
                "AuthorizationPolicy/blog-app/ratings-allow",
                "AuthorizationPolicy/blog-app/mongodb-allow",
                "AuthorizationPolicy/blog-app/frontend-allow",
            ]
        );
        assert_eq!(objects[0]["spec"], json!({"mtls": {"mode": "STRICT"}}));
        assert_eq!(
            objects[2]["spec"],
            json!({"selector": {"matchLabels": {"app": "ratings"}}, "action": "ALLOW",
                   "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/blog-app/sa/reviews"]}}]}]})
        );
        // The published frontend admits the ingress gateway's identity.
        assert_eq!(
            objects[4]["spec"]["rules"][0]["from"][0]["source"]["principals"],
            json!(["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"])
        );
        assert!(objects.iter().all(|o| o["metadata"]["labels"] == labels()));
    }

    #[test]
    fn a_port_whose_mtls_is_off_gets_its_target_port_in_the_policy_and_a_rule_for_its_clients() {
        let inv = blog_app("");
        let intent = intent(
            "mtls:\n  - {namespace: blog-app, mode: STRICT}\n  - {namespace: blog-app, service: posts, port: 80, mode: DISABLE}\n",
        );
        let objects = objects(&intent, &inv, &Ingress::default(), &labels()).unwrap();
        assert_eq!(objects.len(), 3, "{objects:#?}");
        assert_eq!(
            objects[1]["spec"],
            json!({"selector": {"matchLabels": {"app": "posts"}}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}})
        );
        assert_eq!(objects[2]["kind"], "DestinationRule");
        assert_eq!(
            objects[2]["spec"],
            json!({"host": "posts.blog-app.svc.cluster.local",
                   "trafficPolicy": {"portLevelSettings": [{"port": {"number": 80}, "tls": {"mode": "DISABLE"}}]}})
        );
    }

    #[test]
    fn an_allow_list_on_a_permissive_workload_is_refused() {
        let inv = blog_app("");
        let intent = intent("allow: [{namespace: blog-app, to: ratings, from: [reviews]}]\n");
        let refused = objects(&intent, &inv, &Ingress::default(), &labels()).unwrap_err();
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0]
                .message
                .starts_with("AuthorizationNeedsMTLS AuthorizationPolicy/blog-app/ratings-allow"),
            "{refused:?}"
        );
    }

    #[test]
    fn strict_mtls_that_a_caller_without_a_sidecar_must_reach_is_refused() {
        let inv = blog_app(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: batch, namespace: blog-app}\n\
             spec: {template: {metadata: {labels: {app: batch, sidecar.istio.io/inject: 'false'}}, spec: {serviceAccountName: batch, containers: [{name: batch}]}}}\n",
        );
        let intent = intent("mtls: [{namespace: blog-app, mode: STRICT}]\n");
        let refused = objects(&intent, &inv, &Ingress::default(), &labels()).unwrap_err();
        assert!(
            refused
                .iter()
                .all(|r| r.message.starts_with("MTLSConflict Deployment/blog-app/batch")),
            "{refused:?}"
        );
        assert!(!refused.is_empty());
    }

    #[test]
    fn a_jwt_rule_validates_tokens_at_the_gateway_and_denies_the_paths_without_one() {
        let inv = blog_app(
            "---\napiVersion: v1\nkind: Service\nmetadata: {name: istio-ingressgateway, namespace: istio-system}\n\
             spec: {selector: {istio: ingressgateway}, ports: [{name: status-port, port: 15021}, {name: https, port: 443}]}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {name: gw-1, namespace: istio-system, labels: {istio: ingressgateway}}\n\
             spec: {containers: [{name: istio-proxy}]}\n\
             ---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: tlsward-gateway, namespace: istio-system}\n\
             spec: {selector: {istio: ingressgateway}, servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [blog.example.com]}]}\n",
        );
        let ingress = Ingress {
            namespace: "istio-system".into(),
            service_account: "istio-ingressgateway-service-account".into(),
            selector: [("istio".to_string(), "ingressgateway".to_string())].into(),
            route_targets: vec![],
            sites: vec![("blog".into(), vec!["blog.example.com".into()])],
        };
        let intent = intent(
            "ingress_jwt: [{site: blog, issuer: https://auth.foocorp.example, jwks_uri: https://auth.foocorp.example/jwks, paths: [/api/*]}]\n",
        );
        let objects = objects(&intent, &inv, &ingress, &labels()).unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0]["kind"], "RequestAuthentication");
        assert_eq!(
            objects[0]["spec"]["jwtRules"],
            json!([{"issuer": "https://auth.foocorp.example", "jwksUri": "https://auth.foocorp.example/jwks"}])
        );
        assert_eq!(
            objects[1]["spec"],
            json!({"selector": {"matchLabels": {"istio": "ingressgateway"}}, "action": "DENY",
                   "rules": [{"from": [{"source": {"notRequestPrincipals": ["*"]}}],
                              "to": [{"operation": {"hosts": ["blog.example.com", "blog.example.com:*"], "paths": ["/api/*"]}}]}]})
        );
        let mut unknown = intent.clone();
        unknown.ingress_jwt[0].site = "shop".into();
        let refused = objects_for(&unknown, &inv, &ingress);
        assert_eq!(refused, vec!["mesh.ingress_jwt[0]: no site named shop".to_string()]);
    }

    fn objects_for(intent: &MeshSpec, inv: &Inventory, ingress: &Ingress) -> Vec<String> {
        objects(intent, inv, ingress, &labels())
            .unwrap_err()
            .iter()
            .map(|r| r.to_string())
            .collect()
    }

    #[test]
    fn rules_naming_what_does_not_exist_are_refused_with_their_place() {
        let inv = blog_app("");
        let intent = intent(
            "mtls:\n  - {namespace: blog-app, service: comments, mode: STRICT}\n  - {namespace: blog-app, service: posts, port: 81, mode: DISABLE}\n\
             allow: [{namespace: blog-app, to: ghosts, from: [reviews]}]\n",
        );
        let refused = objects(&intent, &inv, &Ingress::default(), &labels()).unwrap_err();
        let text: Vec<String> = refused.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            text,
            [
                "mesh.mtls[0]: Service blog-app/comments does not exist: its pods cannot be selected",
                "mesh.mtls[1]: Service blog-app/posts has no port 81 (it has 80)",
                "mesh.allow[0]: Service blog-app/ghosts does not exist: its pods cannot be selected",
            ]
        );
    }

    fn owned_of(objects: &[Value]) -> BTreeMap<crate::mesh::ObjectRef, Value> {
        objects.iter().map(|o| (object_ref(o), o.clone())).collect()
    }

    #[test]
    fn a_plan_writes_what_changed_removes_what_is_no_longer_wanted_and_nothing_else() {
        let inv = blog_app("");
        let strict = intent(
            "mtls: [{namespace: blog-app, mode: STRICT}]\nallow: [{namespace: blog-app, to: ratings, from: [reviews]}]\n",
        );
        let first = plan(&strict, &inv, &BTreeMap::new(), &Ingress::default(), &labels(), &[]);
        assert!(first.refused.is_empty(), "{:?}", first.refused);
        assert_eq!(
            first.apply,
            [
                "PeerAuthentication/blog-app/default",
                "AuthorizationPolicy/blog-app/ratings-allow"
            ]
        );
        assert_eq!(first.writes.len(), 2);
        // Once written (as the server returns them, with its own fields), nothing to do.
        let mut live = first.writes.clone();
        for o in &mut live {
            o["metadata"]["resourceVersion"] = json!("7");
            o["apiVersion"] = json!("security.istio.io/v1beta1");
        }
        let again = plan(&strict, &inv, &owned_of(&live), &Ingress::default(), &labels(), &[]);
        assert!(again.apply.is_empty() && again.delete.is_empty(), "{again:?}");
        // The allow-list dropped from the intent goes; the namespace mode changes.
        let fewer = intent("mtls: [{namespace: blog-app, mode: PERMISSIVE}]\n");
        let changed = plan(&fewer, &inv, &owned_of(&live), &Ingress::default(), &labels(), &[]);
        assert_eq!(changed.apply, ["PeerAuthentication/blog-app/default"]);
        assert_eq!(changed.delete, ["AuthorizationPolicy/blog-app/ratings-allow"]);
        let ratings = changed
            .matrix
            .iter()
            .find(|r| r.server == "blog-app/ratings:80")
            .unwrap();
        assert_eq!(ratings.verdict("blog-app/users"), Some("mtls"));
        assert!(ratings.denied.is_empty());
    }

    #[test]
    fn an_object_of_the_same_name_that_tlsward_does_not_own_refuses_the_intent() {
        let inv = blog_app(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: blog-app}\nspec: {mtls: {mode: PERMISSIVE}}\n",
        );
        let strict = intent("mtls: [{namespace: blog-app, mode: STRICT}]\n");
        let p = plan(&strict, &inv, &BTreeMap::new(), &Ingress::default(), &labels(), &[]);
        assert_eq!(
            p.refused,
            [
                "mesh: PeerAuthentication/blog-app/default exists and is not tlsward's: it is left alone, and the intent is not written until it is removed"
            ]
        );
        assert!(p.apply.is_empty() && p.writes.is_empty() && p.delete.is_empty());
    }

    #[test]
    fn a_foreign_policy_that_changes_the_result_is_reported_with_the_policies_in_scope() {
        let inv = blog_app(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-reviews, namespace: blog-app}\n\
             spec: {selector: {matchLabels: {app: ratings}}, action: DENY, rules: [{from: [{source: {principals: [cluster.local/ns/blog-app/sa/reviews]}}]}]}\n",
        );
        let strict = intent(
            "mtls: [{namespace: blog-app, mode: STRICT}]\nallow: [{namespace: blog-app, to: ratings, from: [reviews]}]\n",
        );
        let p = plan(&strict, &inv, &BTreeMap::new(), &Ingress::default(), &labels(), &[]);
        assert!(p.refused.is_empty(), "{:?}", p.refused);
        let foreign: Vec<String> = p.foreign.iter().map(|f| f.to_string()).collect();
        assert_eq!(
            foreign,
            [
                "blog-app/ratings:80: policies tlsward does not own change the result (blog-app/reviews: mtls → denied); in scope: AuthorizationPolicy/blog-app/deny-reviews"
            ]
        );
    }
}
