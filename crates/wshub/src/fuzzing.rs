//! Entry points for the fuzz targets in `fuzz/` (compiled only with `--cfg fuzzing`):
//! they reach a connection's read/write loop without a socket or an HTTP handshake.

use crate::{Broadcast, Config, Hub, connection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs one chat connection whose client sends `client_bytes` (frames, as after the
/// handshake) and then closes its side; returns once the connection has ended.
/// Run it on a runtime with paused time: every timeout then passes instantly.
pub async fn connection(client_bytes: Vec<u8>) {
    let config = Config {
        max_message_size: 1024,
        ..Config::default()
    };
    let Ok(hub) = Hub::new(config, Broadcast) else {
        return;
    };
    let Ok(admission) = hub.admit(None) else {
        return;
    };
    let (mut client, server) = tokio::io::duplex(16 * 1024);
    let peer = tokio::spawn(async move {
        let (mut read, mut write) = tokio::io::split(&mut client);
        let writing = async {
            let _ = write.write_all(&client_bytes).await;
            let _ = write.shutdown().await;
        };
        let mut sink = Vec::new();
        let reading = read.read_to_end(&mut sink);
        let _ = tokio::join!(writing, reading);
    });
    let request = connection::Request {
        remote_addr: None,
        uri: http::Uri::from_static("/ws"),
        headers: None,
        structured: false,
        compressed: false,
        auth: crate::auth::Auth::Open,
    };
    let socket = connection::Socket::split(server, bytes::Bytes::new());
    connection::run(socket, hub.register(admission, None), request).await;
    let _ = peer.await;
    assert_eq!(hub.connection_count(), 0, "the connection is forgotten");
}

/// Feeds `bytes` to a frame reader in chunks whose sizes come from the input itself, and
/// checks that what it reads does not depend on how the bytes were split. The first
/// byte's low bit turns permessage-deflate on, so compressed messages reach the
/// inflater (with a 1 KiB cap: a bomb must stop there).
pub fn frame_reader(bytes: &[u8]) {
    let Some((&first, bytes)) = bytes.split_first() else {
        return;
    };
    let inflate = first & 1 == 1;
    let step = usize::from(first >> 1).max(1);
    let read = |step| crate::wire::reader::read_all_inflating(bytes, step, 1024, inflate);
    let whole = read(bytes.len().max(1));
    assert_eq!(
        whole,
        read(step),
        "the reader's result depends on the chunking"
    );
    if let Ok(events) = whole {
        for event in events {
            if let crate::wire::reader::Inbound::Message(message) = event {
                assert!(message.len() <= 1024, "a message past max_message_size");
            }
        }
    }
}

/// The accept loop's own reading of an upgrade request (see `server`): any bytes as a
/// connection's first read either are handed on to hyper or give a registered connection
/// and a 101 that carries the accept value; never a panic. With compression on, so the
/// extension offers are parsed too.
pub fn upgrade_head(bytes: &[u8]) {
    let config = Config {
        compression: true,
        allowed_origins: vec!["http://allowed.example".to_owned()],
        ..Config::default()
    };
    let Ok(hub) = Hub::new(config, Broadcast) else {
        return;
    };
    let remote = std::net::SocketAddr::from(([127, 0, 0, 1], 40000));
    if let Some((response, _registration, _request, head_len)) =
        crate::http::server::answer(bytes, remote, &hub)
    {
        assert!(head_len <= bytes.len());
        assert!(response.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(response.ends_with(b"\r\n\r\n"));
        assert_eq!(
            hub.connection_count(),
            1,
            "an answered upgrade is registered"
        );
    }
}
