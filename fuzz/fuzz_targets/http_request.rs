//! Any request to the HTTP surface (home page, static files, the WebSocket endpoint, the
//! API): a definite answer, never a panic, never a 500, never a file from outside the
//! static directory.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    path: String,
    headers: Vec<(u8, String)>,
    body: Vec<u8>,
}

const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"];
const HEADERS: [&str; 12] = [
    "host",
    "origin",
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "authorization",
    "content-type",
    "range",
    "if-none-match",
    "accept-encoding",
    "if-modified-since",
];

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("wshub-fuzz-http-{}", std::process::id()));
        let root = base.join("public");
        std::fs::create_dir_all(root.join("sub")).expect("fixture dir");
        std::fs::write(root.join("a.txt"), "public").expect("fixture file");
        std::fs::write(root.join("sub/b.css"), "body{}").expect("fixture file");
        std::fs::write(base.join("secret.txt"), "SECRET").expect("fixture file");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let router = runtime.block_on(async {
            let hub = wshub::Hub::new(wshub::Config::default(), wshub::Broadcast).expect("hub");
            let site = wshub::Site {
                static_dir: Some(root),
                api_key: Some("fuzz-key".into()),
                api_max_body_size: 4096,
                ..wshub::Site::default()
            };
            wshub::router(hub, site)
        });
        Fixture { runtime, router }
    })
}

fuzz_target!(|input: Input| {
    let fixture = fixture();
    let method = METHODS[input.method as usize % METHODS.len()];
    let mut builder = http::Request::builder().method(method).uri(input.path.as_str());
    for (name, value) in &input.headers {
        builder = builder.header(HEADERS[*name as usize % HEADERS.len()], value.as_str());
    }
    let Ok(request) = builder.body(axum::body::Body::from(input.body)) else {
        return; // not a request hyper would have parsed
    };
    fixture.runtime.block_on(async {
        let response = fixture.router.clone().oneshot(request).await.expect("infallible");
        assert_ne!(response.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap_or_default();
        assert!(!body.windows(6).any(|w| w == b"SECRET"), "served a file from outside static/");
    });
});
