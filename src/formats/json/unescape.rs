//! The content of a JSON string literal, unescaped into a buffer the caller
//! reuses.
//!
//! serde_json cannot do this: deserializing a `String` allocates a new one
//! each time, and the scratch buffer it unescapes into belongs to a
//! `Deserializer` made for one input text (its `Read::parse_str` is hidden
//! and not part of its API). No other crate of the build unescapes JSON.

use std::fmt;

/// Why a text could not be unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnescapeError {
    /// The text is not between double quotes.
    NotAString,
    /// An escape that JSON does not define, or that gives no Unicode scalar
    /// value (`\x`, `\u` without four hex digits, a lone surrogate), as
    /// written (at most its first 12 bytes).
    InvalidEscape(String),
}

impl fmt::Display for UnescapeError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            UnescapeError::NotAString => f.write_str("not a JSON string"),
            UnescapeError::InvalidEscape(escape) => {
                write!(f, "invalid escape {escape} in a JSON string")
            }
        }
    }
}

impl std::error::Error for UnescapeError {}

/// The content of `quoted`, a JSON string literal with its quotes: borrowed
/// from it when it has no escapes, else unescaped into `scratch` (cleared
/// first, its capacity kept across calls).
///
/// `quoted` is taken to be a literal that a JSON parser has accepted (the
/// text of a `RawValue`): only its escapes are checked, not its quotes or
/// control characters.
pub fn unescape<'a>(quoted: &'a str, scratch: &'a mut String) -> Result<&'a str, UnescapeError> {
    let inner = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .ok_or(UnescapeError::NotAString)?;
    let Some(first) = memchr::memchr(b'\\', inner.as_bytes()) else {
        return Ok(inner);
    };
    scratch.clear();
    scratch.reserve(inner.len());
    let mut rest = inner;
    let mut at = first;
    loop {
        scratch.push_str(&rest[..at]);
        let (c, len) = escape(&rest[at..])?;
        scratch.push(c);
        rest = &rest[at + len..];
        match memchr::memchr(b'\\', rest.as_bytes()) {
            Some(i) => at = i,
            None => break,
        }
    }
    scratch.push_str(rest);
    Ok(scratch)
}

/// Decodes the escape at the start of `text` (which starts with `\`): the
/// character and the length of the escape.
pub(in crate::formats) fn escape(text: &str) -> Result<(char, usize), UnescapeError> {
    let bytes = text.as_bytes();
    let simple = match bytes.get(1) {
        Some(b'"') => '"',
        Some(b'\\') => '\\',
        Some(b'/') => '/',
        Some(b'b') => '\u{8}',
        Some(b'f') => '\u{c}',
        Some(b'n') => '\n',
        Some(b'r') => '\r',
        Some(b't') => '\t',
        Some(b'u') => return unicode(text),
        _ => return Err(invalid(text, 2)),
    };
    Ok((simple, 2))
}

/// A `\uXXXX` escape, or two of them for a surrogate pair.
fn unicode(text: &str) -> Result<(char, usize), UnescapeError> {
    let high = hex4(text, 2).ok_or_else(|| invalid(text, 6))?;
    if !(0xd800..0xe000).contains(&high) {
        let c = char::from_u32(high).expect("not a surrogate");
        return Ok((c, 6));
    }
    let low = (0xd800..0xdc00)
        .contains(&high)
        .then(|| text.get(6..8).filter(|u| *u == "\\u").and(hex4(text, 8)))
        .flatten()
        .filter(|low| (0xdc00..0xe000).contains(low))
        .ok_or_else(|| invalid(text, 12))?;
    let code = 0x10000 + ((high - 0xd800) << 10) + (low - 0xdc00);
    Ok((char::from_u32(code).expect("a surrogate pair"), 12))
}

/// Four hex digits at `at`.
fn hex4(text: &str, at: usize) -> Option<u32> {
    let digits = text.get(at..at + 4)?;
    digits
        .bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| u32::from_str_radix(digits, 16).ok())
        .flatten()
}

