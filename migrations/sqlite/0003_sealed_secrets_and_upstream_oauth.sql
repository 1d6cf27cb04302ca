-- Secrets are kept apart from a server's settings, encrypted (see control-plane secrets.rs): `spec`
-- holds `****` in their place and `sealed` the encrypted JSON of the real values. NULL marks a row
-- written before encryption; it is sealed at the next start.
ALTER TABLE servers ADD COLUMN sealed TEXT;

-- Authorizations started by an admin and not yet completed (authorization code + PKCE). The
-- state is kept only as a SHA-256 hash; the PKCE verifier is encrypted. Single use, short-lived.
CREATE TABLE oauth_authorizations (
    state_hash    TEXT PRIMARY KEY NOT NULL,
    config_id     TEXT NOT NULL,
    server        TEXT NOT NULL,
    verifier      TEXT NOT NULL,
    redirect_uri  TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT NOT NULL,
    FOREIGN KEY (config_id, server) REFERENCES servers(config_id, name) ON DELETE CASCADE ON UPDATE CASCADE
);

-- Upstream tokens obtained with the authorization code grant, encrypted. The control plane renews
-- the access token with the refresh token before it expires.
CREATE TABLE oauth_tokens (
    config_id     TEXT NOT NULL,
    server        TEXT NOT NULL,
    access_token  TEXT NOT NULL,
    refresh_token TEXT,
    expires_at    TEXT,
    scope         TEXT,
    obtained_at   TEXT NOT NULL,
    refreshed_at  TEXT,
    -- Why the last renewal failed; cleared by the next success.
    last_error    TEXT,
    PRIMARY KEY (config_id, server),
    FOREIGN KEY (config_id, server) REFERENCES servers(config_id, name) ON DELETE CASCADE ON UPDATE CASCADE
);
