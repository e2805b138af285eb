//! Which carriage an HTTP/1.1 request to a peer sidecar takes under `--peer-http1 auto`: one of
//! that peer's pooled HTTP/1.1 connections (`mesh/h1`) while fewer than `limit` requests to it are
//! on them, otherwise its multiplexed HTTP/2 connection (`mesh/h2`).
//!
//! Measured side by side (`benches/RESULTS.md`), HTTP/1.1 between the sidecars costs less per
//! request while requests come one at a time (no HTTP/2 framing, no task per stream), and HTTP/2
//! costs less under load (many requests share each system call). A few slots per peer give the
//! first to light traffic and the second to the rest, and bound the connections a busy peer gets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};

/// The `mesh/h1` slots of every peer: how many requests each has on them now.
#[derive(Debug)]
pub struct Http1Slots {
    limit: usize,
    busy: Mutex<HashMap<IpAddr, usize>>,
}

/// One request's place on a peer's `mesh/h1` connections, given back when dropped.
#[derive(Debug)]
pub struct Http1Slot {
    slots: Arc<Http1Slots>,
    peer: IpAddr,
}

impl Http1Slots {
    /// At most `limit` requests at once per peer on `mesh/h1`.
    pub fn new(limit: usize) -> Arc<Http1Slots> {
        Arc::new(Http1Slots {
            limit,
            busy: Mutex::new(HashMap::new()),
        })
    }

    /// A slot on `peer`'s `mesh/h1` connections, if one is free.
    pub fn try_take(self: &Arc<Self>, peer: IpAddr) -> Option<Http1Slot> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let n = busy.entry(peer).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Http1Slot {
            slots: self.clone(),
            peer,
        })
    }

    /// Requests on `peer`'s `mesh/h1` connections now.
    pub fn busy(&self, peer: IpAddr) -> usize {
        let busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.get(&peer).copied().unwrap_or(0)
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

/// A response body that holds its request's slot until the body is done or dropped: the
/// connection it came on takes no other request until then.
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
    fn a_peer_gets_at_most_limit_slots_and_each_comes_back_when_dropped() {
        let slots = Http1Slots::new(2);
        let a = slots.try_take(PEER).expect("first slot");
        let b = slots.try_take(PEER).expect("second slot");
        assert!(slots.try_take(PEER).is_none(), "the limit is 2");
        assert!(slots.try_take(OTHER).is_some(), "each peer has its own");
        drop(a);
        let c = slots.try_take(PEER).expect("a slot came back");
        drop((b, c));
        assert_eq!(slots.busy(PEER), 0);
    }

    #[tokio::test]
    async fn a_body_gives_its_slot_back_once_read_to_the_end() {
        let slots = Http1Slots::new(1);
        let slot = slots.try_take(PEER).expect("slot");
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
