//! Heads between two sidecars in a compact form of their own, on connections whose handshake
//! chose `mesh/h1c` (and on the streams of `mesh/muxc` connections): HTTP/1.1 as on `mesh/h1`
//! (`mesh/mux`), where a request and a response that fit go with a binary head in place of
//! their text one.
//!
//! Both sidecars keep most header fields as the lines they came in ([`crate::raw_head`]), so
//! what one sidecar wrote as text the other parsed again with httparse (every line, the framing
//! fields looked for, the kept lines split from the rest) only to get back the same lines:
//! about 2.4k instructions a response and 2k a request in callgrind's count
//! (`benches/instructions.sh 1000`). In this form the head says where each part is:
//!
//! ```text
//! response                               request
//! 0x00        marker                     0x00        marker
//! status      u16                        flags       u8    bit 0: close after this exchange
//! flags       u8   bit 0: keep alive     method_len  u8
//! length      u64  the body's length     target_len  u16
//! lines_len   u32                        map_len     u32
//! lines                                  kept_len    u32
//!                                        body_len    u64
//!                                        method, target (origin form), map lines, kept lines
//! ```
//!
//! (numbers big-endian), then the body, whose length frames it. The lines are header fields,
//! each `name: value` ending in CRLF. A response's are the fields kept as they came upstream
//! (its `content-length` is the length); a request's map lines are the fields the sidecar acts
//! on (`host`, `x-mesh-hop`, ..., without framing fields), its kept lines the others. The
//! first byte tells a compact head from a text one (no HTTP/1.x message starts with 0x00);
//! what does not fit (a chunked body or one of unknown length, `expect`, an upgrade, a longer
//! body than the server reads whole, a response with fields in its map, to a HEAD, 1xx, 204 or
//! 304) goes as text on the same connection.
//!
//! The lines are not parsed on arrival, only checked for what would let them break the head
//! they go into or slip past the sidecar: each a CRLF-ended line of a name of visible ASCII, a
//! colon and a value without control characters; no framing or hop-by-hop field among a response's lines or a
//! request's map lines; among a request's kept lines, none of the fields the sidecar acts on
//! (a kept `x-forwarded-client-cert` would reach the app unchecked).

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
    #[error("a compact head with fields of {0} bytes, more than allowed")]
    TooLong(usize),
    #[error("a compact head whose fields are not CRLF-ended `name: value` lines")]
    Lines,
    #[error(
        "a compact head with a field where it may not be (a framing or hop-by-hop field, or one the sidecar acts on among the kept ones)"
    )]
    Field,
    #[error("a compact head with unknown flags {0:#04x}")]
    Flags(u8),
    #[error("a compact request with a body of {0} bytes, more than allowed")]
    BodyTooLong(u64),
    #[error("a compact request whose method or target is not valid")]
    Target,
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

/// The bytes of a request's compact head before its method.
pub const REQUEST_FIXED: usize = 1 + 1 + 1 + 2 + 4 + 4 + 8;

const CLOSE: u8 = 1;

/// Writes a request's head in the compact form: `method`, `target` (origin form), the map's
/// lines as `map_lines` writes them (without framing fields) and the `kept` lines, for a body
/// of `body_len` bytes. `false` (nothing written) when the method or target is too long for
/// the form.
pub fn encode_request(
    out: &mut Vec<u8>,
    method: &[u8],
    target: &[u8],
    close: bool,
    body_len: u64,
    map_lines: impl FnOnce(&mut Vec<u8>),
    kept: &[u8],
) -> bool {
    let (Ok(method_len), Ok(target_len), Ok(kept_len)) = (
        u8::try_from(method.len()),
        u16::try_from(target.len()),
        u32::try_from(kept.len()),
    ) else {
        return false;
    };
    let start = out.len();
    out.push(MARKER);
    out.push(if close { CLOSE } else { 0 });
    out.push(method_len);
    out.extend_from_slice(&target_len.to_be_bytes());
    let map_len_at = out.len();
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&kept_len.to_be_bytes());
    out.extend_from_slice(&body_len.to_be_bytes());
    out.extend_from_slice(method);
    out.extend_from_slice(target);
    let map_start = out.len();
    map_lines(out);
    let Ok(map_len) = u32::try_from(out.len() - map_start) else {
        out.truncate(start);
        return false;
    };
    out[map_len_at..map_len_at + 4].copy_from_slice(&map_len.to_be_bytes());
    out.extend_from_slice(kept);
    true
}

/// Where the parts of a compact request are in its message (head and body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLayout {
    pub method: (usize, usize),
    pub target: (usize, usize),
    pub map: (usize, usize),
    /// The kept lines, which the body follows.
    pub kept: (usize, usize),
    /// The whole message's length, the body's end.
    pub end: usize,
    pub close: bool,
}

