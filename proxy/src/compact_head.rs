//! A response head between two sidecars in a compact form of their own, on connections whose
//! handshake chose `mesh/h1c` (HTTP/1.1 as `mesh/h1`, whose responses may come so).
//!
//! The sidecar that answers a peer writes most responses as the app's fields kept as they
//! came ([`RawFields`]: lines, and the `content-length` as a number) behind a status line;
//! the sidecar that sent the request parsed that head again (httparse over every line, the
//! framing fields looked for, the kept lines split off) only to get back the same lines, the
//! status and the length: about 2.4k instructions a request in callgrind's count
//! (`benches/instructions.sh 1000`). In this form the head says them outright:
//!
//! ```text
//! 0x00                    a marker: no HTTP/1.x status line starts with it
//! status      u16 (BE)
//! flags       u8          bit 0: the connection stays open after this response
//! length      u64 (BE)    the body's length (`content-length`), which frames the body
//! lines_len   u32 (BE)
//! lines       lines_len   the header fields, each `name: value` line ending in CRLF
//! ```
//!
//! followed by the body, `length` bytes. Only a response whose fields are all kept lines and
//! whose body has a length goes so (see [`encode`]); any other is written as HTTP/1.1 text on
//! the same connection, and the reader tells the two apart by the first byte. The lines are
//! not parsed on arrival, only checked for what would let them break the head they go into:
//! control characters, a CR or LF outside a CRLF, a line without a colon.

#![forbid(unsafe_code)]

use bytes::{Buf, BytesMut};
use hyper::StatusCode;

use crate::raw_head::RawFields;

/// The first byte of a compact head.
pub const MARKER: u8 = 0;

/// The bytes before the lines.
const FIXED: usize = 1 + 2 + 1 + 8 + 4;

const KEEP_ALIVE: u8 = 1;

/// Why a compact head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("a compact response head with status {0}, which is not a final status")]
    Status(u16),
    #[error("a compact response head with fields of {0} bytes, more than allowed")]
    TooLong(usize),
    #[error("a compact response head whose fields are not CRLF-ended `name: value` lines")]
    Lines,
    #[error("a compact response head with a framing or hop-by-hop field among its lines")]
    Field,
    #[error("a compact response head with unknown flags {0:#04x}")]
    Flags(u8),
}

/// A response head read in the compact form.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub fields: RawFields,
    pub length: u64,
    pub keep_alive: bool,
}

/// Writes the head of a response with `status` whose fields are `fields` and whose body is
/// `length` bytes, when the compact form can carry it: not an interim or bodiless status
/// (those keep their text form, whose rules for a body are the text's), and the fields say
/// no length of their own other than `length`. Returns whether it wrote.
pub fn encode(
    status: StatusCode,
    fields: &RawFields,
    length: u64,
    keep_alive: bool,
    out: &mut Vec<u8>,
) -> bool {
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let lines = fields.lines();
    let Ok(lines_len) = u32::try_from(lines.len()) else {
        return false;
    };
    if bodiless || fields.length().is_some_and(|n| n != length) {
        return false;
    }
    out.reserve(FIXED + lines.len());
    out.push(MARKER);
    out.extend_from_slice(&status.as_u16().to_be_bytes());
    out.push(if keep_alive { KEEP_ALIVE } else { 0 });
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&lines_len.to_be_bytes());
    out.extend_from_slice(lines);
    true
}

/// Reads the compact head at the start of `buf` (which starts with [`MARKER`]); `None` while
/// it is incomplete. Its bytes leave the buffer; the lines share them.
pub fn decode(buf: &mut BytesMut, max_lines: usize) -> Result<Option<Head>, Error> {
    if buf.len() < FIXED {
        return Ok(None);
    }
    let status = u16::from_be_bytes([buf[1], buf[2]]);
    let flags = buf[3];
    let mut length = [0u8; 8];
    length.copy_from_slice(&buf[4..12]);
    let length = u64::from_be_bytes(length);
    let lines_len = u32::from_be_bytes([buf[12], buf[13], buf[14], buf[15]]) as usize;
    if lines_len > max_lines {
        return Err(Error::TooLong(lines_len));
    }
    if flags & !KEEP_ALIVE != 0 {
        return Err(Error::Flags(flags));
    }
    let status = StatusCode::from_u16(status)
        .ok()
        .filter(|s| !s.is_informational())
        .ok_or(Error::Status(status))?;
    if buf.len() < FIXED + lines_len {
        return Ok(None);
    }
    check_lines(&buf[FIXED..FIXED + lines_len])?;
    buf.advance(FIXED);
    let lines = buf.split_to(lines_len).freeze();
    Ok(Some(Head {
        status,
        fields: RawFields::new(lines, Some(length)),
        length,
        keep_alive: flags & KEEP_ALIVE != 0,
    }))
}

/// Each line is `name: value` and ends in CRLF: the name a token, the value without control
/// characters other than a tab, and the field one kept as it came (not a framing or
/// hop-by-hop field, which the server side never puts among the lines; see
/// [`crate::raw_head`]).
fn check_lines(lines: &[u8]) -> Result<(), Error> {
    let mut rest = lines;
    while !rest.is_empty() {
        let colon = rest
            .iter()
            .position(|&b| !TOKEN[b as usize])
            .ok_or(Error::Lines)?;
        if colon == 0 || rest[colon] != b':' {
            return Err(Error::Lines);
        }
        if !crate::raw_head::goes_as_it_came(&rest[..colon]) {
            return Err(Error::Field);
        }
        let end = colon + 1 + value_len(&rest[colon + 1..]);
        if rest.get(end..end + 2) != Some(b"\r\n") {
            return Err(Error::Lines);
        }
        rest = &rest[end + 2..];
    }
    Ok(())
}

