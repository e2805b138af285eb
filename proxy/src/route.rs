//! Request matching, compiled once per configuration: path (exact, prefix, segment prefix,
//! regex), headers (including `:method` and `:authority`), and query parameters. Matching a
//! request allocates nothing.

use hyper::Method;
use hyper::header::{HeaderMap, HeaderName};
use regex::Regex;

/// How the path must look.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Any,
    Exact(String),
    /// A plain string prefix (Envoy `prefix`).
    Prefix(String),
    /// Whole path segments (Gateway API `PathPrefix`, Envoy `path_separated_prefix`): `/api`
    /// matches `/api` and `/api/x`, not `/apix`.
    Segments(String),
    /// The whole path matches the expression.
    Regex(Regex),
}

/// How a header or query value must look.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
    Present,
}

impl ValueMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => value == v,
            ValueMatch::Prefix(p) => value.starts_with(p.as_str()),
            ValueMatch::Regex(r) => r.is_match(value),
            ValueMatch::Present => true,
        }
    }
}

/// Which request field a header matcher looks at.
#[derive(Debug, Clone)]
pub enum HeaderField {
    Method,
    Authority,
    Header(HeaderName),
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    pub field: HeaderField,
    pub value: ValueMatch,
    pub invert: bool,
}

#[derive(Debug, Clone)]
pub struct QueryMatch {
    pub name: String,
    pub value: ValueMatch,
}

/// Everything a route requires of a request.
#[derive(Debug, Clone)]
pub struct RequestMatch {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
}

/// The parts of a request that routes look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub authority: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// Compiles a regular expression that must match the whole input (Envoy `safe_regex`).
pub fn full_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("invalid regular expression `{pattern}`: {e}"))
}

impl RequestMatch {
    /// A match that accepts every request.
    pub fn any() -> RequestMatch {
        RequestMatch {
            path: PathMatch::Any,
            headers: Vec::new(),
            query: Vec::new(),
        }
    }

    /// Whether it looks at a header field other than `:method` and `:authority`.
    pub fn reads_headers(&self) -> bool {
        self.headers
            .iter()
            .any(|h| matches!(h.field, HeaderField::Header(_)))
    }

    pub fn is_catch_all(&self) -> bool {
        matches!(self.path, PathMatch::Any) && self.headers.is_empty() && self.query.is_empty()
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.path_matches(req.path)
            && self.headers.iter().all(|h| header_matches(h, req))
            && self.query.iter().all(|q| query_matches(q, req.query))
    }

