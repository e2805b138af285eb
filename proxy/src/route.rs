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
