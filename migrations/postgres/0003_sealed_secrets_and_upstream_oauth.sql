ALTER TABLE servers ADD COLUMN sealed TEXT;

CREATE TABLE oauth_authorizations (
    state_hash    TEXT COLLATE "C" PRIMARY KEY,
    config_id     TEXT COLLATE "C" NOT NULL,
    server        TEXT COLLATE "C" NOT NULL,
    verifier      TEXT NOT NULL,
    redirect_uri  TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    FOREIGN KEY (config_id, server) REFERENCES servers(config_id, name) ON DELETE CASCADE ON UPDATE CASCADE
);

CREATE TABLE oauth_tokens (
    config_id     TEXT COLLATE "C" NOT NULL,
    server        TEXT COLLATE "C" NOT NULL,
    access_token  TEXT NOT NULL,
    refresh_token TEXT,
    expires_at    TEXT,
    scope         TEXT,
    obtained_at   TEXT NOT NULL,
    refreshed_at  TEXT,
    last_error    TEXT,
    PRIMARY KEY (config_id, server),
    FOREIGN KEY (config_id, server) REFERENCES servers(config_id, name) ON DELETE CASCADE ON UPDATE CASCADE
);
