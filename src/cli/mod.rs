//! `mcpgw <command>`: a client of the admin REST API for operators and CI scripts. Every command is
//! one request (lists follow every page); `--json` prints the API's JSON for scripts, otherwise a
//! short human view. Exit codes are in [`api::exit`].

mod api;
mod client_config;
mod show;
mod state;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use api::{Api, Failure, Request, exit};
use show::View;

#[derive(Parser)]
#[command(name = "mcpgw", version, about = "Secure MCP gateway: run it, or manage it through the admin API")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args)]
pub struct Global {
    /// The control plane's base URL.
    #[arg(long, global = true, env = "MCPGW_ADMIN_URL", default_value = "http://127.0.0.1:8001")]
    url: String,
    /// The admin API key (prefer the environment variable: flags show up in process lists).
    #[arg(long, global = true, env = "MCPGW_ADMIN_API_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Print the API's JSON instead of the human view.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the control plane and the data plane in this process (what `mcpgw` alone does).
    Serve,
    /// People who hold API keys.
    #[command(subcommand)]
    Users(Users),
    /// Teams, and the MCP config each one uses.
    #[command(subcommand)]
    Projects(Projects),
    /// Who belongs to a project.
    #[command(subcommand)]
    Members(Members),
    /// MCP configs: lists of upstream servers.
    #[command(subcommand)]
    Configs(Configs),
    /// Upstream servers inside a config.
    #[command(subcommand)]
    Servers(Servers),
    /// Client keys for the gateway (a secret is shown once).
    #[command(subcommand)]
    Keys(Keys),
    /// Import the Python gateway's enkrypt_mcp_config.json.
    Import {
        /// The file to import (`-` for standard input).
        file: PathBuf,
        /// Show what would be done without writing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// The published config snapshot: revision, checksum, last error.
    Snapshot,
    /// What applying a state document (YAML or JSON) would change; nothing is written.
    Plan(state::StateArgs),
    /// Apply a state document: every change in one transaction and one revision, or none.
    Apply(state::ApplyArgs),
    /// Write the current state as a document (secrets masked as `****`, which apply keeps).
    Export(state::ExportArgs),
    /// Print ready-to-paste MCP client configuration for a key.
    ClientConfig(client_config::ClientConfigArgs),
    /// The audit log of changes, newest first.
    Audit(AuditArgs),
}

#[derive(Args)]
pub struct AuditArgs {
    /// Only changes to this kind of resource (user, project, mcp_config, api_key, ...).
    #[arg(long)]
    resource: Option<String>,
    /// Only changes to the resource with this id.
    #[arg(long)]
    resource_id: Option<String>,
    /// Only changes by this actor (admin, oauth_callback, control_plane).
    #[arg(long)]
    actor: Option<String>,
    /// Only this action (create, update, delete, ...).
    #[arg(long)]
    action: Option<String>,
    /// Only changes at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Only changes before this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// How many of the newest rows to show (1-1000).
    #[arg(long, default_value_t = 100)]
    limit: u32,
    /// Every row that matches, following every page (`--limit` is then ignored).
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand)]
pub enum Users {
    List,
    Create {
        email: String,
    },
    Get {
        user: String,
    },
    /// Change a user's e-mail.
    Update {
        user: String,
        email: String,
    },
    Delete {
        user: String,
        /// Also delete their keys and memberships.
        #[arg(long)]
        force: bool,
    },
    /// The projects a user belongs to.
    Projects {
        user: String,
    },
}

#[derive(Subcommand)]
pub enum Projects {
    List,
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// MCP config (id or name) to assign.
        #[arg(long)]
        config: Option<String>,
    },
    Get {
        project: String,
    },
    Delete {
        project: String,
        /// Also delete its keys.
        #[arg(long)]
        force: bool,
    },
    /// Give a project an MCP config.
    AssignConfig {
        project: String,
        config: String,
    },
    /// Take a project's MCP config away (its keys then reach no tools).
    UnassignConfig {
        project: String,
    },
}