    fn path_matches(&self, path: &str) -> bool {
        match &self.path {
            PathMatch::Any => true,
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Segments(p) => path
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

fn header_matches(h: &HeaderMatch, req: &RequestView<'_>) -> bool {
    let found = match &h.field {
        HeaderField::Method => h.value.matches(req.method.as_str()),
        HeaderField::Authority => req.authority.is_some_and(|a| h.value.matches(a)),
        // Several values of one header: any of them may match.
        HeaderField::Header(name) => req
            .headers
            .get_all(name)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| h.value.matches(v))),
    };
    found != h.invert
}

fn query_matches(q: &QueryMatch, query: Option<&str>) -> bool {
    query.is_some_and(|query| {
        query.split('&').any(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            name == q.name && q.value.matches(value)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn view<'a>(
        method: &'a Method,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> RequestView<'a> {
        RequestView {
            method,
            authority: Some("web.default.svc:80"),
            path,
            query,
            headers,
        }
    }

    #[test]
    fn paths() {
        let h = HeaderMap::new();
        let m = |path: PathMatch, p: &str| {
            RequestMatch {
                path,
                headers: vec![],
                query: vec![],
            }
            .matches(&view(&Method::GET, p, None, &h))
        };
        assert!(m(PathMatch::Segments("/api".into()), "/api"));
        assert!(m(PathMatch::Segments("/api".into()), "/api/v1"));
        assert!(!m(PathMatch::Segments("/api".into()), "/apix"));
        assert!(m(PathMatch::Prefix("/api".into()), "/apix"));
        assert!(m(PathMatch::Exact("/health".into()), "/health"));
        assert!(!m(PathMatch::Exact("/health".into()), "/health/"));
        let re = full_regex("/users/[0-9]+").unwrap_or_else(|e| panic!("{e}"));
        assert!(m(PathMatch::Regex(re.clone()), "/users/42"));
        assert!(
            !m(PathMatch::Regex(re), "/users/42/x"),
            "regexes match the whole path"
        );
    }

    #[test]
    fn headers_method_and_query() {
        let mut headers = HeaderMap::new();
        headers.append("x-canary", HeaderValue::from_static("0"));
        headers.append("x-canary", HeaderValue::from_static("1"));
        let canary = HeaderMatch {
            field: HeaderField::Header(HeaderName::from_static("x-canary")),
            value: ValueMatch::Exact("1".into()),
            invert: false,
        };
        let post = HeaderMatch {
            field: HeaderField::Method,
            value: ValueMatch::Exact("POST".into()),
            invert: false,
        };
        let debug = QueryMatch {
            name: "debug".into(),
            value: ValueMatch::Exact("true".into()),
        };
        let m = RequestMatch {
            path: PathMatch::Any,
            headers: vec![canary.clone()],
            query: vec![],
        };
        assert!(
            m.matches(&view(&Method::GET, "/", None, &headers)),
            "any value of a repeated header"
        );
        assert!(!m.matches(&view(&Method::GET, "/", None, &HeaderMap::new())));
        let m = RequestMatch {
            path: PathMatch::Any,
            headers: vec![post],
            query: vec![debug],
        };
        assert!(m.matches(&view(&Method::POST, "/", Some("a=1&debug=true"), &headers)));
        assert!(!m.matches(&view(&Method::GET, "/", Some("debug=true"), &headers)));
        assert!(!m.matches(&view(&Method::POST, "/", Some("debug=false"), &headers)));
        let inverted = RequestMatch {
            path: PathMatch::Any,
            headers: vec![HeaderMatch {
                invert: true,
                ..canary
            }],
            query: vec![],
        };
        assert!(inverted.matches(&view(&Method::GET, "/", None, &HeaderMap::new())));
    }
}

/// Header changes a route makes: to the request on the way up, to the response on the way back.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    /// (name, value, append): append adds a value, otherwise the header is replaced.
    pub request_set: Vec<(HeaderName, hyper::header::HeaderValue, bool)>,
    pub request_remove: Vec<HeaderName>,
    pub response_set: Vec<(HeaderName, hyper::header::HeaderValue, bool)>,
    pub response_remove: Vec<HeaderName>,
}

impl HeaderEdits {
    pub fn is_empty(&self) -> bool {
        self.request_set.is_empty()
            && self.request_remove.is_empty()
            && self.response_set.is_empty()
            && self.response_remove.is_empty()
    }

    pub fn apply_request(&self, headers: &mut HeaderMap) {
        apply(headers, &self.request_remove, &self.request_set);
    }

    /// Whether it changes requests.
    pub fn edits_request(&self) -> bool {
        !(self.request_set.is_empty() && self.request_remove.is_empty())
    }

    /// Whether it changes responses.
    pub fn edits_response(&self) -> bool {
        !(self.response_set.is_empty() && self.response_remove.is_empty())
    }

    pub fn apply_response(&self, headers: &mut HeaderMap) {
        apply(headers, &self.response_remove, &self.response_set);
    }
}

fn apply(
    headers: &mut HeaderMap,
    remove: &[HeaderName],
    set: &[(HeaderName, hyper::header::HeaderValue, bool)],
) {
    for name in remove {
        headers.remove(name);
    }
    for (name, value, append) in set {
        if *append {
            headers.append(name.clone(), value.clone());
        } else {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// How a redirect or rewrite changes the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRewrite {
    /// The whole path becomes this.
    Full(String),
    /// The prefix the route matched becomes this.
    Prefix(String),
}

impl PathRewrite {
    /// The new path for `path`, given the prefix the route matched (`None`: no prefix match).
    pub fn apply(&self, path: &str, matched_prefix: Option<&str>) -> String {
        match self {
            PathRewrite::Full(p) => p.clone(),
            PathRewrite::Prefix(new) => {
                let rest = matched_prefix
                    .and_then(|m| path.strip_prefix(m.trim_end_matches('/')))
                    .unwrap_or(path);
                match (new.trim_end_matches('/'), rest) {
                    ("", "") => "/".to_string(),
                    ("", rest) => rest.to_string(),
                    (base, rest) => format!("{base}{rest}"),
                }
            }
        }
    }
}

impl RequestMatch {
    /// The prefix this match requires of the path, if it is a prefix match.
    pub fn path_prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatch::Prefix(p) | PathMatch::Segments(p) => Some(p),
            _ => None,
        }
    }
}

/// A redirect a route answers with.
#[derive(Debug, Clone)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    pub status: u16,
}

impl Redirect {
    /// The `Location` for a request to `authority` (host[:port]) with `path` and `query`.
    pub fn location(
        &self,
        authority: &str,
        path: &str,
        query: Option<&str>,
        matched_prefix: Option<&str>,
    ) -> String {
        let (req_host, req_port) = match authority.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
            _ => (authority, None),
        };
        let scheme = self.scheme.as_deref().unwrap_or("http");
        let host = self.host.as_deref().unwrap_or(req_host);
        let port = match (self.port, self.scheme.is_some()) {
            (Some(p), _) => Some(p.to_string()),
            // A scheme change drops the request's port (it belonged to the old scheme).
            (None, true) => None,
            (None, false) => req_port.map(str::to_string),
        };
        let default_port = if scheme == "https" { "443" } else { "80" };
        let port = port
            .filter(|p| p != default_port)
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        let path = self
            .path
            .as_ref()
            .map_or_else(|| path.to_string(), |r| r.apply(path, matched_prefix));
        let query = query.map(|q| format!("?{q}")).unwrap_or_default();
        format!("{scheme}://{host}{port}{path}{query}")
    }
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    #[test]
    fn prefix_and_full_path_rewrites() {
        let p = PathRewrite::Prefix("/v2".into());
        assert_eq!(p.apply("/api/users", Some("/api")), "/v2/users");
        assert_eq!(p.apply("/api", Some("/api")), "/v2");
        assert_eq!(
            PathRewrite::Prefix("/".into()).apply("/api/users", Some("/api")),
            "/users"
        );
        assert_eq!(
            PathRewrite::Prefix("/".into()).apply("/api", Some("/api")),
            "/"
        );
        assert_eq!(
            PathRewrite::Full("/new".into()).apply("/old/x", None),
            "/new"
        );
    }

    #[test]
    fn redirect_locations() {
        let r = Redirect {
            scheme: Some("https".into()),
            host: None,
            port: None,
            path: None,
            status: 301,
        };
        assert_eq!(
            r.location("web.default.svc:80", "/a", Some("b=1"), None),
            "https://web.default.svc/a?b=1"
        );
        let r = Redirect {
            scheme: None,
            host: Some("new.example".into()),
            port: Some(8080),
            path: Some(PathRewrite::Prefix("/v2".into())),
            status: 302,
        };
        assert_eq!(
            r.location("web:80", "/api/x", None, Some("/api")),
            "http://new.example:8080/v2/x"
        );
    }

    #[test]
    fn header_edits_set_add_and_remove() {
        let mut h = HeaderMap::new();
        h.insert("x-drop", hyper::header::HeaderValue::from_static("1"));
        h.insert("x-set", hyper::header::HeaderValue::from_static("old"));
        let edits = HeaderEdits {
            request_set: vec![
                (
                    HeaderName::from_static("x-set"),
                    hyper::header::HeaderValue::from_static("new"),
                    false,
                ),
                (
                    HeaderName::from_static("x-set"),
                    hyper::header::HeaderValue::from_static("more"),
                    true,
                ),
            ],
            request_remove: vec![HeaderName::from_static("x-drop")],
            ..Default::default()
        };
        edits.apply_request(&mut h);
        assert!(h.get("x-drop").is_none());
        assert_eq!(
            h.get_all("x-set").iter().collect::<Vec<_>>(),
            vec!["new", "more"]
        );
    }
}
