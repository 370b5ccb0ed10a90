//! The strict reader: one validating pass over an upstream body before any
//! stage reads it.
//!
//! serde_json (like most parsers) lets the last of two equal member names
//! win, other parsers keep the first; a filter that reads one value while
//! the caller's parser reads the other lets hidden data through. So a body
//! with a duplicated member name at any depth — compared after decoding
//! escapes, `"a"` and `"\u0061"` are the same name — is refused as the
//! upstream's fault (502), as is anything that is not strict JSON (RFC 8259:
//! no trailing commas, no comments, no NaN, no lone surrogates, no control
//! characters in strings), and nesting deeper than [`MAX_DEPTH`].
//!
//! The pass is a hand-written byte scanner (no allocation except for member
//! names that contain escapes, one small stack of names per open object, and
//! the [`Tape`] it leaves behind). The tape records where every value and
//! member name lies, so the stages after it find members and entries
//! without reading the bytes again (in the spirit of simdjson's tape).

use super::tape::{Kind, Slot, Tape};

/// Deepest nesting accepted (FHIR resources are far shallower).
pub const MAX_DEPTH: usize = 128;

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrictError {
    #[error("invalid JSON at byte {0}")]
    Syntax(usize),
    #[error("member name {name:?} appears twice in one object (byte {at})")]
    DuplicateKey { name: String, at: usize },
    #[error("JSON nested deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// Validate `text` as one strict JSON value without duplicate member names.
pub fn check(text: &str) -> Result<(), StrictError> {
    read(text).map(drop)
}

/// Validate `text` as [`check`] does and keep the tape of its values.
pub fn read(text: &str) -> Result<Tape<'_>, StrictError> {
    if u32::try_from(text.len()).is_err() {
        return Err(StrictError::Syntax(u32::MAX as usize));
    }
    let mut reader = Reader {
        bytes: text.as_bytes(),
        pos: 0,
        names: Vec::new(),
        // About one value per 12 bytes in FHIR JSON.
        slots: Vec::with_capacity(text.len() / 12 + 4),
        key: None,
    };
    reader.skip_ws();
    reader.value(0)?;
    reader.skip_ws();
    if reader.pos != reader.bytes.len() {
        return Err(StrictError::Syntax(reader.pos));
    }
    Ok(Tape::new(text, reader.slots))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Member names of the open objects, innermost last; each object's
    /// names start at the index it pushed.
    names: Vec<Name<'a>>,
    slots: Vec<Slot>,
    /// The member name (span inside the quotes, escaped?) the next value
    /// belongs to.
    key: Option<(u32, u32, bool)>,
}

/// A member name: its raw bytes, or its decoded text when it had escapes.
#[derive(PartialEq, Eq)]
enum Name<'a> {
    Raw(&'a [u8]),
    Decoded(String),
}

impl Name<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Name::Raw(b) => b,
            Name::Decoded(s) => s.as_bytes(),
        }
    }
}

