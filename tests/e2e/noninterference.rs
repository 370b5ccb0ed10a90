//! Non-interference, tested differentially (DESIGN.md "Contract details"):
//! what a client receives — status, body, paging links and totals — must not
//! change when data it may not see is added upstream.
//!
//! Two sandbox upstreams: A holds the dataset D (examples/dataset) plus
//! `tests/noninterference/base.ndjson`; B holds the same plus H
//! (`hidden.ndjson`: hidden patients' records, Part 2 records of visible
//! patients, an opted-out member's data, identifier-only links, versions
//! that move between patients) and `financial.ndjson` (money added to
//! visible claims), and runs in noise mode (non-resource Bundle members
//! everywhere). A gateway stands in front of each, configured alike; the
//! same client sends every request of `tests/noninterference/corpus.txt`
//! to both, follows every `next` link, and the answers must be identical
//! after normalising what is volatile (the gateway's own base URL, paging
//! tokens). A difference fails with the request and both bodies. B's answers
//! are also scanned for every hidden token (`facts.json`).

use fhirwall_testkit as support;

use std::path::{Path, PathBuf};

use support::*;

const CLIENT: &str = "grace";
/// Pages followed per corpus request at most.
const MAX_PAGES: usize = 60;

fn data_dir() -> PathBuf {
    repo_root().join("tests/noninterference")
}

fn facts() -> serde_json::Value {
    let text =
        std::fs::read_to_string(data_dir().join("facts.json")).expect("tests/noninterference/facts.json");
    serde_json::from_str(&text).expect("facts.json is JSON")
}

