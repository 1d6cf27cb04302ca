//! Rate limits on tool calls: per project, per API key, per server and per tool.
//!
//! Each limit counts admitted calls in one-second buckets over the last 61 seconds; a call is
//! admitted when every applicable limit holds fewer than `calls_per_minute + burst` calls there.
//! The 61 buckets cover any 60-second window that ends now, so no such window ever admits more
//! than the limit (a call can be refused up to a second early, never admitted late).
//!
//! With `MCPGW_REDIS_URL` the buckets live in Redis and one script checks and counts every limit of
//! a call atomically, so the limits hold across all replicas together. A Redis that fails or is
//! slow is left alone for a second at a time and this replica counts alone meanwhile (logged and
//! counted), so an outage of Redis is neither an outage of the gateway nor the end of the limits.
//! Calls under no limit never touch Redis.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use shared::{RateLimit, ServerSpec};

use crate::auth::Principal;
use crate::catalog::ConfigView;
use crate::metrics::Metrics;

/// Seconds of buckets a limit looks back over (see the module doc).
const WINDOW_SECS: i64 = 61;
/// How long a call waits for Redis before counting locally.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// After Redis fails, how long calls count locally before Redis is asked again.
const REDIS_BACKOFF: Duration = Duration::from_secs(1);

/// JSON-RPC error code of a call refused by a rate limit (implementation-defined server error range).
pub const ERROR_CODE: i32 = -32029;

/// One limit that applies to a call.
#[derive(Debug, Clone)]
pub struct Applicable {
    /// Metric label: `project`, `key`, `server` or `tool`.
    pub kind: &'static str,
    /// What it limits, for the refusal message (e.g. `project demo`).
    pub subject: String,
    /// Where its count is kept.
    pub bucket: String,
    pub limit: RateLimit,
}

/// A call refused by `limit`.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "rate limit of {subject} reached ({calls_per_minute} calls per minute{burst}); retry in {retry_after_secs} s",
    calls_per_minute = limit.calls_per_minute,
    burst = if limit.burst > 0 { format!(" + {} burst", limit.burst) } else { String::new() }
)]
pub struct Limited {
    pub kind: &'static str,
    pub subject: String,
    pub limit: RateLimit,
    pub retry_after_secs: u64,
}

pub struct RateLimiter {
    local: Mutex<Local>,
    redis: Option<Shared>,
    started: Instant,
}

struct Shared {
    connection: ConnectionManager,
    script: redis::Script,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    /// While in the future, Redis is not asked.
    resting_until: Option<Instant>,
    /// Since the last answer, Redis has failed (logged once per outage).
    failing: bool,
}

impl RateLimiter {
    /// A limiter counting in this process only.
    pub fn local() -> Self {
        RateLimiter { local: Mutex::default(), redis: None, started: Instant::now() }
    }

    /// A limiter counting in Redis at `url`. Fails only on a malformed URL: a Redis that is down
    /// at start is connected to when it comes up.
    pub fn with_redis(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("MCPGW_REDIS_URL: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| anyhow::anyhow!("MCPGW_REDIS_URL: {e}"))?;
        let shared = Shared { connection, script: redis::Script::new(SCRIPT), health: Mutex::default() };
        Ok(RateLimiter { local: Mutex::default(), redis: Some(shared), started: Instant::now() })
    }

    /// Admits one call under every limit in `limits` (counting it under each), or says which
    /// limit refuses it.
    pub async fn admit(&self, limits: &[Applicable], metrics: &Metrics) -> Result<(), Limited> {
        if limits.is_empty() {
            return Ok(());
        }
        if let Some(shared) = &self.redis
            && shared.available()
        {
            match tokio::time::timeout(REDIS_TIMEOUT, shared.admit(limits)).await {
                Ok(Ok(verdict)) => {
                    shared.answered();
                    return verdict;
                }
                Ok(Err(e)) => shared.rest(&e.to_string(), metrics),
                Err(_) => shared.rest("no answer within 250 ms", metrics),
            }
        }
        let now = self.started.elapsed().as_secs() as i64;
        self.local.lock().unwrap_or_else(|e| e.into_inner()).admit(limits, now)
    }
}

impl Shared {
    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn available(&self) -> bool {
        self.health().resting_until.is_none_or(|until| Instant::now() >= until)
    }

    fn answered(&self) {
        let mut health = self.health();
        if health.failing {
            health.failing = false;
            tracing::info!("Redis answers again: rate limits are counted across replicas");
        }
    }

