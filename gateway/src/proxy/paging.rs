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

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::error::GatewayError;

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
}

/// The sealed plaintext of every token: 2-byte length, deflated state,
/// padding. Sized for an upstream link that carries a narrowed search of
/// `policy.max_narrowed_patients` (100) random UUID patient ids, which
/// deflate cannot shrink much; every token is then ~4.1 KB of URL.
pub const TOKEN_PLAINTEXT: usize = 3072;

pub struct PageSealer {
    key: LessSafeKey,
    rng: SystemRandom,
    ttl: Duration,
}

impl std::fmt::Debug for PageSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageSealer").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl PageSealer {
    /// `key`: 32 secret bytes shared by every node (kept in the store).
    pub fn new(key: &[u8; 32], ttl: Duration) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, key).expect("AES-256 takes a 32-byte key");
        PageSealer { key: LessSafeKey::new(unbound), rng: SystemRandom::new(), ttl }
    }

    /// Seal an upstream link for `caller` (a page that starts at the
    /// upstream page, after `skip` visible matches, `count` matches long).
    pub fn seal(
        &self,
        caller: &str,
        resource_type: &str,
        upstream_path: &str,
    ) -> Result<String, GatewayError> {
        self.seal_at(caller, resource_type, upstream_path, 0, 0)
    }

    /// [`PageSealer::seal`] with the position inside the upstream page.
    pub fn seal_at(
        &self,
        caller: &str,
        resource_type: &str,
        upstream_path: &str,
        skip: usize,
        count: usize,
    ) -> Result<String, GatewayError> {
        let page = PageRef {
            resource_type: resource_type.to_owned(),
            upstream_path: upstream_path.to_owned(),
            skip,
            count,
            expires: now_unix() + self.ttl.as_secs(),
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
        self.key
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
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| gone())?;
        let mut sealed = sealed.to_vec();
        let plain =
            self.key.open_in_place(nonce, Aad::from(caller.as_bytes()), &mut sealed).map_err(|_| gone())?;
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
        let short = s.seal_at("grace", "Observation", "Observation?a=1", 0, 1).unwrap();
        // A narrowed search of 100 random UUID ids: the worst case the size is for.
        let ids: Vec<String> = (0..100).map(|_| format!("Patient%2F{}", uuid_like())).collect();
        let long_path =
            format!("Observation?patient={}&_count=31&_include=Observation%3Apatient", ids.join("%2C"));
        let long = s.seal_at("grace", "Observation", &long_path, 7, 20).unwrap();
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
}
