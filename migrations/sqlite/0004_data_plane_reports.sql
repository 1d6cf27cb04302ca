-- Tool definitions reported over the network by data planes that pull the snapshot (one row per
-- replica, the whole report as JSON); data planes next to the database write files instead.
CREATE TABLE observations (
    replica     TEXT PRIMARY KEY NOT NULL,
    report      TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
-- Case-insensitive e-mail lookups are written as lower(email) on every database.
CREATE INDEX users_email_lower ON users(lower(email));
