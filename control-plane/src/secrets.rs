//! Encryption at rest of the secrets the control plane keeps in its database: servers' environment and
//! header values and OAuth client secrets, and upstream OAuth tokens.
//!
//! AES-256-GCM with a random 96-bit nonce per value; the purpose of a value is bound in as
//! associated data, so a sealed token cannot be passed off as a sealed client secret. The key comes
//! from `MCPGW_SECRETS_KEY` (32 bytes, base64 or hex) or from `<data dir>/secrets_key`, generated at
//! first start with mode 0600. A database copied without its key keeps its secrets.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use shared::ServerSpec;
use sqlx::AnyPool;

/// Format tag of a sealed value, so the scheme can change without guessing.
const VERSION: &str = "v1.";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "a stored secret cannot be decrypted with this key; start with the key the database was \
         written with (MCPGW_SECRETS_KEY or the data dir's secrets_key)"
    )]
    WrongKey,
    #[error("a stored secret is not in a known sealed format")]
    Malformed,
    #[error("a stored server's settings are unreadable: {0}")]
    UnreadableSpec(String),
}

pub struct SecretBox {
    key: LessSafeKey,
}

impl SecretBox {
    pub fn from_key(bytes: &[u8; 32]) -> Self {
        // A 32-byte key is always valid for AES-256-GCM.
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).unwrap_or_else(|_| unreachable!("32-byte AES-256 key"));
        SecretBox { key: LessSafeKey::new(unbound) }
    }

    /// Checks a key given in the environment without using it.
    pub fn check_env_key(text: &str) -> anyhow::Result<()> {
        env_key(text).map(|_| ())
    }

    /// The key from the environment when given, otherwise from `key_file`, generated when absent.
    pub fn load(from_env: Option<&str>, key_file: &Path) -> anyhow::Result<Self> {
        if let Some(text) = from_env {
            return Ok(Self::from_key(&env_key(text)?));
        }
        match std::fs::read_to_string(key_file) {
            Ok(text) => {
                let key = parse_key(&text)
                    .ok_or_else(|| anyhow::anyhow!("{} does not hold a 32-byte key", key_file.display()))?;
                Ok(Self::from_key(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                shared::snapshot_file::write_bytes(key_file, format!("{}\n", STANDARD.encode(key)).as_bytes())
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", key_file.display()))?;
                tracing::info!(path = %key_file.display(), "generated the key that encrypts stored secrets; back it up with the database");
                Ok(Self::from_key(&key))
            }
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", key_file.display())),
        }
    }

    /// Encrypts `plaintext` for `purpose`.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut data = plaintext.to_vec();
        // Sealing fails only for inputs beyond GCM's 64 GiB limit.
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(purpose.as_bytes()), &mut data)
            .unwrap_or_else(|_| unreachable!("value within AES-GCM limits"));
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        format!("{VERSION}{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// Decrypts a value sealed for `purpose`.
    pub fn open(&self, purpose: &str, sealed: &str) -> Result<Vec<u8>, SecretError> {
        let encoded = sealed.strip_prefix(VERSION).ok_or(SecretError::Malformed)?;
        let bytes = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| SecretError::Malformed)?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(SecretError::Malformed);
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Malformed)?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut data)
            .map_err(|_| SecretError::WrongKey)?;
        Ok(plain.to_vec())
    }

    pub fn open_string(&self, purpose: &str, sealed: &str) -> Result<String, SecretError> {
        String::from_utf8(self.open(purpose, sealed)?).map_err(|_| SecretError::Malformed)
    }
}

/// Purpose of a server's sealed secrets.
const SERVER_SECRETS: &str = "server-secrets";

impl SecretBox {
    /// A server's settings as stored: the spec with its secrets masked, and the secrets sealed.
    pub fn seal_spec(&self, spec: &ServerSpec) -> Result<(String, String), serde_json::Error> {
        let mut spec = spec.clone();
        let secrets = spec.take_secrets();
        Ok((serde_json::to_string(&spec)?, self.seal(SERVER_SECRETS, serde_json::to_string(&secrets)?.as_bytes())))
    }

