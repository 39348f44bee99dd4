#!/usr/bin/env python3
"""Writes the doctor fixture corpus: tests/doctor/<case>/{objects.yaml, expected.json}.

The committed files are what tests/doctor.rs reads; this script is how they were made
(run it again only to change the corpus: certificates are new each run). Every case is
judged as of AT (the test passes `--at`). Needs python3-cryptography and PyYAML.
"""

import datetime as dt
import json
import os
import shutil
import sys

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))
AT = "2027-01-01T00:00:00Z"
UTC = dt.timezone.utc


def day(s):
    return dt.datetime.fromisoformat(s).replace(tzinfo=UTC)


def key():
    return ec.generate_private_key(ec.SECP256R1())


def pem_key(k):
    return k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def cert(subject_key, cn, sans, start, end, issuer=None, ca=False):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (name, subject_key)
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(day(start))
        .not_valid_after(day(end))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(s) for s in sans]), critical=False)
    c = b.sign(issuer_key, hashes.SHA256())
    return c, c.public_bytes(serialization.Encoding.PEM).decode()


CA_KEY = key()
CA, CA_PEM = cert(CA_KEY, "FooCorp root", [], "2026-01-01", "2036-01-01", ca=True)


def leaf(sans, start="2026-06-01", end="2027-12-01"):
    k = key()
    _, pem = cert(k, sans[0], sans, start, end, issuer=(CA, CA_KEY))
    return pem, pem_key(k)


HTTPBIN = leaf(["httpbin.example.com"])
WILDCARD = leaf(["*.example.com"])
EXPIRED = leaf(["httpbin.example.com"], "2026-01-01", "2026-12-01")
EXPIRING = leaf(["httpbin.example.com"], "2026-03-01", "2027-01-20")
OTHER_KEY = pem_key(key())

# --- object builders -------------------------------------------------------------------


def namespace(name, inject=None):
    labels = {} if inject is None else {"istio-injection": "enabled" if inject else "disabled"}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def deployment(ns, name, labels, proxy=False, sa=None, annotations=None):
    containers = [{"name": "istio-proxy" if proxy else name, "image": "docker.io/istio/proxyv2" if proxy else f"{name}:1"}]
    pod_spec = {"containers": containers}
    if sa:
        pod_spec["serviceAccountName"] = sa
    template_meta = {"labels": labels}
    if annotations:
        template_meta["annotations"] = annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": template_meta, "spec": pod_spec}},
    }


def service(ns, name, selector, ports):
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": selector, "ports": ports},
    }


def port(number, name=None, target=None, app_protocol=None):
    p = {"port": number}
    if name is not None:
        p["name"] = name
    if target is not None:
        p["targetPort"] = target
    if app_protocol:
        p["appProtocol"] = app_protocol
    return p


def tls_secret(ns, name, pair, ca=None):
    data = {"tls.crt": pair[0], "tls.key": pair[1]}
    if ca:
        data["ca.crt"] = ca
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": ns},
        "stringData": data,
    }


def generic_secret(ns, name, data):
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}, "stringData": data}


def gateway(ns, name, servers, selector=None):
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": selector or {"istio": "ingressgateway"}, "servers": servers},
    }


def https(hosts, credential, mode="SIMPLE", number=443):
    return {
        "port": {"number": number, "name": f"https-{number}", "protocol": "HTTPS"},
        "tls": {"mode": mode, "credentialName": credential},
        "hosts": hosts,
    }


def virtual_service(ns, name, hosts, gateways, dest, dest_port=None):
    d = {"host": dest}
    if dest_port:
        d["port"] = {"number": dest_port}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"hosts": hosts, "gateways": gateways, "http": [{"route": [{"destination": d}]}]},
    }


def peer_auth(ns, name, mode=None, selector=None, port_level=None):
    spec = {}
    if mode:
        spec["mtls"] = {"mode": mode}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    if port_level:
        spec["portLevelMtls"] = {str(p): {"mode": m} for p, m in port_level.items()}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def dest_rule(ns, name, host, tls=None, port_level=None):
    policy = {}
    if tls:
        policy["tls"] = tls
    if port_level:
        policy["portLevelSettings"] = [{"port": {"number": p}, "tls": t} for p, t in port_level.items()]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"host": host, "trafficPolicy": policy},
    }


