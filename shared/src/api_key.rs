//! API-key format, generation and argon2 hashing.
//!
//! A client key reads `mcpgw_<id>_<secret>`: the id is public (it names the key in the admin API and in
//! logs), the secret is not. Only an argon2id hash of the whole key is ever stored. Carrying the id in
//! the key lets the data plane find the one hash to check instead of trying them all.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};

/// Prefix of every client key; lets secret scanners recognise leaked keys.
pub const KEY_PREFIX: &str = "mcpgw_";
/// Length of the public key id.
pub const KEY_ID_LEN: usize = 16;
/// Length of the secret part of a client key (about 238 bits).
pub const KEY_SECRET_LEN: usize = 40;
/// Length of the admin key.
pub const ADMIN_KEY_LEN: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("could not hash key: {0}")]
    Hash(String),
}

/// A freshly generated client key: the public id and the full secret key (shown once).
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: String,
    pub secret: String,
}

fn random_alnum(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// A new public key id (lowercase alphanumeric so it is easy to read in URLs and logs).
pub fn new_key_id() -> String {
    random_alnum(KEY_ID_LEN).to_ascii_lowercase()
}

/// A new client key with a fresh id.
pub fn generate() -> NewKey {
    generate_for(&new_key_id())
}

/// A new client key for an existing id (rotation keeps the id, changes the secret).
pub fn generate_for(id: &str) -> NewKey {
    let secret = format!("{KEY_PREFIX}{id}_{}", random_alnum(KEY_SECRET_LEN));
    NewKey { id: id.to_string(), secret }
}

/// A new admin key: 256 random alphanumeric characters.
pub fn generate_admin_key() -> String {
    random_alnum(ADMIN_KEY_LEN)
}

/// The key id carried by a client key, if the key has our format. Cheap and allocation-free; says
/// nothing about whether the key is valid.
pub fn parse_key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let well_formed = id.len() == KEY_ID_LEN
        && secret.len() == KEY_SECRET_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
        && secret.bytes().all(|b| b.is_ascii_alphanumeric());
    well_formed.then_some(id)
}

/// Shortest key accepted from another gateway's config: shorter ones are guessable.
pub const MIN_IMPORTED_KEY_LEN: usize = 20;
/// Longest key accepted from another gateway's config.
pub const MAX_IMPORTED_KEY_LEN: usize = 256;
/// Prefix of the public id of an imported key.
const IMPORTED_ID_PREFIX: &str = "imp";

/// The public id of a key that mcpgw did not issue (imported from another gateway's config), which
/// carries no id of its own: 52 bits of a SHA-256 of the key. Enough to find the one hash to check,
/// far too little to say anything about a key of 20 or more random characters.
pub fn imported_key_id(key: &str) -> String {
    let digest = Sha256::new().chain_update(b"mcpgw imported key id\0").chain_update(key.as_bytes()).finalize();
    let mut id = String::with_capacity(KEY_ID_LEN);
    id.push_str(IMPORTED_ID_PREFIX);
    id.push_str(&hex::encode(&digest[..7])[..KEY_ID_LEN - IMPORTED_ID_PREFIX.len()]);
    id
}

/// The id to look a presented key up by: the one it carries, or, for an imported key, the one
/// derived from it. `None` for anything that cannot be a key of either kind.
pub fn lookup_id(key: &str) -> Option<std::borrow::Cow<'_, str>> {
    if let Some(id) = parse_key_id(key) {
        return Some(std::borrow::Cow::Borrowed(id));
    }
    (MIN_IMPORTED_KEY_LEN..=MAX_IMPORTED_KEY_LEN)
        .contains(&key.len())
        .then(|| std::borrow::Cow::Owned(imported_key_id(key)))
}

/// argon2id hash (PHC string) of a key, with a random salt.
pub fn hash(key: &str) -> Result<String, KeyError> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| KeyError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(key.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| KeyError::Hash(e.to_string()))
}

