//! `DnsNotAtGateway`: each published host as its DNS provider holds it and as a
//! resolver answers it, against the load balancer's address. Pure: the answers are
//! gathered by the caller.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{Code, Finding, Severity};
use crate::config::ConfigFile;
use crate::mesh::ObjectRef;
use crate::model::{GatewayAddress, RecordSet, RecordType};
use crate::plan::desired_names;

/// What was seen of DNS, for the check.
pub struct DnsView<'a> {
    pub address: &'a GatewayAddress,
    /// Provider → its records, or why they could not be read.
    pub zones: &'a BTreeMap<String, Result<Vec<RecordSet>, String>>,
    /// Host → the addresses a resolver returned (CNAMEs followed), or why it failed.
    pub resolved: &'a BTreeMap<String, Result<BTreeSet<IpAddr>, String>>,
    /// The load balancer's addresses as the same resolver sees them (a hostname
    /// load balancer resolved).
    pub gateway_ips: &'a BTreeSet<IpAddr>,
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The address records at one name, comparable: (type, sorted normalized values).
fn address_records<'r>(records: impl Iterator<Item = &'r RecordSet>) -> BTreeSet<(RecordType, Vec<String>)> {
    records
        .filter(|r| matches!(r.kind, RecordType::A | RecordType::AAAA | RecordType::CNAME))
        .map(|r| {
            let mut values: Vec<String> = r.values.iter().map(|v| normalize(v)).collect();
            values.sort();
            (r.kind, values)
        })
        .collect()
}

fn describe(records: &BTreeSet<(RecordType, Vec<String>)>) -> String {
    if records.is_empty() {
        return "no A, AAAA or CNAME record".into();
    }
    records
        .iter()
        .map(|(kind, values)| format!("{} {}", kind.as_str(), values.join(",")))
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn check(config: &ConfigFile, view: &DnsView<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    if view.address.is_empty() {
        return out;
    }
    // Each provider's records by name, once (10,000 hosts must not scan 20,000 records each).
    let by_name: BTreeMap<&str, BTreeMap<String, Vec<&RecordSet>>> = view
        .zones
        .iter()
        .filter_map(|(p, z)| z.as_ref().ok().map(|records| (p.as_str(), records)))
        .map(|(p, records)| {
            let mut names: BTreeMap<String, Vec<&RecordSet>> = BTreeMap::new();
            for r in records {
                names.entry(normalize(&r.name)).or_default().push(r);
            }
            (p, names)
        })
        .collect();
    for site in &config.sites {
        let Some(provider) = site.dns.as_deref() else { continue };
        for desired in desired_names(site, view.address, config.dns.ttl) {
            let object = ObjectRef::new("DNSName", provider, &desired.host);
            let wanted = address_records(desired.records.iter());
            if let Some(names) = by_name.get(provider) {
                let held = address_records(names.get(&normalize(&desired.host)).into_iter().flatten().copied());
                if held != wanted {
                    out.push(Finding::new(
                        Code::DnsNotAtGateway,
                        Severity::Error,
                        object.clone(),
                        format!(
                            "{provider} holds {} for {}, but the gateway's load balancer is at {}: clients go elsewhere",
                            describe(&held),
                            desired.host,
                            describe(&wanted)
                        ),
                        format!("point {} at the load balancer (tlsward does on its next pass unless the record is someone else's)", desired.host),
                    ));
                    continue;
                }
            }
            match view.resolved.get(&desired.host) {
                Some(Ok(ips)) if !view.gateway_ips.is_empty() && ips != view.gateway_ips => {
                    let shown = |set: &BTreeSet<IpAddr>| {
                        if set.is_empty() {
                            "nothing".to_string()
                        } else {
                            set.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(",")
                        }
                    };
                    out.push(Finding::new(
                        Code::DnsNotAtGateway,
                        Severity::Error,
                        object,
                        format!(
                            "a resolver answers {} for {}, but the gateway's load balancer is at {}: the change has not reached resolvers, or another server answers for the zone",
                            shown(ips),
                            desired.host,
                            shown(view.gateway_ips)
                        ),
                        "check that the provider's zone is the one delegated to, and wait out the old record's TTL",
                    ));
                }
                _ => {}
            }
        }
    }
    out
}
