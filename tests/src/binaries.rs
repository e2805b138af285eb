//! Where the binaries under test are.
//!
//! The proxy runs as uid 1337, which may not be allowed to traverse the checkout, so the
//! binaries are linked (or copied) once per test process into a world-readable directory under
//! /tmp.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, bail};

/// The directory cargo put the workspace binaries in (`target/<host>/debug` or `.../release`).
fn build_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MESH_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    // Test executables live in target/<host>/<profile>/deps/.
    let exe = std::env::current_exe().context("cannot find the test executable")?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("unexpected test executable location")
}

/// Path of a workspace binary, copied so that any uid can run it.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("mesh-tests-bin-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            Ok(dir)
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("cannot make the binary directory: {e}"))?;
    let dest = dir.join(name);
    if !dest.exists() {
        let src = build_dir()?.join(name);
        if !src.exists() {
            bail!(
                "{} not found: build the binaries first with `cargo build --workspace --bins` \
                 (scripts/test.sh does), or set MESH_BIN_DIR",
                src.display()
            );
        }
        let tmp = dir.join(format!("{name}.tmp{:?}", std::thread::current().id()));
        // A hard link where /tmp is on the checkout's filesystem: a copy is open for writing
        // while it is made, and a process another test thread forks meanwhile inherits that
        // descriptor until it execs, so running the copy can fail with ETXTBSY ("Text file
        // busy"; seen once in the suite). A link is never open for writing.
        if std::fs::hard_link(&src, &tmp).is_err() {
            std::fs::copy(&src, &tmp).with_context(|| format!("cannot copy {}", src.display()))?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &dest)?;
    }
    Ok(dest)
}

/// Removes the binary copies of test processes that no longer run.
pub fn sweep_stale_copies() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("mesh-tests-bin-")
            .and_then(|p| p.parse::<u32>().ok())
        {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}
