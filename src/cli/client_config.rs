//! `mcpgw client-config`: MCP client configuration for a key, ready to paste. When the admin key is
//! at hand the key is checked first, so a typo is caught here and not in the client. With `--oauth`,
//! configurations that hold only the URL, for clients that sign the user in by themselves.

use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use super::api::{Api, Failure, Request, exit};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClientKind {
    /// claude_desktop_config.json, through `mcp-remote`.
    ClaudeDesktop,
    /// Cursor's mcp.json (streamable HTTP with a header).
    Cursor,
    /// VS Code's mcp.json (`servers`, type `http`).
    VsCode,
    /// The `mcp-remote` command line.
    McpRemote,
    All,
}

#[derive(Args)]
pub struct ClientConfigArgs {
    /// The client key (prefer the environment variable).
    #[arg(long, env = "MCPGW_API_KEY", hide_env_values = true, required_unless_present = "oauth")]
    key: Option<String>,
    /// Configurations without a key, for clients that sign in with OAuth (the gateway needs
    /// MCPGW_OAUTH_ISSUER); point --gateway-url at /mcp/<project> for users in several projects.
    #[arg(long, conflicts_with = "key")]
    oauth: bool,
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

/// Configurations for Claude Desktop, Cursor and VS Code, and the `mcp-remote` command line: with
/// `key` in a header, or (`None`) the URL alone, for clients that sign in with OAuth.
pub fn configs(key: Option<&str>, url: &str, name: &str) -> (Value, Value, Value, Vec<String>) {
    let Some(key) = key else {
        let claude = json!({"mcpServers": {name: {"command": "npx", "args": ["-y", "mcp-remote", url]}}});
        let cursor = json!({"mcpServers": {name: {"url": url}}});
        let vscode = json!({"servers": {name: {"type": "http", "url": url}}});
        return (claude, cursor, vscode, ["npx", "-y", "mcp-remote", url].map(String::from).to_vec());
    };
    let bearer = format!("Bearer {key}");
    let claude = json!({"mcpServers": {name: {
        "command": "npx",
        "args": ["-y", "mcp-remote", url, "--header", "Authorization:${MCPGW_AUTH}"],
        "env": {"MCPGW_AUTH": bearer}
    }}});
    let cursor = json!({"mcpServers": {name: {"url": url, "headers": {"Authorization": bearer}}}});
    let vscode = json!({"servers": {name: {"type": "http", "url": url, "headers": {"Authorization": bearer}}}});
    let remote =
        ["npx", "-y", "mcp-remote", url, "--header", &format!("Authorization: {bearer}")].map(String::from).to_vec();
    (claude, cursor, vscode, remote)
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
    let key = if args.oauth { None } else { args.key.as_deref() };
    if let Some(key) = key {
        match check_key(api, key).await {
            Ok(()) => {}
            // Without the admin key the configuration is still useful; say it was not checked.
            Err(f) if f.code == exit::UNAUTHORIZED && !api.has_admin_key() => {
                eprintln!("note: key not checked (no admin key)");
            }
            Err(f) => return Err(f),
        }
    }
    let (claude, cursor, vscode, remote) = configs(key, &args.gateway_url, &args.name);
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    match (args.client, json_out) {
        (ClientKind::ClaudeDesktop, _) => println!("{}", pretty(&claude)),
        (ClientKind::Cursor, _) => println!("{}", pretty(&cursor)),
        (ClientKind::VsCode, _) => println!("{}", pretty(&vscode)),
        (ClientKind::McpRemote, false) => println!("{}", shell_words(&remote)),
        (ClientKind::McpRemote, true) => println!("{}", pretty(&json!(remote))),
        (ClientKind::All, true) => {
            let all = json!({"claude_desktop": claude, "cursor": cursor, "vscode": vscode, "mcp_remote": remote});
            println!("{}", pretty(&all))
        }
        (ClientKind::All, false) => {
            println!("# Claude Desktop (claude_desktop_config.json)\n{}\n", pretty(&claude));
            println!("# Cursor (~/.cursor/mcp.json)\n{}\n", pretty(&cursor));
            println!("# VS Code (.vscode/mcp.json)\n{}\n", pretty(&vscode));
            println!("# mcp-remote (any stdio client)\n{}", shell_words(&remote));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_configs_hold_the_url_alone() {
        let url = "https://mcp.example.com/mcp/team";
        let (claude, cursor, vscode, remote) = configs(None, url, "gw");
        assert_eq!(claude["mcpServers"]["gw"]["args"], json!(["-y", "mcp-remote", url]));
        assert_eq!(cursor, json!({"mcpServers": {"gw": {"url": url}}}));
        assert_eq!(vscode, json!({"servers": {"gw": {"type": "http", "url": url}}}));
        assert_eq!(remote, ["npx", "-y", "mcp-remote", url]);
        let (_, cursor, vscode, _) = configs(Some("mcpgw_k"), url, "gw");
        assert_eq!(cursor["mcpServers"]["gw"]["headers"]["Authorization"], "Bearer mcpgw_k");
        assert_eq!(vscode["servers"]["gw"]["headers"]["Authorization"], "Bearer mcpgw_k");
    }
}
