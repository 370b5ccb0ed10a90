//! Paging links point at fhirwall (`{base}/_page/{token}`) and never carry
//! the upstream URL in a decodable form: the token is the upstream link
//! sealed with AES-256-GCM under a key only fhirwall holds, bound to the
//! caller (its id is the associated data, so another caller's token does not
//! open) and to an expiry.
//!
//! Every token has the same length ([`TOKEN_PLAINTEXT`] bytes sealed): the
//! state is deflated and padded, so the length of a link says nothing about
//! the upstream's cursor (which can depend on data the caller may not see).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::error::GatewayError;
use crate::keyring::KeySet;

/// What a page token stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRef {
    /// The resource type of the search that produced the link.
    #[serde(rename = "t")]
    pub resource_type: String,
    /// The upstream link below the upstream base (`Patient?_offset=20`).
    #[serde(rename = "p")]
    pub upstream_path: String,
    /// Visible matches of that upstream page already sent.
    #[serde(rename = "s", default)]
    pub skip: usize,
    /// The page size the caller asked for.
    #[serde(rename = "c", default)]
    pub count: usize,
    /// Unix seconds after which the token is refused.
    #[serde(rename = "e")]
    pub expires: u64,
    /// Where this search has been (see [`Trail`]).
    #[serde(rename = "l", default)]
    pub trail: Trail,
}

/// Loop detection across the pages of one search, in a few bytes of the
/// token (Brent's cycle finding): the cursor of every page is compared with
/// one remembered cursor, re-remembered after 1, 2, 4, 8… pages. An upstream
/// whose paging links go round in a circle of any length is caught within
/// about twice the circle, while a search that moves on is never refused
/// (a cursor is its upstream link and the position in it, which only move
/// forward). Within one fhirwall page a loop is caught by the pages read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Trail {
    /// Hash of the remembered cursor.
    #[serde(rename = "h")]
    remembered: u64,
    /// Pages between re-rememberings (a power of two).
    #[serde(rename = "p")]
    period: u32,
    /// Pages since the last re-remembering.
    #[serde(rename = "n")]
    since: u32,
}

/// The upstream's paging links went back to a page this search has read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Looped;

impl Trail {
    /// A search that starts at `path`.
    pub fn start(path: &str) -> Trail {
        Trail { remembered: cursor_hash(path, 0), period: 1, since: 0 }
    }

    /// The trail of the next page's token, or [`Looped`].
    pub fn advance(self, path: &str, skip: usize) -> Result<Trail, Looped> {
        let here = cursor_hash(path, skip);
        if here == self.remembered {
            return Err(Looped);
        }
        let since = self.since + 1;
        Ok(if since >= self.period {
            Trail { remembered: here, period: self.period.saturating_mul(2).max(1), since: 0 }
        } else {
            Trail { since, ..self }
        })
    }
}

fn cursor_hash(path: &str, skip: usize) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(path.as_bytes())
        .chain_update((skip as u64).to_be_bytes())
        .finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The sealed plaintext of every token: 2-byte length, deflated state,
/// padding. Sized for an upstream link that carries a narrowed search of
/// `policy.max_narrowed_patients` (100) random UUID patient ids, which
/// deflate cannot shrink much; every token is then ~4.1 KB of URL.
pub const TOKEN_PLAINTEXT: usize = 3072;

pub struct PageSealer {
    /// The keyring's page-token generations that verify, newest first,
    /// with the one that seals marked; replaced as a whole on a change.
    keys: ArcSwap<Vec<SealingKey>>,
    rng: SystemRandom,
    ttl: Duration,
}

/// One generation of the page key.
struct SealingKey {
    generation: i64,
    key: LessSafeKey,
    active_from: u64,
    retire_at: u64,
}

