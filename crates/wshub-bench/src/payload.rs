//! What the senders' messages look like around the benchmark header (`--payload`): the
//! letters a to z over and over (the default), or a chat application's JSON event, whose
//! compressibility is what a compression benchmark needs to be realistic.

use std::io::Write as _;

use serde::{Deserialize, Serialize};

use crate::wire::HEADER_LEN;

/// The message body after (or around) the header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Payload {
    /// The header, then a to z repeated (deflate shrinks 1 KiB of it to 42 bytes).
    #[default]
    Letters,
    /// A JSON object like a chat application's "message created" event, different in
    /// every message: {"bench":"<header>","type":...,"user":{...},"text":...,"history":[...],
    /// "note":...} (deflate at level 1, each message on its own as wshub compresses, shrinks
    /// 1 KiB of it to about 720 bytes: text and numbers that vary weigh more than the keys).
    Json,
}

/// Where the header is in a JSON message: the value of its first field, `{"bench":"`.
const JSON_HEADER_AT: usize = 10;

/// The shortest JSON message: `{"bench":"<header>","note":""}`.
pub(crate) const JSON_MIN_SIZE: usize = JSON_HEADER_AT + HEADER_LEN + TAIL_MIN + 1;

/// `,"note":"` and `"}`, the least that closes a message.
const TAIL_MIN: usize = 11;

impl Payload {
    /// Offset of the benchmark header in a message.
    pub(crate) fn header_at(self) -> usize {
        match self {
            Payload::Letters => 0,
            Payload::Json => JSON_HEADER_AT,
        }
    }
}

#[rustfmt::skip]
const WORDS: &[&str] = &[
    "the", "a", "to", "and", "of", "is", "it", "in", "that", "for", "you", "we", "this", "on",
    "with", "be", "have", "not", "are", "at", "just", "so", "but", "can", "if", "was", "do",
    "will", "me", "all", "what", "my", "out", "up", "about", "think", "know", "get", "now",
    "deploy", "build", "test", "release", "meeting", "tomorrow", "today", "lunch", "coffee",
    "review", "merge", "branch", "ticket", "bug", "fixed", "broken", "server", "latency",
    "dashboard", "customer", "demo", "slides", "docs", "weekend", "thanks", "sounds", "good",
    "great", "maybe", "later", "anyone", "seen", "here", "there", "please", "sorry", "again",
    "check", "looks", "like", "still", "working", "done", "ready", "waiting", "issue", "logs",
    "morning", "afternoon", "team", "call", "join", "link", "shared", "update", "numbers",
    "quarter", "plan", "budget", "question", "answer", "idea", "new", "old", "fast", "slow",
];

const USERS: &[(&str, &str)] = &[
    ("ada.lovelace", "Ada Lovelace"),
    ("grace.hopper", "Grace Hopper"),
    ("alan.turing", "Alan Turing"),
    ("edsger.dijkstra", "Edsger Dijkstra"),
    ("barbara.liskov", "Barbara Liskov"),
    ("donald.knuth", "Donald Knuth"),
    ("margaret.hamilton", "Margaret Hamilton"),
    ("ken.thompson", "Ken Thompson"),
    ("frances.allen", "Frances Allen"),
    ("dennis.ritchie", "Dennis Ritchie"),
    ("radia.perlman", "Radia Perlman"),
    ("john.mccarthy", "John McCarthy"),
    ("hedy.lamarr", "Hedy Lamarr"),
    ("leslie.lamport", "Leslie Lamport"),
    ("sophie.wilson", "Sophie Wilson"),
    ("tony.hoare", "Tony Hoare"),
];

#[rustfmt::skip]
const ROOMS: &[&str] = &[
    "general", "random", "engineering", "support", "release-train", "design", "ops", "sales",
];

const STATUSES: &[&str] = &["online", "away", "busy"];

const EMOJI: &[&str] = &["thumbsup", "tada", "eyes", "heart", "rocket", "laughing"];

/// Makes JSON messages for one sender: each different (user, text, numbers, times), drawn
/// from a generator seeded with the sender id, so runs are repeatable.
#[derive(Debug)]
pub(crate) struct Json {
    rng: fastrand::Rng,
    seq: u64,
}

