//! Session ids that carry their own session, so any replica can continue it.
//!
//! A session id is `v1.` and, in base64url, a random nonce and the AES-256-GCM sealing of what a
//! replica needs to take the session over without a new `initialize`: the key id and a fingerprint
//! of the key's stored hash that opened it (a rotated key no longer matches), when it expires, and
//! the client's `initialize` parameters (protocol version, capabilities, client info). Replicas
//! that share `MCPGW_SESSION_SECRET` can open each other's ids; nobody else can read, forge or alter
//! one. Without the setting each process seals with a random key of its own, and sessions stay
//! where they were opened, as before.
//!
//! What an id cannot carry, because it never changes, is what the client changes later in the
//! session: the log level it set (a replica taking over starts at the default) and its resource
//! subscriptions (the client subscribes again when its stream reconnects).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rand::RngCore;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rmcp::model::{Implementation, InitializeRequestParams};
use rmcp::transport::streamable_http_server::session::store::{SessionState, SessionStore, SessionStoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::session::Owner;

const VERSION: &str = "v1.";
/// Bound into every sealing, so nothing else sealed with the same secret passes for a session id.
const PURPOSE: &[u8] = b"mcpgw session id v1";
/// Shortest `MCPGW_SESSION_SECRET` accepted.
pub const MIN_SECRET_LEN: usize = 32;

/// What a session id carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Contents {
    /// Key id of the credential that opened the session.
    k: String,
    /// Fingerprint of that key's stored hash.
    c: String,
    /// Expiry, Unix seconds.
    e: i64,
    /// The client's `initialize` parameters.
    p: InitializeRequestParams,
}

/// An opened id that is well-formed, authentic and unexpired.
#[derive(Debug)]
pub struct Opened {
    contents: Contents,
}

impl Opened {
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.contents.e, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// Whether `owner` is the credential that opened the session.
    pub fn belongs_to(&self, owner: &Owner) -> bool {
        // The contents are authenticated: nobody can choose them, so a plain comparison leaks nothing.
        self.contents.k == *owner.key_id && self.contents.c == credential_fingerprint(owner)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unopenable {
    #[error("not a session id this deployment issued")]
    Forged,
    #[error("the session has expired")]
    Expired,
}

pub struct Sealer {
    key: LessSafeKey,
    lifetime: chrono::Duration,
}

impl Sealer {
    /// Seals with a key derived from `secret` (shared by replicas), or with a random key of this
    /// process when there is none.
    pub fn new(secret: Option<&str>, lifetime: std::time::Duration) -> Self {
        let key: [u8; 32] = match secret {
            Some(secret) => {
                Sha256::new().chain_update(PURPOSE).chain_update([0]).chain_update(secret).finalize().into()
            }
            None => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                key
            }
        };
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).expect("a 32-byte key fits AES-256-GCM"));
        let lifetime = chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::MAX);
        Sealer { key, lifetime }
    }

    /// How long an id stays valid.
    pub fn lifetime(&self) -> std::time::Duration {
        self.lifetime.to_std().unwrap_or(std::time::Duration::MAX)
    }

    /// A new session id for `owner`'s session with the client's `params`.
    pub fn seal(&self, owner: &Owner, mut params: InitializeRequestParams, now: DateTime<Utc>) -> String {
        // What a replay of `initialize` needs, and no more: request metadata (progress tokens, trace
        // context) belongs to that one request, experimental capabilities and the client's icons
        // and links only make the id longer (it travels in a header on every request).
        params.meta = None;
        params.capabilities.experimental = None;
        let info = &params.client_info;
        let mut client = Implementation::new(clip(&info.name), clip(&info.version));
        client.title = info.title.as_deref().map(clip);
        params.client_info = client;
        let contents = Contents {
            k: owner.key_id.to_string(),
            c: credential_fingerprint(owner),
            e: now.checked_add_signed(self.lifetime).unwrap_or(DateTime::<Utc>::MAX_UTC).timestamp(),
            p: params,
        };
        let mut sealed = serde_json::to_vec(&contents).expect("session contents serialize");
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(PURPOSE), &mut sealed)
            .expect("AES-GCM seals any length a session holds");
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&sealed);
        format!("{VERSION}{}", URL_SAFE_NO_PAD.encode(raw))
    }

    /// Opens `id`, checking that it is authentic and unexpired at `now`.
    pub fn open(&self, id: &str, now: DateTime<Utc>) -> Result<Opened, Unopenable> {
        let contents = self.contents(id).ok_or(Unopenable::Forged)?;
        if now.timestamp() >= contents.e {
            return Err(Unopenable::Expired);
        }
        Ok(Opened { contents })
    }

    fn contents(&self, id: &str) -> Option<Contents> {
        let mut raw = URL_SAFE_NO_PAD.decode(id.strip_prefix(VERSION)?).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let mut sealed = raw.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&raw).ok()?;
        let plain = self.key.open_in_place(nonce, Aad::from(PURPOSE), &mut sealed).ok()?;
        serde_json::from_slice(plain).ok()
    }
}

