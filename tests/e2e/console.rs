//! The audit console end to end: the real gateway in front of the sandbox,
//! real traffic from a provider client, then the console
//!
//! - over HTTP: its security headers, that its data endpoints need a
//!   session, that state-changing calls need the CSRF token and the same
//!   origin, that sign-in takes JSON only, what the views answer, and that
//!   console calls are audited (`console.*`, the patient looked at named);
//! - in a real headless browser (Debian's chromium through chromium-driver,
//!   driven by selenium: tests/clients/console_browser.py): sign-in, each
//!   view, a wrong token refused, no PHI beyond ids, an edited record shown
//!   as a broken chain, sign-out.

use fhirwall_testkit as support;

use std::process::Command;

use serde_json::{Value, json};
use support::*;

const CLIENT: &str = "grace-ehr";
/// Visible to grace; has a Part 2 Condition (withheld) and ordinary ones.
const PATIENT: &str = "pat-0009";
const OPTED_OUT: &str = "pat-0006";
const JSON: &[(&str, &str)] = &[("Content-Type", "application/json")];

async fn gateway_with_traffic() -> Gateway {
    let gw = Gateway::start(
        GatewayConfig::new("sandbox")
            .extra_toml("[policy]\npart2_programs = [\"Organization/org-recovery\", \"1234567893\"]\n")
            .client(CLIENT, "Organization/org-grace", "1417987256", &["system/*.read"]),
    );
    gw.admin("PUT", &format!("/admin/opt-outs/{OPTED_OUT}"), Some(&json!({"reason": "member request"})))
        .await
        .assert_status(204);
    let token = gw.token(CLIENT, "system/*.read");
    for path in [
        format!("Patient/{PATIENT}"),
        format!("Condition?patient={PATIENT}"),
        "Condition?patient=pat-0001".to_owned(),
        "Patient/pat-0004".to_owned(),
        format!("Patient/{OPTED_OUT}"),
    ] {
        let resp = get_bearer(&gw.url(&path), &token).await;
        assert!(matches!(resp.status, 200 | 403 | 404), "{path}: {}", resp.status);
    }
    gw
}

