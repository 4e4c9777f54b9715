//! The AWS event-stream binary framing (`application/vnd.amazon.eventstream`)
//! that Bedrock's ConverseStream answers in: an encoder for the mock and a
//! strict decoder (lengths and both CRC32 checksums verified) for tests.
//!
//! A message is: total length (u32, big endian, the whole message), headers
//! length (u32), prelude CRC32 (over those 8 bytes), headers, payload, and a
//! message CRC32 over everything before it. A header is a name length (u8),
//! the name, a value type (u8) and the value; strings (type 7) and byte
//! arrays (type 6) carry a u16 length.

use bytes::Bytes;

/// Prelude (12 bytes) plus the trailing message CRC (4 bytes).
const OVERHEAD: usize = 16;
/// The largest message the format allows (16 MiB).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Encode one message whose headers are all strings.
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let mut head = Vec::new();
    for (name, value) in headers {
        head.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        head.extend_from_slice(&name.as_bytes()[..name.len().min(255)]);
        head.push(7);
        let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
        head.extend_from_slice(&len.to_be_bytes());
        head.extend_from_slice(&value.as_bytes()[..usize::from(len)]);
    }
    let total = OVERHEAD + head.len() + payload.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&u32::try_from(head.len()).unwrap_or(u32::MAX).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(&out);
    out.extend_from_slice(&message_crc.to_be_bytes());
    Bytes::from(out)
}

/// A header value of any of the format's types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Bytes(Vec<u8>),
    String(String),
    Timestamp(i64),
    Uuid([u8; 16]),
}

/// One decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: Bytes,
}

impl Message {
    /// A string header's value (`:event-type`, `:message-type`, …).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(n, v)| match v {
            HeaderValue::String(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }

    /// The payload parsed as JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.payload).ok()
    }
}

/// Why bytes are not a valid event-stream message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("need more bytes ({needed} for the next message)")]
    Incomplete { needed: usize },
    #[error("message length {0} out of range")]
    BadLength(usize),
    #[error("prelude CRC mismatch: sent {sent:#010x}, computed {computed:#010x}")]
    PreludeCrc { sent: u32, computed: u32 },
    #[error("message CRC mismatch: sent {sent:#010x}, computed {computed:#010x}")]
    MessageCrc { sent: u32, computed: u32 },
    #[error("malformed header at byte {0}")]
    BadHeader(usize),
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Decode the message at the start of `buf`; returns it and the bytes used.
pub fn decode(buf: &[u8]) -> Result<(Message, usize), DecodeError> {
    if buf.len() < 12 {
        return Err(DecodeError::Incomplete { needed: 12 });
    }
    let total = be_u32(&buf[0..4]) as usize;
    let headers_len = be_u32(&buf[4..8]) as usize;
    let sent = be_u32(&buf[8..12]);
    let computed = crc32fast::hash(&buf[0..8]);
    if sent != computed {
        return Err(DecodeError::PreludeCrc { sent, computed });
    }
    if !(OVERHEAD..=MAX_MESSAGE).contains(&total) || headers_len > total - OVERHEAD {
        return Err(DecodeError::BadLength(total));
    }
    if buf.len() < total {
        return Err(DecodeError::Incomplete { needed: total });
    }
    let sent = be_u32(&buf[total - 4..total]);
    let computed = crc32fast::hash(&buf[..total - 4]);
    if sent != computed {
        return Err(DecodeError::MessageCrc { sent, computed });
    }
    let headers = decode_headers(&buf[12..12 + headers_len])?;
    let payload = Bytes::copy_from_slice(&buf[12 + headers_len..total - 4]);
    Ok((Message { headers, payload }, total))
}

/// Decode every message in `buf`, which must end on a message boundary.
pub fn decode_all(mut buf: &[u8]) -> Result<Vec<Message>, DecodeError> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (m, used) = decode(buf)?;
        out.push(m);
        buf = &buf[used..];
    }
    Ok(out)
}

fn decode_headers(mut b: &[u8]) -> Result<Vec<(String, HeaderValue)>, DecodeError> {
    let start = b.len();
    let mut out = Vec::new();
    let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>, DecodeError> {
        if b.len() < n {
            return Err(DecodeError::BadHeader(start - b.len()));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head.to_vec())
    };
    while !b.is_empty() {
        let name_len = usize::from(take(&mut b, 1)?[0]);
        let name = String::from_utf8(take(&mut b, name_len)?)
            .map_err(|_| DecodeError::BadHeader(start - b.len()))?;
        let ty = take(&mut b, 1)?[0];
        let fixed = |b: &mut &[u8], n: usize| -> Result<[u8; 8], DecodeError> {
            let v = take(b, n)?;
            let mut a = [0u8; 8];
            a[8 - n..].copy_from_slice(&v);
            Ok(a)
        };
        let value = match ty {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(i8::from_be_bytes([take(&mut b, 1)?[0]])),
            3 => HeaderValue::Short(i64::from_be_bytes(fixed(&mut b, 2)?) as i16),
            4 => HeaderValue::Int(i64::from_be_bytes(fixed(&mut b, 4)?) as i32),
            5 => HeaderValue::Long(i64::from_be_bytes(fixed(&mut b, 8)?)),
            6 | 7 => {
                let len = take(&mut b, 2)?;
                let data = take(&mut b, usize::from(u16::from_be_bytes([len[0], len[1]])))?;
                if ty == 6 {
                    HeaderValue::Bytes(data)
                } else {
                    HeaderValue::String(
                        String::from_utf8(data)
                            .map_err(|_| DecodeError::BadHeader(start - b.len()))?,
                    )
                }
            }
            8 => HeaderValue::Timestamp(i64::from_be_bytes(fixed(&mut b, 8)?)),
            9 => {
                let v = take(&mut b, 16)?;
                let mut a = [0u8; 16];
                a.copy_from_slice(&v);
                HeaderValue::Uuid(a)
            }
            _ => return Err(DecodeError::BadHeader(start - b.len())),
        };
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_crc_checks() {
        let m = encode(
            &[(":event-type", "messageStart"), (":message-type", "event")],
            br#"{"role":"assistant"}"#,
        );
        let (msg, used) = decode(&m).expect("valid message");
        assert_eq!(used, m.len());
        assert_eq!(msg.header(":event-type"), Some("messageStart"));
        assert_eq!(msg.json().expect("json")["role"], "assistant");

        let mut bad = m.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(decode(&bad), Err(DecodeError::MessageCrc { .. })));
        let mut bad = m.to_vec();
        bad[3] ^= 1;
        assert!(matches!(decode(&bad), Err(DecodeError::PreludeCrc { .. })));
        assert!(matches!(
            decode(&m[..20]),
            Err(DecodeError::Incomplete { .. })
        ));
    }

    #[test]
    fn known_vector_from_the_aws_test_suite_shape() {
        // An empty message: 16 bytes, no headers, no payload.
        let m = encode(&[], b"");
        assert_eq!(m.len(), 16);
        assert_eq!(&m[0..8], &[0, 0, 0, 16, 0, 0, 0, 0]);
        // CRC32 (IEEE) of eight zero-length-prefixed bytes, as the spec's
        // "empty message" vector: 0x05c248eb prelude, 0x7d98c8ff message.
        assert_eq!(be_u32(&m[8..12]), 0x05c2_48eb);
        assert_eq!(be_u32(&m[12..16]), 0x7d98_c8ff);
    }
}
