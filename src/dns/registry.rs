//! Ownership of DNS names, external-dns style: a TXT record at a prefixed name
//! (`_tlsward.<host>`) says which owner and site a name belongs to. The diff here
//! changes only names that carry our ownership record (or are free), and reports
//! every other name as a conflict. Pure: records in, changes out.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::model::{RecordSet, RecordType, names};

/// Record types tlsward manages at a published name.
pub const MANAGED_TYPES: [RecordType; 3] = [RecordType::A, RecordType::AAAA, RecordType::CNAME];
/// Record types tlsward manages at an ACME DNS-01 challenge name.
pub const CHALLENGE_TYPES: [RecordType; 1] = [RecordType::TXT];
/// The label that starts every ACME DNS-01 challenge name.
pub const CHALLENGE_LABEL: &str = "_acme-challenge";

/// The types tlsward manages at `name`: address records at a published host, the TXT
/// record at an ACME challenge name; never anything else.
pub fn managed_types(name: &str) -> &'static [RecordType] {
    if name.starts_with(&format!("{CHALLENGE_LABEL}.")) {
        &CHALLENGE_TYPES
    } else {
        &MANAGED_TYPES
    }
}

/// The name of the ownership record of `host` (`*` becomes a plain label).
pub fn ownership_name(host: &str) -> String {
    let host = match host.strip_prefix("*.") {
        Some(rest) => format!("{}.{rest}", names::WILDCARD_LABEL),
        None => host.to_string(),
    };
    format!("{}.{host}", names::OWNERSHIP_PREFIX)
}

/// The host an ownership record's name stands for (the inverse of `ownership_name`).
pub fn host_of_ownership_name(name: &str) -> Option<String> {
    let n = name.strip_prefix(&format!("{}.", names::OWNERSHIP_PREFIX))?;
    Some(match n.strip_prefix(&format!("{}.", names::WILDCARD_LABEL)) {
        Some(rest) => format!("*.{rest}"),
        None => n.to_string(),
    })
}

impl Guard {
    /// The host this guard protects.
    pub fn host(&self) -> String {
        match self {
            Guard::Owned { ownership } => {
                host_of_ownership_name(&ownership.name).unwrap_or_else(|| ownership.name.clone())
            }
            Guard::Free { name, .. } => name.clone(),
        }
    }
}

/// The host a record belongs to: itself, or the host its ownership record names.
pub fn host_of_record(name: &str) -> String {
    host_of_ownership_name(name).unwrap_or_else(|| name.to_string())
}

/// The ownership record's text for `owner` and `site`.
pub fn ownership_value(owner: &str, site: &str) -> String {
    format!("heritage=tlsward,tlsward/owner={owner},tlsward/site={site}")
}

/// The owner named by an ownership record's text, if it is one.
pub fn owner_of(value: &str) -> Option<&str> {
    let mut fields = value.split(',');
    if fields.next() != Some("heritage=tlsward") {
        return None;
    }
    fields.find_map(|f| f.strip_prefix("tlsward/owner="))
}

/// One change to a zone. A delete carries the record set as it is now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Change {
    Upsert(RecordSet),
    Delete(RecordSet),
}

impl Change {
    pub fn record(&self) -> &RecordSet {
        match self {
            Change::Upsert(r) | Change::Delete(r) => r,
        }
    }
}

/// What tlsward wants at one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredName {
    pub host: String,
    pub site: String,
    /// A/AAAA or one CNAME set, never both.
    pub records: Vec<RecordSet>,
    /// The provider publishes this name's CNAME as an alias A record (Route 53), an
    /// address record that may share its name with other types, the zone apex's
    /// SOA and NS included.
    pub alias: bool,
}

