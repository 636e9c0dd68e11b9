//! Blocking single-connection clients for `recover`, where one connection at a time matters
//! and whole messages must be read: a WebSocket client (the same hand-written handshake,
//! complete messages reassembled from frames, pings answered, the time each message's first
//! and last bytes arrived) and an HTTP/1.1 client for `POST /api/publish` that pipelines its
//! requests over one kept-alive connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::plan::Target;
use crate::wire;

/// Largest message or response body accepted.
const MAX_MESSAGE: usize = 1 << 30;

/// A socket and the bytes read from it that are not used yet.
#[derive(Debug)]
struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Start of the unused bytes in `buf`.
    start: usize,
    /// When the first of the unused bytes arrived (about: the read that brought them).
    since: Option<Instant>,
}

impl Reader {
    fn connect(target: &Target, timeout: Duration) -> Result<Reader, String> {
        let stream = TcpStream::connect_timeout(&target.addr, timeout)
            .map_err(|e| format!("connect {}: {e}", target.addr))?;
        let _ = stream.set_nodelay(true);
        Ok(Reader {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            start: 0,
            since: None,
        })
    }

    fn unused(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Marks `n` unused bytes as used.
    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.since = None;
        } else if self.start > 1 << 20 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }

    /// Reads once (waiting at most until `deadline`), appending to the unused bytes.
    fn fill(&mut self, deadline: Instant, what: &str) -> Result<(), String> {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Err(format!("timed out waiting for {what}"));
        }
        let _ = self.stream.set_read_timeout(Some(wait));
        let len = self.buf.len();
        self.buf.resize(len + 256 * 1024, 0);
        let read = self.stream.read(&mut self.buf[len..]);
        let now = Instant::now();
        match read {
            Ok(0) => {
                self.buf.truncate(len);
                Err(format!("connection closed while waiting for {what}"))
            }
            Ok(n) => {
                self.buf.truncate(len + n);
                if len == self.start {
                    self.since = Some(now);
                }
                Ok(())
            }
            Err(e) => {
                self.buf.truncate(len);
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) {
                    Err(format!("timed out waiting for {what}"))
                } else {
                    Err(format!("read: {e}"))
                }
            }
        }
    }

    /// Reads until the unused bytes hold `\r\n\r\n`; returns the head's length.
    fn head(&mut self, deadline: Instant, what: &str) -> Result<usize, String> {
        loop {
            if let Some(end) = wire::head_end(self.unused()) {
                return Ok(end);
            }
            if self.unused().len() > 64 * 1024 {
                return Err(format!("{what}: head too long"));
            }
            self.fill(deadline, what)?;
        }
    }
}

/// One complete message from the server.
#[derive(Debug)]
pub(crate) struct Message {
    /// All of it, frames joined.
    pub(crate) payload: Vec<u8>,
    /// When its first bytes arrived (the read that brought them).
    pub(crate) first_at: Instant,
    /// When its last bytes arrived.
    pub(crate) done_at: Instant,
}

/// A blocking WebSocket client connection.
#[derive(Debug)]
pub(crate) struct Client {
    reader: Reader,
}

/// A complete frame's header, as found at the start of the unused bytes.
#[derive(Debug, PartialEq, Eq)]
struct Frame {
    fin: bool,
    opcode: u8,
    /// Where its payload is.
    payload: std::ops::Range<usize>,
    /// Its length, header included.
    len: usize,
}