/// At most 128 characters of a client-chosen name.
fn clip(text: &str) -> String {
    text.chars().take(128).collect()
}

fn credential_fingerprint(owner: &Owner) -> String {
    hex::encode(&Sha256::digest(owner.credential().as_bytes())[..16])
}

/// rmcp's store for restoring a session on a replica that has not seen it: the id is the store.
/// The gateway admits the request (owner and expiry) before rmcp asks.
pub struct SealedStore(pub Arc<Sealer>);

#[async_trait::async_trait]
impl SessionStore for SealedStore {
    async fn load(&self, session_id: &str) -> Result<Option<SessionState>, SessionStoreError> {
        Ok(self.0.open(session_id, Utc::now()).ok().map(|opened| SessionState::new(opened.contents.p)))
    }

    async fn store(&self, _session_id: &str, _state: &SessionState) -> Result<(), SessionStoreError> {
        Ok(())
    }

    async fn delete(&self, _session_id: &str) -> Result<(), SessionStoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rmcp::model::{ClientCapabilities, Implementation, ProtocolVersion};

    use super::*;

    fn params() -> InitializeRequestParams {
        InitializeRequestParams::new(ClientCapabilities::default(), Implementation::new("client", "1.0"))
            .with_protocol_version(ProtocolVersion::V_2025_06_18)
    }

    fn owner(key: &str, hash: &str) -> Owner {
        Owner::new(key.into(), hash.into())
    }

    #[test]
    fn replicas_sharing_the_secret_open_each_others_ids_and_nobody_else_does() {
        let now = Utc::now();
        let a = Sealer::new(Some("a shared secret of at least thirty-two characters"), Duration::from_secs(60));
        let b = Sealer::new(Some("a shared secret of at least thirty-two characters"), Duration::from_secs(60));
        let other = Sealer::new(Some("another secret of at least thirty-two characters"), Duration::from_secs(60));
        let alice = owner("k1", "$argon2id$hash-1");
        let id = a.seal(&alice, params(), now);
        assert!(id.starts_with(VERSION) && id.bytes().all(|b| b.is_ascii_graphic()), "{id}");

        let opened = b.open(&id, now).expect("another replica opens it");
        assert!(opened.belongs_to(&alice));
        assert_eq!(opened.contents.p.protocol_version, ProtocolVersion::V_2025_06_18);
        assert!(!opened.belongs_to(&owner("k2", "$argon2id$hash-1")), "another key");
        assert!(!opened.belongs_to(&owner("k1", "$argon2id$rotated")), "the same key rotated");
        assert_eq!(other.open(&id, now).unwrap_err(), Unopenable::Forged);
        assert_eq!(b.open(&id, now + chrono::Duration::seconds(60)).unwrap_err(), Unopenable::Expired);
        assert_ne!(id, a.seal(&alice, params(), now), "every id is new");
    }

    #[test]
    fn altered_or_made_up_ids_do_not_open() {
        let sealer = Sealer::new(None, Duration::from_secs(60));
        let now = Utc::now();
        let id = sealer.seal(&owner("k1", "h"), params(), now);
        let body = id.strip_prefix(VERSION).unwrap();
        for i in [0, body.len() / 2, body.len() - 1] {
            let mut bytes = body.as_bytes().to_vec();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = format!("{VERSION}{}", String::from_utf8(bytes).unwrap());
            assert_eq!(sealer.open(&tampered, now).unwrap_err(), Unopenable::Forged, "byte {i}");
        }
        for made_up in ["", "v1.", "v1.AAAA", "v2.abc", &uuid::Uuid::new_v4().to_string(), &body[..10]] {
            assert_eq!(sealer.open(made_up, now).unwrap_err(), Unopenable::Forged, "{made_up}");
        }
    }
}
