//! Go compatibility helpers for restic's JSON: string quoting and times, byte for byte.
//!
//! Restic's tree and snapshot JSON is produced by Go's `strconv.Quote` (node names),
//! `encoding/json` (every string, with its HTML-safe escapes) and `time.Time`'s RFC3339Nano
//! form. A tree's id is the hash of those bytes, so ferry must reproduce them exactly to
//! deduplicate against trees restic wrote (`restic-format.md` A10). This module owns those
//! rules and nothing else: it does no I/O and knows nothing about nodes or trees.
//!
//! Go's `unicode.IsPrint` decides which runes `strconv.Quote` keeps raw. It is answered here
//! from the `unicode-general-category` crate's Unicode 15.0 tables, the Unicode version of
//! Go 1.21 and later (restic 0.16+ is built with those).

use std::fmt::Write as _;

use unicode_general_category::{GeneralCategory, get_general_category};

use crate::node::Timestamp;

/// Why a Go-quoted string or an RFC3339 time could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GoJsonError {
    /// The text is not the inside of a valid Go double-quoted string literal.
    #[error("unquoting go string {text:?}: {reason}")]
    Unquote {
        /// The offending text (at most its first 80 characters).
        text: String,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// The text is not an RFC3339 time.
    #[error("parsing rfc3339 time {text:?}: {reason}")]
    Time {
        /// The offending text (at most its first 80 characters).
        text: String,
        /// What was wrong with it.
        reason: &'static str,
    },
}

/// The first 80 characters of `s`, for error messages.
fn truncated(s: &str) -> String {
    s.chars().take(80).collect()
}

const LOWER_HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether Go's `unicode.IsPrint` holds for `c`: letters, marks, numbers, punctuation,
/// symbols and the ASCII space, but no other space character.
pub fn go_is_print(c: char) -> bool {
    if c.is_ascii() {
        return (' '..='~').contains(&c);
    }
    use GeneralCategory::*;
    match get_general_category(c) {
        UppercaseLetter | LowercaseLetter | TitlecaseLetter | ModifierLetter | OtherLetter => true,
        NonspacingMark | SpacingMark | EnclosingMark => true,
        DecimalNumber | LetterNumber | OtherNumber => true,
        ConnectorPunctuation | DashPunctuation | OpenPunctuation | ClosePunctuation
        | InitialPunctuation | FinalPunctuation | OtherPunctuation => true,
        MathSymbol | CurrencySymbol | ModifierSymbol | OtherSymbol => true,
        SpaceSeparator | LineSeparator | ParagraphSeparator | Control | Format | Surrogate
        | PrivateUse | Unassigned => false,
    }
}

/// Decodes the UTF-8 character at the start of `bytes` as Go's `utf8.DecodeRune` would
/// accept it; `None` when the first byte does not start a valid, complete sequence (Go then
/// treats that single byte as invalid and moves on by one byte).
fn decode_char(bytes: &[u8]) -> Option<(char, usize)> {
    let len = match bytes.first()? {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return None,
    };
    let s = std::str::from_utf8(bytes.get(..len)?).ok()?;
    s.chars().next().map(|c| (c, len))
}