    /// A server's settings read back; `sealed` is NULL for rows written before secrets were sealed.
    pub fn open_spec(&self, spec: &str, sealed: Option<&str>) -> Result<ServerSpec, SecretError> {
        let mut spec: ServerSpec =
            serde_json::from_str(spec).map_err(|e| SecretError::UnreadableSpec(e.to_string()))?;
        if let Some(sealed) = sealed {
            let secrets =
                serde_json::from_slice(&self.open(SERVER_SECRETS, sealed)?).map_err(|_| SecretError::Malformed)?;
            spec.restore_secrets(secrets);
        }
        Ok(spec)
    }

    /// Seals the secrets of rows written before they were sealed, and checks that every sealed row
    /// opens with this key, so a wrong key stops the start instead of failing later.
    pub async fn seal_stored(&self, pool: &AnyPool, dialect: crate::store::Dialect) -> anyhow::Result<()> {
        let rows: Vec<(String, String, String, Option<String>)> =
            sqlx::query_as("SELECT config_id, name, spec, sealed FROM servers").fetch_all(pool).await?;
        let mut sealed_now = 0;
        for (config_id, name, spec, sealed) in rows {
            let spec = self.open_spec(&spec, sealed.as_deref())?;
            if sealed.is_none() {
                let (stored, sealed) = self.seal_spec(&spec)?;
                sqlx::query("UPDATE servers SET spec = $1, sealed = $2 WHERE config_id = $3 AND name = $4")
                    .bind(stored)
                    .bind(sealed)
                    .bind(&config_id)
                    .bind(&name)
                    .execute(pool)
                    .await?;
                sealed_now += 1;
            }
        }
        let tokens: Vec<String> = sqlx::query_scalar("SELECT access_token FROM oauth_tokens").fetch_all(pool).await?;
        for token in tokens {
            self.open(crate::upstream_oauth::ACCESS_TOKEN, &token)?;
        }
        if sealed_now > 0 {
            if dialect == crate::store::Dialect::Sqlite {
                // Move the sealed pages into the database file now, so no plaintext page outlives this.
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(pool).await?;
            }
            tracing::info!(servers = sealed_now, "encrypted the secrets of servers stored before encryption");
        }
        Ok(())
    }
}

fn env_key(text: &str) -> anyhow::Result<[u8; 32]> {
    parse_key(text).ok_or_else(|| {
        anyhow::anyhow!("MCPGW_SECRETS_KEY must be 32 bytes, as base64 (44 characters) or hex (64 characters)")
    })
}

fn parse_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(text).ok()?
    } else {
        STANDARD.decode(text).or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('='))).ok()?
    };
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_purpose() {
        let a = SecretBox::from_key(&[7; 32]);
        let sealed = a.seal("token", b"s3cret");
        assert!(!sealed.contains("s3cret"));
        assert_ne!(sealed, a.seal("token", b"s3cret"), "every seal uses a fresh nonce");
        assert_eq!(a.open_string("token", &sealed).unwrap(), "s3cret");
        assert!(matches!(a.open("client-secret", &sealed), Err(SecretError::WrongKey)));
        let b = SecretBox::from_key(&[8; 32]);
        assert!(matches!(b.open("token", &sealed), Err(SecretError::WrongKey)));
        let mut tampered = sealed.clone();
        tampered.push('A');
        assert!(a.open("token", &tampered).is_err());
        assert!(matches!(a.open("token", "plain"), Err(SecretError::Malformed)));
    }

    #[test]
    fn keys_are_read_as_base64_or_hex_and_generated_once() {
        assert_eq!(parse_key(&STANDARD.encode([1u8; 32])), Some([1; 32]));
        assert_eq!(parse_key(&hex::encode([2u8; 32])), Some([2; 32]));
        assert_eq!(parse_key("too short"), None);
        assert!(SecretBox::load(Some("nope"), Path::new("/nonexistent/x")).is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secrets_key");
        let sealed = SecretBox::load(None, &file).unwrap().seal("p", b"v");
        let again = SecretBox::load(None, &file).unwrap();
        assert_eq!(again.open("p", &sealed).unwrap(), b"v");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
