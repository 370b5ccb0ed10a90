//! The front door: `fhirwall demo` prints a tour of commands, and every one
//! of them works exactly as printed, pasted in order into one shell.

use fhirwall_testkit as support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn every_command_the_demo_prints_works_as_printed() {
    // The demo takes PORT and PORT + 1.
    let port = loop {
        let p = free_port();
        if std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            break p;
        }
    };
    let mut child = Command::new(fhirwall_bin())
        .args(["demo", "--port", &port.to_string()])
        .current_dir(repo_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting fhirwall demo");
    let stdout = child.stdout.take().unwrap();
    let _demo = Demo(child);
    let mut banner = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let done = line.starts_with("Press Ctrl-C");
        banner.push(line);
        if done {
            break;
        }
    }
    let text = banner.join("\n");
    assert!(text.contains("Press Ctrl-C"), "the demo stopped early:\n{text}");
    let tour: Vec<&str> = text
        .split("\nTry ")
        .nth(1)
        .expect("a tour")
        .lines()
        .skip(1)
        .filter_map(|l| l.strip_prefix("  "))
        .collect();
    assert!(tour.len() >= 10, "{text}");
    assert!(
        !tour.iter().any(|l| l.starts_with("fhirwall ") || l.contains("$(fhirwall ")),
        "a command assumes fhirwall on PATH:\n{text}"
    );
    // Ready when the printed metadata URL answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    wait_for_port(("127.0.0.1", port), deadline.saturating_duration_since(Instant::now()));

    let script = format!("set -e\ncd \"$HOME\"\n{}\n", tour.join("\n"));
    let out = Command::new("bash").arg("-c").arg(&script).env("PATH", "/usr/bin:/bin").output().unwrap();
    let output = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the tour failed:\n{script}\n---\n{output}");
    for (what, marker) in [
        ("CapabilityStatement", "\"resourceType\":\"CapabilityStatement\""),
        ("SMART discovery", "\"token_endpoint\""),
        ("the roster patient", "\"resourceType\":\"Patient\",\"id\":\"pat-0001\""),
        ("the refused reverse chain", "reverse chaining"),
        ("the export manifest", "\"output\":[{"),
        ("the MatchedMembers Group", "MatchedMembers: Group/pmm-"),
        ("the export of the MatchedMembers Group (its one member)", "{\"count\":1,\"type\":\"Patient\""),
        ("the withheld record", "\n404\n"),
        ("explain", "withheld Condition/cond-0009-2 by data-scope (part2)"),
        ("explain's basis", "Patient/pat-0009: attributed through Group/grp-grace"),
        ("the console's per-patient view", "\"client\":\"grace-ehr\",\"disclosures\":"),
        ("metrics", "fhirwall_requests_total"),
        ("the audit records", "\"prev\":"),
        ("audit verify", "audit log intact"),
    ] {
        assert!(output.contains(marker), "{what} missing from the tour's output:\n{output}");
    }
}
