//! Any text as a config file: either a one-line error or settings that print and parse
//! back to themselves. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wshub_server::settings::Settings;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut settings = Settings::defaults();
    match settings.apply_toml(text, "fuzz.toml") {
        Ok(()) => {
            let mut back = Settings::defaults();
            back.apply_toml(&settings.render(), "rendered").expect("rendered settings parse");
            assert_eq!(back, settings, "round trip");
            let _ = settings.hub_config().validate();
        }
        Err(error) => assert!(!error.to_string().contains('\n'), "one line: {error}"),
    }
});
