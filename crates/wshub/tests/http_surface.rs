//! The HTTP surface over raw sockets: home page, 404/405, static files and traversal
//! attempts, the upgrade refusals (426/400/403), and the publish API's auth.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::*;
use tokio_tungstenite::tungstenite::Message as Frame;
use wshub::{Broadcast, Config, Site};

/// A fresh directory with `index.txt`, `style.css`, `app.js` and, beside it, a secret.
fn static_fixture(name: &str) -> (PathBuf, PathBuf) {
    let base = std::env::temp_dir().join(format!("wshub-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("public");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("style.css"), "body{}").unwrap();
    std::fs::write(root.join("app.js"), "1").unwrap();
    std::fs::write(root.join("sub/page.html"), "<p>hi</p>").unwrap();
    std::fs::write(base.join("secret.txt"), "TOP SECRET").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(base.join("secret.txt"), root.join("link.txt")).unwrap();
    (base, root)
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn home_page_renders_the_host_and_other_paths_are_404() {
    let site = Site {
        home_template: "<p>ws://{{host}}/ws and {{$}}</p>".into(),
        ..Site::default()
    };
    let server = start_site(Config::default(), Broadcast, site).await;
    let response = raw_http(
        server.addr,
        "GET / HTTP/1.1\r\nHost: chat.example:9000\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&response), 200);
    assert!(
        response.contains("<p>ws://chat.example:9000/ws and chat.example:9000</p>"),
        "{response}"
    );
    assert!(
        header(&response, "content-type")
            .unwrap()
            .starts_with("text/html")
    );

    // The host is escaped: no markup injection through the Host header.
    let response = raw_http(
        server.addr,
        "GET / HTTP/1.1\r\nHost: a\"<b>\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!response.contains("<b>"), "{response}");

    let head = raw_http(
        server.addr,
        "HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&head), 200);
    assert!(!head.contains("<p>"), "HEAD has no body");

    assert_eq!(status(&get(server.addr, "/nope", "").await), 404);
    assert_eq!(status(&get(server.addr, "/index.html", "").await), 404);
    let post = raw_http(
        server.addr,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&post), 405);
    server.shutdown().await;
}

#[tokio::test]
async fn the_default_page_is_the_chat_client() {
    let server = start(Config::default(), Broadcast).await;
    let response = get(server.addr, "/", "").await;
    assert_eq!(status(&response), 200);
    assert!(
        response.contains(&format!("{}/ws", server.addr)),
        "page connects to this host"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn static_files_have_content_types_and_no_traversal() {
    let (base, root) = static_fixture("static");
    let site = Site {
        static_dir: Some(root),
        ..Site::default()
    };
    let server = start_site(Config::default(), Broadcast, site).await;
    let css = get(server.addr, "/static/style.css", "").await;
    assert_eq!(status(&css), 200);
    assert_eq!(header(&css, "content-type"), Some("text/css"));
    let js = get(server.addr, "/static/app.js", "").await;
    assert!(header(&js, "content-type").unwrap().contains("javascript"));
    assert_eq!(
        status(&get(server.addr, "/static/sub/page.html", "").await),
        200
    );
    assert_eq!(
        status(&get(server.addr, "/static/missing.txt", "").await),
        404
    );

    for attempt in [
        "/static/../secret.txt",
        "/static/%2e%2e/secret.txt",
        "/static/%2E%2E/secret.txt",
        "/static/..%2fsecret.txt",
        "/static/sub/..%2f..%2fsecret.txt",
        "/static/%5c..%5csecret.txt",
        "/static/..\\secret.txt",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/link.txt",
    ] {
        let response = get(server.addr, attempt, "").await;
        assert!(
            !response.contains("TOP SECRET"),
            "{attempt} leaked: {response}"
        );
        assert!(!response.contains("root:"), "{attempt} leaked: {response}");
        assert_eq!(status(&response), 404, "{attempt}: {response}");
    }
    // A name the file system refuses (longer than 255 bytes): 404, not 500.
    let long = format!("/static/{}", "a".repeat(300));
    assert_eq!(status(&get(server.addr, &long, "").await), 404);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(base);
}

#[tokio::test]
async fn static_is_404_without_a_directory() {
    let server = start(Config::default(), Broadcast).await;
    assert_eq!(
        status(&get(server.addr, "/static/style.css", "").await),
        404
    );
    server.shutdown().await;
}

#[tokio::test]
async fn upgrade_refusals_are_specific() {
    let server = start(Config::default(), Broadcast).await;
    // A plain GET: 426 naming what to do.
    let plain = get(server.addr, "/ws", "").await;
    assert_eq!(status(&plain), 426, "{plain}");
    assert_eq!(header(&plain, "sec-websocket-version"), Some("13"));

    let upgrade = |extra: &str| format!("Upgrade: websocket\r\nConnection: Upgrade\r\n{extra}");
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let wrong_version = get(
        server.addr,
        "/ws",
        &upgrade(&format!("{key}Sec-WebSocket-Version: 8\r\n")),
    )
    .await;
    assert_eq!(status(&wrong_version), 426, "{wrong_version}");
    assert_eq!(header(&wrong_version, "sec-websocket-version"), Some("13"));

    let no_key = get(
        server.addr,
        "/ws",
        &upgrade("Sec-WebSocket-Version: 13\r\n"),
    )
    .await;
    assert_eq!(status(&no_key), 400, "{no_key}");
    let bad_key = get(
        server.addr,
        "/ws",
        &upgrade("Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n"),
    )
    .await;
    assert_eq!(status(&bad_key), 400, "{bad_key}");

    let ok = format!("{key}Sec-WebSocket-Version: 13\r\n");
    let foreign = get(
        server.addr,
        "/ws",
        &upgrade(&format!("{ok}Origin: http://evil.example\r\n")),
    )
    .await;
    assert_eq!(status(&foreign), 403, "{foreign}");
    let same = format!("{ok}Origin: http://{}\r\n", server.addr);
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\n{}\r\n",
        server.addr,
        upgrade(&same)
    );
    let raw = raw_http(server.addr, &request);
    let same_origin = tokio::time::timeout(std::time::Duration::from_millis(500), raw).await;
    // The upgrade succeeds and the socket stays open, so read_to_end times out: fine.
    if let Ok(response) = same_origin {
        assert_eq!(status(&response), 101, "{response}");
    }

    let post = raw_http(
        server.addr,
        "POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&post), 405);
    server.shutdown().await;
}

#[tokio::test]
async fn allowed_origins_open_the_door() {
    let config = Config {
        allowed_origins: vec!["https://app.example".into()],
        ..Config::default()
    };
    let server = start(config, Broadcast).await;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.url(),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("origin", "https://app.example".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    send_text(&mut ws, "hi").await;
    assert_eq!(recv(&mut ws).await, Frame::text("hi"));

    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.url(),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("origin", "https://other.example".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(request).await.unwrap_err();
    assert!(refused.to_string().contains("403"), "{refused}");
    server.shutdown().await;
}

#[tokio::test]
async fn broadcast_api_needs_the_key_and_reports_recipients() {
    let site = Site {
        api_key: Some("s3cret".into()),
        api_max_body_size: 1024,
        ..Site::default()
    };
    let server = start_site(Config::default(), Broadcast, site).await;
    let mut clients = connect_n(&server, 2).await;
    let post = |auth: &str, content_type: &str, body: &str| {
        format!(
            "POST /api/broadcast HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let missing = raw_http(server.addr, &post("", "text/plain", "hi")).await;
    assert_eq!(status(&missing), 401, "{missing}");
    let wrong = raw_http(
        server.addr,
        &post("Authorization: Bearer nope\r\n", "text/plain", "hi"),
    )
    .await;
    assert_eq!(status(&wrong), 401, "{wrong}");

    let ok = raw_http(
        server.addr,
        &post(
            "Authorization: Bearer s3cret\r\n",
            "text/plain; charset=utf-8",
            "hello all",
        ),
    )
    .await;
    assert_eq!(status(&ok), 200, "{ok}");
    assert!(ok.contains(r#"{"recipients":2}"#), "{ok}");
    for client in &mut clients {
        assert_eq!(recv(client).await, Frame::text("hello all"));
    }
    let json = raw_http(
        server.addr,
        &post(
            "Authorization: Bearer s3cret\r\n",
            "application/json",
            r#"{"a":1}"#,
        ),
    )
    .await;
    assert_eq!(status(&json), 200);
    assert_eq!(recv(&mut clients[0]).await, Frame::text(r#"{"a":1}"#));
    let binary = raw_http(
        server.addr,
        &post(
            "Authorization: Bearer s3cret\r\n",
            "application/octet-stream",
            "raw",
        ),
    )
    .await;
    assert_eq!(status(&binary), 200);
    assert_eq!(recv(&mut clients[0]).await, Frame::binary(b"raw".to_vec()));

    let big = "x".repeat(2000);
    let too_big = raw_http(
        server.addr,
        &post("Authorization: Bearer s3cret\r\n", "text/plain", &big),
    )
    .await;
    assert_eq!(status(&too_big), 413, "{too_big}");
    server.shutdown().await;
}

#[tokio::test]
async fn broadcast_api_is_404_without_a_key() {
    let server = start(Config::default(), Broadcast).await;
    let response = raw_http(
        server.addr,
        "POST /api/broadcast HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer x\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert_eq!(status(&response), 404, "{response}");
    server.shutdown().await;
}
