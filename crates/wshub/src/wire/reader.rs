//! The frame reader: the bytes a client sends → messages, pings and its close, with every
//! RFC 6455 rule a server must enforce.
//!
//! It owns no socket and no read buffer. The connection reads into a scratch buffer of
//! its worker thread and [`FrameReader::feed`]s the bytes here; complete frames are
//! unmasked in place and turned into [`Inbound`] events at once, so between frames a
//! connection holds nothing. Only an unfinished frame is copied into `pending`, and
//! released as soon as it completes.
//!
//! Rules and where they are checked: masks, RSV bits, opcodes and control-frame rules at
//! the frame header (`check`); `max_message_size` at the header too, counting the earlier
//! fragments (so an oversized frame is refused before its payload arrives); UTF-8 as the
//! bytes arrive, also across fragments and within an unfinished frame (fail fast); close
//! codes and reasons in `close_frame`.

use std::io::Cursor;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

use crate::compression::codec::{self, InflateError};
use crate::message::{CloseReason, Message};

/// What a client sent, one complete frame or message at a time.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// A complete text or binary message (fragments joined).
    Message(Message),
    /// A ping with its payload, to be answered with a pong.
    Ping(Bytes),
    /// The client's close frame: its code and reason (1005 when it gave none).
    Close(CloseReason),
}

/// Why the client's bytes are refused; each is one close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// 1002: a frame breaks the protocol.
    Protocol,
    /// 1007: a text message (or close reason) is not UTF-8.
    Utf8,
    /// 1009: a message is larger than `max_message_size`.
    TooBig,
    /// 1007: a compressed message is not a deflate stream.
    Corrupt,
}

impl ReadError {
    /// The close the connection ends with.
    pub(crate) fn close_reason(self) -> CloseReason {
        match self {
            ReadError::Protocol => CloseReason::PROTOCOL_ERROR,
            ReadError::Utf8 => CloseReason::INVALID_UTF8,
            ReadError::TooBig => CloseReason::MESSAGE_TOO_BIG,
            ReadError::Corrupt => CloseReason::new(1007, "invalid compressed data"),
        }
    }
}

/// One connection's reading state: small, and allocation-free between frames.
#[derive(Debug)]
pub(crate) struct FrameReader {
    max_message_size: usize,
    /// The bytes of an unfinished frame (header and payload so far); empty otherwise.
    pending: Vec<u8>,
    /// How much of the unfinished frame's payload is already unmasked and checked.
    unmasked: usize,
    /// A fragmented message whose final frame has not arrived.
    fragments: Option<Fragments>,
    /// UTF-8 state of the text message in progress.
    utf8: Utf8Check,
    /// The client's close frame was read: it may send nothing after it.
    closed: bool,
    /// permessage-deflate was agreed: RSV1 marks a compressed message.
    inflate: bool,
}

#[derive(Debug)]
struct Fragments {
    text: bool,
    /// RSV1 was set on the first frame: `data` is deflated.
    compressed: bool,
    data: Vec<u8>,
}

/// A parsed frame header, checked.
struct Header {
    fin: bool,
    /// RSV1 on a first data frame: the message is compressed.
    compressed: bool,
    opcode: OpCode,
    mask: [u8; 4],
    /// Header bytes, mask included.
    len: usize,
    payload_len: usize,
}

impl FrameReader {
    pub(crate) fn new(max_message_size: usize) -> FrameReader {
        FrameReader {
            max_message_size,
            pending: Vec::new(),
            unmasked: 0,
            fragments: None,
            utf8: Utf8Check::default(),
            closed: false,
            inflate: false,
        }
    }

    /// Accepts compressed messages (RSV1) from now on: permessage-deflate was agreed.
    pub(crate) fn inflate(&mut self, on: bool) {
        self.inflate = on;
    }

    /// Takes bytes just read from the client (unmasking them in place) and appends what
    /// they complete to `out`. After an error or the client's close, nothing more is read.
    pub(crate) fn feed(
        &mut self,
        input: &mut [u8],
        out: &mut Vec<Inbound>,
    ) -> Result<(), ReadError> {
        if self.closed {
            return Ok(());
        }
        if self.pending.is_empty() {
            // The common case: frames parsed straight from the scratch buffer.
            let used = self.parse(input, out)?;
            if !self.closed && used < input.len() {
                self.pending.extend_from_slice(&input[used..]);
            }
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(input);
            let used = self.parse(&mut pending, out)?;
            if !self.closed && used < pending.len() {
                pending.drain(..used);
                self.pending = pending;
            } // else the buffer is dropped: an idle connection keeps none
        }
        Ok(())
    }

    /// True once the client's close frame (valid or not) has been read.
    pub(crate) fn peer_closed(&self) -> bool {
        self.closed
    }

