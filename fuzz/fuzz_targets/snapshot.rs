//! The snapshot loader: any bytes in the snapshot file are refused or load as a valid snapshot.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(snapshot) = shared::Snapshot::from_json(data) {
        assert!(snapshot.validate().is_ok());
    }
});