/// The complete frame at the start of `bytes`; `Ok(None)` when more bytes are needed.
fn frame(bytes: &[u8]) -> Result<Option<Frame>, String> {
    if bytes.len() < 2 {
        return Ok(None);
    }
    let fin = bytes[0] & 0x80 != 0;
    let opcode = bytes[0] & 0x0F;
    let masked = bytes[1] & 0x80 != 0;
    let (len, mut at) = match bytes[1] & 0x7F {
        126 if bytes.len() < 4 => return Ok(None),
        126 => (u64::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
        127 if bytes.len() < 10 => return Ok(None),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > MAX_MESSAGE as u64 {
        return Err(format!("frame of {len} bytes is too large"));
    }
    if masked {
        at += 4;
    }
    let end = at + len as usize;
    if bytes.len() < end {
        return Ok(None);
    }
    if masked {
        return Err("masked frame from the server".into());
    }
    Ok(Some(Frame {
        fin,
        opcode,
        payload: at..end,
        len: end,
    }))
}

impl Client {
    /// Connects and completes the handshake, asking for `protocol` (which the server must
    /// choose).
    pub(crate) fn connect(
        target: &Target,
        protocol: Option<&str>,
        timeout: Duration,
    ) -> Result<Client, String> {
        let deadline = Instant::now() + timeout;
        let mut reader = Reader::connect(target, timeout)?;
        let key = wire::new_key();
        reader
            .stream
            .write_all(wire::request(&target.host, &target.path, &key, protocol, None).as_bytes())
            .map_err(|e| format!("handshake write: {e}"))?;
        let end = reader.head(deadline, "the handshake response")?;
        wire::check_response(&reader.unused()[..end], &key, protocol)
            .map_err(|e| format!("handshake: {e}"))?;
        reader.consume(end);
        Ok(Client { reader })
    }

    /// Sends one text message.
    pub(crate) fn send_text(&mut self, payload: &[u8]) -> Result<(), String> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        wire::push_frame(&mut out, wire::op::TEXT, payload);
        self.reader
            .stream
            .write_all(&out)
            .map_err(|e| format!("write: {e}"))
    }

    /// The next complete text or binary message (pings are answered on the way), waiting at
    /// most until `deadline`.
    pub(crate) fn next(&mut self, deadline: Instant) -> Result<Message, String> {
        let mut payload = Vec::new();
        let mut first_at = None;
        loop {
            let parsed = frame(self.reader.unused())?;
            let Some(Frame {
                fin,
                opcode,
                payload: range,
                len,
            }) = parsed
            else {
                self.reader.fill(deadline, "a message")?;
                continue;
            };
            let arrived = self.reader.since.unwrap_or_else(Instant::now);
            match opcode {
                wire::op::PING => {
                    let mut pong = Vec::new();
                    wire::push_frame(&mut pong, wire::op::PONG, &self.reader.unused()[range]);
                    self.reader.consume(len);
                    self.reader
                        .stream
                        .write_all(&pong)
                        .map_err(|e| format!("write: {e}"))?;
                }
                wire::op::PONG => self.reader.consume(len),
                wire::op::CLOSE => return Err("the server closed the connection".into()),
                wire::op::TEXT | wire::op::BINARY | wire::op::CONT => {
                    first_at.get_or_insert(arrived);
                    payload.extend_from_slice(&self.reader.unused()[range]);
                    if payload.len() > MAX_MESSAGE {
                        return Err("message too large".into());
                    }
                    self.reader.consume(len);
                    if fin {
                        let done_at = Instant::now();
                        return Ok(Message {
                            payload,
                            first_at: first_at.unwrap_or(done_at),
                            done_at,
                        });
                    }
                }
                other => return Err(format!("frame with opcode {other:#x}")),
            }
        }
    }

    /// Sends a close frame and waits briefly for the server's close and end of connection.
    pub(crate) fn close(mut self) {
        let mut out = Vec::new();
        wire::push_close(&mut out);
        if self.reader.stream.write_all(&out).is_err() {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match frame(self.reader.unused()) {
                Ok(Some(Frame { opcode, len, .. })) => {
                    self.reader.consume(len);
                    if opcode == wire::op::CLOSE {
                        break;
                    }
                }
                Ok(None) => {
                    if self.reader.fill(deadline, "the close").is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        // Wait for the server's end of the TCP connection (TIME_WAIT stays there).
        let _ = self.reader.fill(deadline, "the end of the connection");
    }
}

/// An HTTP/1.1 client for `POST` requests over one kept-alive connection.
#[derive(Debug)]
pub(crate) struct Http {
    reader: Reader,
    host: String,
    path: String,
    authorization: String,
}

/// One HTTP response.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Http {
    /// Connects to `target`'s address; requests go to `path` with `Authorization: Bearer
    /// key`.
    pub(crate) fn connect(
        target: &Target,
        path: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<Http, String> {
        Ok(Http {
            reader: Reader::connect(target, timeout)?,
            host: target.host.clone(),
            path: path.into(),
            authorization: format!("Bearer {key}"),
        })
    }

    /// Appends a JSON `POST` with `body` to `out` (send several, then read their responses
    /// in order: pipelining).
    pub(crate) fn push_request(&self, out: &mut Vec<u8>, body: &[u8]) {
        out.extend_from_slice(
            format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                self.path,
                self.host,
                self.authorization,
                body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(body);
    }

    /// Writes `bytes` (requests made by `push_request`).
    pub(crate) fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.reader
            .stream
            .write_all(bytes)
            .map_err(|e| format!("write: {e}"))
    }

    /// Reads the next response (Content-Length or chunked body).
    pub(crate) fn response(&mut self, deadline: Instant) -> Result<Response, String> {
        let end = self.reader.head(deadline, "an HTTP response")?;
        let head = String::from_utf8_lossy(&self.reader.unused()[..end]).into_owned();
        self.reader.consume(end);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("bad HTTP status line in {head:?}"))?;
        let (mut length, mut chunked) = (None, false);
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                let name = name.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.to_ascii_lowercase().contains("chunked");
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(i) = self.reader.unused().windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    self.reader.fill(deadline, "a chunk")?;
                };
                let size_text = String::from_utf8_lossy(&self.reader.unused()[..line_end])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let size = usize::from_str_radix(&size_text, 16)
                    .map_err(|_| format!("bad chunk size {size_text:?}"))?;
                self.reader.consume(line_end + 2);
                while self.reader.unused().len() < size + 2 {
                    self.reader.fill(deadline, "a chunk")?;
                }
                body.extend_from_slice(&self.reader.unused()[..size]);
                self.reader.consume(size + 2);
                if size == 0 {
                    break;
                }
                if body.len() > MAX_MESSAGE {
                    return Err("response too large".into());
                }
            }
        } else {
            let length = length.unwrap_or(0).min(MAX_MESSAGE);
            while self.reader.unused().len() < length {
                self.reader.fill(deadline, "an HTTP response body")?;
            }
            body.extend_from_slice(&self.reader.unused()[..length]);
            self.reader.consume(length);
        }
        Ok(Response { status, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_whole_or_not_at_all() {
        let mut bytes = vec![0x81, 5];
        bytes.extend_from_slice(b"hello");
        assert_eq!(frame(&bytes[..4]), Ok(None));
        assert_eq!(
            frame(&bytes),
            Ok(Some(Frame {
                fin: true,
                opcode: 1,
                payload: 2..7,
                len: 7
            }))
        );
        let mut big = vec![0x02, 126, 1, 0];
        big.extend(std::iter::repeat_n(0u8, 256));
        assert_eq!(
            frame(&big),
            Ok(Some(Frame {
                fin: false,
                opcode: 2,
                payload: 4..260,
                len: 260
            }))
        );
        assert!(frame(&[0x81, 0x85, 1, 2, 3, 4, 0, 0, 0, 0, 0]).is_err());
    }
}
