//! The loop both ADS variants share: start the session on the first request, then handle each
//! request and each new snapshot until the proxy goes away.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use super::requests::Requests;
use mesh_proto::envoy::config::core::v3::Node;

use super::session::Session;
use crate::controller::Controller;
use crate::snapshot::Snapshot;

/// What differs between state-of-the-world and delta streams.
pub(crate) trait AdsStream: Send {
    type Request: mesh_proto::prost::Message + Default + Send + 'static;
    /// `sotw` or `delta`, as `meshctl proxies` shows it.
    const PROTOCOL: &'static str;

    fn node(request: &Self::Request) -> Option<&Node>;
    fn session_slot(&mut self) -> &mut Option<Session>;
    /// Handles one request; false ends the stream.
    fn on_request(
        &mut self,
        request: Self::Request,
        snapshot: &Snapshot,
    ) -> impl Future<Output = bool> + Send;
    /// Pushes what a new snapshot changed; false ends the stream.
    fn on_snapshot(&mut self, snapshot: &Snapshot) -> impl Future<Output = bool> + Send;
}

/// Serves one stream until the proxy goes away or a response cannot be sent.
pub(crate) async fn drive<S: AdsStream>(
    controller: Arc<Controller>,
    mut requests: Requests<S::Request>,
    mut stream: S,
    peer: Option<SocketAddr>,
) {
    let mut snapshots = controller.subscribe();
    let stopped = controller.stopped();
    tokio::pin!(stopped);
    loop {
        let ok = tokio::select! {
            request = requests.message() => match request {
                Ok(Some(request)) => {
                    if stream.session_slot().is_none() {
                        *stream.session_slot() = Some(Session::start(&controller, S::node(&request), S::PROTOCOL, peer));
                    }
                    let snapshot = snapshots.borrow().clone();
                    // Boxed, as below: a push's state (kilobytes) is allocated while it runs,
                    // not held in every idle stream's task.
                    Box::pin(stream.on_request(request, &snapshot)).await
                }
                Ok(None) => false,
                Err(status) => {
                    tracing::debug!(%status, protocol = S::PROTOCOL, "xDS stream ended with an error");
                    false
                }
            },
            changed = snapshots.changed() => {
                let snapshot = snapshots.borrow_and_update().clone();
                changed.is_ok() && Box::pin(stream.on_snapshot(&snapshot)).await
            }
            () = &mut stopped => false,
        };
        if !ok {
            break;
        }
    }
}
