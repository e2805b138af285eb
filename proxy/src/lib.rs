//! `mesh-proxy`: the sidecar.
//!
//! A connection enters through a [`listener`] (outbound or inbound), its real destination is read
//! back with [`orig_dst`], [`forward`] decides where it goes (or refuses a loop) and [`relay`] moves
//! the bytes, counted in [`metrics`]. [`admin`] serves readiness, metrics and shutdown; [`drain`]
//! coordinates a graceful stop. [`xds`] follows the control plane and keeps the [`routing`]
//! table that outbound connections to a Service's virtual IP are balanced by. [`identity`] holds the workload certificate that [`tls`] uses between sidecars. [`app`] wires these together from a [`config::ProxyConfig`].

pub mod addr_map;
pub mod admin;
pub mod app;
pub mod authz;
pub mod balance;
pub mod batch_copy;
pub mod body;
pub mod compact_head;
pub mod config;
pub mod detect;
pub mod drain;
pub mod forward;
pub mod hop;
pub mod http;
pub mod http1_client;
pub mod http1_server;
pub mod http2_body;
pub mod http2_client;
pub mod http2_server;
pub mod identity;
pub mod io;
pub mod listener;
pub mod local_hop;
pub mod meshd;
pub mod metrics;
pub mod mux;
pub mod orig_dst;
pub mod peer;
pub mod peer_carriage;
pub mod peer_client;
pub mod pool;
pub mod raw_head;
pub mod read_ahead;
pub mod relay;
pub mod request_metrics;
pub mod resident;
pub mod route;
pub mod routing;
pub mod tls;
pub mod xds;

pub use app::{ProxyError, run};
pub use config::ProxyConfig;
