//! Rate limits on tool calls, as the admin API takes them and the snapshot carries them.
//!
//! `{"calls_per_minute": N, "burst": B}` on a project, an API key, a server, or one tool of a
//! server: no 60-second window admits more than `N + B` tool calls under that limit. Every limit
//! that applies to a call is checked; the call is admitted only if all of them have room.

use serde::{Deserialize, Serialize};

use crate::server::FieldError;

/// Largest `calls_per_minute` (and `burst`) accepted: beyond it a limit protects nothing.
pub const MAX_CALLS_PER_MINUTE: u32 = 1_000_000;

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Tool calls admitted in any 60-second window.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1_000_000))]
    pub calls_per_minute: u32,
    /// Calls admitted on top of `calls_per_minute` in the same window.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1_000_000))]
    pub burst: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl RateLimit {
    /// Calls admitted in any 60-second window.
    pub fn capacity(&self) -> u64 {
        u64::from(self.calls_per_minute) + u64::from(self.burst)
    }

    /// Problems with this limit, reported at `field`.
    pub fn problems(&self, field: &str) -> Vec<FieldError> {
        let mut errs = Vec::new();
        if self.calls_per_minute == 0 || self.calls_per_minute > MAX_CALLS_PER_MINUTE {
            errs.push(FieldError::new(
                format!("{field}.calls_per_minute"),
                format!("must be between 1 and {MAX_CALLS_PER_MINUTE}"),
            ));
        }
        if self.burst > MAX_CALLS_PER_MINUTE {
            errs.push(FieldError::new(format!("{field}.burst"), format!("must be at most {MAX_CALLS_PER_MINUTE}")));
        }
        errs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_strictly_and_report_their_problems() {
        let limit: RateLimit = serde_json::from_str(r#"{"calls_per_minute": 60}"#).unwrap();
        assert_eq!(limit, RateLimit { calls_per_minute: 60, burst: 0 });
        assert_eq!(limit.capacity(), 60);
        assert!(serde_json::from_str::<RateLimit>(r#"{"calls_per_minute": 60, "per_hour": 1}"#).is_err());
        assert!(serde_json::from_str::<RateLimit>(r#"{"calls_per_minute": -1}"#).is_err());
        assert!(limit.problems("rate_limit").is_empty());
        let zero = RateLimit { calls_per_minute: 0, burst: MAX_CALLS_PER_MINUTE + 1 };
        let fields: Vec<String> = zero.problems("rate_limit").into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["rate_limit.calls_per_minute", "rate_limit.burst"]);
    }
}
