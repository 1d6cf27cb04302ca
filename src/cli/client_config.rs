//! `mcpgw client-config`: MCP client configuration for a key, ready to paste. When the admin key is
//! at hand the key is checked first, so a typo is caught here and not in the client.

use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use super::api::{Api, Failure, Request, exit};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClientKind {
    /// claude_desktop_config.json, through `mcp-remote`.
    ClaudeDesktop,
    /// Cursor's mcp.json (streamable HTTP with a header).
    Cursor,
    /// The `mcp-remote` command line.
    McpRemote,
    All,
}

#[derive(Args)]
pub struct ClientConfigArgs {
    /// The client key (prefer the environment variable).
    #[arg(long, env = "MCPGW_API_KEY", hide_env_values = true)]
    key: String,
    /// The gateway's MCP endpoint as the client will reach it.
    #[arg(long, env = "MCPGW_GATEWAY_URL", default_value = "http://127.0.0.1:8000/mcp")]
    gateway_url: String,
    #[arg(long, value_enum, default_value = "all")]
    client: ClientKind,
    /// The name the client shows for the gateway.
    #[arg(long, default_value = "mcpgw")]
    name: String,
}

/// Refuses a key the control plane does not know or that cannot work.
async fn check_key(api: &Api, key: &str) -> Result<(), Failure> {
    let id = shared::api_key::lookup_id(key).ok_or_else(|| {
        Failure::new(exit::INVALID, "that is not a client key (mcpgw_<id>_<secret>, or an imported key)")
    })?;
    let record = api.send(&Request::get(&["api-keys", &id])).await.map_err(|f| match f.code {
        exit::NOT_FOUND => Failure::new(exit::NOT_FOUND, format!("the gateway has no key with id {id}")),
        _ => f,
    })?;
    if record["disabled"] == true {
        return Err(Failure::new(exit::INVALID, format!("key {id} is disabled")));
    }
    if record["expired"] == true {
        return Err(Failure::new(exit::INVALID, format!("key {id} has expired")));
    }
    Ok(())
}

pub fn configs(key: &str, url: &str, name: &str) -> (Value, Value, Vec<String>) {
    let claude = json!({"mcpServers": {name: {
        "command": "npx",
        "args": ["-y", "mcp-remote", url, "--header", "Authorization:${MCPGW_AUTH}"],
        "env": {"MCPGW_AUTH": format!("Bearer {key}")}
    }}});
    let cursor = json!({"mcpServers": {name: {"url": url, "headers": {"Authorization": format!("Bearer {key}")}}}});
    let remote = ["npx", "-y", "mcp-remote", url, "--header", &format!("Authorization: Bearer {key}")]
        .map(String::from)
        .to_vec();
    (claude, cursor, remote)
}

fn shell_words(words: &[String]) -> String {
    let quote = |w: &String| {
        if w.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@".contains(c)) {
            w.clone()
        } else {
            format!("'{}'", w.replace('\'', r"'\''"))
        }
    };
    words.iter().map(quote).collect::<Vec<_>>().join(" ")
}

pub async fn print(api: &Api, args: ClientConfigArgs, json_out: bool) -> Result<(), Failure> {
    match check_key(api, &args.key).await {
        Ok(()) => {}
        // Without the admin key the configuration is still useful; say it was not checked.
        Err(f) if f.code == exit::UNAUTHORIZED && !api.has_admin_key() => {
            eprintln!("note: key not checked (no admin key)");
        }
        Err(f) => return Err(f),
    }
    let (claude, cursor, remote) = configs(&args.key, &args.gateway_url, &args.name);
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    match (args.client, json_out) {
        (ClientKind::ClaudeDesktop, _) => println!("{}", pretty(&claude)),
        (ClientKind::Cursor, _) => println!("{}", pretty(&cursor)),
        (ClientKind::McpRemote, false) => println!("{}", shell_words(&remote)),
        (ClientKind::McpRemote, true) => println!("{}", pretty(&json!(remote))),
        (ClientKind::All, true) => {
            println!("{}", pretty(&json!({"claude_desktop": claude, "cursor": cursor, "mcp_remote": remote})))
        }
        (ClientKind::All, false) => {
            println!("# Claude Desktop (claude_desktop_config.json)\n{}\n", pretty(&claude));
            println!("# Cursor (~/.cursor/mcp.json)\n{}\n", pretty(&cursor));
            println!("# mcp-remote (any stdio client)\n{}", shell_words(&remote));
        }
    }
    Ok(())
}
