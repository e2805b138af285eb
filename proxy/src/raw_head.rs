//! Header fields kept as the bytes they arrived in, where nothing between our HTTP/1.1 server
//! ([`crate::http1_server`]) and our HTTP/1.1 client ([`crate::http1_client`]) reads or edits
//! them: the sidecar parses the head (its framing and the connection's keep-alive come from
//! it) but writes these fields on as they came, without making a `HeaderMap` of them.
//!
//! Each sidecar parsed every request's and every response's fields into a `HeaderMap` (a name
//! and a value made and hashed into the map for each field, the map allocated and dropped) only
//! to write most of them back out in the order they came: in callgrind's count
//! (`benches/instructions.sh`) the response's map was about 2.3k of the 31k instructions a
//! request on each side, the request's about 2k.
//!
//! Responses: all their fields become one [`RawFields`] carried by the response's body
//! ([`crate::body::ProxyBody::kept`]), in place of the map, which our server writes as it is. Only where that is sound:
//! - the request says that its response is written by our HTTP/1.1 server
//!   ([`RequestFields::read_by_our_server`]: its body is that server's alone); anything else
//!   that writes or reads a response gets a `HeaderMap`;
//! - the head has none of the fields a proxy must act on or rewrite beyond its framing:
//!   `transfer-encoding`, `upgrade`, `trailer`, `te`, or a `connection` that names other
//!   fields. Those heads are parsed into a map as before. The hop-by-hop fields a proxy drops
//!   (`connection: keep-alive` or `close`, `keep-alive`, `proxy-*`) are left out of the kept
//!   bytes, as `strip_hop_by_hop` removes them from a map; `content-length` is left out and
//!   kept as its number, which the server writes with the body it frames;
//! - a route that edits response headers, or any other reader, restores the map first
//!   ([`restore_into`]; our HTTP/2 server does).
//!
//! Requests: the fields the sidecar itself reads, sets or removes go into the request's map
//! as before (`host`, the mesh's `x-mesh-*`, `x-forwarded-client-cert`, framing and hop-by-hop
//! fields, see [`in_request_map`]); the others (`user-agent`, `accept`, the app's own) are kept
//! as their lines, carried by the request's body ([`RequestFields::kept`]), which our HTTP/1.1
//! client writes after the map's. The map is restored whole ([`restore_request`]) before anything else reads it: route matching on a
//! Service with header matches, a route's request header edits, and the HTTP/2 and hyper
//! clients.

#![forbid(unsafe_code)]

use bytes::{Bytes, BytesMut};
use hyper::Request;
use hyper::header::{CONNECTION, CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue};

use crate::http1_client::{FieldSpan, FramingFields};
use crate::peer::CLIENT_CERT;

/// What a request's body tells of its head: a body read whole by our HTTP/1.1 server
/// ([`crate::body::StreamBody::Whole`]) says so, and carries the fields of the head that were
/// kept as they came; any other body has neither.
pub trait RequestFields {
    /// Read by our HTTP/1.1 server, which writes its response: the response's fields may
    /// then stay as they come ([`RawFields`]).
    fn read_by_our_server(&self) -> bool {
        false
    }

    /// The fields kept as they came, each line with its CRLF: written by our HTTP/1.1 client
    /// after the map's.
    fn kept(&self) -> Option<&[u8]> {
        None
    }

    /// Takes them out, for [`restore_request`].
    fn take_kept(&mut self) -> Option<Bytes> {
        None
    }
}

#[cfg(test)]
impl RequestFields for http_body_util::Empty<Bytes> {}

#[cfg(test)]
impl RequestFields for http_body_util::Full<Bytes> {}

#[cfg(test)]
impl<S> RequestFields for http_body_util::StreamBody<S> {}

/// What a response's body tells of its head: [`crate::body::ProxyBody`] may carry the
/// response's fields kept as they came; any other body has none.
pub trait ResponseFields {
    /// Takes them out, for [`restore_into`].
    fn take_kept(&mut self) -> Option<RawFields> {
        None
    }
}

#[cfg(test)]
impl ResponseFields for http_body_util::Full<Bytes> {}

