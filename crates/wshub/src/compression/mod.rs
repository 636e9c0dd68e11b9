//! permessage-deflate (RFC 7692): what we agree to, compressing once for everyone, and
//! inflating with a cap.
//!
//! We always answer `server_no_context_takeover; client_no_context_takeover`: every
//! message is compressed on its own, so a broadcast is deflated once and the same bytes
//! go to every compressing recipient, and no connection keeps a compressor or an
//! inflater (32 KiB windows each): both are pooled per thread and reset per message.
//! A client that asks us for a smaller window (`server_max_window_bits`) gets it; its
//! frames are then compressed for it alone, since a smaller window is a different
//! stream. Inbound messages are inflated with `max_message_size` as the cap on the
//! inflated size: a decompression bomb is refused (1009) after at most that many bytes.
//!
//! This module is the agreement and the hub's [`Policy`]; the deflating and inflating
//! themselves are in [`codec`], below [`Message`], which deflates itself with it.

pub(crate) mod codec;

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::compression::codec::DEFAULT_WINDOW_BITS;
use crate::message::Message;

/// What the hub compresses, and for how many connections.
#[derive(Debug)]
pub(crate) struct Policy {
    /// `compression`: offer permessage-deflate to clients that ask.
    pub(crate) enabled: bool,
    /// `compression_min_size`: smaller payloads are sent as they are.
    pub(crate) min_size: usize,
    /// Open connections that negotiated it (broadcasts skip deflating when none did).
    compressing: AtomicUsize,
}

impl Policy {
    pub(crate) fn new(enabled: bool, min_size: usize) -> Policy {
        Policy {
            enabled,
            min_size,
            compressing: AtomicUsize::new(0),
        }
    }

    /// Readies a message for many recipients: when some of them compress and it is
    /// large enough, its deflated frame is made now, once for all of them.
    pub(crate) fn prepare(&self, message: Message) -> Message {
        if message.len() >= self.min_size && self.compressing.load(Ordering::Relaxed) > 0 {
            message.with_deflated()
        } else {
            message
        }
    }

    pub(crate) fn connection_opened(&self) {
        self.compressing.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.compressing.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The agreement with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Agreement {
    /// The window our frames to this client are compressed with (9 to 15).
    pub(crate) window_bits: u8,
}

impl Agreement {
    /// The `Sec-WebSocket-Extensions` response.
    pub(crate) fn response(self) -> String {
        let mut response = String::from(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        if self.window_bits != DEFAULT_WINDOW_BITS {
            response.push_str(&format!("; server_max_window_bits={}", self.window_bits));
        }
        response
    }
}

/// Picks the first permessage-deflate offer we can honour from the client's
/// `Sec-WebSocket-Extensions` values; `None` declines compression for this client.
pub(crate) fn negotiate<'a>(header_values: impl IntoIterator<Item = &'a str>) -> Option<Agreement> {
    header_values
        .into_iter()
        .flat_map(|value| value.split(','))
        .find_map(accept_offer)
}

/// One offer, e.g. `permessage-deflate; client_max_window_bits`.
fn accept_offer(offer: &str) -> Option<Agreement> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = Vec::new();
    let mut window_bits = DEFAULT_WINDOW_BITS;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None; // a parameter given twice makes the offer invalid (§7)
        }
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(bits)) => {
                // zlib cannot make an 8-bit window (it silently uses 9): decline.
                window_bits = bits.parse().ok().filter(|b| (9..=15).contains(b))?;
            }
            // The client's window is its own business: we inflate with the largest.
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(bits)) => {
                bits.parse::<u8>().ok().filter(|b| (8..=15).contains(b))?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(Agreement { window_bits })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_honoured_or_declined() {
        let ok = |offer: &str| negotiate([offer]);
        assert_eq!(
            ok("permessage-deflate"),
            Some(Agreement { window_bits: 15 })
        );
        assert_eq!(
            ok("permessage-deflate; client_max_window_bits"),
            Some(Agreement { window_bits: 15 })
        );
        assert_eq!(
            ok("permessage-deflate; server_max_window_bits=10; client_no_context_takeover"),
            Some(Agreement { window_bits: 10 })
        );
        assert_eq!(ok("permessage-deflate; server_max_window_bits=8"), None);
        assert_eq!(ok("permessage-deflate; server_max_window_bits"), None);
        assert_eq!(ok("permessage-deflate; client_max_window_bits=20"), None);
        assert_eq!(ok("permessage-deflate; bogus"), None);
        assert_eq!(
            ok("permessage-deflate; server_no_context_takeover; server_no_context_takeover"),
            None
        );
        assert_eq!(ok("x-webkit-deflate-frame"), None);
        // The first acceptable offer wins.
        assert_eq!(
            ok(
                "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=12"
            ),
            Some(Agreement { window_bits: 12 })
        );
        assert_eq!(
            Agreement { window_bits: 12 }.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12"
        );
    }
}