/// Where the parts of the compact request at the start of `buf` are, once all of it (head and
/// body) is there; `None` until then. Its head may be at most `max_head` bytes and its body
/// `max_body`. Checks the sizes and flags only: the lines are for [`each_field`].
pub fn request_layout(
    buf: &[u8],
    max_head: usize,
    max_body: u64,
) -> Result<Option<RequestLayout>, Error> {
    if buf.len() < REQUEST_FIXED {
        return Ok(None);
    }
    let flags = buf[1];
    if flags & !CLOSE != 0 {
        return Err(Error::Flags(flags));
    }
    let method_len = usize::from(buf[2]);
    let target_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    let map_len = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) as usize;
    let kept_len = u32::from_be_bytes([buf[9], buf[10], buf[11], buf[12]]) as usize;
    let mut body_len = [0u8; 8];
    body_len.copy_from_slice(&buf[13..21]);
    let body_len = u64::from_be_bytes(body_len);
    let head = REQUEST_FIXED + method_len + target_len + map_len + kept_len;
    if head > max_head {
        return Err(Error::TooLong(head));
    }
    if body_len > max_body {
        return Err(Error::BodyTooLong(body_len));
    }
    // Within max_head + max_body: no overflow.
    let end = head + body_len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let method = (REQUEST_FIXED, REQUEST_FIXED + method_len);
    let target = (method.1, method.1 + target_len);
    let map = (target.1, target.1 + map_len);
    let kept = (map.1, map.1 + kept_len);
    Ok(Some(RequestLayout {
        method,
        target,
        map,
        kept,
        end,
        close: flags & CLOSE != 0,
    }))
}

/// Each line is `name: value` and ends in CRLF: the name a token, the value without control
/// characters other than a tab, and the field one kept as it came (not a framing or
/// hop-by-hop field, which the server side never puts among the lines; see
/// [`crate::raw_head`]).
fn check_lines(lines: &[u8]) -> Result<(), Error> {
    each_field(lines, |name, _| {
        if crate::raw_head::goes_as_it_came(name) {
            Ok(())
        } else {
            Err(Error::Field)
        }
    })
}

/// Checks that `lines` are CRLF-ended `name: value` lines (a name of visible ASCII, a colon,
/// a value without control characters other than a tab) and hands `each` every field's name
/// and where its value is in `lines` (without the whitespace around it). Eight bytes at a time:
/// byte by byte, the check cost about six instructions a byte, more than httparse's parse.
pub fn each_field(
    lines: &[u8],
    mut each: impl FnMut(&[u8], (usize, usize)) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut at = 0;
    while at < lines.len() {
        let rest = &lines[at..];
        let colon = first(rest, name_stops);
        if colon == 0 || rest.get(colon) != Some(&b':') {
            return Err(Error::Lines);
        }
        let end = colon + 1 + first(&rest[colon + 1..], value_stops);
        if rest.get(end..end + 2) != Some(b"\r\n") {
            return Err(Error::Lines);
        }
        let value = rest[colon + 1..end].trim_ascii();
        let start = at + (value.as_ptr() as usize - rest.as_ptr() as usize);
        each(&rest[..colon], (start, start + value.len()))?;
        at += end + 2;
    }
    Ok(())
}

