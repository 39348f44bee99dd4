//! Fault servers for deadline tests: peers that accept and then never answer.
//!
//! `Tarpit` holds every TCP connection open without a byte in reply and swallows
//! every UDP datagram, on one loopback port (a DNS server, an HTTP API, an API server
//! that went silent). `AcmeStall` is an HTTPS proxy in front of a real Pebble that
//! forwards every ACME request until the chosen step, and holds that one forever.

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::free_port;

pub struct Tarpit {
    pub port: u16,
    held: Arc<AtomicUsize>,
}

impl Tarpit {
    pub fn start() -> Tarpit {
        // The same port for TCP and UDP, as a DNS server has.
        let (tcp, udp) = loop {
            let port = free_port();
            if let (Ok(t), Ok(u)) = (
                TcpListener::bind(("127.0.0.1", port)),
                UdpSocket::bind(("127.0.0.1", port)),
            ) {
                break (t, u);
            }
        };
        let port = tcp.local_addr().unwrap().port();
        let held = Arc::new(AtomicUsize::new(0));
        let count = held.clone();
        std::thread::spawn(move || {
            let mut open = Vec::new();
            for stream in tcp.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                // Kept, never read from or written to, until the test process ends.
                open.push(stream);
            }
        });
        let count = held.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 65_535];
            while udp.recv(&mut buf).is_ok() {
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        Tarpit { port, held }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Connections and datagrams received (and never answered) so far.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }
}

/// The ACME steps of one issuance, by the path Pebble serves each at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcmeStep {
    Directory,
    Nonce,
    Account,
    Order,
    Authorization,
    Challenge,
    Finalize,
    Certificate,
}

impl AcmeStep {
    pub const ALL: [AcmeStep; 8] = [
        AcmeStep::Directory,
        AcmeStep::Nonce,
        AcmeStep::Account,
        AcmeStep::Order,
        AcmeStep::Authorization,
        AcmeStep::Challenge,
        AcmeStep::Finalize,
        AcmeStep::Certificate,
    ];

    /// Pebble 2.4's path (prefix) for the step.
    pub fn path(self) -> &'static str {
        match self {
            AcmeStep::Directory => "/dir",
            AcmeStep::Nonce => "/nonce-plz",
            AcmeStep::Account => "/sign-me-up",
            AcmeStep::Order => "/order-plz",
            AcmeStep::Authorization => "/authZ/",
            AcmeStep::Challenge => "/chalZ/",
            AcmeStep::Finalize => "/finalize-order/",
            AcmeStep::Certificate => "/certZ/",
        }
    }

    fn of(path: &str) -> Option<AcmeStep> {
        AcmeStep::ALL.into_iter().find(|s| path.starts_with(s.path()))
    }
}

/// What the proxy does to the requests of one step.
pub enum AcmeFault {
    /// Never answers them.
    Stall(AcmeStep),
    /// Answers the first `times` of them `429 Too Many Requests` with a `rateLimited`
    /// problem document and `Retry-After: retry_after` (RFC 8555 §6.6).
    RateLimit {
        step: AcmeStep,
        retry_after: &'static str,
        times: usize,
    },
}

/// An HTTPS proxy before Pebble that injects one `AcmeFault`, logging every request.
pub struct AcmeStall {
    pub port: u16,
    /// The CA of the proxy's TLS certificate (`ca_bundle_file` for tlsward).
    pub tls_ca: PathBuf,
    held: Arc<AtomicUsize>,
    log: Arc<std::sync::Mutex<Vec<(std::time::Instant, AcmeStep)>>>,
    _runtime: tokio::runtime::Runtime,
}

impl AcmeStall {
    /// Proxies to the Pebble at `upstream` (`127.0.0.1:PORT`, trusting `upstream_ca`),
    /// holding requests of `stall` forever. Files go in `dir`.
    pub fn start(dir: &std::path::Path, upstream: &str, upstream_ca: &std::path::Path, stall: AcmeStep) -> AcmeStall {
        Self::start_with(dir, upstream, upstream_ca, AcmeFault::Stall(stall))
    }

    /// Proxies to the Pebble at `upstream`, injecting `fault`.
    pub fn start_with(
        dir: &std::path::Path,
        upstream: &str,
        upstream_ca: &std::path::Path,
        fault: AcmeFault,
    ) -> AcmeStall {
        std::fs::create_dir_all(dir).unwrap();
        let identity = super::LoopbackTls::new(&["127.0.0.1"]);
        let tls_ca = dir.join("stall-ca.pem");
        std::fs::write(&tls_ca, &identity.ca_pem).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(identity.server_config()));
        let upstream_client = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&std::fs::read(upstream_ca).unwrap()).unwrap())
            .build()
            .unwrap();

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let state = Arc::new(Proxy {
            upstream: upstream.to_string(),
            host: format!("127.0.0.1:{port}"),
            client: upstream_client,
            fault,
            held: held.clone(),
            log: log.clone(),
        });
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let acceptor = acceptor.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, std::convert::Infallible>(state.forward(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        AcmeStall {
            port,
            tls_ca,
            held,
            log,
            _runtime: runtime,
        }
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// Requests being held (the client is stuck at the step).
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// When each request of `step` arrived, in order.
    pub fn arrivals(&self, step: AcmeStep) -> Vec<std::time::Instant> {
        let log = self.log.lock().unwrap();
        log.iter().filter(|(_, s)| *s == step).map(|(t, _)| *t).collect()
    }
}

struct Proxy {
    upstream: String,
    /// The Host the client used: Pebble builds every URL it returns from it, so the
    /// client keeps talking to the proxy.
    host: String,
    client: reqwest::Client,
    fault: AcmeFault,
    held: Arc<AtomicUsize>,
    log: Arc<std::sync::Mutex<Vec<(std::time::Instant, AcmeStep)>>>,
}

impl Proxy {
    async fn forward(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
        use http_body_util::BodyExt;
        let (parts, body) = req.into_parts();
        let step = AcmeStep::of(parts.uri.path());
        if let Some(step) = step {
            self.log.lock().unwrap().push((std::time::Instant::now(), step));
        }
        match &self.fault {
            AcmeFault::Stall(stall) if step == Some(*stall) => {
                self.held.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            AcmeFault::RateLimit {
                step: limited,
                retry_after,
                times,
            } if step == Some(*limited) && self.held.fetch_add(1, Ordering::SeqCst) < *times => {
                let problem = r#"{"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many new orders recently", "status": 429}"#;
                return hyper::Response::builder()
                    .status(429)
                    .header("content-type", "application/problem+json")
                    .header("retry-after", *retry_after)
                    .header("replay-nonce", "tlsward-test-nonce-rate-limited")
                    .body(http_body_util::Full::new(bytes::Bytes::from_static(problem.as_bytes())))
                    .unwrap();
            }
            _ => {}
        }
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let url = format!(
            "https://{}{}",
            self.upstream,
            parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
        );
        let mut headers = parts.headers.clone();
        headers.insert(reqwest::header::HOST, self.host.parse().unwrap());
        let answer = self
            .client
            .request(parts.method, &url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .expect("pebble answers the proxy");
        let mut out = hyper::Response::builder().status(answer.status());
        for (k, v) in answer.headers() {
            if k != reqwest::header::CONTENT_LENGTH
                && k != reqwest::header::TRANSFER_ENCODING
                && k != reqwest::header::CONNECTION
            {
                out = out.header(k, v);
            }
        }
        let bytes = answer.bytes().await.expect("pebble's answer");
        out.body(http_body_util::Full::new(bytes)).unwrap()
    }
}
