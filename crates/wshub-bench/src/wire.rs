//! The bytes on the wire: the hand-written client handshake (request, 101 check,
//! Sec-WebSocket-Accept, optionally a subprotocol and the permessage-deflate offer), masked
//! client frames, the incremental server-frame decoder that works in place over a shared read
//! buffer (inflating the start of compressed messages), and the benchmark payload header (run
//! tag, measured flag, sender id, sequence number, send timestamp).

use base64::Engine as _;
use sha1::{Digest as _, Sha1};

use crate::deflate::{Inflater, MAX_COMPRESSED_PREFIX};

/// Frame opcodes (RFC 6455 §5.2).
pub(crate) mod op {
    /// Continuation of a fragmented message.
    pub(crate) const CONT: u8 = 0x0;
    /// Text message.
    pub(crate) const TEXT: u8 = 0x1;
    /// Binary message.
    pub(crate) const BINARY: u8 = 0x2;
    /// Close.
    pub(crate) const CLOSE: u8 = 0x8;
    /// Ping.
    pub(crate) const PING: u8 = 0x9;
    /// Pong.
    pub(crate) const PONG: u8 = 0xA;
}

/// A fresh random `Sec-WebSocket-Key` (16 random bytes, base64).
pub(crate) fn new_key() -> String {
    let bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with.
pub(crate) fn accept_for(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The upgrade request, asking for `protocol` (`Sec-WebSocket-Protocol`) and offering
/// `extensions` (`Sec-WebSocket-Extensions`) if given.
pub(crate) fn request(
    host: &str,
    path: &str,
    key: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
) -> String {
    let protocol = protocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    let extensions = extensions
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{protocol}{extensions}\r\n"
    )
}

/// Checks a complete response head (up to and including the blank line): status 101, the
/// right accept value and, if one was asked for, that the server chose `protocol`. The error
/// is a short description for the report.
pub(crate) fn check_response(head: &[u8], key: &str, protocol: Option<&str>) -> Result<(), String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code != "101" {
        let code = if code.is_empty() { "no status" } else { code };
        return Err(format!("HTTP {code} instead of 101"));
    }
    let want = accept_for(key);
    let (mut accept, mut chosen) = (None, None);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if name.eq_ignore_ascii_case("sec-websocket-accept") {
                accept = Some(value.trim());
            } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
                chosen = Some(value.trim());
            }
        }
    }
    match accept {
        None => return Err("101 without Sec-WebSocket-Accept".into()),
        Some(accept) if accept != want => return Err("wrong Sec-WebSocket-Accept".into()),
        Some(_) => {}
    }
    match (protocol, chosen) {
        (None, _) => Ok(()),
        (Some(asked), Some(chosen)) if chosen == asked => Ok(()),
        (Some(asked), Some(chosen)) => Err(format!("subprotocol {chosen} instead of {asked}")),
        (Some(asked), None) => Err(format!("server did not choose subprotocol {asked}")),
    }
}

/// Where the response head ends (index just past `\r\n\r\n`), if it is complete.
pub(crate) fn head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// Appends one masked client frame (FIN set) with `payload` to `out`.
pub(crate) fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask = fastrand::u32(..).to_ne_bytes();
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A masked close frame with status 1000.
pub(crate) fn push_close(out: &mut Vec<u8>) {
    push_frame(out, op::CLOSE, &1000u16.to_be_bytes());
}

/// What the decoder hands to its caller for each frame it finishes looking at.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// The first frame of a text or binary message.
    Message {
        /// Its first `min(len, prefix)` payload bytes, unmasked (`prefix`: the decoder's,
        /// `HEADER_LEN` by default); of a compressed message, inflated.
        prefix: &'a [u8],
        /// RSV1 was set: the message came compressed (permessage-deflate).
        compressed: bool,
    },
    /// A ping with its whole payload.
    Ping(&'a [u8]),
    /// A close frame.
    Close,
    /// A frame that breaks the protocol.
    Bad(Violation),
}

