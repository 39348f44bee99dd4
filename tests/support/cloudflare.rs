//! An in-test Cloudflare API v4 server for the DNS records endpoints tlsward uses, over
//! real HTTP on loopback. No independent Cloudflare emulator exists on the registries,
//! so this one follows Cloudflare's documentation: bearer-token auth, the
//! `{success, errors: [{code, message}], messages, result, result_info}` envelope,
//! page/per_page pagination, and `POST /zones/<id>/dns_records/batch` run as one
//! transaction (deletes, patches, puts, posts in that order; any failure applies
//! nothing). Where it is simpler than Cloudflare: pages hold at most 100 records
//! (Cloudflare allows far more; this makes pagination happen), only the record types
//! the tests use are checked, and error codes are the documented ones where known.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub const TOKEN: &str = "tlsward-test-cloudflare-token";
pub const ZONE_ID: &str = "023e105f4ecef8ad9ca31a8372d0c353";
const MAX_PER_PAGE: usize = 100;

#[derive(Clone, Debug)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub content: String,
    pub ttl: u64,
    pub proxied: bool,
    pub priority: Option<u64>,
}

impl Record {
    fn json(&self) -> Value {
        let mut v = json!({
            "id": self.id, "zone_id": ZONE_ID, "zone_name": "foocorp.example", "name": self.name,
            "type": self.kind, "content": self.content, "ttl": self.ttl,
            "proxiable": matches!(self.kind.as_str(), "A" | "AAAA" | "CNAME"), "proxied": self.proxied,
        });
        if let Some(p) = self.priority {
            v["priority"] = json!(p);
        }
        v
    }
}

#[derive(Default)]
pub struct Zone {
    pub records: BTreeMap<String, Record>,
    next_id: u64,
    /// Requests served: `GET page N` and `batch <ops>` lines.
    pub log: Vec<String>,
}

impl Zone {
    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("{:032x}", 0xcf00_0000_0000u64 + self.next_id)
    }
}

type Shared = Arc<Mutex<Zone>>;

pub struct Cloudflare {
    pub port: u16,
    pub zone: Shared,
    _served: super::Served,
}

fn envelope(status: StatusCode, result: Value, info: Option<Value>) -> Response {
    let mut body = json!({"success": true, "errors": [], "messages": [], "result": result});
    if let Some(i) = info {
        body["result_info"] = i;
    }
    json_response(status, body)
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

fn failure(status: StatusCode, errors: &[(u64, &str)]) -> Response {
    let errors: Vec<Value> = errors.iter().map(|(c, m)| json!({"code": c, "message": m})).collect();
    json_response(
        status,
        json!({"success": false, "errors": errors, "messages": [], "result": null}),
    )
}

/// The refusal of a request whose token or zone this server does not know.
fn refused(headers: &HeaderMap, zone: &str) -> Option<Response> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if token != Some(TOKEN) {
        return Some(failure(StatusCode::FORBIDDEN, &[(10000, "Authentication error")]));
    }
    if zone != ZONE_ID {
        return Some(failure(
            StatusCode::BAD_REQUEST,
            &[
                (
                    7003,
                    "Could not route to /zones/<id>/dns_records, perhaps your object identifier is invalid?",
                ),
                (7000, "No route for that URI"),
            ],
        ));
    }
    None
}

async fn list(
    State(z): State<Shared>,
    Path(zone): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = refused(&headers, &zone) {
        return r;
    }
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
    let per_page: usize = q
        .get("per_page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(100)
        .clamp(1, MAX_PER_PAGE);
    let mut zone = z.lock().unwrap();
    zone.log.push(format!("GET page {page}"));
    let all: Vec<&Record> = zone.records.values().collect();
    let total_pages = all.len().div_ceil(per_page).max(1);
    let items: Vec<Value> = all
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|r| r.json())
        .collect();
    let info = json!({"page": page, "per_page": per_page, "count": items.len(), "total_count": all.len(), "total_pages": total_pages});
    envelope(StatusCode::OK, Value::Array(items), Some(info))
}

