//! The per-revision routing table: keys, projects and configs indexed from one snapshot, plus the one
//! decision about which upstream tools a config exposes and under which names.
//!
//! A `Catalog` is immutable; a reload builds a new one and swaps it in. Nothing here does I/O.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use guardrails::Policy;
use shared::RateLimit;
use shared::server::{GuardrailPolicy, REMOTE_DETECTORS, ServerSpec};
use shared::snapshot::GuardrailProvider as ProviderSettings;
use shared::snapshot::{IssuedToken, Snapshot, ToolNaming};
use uuid::Uuid;

/// Separator between server and tool in prefixed names (server names never contain it).
pub const NAME_SEPARATOR: &str = "__";
/// Scheme of namespaced resource URIs: `mcpgw://<server>/<upstream uri>`.
pub const RESOURCE_SCHEME: &str = "mcpgw://";

#[derive(Debug)]
pub struct KeyRecord {
    pub id: Arc<str>,
    pub project_id: Uuid,
    pub user_id: Uuid,
    pub hash: Arc<str>,
    pub expires_at: Option<DateTime<Utc>>,
    pub disabled: bool,
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug)]
pub struct ProjectRecord {
    pub id: Uuid,
    pub name: Arc<str>,
    pub config: Option<Arc<ConfigView>>,
    pub rate_limit: Option<RateLimit>,
}

/// One MCP config as the gateway serves it.
#[derive(Debug)]
pub struct ConfigView {
    pub id: Uuid,
    pub name: String,
    pub naming: ToolNaming,
    pub servers: Vec<Arc<ServerSpec>>,
    /// Compiled guardrail policies, by server name.
    guards: HashMap<String, Arc<ServerGuards>>,
    /// Approved tool definitions, by server name.
    pins: HashMap<String, Arc<ServerPins>>,
    /// Allow and deny lists, compiled once per revision, by server name.
    tool_policies: HashMap<String, ToolPolicy>,
}

/// Approved tool definitions of one server: tool name -> fingerprint.
pub type ServerPins = std::collections::BTreeMap<String, String>;

/// A server's input and output policies, compiled once per revision.
#[derive(Debug)]
pub struct ServerGuards {
    pub input: Policy,
    pub output: Policy,
    /// Why a policy could not be compiled; calls to the server are refused (fail closed).
    pub broken: Option<String>,
    /// What the input and output policies ask of the remote provider.
    pub input_remote: RemoteChecks,
    pub output_remote: RemoteChecks,
}

/// The part of a policy a remote provider answers: remote detectors named in `block`, or a named
/// remote policy.
#[derive(Debug, Clone, Default)]
pub struct RemoteChecks {
    pub detectors: Vec<String>,
    pub policy_name: Option<String>,
    pub fail_open: bool,
}

impl RemoteChecks {
    fn of(p: &GuardrailPolicy) -> Self {
        if !p.enabled {
            return RemoteChecks::default();
        }
        let detectors: Vec<String> =
            p.block.iter().filter(|d| REMOTE_DETECTORS.contains(&d.as_str())).cloned().collect();
        // A named policy without remote detectors stays local (imported Python-gateway configs name one).
        let policy_name = p.policy_name.clone().filter(|_| !detectors.is_empty());
        RemoteChecks { detectors, policy_name, fail_open: p.fail_open }
    }

    pub fn is_empty(&self) -> bool {
        self.detectors.is_empty()
    }
}

impl ServerGuards {
    pub fn compile(spec: &ServerSpec) -> Self {
        let input_remote = RemoteChecks::of(&spec.input_guardrails_policy);
        let output_remote = RemoteChecks::of(&spec.output_guardrails_policy);
        match (Policy::new(&spec.input_guardrails_policy), Policy::new(&spec.output_guardrails_policy)) {
            (Ok(input), Ok(output)) => ServerGuards { input, output, broken: None, input_remote, output_remote },
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(server = %spec.server_name, error = %e, "guardrail policy does not compile; refusing calls");
                ServerGuards {
                    input: Policy::off(),
                    output: Policy::off(),
                    broken: Some(e.to_string()),
                    input_remote,
                    output_remote,
                }
            }
        }
    }

    pub fn any_enabled(&self) -> bool {
        self.input.enabled || self.output.enabled
    }
}