impl std::fmt::Debug for PageSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageSealer").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl PageSealer {
    /// One key that never retires (tests, tools). `key`: 32 secret bytes.
    pub fn new(key: &[u8; 32], ttl: Duration) -> Self {
        let only = SealingKey { generation: 1, key: aes_key(key), active_from: 0, retire_at: u64::MAX };
        PageSealer { keys: ArcSwap::from_pointee(vec![only]), rng: SystemRandom::new(), ttl }
    }

    /// The keyring's page-token generations (shared by every node).
    pub fn from_set(set: &KeySet, ttl: Duration) -> Result<Self, GatewayError> {
        Ok(PageSealer { keys: ArcSwap::from_pointee(sealing_keys(set)?), rng: SystemRandom::new(), ttl })
    }

    /// Take a new state of the keyring (an unusable one changes nothing).
    pub fn install(&self, set: &KeySet) -> Result<(), GatewayError> {
        let current = self.keys.load();
        let unchanged = current.len() == set.versions.len()
            && current.iter().zip(&set.versions).all(|(k, v)| {
                (k.generation, k.active_from, k.retire_at)
                    == (v.generation, unix(v.active_from), unix(v.retire_at))
            });
        if !unchanged {
            self.keys.store(std::sync::Arc::new(sealing_keys(set)?));
        }
        Ok(())
    }

    /// Seal an upstream link for `caller` (a page that starts at the
    /// upstream page, after `skip` visible matches, `count` matches long).
    pub fn seal(
        &self,
        caller: &str,
        resource_type: &str,
        upstream_path: &str,
    ) -> Result<String, GatewayError> {
        self.seal_at(caller, resource_type, upstream_path, 0, 0, Trail::default())
    }

    /// [`PageSealer::seal`] with the position inside the upstream page.
    pub fn seal_at(
        &self,
        caller: &str,
        resource_type: &str,
        upstream_path: &str,
        skip: usize,
        count: usize,
        trail: Trail,
    ) -> Result<String, GatewayError> {
        let page = PageRef {
            resource_type: resource_type.to_owned(),
            upstream_path: upstream_path.to_owned(),
            skip,
            count,
            expires: now_unix() + self.ttl.as_secs(),
            trail,
        };
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| GatewayError::internal("no randomness for page token"))?;
        let state = serde_json::to_vec(&page).map_err(|e| GatewayError::internal(e.to_string()))?;
        let packed = miniz_oxide::deflate::compress_to_vec(&state, 9);
        if packed.len() + 2 > TOKEN_PLAINTEXT {
            return Err(GatewayError::internal("the upstream paging link is too long to seal"));
        }
        let mut data = Vec::with_capacity(TOKEN_PLAINTEXT + AES_256_GCM.tag_len());
        data.extend_from_slice(&(packed.len() as u16).to_be_bytes());
        data.extend_from_slice(&packed);
        data.resize(TOKEN_PLAINTEXT, 0);
        let keys = self.keys.load();
        let now = now_unix();
        let sealing = keys
            .iter()
            .find(|k| k.active_from <= now && now < k.retire_at)
            .ok_or_else(|| GatewayError::internal("no page key is in force"))?;
        sealing
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(caller.as_bytes()),
                &mut data,
            )
            .map_err(|_| GatewayError::internal("page token sealing failed"))?;
        let mut token = Vec::with_capacity(NONCE_LEN + data.len());
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&data);
        Ok(URL_SAFE_NO_PAD.encode(token))
    }

    /// Open a token presented by `caller`. A forged, foreign, corrupted or
    /// expired token is one answer: 404, so nothing is learnt from it.
    pub fn open(&self, caller: &str, token: &str) -> Result<PageRef, GatewayError> {
        let gone = || GatewayError::not_found("this page does not exist or has expired; repeat the search");
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| gone())?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(gone());
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| gone())?;
        // Every generation that still verifies (at most a few, during a
        // rotation); a token sealed by a retired one is gone like a forgery.
        let now = now_unix();
        let keys = self.keys.load();
        let mut opened = None;
        for key in keys.iter().filter(|k| now < k.retire_at) {
            let mut attempt = sealed.to_vec();
            let nonce = Nonce::assume_unique_for_key(nonce);
            if key.key.open_in_place(nonce, Aad::from(caller.as_bytes()), &mut attempt).is_ok() {
                attempt.truncate(attempt.len() - AES_256_GCM.tag_len());
                opened = Some(attempt);
                break;
            }
        }
        let plain = opened.ok_or_else(gone)?;
        if plain.len() != TOKEN_PLAINTEXT {
            return Err(gone());
        }
        let length = u16::from_be_bytes([plain[0], plain[1]]) as usize;
        let packed = plain.get(2..2 + length).ok_or_else(gone)?;
        let state =
            miniz_oxide::inflate::decompress_to_vec_with_limit(packed, 64 * 1024).map_err(|_| gone())?;
        let page: PageRef = serde_json::from_slice(&state).map_err(|_| gone())?;
        if page.expires < now_unix() {
            return Err(gone());
        }
        Ok(page)
    }
}

