//! Fuzzed input, by property tests: the config loader never panics and every error it
//! reports has a position; host names are accepted or refused by one rule, and an
//! accepted one means the same name to the config, the zone file and RFC 2136; zone
//! files round-trip; garbage in a stored credential is a clear reason to re-issue,
//! never a crash. Each test prints how many inputs it tried.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use support::*;
use tlsward::config::Config;
use tlsward::model::{Hostname, RecordSet, RecordType};
use tlsward::render::zone::{self, Zone};

/// Characters that mean something to YAML, and a few that do not.
const YAML_CHARS: &[char] = &[
    ':', '{', '}', '[', ']', '-', '"', '\'', '#', '\t', '\n', '&', '*', '!', '|', '>', '%', '@', '`', ' ', ',', '?',
    'x', '9', 'é', '\u{0}',
];

#[derive(Clone, Debug)]
enum Mutation {
    Truncate(usize),
    Replace(usize, char),
    Insert(usize, String),
    Delete(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let snippets = prop::sample::select(vec![
        "sites: 7\n".to_string(),
        "  - {name: x}\n".to_string(),
        "owner_id: [\n".to_string(),
        "dns: {ttl: -1}\n".to_string(),
        "  hosts: [\"*.*.x\", \"\"]\n".to_string(),
        "issuers: {a: {acme: {}}}\n".to_string(),
        "&anchor\n".to_string(),
        "gateway: {api: gateway-api, class: \"\"}\n".to_string(),
        "    - {name: Frontend, hosts: [x..y], issuer: nope, route: {to: a, port: 0}}\n".to_string(),
        "\u{feff}".to_string(),
    ]);
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), prop::sample::select(YAML_CHARS)).prop_map(|(i, c)| Mutation::Replace(i, c)),
        (any::<usize>(), snippets).prop_map(|(i, s)| Mutation::Insert(i, s)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
    ]
}

fn boundary(text: &str, i: usize) -> usize {
    let mut i = i % (text.len() + 1);
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(mut text: String, m: &Mutation) -> String {
    match m {
        Mutation::Truncate(i) => text.truncate(boundary(&text, *i)),
        Mutation::Replace(i, c) => {
            let at = boundary(&text, *i);
            if at < text.len() {
                let end = at + text[at..].chars().next().map_or(0, char::len_utf8);
                text.replace_range(at..end, &c.to_string());
            }
        }
        Mutation::Insert(i, s) => {
            let at = boundary(&text, *i);
            text.insert_str(at, s);
        }
        Mutation::Delete(i, n) => {
            let at = boundary(&text, *i);
            let end = boundary(&text, at + n);
            if end > at {
                text.replace_range(at..end, "");
            }
        }
    }
    text
}

/// Every error names a line and a column inside (or just past) the text.
fn assert_positioned(text: &str, result: Result<tlsward::config::ConfigFile, tlsward::config::ConfigErrors>) {
    if let Err(errors) = result {
        assert!(!errors.0.is_empty(), "an error without a message");
        let lines = text.lines().count().max(1) + 1;
        for e in &errors.0 {
            assert!(
                e.pos.line >= 1 && e.pos.line <= lines && e.pos.col >= 1,
                "no position in {:?}: {e}\n--- input ---\n{text}",
                e.pos
            );
            assert!(!e.message.is_empty(), "an empty message: {e}");
        }
    }
}

static CONFIGS: AtomicUsize = AtomicUsize::new(0);

proptest! {
    #![proptest_config(ProptestConfig { cases: 768, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_config_loader_never_panics_and_every_error_has_a_position(
        mutations in prop::collection::vec(mutation(), 1..5),
        base in prop::sample::select(vec!["config/local.yaml", "config/examples/every-provider.yaml", "config/examples/mesh-and-egress.yaml", "config/examples/gateway-api.yaml"]),
    ) {
        let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(base)).unwrap();
        let text = mutations.iter().fold(text, apply);
        assert_positioned(&text, Config::parse("f.yaml", &text));
        CONFIGS.fetch_add(1, Ordering::Relaxed);
    }

    #[test]
    fn arbitrary_text_is_an_error_with_a_position_never_a_panic(text in "\\PC{0,300}") {
        assert_positioned(&text, Config::parse("f.yaml", &text));
        CONFIGS.fetch_add(1, Ordering::Relaxed);
    }
}