/// One posted record checked as Cloudflare checks it.
fn check_post(records: &BTreeMap<String, Record>, p: &Value) -> Result<Record, (u64, String)> {
    let name = p["name"]
        .as_str()
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let kind = p["type"].as_str().unwrap_or_default().to_string();
    let content = p["content"].as_str().unwrap_or_default().to_string();
    let ttl = p["ttl"].as_u64().unwrap_or(1);
    let proxied = p["proxied"].as_bool().unwrap_or(false);
    if !(name == "foocorp.example" || name.ends_with(".foocorp.example")) {
        return Err((
            1004,
            format!("DNS Validation Error: {name} is not in zone foocorp.example"),
        ));
    }
    if !(ttl == 1 || (60..=86400).contains(&ttl)) {
        return Err((
            9021,
            "Invalid TTL. Must be between 60 and 86400 seconds, or 1 for Automatic.".into(),
        ));
    }
    match kind.as_str() {
        "A" if content.parse::<std::net::Ipv4Addr>().is_err() => {
            return Err((9005, "Content for A record must be a valid IPv4 address.".into()));
        }
        "AAAA" if content.parse::<std::net::Ipv6Addr>().is_err() => {
            return Err((9006, "Content for AAAA record must be a valid IPv6 address.".into()));
        }
        "TXT" | "MX" if proxied => return Err((9004, "This record type cannot be proxied.".into())),
        "A" | "AAAA" | "CNAME" | "TXT" | "MX" => {}
        other => return Err((9000, format!("DNS record type `{other}` is not supported here"))),
    }
    let same_name: Vec<&Record> = records.values().filter(|r| r.name == name).collect();
    if same_name.iter().any(|r| r.kind == kind && r.content == content) {
        return Err((81058, "An identical record already exists.".into()));
    }
    let address = |k: &str| matches!(k, "A" | "AAAA" | "CNAME");
    if address(&kind)
        && same_name
            .iter()
            .any(|r| address(&r.kind) && (r.kind == "CNAME" || kind == "CNAME"))
    {
        return Err((
            81053,
            "An A, AAAA, or CNAME record with that host already exists.".into(),
        ));
    }
    if kind == "CNAME" && !same_name.is_empty() && same_name.iter().any(|r| r.kind != "CNAME") {
        return Err((
            81053,
            "An A, AAAA, or CNAME record with that host already exists.".into(),
        ));
    }
    Ok(Record {
        id: String::new(),
        name,
        kind,
        content,
        ttl: if proxied { 1 } else { ttl },
        proxied,
        priority: p["priority"].as_u64(),
    })
}

async fn batch(State(z): State<Shared>, Path(zone): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = refused(&headers, &zone) {
        return r;
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return failure(StatusCode::BAD_REQUEST, &[(9207, "Request body is invalid.")]);
    };
    let ops = |k: &str| req[k].as_array().cloned().unwrap_or_default();
    let (deletes, patches, puts, posts) = (ops("deletes"), ops("patches"), ops("puts"), ops("posts"));
    let mut shared = z.lock().unwrap();
    shared.log.push(format!(
        "batch {}",
        deletes.len() + patches.len() + puts.len() + posts.len()
    ));
    if !patches.is_empty() || !puts.is_empty() {
        return failure(
            StatusCode::BAD_REQUEST,
            &[(9000, "patches and puts are not implemented by this test server")],
        );
    }
    // The transaction: work on a copy, keep it only if every operation succeeds.
    let mut next = shared.records.clone();
    let mut deleted = Vec::new();
    for d in &deletes {
        let id = d["id"].as_str().unwrap_or_default();
        match next.remove(id) {
            Some(r) => deleted.push(r.json()),
            None => return failure(StatusCode::BAD_REQUEST, &[(81044, "Record does not exist.")]),
        }
    }
    let mut created = Vec::new();
    for p in &posts {
        match check_post(&next, p) {
            Ok(mut r) => {
                r.id = shared.id();
                created.push(r.json());
                next.insert(r.id.clone(), r);
            }
            Err((code, message)) => return failure(StatusCode::BAD_REQUEST, &[(code, &message)]),
        }
    }
    shared.records = next;
    envelope(
        StatusCode::OK,
        json!({"deletes": deleted, "patches": [], "puts": [], "posts": created}),
        None,
    )
}

impl Cloudflare {
    /// Starts the server with `seed` records (name, type, content) at TTL 300.
    pub fn start(seed: &[(&str, &str, &str)]) -> Cloudflare {
        let mut zone = Zone::default();
        for (name, kind, content) in seed {
            let (priority, content) = match (*kind, content.split_once(' ')) {
                ("MX", Some((p, c))) => (p.parse().ok(), c.trim_end_matches('.').to_string()),
                _ => (None, content.to_string()),
            };
            let id = zone.id();
            zone.records.insert(
                id.clone(),
                Record {
                    id,
                    name: name.to_string(),
                    kind: kind.to_string(),
                    content,
                    ttl: 300,
                    proxied: false,
                    priority,
                },
            );
        }
        let zone: Shared = Arc::new(Mutex::new(zone));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .route("/client/v4/zones/{zone}/dns_records", get(list))
            .route("/client/v4/zones/{zone}/dns_records/batch", post(batch))
            .with_state(zone.clone());
        let served = super::Served::start(listener, app);
        Cloudflare {
            port,
            zone,
            _served: served,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/client/v4", self.port)
    }

    /// The records at `name` of `kind`.
    pub fn records(&self, name: &str, kind: &str) -> Vec<Record> {
        let zone = self.zone.lock().unwrap();
        zone.records
            .values()
            .filter(|r| r.name == name && r.kind == kind)
            .cloned()
            .collect()
    }

    /// Answers at `name`/`kind` as `dig +short` prints them, sorted.
    pub fn lookup(&self, name: &str, kind: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .records(name, kind)
            .iter()
            .map(|r| match (kind, r.priority) {
                ("CNAME", _) => format!("{}.", r.content),
                ("MX", Some(p)) => format!("{p} {}.", r.content),
                _ => r.content.clone(),
            })
            .collect();
        out.sort();
        out
    }

    /// Lines of the request log containing `what`.
    pub fn requests(&self, what: &str) -> Vec<String> {
        let zone = self.zone.lock().unwrap();
        zone.log.iter().filter(|l| l.contains(what)).cloned().collect()
    }
}
