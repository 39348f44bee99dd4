//! The pure core: `plan(config, observed, now, seed) -> Plan` decides everything
//! tlsward wants: which credentials to issue or renew and when, the Gateway, the
//! VirtualServices, the Secrets' metadata and the DNS changes. No I/O, no clock, no
//! randomness here: `now` and the jitter seed come in, so every decision is testable.

pub mod renewal;
pub mod report;
pub mod text;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use time::OffsetDateTime;

use crate::config::{ConfigFile, IssuerSpec, KeyAlgorithm, ProviderSpec, SecretFormat, SiteSpec, TlsMode};
use crate::dns::registry::{self, DesiredName, ZoneDiff};
use crate::model::{Address, CertificateFacts, GatewayAddress, Hostname, ObservedCredential, RecordSet, RecordType};
use crate::render;

/// Everything the core knows about the world, gathered by the adapters.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// tlsward's stored credentials by site.
    /// Shared with the daemon's memory of what it parsed (10,000 sites, one copy).
    pub credentials: BTreeMap<String, std::sync::Arc<ObservedCredential>>,
    /// Sites whose credential location holds something tlsward does not own, with what.
    pub foreign_credentials: BTreeMap<String, String>,
    /// Owned credentials that could not be read, with why.
    pub unreadable_credentials: BTreeMap<String, String>,
    /// Internal-CA issuer → fingerprint of its current signing certificate.
    pub signers: BTreeMap<String, String>,
    /// MUTUAL site → fingerprint of its client CA in tlsward's state.
    pub client_cas: BTreeMap<String, String>,
    /// The load balancer's addresses; `None` when unknown.
    pub address: Option<GatewayAddress>,
    /// DNS provider → its zone's records now, or why they could not be read.
    pub zones: BTreeMap<String, Result<Vec<RecordSet>, String>>,
    /// `kind/name` of the objects tlsward owns in the store.
    pub owned_objects: Vec<String>,
    /// Conditions the Gateway API's controller reports `False` for tlsward's objects'
    /// current generation (subject, condition): reported, and a pass does not converge.
    pub routing: Vec<(String, String)>,
    /// Site → the renewal window its ACME CA suggests (ARI, RFC 9773), when it offers one.
    pub renewal_windows: BTreeMap<String, (OffsetDateTime, OffsetDateTime)>,
}

/// Why a certificate is (re)issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    Missing,
    Unreadable { detail: String },
    KeyMismatch,
    IssuerChanged { from: String, to: String },
    HostsChanged { stored: Vec<String>, wanted: Vec<String> },
    SignerChanged,
    ClientCaChanged,
    KeyAlgorithmChanged { stored: String, wanted: String },
    Expired { not_after: String },
    RenewalDue { renew_at: String },
    RenewalWindow { start: String, end: String },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Missing => write!(f, "no credential yet"),
            Reason::Unreadable { detail } => write!(f, "the stored credential is unreadable ({detail})"),
            Reason::KeyMismatch => write!(f, "the stored key does not match its certificate"),
            Reason::IssuerChanged { from, to } => write!(f, "issuer changed from `{from}` to `{to}`"),
            Reason::HostsChanged { stored, wanted } => {
                write!(
                    f,
                    "hosts changed from [{}] to [{}]",
                    stored.join(", "),
                    wanted.join(", ")
                )
            }
            Reason::SignerChanged => write!(f, "signed by a CA certificate that is no longer the issuer's"),
            Reason::ClientCaChanged => write!(f, "the client CA changed"),
            Reason::KeyAlgorithmChanged { stored, wanted } => {
                write!(f, "key algorithm changed from {stored} to {wanted}")
            }
            Reason::Expired { not_after } => write!(f, "expired at {not_after}"),
            Reason::RenewalDue { renew_at } => write!(f, "renewal was due at {renew_at}"),
            Reason::RenewalWindow { start, end } => {
                write!(f, "inside the CA's suggested renewal window {start} .. {end}")
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Keep {
        #[serde(skip_serializing_if = "Option::is_none")]
        renew_at: Option<String>,
    },
    Issue(Reason),
}

impl Action {
    pub fn is_issue(&self) -> bool {
        matches!(self, Action::Issue(_))
    }
}