/// One NDJSON file made of `parts` in order.
fn combined(parts: &[PathBuf], name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fhirwall-ni-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = String::new();
    for part in parts {
        let chunk = std::fs::read_to_string(part).unwrap_or_else(|e| panic!("{}: {e}", part.display()));
        text.push_str(chunk.trim_end());
        text.push('\n');
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn gateway(upstream: &Upstream, facts: &serde_json::Value) -> Gateway {
    let client = &facts["client"];
    let programs: Vec<String> = facts["policy"]["part2_programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{:?}", p.as_str().unwrap()))
        .collect();
    let config = GatewayConfig::new(upstream.base_url())
        .client(
            CLIENT,
            client["organization"].as_str().unwrap(),
            client["npi"].as_str().unwrap(),
            &["system/*.read"],
        )
        .extra_toml(&format!(
            "[policy]\npart2 = \"exclude\"\npart2_programs = [{}]\nfinancial = \"strip\"\n\
             service_date_floor = \"2016-01-01\"\nmax_narrowed_patients = 100\n",
            programs.join(", ")
        ))
        .extra_toml(&format!(
            "[[plugins]]\nname = \"matcher\"\nworld = \"matcher\"\npath = {:?}\n",
            repo_root().join("plugins/dist/default_matcher.wasm").display().to_string()
        ))
        // One token serves the whole comparison, which against Medplum on a
        // loaded machine outlasts the default 300 s token.
        .extra_toml("[auth]\ntoken_ttl_s = 3600\n");
    Gateway::start(config)
}

/// What may differ between the two gateways: their base URL and the
/// sealed tokens (random nonces), nothing else.
fn normalise(text: &str, base: &str) -> String {
    let origin = base.trim_end_matches("/fhir");
    let text = text.replace(base, "{gw}").replace(origin, "{origin}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("{gw}/_page/") {
        let (head, tail) = rest.split_at(at + "{gw}/_page/".len());
        out.push_str(head);
        out.push_str("TOKEN");
        let end =
            tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// What a server assigns on load (Medplum: version ids, timestamps, etags),
/// blanked: the JSON string values of these members become `~`.
fn server_assigned(text: &str) -> String {
    let mut out = text.to_owned();
    for key in ["\"versionId\":\"", "\"lastUpdated\":\"", "\"etag\":\"", "\"lastModified\":\""] {
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(key) {
            let (head, tail) = rest.split_at(at + key.len());
            result.push_str(head);
            result.push('~');
            // The end of the JSON string: the first quote not escaped.
            let mut end = tail.len();
            let mut escaped = false;
            for (i, c) in tail.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            rest = &tail[end..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
    next: Option<String>,
}

async fn ask(gw: &Gateway, token: &str, method: &str, url: &str) -> Answer {
    let resp = request(method, url, &[("Authorization", &format!("Bearer {token}"))], None).await;
    let text = resp.text();
    let next = if resp.status == 200 {
        serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|b| bundle_link(&b, "next"))
    } else {
        None
    };
    Answer {
        status: resp.status,
        content_type: resp.content_type().unwrap_or("").to_owned(),
        body: normalise(&text, &gw.base_url()),
        next,
    }
}

fn corpus() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(data_dir().join("corpus.txt")).expect("corpus.txt");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (method, path) = l.split_once(' ').expect("METHOD path");
            (method.to_owned(), path.to_owned())
        })
        .collect()
}

/// The first line where `a` and `b` differ, with some context.
fn first_difference(a: &str, b: &str) -> String {
    let at = a.bytes().zip(b.bytes()).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    let from = at.saturating_sub(200);
    let cut = |s: &str| s.get(from..(at + 300).min(s.len())).unwrap_or("").to_owned();
    format!("at byte {at}:\n  A: …{}…\n  B: …{}…", cut(a), cut(b))
}

#[tokio::test]
async fn answers_do_not_depend_on_hidden_data() {
    differential(Kind::Sandbox).await;
}

/// The same against Medplum's FHIR engine (a third-party server): it
/// assigns its own version ids and timestamps (normalised), keeps every
/// loaded line as a version, and refuses some parameters the sandbox takes
/// (refused alike on both sides).
#[tokio::test]
async fn answers_do_not_depend_on_hidden_data_medplum() {
    differential(Kind::Medplum).await;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sandbox,
    Medplum,
}

fn upstream(kind: Kind, data: &Path, hidden: bool) -> Upstream {
    match kind {
        Kind::Sandbox if hidden => Upstream::sandbox_with_args(data, &["--noise"]),
        Kind::Sandbox => Upstream::sandbox_with_data(data),
        Kind::Medplum => Upstream::medplum_with(MedplumOptions {
            data: vec![data.to_path_buf()],
            skip_invalid: true,
            quiet: true,
            ..MedplumOptions::default()
        }),
    }
}

async fn differential(kind: Kind) {
    let facts = facts();
    let root = repo_root();
    let files = |list: &str| -> Vec<PathBuf> {
        facts["load_order"][list]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .map(|p| root.join(p))
            .collect()
    };
    let mut files_b = files("B");
    if kind == Kind::Medplum {
        // Medplum's current version is the last one written, whatever its
        // versionId: the hidden version 2 goes before base.ndjson's version 3.
        files_b.sort_by_key(|p| {
            p.ends_with("base.ndjson") as u8 * 2 + p.ends_with("financial.ndjson") as u8 * 3
        });
    }
    let suffix = if kind == Kind::Medplum { "-medplum" } else { "" };
    let data_a = combined(&files("A"), &format!("a{suffix}.ndjson"));
    let data_b = combined(&files_b, &format!("b{suffix}.ndjson"));
    let (up_a, up_b) = (upstream(kind, &data_a, false), upstream(kind, &data_b, true));
    let (gw_a, gw_b) = (gateway(&up_a, &facts), gateway(&up_b, &facts));
    let opt_out = facts["opt_out"]["patient"].as_str().or(facts["opt_out"].as_str()).expect("opt-out member");
    for gw in [&gw_a, &gw_b] {
        gw.admin("PUT", &format!("/admin/opt-outs/{opt_out}"), None).await.assert_status(204);
    }
    let (token_a, token_b) = (gw_a.token(CLIENT, "system/*.read"), gw_b.token(CLIENT, "system/*.read"));
    let hidden_tokens: Vec<String> =
        facts["hidden_tokens"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();

    let mut corpus = corpus();
    if kind == Kind::Medplum {
        // Medplum answers searches far slower than the sandbox: every other
        // request keeps the run short while covering every kind of request.
        corpus = corpus.into_iter().step_by(2).collect();
        // Medplum writes a new version where the sandbox replaces one (the
        // financial overlay: two visible versions, a real difference in
        // visible data), and sets `lastUpdated` itself (sorting on it orders
        // by load time): those requests say nothing about hidden data here.
        let replaced: Vec<String> = facts["financial_resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| format!("{}/_history", k.as_str().unwrap()))
            .collect();
        corpus.retain(|(_, path)| {
            !path.contains("lastUpdated") && !replaced.iter().any(|r| path.starts_with(r.as_str()))
        });
    }
    assert!(corpus.len() >= 300, "the corpus has {} requests", corpus.len());
    let (mut compared, mut differences, mut leaks) = (0usize, Vec::new(), Vec::new());
    for (method, path) in &corpus {
        let (mut url_a, mut url_b) = (gw_a.url(path), gw_b.url(path));
        for page in 0..MAX_PAGES {
            let (mut a, mut b) =
                (ask(&gw_a, &token_a, method, &url_a).await, ask(&gw_b, &token_b, method, &url_b).await);
            if kind == Kind::Medplum {
                a.body = server_assigned(&a.body);
                b.body = server_assigned(&b.body);
            }
            compared += 1;
            let what = format!("{method} {path} (page {})", page + 1);
            if (a.status, &a.content_type, &a.body) != (b.status, &b.content_type, &b.body) {
                differences.push(format!(
                    "{what}: A {} / B {}\n{}",
                    a.status,
                    b.status,
                    first_difference(&a.body, &b.body)
                ));
            }
            // The request's own words are echoed in `self`; scan the rest.
            let scanned = b.body.replace(&normalise(&url_b, &gw_b.base_url()), "");
            for token in &hidden_tokens {
                if !path.contains(token.as_str()) && scanned.contains(token.as_str()) {
                    leaks.push(format!("{what}: hidden token {token:?} in B's answer"));
                }
            }
            match (a.next, b.next) {
                (Some(na), Some(nb)) => (url_a, url_b) = (na, nb),
                _ => break,
            }
        }
    }
    let report = |items: &[String]| items.iter().take(12).cloned().collect::<Vec<_>>().join("\n\n");
    assert!(leaks.is_empty(), "{} hidden tokens leaked:\n{}", leaks.len(), report(&leaks));
    assert!(
        differences.is_empty(),
        "{} of {compared} answers differ between the upstream without and with hidden data:\n{}",
        differences.len(),
        report(&differences)
    );
    eprintln!("non-interference: {} requests, {compared} answers compared, identical", corpus.len());
    let pair = [(&gw_a, &token_a), (&gw_b, &token_b)];
    let files = export_differential(kind, pair, ["grp-grace", "grp-grace"], &hidden_tokens).await;
    eprintln!("non-interference: a bulk export of every exportable type, {files} files identical");
    let groups = match_differential(pair, &hidden_tokens).await;
    let files = export_differential(kind, pair, [&groups[0], &groups[1]], &hidden_tokens).await;
    eprintln!(
        "non-interference: $provider-member-match answers identical; its Group's export, {files} files identical"
    );
    let _ = Path::new(&data_a);
}

/// A bulk export of every exportable type of the client's Group through both
/// gateways: the manifests (after what is volatile: the job id, the kick-off
/// time) and every file must be identical, and B's files hold no hidden token.
/// Returns the number of files compared.
async fn export_differential(
    kind: Kind,
    gateways: [(&Gateway, &String); 2],
    groups: [&str; 2],
    hidden_tokens: &[String],
) -> usize {
    let mut exports = Vec::new();
    for ((gw, token), group) in gateways.into_iter().zip(groups) {
        let auth = format!("Bearer {token}");
        let kickoff = request(
            "GET",
            &gw.url(&format!("Group/{group}/$export")),
            &[("Authorization", &auth), ("Prefer", "respond-async")],
            None,
        )
        .await;
        kickoff.assert_status(202);
        let status = kickoff.header("content-location").unwrap().to_owned();
        let job = status.rsplit('/').next().unwrap().to_owned();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        let manifest = loop {
            let resp = request("GET", &status, &[("Authorization", &auth)], None).await;
            match resp.status {
                200 => break resp.json(),
                202 | 429 => {}
                other => panic!("export status {other}: {}", resp.text()),
            }
            assert!(std::time::Instant::now() < deadline, "the export did not finish");
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        };
        let mut files = Vec::new();
        for list in ["output", "error"] {
            for file in manifest[list].as_array().unwrap() {
                let resp =
                    request("GET", file["url"].as_str().unwrap(), &[("Authorization", &auth)], None).await;
                resp.assert_status(200);
                let mut text = normalise(&resp.text(), &gw.base_url());
                if kind == Kind::Medplum {
                    text = server_assigned(&text);
                }
                files.push((file["type"].as_str().unwrap().to_owned(), text));
            }
        }
        let mut manifest = manifest;
        manifest["transactionTime"] = serde_json::json!("~");
        let manifest =
            normalise(&manifest.to_string(), &gw.base_url()).replace(&job, "JOB").replace(group, "GROUP");
        exports.push((manifest, files));
    }
    let (a, b) = (&exports[0], &exports[1]);
    assert_eq!(a.0, b.0, "the export manifests differ");
    assert!(a.1.iter().any(|(t, _)| t == "Patient"), "the export has Patient data");
    for ((type_a, text_a), (_, text_b)) in a.1.iter().zip(&b.1) {
        assert!(text_a == text_b, "{type_a} export files differ:\n{}", first_difference(text_a, text_b));
    }
    for (resource_type, text) in &b.1 {
        for token in hidden_tokens {
            assert!(
                !text.contains(token.as_str()),
                "hidden token {token:?} in B's {resource_type} export file"
            );
        }
    }
    a.1.len()
}

/// `$provider-member-match` through both gateways for members of the
/// dataset the client is not attributed to, matched on their demographics:
/// the answers must be identical (after the job's own id and time), and B's
/// holds no hidden token. Returns the MatchedMembers Group of each.
async fn match_differential(gateways: [(&Gateway, &String); 2], hidden_tokens: &[String]) -> [String; 2] {
    use serde_json::{Value, json};
    let dataset_facts: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/dataset/facts.json")).unwrap(),
    )
    .unwrap();
    let visible: Vec<&str> = dataset_facts["attribution"]["org-grace"]["visible"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let text = std::fs::read_to_string(payer_dataset()).unwrap();
    let members: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["resourceType"] == "Patient" && !visible.contains(&r["id"].as_str().unwrap_or("")))
        .take(3)
        .collect();
    let npi = json!({"system": "http://hl7.org/fhir/sid/us-npi", "value": "1417987256"});
    let bundles: Vec<Value> = members
        .iter()
        .enumerate()
        .map(|(n, m)| {
            let local = format!("ehr-{n}");
            json!({"name": "MemberBundle", "part": [
                // Name, birth date and the address the provider has on file:
                // the default matcher never matches on name and birth date alone.
                {"name": "MemberPatient", "resource": {"resourceType": "Patient", "id": local, "name": m["name"],
                    "gender": m["gender"], "birthDate": m["birthDate"], "address": m["address"],
                    "telecom": m["telecom"]}},
                {"name": "CoverageToMatch", "resource": {"resourceType": "Coverage", "status": "active",
                    "beneficiary": {"reference": format!("Patient/{local}")}}},
                {"name": "Consent", "resource": {"resourceType": "Consent", "status": "active",
                    "patient": {"reference": format!("Patient/{local}")},
                    "provision": {"type": "permit", "period": {"start": "2025-01-01"}, "actor": [{
                        "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                        "reference": {"identifier": npi}}]}}}]})
        })
        .collect();
    let body = json!({"resourceType": "Parameters", "parameter": bundles}).to_string();
    let mut answers = Vec::new();
    let mut groups = Vec::new();
    for (gw, token) in gateways {
        let resp = request(
            "POST",
            &gw.url("Group/$provider-member-match"),
            &[("Authorization", &format!("Bearer {token}")), ("Content-Type", "application/fhir+json")],
            Some(body.clone().into_bytes()),
        )
        .await;
        resp.assert_status(200);
        let mut answer = resp.json();
        let group = answer["parameter"][0]["resource"]["id"].as_str().unwrap().to_owned();
        let job = group.trim_start_matches("pmm-").to_owned();
        answer["parameter"][0]["resource"]["meta"]["lastUpdated"] = json!("~");
        groups.push(group);
        answers.push(answer.to_string().replace(&job, "JOB"));
    }
    assert_eq!(answers[0], answers[1], "the $provider-member-match answers differ");
    assert_eq!(
        answers[0].matches("\"entity\":{\"extension\"").count(),
        3,
        "all three matched: {}",
        answers[0]
    );
    for token in hidden_tokens {
        assert!(!answers[1].contains(token.as_str()), "hidden token {token:?} in B's answer");
    }
    [groups.remove(0), groups.remove(0)]
}
