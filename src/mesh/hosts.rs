//! Host names as Istio and TLS compare them: Istio's suffix wildcards for Gateway
//! and VirtualService hosts, RFC 6125's one-label wildcards for certificates, and
//! Service short names qualified the way a client's sidecar qualifies them.

use super::inventory::Service;

/// Istio's host match: `*` matches anything, `*.example.com` any name ending in
/// `.example.com` (any depth); a wildcard host is matched by a wildcard at least as wide.
pub fn matches(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    if pattern == "*" || pattern == host {
        return true;
    }
    match pattern.strip_prefix('*') {
        Some(suffix) => match host.strip_prefix('*') {
            Some(host_suffix) => host_suffix.ends_with(suffix),
            None => host.ends_with(suffix),
        },
        None => false,
    }
}

/// Whether two host patterns can both match one name.
pub fn overlap(a: &str, b: &str) -> bool {
    matches(a, b) || matches(b, a)
}

/// RFC 6125 §6.4: whether a certificate's DNS names cover `host`. A wildcard name
/// covers exactly one leftmost label; a wildcard host needs the same wildcard name.
pub fn covered_by(host: &str, dns_names: &[String]) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    dns_names.iter().any(|name| {
        let name = name.to_ascii_lowercase();
        if name == host {
            return true;
        }
        match (name.strip_prefix("*."), host.split_once('.')) {
            (Some(suffix), Some((first, rest))) => first != "*" && !first.is_empty() && rest == suffix,
            _ => false,
        }
    })
}

/// A Gateway server host split into its namespace part (`ns/`, `./`, `*/`) and host.
pub fn server_host(host: &str) -> (Option<&str>, &str) {
    match host.split_once('/') {
        Some((ns, h)) => (Some(ns), h),
        None => (None, host),
    }
}

/// The FQDN of a Service: `name.namespace.svc.<domain>`.
pub fn service_fqdn(service: &Service, domain: &str) -> String {
    format!("{}.{}.svc.{domain}", service.meta.name, service.meta.namespace)
}

/// A host as written in a rule of `namespace`: a short name (no dot) is a Service of
/// that namespace, anything else is taken as written.
pub fn qualify(host: &str, namespace: &str, domain: &str) -> String {
    if host.contains('.') || host.contains('*') {
        host.to_ascii_lowercase()
    } else {
        format!("{}.{namespace}.svc.{domain}", host.to_ascii_lowercase())
    }
}

/// The Service name and namespace a host refers to, when it names one in the cluster:
/// `name` (in `from_namespace`), `name.ns`, `name.ns.svc`, `name.ns.svc.<domain>`.
pub fn service_parts<'h>(host: &'h str, from_namespace: &'h str, domain: &str) -> Option<(&'h str, &'h str)> {
    let parts: Vec<&str> = host.trim_end_matches('.').split('.').collect();
    match parts.as_slice() {
        [name] => Some((name, from_namespace)),
        [name, ns] => Some((name, ns)),
        [name, ns, "svc"] => Some((name, ns)),
        [name, ns, "svc", rest @ ..] if rest.join(".") == domain => Some((name, ns)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_wildcards_match_any_depth_and_certificates_one_label() {
        assert!(matches("*.example.com", "a.b.example.com"));
        assert!(matches("*", "x.y"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(matches("*.example.com", "*.a.example.com"));
        assert!(!matches("*.a.example.com", "*.example.com"));
        let names = vec!["*.example.com".to_string()];
        assert!(covered_by("a.example.com", &names));
        assert!(!covered_by("a.b.example.com", &names));
        assert!(!covered_by("example.com", &names));
        assert!(covered_by("*.example.com", &names));
    }

    #[test]
    fn service_hosts_resolve_from_the_client_namespace() {
        assert_eq!(
            service_parts("reviews", "bookinfo", "cluster.local"),
            Some(("reviews", "bookinfo"))
        );
        assert_eq!(
            service_parts("reviews.shop.svc.cluster.local", "x", "cluster.local"),
            Some(("reviews", "shop"))
        );
        assert_eq!(service_parts("api.partner.example.com", "x", "cluster.local"), None);
        assert!(overlap("*.example.com", "a.example.com"));
        assert!(!overlap("a.example.com", "b.example.com"));
    }
}
