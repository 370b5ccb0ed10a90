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
