//! permessage-deflate (RFC 7692) on the client side (`--deflate`): the offer, the check of
//! the server's answer, and the inflater that gets a compressed message's prefix back.
//!
//! The offer asks for no context takeover either way, so every compressed message is a
//! raw-deflate stream of its own (wshub answers exactly that; see
//! crates/wshub/src/compression/mod.rs): one inflater per worker process serves all of its
//! connections, reset per message, and no connection keeps a 32 KiB window. Only the first
//! bytes of each message are inflated, as many as the decoder hands over uncompressed.
//!
//! The tool's own messages go out uncompressed: RFC 7692 lets an endpoint compress message
//! by message (RSV1 marks the ones that are), so the server inflates nothing and what is
//! measured is its compressing side.

use flate2::{Decompress, FlushDecompress, Status};

use crate::wire::MAX_PREFIX;

/// The `Sec-WebSocket-Extensions` offer.
pub(crate) const OFFER: &str =
    "permessage-deflate; client_no_context_takeover; server_no_context_takeover";

/// The handshake error of a server that answers the offer without permessage-deflate.
pub(crate) const DECLINED: &str = "handshake: the server declined permessage-deflate";

/// What the sender leaves off each message (RFC 7692 §7.2.1): the end of a sync flush.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Compressed bytes of a message the decoder waits for (at most) before inflating its
/// prefix: room for the largest dynamic Huffman block header (about 290 bytes) and for
/// `MAX_PREFIX` bytes coded at up to 16 bits each.
pub(crate) const MAX_COMPRESSED_PREFIX: usize = 1536;

/// Checks what the server's 101 head says about extensions. `Ok(true)`: permessage-deflate
/// agreed, with contexts reset per message; `Ok(false)`: no extension (declined, if
/// `offered`). Anything else it may not answer (an extension not offered, a parameter it
/// must not add or leave out) is an error, described for the report.
pub(crate) fn check_answer(head: &[u8], offered: bool) -> Result<bool, String> {
    let text = String::from_utf8_lossy(head);
    let mut agreed = false;
    let values = text.split("\r\n").skip(1).filter_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-extensions")
            .then_some(value)
    });
    for extension in values.flat_map(|value| value.split(',')) {
        let mut parts = extension.split(';').map(str::trim);
        let name = parts.next().unwrap_or("");
        if name.is_empty() {
            continue;
        }
        if !name.eq_ignore_ascii_case("permessage-deflate") || !offered {
            return Err(format!("the server chose extension {name}, not offered"));
        }
        if agreed {
            return Err("the server chose permessage-deflate twice".into());
        }
        agreed = true;
        let mut seen: Vec<String> = Vec::new();
        for param in parts {
            let (key, value) = match param.split_once('=') {
                Some((key, value)) => (key.trim(), Some(value.trim().trim_matches('"'))),
                None => (param, None),
            };
            let key = key.to_ascii_lowercase();
            if seen.contains(&key) {
                return Err(format!("permessage-deflate answer repeats {key}"));
            }
            match (key.as_str(), value) {
                ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
                // A smaller window than ours inflates the same way.
                ("server_max_window_bits", Some(bits))
                    if bits.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b)) => {}
                _ => return Err(format!("permessage-deflate answer has {param:?}")),
            }
            seen.push(key);
        }
        // Asked for, so it must be in the answer (§7.1.1.1); without it the server would
        // expect us to keep its context from message to message.
        if !seen.iter().any(|k| k == "server_no_context_takeover") {
            return Err("permessage-deflate answer without server_no_context_takeover".into());
        }
    }
    Ok(agreed)
}

/// One worker's inflater and the buffer a message's prefix is inflated into.
#[derive(Default)]
pub(crate) struct Inflater {
    /// Made on first use: a worker that never sees a compressed frame never pays for it.
    decompress: Option<Decompress>,
    out: Vec<u8>,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("made", &self.decompress.is_some())
            .finish()
    }
}

