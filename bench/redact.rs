//! Redaction benchmark: the data-scope and financial stages of the chain
//! over a search answer (strict read of the Bundle, then the stages over its
//! entries on the tape, as the gateway runs them) for a 50-entry
//! searchset of ExplanationOfBenefit from the synthetic payer dataset, in
//! microseconds per Bundle, next to what a full `serde_json::Value` parse
//! and re-serialisation of the same Bundle costs.
//!
//!     cargo bench -p fhirwall --bench redact
//!
//! Workloads (same 50 EOBs, the dataset's first 50 in file order):
//! - `dataset mix`: as the upstream sends them — every one carries amounts
//!   (financial stripping rewrites each), some are Part 2, before the floor
//!   or drug prior authorizations (withheld);
//! - `clean`: the same EOBs as fhirwall sends them (already stripped, nothing
//!   withheld): the scan-only cost, every entry re-emitted byte for byte;
//! - both `policy.part2` modes.
//!
//! Prints one line per figure; BENCHMARKS.md ("Redaction") records them.

use std::time::{Duration, Instant};

use fhirwall::chain::disclosure::Reason;
use fhirwall::chain::stage::{self, Item};
use fhirwall::chain::strict;
use fhirwall::chain::tape::Tape;
use fhirwall::config::{Part2Mode, PolicyConfig};
use fhirwall::redact::stage::{DataScope, Money};
use fhirwall::redact::{Disclosure, Redactor};
use serde_json::Value;

/// The allocator the `fhirwall` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ENTRIES: usize = 50;
const ROUNDS: usize = 15;
const PER_ROUND: usize = 200;

/// The data-scope and financial stages over a page's entries, read from
/// the strict reader's tape as the gateway reads them.
fn judge<'t>(redactor: &Redactor, tape: &'t Tape<'t>, report: &mut Disclosure) -> Vec<Item<'t>> {
    let entries = tape.root().get("entry").unwrap();
    let mut items: Vec<Item<'t>> = entries.children().map(Item::entry).collect();
    stage::run(&DataScope { redactor }, &mut items, report);
    stage::run(&Money { redactor }, &mut items, report);
    items
}

fn main() {
    let dataset = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/dataset/payer.ndjson"),
    )
    .expect("examples/dataset/payer.ndjson");
    let eobs: Vec<&str> = dataset
        .lines()
        .filter(|l| l.starts_with("{\"resourceType\":\"ExplanationOfBenefit\""))
        .take(ENTRIES)
        .collect();
    assert_eq!(eobs.len(), ENTRIES);
    let mix = bundle(&eobs);

    let config = |mode| PolicyConfig {
        part2: mode,
        part2_programs: vec!["Organization/org-recovery".into(), "1234567893".into()],
        ..PolicyConfig::default()
    };
    let exclude = Redactor::new(&config(Part2Mode::Exclude)).unwrap();
    let redact = Redactor::new(&config(Part2Mode::Redact)).unwrap();

    // What fhirwall sends for the mix is the `clean` workload.
    let mut report = Disclosure::default();
    let tape = strict::read(&mix).unwrap();
    let items = judge(&exclude, &tape, &mut report);
    let kept: Vec<String> = items
        .iter()
        .filter(|item| !item.withheld)
        .map(|item| match &item.rewritten {
            Some(text) => format!("{{\"resource\":{text},\"search\":{{\"mode\":\"match\"}}}}"),
            None => item.entry.unwrap().raw().to_owned(),
        })
        .collect();
    let clean =
        format!("{{\"resourceType\":\"Bundle\",\"type\":\"searchset\",\"entry\":[{}]}}", kept.join(","));
    println!(
        "bundle: {} entries, {} bytes; exclude mode keeps {} (withheld: part2 {}, before-floor {}, drug-pa {}; stripped {})",
        ENTRIES,
        mix.len(),
        kept.len(),
        report.withheld(Reason::Part2),
        report.withheld(Reason::DateFloor),
        report.withheld(Reason::DrugPriorAuth),
        report.redactions(Reason::Financial)
    );

    // `cargo bench -p fhirwall --bench redact -- WORD`: only the workloads
    // whose name holds WORD (for profiling one of them).
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    for (name, redactor, text) in [
        ("dataset mix, part2 = exclude", &exclude, &mix),
        ("dataset mix, part2 = redact", &redact, &mix),
        ("clean (nothing to change), part2 = exclude", &exclude, &clean),
    ] {
        if only.as_deref().is_some_and(|w| !name.contains(w)) {
            continue;
        }
        let per = measure(|| {
            let mut report = Disclosure::default();
            let tape = strict::read(text).unwrap();
            std::hint::black_box(judge(redactor, &tape, &mut report));
        });
        println!(
            "redaction chain, {name}: {:.0} µs per Bundle ({:.0} MB/s)",
            micros(per),
            text.len() as f64 / per.as_secs_f64() / 1e6
        );
    }

    if only.is_some() {
        return;
    }
    // Context: a full tree of the same Bundle, parsed and written back.
    let per = measure(|| {
        let v: Value = serde_json::from_str(&mix).unwrap();
        std::hint::black_box(serde_json::to_string(&v).unwrap());
    });
    println!(
        "context: serde_json::Value parse + serialise of the whole Bundle: {:.0} µs ({:.0} MB/s)",
        micros(per),
        mix.len() as f64 / per.as_secs_f64() / 1e6
    );
    let per = measure(|| {
        let v: &serde_json::value::RawValue = serde_json::from_str(&mix).unwrap();
        std::hint::black_box(v);
    });
    println!(
        "context: validating parse of the whole Bundle (what relay_body does anyway): {:.0} µs ({:.0} MB/s)",
        micros(per),
        mix.len() as f64 / per.as_secs_f64() / 1e6
    );
}

fn bundle(resources: &[&str]) -> String {
    let mut out =
        String::from("{\"resourceType\":\"Bundle\",\"type\":\"searchset\",\"total\":50,\"entry\":[");
    for (i, r) in resources.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let v: Value = serde_json::from_str(r).unwrap();
        out.push_str(&format!(
            "{{\"fullUrl\":\"http://upstream.example/fhir/ExplanationOfBenefit/{}\",\"resource\":{r},\"search\":{{\"mode\":\"match\"}}}}",
            v["id"].as_str().unwrap()
        ));
    }
    out.push_str("]}");
    out
}

/// Median time of one call over `ROUNDS` rounds of `PER_ROUND` calls.
fn measure(mut f: impl FnMut()) -> Duration {
    for _ in 0..PER_ROUND {
        f();
    }
    let mut rounds: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..PER_ROUND {
                f();
            }
            start.elapsed() / PER_ROUND as u32
        })
        .collect();
    rounds.sort();
    rounds[ROUNDS / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
