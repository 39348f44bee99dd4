//! `tlsward check` and `tlsward schema` as a user runs them: exit codes, every error
//! at once as FILE:LINE:COL: field.path: message, and a schema that agrees with check.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

fn tlsward(args: &[&str]) -> Output {
    support::tlsward().args(args).output().expect("run tlsward")
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tlsward.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Each line of `stderr` starts with its expected text, and there are no others.
fn assert_lines_start_with(stderr: &str, expected: &[&str]) {
    let lines: Vec<&str> = stderr.lines().collect();
    for (i, want) in expected.iter().enumerate() {
        assert!(
            lines.get(i).is_some_and(|l| l.starts_with(want)),
            "line {i}: want {want:?}\nall:\n{stderr}"
        );
    }
    assert_eq!(lines.len(), expected.len(), "{stderr}");
}

fn check(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), text);
    let out = tlsward(&["check", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8(out.stderr)
        .unwrap()
        .replace(path.to_str().unwrap(), "F");
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        stderr,
    )
}

/// `tlsward run --once` on `config`, with `dir` as the working directory (its `out/`).
fn run_once_in(dir: &Path, config: &Path) -> Output {
    support::tlsward()
        .current_dir(dir)
        .args(["run", "--once", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

fn shipped_configs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut out: Vec<PathBuf> = Vec::new();
    for dir in [root.clone(), root.join("examples")] {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "yaml") {
                out.push(e.path());
            }
        }
    }
    assert!(out.len() >= 3, "{out:?}");
    out
}

fn schema_validator() -> jsonschema::Validator {
    let out = tlsward(&["schema"]);
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    jsonschema::validator_for(&schema).unwrap()
}

fn as_json(text: &str) -> serde_json::Value {
    tlsward::config::yaml::parse(text).unwrap().0
}

const VALID: &str = "owner_id: o\nstore: {files: {dir: out}}\nissuers: {ca1: {ca: {}}}\nsites:\n  - name: s\n    hosts: [s.example.com]\n    issuer: ca1\n    route: {to: s.default.svc.cluster.local, port: 80}\n";

