//! What travels through the hub: [`Message`] (text or binary, payload shared, never copied
//! per recipient) and [`CloseReason`] (every close the hub sends has a named code).

use std::borrow::Cow;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};

/// An application message. Cloning it only bumps a reference count, so one broadcast to N
/// connections shares a single payload allocation.
#[derive(Clone, PartialEq, Eq)]
pub struct Message(Repr);

#[derive(Clone, PartialEq, Eq)]
enum Repr {
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl Message {
    /// A text message (sent as a WebSocket text frame).
    pub fn text(text: impl Into<String>) -> Self {
        Message(Repr::Text(Utf8Bytes::from(text.into())))
    }

    /// A text message from bytes that must be UTF-8; gives the bytes back if they are not.
    pub fn text_from_bytes(bytes: Bytes) -> Result<Self, Bytes> {
        match Utf8Bytes::try_from(bytes.clone()) {
            Ok(text) => Ok(Message(Repr::Text(text))),
            Err(_) => Err(bytes),
        }
    }

    /// A binary message (sent as a WebSocket binary frame).
    pub fn binary(bytes: impl Into<Bytes>) -> Self {
        Message(Repr::Binary(bytes.into()))
    }

    /// True for text, false for binary.
    pub fn is_text(&self) -> bool {
        matches!(self.0, Repr::Text(_))
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match &self.0 {
            Repr::Text(t) => Some(t.as_str()),
            Repr::Binary(_) => None,
        }
    }

    /// The payload bytes, whatever the type.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Text(t) => t.as_bytes(),
            Repr::Binary(b) => b,
        }
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True when the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame to hand to the WebSocket layer (a reference-count bump, no copy).
    pub(crate) fn to_frame(&self) -> tungstenite::Message {
        match &self.0 {
            Repr::Text(t) => tungstenite::Message::Text(t.clone()),
            Repr::Binary(b) => tungstenite::Message::Binary(b.clone()),
        }
    }

    /// Takes an inbound data frame; control frames are not application messages.
    pub(crate) fn from_frame(frame: tungstenite::Message) -> Option<Self> {
        match frame {
            tungstenite::Message::Text(t) => Some(Message(Repr::Text(t))),
            tungstenite::Message::Binary(b) => Some(Message(Repr::Binary(b))),
            _ => None,
        }
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Repr::Text(t) => f.debug_tuple("Text").field(&t.as_str()).finish(),
            Repr::Binary(b) => f.debug_tuple("Binary").field(&b.len()).finish(),
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
    /// 1001: the peer sent no frame within `pong_wait`.
    pub const PONG_TIMEOUT: CloseReason = CloseReason::fixed(1001, "pong timeout");
    /// 1002: the peer broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: CloseReason = CloseReason::fixed(1002, "protocol error");
    /// 1007: a text message that is not valid UTF-8.
    pub const INVALID_UTF8: CloseReason = CloseReason::fixed(1007, "invalid UTF-8 in text message");
    /// 1008: the connection's outbound queue overflowed (`send_queue`).
    pub const SLOW_CONSUMER: CloseReason = CloseReason::fixed(1008, "slow consumer");
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

    pub(crate) fn to_frame(&self) -> tungstenite::Message {
        tungstenite::Message::Close(Some(tungstenite::protocol::CloseFrame {
            code: self.code.into(),
            reason: Utf8Bytes::from(self.reason.to_string()),
        }))
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.reason)
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
    fn long_reasons_are_cut_at_a_char_boundary() {
        let r = CloseReason::new(4000, "é".repeat(100));
        assert!(r.reason.len() <= 123);
        assert!(r.reason.chars().all(|c| c == 'é'));
    }
}
