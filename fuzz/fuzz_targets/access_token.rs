//! The access-token parser: arbitrary bytes, read as a bearer token, never panic and are never
//! accepted (the key is a public key whose private half exists nowhere).
#![no_main]

use data_plane::oauth::token;
use libfuzzer_sys::fuzz_target;

const JWK: &str = r#"{"kty":"EC","crv":"P-256","kid":"fuzz","use":"sig","x":"PwKy_eWmOK9rS_l-uYjDcyB-GissYPjqc-ng_09dBT0","y":"hHYnBLY34Q2uyPBrGFKbMh34jH0AysDKYdto1ldpVQw"}"#;

fuzz_target!(|data: &[u8]| {
    let jwk: serde_json::Value = serde_json::from_str(JWK).expect("fixed JWK");
    let key = token::verifying_key(&jwk).expect("fixed JWK is usable");
    let text = String::from_utf8_lossy(data);
    let _ = token::looks_like_jwt(&text);
    if let Ok(header) = token::peek(&text) {
        let audiences = ["https://mcp.example/mcp".to_string()];
        assert!(token::verify(&text, &header, &key, &header.issuer, &audiences).is_err());
    }
});
