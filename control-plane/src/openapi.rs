//! The OpenAPI document, generated from the handlers' annotations. The committed top-level
//! `openapi.json` must equal [`document_json`]; a test enforces it.

use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::api::{api_keys, audit, configs, data_plane, import, oauth, pins, projects, state, system, users};
use crate::error::{ErrorBody, ErrorDetail};
use crate::publish::PublishStatus;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mcpgw admin API",
        description = "Manage users, projects, MCP configs and API keys of the mcpgw MCP gateway. \
            Every route but /health, /oauth/callback and /api/v1/data-plane/* needs the admin key: `Authorization: Bearer <admin key>` \
            or the header `apikey: <admin key>` (HTTP Basic with the key as password opens this page only). \
            Request bodies are `Content-Type: application/json`. Requests from web pages of other sites \
            (`Origin`, `Sec-Fetch-Site`) are refused with 403. \
            The /api/v1/data-plane/* routes take only a data-plane token (`MCPGW_DATA_PLANE_TOKEN`). \
            Errors are `{\"error\": {\"code\", \"message\"}}`.",
        license(name = "Apache-2.0")
    ),
    paths(
        system::health, system::system_health, system::snapshot_status, system::rotate_admin_key, audit::list_audit,
        users::create_user, users::list_users, users::get_user, users::update_user, users::delete_user, users::user_projects,
        projects::create_project, projects::list_projects, projects::get_project, projects::update_project,
        projects::delete_project, projects::list_members, projects::add_member, projects::remove_member,
        projects::assign_config, projects::unassign_config, projects::get_project_config,
        projects::get_oauth_groups, projects::set_oauth_groups,
        configs::create_config, configs::list_configs, configs::get_config, configs::update_config, configs::delete_config,
        configs::copy_config, configs::list_servers, configs::add_server, configs::get_server, configs::replace_server,
        configs::delete_server, pins::review_pins, pins::approve_pin, pins::revoke_pin,
        api_keys::create_key, api_keys::list_keys, api_keys::get_key, api_keys::update_key, api_keys::delete_key,
        api_keys::rotate_key, api_keys::disable_key, api_keys::enable_key, import::import, import::export_config,
        oauth::authorize, oauth::oauth_status, oauth::forget_tokens, oauth::callback,
        state::plan, state::apply, state::export, state::document_schema,
        data_plane::snapshot, data_plane::observations,
    ),
    components(schemas(ErrorBody, ErrorDetail, PublishStatus)),
    modifiers(&Security),
    security(("bearer" = []), ("apikey" = [])),
    tags(
        (name = "users", description = "People who hold API keys"),
        (name = "projects", description = "Teams: members, MCP config assignment"),
        (name = "configs", description = "MCP configs: lists of upstream MCP servers"),
        (name = "servers", description = "Upstream MCP servers inside a config"),
        (name = "pins", description = "Approved tool definitions (rug-pull protection) and changes awaiting review"),
        (name = "api-keys", description = "Client keys for the MCP gateway (secrets shown once)"),
        (name = "system", description = "Health, snapshot publishing, admin key, the audit log of changes, import of a Python gateway config"),
        (name = "state", description = "Declarative state: plan and apply one document of users, configs, projects, members and keys"),
        (name = "data-plane", description = "What data planes on other hosts use, with a data-plane token: the snapshot, their reports"),
    )
)]
pub struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).description(Some("The admin API key")).build(),
            ),
        );
        components.add_security_scheme("apikey", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("apikey"))));
        components.add_security_scheme(
            "data_plane_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A data-plane token (MCPGW_DATA_PLANE_TOKEN)"))
                    .build(),
            ),
        );
    }
}

pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The document as committed in `openapi.json` (pretty, with a trailing newline).
pub fn document_json() -> String {
    let mut s = document().to_pretty_json().unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_openapi_json_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.json");
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == super::document_json(),
            "openapi.json is stale; regenerate it with `cargo run -p mcpgw --bin control-plane -- openapi > openapi.json`"
        );
    }
}
