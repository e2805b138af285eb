//! Which carriage an HTTP/1.1 request to a peer sidecar takes under `--peer-http1 auto`: one of
//! that peer's pooled HTTP/1.1 connections (`mesh/h1`) while fewer than `limit` of the clients'
//! HTTP/1.1 requests to it are in flight, on either carriage, and no request found `limit` in
//! flight within the last [`BUSY_HOLD`]; a stream of its multiplexed connection otherwise
//! (`mesh/mux`, see [`crate::mux`]; `mesh/h2`, HTTP/2, until 2026-12-05). Below, "in HTTP/2"
//! means that multiplexed carriage.
//!
//! Measured side by side (`benches/RESULTS.md`), HTTP/1.1 between the sidecars costs less per
//! request while requests come one at a time (no HTTP/2 framing, no task per stream), and HTTP/2
//! costs less under load (many requests share each system call). Counting the requests on both
//! carriages sends a busy peer nearly everything in HTTP/2: counting only those on `mesh/h1`,
//! each freed place went to the next request however many were in HTTP/2 at the time
//! (`benches/carriage-share.sh`: 9.8% of the requests on `mesh/h1` under `wrk -c50`). Counting
//! both still left 4.7% there, taken each time the count dipped between waves of responses;
//! the hold keeps a busy peer in HTTP/2 through those dips. At most `limit` requests are ever on `mesh/h1`, so
//! a peer gets at most `limit` such connections.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, SizeHint};

use crate::addr_map::AddrMap;

/// How long a peer stays in HTTP/2 after a request last found `limit` in flight. Under load the
/// count dips below the limit between waves of responses (a sidecar finishes a batch of them
/// in one pass before it reads the next requests); without this hold, the first requests of
/// every wave went on `mesh/h1`. Requests one at a time never reach the limit, so they keep
/// `mesh/h1`.
pub const BUSY_HOLD: Duration = Duration::from_millis(20);

/// The clients' HTTP/1.1 requests in flight to every peer, on either carriage.
#[derive(Debug)]
pub struct Http1Slots {
    limit: usize,
    peers: Mutex<Peers>,
}

/// The peers with requests in flight or held busy. An idle peer's entry goes when its last
/// request ends after its hold; one that ended within the hold stays until the next sweep,
/// which runs when the map has doubled since the last.
#[derive(Debug, Default)]
struct Peers {
    loads: AddrMap<IpAddr, PeerLoad>,
    sweep_at: usize,
}

impl Peers {
    const FIRST_SWEEP: usize = 64;

    fn load(&mut self, peer: IpAddr, now: Instant) -> &mut PeerLoad {
        // The length first: it is nearly always below the mark, and then the peer is hashed
        // once, by the entry below.
        if self.loads.len() >= self.sweep_at && !self.loads.contains_key(&peer) {
            self.loads
                .retain(|_, load| load.in_flight > 0 || load.busy_at(now));
            self.sweep_at = (2 * self.loads.len()).max(Peers::FIRST_SWEEP);
        }
        self.loads.entry(peer).or_default()
    }
}

/// One peer's requests in flight, and until when it counts as busy.
#[derive(Debug, Default)]
struct PeerLoad {
    in_flight: usize,
    busy_until: Option<Instant>,
}

impl PeerLoad {
    fn busy_at(&self, now: Instant) -> bool {
        self.busy_until.is_some_and(|until| now < until)
    }

    /// [`PeerLoad::busy_at`] now; the clock is read only for a peer that was held busy.
    fn busy_now(&self) -> bool {
        self.busy_until.is_some_and(|until| Instant::now() < until)
    }
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
    /// `mesh/h1` while fewer than `limit` requests are in flight to the peer and none found
    /// `limit` in flight within [`BUSY_HOLD`].
    pub fn new(limit: usize) -> Arc<Http1Slots> {
        Arc::new(Http1Slots {
            limit,
            peers: Mutex::new(Peers::default()),
        })
    }

    /// Counts one more request to `peer`; see [`Http1Slots::take_at`].
    pub fn take(self: &Arc<Self>, peer: IpAddr) -> Http1Slot {
        self.take_at(peer, Instant::now())
    }

