//! Records, for the printed report, which versions were measured: the three WebSocket
//! crates as resolved in this project's own Cargo.lock, and the compiler.

use std::process::Command;

/// The packages whose versions the report names.
const MEASURED: [&str; 5] = [
    "tokio-tungstenite",
    "tungstenite",
    "fastwebsockets",
    "yawc",
    "tokio",
];

fn main() {
    println!("cargo:rerun-if-changed=Cargo.lock");
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    // Cargo.lock lists each package as `name = "…"` followed by `version = "…"`.
    let mut versions = Vec::new();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("name = ") else {
            continue;
        };
        let name = name.trim_matches('"');
        if !MEASURED.contains(&name) {
            continue;
        }
        if let Some(version) = lines.next().and_then(|l| l.strip_prefix("version = ")) {
            versions.push(format!("{name} {}", version.trim_matches('"')));
        }
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc = Command::new(rustc)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    versions.push(rustc);
    println!("cargo:rustc-env=MEASURED_VERSIONS={}", versions.join(", "));
}
