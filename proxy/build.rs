//! Lays out mesh-proxy's code so that what runs sits together: release builds for
//! x86_64-unknown-linux-gnu, where rustc links with its own lld, pass `symbol-order.txt` (written
//! by `scripts/symbol-order.sh`: the functions that ran, hottest first) to the linker. The kernel
//! maps code in 64 KiB windows around each page that runs, so scattered hot functions make
//! nearly the whole text resident; together they keep a sidecar's memory to what it runs.
//! Functions not in the file still link, after the listed ones. `MESH_NO_SYMBOL_ORDER=1` turns
//! this off (for a linker other than lld).
//!
//! The names in the file carry a hash of each crate's build, features included, so they match
//! a build of the whole workspace (`cargo build --release --workspace --bins`, as every script
//! does): `cargo build --release -p mesh-proxy` alone unifies features differently and matched
//! 1239 of 3593 names. `scripts/symbol-order.sh --check` says how many match.
//!
//! The same for read-only data: `data-order.ld` (written by `scripts/data-order.sh`) is a linker
//! script that gathers the input sections the sidecar read into `.rodata.hot`, before `.rodata`.
//! `MESH_LINK_MAP=FILE` writes lld's link map there (scripts/data-order.sh needs it).
//! `MESH_NO_SYMBOL_ORDER=1` turns both orderings off.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-changed=data-order.ld");
    println!("cargo:rerun-if-env-changed=MESH_NO_SYMBOL_ORDER");
    println!("cargo:rerun-if-env-changed=MESH_LINK_MAP");
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
    let data_order = Path::new(&var("CARGO_MANIFEST_DIR")).join("data-order.ld");
    if data_order.is_file() {
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", data_order.display());
    }
    let map = var("MESH_LINK_MAP");
    if !map.is_empty() {
        println!("cargo:rustc-link-arg-bins=-Wl,-Map={map}");
    }
}