/// What is wrong with a frame the server sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// A reserved opcode.
    Opcode(u8),
    /// Reserved bits set (the first byte's 0x70) that no agreed extension defines.
    Reserved(u8),
    /// A control frame with more than 125 payload bytes (RFC 6455 §5.5).
    LongControl(u8),
    /// RSV1 (compressed) on a control or continuation frame: only a message's first frame
    /// may carry it (RFC 7692 §6.1).
    CompressedNotFirst(u8),
    /// A compressed message that does not inflate.
    Inflate,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::Opcode(opcode) => write!(f, "opcode {opcode:#x}"),
            Violation::Reserved(bits) if *bits == 0x40 => {
                f.write_str("RSV1 (compressed) without permessage-deflate agreed")
            }
            Violation::Reserved(bits) => write!(f, "reserved bits {bits:#04x} set"),
            Violation::LongControl(opcode) => {
                write!(
                    f,
                    "control frame (opcode {opcode:#x}) longer than 125 bytes"
                )
            }
            Violation::CompressedNotFirst(opcode) => {
                write!(f, "RSV1 on a frame with opcode {opcode:#x}")
            }
            Violation::Inflate => f.write_str("compressed message that does not inflate"),
        }
    }
}

/// The longest message prefix a decoder can be asked to hand over.
pub(crate) const MAX_PREFIX: usize = 384;

/// Bytes of a server frame that may have to be kept between reads: a frame header (at most
/// 14) plus a control payload (at most 125), a message prefix (at most `MAX_PREFIX`) or the
/// start of a compressed message (at most `MAX_COMPRESSED_PREFIX`).
pub(crate) const MAX_CARRY: usize = 14 + MAX_COMPRESSED_PREFIX;

/// Decoder state kept per connection.
#[derive(Debug)]
pub(crate) struct Decoder {
    /// Payload bytes of an already reported (or ignored) frame still to be skipped.
    pub(crate) skip: u64,
    /// How many payload bytes of each message to hand over.
    prefix: u64,
    /// permessage-deflate was agreed: RSV1 on a message's first frame means compressed.
    deflate: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new(HEADER_LEN)
    }
}

impl Decoder {
    /// A decoder that hands over the first `prefix` bytes of each message (at most
    /// `MAX_PREFIX`): `HEADER_LEN` for raw benchmark messages, more for `wshub.v1` JSON.
    pub(crate) fn new(prefix: usize) -> Self {
        Self {
            skip: 0,
            prefix: prefix.min(MAX_PREFIX) as u64,
            deflate: false,
        }
    }

    /// The same decoder, accepting compressed messages if permessage-deflate was `agreed`.
    pub(crate) fn with_deflate(self, agreed: bool) -> Self {
        Self {
            deflate: agreed,
            ..self
        }
    }

    /// Walks the frames in `buf`, calling `on` for each event; compressed messages are
    /// inflated (their prefix only) with `inflater`. Returns how many bytes were consumed;
    /// the rest (at most `MAX_CARRY` bytes, the start of an unfinished frame) must be
    /// presented again, followed by more data.
    pub(crate) fn feed(
        &mut self,
        buf: &mut [u8],
        inflater: &mut Inflater,
        mut on: impl FnMut(Event<'_>),
    ) -> usize {
        let mut pos = 0;
        loop {
            if self.skip > 0 {
                let n = (self.skip).min((buf.len() - pos) as u64) as usize;
                pos += n;
                self.skip -= n as u64;
                if self.skip > 0 {
                    return pos;
                }
            }
            let rest = &buf[pos..];
            if rest.len() < 2 {
                return pos;
            }
            let fin = rest[0] & 0x80 != 0;
            let opcode = rest[0] & 0x0F;
            let compressed = self.deflate && rest[0] & 0x40 != 0;
            let reserved = rest[0] & if self.deflate { 0x30 } else { 0x70 };
            let masked = rest[1] & 0x80 != 0;
            let len7 = rest[1] & 0x7F;
            let (len, mut hlen) = match len7 {
                126 => {
                    if rest.len() < 4 {
                        return pos;
                    }
                    (u64::from(u16::from_be_bytes([rest[2], rest[3]])), 4)
                }
                127 => {
                    if rest.len() < 10 {
                        return pos;
                    }
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&rest[2..10]);
                    (u64::from_be_bytes(b), 10)
                }
                n => (u64::from(n), 2),
            };
            let mask = if masked {
                if rest.len() < hlen + 4 {
                    return pos;
                }
                let m = [rest[hlen], rest[hlen + 1], rest[hlen + 2], rest[hlen + 3]];
                hlen += 4;
                Some(m)
            } else {
                None
            };
            let avail = (rest.len() - hlen) as u64;
            // Checked before anything is kept: a long control frame would not fit the carry.
            let violation = if reserved != 0 {
                Some(Violation::Reserved(reserved))
            } else if opcode & 0x8 != 0 && len > 125 {
                Some(Violation::LongControl(opcode))
            } else if compressed && !matches!(opcode, op::TEXT | op::BINARY) {
                Some(Violation::CompressedNotFirst(opcode))
            } else {
                None
            };
            // How much payload must be in hand before the frame can be handled.
            let need = match (violation, opcode) {
                (Some(_), _) => 0,
                (None, op::TEXT | op::BINARY) if compressed => {
                    len.min(MAX_COMPRESSED_PREFIX as u64)
                }
                (None, op::TEXT | op::BINARY) => len.min(self.prefix),
                (None, op::PING | op::CLOSE) => len,
                _ => 0,
            };
            if avail < need {
                return pos;
            }
            let start = pos + hlen;
            let take = len.min(avail) as usize;
            if let Some(mask) = mask {
                for (i, b) in buf[start..start + need as usize].iter_mut().enumerate() {
                    *b ^= mask[i & 3];
                }
            }
            let payload = &buf[start..start + need as usize];
            match (violation, opcode) {
                (Some(violation), _) => on(Event::Bad(violation)),
                (None, op::TEXT | op::BINARY) if compressed => {
                    // All of the message's data is in hand if this frame is all of it.
                    let complete = fin && need == len;
                    match inflater.prefix(payload, complete, self.prefix as usize) {
                        Some(prefix) => on(Event::Message {
                            prefix,
                            compressed: true,
                        }),
                        None => on(Event::Bad(Violation::Inflate)),
                    }
                }
                (None, op::TEXT | op::BINARY) => on(Event::Message {
                    prefix: payload,
                    compressed: false,
                }),
                (None, op::PING) => on(Event::Ping(payload)),
                (None, op::CLOSE) => on(Event::Close),
                (None, op::PONG | op::CONT) => {}
                (None, other) => on(Event::Bad(Violation::Opcode(other))),
            }
            pos = start + take;
            self.skip = len - take as u64;
        }
    }
}

