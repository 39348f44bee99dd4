//! Domain types shared by the core and the adapters: hosts, addresses, records,
//! credentials as observed. Knows nothing of YAML, files or Kubernetes.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;
use time::OffsetDateTime;

/// Label and annotation keys, Secret key names: each fact in one place.
pub mod names {
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGED_BY_VALUE: &str = "tlsward";
    pub const OWNER: &str = "tlsward.io/owner";
    pub const SITE: &str = "tlsward.io/site";
    /// On the objects of the mesh step (`mesh`, `egress`): which part of the config
    /// they come from; the Gateways and VirtualServices of sites carry none.
    pub const PART: &str = "tlsward.io/part";
    pub const FIELD_MANAGER: &str = "tlsward";
    pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";
    pub const SECRET_TYPE_OPAQUE: &str = "Opaque";
    pub const TLS_CRT: &str = "tls.crt";
    pub const TLS_KEY: &str = "tls.key";
    pub const CA_CRT: &str = "ca.crt";
    pub const GENERIC_CERT: &str = "cert";
    pub const GENERIC_KEY: &str = "key";
    pub const GENERIC_CACERT: &str = "cacert";
    /// Prefix label of the ownership TXT record of a managed name.
    pub const OWNERSHIP_PREFIX: &str = "_tlsward";
    /// Stands for `*` in the ownership record's name of a wildcard host.
    pub const WILDCARD_LABEL: &str = "_wildcard";

    pub fn credential_secret(site: &str) -> String {
        format!("{site}-credential")
    }
    /// Where the `split` format keeps a site's client CA (Istio's `<credentialName>-cacert`).
    pub fn cacert_secret(site: &str) -> String {
        format!("{}-cacert", credential_secret(site))
    }
    pub fn https_server(site: &str) -> String {
        format!("https-{site}")
    }
    pub fn http_server(site: &str) -> String {
        format!("http-{site}")
    }
    /// The VirtualService that answers a site's pending HTTP-01 challenge.
    pub fn challenge_route(site: &str) -> String {
        format!("acme-{site}")
    }
}

/// A DNS host name as tlsward publishes it: lowercase, no trailing dot; a wildcard
/// only as the whole leftmost label.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Hostname(String);

