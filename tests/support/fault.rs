//! Fault servers: peers that misbehave on purpose.
//!
//! `Tarpit` holds every TCP connection open without a byte in reply and swallows
//! every UDP datagram, on one loopback port (a DNS server, an HTTP API, an API server
//! that went silent). `FaultProxy` stands between tlsward and a real server speaking
//! HTTP (Pebble over HTTPS, the API emulator, PowerDNS's API) and `DnsFaultProxy`
//! before a real DNS server (BIND, TCP and UDP on one port): each forwards faithfully
//! until told to inject a `Fault` (added latency, a reset connection, an error status,
//! a truncated answer, silence), to every request or to one ACME step only.

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// What a proxy does instead of (or besides) forwarding faithfully.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every request waits this long before it is forwarded.
    Latency(Duration),
    /// The connection is reset (TCP RST) instead of answered.
    Reset,
    /// Answered with this HTTP status and a short error document; a DNS server's
    /// answers get SERVFAIL instead.
    Status(u16),
    /// The answer's head and half of its body, then the connection closed.
    Truncate,
    /// Never answered.
    Silent,
    /// `429 Too Many Requests` with an ACME `rateLimited` problem document and this
    /// `Retry-After` (RFC 8555 §6.6).
    RateLimited(&'static str),
}

/// The fault in force: to every request, or to one ACME step's; for the next `left`
/// requests it applies to, or until cleared.
#[derive(Clone, Copy, Debug)]
struct Rule {
    fault: Fault,
    step: Option<AcmeStep>,
    left: Option<usize>,
}

/// The rule a proxy applies, and what it did (behind `Faulty`).
#[derive(Default)]
pub struct Faults {
    rule: Mutex<Option<Rule>>,
    /// Requests (connections, datagrams) a fault was applied to.
    applied: AtomicUsize,
    log: Mutex<Vec<(Instant, AcmeStep)>>,
}

impl Faults {
    /// The fault for a request of `step` (`None`: forward it faithfully), counted.
    fn take(&self, step: Option<AcmeStep>) -> Option<Fault> {
        if let Some(step) = step {
            self.log.lock().unwrap().push((Instant::now(), step));
        }
        let mut rule = self.rule.lock().unwrap();
        let r = rule.as_mut()?;
        if r.step.is_some() && r.step != step {
            return None;
        }
        match &mut r.left {
            Some(0) => return None,
            Some(n) => *n -= 1,
            None => {}
        }
        self.applied.fetch_add(1, Ordering::SeqCst);
        Some(r.fault)
    }
}

/// The controls both proxies share.
pub trait Faulty {
    #[doc(hidden)]
    fn faults(&self) -> &Faults;

