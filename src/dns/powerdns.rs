//! The PowerDNS provider: its HTTP API (`/api/v1/servers/<id>/zones/<zone>`), one
//! PATCH of record sets per zone per pass. The API has no prerequisites, so ownership
//! is checked against what was read at the start of the pass, not atomically.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::registry::{Change, ZoneDiff};
use super::{DnsError, DnsProvider};
use crate::config::PowerDnsSpec;
use crate::model::{RecordSet, RecordType};

pub struct PowerDnsProvider {
    name: String,
    zone_url: String,
    base: String,
    zone: String,
    api_key: String,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Zone {
    rrsets: Vec<RrSet>,
}

#[derive(Deserialize, Serialize)]
struct RrSet {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    ttl: u32,
    records: Vec<RrRecord>,
}

#[derive(Deserialize, Serialize)]
struct RrRecord {
    content: String,
    #[serde(default)]
    disabled: bool,
}

impl PowerDnsProvider {
    pub fn new(
        name: &str,
        spec: &PowerDnsSpec,
        api_key: &str,
        deadline: std::time::Duration,
    ) -> Result<Self, DnsError> {
        let zone = spec.zone.trim_end_matches('.').to_ascii_lowercase();
        let base = spec.url.trim_end_matches('/').to_string();
        let http = super::http_client(name, deadline)?;
        Ok(PowerDnsProvider {
            name: name.to_string(),
            zone_url: format!("{base}/api/v1/servers/{}/zones/{zone}.", spec.server_id),
            base,
            zone,
            api_key: api_key.trim().to_string(),
            http,
        })
    }

    fn unreachable(&self, e: reqwest::Error) -> DnsError {
        super::http_unreachable(&self.name, &self.base, e)
    }

    /// Turns a non-2xx answer into an error that says what the status means.
    async fn check(&self, response: reqwest::Response) -> Result<reqwest::Response, DnsError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        let said = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        let detail = match status.as_u16() {
            401 | 403 => format!("HTTP {status}: the API key was refused ({said})"),
            404 => format!("HTTP {status}: no zone {}. on this server ({said})", self.zone),
            _ => format!("HTTP {status}: {said}"),
        };
        Err(DnsError::Rejected {
            provider: self.name.clone(),
            server: self.base.clone(),
            detail,
        })
    }
}

#[async_trait]
impl DnsProvider for PowerDnsProvider {
    async fn records(&self) -> Result<Vec<RecordSet>, DnsError> {
        let response = self
            .http
            .get(&self.zone_url)
            .header("X-API-Key", &self.api_key)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let zone: Zone = self
            .check(response)
            .await?
            .json()
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut sets: BTreeMap<(String, RecordType), (u32, Vec<String>)> = BTreeMap::new();
        for rr in zone.rrsets {
            let name = rr.name.trim_end_matches('.').to_ascii_lowercase();
            let kind = super::record_type(&rr.kind);
            let e = sets.entry((name, kind)).or_insert((rr.ttl, Vec::new()));
            for r in rr.records.iter().filter(|r| !r.disabled) {
                e.1.push(match kind {
                    RecordType::Other => format!("{} {}", rr.kind, r.content),
                    _ => super::value(kind, &r.content),
                });
            }
        }
        Ok(sets
            .into_iter()
            .map(|((n, k), (ttl, v))| RecordSet::new(n, k, ttl, v))
            .collect())
    }

    async fn apply(&self, diff: &ZoneDiff) -> Result<(), DnsError> {
        if diff.changes.is_empty() {
            return Ok(());
        }
        let rrsets: Vec<serde_json::Value> = diff
            .changes
            .iter()
            .map(|c| match c {
                Change::Upsert(set) => json!({
                    "name": format!("{}.", set.name),
                    "type": set.kind.as_str(),
                    "ttl": set.ttl,
                    "changetype": "REPLACE",
                    "records": set.values.iter().map(|v| json!({"content": super::content(set.kind, v), "disabled": false})).collect::<Vec<_>>(),
                }),
                Change::Delete(set) => json!({
                    "name": format!("{}.", set.name),
                    "type": set.kind.as_str(),
                    "changetype": "DELETE",
                }),
            })
            .collect();
        let response = self
            .http
            .patch(&self.zone_url)
            .header("X-API-Key", &self.api_key)
            .json(&json!({"rrsets": rrsets}))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.check(response).await.map(|_| ())
    }
}
