//! The gateway's own tools (prefixed-name configs only), for parity with the Python gateway:
//! list servers, server info, discovery, batched calls, cache status and clearing. Secrets in server
//! configs (env values, headers, OAuth secrets) are masked in everything they return.

use std::sync::Arc;

use futures::future::join_all;
use rmcp::model::{CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject, Tool};
use serde_json::{Value, json};
use shared::server::{ServerSpec, Transport};
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;
use crate::call::{self, CallFailure, CallOrigin, ToolCall};
use crate::catalog::ConfigView;
use crate::gateway::GatewayService;

const LIST_SERVERS: &str = "gateway_list_servers";
const SERVER_INFO: &str = "gateway_get_server_info";
const DISCOVER: &str = "gateway_discover_tools";
const CALL_TOOLS: &str = "gateway_call_tools";
const CACHE_STATUS: &str = "gateway_cache_status";
const CLEAR_CACHE: &str = "gateway_clear_cache";

pub fn is_meta_tool(name: &str) -> bool {
    matches!(name, LIST_SERVERS | SERVER_INFO | DISCOVER | CALL_TOOLS | CACHE_STATUS | CLEAR_CACHE)
}

fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(JsonObject::new()),
    }
}

pub fn definitions() -> Vec<Tool> {
    let server_arg = |required: bool| {
        let mut s = json!({
            "type": "object",
            "properties": {"server_name": {"type": "string", "description": "Name of a server in this project's config"}},
        });
        if required {
            s["required"] = json!(["server_name"]);
        }
        schema(s)
    };
    vec![
        Tool::new(
            LIST_SERVERS,
            "List the MCP servers this project can use, with their settings (secrets masked).",
            schema(json!({"type": "object", "properties": {}})),
        ),
        Tool::new(
            SERVER_INFO,
            "Show one server's settings (secrets masked), connection and cache state.",
            server_arg(true),
        ),
        Tool::new(
            DISCOVER,
            "Discover the tools of one server, or of every server in parallel when server_name is omitted. Failures are reported per server.",
            server_arg(false),
        ),
        Tool::new(
            CALL_TOOLS,
            "Call several tools of one server in one request. Each call is reported with status success, error, blocked or denied.",
            schema(json!({
                "type": "object",
                "properties": {
                    "server_name": {"type": "string"},
                    "tool_calls": {
                        "type": "array",
                        "maxItems": MAX_BATCH,
                        "items": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}, "args": {"type": "object"}},
                            "required": ["name"]
                        }
                    }
                },
                "required": ["server_name", "tool_calls"]
            })),
        ),
        Tool::new(
            CACHE_STATUS,
            "Show the tool-discovery cache of each server of this project.",
            schema(json!({"type": "object", "properties": {}})),
        ),
        Tool::new(CLEAR_CACHE, "Clear the tool-discovery cache of one server, or of all of them.", server_arg(false)),
    ]
}

fn ok(value: Value) -> CallToolResult {
    let mut r = CallToolResult::success(vec![ContentBlock::text(value.to_string())]);
    r.structured_content = Some(value);
    r
}

