-- mcpgw control plane schema for PostgreSQL: the same tables as the SQLite schema, in the same
-- types (times are RFC 3339 UTC strings, flags 0/1 integers) so that one set of queries serves both.
-- Text that is compared or sorted uses the "C" collation, which orders like SQLite.

CREATE TABLE users (
    id          TEXT COLLATE "C" PRIMARY KEY,
    email       TEXT COLLATE "C" NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE UNIQUE INDEX users_email_lower ON users(lower(email));

CREATE TABLE mcp_configs (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    tool_naming TEXT NOT NULL DEFAULT 'prefixed' CHECK (tool_naming IN ('prefixed', 'bare')),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE servers (
    config_id   TEXT COLLATE "C" NOT NULL REFERENCES mcp_configs(id) ON DELETE CASCADE,
    name        TEXT COLLATE "C" NOT NULL,
    position    BIGINT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (config_id, name)
);

CREATE TABLE projects (
    id            TEXT COLLATE "C" PRIMARY KEY,
    name          TEXT COLLATE "C" NOT NULL UNIQUE,
    description   TEXT NOT NULL DEFAULT '',
    mcp_config_id TEXT COLLATE "C" REFERENCES mcp_configs(id) ON DELETE RESTRICT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

CREATE TABLE project_members (
    project_id TEXT COLLATE "C" NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    user_id    TEXT COLLATE "C" NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    added_at   TEXT NOT NULL,
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX project_members_user ON project_members(user_id);

CREATE TABLE api_keys (
    id          TEXT COLLATE "C" PRIMARY KEY,
    project_id  TEXT COLLATE "C" NOT NULL,
    user_id     TEXT COLLATE "C" NOT NULL,
    name        TEXT,
    hash        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    disabled    BIGINT NOT NULL DEFAULT 0,
    disabled_at TEXT,
    rotated_at  TEXT,
    FOREIGN KEY (project_id, user_id) REFERENCES project_members(project_id, user_id) ON DELETE RESTRICT
);
CREATE INDEX api_keys_project ON api_keys(project_id);
CREATE INDEX api_keys_user ON api_keys(user_id);

CREATE TABLE meta (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO meta (key, value) VALUES ('revision', '0');

CREATE TABLE audit_log (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource    TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    revision    BIGINT NOT NULL
);