#[test]
fn every_shipped_config_passes_check_and_validates_against_the_schema() {
    let validator = schema_validator();
    for path in shipped_configs() {
        let out = tlsward(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let doc = as_json(&std::fs::read_to_string(&path).unwrap());
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
}

#[test]
fn the_schema_rejects_the_structural_errors_check_rejects() {
    let validator = schema_validator();
    let bad = [
        VALID.replace("owner_id: o", "owner_id: o\ncolour: blue"),
        VALID.replace("port: 80", "port: eighty"),
        VALID.replace("{ca: {}}", "{ca: {key: dsa}}"),
        VALID.replace("{files: {dir: out}}", "{files: {dir: out}, kubernetes: {}}"),
        VALID.replace("{ca: {}}", "{ca: {leaf_validity: 30x}}"),
        VALID.replace("    issuer: ca1\n", ""),
    ];
    for text in bad {
        assert!(!validator.is_valid(&as_json(&text)), "schema accepted:\n{text}");
        let (code, _, stderr) = check(&text);
        assert_eq!(code, 1, "check accepted:\n{text}");
        assert!(stderr.starts_with("F:"), "{stderr}");
    }
    assert!(validator.is_valid(&as_json(VALID)));
    assert_eq!(check(VALID).0, 0);
}

#[test]
fn check_reports_every_error_at_once_with_file_line_column_and_field() {
    let text = r#"owner_id: foocorp
store: {files: {dir: out}}
gateway:
  address: {static: [203.0.113.10]}
  colour: blue
issuers:
  internal: {ca: {key: ecdsa-p255, leaf_validity: 30x}}
dns:
  providers:
    corp: {rfc2136: {server: 10.0.0.53:53, zone: foocorp.example., tsig: {name: tlsward, secret: abc}}}
    local: {zonefile: {zone: foocorp.example.}}
renew_before: 120%
sites:
  - name: frontend
    hosts: [frontend.foocorp.example, "a.*.foocorp.example", bad_host.foocorp.example]
    issuer: internal
    dns: nope
    route: {to: frontend.ux.svc.cluster.local, port: 80}
  - name: frontend
    hosts: [FRONTEND.foocorp.example, other.example.org]
    issuer: missing
    dns: local
    tls: {mode: SIMPLE, clients: [a]}
    route: {to: x.default, port: "eighty"}
"#;
    let (code, stdout, stderr) = check(text);
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    let expected = [
        "F:5:3: gateway.colour: unknown field `colour`, expected one of: namespace, service, selector, name, address",
        "F:7:24: issuers.internal.ca.key: \"ecdsa-p255\" is not one of",
        "F:7:51: issuers.internal.ca.leaf_validity: invalid duration `30x`",
        "F:10:90: dns.providers.corp.rfc2136.tsig.secret: secrets are never inline: use `secret_file`",
        "F:12:15: renew_before: 120% is outside 0% < renew_before < 100%",
        "F:15:39: sites[0].hosts[1]: `a.*.foocorp.example`: a wildcard `*` is only allowed as the whole leftmost label",
        "F:15:62: sites[0].hosts[2]: `bad_host.foocorp.example`: label `bad_host` contains `_`",
        "F:17:10: sites[0].dns: no DNS provider named `nope` under dns.providers",
        "F:19:11: sites[1].name: duplicate site name `frontend` (also sites[0])",
        "F:20:13: sites[1].hosts[0]: duplicate host `frontend.foocorp.example` (also sites[0].hosts[0])",
        "F:20:39: sites[1].hosts[1]: `other.example.org` is not in zone `foocorp.example.` of DNS provider `local`",
        "F:21:13: sites[1].issuer: no issuer named `missing` under issuers",
        "F:23:34: sites[1].tls.clients: client certificates need `mode: MUTUAL`",
        "F:24:34: sites[1].route.port: expected integer, found a string",
    ];
    assert_lines_start_with(&stderr, &expected);
}

#[test]
fn a_yaml_syntax_error_is_reported_with_its_position() {
    let (code, _, stderr) = check("owner_id: o\nsites: [a, b\nstore: x\n");
    assert_eq!(code, 1);
    assert!(stderr.starts_with("F:3:"), "{stderr}");
    assert!(stderr.contains("YAML syntax error"), "{stderr}");
}

#[test]
fn missing_required_fields_are_named() {
    let (code, _, stderr) = check("owner_id: o\n");
    assert_eq!(code, 1);
    for field in ["store", "issuers", "sites"] {
        assert!(
            stderr.contains(&format!("F:1:1: {field}: missing required field")),
            "{stderr}"
        );
    }
}

#[test]
fn an_unreadable_file_is_an_error_not_a_panic() {
    let out = tlsward(&["check", "--config", "/nonexistent/tlsward.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tlsward.yaml:1:1: (document): cannot read"));
}

#[test]
fn a_hostname_load_balancer_at_the_zone_apex_is_a_config_error() {
    let text = VALID
        .replace("store: {files: {dir: out}}", "store: {files: {dir: out}}\ngateway: {address: {static: [lb.example.net]}}\ndns: {providers: {z: {zonefile: {zone: example.com.}}}}")
        .replace("hosts: [s.example.com]", "hosts: [example.com]\n    dns: z");
    let (code, _, stderr) = check(&text);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("is the zone apex, where a CNAME is impossible"),
        "{stderr}"
    );
}

#[test]
fn a_route_target_without_its_namespace_is_an_error_with_the_fix() {
    let text = "owner_id: o\nstore: {files: {dir: out}}\nissuers: {ca1: {ca: {}}}\nsites:\n  - name: gen\n    hosts: [gen.example.com]\n    issuer: ca1\n    route: {to: gen, port: 80}\n  - {name: b, hosts: [b.example.com], issuer: ca1, route: {to: b.blog.svc.cluster.local, port: 80}}\n  - {name: c, hosts: [c.example.com], issuer: ca1, route: {to: c.blog, port: 80}}\n  - {name: d, hosts: [d.example.com], issuer: ca1, route: {to: d.blog.example, port: 80}}\n";
    let (code, _, stderr) = check(text);
    assert_eq!(code, 1, "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert_eq!(
        lines[0],
        "F:8:17: sites[0].route.to: `gen` does not say the service's namespace: Istio would look for it in the gateway's namespace; write `gen.<namespace>` or `gen.<namespace>.svc.cluster.local`"
    );
    assert!(
        lines[1].starts_with("F:11:") && lines[1].contains("sites[3].route.to: `d.blog.example`"),
        "{stderr}"
    );
}

#[test]
fn a_namespaced_route_target_is_rendered_fully_qualified() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "owner_id: o\nstore: {files: {dir: out}}\ngateway: {address: {static: [203.0.113.10]}}\nissuers: {ca1: {ca: {}}}\nsites:\n  - {name: c, hosts: [c.example.com], issuer: ca1, route: {to: c.blog, port: 80}}\n",
    );
    let out = tlsward(&["plan", "--config", path.to_str().unwrap(), "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = run_once_in(dir.path(), &path);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let vs = std::fs::read_to_string(dir.path().join("out/manifests/virtualservice-c.yaml")).unwrap();
    assert!(vs.contains("host: c.blog.svc.cluster.local"), "{vs}");
}

#[test]
fn an_internationalized_host_is_issued_published_and_routed_as_its_a_label() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "owner_id: o\nstore: {files: {dir: out}}\ngateway: {address: {static: [203.0.113.10]}}\nissuers: {ca1: {ca: {}}}\ndns: {providers: {local: {zonefile: {zone: example.com.}}}}\nsites:\n  - {name: books, hosts: [bücher.example.com], issuer: ca1, dns: local, route: {to: books.shop, port: 80}}\n",
    );
    let plan = tlsward(&["plan", "--config", path.to_str().unwrap()]);
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    let text = String::from_utf8(plan.stdout).unwrap();
    assert!(
        text.contains("xn--bcher-kva.example.com (bücher.example.com)"),
        "{text}"
    );
    let run = run_once_in(dir.path(), &path);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let crt = std::fs::read_to_string(dir.path().join("out/credentials/books/tls.crt")).unwrap();
    assert_eq!(
        tlsward::pki::facts(&crt).unwrap().dns_names,
        vec!["xn--bcher-kva.example.com"]
    );
    let zone = std::fs::read_to_string(dir.path().join("out/dns/example.com.zone")).unwrap();
    assert!(zone.contains("xn--bcher-kva"), "{zone}");
    let vs = std::fs::read_to_string(dir.path().join("out/manifests/virtualservice-books.yaml")).unwrap();
    assert!(vs.contains("xn--bcher-kva.example.com"), "{vs}");
}

