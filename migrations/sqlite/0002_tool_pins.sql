-- Tool definitions approved by an admin (rug-pull protection). `definition` is the tool's JSON as
-- the upstream gave it, kept so the admin API can show what changed when a new one appears.
CREATE TABLE tool_pins (
    config_id   TEXT NOT NULL REFERENCES mcp_configs(id) ON DELETE CASCADE,
    server      TEXT NOT NULL,
    tool        TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    definition  TEXT NOT NULL,
    approved_at TEXT NOT NULL,
    PRIMARY KEY (config_id, server, tool)
);