    /// Parses every complete frame at the front of `bytes`; returns how many bytes they
    /// took. The unfinished frame after them, if any, is unmasked and checked as far as it
    /// goes (`self.unmasked`), so invalid UTF-8 is refused before the frame ends.
    fn parse(&mut self, bytes: &mut [u8], out: &mut Vec<Inbound>) -> Result<usize, ReadError> {
        let mut at = 0;
        while !self.closed {
            let rest = &mut bytes[at..];
            let header = match self.header(rest) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(error) => {
                    // A bad close frame is still the peer's last word.
                    if rest.first().is_some_and(|b| b & 0x0F == 0x8) {
                        self.closed = true;
                    }
                    return Err(error);
                }
            };
            let end = header.len + header.payload_len;
            let available = rest.len().min(end);
            let payload = &mut rest[header.len..available];
            let done = self.unmasked;
            unmask(&mut payload[done..], header.mask, done);
            if self.is_text(&header) {
                if done == 0 && header.opcode == OpCode::Data(Data::Text) {
                    self.utf8 = Utf8Check::default();
                }
                if !self.utf8.feed(&payload[done..]) {
                    return Err(ReadError::Utf8);
                }
            }
            if available < end {
                self.unmasked = payload.len();
                break;
            }
            self.unmasked = 0;
            self.complete(&header, payload, out)?;
            at += end;
        }
        Ok(at)
    }

    /// Whether this data frame belongs to a text message whose bytes we can check as
    /// they come (a compressed one is checked once inflated).
    fn is_text(&self, header: &Header) -> bool {
        match header.opcode {
            OpCode::Data(Data::Text) => !header.compressed,
            OpCode::Data(Data::Continue) => self
                .fragments
                .as_ref()
                .is_some_and(|f| f.text && !f.compressed),
            _ => false,
        }
    }

    /// Parses and checks the frame header at the front of `bytes` (`None`: incomplete).
    fn header(&self, bytes: &[u8]) -> Result<Option<Header>, ReadError> {
        let mut cursor = Cursor::new(bytes);
        let Some((header, payload_len)) =
            FrameHeader::parse(&mut cursor).map_err(|_| ReadError::Protocol)?
        else {
            return Ok(None);
        };
        // RSV1 means "compressed", and only on a message's first frame when
        // permessage-deflate was agreed; the other bits are never ours.
        let first_data = matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary));
        if (header.rsv1 && !(self.inflate && first_data)) || header.rsv2 || header.rsv3 {
            return Err(ReadError::Protocol);
        }
        // A client must mask every frame (RFC 6455 §5.1).
        let mask = header.mask.ok_or(ReadError::Protocol)?;
        match header.opcode {
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                return Err(ReadError::Protocol);
            }
            OpCode::Control(_) => {
                // Control frames are short and never fragmented (§5.5).
                if !header.is_final || payload_len > 125 {
                    return Err(ReadError::Protocol);
                }
            }
            OpCode::Data(Data::Continue) => {
                if self.fragments.is_none() {
                    return Err(ReadError::Protocol);
                }
            }
            OpCode::Data(_) => {
                if self.fragments.is_some() {
                    return Err(ReadError::Protocol);
                }
            }
        }
        if let OpCode::Data(_) = header.opcode {
            let so_far = self.fragments.as_ref().map_or(0, |f| f.data.len()) as u64;
            if so_far.saturating_add(payload_len) > self.max_message_size as u64 {
                return Err(ReadError::TooBig);
            }
        }
        Ok(Some(Header {
            fin: header.is_final,
            compressed: header.rsv1,
            opcode: header.opcode,
            mask,
            len: cursor.position() as usize,
            // Bounded above by max_message_size (data) or 125 (control).
            payload_len: payload_len as usize,
        }))
    }

    /// A whole frame has arrived, its payload unmasked and (for text) checked.
    fn complete(
        &mut self,
        header: &Header,
        payload: &[u8],
        out: &mut Vec<Inbound>,
    ) -> Result<(), ReadError> {
        match header.opcode {
            OpCode::Control(Control::Ping) => {
                out.push(Inbound::Ping(Bytes::copy_from_slice(payload)))
            }
            OpCode::Control(Control::Pong) => {} // a sign of life, nothing more
            OpCode::Control(_) => {
                // Closed even when the frame is invalid: the peer sends nothing after it.
                self.closed = true;
                out.push(Inbound::Close(close_frame(payload)?));
            }
            OpCode::Data(Data::Continue) => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(ReadError::Protocol); // checked at the header
                };
                fragments.data.extend_from_slice(payload);
                if header.fin
                    && let Some(fragments) = self.fragments.take()
                {
                    let message = if fragments.compressed {
                        self.inflated(fragments.text, &fragments.data)?
                    } else if fragments.text && !self.utf8.is_complete() {
                        return Err(ReadError::Utf8);
                    } else {
                        Message::from_payload(fragments.text, &fragments.data)
                    };
                    out.push(Inbound::Message(message));
                }
            }
            OpCode::Data(data) => {
                let text = data == Data::Text;
                if !header.fin {
                    self.fragments = Some(Fragments {
                        text,
                        compressed: header.compressed,
                        data: payload.to_vec(),
                    });
                } else if header.compressed {
                    out.push(Inbound::Message(self.inflated(text, payload)?));
                } else if text && !self.utf8.is_complete() {
                    return Err(ReadError::Utf8);
                } else {
                    out.push(Inbound::Message(Message::from_payload(text, payload)));
                }
            }
        }
        Ok(())
    }
}

