//! Access tokens as JWTs: parsed and checked locally against the issuer's published keys.
//!
//! The algorithm a token may use comes from the key that verifies it (never from the token alone):
//! `none` does not parse, and symmetric (HMAC) algorithms are never allowed, so a public key can
//! never be used as an HMAC secret.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Larger tokens are refused before any parsing (real ones are a few KiB).
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token is not a well-formed JWT")]
    Malformed,
    #[error("the access token's issuer is not one this gateway trusts")]
    UnknownIssuer,
    #[error("the access token is signed by a key its issuer does not publish")]
    UnknownKey,
    #[error("the access token uses an algorithm its key does not allow")]
    BadAlgorithm,
    #[error("the access token's signature is invalid")]
    BadSignature,
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not valid yet")]
    NotYetValid,
    #[error("the access token is not meant for this resource (audience)")]
    WrongAudience,
    #[error("the access token lacks the `{0}` claim")]
    MissingClaim(&'static str),
    #[error("the token's issuer cannot be reached right now")]
    KeysUnavailable,
    #[error("the access token is not active")]
    Inactive,
}

/// One verification key from an issuer's JWKS, with the algorithms it may verify.
pub struct VerifyingKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
}

/// A JWK, or `None` when it cannot verify signatures here (symmetric, encryption-only, unknown
/// type or curve, or an algorithm that does not fit the key).
pub fn verifying_key(jwk: &Value) -> Option<VerifyingKey> {
    if jwk.get("use").and_then(Value::as_str).is_some_and(|u| u != "sig") {
        return None;
    }
    let parsed: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk.clone()).ok()?;
    let by_type = match jwk.get("kty").and_then(Value::as_str)? {
        "RSA" => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        "EC" => match jwk.get("crv").and_then(Value::as_str)? {
            "P-256" => vec![Algorithm::ES256],
            "P-384" => vec![Algorithm::ES384],
            _ => return None,
        },
        "OKP" if jwk.get("crv").and_then(Value::as_str) == Some("Ed25519") => vec![Algorithm::EdDSA],
        _ => return None,
    };
    let algorithms = match jwk.get("alg").and_then(Value::as_str) {
        None => by_type,
        Some(alg) => {
            let alg: Algorithm = alg.parse().ok()?;
            if !by_type.contains(&alg) {
                return None;
            }
            vec![alg]
        }
    };
    let key = DecodingKey::from_jwk(&parsed).ok()?;
    let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
    Some(VerifyingKey { kid, key, algorithms })
}

/// The parts of a token read before its signature is checked: which issuer and which key to ask.
#[derive(Debug)]
pub struct Unverified {
    pub issuer: String,
    pub kid: Option<String>,
    pub alg: Algorithm,
}

/// Whether `token` has the shape of a JWS (three base64url parts, a JSON header): what tells an
/// OAuth access token from an API key.
pub fn looks_like_jwt(token: &str) -> bool {
    token.len() <= MAX_TOKEN_BYTES
        && token.starts_with("eyJ")
        && token.split('.').count() == 3
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Reads the header and the `iss` claim, unverified.
pub fn peek(token: &str) -> Result<Unverified, TokenError> {
    if !looks_like_jwt(token) {
        return Err(TokenError::Malformed);
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    let payload = token.split('.').nth(1).ok_or(TokenError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    let issuer = claims.get("iss").and_then(Value::as_str).ok_or(TokenError::MissingClaim("iss"))?;
    Ok(Unverified { issuer: issuer.to_owned(), kid: header.kid, alg: header.alg })
}

/// Checks `token`'s signature with `key` and its registered claims: `iss` is `issuer`, `aud`
/// names one of `audiences`, `exp` (required) and `nbf` hold, `sub` is present.
pub fn verify(
    token: &str,
    header: &Unverified,
    key: &VerifyingKey,
    issuer: &str,
    audiences: &[String],
) -> Result<Map<String, Value>, TokenError> {
    if !key.algorithms.contains(&header.alg) {
        return Err(TokenError::BadAlgorithm);
    }
    let mut validation = Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer]);
    validation.set_audience(audiences);
    validation.required_spec_claims = HashSet::from(["exp", "iss", "aud", "sub"].map(String::from));
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => TokenError::BadAlgorithm,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidAudience => TokenError::WrongAudience,
            ErrorKind::InvalidIssuer => TokenError::UnknownIssuer,
            ErrorKind::MissingRequiredClaim(c) if c == "aud" => TokenError::WrongAudience,
            ErrorKind::MissingRequiredClaim(c) if c == "exp" => TokenError::MissingClaim("exp"),
            ErrorKind::MissingRequiredClaim(c) if c == "sub" => TokenError::MissingClaim("sub"),
            _ => TokenError::Malformed,
        })?;
    if data.claims.get("sub").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err(TokenError::MissingClaim("sub"));
    }
    Ok(data.claims)
}