fn fail(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

const MASK: &str = "****";

/// A server's settings with every secret replaced by `****`.
pub fn masked(spec: &ServerSpec) -> Value {
    let transport = match &spec.config {
        Transport::Stdio { command, args, env, cwd } => json!({
            "type": "stdio", "command": command, "args": args, "cwd": cwd,
            "env": env.keys().map(|k| (k.clone(), json!(MASK))).collect::<serde_json::Map<_, _>>(),
        }),
        Transport::Http { url, headers } => json!({
            "type": "http", "url": url,
            "headers": headers.keys().map(|k| (k.clone(), json!(MASK))).collect::<serde_json::Map<_, _>>(),
        }),
    };
    let oauth = spec.oauth_config.as_ref().map(|o| {
        o.iter()
            .map(|(k, v)| {
                let secret = shared::server::is_secret_oauth_field(k);
                (k.clone(), if secret && !v.is_boolean() { json!(MASK) } else { v.clone() })
            })
            .collect::<serde_json::Map<_, _>>()
    });
    json!({
        "server_name": spec.server_name,
        "description": spec.description,
        "config": transport,
        "tools": spec.tools.0,
        "denied_tools": spec.denied_tools,
        "input_guardrails_policy": {"enabled": spec.input_guardrails_policy.enabled, "block": spec.input_guardrails_policy.block},
        "output_guardrails_policy": {"enabled": spec.output_guardrails_policy.enabled, "block": spec.output_guardrails_policy.block},
        "oauth_config": oauth,
        "timeouts": spec.timeouts,
        "per_session": spec.per_session,
        "allow_sampling": spec.allow_sampling,
        "allow_elicitation": spec.allow_elicitation,
    })
}

fn server_name(args: &JsonObject) -> Option<&str> {
    args.get("server_name").and_then(Value::as_str).filter(|s| !s.is_empty() && *s != "null")
}

pub(crate) async fn call(
    svc: &GatewayService,
    p: &Principal,
    config: &Arc<ConfigView>,
    name: &str,
    args: JsonObject,
    origin: &CallOrigin<'_>,
    cancel: &CancellationToken,
) -> CallToolResult {
    let find = |n: &str| config.server(n).cloned();
    match name {
        LIST_SERVERS => ok(json!({
            "config": config.name,
            "tool_naming": config.naming,
            "servers": config.servers.iter().map(|s| masked(s)).collect::<Vec<_>>(),
        })),
        SERVER_INFO => {
            let Some(spec) = server_name(&args).and_then(find) else {
                return fail(format!("server `{}` is not available", server_name(&args).unwrap_or("")));
            };
            let upstream = svc.upstream(config.id, &spec);
            ok(json!({
                "server_name": spec.server_name,
                "server_info": masked(&spec),
                "connected": upstream.is_connected().await,
                "cached_tools": upstream.cache_status().map(|(_, n)| n),
            }))
        }
        DISCOVER => {
            let targets: Vec<Arc<ServerSpec>> = match server_name(&args) {
                Some(n) => match find(n) {
                    Some(s) => vec![s],
                    None => return fail(format!("server `{n}` is not available")),
                },
                None => config.servers.clone(),
            };
            let results = join_all(targets.iter().map(|spec| async move {
                match svc.discovery(config, spec).await {
                    Ok(found) if found.server_blocked.is_some() => json!({
                        "server_name": spec.server_name, "status": "blocked",
                        "error": format!("the server's description looks poisoned ({})", found.server_blocked.as_deref().unwrap_or_default()),
                    }),
                    Ok(found) => {
                        let allowed = |name: &str| config.tool_allowed(&spec.server_name, name);
                        json!({
                            "server_name": spec.server_name, "status": "success",
                            "tools": found.tools.iter().filter(|t| allowed(&t.name)).map(|t| json!({
                                "name": config.exposed_name(&spec.server_name, &t.name),
                                "description": t.description,
                            })).collect::<Vec<_>>(),
                            // Tool integrity: what is withheld and why (kinds only, never the text).
                            "held_back": found.hidden.iter().filter(|(name, _)| allowed(name)).map(|(name, reason)| json!({
                                "name": config.exposed_name(&spec.server_name, name),
                                "reason": reason,
                            })).collect::<Vec<_>>(),
                        })
                    }
                    Err(e) => json!({"server_name": spec.server_name, "status": "error", "error": e.to_string()}),
                }
            }))
            .await;
            let failed = results.iter().filter(|r| r["status"] != "success").count();
            ok(json!({
                "status": if failed == 0 { "success" } else if failed == results.len() { "error" } else { "partial" },
                "servers": results,
            }))
        }
        CALL_TOOLS => call_batch(svc, p, config, &args, origin, cancel).await,
        CACHE_STATUS => {
            let ttl = svc.gateway.catalog().tool_cache_ttl;
            let servers: serde_json::Map<String, Value> = config
                .servers
                .iter()
                .map(|spec| {
                    let status = svc.upstream(config.id, spec).cache_status();
                    let entry = match status {
                        Some((age, count)) => json!({
                            "cached": age < ttl, "tool_count": count,
                            "age_secs": age.as_secs(), "expires_in_secs": ttl.saturating_sub(age).as_secs(),
                        }),
                        None => json!({"cached": false}),
                    };
                    (spec.server_name.clone(), entry)
                })
                .collect();
            ok(json!({"ttl_secs": ttl.as_secs(), "servers": servers}))
        }
        CLEAR_CACHE => {
            let targets: Vec<Arc<ServerSpec>> = match server_name(&args) {
                Some(n) => match find(n) {
                    Some(s) => vec![s],
                    None => return fail(format!("server `{n}` is not available")),
                },
                None => config.servers.clone(),
            };
            for spec in &targets {
                svc.upstream(config.id, spec).clear_cache();
            }
            ok(json!({"status": "success", "cleared": targets.iter().map(|s| &s.server_name).collect::<Vec<_>>()}))
        }
        _ => fail(format!("unknown gateway tool `{name}`")),
    }
}

/// Largest batch `gateway_call_tools` runs.
const MAX_BATCH: usize = 100;

/// Runs a batch of calls on one server, in order, each through the same policy, rate limits,
/// metrics and audit log as `tools/call`. A cancelled batch stops before its next call.
async fn call_batch(
    svc: &GatewayService,
    p: &Principal,
    config: &Arc<ConfigView>,
    args: &JsonObject,
    origin: &CallOrigin<'_>,
    cancel: &CancellationToken,
) -> CallToolResult {
    let Some(spec) = server_name(args).and_then(|n| config.server(n).cloned()) else {
        return fail(format!("server `{}` is not available", server_name(args).unwrap_or("")));
    };
    let calls = args.get("tool_calls").and_then(Value::as_array).cloned().unwrap_or_default();
    if calls.len() > MAX_BATCH {
        return fail(format!("at most {MAX_BATCH} calls per batch (got {})", calls.len()));
    }
    let mut refused: Option<crate::rate_limit::Limited> = None;
    let mut results = Vec::with_capacity(calls.len());
    for (index, item) in calls.iter().enumerate() {
        if cancel.is_cancelled() {
            break;
        }
        let tool =
            ["name", "tool_name", "tool"].iter().find_map(|k| item.get(*k).and_then(Value::as_str)).unwrap_or("");
        let arguments = ["args", "arguments"].iter().find_map(|k| item.get(*k).and_then(Value::as_object)).cloned();
        if !call::allowed(config, &spec, tool) {
            results.push(
                json!({"index": index, "name": tool, "status": "denied", "message": format!("unknown tool: {tool}")}),
            );
            continue;
        }
        // Once a limit refuses, the rest of the batch is refused too without asking again; every
        // refused call is counted and audited, as a refused `tools/call` is.
        match &refused {
            None => refused = call::admit(svc, p, config, &spec, tool).await.err(),
            Some(limited) => call::refused(svc, p, limited),
        }
        if let Some(limited) = &refused {
            let message = limited.to_string();
            results.push(json!({"index": index, "name": tool, "status": "rate_limited", "message": message}));
            continue;
        }
        let mut request = CallToolRequestParams::new(tool.to_string());
        request.arguments = arguments;
        let started = std::time::Instant::now();
        let call = ToolCall::resolve(svc, p, config, spec.clone(), tool, Some(origin), cancel, started);
        let entry = match call.run(request).await {
            Ok(CallToolResponse::Complete(result)) => {
                let status = if result.is_error == Some(true) { "error" } else { "success" };
                json!({"index": index, "name": tool, "status": status, "result": result})
            }
            Ok(_) => {
                json!({"index": index, "name": tool, "status": "error", "message": "the upstream asked for input; call this tool directly"})
            }
            Err(CallFailure::Protocol(e)) => {
                json!({"index": index, "name": tool, "status": "error", "message": e.message})
            }
            Err(failure) => {
                // The batch's own statuses: timeouts and cancellations are errors here.
                let status = match failure.outcome() {
                    s @ ("blocked" | "denied") => s,
                    _ => "error",
                };
                json!({"index": index, "name": tool, "status": status, "message": failure.message()})
            }
        };
        results.push(entry);
    }
    let count = |s: &str| results.iter().filter(|r| r["status"] == s).count();
    let (ok_n, err_n, blocked_n, denied_n) = (count("success"), count("error"), count("blocked"), count("denied"));
    let limited_n = count("rate_limited");
    ok(json!({
        "server_name": spec.server_name,
        "status": if ok_n == results.len() { "success" } else if ok_n == 0 { "error" } else { "partial" },
        "summary": {"total_calls": results.len(), "successful_calls": ok_n, "failed_calls": err_n, "blocked_calls": blocked_n, "denied_calls": denied_n, "rate_limited_calls": limited_n},
        "results": results,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_masked() {
        let spec: shared::server::ServerSpec = serde_json::from_value(serde_json::json!({
            "server_name": "s",
            "config": {"type": "http", "url": "https://x.example/mcp", "headers": {"Authorization": "Bearer sekrit"}},
            "oauth_config": {"enabled": true, "OAUTH_CLIENT_ID": "id", "OAUTH_CLIENT_SECRET": "sekrit2"}
        }))
        .unwrap();
        let text = super::masked(&spec).to_string();
        assert!(!text.contains("sekrit"), "{text}");
        assert!(text.contains("OAUTH_CLIENT_ID") && text.contains("\"id\""));
        let stdio: shared::server::ServerSpec = serde_json::from_value(serde_json::json!({
            "server_name": "s", "config": {"command": "x", "env": {"TOKEN": "sekrit3"}}
        }))
        .unwrap();
        assert!(!super::masked(&stdio).to_string().contains("sekrit3"));
    }
}
