//! Where the gateway's load balancer address comes from: a static list, or a
//! hostname resolved on every pass (the Kubernetes Service watch comes with the
//! Kubernetes store). A source reports; it never decides which records follow.

use async_trait::async_trait;
use hickory_resolver::TokioResolver;

use crate::config::AddressSpec;
use crate::model::{Address, GatewayAddress, Hostname};

#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("gateway.address.resolve: cannot resolve `{host}`: {detail}")]
    Resolve { host: String, detail: String },
    #[error("gateway Service `{service}`: {detail}")]
    Service { service: String, detail: String },
}

#[async_trait]
pub trait AddressSource: Send + Sync {
    async fn current(&self) -> Result<GatewayAddress, AddressError>;
    /// When the address may have changed without anyone saying so (a DNS answer's TTL
    /// runs out); `None` when a change always announces itself (static, watched).
    fn look_again_in(&self) -> Option<std::time::Duration> {
        None
    }
}

/// How long to trust a DNS answer: its TTL, kept between 5 s (no hot loop on TTL 0) and
/// 5 min (a long TTL still gets checked).
pub fn refresh_after(ttl: std::time::Duration) -> std::time::Duration {
    ttl.clamp(std::time::Duration::from_secs(5), std::time::Duration::from_secs(300))
}

/// `address: {static: [...]}`: IPs, or one hostname.
pub struct StaticAddress(GatewayAddress);

#[async_trait]
impl AddressSource for StaticAddress {
    async fn current(&self) -> Result<GatewayAddress, AddressError> {
        Ok(self.0.clone())
    }
}

/// `address: {resolve: HOST}`: the host's A/AAAA answers, through the system resolver
/// (which also reads /etc/hosts).
pub struct ResolvedAddress {
    host: String,
    resolver: TokioResolver,
    /// Until when the last answer is valid (its TTL).
    valid_until: std::sync::Mutex<Option<std::time::Instant>>,
}

#[async_trait]
impl AddressSource for ResolvedAddress {
    async fn current(&self) -> Result<GatewayAddress, AddressError> {
        let err = |detail: String| AddressError::Resolve {
            host: self.host.clone(),
            detail,
        };
        let lookup = self
            .resolver
            .lookup_ip(self.host.as_str())
            .await
            .map_err(|e| err(e.to_string()))?;
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(lookup.valid_until());
        let addresses: Vec<Address> = lookup.iter().map(Address::Ip).collect();
        if addresses.is_empty() {
            return Err(err("no A or AAAA records".into()));
        }
        Ok(GatewayAddress::new(addresses))
    }

    fn look_again_in(&self) -> Option<std::time::Duration> {
        let until = *self.valid_until.lock().unwrap_or_else(|e| e.into_inner());
        Some(match until {
            Some(until) => refresh_after(until.saturating_duration_since(std::time::Instant::now())),
            // Not resolved yet (or it failed): try again soon.
            None => std::time::Duration::from_secs(5),
        })
    }
}

/// The source a (validated) `gateway.address` describes.
pub fn from_spec(spec: &AddressSpec) -> Result<Box<dyn AddressSource>, AddressError> {
    let list = match spec {
        AddressSpec::Static(list) => list,
        AddressSpec::Resolve(host) => {
            let resolver =
                TokioResolver::builder_tokio()
                    .and_then(|b| b.build())
                    .map_err(|e| AddressError::Resolve {
                        host: host.clone(),
                        detail: e.to_string(),
                    })?;
            return Ok(Box::new(ResolvedAddress {
                host: host.trim_end_matches('.').to_string(),
                resolver,
                valid_until: std::sync::Mutex::new(None),
            }));
        }
    };
    let addresses = list
        .iter()
        .map(|entry| match entry.parse() {
            Ok(ip) => Address::Ip(ip),
            Err(_) => Address::Hostname(Hostname::parse(entry, false).expect("validated by check")),
        })
        .collect();
    Ok(Box::new(StaticAddress(GatewayAddress::new(addresses))))
}