def authz(ns, name, selector, source):
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"matchLabels": selector}, "action": "ALLOW", "rules": [{"from": [{"source": source}]}]},
    }


def request_auth(ns, name, selector):
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "RequestAuthentication",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"matchLabels": selector},
            "jwtRules": [{"issuer": "https://auth.foocorp.example", "jwksUri": "https://auth.foocorp.example/jwks"}],
        },
    }


# --- the scenes the cases vary ---------------------------------------------------------

INGRESS = deployment("istio-system", "istio-ingressgateway", {"istio": "ingressgateway", "app": "istio-ingressgateway"}, proxy=True)
HTTPBIN_APP = [
    namespace("default", inject=True),
    deployment("default", "httpbin", {"app": "httpbin"}, sa="httpbin"),
    service("default", "httpbin", {"app": "httpbin"}, [port(8000, "http", 8080)]),
]


def foocorp(mode="MUTUAL", secret=None, gw=None, vs=None, app=None):
    """Istio's "Secure Gateways" task: httpbin behind mygateway with httpbin-credential."""
    if secret is None:
        secret = generic_secret(
            "istio-system", "httpbin-credential", {"key": HTTPBIN[1], "cert": HTTPBIN[0], "cacert": CA_PEM}
        )
    objects = [INGRESS] + (HTTPBIN_APP if app is None else app)
    objects += [secret] if isinstance(secret, dict) else secret
    objects.append(gw or gateway("istio-system", "mygateway", [https(["httpbin.example.com"], "httpbin-credential", mode)]))
    objects.append(vs or virtual_service("default", "httpbin", ["httpbin.example.com"], ["istio-system/mygateway"], "httpbin", 8000))
    return objects


def shop(pa=None, dr=None, extra=None, client_inject=True, server_inject=True):
    """reviews calls ratings in namespace shop."""
    objects = [
        namespace("shop", inject=True),
        deployment("shop", "ratings", {"app": "ratings"}, sa="ratings",
                   annotations=None if server_inject else {"sidecar.istio.io/inject": "false"}),
        service("shop", "ratings", {"app": "ratings"}, [port(9080, "http", 9080)]),
        deployment("shop", "reviews", {"app": "reviews"}, sa="reviews",
                   annotations=None if client_inject else {"sidecar.istio.io/inject": "false"}),
        service("shop", "reviews", {"app": "reviews"}, [port(9080, "http", 9080)]),
    ]
    return objects + (pa or []) + (dr or []) + (extra or [])


ISTIO_CODES = {
    "CredentialNotFound": "IST0101", "CredentialInvalid": "IST0161", "GatewaySelectorMatchesNoWorkload": "IST0101",
    "ConflictingGateways": "IST0145", "GatewayDuplicateCertificate": "IST0138", "VirtualServiceGatewayNotFound": "IST0101",
    "VirtualServiceHostNotFoundInGateway": "IST0132", "RouteDestinationNotFound": "IST0101",
    "PortNameNotUnderNamingConvention": "IST0118", "JwtOnNonHttpPort": "IST0119", "NoServerCertificateVerification": "IST0128",
}


def f(code, severity, obj, istio=None):
    kind, ns, name = obj.split("/")
    return {"code": code, "istio_code": istio or ISTIO_CODES.get(code), "severity": severity,
            "object": {"kind": kind, "namespace": ns, "name": name}}


GW = "Gateway/istio-system/mygateway"
CRED = "Secret/istio-system/httpbin-credential"
VS = "VirtualService/default/httpbin"
CASES = {}