/// Where the first byte of `bytes` that `stops` marks is (`bytes.len()` when none is), eight
/// bytes at a time; `stops` marks a byte by its high bit, exactly (no false marks).
fn first(bytes: &[u8], stops: fn(u64) -> u64) -> usize {
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let marked = stops(u64::from_le_bytes(word));
        if marked != 0 {
            return at + (marked.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    // The tail, padded with a byte that no mask marks.
    let mut word = [b'a'; 8];
    for (w, b) in word.iter_mut().zip(&bytes[at..]) {
        *w = *b;
    }
    let marked = stops(u64::from_le_bytes(word));
    (at + (marked.trailing_zeros() / 8) as usize).min(bytes.len())
}

const ONES: u64 = 0x0101_0101_0101_0101;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The bytes of `x` below `n` (at most 0x80), marked by their high bit. Each byte's sum stays
/// within the byte: no carry marks its neighbour.
const fn below(x: u64, n: u8) -> u64 {
    !(((x & LOW7) + ONES * (0x80 - n as u64)) | x) & HIGHS
}

/// The bytes of `x` equal to `c`, marked by their high bit.
const fn equal(x: u64, c: u8) -> u64 {
    let y = x ^ (ONES * c as u64);
    !(((y & LOW7) + LOW7) | y) & HIGHS
}

/// Where a name ends: the colon, or a byte no name may have (space, a control character, DEL,
/// or not ASCII).
fn name_stops(x: u64) -> u64 {
    below(x, 0x21) | equal(x, b':') | equal(x, 0x7f) | (x & HIGHS)
}

/// Where a value ends: a control character other than a tab (the CR of its CRLF), or DEL.
fn value_stops(x: u64) -> u64 {
    (below(x, 0x20) & !equal(x, b'\t')) | equal(x, 0x7f)
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

    /// A compact request: method, target, map lines, kept lines and body, each where the
    /// layout says, the kept lines right before the body.
    fn request(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let map = |out: &mut Vec<u8>| out.extend_from_slice(b"host: web\r\nx-mesh-hop: 80 h1\r\n");
        assert!(encode_request(
            &mut out,
            b"POST",
            b"/a?b",
            false,
            body.len() as u64,
            map,
            b"accept: */*\r\n"
        ));
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_request_is_laid_out_as_it_went_once_all_of_it_is_there() {
        let whole = request(b"hello");
        for cut in 0..whole.len() {
            let partial = request_layout(&whole[..cut], 1024, 64);
            assert_eq!(partial, Ok(None), "{cut} bytes");
        }
        let layout = request_layout(&whole, 1024, 64)
            .expect("valid")
            .expect("complete");
        let part = |(s, e): (usize, usize)| &whole[s..e];
        assert_eq!(part(layout.method), b"POST");
        assert_eq!(part(layout.target), b"/a?b");
        assert_eq!(part(layout.map), b"host: web\r\nx-mesh-hop: 80 h1\r\n");
        assert_eq!(part(layout.kept), b"accept: */*\r\n");
        assert_eq!(&whole[layout.kept.1..layout.end], b"hello");
        assert_eq!((layout.end, layout.close), (whole.len(), false));
        let mut fields = Vec::new();
        each_field(part(layout.map), |name, (vs, ve)| {
            fields.push((name.to_vec(), part(layout.map)[vs..ve].to_vec()));
            Ok(())
        })
        .expect("valid lines");
        assert_eq!(
            fields,
            [
                (b"host".to_vec(), b"web".to_vec()),
                (b"x-mesh-hop".to_vec(), b"80 h1".to_vec())
            ]
        );
    }

    #[test]
    fn a_request_over_the_limits_or_with_unknown_flags_is_refused() {
        let whole = request(b"hello");
        assert_eq!(request_layout(&whole, 1024, 4), Err(Error::BodyTooLong(5)));
        let head = whole.len() - 5;
        assert_eq!(
            request_layout(&whole, head - 1, 64),
            Err(Error::TooLong(head))
        );
        let mut flags = whole.clone();
        flags[1] = 0x02;
        assert_eq!(request_layout(&flags, 1024, 64), Err(Error::Flags(0x02)));
        let mut closing = whole;
        closing[1] = CLOSE;
        let layout = request_layout(&closing, 1024, 64)
            .expect("valid")
            .expect("complete");
        assert!(layout.close);
        let mut out = Vec::new();
        let long = vec![b'G'; 256];
        assert!(!encode_request(
            &mut out,
            &long,
            b"/",
            false,
            0,
            |_| {},
            b""
        ));
        assert!(out.is_empty(), "nothing written");
    }

    /// The masks mark exactly the bytes they say, wherever they are in a word, and `first`
    /// finds the first of them at any length.
    #[test]
    fn the_eight_byte_masks_mark_exactly_their_bytes() {
        for b in 0..=255u8 {
            let name_stop = b <= 0x20 || b == b':' || b >= 0x7f;
            let value_stop = (b < 0x20 && b != b'\t') || b == 0x7f;
            for at in 0..8 {
                let mut word = [b'a'; 8];
                word[at] = b;
                let x = u64::from_le_bytes(word);
                let only = |marked: u64| marked == 0x80u64 << (8 * at);
                assert_eq!(
                    only(name_stops(x)),
                    name_stop,
                    "name, byte {b:#04x} at {at}"
                );
                assert_eq!(
                    name_stops(x) == 0,
                    !name_stop,
                    "name, byte {b:#04x} at {at}"
                );
                assert_eq!(
                    only(value_stops(x)),
                    value_stop,
                    "value, byte {b:#04x} at {at}"
                );
                assert_eq!(
                    value_stops(x) == 0,
                    !value_stop,
                    "value, byte {b:#04x} at {at}"
                );
            }
        }
        for len in 0..20 {
            let mut bytes = vec![b'x'; len];
            assert_eq!(first(&bytes, name_stops), len, "none in {len}");
            for at in 0..len {
                bytes[at] = b':';
                assert_eq!(first(&bytes, name_stops), at, "at {at} of {len}");
                bytes[at] = 0;
                assert_eq!(first(&bytes, name_stops), at, "NUL at {at} of {len}");
                bytes[at] = b'x';
            }
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
