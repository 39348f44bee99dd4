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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict<'a> {
    Mtls,
    Plaintext,
    /// Refused by AuthorizationPolicy (named).
    Denied(&'a str),
    /// Reset by a TLS mismatch (why).
    Broken(&'static str),
}

impl Verdict<'_> {
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
    /// The port's effective PeerAuthentication mode (of its first pod), or `no sidecar`.
    pub mode: &'static str,
    pub mtls: Vec<String>,
    pub plaintext: Vec<String>,
    /// The policies that refuse callers → those callers.
    pub denied: BTreeMap<String, Vec<String>>,
    /// Why connections break → the callers whose connections do.
    pub broken: BTreeMap<String, Vec<String>>,
}

impl Row {
    fn new(server: String, mode: &'static str) -> Row {
        Row {
            server,
            mode,
            mtls: Vec::new(),
            plaintext: Vec::new(),
            denied: BTreeMap::new(),
            broken: BTreeMap::new(),
        }
    }
    fn put(&mut self, caller: &str, verdict: Verdict<'_>) {
        let group = |groups: &mut BTreeMap<String, Vec<String>>, why: &str| match groups.get_mut(why) {
            Some(callers) => callers.push(caller.to_string()),
            None => {
                groups.insert(why.to_string(), vec![caller.to_string()]);
            }
        };
        match verdict {
            Verdict::Mtls => self.mtls.push(caller.to_string()),
            Verdict::Plaintext => self.plaintext.push(caller.to_string()),
            Verdict::Denied(why) => group(&mut self.denied, why),
            Verdict::Broken(why) => group(&mut self.broken, why),
        }
    }
    /// The verdict of `caller` (by its display name), if it is in the row.
    pub fn verdict(&self, caller: &str) -> Option<&'static str> {
        self.cells().find(|(c, _)| *c == caller).map(|(_, v)| v)
    }
    /// Why `caller` is denied or broken, if it is.
    pub fn why(&self, caller: &str) -> Option<&str> {
        self.denied
            .iter()
            .chain(&self.broken)
            .find(|(_, callers)| callers.iter().any(|c| c == caller))
            .map(|(why, _)| why.as_str())
    }
    /// Every caller with its verdict's name.
    pub fn cells(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.mtls
            .iter()
            .map(|c| (c.as_str(), "mtls"))
            .chain(self.plaintext.iter().map(|c| (c.as_str(), "plaintext")))
            .chain(self.denied.values().flatten().map(|c| (c.as_str(), "denied")))
            .chain(self.broken.values().flatten().map(|c| (c.as_str(), "broken")))
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
        // Each caller as shown, and its identity, once per namespace.
        let named = |c: &Caller| {
            (
                c.clone(),
                c.to_string(),
                format!("{trust_domain}/ns/{}/sa/{}", c.namespace, c.service_account),
            )
        };
        let callers: Vec<(Caller, String, String)> = callers.iter().map(named).collect();
        let gateway: Option<(Caller, String, String)> = ingress.map(named);
        for service in mesh.services_in(ns) {
            let backends = mesh.workloads_of(service);
            if backends.is_empty() {
                continue;
            }
            let guards: Vec<Guards> = backends
                .iter()
                .map(|w| Guards::new(applying(&policies, &inventory.root_namespace, w)))
                .collect();
            let is_published = published.contains(&(ns.clone(), service.meta.name.clone()));
            let callers: Vec<&(Caller, String, String)> = callers
                .iter()
                .chain(gateway.as_ref().filter(|_| is_published))
                .collect();
            for port in &service.ports {
                let first = backends[0];
                let mode = if mesh.has_sidecar(first) {
                    mesh.server_policy(first, Mesh::target_port(service, port.port, first))
                        .mode
                        .as_str()
                } else {
                    "no sidecar"
                };
                let mut row = Row::new(format!("{ns}/{}:{}", service.meta.name, port.port), mode);
                // Traffic depends on the caller's namespace and sidecar, not its account.
                let mut by_class: HashMap<(&str, bool), Vec<_>> = HashMap::new();
                for (caller, shown, principal) in &callers {
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
                    let verdict = traffic
                        .iter()
                        .zip(&guards)
                        .map(|(t, guards)| {
                            if let Some(refusal) = t.refused {
                                return Verdict::Broken(refusal.explain());
                            }
                            let mutual = match t.client.mode {
                                ClientMode::IstioMutual => true,
                                ClientMode::Auto => t.server_sidecar && t.server.mode != PeerMode::Disable,
                                _ => false,
                            };
                            match guards.refusal(mutual.then_some(principal.as_str())) {
                                Some(policy) => Verdict::Denied(policy),
                                None if mutual => Verdict::Mtls,
                                None => Verdict::Plaintext,
                            }
                        })
                        .max_by_key(Verdict::rank)
                        .unwrap_or(Verdict::Plaintext);
                    row.put(shown, verdict);
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

/// The AuthorizationPolicies of one workload, with what a refusal names (made once).
struct Guards<'a> {
    deny: Vec<(&'a AuthorizationPolicy, String)>,
    allow: Vec<&'a AuthorizationPolicy>,
    /// The ALLOW policies, as a refusal by them names them.
    allow_names: String,
}

impl<'a> Guards<'a> {
    fn new(policies: Vec<&'a AuthorizationPolicy>) -> Guards<'a> {
        let name = |p: &AuthorizationPolicy| format!("AuthorizationPolicy {}/{}", p.meta.namespace, p.meta.name);
        let allow: Vec<&AuthorizationPolicy> = policies.iter().copied().filter(|p| p.action == "ALLOW").collect();
        Guards {
            deny: policies
                .iter()
                .filter(|p| p.action == "DENY")
                .map(|p| (*p, name(p)))
                .collect(),
            allow_names: allow.iter().map(|p| name(p)).collect::<Vec<_>>().join(", "),
            allow,
        }
    }

    /// Istio's order, for what the identity decides: a DENY rule that surely matches
    /// refuses; then, when ALLOW policies apply, one of their rules must match (a rule
    /// that also looks at the request counts: some requests pass). Returns what refuses.
    fn refusal(&self, principal: Option<&str>) -> Option<&str> {
        if let Some((_, name)) = self.deny.iter().find(|(p, _)| {
            p.rules
                .iter()
                .any(|r| !r.conditional && rule_matches(r, principal) == Some(true))
        }) {
            return Some(name);
        }
        if self.allow.is_empty()
            || self
                .allow
                .iter()
                .any(|p| p.rules.iter().any(|r| rule_matches(r, principal) != Some(false)))
        {
            return None;
        }
        Some(&self.allow_names)
    }
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

    use crate::mesh::inventory_of as inventory;

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
        assert_eq!(r.mode, "PERMISSIVE");
        assert_eq!(r.mtls, ["shop/ratings", "shop/reviews"]);
        assert_eq!(r.plaintext, ["shop/batch (no sidecar)"]);
    }

    #[test]
    fn strict_breaks_the_caller_without_a_sidecar() {
        let r = row(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n",
        );
        assert_eq!(r.mode, "STRICT");
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
        assert_eq!(r.why("shop/ratings"), Some("AuthorizationPolicy shop/ratings-allow"));
        assert_eq!(r.verdict("shop/batch (no sidecar)"), Some("denied"));
    }

    #[test]
    fn a_deny_rule_matching_a_namespace_refuses_and_one_with_paths_does_not() {
        let r = row(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-shop, namespace: istio-system}\n\
             spec: {action: DENY, rules: [{from: [{source: {namespaces: ['sho*']}}]}]}\n\
             ---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: admin, namespace: shop}\n\
             spec: {action: DENY, rules: [{from: [{source: {notPrincipals: ['*']}}], to: [{operation: {paths: [/admin]}}]}]}\n",
        );
        assert_eq!(r.cells().filter(|(_, v)| *v == "denied").count(), 2, "{r:?}");
        assert_eq!(r.why("shop/reviews"), Some("AuthorizationPolicy istio-system/no-shop"));
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
