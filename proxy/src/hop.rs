//! What a request between sidecars tells the peer, in one header: `x-mesh-hop: <app port>
//! <h1|h2> [<Service>]`, e.g. `x-mesh-hop: 8080 h1 web.default.svc:80`.
//!
//! - the app port on the peer's pod the request is for;
//! - the protocol the client spoke: `h1` for HTTP/1.1, which the peer restores toward its app
//!   whichever carriage the request took (`mesh/h2` or `mesh/h1`), `h2` for HTTP/2;
//! - the Service the client addressed, when its name is visible ASCII without spaces (the peer
//!   counts the request under it, if meshd published it).
//!
//! One header instead of one each (`x-mesh-target-port`, `x-mesh-orig-proto`,
//! `x-mesh-service`, as sidecars before this one sent): each header a request carries between
//! the sidecars is inserted, encoded (HPACK or HTTP/1.1 text), decoded and removed again; one
//! in place of three saved 3.7k instructions a request over the pair paced and 4.5k at full
//! load in callgrind's count (`benches/instructions.sh 1000`; benches/RESULTS.md). A peer still
//! accepts the old headers from an older sidecar.

use bytes::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use crate::http::decimal;

/// The header between sidecars.
pub const HOP: HeaderName = HeaderName::from_static("x-mesh-hop");

// What sidecars before `x-mesh-hop` sent instead, still read from them.
const OLD_TARGET_PORT: HeaderName = HeaderName::from_static("x-mesh-target-port");
const OLD_ORIG_PROTO: HeaderName = HeaderName::from_static("x-mesh-orig-proto");
const OLD_SERVICE: HeaderName = HeaderName::from_static("x-mesh-service");

/// What `x-mesh-hop` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop<'a> {
    /// The app port on the peer's pod.
    pub port: u16,
    /// The client spoke HTTP/1.1 (the request may travel in HTTP/2 between the sidecars).
    pub http1: bool,
    /// The Service the client addressed.
    pub service: Option<&'a str>,
}

impl Hop<'_> {
    /// The header value. A Service name that is not visible ASCII without spaces is left out
    /// (the peer then counts the request under the Service of the endpoint it reached).
    pub fn to_value(&self) -> HeaderValue {
        let service = self
            .service
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()));
        let (digits, start) = decimal(self.port);
        let port = &digits[start..];
        // The exact length: a vector as long as its capacity becomes `Bytes` without a copy
        // or a second allocation.
        let len = port.len() + 3 + service.map_or(0, |s| 1 + s.len());
        let mut v = Vec::with_capacity(len);
        v.extend_from_slice(port);
        v.extend_from_slice(if self.http1 { b" h1" } else { b" h2" });
        if let Some(service) = service {
            v.push(b' ');
            v.extend_from_slice(service.as_bytes());
        }
        // Digits, spaces and visible ASCII: always a valid value.
        HeaderValue::from_maybe_shared(Bytes::from(v))
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

impl<'a> Hop<'a> {
    /// Reads `value`; the error names what is wrong with it.
    pub fn parse(value: &'a HeaderValue) -> Result<Hop<'a>, String> {
        let bytes = value.as_bytes();
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let bad = |what: String| format!("{HOP} {:?}: {what}", lossy(bytes));
        let mut fields = bytes.splitn(3, |&b| b == b' ');
        let port = fields.next().unwrap_or_default();
        let port = parse_u16(port).ok_or_else(|| {
            bad(format!(
                "the app port {:?} is not a number below 65536",
                lossy(port)
            ))
        })?;
        let http1 = match fields.next() {
            Some(b"h1") => true,
            Some(b"h2") => false,
            Some(other) => {
                return Err(bad(format!(
                    "the protocol {:?} is neither h1 nor h2",
                    lossy(other)
                )));
            }
            None => return Err(bad("no protocol (h1 or h2) after the port".into())),
        };
        let service = match fields.next() {
            None | Some(b"") => None,
            Some(rest) => {
                // One pass for both checks (a space is not visible ASCII): this runs for every
                // request a sidecar receives from a peer.
                if let Some(at) = rest.iter().position(|b| !b.is_ascii_graphic()) {
                    if let Some(space) = rest[at..].iter().position(|&b| b == b' ') {
                        return Err(bad(format!(
                            "unexpected {:?} after the Service",
                            lossy(&rest[at + space + 1..])
                        )));
                    }
                    return Err(bad("the Service is not visible ASCII".into()));
                }
                // Visible ASCII is UTF-8.
                std::str::from_utf8(rest).ok()
            }
        };
        Ok(Hop {
            port,
            http1,
            service,
        })
    }
}

/// `digits` as a decimal `u16` (no sign, no spaces).
fn parse_u16(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    let n = digits.iter().try_fold(0u32, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
    })?;
    u16::try_from(n).ok()
}

