//! An incremental Server-Sent Events parser shared by the adapters.
//!
//! Bytes arrive split anywhere (mid-line, mid-UTF-8 sequence); complete
//! events come out as soon as their blank line arrives. Comments (`: ping`)
//! are dropped here: they are keep-alives, never tokens. One line or event
//! longer than the cap is an error rather than unbounded buffering.

use bytes::Bytes;
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
            match memchr::memchr(b'\n', rest) {
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

/// One SSE event as bytes, for pass-through: what [`SseSlicer`] yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// The `data:` lines joined by `\n`; not checked for UTF-8. A slice of
    /// the upstream's own bytes when the event had one data line that
    /// arrived in one piece.
    pub data: Bytes,
    /// The event exactly as it came, when it is the canonical frame
    /// `data: <data>\n\n` in one piece: it can go to the client untouched.
    pub frame: Option<Bytes>,
}

/// The event's data so far.
#[derive(Debug)]
enum Data {
    /// One line: a slice of the upstream bytes (or of a carried line).
    One(Bytes),
    /// Several lines, joined.
    Joined(Vec<u8>),
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::One(b) => b.len(),
            Data::Joined(v) => v.len(),
        }
    }
}

/// [`SseParser`]'s grammar (same events, same line cap, same end-of-body
/// rule) without copying: events come out as slices of the `Bytes` fed in
/// whenever they arrived in one piece, and a canonical event keeps its
/// original frame so a pass-through adapter can forward it byte for byte.
/// Only a line split across two feeds is copied.
#[derive(Debug)]
pub struct SseSlicer {
    max_line: usize,
    /// An incomplete line from the previous feed.
    carry: Vec<u8>,
    data: Option<Data>,
    /// Non-blank lines of the current event.
    lines: u32,
    /// Where the current event began, when its only line so far is a
    /// canonical `data: …\n` of the current feed.
    canonical: Option<usize>,
    failed: bool,
}

