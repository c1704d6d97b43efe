//! A guard in front of actix-ws's frame decoder.
//!
//! The decoder buffers a frame until all of it has arrived and only then
//! compares its length with `max_frame_size`, so a header announcing a
//! gigabyte made the replica keep whatever part of it the client cared to
//! send (found by tests/cluster/abuse.rs). The guard reads each frame
//! header as the bytes pass by and fails the stream the moment one
//! announces more than the limit; the socket then closes with 1009.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

/// Follows frame boundaries in the bytes a client sends.
#[derive(Debug)]
pub struct FrameLimit {
    max: u64,
    header: [u8; MAX_HEADER],
    filled: usize,
    /// Payload bytes of the current frame still to pass.
    remaining: u64,
}

impl FrameLimit {
    pub fn new(max: usize) -> FrameLimit {
        FrameLimit {
            max: max as u64,
            header: [0; MAX_HEADER],
            filled: 0,
            remaining: 0,
        }
    }

    /// Length of the header being read, once its first two bytes are in.
    fn header_len(&self) -> usize {
        let second = self.header[1];
        let extended = match second & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut length = [0; 8];
                length.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(length)
            }
            short => u64::from(short),
        }
    }

    /// Takes the next bytes from the client. Fails with the announced
    /// length on the first frame longer than the limit.
    pub fn check(&mut self, mut bytes: &[u8]) -> Result<(), u64> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = bytes
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                bytes = &bytes[skip..];
                self.remaining -= skip as u64;
                continue;
            }
            let wanted = if self.filled < 2 {
                2
            } else {
                self.header_len()
            };
            let take = (wanted - self.filled).min(bytes.len());
            self.header[self.filled..self.filled + take].copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled >= 2 && self.filled == self.header_len() {
                let length = self.payload_len();
                if length > self.max {
                    return Err(length);
                }
                self.remaining = length;
                self.filled = 0;
            }
        }
        Ok(())
    }
}

/// The request payload of a WebSocket, failed with
/// [`PayloadError::Overflow`] at the first frame header over the limit.
pub struct Guarded<S> {
    inner: S,
    limit: FrameLimit,
    failed: bool,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, max_frame: usize) -> Guarded<S> {
        Guarded {
            inner,
            limit: FrameLimit::new(max_frame),
            failed: false,
        }
    }
}

impl<S> Stream for Guarded<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                if self.limit.check(&bytes).is_err() {
                    self.failed = true;
                    return Poll::Ready(Some(Err(PayloadError::Overflow)));
                }
                Poll::Ready(Some(Ok(bytes)))
            }
            other => other,
        }
    }
}

/// Whether a socket's read error is the guard's verdict.
pub fn is_overflow(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<PayloadError>())
        .is_some_and(|inner| matches!(inner, PayloadError::Overflow))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame with `length` announced and `payload` bytes of it.
    fn frame(length: u64, payload: usize) -> Vec<u8> {
        let mut bytes = vec![0x81];
        if length < 126 {
            bytes.push(0x80 | length as u8);
        } else if length <= u64::from(u16::MAX) {
            bytes.push(0x80 | 126);
            bytes.extend_from_slice(&(length as u16).to_be_bytes());
        } else {
            bytes.push(0x80 | 127);
            bytes.extend_from_slice(&length.to_be_bytes());
        }
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        bytes.extend(std::iter::repeat_n(0x55, payload));
        bytes
    }

    #[test]
    fn frames_within_the_limit_pass_in_any_split() {
        let mut stream = Vec::new();
        for length in [0, 5, 125, 126, 300, 16 * 1024] {
            stream.extend(frame(length, length as usize));
        }
        for chunk in [1, 2, 3, 7, 13, 4096, stream.len()] {
            let mut limit = FrameLimit::new(16 * 1024);
            for piece in stream.chunks(chunk) {
                assert_eq!(limit.check(piece), Ok(()), "chunks of {chunk}");
            }
            assert_eq!((limit.filled, limit.remaining), (0, 0));
        }
    }

    #[test]
    fn a_header_announcing_too_much_fails_before_any_payload() {
        for length in [16 * 1024 + 1, 70_000, 1 << 30, u64::MAX] {
            let mut limit = FrameLimit::new(16 * 1024);
            let mut bytes = frame(5, 5);
            bytes.extend(frame(length, 0));
            let result = bytes.chunks(3).try_for_each(|piece| limit.check(piece));
            assert_eq!(result, Err(length));
        }
    }

    #[test]
    fn unmasked_headers_are_measured_too() {
        let mut limit = FrameLimit::new(100);
        assert_eq!(limit.check(&[0x81, 126, 0, 200]), Err(200));
        let mut limit = FrameLimit::new(100);
        assert_eq!(limit.check(&[0x81, 100]), Ok(()));
        assert_eq!(limit.remaining, 100);
    }
}
