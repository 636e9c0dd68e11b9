//! The parts of the `wshub.v1` protocol (PROTOCOL.md) the tool speaks: the subscribe and
//! publish commands it sends (the publication's `data` is a JSON string that starts with the
//! benchmark header), and a parser for the prefix of the server's frames that tells pushes
//! (offset and benchmark header) from replies (subscribe position, publish results, errors)
//! without parsing the whole JSON: on the hot path only the first `PREFIX` bytes are looked
//! at, and a push in wshub's own field order is recognised by comparing its known start.

use crate::wire::{HEADER_LEN, body_template};

/// The subprotocol name a client asks for.
pub(crate) const SUBPROTOCOL: &str = "wshub.v1";

/// Payload bytes of each server frame a `wshub.v1` connection looks at: enough for a push's
/// channel (at most `MAX_CHANNEL`), offset, epoch and the benchmark header at the start of
/// its data, and for most of an error message.
pub(crate) const PREFIX: usize = crate::wire::MAX_PREFIX;

/// Longest channel name the tool accepts (so that a push's header fits in `PREFIX`).
pub(crate) const MAX_CHANNEL: usize = 100;

/// The `id` of the subscribe command.
pub(crate) const SUBSCRIBE_ID: u64 = 0;
/// The `id` of every publish command of the channel workload.
pub(crate) const PUBLISH_ID: u64 = 1;

/// Checks a channel name: 1 to `MAX_CHANNEL` bytes, no spaces, control characters, quotes or
/// backslashes (so it needs no escaping and can be matched byte for byte).
pub(crate) fn check_channel(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_CHANNEL {
        return Err(format!(
            "channel name must be 1 to {MAX_CHANNEL} bytes: {name:?}"
        ));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\')
    {
        return Err(format!(
            "channel name must not hold spaces, control characters, quotes or backslashes: {name:?}"
        ));
    }
    Ok(())
}

/// `{"id":ID,"cmd":"subscribe","channel":"NAME"}`, with `"since"` if given.
pub(crate) fn subscribe(channel: &str, id: u64, since: Option<(&str, u64)>) -> String {
    let since = since
        .map(|(epoch, offset)| {
            format!(
                r#","since":{{"epoch":{},"offset":{offset}}}"#,
                serde_json::Value::from(epoch)
            )
        })
        .unwrap_or_default();
    format!(
        r#"{{"id":{id},"cmd":"subscribe","channel":{}{since}}}"#,
        serde_json::Value::from(channel)
    )
}

/// A JSON text `<before>"<data>"<after>` whose data string is `size` characters (at least
/// `HEADER_LEN`) of printable padding; returns it and where the header slot (the data's first
/// `HEADER_LEN` bytes) starts.
fn with_data(before: &str, size: usize, after: &str) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(before.len() + size + after.len() + 2);
    out.extend_from_slice(before.as_bytes());
    out.push(b'"');
    let at = out.len();
    out.extend_from_slice(&body_template(size));
    out.push(b'"');
    out.extend_from_slice(after.as_bytes());
    (out, at)
}

/// `{"id":ID,"cmd":"publish","channel":"NAME","data":"<size characters>"}` and the offset of
/// the header slot inside it.
pub(crate) fn publish_template(channel: &str, id: u64, size: usize) -> (Vec<u8>, usize) {
    with_data(
        &format!(
            r#"{{"id":{id},"cmd":"publish","channel":{},"data":"#,
            serde_json::Value::from(channel)
        ),
        size,
        "}",
    )
}

/// The `POST /api/publish` body `{"channel":"NAME","data":"<size characters>"}` and the
/// offset of the header slot inside it.
pub(crate) fn api_body_template(channel: &str, size: usize) -> (Vec<u8>, usize) {
    with_data(
        &format!(
            r#"{{"channel":{},"data":"#,
            serde_json::Value::from(channel)
        ),
        size,
        "}",
    )
}

/// The start of a push on `channel` in wshub's field order, up to the offset's digits.
pub(crate) fn push_head(channel: &str) -> Vec<u8> {
    format!(
        r#"{{"channel":{},"offset":"#,
        serde_json::Value::from(channel)
    )
    .into_bytes()
}

/// What the prefix of a server frame is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A publication: its offset and, when its data is a JSON string, the bytes after the
    /// opening quote that are inside the prefix.
    Push { offset: u64, data: Option<&'a [u8]> },
    /// A successful reply; `offset` is the position's offset when the result has one.
    Result {
        id: Option<u64>,
        offset: Option<u64>,
    },
    /// An error reply.
    Error {
        id: Option<u64>,
        code: u64,
        message: String,
    },
    /// Anything else (presence events, frames that are not `wshub.v1`).
    Other,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The bytes after the first `needle` in `hay`.
fn after<'a>(hay: &'a [u8], needle: &[u8]) -> Option<&'a [u8]> {
    find(hay, needle).map(|i| &hay[i + needle.len()..])
}

/// The decimal number at the start of `bytes` (at least one digit) and what follows it.
#[inline]
fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let mut value = 0u64;
    for &b in &bytes[..digits] {
        value = value * 10 + u64::from(b - b'0');
    }
    Some((value, &bytes[digits..]))
}

