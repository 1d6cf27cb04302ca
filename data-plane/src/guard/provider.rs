//! Remote guardrail providers.
