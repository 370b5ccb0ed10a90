//! Smoke tests of the end-to-end harness itself: the third-party Medplum upstream
//! starts, loads the fixtures, serves what the gateway relies on, and keeps its
//! real quirks (they document what fhirwall must survive).

use fhirwall_testkit as support;

use std::time::Instant;

use support::*;

fn carin_upstream() -> Upstream {
    Upstream::medplum(&[&fixture("carin-sample.ndjson"), &fixture("atr-sample.ndjson")])
}

#[tokio::test]
async fn medplum_serves_metadata_read_and_search_with_absolute_paging_links() {
    let up = carin_upstream();
    let base = up.base_url().to_string();
    assert!(base.starts_with("http://127.0.0.1:") && base.ends_with("/fhir"), "{base}");

    let meta = get(&up.url("metadata")).await;
    meta.assert_status(200);
    assert!(meta.content_type().unwrap_or("").starts_with("application/fhir+json"));
    let cs = meta.json();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let eob = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "ExplanationOfBenefit")
        .expect("EOB in the CapabilityStatement");
    let params: Vec<&str> =
        eob["searchParam"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(params.contains(&"service-date"), "CARIN BB params are active: {params:?}");

    // Read keeps the fixture's own id.
    let patient = get(&up.url("Patient/ExamplePatient1")).await;
    patient.assert_status(200);
    let p = patient.json();
    assert_eq!(p["resourceType"], "Patient");
    assert_eq!(p["id"], "ExamplePatient1");
    assert!(patient.header("etag").is_some());

    let missing = get(&up.url("Patient/does-not-exist")).await;
    missing.assert_status(404);
    assert_operation_outcome(&missing);

    // Search with paging: absolute links and fullUrls on the upstream's own base.
    let page1 = get(&up.url("Patient?_id=ExamplePatient1,567834&_count=1")).await;
    page1.assert_status(200);
    let b1 = page1.json();
    assert_eq!(b1["type"], "searchset");
    assert_eq!(b1["total"], 2, "Medplum always reports total");
    assert_eq!(bundle_resources(&b1).len(), 1);
    let full_url = b1["entry"][0]["fullUrl"].as_str().unwrap();
    assert!(full_url.starts_with(&format!("{base}/Patient/")), "{full_url}");
    let self_link = bundle_link(&b1, "self").expect("self link");
    assert!(self_link.starts_with(&format!("{base}/Patient?")), "{self_link}");
    let next = bundle_link(&b1, "next").expect("next link on page 1");
    assert!(next.starts_with(&format!("{base}/Patient?")), "{next}");

    let b2 = get(&next).await.assert_status(200).json();
    assert_eq!(bundle_resources(&b2).len(), 1);
    assert!(bundle_link(&b2, "next").is_none(), "page 2 is the last page: {b2}");
    assert!(bundle_link(&b2, "previous").is_some());
    let mut ids = bundle_refs(&b1);
    ids.extend(bundle_refs(&b2));
    ids.sort();
    assert_eq!(ids, ["Patient/567834", "Patient/ExamplePatient1"]);

    // Reference search + _include through the IG SearchParameters (CARIN `patient`).
    let eobs = get(
        &up.url("ExplanationOfBenefit?patient=Patient/ExamplePatient1&_include=ExplanationOfBenefit:patient")
    )
    .await
    .assert_status(200)
    .json();
    let refs = bundle_refs(&eobs);
    assert_eq!(eobs["total"], 3, "{refs:?}");
    assert!(refs.contains(&"Patient/ExamplePatient1".to_string()), "{refs:?}");
    let include = eobs["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "include");
    assert!(include.is_some(), "the included Patient is marked search.mode=include");

    // The attribution Group, found by its R4 search parameter name.
    let groups = get(&up.url("Group?managing-entity=Organization/ProviderOrganization1"))
        .await
        .assert_status(200)
        .json();
    assert_eq!(bundle_refs(&groups), ["Group/carin-attribution"]);

    // POST _search is the same search.
    let posted = post_form(&up.url("Patient/_search"), &[], &[("_id", "567834")]).await;
    assert_eq!(bundle_refs(&posted.assert_status(200).json()), ["Patient/567834"]);
}

#[tokio::test]
async fn medplum_quirks_unknown_params_are_refused_and_r4_names_only() {
    let up = Upstream::medplum(&[&fixture("carin-sample.ndjson")]);

    // Unknown search parameter: 400 OperationOutcome (a real server's behaviour,
    // which is why fhirwall must never rely on the upstream ignoring a parameter).
    let unknown = get(&up.url("Patient?not-a-param=x")).await;
    unknown.assert_status(400);
    let oo = assert_operation_outcome(&unknown);
    assert!(oo.to_string().contains("not-a-param"), "{oo}");

    // ... unless the client asks for lenient handling.
    let lenient = get_with(&up.url("Patient?not-a-param=x"), &[("Prefer", "handling=lenient")]).await;
    lenient.assert_status(200);
    assert_eq!(lenient.json()["total"], 2);

    // PDex's `managingEntity` is not an R4 name: the upstream refuses it.
    let pdex_name = get(&up.url("Group?managingEntity=Organization/ProviderOrganization1")).await;
    pdex_name.assert_status(400);
    assert_operation_outcome(&pdex_name);

    // R4 has no ExplanationOfBenefit?use.
    get(&up.url("ExplanationOfBenefit?use=claim")).await.assert_status(400);

    // `_has` silently matches nothing; `_elements` is ignored.
    let has = get(&up.url("Patient?_has:Group:member:_id=carin-attribution")).await.assert_status(200).json();
    assert_eq!(has["total"], 0);
    let elements = get(&up.url("Patient?_id=567834&_elements=id")).await.assert_status(200).json();
    assert!(elements["entry"][0]["resource"]["name"].is_array(), "_elements is ignored");

    // Compartment search is not supported (fhirwall rewrites it to a type search).
    get(&up.url("Patient/567834/ExplanationOfBenefit")).await.assert_status(404);

    // Unknown resource type.
    assert_operation_outcome(get(&up.url("NotAType?x=1")).await.assert_status(400));

    // Writes are validated against R4.
    let invalid =
        post_json(&up.url("Patient"), &[], &serde_json::json!({"resourceType": "Patient", "bogus": 1})).await;
    invalid.assert_status(400);
    assert_operation_outcome(&invalid);
}

#[tokio::test]
async fn medplum_ig_search_parameters_are_active() {
    let up = Upstream::medplum(&[&fixture("carin-sample.ndjson")]);
    // CARIN BB `ExplanationOfBenefit?service-date` (not in R4).
    let b = get(&up.url("ExplanationOfBenefit?patient=ExamplePatient1&service-date=ge2000-01-01"))
        .await
        .assert_status(200)
        .json();
    assert_eq!(b["total"], 3, "{}", bundle_refs(&b).join(","));
    // HRex `Coverage?subscriber-id`.
    get(&up.url("Coverage?subscriber-id=nobody")).await.assert_status(200);
}

#[test]
fn medplum_refuses_invalid_data_unless_told_to_skip_it() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.ndjson");
    std::fs::write(&bad, "{\"resourceType\":\"Patient\",\"id\":\"ok\"}\n{\"resourceType\":\"Patient\",\"id\":\"x\",\"bogus\":true}\n")
        .unwrap();
    let started = std::panic::catch_unwind(|| Upstream::medplum(&[&bad]));
    let err = started.err().expect("an invalid resource fails the load");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("rejected"), "{msg}");

    // With skip_invalid the valid lines load.
    let up = Upstream::medplum_with(MedplumOptions {
        data: vec![bad.clone()],
        skip_invalid: true,
        ..Default::default()
    });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        get(&up.url("Patient/ok")).await.assert_status(200);
        get(&up.url("Patient/x")).await.assert_status(404);
    });

    // With no_validate it stores anything, like a legacy server with bad data.
    let legacy = Upstream::medplum_with(MedplumOptions {
        data: vec![bad.clone()],
        no_validate: true,
        ..Default::default()
    });
    rt.block_on(async {
        let x = get(&legacy.url("Patient/x")).await.assert_status(200).json();
        assert_eq!(x["bogus"], true);
    });
}

