//! Errors of the init step. Each says what failed and what to do next.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "`{program}` was not found on PATH: install iptables (on Debian: `apt-get install -y iptables`)"
    )]
    Missing { program: String },

    #[error(
        "`{program}` was refused access to the firewall ({detail}): run the init step as root \
         or with the NET_ADMIN capability in the pod's network namespace"
    )]
    NotPermitted { program: String, detail: String },

    #[error(
        "`{program}` failed with {status}: {stderr}\n--- input that was rejected (nothing was applied) ---\n{input}"
    )]
    Rejected {
        program: String,
        status: String,
        stderr: String,
        input: String,
    },

    #[error("`{program}` failed with {status}: {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },

    #[error("could not run `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "IPv6 was requested (--ipv6 on) but `{program}` is not available: install iptables (it ships ip6tables)"
    )]
    NoIp6tables { program: String },

    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