# FooCorp exactly as Istio documents it, and its failures.
CASES["foocorp-mutual"] = (foocorp(), [])
CASES["foocorp-simple-tls-secret"] = (foocorp("SIMPLE", tls_secret("istio-system", "httpbin-credential", HTTPBIN)), [])
CASES["credential-not-found"] = (foocorp(secret=[generic_secret("istio-system", "unrelated", {"x": "y"})]), [f("CredentialNotFound", "error", GW)])
CASES["credential-in-gateway-namespace-not-workload-namespace"] = (
    [x for x in foocorp("SIMPLE", tls_secret("ingress", "httpbin-credential", HTTPBIN),
                        gw=gateway("ingress", "mygateway", [https(["httpbin.example.com"], "httpbin-credential")]),
                        vs=virtual_service("default", "httpbin", ["httpbin.example.com"], ["ingress/mygateway"], "httpbin", 8000))],
    [f("CredentialNotFound", "error", "Gateway/ingress/mygateway")])
CASES["credential-in-workload-namespace"] = (
    foocorp("SIMPLE", tls_secret("istio-system", "httpbin-credential", HTTPBIN),
            gw=gateway("ingress", "mygateway", [https(["httpbin.example.com"], "httpbin-credential")]),
            vs=virtual_service("default", "httpbin", ["httpbin.example.com"], ["ingress/mygateway"], "httpbin", 8000)),
    [])
CASES["credential-key-mismatch"] = (foocorp("SIMPLE", tls_secret("istio-system", "httpbin-credential", (HTTPBIN[0], OTHER_KEY))), [f("CredentialInvalid", "error", CRED)])
CASES["credential-missing-keys"] = (foocorp("SIMPLE", generic_secret("istio-system", "httpbin-credential", {"certificate": HTTPBIN[0], "private": HTTPBIN[1]})), [f("CredentialInvalid", "error", CRED)])
CASES["credential-expired"] = (foocorp("SIMPLE", tls_secret("istio-system", "httpbin-credential", EXPIRED)), [f("CredentialInvalid", "error", CRED)])
CASES["credential-expiring-soon"] = (foocorp("SIMPLE", tls_secret("istio-system", "httpbin-credential", EXPIRING)), [f("CredentialExpiringSoon", "warning", CRED)])
CASES["credential-not-covering-host"] = (
    foocorp("SIMPLE", tls_secret("istio-system", "httpbin-credential", HTTPBIN),
            gw=gateway("istio-system", "mygateway", [https(["httpbin.example.com", "www.example.com"], "httpbin-credential")])),
    [f("CredentialNotCoveringHost", "error", GW)])
CASES["wildcard-credential-covers-host"] = (foocorp("SIMPLE", tls_secret("istio-system", "httpbin-credential", WILDCARD)), [])
CASES["wildcard-credential-one-label-only"] = (
    foocorp("SIMPLE", tls_secret("istio-system", "httpbin-credential", WILDCARD),
            gw=gateway("istio-system", "mygateway", [https(["api.eu.example.com"], "httpbin-credential")]),
            vs=virtual_service("default", "httpbin", ["api.eu.example.com"], ["istio-system/mygateway"], "httpbin", 8000)),
    [f("CredentialNotCoveringHost", "error", GW)])
CASES["mutual-without-client-ca"] = (foocorp("MUTUAL", tls_secret("istio-system", "httpbin-credential", HTTPBIN)), [f("MutualWithoutClientCA", "error", GW)])
CASES["mutual-client-ca-in-cacert-secret"] = (
    foocorp("MUTUAL", [tls_secret("istio-system", "httpbin-credential", HTTPBIN),
                       generic_secret("istio-system", "httpbin-credential-cacert", {"cacert": CA_PEM})]),
    [])
CASES["gateway-selector-matches-no-workload"] = (
    foocorp(gw=gateway("istio-system", "mygateway", [https(["httpbin.example.com"], "httpbin-credential", "MUTUAL")], selector={"istio": "ingress"})),
    [f("GatewaySelectorMatchesNoWorkload", "error", GW)])
