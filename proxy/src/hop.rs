//! What a request between sidecars tells the peer, in one header: `x-mesh-hop: <app port>
//! <h1|h2> [<Service>]`, e.g. `x-mesh-hop: 8080 h1 web.default.svc:80`.
//!
//! - the app port on the peer's pod the request is for;
//! - the protocol the client spoke: `h1` for HTTP/1.1, which the peer restores toward its app
//!   whichever carriage the request took (`mesh/h2` or `mesh/h1`), `h2` for HTTP/2;
//! - the Service the client addressed, when it has a name that is a valid header value (the
//!   peer counts the request under it, if meshd published it).
//!
//! One header instead of one each (`x-mesh-target-port`, `x-mesh-orig-proto`,
//! `x-mesh-service`, as sidecars before this one sent): each header a request carries between
//! the sidecars is inserted, encoded (HPACK or HTTP/1.1 text), decoded and removed again, and
//! the two saved cost 1.9k-3.3k instructions a request over the pair in callgrind's count
//! (benches/instructions.sh; benches/RESULTS.md). A peer still accepts the old headers from an
//! older sidecar.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use crate::http::push_decimal;

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
        let mut s = String::with_capacity(9 + service.map_or(0, str::len));
        push_decimal(&mut s, self.port);
        s.push_str(if self.http1 { " h1" } else { " h2" });
        if let Some(service) = service {
            s.push(' ');
            s.push_str(service);
        }
        // Digits, spaces and visible ASCII: always a valid value.
        HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

impl<'a> Hop<'a> {
    /// Reads `value`; the error names what is wrong with it.
    pub fn parse(value: &'a HeaderValue) -> Result<Hop<'a>, String> {
        let text = value
            .to_str()
            .map_err(|_| format!("{HOP} is not visible ASCII: {value:?}"))?;
        let mut fields = text.split(' ');
        let port = fields.next().unwrap_or("");
        let port = port.parse::<u16>().map_err(|_| {
            format!("{HOP} {text:?}: the app port {port:?} is not a number below 65536")
        })?;
        let http1 = match fields.next() {
            Some("h1") => true,
            Some("h2") => false,
            Some(other) => {
                return Err(format!(
                    "{HOP} {text:?}: the protocol {other:?} is neither h1 nor h2"
                ));
            }
            None => {
                return Err(format!(
                    "{HOP} {text:?}: no protocol (h1 or h2) after the port"
                ));
            }
        };
        let service = fields.next().filter(|s| !s.is_empty());
        if let Some(extra) = fields.next() {
            return Err(format!(
                "{HOP} {text:?}: unexpected {extra:?} after the Service"
            ));
        }
        Ok(Hop {
            port,
            http1,
            service,
        })
    }
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