/// Length of the benchmark header at the start of every message the tool sends:
/// `m` or `w` (measured or warm-up), the run tag (4 hex digits), the sender id (6), the
/// sequence number (8) and the send time in µs since the Unix epoch (13).
pub(crate) const HEADER_LEN: usize = 32;

/// The fields of a benchmark message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Sent inside the measured window (not during warm-up).
    pub(crate) measured: bool,
    /// Which run this message belongs to (random per run).
    pub(crate) tag: u16,
    /// Global sender id.
    pub(crate) sender: u32,
    /// Per-sender sequence number from 0.
    pub(crate) seq: u32,
    /// Send (or, at a fixed rate, scheduled send) time, µs since the Unix epoch.
    pub(crate) sent_us: u64,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = HEX[(value & 0xF) as usize];
        value >>= 4;
    }
}

#[inline]
fn hex(bytes: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for &b in bytes {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        value = (value << 4) | u64::from(digit);
    }
    Some(value)
}

impl Header {
    /// Writes the header into the first `HEADER_LEN` bytes of `out`.
    pub(crate) fn write(&self, out: &mut [u8]) {
        out[0] = if self.measured { b'm' } else { b'w' };
        put_hex(&mut out[1..5], u64::from(self.tag));
        put_hex(&mut out[5..11], u64::from(self.sender));
        put_hex(&mut out[11..19], u64::from(self.seq));
        put_hex(&mut out[19..32], self.sent_us);
    }

    /// Parses a payload prefix; `None` for anything that is not a benchmark message.
    #[inline]
    pub(crate) fn parse(payload: &[u8]) -> Option<Header> {
        if payload.len() < HEADER_LEN {
            return None;
        }
        let measured = match payload[0] {
            b'm' => true,
            b'w' => false,
            _ => return None,
        };
        Some(Header {
            measured,
            tag: hex(&payload[1..5])? as u16,
            sender: hex(&payload[5..11])? as u32,
            seq: hex(&payload[11..19])? as u32,
            sent_us: hex(&payload[19..32])?,
        })
    }
}