#[cfg(test)]
impl ResponseFields for http_body_util::Empty<Bytes> {}

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

/// Whether a response's field named `name` goes on as it came: not a framing or hop-by-hop
/// field. `name` is a token, or visible ASCII (a compact head's): no visible byte that is not
/// a letter or '-' becomes one when `kind` folds its case.
pub(crate) fn goes_as_it_came(name: &[u8]) -> bool {
    kind(name) == FieldKind::Kept
}

/// Whether a request's field goes into its map: the fields the proxy reads, sets or removes
/// (`host`, the mesh's own `x-mesh-*` and `x-forwarded-client-cert`), its framing and
/// hop-by-hop fields, and `expect`. Every other field goes on as it came.
pub(crate) fn in_request_map(name: &[u8]) -> bool {
    let is = |lower: &[u8]| {
        name.len() == lower.len() && name.iter().zip(lower).all(|(b, l)| b | 0x20 == *l)
    };
    const MESH: &[u8] = b"x-mesh-";
    let mesh = name.len() > MESH.len() && name.iter().zip(MESH).all(|(b, l)| b | 0x20 == *l);
    mesh || match name.len() {
        2 => is(b"te"),
        4 => is(b"host"),
        6 => is(b"expect"),
        7 => is(b"upgrade") || is(b"trailer"),
        10 => is(b"connection") || is(b"keep-alive"),
        14 => is(b"content-length"),
        16 => is(b"proxy-connection"),
        17 => is(b"transfer-encoding"),
        18 => is(b"proxy-authenticate"),
        19 => is(b"proxy-authorization"),
        23 => is(CLIENT_CERT.as_str().as_bytes()),
        _ => false,
    }
}

/// The runs of a head's field lines that are kept, between the lines left out: most heads
/// have one or two.
struct Runs<'a> {
    head: &'a Bytes,
    /// Where the field lines end: before the empty line that ends the head.
    end: usize,
    runs: [(usize, usize); MAX_RUNS],
    count: usize,
    start: usize,
}

const MAX_RUNS: usize = 4;

impl<'a> Runs<'a> {
    /// `None` when the head does not end in CRLF CRLF.
    fn new(head: &'a Bytes, spans: &[FieldSpan]) -> Option<Runs<'a>> {
        if !head.ends_with(b"\r\n\r\n") {
            return None;
        }
        let end = head.len() - 2;
        Some(Runs {
            head,
            end,
            runs: [(0, 0); MAX_RUNS],
            count: 0,
            start: spans.first().map_or(end, |s| s.0 as usize),
        })
    }

    /// Where the line of field `i` (of `spans`, the head's) starts and ends; `None` when it
    /// does not end in CRLF.
    fn line(&self, spans: &[FieldSpan], i: usize) -> Option<(usize, usize)> {
        let start = spans[i].0 as usize;
        let end = spans.get(i + 1).map_or(self.end, |s| s.0 as usize);
        self.head[..end].ends_with(b"\r\n").then_some((start, end))
    }

    /// Leaves the line out: the run before it ends there. `None` when there are too many runs.
    fn leave_out(&mut self, (start, end): (usize, usize)) -> Option<()> {
        if start > self.start {
            self.push(start)?;
        }
        self.start = end;
        Some(())
    }

    fn push(&mut self, until: usize) -> Option<()> {
        let slot = self.runs.get_mut(self.count)?;
        *slot = (self.start, until);
        self.count += 1;
        Some(())
    }

    /// The kept lines: a slice of the head when they are one run.
    fn finish(mut self) -> Option<Bytes> {
        if self.end > self.start {
            self.push(self.end)?;
        }
        Some(match &self.runs[..self.count] {
            [] => Bytes::new(),
            [(start, end)] => self.head.slice(*start..*end),
            runs => {
                let mut joined = BytesMut::with_capacity(runs.iter().map(|(s, e)| e - s).sum());
                for &(start, end) in runs {
                    joined.extend_from_slice(&self.head[start..end]);
                }
                joined.freeze()
            }
        })
    }
}

impl RawFields {
    /// The fields of `head` (a whole response head, its fields at `spans`) as kept bytes, and
    /// what its framing fields say; `None` when the head needs a map (see the module's notes),
    /// or does not end its lines in CRLF.
    pub(crate) fn of(head: &Bytes, spans: &[FieldSpan]) -> Option<(RawFields, FramingFields)> {
        let mut framing = FramingFields::default();
        let mut runs = Runs::new(head, spans)?;
        for (i, &(ns, ne, vs, ve)) in spans.iter().enumerate() {
            let line = runs.line(spans, i)?;
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
            runs.leave_out(line)?;
        }
        let length = match framing.length {
            Some(Some(n)) => Some(n),
            _ => None,
        };
        let lines = runs.finish()?;
        Some((RawFields { lines, length }, framing))
    }

