//! What travels through the hub: [`Message`] (text or binary, payload shared, never copied
//! per recipient) and [`CloseReason`] (every close the hub sends has a named code).

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

/// An application message, held as the complete WebSocket frame the server sends
/// (header + payload, encoded once). Cloning it only bumps a reference count, so one
/// broadcast to N connections shares one allocation and every connection writes the same
/// bytes: nothing is encoded or copied per recipient.
#[derive(Clone)]
pub struct Message {
    /// The unmasked server frame: FIN + opcode, length, payload.
    wire: Bytes,
    /// Where the payload starts in `wire` (2, 4 or 10).
    header_len: u8,
    /// The same message as a permessage-deflate frame (RSV1 set), made once for every
    /// compressing recipient of a broadcast (see `compression`).
    deflated: Option<Bytes>,
    /// Set on a deflated frame made for a compressing client: the payload's length
    /// before compression (what `bytes_sent` counts).
    uncompressed_len: Option<usize>,
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.wire == other.wire
    }
}

impl Eq for Message {}

/// Frame opcodes (RFC 6455 §5.2).
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;
const OPCODE_PONG: u8 = 0xA;

impl Message {
    /// A text message (sent as a WebSocket text frame).
    pub fn text(text: impl AsRef<str>) -> Self {
        Message::encode(OPCODE_TEXT, text.as_ref().as_bytes())
    }

    /// A text message from bytes that must be UTF-8; gives the bytes back if they are not.
    pub fn text_from_bytes(bytes: Bytes) -> Result<Self, Bytes> {
        match std::str::from_utf8(&bytes) {
            Ok(text) => Ok(Message::text(text)),
            Err(_) => Err(bytes),
        }
    }

    /// A binary message (sent as a WebSocket binary frame).
    pub fn binary(bytes: impl AsRef<[u8]>) -> Self {
        Message::encode(OPCODE_BINARY, bytes.as_ref())
    }

    fn encode(opcode: u8, payload: &[u8]) -> Self {
        Message::frame(0x80 | opcode, payload)
    }

    /// A frame with this first byte (FIN, RSV1, opcode) and payload.
    fn frame(first: u8, payload: &[u8]) -> Self {
        let len = payload.len();
        let mut wire = BytesMut::with_capacity(len + 10);
        wire.put_u8(first);
        // Payload lengths below 126 fit the second byte; up to 65535 take 2 more bytes.
        match len {
            0..=125 => wire.put_u8(len as u8),
            126..=0xFFFF => {
                wire.put_u8(126);
                wire.put_u16(len as u16);
            }
            _ => {
                wire.put_u8(127);
                wire.put_u64(len as u64);
            }
        }
        let header_len = wire.len() as u8;
        wire.put_slice(payload);
        Message {
            wire: wire.freeze(),
            header_len,
            deflated: None,
            uncompressed_len: None,
        }
    }

    /// The message with its deflated frame made (once: clones share it).
    pub(crate) fn with_deflated(mut self) -> Message {
        if self.deflated.is_none() {
            self.deflated = Some(
                self.deflate(crate::compression::codec::DEFAULT_WINDOW_BITS)
                    .wire,
            );
        }
        self
    }

    /// What a client that negotiated permessage-deflate with `window_bits` is sent:
    /// the shared deflated frame, one made now for a smaller window, or, below
    /// `min_size`, the plain frame.
    pub(crate) fn for_compressing_peer(&self, window_bits: u8, min_size: usize) -> Message {
        if self.len() < min_size {
            return self.clone();
        }
        match &self.deflated {
            Some(wire) if window_bits == crate::compression::codec::DEFAULT_WINDOW_BITS => {
                Message {
                    wire: wire.clone(),
                    // Its own: the compressed payload may need a shorter length field.
                    header_len: header_len_of(wire),
                    deflated: None,
                    uncompressed_len: Some(self.len()),
                }
            }
            _ => self.deflate(window_bits),
        }
    }

    /// This message as a deflated frame: RSV1 set, payload compressed.
    fn deflate(&self, window_bits: u8) -> Message {
        let first = self.wire.first().copied().unwrap_or(0x80 | OPCODE_BINARY);
        Message {
            uncompressed_len: Some(self.len()),
            ..Message::frame(
                first | 0x40,
                &crate::compression::codec::deflate(self.as_bytes(), window_bits),
            )
        }
    }

    /// True for text, false for binary.
    pub fn is_text(&self) -> bool {
        self.wire.first().is_some_and(|b| b & 0x0F == OPCODE_TEXT)
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        if self.is_text() {
            // Text messages are built from `str` or validated bytes only.
            std::str::from_utf8(self.as_bytes()).ok()
        } else {
            None
        }
    }

