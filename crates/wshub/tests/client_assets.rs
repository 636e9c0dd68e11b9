//! The browser client, `/wshub.js` and `/wshub.d.ts`: served with their content types and
//! revalidation headers, always on, and used by the home page. (Its behaviour in a browser
//! is tested in `browser/`.)
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use wshub::{Broadcast, CLIENT_DTS, CLIENT_JS, Config, Site};

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next().unwrap_or("");
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[tokio::test]
async fn the_client_module_and_its_types_are_served() {
    let server = start(Config::default(), Broadcast).await;

    let js = get(server.addr, "/wshub.js", "").await;
    assert_eq!(status(&js), 200, "{js}");
    assert_eq!(
        header(&js, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(header(&js, "cache-control"), Some("no-cache"));
    assert_eq!(body(&js), CLIENT_JS);
    assert!(CLIENT_JS.contains("export class Client"));

    let dts = get(server.addr, "/wshub.d.ts", "").await;
    assert_eq!(status(&dts), 200, "{dts}");
    assert_eq!(
        header(&dts, "content-type"),
        Some("application/typescript; charset=utf-8")
    );
    assert_eq!(header(&dts, "cache-control"), Some("no-cache"));
    assert_eq!(body(&dts), CLIENT_DTS);
    assert!(CLIENT_DTS.contains("export declare class Client"));

    // HEAD has the headers and no body; other methods are 405.
    let head = raw_http(
        server.addr,
        "HEAD /wshub.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&head), 200);
    assert!(
        header(&head, "content-type")
            .unwrap()
            .contains("javascript")
    );
    assert_eq!(body(&head), "");
    let post = raw_http(
        server.addr,
        "POST /wshub.js HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&post), 405);
    server.shutdown().await;
}

#[tokio::test]
async fn an_unchanged_client_is_not_sent_again() {
    let server = start(Config::default(), Broadcast).await;
    let first = get(server.addr, "/wshub.js", "").await;
    let etag = header(&first, "etag").expect("an ETag").to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

    let again = get(
        server.addr,
        "/wshub.js",
        &format!("If-None-Match: {etag}\r\n"),
    )
    .await;
    assert_eq!(status(&again), 304, "{again}");
    assert_eq!(header(&again, "etag"), Some(etag.as_str()));
    assert_eq!(header(&again, "cache-control"), Some("no-cache"));
    assert_eq!(body(&again), "");

    let weak = get(
        server.addr,
        "/wshub.js",
        &format!("If-None-Match: \"x\", W/{etag}\r\n"),
    )
    .await;
    assert_eq!(status(&weak), 304);

    let stale = get(server.addr, "/wshub.js", "If-None-Match: \"stale\"\r\n").await;
    assert_eq!(status(&stale), 200);
    assert_eq!(body(&stale), CLIENT_JS);

    // The two files have their own validators.
    let dts = get(server.addr, "/wshub.d.ts", "").await;
    assert_ne!(header(&dts, "etag"), Some(etag.as_str()));
    server.shutdown().await;
}

#[tokio::test]
async fn the_client_is_served_whatever_the_site_config() {
    // A custom home page, no static directory, no API: the client is still there.
    let site = Site {
        home_template: "<p>mine</p>".into(),
        ..Site::default()
    };
    let server = start_site(Config::default(), Broadcast, site).await;
    assert_eq!(status(&get(server.addr, "/wshub.js", "").await), 200);
    assert_eq!(status(&get(server.addr, "/wshub.d.ts", "").await), 200);
    assert_eq!(status(&get(server.addr, "/wshub.mjs", "").await), 404);
    server.shutdown().await;
}

#[tokio::test]
async fn the_default_home_page_is_a_chat_on_the_client() {
    let server = start(Config::default(), Broadcast).await;
    let page = get(server.addr, "/", "").await;
    assert_eq!(status(&page), 200);
    let page = body(&page);
    assert!(
        page.contains(r#"import { Client } from "/wshub.js";"#),
        "the page uses the served client"
    );
    // The endpoint comes from the request's host, like the Go original's template.
    assert!(
        page.contains(&format!(r#"content="//{}/ws""#, server.addr)),
        "{page}"
    );
    assert!(!page.contains("{{"), "every placeholder is filled in");
    server.shutdown().await;
}
