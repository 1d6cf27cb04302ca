//! PII redaction with restore: PII in a call's arguments becomes stable placeholders before the
//! upstream sees it; placeholders in the result become the original values again for the client.
//! The mapping lives only as long as one call.

use std::collections::HashMap;

use serde_json::Value;

use crate::detectors::pii_spans;

/// Most redaction passes over one text.
const ROUNDS: usize = 4;

#[derive(Debug, Default)]
pub struct Redactions {
    /// placeholder -> original
    originals: HashMap<String, String>,
    /// original -> placeholder (the same value always gets the same placeholder)
    placeholders: HashMap<String, String>,
    counters: HashMap<&'static str, usize>,
    /// Values left alone (for output redaction: the PII the client itself sent).
    keep: std::collections::HashSet<String>,
}

impl Redactions {
    /// Redactions that leave the PII found in `sent` alone: output redaction hides what the
    /// upstream added, not what the client asked about.
    pub fn keeping_pii_of(sent: &Value) -> Self {
        let mut keep = std::collections::HashSet::new();
        crate::integrity::for_each_string(sent, &mut |s| {
            for (start, end, _) in pii_spans(s) {
                keep.insert(s[start..end].to_string());
            }
        });
        Redactions { keep, ..Default::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.originals.is_empty()
    }

    pub fn len(&self) -> usize {
        self.originals.len()
    }

    /// Replaces PII in `text`; returns `None` when there was none.
    pub fn redact_text(&mut self, text: &str) -> Option<String> {
        // Taking one match out can expose another (greedy patterns over numbers that run together):
        // repeat until the detector finds nothing, a few rounds at most.
        let mut current: Option<String> = None;
        for _ in 0..ROUNDS {
            match self.redact_once(current.as_deref().unwrap_or(text)) {
                Some(next) => current = Some(next),
                None => break,
            }
        }
        current
    }

    fn redact_once(&mut self, text: &str) -> Option<String> {
        let spans = pii_spans(text);
        if spans.is_empty() {
            return None;
        }
        let spans: Vec<_> = spans.into_iter().filter(|(s, e, _)| !self.keep.contains(&text[*s..*e])).collect();
        if spans.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end, kind) in spans {
            out.push_str(&text[at..start]);
            out.push_str(&self.placeholder(&text[start..end], kind));
            at = end;
        }
        out.push_str(&text[at..]);
        Some(out)
    }

    fn placeholder(&mut self, original: &str, kind: &'static str) -> String {
        if let Some(p) = self.placeholders.get(original) {
            return p.clone();
        }
        let n = self.counters.entry(kind).or_default();
        *n += 1;
        let placeholder = format!("[{}_{}]", kind.to_ascii_uppercase(), n);
        self.placeholders.insert(original.to_string(), placeholder.clone());
        self.originals.insert(placeholder.clone(), original.to_string());
        placeholder
    }

    /// Redacts every string (keys and values) in `value`, in place. Returns how many strings changed.
    pub fn redact_value(&mut self, value: &mut Value) -> usize {
        match value {
            Value::String(s) => match self.redact_text(s) {
                Some(r) => {
                    *s = r;
                    1
                }
                None => 0,
            },
            Value::Array(items) => items.iter_mut().map(|v| self.redact_value(v)).sum(),
            Value::Object(map) => {
                let mut changed = 0;
                let entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
                for (k, mut v) in entries {
                    changed += self.redact_value(&mut v);
                    let key = match self.redact_text(&k) {
                        Some(r) => {
                            changed += 1;
                            r
                        }
                        None => k,
                    };
                    map.insert(key, v);
                }
                changed
            }
            _ => 0,
        }
    }

    /// Puts the original values back wherever a placeholder appears in `text`.
    pub fn restore_text(&self, text: &str) -> Option<String> {
        if self.originals.is_empty() || !text.contains('[') {
            return None;
        }
        let mut out = text.to_string();
        let mut changed = false;
        // A later round's original may hold an earlier round's placeholder: unwrap until stable.
        for _ in 0..=ROUNDS {
            let mut round = false;
            for (placeholder, original) in &self.originals {
                if out.contains(placeholder.as_str()) {
                    out = out.replace(placeholder.as_str(), original);
                    round = true;
                }
            }
            changed |= round;
            if !round {
                break;
            }
        }
        changed.then_some(out)
    }

    pub fn restore_value(&self, value: &mut Value) {
        match value {
            Value::String(s) => {
                if let Some(r) = self.restore_text(s) {
                    *s = r;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.restore_value(v)),
            Value::Object(map) => {
                let entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
                for (k, mut v) in entries {
                    self.restore_value(&mut v);
                    map.insert(self.restore_text(&k).unwrap_or(k), v);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn numbers_that_run_together_are_all_redacted_and_restored() {
        // Found by the property tests: greedy card matching swallowed a neighbour, and taking one
        // match out exposed another.
        for text in ["4111 1111 1111 1111 123-45-6789", "+1 415 555 0100123-45-6789123-45-6789; rm -rf /"] {
            let mut r = super::Redactions::default();
            let redacted = r.redact_text(text).unwrap();
            assert!(crate::detectors::pii_spans(&redacted).is_empty(), "{redacted}");
            assert_eq!(r.restore_text(&redacted).unwrap(), text);
        }
        let mut r = super::Redactions::default();
        assert_eq!(r.redact_text("4111 1111 1111 1111 123-45-6789").unwrap(), "[PAYMENT_CARD_1] [US_SSN_1]");
    }

    #[test]
    fn redacts_stably_and_restores() {
        let mut r = super::Redactions::default();
        let mut args = json!({
            "to": "jane@example.com",
            "cc": ["jane@example.com", "bob@example.org"],
            "body": "Card 4111 1111 1111 1111, call +1 415-555-0134",
            "jane@example.com": "a key that is PII"
        });
        assert!(r.redact_value(&mut args) >= 4);
        let text = args.to_string();
        assert!(!text.contains("example.com") && !text.contains("4111") && !text.contains("415-555"), "{text}");
        assert_eq!(args["to"], "[EMAIL_1]");
        assert_eq!(args["cc"][0], "[EMAIL_1]", "same value, same placeholder");
        assert_eq!(args["cc"][1], "[EMAIL_2]");
        assert!(args.get("[EMAIL_1]").is_some());

        let mut result = json!({"text": "Sent to [EMAIL_1] and [EMAIL_2]; card [PAYMENT_CARD_1]."});
        r.restore_value(&mut result);
        assert_eq!(result["text"], "Sent to jane@example.com and bob@example.org; card 4111 1111 1111 1111.");
        assert_eq!(r.restore_text("nothing here"), None);
    }

    #[test]
    fn output_redaction_keeps_what_the_client_sent() {
        let mut r = super::Redactions::keeping_pii_of(&json!({"q": "who is jane@example.com?"}));
        let out = r.redact_text("jane@example.com works with bob@example.org").unwrap();
        assert_eq!(out, "jane@example.com works with [EMAIL_1]");
    }
}
