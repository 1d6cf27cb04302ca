CREATE TABLE observations (
    replica     TEXT COLLATE "C" PRIMARY KEY,
    report      TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