#[test]
fn the_mesh_section_is_checked_field_by_field_with_positions() {
    let text = r#"owner_id: o
store: {kubernetes: {}}
issuers: {ca1: {ca: {}}}
sites:
  - {name: blog, hosts: [blog.example.com], issuer: ca1, route: {to: frontend.blog-app, port: 80}}
mesh:
  mtls:
    - {namespace: blog-app, mode: STRICT}
    - {namespace: Legacy, port: 8080, mode: DISABLE}
    - {namespace: blog-app, mode: PERMISSIVE}
    - {namespace: blog-app, service: posts, mode: SOMETIMES}
  allow:
    - {namespace: blog-app, to: ratings, from: [reviews, "Bad_SA"]}
    - {namespace: blog-app, to: ratings, from: [users]}
  ingress_jwt:
    - {site: shop, issuer: "", jwks_uri: auth.example/jwks, paths: ["/api/*", "/a*b/c"]}
  workloads:
    - {namespace: blog-app, service: posts, ports: [{port: 80, name: http}]}
  prometheus: {url: "prometheus:9090"}
"#;
    let (code, _, stderr) = check(text);
    assert_eq!(code, 1, "{stderr}");
    let expected = [
        "F:9:19: mesh.mtls[1].namespace: `Legacy` must be lowercase",
        "F:9:33: mesh.mtls[1].port: a port belongs to a service: name the `service` too",
        "F:10:7: mesh.mtls[2]: the same scope as mesh.mtls[0]: one mode per namespace, service or port",
        "F:11:51: mesh.mtls[3].mode: \"SOMETIMES\" is not one of",
        "F:13:58: mesh.allow[0].from[1]: `Bad_SA` must be lowercase",
        "F:14:7: mesh.allow[1]: `ratings` already has an allow-list (mesh.allow[0]): list every caller there",
        "F:16:14: mesh.ingress_jwt[0].site: no site named `shop` under `sites`",
        "F:16:28: mesh.ingress_jwt[0].issuer: must not be empty",
        "F:16:42: mesh.ingress_jwt[0].jwks_uri: `auth.example/jwks` is not an http(s) URL",
        "F:16:79: mesh.ingress_jwt[0].paths[1]: `/a*b/c` is none of Istio's path forms",
        "F:17:3: mesh.workloads: only for the files store: in a cluster tlsward reads the live Services and pods",
        "F:19:21: mesh.prometheus.url: `prometheus:9090` is not an http(s) URL",
    ];
    assert_lines_start_with(&stderr, &expected);
}