    /// Splits a request head's fields (at `spans` in `head`): those the proxy reads or
    /// rewrites ([`in_request_map`]) are moved to the front of `spans`, in their order, and
    /// counted; the others are kept as they came. When they cannot be (a line not ended by
    /// CRLF, too many runs), or there are none, every field is counted for the map.
    pub(crate) fn split_request(head: &Bytes, spans: &mut [FieldSpan]) -> (usize, Option<Bytes>) {
        let all = (spans.len(), None);
        // Which fields go to the map (at most MAX_HEADERS, 100, of them).
        let mut mapped: u128 = 0;
        if spans.len() > 128 {
            return all;
        }
        let Some(mut runs) = Runs::new(head, spans) else {
            return all;
        };
        for (i, &(ns, ne, _, _)) in spans.iter().enumerate() {
            let Some(line) = runs.line(spans, i) else {
                return all;
            };
            if in_request_map(&head[ns as usize..ne as usize]) {
                mapped |= 1 << i;
                if runs.leave_out(line).is_none() {
                    return all;
                }
            }
        }
        let count = mapped.count_ones() as usize;
        if count == spans.len() {
            return all;
        }
        let Some(lines) = runs.finish() else {
            return all;
        };
        // The map's fields to the front, in order (each moves to a place at or before its own).
        let mut to = 0;
        for i in 0..spans.len() {
            if mapped & (1 << i) != 0 {
                spans[to] = spans[i];
                to += 1;
            }
        }
        (count, Some(lines))
    }

