//! The Cloudflare provider: API v4 with a scoped API token (`Authorization: Bearer`).
//! A pass reads the zone's records page by page and writes one
//! `POST /zones/<id>/dns_records/batch`, which Cloudflare runs in one database
//! transaction (deletes before posts, so a name can switch type). Past 200 operations
//! (the Free plan's batch limit) the batch is split between names, never inside one:
//! each part is atomic, the parts are not. Cloudflare keeps one record per value, so a
//! changed record set is its stale records deleted and its missing values posted, by
//! the ids read at the start of the pass (a batch naming a record that has gone fails
//! whole); ownership is otherwise checked against that read, as with PowerDNS.
//! Records of the sites listed in `proxied` are proxied through Cloudflare; all others
//! are DNS-only, and a record whose proxy status differs from that is rewritten.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use super::registry::{Change, ZoneDiff, host_of_record};
use super::{DnsError, DnsProvider};
use crate::config::CloudflareSpec;
use crate::model::{RecordSet, RecordType};

/// Operations in one batch request (the Free plan's limit; paid plans allow more).
pub const BATCH_LIMIT: usize = 200;
/// Records asked for per page when reading the zone.
const PER_PAGE: u32 = 1_000;

pub struct CloudflareProvider {
    name: String,
    base: String,
    zone_id: String,
    token: String,
    /// Hosts whose address records Cloudflare proxies.
    proxied: BTreeSet<String>,
    ttl: u32,
    http: reqwest::Client,
    /// The records of the last read, by the name and type tlsward sees.
    seen: Mutex<BTreeMap<(String, RecordType), Vec<Record>>>,
}

#[derive(Clone, Debug, Deserialize)]
struct Record {
    id: String,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    content: String,
    #[serde(default = "auto_ttl")]
    ttl: u32,
    #[serde(default)]
    proxied: bool,
}

fn auto_ttl() -> u32 {
    1
}

/// Cloudflare's answer around every result: `success`, and `errors` as code/message.
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<ApiMessage>,
    #[serde(default)]
    result: Value,
    #[serde(default)]
    result_info: Option<ResultInfo>,
}

#[derive(Deserialize)]
struct ApiMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct ResultInfo {
    #[serde(default)]
    total_pages: u32,
}

fn proxiable(kind: RecordType) -> bool {
    matches!(kind, RecordType::A | RecordType::AAAA | RecordType::CNAME)
}

impl CloudflareProvider {
    pub fn new(
        name: &str,
        spec: &CloudflareSpec,
        token: &str,
        proxied: BTreeSet<String>,
        ttl: u32,
        deadline: std::time::Duration,
    ) -> Result<Self, DnsError> {
        Ok(CloudflareProvider {
            name: name.to_string(),
            base: spec.endpoint_url.trim_end_matches('/').to_string(),
            zone_id: spec.zone_id.clone(),
            token: token.trim().to_string(),
            proxied,
            ttl,
            http: super::http_client(name, deadline)?,
            seen: Mutex::new(BTreeMap::new()),
        })
    }

    fn server(&self) -> String {
        format!("Cloudflare zone {} at {}", self.zone_id, self.base)
    }

    fn records_url(&self) -> String {
        format!("{}/zones/{}/dns_records", self.base, self.zone_id)
    }

    /// Whether records at `name` of `kind` should be proxied.
    fn wants_proxy(&self, name: &str, kind: RecordType) -> bool {
        proxiable(kind) && self.proxied.contains(&host_of_record(name))
    }

    /// Sends a request and unwraps Cloudflare's envelope, turning a failure into an
    /// error that carries the status and every code/message pair.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Envelope, DnsError> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| super::http_unreachable(&self.name, &self.server(), e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| super::http_unreachable(&self.name, &self.server(), e))?;
        let errors = match serde_json::from_slice::<Envelope>(&body) {
            Ok(e) if status.is_success() && e.success => return Ok(e),
            Ok(e) => e.errors,
            Err(_) => Vec::new(),
        };
        let said = if errors.is_empty() {
            String::from_utf8_lossy(&body).chars().take(200).collect()
        } else {
            errors
                .iter()
                .map(|m| format!("code {}: {}", m.code, m.message))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let codes: Vec<i64> = errors.iter().map(|m| m.code).collect();
        let detail = match status.as_u16() {
            401 | 403 => format!("HTTP {status}: the API token was refused ({said})"),
            404 => format!("HTTP {status}: no such zone for this token: check cloudflare.zone_id ({said})"),
            429 => format!("HTTP {status}: rate limited ({said})"),
            _ if codes.iter().any(|c| [7000, 7003, 1001].contains(c)) => {
                format!("HTTP {status}: no such zone for this token: check cloudflare.zone_id ({said})")
            }
            _ => format!("HTTP {status}: {said}"),
        };
        Err(DnsError::Rejected {
            provider: self.name.clone(),
            server: self.server(),
            detail,
        })
    }

    fn malformed(&self, what: &str, e: impl std::fmt::Display) -> DnsError {
        DnsError::Rejected {
            provider: self.name.clone(),
            server: self.server(),
            detail: format!("malformed {what}: {e}"),
        }
    }

