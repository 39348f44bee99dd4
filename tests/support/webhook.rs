//! A small external-dns webhook provider for tests: the protocol's four endpoints over
//! real HTTP on loopback, records kept in memory. It checks the media type the way a
//! real webhook provider does, and applies a whole change set or nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tlsward::dns::webhook::{Changes, Endpoint, MEDIA_TYPE};

type Records = Arc<Mutex<BTreeMap<(String, String), Endpoint>>>;

pub struct Webhook {
    pub port: u16,
    pub records: Records,
    _served: super::Served,
}

fn json(body: impl serde::Serialize) -> Response {
    ([(header::CONTENT_TYPE, MEDIA_TYPE)], serde_json::to_vec(&body).unwrap()).into_response()
}

fn right_media(headers: &HeaderMap, name: header::HeaderName) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.replace(' ', "") == MEDIA_TYPE)
}

async fn negotiate(headers: HeaderMap) -> Response {
    if !right_media(&headers, header::ACCEPT) {
        return (StatusCode::NOT_ACCEPTABLE, "unsupported media type").into_response();
    }
    json(serde_json::json!({"include": ["foocorp.example"]}))
}

async fn list(State(r): State<Records>) -> Response {
    json(r.lock().unwrap().values().cloned().collect::<Vec<_>>())
}

async fn adjust(headers: HeaderMap, body: Bytes) -> Response {
    if !right_media(&headers, header::CONTENT_TYPE) {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "wrong content type").into_response();
    }
    let mut endpoints: Vec<Endpoint> = serde_json::from_slice(&body).unwrap();
    for e in &mut endpoints {
        // Like many providers, this one keeps TXT targets quoted.
        if e.record_type == "TXT" {
            e.targets = e.targets.iter().map(|t| format!("\"{t}\"")).collect();
        }
    }
    json(endpoints)
}

async fn apply(State(r): State<Records>, headers: HeaderMap, body: Bytes) -> Response {
    if !right_media(&headers, header::CONTENT_TYPE) {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, "wrong content type").into_response();
    }
    let changes: Changes = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut records = r.lock().unwrap();
    let mut next = records.clone();
    let key = |e: &Endpoint| (e.dns_name.clone(), e.record_type.clone());
    for e in changes.delete.iter().chain(&changes.update_old) {
        if next.remove(&key(e)).is_none() {
            return (
                StatusCode::CONFLICT,
                format!("{} {} does not exist", e.dns_name, e.record_type),
            )
                .into_response();
        }
    }
    for e in changes.create.iter().chain(&changes.update_new) {
        if next.insert(key(e), e.clone()).is_some() {
            return (StatusCode::CONFLICT, format!("{} {} exists", e.dns_name, e.record_type)).into_response();
        }
    }
    *records = next;
    StatusCode::NO_CONTENT.into_response()
}

impl Webhook {
    pub fn start(seed: Vec<Endpoint>) -> Webhook {
        Self::start_on(0, seed)
    }

    /// Starts on `port` (0: any free port).
    pub fn start_on(port: u16, seed: Vec<Endpoint>) -> Webhook {
        let records: Records = Arc::new(Mutex::new(
            seed.into_iter()
                .map(|e| ((e.dns_name.clone(), e.record_type.clone()), e))
                .collect(),
        ));
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new()
            .route("/", get(negotiate))
            .route("/records", get(list).post(apply))
            .route("/adjustendpoints", post(adjust))
            .with_state(records.clone());
        let served = super::Served::start(listener, app);
        Webhook {
            port,
            records,
            _served: served,
        }
    }

    /// Targets of `name`/`kind`, formatted as `dig +short` would print them.
    pub fn lookup(&self, name: &str, kind: &str) -> Vec<String> {
        let records = self.records.lock().unwrap();
        let mut out: Vec<String> = records
            .get(&(name.to_string(), kind.to_string()))
            .map(|e| {
                e.targets
                    .iter()
                    .map(|t| match kind {
                        "CNAME" => format!("{t}."),
                        "TXT" if !t.starts_with('"') => format!("\"{t}\""),
                        _ => t.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}