    /// Field lines (each ending in CRLF, without framing or hop-by-hop fields) and the
    /// `content-length` they go with, as a compact head carries them ([`crate::compact_head`]).
    pub(crate) fn new(lines: Bytes, length: Option<u64>) -> RawFields {
        RawFields { lines, length }
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
    pub(crate) fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        let mut rest = &self.lines[..];
        while let Some(at) = rest.windows(2).position(|w| w == b"\r\n") {
            let line = &rest[..at];
            rest = &rest[at + 2..];
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            // Checked when the head was read (by httparse, or as a compact head's lines): a
            // token or visible ASCII (which `HeaderName` checks again), and a value without
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

/// Puts a response's `kept` fields (taken from its body: [`ResponseFields::take_kept`])
/// back into its `headers`, for whatever reads or edits them.
pub fn restore_into(headers: &mut HeaderMap, kept: Option<RawFields>) {
    if let Some(raw) = kept {
        put(headers, raw.header_map());
    }
}

/// A request's body's kept fields into its map.
pub fn restore_request<B: RequestFields>(request: &mut Request<B>) {
    if let Some(lines) = request.body_mut().take_kept() {
        let raw = RawFields {
            lines,
            length: None,
        };
        put(request.headers_mut(), raw.header_map());
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
        let spans = spans_of(&head, parsed.headers);
        RawFields::of(&head, &spans)
    }

    fn spans_of(head: &Bytes, fields: &[httparse::Header<'_>]) -> Vec<FieldSpan> {
        let base = head.as_ptr() as usize;
        fields
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
            .collect()
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

    /// A request head's fields split as our HTTP/1.1 server splits them: the map's names in
    /// order, and the kept lines.
    fn split(head: &str) -> (Vec<String>, Option<String>) {
        let head = Bytes::from(head.to_string());
        let mut fields = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Request::new(&mut fields);
        assert!(parsed.parse(&head).expect("a head").is_complete());
        let mut spans = spans_of(&head, parsed.headers);
        let (mapped, raw) = RawFields::split_request(&head, &mut spans);
        let names = spans[..mapped]
            .iter()
            .map(|&(ns, ne, _, _)| String::from_utf8_lossy(&head[ns as usize..ne as usize]).into())
            .collect();
        (
            names,
            raw.map(|r| String::from_utf8(r.to_vec()).expect("text")),
        )
    }

    #[test]
    fn a_requests_fields_the_sidecar_acts_on_go_to_the_map_and_the_rest_as_they_came() {
        let (mapped, kept) = split(
            "GET / HTTP/1.1\r\nHost: web\r\nUser-Agent: curl\r\nAccept: */*\r\n\
             X-Mesh-Hop: http h1\r\nx-app: 1\r\nX-Forwarded-Client-Cert: forged\r\n\
             Connection: keep-alive\r\nx-app: 2\r\n\r\n",
        );
        assert_eq!(
            mapped,
            [
                "Host",
                "X-Mesh-Hop",
                "X-Forwarded-Client-Cert",
                "Connection"
            ]
        );
        assert_eq!(
            kept.as_deref(),
            Some("User-Agent: curl\r\nAccept: */*\r\nx-app: 1\r\nx-app: 2\r\n")
        );
        // Nothing to keep: no extension, every field in the map.
        let (mapped, kept) = split("GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n");
        assert_eq!((mapped.len(), kept), (2, None));
        // Lines that do not end in CRLF: all in the map.
        let (mapped, kept) = split("GET / HTTP/1.1\nhost: a\nx-app: 1\n\n");
        assert_eq!((mapped.len(), kept), (2, None));
    }

    #[test]
    fn every_name_the_sidecar_reads_sets_or_drops_on_a_request_is_in_the_map() {
        use crate::hop::HOP;
        use crate::peer::ORIG_HOST;
        for name in [
            HOP.as_str(),
            ORIG_HOST.as_str(),
            CLIENT_CERT.as_str(),
            // An older sidecar's (see `crate::hop::take_old`).
            "x-mesh-target-port",
            "x-mesh-orig-proto",
            "x-mesh-service",
            "Host",
            "content-length",
            "Transfer-Encoding",
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "upgrade",
            "expect",
        ] {
            assert!(in_request_map(name.as_bytes()), "{name}");
        }
        for name in ["user-agent", "accept", "x-mesh", "x-canary", "hosts", "tee"] {
            assert!(!in_request_map(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn a_requests_kept_fields_are_restored_after_its_map() {
        let kept = Bytes::from_static(b"x-app: 1\r\nAccept: */*\r\n");
        let whole = crate::body::Whole::new(kept.clone(), kept.len(), kept.len());
        let mut request = Request::new(crate::body::StreamBody::Whole(whole));
        request
            .headers_mut()
            .insert("host", HeaderValue::from_static("web"));
        restore_request(&mut request);
        // Taken out; the mark that the response is written by our server stays.
        assert!(request.body().kept().is_none());
        assert!(request.body().read_by_our_server());
        let h = request.headers();
        assert_eq!(h.len(), 3);
        assert_eq!(h["host"], "web");
        assert_eq!(h["x-app"], "1");
        assert_eq!(h["accept"], "*/*");
        assert!(!h.contains_key(CONTENT_LENGTH));
    }

    #[test]
    fn kept_fields_are_restored_into_a_map_with_their_length() {
        let (raw, _) = kept(
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\n\
             Set-Cookie: b=2\r\nX-Pad:   v  \r\n\r\n",
        )
        .expect("kept");
        let mut headers = HeaderMap::new();
        restore_into(&mut headers, Some(raw));
        let h = &headers;
        assert_eq!(h["server"], "nginx");
        assert_eq!(h[CONTENT_LENGTH], "5");
        let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(h["x-pad"], "v");
        assert_eq!(h.len(), 5);
    }
}