impl FrameReader {
    /// A compressed message, inflated within `max_message_size` and checked.
    fn inflated(&self, text: bool, compressed: &[u8]) -> Result<Message, ReadError> {
        let payload =
            codec::inflate(compressed, self.max_message_size).map_err(|error| match error {
                InflateError::TooBig => ReadError::TooBig,
                InflateError::Corrupt => ReadError::Corrupt,
            })?;
        if text && std::str::from_utf8(&payload).is_err() {
            return Err(ReadError::Utf8);
        }
        Ok(Message::from_payload(text, &payload))
    }
}

/// The client's close frame: no payload (1005), or a valid code and a UTF-8 reason.
fn close_frame(payload: &[u8]) -> Result<CloseReason, ReadError> {
    match payload {
        [] => Ok(CloseReason::new(1005, "")),
        [_] => Err(ReadError::Protocol),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !CloseCode::from(code).is_allowed() {
                return Err(ReadError::Protocol);
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ReadError::Utf8)?;
            Ok(CloseReason::new(code, reason.to_owned()))
        }
    }
}

/// XORs `payload` with the mask, `offset` bytes into the frame's payload. Eight bytes at
/// a time: safe code the compiler vectorizes.
fn unmask(payload: &mut [u8], mask: [u8; 4], offset: usize) {
    let m = [0, 1, 2, 3].map(|i| mask[(offset + i) % 4]);
    let wide = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= m[i % 4];
    }
}

/// Reads `bytes` fed in chunks of `step`: the events, or the first error (tests, fuzzing).
#[cfg(test)]
pub(crate) fn read_all(bytes: &[u8], step: usize, max: usize) -> Result<Vec<Inbound>, ReadError> {
    read_all_inflating(bytes, step, max, false)
}

/// As [`read_all`], with permessage-deflate agreed when `inflate`.
#[cfg(any(test, fuzzing))]
pub(crate) fn read_all_inflating(
    bytes: &[u8],
    step: usize,
    max: usize,
    inflate: bool,
) -> Result<Vec<Inbound>, ReadError> {
    let mut reader = FrameReader::new(max);
    reader.inflate(inflate);
    let mut out = Vec::new();
    for chunk in bytes.chunks(step) {
        reader.feed(&mut chunk.to_vec(), &mut out)?;
    }
    Ok(out)
}

/// Incremental UTF-8 validation: chunks may split a character anywhere.
#[derive(Debug, Default, Clone, Copy)]
struct Utf8Check {
    /// The start of a character split by the last chunk's end (at most 3 bytes).
    tail: [u8; 4],
    tail_len: u8,
}

impl Utf8Check {
    /// Checks the next chunk; false as soon as the text cannot be valid UTF-8.
    fn feed(&mut self, mut chunk: &[u8]) -> bool {
        if self.tail_len > 0 {
            // Complete the split character first, a byte at a time (at most 3).
            while self.tail_len > 0 {
                let Some((&byte, rest)) = chunk.split_first() else {
                    return true;
                };
                self.tail[usize::from(self.tail_len)] = byte;
                self.tail_len += 1;
                chunk = rest;
                match std::str::from_utf8(&self.tail[..usize::from(self.tail_len)]) {
                    Ok(_) => self.tail_len = 0,
                    Err(e) if e.error_len().is_some() => return false,
                    Err(_) => {} // still a valid prefix
                }
            }
        }
        match std::str::from_utf8(chunk) {
            Ok(_) => true,
            // Invalid bytes, not merely a character cut off at the end.
            Err(e) if e.error_len().is_some() => false,
            Err(e) => {
                let tail = &chunk[e.valid_up_to()..];
                self.tail[..tail.len()].copy_from_slice(tail);
                self.tail_len = tail.len() as u8;
                true
            }
        }
    }

