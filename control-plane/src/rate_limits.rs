//! Rate limits of projects and API keys as the admin API takes them and the database keeps them: a
//! nullable text column holding the JSON of [`RateLimit`] (NULL: no limit).

use serde::{Deserialize, Deserializer};
use shared::RateLimit;

use crate::error::ApiError;

/// 422 naming the field (`rate_limit.calls_per_minute`) when the limit is out of range.
pub(crate) fn check(limit: Option<&RateLimit>, field: &str) -> Result<(), ApiError> {
    let problems: Vec<String> = limit.into_iter().flat_map(|l| l.problems(field)).map(|e| e.to_string()).collect();
    if problems.is_empty() { Ok(()) } else { Err(ApiError::Invalid(problems.join("; "))) }
}

/// The column value for `limit`.
pub(crate) fn to_column(limit: Option<&RateLimit>) -> Result<Option<String>, ApiError> {
    Ok(limit.map(serde_json::to_string).transpose()?)
}

/// The limit a column holds.
pub(crate) fn from_column(text: Option<&str>) -> Result<Option<RateLimit>, serde_json::Error> {
    text.map(serde_json::from_str).transpose()
}

/// For updates: tells an explicit `null` (`Some(None)`: remove the limit) from an absent field
/// (`None` through `#[serde(default)]`: keep it).
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<RateLimit>>, D::Error> {
    Option::<RateLimit>::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_round_trip_and_bad_limits_name_their_field() {
        let limit = RateLimit { calls_per_minute: 60, burst: 5 };
        let text = to_column(Some(&limit)).unwrap();
        assert_eq!(from_column(text.as_deref()).unwrap(), Some(limit));
        assert_eq!(to_column(None).unwrap(), None);
        assert_eq!(from_column(None).unwrap(), None);
        assert!(from_column(Some("{\"calls\": 1}")).is_err());
        assert!(check(Some(&limit), "rate_limit").is_ok());
        assert!(check(None, "rate_limit").is_ok());
        let err = check(Some(&RateLimit { calls_per_minute: 0, burst: 0 }), "rate_limit").unwrap_err();
        assert!(err.to_string().starts_with("rate_limit.calls_per_minute:"), "{err}");
    }
}
