//! The inbound policy meshd resolves for this workload (`mesh.security.v1.WorkloadPolicy`):
//! whether plaintext from outside the mesh is accepted (PeerAuthentication), and who may call
//! what (AuthorizationPolicy).
//!
//! A DENY policy that matches refuses; otherwise, if any ALLOW policy applies, one of them must
//! match; otherwise the call is allowed. Sources are matched by the peer's authenticated SPIFFE
//! ID, so plaintext callers match no `principals` or `namespaces`. Methods and paths exist only
//! for HTTP: on a TCP connection an ALLOW rule that names them does not match, and a DENY rule
//! that names them does (the safe side for both).

use mesh_proto::mesh::security::v1 as pb;
use mesh_proto::spiffe::SpiffeId;

/// Whether plaintext from outside the mesh is accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MtlsMode {
    #[default]
    Permissive,
    Strict,
}

/// `*`, exact, `prefix*` or `*suffix`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    fn new(p: &str) -> Pattern {
        if p == "*" {
            Pattern::Any
        } else if let Some(prefix) = p.strip_suffix('*') {
            Pattern::Prefix(prefix.to_string())
        } else if let Some(suffix) = p.strip_prefix('*') {
            Pattern::Suffix(suffix.to_string())
        } else {
            Pattern::Exact(p.to_string())
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(e) => s == e,
            Pattern::Prefix(p) => s.starts_with(p.as_str()),
            Pattern::Suffix(x) => s.ends_with(x.as_str()),
        }
    }
}

#[derive(Clone, Debug)]
struct Source {
    principals: Vec<Pattern>,
    namespaces: Vec<Pattern>,
}

#[derive(Clone, Debug)]
struct Operation {
    ports: Vec<u16>,
    methods: Vec<String>,
    paths: Vec<Pattern>,
}

#[derive(Clone, Debug)]
struct Rule {
    from: Vec<Source>,
    to: Vec<Operation>,
}

#[derive(Clone, Debug)]
struct Authorization {
    name: String,
    rules: Vec<Rule>,
}

/// One inbound connection or request, as policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    /// The peer's authenticated identity; none for plaintext.
    pub source: Option<&'a SpiffeId>,
    /// The app port it is for.
    pub port: u16,
    /// Method and path, for an HTTP request.
    pub http: Option<(&'a str, &'a str)>,
}

/// What policy says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Refused; the reason names the policy.
    Deny(String),
}

/// The compiled policy; the default (before meshd sent one) is PERMISSIVE with no rules.
#[derive(Clone, Debug, Default)]
pub struct InboundPolicy {
    pub mode: MtlsMode,
    /// Which resource set the mode.
    pub mode_source: String,
    deny: Vec<Authorization>,
    allow: Vec<Authorization>,
}

impl Source {
    fn matches(&self, source: Option<&SpiffeId>) -> bool {
        let Some(id) = source else {
            return false;
        };
        (self.principals.is_empty() || self.principals.iter().any(|p| p.matches(id.principal())))
            && (self.namespaces.is_empty()
                || self.namespaces.iter().any(|n| n.matches(id.namespace())))
    }
}

impl Operation {
    /// `http_only_matches`: what methods and paths count as on a non-HTTP attempt.
    fn matches(&self, attempt: &Attempt<'_>, http_only_matches: bool) -> bool {
        if !self.ports.is_empty() && !self.ports.contains(&attempt.port) {
            return false;
        }
        match attempt.http {
            Some((method, path)) => {
                (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
                    && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(path)))
            }
            None => (self.methods.is_empty() && self.paths.is_empty()) || http_only_matches,
        }
    }
}

impl Rule {
    fn matches(&self, attempt: &Attempt<'_>, http_only_matches: bool) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(attempt.source)))
            && (self.to.is_empty()
                || self
                    .to
                    .iter()
                    .any(|o| o.matches(attempt, http_only_matches)))
    }
}

impl Authorization {
    fn matches(&self, attempt: &Attempt<'_>, http_only_matches: bool) -> bool {
        self.rules
            .iter()
            .any(|r| r.matches(attempt, http_only_matches))
    }
}

impl InboundPolicy {
    /// Compiles meshd's resource; an unknown enum value is an error (NACK).
    pub fn compile(policy: &pb::WorkloadPolicy) -> Result<InboundPolicy, String> {
        let mode = match pb::MtlsMode::try_from(policy.mtls_mode) {
            Ok(pb::MtlsMode::Permissive) => MtlsMode::Permissive,
            Ok(pb::MtlsMode::Strict) => MtlsMode::Strict,
            Err(_) => return Err(format!("unknown mTLS mode {}", policy.mtls_mode)),
        };
        let mut compiled = InboundPolicy {
            mode,
            mode_source: policy.mtls_source.clone(),
            ..InboundPolicy::default()
        };
        for a in &policy.authorizations {
            let rules = a
                .rules
                .iter()
                .map(|r| {
                    let to = r
                        .to
                        .iter()
                        .map(|o| {
                            let ports = o
                                .ports
                                .iter()
                                .map(|p| {
                                    u16::try_from(*p)
                                        .map_err(|_| format!("{}: port {p} out of range", a.name))
                                })
                                .collect::<Result<_, _>>()?;
                            Ok(Operation {
                                ports,
                                methods: o.methods.clone(),
                                paths: o.paths.iter().map(|p| Pattern::new(p)).collect(),
                            })
                        })
                        .collect::<Result<_, String>>()?;
                    Ok(Rule {
                        from: r
                            .from
                            .iter()
                            .map(|s| Source {
                                principals: s.principals.iter().map(|p| Pattern::new(p)).collect(),
                                namespaces: s.namespaces.iter().map(|n| Pattern::new(n)).collect(),
                            })
                            .collect(),
                        to,
                    })
                })
                .collect::<Result<_, String>>()?;
            let compiled_one = Authorization {
                name: a.name.clone(),
                rules,
            };
            match pb::Action::try_from(a.action) {
                Ok(pb::Action::Allow) => compiled.allow.push(compiled_one),
                Ok(pb::Action::Deny) => compiled.deny.push(compiled_one),
                Err(_) => return Err(format!("{}: unknown action {}", a.name, a.action)),
            }
        }
        Ok(compiled)
    }

