//! A process started in a pod, killed when dropped, with its output kept in a log file.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

/// A running process; dropping it kills it.
#[derive(Debug)]
pub struct Process {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    pub(crate) fn new(name: String, child: Child, log: PathBuf) -> Process {
        Process { name, child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) -> anyhow::Result<()> {
        crate::cmd::run("kill", &["-TERM", &self.pid().to_string()]).map(|_| ())
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "{} did not exit within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the process wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("(no log at {}: {e})", self.log.display()))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log_text());
        }
    }
}

/// Waits until the child prints a line starting with `ready` on stdout; the rest of its stdout
/// goes to `log`.
pub(crate) fn wait_ready_line(
    child: &mut Child,
    log: &std::fs::File,
    timeout: Duration,
) -> anyhow::Result<()> {
    let stdout = child.stdout.take().context("child stdout was not piped")?;
    let mut log = log.try_clone()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let mut sent = false;
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            use std::io::Write;
            let _ = log.write_all(line.as_bytes());
            if !sent && line.starts_with("ready") {
                let _ = tx.send(());
                sent = true;
            }
            line.clear();
        }
    });
    rx.recv_timeout(timeout)
        .map_err(|_| anyhow::anyhow!("the process did not print `ready` within {timeout:?}"))
}
