//! A real nginx on 127.0.0.1 demanding client certificates, and curl as its client:
//! proof that a real server and a real client accept what tlsward issued.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{Proc, free_port, sh, spawn_logged, wait_for};

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

/// nginx serving `host` with `cert`/`key`, requiring a client certificate that
/// `client_ca` (with the chain the client sends) verifies; stopped by PID on drop.
/// Returns its port. It answers `hello <client subject>`.
pub fn start(dir: &Path, host: &str, cert: &Path, key: &Path, client_ca: &Path) -> (u16, Proc) {
    std::fs::create_dir_all(dir).unwrap();
    let port = free_port();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    server_name {host};
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_client_certificate {client_ca};
    ssl_verify_client on;
    ssl_verify_depth 3;
    location / {{ return 200 "hello $ssl_client_s_dn\n"; }}
  }}
}}
"#,
            // Root may run the workers as root in a test sandbox; anyone else runs them as themselves.
            user = if running_as_root() { "user root;" } else { "" },
            dir = dir.display(),
            cert = cert.display(),
            key = key.display(),
            client_ca = client_ca.display(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf)
        .arg("-g")
        // One process: killing it by PID leaves no orphaned worker behind.
        .arg("daemon off; master_process off;");
    let proc = spawn_logged(cmd, &dir.join("stdout.log"));
    wait_for(Duration::from_secs(10), "nginx to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    (port, proc)
}

/// `curl https://host:port/` on 127.0.0.1, trusting `trust`, with a client certificate
/// and key when given: (exit code, output).
pub fn curl(host: &str, port: u16, trust: &Path, client: Option<(&Path, &Path)>) -> (i32, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--resolve"])
        .arg(format!("{host}:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(trust);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    cmd.arg(format!("https://{host}:{port}/"));
    sh(&mut cmd)
}