impl Inflater {
    /// Inflates the start of one compressed message to at most `want` bytes (at most
    /// `MAX_PREFIX`). `compressed` is the start of its data; `complete`: it is all of it, so
    /// the sync-flush tail goes after it. `None`: not a deflate stream.
    pub(crate) fn prefix(
        &mut self,
        compressed: &[u8],
        complete: bool,
        want: usize,
    ) -> Option<&[u8]> {
        let inflater = self
            .decompress
            .get_or_insert_with(|| Decompress::new(false));
        inflater.reset(false);
        let want = want.min(MAX_PREFIX);
        self.out.resize(MAX_PREFIX, 0);
        let mut produced = 0;
        let tail: &[u8] = if complete { &SYNC_TAIL } else { &[] };
        'inputs: for input in [compressed, tail] {
            let mut used = 0;
            while produced < want && used < input.len() {
                let (before_in, before_out) = (inflater.total_in(), inflater.total_out());
                let status = inflater
                    .decompress(
                        &input[used..],
                        &mut self.out[produced..want],
                        FlushDecompress::Sync,
                    )
                    .ok()?;
                let took = (inflater.total_in() - before_in) as usize;
                let gave = (inflater.total_out() - before_out) as usize;
                used += took;
                produced += gave;
                if status == Status::StreamEnd {
                    break 'inputs;
                }
                if took == 0 && gave == 0 {
                    break;
                }
            }
        }
        Some(&self.out[..produced])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// A message as wshub deflates it: raw deflate, sync flush, tail removed.
    pub(crate) fn deflate(payload: &[u8]) -> Vec<u8> {
        let mut compress = Compress::new(Compression::new(1), false);
        let mut out = Vec::with_capacity(payload.len() + 64);
        let _ = compress.compress_vec(payload, &mut out, FlushCompress::Sync);
        assert_eq!(compress.total_in() as usize, payload.len());
        assert!(out.ends_with(&SYNC_TAIL));
        out.truncate(out.len() - SYNC_TAIL.len());
        out
    }

    #[test]
    fn answers() {
        let head = |ext: &str| format!("HTTP/1.1 101 Switching Protocols\r\n{ext}\r\n\r\n");
        let wshub = head(
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        );
        assert_eq!(check_answer(wshub.as_bytes(), true), Ok(true));
        assert!(check_answer(wshub.as_bytes(), false).is_err());
        let none = head("Upgrade: websocket");
        assert_eq!(check_answer(none.as_bytes(), true), Ok(false));
        assert_eq!(check_answer(none.as_bytes(), false), Ok(false));
        let bits = head(
            "sec-websocket-extensions: permessage-deflate;server_no_context_takeover;server_max_window_bits=10",
        );
        assert_eq!(check_answer(bits.as_bytes(), true), Ok(true));
        for bad in [
            "Sec-WebSocket-Extensions: permessage-deflate",
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_max_window_bits=10",
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; server_max_window_bits=20",
            "Sec-WebSocket-Extensions: x-webkit-deflate-frame",
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover, permessage-deflate; server_no_context_takeover",
        ] {
            assert!(check_answer(head(bad).as_bytes(), true).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_come_back() {
        let text: Vec<u8> = (0..200)
            .flat_map(|i| format!("{{\"n\":{i},\"user\":\"ada\"}}").into_bytes())
            .collect();
        let compressed = deflate(&text);
        let mut inflater = Inflater::default();
        for want in [1, 32, MAX_PREFIX] {
            assert_eq!(
                inflater.prefix(&compressed, true, want),
                Some(&text[..want])
            );
            // From a part of the stream, without the tail.
            assert_eq!(
                inflater.prefix(&compressed[..compressed.len() / 2], false, want),
                Some(&text[..want])
            );
        }
        // Shorter than asked: everything, thanks to the tail.
        let short = deflate(b"hello");
        assert_eq!(inflater.prefix(&short, true, 32), Some(&b"hello"[..]));
        assert_eq!(inflater.prefix(&[0xff; 8], true, 32), None);
    }
}