/// Go `strconv.Quote(s)` without the surrounding quotes, for raw bytes.
///
/// `"` and `\` are backslashed; `\a \b \f \n \r \t \v` get their short escapes; other ASCII
/// controls and 0x7F become `\xHH`; every byte that does not start a valid UTF-8 sequence
/// becomes `\xHH`; valid runes that `unicode.IsPrint` rejects become `\uHHHH` or
/// `\UHHHHHHHH`; all other runes are kept as raw UTF-8. Hex digits are lowercase.
pub fn go_quote(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    let mut rest = bytes;
    while let Some(&first) = rest.first() {
        let Some((c, len)) = decode_char(rest) else {
            push_hex_byte(&mut out, first);
            rest = rest.get(1..).unwrap_or_default();
            continue;
        };
        rest = rest.get(len..).unwrap_or_default();
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if go_is_print(c) => out.push(c),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => push_hex_byte(&mut out, c as u8),
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out
}

fn push_hex_byte(out: &mut String, b: u8) {
    out.push_str("\\x");
    out.push(char::from(LOWER_HEX[usize::from(b >> 4)]));
    out.push(char::from(LOWER_HEX[usize::from(b & 0xf)]));
}

fn hex_value(b: u8) -> Option<u32> {
    char::from(b).to_digit(16)
}

/// Go `strconv.Unquote("\"" + s + "\"")`: the raw bytes a Go-quoted name stands for.
///
/// Accepts `\xHH` (any byte, so the result may be invalid UTF-8), `\uHHHH` and `\UHHHHHHHH`
/// (valid Unicode scalar values only), octal `\NNN` up to 255, `\a \b \f \n \r \t \v \\ \"`.
/// Rejects `\'`, unknown escapes, truncated escapes, an unescaped `"` and a raw newline, as Go
/// does. Other raw characters, including controls, are taken as they are.
pub fn go_unquote(s: &str) -> Result<Vec<u8>, GoJsonError> {
    let err = |reason| GoJsonError::Unquote {
        text: truncated(s),
        reason,
    };
    if !s.contains('\\') {
        if s.contains('"') {
            return Err(err("unescaped double quote"));
        }
        if s.contains('\n') {
            return Err(err("raw newline"));
        }
        return Ok(s.as_bytes().to_vec());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => return Err(err("unescaped double quote")),
            b'\n' => return Err(err("raw newline")),
            b'\\' => {}
            _ => {
                out.push(b);
                i += 1;
                continue;
            }
        }
        let Some(&kind) = bytes.get(i + 1) else {
            return Err(err("trailing backslash"));
        };
        i += 2;
        let short = match kind {
            b'a' => Some(0x07),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            b'v' => Some(0x0b),
            b'\\' => Some(b'\\'),
            b'"' => Some(b'"'),
            _ => None,
        };
        if let Some(value) = short {
            out.push(value);
            continue;
        }
        match kind {
            b'x' | b'u' | b'U' => {
                let digits = match kind {
                    b'x' => 2,
                    b'u' => 4,
                    _ => 8,
                };
                let hex = bytes
                    .get(i..i + digits)
                    .ok_or_else(|| err("truncated hex escape"))?;
                let mut value: u32 = 0;
                for &h in hex {
                    value = (value << 4) | hex_value(h).ok_or_else(|| err("bad hex digit"))?;
                }
                i += digits;
                if kind == b'x' {
                    // A \x escape is one raw byte, which need not be valid UTF-8 on its own.
                    out.push(value as u8);
                } else {
                    let c = char::from_u32(value).ok_or_else(|| err("invalid unicode escape"))?;
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
            b'0'..=b'7' => {
                let more = bytes
                    .get(i..i + 2)
                    .ok_or_else(|| err("truncated octal escape"))?;
                let mut value = u32::from(kind - b'0');
                for &d in more {
                    if !(b'0'..=b'7').contains(&d) {
                        return Err(err("bad octal digit"));
                    }
                    value = (value << 3) | u32::from(d - b'0');
                }
                i += 2;
                let byte = u8::try_from(value).map_err(|_| err("octal escape above 255"))?;
                out.push(byte);
            }
            b'\'' => return Err(err("escaped single quote in double-quoted string")),
            _ => return Err(err("unknown escape")),
        }
    }
    Ok(out)
}

/// Appends the body of a JSON string for valid UTF-8 `s`, with Go `encoding/json`'s escapes.
fn write_json_body(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            b'<' => Some(b"\\u003c"),
            b'>' => Some(b"\\u003e"),
            b'&' => Some(b"\\u0026"),
            // U+2028 and U+2029 are E2 80 A8 and E2 80 A9.
            0xe2 if bytes.get(i + 1) == Some(&0x80)
                && matches!(bytes.get(i + 2), Some(0xa8 | 0xa9)) =>
            {
                if bytes.get(i + 2) == Some(&0xa8) {
                    Some(b"\\u2028")
                } else {
                    Some(b"\\u2029")
                }
            }
            _ => None,
        };
        if let Some(escape) = escape {
            out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
            out.extend_from_slice(escape);
            i += if b == 0xe2 { 3 } else { 1 };
            start = i;
        } else if b < 0x20 {
            out.extend_from_slice(bytes.get(start..i).unwrap_or_default());
            out.extend_from_slice(b"\\u00");
            out.push(LOWER_HEX[usize::from(b >> 4)]);
            out.push(LOWER_HEX[usize::from(b & 0xf)]);
            i += 1;
            start = i;
        } else {
            i += 1;
        }
    }
    out.extend_from_slice(bytes.get(start..).unwrap_or_default());
}

