//! Request ids: the client's `x-request-id` when it sent a sane one,
//! otherwise a fresh one, unique per process and hard to guess in order.

use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The id to use for a request with these headers.
pub fn from_headers(headers: &http::HeaderMap) -> String {
    headers
        .get(crate::attempt::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(generate, str::to_owned)
}

/// A fresh id: 32 hex digits from the clock, the process and a counter,
/// mixed so consecutive ids do not look alike.
pub fn generate() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // The pid read once: `std::process::id()` is a `getpid` syscall.
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let pid = *PID.get_or_init(std::process::id);
    let a = mix(nanos ^ u64::from(pid).rotate_left(32));
    let b = mix(n.wrapping_add(a));
    // `format!("{a:016x}{b:016x}")` without the formatting machinery: this
    // runs for every request without an id.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    for (i, digit) in id.iter_mut().enumerate() {
        let word = if i < 16 { a } else { b };
        let shift = 4 * (15 - (i % 16));
        *digit = HEX[((word >> shift) & 0xf) as usize];
    }
    // Hex digits are ASCII: the check cannot fail.
    std::str::from_utf8(&id)
        .map(str::to_owned)
        .unwrap_or_default()
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn propagates_sane_ids_and_replaces_others() {
        let mut h = http::HeaderMap::new();
        h.insert("x-request-id", http::HeaderValue::from_static("abc-123"));
        assert_eq!(from_headers(&h), "abc-123");
        h.insert("x-request-id", http::HeaderValue::from_static("has space"));
        assert_eq!(from_headers(&h).len(), 32);
        assert_ne!(generate(), generate());
    }

    #[test]
    fn fresh_ids_are_32_lowercase_hex_digits() {
        let id = generate();
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let n = u128::from_str_radix(&id, 16).expect("hex");
        assert_eq!(format!("{n:032x}"), id);
    }
}
