//! Lays out mesh-proxy's code so that what runs sits together: release builds for
//! x86_64-unknown-linux-gnu, where rustc links with its own lld, pass `symbol-order.txt` (written
//! by `scripts/symbol-order.sh`: the functions that ran, hottest first) to the linker. The kernel
//! maps code in 64 KiB windows around each page that runs, so scattered hot functions make
//! nearly the whole text resident; together they keep a sidecar's memory to what it runs.
//! Functions not in the file still link, after the listed ones. `MESH_NO_SYMBOL_ORDER=1` turns
//! this off (for a linker other than lld).

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-env-changed=MESH_NO_SYMBOL_ORDER");
    let var = |name: &str| env::var(name).unwrap_or_default();
    let lld_target = var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu";
    if var("PROFILE") != "release" || !lld_target || !var("MESH_NO_SYMBOL_ORDER").is_empty() {
        return;
    }
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join("symbol-order.txt");
    if order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