/// A message body of `size` bytes (at least `HEADER_LEN`): the header slot followed by
/// printable padding. The header is filled in per message.
pub(crate) fn body_template(size: usize) -> Vec<u8> {
    (0..size.max(HEADER_LEN))
        .map(|i| b'a' + (i % 26) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmasked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(len as u8);
        } else if len <= 0xFFFF {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn accept_matches_rfc_example() {
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(
            check_response(head, "dGhlIHNhbXBsZSBub25jZQ==", None),
            Ok(())
        );
        assert!(check_response(head, "dGhlIHNhbXBsZSBub25jZQ==", Some("wshub.v1")).is_err());
        let with = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Protocol: wshub.v1\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(
            check_response(with, "dGhlIHNhbXBsZSBub25jZQ==", Some("wshub.v1")),
            Ok(())
        );
        assert!(
            request("h", "/", "k", Some("wshub.v1"), None)
                .contains("Sec-WebSocket-Protocol: wshub.v1\r\n\r\n")
        );
        assert!(
            request("h", "/", "k", None, Some(crate::deflate::OFFER)).ends_with(
                "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; server_no_context_takeover\r\n\r\n"
            )
        );
        assert!(check_response(b"HTTP/1.1 503 Busy\r\n\r\n", "x", None).is_err());
        assert_eq!(head_end(head), Some(head.len()));
        assert_eq!(new_key().len(), 24);
    }

    #[test]
    fn header_round_trip() {
        let h = Header {
            measured: true,
            tag: 0xbeef,
            sender: 12345,
            seq: 4_000_000_000,
            sent_us: 1_790_000_000_123_456,
        };
        let mut body = body_template(64);
        h.write(&mut body);
        assert_eq!(Header::parse(&body), Some(h));
        assert_eq!(Header::parse(b"hello"), None);
        assert!(std::str::from_utf8(&body).is_ok());
    }

    #[test]
    fn masked_frames_decode() {
        let mut out = Vec::new();
        push_frame(&mut out, op::TEXT, b"hello world");
        let mut big = vec![7u8; 70_000];
        big[..5].copy_from_slice(b"abcde");
        push_frame(&mut out, op::BINARY, &big);
        let mut d = Decoder::default();
        let mut seen = Vec::new();
        let used = d.feed(&mut out, &mut Inflater::default(), |e| {
            if let Event::Message { prefix, .. } = e {
                seen.push(prefix.to_vec())
            }
        });
        assert_eq!(used, out.len());
        assert_eq!(seen[0], b"hello world");
        assert_eq!(&seen[1][..5], b"abcde");
        assert_eq!(seen[1].len(), HEADER_LEN);
    }

    #[test]
    fn split_anywhere() {
        let mut stream = Vec::new();
        stream.extend(unmasked(op::TEXT, &[b'x'; 40]));
        stream.extend(unmasked(op::PING, b"pp"));
        stream.extend(unmasked(op::BINARY, &vec![b'y'; 300]));
        stream.extend(unmasked(op::PONG, b""));
        stream.extend(unmasked(op::TEXT, &vec![b'z'; 70_000]));
        stream.extend(unmasked(op::CLOSE, &[3, 232]));
        for chunk in [1usize, 2, 3, 7, 64, 1000, 100_000] {
            let mut events = Vec::new();
            feed_in_chunks(Decoder::default(), &stream, chunk, |e| {
                events.push(match e {
                    Event::Message { prefix: p, .. } => format!("m{}{}", p.len(), p[0] as char),
                    Event::Ping(p) => format!("ping{}", p.len()),
                    Event::Close => "close".into(),
                    Event::Bad(v) => format!("bad {v}"),
                })
            });
            assert_eq!(
                events,
                ["m32x", "ping2", "m32y", "m32z", "close"],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn violations_are_reported_and_skipped() {
        let mut stream = Vec::new();
        let mut rsv2 = unmasked(op::TEXT, b"x");
        rsv2[0] |= 0x20;
        stream.extend(rsv2);
        stream.extend(unmasked(0x3, b"reserved opcode"));
        stream.extend(unmasked(op::PING, &[b'p'; 200]));
        stream.extend(unmasked(op::TEXT, &[b'm'; 40]));
        for chunk in [1usize, 3, 100, 4096] {
            let mut events = Vec::new();
            feed_in_chunks(Decoder::default(), &stream, chunk, |e| {
                events.push(match e {
                    Event::Bad(v) => v.to_string(),
                    Event::Message { prefix: p, .. } => format!("m{}", p.len()),
                    other => format!("{other:?}"),
                })
            });
            assert_eq!(
                events,
                [
                    "reserved bits 0x20 set",
                    "opcode 0x3",
                    "control frame (opcode 0x9) longer than 125 bytes",
                    "m32"
                ],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn longer_prefixes_split_anywhere() {
        let mut stream = Vec::new();
        stream.extend(unmasked(op::TEXT, &[b'a'; 100]));
        stream.extend(unmasked(op::TEXT, &vec![b'b'; 5_000]));
        stream.extend(unmasked(op::PING, &[b'p'; 125]));
        stream.extend(unmasked(op::TEXT, &vec![b'c'; 70_000]));
        for chunk in [1usize, 5, 200, 383, 385, 4096] {
            let mut events = Vec::new();
            feed_in_chunks(Decoder::new(MAX_PREFIX), &stream, chunk, |e| {
                if let Event::Message { prefix: p, .. } | Event::Ping(p) = e {
                    events.push(format!("{}{}", p.len(), p[0] as char));
                }
            });
            assert_eq!(events, ["100a", "384b", "125p", "384c"], "chunk {chunk}");
        }
    }

    #[test]
    fn compressed_messages_inflate() {
        let mut h = Header {
            measured: true,
            tag: 0xbeef,
            sender: 7,
            seq: 0,
            sent_us: 1_790_000_000_123_456,
        };
        let mut stream = Vec::new();
        let mut sent = Vec::new();
        for (seq, size) in [(0u32, 1024usize), (1, 300), (2, 40), (3, 8000)] {
            h.seq = seq;
            // The header, then JSON-like text that varies (incompressible enough that the
            // 8000-byte one is longer than MAX_COMPRESSED_PREFIX compressed).
            let mut body = vec![b' '; HEADER_LEN];
            let mut x = seq;
            while body.len() < size {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                body.extend(format!(r#"{{"user":"u{}","n":{x}}},"#, x % 1000).bytes());
            }
            body.truncate(size);
            h.write(&mut body[..HEADER_LEN]);
            let deflated = crate::deflate::tests::deflate(&body);
            assert_eq!(size == 8000, deflated.len() > MAX_COMPRESSED_PREFIX);
            let mut frame = unmasked(op::TEXT, &deflated);
            frame[0] |= 0x40;
            stream.extend(frame);
            stream.extend(unmasked(op::PING, b"p"));
            sent.push(h);
        }
        // An uncompressed message in between is fine (compression is per message).
        let mut plain = body_template(64);
        h.seq = 4;
        h.write(&mut plain);
        stream.extend(unmasked(op::BINARY, &plain));
        sent.push(h);
        for chunk in [1usize, 7, 100, 1000, 100_000] {
            let (mut headers, mut compressed) = (Vec::new(), 0);
            feed_in_chunks(
                Decoder::default().with_deflate(true),
                &stream,
                chunk,
                |e| match e {
                    Event::Message {
                        prefix,
                        compressed: c,
                    } => {
                        assert_eq!(prefix.len(), HEADER_LEN);
                        headers.push(Header::parse(prefix));
                        compressed += usize::from(c);
                    }
                    Event::Ping(_) => {}
                    other => panic!("{other:?}"),
                },
            );
            let want: Vec<_> = sent.iter().copied().map(Some).collect();
            assert_eq!(headers, want, "chunk {chunk}");
            assert_eq!(compressed, 4, "chunk {chunk}");
        }
        // Without the agreement RSV1 is a protocol error, and so is RSV1 on a ping.
        let mut events = Vec::new();
        let mut ping = unmasked(op::PING, b"p");
        ping[0] |= 0x40;
        stream.extend(&ping);
        for deflate in [false, true] {
            feed_in_chunks(
                Decoder::default().with_deflate(deflate),
                &stream,
                100_000,
                |e| {
                    if let Event::Bad(v) = e {
                        events.push(v.to_string());
                    }
                },
            );
        }
        assert_eq!(events.len(), 4 + 1 + 1);
        assert_eq!(
            events[0],
            "RSV1 (compressed) without permessage-deflate agreed"
        );
        assert_eq!(events[5], "RSV1 on a frame with opcode 0x9");
        // Garbage with RSV1 set does not inflate.
        let mut junk = unmasked(op::TEXT, &[0xff; 40]);
        junk[0] |= 0x40;
        let mut bad = Vec::new();
        feed_in_chunks(Decoder::default().with_deflate(true), &junk, 9, |e| {
            bad.push(e == Event::Bad(Violation::Inflate))
        });
        assert_eq!(bad, [true]);
    }

    /// Feeds `stream` to `decoder` in pieces of `chunk` bytes, carrying over what it did not
    /// use as a reader would; the carry never exceeds `MAX_CARRY`.
    fn feed_in_chunks(
        mut decoder: Decoder,
        stream: &[u8],
        chunk: usize,
        mut on: impl FnMut(Event<'_>),
    ) {
        let mut carry: Vec<u8> = Vec::new();
        let mut inflater = Inflater::default();
        for piece in stream.chunks(chunk) {
            let mut buf = carry.clone();
            buf.extend_from_slice(piece);
            let used = decoder.feed(&mut buf, &mut inflater, &mut on);
            carry = buf[used..].to_vec();
            assert!(carry.len() <= MAX_CARRY, "chunk {chunk}");
        }
    }
}