#[derive(Subcommand)]
pub enum Members {
    List {
        project: String,
    },
    Add {
        project: String,
        user: String,
    },
    Remove {
        project: String,
        user: String,
        /// Also delete the keys the user holds for the project.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum Configs {
    List,
    Create {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Expose names as the upstreams give them instead of `<server>__<tool>`.
        #[arg(long)]
        bare: bool,
        /// A JSON file with the list of servers (`-` for standard input).
        #[arg(long)]
        servers: Option<PathBuf>,
    },
    Get {
        config: String,
    },
    Delete {
        config: String,
    },
    /// The config with its secrets masked, for backup and review.
    Export {
        config: String,
    },
}

#[derive(Subcommand)]
pub enum Servers {
    List {
        config: String,
    },
    /// Add a server described by a JSON file (`-` for standard input).
    Add {
        config: String,
        file: PathBuf,
    },
    Get {
        config: String,
        server: String,
    },
    /// Replace a server's settings with a JSON file (`-` for standard input).
    Replace {
        config: String,
        server: String,
        file: PathBuf,
    },
    Remove {
        config: String,
        server: String,
    },
    /// Start the OAuth authorization of a server (authorization code grant): prints the URL to open
    /// in a browser.
    Authorize {
        config: String,
        server: String,
    },
    /// A server's OAuth state (tokens are never shown).
    OauthStatus {
        config: String,
        server: String,
    },
    /// Forget a server's OAuth tokens.
    ForgetTokens {
        config: String,
        server: String,
    },
}

#[derive(Subcommand)]
pub enum Keys {
    List {
        /// Only keys of this project (id or name).
        #[arg(long)]
        project: Option<String>,
        /// Only keys of this user (id or e-mail).
        #[arg(long)]
        user: Option<String>,
    },
    /// Create a key; its secret is printed once.
    Create {
        /// Project id or name.
        #[arg(long)]
        project: String,
        /// User id or e-mail; must be a member of the project.
        #[arg(long)]
        user: String,
        /// A label, e.g. the machine or client using the key.
        #[arg(long)]
        name: Option<String>,
        /// When the key stops working (RFC 3339).
        #[arg(long)]
        expires_at: Option<String>,
    },
    Get {
        id: String,
    },
    /// A new secret for the key; the old one stops working.
    Rotate {
        id: String,
    },
    Disable {
        id: String,
    },
    Enable {
        id: String,
    },
    Delete {
        id: String,
    },
}

/// Reads a JSON document from a file or standard input.
fn read_json(path: &PathBuf) -> Result<Value, Failure> {
    let text =
        if path.as_os_str() == "-" { std::io::read_to_string(std::io::stdin()) } else { std::fs::read_to_string(path) }
            .map_err(|e| Failure::new(exit::INVALID, format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| Failure::new(exit::INVALID, format!("{} is not valid JSON: {e}", path.display())))
}

/// The admin key: flag or environment, else the file the control plane keeps in its data dir.
fn admin_key(global: &Global) -> Option<String> {
    global.admin_key.clone().filter(|k| !k.is_empty()).or_else(|| {
        let dir = std::env::var_os(shared::settings::ENV_DATA_DIR)?;
        let key = std::fs::read_to_string(PathBuf::from(dir).join(shared::settings::ADMIN_KEY_FILE_NAME)).ok()?;
        Some(key.trim().to_string()).filter(|k| !k.is_empty())
    })
}

/// Runs a CLI command; the process exit code.
pub fn run(command: Command, global: Global) -> u8 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::API_ERROR;
        }
    };
    match rt.block_on(execute(command, &global)) {
        Ok(()) => 0,
        Err(f) => {
            eprintln!("error: {}", f.message);
            f.code
        }
    }
}