    /// Injects `fault` into every request from now on.
    fn set(&self, fault: Fault) {
        *self.faults().rule.lock().unwrap() = Some(Rule {
            fault,
            step: None,
            left: None,
        });
    }
    /// Injects `fault` into requests of `step` only: the next `times` of them, or all.
    fn set_on(&self, step: AcmeStep, fault: Fault, times: Option<usize>) {
        *self.faults().rule.lock().unwrap() = Some(Rule {
            fault,
            step: Some(step),
            left: times,
        });
    }
    /// Forwards faithfully again (requests already held stay held).
    fn clear(&self) {
        *self.faults().rule.lock().unwrap() = None;
    }
    /// Requests (connections, datagrams) a fault was applied to so far.
    fn applied(&self) -> usize {
        self.faults().applied.load(Ordering::SeqCst)
    }
    /// When each request of `step` arrived, in order.
    fn arrivals(&self, step: AcmeStep) -> Vec<Instant> {
        let log = self.faults().log.lock().unwrap();
        log.iter().filter(|(_, s)| *s == step).map(|(t, _)| *t).collect()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Linger 0: closing the connection resets it (the deprecation warns of blocking on
/// drop, which a zero linger does not do).
#[allow(deprecated)]
fn reset_on_close(tcp: &tokio::net::TcpStream) {
    let _ = tcp.set_linger(Some(Duration::ZERO));
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into()).map_err(|e| match e {}).boxed()
}

/// An HTTP(S) proxy before one server, injecting the `Fault` it is told to.
pub struct FaultProxy {
    pub port: u16,
    /// The CA of the proxy's TLS certificate when it serves HTTPS (`ca_bundle_file`).
    pub tls_ca: PathBuf,
    https: bool,
    state: Arc<HttpProxy>,
    _runtime: tokio::runtime::Runtime,
}

impl Faulty for FaultProxy {
    fn faults(&self) -> &Faults {
        &self.state.faults
    }
}

impl FaultProxy {
    /// Plain HTTP before the HTTP server at `upstream` (`127.0.0.1:PORT`).
    pub fn http(upstream: &str) -> FaultProxy {
        Self::start(None, upstream, None)
    }

    /// HTTPS before the HTTPS server at `upstream` (trusting `upstream_ca`), presenting
    /// a certificate of its own whose CA is written in `dir`.
    pub fn https(dir: &std::path::Path, upstream: &str, upstream_ca: &std::path::Path) -> FaultProxy {
        Self::start(Some(dir), upstream, Some(upstream_ca))
    }

    /// An HTTPS proxy before `pebble` (its certificate's CA written in `dir`).
    pub fn before(pebble: &super::pebble::Pebble, dir: &std::path::Path) -> FaultProxy {
        Self::https(dir, &format!("127.0.0.1:{}", pebble.port), &pebble.tls_ca)
    }

    /// An HTTPS proxy before Pebble that holds every request of `step` forever.
    pub fn acme_stall(
        dir: &std::path::Path,
        upstream: &str,
        upstream_ca: &std::path::Path,
        step: AcmeStep,
    ) -> FaultProxy {
        let proxy = Self::https(dir, upstream, upstream_ca);
        proxy.set_on(step, Fault::Silent, None);
        proxy
    }

    fn start(dir: Option<&std::path::Path>, upstream: &str, upstream_ca: Option<&std::path::Path>) -> FaultProxy {
        let mut tls_ca = PathBuf::new();
        let acceptor = dir.map(|dir| {
            std::fs::create_dir_all(dir).unwrap();
            let identity = super::LoopbackTls::new(&["127.0.0.1"]);
            tls_ca = dir.join("proxy-ca.pem");
            std::fs::write(&tls_ca, &identity.ca_pem).unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(identity.server_config()))
        });
        let mut client = reqwest::Client::builder().no_proxy();
        if let Some(ca) = upstream_ca {
            client = client.tls_certs_only(reqwest::Certificate::from_pem_bundle(&std::fs::read(ca).unwrap()).unwrap());
        }
        let https = acceptor.is_some();
        let runtime = runtime();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(HttpProxy {
            profiles: Mutex::default(),
            orders: Mutex::default(),
            upstream: format!("{}://{upstream}", if https { "https" } else { "http" }),
            host: format!("127.0.0.1:{port}"),
            client: client.build().unwrap(),
            faults: Faults::default(),
        });
        let serving = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                // A second handle on the socket, to reset it with when a fault says so.
                let Ok(spare) = tcp.into_std().and_then(|s| Ok((s.try_clone()?, s))) else {
                    continue;
                };
                let (spare, tcp) = spare;
                let Ok(tcp) = tokio::net::TcpStream::from_std(tcp) else {
                    continue;
                };
                let (acceptor, state) = (acceptor.clone(), serving.clone());
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            let Ok(tls) = a.accept(tcp).await else { return };
                            state.serve(tls, spare).await
                        }
                        None => state.serve(tcp, spare).await,
                    }
                });
            }
        });
        FaultProxy {
            port,
            tls_ca,
            https,
            state,
            _runtime: runtime,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!(
            "{}://127.0.0.1:{}",
            if self.https { "https" } else { "http" },
            self.port
        )
    }

    /// Makes the directory offer these ACME profiles (name, description), as a CA
    /// with profiles does (Pebble 2.4 has none).
    pub fn offer_profiles(&self, profiles: &[(&str, &str)]) {
        let map: serde_json::Map<String, serde_json::Value> = profiles
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_string().into()))
            .collect();
        *self.state.profiles.lock().unwrap() = Some(map.into());
    }

    /// The payload of every new-order request so far (identifiers, profile, …).
    pub fn orders(&self) -> Vec<serde_json::Value> {
        self.state.orders.lock().unwrap().clone()
    }

    /// Pebble's directory, through the proxy.
    pub fn directory(&self) -> String {
        format!("{}/dir", self.url())
    }
}