impl Hostname {
    /// Checks RFC 1123 syntax (labels of letters, digits and inner hyphens, ≤ 63
    /// octets each, ≤ 253 in all). Says what is wrong otherwise.
    pub fn parse(text: &str, allow_wildcard: bool) -> Result<Hostname, String> {
        if text.is_empty() {
            return Err("host name is empty".into());
        }
        let name = text.strip_suffix('.').unwrap_or(text);
        // An internationalized name becomes its A-label form (UTS #46), which is what
        // certificates, DNS and Istio carry: `bücher.example` → `xn--bcher-kva.example`.
        let converted;
        let name = if name.is_ascii() {
            name
        } else {
            let (wildcard, rest) = match name.strip_prefix("*.") {
                Some(rest) => ("*.", rest),
                None => ("", name),
            };
            let ascii = idna::domain_to_ascii(rest)
                .map_err(|e| format!("`{text}` is not a valid internationalized host name ({e})"))?;
            converted = format!("{wildcard}{ascii}");
            &converted
        };
        if name.len() > 253 {
            return Err(format!("host name is {} characters long, more than 253", name.len()));
        }
        let labels: Vec<&str> = name.split('.').collect();
        if labels.len() < 2 {
            return Err(format!("`{text}` is not a fully qualified host name (it needs a dot)"));
        }
        for (i, label) in labels.iter().enumerate() {
            if *label == "*" {
                if i != 0 {
                    return Err(format!(
                        "`{text}`: a wildcard `*` is only allowed as the whole leftmost label"
                    ));
                }
                if !allow_wildcard {
                    return Err(format!("`{text}`: a wildcard is not allowed here"));
                }
                continue;
            }
            check_label(label).map_err(|e| format!("`{text}`: {e}"))?;
        }
        Ok(Hostname(name.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as people write it: the Unicode form of an internationalized name
    /// (`bücher.example`), else the name itself.
    pub fn unicode(&self) -> String {
        if !self.0.split('.').any(|l| l.starts_with("xn--")) {
            return self.0.clone();
        }
        let (wildcard, rest) = match self.0.strip_prefix("*.") {
            Some(rest) => ("*.", rest),
            None => ("", self.0.as_str()),
        };
        let (unicode, result) = idna::domain_to_unicode(rest);
        match result {
            Ok(()) => format!("{wildcard}{unicode}"),
            Err(_) => self.0.clone(),
        }
    }

    /// Both forms where they differ: `xn--bcher-kva.example (bücher.example)`.
    pub fn both_forms(&self) -> String {
        let unicode = self.unicode();
        if unicode == self.0 {
            unicode
        } else {
            format!("{} ({unicode})", self.0)
        }
    }

    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }

    /// Whether this name is `zone` or lies below it (`zone` without trailing dot).
    pub fn within(&self, zone: &str) -> bool {
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        self.0 == zone || self.0.ends_with(&format!(".{zone}"))
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One DNS label per RFC 1123 (also used for site names).
pub fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("empty label (two dots in a row, or a leading dot)".into());
    }
    if label.len() > 63 {
        return Err(format!(
            "label `{label}` is {} characters long, more than 63",
            label.len()
        ));
    }
    if let Some(c) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
        return Err(format!(
            "label `{label}` contains `{c}`: only letters, digits and `-` are allowed"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label `{label}` starts or ends with `-`"));
    }
    Ok(())
}

/// One address of the gateway's load balancer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(untagged)]
pub enum Address {
    Ip(IpAddr),
    Hostname(Hostname),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(ip) => write!(f, "{ip}"),
            Address::Hostname(h) => write!(f, "{h}"),
        }
    }
}

/// The load balancer's current addresses, sorted and without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GatewayAddress(Vec<Address>);

impl GatewayAddress {
    pub fn new(mut addresses: Vec<Address>) -> Self {
        addresses.sort();
        addresses.dedup();
        GatewayAddress(addresses)
    }
    pub fn addresses(&self) -> &[Address] {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum RecordType {
    A,
    AAAA,
    CNAME,
    TXT,
    /// Any other type (NS, MX, …): seen so that it is never clobbered, never managed.
    Other,
}

impl RecordType {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::A => "A",
            RecordType::AAAA => "AAAA",
            RecordType::CNAME => "CNAME",
            RecordType::TXT => "TXT",
            RecordType::Other => "OTHER",
        }
    }
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A DNS record set: one name and type, all its values (sorted), one TTL.
/// Names are absolute without the trailing dot; TXT values are unquoted text;
/// CNAME targets are host names without the trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RecordSet {
    pub name: String,
    pub kind: RecordType,
    pub ttl: u32,
    pub values: Vec<String>,
}

impl RecordSet {
    pub fn new(name: impl Into<String>, kind: RecordType, ttl: u32, mut values: Vec<String>) -> Self {
        values.sort();
        values.dedup();
        RecordSet {
            name: name.into(),
            kind,
            ttl,
            values,
        }
    }
}

/// What tlsward learned from a stored certificate; the core decides from this alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFacts {
    /// DNS names in the subjectAltName, lowercase, sorted.
    pub dns_names: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// SHA-256 of the issuing certificate's DER, when known (detects an issuer change).
    pub issuer_fingerprint: Option<String>,
    pub serial_hex: String,
    /// The algorithm of the certificate's key, when it is one tlsward makes.
    pub key_algorithm: Option<crate::config::KeyAlgorithm>,
}