/// What must still hold at a name when the changes land, for providers that can
/// check it atomically (RFC 2136 prerequisites): the ownership tlsward saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "guard", rename_all = "lowercase")]
pub enum Guard {
    /// The name's ownership record is still exactly this one.
    Owned { ownership: RecordSet },
    /// The name is still free: no ownership record and no A/AAAA/CNAME (nothing at
    /// all when a CNAME is to be added).
    Free { name: String, cname: bool },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ZoneDiff {
    /// Deletes first, then upserts (a type switch must free the name first).
    pub changes: Vec<Change>,
    /// Names left alone, with why.
    pub conflicts: Vec<(String, String)>,
    /// The ownership each changed name had when observed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub guards: Vec<Guard>,
}

/// Computes the changes that bring `current` to `desired` for `owner`, touching only
/// names tlsward owns or that are free.
pub fn diff(owner: &str, ttl: u32, desired: &[DesiredName], current: &[RecordSet]) -> ZoneDiff {
    diff_within(owner, ttl, desired, current, None)
}

/// Like `diff`, but removes only owned names in `scope` that are no longer desired
/// (an ACME challenge claims and releases its own names, and no others).
pub fn diff_within(
    owner: &str,
    ttl: u32,
    desired: &[DesiredName],
    current: &[RecordSet],
    scope: Option<&BTreeSet<String>>,
) -> ZoneDiff {
    let at: BTreeMap<(&str, RecordType), &RecordSet> = current.iter().map(|r| ((r.name.as_str(), r.kind), r)).collect();
    let names_present: BTreeMap<&str, Vec<RecordType>> = current.iter().fold(BTreeMap::new(), |mut m, r| {
        m.entry(r.name.as_str()).or_insert_with(Vec::new).push(r.kind);
        m
    });
    let ownership = |host: &str| -> Option<Vec<&str>> {
        at.get(&(ownership_name(host).as_str(), RecordType::TXT))
            .map(|r| r.values.iter().filter_map(|v| owner_of(v)).collect())
    };
    // Names whose ownership record names us, found from the records themselves.
    let owned: BTreeSet<String> = current
        .iter()
        .filter(|r| r.kind == RecordType::TXT && r.values.iter().any(|v| owner_of(v) == Some(owner)))
        .filter_map(|r| host_of_ownership_name(&r.name))
        .collect();

    let mut out = ZoneDiff::default();
    let mut deletes = Vec::new();
    let mut upserts = Vec::new();
    let wanted: BTreeSet<&str> = desired.iter().map(|d| d.host.as_str()).collect();

    for want in desired {
        let host = want.host.as_str();
        let is_ours = owned.contains(host);
        if !is_ours {
            if let Some(owners) = ownership(host).filter(|o| !o.is_empty()) {
                out.conflicts.push((
                    host.to_string(),
                    format!("owned by `{}`, not `{owner}`", owners.join("`, `")),
                ));
                continue;
            }
            let present = names_present.get(host).cloned().unwrap_or_default();
            let wants_cname = !want.alias && want.records.iter().any(|r| r.kind == RecordType::CNAME);
            let blocking: Vec<String> = present
                .iter()
                .filter(|t| wants_cname || managed_types(host).contains(t))
                .map(|t| t.to_string())
                .collect();
            if !blocking.is_empty() {
                out.conflicts.push((
                    host.to_string(),
                    format!(
                        "has {} records without tlsward's ownership record {}: left untouched",
                        blocking.join("/"),
                        ownership_name(host)
                    ),
                ));
                continue;
            }
        } else if !want.alias && want.records.iter().any(|r| r.kind == RecordType::CNAME) {
            // Our name, but someone else's TXT/MX/… sits there too: a CNAME may not join
            // them, so the name keeps what it has rather than lose its address records.
            let foreign: Vec<String> = names_present
                .get(host)
                .into_iter()
                .flatten()
                .filter(|t| !managed_types(host).contains(t))
                .map(|t| t.to_string())
                .collect();
            if !foreign.is_empty() {
                out.conflicts.push((
                    host.to_string(),
                    format!(
                        "cannot follow the load balancer's hostname with a CNAME: the name also has foreign {} records",
                        foreign.join("/")
                    ),
                ));
                continue;
            }
        }
        let changes_before = deletes.len() + upserts.len();
        let owner_record = RecordSet::new(
            ownership_name(host),
            RecordType::TXT,
            ttl,
            vec![ownership_value(owner, &want.site)],
        );
        if at.get(&(owner_record.name.as_str(), RecordType::TXT)).copied() != Some(&owner_record) {
            upserts.push(Change::Upsert(owner_record));
        }
        for &kind in managed_types(host) {
            let now = at.get(&(host, kind)).copied();
            let target = want.records.iter().find(|r| r.kind == kind);
            match (now, target) {
                (Some(n), Some(t)) if n == t => {}
                (_, Some(t)) => upserts.push(Change::Upsert(t.clone())),
                (Some(n), None) => deletes.push(Change::Delete(n.clone())),
                (None, None) => {}
            }
        }
        if deletes.len() + upserts.len() > changes_before {
            out.guards
                .push(match at.get(&(ownership_name(host).as_str(), RecordType::TXT)) {
                    Some(o) if is_ours => Guard::Owned {
                        ownership: (*o).clone(),
                    },
                    _ => Guard::Free {
                        name: host.to_string(),
                        cname: !want.alias && want.records.iter().any(|r| r.kind == RecordType::CNAME),
                    },
                });
        }
    }
    let in_scope = |h: &String| scope.is_none_or(|s| s.contains(h));
    for host in owned.iter().filter(|h| !wanted.contains(h.as_str()) && in_scope(h)) {
        for &kind in managed_types(host) {
            if let Some(n) = at.get(&(host.as_str(), kind)) {
                deletes.push(Change::Delete((*n).clone()));
            }
        }
        if let Some(txt) = at.get(&(ownership_name(host).as_str(), RecordType::TXT)) {
            deletes.push(Change::Delete((*txt).clone()));
            out.guards.push(Guard::Owned {
                ownership: (*txt).clone(),
            });
        }
    }
    out.changes = deletes;
    out.changes.extend(upserts);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(name: &str, ips: &[&str]) -> RecordSet {
        RecordSet::new(name, RecordType::A, 60, ips.iter().map(|s| s.to_string()).collect())
    }
    fn cname(name: &str, target: &str) -> RecordSet {
        RecordSet::new(name, RecordType::CNAME, 60, vec![target.into()])
    }
    fn txt(name: &str, v: &str) -> RecordSet {
        RecordSet::new(name, RecordType::TXT, 60, vec![v.into()])
    }
    fn want(host: &str, records: Vec<RecordSet>) -> DesiredName {
        DesiredName {
            host: host.into(),
            site: "shop".into(),
            records,
            alias: false,
        }
    }
    fn ours(host: &str) -> RecordSet {
        txt(&ownership_name(host), &ownership_value("me", "shop"))
    }

    #[test]
    fn a_free_name_gets_its_records_and_an_ownership_record() {
        let d = diff(
            "me",
            60,
            &[want("shop.z.example", vec![a("shop.z.example", &["203.0.113.10"])])],
            &[],
        );
        assert_eq!(
            d.changes,
            vec![
                Change::Upsert(ours("shop.z.example")),
                Change::Upsert(a("shop.z.example", &["203.0.113.10"]))
            ]
        );
        assert!(d.conflicts.is_empty());
    }

    #[test]
    fn a_converged_name_needs_no_change() {
        let current = vec![ours("shop.z.example"), a("shop.z.example", &["203.0.113.10"])];
        let d = diff(
            "me",
            60,
            &[want("shop.z.example", vec![a("shop.z.example", &["203.0.113.10"])])],
            &current,
        );
        assert_eq!(d, ZoneDiff::default());
    }

    #[test]
    fn switch_from_ip_to_hostname_deletes_the_a_before_the_cname() {
        let current = vec![ours("shop.z.example"), a("shop.z.example", &["203.0.113.10"])];
        let d = diff(
            "me",
            60,
            &[want("shop.z.example", vec![cname("shop.z.example", "lb.example.net")])],
            &current,
        );
        assert_eq!(
            d.changes,
            vec![
                Change::Delete(a("shop.z.example", &["203.0.113.10"])),
                Change::Upsert(cname("shop.z.example", "lb.example.net"))
            ]
        );
    }

    #[test]
    fn a_foreign_record_at_a_wanted_name_is_a_conflict_and_untouched() {
        let current = vec![a("shop.z.example", &["198.51.100.1"])];
        let d = diff(
            "me",
            60,
            &[want("shop.z.example", vec![a("shop.z.example", &["203.0.113.10"])])],
            &current,
        );
        assert!(d.changes.is_empty());
        assert_eq!(d.conflicts.len(), 1);
        assert!(
            d.conflicts[0].1.contains("without tlsward's ownership record"),
            "{:?}",
            d.conflicts
        );
    }

    #[test]
    fn another_owners_name_is_a_conflict() {
        let current = vec![txt(&ownership_name("shop.z.example"), &ownership_value("them", "x"))];
        let d = diff(
            "me",
            60,
            &[want("shop.z.example", vec![a("shop.z.example", &["203.0.113.10"])])],
            &current,
        );
        assert!(d.changes.is_empty());
        assert!(d.conflicts[0].1.contains("owned by `them`"));
    }

    #[test]
    fn a_foreign_txt_at_the_name_allows_a_records_but_blocks_a_cname() {
        let current = vec![txt("shop.z.example", "v=spf1 -all")];
        let with_a = diff(
            "me",
            60,
            &[want("shop.z.example", vec![a("shop.z.example", &["203.0.113.10"])])],
            &current,
        );
        assert_eq!(with_a.changes.len(), 2);
        let with_cname = diff(
            "me",
            60,
            &[want("shop.z.example", vec![cname("shop.z.example", "lb.example.net")])],
            &current,
        );
        assert!(with_cname.changes.is_empty());
        assert_eq!(with_cname.conflicts.len(), 1);
    }

    #[test]
    fn a_removed_site_loses_its_records_and_ownership_but_nothing_else() {
        let current = vec![
            ours("old.z.example"),
            a("old.z.example", &["203.0.113.10"]),
            txt("old.z.example", "foreign"),
            a("other.z.example", &["198.51.100.7"]),
        ];
        let d = diff("me", 60, &[], &current);
        assert_eq!(
            d.changes,
            vec![
                Change::Delete(a("old.z.example", &["203.0.113.10"])),
                Change::Delete(ours("old.z.example"))
            ]
        );
    }

    #[test]
    fn wildcard_hosts_keep_ownership_at_a_plain_label() {
        assert_eq!(ownership_name("*.apps.z.example"), "_tlsward._wildcard.apps.z.example");
        let current = vec![ours("*.apps.z.example"), a("*.apps.z.example", &["203.0.113.10"])];
        let d = diff("me", 60, &[], &current);
        assert_eq!(d.changes.len(), 2, "{:?}", d.changes);
    }

    #[test]
    fn every_changed_name_carries_the_ownership_it_was_planned_from() {
        let current = vec![
            ours("old.z.example"),
            a("old.z.example", &["203.0.113.10"]),
            ours("shop.z.example"),
            a("shop.z.example", &["203.0.113.9"]),
        ];
        let d = diff(
            "me",
            60,
            &[
                want("shop.z.example", vec![a("shop.z.example", &["203.0.113.10"])]),
                want("new.z.example", vec![cname("new.z.example", "lb.example.net")]),
            ],
            &current,
        );
        assert_eq!(
            d.guards,
            vec![
                Guard::Owned {
                    ownership: ours("shop.z.example")
                },
                Guard::Free {
                    name: "new.z.example".into(),
                    cname: true
                },
                Guard::Owned {
                    ownership: ours("old.z.example")
                },
            ]
        );
    }

    #[test]
    fn an_owned_name_with_a_foreign_txt_keeps_its_a_records_instead_of_a_cname() {
        let current = vec![
            ours("shop.z.example"),
            a("shop.z.example", &["203.0.113.10"]),
            txt("shop.z.example", "foreign"),
        ];
        let d = diff(
            "me",
            60,
            &[want("shop.z.example", vec![cname("shop.z.example", "lb.example.net")])],
            &current,
        );
        assert!(d.changes.is_empty(), "{:?}", d.changes);
        assert!(d.conflicts[0].1.contains("foreign TXT records"), "{:?}", d.conflicts);
    }

    #[test]
    fn a_scoped_diff_releases_only_the_names_in_scope() {
        let current = vec![
            ours("shop.z.example"),
            a("shop.z.example", &["203.0.113.10"]),
            ours("_acme-challenge.shop.z.example"),
            txt("_acme-challenge.shop.z.example", "token"),
        ];
        let scope: BTreeSet<String> = ["_acme-challenge.shop.z.example".to_string()].into();
        let d = diff_within("me", 60, &[], &current, Some(&scope));
        assert_eq!(
            d.changes,
            vec![
                Change::Delete(txt("_acme-challenge.shop.z.example", "token")),
                Change::Delete(ours("_acme-challenge.shop.z.example"))
            ]
        );
    }

    #[test]
    fn owner_of_reads_only_tlsward_records() {
        assert_eq!(owner_of(&ownership_value("me", "s")), Some("me"));
        assert_eq!(owner_of("heritage=external-dns,external-dns/owner=x"), None);
    }
}