/// Sign in over HTTP; returns (cookie header value, CSRF token).
async fn sign_in(gw: &Gateway) -> (String, String) {
    let url = format!("{}/admin/console/session", gw.admin_url());
    let resp = post_json(&url, JSON, &json!({ "token": gw.admin_token() })).await;
    resp.assert_status(200);
    let set_cookie = resp.header("set-cookie").expect("a session cookie").to_owned();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/admin/console"] {
        assert!(set_cookie.contains(part), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    (cookie, resp.json()["csrf"].as_str().unwrap().to_owned())
}

async fn console_get(gw: &Gateway, cookie: &str, path: &str) -> Resp {
    get_with(&format!("{}/admin/console/api/{path}", gw.admin_url()), &[("Cookie", cookie)]).await
}

#[tokio::test]
async fn the_console_api_needs_a_session_csrf_and_same_origin_and_answers_from_the_log() {
    let gw = gateway_with_traffic().await;
    let admin = gw.admin_url();

    // The page: strict CSP, nothing framed, nothing cached, no data.
    let page = get(&format!("{admin}/admin/console")).await;
    page.assert_status(200);
    let csp = page.header("content-security-policy").expect("CSP").to_owned();
    for directive in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"]
    {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("http"), "{csp}");
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let html = page.text();
    assert!(!html.contains("<script>") && !html.contains("style="), "inline script or style: {html}");
    assert!(!html.contains("//") || !html.contains("src=\"http"), "a third-party asset: {html}");
    for asset in ["console.js", "console.css"] {
        get(&format!("{admin}/admin/console/{asset}")).await.assert_status(200);
    }

    // No session: no data, whatever else is presented.
    for headers in [vec![], vec![("Authorization", format!("Bearer {}", gw.admin_token()))]] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = get_with(&format!("{admin}/admin/console/api/patients/{PATIENT}"), &h).await;
        resp.assert_status(401);
        assert!(!resp.text().contains(CLIENT), "{}", resp.text());
    }
    // Sign-in: a wrong token, a form post, another origin are refused.
    let session_url = format!("{admin}/admin/console/session");
    post_json(&session_url, JSON, &json!({ "token": "wrong" })).await.assert_status(401);
    let form = post_form(&session_url, &[], &[("token", gw.admin_token())]).await;
    assert_eq!(form.status, 415, "{}", form.text());
    assert!(form.header("set-cookie").is_none());
    post_json(
        &session_url,
        &[("Origin", "http://evil.example"), JSON[0]],
        &json!({ "token": gw.admin_token() }),
    )
    .await
    .assert_status(403);

    let (cookie, csrf) = sign_in(&gw).await;
    // Views.
    let overview = console_get(&gw, &cookie, "overview").await;
    overview.assert_status(200);
    let o = overview.json();
    let row =
        o["clients"].as_array().unwrap().iter().find(|c| c["client"] == CLIENT).expect("grace in the table");
    assert_eq!(row["organization"], "Organization/org-grace", "{row}");
    assert!(row["requests"].as_u64().unwrap() >= 5, "{row}");
    assert!(row["refused"].as_u64().unwrap() >= 1, "{row}");
    assert!(row["withheld"]["suppressed.part2"].as_u64().unwrap() >= 1, "{row}");
    assert!(o["series"]["buckets"].as_array().is_some_and(|b| !b.is_empty()), "{o}");
    assert_eq!(o["chain"]["intact"], true, "{o}");

    let p = console_get(&gw, &cookie, &format!("patients/{PATIENT}")).await.json();
    let who = &p["clients"].as_array().unwrap()[0]; // those that received data come first
    assert_eq!((who["client"].as_str(), who["disclosures"].as_u64()), (Some(CLIENT), Some(2)), "{p}");
    let part2_row =
        p["rows"].as_array().unwrap().iter().find(|r| r["event"] == "search-type").expect("the search");
    assert_eq!(part2_row["patient"], "disclosed");
    assert!(part2_row["withheld"]["suppressed.part2"].as_u64().unwrap() >= 1, "{part2_row}");
    // Paging: one per page, newest first, `next_before` continues.
    let first = console_get(&gw, &cookie, &format!("patients/{PATIENT}?limit=1")).await.json();
    let before = first["next_before"].as_u64().expect("a second page");
    let second =
        console_get(&gw, &cookie, &format!("patients/{PATIENT}?limit=1&before={before}")).await.json();
    assert!(second["rows"][0]["seq"].as_u64().unwrap() < first["rows"][0]["seq"].as_u64().unwrap());
    // A patient the client was refused: requested, never disclosed.
    let refused = console_get(&gw, &cookie, "patients/pat-0004").await.json();
    let grace =
        refused["clients"].as_array().unwrap().iter().find(|c| c["client"] == CLIENT).expect("grace asked");
    assert_eq!(grace["disclosures"], 0, "{refused}");

    let c = console_get(&gw, &cookie, &format!("clients/{CLIENT}")).await.json();
    assert!(c["total"]["patients_disclosed"].as_u64().unwrap() >= 2, "{c}");
    let opt = console_get(&gw, &cookie, "opt-outs").await.json();
    assert_eq!(opt["opt_outs"][0]["patient"], OPTED_OUT, "{opt}");
    assert!(!opt.to_string().contains("member request"), "the free-text reason is shown: {opt}");
    for bad in ["patients/not%20an%20id", "overview?since=x", "patients/pat-0001?limit=0"] {
        console_get(&gw, &cookie, bad).await.assert_status(400);
    }

    // State-changing calls: CSRF token and same origin.
    let rebuild = format!("{admin}/admin/console/api/rebuild");
    request("POST", &rebuild, &[("Cookie", &cookie)], None).await.assert_status(403);
    request("POST", &rebuild, &[("Cookie", &cookie), ("X-CSRF-Token", "0000")], None)
        .await
        .assert_status(403);
    request(
        "POST",
        &rebuild,
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf), ("Origin", "http://evil.example")],
        None,
    )
    .await
    .assert_status(403);
    let rebuilt = request("POST", &rebuild, &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)], None).await;
    rebuilt.assert_status(200);
    assert_eq!(rebuilt.json()["chain"]["intact"], true);

    // Sign-out ends the session.
    request("DELETE", &session_url, &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)], None)
        .await
        .assert_status(204);
    console_get(&gw, &cookie, "overview").await.assert_status(401);

    // Every console call is on the record; looking at a patient names the patient.
    let lines = gw.admin("GET", &format!("/admin/audit?patient={PATIENT}"), None).await.text();
    let looked: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event"].clone())
        .filter(|e| e.to_string().contains("console.patient"))
        .collect();
    assert!(looked.len() >= 3, "console.patient records naming {PATIENT}: {lines}");
    let all = gw.admin("GET", "/admin/audit", None).await.text();
    for code in
        ["console.sign-in", "console.overview", "console.rebuild", "console.sign-out", "console.opt-outs"]
    {
        assert!(all.contains(&format!("\"{code}\"")), "no {code} record");
    }
    // Nothing the console saw carries the admin token or the session.
    assert!(!all.contains(gw.admin_token()) && !all.contains(cookie.split('=').nth(1).unwrap()));
}