/// Appends `s` as a JSON string literal, quotes included, exactly as Go `encoding/json`
/// writes it: `"` and `\` backslashed; `\n \r \t \b \f` short (Go 1.22+; older Go wrote
/// `\b` and `\f` as `\u0008` and `\u000c`); other controls as `\u00XX`; `<`, `>`, `&`, U+2028
/// and U+2029 as `\u003c`, `\u003e`, `\u0026`, `\u2028`, `\u2029`; everything else raw.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    write_json_body(out, s);
    out.push(b'"');
}

/// Like [`write_json_string`] for bytes that may be invalid UTF-8: as in Go, every byte that
/// does not start a valid UTF-8 sequence is written as the escape `\ufffd` (one per byte,
/// not one per maximal invalid run as Rust's lossy conversion does).
pub fn write_json_bytes_lossy(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                write_json_body(out, s);
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                // The prefix is valid UTF-8 by construction; from_utf8 cannot fail here.
                write_json_body(out, std::str::from_utf8(valid).unwrap_or_default());
                out.extend_from_slice(b"\\ufffd");
                rest = after.get(1..).unwrap_or_default();
            }
        }
    }
    out.push(b'"');
}

const SECS_PER_DAY: i64 = 86_400;
const NANOS_PER_SEC: u32 = 1_000_000_000;

