//! The mesh's control plane: `meshd` keeps the desired state, translates it to xDS and streams it
//! to the proxies; `meshctl` is its command-line client.

pub mod ads;
pub mod api;
pub mod ca;
pub mod client;
pub mod controller;
pub mod meshctl;
pub mod metrics;
pub mod node;
pub mod parse;
pub mod registry;
pub mod resource;
pub mod security;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod store;
pub mod translate;
pub mod validate;
pub mod vip;