    fn rest(&self, why: &str, metrics: &Metrics) {
        let mut health = self.health();
        if !health.failing {
            health.failing = true;
            tracing::warn!(error = why, "Redis does not answer: rate limits are counted by this replica alone");
        }
        health.resting_until = Some(Instant::now() + REDIS_BACKOFF);
        metrics.rate_limit_fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    async fn admit(&self, limits: &[Applicable]) -> redis::RedisResult<Result<(), Limited>> {
        let mut invocation = self.script.prepare_invoke();
        for l in limits {
            invocation.key(&l.bucket).arg(l.limit.capacity());
        }
        let mut connection = self.connection.clone();
        let (refused, wait): (usize, i64) = invocation.invoke_async(&mut connection).await?;
        Ok(match refused.checked_sub(1).and_then(|i| limits.get(i)) {
            None => Ok(()),
            Some(l) => Err(limited(l, wait)),
        })
    }
}

/// The limits on a call of `tool` (upstream name) on `spec` by `p`, tightest first.
pub fn applicable(p: &Principal, config: &ConfigView, spec: &ServerSpec, tool: &str) -> Vec<Applicable> {
    let server = &spec.server_name;
    let candidates = [
        spec.tool_rate_limits.get(tool).map(|l| {
            let subject = format!("tool {}", config.exposed_name(server, tool));
            ("tool", subject, format!("mcpgw:rl:tool:{}:{server}:{tool}", config.id), *l)
        }),
        spec.rate_limit
            .map(|l| ("server", format!("server {server}"), format!("mcpgw:rl:server:{}:{server}", config.id), l)),
        p.key_rate_limit.map(|l| ("key", format!("API key {}", p.key_id), format!("mcpgw:rl:key:{}", p.key_id), l)),
        p.project_rate_limit.map(|l| {
            ("project", format!("project {}", p.project_name), format!("mcpgw:rl:project:{}", p.project_id), l)
        }),
    ];
    let mut limits: Vec<Applicable> = candidates
        .into_iter()
        .flatten()
        .map(|(kind, subject, bucket, limit)| Applicable { kind, subject, bucket, limit })
        .collect();
    limits.sort_by_key(|l| l.limit.capacity());
    limits
}

fn limited(l: &Applicable, wait_secs: i64) -> Limited {
    Limited {
        kind: l.kind,
        subject: l.subject.clone(),
        limit: l.limit,
        retry_after_secs: wait_secs.clamp(1, WINDOW_SECS) as u64,
    }
}

/// Checks every limit (`KEYS[i]` holding at most `ARGV[i]` calls over the last 61 seconds of Redis's
/// clock), then counts the call under all of them; answers `{0, 0}`, or `{i, seconds to wait}`
/// for the first limit `i` that refuses.
const SCRIPT: &str = r#"
local now = tonumber(redis.call('TIME')[1])
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[i])
  local buckets = redis.call('HGETALL', key)
  local total, oldest = 0, nil
  for j = 1, #buckets, 2 do
    local second = tonumber(buckets[j])
    if second <= now - 61 then
      redis.call('HDEL', key, buckets[j])
    else
      total = total + tonumber(buckets[j + 1])
      if oldest == nil or second < oldest then oldest = second end
    end
  end
  if total >= capacity then
    return {i, (oldest or now) + 61 - now}
  end
end
for _, key in ipairs(KEYS) do
  redis.call('HINCRBY', key, now, 1)
  redis.call('EXPIRE', key, 62)
end
return {0, 0}
"#;

/// The same counting in this process.
#[derive(Default)]
struct Local {
    windows: HashMap<String, VecDeque<(i64, u64)>>,
    last_sweep: i64,
}

impl Local {
    fn admit(&mut self, limits: &[Applicable], now: i64) -> Result<(), Limited> {
        if now - self.last_sweep >= WINDOW_SECS {
            self.last_sweep = now;
            self.windows.retain(|_, buckets| buckets.back().is_some_and(|(second, _)| now - second < WINDOW_SECS));
        }
        for l in limits {
            let Some(buckets) = self.windows.get_mut(&l.bucket) else { continue };
            while buckets.front().is_some_and(|(second, _)| now - second >= WINDOW_SECS) {
                buckets.pop_front();
            }
            let total: u64 = buckets.iter().map(|(_, n)| n).sum();
            if total >= l.limit.capacity() {
                let oldest = buckets.front().map_or(now, |(second, _)| *second);
                return Err(limited(l, oldest + WINDOW_SECS - now));
            }
        }
        for l in limits {
            let buckets = self.windows.entry(l.bucket.clone()).or_default();
            match buckets.back_mut() {
                Some((second, n)) if *second == now => *n += 1,
                _ => buckets.push_back((now, 1)),
            }
        }
        Ok(())
    }
}

/// Refuses a malformed `MCPGW_REDIS_URL` before anything starts.
pub fn check_redis_url(url: &str) -> anyhow::Result<()> {
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("MCPGW_REDIS_URL is not a Redis URL (`redis://host:port/db`): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(kind: &'static str, bucket: &str, calls_per_minute: u32, burst: u32) -> Applicable {
        Applicable {
            kind,
            subject: format!("{kind} {bucket}"),
            bucket: bucket.into(),
            limit: RateLimit { calls_per_minute, burst },
        }
    }

    #[test]
    fn no_sixty_second_window_admits_more_than_the_limit() {
        let mut local = Local::default();
        let limits = [limit("key", "k", 10, 2)];
        let mut admitted_at = Vec::new();
        // Ten calls a second for five minutes.
        for tenth in 0..3000 {
            let second = tenth / 10;
            if local.admit(&limits, second).is_ok() {
                admitted_at.push(second);
            }
        }
        for start in 0..240 {
            let in_window = admitted_at.iter().filter(|s| (start..start + 60).contains(*s)).count();
            assert!(in_window <= 12, "window from {start} s admitted {in_window}");
        }
        // It does not starve either: about one window's worth per 61 seconds.
        assert!(admitted_at.len() >= 12 * 4, "{}", admitted_at.len());
    }

    #[test]
    fn every_limit_must_have_room_and_the_refusal_names_one() {
        let mut local = Local::default();
        let tight = limit("tool", "t", 2, 0);
        let loose = limit("project", "p", 100, 0);
        assert!(local.admit(&[tight.clone(), loose.clone()], 0).is_ok());
        assert!(local.admit(&[tight.clone(), loose.clone()], 0).is_ok());
        let refused = local.admit(&[loose.clone(), tight.clone()], 5).unwrap_err();
        assert_eq!(refused.kind, "tool");
        assert_eq!(refused.retry_after_secs, 56);
        assert!(refused.to_string().contains("tool t"), "{refused}");
        // The refused call counted nowhere: the project limit saw two calls.
        let project_only = limit("project", "p", 2, 0);
        assert_eq!(local.admit(&[project_only], 5).unwrap_err().kind, "project");
        assert!(local.admit(&[tight], 61).is_ok(), "a minute later there is room again");
    }
}