CASES["gateway-workload-installed-elsewhere"] = (
    [generic_secret("istio-system", "httpbin-credential", {"key": HTTPBIN[1], "cert": HTTPBIN[0], "cacert": CA_PEM}),
     gateway("istio-system", "mygateway", [https(["httpbin.example.com"], "httpbin-credential", "MUTUAL")]),
     virtual_service("default", "httpbin", ["httpbin.example.com"], ["istio-system/mygateway"], "httpbin.default.svc.cluster.local", 8000)],
    [f("GatewaySelectorMatchesNoWorkload", "warning", GW)])

SECOND = tls_secret("istio-system", "second-credential", WILDCARD)
CASES["conflicting-gateways"] = (
    foocorp("SIMPLE", [tls_secret("istio-system", "httpbin-credential", HTTPBIN), SECOND]) + [
        gateway("istio-system", "second", [https(["*.example.com"], "second-credential")])],
    [f("ConflictingGateways", "error", "Gateway/istio-system/second")])
CASES["gateways-on-distinct-hosts"] = (
    foocorp("SIMPLE", [tls_secret("istio-system", "httpbin-credential", HTTPBIN), SECOND]) + [
        gateway("istio-system", "second", [https(["www.example.com"], "second-credential")])],
    [])
CASES["gateway-duplicate-certificate"] = (
    foocorp("SIMPLE", [tls_secret("istio-system", "httpbin-credential", WILDCARD)]) + [
        gateway("istio-system", "second", [https(["www.example.com"], "httpbin-credential")])],
    [f("GatewayDuplicateCertificate", "warning", "Gateway/istio-system/second")])
CASES["gateways-on-distinct-ports"] = (
    foocorp("SIMPLE", [tls_secret("istio-system", "httpbin-credential", HTTPBIN)]) + [
        gateway("istio-system", "second", [https(["httpbin.example.com"], "httpbin-credential", number=8443)])],
    [])

CASES["virtual-service-gateway-not-found"] = (
    foocorp(vs=virtual_service("default", "httpbin", ["httpbin.example.com"], ["mygateway"], "httpbin", 8000)),
    [f("VirtualServiceGatewayNotFound", "error", VS)])
CASES["virtual-service-gateway-in-own-namespace"] = (
    foocorp(gw=gateway("default", "mygateway", [https(["httpbin.example.com"], "httpbin-credential", "MUTUAL")]),
            vs=virtual_service("default", "httpbin", ["httpbin.example.com"], ["mygateway", "mesh"], "httpbin", 8000)),
    # SDS reads the Secret where the gateway pods run (istio-system), not beside the Gateway.
    [])
CASES["virtual-service-host-not-in-gateway"] = (
    foocorp(vs=virtual_service("default", "httpbin", ["httpbin.example.org"], ["istio-system/mygateway"], "httpbin", 8000)),
    [f("VirtualServiceHostNotFoundInGateway", "warning", VS)])
CASES["virtual-service-host-under-gateway-wildcard"] = (
    foocorp("SIMPLE", tls_secret("istio-system", "httpbin-credential", WILDCARD),
            gw=gateway("istio-system", "mygateway", [https(["*.example.com"], "httpbin-credential")])),
    [])
CASES["virtual-service-host-outside-server-namespace"] = (
    foocorp(gw=gateway("istio-system", "mygateway", [https(["shop/httpbin.example.com"], "httpbin-credential", "MUTUAL")])),
    [f("VirtualServiceHostNotFoundInGateway", "warning", VS)])

CASES["route-destination-not-found"] = (
    foocorp(vs=virtual_service("default", "httpbin", ["httpbin.example.com"], ["istio-system/mygateway"], "httpbin2", 8000)),
    [f("RouteDestinationNotFound", "error", VS)])
CASES["route-destination-port-not-found"] = (
    foocorp(vs=virtual_service("default", "httpbin", ["httpbin.example.com"], ["istio-system/mygateway"], "httpbin", 80)),
    [f("RouteDestinationNotFound", "error", VS)])
HTTPBIN_ORG = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "httpbin-org", "namespace": "default"},
                  "spec": {"hosts": ["httpbin.org"], "ports": [{"number": 443, "name": "https", "protocol": "TLS"}], "resolution": "DNS"}}