/// The remote guardrail provider of a revision (shared across revisions with the same settings).
#[derive(Clone)]
pub struct Remote {
    pub settings: ProviderSettings,
    pub provider: Arc<dyn crate::guard::remote::GuardrailProvider>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({} at {})", self.provider.name(), self.settings.url)
    }
}

#[derive(Debug)]
pub struct Catalog {
    pub revision: u64,
    pub generated_at: Option<DateTime<Utc>>,
    pub tool_cache_ttl: Duration,
    /// The snapshot's remote provider settings, and the provider built from them on install.
    pub provider_settings: Option<ProviderSettings>,
    pub remote: Option<Remote>,
    keys: HashMap<Arc<str>, KeyRecord>,
    projects: HashMap<Uuid, Arc<ProjectRecord>>,
    configs: HashMap<Uuid, Arc<ConfigView>>,
    /// For OAuth sign-in: users by lower-case e-mail, and the projects each user is a member of.
    users_by_email: HashMap<String, Uuid>,
    memberships: HashMap<Uuid, Vec<Uuid>>,
    /// Projects by the OAuth group they admit.
    group_projects: HashMap<String, Vec<Uuid>>,
    /// Upstream access tokens the control plane obtained (authorization code grant).
    pub oauth_tokens: HashMap<(Uuid, String), IssuedToken>,
}

impl Catalog {
    /// The catalog before any snapshot is loaded: no keys, so every request is refused.
    pub fn empty() -> Self {
        Catalog {
            revision: 0,
            generated_at: None,
            tool_cache_ttl: Duration::from_secs(300),
            provider_settings: None,
            remote: None,
            keys: HashMap::new(),
            projects: HashMap::new(),
            configs: HashMap::new(),
            users_by_email: HashMap::new(),
            memberships: HashMap::new(),
            group_projects: HashMap::new(),
            oauth_tokens: HashMap::new(),
        }
    }

    /// Indexes a snapshot that has passed `Snapshot::validate`.
    pub fn build(mut snapshot: Snapshot) -> Self {
        let oauth_tokens = snapshot
            .mcp_configs
            .iter_mut()
            .flat_map(|c| {
                let id = c.id;
                std::mem::take(&mut c.oauth_tokens).into_iter().map(move |t| ((id, t.server.clone()), t))
            })
            .collect();
        let configs: HashMap<Uuid, Arc<ConfigView>> = snapshot
            .mcp_configs
            .into_iter()
            .map(|c| {
                let guards =
                    c.servers.iter().map(|s| (s.server_name.clone(), Arc::new(ServerGuards::compile(s)))).collect();
                let mut pins: HashMap<String, ServerPins> = HashMap::new();
                for pin in c.pins {
                    pins.entry(pin.server).or_default().insert(pin.tool, pin.fingerprint);
                }
                let tool_policies = c.servers.iter().map(|s| (s.server_name.clone(), ToolPolicy::compile(s))).collect();
                let view = ConfigView {
                    id: c.id,
                    name: c.name,
                    naming: c.tool_naming,
                    servers: c.servers.into_iter().map(Arc::new).collect(),
                    guards,
                    pins: pins.into_iter().map(|(server, p)| (server, Arc::new(p))).collect(),
                    tool_policies,
                };
                (c.id, Arc::new(view))
            })
            .collect();
        let mut memberships: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        let mut group_projects: HashMap<String, Vec<Uuid>> = HashMap::new();
        for p in &snapshot.projects {
            for user in &p.members {
                memberships.entry(*user).or_default().push(p.id);
            }
            for group in &p.oauth_groups {
                group_projects.entry(group.clone()).or_default().push(p.id);
            }
        }
        let projects = snapshot
            .projects
            .into_iter()
            .map(|p| {
                let config = p.mcp_config_id.and_then(|id| configs.get(&id).cloned());
                let record = ProjectRecord { id: p.id, name: p.name.into(), config, rate_limit: p.rate_limit };
                (p.id, Arc::new(record))
            })
            .collect();
        let keys = snapshot
            .api_keys
            .into_iter()
            .map(|k| {
                let id: Arc<str> = k.id.into();
                let record = KeyRecord {
                    id: id.clone(),
                    project_id: k.project_id,
                    user_id: k.user_id,
                    hash: k.hash.into(),
                    expires_at: k.expires_at,
                    disabled: k.disabled,
                    rate_limit: k.rate_limit,
                };
                (id, record)
            })
            .collect();
        let users_by_email = snapshot.users.iter().map(|u| (u.email.to_lowercase(), u.id)).collect();
        Catalog {
            revision: snapshot.revision,
            generated_at: Some(snapshot.generated_at),
            tool_cache_ttl: Duration::from_secs(snapshot.settings.tool_cache_ttl_secs),
            provider_settings: snapshot.settings.guardrail_provider,
            remote: None,
            keys,
            projects,
            configs,
            users_by_email,
            memberships,
            group_projects,
            oauth_tokens,
        }
    }

