//! The live `doctor`: the mesh as the store sees it through the pure checks, then DNS
//! (the providers' zones and a resolver) and TLS handshakes with the gateway (each
//! load balancer address and each reachable gateway pod). Used by `tlsward doctor
//! --config` and by the daemon's periodic run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use futures::StreamExt;
use time::OffsetDateTime;

use super::Runtime;
use crate::doctor::probe::{self, Resolver};
use crate::doctor::served::{self, Endpoint, Expected};
use crate::doctor::{self, Options, Report};
use crate::mesh::Inventory;
use crate::mesh::inventory::selects;
use crate::model::Address;
use crate::store::StoreError;

/// New findings told as Events per run at most: a cluster that breaks in a thousand
/// places gets the metric, the log and the first Events, not a thousand writes at once.
const EVENTS_PER_RUN: usize = 50;

/// Handshakes in flight at once.
const CONCURRENT_PROBES: usize = 16;

/// A live run's findings and what it could not look at.
pub struct LiveReport {
    pub report: Report,
    /// What could not be read or reached, and why (not findings).
    pub notes: Vec<String>,
    pub objects: usize,
}

impl Runtime {
    /// The daemon's periodic run: the findings as `tlsward_doctor_findings`, and an
    /// Event on the object of each error or warning that was not there the last time.
    pub(super) async fn doctor_and_record(&self, now: OffsetDateTime) {
        let started = std::time::Instant::now();
        let live = match self.doctor(now).await {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(error = %crate::deadline::chain(&e), "doctor could not run");
                return;
            }
        };
        self.metrics.doctor_findings(&live.report.counts());
        let current: BTreeSet<_> = live
            .report
            .findings
            .iter()
            .filter(|f| f.severity != doctor::Severity::Info)
            .map(|f| (f.code, f.object.clone()))
            .collect();
        let before = std::mem::replace(
            &mut *self.memory.doctor_seen.lock().unwrap_or_else(|e| e.into_inner()),
            current,
        );
        let mut recorded = 0;
        let mut unrecorded = 0;
        for f in &live.report.findings {
            if f.severity != doctor::Severity::Info && !before.contains(&(f.code, f.object.clone())) {
                tracing::warn!(code = f.code.as_str(), object = %f.object, "{}", f.message);
                if recorded < EVENTS_PER_RUN {
                    self.store.finding(&f.object, f.code.as_str(), &f.message).await;
                    recorded += 1;
                } else {
                    unrecorded += 1;
                }
            }
        }
        if unrecorded > 0 {
            tracing::warn!(
                unrecorded,
                "doctor: more new findings than Events recorded per run; see `tlsward doctor --config` for all"
            );
        }
        for note in &live.notes {
            tracing::debug!(note = %note, "doctor could not look at everything");
        }
        tracing::info!(
            findings = live.report.findings.len(),
            errors = live
                .report
                .findings
                .iter()
                .filter(|f| f.severity == doctor::Severity::Error)
                .count(),
            took_ms = started.elapsed().as_millis() as u64,
            "doctor run"
        );
    }

    pub async fn doctor(&self, now: OffsetDateTime) -> Result<LiveReport, StoreError> {
        let file = &self.config.file;
        let mut inventory = Inventory::new();
        let mut skipped = Vec::new();
        let mesh = self
            .store
            .mesh_objects(&[], &mut |object| {
                if let Err(e) = inventory.add(object, &file.gateway.namespace) {
                    skipped.push(format!("skipped {e}"));
                }
            })
            .await?;
        // The workloads the files store's mesh policies are written for.
        for w in file.mesh.iter().flat_map(|m| &m.workloads) {
            for object in w.objects() {
                if let Err(e) = inventory.add(object, &file.gateway.namespace) {
                    skipped.push(format!("skipped {e}"));
                }
            }
        }
        if let Some(mesh) = &file.mesh {
            inventory.root_namespace = mesh.root_namespace.clone();
        }
        let mut notes = mesh.notes;
        notes.extend(skipped);
        let options = Options {
            now,
            renew_before: file.renew_before,
            complete: mesh.complete,
            sees_workloads: mesh.sees_workloads,
            outbound_policy: file.egress.as_ref().and_then(|e| e.outbound_policy),
        };
        let (mut report, expected) = doctor::diagnose_serving(&inventory, &options, Some(&file.gateway.selector));
        let deadline = file.deadlines.request.to_std();

        let address = match &self.address {
            Some(source) => match source.current().await {
                Ok(a) => Some(a),
                Err(e) => {
                    notes.push(format!("the gateway's address: {e}"));
                    None
                }
            },
            None => None,
        };
        let resolver = match file
            .doctor
            .resolver
            .as_deref()
            .map(|spec| Resolver::new(spec, deadline))
        {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                notes.push(e.to_string());
                None
            }
            None => None,
        };
        let mut gateway_ips: BTreeSet<IpAddr> = BTreeSet::new();
        if let Some(address) = &address {
            for a in address.addresses() {
                match a {
                    Address::Ip(ip) => {
                        gateway_ips.insert(*ip);
                    }
                    Address::Hostname(h) => match &resolver {
                        Some(r) => match r.addresses(h.as_str()).await {
                            Ok(ips) => gateway_ips.extend(ips),
                            Err(e) => notes.push(e.to_string()),
                        },
                        None => notes.push(format!(
                            "the load balancer {h} is not probed: no doctor.resolver to resolve it with"
                        )),
                    },
                }
            }
            let zones = self.read_zones().await;
            for (name, records) in &zones {
                if let Err(e) = records {
                    notes.push(format!("dns provider {name}: {e}"));
                }
            }
            let resolved = self.resolve_published(resolver.as_ref()).await;
            report.add(doctor::dns::check(
                file,
                &doctor::dns::DnsView {
                    address,
                    zones: &zones,
                    resolved: &resolved,
                    gateway_ips: &gateway_ips,
                },
            ));
        }

        if gateway_ips.iter().any(documentation) {
            notes.push("the load balancer's documentation-range address is not probed".into());
        }
        let endpoints = self.probe_endpoints(&inventory, &gateway_ips);
        report.add(probe_all(&expected, &endpoints, deadline, now, &mut notes).await);
        Ok(LiveReport {
            report,
            notes,
            objects: inventory.object_count(),
        })
    }

    /// What a resolver answers for each published host, except hosts whose provider is
    /// a zone file (no server tlsward knows of serves it) and wildcards.
    async fn resolve_published(
        &self,
        resolver: Option<&Resolver>,
    ) -> BTreeMap<String, Result<BTreeSet<IpAddr>, String>> {
        let mut out = BTreeMap::new();
        let Some(resolver) = resolver else { return out };
        let file = &self.config.file;
        for site in &file.sites {
            let served_by_someone = site
                .dns
                .as_ref()
                .and_then(|p| file.dns.providers.get(p))
                .is_some_and(|spec| !matches!(spec, crate::config::ProviderSpec::Zonefile(_)));
            if !served_by_someone {
                continue;
            }
            for host in crate::config::Config::hosts(site).iter().filter(|h| !h.is_wildcard()) {
                let answer = resolver.addresses(host.as_str()).await.map_err(|e| e.to_string());
                out.insert(host.as_str().to_string(), answer);
            }
        }
        out
    }

    /// The load balancer's addresses, and each running gateway pod, each with the port
    /// a probe of a Gateway server's port connects to there.
    fn probe_endpoints(&self, inventory: &Inventory, gateway_ips: &BTreeSet<IpAddr>) -> Vec<ProbeVia> {
        let file = &self.config.file;
        let mut out: Vec<ProbeVia> = gateway_ips
            .iter()
            .filter(|ip| !documentation(ip))
            .map(|ip| ProbeVia {
                ip: *ip,
                label: "load balancer".into(),
                ports: PortMap::LoadBalancer(file.doctor.https_port),
            })
            .collect();
        // The gateway Service maps a server's port to the pods' target port.
        let service = inventory
            .services
            .iter()
            .find(|s| s.meta.namespace == file.gateway.namespace && s.meta.name == file.gateway.service);
        for pod in inventory.workloads.iter().filter(|w| w.object.kind == "Pod") {
            if pod.object.namespace != file.gateway.namespace || !selects(&file.gateway.selector, &pod.labels) {
                continue;
            }
            let Some(ip) = pod.pod_ip else { continue };
            let targets = service
                .iter()
                .flat_map(|svc| {
                    svc.ports
                        .iter()
                        .map(|p| (p.port, crate::mesh::Mesh::target_port(svc, p.port, pod)))
                })
                .collect();
            out.push(ProbeVia {
                ip,
                label: format!("pod {}/{}", pod.object.namespace, pod.object.name),
                ports: PortMap::Pod(targets),
            });
        }
        out
    }
}