CASES["route-destination-external-host"] = (
    foocorp(vs=virtual_service("default", "httpbin", ["httpbin.example.com"], ["istio-system/mygateway"], "httpbin.org", 443)),
    # Not a missing Service; but no ServiceEntry registers it (none in the input: a warning).
    [f("ExternalHostNotRegistered", "warning", VS)])
CASES["route-destination-registered-external-host"] = (
    foocorp(vs=virtual_service("default", "httpbin", ["httpbin.example.com"], ["istio-system/mygateway"], "httpbin.org", 443))
    + [HTTPBIN_ORG],
    [])

UNNAMED = [namespace("default", inject=True), deployment("default", "httpbin", {"app": "httpbin"}, sa="httpbin"),
           service("default", "httpbin", {"app": "httpbin"}, [port(8000, None, 8080)])]
CASES["unnamed-port-behind-tls-ingress"] = (foocorp(app=UNNAMED), [f("PortNameNotUnderNamingConvention", "error", "Service/default/httpbin")])
CASES["port-with-app-protocol-behind-tls-ingress"] = (
    foocorp(app=[namespace("default", inject=True), deployment("default", "httpbin", {"app": "httpbin"}),
                 service("default", "httpbin", {"app": "httpbin"}, [port(8000, "web", 8080, "http")])]),
    [])
CASES["unnamed-port-not-routed"] = (
    UNNAMED + [service("default", "metrics", {"app": "httpbin"}, [port(9090, "metrics")])],
    [f("PortNameNotUnderNamingConvention", "info", "Service/default/httpbin"),
     f("PortNameNotUnderNamingConvention", "info", "Service/default/metrics")])
CASES["unnamed-port-in-system-namespace"] = (
    [service("kube-system", "kube-dns", {"k8s-app": "kube-dns"}, [port(53, "dns", 53)])],
    [])

RATINGS_FQDN = "ratings.shop.svc.cluster.local"
DR_RATINGS = "DestinationRule/shop/ratings"
CASES["strict-against-disable-destination-rule"] = (
    shop([peer_auth("shop", "default", "STRICT")], [dest_rule("shop", "ratings", "ratings", {"mode": "DISABLE"})]),
    [f("MTLSConflict", "error", DR_RATINGS)])
CASES["strict-with-istio-mutual-destination-rule"] = (
    shop([peer_auth("shop", "default", "STRICT")], [dest_rule("shop", "ratings", "ratings", {"mode": "ISTIO_MUTUAL"})]),
    [])
CASES["strict-against-simple-tls-destination-rule"] = (
    shop([peer_auth("shop", "default", "STRICT")], [dest_rule("shop", "ratings", RATINGS_FQDN, {"mode": "SIMPLE", "caCertificates": "/etc/ca.pem"})]),
    [f("MTLSConflict", "error", DR_RATINGS)])
CASES["permissive-with-disable-destination-rule"] = (
    shop([peer_auth("shop", "default", "PERMISSIVE")], [dest_rule("shop", "ratings", "ratings", {"mode": "DISABLE"})]),
    [])
CASES["mesh-wide-strict-against-disable"] = (
    shop([peer_auth("istio-system", "default", "STRICT")], [dest_rule("shop", "ratings", "ratings", {"mode": "DISABLE"})]),
    [f("MTLSConflict", "error", DR_RATINGS)])
CASES["namespace-permissive-overrides-mesh-strict"] = (
    shop([peer_auth("istio-system", "default", "STRICT"), peer_auth("shop", "default", "PERMISSIVE")],
         [dest_rule("shop", "ratings", "ratings", {"mode": "DISABLE"})]),
    [])
CASES["port-level-strict-against-disable"] = (
    shop([peer_auth("shop", "ratings", None, {"app": "ratings"}, {9080: "STRICT"})],
         [dest_rule("shop", "ratings", "ratings", {"mode": "DISABLE"})]),
    [f("MTLSConflict", "error", DR_RATINGS)])
CASES["port-level-permissive-under-strict"] = (
    shop([peer_auth("shop", "default", "STRICT"), peer_auth("shop", "ratings", None, {"app": "ratings"}, {9080: "PERMISSIVE"})],
         [dest_rule("shop", "ratings", "ratings", {"mode": "DISABLE"})]),
    [])