/// Parses the prefix of a server frame; `head` is `push_head` of the subscribed channel (the
/// fast path: a push in wshub's order is recognised without searching).
#[inline]
pub(crate) fn parse<'a>(payload: &'a [u8], head: &[u8]) -> Frame<'a> {
    if let Some(rest) = payload.strip_prefix(head)
        && let Some((offset, rest)) = number(rest)
    {
        // ,"epoch":"<hex>","data":"...
        let data = rest
            .strip_prefix(br#","epoch":""#)
            .and_then(|r| r.iter().position(|&b| b == b'"').map(|i| &r[i + 1..]))
            .and_then(|r| r.strip_prefix(br#","data":""#));
        return match data {
            Some(data) => Frame::Push {
                offset,
                data: Some(data),
            },
            None => Frame::Push {
                offset,
                data: after(rest, br#""data":""#),
            },
        };
    }
    parse_slow(payload)
}

/// Any field order.
fn parse_slow(payload: &[u8]) -> Frame<'_> {
    if let Some(rest) = payload.strip_prefix(br#"{"id":"#) {
        let id = number(rest).map(|(id, _)| id);
        if let Some(result) = after(rest, br#""result":"#) {
            return Frame::Result {
                id,
                offset: after(result, br#""offset":"#)
                    .and_then(number)
                    .map(|(o, _)| o),
            };
        }
        if let Some(error) = after(rest, br#""error":"#) {
            let code = after(error, br#""code":"#)
                .and_then(number)
                .map_or(0, |(c, _)| c);
            let message = after(error, br#""message":""#)
                .map(|m| {
                    if m.first() == Some(&b'"') {
                        return String::new();
                    }
                    let end = m
                        .windows(2)
                        .position(|w| w[1] == b'"' && w[0] != b'\\')
                        .map_or(m.len(), |i| i + 1);
                    String::from_utf8_lossy(&m[..end]).into_owned()
                })
                .unwrap_or_default();
            return Frame::Error { id, code, message };
        }
        return Frame::Other;
    }
    if find(payload, br#""channel":"#).is_some()
        && let Some((offset, _)) = after(payload, br#""offset":"#).and_then(number)
    {
        return Frame::Push {
            offset,
            data: after(payload, br#""data":""#),
        };
    }
    Frame::Other
}

/// The benchmark header at the start of a push's data string, if it is there in full.
#[inline]
pub(crate) fn data_header(data: Option<&[u8]>) -> Option<&[u8]> {
    data.filter(|d| d.len() >= HEADER_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Header;

    #[test]
    fn commands_are_json() {
        let s = subscribe("room:1", 0, Some(("1a2b", 41)));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap_or_default();
        assert_eq!(v["cmd"], "subscribe");
        assert_eq!(v["since"]["offset"], 41);
        assert_eq!(v["since"]["epoch"], "1a2b");
        let (cmd, at) = publish_template("room", PUBLISH_ID, 64);
        let v: serde_json::Value = serde_json::from_slice(&cmd).unwrap_or_default();
        assert_eq!(v["data"].as_str().map(str::len), Some(64));
        assert_eq!(cmd[at - 1], b'"');
        let (body, at) = api_body_template("room", 40);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v["data"].as_str().map(str::len), Some(40));
        assert_eq!(&body[at..at + 2], b"ab");
        assert!(check_channel("a b").is_err());
        assert!(check_channel("").is_err());
        assert!(check_channel(&"x".repeat(101)).is_err());
        assert!(check_channel("chat:room-1").is_ok());
    }

    #[test]
    fn frames() {
        let head = push_head("room");
        let mut data = body_template(40);
        let h = Header {
            measured: true,
            tag: 7,
            sender: 3,
            seq: 9,
            sent_us: 1_790_000_000_000_000,
        };
        h.write(&mut data);
        let text = format!(
            r#"{{"channel":"room","offset":42,"epoch":"1a2b3c","data":"{}"}}"#,
            String::from_utf8_lossy(&data)
        );
        let Frame::Push { offset, data: got } = parse(text.as_bytes(), &head) else {
            panic!("not a push: {text}")
        };
        assert_eq!(offset, 42);
        assert_eq!(data_header(got).and_then(Header::parse), Some(h));
        // Another field order takes the slow path.
        let other = format!(
            r#"{{"offset":43,"data":"{}","channel":"room"}}"#,
            String::from_utf8_lossy(&data)
        );
        assert!(matches!(
            parse(other.as_bytes(), &head),
            Frame::Push {
                offset: 43,
                data: Some(_)
            }
        ));
        assert_eq!(
            parse(br#"{"id":0,"result":{"epoch":"ab","offset":17}}"#, &head),
            Frame::Result {
                id: Some(0),
                offset: Some(17)
            }
        );
        assert_eq!(
            parse(
                br#"{"id":1,"error":{"code":404,"message":"unknown channel `x`: \"y\""}}"#,
                &head
            ),
            Frame::Error {
                id: Some(1),
                code: 404,
                message: r#"unknown channel `x`: \"y\""#.into()
            }
        );
        assert_eq!(
            parse(br#"{"channel":"room","join":{"conn":"17"}}"#, &head),
            Frame::Other
        );
        assert_eq!(parse(b"mabcd", &head), Frame::Other);
        // A push whose data is not a string.
        assert_eq!(
            parse(
                br#"{"channel":"room","offset":5,"epoch":"e","data":{"x":1}}"#,
                &head
            ),
            Frame::Push {
                offset: 5,
                data: None
            }
        );
    }
}