/// The bytes a field name may have (a token, RFC 9110 §5.6.2).
static TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

/// How long the field value at the start of `bytes` is: up to its first control character
/// other than a tab, or DEL. Eight bytes at a time while none of them is one.
fn value_len(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if has_control(u64::from_le_bytes(word)) {
            break;
        }
        at += 8;
    }
    let tail = &bytes[at..];
    at + tail
        .iter()
        .position(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        .unwrap_or(tail.len())
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether one of the eight bytes of `x` is below 0x20 (a tab too) or is 0x7f.
fn has_control(x: u64) -> bool {
    let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
    let del = x ^ (ONES * 0x7f);
    let is_del = del.wrapping_sub(ONES) & !del & HIGHS;
    below_space | is_del != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(lines: &'static str, length: Option<u64>) -> RawFields {
        RawFields::for_test(lines, length)
    }

    fn encoded(status: u16, lines: &'static str, length: u64, keep_alive: bool) -> BytesMut {
        let mut out = Vec::new();
        let status = StatusCode::from_u16(status).expect("a status");
        assert!(encode(
            status,
            &fields(lines, Some(length)),
            length,
            keep_alive,
            &mut out
        ));
        BytesMut::from(&out[..])
    }

    #[test]
    fn a_head_comes_back_as_it_went_and_leaves_the_body() {
        let lines = "content-type: text/plain\r\nx-served-by: ok\r\n";
        let mut buf = encoded(200, lines, 14, true);
        buf.extend_from_slice(b"hello from ok\n");
        let head = decode(&mut buf, 1024).expect("valid").expect("complete");
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.fields.lines(), lines.as_bytes());
        assert_eq!(head.fields.length(), Some(14));
        assert_eq!(head.length, 14);
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"hello from ok\n");

        let mut closing = encoded(503, "", 0, false);
        let head = decode(&mut closing, 1024)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(head.fields.lines().is_empty());
        assert!(!head.keep_alive);
        assert!(closing.is_empty());
    }

    #[test]
    fn a_head_in_pieces_waits_for_the_rest() {
        let whole = encoded(200, "a: b\r\n", 3, true);
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert!(
                decode(&mut part, 1024).expect("valid so far").is_none(),
                "{cut} bytes"
            );
            assert_eq!(part.len(), cut, "nothing taken from a partial head");
        }
    }

    #[test]
    fn what_the_form_cannot_carry_is_left_to_text() {
        let mut out = Vec::new();
        let kept = fields("a: b\r\n", Some(3));
        assert!(!encode(StatusCode::NO_CONTENT, &kept, 3, true, &mut out));
        assert!(!encode(StatusCode::NOT_MODIFIED, &kept, 3, true, &mut out));
        assert!(!encode(StatusCode::CONTINUE, &kept, 3, true, &mut out));
        assert!(
            !encode(StatusCode::OK, &kept, 4, true, &mut out),
            "another length"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn a_head_that_could_break_the_text_it_goes_into_is_refused() {
        for (lines, why) in [
            ("a: b\n", "a bare LF"),
            ("a: b\rc: d\r\n", "a bare CR"),
            ("a: b\r\n\r\n", "an empty line"),
            ("a: b", "no CRLF at the end"),
            ("ab\r\n", "no colon"),
            (": b\r\n", "no name"),
            ("a: b\x00c\r\n", "a NUL"),
            ("a: \x7f\r\n", "a DEL"),
            ("a: 12345678\x7f9\r\n", "a DEL past eight bytes"),
            ("a: 1234567890abcdef\x01\r\n", "a control byte past sixteen"),
            ("a b: c\r\n", "a space in the name"),
            (" a: b\r\n", "a folded line"),
        ] {
            let mut buf = encoded(200, lines, 0, true);
            assert_eq!(decode(&mut buf, 1024).err(), Some(Error::Lines), "{why}");
        }
        let mut fine = encoded(
            200,
            "a: b\tc\r\nlong-name: a value of many bytes \u{2713}\r\n",
            0,
            true,
        );
        assert!(
            decode(&mut fine, 1024).expect("valid").is_some(),
            "tabs and UTF-8 are fine"
        );
        for lines in [
            "content-length: 5\r\n",
            "Transfer-Encoding: chunked\r\n",
            "connection: close\r\n",
            "upgrade: h2c\r\n",
            "keep-alive: 5\r\n",
        ] {
            let mut buf = encoded(200, lines, 0, true);
            assert_eq!(decode(&mut buf, 1024).err(), Some(Error::Field), "{lines}");
        }
    }

    #[test]
    fn a_bad_status_flags_or_length_is_refused() {
        let mut interim = encoded(200, "", 0, true);
        interim[1..3].copy_from_slice(&100u16.to_be_bytes());
        assert_eq!(decode(&mut interim, 1024).err(), Some(Error::Status(100)));
        let mut nonsense = encoded(200, "", 0, true);
        nonsense[1..3].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(decode(&mut nonsense, 1024).err(), Some(Error::Status(1000)));
        let mut flags = encoded(200, "", 0, true);
        flags[3] = 0x81;
        assert_eq!(decode(&mut flags, 1024).err(), Some(Error::Flags(0x81)));
        let mut long = encoded(200, "a: b\r\n", 0, true);
        assert_eq!(decode(&mut long, 5).err(), Some(Error::TooLong(6)));
    }
}
