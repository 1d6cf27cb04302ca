//! Detection and false-positive rates of the built-in scanners over kept corpora (tests/corpus/):
//! the real tool definitions of the MCP reference servers (and other common ones) and poisoned
//! definitions, plain and hidden behind look-alike letters, full-width forms, encodings and invisible
//! characters; attack arguments in several disguises and languages, and clean arguments (code, SQL,
//! paths, URLs, prose in several languages, shell commands). Every entry goes through the same call
//! the data plane makes. The README quotes the rates this prints
//! (`cargo test -p guardrails --test corpus -- --nocapture`).

use guardrails::Policy;
use serde_json::{Value, json};

fn corpus(name: &str) -> Vec<Value> {
    let path = format!("{}/tests/corpus/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("corpus file")).expect("corpus JSON")
}

fn rate(hits: usize, total: usize) -> f64 {
    100.0 * hits as f64 / total as f64
}

#[test]
fn tool_poisoning_is_caught_and_real_tools_stay_clean() {
    let clean = corpus("clean_tools.json");
    let flagged: Vec<String> = clean
        .iter()
        .filter_map(|t| {
            let found = guardrails::integrity::scan_tool(&t["tool"]);
            (!found.is_empty()).then(|| format!("{} {}: {found:?}", t["server"], t["tool"]["name"]))
        })
        .collect();
    let poisoned = corpus("poisoned_tools.json");
    let missed: Vec<String> = poisoned
        .iter()
        .filter(|p| guardrails::integrity::scan_tool(&p["tool"]).is_empty())
        .map(|p| format!("{} ({}): {}", p["case"], p["variant"], p["tool"]))
        .collect();
    let detection = rate(poisoned.len() - missed.len(), poisoned.len());
    let false_positives = rate(flagged.len(), clean.len());
    println!(
        "tool poisoning: {}/{} poisoned caught ({detection:.1}%), {}/{} real definitions flagged ({false_positives:.1}%)",
        poisoned.len() - missed.len(),
        poisoned.len(),
        flagged.len(),
        clean.len()
    );
    assert!(detection >= 95.0, "detection {detection:.1}%; missed:\n{}", missed.join("\n"));
    assert!(false_positives <= 1.0, "false positives {false_positives:.1}%:\n{}", flagged.join("\n"));
}

#[test]
fn injection_attacks_are_blocked_and_clean_arguments_pass() {
    let policy =
        Policy::new(&serde_json::from_value(json!({"enabled": true, "block": ["injection_attack"]})).expect("policy"))
            .expect("policy");
    let blocked = |text: &str| !policy.scan_value(&json!({"input": text})).blocking(&policy).is_empty();
    let attacks = corpus("injection_attacks.json");
    let missed: Vec<String> = attacks
        .iter()
        .filter(|a| !blocked(a["text"].as_str().unwrap_or_default()))
        .map(|a| format!("{} ({})", a["text"], a["variant"]))
        .collect();
    let clean = corpus("clean_arguments.json");
    let flagged: Vec<String> = clean
        .iter()
        .filter_map(Value::as_str)
        .filter(|t| blocked(t))
        .map(|t| format!("{t}: {:?}", policy.scan_value(&json!({"input": t})).blocking(&policy)))
        .collect();
    let detection = rate(attacks.len() - missed.len(), attacks.len());
    let false_positives = rate(flagged.len(), clean.len());
    println!(
        "injection_attack: {}/{} attacks blocked ({detection:.1}%), {}/{} clean arguments blocked ({false_positives:.1}%)",
        attacks.len() - missed.len(),
        attacks.len(),
        flagged.len(),
        clean.len()
    );
    assert!(detection >= 95.0, "detection {detection:.1}%; missed:\n{}", missed.join("\n"));
    assert!(false_positives <= 1.0, "false positives {false_positives:.1}%:\n{}", flagged.join("\n"));
}
