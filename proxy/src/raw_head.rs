//! A response head's header fields kept as the bytes they arrived in, for a response that goes
//! from our HTTP/1.1 client ([`crate::http1_client`]) to our HTTP/1.1 server
//! ([`crate::http1_server`]) with nothing between them reading or editing its fields.
//!
//! Each sidecar parsed every response's fields into a `HeaderMap` (a name and a value made and
//! hashed into the map for each field, the map allocated and dropped) only to write them back
//! out in the order they came: in callgrind's count (`benches/instructions.sh`) that was about
//! 3.5k of the 31k instructions a request on each side. Here the head is still parsed (its
//! framing and the connection's keep-alive come from it), but its fields stay one [`RawFields`]
//! slice of the head, put in the response's extensions in place of the map, which the server
//! writes as it is.
//!
//! Only where that is sound:
//! - the request says that its response is written by our HTTP/1.1 server
//!   ([`WritesRawHeads`] in its extensions, put there by that server alone); anything else
//!   that writes or reads a response gets a `HeaderMap`;
//! - the head has none of the fields a proxy must act on or rewrite beyond its framing:
//!   `transfer-encoding`, `upgrade`, `trailer`, `te`, or a `connection` that names other
//!   fields. Those heads are parsed into a map as before. The hop-by-hop fields a proxy drops
//!   (`connection: keep-alive` or `close`, `keep-alive`, `proxy-*`) are left out of the kept
//!   bytes, as `strip_hop_by_hop` removes them from a map; `content-length` is left out and
//!   kept as its number, which the server writes with the body it frames;
//! - a route that edits response headers, or any other reader, restores the map first
//!   ([`restore`]).

#![forbid(unsafe_code)]

use bytes::{Bytes, BytesMut};
use hyper::Response;
use hyper::header::{CONNECTION, CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue};
use hyper::http::Extensions;

use crate::http1_client::{FieldSpan, FramingFields};

/// On a request: its response is written by our HTTP/1.1 server, which writes [`RawFields`].
#[derive(Debug, Clone, Copy)]
pub struct WritesRawHeads;

/// On a response, in place of its `HeaderMap`: its header fields as they came, each line with
/// its CRLF, without the framing and hop-by-hop fields.
#[derive(Debug, Clone)]
pub struct RawFields {
    lines: Bytes,
    /// The `content-length` it had.
    length: Option<u64>,
}

/// What a response's field is to a proxy that keeps the head's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldKind {
    /// Goes on as it is.
    Kept,
    /// `content-length`: kept as its number.
    Length,
    /// `connection`: dropped when it says only `keep-alive` or `close`.
    Connection,
    /// A hop-by-hop field that is dropped.
    Dropped,
    /// A field that needs the head parsed into a map.
    NeedsMap,
}

fn kind(name: &[u8]) -> FieldKind {
    // httparse has checked that the name is a token: no byte of one becomes a lower-case
    // letter or '-' by setting 0x20 unless it is that letter in either case (or '-').
    let is = |lower: &[u8]| name.iter().zip(lower).all(|(b, l)| b | 0x20 == *l);
    match name.len() {
        2 if is(b"te") => FieldKind::NeedsMap,
        7 if is(b"trailer") || is(b"upgrade") => FieldKind::NeedsMap,
        10 if is(b"connection") => FieldKind::Connection,
        10 if is(b"keep-alive") => FieldKind::Dropped,
        14 if is(b"content-length") => FieldKind::Length,
        16 if is(b"proxy-connection") => FieldKind::Dropped,
        17 if is(b"transfer-encoding") => FieldKind::NeedsMap,
        18 if is(b"proxy-authenticate") => FieldKind::Dropped,
        19 if is(b"proxy-authorization") => FieldKind::Dropped,
        _ => FieldKind::Kept,
    }
}

