//! Pod test harness: every pod is a Linux network namespace with a veth into a bridge that lives
//! in a namespace of its own, so the host's interfaces and routes are never touched.
//!
//! Names carry the test process id and a counter, so tests run in parallel; namespaces and
//! processes are removed on drop, also when a test panics, and leftovers of killed test runs are
//! swept when the next network is made.

pub mod binaries;
pub mod cmd;
pub mod fixtures;
pub mod identity;
pub mod network;
pub mod pattern;
pub mod pod;
pub mod process;

pub use network::{IpFamilies, Network};
pub use pod::Pod;
pub use process::Process;
