//! Any bytes a client may send after the handshake: the connection ends (never hangs,
//! never panics) and the hub forgets it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        // Paused time: a ten-minute limit costs nothing unless the connection hangs.
        tokio::time::timeout(std::time::Duration::from_secs(600), wshub::fuzzing::connection(data.to_vec()))
            .await
            .expect("the connection ended");
    });
});