CASES["client-namespace-rule-wins"] = (
    shop([peer_auth("shop", "default", "STRICT")], [dest_rule("shop", "ratings", "ratings", {"mode": "ISTIO_MUTUAL"}),
                                                     dest_rule("frontend", "ratings-from-frontend", RATINGS_FQDN, {"mode": "DISABLE"})],
         [namespace("frontend", inject=True), deployment("frontend", "web", {"app": "web"})]),
    [f("MTLSConflict", "error", "DestinationRule/frontend/ratings-from-frontend")])
CASES["root-namespace-rule-shadowed"] = (
    shop([peer_auth("shop", "default", "STRICT")], [dest_rule("istio-system", "ratings-plaintext", RATINGS_FQDN, {"mode": "DISABLE"}),
                                                     dest_rule("shop", "ratings", "ratings", {"mode": "ISTIO_MUTUAL"})]),
    [])
CASES["root-namespace-wildcard-rule-applies"] = (
    shop([peer_auth("shop", "default", "STRICT")], [dest_rule("istio-system", "all-plaintext", "*.shop.svc.cluster.local", {"mode": "DISABLE"}),
                                                     dest_rule("shop", "ratings", "ratings", {"mode": "ISTIO_MUTUAL"})]),
    [f("MTLSConflict", "error", "DestinationRule/istio-system/all-plaintext")])
CASES["istio-mutual-to-workload-without-sidecar"] = (
    shop(None, [dest_rule("shop", "ratings", "ratings", {"mode": "ISTIO_MUTUAL"})], server_inject=False),
    [f("MTLSConflict", "error", DR_RATINGS)])
CASES["disable-against-istio-mutual"] = (
    shop([peer_auth("shop", "ratings", "DISABLE", {"app": "ratings"})], [dest_rule("shop", "ratings", "ratings", {"mode": "ISTIO_MUTUAL"})]),
    [f("MTLSConflict", "error", DR_RATINGS)])
CASES["strict-with-client-without-sidecar"] = (
    shop([peer_auth("shop", "default", "STRICT")], None, client_inject=False),
    [f("MTLSConflict", "error", "Deployment/shop/reviews")])
CASES["permissive-with-client-without-sidecar"] = (shop([peer_auth("shop", "default", "PERMISSIVE")], None, client_inject=False), [])

SA = {"principals": ["cluster.local/ns/istio-system/sa/istio-ingressgateway"]}
CASES["jwt-authorization-in-front-of-permissive-workload"] = (
    shop([peer_auth("shop", "default", "PERMISSIVE")], None,
         [request_auth("shop", "ratings-jwt", {"app": "ratings"}),
          authz("shop", "ratings-via-ingress", {"app": "ratings"}, dict(SA, requestPrincipals=["*"]))]),
    [f("AuthorizationNeedsMTLS", "warning", "AuthorizationPolicy/shop/ratings-via-ingress")])
CASES["authorization-by-principal-on-strict-workload"] = (
    shop([peer_auth("shop", "default", "STRICT")], None, [authz("shop", "ratings-via-ingress", {"app": "ratings"}, SA)]),
    [])
CASES["authorization-by-request-principal-only"] = (
    shop(None, None, [authz("shop", "ratings-jwt-only", {"app": "ratings"}, {"requestPrincipals": ["*"]})]),
    [])
CASES["jwt-on-tcp-port"] = (
    [namespace("db", inject=True), deployment("db", "postgres", {"app": "postgres"}),
     service("db", "postgres", {"app": "postgres"}, [port(5432, "tcp-postgres")]),
     request_auth("db", "postgres-jwt", {"app": "postgres"})],
    [f("JwtOnNonHttpPort", "warning", "RequestAuthentication/db/postgres-jwt")])
