//! The xDS v3 Aggregated Discovery Service: state-of-the-world ([`sotw`]) and incremental
//! ([`delta`]) streams over the same snapshots.

mod budget;
pub mod delta;
mod grpc;
pub mod names;
mod requests;
mod response;
mod session;
pub mod sotw;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_proto::{DeltaDiscoveryRequest, DiscoveryRequest};
use requests::Requests;

pub use budget::Budget;
pub use grpc::AdsServer;
pub(crate) use grpc::Responses;

use crate::controller::Controller;

/// Responses queued per stream before the stream task waits for the client to read.
const STREAM_BUFFER: usize = 16;
/// The response bytes in flight across all streams (see [`budget`]): the largest responses of
/// a 1000-Service mesh (about 0.8 MB) five at a time. With 1000 first syncs at once, in plain
/// arrival order (before a first sync kept its place), 16, 8, 4 and 2 MiB gave peaks of 129,
/// 115, 106 and 100 MiB, and 4 MiB the quickest syncs.
pub const RESPONSE_BUDGET: usize = 4 * 1024 * 1024;

/// The two kinds of ADS streams; each stream runs as its own task.
#[derive(Debug, Clone)]
pub struct AdsService {
    controller: Arc<Controller>,
    /// The subscriptions (sets of names), shared between streams.
    names: Arc<names::NameSets>,
    budget: Arc<Budget>,
}

impl AdsService {
    pub fn new(controller: Arc<Controller>) -> AdsService {
        AdsService {
            controller,
            names: Arc::default(),
            budget: Arc::new(Budget::new(RESPONSE_BUDGET)),
        }
    }

    pub fn into_server(self) -> AdsServer {
        AdsServer::new(self)
    }

    fn spawn_sotw(
        &self,
        requests: Requests<DiscoveryRequest>,
        tx: Responses,
        peer: Option<SocketAddr>,
    ) {
        tokio::spawn(sotw::serve(
            self.controller.clone(),
            self.names.clone(),
            self.budget.clone(),
            requests,
            tx,
            peer,
        ));
    }

    fn spawn_delta(
        &self,
        requests: Requests<DeltaDiscoveryRequest>,
        tx: Responses,
        peer: Option<SocketAddr>,
    ) {
        tokio::spawn(delta::serve(
            self.controller.clone(),
            self.names.clone(),
            self.budget.clone(),
            requests,
            tx,
            peer,
        ));
    }
}
