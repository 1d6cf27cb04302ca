//! An MCP server offering what the official conformance suite's server scenarios ask for
//! (`@modelcontextprotocol/conformance`, `conformance list --server`): the `test_*` tools, the
//! `test://` resources and template, the `test_*` prompts, completion, logging and resource
//! subscriptions. The end-to-end tests run the suite against it directly and through the gateway.
//!
//! Beyond the suite: `test_touch_watched_resource` sends `notifications/resources/updated` for
//! every subscribed URI, so relaying subscriptions can be tested too.
//!
//! `conformance_server` serves stdio; `conformance_server --http 127.0.0.1:0` serves streamable
//! HTTP at `/mcp` and prints `listening on http://ADDR` on stderr.

// Logging, sampling and resource subscriptions are what the suite tests, however rmcp labels them.
#![allow(deprecated)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::*;
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// 1x1 red PNG.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";
/// A WAV file of eight silent 16-bit samples.
const WAV: &str = "UklGRjQAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YRAAAAAAAAAAAAAAAAAAAAAAAAAA";
const WATCHED: &str = "test://watched-resource";

/// State of one client session.
#[derive(Clone, Default)]
struct Conformance {
    /// Minimum level set by `logging/setLevel` (none: everything is sent).
    log_level: Arc<Mutex<Option<LoggingLevel>>>,
    subscriptions: Arc<Mutex<BTreeSet<String>>>,
}

fn from<T: DeserializeOwned>(v: Value) -> Result<T, McpError> {
    serde_json::from_value(v).map_err(|e| McpError::internal_error(e.to_string(), None))
}

fn severity(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

fn tools() -> Value {
    let none = json!({"type": "object", "properties": {}});
    let string_arg = |name: &str, description: &str| json!({"type": "object", "properties": {name: {"type": "string", "description": description}}, "required": [name]});
    json!([
        {"name": "test_simple_text", "description": "Returns simple text", "inputSchema": none},
        {"name": "test_image_content", "description": "Returns an image", "inputSchema": none},
        {"name": "test_audio_content", "description": "Returns audio", "inputSchema": none},
        {"name": "test_embedded_resource", "description": "Returns an embedded resource", "inputSchema": none},
        {"name": "test_multiple_content_types", "description": "Returns text, an image and a resource", "inputSchema": none},
        {"name": "test_tool_with_logging", "description": "Logs three messages while it runs", "inputSchema": none},
        {"name": "test_error_handling", "description": "Always fails", "inputSchema": none},
        {"name": "test_tool_with_progress", "description": "Reports progress while it runs", "inputSchema": none},
        {"name": "test_sampling", "description": "Asks the client's model", "inputSchema": string_arg("prompt", "The prompt to send to the LLM")},
        {"name": "test_elicitation", "description": "Asks the user", "inputSchema": string_arg("message", "The message to show the user")},
        {"name": "test_elicitation_sep1034_defaults", "description": "Asks the user, with defaults", "inputSchema": none},
        {"name": "test_elicitation_sep1330_enums", "description": "Asks the user to choose", "inputSchema": none},
        {"name": "test_touch_watched_resource", "description": "Tells subscribers the watched resource changed", "inputSchema": none},
        {"name": "json_schema_2020_12_tool", "description": "Tool with JSON Schema 2020-12 features", "inputSchema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
            "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
            "additionalProperties": false
        }}
    ])
}

fn text(t: impl Into<String>) -> Value {
    json!({"type": "text", "text": t.into()})
}

impl Conformance {
    async fn log(&self, context: &RequestContext<RoleServer>, message: &str) {
        let threshold = *self.log_level.lock().unwrap();
        if threshold.is_some_and(|t| severity(LoggingLevel::Info) < severity(t)) {
            return;
        }
        let params =
            LoggingMessageNotificationParam::new(LoggingLevel::Info, json!(message)).with_logger("conformance-server");
        let _ = context.peer.notify_logging_message(params).await;
    }