impl RawFields {
    /// The fields of `head` (a whole response head, its fields at `spans`) as kept bytes, and
    /// what its framing fields say; `None` when the head needs a map (see the module's notes),
    /// or does not end its lines in CRLF.
    pub(crate) fn of(head: &Bytes, spans: &[FieldSpan]) -> Option<(RawFields, FramingFields)> {
        let mut framing = FramingFields::default();
        if !head.ends_with(b"\r\n\r\n") {
            return None;
        }
        let end = head.len() - 2;
        // The kept runs of lines: most heads have one or two (around a `connection` field).
        let mut runs: [(usize, usize); 4] = [(0, 0); 4];
        let mut count = 0;
        let mut run_start = spans.first().map_or(end, |s| s.0 as usize);
        for (i, &(ns, ne, vs, ve)) in spans.iter().enumerate() {
            let (line, line_end) = (ns as usize, spans.get(i + 1).map_or(end, |s| s.0 as usize));
            if !head[..line_end].ends_with(b"\r\n") {
                return None;
            }
            let value = &head[vs as usize..ve as usize];
            match kind(&head[ns as usize..ne as usize]) {
                FieldKind::Kept => continue,
                FieldKind::NeedsMap => return None,
                FieldKind::Length => framing.see(&CONTENT_LENGTH, value),
                FieldKind::Connection => {
                    let plain = value.split(|&b| b == b',').all(|t| {
                        let t = t.trim_ascii();
                        t.is_empty()
                            || t.eq_ignore_ascii_case(b"keep-alive")
                            || t.eq_ignore_ascii_case(b"close")
                    });
                    if !plain {
                        return None;
                    }
                    framing.see(&CONNECTION, value);
                }
                FieldKind::Dropped => {}
            }
            // This line is left out: the run before it ends here.
            if line > run_start {
                if count == runs.len() {
                    return None;
                }
                runs[count] = (run_start, line);
                count += 1;
            }
            run_start = line_end;
        }
        if end > run_start {
            if count == runs.len() {
                return None;
            }
            runs[count] = (run_start, end);
            count += 1;
        }
        let lines = match &runs[..count] {
            [] => Bytes::new(),
            [(start, end)] => head.slice(*start..*end),
            runs => {
                let mut joined = BytesMut::with_capacity(runs.iter().map(|(s, e)| e - s).sum());
                for &(start, end) in runs {
                    joined.extend_from_slice(&head[start..end]);
                }
                joined.freeze()
            }
        };
        let length = match framing.length {
            Some(Some(n)) => Some(n),
            _ => None,
        };
        Some((RawFields { lines, length }, framing))
    }

    /// Fields as [`RawFields::of`] keeps them, for tests elsewhere.
    #[cfg(test)]
    pub(crate) fn for_test(lines: &'static str, length: Option<u64>) -> RawFields {
        RawFields {
            lines: Bytes::from_static(lines.as_bytes()),
            length,
        }
    }

    /// The field lines, each ending in CRLF.
    pub(crate) fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// The `content-length` the response had.
    pub(crate) fn length(&self) -> Option<u64> {
        self.length
    }

    /// The fields as a map, `content-length` included.
    fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        let mut rest = &self.lines[..];
        while let Some(at) = rest.windows(2).position(|w| w == b"\r\n") {
            let line = &rest[..at];
            rest = &rest[at + 2..];
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            // Checked by httparse when the head was read: a token, and a value without
            // control characters.
            let name = HeaderName::from_bytes(&line[..colon]);
            let value = line[colon + 1..].trim_ascii();
            let start = value.as_ptr() as usize - self.lines.as_ptr() as usize;
            let value =
                HeaderValue::from_maybe_shared(self.lines.slice(start..start + value.len()));
            if let (Ok(name), Ok(value)) = (name, value) {
                map.append(name, value);
            }
        }
        if let Some(n) = self.length {
            map.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
        map
    }
}

/// Puts kept fields (if `extensions` has them) back into `headers`, for whatever reads or
/// edits them.
pub fn restore_into(headers: &mut HeaderMap, extensions: &mut Extensions) {
    if let Some(raw) = extensions.remove::<RawFields>() {
        put(headers, raw.header_map());
    }
}