    /// Whether `attempt` may go on.
    pub fn check(&self, attempt: &Attempt<'_>) -> Verdict {
        if let Some(deny) = self.deny.iter().find(|a| a.matches(attempt, true)) {
            return Verdict::Deny(format!("denied by AuthorizationPolicy {}", deny.name));
        }
        if self.allow.is_empty() || self.allow.iter().any(|a| a.matches(attempt, false)) {
            return Verdict::Allow;
        }
        let names: Vec<&str> = self.allow.iter().map(|a| a.name.as_str()).collect();
        Verdict::Deny(format!(
            "no ALLOW rule matches (AuthorizationPolicy {})",
            names.join(", ")
        ))
    }

    /// A JSON view for `/config_dump`.
    pub fn dump(&self) -> serde_json::Value {
        serde_json::json!({
            "mtlsMode": match self.mode { MtlsMode::Strict => "STRICT", MtlsMode::Permissive => "PERMISSIVE" },
            "mtlsSource": self.mode_source,
            "allow": self.allow.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            "deny": self.deny.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", ns, sa).expect("id")
    }

    fn policy(authorizations: Vec<pb::Authorization>) -> InboundPolicy {
        InboundPolicy::compile(&pb::WorkloadPolicy {
            name: "shop/web".into(),
            mtls_mode: pb::MtlsMode::Strict as i32,
            mtls_source: "test".into(),
            authorizations,
        })
        .expect("compiles")
    }

    fn rule(principals: &[&str], namespaces: &[&str], paths: &[&str]) -> pb::Rule {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        pb::Rule {
            from: if principals.is_empty() && namespaces.is_empty() {
                vec![]
            } else {
                vec![pb::Source {
                    principals: strings(principals),
                    namespaces: strings(namespaces),
                }]
            },
            to: if paths.is_empty() {
                vec![]
            } else {
                vec![pb::Operation {
                    ports: vec![],
                    methods: vec![],
                    paths: strings(paths),
                }]
            },
        }
    }

    fn authz(name: &str, action: pb::Action, rules: Vec<pb::Rule>) -> pb::Authorization {
        pb::Authorization {
            name: name.into(),
            action: action as i32,
            rules,
        }
    }

    #[test]
    fn allow_policies_admit_only_what_they_name() {
        let p = policy(vec![authz(
            "shop/clients",
            pb::Action::Allow,
            vec![rule(&["cluster.local/ns/shop/sa/client"], &[], &[])],
        )]);
        let client = id("shop", "client");
        let other = id("shop", "other");
        let at = |source, http| Attempt {
            source,
            port: 8080,
            http,
        };
        assert_eq!(p.check(&at(Some(&client), None)), Verdict::Allow);
        assert!(
            matches!(p.check(&at(Some(&other), None)), Verdict::Deny(r) if r.contains("shop/clients"))
        );
        assert!(
            matches!(p.check(&at(None, None)), Verdict::Deny(_)),
            "plaintext has no principal"
        );
    }

    #[test]
    fn deny_wins_and_namespace_wildcards_match() {
        let p = policy(vec![
            authz(
                "shop/anyone-in-shop",
                pb::Action::Allow,
                vec![rule(&[], &["shop"], &[])],
            ),
            authz(
                "shop/no-admin",
                pb::Action::Deny,
                vec![rule(&[], &[], &["/admin*"])],
            ),
        ]);
        let client = id("shop", "client");
        let http = |path| Attempt {
            source: Some(&client),
            port: 80,
            http: Some(("GET", path)),
        };
        assert_eq!(p.check(&http("/items")), Verdict::Allow);
        assert!(
            matches!(p.check(&http("/admin/users")), Verdict::Deny(r) if r.contains("shop/no-admin"))
        );
        // On TCP the path-only DENY counts as matching: the safe side.
        let tcp = Attempt {
            source: Some(&client),
            port: 80,
            http: None,
        };
        assert!(matches!(p.check(&tcp), Verdict::Deny(_)));
        let stranger = id("elsewhere", "client");
        assert!(matches!(
            p.check(&Attempt {
                source: Some(&stranger),
                port: 80,
                http: Some(("GET", "/"))
            }),
            Verdict::Deny(_)
        ));
    }

    #[test]
    fn no_policy_allows_everything_and_principal_patterns_work() {
        assert_eq!(
            InboundPolicy::default().check(&Attempt {
                source: None,
                port: 1,
                http: None
            }),
            Verdict::Allow
        );
        let p = policy(vec![authz(
            "shop/suffix",
            pb::Action::Allow,
            vec![rule(&["*/sa/client"], &[], &[])],
        )]);
        let client = id("any", "client");
        assert_eq!(
            p.check(&Attempt {
                source: Some(&client),
                port: 1,
                http: None
            }),
            Verdict::Allow
        );
    }
}