/// Whether `key` matches the stored PHC `hash`. A malformed hash never matches. This is the slow
/// check (tens of milliseconds by design): callers cache its result, see [`fingerprint`].
pub fn verify(key: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(key.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Whether a string is a well-formed argon2 PHC hash (used to validate snapshots and imports).
pub fn is_valid_hash(hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| h.algorithm.as_str().starts_with("argon2"))
}

/// SHA-256 of a presented key: the in-memory cache key for a verified key. Never stored on disk;
/// holding digests instead of keys means a memory dump does not reveal secrets directly.
pub fn fingerprint(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Constant-time equality of two fingerprints.
pub fn fingerprints_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// A short, safe label for a key in logs and listings: the id only, never any secret.
pub fn redact(key: &str) -> String {
    match parse_key_id(key) {
        Some(id) => format!("{KEY_PREFIX}{id}_***"),
        None => "***".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imported_keys_get_a_stable_id_of_the_usual_shape() {
        let key = "Zq3v0v6dM1mS9k2n4QeYtPzq-8rJbLwX_c1uVgH7aKfE0dTs";
        let id = imported_key_id(key);
        assert_eq!(id, imported_key_id(key));
        assert_ne!(id, imported_key_id("Zq3v0v6dM1mS9k2n4QeYtPzq-8rJbLwX_c1uVgH7aKfE0dTt"));
        assert_eq!(id.len(), KEY_ID_LEN);
        assert!(id.starts_with("imp") && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_eq!(lookup_id(key).as_deref(), Some(id.as_str()));
        let ours = generate();
        assert_eq!(lookup_id(&ours.secret).as_deref(), Some(ours.id.as_str()));
        assert_eq!(lookup_id("short"), None);
        assert_eq!(lookup_id(&"x".repeat(MAX_IMPORTED_KEY_LEN + 1)), None);
    }

    #[test]
    fn generated_keys_parse_back_to_their_id() {
        let key = generate();
        assert_eq!(parse_key_id(&key.secret), Some(key.id.as_str()));
        assert!(key.secret.starts_with(KEY_PREFIX));
        assert_eq!(key.secret.len(), KEY_PREFIX.len() + KEY_ID_LEN + 1 + KEY_SECRET_LEN);
    }

    #[test]
    fn keys_are_random() {
        assert_ne!(generate().secret, generate().secret);
        assert_ne!(generate_admin_key(), generate_admin_key());
        assert_eq!(generate_admin_key().len(), ADMIN_KEY_LEN);
    }

    #[test]
    fn rotation_keeps_the_id_and_changes_the_secret() {
        let key = generate();
        let rotated = generate_for(&key.id);
        assert_eq!(rotated.id, key.id);
        assert_ne!(rotated.secret, key.secret);
    }

    #[test]
    fn malformed_keys_have_no_id() {
        for bad in [
            "",
            "mcpgw_",
            "mcpgw_abc_def",
            "other_0123456789abcdef_0123456789012345678901234567890123456789",
            "mcpgw_0123456789abcde!_0123456789012345678901234567890123456789",
            "mcpgw_0123456789abcdef_012345678901234567890123456789012345678",
        ] {
            assert_eq!(parse_key_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn hash_verifies_only_the_same_key() {
        let key = generate();
        let h = hash(&key.secret).unwrap();
        assert!(is_valid_hash(&h));
        assert!(!h.contains(&key.secret));
        assert!(verify(&key.secret, &h));
        assert!(!verify(&generate().secret, &h));
        assert!(!verify(&key.secret, "not a hash"));
    }

    #[test]
    fn salts_differ_between_hashes() {
        assert_ne!(hash("same").unwrap(), hash("same").unwrap());
    }

    #[test]
    fn redaction_keeps_only_the_id() {
        let key = generate();
        let shown = redact(&key.secret);
        assert!(shown.contains(&key.id));
        assert!(!shown.contains(&key.secret[KEY_PREFIX.len() + KEY_ID_LEN + 1..]));
        assert_eq!(redact("garbage"), "***");
    }

    #[test]
    fn fingerprints_compare() {
        assert!(fingerprints_equal(&fingerprint("a"), &fingerprint("a")));
        assert!(!fingerprints_equal(&fingerprint("a"), &fingerprint("b")));
    }
}
