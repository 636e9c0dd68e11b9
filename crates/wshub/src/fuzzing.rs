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
    let read = |step| crate::reader::read_all_inflating(bytes, step, 1024, inflate);
    let whole = read(bytes.len().max(1));
    assert_eq!(
        whole,
        read(step),
        "the reader's result depends on the chunking"
    );
    if let Ok(events) = whole {
        for event in events {
            if let crate::reader::Inbound::Message(message) = event {
                assert!(message.len() <= 1024, "a message past max_message_size");
            }
        }
    }
}
