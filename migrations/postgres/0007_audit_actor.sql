-- Who made each change (the admin key, an OAuth callback, the control plane itself), and an index
-- for reading the audit log by time and for deleting rows past the retention.
ALTER TABLE audit_log ADD COLUMN actor TEXT NOT NULL DEFAULT 'admin';
CREATE INDEX audit_log_at ON audit_log(at);
