//! Guardrail providers: where detectors that need a model (toxicity, nsfw, bias, topic, policy
//! violation) are answered. The built-in provider runs the local detectors; the HTTP providers send
//! the text to a service, with a timeout and a bound on requests in flight.
//!
//! # Webhook contract
//!
//! `POST <url>` with `Content-Type: application/json` (and `Authorization: Bearer <key>` when
//! `MCPGW_GUARDRAIL_API_KEY` is set):
//!
//! ```json
//! {"stage": "input", "server": "github", "tool": "create_issue",
//!  "detectors": ["toxicity", "nsfw"], "policy_name": null, "text": "..."}
//! ```
//!
//! The answer is `200` with `{"findings": [{"detector": "toxicity", "kind": "insult"}]}` (an empty list
//! when the text is clean; `kind` is optional). Findings for detectors that were not asked for are
//! ignored. Any other status, a body that is not this shape, or no answer within the timeout is an
//! error, and the call fails closed unless its policy says `fail_open`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use guardrails::Finding;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared::server::{BUILTIN_DETECTORS, REMOTE_DETECTORS};
use shared::snapshot::{GuardrailProvider as ProviderSettings, ProviderKind};
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Input,
    Output,
}

/// One piece of content to check.
#[derive(Debug, Serialize)]
pub struct DetectRequest<'a> {
    pub stage: Stage,
    pub server: &'a str,
    pub tool: &'a str,
    pub detectors: &'a [String],
    pub policy_name: Option<&'a str>,
    pub text: &'a str,
}

/// Why a provider could not answer. Messages never carry the checked text or a credential.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("the guardrail provider did not answer within {0} ms")]
    Timeout(u64),
    #[error("the guardrail provider answered HTTP {0}")]
    Status(u16),
    #[error("the guardrail provider could not be reached: {0}")]
    Transport(String),
    #[error("the guardrail provider's answer was not understood: {0}")]
    BadResponse(String),
    #[error("no guardrail provider is configured")]
    NotConfigured,
}

pub trait GuardrailProvider: Send + Sync {
    fn name(&self) -> &'static str;
    fn detect<'a>(&'a self, request: &'a DetectRequest<'a>) -> BoxFuture<'a, Result<Vec<Finding>, ProviderError>>;
}

/// Builds the provider the snapshot names; `api_key` comes from this process's environment.
pub fn from_settings(
    settings: &ProviderSettings,
    api_key: Option<String>,
) -> Result<Arc<dyn GuardrailProvider>, ProviderError> {
    let http = Http::new(settings, api_key)?;
    Ok(match settings.kind {
        ProviderKind::Webhook => Arc::new(WebhookProvider(http)),
        ProviderKind::Enkrypt => Arc::new(EnkryptProvider(http)),
    })
}

/// What both HTTP providers share: one connection pool, a timeout, a bound on requests in flight.
struct Http {
    client: reqwest::Client,
    url: String,
    api_key: Option<String>,
    timeout: Duration,
    permits: Semaphore,
}

impl Http {
    fn new(settings: &ProviderSettings, api_key: Option<String>) -> Result<Self, ProviderError> {
        // HTTPS via rustls needs a process-wide crypto provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            // The credential travels in headers a redirect would carry elsewhere: never follow one.
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(settings.max_concurrency.max(1))
            .build()
            .map_err(|e| ProviderError::Transport(e.to_string()))?;
        Ok(Http {
            client,
            url: settings.url.trim_end_matches('/').to_string(),
            api_key: api_key.filter(|k| !k.is_empty()),
            timeout: Duration::from_millis(settings.timeout_ms.max(1)),
            permits: Semaphore::new(settings.max_concurrency.max(1)),
        })
    }

    /// Sends `request` and parses a JSON answer; waiting for a permit counts against the timeout.
    async fn post(&self, request: reqwest::RequestBuilder) -> Result<Value, ProviderError> {
        let ms = self.timeout.as_millis() as u64;
        let exchange = async {
            let _permit = self.permits.acquire().await.map_err(|_| ProviderError::NotConfigured)?;
            let response = request.send().await.map_err(|e| ProviderError::Transport(without_url(&e)))?;
            let status = response.status();
            if !status.is_success() {
                return Err(ProviderError::Status(status.as_u16()));
            }
            response.json::<Value>().await.map_err(|e| ProviderError::BadResponse(without_url(&e)))
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| ProviderError::Timeout(ms))?
    }
}