    /// The payload bytes, whatever the type.
    pub fn as_bytes(&self) -> &[u8] {
        self.wire
            .get(usize::from(self.header_len)..)
            .unwrap_or_default()
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// The payload's length before compression: [`Message::len`] unless this is a frame
    /// deflated for a compressing client.
    pub(crate) fn uncompressed_len(&self) -> usize {
        self.uncompressed_len.unwrap_or_else(|| self.len())
    }

    /// True when the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The complete frame as it goes on the wire.
    pub(crate) fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// The same, shared.
    pub(crate) fn wire_bytes(&self) -> &Bytes {
        &self.wire
    }

    /// An inbound message's payload (already checked: UTF-8 when `text`) as our own frame.
    pub(crate) fn from_payload(text: bool, payload: &[u8]) -> Self {
        Message::encode(if text { OPCODE_TEXT } else { OPCODE_BINARY }, payload)
    }

    /// A ping frame (empty payload).
    pub(crate) fn ping() -> Self {
        Message::encode(OPCODE_PING, &[])
    }

    /// The pong answering a ping with `payload` (at most 125 bytes, checked by the reader).
    pub(crate) fn pong(payload: &[u8]) -> Self {
        Message::encode(OPCODE_PONG, payload)
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.as_text() {
            Some(text) => f.debug_tuple("Text").field(&text).finish(),
            None => f.debug_tuple("Binary").field(&self.len()).finish(),
        }
    }
}

impl From<String> for Message {
    fn from(s: String) -> Self {
        Message::text(s)
    }
}

impl From<&str> for Message {
    fn from(s: &str) -> Self {
        Message::text(s)
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Message::binary(b)
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Message::binary(b)
    }
}

/// Why a connection ended: the WebSocket close code and a short reason.
///
/// The reasons the hub itself sends are the associated constants; each has a test that
/// sees it on the wire. A reason is at most 123 bytes (a close frame's payload is 125).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// The RFC 6455 close code.
    pub code: u16,
    /// Human-readable reason, at most 123 bytes.
    pub reason: Cow<'static, str>,
}

impl CloseReason {
    /// 1000: a normal close.
    pub const NORMAL: CloseReason = CloseReason::fixed(1000, "");
    /// 1001: the server is shutting down.
    pub const SHUTDOWN: CloseReason = CloseReason::fixed(1001, "server shutting down");
    /// 1012: the node is draining (`Hub::drain`): reconnect, to another node.
    pub const SERVICE_RESTART: CloseReason = CloseReason::fixed(1012, "service restart");
    /// 1001: the peer sent no frame within `pong_wait`.
    pub const PONG_TIMEOUT: CloseReason = CloseReason::fixed(1001, "pong timeout");
    /// 1002: the peer broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: CloseReason = CloseReason::fixed(1002, "protocol error");
    /// 1007: a text message that is not valid UTF-8.
    pub const INVALID_UTF8: CloseReason = CloseReason::fixed(1007, "invalid UTF-8 in text message");
    /// 1008: the connection's outbound queue overflowed (`send_queue`).
    pub const SLOW_CONSUMER: CloseReason = CloseReason::fixed(1008, "slow consumer");
    /// 1008: the client kept sending over its budget (`client_rate`) for `client_burst`
    /// more messages.
    pub const RATE_LIMIT: CloseReason = CloseReason::fixed(1008, "rate limit");
    /// 1009: an inbound message larger than `max_message_size`.
    pub const MESSAGE_TOO_BIG: CloseReason = CloseReason::fixed(1009, "message too big");
    /// 1006 (never sent on the wire): the link broke without a close handshake.
    pub const ABNORMAL: CloseReason = CloseReason::fixed(1006, "connection lost");

    const fn fixed(code: u16, reason: &'static str) -> Self {
        CloseReason {
            code,
            reason: Cow::Borrowed(reason),
        }
    }

    /// A close with an application's own code and reason; the reason is cut to 123 bytes
    /// at a character boundary.
    pub fn new(code: u16, reason: impl Into<Cow<'static, str>>) -> Self {
        let mut reason = reason.into();
        if reason.len() > 123 {
            let mut end = 123;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason = Cow::Owned(reason[..end].to_owned());
        }
        CloseReason { code, reason }
    }

    /// The close frame carrying this code and reason (no payload for 1005, "no code").
    pub(crate) fn to_frame(&self) -> Message {
        if self.code == 1005 {
            return Message::encode(OPCODE_CLOSE, &[]);
        }
        let mut payload = Vec::with_capacity(2 + self.reason.len());
        payload.extend_from_slice(&self.code.to_be_bytes());
        payload.extend_from_slice(self.reason.as_bytes());
        Message::encode(OPCODE_CLOSE, &payload)
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.reason)
    }
}

/// The header length of a server frame (unmasked): 2 bytes, plus the extended length.
fn header_len_of(wire: &[u8]) -> u8 {
    match wire.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_payload() {
        let m = Message::binary(vec![1u8; 64]);
        let c = m.clone();
        assert_eq!(m.as_bytes().as_ptr(), c.as_bytes().as_ptr());
    }

    #[test]
    fn frames_are_encoded_per_rfc6455() {
        let m = Message::text("hi");
        assert_eq!(m.wire(), b"\x81\x02hi");
        assert_eq!(m.as_text(), Some("hi"));
        let m = Message::binary(vec![7u8; 200]);
        assert_eq!(&m.wire()[..4], &[0x82, 126, 0, 200]);
        assert_eq!(m.as_bytes(), &[7u8; 200][..]);
        assert!(!m.is_text());
        let m = Message::binary(vec![0u8; 70_000]);
        assert_eq!(&m.wire()[..2], &[0x82, 127]);
        assert_eq!(m.len(), 70_000);
        assert_eq!(Message::text(""), Message::text(String::new()));
        assert!(Message::text("").is_empty());
    }

    #[test]
    fn long_reasons_are_cut_at_a_char_boundary() {
        let r = CloseReason::new(4000, "é".repeat(100));
        assert!(r.reason.len() <= 123);
        assert!(r.reason.chars().all(|c| c == 'é'));
    }
}