#[test]
fn the_egress_section_is_checked_field_by_field_with_positions() {
    let text = r#"owner_id: o
store: {files: {dir: out}}
gateway: {address: {static: [203.0.113.10]}}
issuers: {ca1: {ca: {}}}
sites: []
egress:
  gateway: {namespace: Egress}
  services:
    - {host: www.httpbin.org, mode: passthrough, client_certificate: {issuer: ca1}}
    - {host: api.partner.example, mode: originate, ca_file: partner.pem}
    - {host: ledger.partner.example, mode: egress-gateway}
    - {host: bank.partner.example, mode: egress-gateway, ca_file: b.pem, client_certificate: {issuer: nope}}
    - {host: WWW.httpbin.org, mode: sideways}
    - {host: www.httpbin.org, mode: passthrough}
    - {host: x.partner.example, mode: egress-gateway, ca_file: x.pem, client_certificate: {cert_file: x.crt}}
"#;
    let (code, _, stderr) = check(text);
    assert_eq!(code, 1, "{stderr}");
    let expected = [
        "F:7:24: egress.gateway.namespace: `Egress` must be lowercase",
        "F:9:50: egress.services[0].client_certificate: only the egress gateway presents a client certificate",
        "F:10:61: egress.services[1].ca_file: `partner.pem` is not an absolute path: with `mode: originate` it is where the sidecar finds the CA",
        "F:11:7: egress.services[2]: `client_certificate` is required with `mode: egress-gateway`",
        "F:11:7: egress.services[2]: `ca_file` is required with `mode: egress-gateway`",
        "F:12:103: egress.services[3].client_certificate.issuer: no issuer named `nope` under issuers",
        "F:13:37: egress.services[4].mode: \"sideways\" is not one of",
        "F:14:14: egress.services[5].host: `www.httpbin.org` is already egress.services[0]",
        "F:15:91: egress.services[6].client_certificate: set either `issuer`, or both `cert_file` and `key_file`",
    ];
    assert_lines_start_with(&stderr, &expected);
}

#[test]
fn the_cloud_dns_providers_are_checked_field_by_field_with_positions() {
    let text = r#"owner_id: o
store: {files: {dir: out}}
gateway: {address: {static: [203.0.113.10]}}
issuers: {ca1: {ca: {}}}
dns:
  ttl: 30
  providers:
    aws: {route53: {hosted_zone_id: z-lower, region: Mars, endpoint_url: "ftp://x"}}
    cf: {cloudflare: {zone_id: abc, api_token_file: /t, api_token_env: T, proxied: [shop, nosuch, api]}}
    cf2: {cloudflare: {zone_id: 023e105f4ecef8ad9ca31a8372d0c353, alias: true}}
sites:
  - {name: shop, hosts: [shop.foocorp.example], issuer: ca1, dns: cf, route: {to: shop.default, port: 80}}
  - {name: api, hosts: [api.foocorp.example], issuer: ca1, dns: aws, route: {to: api.default, port: 80}}
"#;
    let (code, _, stderr) = check(text);
    assert_eq!(code, 1, "{stderr}");
    let expected = [
        "F:6:8: dns.ttl: 30s is below Cloudflare's minimum of 60s (provider `cf`)",
        "F:8:37: dns.providers.aws.route53.hosted_zone_id: `z-lower` is not a hosted zone id",
        "F:8:54: dns.providers.aws.route53.region: `Mars` is not an AWS region",
        "F:8:74: dns.providers.aws.route53.endpoint_url: `ftp://x` is not an http(s) URL",
        "F:9:22: dns.providers.cf.cloudflare: set only one of `api_token_file` and `api_token_env`",
        "F:9:32: dns.providers.cf.cloudflare.zone_id: `abc` is not a Cloudflare zone id (32 hexadecimal characters)",
        "F:9:91: dns.providers.cf.cloudflare.proxied[1]: no site named `nosuch` under sites",
        "F:9:99: dns.providers.cf.cloudflare.proxied[2]: site `api` does not publish through `cf` (its `dns` is `aws`)",
        "F:10:67: dns.providers.cf2.cloudflare.alias: unknown field",
    ];
    assert_lines_start_with(&stderr, &expected);
}

#[test]
fn the_gateway_api_refuses_what_its_listeners_cannot_carry() {
    let mut text = String::from(
        r#"owner_id: o
store: {files: {dir: out}}
gateway: {api: gateway-api, class: "Not_A_Class", address: {static: [203.0.113.10]}}
issuers: {ca1: {ca: {}}}
sites:
  - {name: a, hosts: [a.foocorp.example], issuer: ca1, tls: {mode: MUTUAL, clients: [c]}, route: {to: a.default, port: 80}}
  - {name: b, hosts: [b.foocorp.example], issuer: ca1, tls: {format: generic}, route: {to: b.default, port: 80}}
"#,
    );
    for i in 0..31 {
        text.push_str(&format!(
            "  - {{name: s{i}, hosts: [s{i}.foocorp.example, www.s{i}.foocorp.example], issuer: ca1, route: {{to: s.default, port: 80}}}}\n"
        ));
    }
    let (code, _, stderr) = check(&text);
    assert_eq!(code, 1, "{stderr}");
    let expected = [
        "F:3:36: gateway.class: `Not_A_Class` must be",
        "F:6:3: sites: 64 hosts need 65 listeners (one per host, and one for HTTP): a Gateway API Gateway holds at most 64",
        "F:6:68: sites[0].tls.mode: the Gateway API's v1 listeners do not validate client certificates",
        "F:7:70: sites[1].tls.format: `generic`: a Gateway API listener references a kubernetes.io/tls Secret",
    ];
    assert_lines_start_with(&stderr, &expected);
}
