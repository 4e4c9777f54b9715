//! The cursor the scan walks a document with: JSON's grammar (strings,
//! numbers, literals, objects, arrays) checked byte by byte, nothing
//! copied. Every method returns `None` on anything the grammar does not
//! allow.

/// A JSON string as written: its bytes between the quotes, and whether
/// they hold escapes (then they differ from the decoded text).
#[derive(Clone, Copy)]
pub(super) struct Str<'a> {
    pub raw: &'a [u8],
    pub escaped: bool,
}

/// A cursor over one JSON document. Every method returns `None` on
/// anything JSON's grammar or the expected shape does not allow.
pub(super) struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    /// The document is checked as UTF-8 once, as serde_json's `from_str`
    /// requires; strings are then only checked for escapes and control
    /// characters.
    pub fn new(json: &'a [u8]) -> Option<Self> {
        std::str::from_utf8(json).ok()?;
        Some(Self { b: json, i: 0 })
    }

    pub fn byte(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// The next byte after whitespace, not consumed.
    #[inline]
    pub fn peek(&mut self) -> Option<u8> {
        match self.byte()? {
            b' ' | b'\n' | b'\t' | b'\r' => {}
            b => return Some(b),
        }
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.byte() {
            self.i += 1;
        }
        self.byte()
    }

    pub fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// Only whitespace is left.
    pub fn end(&mut self) -> Option<()> {
        self.peek().is_none().then_some(())
    }

    pub fn string(&mut self) -> Option<Str<'a>> {
        self.eat(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i += special(self.b.get(self.i..)?)?;
            match self.byte()? {
                b'"' => {
                    let raw = self.b.get(start..self.i)?;
                    self.i += 1;
                    return Some(Str { raw, escaped });
                }
                b'\\' => {
                    escaped = true;
                    self.i += 1;
                    match self.byte()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                        b'u' => {
                            let hex = self.b.get(self.i + 1..self.i + 5)?;
                            let hex = std::str::from_utf8(hex).ok()?;
                            let unit = u16::from_str_radix(hex, 16).ok()?;
                            // Surrogate pairs are left to the full parse.
                            if (0xD800..=0xDFFF).contains(&unit) || hex.starts_with('+') {
                                return None;
                            }
                            self.i += 5;
                        }
                        _ => return None,
                    }
                }
                // A control character: JSON wants it escaped.
                _ => return None,
            }
        }
    }

    /// `null` (consumed: `true`) or something else (left: `false`).
    pub fn null(&mut self) -> Option<bool> {
        if self.peek()? != b'n' {
            return Some(false);
        }
        self.literal(b"null")?;
        Some(true)
    }

    pub fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.peek()?;
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    pub fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.byte() {
            self.i += 1;
        }
        self.i - start
    }

    /// A number, checked against JSON's grammar; its text.
    pub fn number(&mut self) -> Option<&'a [u8]> {
        self.peek()?;
        let start = self.i;
        if self.byte() == Some(b'-') {
            self.i += 1;
        }
        match self.byte()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.byte() == Some(b'.') {
            self.i += 1;
            (self.digits() > 0).then_some(())?;
        }
        if let Some(b'e' | b'E') = self.byte() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.byte() {
                self.i += 1;
            }
            (self.digits() > 0).then_some(())?;
        }
        self.b.get(start..self.i)
    }

    /// A non-negative integer, written without fraction or exponent, that
    /// fits `u64` (what serde_json gives a `u64` field).
    pub fn uint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for &d in self.number()? {
            if !d.is_ascii_digit() {
                return None;
            }
            v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        Some(v)
    }

    pub fn u32(&mut self) -> Option<()> {
        u32::try_from(self.uint()?).ok().map(drop)
    }

    /// `null` or a string: `None` for null.
    pub fn opt_string(&mut self) -> Option<Option<Str<'a>>> {
        if self.null()? {
            return Some(None);
        }
        self.string().map(Some)
    }

    /// Any value, at most `depth` containers deep.
    pub fn skip(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(|c, _| c.skip(depth.checked_sub(1)?)),
            b'[' => self.array(|c| c.skip(depth.checked_sub(1)?)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }

    /// An object: `field` reads each value, given its key. Keys written
    /// with escapes are refused (the full parse would decode them).
    pub fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            if key.escaped {
                return None;
            }
            self.eat(b':')?;
            field(self, key.raw)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An array: `item` reads each element.
    pub fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            item(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

/// Where the first byte a string scan must stop at is in `s` — a quote, a
/// backslash or a control character — `None` when there is none. Eight
/// bytes at a time (SWAR): each lane is flagged when it equals `"` or
/// `\\`, or is below 0x20; a borrow may flag lanes above a flagged one,
/// never below, so the lowest flag is exact.
pub(super) fn special(s: &[u8]) -> Option<usize> {
    const LO: u64 = u64::from_le_bytes([1; 8]);
    const HI: u64 = LO << 7;
    let zero = |v: u64| v.wrapping_sub(LO) & !v & HI;
    let mut words = s.chunks_exact(8);
    let mut at = 0;
    for w in words.by_ref() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(w);
        let v = u64::from_le_bytes(bytes);
        let found = zero(v ^ (LO * u64::from(b'"')))
            | zero(v ^ (LO * u64::from(b'\\')))
            | (v.wrapping_sub(LO * 0x20) & !v & HI);
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let tail = words.remainder();
    tail.iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|i| at + i)
}
