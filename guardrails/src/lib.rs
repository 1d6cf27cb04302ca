//! mcpgw guardrails: local detectors that run in microseconds without any network, PII redaction with
//! restore, and tool-integrity checks (poisoning scan and definition fingerprints for pinning).
//!
//! Pure functions over text and JSON: no I/O, no async. The data plane decides when to run them and
//! what a finding means for a call (see `Policy`).

pub mod detectors;
pub mod integrity;
pub mod normalize;
pub mod policy;
pub mod redact;

pub use detectors::Finding;
pub use policy::{Policy, PolicyError, Verdict};
pub use redact::Redactions;
