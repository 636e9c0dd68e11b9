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

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::message::Message;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The window we compress with unless a client asks for less (zlib's largest).
pub(crate) const DEFAULT_WINDOW_BITS: u8 = 15;

/// zlib level 1: a broadcast is compressed once, but a reply or a send is compressed per
/// message, and level 1 keeps most of the gain on JSON-like text for a fraction of the
/// CPU of the default level 6.
const LEVEL: u32 = 1;

/// The four bytes a sync flush ends with, left off on the wire (RFC 7692 §7.2.1).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

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

thread_local! {
    /// Compressors by window size (index: bits − 9), made on first use, reset per message.
    static COMPRESSORS: RefCell<[Option<Compress>; 7]> = const { RefCell::new([None, None, None, None, None, None, None]) };
    /// The inflater, reset per message (every client resets its context per message).
    static INFLATER: RefCell<Option<Decompress>> = const { RefCell::new(None) };
}

/// Compresses one message's payload as RFC 7692 says: raw deflate, a sync flush, its
/// four-byte tail removed.
pub(crate) fn deflate(payload: &[u8], window_bits: u8) -> Vec<u8> {
    let index = usize::from(window_bits.clamp(9, 15) - 9);
    COMPRESSORS.with(|compressors| {
        let mut compressors = compressors.borrow_mut();
        let compress = compressors[index].get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(LEVEL), false, index as u8 + 9)
        });
        compress.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        loop {
            let consumed = compress.total_in() as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(64));
            }
            // Only a buffer error is possible, and it means "more room": reserved above.
            let _ = compress.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync);
            if compress.total_in() as usize == payload.len() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&SYNC_TAIL) {
            out.truncate(out.len() - SYNC_TAIL.len());
        }
        out
    })
}

/// Why an inbound compressed message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// It inflates past the cap.
    TooBig,
    /// It is not a deflate stream.
    Corrupt,
}

/// Inflates one message (its frames' payloads joined) to at most `cap` bytes.
pub(crate) fn inflate(compressed: &[u8], cap: usize) -> Result<Vec<u8>, InflateError> {
    INFLATER.with(|inflater| {
        let mut inflater = inflater.borrow_mut();
        let inflater = inflater.get_or_insert_with(|| Decompress::new(false));
        inflater.reset(false);
        let mut out = Vec::with_capacity((compressed.len() * 3).min(cap) + 64);
        for input in [compressed, &SYNC_TAIL[..]] {
            let start = inflater.total_in();
            loop {
                let consumed = (inflater.total_in() - start) as usize;
                if out.len() > cap {
                    return Err(InflateError::TooBig);
                }
                if out.capacity() - out.len() < 64 {
                    // Doubling; the check above stops it near twice the cap at worst.
                    out.reserve(out.capacity().max(1024));
                }
                let status = inflater
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                let done = (inflater.total_in() - start) as usize == input.len();
                if matches!(status, Status::StreamEnd) || (done && out.len() < out.capacity()) {
                    break;
                }
            }
        }
        if out.len() > cap {
            return Err(InflateError::TooBig);
        }
        Ok(out)
    })
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

    #[test]
    fn deflate_then_inflate_gives_the_message_back_for_every_window() {
        let text: Vec<u8> = br#"{"user":"ada","text":"hello, hello, hello"}"#.repeat(50);
        for bits in 9..=15 {
            let compressed = deflate(&text, bits);
            assert!(
                compressed.len() < text.len() / 4,
                "{bits} bits: {}",
                compressed.len()
            );
            assert_eq!(inflate(&compressed, text.len()), Ok(text.clone()));
        }
        assert_eq!(inflate(&deflate(b"", 15), 10), Ok(Vec::new()));
    }

    #[test]
    fn a_decompression_bomb_stops_at_the_cap() {
        let bomb = deflate(&vec![0u8; 10 << 20], 15);
        assert!(bomb.len() * 100 < 10 << 20, "{} bytes", bomb.len());
        assert_eq!(inflate(&bomb, 1 << 20), Err(InflateError::TooBig));
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff], 1024),
            Err(InflateError::Corrupt)
        );
    }
}

#[cfg(test)]
mod sizes {
    use super::*;

    #[test]
    fn incompressible_and_large_payloads_round_trip() {
        let mut x: u32 = 12345;
        for len in [300usize, 4096, 8192, 65536, 131072] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1103515245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let compressed = deflate(&data, 15);
            assert_eq!(
                inflate(&compressed, len).as_deref(),
                Ok(&data[..]),
                "len {len}"
            );
        }
    }
}
