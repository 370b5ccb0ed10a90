//! A phonetic key for family names (American Soundex): names that sound
//! alike share it (`Reid`/`Reed`, `Schmidt`/`Smith`).
//! Used only as a weak level of agreement, never to tell people apart.

/// The Soundex code of a normalised (lower-case ASCII) word: its first
/// letter and three digits (`robert` -> `r163`); empty for an empty word.
pub fn soundex(word: &str) -> String {
    fn digit(c: u8) -> u8 {
        match c {
            b'b' | b'f' | b'p' | b'v' => b'1',
            b'c' | b'g' | b'j' | b'k' | b'q' | b's' | b'x' | b'z' => b'2',
            b'd' | b't' => b'3',
            b'l' => b'4',
            b'm' | b'n' => b'5',
            b'r' => b'6',
            b'h' | b'w' => b'-', // transparent: does not separate equal codes
            _ => b'0',           // vowels (and y) separate equal codes
        }
    }
    let bytes: Vec<u8> = word.bytes().filter(u8::is_ascii_lowercase).collect();
    let Some(&first) = bytes.first() else { return String::new() };
    let mut out = vec![first];
    let mut last = digit(first);
    for &c in &bytes[1..] {
        let d = digit(c);
        if d == b'-' {
            continue;
        }
        if d != b'0' && d != last {
            out.push(d);
            if out.len() == 4 {
                break;
            }
        }
        last = d;
    }
    while out.len() < 4 {
        out.push(b'0');
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::soundex;

    #[test]
    fn american_soundex() {
        assert_eq!(soundex("robert"), "r163");
        assert_eq!(soundex("rupert"), "r163");
        assert_eq!(soundex("ashcraft"), "a261");
        assert_eq!(soundex("tymczak"), "t522");
        assert_eq!(soundex("pfister"), "p236");
        assert_eq!(soundex("reid"), soundex("reed"));
        assert_eq!(soundex("schmidt"), soundex("smith"));
        assert_ne!(soundex("smith"), soundex("jones"));
        assert_eq!(soundex(""), "");
    }
}
