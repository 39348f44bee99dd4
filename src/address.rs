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

/// Where a cluster reports the load balancer's address: the gateway Service's
/// `status.loadBalancer.ingress`, or (`gateway.api: gateway-api`) the Gateway's
/// `status.addresses`, which the Gateway's controller fills in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressObject {
    Service(String),
    Gateway(String),
}

impl AddressObject {
    fn api(&self, client: kube::Client, namespace: &str) -> kube::Api<kube::api::DynamicObject> {
        let resource = match self {
            AddressObject::Service(_) => {
                kube::discovery::ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&())
            }
            AddressObject::Gateway(_) => kube::discovery::ApiResource::from_gvk_with_plural(
                &kube::core::GroupVersionKind::gvk(crate::render::gateway_api::GROUP, "v1", "Gateway"),
                "gateways",
            ),
        };
        kube::Api::namespaced_with(client, namespace, &resource)
    }

    fn name(&self) -> &str {
        match self {
            AddressObject::Service(n) | AddressObject::Gateway(n) => n,
        }
    }

    /// How errors and logs name it.
    fn what(&self) -> String {
        match self {
            AddressObject::Service(n) => n.clone(),
            AddressObject::Gateway(n) => format!("{n} (the Gateway API Gateway's status.addresses)"),
        }
    }

    /// The addresses the object reports (IPs and hostnames).
    pub fn addresses(&self, object: &serde_json::Value) -> GatewayAddress {
        let mut out = Vec::new();
        let mut add = |ip: Option<&str>, host: Option<&str>| {
            if let Some(ip) = ip.and_then(|ip| ip.parse().ok()) {
                out.push(Address::Ip(ip));
            }
            if let Some(h) = host.and_then(|h| Hostname::parse(h, false).ok()) {
                out.push(Address::Hostname(h));
            }
        };
        match self {
            AddressObject::Service(_) => {
                for i in object["status"]["loadBalancer"]["ingress"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    add(i["ip"].as_str(), i["hostname"].as_str());
                }
            }
            AddressObject::Gateway(_) => {
                for a in object["status"]["addresses"].as_array().into_iter().flatten() {
                    let value = a["value"].as_str();
                    // `type` defaults to IPAddress; other types name no address of ours.
                    match a["type"].as_str().unwrap_or("IPAddress") {
                        "IPAddress" => add(value, None),
                        "Hostname" => add(None, value),
                        _ => {}
                    }
                }
            }
        }
        GatewayAddress::new(out)
    }
}

/// In a cluster: the address the gateway Service or Gateway reports.
pub struct ClusterAddress {
    api: kube::Api<kube::api::DynamicObject>,
    object: AddressObject,
    /// The address as the watch last saw it (read without a request).
    watched: Option<tokio::sync::watch::Receiver<Option<GatewayAddress>>>,
}

impl ClusterAddress {
    /// `watched`: the value `watch_address` keeps; until it has one, the object is read.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        object: AddressObject,
        watched: Option<tokio::sync::watch::Receiver<Option<GatewayAddress>>>,
    ) -> Self {
        ClusterAddress {
            api: object.api(client, namespace),
            object,
            watched,
        }
    }
}

#[async_trait]
impl AddressSource for ClusterAddress {
    async fn current(&self) -> Result<GatewayAddress, AddressError> {
        if let Some(seen) = self.watched.as_ref().and_then(|w| w.borrow().clone()) {
            return Ok(seen);
        }
        let object = self
            .api
            .get(self.object.name())
            .await
            .map_err(|e| AddressError::Service {
                service: self.object.what(),
                detail: e.to_string(),
            })?;
        Ok(self
            .object
            .addresses(&serde_json::to_value(&object).unwrap_or_default()))
    }
}

/// Watches the gateway Service (or Gateway) and publishes its load balancer addresses
/// in `changes` whenever they change: DNS follows without waiting for a timer, and a
/// pass reads the address from memory.
pub async fn watch_address(
    client: kube::Client,
    namespace: String,
    object: AddressObject,
    changes: tokio::sync::watch::Sender<Option<GatewayAddress>>,
) {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let api = object.api(client, &namespace);
    let name = object.name().to_string();
    let what = object.what();
    let mut last: Option<GatewayAddress> = None;
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api, config).boxed();
    while let Some(event) = stream.next().await {
        let seen = match event {
            Ok(watcher::Event::Apply(s)) | Ok(watcher::Event::InitApply(s)) => s,
            Ok(watcher::Event::Delete(_)) => {
                // Gone: a pass reads it again (and reports it missing).
                last = None;
                changes.send_replace(None);
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(service = %what, error = %e, "watching the gateway's address failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        if seen.metadata.name.as_deref() != Some(name.as_str()) {
            continue;
        }
        let now = object.addresses(&serde_json::to_value(&seen).unwrap_or_default());
        if last.as_ref() != Some(&now) {
            if last.is_some() {
                tracing::info!(service = %what, address = ?now.addresses().iter().map(|a| a.to_string()).collect::<Vec<_>>(), "load balancer address changed");
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
