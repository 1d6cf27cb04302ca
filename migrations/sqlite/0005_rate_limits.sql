-- Rate limits on tool calls, as JSON `{"calls_per_minute": N, "burst": B}` (shared::RateLimit);
-- NULL means no limit of that kind.
ALTER TABLE projects ADD COLUMN rate_limit TEXT;
ALTER TABLE api_keys ADD COLUMN rate_limit TEXT;
