-- mcpgw control plane schema. Times are RFC 3339 UTC strings; ids are UUIDs, api key ids are public tokens.

CREATE TABLE users (
    id          TEXT PRIMARY KEY NOT NULL,
    email       TEXT NOT NULL UNIQUE COLLATE NOCASE,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE mcp_configs (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    tool_naming TEXT NOT NULL DEFAULT 'prefixed' CHECK (tool_naming IN ('prefixed', 'bare')),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- One row per upstream server; `spec` is the validated JSON of shared::ServerSpec.
CREATE TABLE servers (
    config_id   TEXT NOT NULL REFERENCES mcp_configs(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    position    INTEGER NOT NULL,
    spec        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (config_id, name)
);

CREATE TABLE projects (
    id            TEXT PRIMARY KEY NOT NULL,
    name          TEXT NOT NULL UNIQUE,
    description   TEXT NOT NULL DEFAULT '',
    mcp_config_id TEXT REFERENCES mcp_configs(id) ON DELETE RESTRICT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

CREATE TABLE project_members (
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    added_at   TEXT NOT NULL,
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX project_members_user ON project_members(user_id);

-- A key exists only while its user is a member of its project.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY NOT NULL,
    project_id  TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    name        TEXT,
    hash        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    disabled    INTEGER NOT NULL DEFAULT 0,
    disabled_at TEXT,
    rotated_at  TEXT,
    FOREIGN KEY (project_id, user_id) REFERENCES project_members(project_id, user_id) ON DELETE RESTRICT
);
CREATE INDEX api_keys_project ON api_keys(project_id);
CREATE INDEX api_keys_user ON api_keys(user_id);

-- Singleton rows: config revision and admin key hash.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('revision', '0');

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    revision    INTEGER NOT NULL
);