struct HttpProxy {
    /// ACME profiles the directory is made to offer (draft-ietf-acme-profiles), as
    /// its `meta.profiles` object.
    profiles: Mutex<Option<serde_json::Value>>,
    /// The payload of every new-order request, decoded.
    orders: Mutex<Vec<serde_json::Value>>,
    upstream: String,
    /// The Host the client used: Pebble builds every URL it returns from it, so the
    /// client keeps talking to the proxy.
    host: String,
    client: reqwest::Client,
    faults: Faults,
}

impl HttpProxy {
    /// Serves one connection until it ends or a fault resets it (through `spare`, the
    /// same socket).
    async fn serve<S>(self: Arc<Self>, io: S, spare: std::net::TcpStream)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let reset = Arc::new(tokio::sync::Notify::new());
        let trip = reset.clone();
        let service = hyper::service::service_fn(move |req| {
            let (state, trip) = (self.clone(), trip.clone());
            async move { Ok::<_, std::convert::Infallible>(state.forward(req, &trip).await) }
        });
        let connection =
            hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(io), service);
        tokio::select! {
            _ = connection => {}
            _ = reset.notified() => {
                // Closed with linger 0: the peer sees a reset.
                if let Ok(socket) = tokio::net::TcpStream::from_std(spare) {
                    reset_on_close(&socket);
                }
            }
        }
    }

    async fn forward(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        reset: &tokio::sync::Notify,
    ) -> hyper::Response<Body> {
        let (parts, body) = req.into_parts();
        let step = AcmeStep::of(parts.uri.path());
        let fault = self.faults.take(step);
        match fault {
            Some(Fault::Latency(d)) => tokio::time::sleep(d).await,
            Some(Fault::Reset) => {
                reset.notify_one();
                std::future::pending::<()>().await;
            }
            Some(Fault::Silent) => std::future::pending::<()>().await,
            Some(Fault::Status(code)) => {
                // The error document the peer would send: an ACME problem (RFC 8555
                // §6.7), else a Kubernetes Status that also has PowerDNS's `error`.
                let (doc, kind) = match step {
                    Some(_) => (
                        format!(
                            r#"{{"type": "urn:ietf:params:acme:error:serverInternal", "detail": "injected by the fault proxy", "status": {code}}}"#
                        ),
                        "application/problem+json",
                    ),
                    None => (
                        format!(
                            r#"{{"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": {code}, "message": "injected by the fault proxy", "error": "injected by the fault proxy"}}"#
                        ),
                        "application/json",
                    ),
                };
                return hyper::Response::builder()
                    .status(code)
                    .header("content-type", kind)
                    .header("replay-nonce", "tlsward-test-nonce-fault")
                    .body(full(doc))
                    .unwrap();
            }
            Some(Fault::RateLimited(retry_after)) => {
                let problem = r#"{"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many new orders recently", "status": 429}"#;
                return hyper::Response::builder()
                    .status(429)
                    .header("content-type", "application/problem+json")
                    .header("retry-after", retry_after)
                    .header("replay-nonce", "tlsward-test-nonce-rate-limited")
                    .body(full(problem))
                    .unwrap();
            }
            Some(Fault::Truncate) | None => {}
        }
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        if step == Some(AcmeStep::Order) {
            // A JWS (RFC 7515 flattened JSON): the payload is base64url JSON.
            use base64::Engine;
            let payload = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|jws| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(jws["payload"].as_str()?)
                        .ok()
                })
                .and_then(|p| serde_json::from_slice(&p).ok());
            self.orders.lock().unwrap().push(payload.unwrap_or_default());
        }
        let url = format!(
            "{}{}",
            self.upstream,
            parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
        );
        let mut headers = parts.headers.clone();
        headers.insert(reqwest::header::HOST, self.host.parse().unwrap());
        let answer = match self
            .client
            .request(parts.method, &url)
            .headers(headers)
            .body(body)
            .send()
            .await
        {
            Ok(a) => a,
            Err(e) => {
                return hyper::Response::builder()
                    .status(502)
                    .body(full(format!("fault proxy: upstream: {e}")))
                    .unwrap();
            }
        };
        let profiles = self.profiles.lock().unwrap().clone();
        if let (Some(AcmeStep::Directory), Some(profiles)) = (step, profiles) {
            let status = answer.status();
            let mut directory: serde_json::Value = answer.json().await.unwrap_or_default();
            directory["meta"]["profiles"] = profiles;
            return hyper::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(full(directory.to_string()))
                .unwrap();
        }
        let mut out = hyper::Response::builder().status(answer.status());
        let truncate = fault == Some(Fault::Truncate);
        for (k, v) in answer.headers() {
            // The length stays when truncating: the client knows the answer is short.
            let hop = k == reqwest::header::TRANSFER_ENCODING || k == reqwest::header::CONNECTION;
            if !hop && (truncate || k != reqwest::header::CONTENT_LENGTH) {
                out = out.header(k, v);
            }
        }
        let cut = || std::io::Error::new(std::io::ErrorKind::ConnectionReset, "truncated by the fault proxy");
        let body = if truncate {
            // Half of the first chunk (a watch never ends), then the connection closed.
            let mut answer = answer;
            let first = answer.chunk().await.ok().flatten().unwrap_or_default();
            let half = first.slice(..first.len() / 2);
            let frames = futures::stream::iter([Ok(hyper::body::Frame::data(half)), Err(cut())]);
            http_body_util::StreamBody::new(frames).boxed()
        } else {
            let frames = futures::stream::unfold(answer, |mut answer| async move {
                match answer.chunk().await {
                    Ok(Some(chunk)) => Some((Ok(hyper::body::Frame::data(chunk)), answer)),
                    Ok(None) => None,
                    Err(e) => Some((Err(std::io::Error::other(e.to_string())), answer)),
                }
            });
            http_body_util::StreamBody::new(frames).boxed()
        };
        out.body(body).unwrap()
    }
}

