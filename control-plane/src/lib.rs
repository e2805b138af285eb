//! The mesh's control plane: `meshd` keeps the desired state, translates it to xDS and streams it
//! to the proxies; `meshctl` is its command-line client.

pub mod parse;
pub mod resource;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod translate;
pub mod validate;
pub mod vip;
pub mod controller;
pub mod node;
pub mod registry;
