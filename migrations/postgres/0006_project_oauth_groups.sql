-- Values of an OAuth access token's group claim whose holders a project admits without a
-- membership of their own (data planes with MCPGW_OAUTH_ISSUER).
CREATE TABLE project_oauth_groups (
    project_id TEXT COLLATE "C" NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    group_name TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (project_id, group_name)
);
