//! The admin REST API as the CLI uses it: one request type, list pagination, and the mapping from
//! an HTTP outcome to an exit code a script can branch on.

use reqwest::{Method, Url};
use serde_json::{Value, json};

/// Exit codes (documented in the README). Usage errors exit with 2 (clap's own).
pub mod exit {
    pub const API_ERROR: u8 = 1;
    pub const UNREACHABLE: u8 = 3;
    pub const UNAUTHORIZED: u8 = 4;
    pub const NOT_FOUND: u8 = 5;
    pub const CONFLICT: u8 = 6;
    pub const INVALID: u8 = 7;
}

/// What went wrong, with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// A request to the admin API: path segments are encoded one by one, so an e-mail or a name with
/// odd characters cannot change the route.
pub struct Request {
    pub method: Method,
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
    pub body: Option<Value>,
}

impl Request {
    pub fn new(method: Method, segments: &[&str]) -> Self {
        Self { method, segments: segments.iter().map(|s| s.to_string()).collect(), query: vec![], body: None }
    }
    pub fn get(segments: &[&str]) -> Self {
        Self::new(Method::GET, segments)
    }
    pub fn query(mut self, name: &str, value: Option<impl ToString>) -> Self {
        if let Some(v) = value {
            self.query.push((name.into(), v.to_string()));
        }
        self
    }
    pub fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
}

pub struct Api {
    http: reqwest::Client,
    base: Url,
    admin_key: Option<String>,
}

impl Api {
    pub fn new(base: &str, admin_key: Option<String>) -> Result<Self, Failure> {
        let base = Url::parse(base)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && !u.cannot_be_a_base())
            .ok_or_else(|| Failure::new(exit::INVALID, format!("`{base}` is not an http(s) URL")))?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .map_err(|e| Failure::new(exit::API_ERROR, e.to_string()))?;
        Ok(Self { http, base, admin_key })
    }

    pub fn has_admin_key(&self) -> bool {
        self.admin_key.is_some()
    }

    fn url(&self, r: &Request) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(&r.segments);
        }
        if !r.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&r.query);
        }
        url
    }

    /// Sends one request; the JSON body of a 2xx answer (`null` for 204), or a [`Failure`].
    pub async fn send(&self, r: &Request) -> Result<Value, Failure> {
        let Some(key) = &self.admin_key else {
            return Err(Failure::new(
                exit::UNAUTHORIZED,
                "no admin key: set MCPGW_ADMIN_API_KEY (or pass --admin-key, or run where MCPGW_DATA_DIR holds it)",
            ));
        };
        let mut req = self.http.request(r.method.clone(), self.url(r)).bearer_auth(key);
        if let Some(body) = &r.body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| {
            Failure::new(exit::UNREACHABLE, format!("cannot reach the control plane at {}: {e}", self.base))
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let body: Value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(json!(text)) };
        if status.is_success() {
            return Ok(body);
        }
        let mut message = body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| format!("HTTP {status}"));
        // A document's problems, one line each, at their JSON pointers.
        for problem in body.pointer("/error/problems").and_then(Value::as_array).into_iter().flatten() {
            let pointer = problem["pointer"].as_str().unwrap_or_default();
            let text = problem["message"].as_str().unwrap_or_default();
            message.push_str(&format!("\n  {}: {text}", if pointer.is_empty() { "/" } else { pointer }));
        }
        let code = match status.as_u16() {
            401 => exit::UNAUTHORIZED,
            404 => exit::NOT_FOUND,
            409 => exit::CONFLICT,
            400 | 413 | 422 => exit::INVALID,
            _ => exit::API_ERROR,
        };
        Err(Failure::new(code, message))
    }

    /// Every item of a paginated list, following `next_cursor`.
    pub async fn list_all(&self, r: Request) -> Result<Value, Failure> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page =
                Request { method: r.method.clone(), segments: r.segments.clone(), query: r.query.clone(), body: None }
                    .query("limit", Some(1000))
                    .query("cursor", cursor.as_deref());
            let body = self.send(&page).await?;
            items.extend(body["items"].as_array().cloned().unwrap_or_default());
            match body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return Ok(json!({ "items": items })),
            }
        }
    }
}