/// A proxy before a DNS server, on one loopback port for TCP and UDP as a DNS server
/// has: `Status` answers every query SERVFAIL, `Truncate` halves each answer, `Reset`
/// resets TCP connections (and drops datagrams, UDP having no reset).
pub struct DnsFaultProxy {
    pub port: u16,
    faults: Arc<Faults>,
    _runtime: tokio::runtime::Runtime,
}

impl Faulty for DnsFaultProxy {
    fn faults(&self) -> &Faults {
        &self.faults
    }
}

impl DnsFaultProxy {
    /// Before the DNS server at `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> DnsFaultProxy {
        let upstream: std::net::SocketAddr = upstream.parse().unwrap();
        let (tcp, udp) = loop {
            let port = super::free_port();
            if let (Ok(t), Ok(u)) = (
                TcpListener::bind(("127.0.0.1", port)),
                UdpSocket::bind(("127.0.0.1", port)),
            ) {
                break (t, u);
            }
        };
        let port = tcp.local_addr().unwrap().port();
        let faults = Arc::new(Faults::default());
        let runtime = runtime();
        let _guard = runtime.enter();
        tcp.set_nonblocking(true).unwrap();
        udp.set_nonblocking(true).unwrap();
        let tcp = tokio::net::TcpListener::from_std(tcp).unwrap();
        let udp = Arc::new(tokio::net::UdpSocket::from_std(udp).unwrap());
        let f = faults.clone();
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = tcp.accept().await else { return };
                tokio::spawn(dns_tcp(client, upstream, f.clone()));
            }
        });
        let f = faults.clone();
        runtime.spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, from)) = udp.recv_from(&mut buf).await else {
                    return;
                };
                tokio::spawn(dns_udp(buf[..n].to_vec(), from, udp.clone(), upstream, f.clone()));
            }
        });
        drop(_guard);
        DnsFaultProxy {
            port,
            faults,
            _runtime: runtime,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// The answer of a server that failed before it looked at the query: its ID and
/// opcode, RCODE SERVFAIL, nothing else (so unsigned; RFC 1035 §4.1.1).
fn servfail(query: &[u8]) -> Vec<u8> {
    let mut m = vec![0u8; 12];
    if query.len() >= 3 {
        m[..2].copy_from_slice(&query[..2]);
        m[2] = 0x80 | (query[2] & 0x78);
    }
    m[3] = 2;
    m
}

async fn dns_udp(
    query: Vec<u8>,
    from: std::net::SocketAddr,
    socket: Arc<tokio::net::UdpSocket>,
    upstream: std::net::SocketAddr,
    faults: Arc<Faults>,
) {
    let fault = faults.take(None);
    match fault {
        Some(Fault::Latency(d)) => tokio::time::sleep(d).await,
        Some(Fault::Reset | Fault::Silent | Fault::RateLimited(_)) => return,
        Some(Fault::Status(_)) => {
            let _ = socket.send_to(&servfail(&query), from).await;
            return;
        }
        _ => {}
    }
    let Ok(out) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
        return;
    };
    if out.send_to(&query, upstream).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 65_535];
    let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), out.recv(&mut buf)).await else {
        return;
    };
    buf.truncate(n);
    let answer = match fault {
        Some(Fault::Truncate) => buf[..n / 2].to_vec(),
        _ => buf,
    };
    let _ = socket.send_to(&answer, from).await;
}

