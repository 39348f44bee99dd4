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
}

#[async_trait]
pub trait AddressSource: Send + Sync {
    async fn current(&self) -> Result<GatewayAddress, AddressError>;
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
        let addresses: Vec<Address> = lookup.iter().map(Address::Ip).collect();
        if addresses.is_empty() {
            return Err(err("no A or AAAA records".into()));
        }
        Ok(GatewayAddress::new(addresses))
    }
}

/// The source a (validated) `gateway.address` describes.
pub fn from_spec(spec: &AddressSpec) -> Result<Box<dyn AddressSource>, AddressError> {
    if let Some(host) = &spec.resolve {
        let resolver = TokioResolver::builder_tokio()
            .and_then(|b| b.build())
            .map_err(|e| AddressError::Resolve {
                host: host.clone(),
                detail: e.to_string(),
            })?;
        return Ok(Box::new(ResolvedAddress {
            host: host.trim_end_matches('.').to_string(),
            resolver,
        }));
    }
    let list = spec.static_.clone().unwrap_or_default();
    let addresses = list
        .iter()
        .map(|entry| match entry.parse() {
            Ok(ip) => Address::Ip(ip),
            Err(_) => Address::Hostname(Hostname::parse(entry, false).expect("validated by check")),
        })
        .collect();
    Ok(Box::new(StaticAddress(GatewayAddress::new(addresses))))
}