    pub fn key(&self, id: &str) -> Option<&KeyRecord> {
        self.keys.get(id)
    }

    pub fn project(&self, id: Uuid) -> Option<&Arc<ProjectRecord>> {
        self.projects.get(&id)
    }

    pub fn config(&self, id: Uuid) -> Option<&Arc<ConfigView>> {
        self.configs.get(&id)
    }

    /// The user with this e-mail, compared case-insensitively (as the control plane stores them).
    pub fn user_by_email(&self, email: &str) -> Option<Uuid> {
        self.users_by_email.get(&email.to_lowercase()).copied()
    }

    /// The projects `user` is a member of.
    pub fn projects_of(&self, user: Uuid) -> impl Iterator<Item = &Arc<ProjectRecord>> {
        self.memberships.get(&user).into_iter().flatten().filter_map(|id| self.projects.get(id))
    }

    pub fn is_member(&self, user: Uuid, project: Uuid) -> bool {
        self.memberships.get(&user).is_some_and(|p| p.contains(&project))
    }

    /// The projects that admit holders of `group`.
    pub fn projects_admitting(&self, group: &str) -> impl Iterator<Item = &Arc<ProjectRecord>> {
        self.group_projects.get(group).into_iter().flatten().filter_map(|id| self.projects.get(id))
    }

