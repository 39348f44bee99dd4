//! The effective matrix: for each Service port, what happens to each caller's
//! connection — mutual TLS, plaintext, denied by an AuthorizationPolicy, or broken by a
//! TLS mismatch (Istio's opaque 503). Computed by the evaluator `doctor` uses
//! (`Mesh::traffic`), plus AuthorizationPolicy as far as the caller's identity decides it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::inventory::{AuthorizationPolicy, AuthzRule, AuthzSource, Inventory, Workload, selects};
use super::{Client, ClientMode, Mesh, PeerMode};

/// Who calls: a service account of a namespace, with or without a sidecar.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
    pub sidecar: bool,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)?;
        if !self.sidecar {
            f.write_str(" (no sidecar)")?;
        }
        Ok(())
    }
}

/// What happens to one caller's connections to one Service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Mtls,
    Plaintext,
    /// Refused by an AuthorizationPolicy (named).
    Denied(String),
    /// Reset by a TLS mismatch (why).
    Broken(String),
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Mtls => "mtls",
            Verdict::Plaintext => "plaintext",
            Verdict::Denied(_) => "denied",
            Verdict::Broken(_) => "broken",
        }
    }
    fn rank(&self) -> u8 {
        match self {
            Verdict::Mtls => 0,
            Verdict::Plaintext => 1,
            Verdict::Denied(_) => 2,
            Verdict::Broken(_) => 3,
        }
    }
}

/// One row of the matrix: a Service port and every caller's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    /// `namespace/service:port`.
    pub server: String,
    pub mtls: Vec<String>,
    pub plaintext: Vec<String>,
    /// Caller → the policy that refuses it.
    pub denied: BTreeMap<String, String>,
    /// Caller → why the connection breaks.
    pub broken: BTreeMap<String, String>,
}

impl Row {
    fn new(server: String) -> Row {
        Row {
            server,
            mtls: Vec::new(),
            plaintext: Vec::new(),
            denied: BTreeMap::new(),
            broken: BTreeMap::new(),
        }
    }
    fn put(&mut self, caller: &Caller, verdict: Verdict) {
        let name = caller.to_string();
        match verdict {
            Verdict::Mtls => self.mtls.push(name),
            Verdict::Plaintext => self.plaintext.push(name),
            Verdict::Denied(why) => {
                self.denied.insert(name, why);
            }
            Verdict::Broken(why) => {
                self.broken.insert(name, why);
            }
        }
    }
    /// The verdict of `caller` (by its display name), if it is in the row.
    pub fn verdict(&self, caller: &str) -> Option<&'static str> {
        if self.mtls.iter().any(|c| c == caller) {
            Some("mtls")
        } else if self.plaintext.iter().any(|c| c == caller) {
            Some("plaintext")
        } else if self.denied.contains_key(caller) {
            Some("denied")
        } else if self.broken.contains_key(caller) {
            Some("broken")
        } else {
            None
        }
    }
    /// Every caller with its verdict's name.
    pub fn cells(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.mtls
            .iter()
            .map(|c| (c.as_str(), "mtls"))
            .chain(self.plaintext.iter().map(|c| (c.as_str(), "plaintext")))
            .chain(self.denied.keys().map(|c| (c.as_str(), "denied")))
            .chain(self.broken.keys().map(|c| (c.as_str(), "broken")))
    }
}

