//! The deflate codec, below `message` (a message deflates itself with it): pooled
//! compressors (one per window size) and an inflater per thread, reset per message; RFC
//! 7692's framing of a compressed message (its sync-flush tail left off); the cap on what
//! one inflates to.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The window we compress with unless a client asks for less (zlib's largest).
pub(crate) const DEFAULT_WINDOW_BITS: u8 = 15;

/// zlib level 1: a broadcast is compressed once, but a reply or a send is compressed per
/// message, and level 1 keeps most of the gain on JSON-like text for a fraction of the
/// CPU of the default level 6.
const LEVEL: u32 = 1;

/// The four bytes a sync flush ends with, left off on the wire (RFC 7692 §7.2.1).
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

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
