use super::*;

const TTL: i64 = 300;
const PAGE_TTL: i64 = 3600;
const NOW: i64 = 1_000_000;

async fn open(dir: &tempfile::TempDir) -> (Store, Keyring) {
    let url = format!("sqlite://{}/state.db", dir.path().display());
    let store = Store::open(&url).await.unwrap();
    let keyring = Keyring::open(store.clone(), TTL, PAGE_TTL, NOW).await.unwrap();
    (store, keyring)
}

#[tokio::test]
async fn first_start_creates_one_generation_per_purpose_and_reopening_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, keyring) = open(&dir).await;
    let tokens = keyring.load(Purpose::AccessToken).await.unwrap();
    let pages = keyring.load(Purpose::PageToken).await.unwrap();
    assert_eq!(tokens.versions.len(), 1);
    assert_eq!(pages.versions[0].material.len(), 32);
    assert_eq!(tokens.signing(NOW).unwrap().generation, 1);
    let again = Keyring::open(store, TTL, PAGE_TTL, NOW + 10).await.unwrap();
    assert_eq!(again.load(Purpose::AccessToken).await.unwrap(), tokens);
    assert_eq!(again.load(Purpose::PageToken).await.unwrap(), pages);
}

#[tokio::test]
async fn pre_rotation_secrets_become_generation_one() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/state.db", dir.path().display());
    let store = Store::open(&url).await.unwrap();
    let page = store.shared_secret("page-token-key").await.unwrap();
    let keyring = Keyring::open(store, TTL, PAGE_TTL, NOW).await.unwrap();
    let pages = keyring.load(Purpose::PageToken).await.unwrap();
    assert_eq!(pages.versions[0].material, page.to_vec(), "an upgrade must keep open paging links valid");
}

#[tokio::test]
async fn a_scheduled_rotation_publishes_first_signs_later_and_retires_the_old_key_after_its_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (_, keyring) = open(&dir).await;
    let new = keyring.rotate(Purpose::AccessToken, Rotation::Scheduled, NOW).await.unwrap();
    assert_eq!(new.generation, 2);
    let set = keyring.load(Purpose::AccessToken).await.unwrap();
    // Published now, still signing with generation 1 until every node knows generation 2.
    assert_eq!(set.signing(NOW).unwrap().generation, 1);
    assert_eq!(set.verifying(NOW).map(|v| v.generation).collect::<Vec<_>>(), [1, 2]);
    let switch = NOW + PUBLISH_AHEAD_S;
    assert_eq!(set.signing(switch).unwrap().generation, 2);
    // The last token generation 1 signed (just before the switch) expires
    // at switch + TTL: generation 1 verifies until then, and then some.
    let last_expiry = switch - 1 + TTL;
    assert!(set.verifying(last_expiry).any(|v| v.generation == 1));
    let retired = switch + TTL + RETIRE_MARGIN_S;
    assert_eq!(set.verifying(retired).map(|v| v.generation).collect::<Vec<_>>(), [2]);
    // The page key is untouched, and its own lifetime is used when it rotates.
    assert_eq!(keyring.load(Purpose::PageToken).await.unwrap().versions.len(), 1);
    keyring.rotate(Purpose::PageToken, Rotation::Scheduled, NOW).await.unwrap();
    let pages = keyring.load(Purpose::PageToken).await.unwrap();
    assert_eq!(pages.versions[1].retire_at, switch + PAGE_TTL + RETIRE_MARGIN_S);
}

#[tokio::test]
async fn revoking_stops_every_older_generation_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_, keyring) = open(&dir).await;
    keyring.rotate(Purpose::AccessToken, Rotation::Scheduled, NOW).await.unwrap();
    let new = keyring.rotate(Purpose::AccessToken, Rotation::RevokePrevious, NOW + 1).await.unwrap();
    let set = keyring.load(Purpose::AccessToken).await.unwrap();
    assert_eq!(set.signing(NOW + 1).unwrap().generation, new.generation);
    assert_eq!(set.verifying(NOW + 1).map(|v| v.generation).collect::<Vec<_>>(), [3]);
    // A later scheduled rotation never brings a revoked key back.
    keyring.rotate(Purpose::AccessToken, Rotation::Scheduled, NOW + 2).await.unwrap();
    let set = keyring.load(Purpose::AccessToken).await.unwrap();
    assert_eq!(set.verifying(NOW + 2).map(|v| v.generation).collect::<Vec<_>>(), [3, 4]);
}

#[tokio::test]
async fn old_generations_are_purged_a_day_after_they_retire() {
    let dir = tempfile::tempdir().unwrap();
    let (_, keyring) = open(&dir).await;
    keyring.rotate(Purpose::PageToken, Rotation::RevokePrevious, NOW).await.unwrap();
    assert_eq!(keyring.purge(NOW + 10).await.unwrap(), 0);
    assert_eq!(keyring.purge(NOW + PURGE_AFTER_S + 1).await.unwrap(), 1);
    let pages = keyring.load(Purpose::PageToken).await.unwrap();
    assert_eq!(pages.versions.iter().map(|v| v.generation).collect::<Vec<_>>(), [2]);
}

#[test]
fn key_material_never_shows_in_debug_output() {
    let version = KeyVersion {
        purpose: Purpose::PageToken,
        generation: 1,
        material: b"SECRET-MATERIAL-BYTES-0123456789".to_vec(),
        created_at: 0,
        active_from: 0,
        retire_at: NEVER,
    };
    let shown = format!("{version:?} {:?}", KeySet { versions: vec![version.clone()] });
    assert!(!shown.contains("SECRET"), "{shown}");
}
