//! mcpgw guardrails.