/// The matrix for every Service port in `namespaces`: callers are the workloads of the
/// Service's own namespace and, for `published` Services, the ingress gateway.
pub fn matrix(
    inventory: &Inventory,
    trust_domain: &str,
    namespaces: &BTreeSet<String>,
    ingress: Option<&Caller>,
    published: &BTreeSet<(String, String)>,
) -> Vec<Row> {
    let mesh = Mesh::new(inventory);
    let mut policies: HashMap<&str, Vec<&AuthorizationPolicy>> = HashMap::new();
    for p in &inventory.authorization_policies {
        policies.entry(p.meta.namespace.as_str()).or_default().push(p);
    }
    let mut rows = Vec::new();
    for ns in namespaces {
        let callers: BTreeSet<Caller> = mesh
            .workloads_in(ns)
            .iter()
            .map(|w| Caller {
                namespace: ns.clone(),
                service_account: w.service_account.clone(),
                sidecar: mesh.has_sidecar(w),
            })
            .collect();
        for service in inventory.services.iter().filter(|s| &s.meta.namespace == ns) {
            let backends = mesh.workloads_of(service);
            if backends.is_empty() {
                continue;
            }
            let guards: Vec<Vec<&AuthorizationPolicy>> = backends
                .iter()
                .map(|w| applying(&policies, &inventory.root_namespace, w))
                .collect();
            let is_published = published.contains(&(ns.clone(), service.meta.name.clone()));
            let callers: Vec<&Caller> = callers.iter().chain(ingress.filter(|_| is_published)).collect();
            for port in &service.ports {
                let mut row = Row::new(format!("{ns}/{}:{}", service.meta.name, port.port));
                // Traffic depends on the caller's namespace and sidecar, not its account.
                let mut by_class: HashMap<(&str, bool), Vec<_>> = HashMap::new();
                for caller in &callers {
                    let traffic = by_class
                        .entry((caller.namespace.as_str(), caller.sidecar))
                        .or_insert_with(|| {
                            mesh.traffic(
                                Client {
                                    namespace: &caller.namespace,
                                    sidecar: caller.sidecar,
                                },
                                service,
                                port.port,
                            )
                        });
                    let principal = format!("{trust_domain}/ns/{}/sa/{}", caller.namespace, caller.service_account);
                    let verdict = traffic
                        .iter()
                        .zip(&guards)
                        .map(|(t, guards)| {
                            if let Some(refusal) = t.refused {
                                return Verdict::Broken(refusal.explain().to_string());
                            }
                            let mutual = match t.client.mode {
                                ClientMode::IstioMutual => true,
                                ClientMode::Auto => t.server_sidecar && t.server.mode != PeerMode::Disable,
                                _ => false,
                            };
                            match authorize(guards, mutual.then_some(principal.as_str())) {
                                Some(policy) => Verdict::Denied(policy),
                                None if mutual => Verdict::Mtls,
                                None => Verdict::Plaintext,
                            }
                        })
                        .max_by_key(Verdict::rank)
                        .unwrap_or(Verdict::Plaintext);
                    row.put(caller, verdict);
                }
                rows.push(row);
            }
        }
    }
    rows
}

/// The AuthorizationPolicies that apply to a workload: the root namespace's without a
/// selector or selecting it, and its own namespace's likewise.
fn applying<'a>(
    policies: &HashMap<&str, Vec<&'a AuthorizationPolicy>>,
    root: &str,
    workload: &Workload,
) -> Vec<&'a AuthorizationPolicy> {
    let ns = workload.object.namespace.as_str();
    let mut out = Vec::new();
    for scope in [Some(root), (ns != root).then_some(ns)].into_iter().flatten() {
        out.extend(
            policies
                .get(scope)
                .into_iter()
                .flatten()
                .filter(|p| p.selector.as_ref().is_none_or(|s| selects(s, &workload.labels))),
        );
    }
    out
}

/// Istio's order, for what the identity decides: a DENY rule that surely matches
/// refuses; then, when ALLOW policies apply, one of their rules must match (a rule that
/// also looks at the request counts: some requests pass). Returns the refusing policy.
fn authorize(policies: &[&AuthorizationPolicy], principal: Option<&str>) -> Option<String> {
    let name = |p: &AuthorizationPolicy| format!("AuthorizationPolicy {}/{}", p.meta.namespace, p.meta.name);
    if let Some(p) = policies.iter().filter(|p| p.action == "DENY").find(|p| {
        p.rules
            .iter()
            .any(|r| !r.conditional && rule_matches(r, principal) == Some(true))
    }) {
        return Some(name(p));
    }
    let allow: Vec<&&AuthorizationPolicy> = policies.iter().filter(|p| p.action == "ALLOW").collect();
    if allow.is_empty()
        || allow
            .iter()
            .any(|p| p.rules.iter().any(|r| rule_matches(r, principal) != Some(false)))
    {
        return None;
    }
    Some(allow.iter().map(|p| name(p)).collect::<Vec<_>>().join(", "))
}

/// Whether a rule's sources admit `principal`: `Some(true)` surely, `Some(false)`
/// never, `None` when it depends on more than the identity.
fn rule_matches(rule: &AuthzRule, principal: Option<&str>) -> Option<bool> {
    if rule.sources.is_empty() {
        return Some(true);
    }
    let mut result = Some(false);
    for source in &rule.sources {
        match source_matches(source, principal) {
            true if !source.conditional => return Some(true),
            true => result = None,
            false => {}
        }
    }
    result
}

fn source_matches(source: &AuthzSource, principal: Option<&str>) -> bool {
    let namespace = principal
        .and_then(|p| p.split("/ns/").nth(1))
        .and_then(|r| r.split('/').next());
    let any = |values: &Option<Vec<String>>, value: Option<&str>| {
        values
            .as_ref()
            .map(|vs| value.is_some_and(|v| vs.iter().any(|pattern| glob(pattern, v))))
    };
    any(&source.principals, principal).unwrap_or(true)
        && any(&source.namespaces, namespace).unwrap_or(true)
        && !any(&source.not_principals, principal).unwrap_or(false)
        && !any(&source.not_namespaces, namespace).unwrap_or(false)
}