/// A label as people mistype them: case, IDN, `_`, `*`, and lengths past 63.
fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?",
        "[A-Za-z0-9_*-]{0,8}",
        "[a-z]{60,66}",
        "(bücher|straße|ΑΩ|xn--bcher-kva|-x|x-)",
    ]
}

fn host() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(label(), 1..6),
        prop::bool::ANY,
        prop::bool::ANY,
        0usize..4,
    )
        .prop_map(|(labels, wildcard, dot, pad)| {
            let mut h = labels.join(".");
            // Some names pushed towards the 253-octet limit.
            for _ in 0..pad {
                h = format!("{}.{h}", "a".repeat(63));
            }
            if wildcard {
                h = format!("*.{h}");
            }
            if dot {
                h.push('.');
            }
            h
        })
}

static HOSTS: (AtomicUsize, AtomicUsize) = (AtomicUsize::new(0), AtomicUsize::new(0));

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn one_rule_decides_a_host_name_and_an_accepted_one_means_the_same_everywhere(text in host()) {
        let config = format!(
            "owner_id: o\nstore: {{files: {{dir: out}}}}\ngateway: {{address: {{static: [203.0.113.10]}}}}\nissuers: {{ca1: {{ca: {{}}}}}}\nsites:\n  - {{name: s, hosts: [\"{text}\"], issuer: ca1, route: {{to: s.default, port: 80}}}}\n"
        );
        let checked = Config::parse("f.yaml", &config);
        match Hostname::parse(&text, true) {
            Ok(h) => {
                HOSTS.0.fetch_add(1, Ordering::Relaxed);
                let name = h.as_str();
                // The config takes it (the same rule).
                prop_assert!(checked.is_ok(), "{text}: {:?}", checked.err().map(|e| e.to_string()));
                prop_assert!(name.is_ascii() && name == name.to_ascii_lowercase() && name.len() <= 253);
                prop_assert!(name.split('.').all(|l| !l.is_empty() && l.len() <= 63));
                // RFC 2136 (hickory) reads the same name.
                let dns = hickory_proto::rr::Name::from_ascii(format!("{name}.")).unwrap();
                prop_assert_eq!(dns.to_ascii().trim_end_matches('.').to_ascii_lowercase(), name);
                // The zone file writes and reads back the same name.
                let origin = name.split('.').skip(1).collect::<Vec<_>>().join(".");
                let mut z = Zone::new(&origin, 60, 1);
                let set = RecordSet::new(name, RecordType::A, 60, vec!["203.0.113.10".into()]);
                z.set(name, RecordType::A, Some(&set));
                let back = zone::parse(&z.render(), &origin).unwrap();
                prop_assert!(back.record_sets().contains(&set), "{name}: {:?}", back.record_sets());
            }
            Err(why) => {
                HOSTS.1.fetch_add(1, Ordering::Relaxed);
                // Refused by the config too, at the host's own position, saying why.
                let errors = checked.expect_err("the config accepted a refused host").0;
                prop_assert!(
                    errors.iter().any(|e| e.field == "sites[0].hosts[0]" && e.pos.line == 6),
                    "{text}: {why}: {:?}", errors.iter().map(|e| e.to_string()).collect::<Vec<_>>()
                );
            }
        }
    }
}

fn value(kind: RecordType) -> BoxedStrategy<String> {
    match kind {
        RecordType::A => any::<std::net::Ipv4Addr>().prop_map(|a| a.to_string()).boxed(),
        RecordType::AAAA => any::<std::net::Ipv6Addr>().prop_map(|a| a.to_string()).boxed(),
        RecordType::CNAME => "[a-z]{1,10}\\.[a-z]{2,6}".boxed(),
        // Quotes, backslashes, semicolons, parentheses, spaces, long strings, and
        // characters of several octets across the 255-octet cut.
        _ => "([ -~]|é|€|😀){0,300}".boxed(),
    }
}

