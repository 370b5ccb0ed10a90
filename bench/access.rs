//! Access benchmark: the response filter on a 50-entry searchset Bundle of
//! real dataset ExplanationOfBenefits (half of them hidden from the caller),
//! and the request decision against a 100,000-member attribution roster.
//!
//!     cargo bench -p fhirwall --bench access
//!
//! Prints one line per figure; BENCHMARKS.md ("Access") records them.

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use fhirwall::access::Scope;
use fhirwall::access::attribution::OrgMembers;
use fhirwall::access::decide::plan;
use fhirwall::access::filter::{Checker, Verdict};
use fhirwall::access::policy::Policy;
use fhirwall::access::refs::RefResolver;
use fhirwall::fhir::bundle::RawObject;
use fhirwall::fhir::request::{ParseOptions, RequestParts, parse};
use http::{HeaderMap, Method};

const BASE: &str = "http://upstream.example/fhir";

fn main() {
    let dataset =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/dataset/payer.ndjson"))
            .expect("examples/dataset/payer.ndjson");
    let eobs: Vec<serde_json::Value> = dataset
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["resourceType"] == "ExplanationOfBenefit")
        .take(50)
        .collect();
    let patients: Vec<String> = eobs
        .iter()
        .map(|r| r["patient"]["reference"].as_str().unwrap().trim_start_matches("Patient/").to_owned())
        .collect();
    // The caller sees every other patient of the Bundle, among 100,000 members.
    let mut members: HashSet<String> = (0..100_000).map(|i| format!("member-{i:06}")).collect();
    let distinct: Vec<&String> = {
        let mut d: Vec<&String> = patients.iter().collect();
        d.dedup();
        d
    };
    for (i, p) in distinct.iter().enumerate() {
        if i % 2 == 0 {
            members.insert((*p).clone());
        }
    }
    let groups = HashMap::from([("grp-bench".to_owned(), Vec::new())]);
    let scope = Scope::new(
        "Organization/org-bench",
        Some(Arc::new(OrgMembers { members, groups })),
        None,
        Arc::new(HashSet::from(["member-000007".to_owned()])),
        RefResolver::new([BASE, "https://gw.example/fhir"]),
    );
    let policy = Policy::builtin();
    let refs = RefResolver::new([BASE, "https://gw.example/fhir"]);

    let entries: Vec<String> = eobs
        .iter()
        .map(|r| {
            format!(
                r#"{{"fullUrl":"{BASE}/ExplanationOfBenefit/{}","resource":{},"search":{{"mode":"match"}}}}"#,
                r["id"].as_str().unwrap(),
                r
            )
        })
        .collect();
    let bundle = format!(
        r#"{{"resourceType":"Bundle","type":"searchset","total":50,"link":[{{"relation":"self","url":"{BASE}/ExplanationOfBenefit"}}],"entry":[{}]}}"#,
        entries.join(",")
    );

    // 1. The access verdicts on the Bundle's entries: top-level parse plus
    //    the filter.
    let checker = Checker::new(&scope, &policy, &refs);
    let mut kept = 0;
    let rounds = 2_000;
    let started = Instant::now();
    for _ in 0..rounds {
        let object = RawObject::parse(black_box(&bundle)).unwrap();
        let verdicts = checker.entry_verdicts(object.get("entry").unwrap().get(), 0).unwrap();
        kept = verdicts.iter().filter(|v| !matches!(v, Verdict::Drop(_))).count();
        black_box(verdicts);
    }
    let per = started.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    println!(
        "filter a 50-entry EOB Bundle ({} KB, {kept} kept): {per:.1} µs ({:.0} MB/s)",
        bundle.len() / 1024,
        bundle.len() as f64 / per
    );
    let started = Instant::now();
    for _ in 0..rounds {
        black_box(RawObject::parse(black_box(&bundle)).unwrap());
    }
    let parse_us = started.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    println!("  of which the top-level parse: {parse_us:.1} µs");

    // 2. A single resource (a read).
    let one = eobs[0].to_string();
    let rounds = 50_000;
    let started = Instant::now();
    for _ in 0..rounds {
        black_box(checker.resource(black_box(&one)));
    }
    let per = started.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    println!("filter one EOB ({} B): {per:.2} µs", one.len());

    // 3. The request decision against the 100,000-member roster: a search
    //    naming patients (parse not included), and the O(1) lookup itself.
    let headers = HeaderMap::new();
    let named = format!("patient=Patient/{},Patient/{}&_count=20", distinct[0], distinct[2]);
    let request = parse(
        &RequestParts {
            method: &Method::GET,
            path: "ExplanationOfBenefit",
            query: Some(&named),
            headers: &headers,
            body: b"",
        },
        ParseOptions::default(),
    )
    .unwrap();
    let rounds = 200_000;
    let started = Instant::now();
    for _ in 0..rounds {
        let mut fhir = request.clone();
        black_box(plan(&scope, &policy, &refs, &mut fhir, 100).unwrap());
    }
    let per = started.elapsed().as_secs_f64() * 1e9 / rounds as f64;
    println!("decide a search naming 2 patients against a 100,000-member roster: {per:.0} ns");
    let started = Instant::now();
    let mut hits = 0;
    for i in 0..rounds {
        if scope.is_visible(black_box(if i % 2 == 0 { "member-054321" } else { "member-1000000" })) {
            hits += 1;
        }
    }
    let per = started.elapsed().as_secs_f64() * 1e9 / rounds as f64;
    println!("one visibility lookup in a 100,000-member roster: {per:.0} ns ({hits} hits)");
    // The read decision: Patient/{id} against the roster.
    let read = parse(
        &RequestParts {
            method: &Method::GET,
            path: "Patient/member-054321",
            query: None,
            headers: &headers,
            body: b"",
        },
        ParseOptions::default(),
    )
    .unwrap();
    let started = Instant::now();
    for _ in 0..rounds {
        let mut fhir = read.clone();
        black_box(plan(&scope, &policy, &refs, &mut fhir, 100).unwrap());
    }
    let per = started.elapsed().as_secs_f64() * 1e9 / rounds as f64;
    println!("decide a Patient read against a 100,000-member roster: {per:.0} ns");
}
