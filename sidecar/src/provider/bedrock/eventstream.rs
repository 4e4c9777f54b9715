//! The AWS event-stream binary framing ConverseStream answers in, decoded
//! incrementally: bytes in any split, whole verified frames out, never
//! more than one frame buffered.
//!
//! A frame is: a 12-byte prelude (total length u32, headers length u32,
//! CRC32 of those 8 bytes), the headers, the payload, and a CRC32 of
//! everything before it; all integers big-endian. A header is a 1-byte
//! name length, the name, a 1-byte type and a value of that type.

/// Largest frame accepted. AWS caps event-stream messages at 16 MiB;
/// anything claiming more is corruption, not a frame to wait for.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

const PRELUDE: usize = 12;
const TRAILER: usize = 4;

/// One decoded frame: its string headers (other header types are parsed
/// and skipped) and its payload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A string header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Encodes a frame with string headers (tests and mock upstreams);
    /// names are at most 255 bytes and values 65,535, as the format allows.
    pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
        let mut h = Vec::new();
        for (name, value) in headers {
            h.push(name.len() as u8);
            h.extend_from_slice(name.as_bytes());
            h.push(7);
            h.extend_from_slice(&(value.len() as u16).to_be_bytes());
            h.extend_from_slice(value.as_bytes());
        }
        let total = PRELUDE + h.len() + payload.len() + TRAILER;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&(total as u32).to_be_bytes());
        out.extend_from_slice(&(h.len() as u32).to_be_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(payload);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }
}

/// Incremental decoder. After an error it stays failed.
#[derive(Debug, Default)]
pub struct EventStreamFramer {
    buf: Vec<u8>,
    failed: bool,
}

impl EventStreamFramer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether bytes of an unfinished frame are held.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Frame>, String> {
        if self.failed {
            return Err("event stream already failed".into());
        }
        self.buf.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut at = 0;
        let result = loop {
            match decode(&self.buf[at..]) {
                Ok(Some((frame, used))) => {
                    frames.push(frame);
                    at += used;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.buf.drain(..at);
        match result {
            Ok(()) => Ok(frames),
            Err(e) => {
                self.failed = true;
                self.buf = Vec::new();
                Err(e)
            }
        }
    }
}

fn be32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

/// One frame from the front of `buf`, with the bytes it used; `None` when
/// the frame is not complete yet.
fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    if buf.len() < PRELUDE {
        return Ok(None);
    }
    let total = be32(&buf[0..4]);
    let headers_len = be32(&buf[4..8]);
    if crc32fast::hash(&buf[0..8]) as usize != be32(&buf[8..12]) {
        return Err("event stream prelude checksum mismatch".into());
    }
    if !(PRELUDE + TRAILER..=MAX_FRAME).contains(&total) || headers_len > total - PRELUDE - TRAILER
    {
        return Err("event stream frame has impossible lengths".into());
    }
    if buf.len() < total {
        return Ok(None);
    }
    let body_end = total - TRAILER;
    if crc32fast::hash(&buf[..body_end]) as usize != be32(&buf[body_end..total]) {
        return Err("event stream message checksum mismatch".into());
    }
    let headers = parse_headers(&buf[PRELUDE..PRELUDE + headers_len])?;
    let payload = buf[PRELUDE + headers_len..body_end].to_vec();
    Ok(Some((Frame { headers, payload }, total)))
}

fn parse_headers(mut h: &[u8]) -> Result<Vec<(String, String)>, String> {
    let truncated = || "event stream header is truncated".to_owned();
    let mut out = Vec::new();
    while !h.is_empty() {
        let name_len = h[0] as usize;
        let name = h.get(1..1 + name_len).ok_or_else(truncated)?;
        let name = std::str::from_utf8(name).map_err(|_| "header name is not UTF-8".to_owned())?;
        h = &h[1 + name_len..];
        let kind = *h.first().ok_or_else(truncated)?;
        h = &h[1..];
        let fixed = match kind {
            0 | 1 => Some(0), // true, false
            2 => Some(1),     // byte
            3 => Some(2),     // short
            4 => Some(4),     // int
            5 | 8 => Some(8), // long, timestamp
            9 => Some(16),    // uuid
            6 | 7 => None,    // bytes, string: u16 length prefix
            other => return Err(format!("unknown event stream header type {other}")),
        };
        match fixed {
            Some(n) => {
                h = h.get(n..).ok_or_else(truncated)?;
            }
            None => {
                let len_bytes = h.get(..2).ok_or_else(truncated)?;
                let len = u16::from_be_bytes([len_bytes[0], len_bytes[1]]) as usize;
                let value = h.get(2..2 + len).ok_or_else(truncated)?;
                if kind == 7 {
                    let value = std::str::from_utf8(value)
                        .map_err(|_| "header value is not UTF-8".to_owned())?;
                    out.push((name.to_owned(), value.to_owned()));
                }
                h = &h[2 + len..];
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_every_split() {
        let mut bytes = Frame::encode(&[(":event-type", "a"), (":message-type", "event")], b"{}");
        bytes.extend(Frame::encode(&[(":event-type", "b")], b"{\"x\":1}"));
        for split in 0..bytes.len() {
            let mut f = EventStreamFramer::new();
            let mut frames = f.push(&bytes[..split]).expect("decodes");
            frames.extend(f.push(&bytes[split..]).expect("decodes"));
            assert_eq!(frames.len(), 2);
            assert_eq!(frames[0].header(":event-type"), Some("a"));
            assert_eq!(frames[1].payload, b"{\"x\":1}");
            assert!(!f.has_partial());
        }
    }

    #[test]
    fn corruption_is_an_error_not_a_wait() {
        let mut bytes = Frame::encode(&[(":event-type", "a")], b"{}");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(EventStreamFramer::new().push(&bytes).is_err());
        let mut bytes = Frame::encode(&[], b"{}");
        bytes[2] = 0xff; // total length, prelude CRC now wrong
        assert!(EventStreamFramer::new().push(&bytes[..12]).is_err());
    }

    #[test]
    fn non_string_headers_are_skipped() {
        // name "t", type 8 (timestamp), 8 bytes; name "s", string "v".
        let mut h = vec![1, b't', 8];
        h.extend_from_slice(&[0; 8]);
        h.extend_from_slice(&[1, b's', 7, 0, 1, b'v']);
        assert_eq!(parse_headers(&h), Ok(vec![("s".into(), "v".into())]));
        assert!(parse_headers(&[1, b't', 42]).is_err());
        assert!(parse_headers(&[5, b't']).is_err());
    }
}
