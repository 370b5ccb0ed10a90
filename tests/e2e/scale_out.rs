//! Two fhirwall nodes on one PostgreSQL behave as one (DESIGN.md "Scale-out"):
//! a token issued by one node works on the other, a client assertion used on
//! one node is a replay on the other, a paging link sealed by one node opens
//! on the other, and a client deleted on one node loses access on the other
//! within seconds. Both nodes share one public base URL, as behind a load
//! balancer.

use fhirwall_testkit as support;

use std::time::{Duration, Instant};

use support::postgres::Postgres;
use support::pyjwt::{JWT_BEARER, Key, toml_client};
use support::*;

const CLIENT: &str = "lb-ehr";

async fn ask_token(node: &Gateway, assertion: &str) -> Resp {
    post_form(
        &node.token_url(),
        &[("Accept", "application/json")],
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
            ("scope", "system/*.read"),
        ],
    )
    .await
}

#[tokio::test]
async fn two_nodes_on_one_postgres_behave_as_one() {
    let pg = Postgres::start();
    let up = Upstream::sandbox();
    let key = Key::new("ES384");
    let client = toml_client(CLIENT, "Organization/org-grace", "1417987256", &key.jwks(), &["system/*.read"]);
    let state = format!("[state]\nurl = {:?}\n", pg.url());
    let matcher = repo_root().join("plugins/dist/default_matcher.wasm");
    assert!(matcher.is_file(), "build the plugins first (plugins/build.sh)");
    let state = format!(
        "{state}[member_match]\nmax_failures_per_subject = 2\n\
         [[plugins]]\nname = \"matcher\"\nworld = \"matcher\"\npath = {:?}\n",
        matcher.display().to_string()
    );
    let a = Gateway::start(GatewayConfig::new(up.base_url()).extra_toml(&state).extra_toml(&client));
    // Node B serves the same public base URL as node A (a load balancer's).
    let public = format!("[server]\nbase_url = {:?}\n", a.base_url());
    let b = Gateway::start(
        GatewayConfig::new(up.base_url()).extra_toml(&state).extra_toml(&client).extra_toml(&public),
    );
    let audience = a.token_url();

    // A token issued by A works on B (one signing key, in the store).
    let resp = ask_token(&a, &key.assertion(CLIENT, &audience, &[])).await;
    resp.assert_status(200);
    let token = resp.json()["access_token"].as_str().unwrap().to_owned();
    get_bearer(&b.url("Patient/pat-0001"), &token).await.assert_status(200);

    // An assertion used on A is a replay on B.
    let assertion = key.assertion(CLIENT, &audience, &[]);
    ask_token(&a, &assertion).await.assert_status(200);
    let replay = ask_token(&b, &assertion).await;
    assert_eq!(replay.status, 401, "replay accepted by the other node: {}", replay.text());
    assert_eq!(replay.json()["error"], "invalid_client");

    // A paging link sealed by A opens on B.
    let page =
        get_bearer(&a.url("ExplanationOfBenefit?patient=Patient/pat-0001&_count=2"), &token).await.json();
    let next = bundle_link(&page, "next").expect("a next link");
    let token_part = next.rsplit('/').next().unwrap();
    let on_b = get_bearer(&b.url(&format!("_page/{token_part}")), &token).await;
    on_b.assert_status(200);
    let on_a = get_bearer(&next, &token).await;
    on_a.assert_status(200);
    // The same page either way (the policy filters may have withheld some of it).
    assert_eq!(bundle_refs(&on_b.json()), bundle_refs(&on_a.json()));

    // $member-match guesses spent on A count on B (HREX-10 budgets live in the store).
    let guess = |card: &str| {
        serde_json::json!({"resourceType": "Parameters", "parameter": [
            {"name": "MemberPatient", "resource": {"resourceType": "Patient", "id": "1",
                "name": [{"family": "Okonkwo", "given": ["Joan"]}], "birthDate": "1998-03-31"}},
            {"name": "CoverageToMatch", "resource": {"resourceType": "Coverage", "status": "active",
                "subscriberId": card, "beneficiary": {"reference": "Patient/1"}}}
        ]})
    };
    let bearer = format!("Bearer {token}");
    for card in ["FW1000001", "FW1000002"] {
        let resp =
            post_json(&a.url("Patient/$member-match"), &[("Authorization", &bearer)], &guess(card)).await;
        assert_eq!(resp.status, 422, "{}", resp.text());
    }
    let on_b =
        post_json(&b.url("Patient/$member-match"), &[("Authorization", &bearer)], &guess("FW1000569")).await;
    assert_eq!(on_b.status, 429, "the other node did not count A's attempts: {}", on_b.text());

    // A client deleted on A loses access on B within seconds.
    a.admin("DELETE", &format!("/admin/clients/{CLIENT}"), None).await.assert_status(204);
    assert_eq!(get_bearer(&a.url("Patient/pat-0001"), &token).await.status, 401, "not revoked on A at once");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = get_bearer(&b.url("Patient/pat-0001"), &token).await.status;
        if status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node B still serves a deleted client's token after 10 s ({status})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Export jobs on PostgreSQL, as two nodes see them: both race for one job
/// and exactly one wins; after its lease runs out the other takes over from
/// the checkpoint, and the first node's late writes are refused.
#[tokio::test]
async fn export_jobs_are_claimed_once_and_fenced_across_nodes() {
    use fhirwall::ops::export::jobs::{JobError, JobState, Jobs, NewJob};
    let pg = Postgres::start();
    let node_1 = Jobs::open(fhirwall::store::Store::open(&pg.url()).await.unwrap()).await.unwrap();
    let node_2 = Jobs::open(fhirwall::store::Store::open(&pg.url()).await.unwrap()).await.unwrap();
    let job = NewJob {
        client_id: CLIENT.into(),
        organization: "Organization/org-grace".into(),
        group_id: "grp-grace".into(),
        request: "{}".into(),
        kickoff_url: "http://lb/fhir/Group/grp-grace/$export".into(),
        transaction_time: "2026-12-05T10:00:00Z".into(),
    };
    let id = node_1.create(&job, 4, 100).await.unwrap();
    let (a, b) = tokio::join!(node_1.claim("node-1", 100, 130, 8), node_2.claim("node-2", 100, 130, 8));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.is_some() != b.is_some(), "exactly one node claims the job: {a:?} {b:?}");
    let (first, first_jobs, second_jobs) = match a {
        Some(claim) => (claim, &node_1, &node_2),
        None => (b.unwrap(), &node_2, &node_1),
    };
    first_jobs.checkpoint(&first, "{\"batch\":1}", 1, 2, 110).await.unwrap();
    let second = second_jobs.claim("late-taker", 131, 160, 8).await.unwrap().expect("the lease ran out");
    assert_eq!(second.fence, first.fence + 1);
    assert!(matches!(
        first_jobs.checkpoint(&first, "{\"batch\":2}", 2, 2, 132).await,
        Err(JobError::LeaseLost(_))
    ));
    let seen = first_jobs.get(&id).await.unwrap().unwrap();
    assert_eq!(
        (seen.state, seen.checkpoint.as_deref(), seen.done_units),
        (JobState::Running, Some("{\"batch\":1}"), 1)
    );
    second_jobs.complete(&second, "{\"output\":[]}", 1000, 150).await.unwrap();
    assert_eq!(first_jobs.get(&id).await.unwrap().unwrap().state, JobState::Done);
}