/// [`restore_into`] for a whole response.
pub fn restore<B>(response: &mut Response<B>) {
    if let Some(raw) = response.extensions_mut().remove::<RawFields>() {
        put(response.headers_mut(), raw.header_map());
    }
}

fn put(headers: &mut HeaderMap, map: HeaderMap) {
    if headers.is_empty() {
        *headers = map;
    } else {
        headers.extend(map);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `head` parsed as httparse parses a response, with its fields' spans.
    fn kept(head: &str) -> Option<(RawFields, FramingFields)> {
        let head = Bytes::from(head.to_string());
        let mut fields = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Response::new(&mut fields);
        assert!(parsed.parse(&head).expect("a head").is_complete());
        let base = head.as_ptr() as usize;
        let spans: Vec<FieldSpan> = parsed
            .headers
            .iter()
            .map(|f| {
                let (n, v) = (
                    f.name.as_ptr() as usize - base,
                    f.value.as_ptr() as usize - base,
                );
                (
                    n as u32,
                    (n + f.name.len()) as u32,
                    v as u32,
                    (v + f.value.len()) as u32,
                )
            })
            .collect();
        RawFields::of(&head, &spans)
    }

    fn lines(raw: &RawFields) -> &str {
        std::str::from_utf8(raw.lines()).expect("text")
    }

    #[test]
    fn fields_are_kept_as_they_came_without_framing_and_hop_by_hop_ones() {
        let (raw, framing) = kept(
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 12\r\nConnection: keep-alive\r\n\
             X-Case: MiXeD  \r\nKeep-Alive: timeout=5\r\nproxy-connection: x\r\nETag: \"1\"\r\n\r\n",
        )
        .expect("kept");
        assert_eq!(
            lines(&raw),
            "Server: nginx\r\nX-Case: MiXeD  \r\nETag: \"1\"\r\n"
        );
        assert_eq!(raw.length(), Some(12));
        assert_eq!(framing.length, Some(Some(12)));
        assert!(framing.keep_alive && !framing.close);
        // One run, nothing left out: a slice of the head itself.
        let (raw, framing) =
            kept("HTTP/1.1 204 No Content\r\nDate: x\r\nVary: y\r\n\r\n").expect("kept");
        assert_eq!(lines(&raw), "Date: x\r\nVary: y\r\n");
        assert_eq!((raw.length(), framing.length), (None, None));
        let (raw, framing) = kept("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n").expect("kept");
        assert_eq!(lines(&raw), "");
        assert!(framing.close);
    }

    #[test]
    fn heads_a_proxy_must_rewrite_are_not_kept() {
        for head in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nUpgrade: h2c\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTrailer: x-sum\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTE: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, x-private\r\nx-private: 1\r\n\r\n",
            // Lines ended by a bare LF are parsed, but not written back as they came.
            "HTTP/1.1 200 OK\nServer: x\n\n",
            "HTTP/1.1 200 OK\r\nServer: x\nDate: y\r\n\r\n",
            // More runs than it keeps room for.
            "HTTP/1.1 200 OK\r\na: 1\r\nkeep-alive: 1\r\nb: 1\r\nkeep-alive: 1\r\nc: 1\r\n\
             keep-alive: 1\r\nd: 1\r\nkeep-alive: 1\r\ne: 1\r\n\r\n",
        ] {
            assert!(kept(head).is_none(), "{head:?} was kept");
        }
    }

    #[test]
    fn kept_fields_are_restored_into_a_map_with_their_length() {
        let (raw, _) = kept(
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\n\
             Set-Cookie: b=2\r\nX-Pad:   v  \r\n\r\n",
        )
        .expect("kept");
        let mut response = Response::new(());
        response.extensions_mut().insert(raw);
        restore(&mut response);
        assert!(response.extensions().get::<RawFields>().is_none());
        let h = response.headers();
        assert_eq!(h["server"], "nginx");
        assert_eq!(h[CONTENT_LENGTH], "5");
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(h["x-pad"], "v");
        assert_eq!(h.len(), 5);
    }
}