#[tokio::test]
async fn medplum_loads_the_synthetic_payer_dataset() {
    let path = payer_dataset();
    if !path.is_file() {
        eprintln!("skipped: {} does not exist yet", path.display());
        return;
    }
    let lines = std::fs::read_to_string(&path).unwrap().lines().filter(|l| !l.trim().is_empty()).count();
    let started = Instant::now();
    let up = Upstream::medplum(&[&path]);
    let elapsed = started.elapsed();
    eprintln!("Medplum loaded {lines} resources from {} in {elapsed:.1?}", path.display());
    let b = get(&up.url("Patient?_count=5")).await.assert_status(200).json();
    assert!(b["total"].as_u64().unwrap_or(0) > 0, "{b}");
    assert!(up.log().contains("resources from"), "{}", up.log());
}

#[tokio::test]
async fn sandbox_upstream_and_gateway_start() {
    let up = Upstream::sandbox();
    assert!(up.base_url().starts_with("http://127.0.0.1:"), "{}", up.base_url());
    let meta = get(&up.url("metadata")).await;
    assert!(meta.status < 500, "sandbox metadata: {meta:?}");

    // extra_toml merges into the generated tables.
    let mut gw = Gateway::start(
        GatewayConfig::new(up.base_url())
            .extra_toml("[upstream]\ntimeout_ms = 5000\n\n[auth]\ntoken_ttl_s = 60\n"),
    );
    get(&format!("{}/readyz", gw.admin_url())).await.assert_status(200);
    let config: toml::Table = std::fs::read_to_string(gw.config_path()).unwrap().parse().unwrap();
    assert_eq!(config["upstream"]["url"].as_str(), Some(up.base_url()));
    assert_eq!(config["upstream"]["timeout_ms"].as_integer(), Some(5000));
    assert_eq!(config["auth"]["token_ttl_s"].as_integer(), Some(60));
    assert!(config["state"]["url"].as_str().unwrap().starts_with("sqlite://"));

    // Restart keeps ports, config and state dir.
    let base = gw.base_url();
    gw.restart();
    assert_eq!(gw.base_url(), base);
    get(&format!("{}/readyz", gw.admin_url())).await.assert_status(200);
    assert_eq!(gw.log().matches("===== fhirwall serve").count(), 2, "{}", gw.log());
}
