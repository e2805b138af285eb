//! `mesh-iptables-init`: the rules that redirect a pod's TCP traffic into its sidecar.
//!
//! The crate is split so that everything that decides *what* to install is pure and unit-tested
//! (`config`, `cidr`, `ruleset`, `saved`), and only `backend` and `apply` touch the system.

pub mod apply;
pub mod backend;
pub mod cidr;
pub mod config;
pub mod error;
pub mod ruleset;
pub mod saved;

pub use apply::{Action, Plan, apply_plan, plan};
pub use backend::{Backend, BackendChoice, Family};
pub use cidr::Cidr;
pub use config::{Config, InboundPorts, Ipv6Mode};
pub use error::InitError;