impl<'a> Reader<'a> {
    fn err(&self) -> StrictError {
        StrictError::Syntax(self.pos)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), StrictError> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.err())
        }
    }

    fn value(&mut self, depth: usize) -> Result<(), StrictError> {
        if depth > MAX_DEPTH {
            return Err(StrictError::TooDeep);
        }
        let index = self.slots.len();
        let (key_start, key_end, key_escaped) = self.key.take().unwrap_or((0, 0, false));
        self.slots.push(Slot {
            start: self.pos as u32,
            end: 0,
            key_start,
            key_end,
            after: 0,
            kind: Kind::Null,
            key_escaped,
            escaped: false,
        });
        let (kind, escaped) = match self.peek() {
            Some(b'{') => (self.object(depth).map(|_| Kind::Object)?, false),
            Some(b'[') => (self.array(depth).map(|_| Kind::Array)?, false),
            Some(b'"') => (Kind::String, matches!(self.string()?, Name::Decoded(_))),
            Some(b't') => (self.literal(b"true").map(|_| Kind::True)?, false),
            Some(b'f') => (self.literal(b"false").map(|_| Kind::False)?, false),
            Some(b'n') => (self.literal(b"null").map(|_| Kind::Null)?, false),
            Some(b'-' | b'0'..=b'9') => (self.number().map(|_| Kind::Number)?, false),
            _ => return Err(self.err()),
        };
        let after = self.slots.len() as u32;
        let slot = &mut self.slots[index];
        slot.end = self.pos as u32;
        slot.after = after;
        slot.kind = kind;
        slot.escaped = escaped;
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), StrictError> {
        if self.bytes[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.err())
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), StrictError> {
        self.pos += 1;
        let first_name = self.names.len();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.err());
            }
            let at = self.pos;
            let name = self.string()?;
            self.key = Some((at as u32 + 1, self.pos as u32 - 1, matches!(name, Name::Decoded(_))));
            // Objects are small (tens of members): a linear scan beats hashing.
            if self.names[first_name..].iter().any(|seen| seen.bytes() == name.bytes()) {
                let name = String::from_utf8_lossy(name.bytes()).into_owned();
                return Err(StrictError::DuplicateKey { name, at });
            }
            self.names.push(name);
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            self.value(depth + 1)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    self.names.truncate(first_name);
                    return Ok(());
                }
                _ => return Err(self.err()),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), StrictError> {
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.skip_ws();
            self.value(depth + 1)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.err()),
            }
        }
    }

    /// A string; returns it as a member name (decoded only when escaped).
    fn string(&mut self) -> Result<Name<'a>, StrictError> {
        self.pos += 1;
        let start = self.pos;
        let mut decoded: Option<String> = None;
        // Raw bytes before this position are already in `decoded`.
        let mut copied_to = start;
        loop {
            self.pos = plain_run(self.bytes, self.pos);
            let Some(b) = self.peek() else { return Err(self.err()) };
            match b {
                b'"' => {
                    let raw = &self.bytes[start..self.pos];
                    let tail = &self.bytes[copied_to..self.pos];
                    self.pos += 1;
                    return Ok(match decoded {
                        Some(mut text) => {
                            text.push_str(std::str::from_utf8(tail).map_err(|_| self.err())?);
                            Name::Decoded(text)
                        }
                        None => Name::Raw(raw),
                    });
                }
                b'\\' => {
                    let before =
                        std::str::from_utf8(&self.bytes[copied_to..self.pos]).map_err(|_| self.err())?;
                    let text = decoded.get_or_insert_with(String::new);
                    text.push_str(before);
                    self.pos += 1;
                    let ch = self.escape()?;
                    decoded.as_mut().expect("set above").push(ch);
                    copied_to = self.pos;
                }
                0x00..=0x1f => return Err(self.err()),
                _ => self.pos += 1,
            }
        }
    }

    fn escape(&mut self) -> Result<char, StrictError> {
        let Some(b) = self.peek() else { return Err(self.err()) };
        self.pos += 1;
        Ok(match b {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = self.hex4()?;
                match high {
                    0xD800..=0xDBFF => {
                        if !self.bytes[self.pos..].starts_with(b"\\u") {
                            return Err(self.err());
                        }
                        self.pos += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(self.err());
                        }
                        let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                        char::from_u32(code).ok_or_else(|| self.err())?
                    }
                    0xDC00..=0xDFFF => return Err(self.err()),
                    code => char::from_u32(code).ok_or_else(|| self.err())?,
                }
            }
            _ => return Err(self.err()),
        })
    }

    fn hex4(&mut self) -> Result<u32, StrictError> {
        let digits = self.bytes.get(self.pos..self.pos + 4).ok_or_else(|| self.err())?;
        let text = std::str::from_utf8(digits).map_err(|_| self.err())?;
        let code = u32::from_str_radix(text, 16).map_err(|_| self.err())?;
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(self.err());
        }
        self.pos += 4;
        Ok(code)
    }

    fn number(&mut self) -> Result<(), StrictError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.err()),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err());
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.err());
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }
}