/// A stored credential as observed: facts, and whether its key matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedCredential {
    pub site: String,
    /// The issuer name recorded when it was written.
    pub issuer: String,
    pub server: CertificateFacts,
    pub key_matches: bool,
    /// Client CA fingerprint (MUTUAL sites).
    pub client_ca_fingerprint: Option<String>,
    /// When the client CA expires (MUTUAL sites).
    pub client_ca_not_after: Option<OffsetDateTime>,
    /// Client certificates by name.
    pub clients: Vec<(String, CertificateFacts)>,
    /// The Secret layout it is stored in (meaningful for the Kubernetes store only).
    pub format: crate::config::SecretFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internationalized_names_become_a_labels_and_keep_their_unicode_form() {
        let h = Hostname::parse("Bücher.example.com", false).unwrap();
        assert_eq!(h.as_str(), "xn--bcher-kva.example.com");
        assert_eq!(h.unicode(), "bücher.example.com");
        assert_eq!(h.both_forms(), "xn--bcher-kva.example.com (bücher.example.com)");
        let w = Hostname::parse("*.bücher.example.com", true).unwrap();
        assert_eq!(w.as_str(), "*.xn--bcher-kva.example.com");
        assert_eq!(w.unicode(), "*.bücher.example.com");
        // An A-label written directly is the same name.
        assert_eq!(Hostname::parse("xn--bcher-kva.example.com", false).unwrap(), h);
        assert_eq!(
            Hostname::parse("shop.example.com", false).unwrap().both_forms(),
            "shop.example.com"
        );
        let bad = Hostname::parse("bü\u{200b}cher_x.example.com", false).unwrap_err();
        assert!(bad.contains("bü"), "{bad}");
    }

    #[test]
    fn hostnames_accept_rfc1123_names_and_lowercase_them() {
        assert_eq!(
            Hostname::parse("Shop.FooCorp.example", false).unwrap().as_str(),
            "shop.foocorp.example"
        );
        assert_eq!(
            Hostname::parse("a-1.b2.example.", false).unwrap().as_str(),
            "a-1.b2.example"
        );
        assert!(Hostname::parse("*.foocorp.example", true).unwrap().is_wildcard());
    }

    #[test]
    fn hostnames_reject_what_rfc1123_forbids() {
        let cases = [
            ("", "empty"),
            ("localhost", "fully qualified"),
            ("a..example", "empty label"),
            ("-a.example", "starts or ends with `-`"),
            ("a-.example", "starts or ends with `-`"),
            ("a_b.example", "contains `_`"),
            ("shop.*.example", "only allowed as the whole leftmost label"),
            ("*x.example", "contains `*`"),
            ("*.example.com", "not allowed here"),
        ];
        for (name, expected) in cases {
            let err = Hostname::parse(name, false).unwrap_err();
            assert!(err.contains(expected), "{name}: {err}");
        }
    }

    #[test]
    fn hostname_lengths_are_bounded() {
        let long_label = format!("{}.example", "a".repeat(64));
        assert!(
            Hostname::parse(&long_label, false)
                .unwrap_err()
                .contains("more than 63")
        );
        let ok_label = format!("{}.example", "a".repeat(63));
        assert!(Hostname::parse(&ok_label, false).is_ok());
        let long_name = format!("{}example", "abcdefghi.".repeat(25));
        assert!(
            Hostname::parse(&long_name, false)
                .unwrap_err()
                .contains("more than 253")
        );
    }

    #[test]
    fn within_zone_compares_whole_labels() {
        let h = Hostname::parse("shop.foocorp.example", false).unwrap();
        assert!(h.within("foocorp.example."));
        assert!(!h.within("corp.example."));
        assert!(
            Hostname::parse("foocorp.example", false)
                .unwrap()
                .within("foocorp.example")
        );
    }

    #[test]
    fn gateway_address_sorts_and_dedups() {
        let a = GatewayAddress::new(vec![
            Address::Ip("203.0.113.11".parse().unwrap()),
            Address::Ip("203.0.113.10".parse().unwrap()),
            Address::Ip("203.0.113.11".parse().unwrap()),
        ]);
        assert_eq!(a.addresses().len(), 2);
        assert_eq!(a.addresses()[0].to_string(), "203.0.113.10");
    }
}
