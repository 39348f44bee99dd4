//! A real BIND 9 (`named -g`) on a loopback port, serving one zone that accepts
//! TSIG-signed updates and transfers; stopped by PID when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Proc, free_port, sh, spawn_logged, wait_for};

pub struct Bind {
    pub port: u16,
    pub dir: PathBuf,
    pub zone: String,
    pub key_file: PathBuf,
    proc: Option<Proc>,
}

impl Bind {
    /// Sends `lines` (nsupdate commands, each ending in a newline) in one TSIG-signed
    /// UPDATE through the real `nsupdate`; panics unless it succeeds.
    pub fn nsupdate(&self, lines: &str) {
        use std::io::Write;
        let mut child = Command::new("nsupdate")
            .arg("-k")
            .arg(&self.key_file)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        write!(
            child.stdin.as_mut().unwrap(),
            "server 127.0.0.1 {}\n{lines}send\n",
            self.port
        )
        .unwrap();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }

    /// Starts named for `zone` with `records` (zone-file lines, names relative to the
    /// zone) besides the SOA and NS.
    pub fn start(dir: &Path, zone: &str, records: &str) -> Bind {
        std::fs::create_dir_all(dir).unwrap();
        let key_file = dir.join("tsig.key");
        let (code, key) = sh(Command::new("tsig-keygen").args(["-a", "hmac-sha256", "tlsward"]));
        assert_eq!(code, 0, "{key}");
        std::fs::write(&key_file, &key).unwrap();
        std::fs::write(
            dir.join(format!("{zone}.zone")),
            format!("$ORIGIN {zone}.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 604800 60\n@ IN NS ns1\nns1 IN A 127.0.0.1\n{records}"),
        )
        .unwrap();
        let mut bind = Bind {
            port: 0,
            dir: dir.to_path_buf(),
            zone: zone.to_string(),
            key_file,
            proc: None,
        };
        bind.port = free_port();
        bind.restart();
        bind
    }

    pub fn restart(&mut self) {
        let d = self.dir.display();
        let key = std::fs::read_to_string(&self.key_file).unwrap();
        let conf = format!(
            r#"options {{
  directory "{d}";
  listen-on port {port} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  pid-file "{d}/named.pid";
  session-keyfile "{d}/session.key";
  recursion no;
  notify no;
  dnssec-validation no;
}};
controls {{ }};
{key}
zone "{zone}" {{
  type primary;
  file "{d}/{zone}.zone";
  allow-update {{ key tlsward; }};
  allow-transfer {{ key tlsward; }};
}};
"#,
            port = self.port,
            zone = self.zone,
        );
        std::fs::write(self.dir.join("named.conf"), conf).unwrap();
        let mut cmd = Command::new("named");
        cmd.args(["-g", "-u", "root", "-c"]).arg(self.dir.join("named.conf"));
        self.proc = Some(spawn_logged(cmd, &self.dir.join("named.log")));
        let port = self.port;
        wait_for(Duration::from_secs(20), "named to answer", || {
            let (code, out) = sh(Command::new("dig").args([
                "+short",
                "+time=1",
                "+tries=1",
                "-p",
                &port.to_string(),
                "@127.0.0.1",
                "SOA",
                &self.zone,
            ]));
            (code == 0 && out.contains("hostmaster")).then_some(())
        });
    }

    /// Stops named (SIGKILL by PID).
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// `dig +short` answers for `name` and `kind`, sorted.
    pub fn dig(&self, name: &str, kind: &str) -> Vec<String> {
        dig(self.port, name, kind)
    }

    /// tlsward's RFC 2136 provider for this server's zone, with its TSIG key.
    pub fn provider(&self) -> tlsward::dns::rfc2136::Rfc2136Provider {
        let spec: tlsward::config::Rfc2136Spec = serde_json::from_value(serde_json::json!({
            "server": format!("127.0.0.1:{}", self.port),
            "zone": format!("{}.", self.zone),
            "tsig": {"name": "tlsward", "secret_file": self.key_file},
        }))
        .unwrap();
        let secret =
            tlsward::dns::rfc2136::parse_tsig_secret(&std::fs::read_to_string(&self.key_file).unwrap()).unwrap();
        tlsward::dns::rfc2136::Rfc2136Provider::new("corp", &spec, &secret, std::time::Duration::from_secs(30)).unwrap()
    }
}

/// `dig +short` against the server on 127.0.0.1:`port`, answers sorted.
pub fn dig(port: u16, name: &str, kind: &str) -> Vec<String> {
    let (code, out) =
        sh(Command::new("dig").args(["+short", "+time=2", "-p", &port.to_string(), "@127.0.0.1", kind, name]));
    assert_eq!(code, 0, "{out}");
    let mut v: Vec<String> = out
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

/// `count` hosts `<prefix><i>.<zone>`, each wanting one A record (203.0.113.10).
pub fn a_records(count: usize, prefix: &str, zone: &str) -> Vec<tlsward::dns::registry::DesiredName> {
    use tlsward::model::{RecordSet, RecordType};
    (0..count)
        .map(|i| {
            let host = format!("{prefix}{i}.{zone}");
            tlsward::dns::registry::DesiredName {
                records: vec![RecordSet::new(
                    host.clone(),
                    RecordType::A,
                    60,
                    vec!["203.0.113.10".into()],
                )],
                host,
                site: format!("s{i}"),
                alias: false,
            }
        })
        .collect()
}
