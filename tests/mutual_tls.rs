//! A real mutual-TLS handshake with what tlsward issued: nginx serves the inventory
//! credential with `ssl_verify_client on` against the site's `ca.crt`; curl with the
//! issued client certificate gets through, curl without one (or with a stranger's) is
//! refused.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

fn nginx_config(dir: &Path, port: u16, creds: &Path) -> String {
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
    server_name inventory.foocorp.example;
    ssl_certificate {creds}/tls.crt;
    ssl_certificate_key {creds}/tls.key;
    ssl_client_certificate {creds}/ca.crt;
    ssl_verify_client on;
    location / {{ return 200 "hello $ssl_client_s_dn\n"; }}
  }}
}}
"#,
        // Root may run the workers as root in a test sandbox; anyone else runs them as themselves.
        user = if running_as_root() { "user root;" } else { "" },
        dir = dir.display(),
        creds = creds.display(),
    )
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

fn curl(port: u16, trust: &Path, client: Option<(&Path, &Path)>) -> (i32, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--resolve"])
        .arg(format!("inventory.foocorp.example:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(trust);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    cmd.arg(format!("https://inventory.foocorp.example:{port}/"));
    sh(&mut cmd)
}

#[test]
fn nginx_accepts_the_issued_client_certificate_and_refuses_anyone_else() {
    let w = Workdir::new();
    w.write_config(&local_config());
    assert_success(&w.run_once());
    let out = w.out();
    let creds = out.join("credentials/inventory");
    let trust = out.join("trust/internal.crt");

    let nginx_dir = w.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let port = free_port();
    let conf = nginx_dir.join("nginx.conf");
    std::fs::write(&conf, nginx_config(&nginx_dir, port, &creds)).unwrap();
    let mut cmd = Command::new("nginx");
    cmd.arg("-e")
        .arg(nginx_dir.join("error.log"))
        .arg("-c")
        .arg(&conf)
        .arg("-g")
        // One process: killing it by PID leaves no orphaned worker behind.
        .arg("daemon off; master_process off;");
    let _nginx = spawn_logged(cmd, &nginx_dir.join("stdout.log"));
    wait_for(Duration::from_secs(10), "nginx to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });

    let client = creds.join("clients/warehouse-scanner");
    let (code, body) = curl(port, &trust, Some((&client.join("tls.crt"), &client.join("tls.key"))));
    assert_eq!(code, 0, "{body}");
    assert!(body.starts_with("hello CN=warehouse-scanner"), "{body}");

    let (code, body) = curl(port, &trust, None);
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("400 No required SSL certificate was sent"), "{body}");

    // A client certificate from another tlsward (another client CA) is refused too.
    let other = Workdir::new();
    other.write_config(&local_config());
    assert_success(&other.run_once());
    let stranger = other.out().join("credentials/inventory/clients/warehouse-scanner");
    let (code, body) = curl(
        port,
        &trust,
        Some((&stranger.join("tls.crt"), &stranger.join("tls.key"))),
    );
    assert_eq!(code, 0, "{body}");
    assert!(body.contains("400 The SSL certificate error"), "{body}");

    // And the server is only trusted through the issuer's root.
    let (code, body) = curl(
        port,
        &other.out().join("trust/internal.crt"),
        Some((&client.join("tls.crt"), &client.join("tls.key"))),
    );
    assert_ne!(code, 0, "{body}");
}
