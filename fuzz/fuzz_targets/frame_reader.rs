//! The frame reader alone, at libFuzzer's full speed: any client bytes, split anywhere,
//! give the same messages or the same error as when they arrive in one piece (the first
//! input byte picks the chunk size), and never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    wshub::fuzzing::frame_reader(data);
});