/// Addresses reserved for documentation (RFC 5737, RFC 3849): examples, never a real
/// load balancer, so never probed.
fn documentation(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => matches!(v4.octets(), [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _]),
        IpAddr::V6(v6) => v6.segments()[0] == 0x2001 && v6.segments()[1] == 0x0db8,
    }
}

/// How a Gateway server's port is reached at an endpoint.
enum PortMap {
    /// The same port, unless `doctor.https_port` says the load balancer maps it.
    LoadBalancer(Option<u16>),
    /// The gateway Service's port → the pod's target port.
    Pod(BTreeMap<u32, u32>),
}

struct ProbeVia {
    ip: IpAddr,
    label: String,
    ports: PortMap,
}

impl ProbeVia {
    fn endpoint(&self, server_port: u32) -> Endpoint {
        let port = match &self.ports {
            PortMap::LoadBalancer(Some(p)) => *p,
            PortMap::LoadBalancer(None) => server_port as u16,
            PortMap::Pod(targets) => targets.get(&server_port).copied().unwrap_or(server_port) as u16,
        };
        Endpoint {
            ip: self.ip,
            port,
            label: self.label.clone(),
        }
    }
}

/// One handshake per (host, endpoint); a finding for each that serves the wrong leaf.
/// An endpoint that cannot be reached is a note (a pod IP is often unreachable from
/// where doctor runs), not a finding.
async fn probe_all(
    expected: &[Expected],
    endpoints: &[ProbeVia],
    deadline: std::time::Duration,
    now: OffsetDateTime,
    notes: &mut Vec<String>,
) -> Vec<doctor::Finding> {
    let client = probe::tls_client();
    let jobs: Vec<(Expected, Endpoint)> = expected
        .iter()
        .flat_map(|e| endpoints.iter().map(move |via| (e.clone(), via.endpoint(e.port))))
        .collect();
    let results: Vec<_> = futures::stream::iter(jobs)
        .map(|(e, endpoint)| {
            let client = client.clone();
            async move {
                let address = std::net::SocketAddr::new(endpoint.ip, endpoint.port);
                let seen = probe::served_leaf(client, address, &e.host, deadline).await;
                (e, endpoint, seen)
            }
        })
        .buffer_unordered(CONCURRENT_PROBES)
        .collect()
        .await;
    let mut findings = Vec::new();
    for (e, endpoint, seen) in results {
        match seen {
            Ok(leaf) => findings.extend(served::judge(&e, &endpoint, &leaf.sha256, leaf.not_after, now)),
            Err(err) => notes.push(format!("TLS probe of {} for {}: {err}", endpoint.label, e.host)),
        }
    }
    findings
}