/// The end of the run of plain string bytes from `pos`: the first `"`,
/// `\\` or control character (or the end). Eight bytes at a time: most of an
/// upstream body is string contents.
fn plain_run(bytes: &[u8], mut pos: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    while let Some(chunk) = bytes.get(pos..pos + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let quote = has_zero(word ^ (ONES * u64::from(b'"')));
        let backslash = has_zero(word ^ (ONES * u64::from(b'\\')));
        // A byte below 0x20 (bytes >= 0x80 are masked out by `!word`).
        let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
        let stops = quote | backslash | control;
        if stops != 0 {
            return pos + (stops.trailing_zeros() / 8) as usize;
        }
        pos += 8;
    }
    while let Some(&b) = bytes.get(pos) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        pos += 1;
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_strict_json() {
        for ok in [
            r#"{}"#,
            r#"{"a":1,"b":[1,2,{"a":2}],"c":{"a":{"a":null}}}"#,
            r#" {"resourceType" : "Bundle", "entry" : [ {"resource":{"id":"x"}}, {"resource":{"id":"y"}} ] } "#,
            r#"{"a":"\u00e9\n\"","b":-0.5e+10,"c":true,"d":false}"#,
            r#"{"emoji":"\ud83d\ude00"}"#,
            r#"[]"#,
            r#""text""#,
            r#"{"a\u0062":1,"ab2":2}"#,
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_duplicate_names_at_any_depth() {
        for dup in [
            r#"{"a":1,"a":2}"#,
            r#"{"resourceType":"Bundle","entry":[{"resource":{"id":"x","subject":{"reference":"Patient/1","reference":"Patient/2"}}}]}"#,
            r#"{"a":{"b":{"c":[{"d":1,"e":2,"d":3}]}}}"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"{"ab":1,"a\u0062":2}"#,
            r#"{"\"":1,"\u0022":2}"#,
        ] {
            assert!(matches!(check(dup), Err(StrictError::DuplicateKey { .. })), "{dup}");
        }
        // The same name in sibling objects is fine.
        assert_eq!(check(r#"[{"a":1},{"a":2}]"#), Ok(()));
        assert_eq!(check(r#"{"x":{"a":1},"y":{"a":2},"a":3}"#), Ok(()));
    }

    #[test]
    fn string_runs_stop_at_every_offset() {
        // The eight-byte scan must see a control character, a quote or a
        // backslash wherever it falls in a word, past multi-byte text too.
        for n in 0..24 {
            let pad = "é".repeat(n % 3) + &"a".repeat(n);
            assert!(check(&format!("{{\"a\":\"{pad}\u{1}x\"}}")).is_err(), "control at {n}");
            assert!(check(&format!("{{\"a\":\"{pad}\u{1f}\"}}")).is_err(), "0x1f at {n}");
            assert_eq!(check(&format!("{{\"a\":\"{pad}\\\"x\u{7f}\u{80}\"}}")), Ok(()), "escape at {n}");
            assert!(check(&format!("{{\"{pad}\":1,\"{pad}\":2}}")).is_err(), "duplicate at {n}");
            let text = format!("{{\"k\":\"{pad}\"}}");
            let tape = read(&text).unwrap();
            assert_eq!(tape.root().get_str("k").as_deref(), Some(pad.as_str()));
        }
    }

    #[test]
    fn refuses_what_is_not_strict_json() {
        for bad in [
            "",
            "{",
            r#"{"a":1,}"#,
            r#"[1,]"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":NaN}"#,
            r#"{"a":tru}"#,
            r#"{a:1}"#,
            r#"{"a":1} x"#,
            r#"{"a":1}{"b":2}"#,
            "{\"a\":\"line\nbreak\"}",
            r#"{"a":"\x41"}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\udc00x"}"#,
            r#"{"a":"\u12g4"}"#,
            r#"{"a":1 /* c */}"#,
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        assert_eq!(check(&deep), Err(StrictError::TooDeep));
    }
}