impl Json {
    /// The generator of sender `sender`.
    pub(crate) fn new(sender: u32) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(0x5eed_0000 + u64::from(sender)),
            seq: 0,
        }
    }

    /// Replaces `out` with the next message: exactly `size` bytes (at least
    /// `JSON_MIN_SIZE`) of JSON sent at `now_us`, its header slot (`Payload::header_at`)
    /// holding placeholder characters to overwrite. Reuses `out`'s allocation.
    pub(crate) fn fill(&mut self, out: &mut Vec<u8>, size: usize, now_us: u64) {
        let size = size.max(JSON_MIN_SIZE);
        out.clear();
        out.reserve(size + 512);
        self.seq += 1;
        let now_ms = now_us / 1000;
        let rng = &mut self.rng;
        out.extend_from_slice(br#"{"bench":""#);
        out.resize(JSON_HEADER_AT + HEADER_LEN, b'0');
        out.push(b'"');
        // Fields while they fit, each dropped again if it leaves no room for the tail.
        let fits = |out: &mut Vec<u8>, mark: usize| {
            let ok = out.len() + TAIL_MIN <= size;
            if !ok {
                out.truncate(mark);
            }
            ok
        };
        let (user, display) = USERS[rng.usize(..USERS.len())];
        let mut mark = out.len();
        let _ = write!(
            out,
            r#","type":"message.created","room":"{}","seq":{},"ts":{now_ms},"sent_at":""#,
            ROOMS[rng.usize(..ROOMS.len())],
            self.seq,
        );
        iso8601(out, now_ms);
        out.push(b'"');
        let mut more = fits(out, mark);
        if more {
            mark = out.len();
            let id = 10_000 + rng.u32(..90_000);
            let _ = write!(
                out,
                r#","user":{{"id":{id},"name":"{user}","display":"{display}","avatar":"https://cdn.example.com/avatars/{id}.png","status":"{}"}}"#,
                STATUSES[rng.usize(..STATUSES.len())]
            );
            more = fits(out, mark);
        }
        if more {
            mark = out.len();
            out.extend_from_slice(br#","text":""#);
            sentence(rng, out, 6..20);
            let _ = write!(
                out,
                r#"","likes":{},"edited":{}"#,
                rng.u32(..40),
                rng.u8(..8) == 0
            );
            more = fits(out, mark);
        }
        if more {
            let start = out.len();
            out.extend_from_slice(br#","history":["#);
            let mut items = 0;
            loop {
                mark = out.len();
                let (user, _) = USERS[rng.usize(..USERS.len())];
                let _ = write!(
                    out,
                    r#"{}{{"user":"{user}","ts":{},"reaction":"{}","text":""#,
                    if items > 0 { "," } else { "" },
                    now_ms.saturating_sub(rng.u64(1_000..600_000)),
                    EMOJI[rng.usize(..EMOJI.len())],
                );
                sentence(rng, out, 3..12);
                out.extend_from_slice(b"\"}");
                // Room for the array's `]` too.
                if out.len() + 1 + TAIL_MIN > size {
                    out.truncate(mark);
                    break;
                }
                items += 1;
            }
            if items == 0 {
                out.truncate(start);
            } else {
                out.push(b']');
            }
        }
        out.extend_from_slice(br#","note":""#);
        let end = size - 2;
        while out.len() < end {
            out.extend_from_slice(WORDS[rng.usize(..WORDS.len())].as_bytes());
            out.push(b' ');
        }
        out.truncate(end);
        out.extend_from_slice(b"\"}");
    }
}

/// Appends a sentence of `words` words: capitalised, ending with a full stop or a question
/// mark.
fn sentence(rng: &mut fastrand::Rng, out: &mut Vec<u8>, words: std::ops::Range<usize>) {
    let count = rng.usize(words);
    for i in 0..count {
        let word = WORDS[rng.usize(..WORDS.len())].as_bytes();
        if i == 0 {
            out.push(word[0].to_ascii_uppercase());
            out.extend_from_slice(&word[1..]);
        } else {
            out.push(b' ');
            out.extend_from_slice(word);
        }
    }
    out.push(if rng.u8(..4) == 0 { b'?' } else { b'.' });
}

/// Appends `ms` (since the Unix epoch) as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn iso8601(out: &mut Vec<u8>, ms: u64) {
    let (days, rest) = (ms / 86_400_000, ms % 86_400_000);
    // Days to civil date (H. Hinnant's algorithm), for dates after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Header;

    #[test]
    fn json_messages_are_json_of_the_size_asked_with_the_header() {
        let mut json = Json::new(3);
        let mut out = Vec::new();
        let now = 1_764_588_213_123_456;
        for size in [JSON_MIN_SIZE, 64, 100, 300, 1024, 4096] {
            for _ in 0..20 {
                json.fill(&mut out, size, now);
                assert_eq!(out.len(), size);
                let h = Header {
                    measured: true,
                    tag: 1,
                    sender: 3,
                    seq: 9,
                    sent_us: now,
                };
                let at = Payload::Json.header_at();
                h.write(&mut out[at..at + HEADER_LEN]);
                assert_eq!(Header::parse(&out[at..]), Some(h));
                let value: serde_json::Value = serde_json::from_slice(&out)
                    .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
                assert!(value["bench"].is_string());
                if size >= 1024 {
                    assert_eq!(value["sent_at"], "2025-12-01T11:23:33.123Z");
                    assert!(value["history"].as_array().is_some_and(|h| h.len() >= 2));
                }
            }
        }
    }

    #[test]
    fn json_compresses_like_json_and_varies() {
        use flate2::{Compress, Compression, FlushCompress};
        let mut json = Json::new(0);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        json.fill(&mut a, 1024, 1_764_588_213_123_456);
        json.fill(&mut b, 1024, 1_764_588_213_124_000);
        assert_ne!(a, b);
        // As wshub compresses (level 1, each message on its own).
        let mut compress = Compress::new(Compression::new(1), false);
        let mut out = Vec::with_capacity(2048);
        let _ = compress.compress_vec(&a, &mut out, FlushCompress::Sync);
        let ratio = out.len() as f64 / a.len() as f64;
        assert!((0.35..0.75).contains(&ratio), "ratio {ratio}");
    }
}
