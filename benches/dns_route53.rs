//! DNS into Route 53 (moto's implementation, on loopback), against a baseline in the
//! same run: 1,000 record changes written by tlsward's provider (read the zone, plan,
//! one `ChangeResourceRecordSets` batch) vs one `ChangeResourceRecordSets` call per
//! record through the same AWS SDK.
//!
//! `cargo bench --bench dns_route53` (needs `moto[server]`: scripts/test.sh installs it)

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use aws_sdk_route53::types::{Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType};
use support::moto::{AWS_ENV, Moto, rt};
use support::*;
use tlsward::config::Route53Spec;
use tlsward::dns::DnsProvider;
use tlsward::dns::registry::diff;
use tlsward::dns::route53::Route53Provider;

const ZONE: &str = "bench.example";
const CHANGES: usize = 1000;

fn main() {
    // The SDK's default chain finds these first; set before any thread starts.
    for (k, v) in AWS_ENV {
        // SAFETY: single-threaded here, before the runtime or moto's client exist.
        unsafe { std::env::set_var(k, v) };
    }
    let w = Workdir::new();
    let moto = Moto::start(&w.path().join("moto"), &[]);
    let zone = moto.create_zone(ZONE);

    let spec = Route53Spec {
        hosted_zone_id: zone.clone(),
        region: "eu-west-1".into(),
        endpoint_url: Some(moto.url()),
        alias: false,
    };
    let provider = Route53Provider::new("bench", &spec, 60, Duration::from_secs(30));
    // Each host is two record changes: its A record and its ownership TXT.
    let desired = support::bind::a_records(CHANGES / 2, "t", ZONE);
    let t = Instant::now();
    let batches = rt().block_on(async {
        let current = provider.records().await.unwrap();
        let d = diff("bench", 60, &desired, &current);
        assert_eq!(d.changes.len(), CHANGES);
        provider.apply(&d).await.unwrap();
        d.changes.len()
    });
    let ours = t.elapsed().as_secs_f64();
    assert_eq!(batches, CHANGES);
    assert_eq!(
        moto.lookup(&zone, &format!("t{}.{ZONE}", CHANGES / 2 - 1), "A"),
        vec!["203.0.113.10"]
    );

    let t = Instant::now();
    rt().block_on(async {
        for i in 0..CHANGES {
            let set = ResourceRecordSet::builder()
                .name(format!("n{i}.{ZONE}."))
                .r#type(RrType::A)
                .ttl(60)
                .resource_records(ResourceRecord::builder().value("203.0.113.10").build().unwrap())
                .build()
                .unwrap();
            let change = Change::builder()
                .action(ChangeAction::Upsert)
                .resource_record_set(set)
                .build()
                .unwrap();
            moto.client
                .change_resource_record_sets()
                .hosted_zone_id(&zone)
                .change_batch(ChangeBatch::builder().changes(change).build().unwrap())
                .send()
                .await
                .unwrap();
        }
    });
    let theirs = t.elapsed().as_secs_f64();
    assert_eq!(
        moto.lookup(&zone, &format!("n{}.{ZONE}", CHANGES - 1), "A"),
        vec!["203.0.113.10"]
    );
    println!(
        "dns_route53: {CHANGES} record changes into moto's Route 53: tlsward (read, plan, one batch) {:.3} s ({:.0}/s), one ChangeResourceRecordSets per record {:.1} s ({:.0}/s): {:.1}x",
        ours,
        CHANGES as f64 / ours,
        theirs,
        CHANGES as f64 / theirs,
        theirs / ours
    );
}
