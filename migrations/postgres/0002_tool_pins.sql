CREATE TABLE tool_pins (
    config_id   TEXT COLLATE "C" NOT NULL REFERENCES mcp_configs(id) ON DELETE CASCADE,
    server      TEXT COLLATE "C" NOT NULL,
    tool        TEXT COLLATE "C" NOT NULL,
    fingerprint TEXT NOT NULL,
    definition  TEXT NOT NULL,
    approved_at TEXT NOT NULL,
    PRIMARY KEY (config_id, server, tool)
);