/// What happens to one site's credential.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CredentialPlan {
    pub site: String,
    pub issuer: String,
    pub hosts: Vec<Hostname>,
    pub server: Action,
    /// MUTUAL sites: the client CA written as `ca.crt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<Action>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<(String, Action)>,
    /// Stored parts no longer configured (client certificates, a client CA).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<String>,
    /// The stored Secret layout differs from the configured one: rewritten as it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reformat: Option<String>,
    /// Set when the credential's place holds something foreign: nothing is done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    /// The stored credential can serve now (its key matches its certificate, which has
    /// not expired): the Gateway keeps serving it until, and unless, a renewal lands.
    #[serde(skip)]
    pub serving: bool,
}

impl CredentialPlan {
    /// Whether the stored credential must be written (whole) in this pass.
    pub fn needs_write(&self) -> bool {
        self.blocked.is_none()
            && (self.server.is_issue()
                || self.client_ca.as_ref().is_some_and(Action::is_issue)
                || self.clients.iter().any(|(_, a)| a.is_issue())
                || !self.dropped.is_empty()
                || self.reformat.is_some())
    }
}

/// The DNS changes for one provider.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ZonePlan {
    pub provider: String,
    pub zone: String,
    #[serde(flatten)]
    pub diff: ZoneDiff,
    /// Why no changes could be planned (provider unreadable, address unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub subject: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub credentials: Vec<CredentialPlan>,
    /// Owned credentials of sites no longer configured.
    pub removed_credentials: Vec<String>,
    /// Objects (`kind/name`) wanted when every credential becomes ready.
    pub objects: Vec<String>,
    /// Objects (`kind/name`) while this pass's HTTP-01 challenges are pending: the
    /// serving sites' objects and the challenge routes (empty without challenges).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub objects_during_challenges: Vec<String>,
    /// In a cluster, sites whose HTTP-01 challenges this pass answers through the
    /// Gateway, with the solver Service (host, port) their challenge route points to.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub challenge_routes: BTreeMap<String, (String, u16)>,
    /// Owned objects (`kind/name`) no longer wanted.
    pub objects_to_delete: Vec<String>,
    pub zones: Vec<ZonePlan>,
    pub conflicts: Vec<Conflict>,
    /// The earliest moment a kept certificate falls due.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_renewal: Option<OffsetDateTime>,
    /// The apiVersion the Istio objects are written with, when a cluster decides it
    /// (filled in from the store's discovery, not by `plan()`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub istio_api: Option<String>,
    /// The mesh step's plan, with a `mesh:` section (filled in by the runtime, which
    /// reads the live mesh for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<crate::mesh::policy::MeshPlan>,
}

impl Plan {
    /// The sites whose stored credential can serve now (the Gateway's servers before any
    /// issuance of this pass lands).
    pub fn serving(&self) -> BTreeSet<String> {
        self.credentials
            .iter()
            .filter(|c| c.serving)
            .map(|c| c.site.clone())
            .collect()
    }

    /// Whether a pass would change nothing at all.
    pub fn is_noop(&self) -> bool {
        self.credentials.iter().all(|c| !c.needs_write())
            && self.removed_credentials.is_empty()
            && self.objects_to_delete.is_empty()
            && self.zones.iter().all(|z| z.diff.changes.is_empty())
    }
}