async fn execute(command: Command, global: &Global) -> Result<(), Failure> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let api = Api::new(&global.url, admin_key(global))?;
    let (request, view) = match command {
        Command::Serve => unreachable!("serve is handled by main"),
        Command::ClientConfig(args) => return client_config::print(&api, args, global.json).await,
        Command::Plan(args) => return state::plan(&api, args, global.json).await,
        Command::Apply(args) => return state::apply(&api, args, global.json).await,
        Command::Export(args) => return state::export(&api, args).await,
        Command::Users(c) => users(c),
        Command::Projects(c) => projects(c),
        Command::Members(c) => members(c),
        Command::Configs(c) => configs(c)?,
        Command::Servers(c) => servers(c)?,
        Command::Keys(c) => keys(c),
        Command::Import { file, dry_run } => (
            Request::new(Method::POST, &["import"]).query("dry_run", dry_run.then_some(true)).body(read_json(&file)?),
            View::Import,
        ),
        Command::Snapshot => (Request::get(&["snapshot", "status"]), View::Object),
        Command::Audit(a) => {
            let request = Request::get(&["audit"])
                .query("resource", a.resource)
                .query("resource_id", a.resource_id)
                .query("actor", a.actor)
                .query("action", a.action)
                .query("since", a.since)
                .query("until", a.until);
            if a.all {
                (request, View::Table(AUDIT_COLUMNS))
            } else {
                // One page of the newest rows: the log can be long.
                (request.query("limit", Some(a.limit)), View::Items(AUDIT_COLUMNS))
            }
        }
    };
    let body = if matches!(view, View::Table(_)) { api.list_all(request).await? } else { api.send(&request).await? };
    show::print(&view, &body, global.json);
    Ok(())
}

const USER_COLUMNS: &[&str] = &["email", "id", "created_at"];
const PROJECT_COLUMNS: &[&str] = &["name", "id", "mcp_config/name", "member_count", "api_key_count"];
const CONFIG_COLUMNS: &[&str] = &["name", "id", "tool_naming", "server_count", "project_count"];
const SERVER_COLUMNS: &[&str] = &["server_name", "description"];
const AUDIT_COLUMNS: &[&str] = &["at", "actor", "action", "resource", "resource_id", "revision"];
const KEY_COLUMNS: &[&str] = &["id", "project_name", "user_email", "name", "disabled", "expires_at"];

fn users(c: Users) -> (Request, View) {
    match c {
        Users::List => (Request::get(&["users"]), View::Table(USER_COLUMNS)),
        Users::Create { email } => {
            (Request::new(Method::POST, &["users"]).body(json!({ "email": email })), View::Object)
        }
        Users::Get { user } => (Request::get(&["users", &user]), View::Object),
        Users::Update { user, email } => {
            (Request::new(Method::PATCH, &["users", &user]).body(json!({ "email": email })), View::Object)
        }
        Users::Delete { user, force } => (
            Request::new(Method::DELETE, &["users", &user]).query("force", force.then_some(true)),
            View::Done(format!("deleted user {user}")),
        ),
        Users::Projects { user } => (Request::get(&["users", &user, "projects"]), View::Table(PROJECT_COLUMNS)),
    }
}

fn projects(c: Projects) -> (Request, View) {
    match c {
        Projects::List => (Request::get(&["projects"]), View::Table(PROJECT_COLUMNS)),
        Projects::Create { name, description, config } => {
            let mut body = json!({ "name": name, "mcp_config": config });
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            (Request::new(Method::POST, &["projects"]).body(body), View::Object)
        }
        Projects::Get { project } => (Request::get(&["projects", &project]), View::Object),
        Projects::Delete { project, force } => (
            Request::new(Method::DELETE, &["projects", &project]).query("force", force.then_some(true)),
            View::Done(format!("deleted project {project}")),
        ),
        Projects::AssignConfig { project, config } => (
            Request::new(Method::PUT, &["projects", &project, "config"]).body(json!({ "config": config })),
            View::Object,
        ),
        Projects::UnassignConfig { project } => (
            Request::new(Method::DELETE, &["projects", &project, "config"]),
            View::Done(format!("project {project} has no MCP config now")),
        ),
    }
}

