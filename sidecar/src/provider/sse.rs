//! An incremental Server-Sent Events parser shared by the adapters.
//!
//! Bytes arrive split anywhere (mid-line, mid-UTF-8 sequence); complete
//! events come out as soon as their blank line arrives. Comments (`: ping`)
//! are dropped here: they are keep-alives, never tokens. One line or event
//! longer than the cap is an error rather than unbounded buffering.

use sluice_crds::FailureClass;

use super::Failure;

/// One SSE event: its `event:` name (if any) and its `data:` lines joined
/// by `\n`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// The parser's state between feeds.
#[derive(Debug)]
pub struct SseParser {
    max_line: usize,
    line: Vec<u8>,
    event: Option<String>,
    data: String,
    has_data: bool,
    failed: bool,
}

impl SseParser {
    /// A parser refusing lines (and events) longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            line: Vec::new(),
            event: None,
            data: String::new(),
            has_data: false,
            failed: false,
        }
    }

    /// Feeds bytes; returns the events completed by them. After an error
    /// the parser yields nothing more.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Result<SseEvent, Failure>> {
        let mut out = Vec::new();
        if self.failed {
            return out;
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    if self.line.len() + i > self.max_line {
                        return self.fail(out);
                    }
                    self.line.extend_from_slice(&rest[..i]);
                    rest = &rest[i + 1..];
                    let line = std::mem::take(&mut self.line);
                    if let Some(ev) = self.process_line(&line) {
                        out.push(Ok(ev));
                    }
                    if self.data.len() > self.max_line {
                        return self.fail(out);
                    }
                }
                None => {
                    if self.line.len() + rest.len() > self.max_line {
                        return self.fail(out);
                    }
                    self.line.extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
        out
    }

    /// The body ended: an event without its closing blank line still counts.
    pub fn finish(&mut self) -> Vec<Result<SseEvent, Failure>> {
        if self.failed {
            return Vec::new();
        }
        let mut out = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            if let Some(ev) = self.process_line(&line) {
                out.push(Ok(ev));
            }
        }
        if let Some(ev) = self.dispatch() {
            out.push(Ok(ev));
        }
        out
    }

    fn fail(&mut self, mut out: Vec<Result<SseEvent, Failure>>) -> Vec<Result<SseEvent, Failure>> {
        self.failed = true;
        self.line = Vec::new();
        self.data = String::new();
        out.push(Err(Failure::new(
            FailureClass::Malformed,
            format!("upstream SSE line longer than {} bytes", self.max_line),
        )));
        out
    }

    fn process_line(&mut self, line: &[u8]) -> Option<SseEvent> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            return None; // comment / keep-alive
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            b"event" => self.event = Some(value.into_owned()),
            // `id`, `retry` and unknown fields do not matter to a proxy.
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if !self.has_data {
            // An event with no data (e.g. a bare `event: ping`) carries nothing.
            return None;
        }
        self.has_data = false;
        Some(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all(p: &mut SseParser, input: &[u8]) -> Vec<SseEvent> {
        let mut v: Vec<_> = p.feed(input).into_iter().map(|r| r.expect("ok")).collect();
        v.extend(p.finish().into_iter().map(|r| r.expect("ok")));
        v
    }

    #[test]
    fn events_comments_and_crlf() {
        let mut p = SseParser::new(1024);
        let ev = all(
            &mut p,
            b": ping\r\n\r\nevent: message_start\r\ndata: {\"a\":1}\r\n\r\ndata: x\ndata: y\n\ndata: [DONE]",
        );
        assert_eq!(
            ev,
            vec![
                SseEvent {
                    event: Some("message_start".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: None,
                    data: "x\ny".into()
                },
                SseEvent {
                    event: None,
                    data: "[DONE]".into()
                },
            ]
        );
    }

    #[test]
    fn long_lines_are_refused() {
        let mut p = SseParser::new(8);
        let out = p.feed(b"data: 0123456789\n\n");
        assert!(matches!(out.last(), Some(Err(f)) if f.class == FailureClass::Malformed));
        assert!(p.feed(b"data: x\n\n").is_empty());
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_events(input in proptest::collection::vec(any::<u8>(), 0..512), split in 0usize..512) {
            let mut whole = SseParser::new(256);
            let a: Vec<_> = whole.feed(&input).into_iter().chain(whole.finish()).collect();
            let mut parts = SseParser::new(256);
            let k = split.min(input.len());
            let mut b: Vec<_> = parts.feed(&input[..k]);
            b.extend(parts.feed(&input[k..]));
            b.extend(parts.finish());
            // Errors may surface at a different point; successes before the
            // first error must agree.
            let ok = |v: &[Result<SseEvent, Failure>]| v.iter().take_while(|r| r.is_ok()).count();
            if ok(&a) == a.len() && ok(&b) == b.len() {
                prop_assert_eq!(a, b);
            }
        }
    }
}
