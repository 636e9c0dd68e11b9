//! The `wshub.v1` wire format: commands a client sends, the replies and pushes it gets.
//!
//! Pure encoding and decoding, no I/O and no state: `session` decides what a command
//! does, `channels` delivers. Every frame is one JSON object (PROTOCOL.md has examples):
//!
//! - command: `{"id": 1, "cmd": "subscribe", "channel": "room", "since": {"epoch": "…", "offset": 7}}`
//! - reply:   `{"id": 1, "result": {…}}` or `{"id": 1, "error": {"code": 404, "message": "…"}}`
//! - push:    `{"channel": "room", "offset": 8, "epoch": "…", "data": …}`, and presence
//!   events `{"channel": "room", "join": {"conn": "12"}}` / `"leave"`.
//!
//! Pushes are encoded once per publication and shared by every subscriber.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::broker::{History, Member, Publication, StreamPosition};
use crate::message::Message;

/// The subprotocol a client names in `Sec-WebSocket-Protocol` to speak this protocol.
pub const SUBPROTOCOL: &str = "wshub.v1";

/// A command as it arrives; which fields matter depends on `cmd`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Command {
    /// Echoed in the reply; any JSON value (a number, usually).
    pub(crate) id: Option<Box<RawValue>>,
    pub(crate) cmd: String,
    pub(crate) channel: Option<String>,
    pub(crate) since: Option<Since>,
    pub(crate) data: Option<Box<RawValue>>,
    /// `subscribe`: also receive join/leave events of the channel.
    #[serde(default)]
    pub(crate) presence_events: bool,
    /// `history`: the newest `limit` publications.
    pub(crate) limit: Option<usize>,
    /// `connect`, `refresh`: the JWT.
    pub(crate) token: Option<String>,
}

/// A stream position as a client sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Since {
    pub(crate) epoch: String,
    pub(crate) offset: u64,
}

impl From<Since> for StreamPosition {
    fn from(since: Since) -> StreamPosition {
        StreamPosition {
            epoch: since.epoch.into(),
            offset: since.offset,
        }
    }
}

/// An error code and message, as sent in `{"error": {"code", "message"}}`. The codes follow
/// the HTTP statuses of the same meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// 400 bad request, 403 not permitted, 404 unknown channel, 405 unknown command,
    /// 409 already / not subscribed, 429 too many subscriptions or over `client_rate`,
    /// 500 broker failure.
    pub code: u16,
    /// One line for a human.
    pub message: String,
}

impl ProtocolError {
    pub(crate) fn new(code: u16, message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

impl std::error::Error for ProtocolError {}

/// The `id` of a frame that is an object with one, whether or not it is a valid command,
/// so that an error reaches the right caller.
pub(crate) fn id_of(text: &str) -> Option<Box<RawValue>> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<Box<RawValue>>,
    }
    serde_json::from_str::<IdOnly>(text)
        .ok()
        .and_then(|only| only.id)
}

/// Parses one command; a syntax error names its line and column.
pub(crate) fn parse(text: &str) -> Result<Command, (Option<Box<RawValue>>, ProtocolError)> {
    serde_json::from_str::<Command>(text).map_err(|error| {
        let id = id_of(text);
        let what = if error.is_syntax() || error.is_eof() {
            "bad JSON"
        } else {
            "bad command"
        };
        (id, ProtocolError::new(400, format!("{what}: {error}")))
    })
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

fn id_text(id: Option<&RawValue>) -> &str {
    id.map_or("null", RawValue::get)
}

/// `{"id": …, "result": <result>}`.
pub(crate) fn reply(id: Option<&RawValue>, result: &str) -> Message {
    Message::text(format!(r#"{{"id":{},"result":{result}}}"#, id_text(id)))
}

/// `{"id": …, "error": {"code", "message"}}`.
pub(crate) fn error(id: Option<&RawValue>, error: &ProtocolError) -> Message {
    Message::text(format!(
        r#"{{"id":{},"error":{{"code":{},"message":{}}}}}"#,
        id_text(id),
        error.code,
        json_string(&error.message)
    ))
}

/// `{"epoch": …, "offset": …}` plus `extra` fields (which start with a comma).
pub(crate) fn position(position: &StreamPosition, extra: &str) -> String {
    format!(
        r#"{{"epoch":{},"offset":{}{extra}}}"#,
        json_string(&position.epoch),
        position.offset
    )
}

/// The publication as it appears in a push or a history list.
fn publication_object(channel: &str, publication: &Publication) -> String {
    format!(
        r#"{{"channel":{},"offset":{},"epoch":{},"data":{}}}"#,
        json_string(channel),
        publication.offset,
        json_string(&publication.epoch),
        String::from_utf8_lossy(&publication.data)
    )
}

/// The push frame of a publication, encoded once for all subscribers.
pub(crate) fn push(channel: &str, publication: &Publication) -> Message {
    Message::text(publication_object(channel, publication))
}

/// A join or leave event frame.
pub(crate) fn presence_event(channel: &str, kind: &str, member: &Member) -> Message {
    Message::text(format!(
        r#"{{"channel":{},"{kind}":{}}}"#,
        json_string(channel),
        member_object(member)
    ))
}

/// `{"conn": "17"}`, with `"user"` when the connection has one.
fn member_object(member: &Member) -> String {
    match &member.user {
        Some(user) => format!(
            r#"{{"conn":{},"user":{}}}"#,
            json_string(&member.key()),
            json_string(user)
        ),
        None => format!(r#"{{"conn":{}}}"#, json_string(&member.key())),
    }
}

/// The push telling subscribers that publications before `position` were lost on the way
/// and cannot be recovered: reload the state; the next publication follows `position`.
pub(crate) fn resync(channel: &str, position: &StreamPosition) -> Message {
    Message::text(format!(
        r#"{{"channel":{},"resync":{{"epoch":{},"offset":{}}}}}"#,
        json_string(channel),
        json_string(&position.epoch),
        position.offset
    ))
}

/// `"publications": [...]` for a subscribe or history result (leading comma included).
pub(crate) fn publications(channel: &str, history: &History) -> String {
    let mut out = String::from(r#","publications":["#);
    for (i, publication) in history.publications.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&publication_object(channel, publication));
    }
    out.push(']');
    out
}

/// A presence result: `{"count": n, "members": [{"conn": "…"}]}`.
pub(crate) fn members(members: &[Member]) -> String {
    let list: Vec<String> = members.iter().map(member_object).collect();
    format!(
        r#"{{"count":{},"members":[{}]}}"#,
        members.len(),
        list.join(",")
    )
}
