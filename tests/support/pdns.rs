//! A real PowerDNS authoritative server (sqlite3 backend) with its HTTP API on
//! loopback; the zone and its foreign records are created through the API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Proc, free_port, sh, spawn_logged, wait_for};

pub const API_KEY: &str = "tlsward-test-key";

pub struct Pdns {
    pub dns_port: u16,
    pub api_port: u16,
    pub dir: PathBuf,
    pub key_file: PathBuf,
    proc: Option<Proc>,
}

impl Pdns {
    /// Starts pdns_server and creates `zone` with `rrsets` (PowerDNS API JSON).
    pub fn start(dir: &Path, zone: &str, rrsets: serde_json::Value) -> Pdns {
        std::fs::create_dir_all(dir).unwrap();
        let db = dir.join("pdns.sqlite3");
        let (code, out) = sh(Command::new("sqlite3")
            .arg(&db)
            .arg(".read /usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql"));
        assert_eq!(code, 0, "{out}");
        let key_file = dir.join("api.key");
        std::fs::write(&key_file, format!("{API_KEY}\n")).unwrap();
        let mut pdns = Pdns {
            dns_port: free_port(),
            api_port: free_port(),
            dir: dir.to_path_buf(),
            key_file,
            proc: None,
        };
        pdns.restart();
        let body = serde_json::json!({
            "name": format!("{zone}."), "kind": "Native", "nameservers": [format!("ns1.{zone}.")], "rrsets": rrsets,
        });
        let (code, out) = sh(Command::new("curl")
            .args([
                "-sS",
                "-f",
                "-X",
                "POST",
                "-H",
                &format!("X-API-Key: {API_KEY}"),
                "-H",
                "Content-Type: application/json",
            ])
            .arg("--data")
            .arg(body.to_string())
            .arg(format!(
                "http://127.0.0.1:{}/api/v1/servers/localhost/zones",
                pdns.api_port
            )));
        assert_eq!(code, 0, "creating the zone: {out}");
        pdns
    }

    pub fn restart(&mut self) {
        let d = self.dir.display();
        std::fs::write(
            self.dir.join("pdns.conf"),
            format!(
                "launch=gsqlite3\ngsqlite3-database={d}/pdns.sqlite3\nlocal-address=127.0.0.1\nlocal-port={}\napi=yes\napi-key={API_KEY}\nwebserver=yes\nwebserver-address=127.0.0.1\nwebserver-port={}\nwebserver-allow-from=127.0.0.0/8\nsocket-dir={d}\n",
                self.dns_port, self.api_port
            ),
        )
        .unwrap();
        let mut cmd = Command::new("pdns_server");
        cmd.arg(format!("--config-dir={d}"))
            .args(["--daemon=no", "--guardian=no", "--disable-syslog"]);
        self.proc = Some(spawn_logged(cmd, &self.dir.join("pdns.log")));
        let port = self.api_port;
        wait_for(Duration::from_secs(20), "the PowerDNS API", || {
            let (code, _) = sh(Command::new("curl")
                .args(["-sS", "-f", "-H", &format!("X-API-Key: {API_KEY}")])
                .arg(format!("http://127.0.0.1:{port}/api/v1/servers/localhost")));
            (code == 0).then_some(())
        });
    }

    pub fn kill(&mut self) {
        self.proc = None;
    }
}
