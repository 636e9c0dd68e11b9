//! The accept loop's fast path for upgrade requests: any first read either goes on to hyper
//! or is answered with a 101 for a registered connection, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wshub::fuzzing::upgrade_head(data);
});