fn record_set() -> impl Strategy<Value = RecordSet> {
    (
        "[a-z0-9_]{1,12}",
        prop::sample::select(vec![
            RecordType::A,
            RecordType::AAAA,
            RecordType::CNAME,
            RecordType::TXT,
        ]),
        1u32..86_400,
    )
        .prop_flat_map(|(label, kind, ttl)| {
            let n = if kind == RecordType::CNAME { 1..2 } else { 1..4 };
            prop::collection::vec(value(kind), n)
                .prop_map(move |values| RecordSet::new(format!("{label}.zone.example"), kind, ttl, values))
        })
}

static ZONES: AtomicUsize = AtomicUsize::new(0);

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn zone_files_round_trip(sets in prop::collection::vec(record_set(), 0..12)) {
        let mut z = Zone::new("zone.example", 60, 2026112901);
        let mut want: std::collections::BTreeMap<(String, RecordType), RecordSet> = Default::default();
        for s in sets {
            // A CNAME takes a name alone.
            if s.kind == RecordType::CNAME || want.keys().any(|(n, k)| n == &s.name && *k == RecordType::CNAME) {
                want.retain(|(n, _), _| n != &s.name);
                for kind in [RecordType::A, RecordType::AAAA, RecordType::CNAME, RecordType::TXT] {
                    z.set(&s.name, kind, None);
                }
            }
            z.set(&s.name, s.kind, Some(&s));
            want.insert((s.name.clone(), s.kind), s);
        }
        let text = z.render();
        let back = zone::parse(&text, "zone.example").unwrap_or_else(|e| panic!("{e}\n{text}"));
        let got: Vec<RecordSet> = back
            .record_sets()
            .into_iter()
            .filter(|r| r.kind != RecordType::Other)
            .collect();
        let want: Vec<RecordSet> = want.into_values().collect();
        prop_assert_eq!(got, want, "{}", text);
        prop_assert_eq!(back.soa.serial, 2026112901);
        ZONES.fetch_add(1, Ordering::Relaxed);
    }
}

/// Garbage where a credential was: truncated, the wrong PEM type, bytes.
fn garbage() -> impl Strategy<Value = (String, Vec<u8>)> {
    let file = prop::sample::select(vec!["tls.crt".to_string(), "tls.key".to_string()]);
    let content = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..400),
        (0usize..600).prop_map(|n| b"-----BEGIN CERTIFICATE-----\nMIIB".repeat(1 + n / 40)),
        Just(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_vec()),
        Just(Vec::new()),
    ];
    (file, content)
}

static CREDENTIALS: AtomicUsize = AtomicUsize::new(0);

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn garbage_in_a_stored_credential_is_a_reason_to_reissue_never_a_crash((file, content) in garbage()) {
        let w = Workdir::new();
        w.write_config(&local_config());
        assert_success(&w.run_once());
        let path = w.out().join("credentials/frontend").join(&file);
        std::fs::write(&path, &content).unwrap();
        let out = w.run_once();
        let stderr = String::from_utf8_lossy(&out.stderr);
        prop_assert_eq!(out.status.code(), Some(0), "{}", stderr);
        prop_assert!(stderr.contains("\"site\":\"frontend\""), "{}", stderr);
        let cert = std::fs::read_to_string(w.out().join("credentials/frontend/tls.crt")).unwrap();
        let key = tlsward::pki::PrivateKeyPem::new(std::fs::read_to_string(w.out().join("credentials/frontend/tls.key")).unwrap());
        prop_assert!(tlsward::pki::key_matches(&cert, &key).unwrap());
        CREDENTIALS.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn zz_summary() {
    // Printed for the record: scripts/test.sh runs this file on one thread, so that
    // this (sorted last) counts every input the others tried.
    println!(
        "fuzz: configs {}, hosts accepted {} refused {}, zones {}, credentials {}",
        CONFIGS.load(Ordering::Relaxed),
        HOSTS.0.load(Ordering::Relaxed),
        HOSTS.1.load(Ordering::Relaxed),
        ZONES.load(Ordering::Relaxed),
        CREDENTIALS.load(Ordering::Relaxed)
    );
}
