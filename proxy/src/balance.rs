//! Load balancing within a cluster: round robin, least-request (power of two choices), and
//! power of two choices by peak-EWMA latency (the default).
//!
//! Peak-EWMA: each endpoint keeps a moving average of its response latency that jumps up at
//! once to a slower sample (the peak) and decays towards faster ones (time constant 10 s). The
//! cost of an endpoint is that latency times (requests in flight + 1); of two endpoints picked
//! at random, the cheaper one wins. Slow endpoints thus get little traffic, and recover once
//! they answer fast again.
//!
//! Endpoint state lives in a registry by (cluster, address), looked up when a configuration is
//! compiled, so it survives configuration updates; requests in flight keep their endpoint alive
//! even after it leaves the configuration.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;

use crate::hop::Hop;

/// How endpoints of a cluster are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    LeastRequest,
    /// The default: what a cluster gets unless its policy says otherwise.
    #[default]
    PeakEwma,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastRequest => "least_request",
            Algorithm::PeakEwma => "peak_ewma",
        }
    }
}

/// How fast the average forgets a slow sample.
const DECAY: Duration = Duration::from_secs(10);

fn now_nanos() -> u64 {
    nanos_at(Instant::now())
}

/// `at` in nanoseconds since the first time asked: each clock read costs a request about a
/// hundred instructions, so a time already read is passed in rather than read again.
fn nanos_at(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(|| at);
    at.saturating_duration_since(start).as_nanos() as u64
}

/// One endpoint and what the balancer knows about it.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Has a sidecar: HTTP to it goes over HTTP/2 to its peer port.
    meshed: std::sync::atomic::AtomicBool,
    in_flight: AtomicU64,
    /// Peak-EWMA latency in nanoseconds, as f64 bits; 0 = no sample yet.
    ewma_bits: AtomicU64,
    updated_nanos: AtomicU64,
    /// The `x-mesh-hop` values of requests to this endpoint's sidecar, made for the first
    /// Service that sends one (an endpoint's cluster nearly always serves one Service).
    hop_values: OnceLock<HopValues>,
}

/// What `x-mesh-hop` says to an endpoint's sidecar for `service`, for an HTTP/1.1 request and
/// an HTTP/2 one: made once, then shared (a clone is a reference count) instead of written
/// and allocated again for every request.
#[derive(Debug)]
struct HopValues {
    service: Box<str>,
    http1: HeaderValue,
    http2: HeaderValue,
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            meshed: std::sync::atomic::AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            ewma_bits: AtomicU64::new(0),
            updated_nanos: AtomicU64::new(0),
            hop_values: OnceLock::new(),
        }
    }

    /// The `x-mesh-hop` value of a request for `service` to this endpoint's sidecar (see
    /// [`Hop`]); made afresh for a Service other than the first one asked for.
    pub fn hop_value(&self, service: Option<&str>, http1: bool) -> HeaderValue {
        let make = |service: Option<&str>, http1| {
            Hop {
                port: self.addr.port(),
                http1,
                service,
            }
            .to_value()
        };
        let values = self.hop_values.get_or_init(|| HopValues {
            service: service.unwrap_or_default().into(),
            http1: make(service, true),
            http2: make(service, false),
        });
        match (http1, service.unwrap_or_default() == &*values.service) {
            (_, false) => make(service, http1),
            (true, true) => values.http1.clone(),
            (false, true) => values.http2.clone(),
        }
    }

    pub fn meshed(&self) -> bool {
        self.meshed.load(Ordering::Relaxed)
    }

    pub fn set_meshed(&self, meshed: bool) {
        self.meshed.store(meshed, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency estimate in nanoseconds, decayed to now (0 before the first answer).
    pub fn latency_nanos(&self) -> f64 {
        let ewma = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let idle = now_nanos().saturating_sub(self.updated_nanos.load(Ordering::Relaxed)) as f64;
        ewma * (-idle / DECAY.as_nanos() as f64).exp()
    }

    /// Latency times load. An endpoint not measured yet costs next to nothing, so a new
    /// endpoint is tried (and measured) at once instead of being starved.
    fn cost(&self) -> f64 {
        (self.latency_nanos() + 1.0) * (self.in_flight() as f64 + 1.0)
    }

    /// Records one response latency: a slower sample is taken at once, a faster one decays in.
    pub fn observe(&self, rtt: Duration) {
        self.observe_at(rtt, Instant::now());
    }

    /// [`Endpoint::observe`] of a sample taken at `at`.
    fn observe_at(&self, rtt: Duration, at: Instant) {
        let now = nanos_at(at);
        let rtt = rtt.as_nanos() as f64;
        let prev = f64::from_bits(self.ewma_bits.load(Ordering::Relaxed));
        let elapsed = now.saturating_sub(self.updated_nanos.swap(now, Ordering::Relaxed)) as f64;
        let next = if prev == 0.0 || rtt > prev {
            rtt
        } else {
            let w = (-elapsed / DECAY.as_nanos() as f64).exp();
            prev * w + rtt * (1.0 - w)
        };
        self.ewma_bits.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.start_at(Instant::now())
    }

    /// [`Endpoint::start`] of a request that started at `started` (its latency counts from there).
    pub fn start_at(self: &Arc<Self>, started: Instant) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            endpoint: self.clone(),
            started,
        }
    }
}

/// A request in flight to an endpoint.
#[derive(Debug)]
pub struct InFlight {
    endpoint: Arc<Endpoint>,
    started: Instant,
}

