//! TLS: wss:// with certificates the test makes (rcgen), a reload on SIGHUP while a
//! client stays connected, and every bad file refused at start naming its key.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use futures_util::SinkExt;
use rustls_pki_types::CertificateDer;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message as Frame;

/// A self-signed certificate for `localhost` and its key, as PEM.
fn certificate() -> (String, String, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().clone())
}

type TlsClient =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A wss:// client that trusts exactly `roots`; returns it and the certificate it was shown.
async fn wss(
    server: &Server,
    roots: &[CertificateDer<'static>],
) -> (TlsClient, CertificateDer<'static>) {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let shown = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let (ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    (ws, shown)
}

async fn chat(ws: &mut TlsClient, text: &str) {
    ws.send(Frame::Text(text.into())).await.unwrap();
    loop {
        let frame = tokio::time::timeout(WAIT, futures_util::StreamExt::next(ws))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // A chat: everyone's messages arrive; wait for our own.
        if matches!(frame, Frame::Text(ref got) if got.as_str() == text) {
            return;
        }
    }
}

fn wait_for_log(server: &Server, needle: &str) -> String {
    loop {
        let line = server.stderr.recv_timeout(WAIT).expect("the log line");
        if line.contains(needle) {
            return line;
        }
    }
}

#[tokio::test]
async fn wss_chat_and_a_reload_while_a_client_stays_connected() {
    let (cert_a, key_a, der_a) = certificate();
    let (cert_b, key_b, der_b) = certificate();
    let cert = temp_file("tls-cert.pem", &cert_a);
    let key = temp_file("tls-key.pem", &key_a);
    let server = Server::start(
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(server.startup.last().unwrap().contains("https://"));
    let (mut first, shown) = wss(&server, &[der_a.clone(), der_b.clone()]).await;
    assert_eq!(shown, der_a);
    chat(&mut first, "over TLS").await;

    // A new pair, and SIGHUP: new handshakes get it, the open connection stays up.
    std::fs::write(&cert, &cert_b).unwrap();
    std::fs::write(&key, &key_b).unwrap();
    server.signal("HUP");
    wait_for_log(&server, "read again");
    let (mut second, shown) = wss(&server, &[der_a.clone(), der_b.clone()]).await;
    assert_eq!(shown, der_b, "new handshakes use the new certificate");
    chat(&mut first, "still here").await;
    chat(&mut second, "hello").await;

    // A bad pair is refused and the last good one kept.
    std::fs::write(&key, "not a key").unwrap();
    server.signal("HUP");
    let line = wait_for_log(&server, "SIGHUP");
    assert!(line.contains("keeping the old one"), "{line}");
    let (_third, shown) = wss(&server, &[der_a, der_b.clone()]).await;
    assert_eq!(shown, der_b);
    chat(&mut first, "and still").await;
}

#[test]
fn bad_tls_files_stop_the_start_naming_the_key() {
    let (cert_a, key_a, _) = certificate();
    let (_, key_b, _) = certificate();
    let cert = temp_file("tls-start-cert.pem", &cert_a);
    let key = temp_file("tls-start-key.pem", &key_a);
    let other_key = temp_file("tls-start-other-key.pem", &key_b);
    let garbage = temp_file("tls-start-garbage.pem", "hello");
    let (c, k, o, g) = (
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
        other_key.to_str().unwrap(),
        garbage.to_str().unwrap(),
    );
    let cases: &[(&[&str], &str)] = &[
        (
            &["--tls-cert", "/no/such/cert.pem", "--tls-key", k],
            "`tls_cert`",
        ),
        (
            &["--tls-cert", c, "--tls-key", "/no/such/key.pem"],
            "`tls_key`",
        ),
        (&["--tls-cert", g, "--tls-key", k], "`tls_cert`"),
        (&["--tls-cert", c, "--tls-key", g], "`tls_key`"),
        (&["--tls-cert", c, "--tls-key", o], "does not fit"),
        (&["--tls-cert", c], "`tls_key`"),
        (&["--tls-key", k], "`tls_cert`"),
    ];
    for (args, needle) in cases {
        let mut full = vec!["serve", "--bind", "127.0.0.1:0"];
        full.extend_from_slice(args);
        let (code, _, err) = run(&full, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains(needle) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
}
