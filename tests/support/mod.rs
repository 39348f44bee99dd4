//! Shared test fixtures: running the tlsward binary on a config in a temporary
//! directory, free loopback ports, and child processes stopped by PID on drop.
#![allow(dead_code)]

pub mod bind;
pub mod cloudflare;
pub mod dns_scenario;
pub mod fault;
pub mod invariants;
pub mod kube_emulator;
pub mod moto;
pub mod nginx;
pub mod pdns;
pub mod pebble;
pub mod webhook;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tlsward");

/// The tlsward binary, as a command to add arguments to. With `TLSWARD_TEST_LOGS` set
/// to a directory (scripts/test.sh sets it) everything it writes to stdout and stderr
/// is also copied to a file there, named for the test: tests/log_scan.rs then reads
/// every line for key material. The process is tlsward itself (bash `exec`s it), so
/// its PID is the one to signal.
pub fn tlsward() -> Command {
    match std::env::var_os("TLSWARD_TEST_LOGS") {
        Some(dir) => tlsward_copying_to(Path::new(&dir)),
        None => Command::new(BIN),
    }
}

/// The tlsward binary, its stdout and stderr also copied to a file in `dir`.
pub fn tlsward_copying_to(dir: &Path) -> Command {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let test = std::thread::current()
        .name()
        .unwrap_or("main")
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "-");
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let file = dir.join(format!("{test}-{}-{n}.log", std::process::id()));
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(r#"exec "$0" "$@" > >(exec tee -a "$TLSWARD_LOG_COPY") 2> >(exec tee -a "$TLSWARD_LOG_COPY" >&2)"#)
        .arg(BIN)
        .env("TLSWARD_LOG_COPY", file);
    c
}

/// A config plus the directory it writes into, both temporary.
pub struct Workdir {
    pub dir: tempfile::TempDir,
    /// Environment every command of this workdir runs with (beside the test's own).
    pub env: Vec<(String, String)>,
}

impl Workdir {
    pub fn new() -> Workdir {
        Workdir {
            dir: tempfile::tempdir().unwrap(),
            env: Vec::new(),
        }
    }
    /// This workdir with `pairs` added to every command's environment.
    pub fn with_env(mut self, pairs: &[(&str, &str)]) -> Workdir {
        self.env
            .extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn out(&self) -> PathBuf {
        self.path().join("out")
    }
    pub fn config(&self) -> PathBuf {
        self.path().join("tlsward.yaml")
    }
    /// Writes the config; `out` in it is the files store under this directory.
    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config(), text).unwrap();
    }
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = tlsward();
        c.current_dir(self.path()).args(args).env("NO_COLOR", "1");
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }
    /// `tlsward run` (the daemon) on the config, its endpoints on 127.0.0.1:`port`.
    pub fn daemon(&self, port: u16, extra: &[&str]) -> Command {
        let listen = format!("127.0.0.1:{port}");
        let mut c = self.command(&["run", "--config", "tlsward.yaml", "--listen", &listen]);
        c.args(extra);
        c
    }

    /// The daemon started on `port` with its output discarded, stopped when dropped.
    pub fn quiet_daemon(&self, port: u16) -> Proc {
        Proc(
            self.daemon(port, &[])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// `tlsward run --once` on the config, JSON logs, with `extra` arguments.
    pub fn once(&self, extra: &[&str]) -> Command {
        let mut c = self.command(&["run", "--once", "--config", "tlsward.yaml", "--log-format", "json"]);
        c.args(extra);
        c
    }

    /// `tlsward run --once` on the config.
    pub fn run_once(&self) -> Output {
        self.once(&[]).output().unwrap()
    }
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.out().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }
}

/// The walkthrough config (config/local.yaml) writing under `out/`.
pub fn local_config() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/local.yaml")).unwrap()
}

pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An axum app served from `listener` on a thread of its own, stopped when dropped.
pub struct Served {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    pub fn start(listener: TcpListener, app: axum::Router) -> Served {
        listener.set_nonblocking(true).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Served {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A child process killed (by PID) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server; its output goes to `log` (a pipe nobody reads would block it).
pub fn spawn_logged(mut cmd: Command, log: &Path) -> Proc {
    let file = std::fs::File::create(log).expect("log file");
    Proc(
        cmd.stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn"),
    )
}

/// Polls `f` until it returns Some, or panics after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command and returns (exit code, stdout+stderr).
pub fn sh(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// A minimal HTTP GET over loopback (no TLS), for the daemon's own endpoints.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The value of one sample in an exposition text (0 when absent).
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// One sample of the daemon's `/metrics` on `port` (0 when absent or unreachable).
pub fn scrape(port: u16, series: &str) -> f64 {
    http_get(port, "/metrics").map_or(0.0, |(_, m)| sample(&m, series))
}

/// Waits until the daemon on `port` has finished its first doctor run (its series
/// appear then): that run's cluster-wide reads are not a pass's.
pub fn first_doctor_run(port: u16) {
    wait_for(Duration::from_secs(30), "the first doctor run", || {
        http_get(port, "/metrics")
            .filter(|(_, m)| m.contains("tlsward_doctor_findings"))
            .map(|_| ())
    });
}

/// Publishes `text` as `tlsward.yaml` in `dir` the way kubelet updates a ConfigMap
/// volume: a new timestamped directory `stamp`, a `..data` symlink to it swapped in by
/// rename, the old directory removed, and `tlsward.yaml -> ..data/tlsward.yaml`.
pub fn configmap_publish(dir: &Path, stamp: &str, text: &str) {
    let data = dir.join(stamp);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("tlsward.yaml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(stamp, &tmp).unwrap();
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
    let link = dir.join("tlsward.yaml");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/tlsward.yaml", &link).unwrap();
    }
}

/// CPU seconds (user + system) a running process has used so far, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at `state`; utime
    // and stime are the 14th and 15th fields of the whole line.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let (_, hz) = sh(Command::new("getconf").arg("CLK_TCK"));
    ticks / hz.trim().parse::<f64>().unwrap_or(100.0)
}

/// A server identity for a test's own TLS server on loopback: a fresh CA (whose PEM a
/// client trusts) and a leaf for `names` signed by it.
pub struct LoopbackTls {
    pub ca_pem: String,
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

impl LoopbackTls {
    pub fn new(names: &[&str]) -> LoopbackTls {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tlsward test TLS CA");
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        LoopbackTls { ca_pem, cert, key }
    }

    /// A rustls server config presenting the leaf (HTTP/1.1 by ALPN).
    pub fn server_config(&self) -> rustls::ServerConfig {
        let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![self.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(self.key.serialize_der().into()),
        )
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }
}

/// The peak RSS (VmHWM, MiB) of a running process.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = text
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Runs a command to its end; returns (exit code, peak RSS in MiB) of that process,
/// sampled every 2 ms (rusage would count the pages the child shared with this large
/// parent between fork and exec). Its log goes to `log`.
pub fn run_measured(mut cmd: Command, log: &std::path::Path) -> (i32, f64) {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut peak = 0f64;
    loop {
        peak = peak.max(peak_rss_mib(child.id()).unwrap_or(0.0));
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code().unwrap_or(-1), peak);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A self-signed P-256 certificate and its key, made by the real openssl, valid `days`
/// for `subject` with `extensions` (`-addext` values such as `subjectAltName=DNS:a`).
pub fn openssl_self_signed(cert: &Path, key: &Path, days: u32, subject: &str, extensions: &[&str]) {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ])
    .args(["-days", &days.to_string(), "-subj", subject]);
    for e in extensions {
        cmd.args(["-addext", e]);
    }
    cmd.arg("-keyout").arg(key).arg("-out").arg(cert);
    let (code, out) = sh(&mut cmd);
    assert_eq!(code, 0, "{out}");
}

/// `tlsward run` (the daemon) on `w`'s config against the API emulator `emu`, its
/// endpoints on 127.0.0.1:`port`, its output discarded; stopped on drop.
pub fn kube_daemon(w: &Workdir, emu: &kube_emulator::Running, port: u16) -> Proc {
    Proc(
        w.daemon(port, &[])
            .env("KUBECONFIG", emu.kubeconfig.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Asserts that every object is valid against Istio's or the Gateway API's CRD schemas
/// (@kubernetes-models/istio and /gateway-api, installed by scripts/test.sh, through
/// tests/doctor/validate.mjs).
pub fn assert_valid_objects(objects: &[serde_json::Value]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.json");
    std::fs::write(&file, serde_json::Value::from(objects.to_vec()).to_string()).unwrap();
    let out = Command::new("node")
        .arg(root.join("tests/doctor/validate.mjs"))
        .arg(root.join(".tools/npm/node_modules"))
        .arg(&file)
        .output()
        .expect("node (installed by scripts/test.sh)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("{0} of {0} valid", objects.len())), "{text}");
}

/// `tlsward doctor --format json --manifests PATH…`: the report and the exit code.
pub fn doctor_manifests(paths: &[&Path]) -> (serde_json::Value, Option<i32>) {
    let out = tlsward()
        .args(["doctor", "--format", "json", "--manifests"])
        .args(paths)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no JSON; stderr: {}", String::from_utf8_lossy(&out.stderr)));
    (report, out.status.code())
}

/// The codes of a doctor JSON report's findings, in order.
pub fn finding_codes(report: &serde_json::Value) -> Vec<&str> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect()
}

/// `namespace/name` of an object.
pub fn namespaced_name(object: &serde_json::Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap(),
        object["metadata"]["name"].as_str().unwrap()
    )
}
