//! Which carriage an HTTP/1.1 request to a peer sidecar takes under `--peer-http1 auto`: one of
//! that peer's pooled HTTP/1.1 connections (`mesh/h1`) while fewer than `limit` of the clients'
//! HTTP/1.1 requests to it are in flight, on either carriage; its multiplexed HTTP/2 connection
//! (`mesh/h2`) otherwise.
//!
//! Measured side by side (`benches/RESULTS.md`), HTTP/1.1 between the sidecars costs less per
//! request while requests come one at a time (no HTTP/2 framing, no task per stream), and HTTP/2
//! costs less under load (many requests share each system call). Counting the requests on both
//! carriages sends a busy peer nearly everything in HTTP/2: counting only those on `mesh/h1`,
//! each freed place went to the next request however many were in HTTP/2 at the time
//! (`benches/carriage-share.sh`: 9.8% of the requests on `mesh/h1` under `wrk -c50` before, 4.7%
//! now, when the count dips below the limit). At most `limit` requests are ever on `mesh/h1`, so
//! a peer gets at most `limit` such connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};

/// The clients' HTTP/1.1 requests in flight to every peer, on either carriage.
#[derive(Debug)]
pub struct Http1Slots {
    limit: usize,
    busy: Mutex<HashMap<IpAddr, usize>>,
}

/// One request in flight to a peer, counted until dropped; `on_http1` says which carriage it
/// takes.
#[derive(Debug)]
pub struct Http1Slot {
    slots: Arc<Http1Slots>,
    peer: IpAddr,
    on_http1: bool,
}

impl Http1Slots {
    /// `mesh/h1` while fewer than `limit` requests are in flight to the peer.
    pub fn new(limit: usize) -> Arc<Http1Slots> {
        Arc::new(Http1Slots {
            limit,
            busy: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one more request to `peer`: on `mesh/h1` when fewer than the limit were in flight.
    pub fn take(self: &Arc<Self>, peer: IpAddr) -> Http1Slot {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let n = busy.entry(peer).or_insert(0);
        let on_http1 = *n < self.limit;
        *n += 1;
        Http1Slot {
            slots: self.clone(),
            peer,
            on_http1,
        }
    }

    /// Requests in flight to `peer` now.
    pub fn busy(&self, peer: IpAddr) -> usize {
        let busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.get(&peer).copied().unwrap_or(0)
    }
}

impl Http1Slot {
    /// Whether this request goes on `mesh/h1`.
    pub fn on_http1(&self) -> bool {
        self.on_http1
    }
}

impl Drop for Http1Slot {
    fn drop(&mut self) {
        let mut busy = self.slots.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = busy.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                busy.remove(&self.peer);
            }
        }
    }
}

/// A response body that holds its request's slot until the body is done or dropped: until then
/// the request is in flight (and a `mesh/h1` connection it came on takes no other).
#[derive(Debug)]
pub struct SlotBody<B> {
    inner: B,
    slot: Option<Http1Slot>,
}

impl<B> SlotBody<B> {
    pub fn new(inner: B, slot: Http1Slot) -> SlotBody<B> {
        SlotBody {
            inner,
            slot: Some(slot),
        }
    }
}

impl<B: Body + Unpin> Body for SlotBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.slot = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 8));

    #[test]
    fn http1_while_fewer_than_limit_are_in_flight_on_either_carriage() {
        let slots = Http1Slots::new(2);
        let a = slots.take(PEER);
        let b = slots.take(PEER);
        let c = slots.take(PEER);
        assert!(a.on_http1() && b.on_http1(), "the first 2 go on mesh/h1");
        assert!(!c.on_http1(), "the limit is 2: the third goes in HTTP/2");
        assert!(slots.take(OTHER).on_http1(), "each peer has its own count");
        drop(a);
        assert!(
            !slots.take(PEER).on_http1(),
            "b and c are in flight, and one of them in HTTP/2: still busy"
        );
        drop(c);
        let d = slots.take(PEER);
        assert!(d.on_http1(), "one in flight: below the limit again");
        drop((b, d));
        assert_eq!(slots.busy(PEER), 0);
    }

    #[tokio::test]
    async fn a_body_gives_its_slot_back_once_read_to_the_end() {
        let slots = Http1Slots::new(1);
        let slot = slots.take(PEER);
        let mut body = SlotBody::new(Full::new(bytes::Bytes::from_static(b"ok")), slot);
        let first = body.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok().as_deref(), Some(&b"ok"[..]));
        assert_eq!(slots.busy(PEER), 1, "held while the body is not done");
        assert!(body.frame().await.is_none());
        assert_eq!(
            slots.busy(PEER),
            0,
            "given back at the end, before the drop"
        );
        drop(body);
        assert_eq!(slots.busy(PEER), 0);
    }
}