/// A moment as people read it: RFC 3339, UTC, whole seconds.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC).replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// How far `t` is from `now`, the way a person says it: `in 20d`, `in 3h`, `5m ago`.
pub fn relative(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let d = t - now;
    let secs = d.whole_seconds().abs();
    let amount = match secs {
        s if s >= 2 * 86_400 => format!("{}d", s / 86_400),
        s if s >= 2 * 3_600 => format!("{}h", s / 3_600),
        s if s >= 2 * 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    };
    if d.is_negative() {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// Decides one certificate's fate from its facts alone (hosts and issuer are checked
/// by the caller). Returns the action and, when kept, its renewal moment.
fn lifecycle(
    facts: &CertificateFacts,
    policy: crate::config::RenewBefore,
    jitter: f64,
    now: OffsetDateTime,
) -> (Action, Option<OffsetDateTime>) {
    if now >= facts.not_after {
        return (
            Action::Issue(Reason::Expired {
                not_after: rfc3339(facts.not_after),
            }),
            None,
        );
    }
    let at = renewal::renew_at(facts.not_before, facts.not_after, policy, jitter);
    if now >= at {
        (Action::Issue(Reason::RenewalDue { renew_at: rfc3339(at) }), None)
    } else {
        (
            Action::Keep {
                renew_at: Some(rfc3339(at)),
            },
            Some(at),
        )
    }
}

/// A config value (a key algorithm, a Secret format) as the config spells it.
fn config_word<T: Serialize + fmt::Debug>(v: T) -> String {
    serde_json::to_value(&v)
        .ok()
        .and_then(|j| j.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{v:?}"))
}

/// The layout a Secret of this site really has: without a client CA, `split` is `tls`.
fn effective_format(format: SecretFormat, mode: TlsMode) -> SecretFormat {
    match (format, mode) {
        (SecretFormat::Split, TlsMode::Simple) => SecretFormat::Tls,
        (f, _) => f,
    }
}

fn plan_credential(
    config: &ConfigFile,
    site: &SiteSpec,
    observed: &Observed,
    now: OffsetDateTime,
    seed: u64,
    next: &mut Option<OffsetDateTime>,
) -> CredentialPlan {
    let hosts = crate::config::Config::hosts(site);
    let mut wanted: Vec<String> = hosts.iter().map(|h| h.as_str().to_string()).collect();
    wanted.sort();
    let mut keep_until = |at: Option<OffsetDateTime>| {
        if let Some(at) = at {
            *next = Some(next.map_or(at, |n| n.min(at)));
        }
    };
    let mut plan = CredentialPlan {
        site: site.name.clone(),
        issuer: site.issuer.clone(),
        hosts,
        server: Action::Issue(Reason::Missing),
        client_ca: None,
        clients: Vec::new(),
        dropped: Vec::new(),
        reformat: None,
        blocked: None,
        serving: false,
    };
    if let Some(what) = observed.foreign_credentials.get(&site.name) {
        plan.blocked = Some(what.clone());
        return plan;
    }
    let stored = observed.credentials.get(&site.name);
    plan.serving = stored.is_some_and(|o| o.key_matches && now < o.server.not_after);
    let is_ca = config
        .issuers
        .get(&site.issuer)
        .is_some_and(|i| matches!(i, IssuerSpec::Ca(_)));
    let signer = observed.signers.get(&site.issuer);
    // The key algorithm of the leaves this issuer makes (ACME keys are P-256).
    let wanted_key = match config.issuers.get(&site.issuer) {
        Some(IssuerSpec::Ca(ca)) => ca.key,
        _ => KeyAlgorithm::EcdsaP256,
    };

    plan.server = match (stored, observed.unreadable_credentials.get(&site.name)) {
        (_, Some(detail)) => Action::Issue(Reason::Unreadable { detail: detail.clone() }),
        (None, None) => Action::Issue(Reason::Missing),
        (Some(c), None) => {
            if !c.key_matches {
                Action::Issue(Reason::KeyMismatch)
            } else if c.issuer != site.issuer {
                Action::Issue(Reason::IssuerChanged {
                    from: c.issuer.clone(),
                    to: site.issuer.clone(),
                })
            } else if c.server.dns_names != wanted {
                Action::Issue(Reason::HostsChanged {
                    stored: c.server.dns_names.clone(),
                    wanted: wanted.clone(),
                })
            } else if is_ca && (signer.is_none() || c.server.issuer_fingerprint.as_ref() != signer) {
                Action::Issue(Reason::SignerChanged)
            } else if let Some(stored_key) = c.server.key_algorithm.filter(|k| *k != wanted_key) {
                Action::Issue(Reason::KeyAlgorithmChanged {
                    stored: config_word(stored_key),
                    wanted: config_word(wanted_key),
                })
            } else {
                let jitter = renewal::jitter_for(seed, &site.name);
                let (action, at) = match observed.renewal_windows.get(&site.name) {
                    // The CA's suggested window (ARI) wins over renew_before.
                    Some((start, end)) if now < c.server.not_after => {
                        let at = renewal::ari_renew_at(*start, *end, jitter);
                        if now >= at {
                            let reason = Reason::RenewalWindow {
                                start: rfc3339(*start),
                                end: rfc3339(*end),
                            };
                            (Action::Issue(reason), None)
                        } else {
                            (
                                Action::Keep {
                                    renew_at: Some(rfc3339(at)),
                                },
                                Some(at),
                            )
                        }
                    }
                    _ => lifecycle(&c.server, config.renew_before, jitter, now),
                };
                keep_until(at);
                action
            }
        }
    };

    // Only Secrets have a layout; a credential reissued anyway is written in the new one.
    if config.store.kubernetes().is_some()
        && let Some(c) = stored
        && !plan.server.is_issue()
    {
        let (was, wanted) = (
            effective_format(c.format, site.tls.mode),
            effective_format(site.tls.format, site.tls.mode),
        );
        if was != wanted {
            plan.reformat = Some(format!(
                "stored as `{}`, configured `{}`",
                config_word(was),
                config_word(wanted)
            ));
        }
    }

    if site.tls.mode == TlsMode::Mutual {
        let state_ca = observed.client_cas.get(&site.name);
        let stored_ca = stored.and_then(|c| c.client_ca_fingerprint.as_ref());
        let ca_current = state_ca.is_some() && stored_ca == state_ca;
        plan.client_ca = Some(match (state_ca, stored_ca) {
            (Some(_), Some(_)) if ca_current => Action::Keep { renew_at: None },
            (Some(_), Some(_)) => Action::Issue(Reason::ClientCaChanged),
            _ => Action::Issue(Reason::Missing),
        });
        for name in &site.tls.clients {
            let facts = stored
                .and_then(|c| c.clients.iter().find(|(n, _)| n == name))
                .map(|(_, f)| f);
            let action = match facts {
                None => Action::Issue(Reason::Missing),
                Some(_) if !ca_current => Action::Issue(Reason::ClientCaChanged),
                Some(f) => {
                    let (action, at) = lifecycle(
                        f,
                        config.renew_before,
                        renewal::jitter_for(seed, &format!("{}/{name}", site.name)),
                        now,
                    );
                    keep_until(at);
                    action
                }
            };
            plan.clients.push((name.clone(), action));
        }
    }
    if let Some(c) = stored {
        for (name, _) in &c.clients {
            if site.tls.mode != TlsMode::Mutual || !site.tls.clients.contains(name) {
                plan.dropped.push(format!("client `{name}`"));
            }
        }
        if site.tls.mode != TlsMode::Mutual && c.client_ca_fingerprint.is_some() {
            plan.dropped.push("client CA".into());
        }
    }
    plan
}

/// The records tlsward wants for each site's hosts at the load balancer's address.
pub fn desired_names(site: &SiteSpec, address: &GatewayAddress, ttl: u32) -> Vec<DesiredName> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut target = None;
    for a in address.addresses() {
        match a {
            Address::Ip(ip) if ip.is_ipv4() => v4.push(ip.to_string()),
            Address::Ip(ip) => v6.push(ip.to_string()),
            Address::Hostname(h) => target = Some(h.as_str().to_string()),
        }
    }
    crate::config::Config::hosts(site)
        .into_iter()
        .map(|host| {
            let name = host.as_str().to_string();
            let records = match &target {
                // A load balancer with a hostname is followed by CNAME, never mixed with A.
                Some(t) => vec![RecordSet::new(name.clone(), RecordType::CNAME, ttl, vec![t.clone()])],
                None => [(RecordType::A, &v4), (RecordType::AAAA, &v6)]
                    .into_iter()
                    .filter(|(_, ips)| !ips.is_empty())
                    .map(|(kind, ips)| RecordSet::new(name.clone(), kind, ttl, ips.clone()))
                    .collect(),
            };
            DesiredName {
                host: name,
                site: site.name.clone(),
                records,
                alias: false,
            }
        })
        .collect()
}

fn plan_zones(config: &ConfigFile, observed: &Observed, conflicts: &mut Vec<Conflict>) -> Vec<ZonePlan> {
    let mut zones = Vec::new();
    for (provider, spec) in &config.dns.providers {
        let mut zone = ZonePlan {
            provider: provider.clone(),
            zone: spec.zone_label(),
            diff: ZoneDiff::default(),
            unavailable: None,
        };
        let current = match observed.zones.get(provider) {
            Some(Ok(records)) => records,
            Some(Err(e)) => {
                zone.unavailable = Some(e.clone());
                zones.push(zone);
                continue;
            }
            None => {
                zone.unavailable = Some("not observed".into());
                zones.push(zone);
                continue;
            }
        };
        let sites: Vec<&SiteSpec> = config
            .sites
            .iter()
            .filter(|s| s.dns.as_deref() == Some(provider))
            .collect();
        let address = observed.address.as_ref().filter(|a| !a.is_empty());
        let Some(address) = address else {
            if !sites.is_empty() {
                // Never delete records because the load balancer has no address (yet).
                zone.unavailable = Some("the gateway's load balancer has no address yet".into());
            }
            zones.push(zone);
            continue;
        };
        let mut desired: Vec<DesiredName> = sites
            .iter()
            .flat_map(|s| desired_names(s, address, config.dns.ttl))
            .collect();
        if let ProviderSpec::Route53(r) = spec
            && r.alias
        {
            for d in &mut desired {
                d.alias = d.records.iter().any(|r| {
                    r.kind == RecordType::CNAME && r.values.iter().all(|v| crate::dns::route53::elb_zone(v).is_some())
                });
            }
        }
        zone.diff = registry::diff(&config.owner_id, config.dns.ttl, &desired, current);
        for (name, why) in &zone.diff.conflicts {
            conflicts.push(Conflict {
                subject: format!("dns {provider}: {name}"),
                message: why.clone(),
            });
        }
        zones.push(zone);
    }
    zones
}

/// Sites that need an ACME HTTP-01 order in this pass, when the Gateway must carry the
/// challenge (a cluster; on the files store the solver port alone answers).
fn challenge_routes(config: &ConfigFile, credentials: &[CredentialPlan]) -> BTreeMap<String, (String, u16)> {
    if config.store.kubernetes().is_none() {
        return BTreeMap::new();
    }
    credentials
        .iter()
        .filter(|c| c.blocked.is_none() && c.server.is_issue())
        .filter_map(|c| {
            let http01 = config.issuers.get(&c.issuer)?.acme()?.solver.http01.as_ref()?;
            let (host, port) = http01.service_host_port();
            Some((c.site.clone(), (host.to_string(), port)))
        })
        .collect()
}

/// The pure core. See the module doc.
pub fn plan(config: &ConfigFile, observed: &Observed, now: OffsetDateTime, seed: u64) -> Plan {
    let mut next = None;
    let mut conflicts = Vec::new();
    let credentials: Vec<CredentialPlan> = config
        .sites
        .iter()
        .map(|site| plan_credential(config, site, observed, now, seed, &mut next))
        .collect();
    for c in &credentials {
        if let Some(what) = &c.blocked {
            conflicts.push(Conflict {
                subject: format!("credential {}", crate::model::names::credential_secret(&c.site)),
                message: format!(
                    "{what}: left untouched, the site is not served until it is removed or labelled for tlsward"
                ),
            });
        }
    }
    // The egress gateway's client credentials are stored like sites' and are not theirs
    // to remove (the mesh step keeps them).
    let egress: Vec<String> = config.egress.iter().flat_map(|e| e.credential_units()).collect();
    let configured: BTreeSet<&str> = config
        .sites
        .iter()
        .map(|s| s.name.as_str())
        .chain(egress.iter().map(String::as_str))
        .collect();
    let removed_credentials = observed
        .credentials
        .keys()
        .chain(observed.unreadable_credentials.keys())
        .filter(|s| !configured.contains(s.as_str()))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let ready: BTreeSet<String> = credentials
        .iter()
        .filter(|c| c.blocked.is_none())
        .map(|c| c.site.clone())
        .collect();
    let objects = render::object_keys(config, &ready, &BTreeSet::new());
    let challenge_routes = challenge_routes(config, &credentials);
    let objects_during_challenges = if challenge_routes.is_empty() {
        Vec::new()
    } else {
        let serving: BTreeSet<String> = credentials
            .iter()
            .filter(|c| c.serving)
            .map(|c| c.site.clone())
            .collect();
        render::object_keys(config, &serving, &challenge_routes.keys().cloned().collect())
    };
    let objects_to_delete = render::unwanted(&objects, &observed.owned_objects);
    for (subject, condition) in &observed.routing {
        conflicts.push(Conflict {
            subject: subject.clone(),
            message: format!("the Gateway API controller reports {condition}"),
        });
    }
    let zones = plan_zones(config, observed, &mut conflicts);
    Plan {
        challenge_routes,
        credentials,
        removed_credentials,
        objects,
        objects_during_challenges,
        objects_to_delete,
        zones,
        conflicts,
        next_renewal: next,
        istio_api: None,
        mesh: None,
    }
}

#[cfg(test)]
mod tests;