async fn dns_tcp(mut client: tokio::net::TcpStream, upstream: std::net::SocketAddr, faults: Arc<Faults>) {
    let fault = faults.take(None);
    match fault {
        Some(Fault::Latency(d)) => tokio::time::sleep(d).await,
        Some(Fault::Reset | Fault::RateLimited(_)) => {
            reset_on_close(&client);
            return;
        }
        Some(Fault::Silent) => {
            std::future::pending::<()>().await;
        }
        Some(Fault::Status(_)) => {
            // Every framed query (a two-octet length, RFC 1035 §4.2.2) failed.
            let mut len = [0u8; 2];
            while client.read_exact(&mut len).await.is_ok() {
                let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
                if client.read_exact(&mut query).await.is_err() {
                    return;
                }
                let answer = servfail(&query);
                let _ = client.write_all(&(answer.len() as u16).to_be_bytes()).await;
                let _ = client.write_all(&answer).await;
            }
            return;
        }
        _ => {}
    }
    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let queries = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
        std::future::pending::<()>().await
    };
    // Answers one framed message at a time (a two-octet length, RFC 1035 §4.2.2).
    let answers = async {
        loop {
            let mut len = [0u8; 2];
            server_read.read_exact(&mut len).await?;
            let mut message = vec![0u8; u16::from_be_bytes(len) as usize];
            server_read.read_exact(&mut message).await?;
            if fault == Some(Fault::Truncate) {
                client_write.write_all(&len).await?;
                client_write.write_all(&message[..message.len() / 2]).await?;
                // Then closed (a FIN: the half answer arrives).
                return Ok::<_, std::io::Error>(());
            }
            client_write.write_all(&len).await?;
            client_write.write_all(&message).await?;
        }
    };
    tokio::select! {
        _ = queries => {}
        _ = answers => {}
    }
}
