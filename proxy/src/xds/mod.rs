//! Following a control plane over xDS v3 ADS (state of the world).
//!
//! [`Xds`] is what the rest of the proxy reads: the compiled [`Routing`] behind an `ArcSwap`
//! (one atomic load per connection), readiness, and what `/config_dump` shows. [`client`]
//! keeps it up to date.

pub mod client;
pub mod resources;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

use arc_swap::ArcSwap;
use serde_json::{Value, json};

use crate::balance::EndpointRegistry;
use crate::request_metrics::RequestRegistry;
use crate::routing::Routing;

/// Per type: the version in force and the last refusal.
#[derive(Debug, Default, Clone)]
pub struct TypeState {
    pub acked_version: Option<String>,
    pub last_nack: Option<String>,
}

/// The proxy's view of its control plane.
#[derive(Debug)]
pub struct Xds {
    pub routing: ArcSwap<Routing>,
    /// This workload's inbound policy (PERMISSIVE, no rules, until meshd sends one).
    pub policy: ArcSwap<crate::authz::InboundPolicy>,
    /// Request counters of every route this proxy has routed by.
    pub requests: RequestRegistry,
    /// Request counters of what peers sent to this pod's apps, by Service.
    pub inbound_requests: RequestRegistry,
    /// Balancer state of every endpoint, kept across configuration updates.
    pub endpoints: EndpointRegistry,
    ready: watch::Sender<bool>,
    connected: AtomicBool,
    types: Mutex<BTreeMap<&'static str, TypeState>>,
    server: Option<String>,
}

impl Xds {
    /// With no control plane, the proxy is ready at once and routes nothing (passthrough).
    pub fn standalone() -> Xds {
        Xds {
            routing: ArcSwap::from_pointee(Routing::default()),
            policy: ArcSwap::from_pointee(crate::authz::InboundPolicy::default()),
            requests: RequestRegistry::default(),
            inbound_requests: RequestRegistry::default(),
            endpoints: EndpointRegistry::default(),
            ready: watch::channel(true).0,
            connected: AtomicBool::new(false),
            types: Mutex::new(BTreeMap::new()),
            server: None,
        }
    }

    /// Following `server`: not ready until the first complete configuration has arrived.
    pub fn following(server: String) -> Xds {
        Xds {
            server: Some(server),
            ready: watch::channel(false).0,
            ..Xds::standalone()
        }
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Returns once the first complete configuration is in force.
    pub async fn wait_ready(&self) {
        // The sender lives in `self`, so the wait cannot end in an error.
        let _ = self.ready.subscribe().wait_for(|ready| *ready).await;
    }

    pub(crate) fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    pub(crate) fn update_type(&self, short: &'static str, f: impl FnOnce(&mut TypeState)) {
        let mut types = self.types.lock().unwrap_or_else(|e| e.into_inner());
        f(types.entry(short).or_default());
    }

    /// The JSON of `/config_dump`.
    pub fn dump(&self) -> Value {
        let types = self.types.lock().unwrap_or_else(|e| e.into_inner()).clone();
        json!({
            "controlPlane": self.server,
            "connected": self.connected.load(Ordering::Relaxed),
            "ready": self.is_ready(),
            "types": types.iter().map(|(k, t)| (k.to_string(), json!({
                "ackedVersion": t.acked_version,
                "lastNack": t.last_nack,
            }))).collect::<serde_json::Map<_, _>>(),
            "services": self.routing.load().dump(),
            "inboundPolicy": self.policy.load().dump(),
        })
    }
}
