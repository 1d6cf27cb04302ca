//! Opening an MCP client session to one upstream, per transport.

use std::collections::HashMap;

use process_wrap::tokio::{CommandWrap, KillOnDrop, ProcessGroup};
use rmcp::ServiceExt;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use shared::server::{ServerSpec, Transport};
use tokio::io::AsyncBufReadExt;

use std::sync::Arc;

use super::http_call::SessionTap;
use super::oauth::{AuthorizedHttp, Token};
use super::relay::{NotificationTap, UpstreamClient};
use super::stdio::ChildTransport;
use super::{Session, UpstreamSettings};
use crate::telemetry::TraceHeaders;

/// The upstream's OAuth settings and the token fetched for this connection.
pub(super) struct UpstreamAuth<'a> {
    pub config_id: uuid::Uuid,
    pub oauth: &'a shared::oauth::OAuthConfig,
    pub token: Token,
}

/// Where a stdio server finds its OAuth token (the names the Python gateway set); variables the
/// server's config sets itself are not overwritten.
fn token_env(token: &str) -> [(&'static str, String); 4] {
    [
        ("OAUTH_ACCESS_TOKEN", token.to_string()),
        ("OAUTH_TOKEN_TYPE", "Bearer".to_string()),
        ("AUTHORIZATION", format!("Bearer {token}")),
        ("AUTH_HEADER", format!("Bearer {token}")),
    ]
}

/// Opens and initialises a session; the flag says whether it runs a child process.
pub(super) async fn open(
    spec: &ServerSpec,
    settings: &UpstreamSettings,
    client: UpstreamClient,
    auth: Option<UpstreamAuth<'_>>,
    tap: &Arc<SessionTap>,
) -> Result<(Session, bool), String> {
    match &spec.config {
        Transport::Stdio { command, args, env, cwd } => {
            let mut cmd = match settings.stdio_commands.admit(command, env, cwd.as_deref()) {
                Ok(None) => tokio::process::Command::new(command),
                // Exactly the file that was checked; the program still sees the name it was given.
                Ok(Some(checked)) => {
                    let mut cmd = tokio::process::Command::new(checked);
                    cmd.arg0(command);
                    cmd
                }
                Err(refused) => {
                    tracing::warn!(server = %spec.server_name, %refused, "stdio server not started");
                    return Err(refused.to_string());
                }
            };
            if let Some(auth) = &auth {
                for (name, value) in token_env(&auth.token.access_token) {
                    if !env.contains_key(name) {
                        cmd.env(name, value);
                    }
                }
            }
            cmd.args(args).envs(env);
            if let Some(dir) = cwd {
                cmd.current_dir(dir);
            }
            let mut wrapped = CommandWrap::from(cmd);
            // Own process group: shutting the server down takes its children (npx -> node) with it.
            wrapped.wrap(ProcessGroup::leader()).wrap(KillOnDrop);
            let (process, stderr) = ChildTransport::spawn(wrapped, settings.max_response_bytes)
                .map_err(|e| format!("cannot run `{command}`: {e}"))?;
            if let Some(stderr) = stderr {
                let server = spec.server_name.clone();
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        tracing::debug!(target: "mcpgw::upstream_stderr", server = %server, "{line}");
                    }
                });
            }
            let recorder = NotificationTap { inner: process, targets: client.targets.clone() };
            let session = client.serve(recorder).await.map_err(|e| e.to_string())?;
            Ok((session, true))
        }
        Transport::Http { url, headers } => {
            let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str());
            let mut custom = HashMap::new();
            for (name, value) in headers {
                if name.eq_ignore_ascii_case("authorization") {
                    // rmcp sends Authorization itself; hand it the token.
                    let token =
                        value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).unwrap_or(value);
                    config = config.auth_header(token.to_string());
                    continue;
                }
                let name = reqwest::header::HeaderName::try_from(name.as_str())
                    .map_err(|_| format!("invalid header name `{name}`"))?;
                let value = reqwest::header::HeaderValue::try_from(value.as_str())
                    .map_err(|_| format!("invalid value for header `{name}`"))?;
                custom.insert(name, value);
            }
            config.custom_headers = custom;
            config.max_json_response_size = settings.max_response_bytes;
            config.max_sse_event_size = settings.max_response_bytes;
            config.reinit_on_expired_session = true;
            config = config.max_concurrent_requests(256);
            let session = match auth {
                // The token replaces any configured Authorization header, and is asked for on
                // every request so that a refresh needs no reconnect.
                Some(auth) => {
                    let http = AuthorizedHttp {
                        inner: settings.http.clone(),
                        tokens: settings.tokens.clone(),
                        config_id: auth.config_id,
                        server: spec.server_name.clone(),
                        oauth: auth.oauth.clone(),
                    };
                    let transport = StreamableHttpClientTransport::with_client(TraceHeaders(http, None), config);
                    let recorder = NotificationTap { inner: transport, targets: client.targets.clone() };
                    client.serve(recorder).await
                }
                None => {
                    // Calls to an HTTP(S) upstream go on pooled connections, on the session rmcp
                    // opens (the tap records it).
                    let tap = settings.pooled.serves(url).then(|| tap.clone());
                    let transport =
                        StreamableHttpClientTransport::with_client(TraceHeaders(settings.http.clone(), tap), config);
                    let recorder = NotificationTap { inner: transport, targets: client.targets.clone() };
                    client.serve(recorder).await
                }
            };
            Ok((session.map_err(|e| e.to_string())?, false))
        }
    }
}