    /// True when no character is left unfinished.
    fn is_complete(&self) -> bool {
        self.tail_len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    use read_all as read;

    fn text(s: &str) -> Inbound {
        Inbound::Message(Message::text(s))
    }

    #[test]
    fn messages_arrive_whole_however_the_bytes_are_split() {
        let mut bytes = frame(0x81, b"hello");
        bytes.extend(frame(0x01, "wörl".as_bytes()));
        bytes.extend(frame(0x89, b"p")); // a ping between fragments
        bytes.extend(frame(0x80, "d!".as_bytes()));
        bytes.extend(frame(0x82, &[7u8; 300]));
        bytes.extend(frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e']));
        for step in [1, 2, 3, 7, 64, bytes.len()] {
            let events = read(&bytes, step, 1024).unwrap();
            assert_eq!(
                events,
                vec![
                    text("hello"),
                    Inbound::Ping(Bytes::from_static(b"p")),
                    text("wörld!"),
                    Inbound::Message(Message::binary(vec![7u8; 300])),
                    Inbound::Close(CloseReason::new(1000, "bye")),
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn protocol_violations_are_1002() {
        let cases: Vec<Vec<u8>> = vec![
            frame(0xC1, b"x"),                               // RSV1 without an extension
            frame(0x83, b"x"),                               // reserved data opcode
            frame(0x8B, b""),                                // reserved control opcode
            frame(0x09, b""),                                // fragmented ping
            frame(0x89, &[0u8; 126]),                        // ping over 125 bytes
            frame(0x80, b"x"),                               // continuation with no message
            [frame(0x01, b"a"), frame(0x81, b"b")].concat(), // new message mid-message
            frame(0x88, &[3]),                               // close payload of one byte
            frame(0x88, &[0x03, 0xed]),                      // close code 1005
            frame(0x88, &[0x03, 0xe7]),                      // close code 999
            vec![0x81, 0x01, b'x'],                          // unmasked
        ];
        for (i, bytes) in cases.iter().enumerate() {
            assert_eq!(read(bytes, 1, 1024), Err(ReadError::Protocol), "case {i}");
        }
    }

    #[test]
    fn invalid_utf8_fails_fast_even_inside_an_unfinished_frame() {
        let mut bytes = frame(0x81, &[b'a', 0xff, b'b', b'c', b'd']);
        bytes.truncate(bytes.len() - 2); // the frame never completes
        assert_eq!(read(&bytes, 1, 1024), Err(ReadError::Utf8));
        // Split across fragments, a character is fine; cut off at the end, it is not.
        let euro = "€".as_bytes();
        let ok = [frame(0x01, &euro[..1]), frame(0x80, &euro[1..])].concat();
        assert_eq!(read(&ok, 1, 1024), Ok(vec![text("€")]));
        let cut = [frame(0x01, &euro[..1]), frame(0x80, &euro[1..2])].concat();
        assert_eq!(read(&cut, 100, 1024), Err(ReadError::Utf8));
        assert_eq!(
            read(&frame(0x88, &[3, 232, 0xff]), 5, 1024),
            Err(ReadError::Utf8)
        );
    }

    #[test]
    fn oversized_messages_are_1009_at_the_header_also_across_fragments() {
        // Only the header: refused before any payload arrives.
        assert_eq!(
            read(&frame(0x82, &[0; 200])[..8], 8, 100),
            Err(ReadError::TooBig)
        );
        let two = [frame(0x02, &[0; 60]), frame(0x80, &[0; 60])].concat();
        assert_eq!(read(&two, 1000, 100), Err(ReadError::TooBig));
        assert_eq!(
            read(&frame(0x82, &[0; 100]), 1000, 100).map(|e| e.len()),
            Ok(1)
        );
    }

    #[test]
    fn nothing_is_kept_between_frames() {
        let mut reader = FrameReader::new(1024);
        let mut out = Vec::new();
        let bytes = frame(0x81, b"hello");
        reader.feed(&mut bytes[..3].to_vec(), &mut out).unwrap();
        assert!(reader.pending.capacity() > 0);
        reader.feed(&mut bytes[3..].to_vec(), &mut out).unwrap();
        assert_eq!(out, vec![text("hello")]);
        assert_eq!(
            reader.pending.capacity(),
            0,
            "the unfinished frame's buffer is released"
        );
    }

    #[test]
    fn unmask_matches_the_bytewise_definition_at_every_offset() {
        let mask = [1, 2, 3, 4];
        for offset in 0..4 {
            let mut data: Vec<u8> = (0..37).collect();
            unmask(&mut data, mask, offset);
            let expected: Vec<u8> = (0..37u8)
                .map(|i| i ^ mask[(offset + i as usize) % 4])
                .collect();
            assert_eq!(data, expected);
        }
    }
}