/// In a cluster: the addresses in the gateway Service's `status.loadBalancer.ingress`.
pub struct ServiceAddress {
    api: kube::Api<k8s_openapi::api::core::v1::Service>,
    name: String,
    /// The address as the Service watch last saw it (read without a request).
    watched: Option<tokio::sync::watch::Receiver<Option<GatewayAddress>>>,
}

impl ServiceAddress {
    /// `watched`: the value `watch_service` keeps; until it has one, the Service is read.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        watched: Option<tokio::sync::watch::Receiver<Option<GatewayAddress>>>,
    ) -> Self {
        ServiceAddress {
            api: kube::Api::namespaced(client, namespace),
            name: name.to_string(),
            watched,
        }
    }
}

/// The load balancer addresses a Service reports (IPs and hostnames).
pub fn service_addresses(service: &k8s_openapi::api::core::v1::Service) -> GatewayAddress {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for i in ingress {
        if let Some(ip) = i.ip.as_deref().and_then(|ip| ip.parse().ok()) {
            out.push(Address::Ip(ip));
        }
        if let Some(h) = i.hostname.as_deref().and_then(|h| Hostname::parse(h, false).ok()) {
            out.push(Address::Hostname(h));
        }
    }
    GatewayAddress::new(out)
}

#[async_trait]
impl AddressSource for ServiceAddress {
    async fn current(&self) -> Result<GatewayAddress, AddressError> {
        if let Some(seen) = self.watched.as_ref().and_then(|w| w.borrow().clone()) {
            return Ok(seen);
        }
        let service = self.api.get(&self.name).await.map_err(|e| AddressError::Service {
            service: self.name.clone(),
            detail: e.to_string(),
        })?;
        Ok(service_addresses(&service))
    }
}

/// Watches the gateway Service and publishes its load balancer addresses in `changes`
/// whenever they change: DNS follows without waiting for a timer, and a pass reads the
/// address from memory.
pub async fn watch_service(
    client: kube::Client,
    namespace: String,
    name: String,
    changes: tokio::sync::watch::Sender<Option<GatewayAddress>>,
) {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let api: kube::Api<k8s_openapi::api::core::v1::Service> = kube::Api::namespaced(client, &namespace);
    let mut last: Option<GatewayAddress> = None;
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api, config).boxed();
    while let Some(event) = stream.next().await {
        let service = match event {
            Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => s,
            Ok(watcher::Event::Delete(_)) => {
                // Gone: a pass reads the Service again (and reports it missing).
                last = None;
                changes.send_replace(None);
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(service = %name, error = %e, "watching the gateway Service failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        if service.metadata.name.as_deref() != Some(name.as_str()) {
            continue;
        }
        let now = service_addresses(&service);
        if last.as_ref() != Some(&now) {
            if last.is_some() {
                tracing::info!(service = %name, address = ?now.addresses().iter().map(|a| a.to_string()).collect::<Vec<_>>(), "load balancer address changed");
            }
            last = Some(now.clone());
            changes.send_replace(Some(now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_resolved_address_is_looked_at_again_when_its_ttl_runs_out_within_bounds() {
        assert_eq!(refresh_after(Duration::from_secs(30)), Duration::from_secs(30));
        assert_eq!(refresh_after(Duration::ZERO), Duration::from_secs(5));
        assert_eq!(refresh_after(Duration::from_secs(86_400)), Duration::from_secs(300));
    }

    #[tokio::test]
    async fn a_resolved_address_reports_when_to_look_again() {
        let source = from_spec(&AddressSpec::Resolve("localhost".into())).unwrap();
        assert_eq!(
            source.look_again_in(),
            Some(Duration::from_secs(5)),
            "before any answer"
        );
        source.current().await.unwrap();
        let again = source.look_again_in().unwrap();
        assert!(
            again >= Duration::from_secs(5) && again <= Duration::from_secs(300),
            "{again:?}"
        );
        let fixed = from_spec(&AddressSpec::Static(vec!["203.0.113.10".into()])).unwrap();
        assert_eq!(fixed.look_again_in(), None);
    }
}
