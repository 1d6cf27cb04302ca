//! Request-body extraction: JSON of at most 1 MiB, with errors that say what is wrong: 400 for
//! malformed JSON, 422 for well-formed JSON with wrong or unknown fields, 413 for oversized bodies.
//! That the body is declared `application/json` is checked before, for every route, by
//! [`crate::browser`].

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};
use futures::StreamExt;
use futures::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let declared = req
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
                return Err(ApiError::PayloadTooLarge(MAX_BODY_BYTES));
            }
            let mut body = Vec::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("could not read request body: {e}")))?;
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(ApiError::PayloadTooLarge(MAX_BODY_BYTES));
                }
                body.extend_from_slice(&chunk);
            }
            parse(&body).map(JsonBody)
        })
    }
}

/// Parses a JSON body, classifying the failure.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("a JSON request body is required".into()));
    }
    // Syntax first, so that truncated JSON is a 400 even when its start already has the wrong shape.
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    serde_json::from_value(value).map_err(|e| ApiError::Invalid(format!("request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
    }

    #[test]
    fn classifies_failures() {
        assert!(matches!(parse::<Body>(b""), Err(ApiError::BadRequest(_))));
        assert!(matches!(parse::<Body>(b"{\"name\":"), Err(ApiError::BadRequest(_))));
        assert!(matches!(parse::<Body>(b"{\"name\": 3}"), Err(ApiError::Invalid(_))));
        assert!(matches!(parse::<Body>(b"{\"name\": \"a\", \"x\": 1}"), Err(ApiError::Invalid(_))));
        assert!(matches!(parse::<Body>(b"{}"), Err(ApiError::Invalid(_))));
        assert!(matches!(parse::<Body>(b"[1,2"), Err(ApiError::BadRequest(_))));
        assert!(parse::<Body>(b"{\"name\": \"a\"}").is_ok());
    }
}