/// Days since 1970-01-01 of the proleptic Gregorian date `y-m-d` (`m` in 1..=12).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of `days` since 1970-01-01, as (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The time as Go's `time.Time` marshals to JSON in UTC (RFC3339Nano): fraction with trailing
/// zeros removed and no fraction at all when `nanos` is 0, suffix `Z`.
///
/// Years outside 0..=9999 are first moved to the nearest of those two years, keeping month,
/// day and time of day (Feb 29 becomes Mar 1 in a common year), as restic's `fixTime` does
/// before marshalling. A `nanos` value of a second or more carries into `secs`.
pub fn format_rfc3339_nano(t: Timestamp) -> String {
    let mut out = Vec::with_capacity(30);
    write_rfc3339_nano(&mut out, t);
    // Only ASCII digits and separators were written.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends [`format_rfc3339_nano`]'s text to `out` without allocating.
pub fn write_rfc3339_nano(out: &mut Vec<u8>, t: Timestamp) {
    let secs = t.secs.saturating_add(i64::from(t.nanos / NANOS_PER_SEC));
    let nanos = t.nanos % NANOS_PER_SEC;
    let days = secs.div_euclid(SECS_PER_DAY);
    let tod = secs.rem_euclid(SECS_PER_DAY) as u32;
    let (y, mut m, mut d) = civil_from_days(days);
    let y = if (0..=9999).contains(&y) {
        y as u32
    } else {
        let y = y.clamp(0, 9999);
        if m == 2 && d == 29 && !is_leap(y) {
            m = 3;
            d = 1;
        }
        y as u32
    };
    push_digits(out, y, 4);
    out.push(b'-');
    push_digits(out, m, 2);
    out.push(b'-');
    push_digits(out, d, 2);
    out.push(b'T');
    push_digits(out, tod / 3600, 2);
    out.push(b':');
    push_digits(out, tod / 60 % 60, 2);
    out.push(b':');
    push_digits(out, tod % 60, 2);
    if nanos != 0 {
        out.push(b'.');
        let mut digits = 9;
        let mut frac = nanos;
        while frac.is_multiple_of(10) {
            frac /= 10;
            digits -= 1;
        }
        push_digits(out, frac, digits);
    }
    out.push(b'Z');
}

/// Appends the last `width` decimal digits of `n`, zero-padded.
fn push_digits(out: &mut Vec<u8>, n: u32, width: u32) {
    for i in (0..width).rev() {
        out.push(b'0' + (n / 10u32.pow(i) % 10) as u8);
    }
}

/// Parses an RFC3339 time (`YYYY-MM-DDTHH:MM:SS`, optional `.` and fraction digits, then `Z`
/// or `±hh:mm`) into UTC. Fraction digits beyond nine are accepted and truncated, as Go does.
pub fn parse_rfc3339(s: &str) -> Result<Timestamp, GoJsonError> {
    let err = |reason| GoJsonError::Time {
        text: truncated(s),
        reason,
    };
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<u32, GoJsonError> {
        let digits = b.get(from..from + len).ok_or_else(|| err("too short"))?;
        digits.iter().try_fold(0u32, |acc, &c| {
            if c.is_ascii_digit() {
                Ok(acc * 10 + u32::from(c - b'0'))
            } else {
                Err(err("expected a digit"))
            }
        })
    };
    let sep = |at: usize, want: u8| -> Result<(), GoJsonError> {
        if b.get(at) == Some(&want) {
            Ok(())
        } else {
            Err(err("bad separator"))
        }
    };
    let year = num(0, 4)?;
    sep(4, b'-')?;
    let month = num(5, 2)?;
    sep(7, b'-')?;
    let day = num(8, 2)?;
    sep(10, b'T')?;
    let hour = num(11, 2)?;
    sep(13, b':')?;
    let minute = num(14, 2)?;
    sep(16, b':')?;
    let second = num(17, 2)?;
    if !(1..=12).contains(&month) {
        return Err(err("month out of range"));
    }
    if day < 1 || day > days_in_month(i64::from(year), month) {
        return Err(err("day out of range"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(err("time of day out of range"));
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            if i - start < 9 {
                nanos = nanos * 10 + u32::from(c - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return Err(err("empty fraction"));
        }
        for _ in digits..9 {
            nanos *= 10;
        }
    }
    let offset_secs: i64 = match b.get(i) {
        Some(b'Z') if b.len() == i + 1 => 0,
        Some(&sign @ (b'+' | b'-')) if b.len() == i + 6 => {
            let oh = num(i + 1, 2)?;
            sep(i + 3, b':')?;
            let om = num(i + 4, 2)?;
            if oh > 23 || om > 59 {
                return Err(err("zone offset out of range"));
            }
            let off = i64::from(oh * 3600 + om * 60);
            if sign == b'-' { -off } else { off }
        }
        _ => return Err(err("expected Z or a zone offset at the end")),
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * SECS_PER_DAY + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    Ok(Timestamp { secs, nanos })
}

/// serde's `skip_serializing_if` for Go's `omitempty` on integers.
pub(crate) fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Go's decoder leaves a field at its zero value when the JSON says `null`; serde's
/// `deserialize_with` for the same.
pub(crate) fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + Default,
{
    Ok(<Option<T> as serde::Deserialize>::deserialize(d)?.unwrap_or_default())
}

/// Serialises `value` compactly with Go `encoding/json` string escaping on top of
/// serde_json's: `<`, `>` and `&` become `\u003c`, `\u003e`, `\u0026`, and U+2028 and U+2029
/// become `\u2028` and `\u2029`. Shared by the snapshot and lock file codecs.
pub(crate) fn go_json<T: serde::Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter);
    // The callers serialise plain structs of strings, ids and integers into a Vec, which
    // cannot fail.
    value
        .serialize(&mut ser)
        .expect("json serialisation of a plain struct");
    out
}

/// A compact formatter that adds Go's HTML-safe escapes to the string fragments serde_json
/// would write verbatim; quotes, backslashes and control characters are already escaped by
/// serde_json the way Go does.
struct GoFormatter;

impl serde_json::ser::Formatter for GoFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(fragment.get(start..i).unwrap_or_default().as_bytes())?;
            writer.write_all(escape.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(fragment.get(start..).unwrap_or_default().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json(s: &str) -> String {
        let mut out = Vec::new();
        write_json_string(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    fn json_lossy(b: &[u8]) -> String {
        let mut out = Vec::new();
        write_json_bytes_lossy(&mut out, b);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn quote_matches_go_on_known_names() {
        let cases: &[(&[u8], &str)] = &[
            (b"plain.txt", "plain.txt"),
            (b"a\"b", "a\\\"b"),
            (b"back\\slash", "back\\\\slash"),
            (b"new\nline", "new\\nline"),
            (b"tab\there", "tab\\there"),
            (b"\x07\x08\x0c\r\x0b", "\\a\\b\\f\\r\\v"),
            (b"nul\x00", "nul\\x00"),
            (b"esc\x1b", "esc\\x1b"),
            (b"del\x7f", "del\\x7f"),
            (b"bad\xff\xfe", "bad\\xff\\xfe"),
            (b"\xc3", "\\xc3"),
            (b"\xc3(", "\\xc3("),
            (b"\xe2\x82", "\\xe2\\x82"),
            (b"\xed\xa0\x80", "\\xed\\xa0\\x80"),
            (b"\xc0\xaf", "\\xc0\\xaf"),
            (b"\xf4\x90\x80\x80", "\\xf4\\x90\\x80\\x80"),
            ("<>&".as_bytes(), "<>&"),
            (" sp ace ".as_bytes(), " sp ace "),
            ("nb\u{a0}sp".as_bytes(), "nb\\u00a0sp"),
            ("soft\u{ad}hyphen".as_bytes(), "soft\\u00adhyphen"),
            ("c1\u{85}".as_bytes(), "c1\\u0085"),
            ("zw\u{200b}sp".as_bytes(), "zw\\u200bsp"),
            ("\u{2028}\u{2029}".as_bytes(), "\\u2028\\u2029"),
            ("\u{feff}bom".as_bytes(), "\\ufeffbom"),
            ("ideo\u{3000}sp".as_bytes(), "ideo\\u3000sp"),
            ("pua\u{e000}".as_bytes(), "pua\\ue000"),
            ("unassigned\u{378}".as_bytes(), "unassigned\\u0378"),
            ("\u{10ffff}".as_bytes(), "\\U0010ffff"),
            ("\u{e0001}".as_bytes(), "\\U000e0001"),
            ("\u{fffd}".as_bytes(), "\u{fffd}"),
            ("grüße €".as_bytes(), "grüße €"),
            ("日本語".as_bytes(), "日本語"),
            ("emoji 😀👍🏽".as_bytes(), "emoji 😀👍🏽"),
            ("e\u{301}".as_bytes(), "e\u{301}"),
            // U+1F6DC was added in Unicode 15.0 (printable in Go 1.21+); U+1FAE9 in 16.0.
            ("\u{1f6dc}".as_bytes(), "\u{1f6dc}"),
            ("\u{1fae9}".as_bytes(), "\\U0001fae9"),
        ];
        for (raw, quoted) in cases {
            assert_eq!(go_quote(raw), *quoted, "quoting {raw:?}");
            assert_eq!(go_unquote(quoted).unwrap(), *raw, "unquoting {quoted:?}");
        }
    }

    #[test]
    fn quote_long_name() {
        let name = vec![b'x'; 255];
        assert_eq!(go_quote(&name), "x".repeat(255));
        let name = vec![0xffu8; 255];
        assert_eq!(go_quote(&name), "\\xff".repeat(255));
    }

    #[test]
    fn unquote_accepts_other_go_escapes() {
        assert_eq!(go_unquote("\\101\\377").unwrap(), b"A\xff");
        assert_eq!(go_unquote("\\u00e9").unwrap(), "é".as_bytes());
        assert_eq!(go_unquote("\\U0001F600").unwrap(), "😀".as_bytes());
        assert_eq!(go_unquote("\\xFF").unwrap(), b"\xff");
        assert_eq!(go_unquote("raw\ttab").unwrap(), b"raw\ttab");
        assert_eq!(go_unquote("").unwrap(), b"");
    }

    #[test]
    fn unquote_rejects_what_go_rejects() {
        for bad in [
            "\\'",
            "\\",
            "a\\",
            "\\q",
            "\\x4",
            "\\xg0",
            "\\u12",
            "\\ud800",
            "\\U00110000",
            "\\400",
            "\\18",
            "\\1",
            "a\"b",
            "a\nb",
            "\\\"\"",
            "x\\\n",
        ] {
            let e = go_unquote(bad).unwrap_err();
            assert!(e.to_string().starts_with("unquoting go string"), "{e}");
        }
    }

    #[test]
    fn json_string_matches_go_encoding() {
        assert_eq!(json("plain"), "\"plain\"");
        assert_eq!(json("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(json("<a>&b"), "\"\\u003ca\\u003e\\u0026b\"");
        assert_eq!(json("\n\r\t\x08\x0c"), "\"\\n\\r\\t\\b\\f\"");
        assert_eq!(json("\x00\x01\x1f\x7f"), "\"\\u0000\\u0001\\u001f\x7f\"");
        assert_eq!(json("\u{2028}x\u{2029}"), "\"\\u2028x\\u2029\"");
        assert_eq!(json("\u{2027}\u{202a}"), "\"\u{2027}\u{202a}\"");
        assert_eq!(json("é😀\u{a0}"), "\"é😀\u{a0}\"");
        // A quoted name with a backslash in it, as in A10.
        assert_eq!(json(&go_quote(b"a\"b")), "\"a\\\\\\\"b\"");
    }

    #[test]
    fn lossy_json_replaces_each_invalid_byte() {
        assert_eq!(json_lossy(b"ok"), "\"ok\"");
        assert_eq!(json_lossy(b"a\xffb"), "\"a\\ufffdb\"");
        assert_eq!(json_lossy(b"\xe2\x82"), "\"\\ufffd\\ufffd\"");
        assert_eq!(
            json_lossy(b"\xed\xa0\x80<"),
            "\"\\ufffd\\ufffd\\ufffd\\u003c\""
        );
        assert_eq!(json_lossy(b"\xf0\x9f\x98"), "\"\\ufffd\\ufffd\\ufffd\"");
        assert_eq!(json_lossy("\u{fffd}".as_bytes()), "\"\u{fffd}\"");
        assert_eq!(json_lossy(b"\xff"), "\"\\ufffd\"");
    }

    #[test]
    fn time_format_matches_go() {
        let t = |secs, nanos| format_rfc3339_nano(Timestamp { secs, nanos });
        assert_eq!(t(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(
            t(1_714_557_600, 123_456_789),
            "2024-05-01T10:00:00.123456789Z"
        );
        assert_eq!(t(1_714_557_601, 0), "2024-05-01T10:00:01Z");
        assert_eq!(t(1_714_557_600, 500_000_000), "2024-05-01T10:00:00.5Z");
        assert_eq!(t(1_714_557_600, 120_000), "2024-05-01T10:00:00.00012Z");
        assert_eq!(t(-1, 999_999_999), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(t(951_782_400, 0), "2000-02-29T00:00:00Z");
        // Go's zero time.
        assert_eq!(t(-62_135_596_800, 0), "0001-01-01T00:00:00Z");
        assert_eq!(t(-62_167_219_200, 0), "0000-01-01T00:00:00Z");
        assert_eq!(t(253_402_300_799, 1), "9999-12-31T23:59:59.000000001Z");
        // Out of range years are clamped like restic's fixTime.
        assert_eq!(t(253_402_300_800, 0), "9999-01-01T00:00:00Z");
        assert_eq!(t(-62_167_219_201, 0), "0000-12-31T23:59:59Z");
        // 10000-02-29 exists (leap) but 9999-02-29 does not.
        let leap_10000 = days_from_civil(10000, 2, 29) * SECS_PER_DAY;
        assert_eq!(t(leap_10000, 0), "9999-03-01T00:00:00Z");
        assert_eq!(t(i64::MAX, 0).len(), 20);
        assert_eq!(t(i64::MIN, 0).len(), 20);
        assert_eq!(t(0, 1_500_000_000), "1970-01-01T00:00:01.5Z");
    }

    #[test]
    fn time_parse_accepts_rfc3339_variants() {
        let p = |s| parse_rfc3339(s).unwrap();
        assert_eq!(p("1970-01-01T00:00:00Z"), Timestamp { secs: 0, nanos: 0 });
        assert_eq!(
            p("2024-05-01T12:00:00.5+02:00"),
            Timestamp {
                secs: 1_714_557_600,
                nanos: 500_000_000
            }
        );
        assert_eq!(
            p("2024-05-01T05:30:00.000000001-04:30"),
            Timestamp {
                secs: 1_714_557_600,
                nanos: 1
            }
        );
        assert_eq!(p("2024-05-01T10:00:00.1234567891Z").nanos, 123_456_789);
        assert_eq!(p("0001-01-01T00:00:00Z").secs, -62_135_596_800);
        for bad in [
            "",
            "2024-05-01",
            "2024-05-01T10:00:00",
            "2024-05-01 10:00:00Z",
            "2024-13-01T10:00:00Z",
            "2023-02-29T10:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T10:00:60Z",
            "2024-05-01T10:00:00.Z",
            "2024-05-01T10:00:00Zx",
            "2024-05-01T10:00:00+0200",
            "2024-05-01T10:00:00+24:00",
            "2024-05-01T10:00:00z",
            "+024-05-01T10:00:00Z",
            "2024-05-01T10:00:00\u{e9}",
        ] {
            let e = parse_rfc3339(bad).unwrap_err();
            assert!(e.to_string().starts_with("parsing rfc3339 time"), "{e}");
        }
    }

    proptest! {
        #[test]
        fn quote_round_trips(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let quoted = go_quote(&raw);
            prop_assert_eq!(go_unquote(&quoted).unwrap(), raw);
        }

        #[test]
        fn quote_round_trips_unicode(s in "\\PC{0,32}|[\\u{0}-\\u{10ffff}]{0,16}") {
            let quoted = go_quote(s.as_bytes());
            prop_assert_eq!(go_unquote(&quoted).unwrap(), s.as_bytes());
        }

        #[test]
        fn quoted_names_are_printable(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let quoted = go_quote(&raw);
            prop_assert!(quoted.chars().all(go_is_print));
        }

        #[test]
        fn json_string_round_trips_through_serde(s in "\\PC{0,32}|[\\u{0}-\\u{10ffff}]{0,16}") {
            let mut out = Vec::new();
            write_json_string(&mut out, &s);
            let back: String = serde_json::from_slice(&out).unwrap();
            prop_assert_eq!(back, s);
        }

        #[test]
        fn lossy_json_is_valid_json(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            write_json_bytes_lossy(&mut out, &raw);
            let back: String = serde_json::from_slice(&out).unwrap();
            if let Ok(s) = std::str::from_utf8(&raw) {
                prop_assert_eq!(back, s);
            } else {
                prop_assert!(back.contains(char::REPLACEMENT_CHARACTER));
            }
        }

        #[test]
        fn time_round_trips(
            secs in -62_167_219_200i64..253_402_300_800i64,
            nanos in 0u32..1_000_000_000,
        ) {
            let t = Timestamp { secs, nanos };
            let text = format_rfc3339_nano(t);
            prop_assert_eq!(parse_rfc3339(&text).unwrap(), t);
        }

        #[test]
        fn time_parse_never_panics(s in "[0-9TZ:.+-]{0,40}") {
            let _ = parse_rfc3339(&s);
        }

        #[test]
        fn unquote_never_panics(s in "\\PC{0,32}|[\\\\0-7xuU'\"a-f]{0,16}") {
            let _ = go_unquote(&s);
        }
    }
}