/// What an older sidecar sent in its three headers (removed from `headers`), if it sent the
/// target port; the Service it named is not read (the request is counted under the Service of
/// the endpoint it reached).
pub fn take_old(headers: &mut HeaderMap) -> Option<Hop<'static>> {
    let port = headers.remove(OLD_TARGET_PORT)?;
    let http1 = headers.remove(OLD_ORIG_PROTO).is_some();
    headers.remove(OLD_SERVICE);
    let port = port.to_str().ok()?.parse().ok()?;
    Some(Hop {
        port,
        http1,
        service: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hop_reads_back_as_written() {
        for hop in [
            Hop {
                port: 8080,
                http1: true,
                service: Some("web.default.svc:80"),
            },
            Hop {
                port: 1,
                http1: false,
                service: None,
            },
            Hop {
                port: 65535,
                http1: false,
                service: Some("api"),
            },
        ] {
            let value = hop.to_value();
            assert_eq!(Hop::parse(&value), Ok(hop), "{value:?}");
        }
        let value = Hop {
            port: 8080,
            http1: true,
            service: Some("web.default.svc:80"),
        }
        .to_value();
        assert_eq!(value, "8080 h1 web.default.svc:80");
    }

    #[test]
    fn a_service_name_that_is_no_header_value_is_left_out() {
        let hop = Hop {
            port: 80,
            http1: true,
            service: Some("two words"),
        };
        assert_eq!(hop.to_value(), "80 h1");
    }

    #[test]
    fn bad_values_are_refused_with_what_is_wrong() {
        let refused = |v: &'static str| Hop::parse(&HeaderValue::from_static(v)).expect_err(v);
        assert!(refused("").contains("the app port \"\""), "{}", refused(""));
        assert!(refused("http h1").contains("the app port \"http\""));
        assert!(refused("70000 h1").contains("the app port \"70000\""));
        assert!(refused("8080").contains("no protocol"));
        assert!(refused("8080 h3").contains("the protocol \"h3\" is neither h1 nor h2"));
        assert!(refused("8080 h1 web extra").contains("unexpected \"extra\""));
        assert!(refused("+80 h1").contains("the app port \"+80\""));
        let latin1 =
            HeaderValue::from_bytes(b"8080 h1 caf\xe9").expect("obs-text is a valid value");
        let refused = Hop::parse(&latin1).expect_err("not ASCII");
        assert!(
            refused.contains("the Service is not visible ASCII"),
            "{refused}"
        );
    }

    #[test]
    fn an_older_sidecars_headers_are_read_and_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(OLD_TARGET_PORT, HeaderValue::from_static("9090"));
        headers.insert(OLD_ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
        headers.insert(OLD_SERVICE, HeaderValue::from_static("web"));
        assert_eq!(
            take_old(&mut headers),
            Some(Hop {
                port: 9090,
                http1: true,
                service: None
            })
        );
        assert!(headers.is_empty());
        assert_eq!(take_old(&mut headers), None);
    }
}
