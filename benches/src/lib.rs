//! The mesh's benchmarks.
//!
//! - `benches/contenders/`: the mesh as contenders of the shared load harness (`../shared/bench`),
//!   side by side with nginx and haproxy.
//! - `benches/benches/`: criterion micro-benchmarks of the proxy's hot paths.
//! - `mesh-cp-scale` (this crate's binary): the control-plane scale benchmark, built from the
//!   modules here: a real [`meshd`] process, [`http1`] to its API, simulated sidecars in
//!   [`ads_sim`], and [`proc_stats`] for its CPU and memory.

pub mod ads_sim;
pub mod http1;
pub mod meshd;
pub mod proc_stats;
