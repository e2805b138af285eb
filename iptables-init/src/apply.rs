//! Turning a config into per-family steps, and carrying them out all-or-nothing.

use std::path::Path;

use crate::backend::{self, Backend, Family};
use crate::config::{Config, Ipv6Mode};
use crate::error::InitError;
use crate::ruleset;
use crate::saved::SavedNat;

/// Install the rules, or remove them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Apply,
    Cleanup,
}

/// What will be done for one address family.
#[derive(Clone, Debug)]
pub struct Step {
    pub family: Family,
    pub restore_program: String,
    /// `iptables-restore --noflush` input; `None` when there is nothing to do.
    pub input: Option<String>,
    /// The nat table before the change, to roll back to if a later step fails.
    pub nat_before: Option<String>,
    /// Why the current state could not be read (only tolerated for a dry run).
    pub note: Option<String>,
}

/// Every step of one run, in order (IPv4 first).
#[derive(Clone, Debug)]
pub struct Plan {
    pub backend: Backend,
    pub steps: Vec<Step>,
}

impl Plan {
    /// The exact restore input for each family, as `--dry-run` prints it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for step in &self.steps {
            out.push_str(&format!(
                "# {} ({} --noflush)\n",
                step.family.label(),
                step.restore_program
            ));
            if let Some(note) = &step.note {
                out.push_str(&format!("# {note}\n"));
            }
            match &step.input {
                Some(input) => out.push_str(input),
                None => out.push_str("# nothing to do\n"),
            }
        }
        out
    }
}

/// Reads the current state of every family and computes the steps. With `tolerate_unreadable`
/// (dry run), a state that cannot be read is treated as empty and noted.
pub fn plan(
    config: &Config,
    action: Action,
    backend: Backend,
    ipv6: Ipv6Mode,
    tolerate_unreadable: bool,
) -> Result<Plan, InitError> {
    let mut steps = Vec::new();
    for family in families(backend, ipv6)? {
        let (nat_before, note) =
            match backend::run(&backend.save_program(family), &["-t", "nat"], None) {
                Ok(text) => (Some(text), None),
                Err(e) if tolerate_unreadable => (
                    None,
                    Some(format!("current rules unreadable ({e}); assuming none")),
                ),
                Err(e) => return Err(e),
            };
        let saved = nat_before
            .as_deref()
            .map(SavedNat::parse)
            .unwrap_or_default();
        let input = match action {
            Action::Apply => Some(ruleset::render_apply(config, family, &saved)),
            Action::Cleanup => ruleset::render_cleanup(&saved),
        };
        steps.push(Step {
            family,
            restore_program: backend.restore_program(family),
            input,
            nat_before,
            note,
        });
    }
    Ok(Plan { backend, steps })
}

/// Runs every step; if one fails, the families already changed are put back as they were.
pub fn apply_plan(plan: &Plan) -> Result<(), InitError> {
    for (i, step) in plan.steps.iter().enumerate() {
        let Some(input) = &step.input else { continue };
        if let Err(err) = backend::run(&step.restore_program, &["--noflush"], Some(input)) {
            roll_back(&plan.steps[..i]);
            return Err(err);
        }
    }
    Ok(())
}

fn roll_back(done: &[Step]) {
    for step in done.iter().rev() {
        if let (Some(_), Some(before)) = (&step.input, &step.nat_before) {
            // Without --noflush, restoring the saved nat table replaces it atomically.
            if let Err(e) = backend::run(&step.restore_program, &["-T", "nat"], Some(before)) {
                eprintln!("rollback of {} rules failed: {e}", step.family.label());
            }
        }
    }
}

fn families(backend: Backend, ipv6: Ipv6Mode) -> Result<Vec<Family>, InitError> {
    let v6 = match ipv6 {
        Ipv6Mode::Off => false,
        Ipv6Mode::On => {
            let program = backend.restore_program(Family::V6);
            if !backend::on_path(&program) {
                return Err(InitError::NoIp6tables { program });
            }
            true
        }
        Ipv6Mode::Auto => has_global_ipv6(Path::new("/proc/self/net/if_inet6"))?,
    };
    Ok(if v6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    })
}

/// Whether the current network namespace has a global-scope IPv6 address.
fn has_global_ipv6(if_inet6: &Path) -> Result<bool, InitError> {
    match std::fs::read_to_string(if_inet6) {
        Ok(text) => Ok(parse_has_global(&text)),
        // No IPv6 in this kernel or namespace.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(InitError::Read {
            path: if_inet6.to_path_buf(),
            source,
        }),
    }
}

/// `/proc/net/if_inet6` lines: address, ifindex, prefix length, scope, flags, name. Scope 00 is global.
fn parse_has_global(text: &str) -> bool {
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .any(|scope| scope == "00")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_ipv6_detection() {
        let lo_and_link_local = "\
00000000000000000000000000000001 01 80 10 80       lo
fe800000000000000000000000000001 02 40 20 80     eth0
";
        assert!(!parse_has_global(lo_and_link_local));
        let with_global =
            format!("{lo_and_link_local}fd000000000000000000000000000002 02 40 00 80     eth0\n");
        assert!(parse_has_global(&with_global));
    }
}
