//! A real Route 53 implementation nobody here wrote: moto in server mode on loopback,
//! driven through the same AWS SDK tlsward uses. `Route53Proxy` stands between tlsward
//! and moto to do what moto never does: throttle, and report changes `PENDING` before
//! `INSYNC`, as Route 53 does while a change propagates.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_route53::Client;
use aws_sdk_route53::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_route53::types::{
    AliasTarget, Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};

use super::{Proc, free_port, sh, spawn_logged, wait_for};

/// The environment tlsward runs with against moto: credentials for the SDK's chain to
/// find first (moto takes any), and no instance metadata lookups off this machine.
pub const AWS_ENV: [(&str, &str); 4] = [
    ("AWS_ACCESS_KEY_ID", "AKIDTLSWARDTEST"),
    ("AWS_SECRET_ACCESS_KEY", "tlsward-test-secret"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/dev/null"),
];

pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

pub struct Moto {
    pub port: u16,
    pub client: Client,
    _proc: Proc,
}

impl Moto {
    /// Starts `moto_server` on a free loopback port; `env` adds to its environment
    /// (`INITIAL_NO_AUTH_ACTION_COUNT` turns on its credential checks).
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Moto {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied());
        let proc = spawn_logged(cmd, &dir.join("moto.log"));
        wait_for(Duration::from_secs(30), "moto_server", || {
            let (code, _) = sh(Command::new("curl")
                .args(["-sS", "-f", "-o", "/dev/null"])
                .arg(format!("http://127.0.0.1:{port}/moto-api/")));
            (code == 0).then_some(())
        });
        Moto {
            port,
            client: client(&format!("http://127.0.0.1:{port}")),
            _proc: proc,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a hosted zone and returns its id (without `/hostedzone/`).
    pub fn create_zone(&self, name: &str) -> String {
        rt().block_on(async {
            let out = self
                .client
                .create_hosted_zone()
                .name(name)
                .caller_reference(format!("tlsward-test-{name}"))
                .send()
                .await
                .expect("create hosted zone");
            out.hosted_zone()
                .unwrap()
                .id()
                .trim_start_matches("/hostedzone/")
                .to_string()
        })
    }

    /// Adds record sets (name, type, values) with TTL 300, as another tool would.
    pub fn seed(&self, zone: &str, sets: &[(&str, &str, &[&str])]) {
        let changes = sets
            .iter()
            .map(|(name, kind, values)| {
                let mut set = ResourceRecordSet::builder()
                    .name(*name)
                    .r#type(RrType::from(*kind))
                    .ttl(300);
                for v in *values {
                    set = set.resource_records(ResourceRecord::builder().value(*v).build().unwrap());
                }
                Change::builder()
                    .action(ChangeAction::Create)
                    .resource_record_set(set.build().unwrap())
                    .build()
                    .unwrap()
            })
            .collect();
        self.change(zone, changes);
    }

    /// Adds an alias A record, as another tool would.
    pub fn seed_alias(&self, zone: &str, name: &str, target_zone: &str, target: &str) {
        let set = ResourceRecordSet::builder()
            .name(name)
            .r#type(RrType::A)
            .alias_target(
                AliasTarget::builder()
                    .hosted_zone_id(target_zone)
                    .dns_name(target)
                    .evaluate_target_health(false)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let change = Change::builder()
            .action(ChangeAction::Create)
            .resource_record_set(set)
            .build()
            .unwrap();
        self.change(zone, vec![change]);
    }

    fn change(&self, zone: &str, changes: Vec<Change>) {
        rt().block_on(async {
            self.client
                .change_resource_record_sets()
                .hosted_zone_id(zone)
                .change_batch(ChangeBatch::builder().set_changes(Some(changes)).build().unwrap())
                .send()
                .await
                .expect("change resource record sets")
        });
    }

    /// Every record set of the zone, through paginated reads.
    pub fn sets(&self, zone: &str) -> Vec<ResourceRecordSet> {
        rt().block_on(async {
            let mut all = Vec::new();
            let mut next: Option<(String, RrType)> = None;
            loop {
                let mut req = self.client.list_resource_record_sets().hosted_zone_id(zone);
                if let Some((n, t)) = next.take() {
                    req = req.start_record_name(n).start_record_type(t);
                }
                let page = req.send().await.expect("list resource record sets");
                all.extend(page.resource_record_sets().iter().cloned());
                match (page.is_truncated(), page.next_record_name(), page.next_record_type()) {
                    (true, Some(n), Some(t)) => next = Some((n.to_string(), t.clone())),
                    _ => break,
                }
            }
            all
        })
    }

    /// Answers at `name`/`kind` as `dig +short` prints them, sorted; an alias record
    /// as `ALIAS <zone> <target>`.
    pub fn lookup(&self, zone: &str, name: &str, kind: &str) -> Vec<String> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let mut out: Vec<String> = self
            .sets(zone)
            .iter()
            .filter(|s| s.name().replace("\\052", "*") == fqdn && s.r#type().as_str() == kind)
            .flat_map(|s| match s.alias_target() {
                Some(a) => vec![format!("ALIAS {} {}", a.hosted_zone_id(), a.dns_name())],
                None => s.resource_records().iter().map(|r| r.value().to_string()).collect(),
            })
            .collect();
        out.sort();
        out
    }
}

/// An SDK client for moto with fixed test credentials.
pub fn client(url: &str) -> Client {
    let config = aws_sdk_route53::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new(AWS_ENV[0].1, AWS_ENV[1].1, None, None, "test"))
        .build();
    Client::from_conf(config)
}

/// What the proxy does to the requests it forwards.
#[derive(Default)]
pub struct Faults {
    /// Answer this many `ChangeResourceRecordSets` calls with `Throttling` first.
    pub throttle_changes: AtomicUsize,
    /// Report changes `PENDING`, and answer this many `GetChange` calls `PENDING`.
    pub pending_reads: AtomicUsize,
}

/// An HTTP proxy in front of moto that logs every request (`METHOD path`, marked
/// `(_acme-challenge)` when its body names a challenge record) and injects
/// the faults set in `faults`.
pub struct Route53Proxy {
    pub port: u16,
    pub faults: Arc<Faults>,
    pub log: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

const THROTTLED: &str = r#"<?xml version="1.0"?>
<ErrorResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>tlsward-test</RequestId></ErrorResponse>"#;

impl Route53Proxy {
    pub fn start(upstream: &str) -> Route53Proxy {
        use axum::body::Bytes;
        use axum::http::{HeaderMap, Method, StatusCode, Uri};
        use axum::response::IntoResponse;

        let faults = Arc::new(Faults::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let http = reqwest::Client::new();
        let upstream = upstream.to_string();
        let (f, l) = (faults.clone(), log.clone());
        let handler = move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let (faults, log, http, upstream) = (f.clone(), l.clone(), http.clone(), upstream.clone());
            async move {
                let path = uri.path().to_string();
                let challenge = if String::from_utf8_lossy(&body).contains("_acme-challenge") {
                    " (_acme-challenge)"
                } else {
                    ""
                };
                log.lock().unwrap().push(format!("{method} {path}{challenge}"));
                let is_change = method == Method::POST && path.ends_with("/rrset");
                let is_get_change = method == Method::GET && path.contains("/change/");
                let take = |n: &AtomicUsize| {
                    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                        .is_ok()
                };
                if is_change && take(&faults.throttle_changes) {
                    return (
                        StatusCode::BAD_REQUEST,
                        [("content-type", "text/xml")],
                        THROTTLED.to_string(),
                    )
                        .into_response();
                }
                let pending = faults.pending_reads.load(Ordering::SeqCst) > 0;
                if is_get_change && take(&faults.pending_reads) {
                    let id = path.rsplit('/').next().unwrap_or_default();
                    let body = format!(
                        r#"<?xml version="1.0"?><GetChangeResponse xmlns="https://route53.amazonaws.com/doc/2013-04-01/"><ChangeInfo><Id>/change/{id}</Id><Status>PENDING</Status><SubmittedAt>2026-11-29T00:00:00Z</SubmittedAt></ChangeInfo></GetChangeResponse>"#
                    );
                    return (StatusCode::OK, [("content-type", "text/xml")], body).into_response();
                }
                let mut req = http.request(method, format!("{upstream}{uri}")).body(body);
                for (k, v) in headers.iter().filter(|(k, _)| *k != "host" && *k != "content-length") {
                    req = req.header(k, v);
                }
                let Ok(resp) = req.send().await else {
                    return StatusCode::BAD_GATEWAY.into_response();
                };
                let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
                let content_type = resp
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("text/xml")
                    .to_string();
                let mut text = resp.text().await.unwrap_or_default();
                if is_change && pending {
                    text = text.replace("<Status>INSYNC</Status>", "<Status>PENDING</Status>");
                }
                (status, [("content-type", content_type)], text).into_response()
            }
        };
        let app = axum::Router::new().fallback(handler);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt().spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Route53Proxy {
            port,
            faults,
            log,
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ChangeResourceRecordSets` calls that reached the proxy.
    pub fn changes(&self) -> usize {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|l| l.starts_with("POST ") && l.contains("/rrset"))
            .count()
    }

    /// Logged requests whose line contains `what`.
    pub fn count(&self, what: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(what)).count()
    }
}

impl Drop for Route53Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