/// reqwest errors name the URL; the message is enough.
fn without_url(e: &reqwest::Error) -> String {
    let mut e = e.to_string();
    if let Some(at) = e.find(" for url (") {
        e.truncate(at);
    }
    e
}

/// The static name of a detector the gateway knows, if it is one of `wanted`.
fn known(name: &str, wanted: &[String]) -> Option<&'static str> {
    let name = REMOTE_DETECTORS.iter().chain(BUILTIN_DETECTORS).find(|d| **d == name).copied();
    match name {
        Some(d) if wanted.iter().any(|w| w == d) => Some(d),
        Some(_) => None,
        None => None,
    }
}

/// mcpgw's own JSON contract (see the module documentation).
pub struct WebhookProvider(Http);

#[derive(Deserialize)]
struct WebhookAnswer {
    findings: Vec<WebhookFinding>,
}

#[derive(Deserialize)]
struct WebhookFinding {
    detector: String,
}

impl GuardrailProvider for WebhookProvider {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn detect<'a>(&'a self, request: &'a DetectRequest<'a>) -> BoxFuture<'a, Result<Vec<Finding>, ProviderError>> {
        Box::pin(async move {
            let mut builder = self.0.client.post(&self.0.url).json(request);
            if let Some(key) = &self.0.api_key {
                builder = builder.bearer_auth(key);
            }
            let answer: WebhookAnswer = serde_json::from_value(self.0.post(builder).await?)
                .map_err(|e| ProviderError::BadResponse(e.to_string()))?;
            let mut findings = Vec::new();
            for f in answer.findings {
                match known(&f.detector, request.detectors) {
                    Some(detector) => findings.push(Finding { detector, kind: detector }),
                    None => tracing::debug!(detector = %f.detector, "ignoring a finding for a detector not asked for"),
                }
            }
            findings.sort();
            findings.dedup();
            Ok(findings)
        })
    }
}

/// The Enkrypt AI guardrails API, as the Python gateway used it: a named guardrail policy
/// (`X-Enkrypt-Guardrail`) or an inline list of detectors.
pub struct EnkryptProvider(Http);

impl GuardrailProvider for EnkryptProvider {
    fn name(&self) -> &'static str {
        "enkrypt"
    }

    fn detect<'a>(&'a self, request: &'a DetectRequest<'a>) -> BoxFuture<'a, Result<Vec<Finding>, ProviderError>> {
        Box::pin(async move {
            let http = &self.0;
            let mut builder = match request.policy_name {
                Some(policy) => http
                    .client
                    .post(format!("{}/guardrails/guardrail/detect", http.url))
                    .header("X-Enkrypt-Guardrail", policy)
                    .header("X-Enkrypt-Mode", if request.stage == Stage::Input { "prompt" } else { "response" })
                    .json(&json!({"text": request.text})),
                None => {
                    let detectors: serde_json::Map<String, Value> =
                        request.detectors.iter().map(|d| (d.clone(), json!({"enabled": true}))).collect();
                    http.client
                        .post(format!("{}/guardrails/detect", http.url))
                        .json(&json!({"text": request.text, "detectors": detectors}))
                }
            };
            builder = builder.header("X-Enkrypt-Source-Name", "mcpgw");
            if let Some(key) = &http.api_key {
                builder = builder.header("apikey", key);
            }
            let answer = http.post(builder).await?;
            let summary = answer
                .get("summary")
                .and_then(Value::as_object)
                .ok_or_else(|| ProviderError::BadResponse("no `summary` object".into()))?;
            let mut findings = Vec::new();
            for (key, value) in summary {
                // Enkrypt reports the topic detector as `on_topic`, where 0 means off topic.
                let (name, fired) = match key.as_str() {
                    "on_topic" => ("topic_detector", value.as_i64() == Some(0) || value.as_bool() == Some(false)),
                    other => (other, fires(value)),
                };
                if !fired {
                    continue;
                }
                match known(name, request.detectors) {
                    Some(detector) => findings.push(Finding { detector, kind: detector }),
                    None => tracing::debug!(detector = %name, "ignoring a finding for a detector not asked for"),
                }
            }
            findings.sort();
            findings.dedup();
            Ok(findings)
        })
    }
}

