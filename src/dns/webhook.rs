//! The external-dns webhook provider protocol, so that every external-dns webhook
//! provider (and the DNS services behind them) works with tlsward: negotiation on
//! `GET /`, `GET /records`, `POST /adjustendpoints`, `POST /records`, all in the media
//! type `application/external.dns.webhook+json;version=1`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::registry::{Change, ZoneDiff};
use super::{DnsError, DnsProvider};
use crate::config::WebhookSpec;
use crate::model::{RecordSet, RecordType};

pub const MEDIA_TYPE: &str = "application/external.dns.webhook+json;version=1";

/// An external-dns endpoint, as the protocol spells it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub dns_name: String,
    #[serde(default)]
    pub targets: Vec<String>,
    pub record_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub set_identifier: String,
    #[serde(default, rename = "recordTTL")]
    pub record_ttl: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The body of `POST /records`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    #[serde(rename = "Create", default)]
    pub create: Vec<Endpoint>,
    #[serde(rename = "UpdateOld", default)]
    pub update_old: Vec<Endpoint>,
    #[serde(rename = "UpdateNew", default)]
    pub update_new: Vec<Endpoint>,
    #[serde(rename = "Delete", default)]
    pub delete: Vec<Endpoint>,
}

fn kind_of(record_type: &str) -> RecordType {
    match record_type {
        "A" => RecordType::A,
        "AAAA" => RecordType::AAAA,
        "CNAME" => RecordType::CNAME,
        "TXT" => RecordType::TXT,
        _ => RecordType::Other,
    }
}

pub fn endpoint(set: &RecordSet) -> Endpoint {
    Endpoint {
        dns_name: set.name.clone(),
        targets: set.values.clone(),
        record_type: set.kind.as_str().to_string(),
        set_identifier: String::new(),
        record_ttl: set.ttl,
        labels: BTreeMap::new(),
    }
}

fn record_set(e: &Endpoint) -> RecordSet {
    let kind = kind_of(&e.record_type);
    let values = e
        .targets
        .iter()
        .map(|t| match kind {
            // external-dns keeps TXT targets quoted; tlsward compares the text itself.
            RecordType::TXT => t
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(t)
                .to_string(),
            RecordType::CNAME => t.trim_end_matches('.').to_ascii_lowercase(),
            RecordType::Other => format!("{} {t}", e.record_type),
            _ => t.clone(),
        })
        .collect();
    RecordSet::new(
        e.dns_name.trim_end_matches('.').to_ascii_lowercase(),
        kind,
        e.record_ttl,
        values,
    )
}

pub struct WebhookProvider {
    name: String,
    url: String,
    http: reqwest::Client,
    /// What `records` saw last, to send `UpdateOld` beside `UpdateNew`.
    seen: Mutex<BTreeMap<(String, RecordType), Endpoint>>,
}

impl WebhookProvider {
    pub fn new(name: &str, spec: &WebhookSpec, deadline: std::time::Duration) -> Result<Self, DnsError> {
        let http = super::http_client(name, deadline)?;
        Ok(WebhookProvider {
            name: name.to_string(),
            url: spec.url.trim_end_matches('/').to_string(),
            http,
            seen: Mutex::new(BTreeMap::new()),
        })
    }

    fn unreachable(&self, e: reqwest::Error) -> DnsError {
        super::http_unreachable(&self.name, &self.url, e)
    }

    fn rejected(&self, detail: String) -> DnsError {
        DnsError::Rejected {
            provider: self.name.clone(),
            server: self.url.clone(),
            detail,
        }
    }

    async fn call(&self, request: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response, DnsError> {
        let response = request
            .header(reqwest::header::ACCEPT, MEDIA_TYPE)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(self.rejected(format!("{what}: HTTP {status}: {}", body.trim())));
        }
        Ok(response)
    }

    /// `GET /`: the webhook must answer in the protocol's media type.
    async fn negotiate(&self) -> Result<(), DnsError> {
        let response = self
            .call(self.http.get(format!("{}/", self.url)), "negotiation (GET /)")
            .await?;
        let media = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .replace(' ', "");
        if media != MEDIA_TYPE {
            return Err(self.rejected(format!(
                "negotiation (GET /): the webhook answered `{media}`, not `{MEDIA_TYPE}`"
            )));
        }
        Ok(())
    }

    fn post<T: Serialize>(&self, path: &str, body: &T) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.url))
            .header(reqwest::header::CONTENT_TYPE, MEDIA_TYPE)
            .body(serde_json::to_vec(body).expect("endpoints are JSON"))
    }
}

#[async_trait]
impl DnsProvider for WebhookProvider {
    async fn records(&self) -> Result<Vec<RecordSet>, DnsError> {
        self.negotiate().await?;
        let response = self
            .call(self.http.get(format!("{}/records", self.url)), "GET /records")
            .await?;
        let endpoints: Vec<Endpoint> = response.json().await.map_err(|e| self.unreachable(e))?;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.clear();
        let sets = endpoints
            .iter()
            .map(|e| {
                let set = record_set(e);
                seen.insert((set.name.clone(), set.kind), e.clone());
                set
            })
            .collect();
        Ok(sets)
    }

    async fn apply(&self, diff: &ZoneDiff) -> Result<(), DnsError> {
        if diff.changes.is_empty() {
            return Ok(());
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut changes = Changes::default();
        let mut wanted = Vec::new();
        for change in &diff.changes {
            match change {
                Change::Delete(set) => changes.delete.push(
                    seen.get(&(set.name.clone(), set.kind))
                        .cloned()
                        .unwrap_or_else(|| endpoint(set)),
                ),
                Change::Upsert(set) => wanted.push(set),
            }
        }
        // The webhook may normalise endpoints (its provider's rules): send what it adjusts.
        let proposed: Vec<Endpoint> = wanted.iter().map(|s| endpoint(s)).collect();
        let adjusted: Vec<Endpoint> = self
            .call(self.post("/adjustendpoints", &proposed), "POST /adjustendpoints")
            .await?
            .json()
            .await
            .map_err(|e| self.unreachable(e))?;
        if adjusted.len() != proposed.len() {
            return Err(self.rejected(format!(
                "POST /adjustendpoints answered {} endpoints for {}: refusing to guess which is which",
                adjusted.len(),
                proposed.len()
            )));
        }
        for (set, e) in wanted.iter().zip(adjusted) {
            match seen.get(&(set.name.clone(), set.kind)) {
                Some(old) => {
                    changes.update_old.push(old.clone());
                    changes.update_new.push(e);
                }
                None => changes.create.push(e),
            }
        }
        self.call(self.post("/records", &changes), "POST /records")
            .await
            .map(|_| ())
    }
}
