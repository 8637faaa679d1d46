//! Length-prefixed frames: `[len: u32 LE][body: len bytes]`.
//!
//! The length is checked against a cap *before* anything is allocated, and a
//! body is read into a reused buffer that only grows as bytes actually arrive,
//! so a peer that lies in its length prefix costs nothing.

use std::io::{self, Read};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;
/// Default cap on a single message's payload (64 MiB).
pub const DEFAULT_MAX_MESSAGE: u32 = 64 << 20;
/// Room for the fixed fields of the largest message header.
pub const ENVELOPE_OVERHEAD: u32 = 64;

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds the cap; nothing was allocated.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Length the peer claimed.
        len: u32,
        /// The cap in force.
        max: u32,
    },
    /// A zero-length frame (every message has at least a tag byte).
    #[error("empty frame")]
    Empty,
    /// The stream ended partway through a frame.
    #[error("stream ended {got} bytes into a {expected}-byte frame body")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes the header promised.
        expected: usize,
    },
    /// The underlying read failed.
    #[error("i/o error reading frame")]
    Io(#[from] io::Error),
}

/// Validates a header against `max`, returning the body length.
pub fn parse_header(header: [u8; HEADER_LEN], max: u32) -> Result<usize, FrameError> {
    let len = u32::from_le_bytes(header);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len as usize)
}

/// Starts a frame in `out` (clearing it): reserves the header.
pub fn begin(out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0; HEADER_LEN]);
}

/// Completes a frame begun with [`begin`] by writing its length prefix.
///
/// # Panics
/// If the body exceeds `u32::MAX` bytes (callers bound payloads far below that).
pub fn finish(out: &mut [u8]) {
    let len = u32::try_from(out.len() - HEADER_LEN).expect("frame body exceeds u32::MAX");
    out[..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
}

/// Blocking read of one frame body into `buf` (cleared first).
///
/// Returns `Ok(false)` on a clean end of stream before any header byte.
pub fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>, max: u32) -> Result<bool, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(FrameError::Truncated {
                    got,
                    expected: HEADER_LEN,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = parse_header(header, max)?;
    buf.clear();
    // `take` + `read_to_end` grows the buffer only as data arrives.
    r.take(len as u64).read_to_end(buf)?;
    if buf.len() != len {
        return Err(FrameError::Truncated {
            got: buf.len(),
            expected: len,
        });
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        begin(&mut out);
        out.extend_from_slice(body);
        finish(&mut out);
        out
    }

    #[test]
    fn round_trip() {
        let bytes = frame(b"hello");
        let mut buf = Vec::new();
        let mut r = &bytes[..];
        assert!(read_frame(&mut r, &mut buf, 100).unwrap());
        assert_eq!(buf, b"hello");
        assert!(!read_frame(&mut r, &mut buf, 100).unwrap());
    }

    #[test]
    fn oversized_header_rejected_before_allocation() {
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.push(1);
        let mut buf = Vec::new();
        let err = read_frame(&mut &bytes[..], &mut buf, 1024).unwrap_err();
        assert!(matches!(
            err,
            FrameError::TooLarge {
                len: u32::MAX,
                max: 1024
            }
        ));
        assert_eq!(buf.capacity(), 0);
    }

    #[test]
    fn lying_length_within_cap_allocates_only_what_arrives() {
        let mut bytes = (1u32 << 20).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[7; 10]);
        let mut buf = Vec::new();
        let err = read_frame(&mut &bytes[..], &mut buf, 64 << 20).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Truncated {
                got: 10,
                expected: 1_048_576
            }
        ));
        assert!(buf.capacity() < 4096, "capacity {}", buf.capacity());
    }

    #[test]
    fn empty_and_truncated_headers() {
        let mut buf = Vec::new();
        assert!(matches!(
            read_frame(&mut &[0u8, 0, 0, 0][..], &mut buf, 9),
            Err(FrameError::Empty)
        ));
        assert!(matches!(
            read_frame(&mut &[1u8, 0][..], &mut buf, 9),
            Err(FrameError::Truncated { got: 2, expected: 4 })
        ));
    }
}