/// A summary value fires when it is 1, true, or a non-empty list.
fn fires(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|n| n >= 1.0),
        Value::Array(items) => !items.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Json;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;

    use super::*;

    #[derive(Default)]
    struct Seen {
        in_flight: AtomicUsize,
        most: AtomicUsize,
        headers: std::sync::Mutex<Vec<HeaderMap>>,
        bodies: std::sync::Mutex<Vec<Value>>,
    }

    const KEY: &str = "provider-secret-key";

    async fn webhook(
        State(seen): State<Arc<Seen>>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> (StatusCode, String) {
        // Counted while the handler runs, also when the client gives up and the server drops it.
        struct InFlight(Arc<Seen>);
        impl Drop for InFlight {
            fn drop(&mut self) {
                self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        seen.most.fetch_max(now, Ordering::SeqCst);
        let guard = InFlight(seen.clone());
        let text = body["text"].as_str().unwrap_or_default().to_string();
        if text.contains("slow") || text.contains("busy") {
            tokio::time::sleep(Duration::from_millis(if text.contains("slow") { 500 } else { 50 })).await;
        }
        drop(guard);
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}")) {
            return (StatusCode::UNAUTHORIZED, "{}".into());
        }
        if text.contains("garbage") {
            return (StatusCode::OK, "not json".into());
        }
        let mut findings = vec![json!({"detector": "made_up"})];
        if text.contains("you idiot") {
            findings.push(json!({"detector": "toxicity", "kind": "insult"}));
            findings.push(json!({"detector": "nsfw"}));
        }
        (StatusCode::OK, json!({ "findings": findings }).to_string())
    }

    async fn enkrypt(
        State(seen): State<Arc<Seen>>,
        headers: HeaderMap,
        Json(body): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        if headers.get("apikey").and_then(|v| v.to_str().ok()) != Some(KEY) {
            return (StatusCode::UNAUTHORIZED, Json(json!({})));
        }
        seen.headers.lock().unwrap().push(headers);
        seen.bodies.lock().unwrap().push(body.clone());
        let toxic = body["text"].as_str().unwrap_or_default().contains("you idiot");
        let summary = json!({"toxicity": if toxic { json!(["insult"]) } else { json!([]) },
            "nsfw": 0, "on_topic": if toxic { 0 } else { 1 }, "injection_attack": 1, "mystery": 1});
        (StatusCode::OK, Json(json!({ "summary": summary })))
    }

    async fn serve() -> (String, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let app = axum::Router::new()
            .route("/hook", post(webhook))
            .route("/guardrails/detect", post(enkrypt))
            .route("/guardrails/guardrail/detect", post(enkrypt))
            .route(
                "/moved/guardrails/detect",
                post(|| async { (StatusCode::TEMPORARY_REDIRECT, [("location", "http://127.0.0.1:9/steal")], "") }),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    fn settings(kind: ProviderKind, url: String, timeout_ms: u64, max_concurrency: usize) -> ProviderSettings {
        ProviderSettings { kind, url, timeout_ms, max_concurrency }
    }

    fn request<'a>(text: &'a str, detectors: &'a [String], policy_name: Option<&'a str>) -> DetectRequest<'a> {
        DetectRequest { stage: Stage::Input, server: "s", tool: "t", detectors, policy_name, text }
    }

    fn names(findings: &[Finding]) -> Vec<&'static str> {
        findings.iter().map(|f| f.detector).collect()
    }

    #[tokio::test]
    async fn webhook_contract() {
        let (base, seen) = serve().await;
        let provider =
            from_settings(&settings(ProviderKind::Webhook, format!("{base}/hook"), 200, 2), Some(KEY.into())).unwrap();
        let toxicity = vec!["toxicity".to_string()];
        // Only requested detectors count; unknown names are ignored.
        let found = provider.detect(&request("well, you idiot", &toxicity, None)).await.unwrap();
        assert_eq!(names(&found), ["toxicity"]);
        assert!(provider.detect(&request("have a nice day", &toxicity, None)).await.unwrap().is_empty());

        let secret_text = "slow answer about you idiot";
        let err = provider.detect(&request(secret_text, &toxicity, None)).await.unwrap_err();
        assert!(matches!(err, ProviderError::Timeout(200)), "{err}");
        let err = provider.detect(&request("garbage", &toxicity, None)).await.unwrap_err();
        assert!(matches!(err, ProviderError::BadResponse(_)), "{err}");
        for e in [&err, &ProviderError::Timeout(200)] {
            assert!(!e.to_string().contains("idiot") && !e.to_string().contains(KEY));
        }

        let wrong =
            from_settings(&settings(ProviderKind::Webhook, format!("{base}/hook"), 500, 2), Some("nope".into()))
                .unwrap();
        let err = wrong.detect(&request("hi", &toxicity, None)).await.unwrap_err();
        assert!(matches!(err, ProviderError::Status(401)), "{err}");

        // At most `max_concurrency` requests in flight; every one completes. (The timed-out request
        // above is still sleeping on the server: let it finish first.)
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while seen.in_flight.load(Ordering::SeqCst) > 0 {
            assert!(std::time::Instant::now() < deadline, "requests stuck on the test server");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen.most.store(0, Ordering::SeqCst);
        let provider =
            from_settings(&settings(ProviderKind::Webhook, format!("{base}/hook"), 5000, 2), Some(KEY.into())).unwrap();
        let calls = (0..8).map(|_| {
            let provider = provider.clone();
            let toxicity = toxicity.clone();
            async move { provider.detect(&request("busy", &toxicity, None)).await }
        });
        let results = futures::future::join_all(calls).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(seen.most.load(Ordering::SeqCst), 2);

        let unreachable =
            from_settings(&settings(ProviderKind::Webhook, "http://127.0.0.1:9".into(), 500, 2), None).unwrap();
        assert!(matches!(
            unreachable.detect(&request("hi", &toxicity, None)).await.unwrap_err(),
            ProviderError::Transport(_) | ProviderError::Timeout(_)
        ));
    }

    #[tokio::test]
    async fn enkrypt_adapter() {
        let (base, seen) = serve().await;
        let provider = from_settings(&settings(ProviderKind::Enkrypt, base, 1000, 4), Some(KEY.into())).unwrap();
        let wanted = vec!["toxicity".to_string(), "nsfw".to_string(), "topic_detector".to_string()];
        // Inline detectors.
        let found = provider.detect(&request("you idiot", &wanted, None)).await.unwrap();
        assert_eq!(names(&found), ["topic_detector", "toxicity"]);
        let body = seen.bodies.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            body["detectors"],
            json!({"toxicity": {"enabled": true}, "nsfw": {"enabled": true}, "topic_detector": {"enabled": true}})
        );
        assert!(provider.detect(&request("fine", &wanted, None)).await.unwrap().is_empty());
        // A named policy, on output.
        let out = DetectRequest { stage: Stage::Output, ..request("you idiot", &wanted, Some("Sample Policy")) };
        assert_eq!(names(&provider.detect(&out).await.unwrap()), ["topic_detector", "toxicity"]);
        let headers = seen.headers.lock().unwrap().last().cloned().unwrap();
        assert_eq!(headers["x-enkrypt-guardrail"], "Sample Policy");
        assert_eq!(headers["x-enkrypt-mode"], "response");
        assert_eq!(seen.bodies.lock().unwrap().last().unwrap(), &json!({"text": "you idiot"}));
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (base, _) = serve().await;
        let provider =
            from_settings(&settings(ProviderKind::Enkrypt, format!("{base}/moved"), 1000, 1), Some(KEY.into()))
                .unwrap();
        let err = provider.detect(&request("hi", &["toxicity".to_string()], None)).await.unwrap_err();
        assert!(matches!(err, ProviderError::Status(307)), "{err}");
    }
}