/// Istio's string match: exact, `*`, `prefix*` or `*suffix`.
fn glob(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return value.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return value.ends_with(suffix);
    }
    pattern == value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(yaml: &str) -> Inventory {
        let mut inv = Inventory::new();
        for doc in crate::config::yaml::documents(yaml) {
            inv.add(doc.unwrap().0, "default").unwrap();
        }
        inv
    }

    const APP: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio-injection: enabled}}\n\
---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: ratings, namespace: shop}\n\
spec: {template: {metadata: {labels: {app: ratings}}, spec: {serviceAccountName: ratings, containers: [{name: r}]}}}\n\
---\napiVersion: v1\nkind: Service\nmetadata: {name: ratings, namespace: shop}\nspec: {selector: {app: ratings}, ports: [{name: http, port: 9080}]}\n\
---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: reviews, namespace: shop}\n\
spec: {template: {metadata: {labels: {app: reviews}}, spec: {serviceAccountName: reviews, containers: [{name: r}]}}}\n\
---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: batch, namespace: shop}\n\
spec: {template: {metadata: {labels: {app: batch, sidecar.istio.io/inject: 'false'}}, spec: {serviceAccountName: batch, containers: [{name: b}]}}}\n";

    fn row(extra: &str) -> Row {
        let inv = inventory(&format!("{APP}{extra}"));
        let rows = matrix(
            &inv,
            "cluster.local",
            &["shop".to_string()].into(),
            None,
            &BTreeSet::new(),
        );
        assert_eq!(rows.len(), 1, "{rows:?}");
        rows.into_iter().next().unwrap()
    }

    #[test]
    fn permissive_by_default_sidecars_talk_mtls_and_the_rest_plaintext() {
        let r = row("");
        assert_eq!(r.server, "shop/ratings:9080");
        assert_eq!(r.mtls, ["shop/ratings", "shop/reviews"]);
        assert_eq!(r.plaintext, ["shop/batch (no sidecar)"]);
    }

    #[test]
    fn strict_breaks_the_caller_without_a_sidecar() {
        let r = row(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n",
        );
        assert_eq!(r.verdict("shop/batch (no sidecar)"), Some("broken"));
        assert_eq!(r.verdict("shop/reviews"), Some("mtls"));
    }

    #[test]
    fn an_allow_list_denies_every_other_caller_and_plaintext_ones_have_no_identity() {
        let r = row(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ratings-allow, namespace: shop}\n\
             spec: {selector: {matchLabels: {app: ratings}}, rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/reviews]}}]}]}\n",
        );
        assert_eq!(r.mtls, ["shop/reviews"]);
        assert_eq!(
            r.denied.get("shop/ratings").map(String::as_str),
            Some("AuthorizationPolicy shop/ratings-allow")
        );
        assert!(r.denied.contains_key("shop/batch (no sidecar)"));
    }

    #[test]
    fn a_deny_rule_matching_a_namespace_refuses_and_one_with_paths_does_not() {
        let r = row(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-shop, namespace: istio-system}\n\
             spec: {action: DENY, rules: [{from: [{source: {namespaces: ['sho*']}}]}]}\n\
             ---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: admin, namespace: shop}\n\
             spec: {action: DENY, rules: [{from: [{source: {notPrincipals: ['*']}}], to: [{operation: {paths: [/admin]}}]}]}\n",
        );
        assert_eq!(r.denied.len(), 2, "{r:?}");
        assert_eq!(
            r.denied.get("shop/reviews").map(String::as_str),
            Some("AuthorizationPolicy istio-system/no-shop")
        );
        // The plaintext caller has no namespace to match: only the path rule could
        // refuse it, and that one depends on the request.
        assert_eq!(r.plaintext, ["shop/batch (no sidecar)"]);
    }

    #[test]
    fn a_port_level_disable_is_plaintext_for_everyone() {
        let r = row(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n\
             ---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: ratings, namespace: shop}\n\
             spec: {selector: {matchLabels: {app: ratings}}, portLevelMtls: {'9080': {mode: DISABLE}}}\n\
             ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ratings, namespace: shop}\n\
             spec: {host: ratings.shop.svc.cluster.local, trafficPolicy: {tls: {mode: DISABLE}}}\n",
        );
        assert_eq!(r.plaintext, ["shop/batch (no sidecar)", "shop/ratings", "shop/reviews"]);
    }
}
