//! Which iptables implementation to drive (nf_tables or legacy x_tables) and running its tools.
//!
//! A host where kube-proxy or another agent already uses one backend must get our rules in the same
//! backend, or the two sets of rules are evaluated independently. Detection follows the usual
//! heuristic: the backend that already holds rules wins; with none anywhere, nft if available.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::InitError;

/// Address family: iptables or ip6tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn label(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    fn base(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// What the user asked for with `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    Auto,
    Nft,
    Legacy,
}

/// A resolved backend: which binaries to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
    /// Only the unsuffixed `iptables-restore` exists; use whatever it is.
    Unsuffixed,
}

impl Backend {
    fn suffix(self) -> &'static str {
        match self {
            Backend::Nft => "-nft",
            Backend::Legacy => "-legacy",
            Backend::Unsuffixed => "",
        }
    }

    pub fn restore_program(self, family: Family) -> String {
        format!("{}{}-restore", family.base(), self.suffix())
    }

    pub fn save_program(self, family: Family) -> String {
        format!("{}{}-save", family.base(), self.suffix())
    }

    /// Picks the backend for `choice`, probing the system when `choice` is `Auto`.
    pub fn resolve(choice: BackendChoice) -> Result<Backend, InitError> {
        match choice {
            BackendChoice::Nft => Ok(Backend::Nft),
            BackendChoice::Legacy => Ok(Backend::Legacy),
            BackendChoice::Auto => detect(),
        }
    }
}

fn detect() -> Result<Backend, InitError> {
    let nft = count_rules(Backend::Nft);
    let legacy = count_rules(Backend::Legacy);
    match (nft, legacy) {
        (_, Some(l)) if l > 0 && nft.unwrap_or(0) == 0 => Ok(Backend::Legacy),
        (Some(_), _) => Ok(Backend::Nft),
        (None, Some(_)) => Ok(Backend::Legacy),
        (None, None) => {
            let program = Backend::Unsuffixed.save_program(Family::V4);
            if on_path(&program) {
                Ok(Backend::Unsuffixed)
            } else {
                Err(InitError::Missing { program })
            }
        }
    }
}

/// Number of rules in the backend's IPv4 tables; `None` if its tools are missing or unusable.
fn count_rules(backend: Backend) -> Option<usize> {
    let program = backend.save_program(Family::V4);
    let out = Command::new(&program).stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .count(),
    )
}

/// Whether `program` can be found on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Runs `program args...` with `input` on stdin and returns its stdout.
pub fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, InitError> {
    if !on_path(program) {
        return Err(InitError::Missing {
            program: program.to_string(),
        });
    }
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| InitError::Spawn {
            program: program.to_string(),
            source,
        })?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A write error here shows up again as a failed exit status with the tool's message.
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| InitError::Spawn {
            program: program.to_string(),
            source,
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let status = out.status.to_string();
    if is_permission_error(&stderr) {
        return Err(InitError::NotPermitted {
            program: program.to_string(),
            detail: stderr,
        });
    }
    Err(match input {
        Some(input) => InitError::Rejected {
            program: program.to_string(),
            status,
            stderr,
            input: input.to_string(),
        },
        None => InitError::Failed {
            program: program.to_string(),
            status,
            stderr,
        },
    })
}

fn is_permission_error(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    s.contains("permission denied")
        || s.contains("operation not permitted")
        || s.contains("you must be root")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names() {
        assert_eq!(
            Backend::Nft.restore_program(Family::V4),
            "iptables-nft-restore"
        );
        assert_eq!(
            Backend::Legacy.save_program(Family::V6),
            "ip6tables-legacy-save"
        );
        assert_eq!(
            Backend::Unsuffixed.restore_program(Family::V6),
            "ip6tables-restore"
        );
    }

    #[test]
    fn permission_errors_are_recognised() {
        assert!(is_permission_error(
            "iptables-restore v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)"
        ));
        assert!(!is_permission_error("Bad argument `foo'"));
    }
}