CASES["jwt-on-http-port"] = (shop(None, None, [request_auth("shop", "ratings-jwt", {"app": "ratings"})]), [])
CASES["jwt-at-the-ingress-gateway"] = (
    foocorp() + [service("istio-system", "istio-ingressgateway", {"istio": "ingressgateway"},
                         [port(15021, "status-port"), port(80, "http2"), port(443, "https")]),
                 request_auth("istio-system", "frontend-jwt", {"istio": "ingressgateway"})],
    # The gateway's Gateway servers decide what is HTTP there, not its Service's port names.
    [])

EXT = [namespace("shop", inject=True)]
CASES["destination-rule-simple-without-ca"] = (
    EXT + [dest_rule("shop", "partner", "api.partner.example", {"mode": "SIMPLE"})],
    [f("NoServerCertificateVerification", "error", "DestinationRule/shop/partner")])
CASES["destination-rule-port-level-mutual-without-ca"] = (
    EXT + [dest_rule("shop", "partner", "api.partner.example", None, {443: {"mode": "MUTUAL", "clientCertificate": "/c.pem", "privateKey": "/k.pem"}})],
    [f("NoServerCertificateVerification", "warning", "DestinationRule/shop/partner", "IST0129")])
CASES["destination-rule-simple-with-ca"] = (
    EXT + [dest_rule("shop", "partner", "api.partner.example", {"mode": "SIMPLE", "caCertificates": "/etc/partner-ca.pem"}),
           dest_rule("shop", "ledger", "ledger.partner.example", {"mode": "MUTUAL", "credentialName": "ledger-client"})],
    [])

EXTERNAL_VS = virtual_service("shop", "partner", ["api.partner.example"], ["mesh"], "api.partner.example", 443)
PARTNER_SE = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "partner", "namespace": "shop"},
              "spec": {"hosts": ["*.partner.example"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                       "resolution": "NONE", "location": "MESH_EXTERNAL"}}
CASES["external-host-without-service-entry"] = (
    # Offline, with no ServiceEntry in the input at all, it may be kept elsewhere: a warning.
    EXT + [EXTERNAL_VS], [f("ExternalHostNotRegistered", "warning", "VirtualService/shop/partner")])
CASES["external-host-with-service-entry"] = (EXT + [EXTERNAL_VS, PARTNER_SE], [])

OTHER_KINDS = [
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "default"}, "data": {"a": "b"}},
    {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": {"name": "httpbin-org", "namespace": "default"},
     "spec": {"hosts": ["httpbin.org"], "ports": [{"number": 443, "name": "https", "protocol": "TLS"}], "resolution": "DNS"}},
    {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
]
CASES["other-kinds-are-ignored"] = (foocorp() + OTHER_KINDS, [])
CASES["objects-inside-a-list"] = ([{"apiVersion": "v1", "kind": "List", "items": foocorp()}], [])


class Literal(str):
    pass


def literal(dumper, data):
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")


yaml.add_representer(Literal, literal)


def blocks(v):
    if isinstance(v, dict):
        return {k: blocks(x) for k, x in v.items()}
    if isinstance(v, list):
        return [blocks(x) for x in v]
    if isinstance(v, str) and "\n" in v:
        return Literal(v)
    return v


def main():
    """No arguments: the whole corpus anew. Case names: only those (the rest kept)."""
    only = set(sys.argv[1:])
    for name in os.listdir(HERE):
        if os.path.isdir(os.path.join(HERE, name)) and (not only or name in only):
            shutil.rmtree(os.path.join(HERE, name))
    for name, (objects, expected) in CASES.items():
        if only and name not in only:
            continue
        d = os.path.join(HERE, name)
        os.makedirs(d)
        with open(os.path.join(d, "objects.yaml"), "w") as out:
            yaml.dump_all([blocks(o) for o in objects], out, sort_keys=False, width=1000)
        order = {"error": 0, "warning": 1, "info": 2}
        expected = sorted(expected, key=lambda x: (order[x["severity"]], x["code"], json.dumps(x["object"])))
        with open(os.path.join(d, "expected.json"), "w") as out:
            json.dump({"at": AT, "findings": expected}, out, indent=2)
            out.write("\n")
    print(f"{len(CASES)} cases")


main()
