//! Running commands, with errors that show the command and its output.

use std::process::{Command, Output};

use anyhow::{Context, bail};

/// Runs `program args...` and fails with its stderr unless it exits 0.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<Output> {
    let out = output(Command::new(program).args(args))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs a command and returns its output whatever the exit status.
pub fn output(cmd: &mut Command) -> anyhow::Result<Output> {
    cmd.output().with_context(|| format!("cannot run {cmd:?}"))
}

/// The standard output as a string.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