    /// Counts one more request to `peer` at `now`: on `mesh/h1` when fewer than the limit were
    /// in flight and the peer was not busy; one that finds the limit makes it busy for
    /// [`BUSY_HOLD`].
    pub fn take_at(self: &Arc<Self>, peer: IpAddr, now: Instant) -> Http1Slot {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let load = peers.load(peer, now);
        let at_limit = load.in_flight >= self.limit;
        let on_http1 = !at_limit && !load.busy_at(now);
        load.in_flight += 1;
        if at_limit {
            load.busy_until = Some(now + BUSY_HOLD);
        }
        Http1Slot {
            slots: self.clone(),
            peer,
            on_http1,
        }
    }

    /// Requests in flight to `peer` now.
    pub fn busy(&self, peer: IpAddr) -> usize {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.loads.get(&peer).map_or(0, |load| load.in_flight)
    }

    /// How many peers have an entry (requests in flight, or held busy, or not yet swept).
    pub fn tracked(&self) -> usize {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.loads.len()
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
        let mut peers = self.slots.peers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(load) = peers.loads.get_mut(&self.peer) else {
            return;
        };
        load.in_flight = load.in_flight.saturating_sub(1);
        if load.in_flight == 0 && !load.busy_now() {
            peers.loads.remove(&self.peer);
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
        let slots = Http1Slots::new(3);
        let t0 = Instant::now();
        let first: Vec<_> = (0..3).map(|_| slots.take_at(PEER, t0)).collect();
        assert!(
            first.iter().all(Http1Slot::on_http1),
            "the first 3 go on mesh/h1"
        );
        assert!(
            slots.take_at(OTHER, t0).on_http1(),
            "each peer has its own count"
        );
        let d = slots.take_at(PEER, t0);
        assert!(!d.on_http1(), "the limit is 3: the fourth goes in HTTP/2");
        let mut first = first.into_iter();
        drop(first.next());
        let e = slots.take_at(PEER, t0);
        assert!(
            !e.on_http1(),
            "3 in flight, 2 on mesh/h1 and d in HTTP/2: at the limit"
        );
        drop(first);
        let f = slots.take_at(PEER, t0);
        assert!(!f.on_http1(), "2 in flight, but the peer is held busy");
        drop((d, e, f));
        assert_eq!(slots.busy(PEER), 0);
    }

    /// Between waves of responses the count dips to 0; within the hold, the next wave still
    /// goes in HTTP/2, and after it, requests one at a time go on mesh/h1 again.
    #[test]
    fn a_peer_that_reached_the_limit_stays_in_http2_for_the_hold() {
        let slots = Http1Slots::new(2);
        let t0 = Instant::now();
        let wave: Vec<_> = (0..5).map(|_| slots.take_at(PEER, t0)).collect();
        assert_eq!(wave.iter().filter(|s| s.on_http1()).count(), 2);
        drop(wave);
        assert_eq!(slots.busy(PEER), 0);
        let soon = t0 + BUSY_HOLD / 2;
        assert!(!slots.take_at(PEER, soon).on_http1(), "still held busy");
        let later = t0 + BUSY_HOLD * 2;
        let alone = slots.take_at(PEER, later);
        assert!(alone.on_http1(), "one at a time after the hold: mesh/h1");
        drop(alone);
        assert!(slots.take_at(PEER, later).on_http1(), "and the next, alone");
    }

    #[test]
    fn idle_peers_are_forgotten() {
        let slots = Http1Slots::new(1);
        let t0 = Instant::now();
        for last in 0..=255u8 {
            let peer = IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, last));
            drop(slots.take_at(peer, t0));
        }
        assert_eq!(
            slots.tracked(),
            0,
            "one request each: never busy, forgotten at its end"
        );
        // Taken an hour ahead, so that the hold has surely not passed when they end.
        let ahead = t0 + Duration::from_secs(3600);
        for last in 0..=255u8 {
            let peer = IpAddr::V4(std::net::Ipv4Addr::new(10, 2, 0, last));
            let pair = (slots.take_at(peer, ahead), slots.take_at(peer, ahead));
            drop(pair);
        }
        assert!(
            slots.tracked() > Peers::FIRST_SWEEP,
            "two requests each, the second beyond the limit of 1: held busy after they ended"
        );
        let late = IpAddr::V4(std::net::Ipv4Addr::new(10, 3, 0, 1));
        let _slot = slots.take_at(late, ahead + BUSY_HOLD * 2);
        assert!(
            slots.tracked() <= Peers::FIRST_SWEEP + 1,
            "swept: {} entries",
            slots.tracked()
        );
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
