//! Property tests of the snapshot loader (the CI-sized twin of `fuzz/fuzz_targets/snapshot.rs`):
//! whatever bytes a data plane finds in the snapshot file, loading never panics, and anything it
//! accepts passes full validation.

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::json;
use shared::Snapshot;

/// A valid snapshot with one of everything, as JSON.
fn sample() -> Vec<u8> {
    let key = shared::api_key::generate();
    let (user, project, config) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    json!({
        "format_version": 1, "revision": 3, "generated_at": "2026-01-01T00:00:00Z",
        "users": [{"id": user, "email": "a@example.com"}],
        "projects": [{"id": project, "name": "p", "mcp_config_id": config, "members": [user]}],
        "mcp_configs": [{"id": config, "name": "c", "servers": [
            {"server_name": "fx", "config": {"command": "fx", "args": ["-v"], "env": {"A": "b"}}, "tools": ["echo"],
             "denied_tools": ["rm*"], "input_guardrails_policy": {"enabled": true, "block": ["pii"]}},
            {"server_name": "web", "config": {"url": "https://example.com/mcp", "headers": {"X-A": "b"}}}
        ], "pins": [{"server": "fx", "tool": "echo", "fingerprint": "ab"}]}],
        "api_keys": [{"id": key.id, "project_id": project, "user_id": user,
            "hash": shared::api_key::hash(&key.secret).unwrap()}],
        "settings": {"tool_cache_ttl_secs": 60}
    })
    .to_string()
    .into_bytes()
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("revision".to_string()),
                    Just("servers".to_string()),
                    Just("api_keys".to_string()),
                    "[a-z_]{1,12}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Snapshot::from_json(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(value in arb_json()) {
        if let Ok(s) = Snapshot::from_json(value.to_string().as_bytes()) {
            prop_assert!(s.validate().is_ok());
        }
    }

    #[test]
    fn damaged_snapshots_are_refused_or_still_valid(
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..6),
        cut in proptest::option::of(any::<Index>()),
    ) {
        let mut bytes = sample();
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Some(cut) = cut {
            let len = bytes.len();
            bytes.truncate(cut.index(len));
        }
        if let Ok(s) = Snapshot::from_json(&bytes) {
            prop_assert!(s.validate().is_ok());
            // What was accepted survives a round trip unchanged.
            let again = Snapshot::from_json(&serde_json::to_vec(&s).unwrap()).unwrap();
            prop_assert_eq!(again, s);
        }
    }
}

#[test]
fn the_sample_is_valid() {
    Snapshot::from_json(&sample()).unwrap();
}