impl InFlight {
    /// The response head arrived: record the latency.
    pub fn answered(&self) {
        let now = Instant::now();
        let rtt = now.saturating_duration_since(self.started);
        self.endpoint.observe_at(rtt, now);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Chooses an endpoint: `rr` is the cluster's round-robin counter, `random` a fresh random number.
pub fn pick<'a>(
    endpoints: &'a [Arc<Endpoint>],
    algorithm: Algorithm,
    rr: &AtomicUsize,
    random: u32,
) -> Option<&'a Arc<Endpoint>> {
    let n = endpoints.len();
    if n <= 1 {
        return endpoints.first();
    }
    if algorithm == Algorithm::RoundRobin {
        return endpoints.get(rr.fetch_add(1, Ordering::Relaxed) % n);
    }
    // Two distinct endpoints at random.
    let a = random as usize % n;
    let b = (a + 1 + (random >> 16) as usize % (n - 1)) % n;
    let (ea, eb) = (&endpoints[a], &endpoints[b]);
    let a_wins = match algorithm {
        Algorithm::LeastRequest => ea.in_flight() <= eb.in_flight(),
        _ => ea.cost() <= eb.cost(),
    };
    Some(if a_wins { ea } else { eb })
}

/// Every endpoint's state, by (cluster, address).
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    endpoints: Mutex<HashMap<(String, SocketAddr), Arc<Endpoint>>>,
}

impl EndpointRegistry {
    /// The state of `addr` in `cluster`, made on first use.
    pub fn endpoint(&self, cluster: &str, addr: SocketAddr) -> Arc<Endpoint> {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((cluster.to_string(), addr))
            .or_insert_with(|| Arc::new(Endpoint::new(addr)))
            .clone()
    }

    /// Forgets endpoints that are no longer configured (requests in flight keep theirs).
    pub fn retain(&self, live: &std::collections::HashSet<(String, SocketAddr)>) {
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|k, _| live.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u8) -> Vec<Arc<Endpoint>> {
        (1..=n)
            .map(|i| Arc::new(Endpoint::new(SocketAddr::from(([10, 0, 0, i], 80)))))
            .collect()
    }

    #[test]
    fn hop_values_are_made_once_for_the_first_service_and_afresh_for_another() {
        let e = Endpoint::new(SocketAddr::from(([10, 0, 0, 1], 8080)));
        let value = |service, http1| e.hop_value(service, http1);
        assert_eq!(value(Some("web.default"), true), "8080 h1 web.default");
        assert_eq!(value(Some("web.default"), false), "8080 h2 web.default");
        assert_eq!(value(Some("api.default"), true), "8080 h1 api.default");
        assert_eq!(value(None, false), "8080 h2");
        assert_eq!(value(Some("web.default"), true), "8080 h1 web.default");
        let first = value(Some("web.default"), true);
        assert_eq!(
            first.as_bytes().as_ptr(),
            value(Some("web.default"), true).as_bytes().as_ptr(),
            "the first Service's values are shared, not made again"
        );
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let e = Endpoint::new(SocketAddr::from(([10, 0, 0, 1], 80)));
        assert_eq!(e.latency_nanos(), 0.0, "not measured yet");
        e.observe(Duration::from_millis(5));
        e.observe(Duration::from_millis(200));
        assert!(
            (199e6..=200e6).contains(&e.latency_nanos()),
            "a slower sample is taken at once"
        );
        e.observe(Duration::from_millis(1));
        assert!(
            e.latency_nanos() > 150e6,
            "a fast sample right after only decays in slowly"
        );
        let fresh = Endpoint::new(SocketAddr::from(([10, 0, 0, 2], 80)));
        assert!(
            fresh.cost() < e.cost(),
            "an unmeasured endpoint is tried before a measured one"
        );
    }

    #[test]
    fn least_request_avoids_busy_endpoints() {
        let e = eps(2);
        let _busy = [e[0].start(), e[0].start()];
        let rr = AtomicUsize::new(0);
        for r in [0u32, 1, 7, 65_536, 99_999] {
            assert_eq!(
                pick(&e, Algorithm::LeastRequest, &rr, r).map(|x| x.addr),
                Some(e[1].addr)
            );
        }
    }

    #[test]
    fn peak_ewma_avoids_slow_endpoints_and_in_flight_guards_count() {
        let e = eps(3);
        e[0].observe(Duration::from_millis(300));
        e[1].observe(Duration::from_millis(2));
        e[2].observe(Duration::from_millis(2));
        let rr = AtomicUsize::new(0);
        let slow = (0..3000u32)
            .filter(|i| {
                pick(
                    &e,
                    Algorithm::PeakEwma,
                    &rr,
                    crate::routing::random_u32().wrapping_add(*i),
                )
                .map(|x| x.addr)
                    == Some(e[0].addr)
            })
            .count();
        assert_eq!(slow, 0, "the slow endpoint loses every comparison");
        {
            let guard = e[1].start();
            assert_eq!(e[1].in_flight(), 1);
            guard.answered();
        }
        assert_eq!(e[1].in_flight(), 0, "dropping the guard ends the request");
    }

    #[test]
    fn round_robin_and_the_registry() {
        let e = eps(3);
        let rr = AtomicUsize::new(0);
        let order: Vec<_> = (0..4)
            .filter_map(|_| pick(&e, Algorithm::RoundRobin, &rr, 0))
            .map(|x| x.addr.to_string())
            .collect();
        assert_eq!(
            order,
            vec!["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.1:80"]
        );
        let reg = EndpointRegistry::default();
        let a = reg.endpoint("c", e[0].addr);
        assert!(
            Arc::ptr_eq(&a, &reg.endpoint("c", e[0].addr)),
            "state survives a recompile"
        );
        reg.retain(&std::collections::HashSet::new());
        assert!(
            !Arc::ptr_eq(&a, &reg.endpoint("c", e[0].addr)),
            "a forgotten endpoint starts afresh"
        );
    }
}
