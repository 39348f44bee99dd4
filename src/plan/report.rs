//! What the metrics say about certificates, computed from the plan and the observation
//! alone (pure): renewal moments are the plan's own (ARI window included), so the
//! metric can never disagree with `plan`.

use time::OffsetDateTime;

use super::{Action, Observed, Plan, renewal};
use crate::config::ConfigFile;
use crate::metrics::CertificateState;

/// The renewal moment an action carries (a kept certificate), as a Unix timestamp.
fn planned_renewal(action: &Action) -> Option<i64> {
    match action {
        Action::Keep { renew_at: Some(at) } => {
            OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .ok()
                .map(|t| t.unix_timestamp())
        }
        _ => None,
    }
}

/// One state per planned credential: expiries, the plan's renewal moments (or, for a
/// certificate due now, the moment `renew_before` set), and readiness.
pub fn certificate_states(
    config: &ConfigFile,
    plan: &Plan,
    observed: &Observed,
    now: OffsetDateTime,
    seed: u64,
) -> Vec<CertificateState> {
    let mut states: Vec<CertificateState> = plan
        .credentials
        .iter()
        .map(|c| {
            let stored = observed.credentials.get(&c.site);
            let renew_at = planned_renewal(&c.server).or_else(|| {
                stored.map(|o| {
                    renewal::renew_at(
                        o.server.not_before,
                        o.server.not_after,
                        config.renew_before,
                        renewal::jitter_for(seed, &c.site),
                    )
                    .unix_timestamp()
                })
            });
            let clients: Vec<(String, i64, Option<i64>)> = stored
                .map(|o| {
                    o.clients
                        .iter()
                        .map(|(name, f)| {
                            let planned = c
                                .clients
                                .iter()
                                .find(|(n, _)| n == name)
                                .and_then(|(_, a)| planned_renewal(a));
                            (name.clone(), f.not_after.unix_timestamp(), planned)
                        })
                        .collect()
                })
                .unwrap_or_default();
            // Every certificate the site hands out must be usable: a lapsed client
            // certificate or client CA breaks its partners as surely as the server's.
            let clients_usable = stored.is_some_and(|o| {
                o.client_ca_not_after.is_none_or(|t| now < t) && o.clients.iter().all(|(_, f)| now < f.not_after)
            }) && c.clients.iter().all(|(_, a)| !a.is_issue());
            CertificateState {
                site: c.site.clone(),
                issuer: c.issuer.clone(),
                hosts: stored.map(|o| o.server.dns_names.clone()).unwrap_or_default(),
                not_after: stored.map(|o| o.server.not_after.unix_timestamp()),
                renew_at,
                ready: c.serving && !c.server.is_issue() && clients_usable,
                client_ca_not_after: stored.and_then(|o| o.client_ca_not_after.map(|t| t.unix_timestamp())),
                clients,
            }
        })
        .collect();
    // The egress gateway's client credentials: the same expiry metrics and alerts (the
    // mesh step renews them at the moment `renew_before` sets).
    for unit in config.egress.iter().flat_map(|e| e.credential_units()) {
        // It is a client certificate: its series are `kind="client"`, `client=<unit>`.
        let stored = observed.credentials.get(&unit);
        let renew_at = stored.map(|o| {
            renewal::renew_at(o.server.not_before, o.server.not_after, config.renew_before, 0.0).unix_timestamp()
        });
        states.push(CertificateState {
            site: unit.clone(),
            issuer: stored.map(|o| o.issuer.clone()).unwrap_or_default(),
            hosts: Vec::new(),
            not_after: None,
            renew_at: None,
            ready: stored.is_some_and(|o| o.key_matches && now < o.server.not_after),
            client_ca_not_after: None,
            clients: stored
                .map(|o| vec![(unit.clone(), o.server.not_after.unix_timestamp(), renew_at)])
                .unwrap_or_default(),
        });
    }
    states
}
