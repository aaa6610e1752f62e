//! Arbitrary config.json text through the spec's parser and checks: an
//! error or a spec, never a panic; and a spec that parses survives its
//! capture at create (written back and read again, it is the same spec).
//! Run with `hack/fuzz.sh bundle_spec`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = husk::oci::spec::parse(data) else {
        return;
    };
    let _ = husk::oci::spec::check(&spec);
    let captured = serde_json::to_vec(&spec).expect("a spec serializes");
    let again = husk::oci::spec::parse(&captured).expect("a captured spec parses");
    assert_eq!(
        serde_json::to_value(&again).unwrap(),
        serde_json::to_value(&spec).unwrap()
    );
});
