//! The built-in detectors. Each reports *what* it found (detector and kind), never the text itself,
//! so findings can be logged and returned to clients safely.

mod injection;
pub mod ssrf;

use std::sync::LazyLock;

use regex::{Regex, RegexSet};

pub const INJECTION: &str = "injection_attack";
pub const PII: &str = "pii";
pub const KEYWORD: &str = "keyword_detector";
pub const SPONGE: &str = "sponge_attack";

/// One detector hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Finding {
    pub detector: &'static str,
    pub kind: &'static str,
}

pub use injection::scan_injection;
pub(crate) use injection::{scan_compact as scan_injection_compact, scan_form as scan_injection_form};
pub use ssrf::ssrf_target;

/// (kind, pattern) pairs compiled into one `RegexSet` for a single pass over the text.
pub(crate) struct PatternFamily {
    kinds: Vec<&'static str>,
    set: RegexSet,
}

impl PatternFamily {
    pub(crate) fn new(patterns: &[(&'static str, &str)]) -> Self {
        let set = RegexSet::new(patterns.iter().map(|(_, p)| *p)).expect("built-in patterns compile");
        PatternFamily { kinds: patterns.iter().map(|(k, _)| *k).collect(), set }
    }

    pub(crate) fn scan(&self, detector: &'static str, text: &str, out: &mut Vec<Finding>) {
        for i in self.set.matches(text).iter() {
            out.push(Finding { detector, kind: self.kinds[i] });
        }
    }
}

/// Candidate PII, classified; payment cards and IBANs are confirmed by their checksums.
pub(crate) struct PiiPattern {
    pub kind: &'static str,
    pub regex: Regex,
    pub check: fn(&str) -> bool,
}

fn always(_: &str) -> bool {
    true
}

pub(crate) static PII_PATTERNS: LazyLock<Vec<PiiPattern>> = LazyLock::new(|| {
    let p = |kind, re: &str, check: fn(&str) -> bool| PiiPattern {
        kind,
        regex: Regex::new(re).expect("pii pattern"),
        check,
    };
    vec![
        p(
            "private_key",
            r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----[\s\S]*?(?:-----END (?:[A-Z]+ )*PRIVATE KEY-----|$)",
            always,
        ),
        p("jwt", r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}", always),
        p("aws_access_key", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b", always),
        p("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})\b", always),
        p("slack_token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}", always),
        p("stripe_key", r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}\b", always),
        p("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}\b", always),
        p("mcpgw_key", r"\bmcpgw_[a-z0-9]{16}_[A-Za-z0-9]{40}\b", always),
        p(
            "secret_assignment",
            r#"(?i)\b(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|client[_-]?secret)\b\s*[:=]\s*['"]?[^\s'",;]{8,}"#,
            high_entropy_assignment,
        ),
        p("email", r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b", always),
        p("payment_card", r"\b(?:\d[ -]?){12,18}\d\b", luhn_valid),
        p("iban", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b", iban_valid),
        p(
            "us_ssn",
            r"\b(?:00[1-9]|0[1-9]\d|[1-5]\d{2}|6[0-57-9]\d|66[0-57-9]|7[0-6]\d|77[0-2])-(?:0[1-9]|[1-9]\d)-(?:000[1-9]|00[1-9]\d|0[1-9]\d{2}|[1-9]\d{3})\b",
            always,
        ),
        // North American 3-3-4 groups, or any grouping after an international `+` prefix.
        p(
            "phone",
            r"(?:^|[^\w-])(?:(?:\+1[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]\d{3}[ .-]\d{4}|\+\d{1,3}(?:[ .-]\d{1,4}){2,4})\b",
            phone_like,
        ),
        p("ip_address", r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b", always),
        p(
            "ip_address",
            r"(?i)\b(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}\b|\b(?:[0-9a-f]{1,4}:){1,7}:(?:[0-9a-f]{1,4}:){0,6}[0-9a-f]{1,4}\b",
            always,
        ),
    ]
});

static PII_PREFILTER: LazyLock<RegexSet> =
    LazyLock::new(|| RegexSet::new(PII_PATTERNS.iter().map(|p| p.regex.as_str())).expect("pii prefilter"));

/// Luhn checksum over the digits of `s` (13-19 digits).
pub fn luhn_valid(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|d| *d == digits[0]) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { *d })
        .sum();
    sum.is_multiple_of(10)
}

/// ISO 13616 mod-97 check.
pub fn iban_valid(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !(15..=34).contains(&compact.len()) {
        return false;
    }
    let (head, tail) = compact.split_at(4);
    let mut remainder: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let value = match c.to_digit(36) {
            Some(v) => v,
            None => return false,
        };
        for d in value.to_string().chars() {
            remainder = (remainder * 10 + d.to_digit(10).unwrap_or(0)) % 97;
        }
    }
    remainder == 1
}

/// A phone number has 9-15 digits and is not a date or a version string.
fn phone_like(s: &str) -> bool {
    let digits = s.chars().filter(char::is_ascii_digit).count();
    (9..=15).contains(&digits)
}

/// `password = hunter2hunter2` is a secret when the value looks random enough.
fn high_entropy_assignment(s: &str) -> bool {
    let value = s.rsplit(['=', ':']).next().unwrap_or("").trim().trim_matches(['\'', '"']);
    value.len() >= 8 && shannon_entropy(value) >= 3.0
}

pub fn shannon_entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let len = s.len() as f64;
    counts.iter().filter(|c| **c > 0).map(|c| f64::from(*c) / len).map(|p| -p * p.log2()).sum()
}

/// Spans of PII in `text`: (start, end, kind), non-overlapping, in order.
pub fn pii_spans(text: &str) -> Vec<(usize, usize, &'static str)> {
    let candidates = PII_PREFILTER.matches(text);
    if !candidates.matched_any() {
        return Vec::new();
    }
    let mut spans: Vec<(usize, usize, &'static str)> = Vec::new();
    for i in candidates.iter() {
        let pattern = &PII_PATTERNS[i];
        for m in pattern.regex.find_iter(text) {
            let (mut start, end) = (m.start(), m.end());
            // The phone pattern starts at the boundary character; keep it out of the span.
            while pattern.kind == "phone"
                && start < end
                && !text[start..].starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '(')
            {
                start += text[start..].chars().next().map_or(1, char::len_utf8);
            }
            if start >= end {
                continue;
            }
            let span = if (pattern.check)(&text[start..end]) {
                Some((start, end))
            } else if pattern.kind == "payment_card" || pattern.kind == "iban" {
                // Greedy matching can swallow a neighbouring number ("<card> 123-45-6789"): look
                // for the longest group-aligned part that passes the checksum.
                best_part(text, start, end, pattern.check)
            } else {
                None
            };
            if let Some((start, end)) = span
                && !spans.iter().any(|(s, e, _)| start < *e && *s < end)
            {
                spans.push((start, end, pattern.kind));
            }
        }
    }
    spans.sort_unstable();
    spans
}

/// The longest part of `text[start..end]` cut at separators (space or `-`) that passes `check`.
fn best_part(text: &str, start: usize, end: usize, check: fn(&str) -> bool) -> Option<(usize, usize)> {
    let seps: Vec<usize> = text[start..end].match_indices([' ', '-']).map(|(i, _)| start + i).collect();
    let starts = std::iter::once(start).chain(seps.iter().map(|i| i + 1));
    let mut parts: Vec<(usize, usize)> = starts
        .flat_map(|s| seps.iter().copied().chain(std::iter::once(end)).filter(move |e| *e > s).map(move |e| (s, e)))
        .filter(|&(s, e)| (s, e) != (start, end))
        .collect();
    parts.sort_by_key(|&(s, e)| (std::cmp::Reverse(e - s), s));
    parts.into_iter().find(|&(s, e)| check(&text[s..e]))
}

pub fn scan_pii(text: &str, out: &mut Vec<Finding>) {
    for (_, _, kind) in pii_spans(text) {
        out.push(Finding { detector: PII, kind });
    }
}

/// Limits of the sponge detector (resource-exhaustion inputs).
#[derive(Debug, Clone, Copy)]
pub struct SpongeLimits {
    pub max_text_bytes: usize,
    pub max_char_run: usize,
    pub max_json_depth: usize,
}

impl Default for SpongeLimits {
    fn default() -> Self {
        SpongeLimits { max_text_bytes: 100_000, max_char_run: 1_000, max_json_depth: 32 }
    }
}

pub fn scan_sponge(text: &str, limits: &SpongeLimits, out: &mut Vec<Finding>) {
    if text.len() > limits.max_text_bytes {
        out.push(Finding { detector: SPONGE, kind: "oversize_text" });
    }
    if longest_run(text) > limits.max_char_run || repeated_words(text) {
        out.push(Finding { detector: SPONGE, kind: "repetition" });
    }
}

fn longest_run(text: &str) -> usize {
    let (mut best, mut run, mut prev) = (0, 0, None);
    for c in text.chars() {
        run = if Some(c) == prev { run + 1 } else { 1 };
        prev = Some(c);
        best = best.max(run);
    }
    best
}

/// Hundreds of words drawn from a handful: "go go go go ..." or a pasted block repeated.
fn repeated_words(text: &str) -> bool {
    const FEWEST: usize = 500;
    // Most texts are too short to qualify: counted before any word is hashed.
    let total = text.split_whitespace().count();
    if total < FEWEST {
        return false;
    }
    // Distinct words are counted up to 65, as many as can matter below 6,500 words.
    let mut distinct = std::collections::HashSet::new();
    for w in text.split_whitespace() {
        if distinct.len() > 64 {
            break;
        }
        distinct.insert(w);
    }
    distinct.len() * 100 < total
}

/// Keywords (whole words, case-insensitive) and regular expressions from a policy.
#[derive(Debug, Clone)]
pub struct KeywordDetector {
    set: Option<RegexSet>,
}

impl KeywordDetector {
    pub fn new(keywords: &[String], patterns: &[String]) -> Result<Self, regex::Error> {
        let mut all: Vec<String> = keywords
            .iter()
            .filter(|k| !k.trim().is_empty())
            .map(|k| format!(r"(?i)\b{}\b", regex::escape(k.trim())))
            .collect();
        all.extend(patterns.iter().cloned());
        let set = if all.is_empty() { None } else { Some(RegexSet::new(&all)?) };
        Ok(KeywordDetector { set })
    }

    pub fn scan(&self, text: &str, out: &mut Vec<Finding>) {
        if let Some(set) = &self.set
            && set.is_match(text)
        {
            out.push(Finding { detector: KEYWORD, kind: "keyword" });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pii(text: &str) -> Vec<&'static str> {
        pii_spans(text).into_iter().map(|(_, _, k)| k).collect()
    }

    #[test]
    fn pii_kinds_and_look_alikes() {
        assert_eq!(pii("mail me at jane.doe+x@example.co.uk"), ["email"]);
        assert_eq!(pii("call +1 415-555-0134 now"), ["phone"]);
        assert_eq!(pii("call (415) 555-0134"), ["phone"]);
        assert_eq!(pii("card 4111 1111 1111 1111"), ["payment_card"]);
        assert!(pii("card 4111 1111 1111 1112").is_empty(), "Luhn fails");
        assert_eq!(pii("ssn 123-45-6789"), ["us_ssn"]);
        assert!(pii("ssn 000-45-6789").is_empty());
        assert_eq!(pii("IBAN GB82 WEST 1234 5698 7654 32"), ["iban"]);
        assert!(pii("IBAN GB82 WEST 1234 5698 7654 33").is_empty(), "mod 97 fails");
        assert_eq!(pii("host 10.1.2.3"), ["ip_address"]);
        assert_eq!(pii("AKIAIOSFODNN7EXAMPLE"), ["aws_access_key"]);
        assert_eq!(pii(&format!("ghp_{}", "a1B2".repeat(9))), ["github_token"]);
        assert_eq!(pii("xoxb-1234567890-abcdefghij"), ["slack_token"]);
        assert_eq!(pii(&format!("sk_live_{}", "Ab3".repeat(8))), ["stripe_key"]);
        assert_eq!(
            pii("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
            ["jwt"]
        );
        assert_eq!(pii("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----"), ["private_key"]);
        assert_eq!(pii("password = Zx9#kQ2!vLp7"), ["secret_assignment"]);
        assert!(pii("password = aaaaaaaaaa").is_empty(), "low entropy");
        // Look-alikes that must pass.
        assert!(pii("order number 4155550134").is_empty(), "an order number without separators");
        assert!(pii("order ORD-2024-5550134").is_empty());
        assert!(pii("version 1.2.3").is_empty());
        assert!(pii("/var/log/app/2024-05-01.log").is_empty());
        assert!(pii("meeting on 2024-05-01 at 10:30").is_empty());
    }

    #[test]
    fn sponge_and_keywords() {
        let mut out = Vec::new();
        scan_sponge(&"a".repeat(5000), &SpongeLimits::default(), &mut out);
        assert!(out.iter().any(|f| f.kind == "repetition"));
        out.clear();
        scan_sponge(&"go ".repeat(1000), &SpongeLimits::default(), &mut out);
        assert!(out.iter().any(|f| f.kind == "repetition"));
        out.clear();
        scan_sponge(&"x".repeat(200_000), &SpongeLimits::default(), &mut out);
        assert!(out.iter().any(|f| f.kind == "oversize_text"));
        out.clear();
        let prose = (0..600).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ");
        scan_sponge(&prose, &SpongeLimits::default(), &mut out);
        assert!(out.is_empty());
        // Repetition needs 500 words or more, at most one distinct in a hundred.
        assert!(!repeated_words(&"go ".repeat(499)));
        assert!(repeated_words(&"go ".repeat(500)));
        let five = (0..600).map(|i| ["a", "b", "c", "d", "e"][i % 5]).collect::<Vec<_>>().join(" ");
        assert!(repeated_words(&five));
        let six = (0..600).map(|i| ["a", "b", "c", "d", "e", "f"][i % 6]).collect::<Vec<_>>().join(" ");
        assert!(!repeated_words(&six));

        let k = KeywordDetector::new(&["Project Falcon".into()], &[r"ACME-\d{4}".into()]).unwrap();
        let mut out = Vec::new();
        k.scan("tell me about project falcon", &mut out);
        k.scan("ticket ACME-1234", &mut out);
        k.scan("falconry is fun", &mut out);
        assert_eq!(out.len(), 2);
    }
}