    pub fn admits_group(&self, project: Uuid, group: &str) -> bool {
        self.group_projects.get(group).is_some_and(|p| p.contains(&project))
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

impl ConfigView {
    pub fn server(&self, name: &str) -> Option<&Arc<ServerSpec>> {
        self.servers.iter().find(|s| s.server_name == name)
    }

    /// THE tool policy: whether `server` exposes its upstream tool `tool`. `tools/list` filters with
    /// it and `tools/call` admits with it, so the two never disagree. Names compare exactly (no case
    /// folding, no normalisation): a look-alike name is a different name, and it only passes if it is
    /// itself allowed. A server this config does not have exposes nothing.
    pub fn tool_allowed(&self, server: &str, tool: &str) -> bool {
        self.tool_policies.get(server).is_some_and(|p| p.allows(tool))
    }

    pub fn guards(&self, server: &str) -> Option<&Arc<ServerGuards>> {
        self.guards.get(server)
    }

    /// Approved definitions of `server`'s tools (empty when none are).
    pub fn pins(&self, server: &str) -> Arc<ServerPins> {
        static NONE: std::sync::LazyLock<Arc<ServerPins>> = std::sync::LazyLock::new(Default::default);
        self.pins.get(server).cloned().unwrap_or_else(|| NONE.clone())
    }

    /// Same servers with the same settings and approvals (so what clients see is unchanged).
    pub fn same_as(&self, other: &ConfigView) -> bool {
        self.naming == other.naming && self.servers == other.servers && self.pins == other.pins
    }

    /// The name a client sees for `server`'s upstream name (tool or prompt).
    pub fn exposed_name(&self, server: &str, upstream: &str) -> String {
        match self.naming {
            ToolNaming::Prefixed => format!("{server}{NAME_SEPARATOR}{upstream}"),
            ToolNaming::Bare => upstream.to_string(),
        }
    }

    /// Splits a client-facing prefixed name into (server, upstream name). Exact, case-sensitive
    /// matching: `Everything__echo` is not `everything__echo`.
    /// Which server answers a client-facing tool name, and the upstream name.
    pub fn route_tool<'a>(&'a self, name: &'a str) -> Option<(&'a Arc<ServerSpec>, &'a str)> {
        match self.naming {
            ToolNaming::Prefixed => self.split_prefixed(name),
            ToolNaming::Bare => match self.servers.as_slice() {
                [only] => Some((only, name)),
                many => many.iter().find(|s| s.tools.0.iter().any(|t| t == name)).map(|s| (s, name)),
            },
        }
    }

    pub fn split_prefixed<'a>(&self, exposed: &'a str) -> Option<(&Arc<ServerSpec>, &'a str)> {
        let (server, rest) = exposed.split_once(NAME_SEPARATOR)?;
        Some((self.server(server)?, rest))
    }

    /// The client-facing URI of an upstream resource.
    pub fn exposed_uri(&self, server: &str, uri: &str) -> String {
        match self.naming {
            ToolNaming::Prefixed => format!("{RESOURCE_SCHEME}{server}/{uri}"),
            ToolNaming::Bare => uri.to_string(),
        }
    }

    /// Splits a namespaced resource URI into (server, upstream uri) in prefixed mode.
    pub fn split_uri<'a>(&self, exposed: &'a str) -> Option<(&Arc<ServerSpec>, &'a str)> {
        let rest = exposed.strip_prefix(RESOURCE_SCHEME)?;
        let (server, uri) = rest.split_once('/')?;
        Some((self.server(server)?, uri))
    }
}

/// A server's `tools` allowlist and `denied_tools` globs, ready to match.
#[derive(Debug)]
struct ToolPolicy {
    /// Empty: every tool.
    allow: std::collections::HashSet<String>,
    deny: Vec<Glob>,
}

impl ToolPolicy {
    fn compile(spec: &ServerSpec) -> Self {
        ToolPolicy {
            allow: spec.tools.0.iter().cloned().collect(),
            deny: spec.denied_tools.iter().map(|p| Glob::new(p)).collect(),
        }
    }

    fn allows(&self, tool: &str) -> bool {
        (self.allow.is_empty() || self.allow.contains(tool)) && !self.deny.iter().any(|g| g.matches(tool))
    }
}

/// A compiled glob: `*` matches any run of characters, `?` exactly one; everything else literally
/// (case included). Stored as the pieces between the stars, so matching allocates nothing.
#[derive(Debug)]
pub struct Glob {
    /// The pattern split at `*`; one piece when it has no star. `None` stands for `?`.
    pieces: Vec<Box<[Option<char>]>>,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        let pieces = pattern.split('*').map(|p| p.chars().map(|c| (c != '?').then_some(c)).collect()).collect();
        Glob { pieces }
    }

    /// A URI template (RFC 6570) as a glob: each `{...}` expression matches any run of characters,
    /// everything else literally (`*` and `?` included, as URIs may hold them).
    pub fn uri_template(template: &str) -> Self {
        let mut pieces = Vec::new();
        let mut piece = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            piece.extend(rest[..open].chars().map(Some));
            match rest[open..].find('}') {
                Some(close) => {
                    pieces.push(std::mem::take(&mut piece).into_boxed_slice());
                    rest = &rest[open + close + 1..];
                }
                // An unclosed brace is literal text.
                None => {
                    rest = &rest[open..];
                    break;
                }
            }
        }
        piece.extend(rest.chars().map(Some));
        pieces.push(piece.into_boxed_slice());
        Glob { pieces }
    }

    pub fn matches(&self, text: &str) -> bool {
        let (first, rest) = match self.pieces.split_first() {
            Some(split) => split,
            None => return text.is_empty(),
        };
        let Some((last, middle)) = rest.split_last() else {
            // No star: the one piece is the whole text.
            return strip_piece(first, text).is_some_and(str::is_empty);
        };
        let Some(mut text) = strip_piece(first, text) else { return false };
        // Each middle piece at its leftmost place leaves the most room for the rest.
        for piece in middle {
            match find_piece(piece, text) {
                Some(after) => text = after,
                None => return false,
            }
        }
        // The last piece must end the text, after everything matched so far.
        let start = match last.len() {
            0 => text.len(),
            n => match text.char_indices().rev().nth(n - 1) {
                Some((i, _)) => i,
                None => return false,
            },
        };
        strip_piece(last, &text[start..]).is_some_and(str::is_empty)
    }
}