    async fn elicit(&self, context: &RequestContext<RoleServer>, params: Value) -> Result<ElicitResult, McpError> {
        if context.peer.peer_info().is_none_or(|i| i.capabilities.elicitation.is_none()) {
            return Err(McpError::invalid_request("the client does not support elicitation", None));
        }
        let params: ElicitRequestParams = from(params)?;
        context.peer.create_elicitation(params).await.map_err(|e| McpError::internal_error(e.to_string(), None))
    }

    async fn call(
        &self,
        name: &str,
        args: &JsonObject,
        context: &RequestContext<RoleServer>,
    ) -> Result<Value, McpError> {
        let arg = |n: &str| {
            args.get(n)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| McpError::invalid_params(format!("`{n}` (string) is required"), None))
        };
        Ok(match name {
            "test_simple_text" => json!({"content": [text("This is a simple text response for testing.")]}),
            "test_image_content" => json!({"content": [{"type": "image", "data": PNG, "mimeType": "image/png"}]}),
            "test_audio_content" => json!({"content": [{"type": "audio", "data": WAV, "mimeType": "audio/wav"}]}),
            "test_embedded_resource" => json!({"content": [{"type": "resource", "resource": {
                "uri": "test://embedded-resource", "mimeType": "text/plain",
                "text": "This is an embedded resource content."}}]}),
            "test_multiple_content_types" => json!({"content": [
                text("Multiple content types test:"),
                {"type": "image", "data": PNG, "mimeType": "image/png"},
                {"type": "resource", "resource": {"uri": "test://mixed-content-resource",
                    "mimeType": "application/json", "text": "{\"test\":\"data\",\"value\":123}"}}
            ]}),
            "test_tool_with_logging" => {
                self.log(context, "Tool execution started").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.log(context, "Tool processing data").await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.log(context, "Tool execution completed").await;
                json!({"content": [text("Logging test completed")]})
            }
            "test_error_handling" => {
                json!({"isError": true, "content": [text("This tool intentionally returns an error for testing")]})
            }
            "test_tool_with_progress" => {
                let token = context.meta.get_progress_token();
                for (i, progress) in [0.0, 50.0, 100.0].into_iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    if let Some(token) = &token {
                        let mut p = ProgressNotificationParam::new(token.clone(), progress);
                        p.total = Some(100.0);
                        let _ = context.peer.notify_progress(p).await;
                    }
                }
                json!({"content": [text("Progress test completed")]})
            }
            "test_sampling" => {
                if context.peer.peer_info().is_none_or(|i| i.capabilities.sampling.is_none()) {
                    return Err(McpError::invalid_request("the client does not support sampling", None));
                }
                let params: CreateMessageRequestParams = from(json!({
                    "messages": [{"role": "user", "content": {"type": "text", "text": arg("prompt")?}}],
                    "maxTokens": 100
                }))?;
                let answer = context
                    .peer
                    .create_message(params)
                    .await
                    .map_err(|e| McpError::internal_error(e.to_string(), None))?;
                let answer = serde_json::to_value(&answer).unwrap_or_default();
                let said = answer["content"]["text"].as_str().unwrap_or_default().to_string();
                json!({"content": [text(format!("LLM response: {said}"))]})
            }
            "test_elicitation" => {
                let result = self
                    .elicit(
                        context,
                        json!({"mode": "form", "message": arg("message")?, "requestedSchema": {
                            "type": "object",
                            "properties": {
                                "username": {"type": "string", "description": "User's response"},
                                "email": {"type": "string", "description": "User's email address"}
                            },
                            "required": ["username", "email"]
                        }}),
                    )
                    .await?;
                let content = serde_json::to_string(&result.content).unwrap_or_default();
                let action = serde_json::to_value(&result.action).unwrap_or_default();
                json!({"content": [text(format!("User response: action: {}, content: {content}", action.as_str().unwrap_or_default()))]})
            }
            "test_elicitation_sep1034_defaults" => {
                let result = self
                    .elicit(
                        context,
                        json!({"mode": "form", "message": "Please review your details", "requestedSchema": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string", "default": "John Doe"},
                                "age": {"type": "integer", "default": 30},
                                "score": {"type": "number", "default": 95.5},
                                "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
                                "verified": {"type": "boolean", "default": true}
                            }
                        }}),
                    )
                    .await?;
                elicitation_completed(&result)
            }
            "test_elicitation_sep1330_enums" => {
                let result = self
                    .elicit(
                        context,
                        json!({"mode": "form", "message": "Please choose", "requestedSchema": {
                            "type": "object",
                            "properties": {
                                "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
                                "titledSingle": {"type": "string", "oneOf": [
                                    {"const": "value1", "title": "First Option"},
                                    {"const": "value2", "title": "Second Option"},
                                    {"const": "value3", "title": "Third Option"}
                                ]},
                                "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                                    "enumNames": ["Option One", "Option Two", "Option Three"]},
                                "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
                                "titledMulti": {"type": "array", "items": {"anyOf": [
                                    {"const": "value1", "title": "First Choice"},
                                    {"const": "value2", "title": "Second Choice"},
                                    {"const": "value3", "title": "Third Choice"}
                                ]}}
                            }
                        }}),
                    )
                    .await?;
                elicitation_completed(&result)
            }
            "test_touch_watched_resource" => {
                let subscribed: Vec<String> = self.subscriptions.lock().unwrap().iter().cloned().collect();
                for uri in &subscribed {
                    let _ =
                        context.peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(uri.clone())).await;
                }
                json!({"content": [text(format!("notified {} subscription(s)", subscribed.len()))]})
            }
            "json_schema_2020_12_tool" => json!({"content": [text("ok")]}),
            other => return Err(McpError::invalid_params(format!("unknown tool: {other}"), None)),
        })
    }
}