/// Two nodes on one PostgreSQL and one S3-compatible bucket: an export
/// kicked off on A is polled, downloaded and cancelled through B; when A is
/// killed (-9) in the middle of a job, B takes it over after the lease and
/// finishes it with every member's data, each resource once.
#[tokio::test]
async fn an_export_on_two_nodes_with_shared_storage() {
    let pg = Postgres::start();
    let s3 = support::s3::S3Server::start("fhirwall-exports");
    let up = Upstream::sandbox();
    let key = Key::new("ES384");
    let client = toml_client(CLIENT, "Organization/org-grace", "1417987256", &key.jwks(), &["system/*.read"]);
    let shared = format!(
        "[state]\nurl = {:?}\n[export]\n{}batch_patients = 5\nupstream_rps = 25\nlease_s = 3\n",
        pg.url(),
        s3.export_toml("jobs")
    );
    let node = |extra: &str| {
        let mut config =
            GatewayConfig::new(up.base_url()).extra_toml(&shared).extra_toml(&client).extra_toml(extra);
        for (k, v) in support::s3::S3Server::env() {
            config = config.env(k, v);
        }
        Gateway::start(config)
    };
    let mut a = node("");
    let public = format!("[server]\nbase_url = {:?}\n", a.base_url());
    let b = node(&public);
    let resp = ask_token(&a, &key.assertion(CLIENT, &a.token_url(), &[])).await;
    let token = resp.json()["access_token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");
    let kickoff = |node: &Gateway| {
        let url = node.url("Group/grp-grace/$export?_type=Patient,Coverage,Condition");
        let bearer = bearer.clone();
        async move { request("GET", &url, &[("Authorization", &bearer), ("Prefer", "respond-async")], None).await }
    };

    // Kicked off on A, polled on B until some batches are checkpointed.
    let started = kickoff(&a).await;
    started.assert_status(202);
    let status_url = started.header("content-location").unwrap().to_owned();
    // Both serve A's public base; B is reached at its own address.
    let (a_origin, b_origin) = (format!("http://{}", a.listen_addr()), format!("http://{}", b.listen_addr()));
    let on_b = |url: &str| url.replacen(&a_origin, &b_origin, 1);
    let poll = |url: String| {
        let bearer = bearer.clone();
        async move { request("GET", &url, &[("Authorization", &bearer)], None).await }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let resp = poll(on_b(&status_url)).await;
        assert_ne!(resp.status, 200, "finished before a node could be killed");
        if let Some(done) = resp.header("x-progress").and_then(|p| p.strip_prefix("patients "))
            && done.split('/').next().and_then(|d| d.parse::<u32>().ok()).is_some_and(|d| d >= 10)
        {
            break;
        }
        assert!(Instant::now() < deadline, "no progress: {} {:?}", resp.status, resp.header("x-progress"));
        tokio::time::sleep(Duration::from_millis(2100)).await;
    }
    // A dies; B takes the job over after the lease and finishes it.
    let pid = a.pid().unwrap();
    assert!(std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(120);
    let manifest = loop {
        let resp = poll(on_b(&status_url)).await;
        match resp.status {
            200 => break resp.json(),
            202 | 429 => {}
            other => panic!("status {other}: {}", resp.text()),
        }
        assert!(Instant::now() < deadline, "B did not finish A's job");
        tokio::time::sleep(Duration::from_millis(2100)).await;
    };
    a.stop();
    // Downloaded through B: every visible member's Patient once, no line twice.
    let mut keys = std::collections::BTreeSet::new();
    let mut patients = 0;
    for file in manifest["output"].as_array().unwrap() {
        let url = on_b(file["url"].as_str().unwrap());
        let resp = poll(url).await;
        resp.assert_status(200);
        for line in resp.text().lines() {
            let r: serde_json::Value = serde_json::from_str(line).unwrap();
            let k = format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
            patients += usize::from(k.starts_with("Patient/"));
            assert!(keys.insert(k.clone()), "{k} twice after the takeover");
        }
    }
    let facts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/dataset/facts.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(patients, facts["attribution"]["org-grace"]["visible"].as_array().unwrap().len());
    let job = status_url.rsplit('/').next().unwrap().to_owned();
    assert!(s3.keys().iter().any(|k| k.starts_with(&format!("jobs/{job}/"))), "files are in the bucket");

    // Cancelled through B: 202, then 404 and the bucket holds none of its files.
    let cancel = request("DELETE", &on_b(&status_url), &[("Authorization", &bearer)], None).await;
    cancel.assert_status(202);
    assert_eq!(poll(on_b(&status_url)).await.status, 404);
    assert!(!s3.keys().iter().any(|k| k.starts_with(&format!("jobs/{job}/"))), "files left in the bucket");
}

/// `$provider-member-match` on one node, its answer, Group, attribution and
/// export on the other (the Group and the job live in PostgreSQL).
#[tokio::test]
async fn a_provider_member_match_made_on_one_node_serves_on_the_other() {
    use serde_json::{Value, json};
    let pg = Postgres::start();
    let up = Upstream::sandbox();
    let key = Key::new("ES384");
    let client = toml_client(CLIENT, "Organization/org-grace", "1417987256", &key.jwks(), &["system/*.read"]);
    let files = tempfile::tempdir().unwrap();
    let matcher = repo_root().join("plugins/dist/default_matcher.wasm");
    assert!(matcher.is_file(), "build the plugins first (plugins/build.sh)");
    let shared = format!(
        "[state]\nurl = {:?}\n[export]\nstorage = {:?}\n\
         [[plugins]]\nname = \"matcher\"\nworld = \"matcher\"\npath = {:?}\n",
        pg.url(),
        files.path().display().to_string(),
        matcher.display().to_string()
    );
    let a = Gateway::start(GatewayConfig::new(up.base_url()).extra_toml(&shared).extra_toml(&client));
    let public = format!("[server]\nbase_url = {:?}\n", a.base_url());
    let b = Gateway::start(
        GatewayConfig::new(up.base_url()).extra_toml(&shared).extra_toml(&client).extra_toml(&public),
    );
    let token = ask_token(&a, &key.assertion(CLIENT, &a.token_url(), &[])).await.json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bearer = format!("Bearer {token}");
    let (a_origin, b_origin) = (format!("http://{}", a.listen_addr()), format!("http://{}", b.listen_addr()));
    let on_b = |url: &str| url.replacen(&a_origin, &b_origin, 1);

    // A member grace is not attributed to, as the provider's EHR has them.
    let facts: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/dataset/facts.json")).unwrap(),
    )
    .unwrap();
    let visible: Vec<&str> = facts["attribution"]["org-grace"]["visible"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let dataset = std::fs::read_to_string(payer_dataset()).unwrap();
    let member: Value = dataset
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|r| r["resourceType"] == "Patient" && r["id"] == "pat-0004")
        .unwrap();
    assert!(!visible.contains(&"pat-0004"));
    let npi = json!({"system": "http://hl7.org/fhir/sid/us-npi", "value": "1417987256"});
    let body = json!({"resourceType": "Parameters", "parameter": [{"name": "MemberBundle", "part": [
        {"name": "MemberPatient", "resource": {"resourceType": "Patient", "id": "local-1", "name": member["name"],
            "gender": member["gender"], "birthDate": member["birthDate"], "address": member["address"]}},
        {"name": "CoverageToMatch", "resource": {"resourceType": "Coverage", "status": "active",
            "beneficiary": {"reference": "Patient/local-1"}, "payor": [{"display": "Fhirwall Example Health Plan"}]}},
        {"name": "Consent", "resource": {"resourceType": "Consent", "status": "active",
            "patient": {"reference": "Patient/local-1"}, "performer": [{"identifier": npi}],
            "provision": {"type": "permit", "period": {"start": "2025-01-01"},
                "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                           "reference": {"identifier": npi}}]}}}
    ]}]});
    assert_eq!(get_bearer(&b.url("Patient/pat-0004"), &token).await.status, 404);
    let kickoff = request(
        "POST",
        &a.url("Group/$provider-member-match"),
        &[("Authorization", &bearer), ("Prefer", "respond-async"), ("Content-Type", "application/fhir+json")],
        Some(body.to_string().into_bytes()),
    )
    .await;
    kickoff.assert_status(202);
    let status_url = on_b(kickoff.header("content-location").unwrap());
    let poll_until_done = |url: String| {
        let bearer = bearer.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let resp = request("GET", &url, &[("Authorization", &bearer)], None).await;
                match resp.status {
                    200 => return resp,
                    202 | 429 => {}
                    other => panic!("status {other}: {}", resp.text()),
                }
                assert!(Instant::now() < deadline, "not done in time");
                tokio::time::sleep(Duration::from_millis(2100)).await;
            }
        }
    };
    let answer = poll_until_done(status_url).await.json();
    let group = &answer["parameter"][0]["resource"];
    assert_eq!(group["member"][0]["entity"]["reference"], "Patient/pat-0004", "{answer}");
    let group_id = group["id"].as_str().unwrap();
    // B: the Group, the member's data, an export of the Group.
    get_bearer(&b.url(&format!("Group/{group_id}")), &token).await.assert_status(200);
    get_bearer(&b.url("Patient/pat-0004"), &token).await.assert_status(200);
    let export = request(
        "GET",
        &b.url(&format!("Group/{group_id}/$export?_type=Patient,Coverage")),
        &[("Authorization", &bearer), ("Prefer", "respond-async")],
        None,
    )
    .await;
    export.assert_status(202);
    let manifest = poll_until_done(on_b(export.header("content-location").unwrap())).await.json();
    let mut patients = Vec::new();
    for file in manifest["output"].as_array().unwrap() {
        let text = request("GET", &on_b(file["url"].as_str().unwrap()), &[("Authorization", &bearer)], None)
            .await
            .text();
        for line in text.lines() {
            let r: Value = serde_json::from_str(line).unwrap();
            if r["resourceType"] == "Patient" {
                patients.push(r["id"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(patients, ["pat-0004"]);
    // Removed through A's admin API: B hides the member again within seconds.
    a.admin("DELETE", &format!("/admin/provider-member-match/groups/{group_id}"), None)
        .await
        .assert_status(204);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_bearer(&b.url("Patient/pat-0004"), &token).await.status != 404 {
        assert!(Instant::now() < deadline, "B still shows the member");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The `kid` in a JWT's header.
fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap();
    serde_json::from_slice::<serde_json::Value>(&header).unwrap()["kid"].as_str().unwrap().to_owned()
}

/// Key rotation on a two-node deployment (issue 15): `fhirwall keys rotate`
/// on node A is in force on node B within seconds; through the switch no
/// token or paging link either node handed out stops working, and tokens
/// change `kid` once the new key signs. Revoking (a leaked key) refuses the
/// old generation's tokens and links on both nodes at once.
#[tokio::test]
async fn keys_rotate_across_nodes_without_downtime_and_revoke_at_once() {
    let pg = Postgres::start();
    let up = Upstream::sandbox();
    let key = Key::new("ES384");
    let client = toml_client(CLIENT, "Organization/org-grace", "1417987256", &key.jwks(), &["system/*.read"]);
    let state = format!("[state]\nurl = {:?}\n", pg.url());
    let a = Gateway::start(GatewayConfig::new(up.base_url()).extra_toml(&state).extra_toml(&client));
    let public = format!("[server]\nbase_url = {:?}\n", a.base_url());
    let b = Gateway::start(
        GatewayConfig::new(up.base_url()).extra_toml(&state).extra_toml(&client).extra_toml(&public),
    );
    let audience = a.token_url();
    let token_from = |node: &Gateway| {
        let assertion = key.assertion(CLIENT, &audience, &[]);
        let url = node.token_url();
        async move {
            let resp = post_form(
                &url,
                &[("Accept", "application/json")],
                &[
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", &assertion),
                    ("scope", "system/*.read"),
                ],
            )
            .await;
            resp.assert_status(200);
            resp.json()["access_token"].as_str().unwrap().to_owned()
        }
    };
    let page_link = |node: &Gateway, token: &str| {
        let url = node.url("ExplanationOfBenefit?patient=Patient/pat-0001&_count=2");
        let token = token.to_owned();
        async move {
            let page = get_bearer(&url, &token).await.json();
            bundle_link(&page, "next").expect("a next link").rsplit('/').next().unwrap().to_owned()
        }
    };
    let old_token = token_from(&a).await;
    let old_kid = kid_of(&old_token);
    let old_page = page_link(&a, &old_token).await;

    // Rotate both keys with the CLI against node A.
    let out = std::process::Command::new(fhirwall_bin())
        .args(["keys", "rotate", "--config"])
        .arg(a.config_path())
        .env("FHIRWALL_ADMIN_TOKEN", a.admin_token())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["rotated"].as_array().unwrap().len(), 2, "{answer}");
    let state_of = |keys: &serde_json::Value, purpose: &str, generation: i64| {
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["purpose"] == purpose && k["generation"] == generation)
            .map(|k| k["state"].as_str().unwrap().to_owned())
    };
    assert_eq!(state_of(&answer, "access-token", 2).as_deref(), Some("next"), "{answer}");
    assert_eq!(state_of(&answer, "access-token", 1).as_deref(), Some("signing"), "{answer}");
    let shown = answer.to_string();
    assert!(
        !shown.contains("material") && shown.len() < 4000,
        "key material must never be answered: {shown}"
    );

    // Through the switch: new tokens from either node, and every token and
    // link handed out so far, work on both nodes, every 300 ms for 10 s.
    let mut tokens = vec![old_token.clone()];
    let mut kids = std::collections::BTreeSet::new();
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(10) {
        let issuer = if round % 2 == 0 { &a } else { &b };
        let fresh = token_from(issuer).await;
        kids.insert(kid_of(&fresh));
        tokens.push(fresh);
        for node in [&a, &b] {
            for token in [&old_token, tokens.last().unwrap()] {
                let resp = get_bearer(&node.url("Patient/pat-0001"), token).await;
                assert_eq!(resp.status, 200, "round {round}: a valid token refused: {}", resp.text());
            }
            let page = get_bearer(&node.url(&format!("_page/{old_page}")), &old_token).await;
            assert_eq!(page.status, 200, "round {round}: a paging link broke: {}", page.text());
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let new_kid = kid_of(&token_from(&b).await);
    assert_ne!(new_kid, old_kid, "node B still signs with the old key 10 s after the rotation");
    assert!(kids.contains(&old_kid) || kids.contains(&new_kid));
    // Every token issued during the switch still works on both nodes.
    for token in &tokens {
        for node in [&a, &b] {
            get_bearer(&node.url("Patient/pat-0001"), token).await.assert_status(200);
        }
    }
    // A link sealed by B with the new page key opens on A.
    let new_token = token_from(&b).await;
    let new_page = page_link(&b, &new_token).await;
    get_bearer(&a.url(&format!("_page/{new_page}")), &new_token).await.assert_status(200);
    let listed = b.admin("GET", "/admin/keys", None).await;
    listed.assert_status(200);
    let listed = listed.json();
    assert_eq!(state_of(&listed, "access-token", 2).as_deref(), Some("signing"), "{listed}");
    assert_eq!(state_of(&listed, "access-token", 1).as_deref(), Some("verifying"), "{listed}");

    // A leaked key: revoke everything older than a new generation, on A.
    let revoked = a.admin("POST", "/admin/keys/rotate?purpose=all&revoke_previous=true", None).await;
    revoked.assert_status(200);
    assert_eq!(state_of(&revoked.json(), "access-token", 2).as_deref(), Some("retired"));
    for token in [&old_token, &new_token] {
        assert_eq!(
            get_bearer(&a.url("Patient/pat-0001"), token).await.status,
            401,
            "revoked token accepted on A"
        );
    }
    assert_eq!(get_bearer(&a.url(&format!("_page/{new_page}")), &new_token).await.status, 401);
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let fresh = token_from(&a).await;
        let old_on_b = get_bearer(&b.url("Patient/pat-0001"), &new_token).await.status;
        let fresh_on_b = get_bearer(&b.url("Patient/pat-0001"), &fresh).await.status;
        if old_on_b == 401 && fresh_on_b == 200 {
            // The revoked page key too: B's old links are gone, a new search pages.
            let page = get_bearer(&b.url(&format!("_page/{new_page}")), &fresh).await;
            assert_eq!(page.status, 404, "a link sealed with a revoked key opened: {}", page.text());
            assert!(!page.text().contains("pat-0001"));
            let relinked = page_link(&b, &fresh).await;
            get_bearer(&a.url(&format!("_page/{relinked}")), &fresh).await.assert_status(200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node B: revoked token {old_on_b}, fresh token {fresh_on_b} after 8 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The rotations are in A's audit log.
    let rotations = audit_lines(&a.audit_dir()).into_iter().filter(|l| l.contains("keys.rotate")).count();
    assert_eq!(rotations, 2, "both rotations audited");
}