fn aes_key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("AES-256 takes a 32-byte key"))
}

/// Unix seconds of a keyring time (never negative; `NEVER` stays the maximum).
fn unix(at: i64) -> u64 {
    u64::try_from(at).unwrap_or(0)
}

fn sealing_keys(set: &KeySet) -> Result<Vec<SealingKey>, GatewayError> {
    set.versions
        .iter()
        .map(|v| {
            let bytes: &[u8; 32] = v.material.as_slice().try_into().map_err(|_| {
                GatewayError::internal(format!("page key generation {} is not 32 bytes", v.generation))
            })?;
            Ok(SealingKey {
                generation: v.generation,
                key: aes_key(bytes),
                active_from: unix(v.active_from),
                retire_at: unix(v.retire_at),
            })
        })
        .collect()
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> PageSealer {
        PageSealer::new(&[7u8; 32], Duration::from_secs(600))
    }

    #[test]
    fn round_trips_for_the_same_caller() {
        let s = sealer();
        let token = s.seal("grace", "Observation", "Observation?_offset=20&patient=Patient%2F1").unwrap();
        let page = s.open("grace", &token).unwrap();
        assert_eq!(page.upstream_path, "Observation?_offset=20&patient=Patient%2F1");
        assert_eq!(page.resource_type, "Observation");
    }

    fn uuid_like() -> String {
        let bytes: [u8; 16] = rand::random();
        let hex = hex::encode(bytes);
        format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
    }

    #[test]
    fn tokens_have_one_length_and_carry_the_position() {
        let s = sealer();
        let short = s.seal_at("grace", "Observation", "Observation?a=1", 0, 1, Trail::default()).unwrap();
        // A narrowed search of 100 random UUID ids: the worst case the size is for.
        let ids: Vec<String> = (0..100).map(|_| format!("Patient%2F{}", uuid_like())).collect();
        let long_path =
            format!("Observation?patient={}&_count=31&_include=Observation%3Apatient", ids.join("%2C"));
        let long =
            s.seal_at("grace", "Observation", &long_path, 7, 20, Trail::start("Observation?a=1")).unwrap();
        assert_eq!(short.len(), long.len());
        let page = s.open("grace", &long).unwrap();
        assert_eq!((page.upstream_path.as_str(), page.skip, page.count), (long_path.as_str(), 7, 20));
    }

    #[test]
    fn token_does_not_reveal_the_link() {
        let s = sealer();
        let token = s.seal("grace", "Observation", "Observation?_offset=20").unwrap();
        let decoded = URL_SAFE_NO_PAD.decode(&token).unwrap();
        let as_text = String::from_utf8_lossy(&decoded);
        assert!(!as_text.contains("Observation"));
        assert!(!as_text.contains("_offset"));
    }

    #[test]
    fn other_callers_forgeries_and_other_keys_are_refused() {
        let s = sealer();
        let token = s.seal("grace", "Observation", "Observation?_offset=20").unwrap();
        assert_eq!(s.open("hopkins", &token).unwrap_err().status, 404);
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(s.open("grace", &URL_SAFE_NO_PAD.encode(&bytes)).is_err());
        assert!(s.open("grace", "not-a-token").is_err());
        assert!(s.open("grace", "").is_err());
        let other = PageSealer::new(&[8u8; 32], Duration::from_secs(600));
        assert!(other.open("grace", &token).is_err());
    }

    #[test]
    fn expired_tokens_are_refused() {
        let s = PageSealer::new(&[7u8; 32], Duration::from_secs(0));
        let mut page_token = s.seal("grace", "Observation", "x").unwrap();
        // ttl 0 expires at "now"; make sure a past expiry is refused.
        std::thread::sleep(Duration::from_millis(1100));
        assert!(s.open("grace", &page_token).is_err());
        page_token.clear();
    }

    fn version(generation: i64, byte: u8, active_from: i64, retire_at: i64) -> crate::keyring::KeyVersion {
        crate::keyring::KeyVersion {
            purpose: crate::keyring::Purpose::PageToken,
            generation,
            material: vec![byte; 32],
            created_at: 0,
            active_from,
            retire_at,
        }
    }

    #[test]
    fn links_sealed_before_a_rotation_open_until_the_old_key_retires_and_never_after() {
        let now = now_unix() as i64;
        let old = version(1, 7, 0, crate::keyring::NEVER);
        let s =
            PageSealer::from_set(&KeySet { versions: vec![old.clone()] }, Duration::from_secs(600)).unwrap();
        let before = s.seal("grace", "Observation", "Observation?_offset=20").unwrap();
        // Generation 2 seals from now on; generation 1 still opens.
        let mut retiring = old.clone();
        retiring.retire_at = now + 100;
        s.install(&KeySet { versions: vec![version(2, 9, now, crate::keyring::NEVER), retiring] }).unwrap();
        let after = s.seal("grace", "Observation", "Observation?_offset=40").unwrap();
        assert_eq!(s.open("grace", &before).unwrap().upstream_path, "Observation?_offset=20");
        assert_eq!(s.open("grace", &after).unwrap().upstream_path, "Observation?_offset=40");
        // A sealer that only knows generation 1 cannot open the new link: it was not sealed with it.
        let only_old = PageSealer::new(&[7u8; 32], Duration::from_secs(600));
        assert!(only_old.open("grace", &after).is_err());
        // Revoked: generation 1's links are gone, generation 2's still open.
        let mut revoked = old;
        revoked.retire_at = now;
        s.install(&KeySet { versions: vec![version(2, 9, now, crate::keyring::NEVER), revoked] }).unwrap();
        assert!(s.open("grace", &before).is_err());
        assert!(s.open("grace", &after).is_ok());
        // Tokens keep one length across generations.
        assert_eq!(before.len(), after.len());
    }

    /// The cursors of a search that goes `prefix` pages, then round a
    /// circle of `circle` pages for ever.
    fn cursor(i: usize, prefix: usize, circle: usize) -> String {
        let at = if i < prefix { i } else { prefix + (i - prefix) % circle };
        format!("Observation?_offset={at}")
    }

    #[test]
    fn paging_loops_of_any_length_are_caught_within_about_twice_the_circle() {
        for prefix in [0, 1, 5, 37] {
            for circle in 1..=64 {
                let mut trail = Trail::start(&cursor(0, prefix, circle));
                let mut caught = None;
                for i in 1..10_000 {
                    match trail.advance(&cursor(i, prefix, circle), 0) {
                        Ok(next) => trail = next,
                        Err(Looped) => {
                            caught = Some(i);
                            break;
                        }
                    }
                }
                let caught =
                    caught.unwrap_or_else(|| panic!("prefix {prefix}, circle {circle}: never caught"));
                assert!(
                    caught >= prefix + circle,
                    "caught before the first repeat ({prefix}, {circle}): {caught}"
                );
                assert!(
                    caught <= 2 * (prefix + circle) + circle + 2,
                    "prefix {prefix}, circle {circle}: caught only at {caught}"
                );
            }
        }
    }

    #[test]
    fn a_search_that_moves_on_is_never_taken_for_a_loop() {
        // Ten thousand pages, and a page boundary inside each upstream page (same link, growing skip).
        let mut trail = Trail::start("Observation?_count=20");
        for i in 1..10_000 {
            trail = trail.advance(&format!("Observation?_offset={}", i / 3), i % 3).unwrap();
        }
        // The trail survives sealing and opening.
        let s = sealer();
        let token = s.seal_at("grace", "Observation", "Observation?_offset=9", 0, 10, trail).unwrap();
        assert_eq!(s.open("grace", &token).unwrap().trail, trail);
    }
}