fn elicitation_completed(result: &ElicitResult) -> Value {
    let action = serde_json::to_value(&result.action).unwrap_or_default();
    let content = serde_json::to_string(&result.content).unwrap_or_default();
    json!({"content": [text(format!("Elicitation completed: action={}, content={content}", action.as_str().unwrap_or_default()))]})
}

impl ServerHandler for Conformance {
    fn get_info(&self) -> ServerConfig {
        let caps = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_prompts()
            .enable_logging()
            .enable_completions()
            .build();
        ServerConfig::new(caps).with_server_info(Implementation::new("conformance-server", "1.0.0"))
    }

    async fn list_tools(
        &self,
        _r: Option<PaginatedRequestParams>,
        _c: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(from(tools())?))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.unwrap_or_default();
        let result = self.call(&request.name, &args, &context).await?;
        Ok(CallToolResponse::Complete(from(result)?))
    }

    async fn list_resources(
        &self,
        _r: Option<PaginatedRequestParams>,
        _c: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let resources = from(json!([
            {"uri": "test://static-text", "name": "static-text", "description": "A static text resource", "mimeType": "text/plain"},
            {"uri": "test://static-binary", "name": "static-binary", "description": "A static binary resource", "mimeType": "image/png"},
            {"uri": WATCHED, "name": "watched-resource", "description": "A resource to subscribe to", "mimeType": "text/plain"}
        ]))?;
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _r: Option<PaginatedRequestParams>,
        _c: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let templates = from(json!([{"uriTemplate": "test://template/{id}/data", "name": "template",
            "description": "Data for an id", "mimeType": "application/json"}]))?;
        Ok(ListResourceTemplatesResult::with_all_items(templates))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _c: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri.as_str();
        let contents = match uri {
            "test://static-text" => json!({"uri": uri, "mimeType": "text/plain",
                "text": "This is the content of the static text resource."}),
            "test://static-binary" => json!({"uri": uri, "mimeType": "image/png", "blob": PNG}),
            WATCHED => json!({"uri": uri, "mimeType": "text/plain", "text": "Watched resource content."}),
            _ => match uri.strip_prefix("test://template/").and_then(|rest| rest.strip_suffix("/data")) {
                Some(id) if !id.is_empty() && !id.contains('/') => json!({"uri": uri, "mimeType": "application/json",
                    "text": json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")}).to_string()}),
                _ => return Err(McpError::resource_not_found(format!("no resource {uri}"), None)),
            },
        };
        Ok(ReadResourceResponse::Complete(from(json!({"contents": [contents]}))?))
    }

    async fn subscribe(&self, request: SubscribeRequestParams, _c: RequestContext<RoleServer>) -> Result<(), McpError> {
        self.subscriptions.lock().unwrap().insert(request.uri);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _c: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.subscriptions.lock().unwrap().remove(&request.uri);
        Ok(())
    }

    async fn set_level(&self, request: SetLevelRequestParams, _c: RequestContext<RoleServer>) -> Result<(), McpError> {
        *self.log_level.lock().unwrap() = Some(request.level);
        Ok(())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _c: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        let candidates = ["paris", "park", "party", "testValue1", "testValue2"];
        let prefix = request.argument.value.as_str();
        let values: Vec<&str> = candidates.into_iter().filter(|c| c.starts_with(prefix)).collect();
        from(json!({"completion": {"values": values, "total": values.len(), "hasMore": false}}))
    }

    async fn list_prompts(
        &self,
        _r: Option<PaginatedRequestParams>,
        _c: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let required =
            |name: &str, description: &str| json!({"name": name, "description": description, "required": true});
        let prompts = from(json!([
            {"name": "test_simple_prompt", "description": "A simple prompt"},
            {"name": "test_prompt_with_arguments", "description": "A prompt with arguments",
                "arguments": [required("arg1", "First test argument"), required("arg2", "Second test argument")]},
            {"name": "test_prompt_with_embedded_resource", "description": "A prompt with an embedded resource",
                "arguments": [required("resourceUri", "URI of the resource to embed")]},
            {"name": "test_prompt_with_image", "description": "A prompt with an image"}
        ]))?;
        Ok(ListPromptsResult::with_all_items(prompts))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _c: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let args = request.arguments.unwrap_or_default();
        let arg = |n: &str| {
            args.get(n)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| McpError::invalid_params(format!("argument `{n}` is required"), None))
        };
        let user = |content: Value| json!({"role": "user", "content": content});
        let messages = match request.name.as_str() {
            "test_simple_prompt" => json!([user(text("This is a simple prompt for testing."))]),
            "test_prompt_with_arguments" => {
                json!([user(text(format!("Prompt with arguments: arg1='{}', arg2='{}'", arg("arg1")?, arg("arg2")?)))])
            }
            "test_prompt_with_embedded_resource" => json!([
                user(json!({"type": "resource", "resource": {"uri": arg("resourceUri")?, "mimeType": "text/plain",
                    "text": "Embedded resource content for testing."}})),
                user(text("Please process the embedded resource above."))
            ]),
            "test_prompt_with_image" => json!([
                user(json!({"type": "image", "data": PNG, "mimeType": "image/png"})),
                user(text("Please analyze the image above."))
            ]),
            other => return Err(McpError::invalid_params(format!("unknown prompt: {other}"), None)),
        };
        Ok(GetPromptResponse::Complete(from(json!({"messages": messages}))?))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--http") {
        Some(i) => {
            let addr = args.get(i + 1).map(String::as_str).unwrap_or("127.0.0.1:0");
            let listener = tokio::net::TcpListener::bind(addr).await?;
            eprintln!("listening on http://{}", listener.local_addr()?);
            use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
            use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
            let service = StreamableHttpService::new(
                || Ok(Conformance::default()),
                Arc::new(LocalSessionManager::default()),
                StreamableHttpServerConfig::default(),
            );
            let app = axum::Router::new().route_service("/mcp", service);
            axum::serve(listener, app).await?;
        }
        None => {
            let running = Conformance::default().serve(rmcp::transport::io::stdio()).await?;
            running.waiting().await?;
        }
    }
    Ok(())
}
