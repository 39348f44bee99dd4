//! The Route 53 provider, through the official AWS SDK and its default credential
//! chain (environment, profile files, web identity for IRSA, container and instance
//! roles). A pass reads the hosted zone with paginated `ListResourceRecordSets` and
//! writes one `ChangeResourceRecordSets` batch, split only past Route 53's limits
//! (1,000 values, 32,000 characters; a name's changes never split). Route 53 applies a
//! batch atomically and checks part of what tlsward saw while doing so: a name that
//! was free is claimed with CREATE (which fails if someone took it meanwhile) and a
//! delete names the exact values read (which fails if they changed); an owned name is
//! rewritten with UPSERT. Throttling (`Throttling`, `PriorRequestNotComplete`) is
//! retried with the SDK's exponential backoff; a batch that publishes an ACME
//! challenge returns only once `GetChange` reports it `INSYNC`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_route53::Client;
use aws_sdk_route53::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_route53::types::{
    AliasTarget, Change as R53Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord, ResourceRecordSet,
    RrType,
};

use super::registry::{CHALLENGE_LABEL, Change, Guard, ZoneDiff, host_of_record};
use super::{DnsError, DnsProvider};
use crate::config::Route53Spec;
use crate::model::{RecordSet, RecordType};

/// Attempts per request, the first included, before a throttled call gives up.
pub const ATTEMPTS: u32 = 5;
/// Route 53's limits on one `ChangeResourceRecordSets` request (an UPSERT counts twice).
const MAX_VALUES: usize = 1_000;
const MAX_CHARS: usize = 32_000;
/// How long a challenge batch may take to reach every Route 53 name server.
const INSYNC_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Route53Provider {
    name: String,
    zone_id: String,
    spec: Route53Spec,
    ttl: u32,
    deadline: Duration,
    client: tokio::sync::OnceCell<Client>,
    /// The record sets of the last read, as Route 53 holds them, by the name and type
    /// tlsward sees: a delete must repeat them exactly.
    seen: Mutex<BTreeMap<(String, RecordType), ResourceRecordSet>>,
}

/// The canonical hosted zone of Elastic Load Balancing's names in a region, which an
/// alias record must name (AWS's published table; Classic and Application Load
/// Balancers `*.<region>.elb.amazonaws.com`, Network Load Balancers
/// `*.elb.<region>.amazonaws.com`).
pub fn elb_zone(target: &str) -> Option<&'static str> {
    const ALB: [(&str, &str); 17] = [
        ("us-east-1", "Z35SXDOTRQ7X7K"),
        ("us-east-2", "Z3AADJGX6KTTL2"),
        ("us-west-1", "Z368ELLRRE2KJ0"),
        ("us-west-2", "Z1H1FL5HABSF5"),
        ("ca-central-1", "ZQSVJUPU6J1EY"),
        ("ap-south-1", "ZP97RAFLXTNZK"),
        ("ap-northeast-1", "Z14GRHDCWA56QT"),
        ("ap-northeast-2", "ZWKZPGTI48KDX"),
        ("ap-northeast-3", "Z5LXEXXYW11ES"),
        ("ap-southeast-1", "Z1LMS91P8CMLE5"),
        ("ap-southeast-2", "Z1GM3OXH4ZPM65"),
        ("eu-central-1", "Z215JYRZR1TBD5"),
        ("eu-west-1", "Z32O12XQLNTSW2"),
        ("eu-west-2", "ZHURV8PSTC4K8"),
        ("eu-west-3", "Z3Q77PNBQS71R4"),
        ("eu-north-1", "Z23TAZ6LKFMNIO"),
        ("sa-east-1", "Z2P70J7HTTTPLU"),
    ];
    const NLB: [(&str, &str); 17] = [
        ("us-east-1", "Z26RNL4JYFTOTI"),
        ("us-east-2", "ZLMOA37VPKANP"),
        ("us-west-1", "Z24FKFUX50B4VW"),
        ("us-west-2", "Z18D5FSROUN65G"),
        ("ca-central-1", "Z2EPGBW3API2WT"),
        ("ap-south-1", "ZVDDRBQ08TROA"),
        ("ap-northeast-1", "Z31USIVHYNEOWT"),
        ("ap-northeast-2", "ZIBE1TIR4HY56"),
        ("ap-northeast-3", "Z1GWIQ4HH19I5X"),
        ("ap-southeast-1", "ZKVM4W9LS7TM"),
        ("ap-southeast-2", "ZCT6FZBF4DROD"),
        ("eu-central-1", "Z3F0SRJ5LGBH90"),
        ("eu-west-1", "Z2IFOLAFXWLO4F"),
        ("eu-west-2", "ZD4D7Y8KGAS4G"),
        ("eu-west-3", "Z1CMS0P5QUZ6D5"),
        ("eu-north-1", "Z1UDT6IFJ4EJM"),
        ("sa-east-1", "ZTK26PT1VY4CU"),
    ];
    let labels: Vec<&str> = target.split('.').collect();
    let n = labels.len();
    if n < 5 || labels[n - 2..] != ["amazonaws", "com"] {
        return None;
    }
    let lookup = |table: &[(&'static str, &'static str)], region: &str| {
        table.iter().find(|(r, _)| *r == region).map(|(_, z)| *z)
    };
    match (labels[n - 4], labels[n - 3]) {
        (region, "elb") => lookup(&ALB, region),
        ("elb", region) => lookup(&NLB, region),
        _ => None,
    }
}