    /// A record as the API takes it.
    fn post(&self, name: &str, kind: RecordType, value: &str, ttl: u32) -> Value {
        let content = match kind {
            RecordType::CNAME => value.to_string(),
            _ => super::content(kind, value),
        };
        let mut record = json!({"name": name, "type": kind.as_str(), "content": content, "ttl": ttl});
        if proxiable(kind) {
            let proxied = self.wants_proxy(name, kind);
            record["proxied"] = json!(proxied);
            if proxied {
                record["ttl"] = json!(1);
            }
        }
        record
    }

    /// The deletes and posts that turn the records read at `set`'s name into `set`.
    fn ops(&self, change: &Change, ops: &mut (Vec<Value>, Vec<Value>)) -> Result<(), DnsError> {
        let set = change.record();
        let existing = self
            .seen
            .lock()
            .expect("seen lock")
            .get(&(set.name.clone(), set.kind))
            .cloned()
            .unwrap_or_default();
        match change {
            Change::Delete(_) => {
                if existing.is_empty() {
                    return Err(DnsError::Rejected {
                        provider: self.name.clone(),
                        server: self.server(),
                        detail: format!(
                            "{} {} is not in the records read this pass; nothing deleted",
                            set.name,
                            set.kind.as_str()
                        ),
                    });
                }
                ops.0.extend(existing.iter().map(|r| json!({"id": r.id})));
            }
            Change::Upsert(_) => {
                let proxied = self.wants_proxy(&set.name, set.kind);
                let mut kept = BTreeSet::new();
                for r in &existing {
                    let value = super::value(set.kind, &r.content);
                    let right = set.values.contains(&value)
                        && r.proxied == proxied
                        && (proxied || r.ttl == set.ttl)
                        && kept.insert(value);
                    if !right {
                        ops.0.push(json!({"id": r.id}));
                    }
                }
                for v in set.values.iter().filter(|v| !kept.contains(*v)) {
                    ops.1.push(self.post(&set.name, set.kind, v, set.ttl));
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl DnsProvider for CloudflareProvider {
    async fn records(&self) -> Result<Vec<RecordSet>, DnsError> {
        let mut records: Vec<Record> = Vec::new();
        let mut page = 1;
        loop {
            let envelope = self
                .call(
                    self.http
                        .get(format!("{}?page={page}&per_page={PER_PAGE}", self.records_url())),
                )
                .await?;
            let batch: Vec<Record> =
                serde_json::from_value(envelope.result).map_err(|e| self.malformed("record list", e))?;
            let pages = envelope.result_info.map_or(1, |i| i.total_pages);
            let empty = batch.is_empty();
            records.extend(batch);
            if page >= pages || empty {
                break;
            }
            page += 1;
        }
        let mut seen: BTreeMap<(String, RecordType), Vec<Record>> = BTreeMap::new();
        for r in records {
            let name = r.name.trim_end_matches('.').to_ascii_lowercase();
            seen.entry((name, super::record_type(&r.kind))).or_default().push(r);
        }
        let sets = seen
            .iter()
            .map(|((name, kind), records)| {
                let values = records
                    .iter()
                    .map(|r| match kind {
                        RecordType::Other => format!("{} {}", r.kind, r.content),
                        _ => super::value(*kind, &r.content),
                    })
                    .collect();
                // A record whose proxy status is not what the config says shows a TTL
                // of 0, which no desired record has, so that the diff rewrites it.
                let proxied = self.wants_proxy(name, *kind);
                let ttls: BTreeSet<u32> = records
                    .iter()
                    .map(|r| match (r.proxied == proxied, r.proxied) {
                        (false, _) => 0,
                        (true, true) => self.ttl,
                        (true, false) => r.ttl,
                    })
                    .collect();
                let ttl = if ttls.len() == 1 {
                    ttls.into_iter().next().unwrap_or(0)
                } else {
                    0
                };
                RecordSet::new(name.clone(), *kind, ttl, values)
            })
            .collect();
        *self.seen.lock().expect("seen lock") = seen;
        Ok(sets)
    }

    async fn apply(&self, diff: &ZoneDiff) -> Result<(), DnsError> {
        let mut units: BTreeMap<String, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
        for change in &diff.changes {
            self.ops(change, units.entry(host_of_record(&change.record().name)).or_default())?;
        }
        let mut batches: Vec<(Vec<Value>, Vec<Value>)> = Vec::new();
        for (deletes, posts) in units.into_values().filter(|(d, p)| !d.is_empty() || !p.is_empty()) {
            let size = deletes.len() + posts.len();
            match batches.last_mut() {
                Some(b) if b.0.len() + b.1.len() + size <= BATCH_LIMIT => {
                    b.0.extend(deletes);
                    b.1.extend(posts);
                }
                _ => batches.push((deletes, posts)),
            }
        }
        for (deletes, posts) in batches {
            self.call(
                self.http
                    .post(format!("{}/batch", self.records_url()))
                    .json(&json!({"deletes": deletes, "posts": posts})),
            )
            .await?;
        }
        Ok(())
    }
}
