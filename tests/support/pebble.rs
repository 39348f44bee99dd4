//! A real Pebble ACME server (Debian's `pebble` 2.4) on loopback, with its own TLS
//! certificate made here and `-dnsserver` pointed at a resolver the test controls, so
//! its validation authority really fetches HTTP-01 tokens and reads DNS-01 records.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

use super::{Proc, free_port, sh, spawn_logged, wait_for};

pub struct Pebble {
    pub port: u16,
    pub management_port: u16,
    /// The port Pebble's VA connects to for HTTP-01 (where tlsward's solver listens).
    pub http_port: u16,
    pub dir: PathBuf,
    /// The CA of Pebble's own TLS certificate (`ca_bundle_file` for tlsward).
    pub tls_ca: PathBuf,
    dns_server: String,
    pub env: Vec<(String, String)>,
    proc: Option<Proc>,
}

impl Pebble {
    /// Starts Pebble with real validation (no `PEBBLE_VA_ALWAYS_VALID`), resolving
    /// names through `dns_server` (`127.0.0.1:PORT`). `env` adds Pebble settings.
    pub fn start(dir: &Path, dns_server: &str, env: &[(&str, &str)]) -> Pebble {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble test TLS CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        let mut pebble = Pebble {
            port: free_port(),
            management_port: free_port(),
            http_port: free_port(),
            dir: dir.to_path_buf(),
            tls_ca: dir.join("ca.pem"),
            dns_server: dns_server.to_string(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            proc: None,
        };
        pebble.restart();
        pebble
    }

    /// Pebble that validates every challenge at once (`PEBBLE_VA_ALWAYS_VALID`,
    /// `PEBBLE_VA_NOSLEEP`) and refuses no nonce, so that runs are deterministic.
    pub fn instant(dir: &Path) -> Pebble {
        Pebble::start(
            dir,
            "127.0.0.1:1",
            &[
                ("PEBBLE_VA_ALWAYS_VALID", "1"),
                ("PEBBLE_VA_NOSLEEP", "1"),
                ("PEBBLE_WFE_NONCEREJECT", "0"),
            ],
        )
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    pub fn restart(&mut self) {
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{}", self.port),
            "managementListenAddress": format!("127.0.0.1:{}", self.management_port),
            "certificate": self.dir.join("cert.pem"),
            "privateKey": self.dir.join("key.pem"),
            "httpPort": self.http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(self.dir.join("pebble.json"), config.to_string()).unwrap();
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(self.dir.join("pebble.json"))
            .arg("-dnsserver")
            .arg(&self.dns_server);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.proc = Some(spawn_logged(cmd, &self.dir.join("pebble.log")));
        let dir = self.directory();
        let ca = self.tls_ca.clone();
        wait_for(Duration::from_secs(20), "pebble's directory", || {
            let (code, _) = sh(Command::new("curl").args(["-sS", "-f", "--cacert"]).arg(&ca).arg(&dir));
            (code == 0).then_some(())
        });
    }

    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// Pebble's issuing root (`/roots/0` on the management port), written to a file.
    pub fn issuing_root(&self) -> PathBuf {
        let path = self.dir.join("issuing-root.pem");
        let (code, out) = sh(Command::new("curl")
            .args(["-sS", "-f", "--cacert"])
            .arg(&self.tls_ca)
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management_port)));
        assert_eq!(code, 0, "{out}");
        std::fs::write(&path, out).unwrap();
        path
    }
}
