//! The guardrail scanners: no text makes a detector panic, and redaction restores exactly.
#![no_main]

use std::sync::LazyLock;

use guardrails::{Policy, Redactions, Verdict};
use libfuzzer_sys::fuzz_target;

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    let p = serde_json::from_str(
        r#"{"enabled": true, "block": ["injection_attack", "pii", "keyword_detector", "sponge_attack"],
            "additional_config": {"keywords": ["falcon"], "patterns": ["(?i)internal-\\d+"]}}"#,
    )
    .expect("policy");
    Policy::new(&p).expect("compiles")
});

fuzz_target!(|text: &str| {
    let mut verdict = Verdict::default();
    POLICY.scan_text(text, &mut verdict);
    let mut findings = Vec::new();
    guardrails::integrity::scan_text(text, &mut findings);
    // Texts holding placeholder-like brackets are out of scope for exact restore.
    if !text.contains('[') {
        let mut redactions = Redactions::default();
        if let Some(redacted) = redactions.redact_text(text) {
            assert!(guardrails::detectors::pii_spans(&redacted).is_empty());
            assert_eq!(redactions.restore_text(&redacted).as_deref(), Some(text));
        }
    }
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        let _ = POLICY.scan_value(&value);
        let _ = guardrails::integrity::scan_tool(&value);
    }
});