#[tokio::test]
async fn the_console_in_a_headless_browser() {
    let python = venvs::tool("browser-venv", "browser-requirements.txt", "browser", "python");
    let gw = gateway_with_traffic().await;
    // PHI of the patients the traffic touched: names and birth dates.
    let facts: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/dataset/facts.json")).unwrap(),
    )
    .unwrap();
    let mut forbidden = Vec::new();
    for id in [PATIENT, "pat-0001", "pat-0004", OPTED_OUT] {
        let p = &facts["patients"][id];
        forbidden.push(p["name"]["family"].as_str().unwrap().to_owned());
        forbidden.push(p["name"]["given"][0].as_str().unwrap().to_owned());
        forbidden.push(p["birthDate"].as_str().unwrap().to_owned());
    }
    forbidden.push("member request".to_owned());
    let forbid = gw.dir().join("forbidden.json");
    std::fs::write(&forbid, serde_json::to_vec(&forbidden).unwrap()).unwrap();

    let out = Command::new(python)
        .arg(repo_root().join("tests/clients/console_browser.py"))
        .args(["--console", &format!("{}/admin/console", gw.admin_url())])
        .args([
            "--token",
            gw.admin_token(),
            "--client",
            CLIENT,
            "--patient",
            PATIENT,
            "--opted-out",
            OPTED_OUT,
        ])
        .arg("--forbid")
        .arg(&forbid)
        .arg("--audit-dir")
        .arg(gw.audit_dir())
        .output()
        .expect("running tests/clients/console_browser.py");
    assert!(
        out.status.success(),
        "browser test failed:\n{}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    // The browser saw the break where `fhirwall audit verify` sees it.
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let verify =
        Command::new(fhirwall_bin()).args(["audit", "verify", "--dir"]).arg(gw.audit_dir()).output().unwrap();
    assert_eq!(verify.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&verify.stdout).trim(),
        format!("first bad seq: {}", result["edited_seq"])
    );
}

/// Guessing the admin token is slowed down per address: ten wrong tokens
/// (console sign-in or bearer), then 429 with `Retry-After` for every call
/// from that address — the right token too, or guessing would go on — until
/// a second has passed.
#[tokio::test]
async fn guessing_the_admin_token_is_throttled() {
    let gw = Gateway::start(GatewayConfig::new("sandbox"));
    let url = format!("{}/admin/console/session", gw.admin_url());
    for i in 0..5 {
        let wrong = post_json(&url, JSON, &json!({ "token": format!("guess-{i}") })).await;
        assert_eq!(wrong.status, 401, "guess {i}");
        let bearer =
            get_with(&format!("{}/admin/clients", gw.admin_url()), &[("Authorization", "Bearer nope")]).await;
        assert_eq!(bearer.status, 401, "bearer guess {i}");
    }
    let refused = post_json(&url, JSON, &json!({ "token": gw.admin_token() })).await;
    assert_eq!(refused.status, 429, "the right token after ten guesses: {}", refused.text());
    assert!(refused.header("retry-after").is_some());
    assert_eq!(gw.admin("GET", "/admin/clients", None).await.status, 429);
    // Probes are never throttled.
    assert_eq!(get(&format!("{}/healthz", gw.admin_url())).await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    post_json(&url, JSON, &json!({ "token": gw.admin_token() })).await.assert_status(200);
}