/// A Route 53 name as tlsward writes names: `\ddd` escapes decoded (`\052` is `*`),
/// lowercase, no trailing dot.
fn plain_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
            && let Ok(code) = u8::from_str_radix(&name[i + 1..i + 4], 8)
        {
            out.push(code as char);
            i += 4;
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out.trim_end_matches('.').to_ascii_lowercase()
}

/// An alias target's name as tlsward compares it (`dualstack.` is how the console
/// writes the same load balancer).
fn alias_name(dns_name: &str) -> String {
    let name = plain_name(dns_name);
    name.strip_prefix("dualstack.").map(str::to_string).unwrap_or(name)
}

impl Route53Provider {
    pub fn new(name: &str, spec: &Route53Spec, ttl: u32, deadline: Duration) -> Route53Provider {
        let zone_id = spec
            .hosted_zone_id
            .strip_prefix("/hostedzone/")
            .unwrap_or(&spec.hosted_zone_id)
            .to_string();
        Route53Provider {
            name: name.to_string(),
            zone_id,
            spec: spec.clone(),
            ttl,
            deadline,
            client: tokio::sync::OnceCell::new(),
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// The SDK client, made on first use (the credential chain is resolved lazily, per
    /// request): every attempt bounded by the request deadline, the whole call with its
    /// retries by four of them.
    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                use aws_config::retry::RetryConfig;
                use aws_config::timeout::TimeoutConfig;
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .region(aws_config::Region::new(self.spec.region.clone()))
                    .retry_config(RetryConfig::standard().with_max_attempts(ATTEMPTS))
                    .timeout_config(
                        TimeoutConfig::builder()
                            .connect_timeout(self.deadline)
                            .operation_attempt_timeout(self.deadline)
                            .operation_timeout(self.deadline * 4)
                            .build(),
                    );
                if let Some(url) = &self.spec.endpoint_url {
                    loader = loader.endpoint_url(url);
                }
                Client::new(&loader.load().await)
            })
            .await
    }

    /// How errors name where they came from: the hosted zone (and a non-AWS endpoint).
    fn server(&self) -> String {
        match &self.spec.endpoint_url {
            Some(url) => format!("Route 53 hosted zone {} at {url}", self.zone_id),
            None => format!("Route 53 hosted zone {}", self.zone_id),
        }
    }

    fn error<E>(&self, e: SdkError<E, aws_sdk_route53::config::http::HttpResponse>) -> DnsError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &e {
            SdkError::ServiceError(se) => {
                let err = se.err();
                let status = se.raw().status().as_u16();
                // The SDK reads Route 53's `<ErrorResponse><Error>`; an error document in
                // another shape (`<Errors><Error>`, as IAM-style front ends answer) is
                // read here so that its code still reaches the operator.
                let body = se.raw().body().bytes().map(String::from_utf8_lossy).unwrap_or_default();
                let element = |name: &str| {
                    let start = body.find(&format!("<{name}>"))? + name.len() + 2;
                    let end = body[start..].find(&format!("</{name}>"))? + start;
                    Some(body[start..end].to_string())
                };
                let code = err.code().map(str::to_string).or_else(|| element("Code"));
                let message = err.message().map(str::to_string).or_else(|| element("Message"));
                let code = code.as_deref().unwrap_or("Unknown");
                let said = format!("HTTP {status} {code}: {}", message.unwrap_or_default());
                let detail = match code {
                    "InvalidClientTokenId"
                    | "SignatureDoesNotMatch"
                    | "UnrecognizedClientException"
                    | "IncompleteSignature"
                    | "MissingAuthenticationToken"
                    | "ExpiredToken"
                    | "AccessDenied"
                    | "AccessDeniedException" => format!("the AWS credentials were refused ({said})"),
                    _ if status == 401 || status == 403 => format!("the AWS credentials were refused ({said})"),
                    "NoSuchHostedZone" => format!("no such hosted zone: check route53.hosted_zone_id ({said})"),
                    "Throttling" | "PriorRequestNotComplete" => {
                        format!("still throttled after {ATTEMPTS} attempts with backoff ({said})")
                    }
                    _ => said,
                };
                DnsError::Rejected {
                    provider: self.name.clone(),
                    server: self.server(),
                    detail,
                }
            }
            SdkError::TimeoutError(_) => DnsError::Server {
                provider: self.name.clone(),
                server: self.server(),
                detail: "no complete answer within the request deadline (deadlines.request)".into(),
            },
            _ => DnsError::Server {
                provider: self.name.clone(),
                server: self.server(),
                detail: crate::deadline::chain(&e),
            },
        }
    }

    /// The record set Route 53 should hold for `set`: an alias A record for a CNAME
    /// when `alias` is on and the target is a load balancer of a known region (as
    /// `plan` decided, so that the registry let the name keep other types).
    fn wanted(&self, set: &RecordSet) -> Result<ResourceRecordSet, DnsError> {
        let build = |b: aws_sdk_route53::types::builders::ResourceRecordSetBuilder| {
            b.build().map_err(|e| DnsError::Config {
                provider: self.name.clone(),
                detail: format!("record set {} {}: {e}", set.name, set.kind.as_str()),
            })
        };
        if self.spec.alias
            && set.kind == RecordType::CNAME
            && let [target] = set.values.as_slice()
            && let Some(zone) = elb_zone(target)
        {
            let alias = AliasTarget::builder()
                .hosted_zone_id(zone)
                .dns_name(format!("{target}."))
                .evaluate_target_health(false)
                .build()
                .map_err(|e| DnsError::Config {
                    provider: self.name.clone(),
                    detail: format!("alias for {}: {e}", set.name),
                })?;
            return build(
                ResourceRecordSet::builder()
                    .name(format!("{}.", set.name))
                    .r#type(RrType::A)
                    .alias_target(alias),
            );
        }
        let mut b = ResourceRecordSet::builder()
            .name(format!("{}.", set.name))
            .r#type(RrType::from(set.kind.as_str()))
            .ttl(i64::from(set.ttl));
        for v in &set.values {
            b = b.resource_records(
                ResourceRecord::builder()
                    .value(super::content(set.kind, v))
                    .build()
                    .map_err(|e| DnsError::Config {
                        provider: self.name.clone(),
                        detail: format!("record {}: {e}", set.name),
                    })?,
            );
        }
        build(b)
    }

    /// How tlsward sees one of Route 53's record sets.
    fn seen_as(&self, raw: &ResourceRecordSet) -> RecordSet {
        let name = plain_name(raw.name());
        let type_name = raw.r#type().as_str();
        let mut kind = super::record_type(type_name);
        if raw.set_identifier().is_some() || raw.traffic_policy_instance_id().is_some() {
            // A routing policy tlsward does not manage: the name is taken, never changed.
            kind = RecordType::Other;
        }
        let ttl = raw.ttl().and_then(|t| u32::try_from(t).ok()).unwrap_or(self.ttl);
        let values = match (raw.alias_target(), kind) {
            (Some(a), RecordType::A) if self.spec.alias => {
                return RecordSet::new(name, RecordType::CNAME, self.ttl, vec![alias_name(a.dns_name())]);
            }
            (Some(a), RecordType::Other) => vec![format!("{type_name} ALIAS {}", alias_name(a.dns_name()))],
            (Some(a), _) => vec![format!("ALIAS {}", alias_name(a.dns_name()))],
            (None, RecordType::Other) => raw
                .resource_records()
                .iter()
                .map(|r| format!("{type_name} {}", r.value()))
                .collect(),
            (None, kind) => raw
                .resource_records()
                .iter()
                .map(|r| super::value(kind, r.value()))
                .collect(),
        };
        RecordSet::new(name, kind, ttl, values)
    }

    /// Submits one batch and, when it publishes an ACME challenge, waits for `INSYNC`.
    async fn submit(&self, changes: Vec<R53Change>, challenge: bool) -> Result<(), DnsError> {
        let batch = ChangeBatch::builder()
            .comment("tlsward")
            .set_changes(Some(changes))
            .build()
            .map_err(|e| DnsError::Config {
                provider: self.name.clone(),
                detail: format!("change batch: {e}"),
            })?;
        let client = self.client().await;
        let out = client
            .change_resource_record_sets()
            .hosted_zone_id(&self.zone_id)
            .change_batch(batch)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        let Some(info) = out.change_info() else {
            return Ok(());
        };
        if !challenge || *info.status() == ChangeStatus::Insync {
            return Ok(());
        }
        let id = info.id().to_string();
        let until = tokio::time::Instant::now() + INSYNC_TIMEOUT;
        let mut delay = Duration::from_millis(500);
        loop {
            tokio::time::sleep(delay).await;
            let out = client.get_change().id(&id).send().await.map_err(|e| self.error(e))?;
            if out.change_info().is_some_and(|i| *i.status() == ChangeStatus::Insync) {
                return Ok(());
            }
            if tokio::time::Instant::now() > until {
                return Err(DnsError::Rejected {
                    provider: self.name.clone(),
                    server: self.server(),
                    detail: format!("change {id} not INSYNC after {}s", INSYNC_TIMEOUT.as_secs()),
                });
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// Values and characters a change counts against Route 53's request limits.
fn weight(change: &R53Change) -> (usize, usize) {
    let Some(set) = change.resource_record_set() else {
        return (0, 0);
    };
    let values = set.resource_records().len().max(1);
    let chars: usize = set.resource_records().iter().map(|r| r.value().len()).sum::<usize>()
        + set.alias_target().map_or(0, |a| a.dns_name().len());
    let times = if *change.action() == ChangeAction::Upsert { 2 } else { 1 };
    (values * times, chars * times)
}

/// Whole names' changes packed into batches within Route 53's limits.
fn batches(units: Vec<Vec<R53Change>>) -> Vec<Vec<R53Change>> {
    let mut out: Vec<Vec<R53Change>> = Vec::new();
    let (mut values, mut chars) = (0, 0);
    for unit in units {
        let (v, c) = unit.iter().map(weight).fold((0, 0), |a, w| (a.0 + w.0, a.1 + w.1));
        if out.is_empty() || values + v > MAX_VALUES || chars + c > MAX_CHARS {
            out.push(Vec::new());
            (values, chars) = (0, 0);
        }
        values += v;
        chars += c;
        out.last_mut().expect("a batch").extend(unit);
    }
    out
}

#[async_trait]
impl DnsProvider for Route53Provider {
    async fn records(&self) -> Result<Vec<RecordSet>, DnsError> {
        let client = self.client().await;
        let mut raw = Vec::new();
        let mut next: Option<(String, RrType, Option<String>)> = None;
        loop {
            let mut request = client
                .list_resource_record_sets()
                .hosted_zone_id(&self.zone_id)
                .max_items(300);
            if let Some((name, kind, id)) = next.take() {
                request = request
                    .start_record_name(name)
                    .start_record_type(kind)
                    .set_start_record_identifier(id);
            }
            let page = request.send().await.map_err(|e| self.error(e))?;
            raw.extend(page.resource_record_sets().iter().cloned());
            match (page.is_truncated(), page.next_record_name(), page.next_record_type()) {
                (true, Some(name), Some(kind)) => {
                    next = Some((
                        name.to_string(),
                        kind.clone(),
                        page.next_record_identifier().map(str::to_string),
                    ))
                }
                _ => break,
            }
        }
        let mut seen = BTreeMap::new();
        let mut sets: BTreeMap<(String, RecordType), RecordSet> = BTreeMap::new();
        for r in raw {
            let set = self.seen_as(&r);
            let key = (set.name.clone(), set.kind);
            if set.kind != RecordType::Other {
                seen.insert(key.clone(), r);
            }
            match sets.get_mut(&key) {
                Some(s) => {
                    s.values.extend(set.values);
                    s.values.sort();
                    s.values.dedup();
                }
                None => {
                    sets.insert(key, set);
                }
            }
        }
        *self.seen.lock().expect("seen lock") = seen;
        Ok(sets.into_values().collect())
    }

    async fn apply(&self, diff: &ZoneDiff) -> Result<(), DnsError> {
        if diff.changes.is_empty() {
            return Ok(());
        }
        let free: BTreeSet<String> = diff
            .guards
            .iter()
            .filter_map(|g| match g {
                Guard::Free { name, .. } => Some(name.clone()),
                Guard::Owned { .. } => None,
            })
            .collect();
        let challenge = diff
            .changes
            .iter()
            .any(|c| c.record().name.starts_with(&format!("{CHALLENGE_LABEL}.")));
        let mut planned: Vec<(ChangeAction, ResourceRecordSet)> = Vec::new();
        for change in &diff.changes {
            planned.push(match change {
                Change::Delete(set) => {
                    let known = self
                        .seen
                        .lock()
                        .expect("seen lock")
                        .get(&(set.name.clone(), set.kind))
                        .cloned();
                    let raw = match known {
                        Some(raw) => raw,
                        None => self.wanted(set)?,
                    };
                    (ChangeAction::Delete, raw)
                }
                Change::Upsert(set) => {
                    let action = if free.contains(&host_of_record(&set.name)) {
                        ChangeAction::Create
                    } else {
                        ChangeAction::Upsert
                    };
                    (action, self.wanted(set)?)
                }
            });
        }
        // A delete and a write of the same Route 53 record set (an alias A record
        // becoming a plain one, or the reverse) is one UPSERT.
        let written: BTreeSet<(String, String)> = planned
            .iter()
            .filter(|(a, _)| *a != ChangeAction::Delete)
            .map(|(_, r)| (r.name().to_string(), r.r#type().as_str().to_string()))
            .collect();
        planned.retain(|(a, r)| {
            *a != ChangeAction::Delete
                || !written.contains(&(plain_name(r.name()) + ".", r.r#type().as_str().to_string()))
        });
        let mut units: BTreeMap<String, Vec<R53Change>> = BTreeMap::new();
        for (action, raw) in planned {
            let host = host_of_record(&plain_name(raw.name()));
            let change = R53Change::builder()
                .action(action)
                .resource_record_set(raw)
                .build()
                .map_err(|e| DnsError::Config {
                    provider: self.name.clone(),
                    detail: format!("change at {host}: {e}"),
                })?;
            units.entry(host).or_default().push(change);
        }
        for batch in batches(units.into_values().collect()) {
            self.submit(batch, challenge).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_decode_route53_escapes() {
        assert_eq!(plain_name("\\052.Example.COM."), "*.example.com");
        assert_eq!(plain_name("_tlsward.\\052.example.com."), "_tlsward.*.example.com");
        assert_eq!(plain_name("a\\\\b."), "a\\\\b");
    }

    #[test]
    fn load_balancer_names_map_to_their_canonical_zone() {
        assert_eq!(elb_zone("a1b2-123.eu-west-1.elb.amazonaws.com"), Some("Z32O12XQLNTSW2"));
        assert_eq!(
            elb_zone("k8s-istio-gw-abc.elb.ap-southeast-1.amazonaws.com"),
            Some("ZKVM4W9LS7TM")
        );
        assert_eq!(elb_zone("lb.example.com"), None);
        assert_eq!(elb_zone("x.mars-1.elb.amazonaws.com"), None);
        assert_eq!(
            alias_name("dualstack.A1-2.eu-west-1.elb.amazonaws.com."),
            "a1-2.eu-west-1.elb.amazonaws.com"
        );
    }

    fn upsert(values: usize, len: usize) -> R53Change {
        let mut set = ResourceRecordSet::builder()
            .name("a.example.com.")
            .r#type(RrType::Txt)
            .ttl(60);
        for i in 0..values {
            set = set.resource_records(ResourceRecord::builder().value(format!("{i:0len$}")).build().unwrap());
        }
        R53Change::builder()
            .action(ChangeAction::Upsert)
            .resource_record_set(set.build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn batches_split_only_past_route53_limits_and_never_inside_a_name() {
        // 400 upserts of one value count 800 against 1,000: one batch; 600 need two.
        let units = |n| (0..n).map(|_| vec![upsert(1, 4)]).collect::<Vec<_>>();
        assert_eq!(batches(units(400)).len(), 1);
        let split = batches(units(600));
        assert_eq!(split.iter().map(Vec::len).collect::<Vec<_>>(), vec![500, 100]);
        // Characters: 20 upserts of 1,000 characters count 40,000 against 32,000.
        let long = batches((0..20).map(|_| vec![upsert(1, 1_000)]).collect());
        assert_eq!(long.iter().map(Vec::len).collect::<Vec<_>>(), vec![16, 4]);
        // One name's changes stay together even when they cross the limit.
        let together = batches(vec![vec![upsert(1, 4)], vec![upsert(300, 4), upsert(300, 4)]]);
        assert_eq!(together.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 2]);
    }
}