impl SseSlicer {
    /// A slicer refusing lines (and events) longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            carry: Vec::new(),
            data: None,
            lines: 0,
            canonical: None,
            failed: false,
        }
    }

    /// Feeds bytes; returns the events completed by them. After an error
    /// the slicer yields nothing more.
    pub fn feed(&mut self, bytes: &Bytes) -> Vec<Result<RawEvent, Failure>> {
        let mut out = Vec::new();
        if self.failed {
            return out;
        }
        // A canonical start from an earlier feed cannot be sliced now.
        self.canonical = None;
        let mut pos = 0;
        if !self.carry.is_empty() {
            match memchr::memchr(b'\n', bytes) {
                None => {
                    if self.carry.len() + bytes.len() > self.max_line {
                        return self.fail(out);
                    }
                    self.carry.extend_from_slice(bytes);
                    return out;
                }
                Some(i) => {
                    if self.carry.len() + i > self.max_line {
                        return self.fail(out);
                    }
                    self.carry.extend_from_slice(&bytes[..i]);
                    let line = Bytes::from(std::mem::take(&mut self.carry));
                    self.line(line, bytes, None, &mut out);
                    if self.data.as_ref().is_some_and(|d| d.len() > self.max_line) {
                        return self.fail(out);
                    }
                    pos = i + 1;
                }
            }
        }
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    if i > self.max_line {
                        return self.fail(out);
                    }
                    let line = bytes.slice(pos..pos + i);
                    self.line(line, bytes, Some((pos, pos + i + 1)), &mut out);
                    if self.data.as_ref().is_some_and(|d| d.len() > self.max_line) {
                        return self.fail(out);
                    }
                    pos += i + 1;
                }
                None => {
                    if rest.len() > self.max_line {
                        return self.fail(out);
                    }
                    self.carry.extend_from_slice(rest);
                    break;
                }
            }
        }
        out
    }

    /// The body ended: an event without its closing blank line still counts.
    pub fn finish(&mut self) -> Vec<Result<RawEvent, Failure>> {
        let mut out = Vec::new();
        if self.failed {
            return out;
        }
        self.canonical = None;
        if !self.carry.is_empty() {
            let line = Bytes::from(std::mem::take(&mut self.carry));
            self.line(line, &Bytes::new(), None, &mut out);
        }
        self.dispatch(None, &mut out);
        out
    }

    fn fail(&mut self, mut out: Vec<Result<RawEvent, Failure>>) -> Vec<Result<RawEvent, Failure>> {
        self.failed = true;
        self.carry = Vec::new();
        self.data = None;
        out.push(Err(Failure::new(
            FailureClass::Malformed,
            format!("upstream SSE line longer than {} bytes", self.max_line),
        )));
        out
    }

    /// One line without its `\n`; `span` is where it lies in `feed`, with
    /// its `\n`, when it lies there whole.
    fn line(
        &mut self,
        line: Bytes,
        feed: &Bytes,
        span: Option<(usize, usize)>,
        out: &mut Vec<Result<RawEvent, Failure>>,
    ) {
        let crlf = line.last() == Some(&b'\r');
        let line = if crlf {
            line.slice(..line.len() - 1)
        } else {
            line
        };
        if line.is_empty() {
            let frame = match (self.canonical.take(), span) {
                (Some(start), Some((_, end))) if !crlf && self.lines == 1 => {
                    Some(feed.slice(start..end))
                }
                _ => None,
            };
            self.dispatch(frame, out);
            return;
        }
        self.lines += 1;
        if line[0] == b':' {
            return; // comment / keep-alive
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let skip = usize::from(line.get(i + 1) == Some(&b' '));
                (line.slice(..i), line.slice(i + 1 + skip..))
            }
            None => (line.clone(), Bytes::new()),
        };
        // `event`, `id`, `retry` and unknown fields do not matter here.
        if &field[..] != b"data" {
            return;
        }
        self.data = Some(match self.data.take() {
            None => {
                if self.lines == 1
                    && !crlf
                    && value.len() + 6 == line.len()
                    && let Some((start, _)) = span
                {
                    self.canonical = Some(start);
                }
                Data::One(value)
            }
            Some(prev) => {
                let mut joined = match prev {
                    Data::One(b) => b.to_vec(),
                    Data::Joined(v) => v,
                };
                joined.push(b'\n');
                joined.extend_from_slice(&value);
                Data::Joined(joined)
            }
        });
    }

    fn dispatch(&mut self, frame: Option<Bytes>, out: &mut Vec<Result<RawEvent, Failure>>) {
        self.lines = 0;
        self.canonical = None;
        // An event with no data (e.g. a bare `event: ping`) carries nothing.
        if let Some(data) = self.data.take() {
            let data = match data {
                Data::One(b) => b,
                Data::Joined(v) => Bytes::from(v),
            };
            out.push(Ok(RawEvent { data, frame }));
        }
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

    fn slice_all(s: &mut SseSlicer, parts: &[&[u8]]) -> Vec<Result<RawEvent, Failure>> {
        let mut v = Vec::new();
        for p in parts {
            v.extend(s.feed(&Bytes::copy_from_slice(p)));
        }
        v.extend(s.finish());
        v
    }

    #[test]
    fn canonical_events_keep_their_frame_and_others_do_not() {
        let mut s = SseSlicer::new(1024);
        let input: &[u8] = b"data: {\"a\":1}\n\n: ping\n\nevent: ping\n\ndata:{\"b\":2}\n\ndata: x\r\n\r\ndata: y\ndata: z\n\nevent: e\ndata: w\n\n";
        let ev: Vec<RawEvent> = slice_all(&mut s, &[input])
            .into_iter()
            .map(|r| r.expect("ok"))
            .collect();
        let got: Vec<(&[u8], Option<&[u8]>)> = ev
            .iter()
            .map(|e| (&e.data[..], e.frame.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                (&b"{\"a\":1}"[..], Some(&b"data: {\"a\":1}\n\n"[..])),
                (&b"{\"b\":2}"[..], None),
                (&b"x"[..], None),
                (&b"y\nz"[..], None),
                (&b"w"[..], None),
            ]
        );
    }

    #[test]
    fn a_frame_split_across_feeds_is_copied_not_lost() {
        let mut s = SseSlicer::new(1024);
        let ev = slice_all(&mut s, &[b"da", b"ta: {\"a\"", b":1}\n", b"\n"]);
        let ev: Vec<RawEvent> = ev.into_iter().map(|r| r.expect("ok")).collect();
        assert_eq!(ev.len(), 1);
        assert_eq!(&ev[0].data[..], b"{\"a\":1}");
        assert_eq!(ev[0].frame, None);
    }

    #[test]
    fn the_slicer_refuses_long_lines_like_the_parser() {
        let mut s = SseSlicer::new(8);
        let out = s.feed(&Bytes::from_static(b"data: 0123456789\n\n"));
        assert!(matches!(out.last(), Some(Err(f)) if f.class == FailureClass::Malformed));
        assert!(s.feed(&Bytes::from_static(b"data: x\n\n")).is_empty());
        // A huge line without a newline is refused as it grows, never buffered whole.
        let mut s = SseSlicer::new(1 << 10);
        assert!(s.feed(&Bytes::from(vec![b'a'; 1000])).is_empty());
        assert!(matches!(
            s.feed(&Bytes::from(vec![b'a'; 100])).last(),
            Some(Err(_))
        ));
    }

    proptest! {
        /// The slicer yields the parser's events (data compared as the
        /// parser's lossy text), for any input cut anywhere.
        #[test]
        fn the_slicer_agrees_with_the_parser(
            input in proptest::collection::vec(
                proptest::prop_oneof![
                    Just(&b"data: "[..]), Just(&b"data:"[..]), Just(&b"event: x"[..]),
                    Just(&b": c"[..]), Just(&b"\n"[..]), Just(&b"\r\n"[..]), Just(&b"{}"[..]),
                    Just(&b"id: 1"[..]), Just(&b"\xff"[..]), Just(&b"abc"[..]),
                ],
                0..40,
            ).prop_map(|v| v.concat()),
            cuts in proptest::collection::vec(0usize..256, 0..4),
        ) {
            let mut parser = SseParser::new(64);
            let old: Vec<_> = parser.feed(&input).into_iter().chain(parser.finish()).collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let mut parts: Vec<&[u8]> = Vec::new();
            let mut at = 0;
            for c in cuts {
                parts.push(&input[at..c]);
                at = c;
            }
            parts.push(&input[at..]);
            let mut slicer = SseSlicer::new(64);
            let new = slice_all(&mut slicer, &parts);
            let ok_old = old.iter().all(Result::is_ok);
            let ok_new = new.iter().all(Result::is_ok);
            if ok_old && ok_new {
                let old: Vec<String> = old.into_iter().map(|e| e.expect("ok").data).collect();
                let new: Vec<String> = new
                    .into_iter()
                    .map(|e| String::from_utf8_lossy(&e.expect("ok").data).into_owned())
                    .collect();
                prop_assert_eq!(old, new);
            }
        }

        /// A canonical frame is exactly `data: <data>\n\n`.
        #[test]
        fn frames_are_exactly_the_data_framed(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut s = SseSlicer::new(256);
            for ev in slice_all(&mut s, &[&input]).into_iter().flatten() {
                if let Some(frame) = ev.frame {
                    let mut expected = b"data: ".to_vec();
                    expected.extend_from_slice(&ev.data);
                    expected.extend_from_slice(b"\n\n");
                    prop_assert_eq!(&frame[..], &expected[..]);
                }
            }
        }

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