/// The scopes a token grants: `scope` (a space-separated string, RFC 9068) or `scp` (a list or a
/// string, as Entra ID and Okta send it).
pub fn scopes(claims: &Map<String, Value>) -> HashSet<&str> {
    let mut out = HashSet::new();
    for name in ["scope", "scp"] {
        match claims.get(name) {
            Some(Value::String(s)) => out.extend(s.split_ascii_whitespace()),
            Some(Value::Array(items)) => out.extend(items.iter().filter_map(Value::as_str)),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    /// An EC P-256 key pair generated by ring, as a JWK and a signer.
    fn ec_key() -> (Value, ring::signature::EcdsaKeyPair) {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        (jwk, pair)
    }

    fn sign(pair: &ring::signature::EcdsaKeyPair, header: &Value, claims: &Value) -> String {
        let message = format!("{}.{}", b64(header), b64(claims));
        let signature = pair.sign(&ring::rand::SystemRandom::new(), message.as_bytes()).unwrap();
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    const ISS: &str = "https://idp.example";
    const AUD: &str = "https://mcp.example/mcp";

    fn check(token: &str, key: &VerifyingKey) -> Result<Map<String, Value>, TokenError> {
        let header = peek(token)?;
        verify(token, &header, key, ISS, &[AUD.to_string()])
    }

    #[test]
    fn accepts_a_good_token_and_refuses_each_broken_claim() {
        let (jwk, pair) = ec_key();
        let key = verifying_key(&jwk).unwrap();
        let header = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt"});
        let good =
            serde_json::json!({"iss": ISS, "aud": [AUD, "other"], "sub": "u1", "exp": now() + 300, "email": "a@b.c"});
        let claims = check(&sign(&pair, &header, &good), &key).unwrap();
        assert_eq!(claims["email"], "a@b.c");

        let with = |k: &str, v: Value| {
            let mut c = good.clone();
            c[k] = v;
            sign(&pair, &header, &c)
        };
        assert_eq!(check(&with("aud", "https://elsewhere".into()), &key).unwrap_err(), TokenError::WrongAudience);
        assert_eq!(check(&with("exp", (now() - 120).into()), &key).unwrap_err(), TokenError::Expired);
        assert_eq!(check(&with("nbf", (now() + 600).into()), &key).unwrap_err(), TokenError::NotYetValid);
        assert_eq!(check(&with("iss", "https://evil.example".into()), &key).unwrap_err(), TokenError::UnknownIssuer);
        assert_eq!(check(&with("sub", "".into()), &key).unwrap_err(), TokenError::MissingClaim("sub"));
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(check(&sign(&pair, &header, &no_exp), &key).is_err());

        // Another key pair with the same kid: the signature does not verify.
        let (_, other) = ec_key();
        assert_eq!(check(&sign(&other, &header, &good), &key).unwrap_err(), TokenError::BadSignature);
    }

    #[test]
    fn none_and_hmac_are_never_accepted() {
        let (jwk, _) = ec_key();
        let key = verifying_key(&jwk).unwrap();
        let claims = serde_json::json!({"iss": ISS, "aud": AUD, "sub": "u1", "exp": now() + 300});
        let none = format!("{}.{}.", b64(&serde_json::json!({"alg": "none", "kid": "k1"})), b64(&claims));
        assert!(check(&none, &key).is_err());
        // HS256 keyed with the public key's bytes.
        let message = format!("{}.{}", b64(&serde_json::json!({"alg": "HS256", "kid": "k1"})), b64(&claims));
        let secret = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, jwk["x"].as_str().unwrap().as_bytes());
        let tag = ring::hmac::sign(&secret, message.as_bytes());
        let hs = format!("{message}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        assert_eq!(check(&hs, &key).unwrap_err(), TokenError::BadAlgorithm);
        // Symmetric keys in a JWKS are ignored; so are encryption keys and algorithms unfit for the key.
        assert!(verifying_key(&serde_json::json!({"kty": "oct", "k": "c2VjcmV0"})).is_none());
        let mut enc = jwk.clone();
        enc["use"] = "enc".into();
        assert!(verifying_key(&enc).is_none());
        let mut wrong = jwk.clone();
        wrong["alg"] = "HS256".into();
        assert!(verifying_key(&wrong).is_none());
    }

    #[test]
    fn scopes_from_either_claim() {
        let claims = serde_json::json!({"scope": "a b", "scp": ["c"]});
        let got = scopes(claims.as_object().unwrap());
        assert_eq!(got, HashSet::from(["a", "b", "c"]));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Arbitrary bytes, and arbitrary text in JWT shape, never panic and are never accepted.
        #[test]
        fn arbitrary_input_is_never_accepted(bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                                             parts in proptest::collection::vec("[A-Za-z0-9_-]{0,64}", 3)) {
            let (jwk, _) = ec_key();
            let key = verifying_key(&jwk).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            prop_assert!(check(&text, &key).is_err());
            let shaped = format!("eyJ{}.{}.{}", parts[0], parts[1], parts[2]);
            prop_assert!(check(&shaped, &key).is_err());
            // Valid JSON header and claims with a random signature.
            let header = b64(&serde_json::json!({"alg": "ES256", "kid": "k1"}));
            let claims = b64(&serde_json::json!({"iss": ISS, "aud": AUD, "sub": "u", "exp": now() + 300}));
            let forged = format!("{header}.{claims}.{}", URL_SAFE_NO_PAD.encode(&bytes));
            prop_assert!(check(&forged, &key).is_err());
        }
    }
}
