//! The xDS v3 Aggregated Discovery Service: state-of-the-world ([`sotw`]) and incremental
//! ([`delta`]) streams over the same snapshots.

pub mod delta;
pub mod names;
mod session;
pub mod sotw;
mod stream;

use std::sync::Arc;

use mesh_proto::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::controller::Controller;

/// Responses queued per stream before the stream task waits for the client to read.
const STREAM_BUFFER: usize = 16;

/// The gRPC service; each stream runs as its own task.
#[derive(Debug, Clone)]
pub struct AdsService {
    controller: Arc<Controller>,
    /// The state-of-the-world subscriptions, shared between streams.
    names: Arc<names::NameSets>,
}

impl AdsService {
    pub fn new(controller: Arc<Controller>) -> AdsService {
        AdsService {
            controller,
            names: Arc::default(),
        }
    }

    pub fn into_server(self) -> AggregatedDiscoveryServiceServer<AdsService> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(sotw::serve(
            self.controller.clone(),
            self.names.clone(),
            request.into_inner(),
            tx,
            peer,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(delta::serve(
            self.controller.clone(),
            request.into_inner(),
            tx,
            peer,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