fn invalid(text: &str, len: usize) -> UnescapeError {
    let mut end = len.min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    UnescapeError::InvalidEscape(text[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{UnescapeError, unescape};

    fn unescaped(quoted: &str) -> Result<String, String> {
        let mut scratch = String::from("left over");
        unescape(quoted, &mut scratch)
            .map(str::to_owned)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_escape() {
        let cases = [
            (r#""""#, ""),
            (r#""plain""#, "plain"),
            (r#""a\"b""#, "a\"b"),
            (r#""\\""#, "\\"),
            (r#""\/""#, "/"),
            (r#""\b\f\n\r\t""#, "\u{8}\u{c}\n\r\t"),
            (r#""caf\u00e9""#, "café"),
            (r#""\u00E9\u00e9""#, "éé"),
            (r#""\u0000""#, "\0"),
            (r#""\uffff""#, "\u{ffff}"),
            (r#""\ud83d\ude00!""#, "😀!"),
            (r#""\uD83D\uDE00""#, "😀"),
            (r#""\udbff\udfff""#, "\u{10ffff}"),
            (r#""é\\n""#, "é\\n"),
            (r#""{\"id\":\"x\\\"y\"}""#, r#"{"id":"x\"y"}"#),
        ];
        for (quoted, expected) in cases {
            assert_eq!(unescaped(quoted).as_deref(), Ok(expected), "{quoted}");
        }
    }

    #[test]
    fn escapes_are_unescaped_into_the_reused_buffer() {
        let mut scratch = String::new();
        for text in ["", "plain", "{\"a\":\"b\\\\c\"}", "tab\tline\n/é😀\u{1}"] {
            let quoted = serde_json::to_string(text).unwrap();
            assert_eq!(unescape(&quoted, &mut scratch), Ok(text));
        }
        let capacity = scratch.capacity();
        assert_eq!(
            unescape(r#""\ud83d\ude00 \u00e9\/""#, &mut scratch),
            Ok("😀 é/")
        );
        assert_eq!(scratch.capacity(), capacity);
    }

    #[test]
    fn text_without_escapes_is_borrowed() {
        let mut scratch = String::new();
        let quoted = r#""abc""#;
        let content = unescape(quoted, &mut scratch).unwrap();
        assert_eq!(content, "abc");
        assert!(std::ptr::eq(content.as_ptr(), quoted[1..].as_ptr()));
    }

    #[test]
    fn invalid_escapes_are_errors() {
        for (quoted, escape) in [
            (r#""\x""#, r"\x"),
            (r#""\""#, "\\"),
            (r#""\u12""#, r"\u12"),
            (r#""\u12g4""#, r"\u12g4"),
            (r#""\u+123""#, r"\u+123"),
            (r#""\ud800""#, r"\ud800"),
            (r#""\ud800x""#, r"\ud800x"),
            (r#""\ud800\u0041""#, r"\ud800\u0041"),
            (r#""\ud800\ud800""#, r"\ud800\ud800"),
            (r#""\udc00\udc00""#, r"\udc00\udc00"),
            (r#""\é""#, r"\é"),
        ] {
            assert_eq!(
                unescaped(quoted),
                Err(format!("invalid escape {escape} in a JSON string")),
                "{quoted}"
            );
        }
        for text in ["{}", "\"", "x\"", "\"x"] {
            assert_eq!(
                unescape(text, &mut String::new()),
                Err(UnescapeError::NotAString)
            );
        }
    }

    proptest! {
        /// Whatever serde_json writes, unescaping gives back the text.
        #[test]
        fn undoes_serde_json(text in any::<String>()) {
            let quoted = serde_json::to_string(&text).unwrap();
            prop_assert_eq!(unescaped(&quoted), Ok(text));
        }

        /// Agrees with serde_json on strings of escapes, valid or not.
        #[test]
        fn agrees_with_serde_json(parts in prop::collection::vec(prop_oneof![
            Just(r"\u00e9".to_owned()),
            Just(r"\ud83d".to_owned()),
            Just(r"\ude00".to_owned()),
            Just(r"\n".to_owned()),
            Just(r#"\""#.to_owned()),
            Just(r"\\".to_owned()),
            "[a-z]{0,3}",
        ], 0..8)) {
            let quoted = format!("\"{}\"", parts.concat());
            let ours = unescaped(&quoted).ok();
            let theirs = serde_json::from_str::<String>(&quoted).ok();
            prop_assert_eq!(ours, theirs, "{}", quoted);
        }
    }
}
