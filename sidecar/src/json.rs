//! Writing a JSON string where the rest of the document is written by
//! hand (access-log lines, the model spliced into a pass-through body).

/// Appends `s` as a JSON string: quoted as it is when nothing in it needs
/// an escape (ids, route, provider and model names: nearly always), else
/// through serde_json, which escapes quotes, backslashes and control
/// characters.
pub fn push_string(out: &mut Vec<u8>, s: &str) -> Result<(), serde_json::Error> {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return Ok(());
    }
    serde_json::to_writer(out, s)
}

#[cfg(test)]
mod tests {
    #[test]
    fn strings_are_written_as_serde_json_would() {
        for s in [
            "gpt-4o-mini",
            "",
            "a\"b",
            "back\\slash",
            "tab\there",
            "é/ü:1",
            "\u{1}",
        ] {
            let mut out = b"x".to_vec();
            super::push_string(&mut out, s).expect("writes");
            let want = [b"x".to_vec(), serde_json::to_vec(s).expect("json")].concat();
            assert_eq!(out, want, "{s:?}");
        }
    }
}