/// What follows `piece` when `text` starts with it.
fn strip_piece<'a>(piece: &[Option<char>], text: &'a str) -> Option<&'a str> {
    let mut chars = text.chars();
    for want in piece {
        let c = chars.next()?;
        if want.is_some_and(|w| w != c) {
            return None;
        }
    }
    Some(chars.as_str())
}

/// What follows the leftmost occurrence of `piece` in `text`.
fn find_piece<'a>(piece: &[Option<char>], text: &'a str) -> Option<&'a str> {
    let mut rest = text;
    loop {
        if let Some(after) = strip_piece(piece, rest) {
            return Some(after);
        }
        let mut chars = rest.chars();
        chars.next()?;
        rest = chars.as_str();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shared::server::{ServerSpec, ToolList};

    fn spec(allow: &[&str], deny: &[&str]) -> ServerSpec {
        let mut s: ServerSpec = serde_json::from_value(serde_json::json!({
            "server_name": "s", "config": {"type": "stdio", "command": "x"}
        }))
        .unwrap();
        s.tools = ToolList(allow.iter().map(|t| t.to_string()).collect());
        s.denied_tools = deny.iter().map(|t| t.to_string()).collect();
        s
    }

    fn view(servers: Vec<ServerSpec>) -> ConfigView {
        let tool_policies = servers.iter().map(|s| (s.server_name.clone(), ToolPolicy::compile(s))).collect();
        ConfigView {
            id: Uuid::nil(),
            name: "c".into(),
            naming: ToolNaming::Prefixed,
            servers: servers.into_iter().map(Arc::new).collect(),
            guards: HashMap::new(),
            pins: HashMap::new(),
            tool_policies,
        }
    }

    fn glob_matches(pattern: &str, text: &str) -> bool {
        Glob::new(pattern).matches(text)
    }

    /// The matcher the compiled one replaced (backtracking over characters): the reference.
    fn reference(pattern: &str, text: &str) -> bool {
        let p: Vec<char> = pattern.chars().collect();
        let t: Vec<char> = text.chars().collect();
        let (mut pi, mut ti) = (0, 0);
        let mut backtrack: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) && p[pi] != '*' {
                pi += 1;
                ti += 1;
            } else if pi < p.len() && p[pi] == '*' {
                backtrack = Some((pi, ti));
                pi += 1;
            } else if let Some((bp, bt)) = backtrack {
                pi = bp + 1;
                ti = bt + 1;
                backtrack = Some((bp, bt + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|c| *c == '*')
    }

    #[test]
    fn globs() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("delete_*", "delete_file"));
        assert!(!glob_matches("delete_*", "undelete_file"));
        assert!(glob_matches("*_admin_*", "x_admin_y"));
        assert!(glob_matches("a?c", "abc"));
        assert!(!glob_matches("a?c", "ac"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "Exact"));
        assert!(glob_matches("", ""));
        assert!(!glob_matches("", "a"));
        assert!(glob_matches("a*a", "aa"));
        assert!(!glob_matches("a*a", "a"));
        assert!(glob_matches("?é*", "xé"));
        assert!(glob_matches("*?", "é"));
        assert!(!glob_matches("*??", "é"));
        assert!(glob_matches("**x**", "x"));
    }

    #[test]
    fn uri_templates_match_their_uris() {
        let t = Glob::uri_template("test://template/{id}/data");
        assert!(t.matches("test://template/42/data"));
        assert!(!t.matches("test://template/42/other"));
        assert!(!t.matches("fixture://items/42"));
        // `?` and `*` in a template are literal.
        let q = Glob::uri_template("file:///{path}?v={v}");
        assert!(q.matches("file:///a/b?v=1"));
        assert!(!q.matches("file:///a/bXv=1"));
        assert!(Glob::uri_template("a*b").matches("a*b") && !Glob::uri_template("a*b").matches("axb"));
        assert!(Glob::uri_template("x://{a}{b}").matches("x://"));
        assert!(Glob::uri_template("x://{open").matches("x://{open"));
        assert!(!Glob::uri_template("x://{open").matches("x://y"));
    }

    proptest! {
        // Small alphabets, so stars, marks and letters meet often.
        #[test]
        fn compiled_globs_match_like_the_reference(pattern in "[ab*?é]{0,8}", text in "[abé]{0,10}") {
            prop_assert_eq!(glob_matches(&pattern, &text), reference(&pattern, &text));
        }
    }

    #[test]
    fn allowlist_then_denylist_exact_names() {
        let config = view(vec![spec(&[], &["rm*"])]);
        assert!(config.tool_allowed("s", "echo"));
        assert!(!config.tool_allowed("s", "rmdir"));
        let config = view(vec![spec(&["echo", "add"], &["add"])]);
        assert!(config.tool_allowed("s", "echo"));
        assert!(!config.tool_allowed("s", "add"));
        assert!(!config.tool_allowed("s", "Echo"));
        assert!(!config.tool_allowed("s", "echo "));
        // Cyrillic "е" in place of Latin "e".
        assert!(!config.tool_allowed("s", "\u{0435}cho"));
        assert!(!config.tool_allowed("s", "other"));
        // A server the config does not have exposes nothing.
        assert!(!config.tool_allowed("t", "echo"));
    }

    #[test]
    fn the_policy_is_compiled_once_not_per_call() {
        let config = view(vec![spec(&[], &["delete_*", "*_admin_*", "e?ho", "rm*", "drop"])]);
        let before = alloc_count::allocations();
        for tool in ["echo", "delete_all", "x_admin_y", "list_files", "rmdir", "drop", "undrop"] {
            std::hint::black_box(config.tool_allowed("s", tool));
        }
        assert_eq!(alloc_count::allocations() - before, 0, "deciding a call allocated");
    }

    #[test]
    fn names_split_at_the_first_separator() {
        let view = view(vec![spec(&[], &[])]);
        assert_eq!(view.exposed_name("s", "a__b"), "s__a__b");
        let (server, tool) = view.split_prefixed("s__a__b").unwrap();
        assert_eq!((server.server_name.as_str(), tool), ("s", "a__b"));
        assert!(view.split_prefixed("S__a").is_none());
        assert!(view.split_prefixed("s_a").is_none());
        let uri = view.exposed_uri("s", "file:///x/y");
        assert_eq!(uri, "mcpgw://s/file:///x/y");
        assert_eq!(view.split_uri(&uri).unwrap().1, "file:///x/y");
    }
}

/// Counts this thread's heap allocations, for tests that show a path allocates nothing.
#[cfg(test)]
mod alloc_count {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static COUNT: Cell<usize> = const { Cell::new(0) };
    }

    struct Counting;

    // SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
            // SAFETY: the caller's contract is passed on.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract is passed on.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    pub fn allocations() -> usize {
        COUNT.with(Cell::get)
    }
}
