//! Audit benchmark: records per second with durable writes (one fdatasync per
//! group-committed batch) and the latency an append adds to a request, at
//! several numbers of concurrent requests; plus the CPU cost of rendering
//! and chaining one record (no I/O).
//!
//!     cargo bench -p fhirwall --bench audit            # audit dir in a temp dir under $TMPDIR
//!     AUDIT_BENCH_DIR=/var/lib/fhirwall cargo bench -p fhirwall --bench audit   # on another disk
//!
//! Prints one line per figure; BENCHMARKS.md ("Audit") records them.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fhirwall::audit::{AuditLog, AuditRecord, Disclosure, Kind, Reason, Who};

/// How long each concurrency level runs.
const RUN: Duration = Duration::from_secs(4);

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run());
}

/// A realistic record: a search by a provider client, two patients
/// disclosed, suppression counts (about 1.9 KB as JSON).
fn record(i: u64) -> AuditRecord {
    let mut r = AuditRecord::rest(&format!("{i:024x}"));
    r.kind = Kind::Rest { interaction: "search-type", operation: None };
    r.who = Who {
        client_id: Some("grace-ehr".into()),
        organization: Some("Organization/org-grace".into()),
        npi: Some("1417987256".into()),
        authenticated: true,
    };
    r.peer = Some("10.20.30.40".parse().unwrap());
    r.status = 200;
    r.resource_types.insert("ExplanationOfBenefit".into());
    r.requested_patients.insert(format!("pat-{:04}", i % 300));
    let mut d = Disclosure { patients: BTreeSet::new(), ..Disclosure::default() };
    d.patients.insert(format!("pat-{:04}", i % 300));
    d.patients.insert(format!("pat-{:04}", (i + 1) % 300));
    d.suppressed.insert(Reason::Attribution, 3);
    d.redacted.insert(Reason::Financial, 2);
    r.disclosure = Some(d);
    r
}

async fn run() {
    let base =
        std::env::var_os("AUDIT_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new().prefix("fhirwall-audit-bench-").tempdir_in(&base).unwrap();
    println!("audit dir: {} (record size {} bytes)", dir.path().display(), record(0).to_json().len());

    // CPU only: render + hash + line formatting, per record.
    let n = 50_000u64;
    let started = Instant::now();
    let mut prev = fhirwall::audit::chain::ZERO_HASH.to_owned();
    let mut buf = Vec::with_capacity(4096);
    for i in 0..n {
        let event = record(i).to_json();
        let hash = fhirwall::audit::chain::link_hash(&prev, event.as_bytes());
        buf.clear();
        fhirwall::audit::chain::write_line(&mut buf, i + 1, &prev, &hash, &event);
        prev = hash;
    }
    let per = started.elapsed() / n as u32;
    println!("cpu: render + chain one record: {:.1} µs", per.as_secs_f64() * 1e6);

    let (log, _) = AuditLog::open(dir.path(), 256 * 1024 * 1024).unwrap();
    for concurrency in [1usize, 8, 32, 128, 512] {
        let before = (
            log.stats().records.load(Ordering::Relaxed),
            log.stats().batches.load(Ordering::Relaxed),
            log.stats().sync_micros.load(Ordering::Relaxed),
        );
        let deadline = Instant::now() + RUN;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..concurrency {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = t as u64 * 1_000_000_000;
                while Instant::now() < deadline {
                    let r = record(i);
                    i += 1;
                    let t0 = Instant::now();
                    log.record(&r).await.unwrap();
                    latencies.push(t0.elapsed());
                }
                latencies
            }));
        }
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await.unwrap());
        }
        let elapsed = started.elapsed();
        latencies.sort();
        let records = log.stats().records.load(Ordering::Relaxed) - before.0;
        let batches = log.stats().batches.load(Ordering::Relaxed) - before.1;
        let sync_us = log.stats().sync_micros.load(Ordering::Relaxed) - before.2;
        let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        println!(
            "concurrency {concurrency:>4}: {:>8.0} records/s durable, mean batch {:>6.1} records, \
             write+fdatasync {:>5.2} ms/batch, append latency p50 {:>6.2} ms p99 {:>6.2} ms",
            records as f64 / elapsed.as_secs_f64(),
            records as f64 / batches.max(1) as f64,
            sync_us as f64 / batches.max(1) as f64 / 1000.0,
            pct(0.50).as_secs_f64() * 1000.0,
            pct(0.99).as_secs_f64() * 1000.0,
        );
    }
    drop(log);
    let verified = fhirwall::audit::verify::verify_dir(dir.path()).expect("the benchmark's log verifies");
    let started = Instant::now();
    fhirwall::audit::verify::verify_dir(dir.path()).unwrap();
    let took = started.elapsed();
    println!(
        "verify: {} records in {:.2} s ({:.0} records/s)",
        verified.records,
        took.as_secs_f64(),
        verified.records as f64 / took.as_secs_f64()
    );
}