fn members(c: Members) -> (Request, View) {
    match c {
        Members::List { project } => (Request::get(&["projects", &project, "users"]), View::Table(USER_COLUMNS)),
        Members::Add { project, user } => (
            Request::new(Method::POST, &["projects", &project, "users"]).body(json!({ "user": user })),
            View::Done(format!("{user} is a member of {project}")),
        ),
        Members::Remove { project, user, force } => (
            Request::new(Method::DELETE, &["projects", &project, "users", &user]).query("force", force.then_some(true)),
            View::Done(format!("{user} left {project}")),
        ),
    }
}

fn configs(c: Configs) -> Result<(Request, View), Failure> {
    Ok(match c {
        Configs::List => (Request::get(&["configs"]), View::Table(CONFIG_COLUMNS)),
        Configs::Create { name, description, bare, servers } => {
            let mut body = json!({ "name": name, "tool_naming": if bare { "bare" } else { "prefixed" } });
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            if let Some(file) = servers {
                body["servers"] = read_json(&file)?;
            }
            (Request::new(Method::POST, &["configs"]).body(body), View::Object)
        }
        Configs::Get { config } => (Request::get(&["configs", &config]), View::Object),
        Configs::Delete { config } => {
            (Request::new(Method::DELETE, &["configs", &config]), View::Done(format!("deleted config {config}")))
        }
        Configs::Export { config } => (Request::get(&["configs", &config, "export"]), View::Json),
    })
}

fn servers(c: Servers) -> Result<(Request, View), Failure> {
    Ok(match c {
        Servers::List { config } => (Request::get(&["configs", &config, "servers"]), View::Items(SERVER_COLUMNS)),
        Servers::Add { config, file } => {
            (Request::new(Method::POST, &["configs", &config, "servers"]).body(read_json(&file)?), View::Json)
        }
        Servers::Get { config, server } => (Request::get(&["configs", &config, "servers", &server]), View::Json),
        Servers::Replace { config, server, file } => {
            (Request::new(Method::PUT, &["configs", &config, "servers", &server]).body(read_json(&file)?), View::Json)
        }
        Servers::Remove { config, server } => (
            Request::new(Method::DELETE, &["configs", &config, "servers", &server]),
            View::Done(format!("removed server {server} from {config}")),
        ),
        Servers::Authorize { config, server } => {
            (Request::new(Method::POST, &["configs", &config, "servers", &server, "oauth", "authorize"]), View::Object)
        }
        Servers::OauthStatus { config, server } => {
            (Request::get(&["configs", &config, "servers", &server, "oauth"]), View::Object)
        }
        Servers::ForgetTokens { config, server } => (
            Request::new(Method::DELETE, &["configs", &config, "servers", &server, "oauth"]),
            View::Done(format!("forgot the OAuth tokens of server {server} in {config}")),
        ),
    })
}

fn keys(c: Keys) -> (Request, View) {
    match c {
        Keys::List { project, user } => {
            (Request::get(&["api-keys"]).query("project", project).query("user", user), View::Table(KEY_COLUMNS))
        }
        Keys::Create { project, user, name, expires_at } => (
            Request::new(Method::POST, &["api-keys"])
                .body(json!({ "project": project, "user": user, "name": name, "expires_at": expires_at })),
            View::Secret,
        ),
        Keys::Get { id } => (Request::get(&["api-keys", &id]), View::Object),
        Keys::Rotate { id } => (Request::new(Method::POST, &["api-keys", &id, "rotate"]), View::Secret),
        Keys::Disable { id } => (Request::new(Method::POST, &["api-keys", &id, "disable"]), View::Object),
        Keys::Enable { id } => (Request::new(Method::POST, &["api-keys", &id, "enable"]), View::Object),
        Keys::Delete { id } => {
            (Request::new(Method::DELETE, &["api-keys", &id]), View::Done(format!("deleted key {id}")))
        }
    }
}
