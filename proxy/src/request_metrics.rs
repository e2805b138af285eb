//! Per-route request metrics: `mesh_requests_total` (by response class) and the histogram
//! `mesh_request_duration_seconds` (time to the response head), labelled with direction,
//! destination service and route.
//!
//! A route's counters are looked up once, when a configuration is compiled, and kept in the
//! compiled route; recording a request is then a few atomic additions, no lock.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Histogram bucket upper bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Counters of one (service, route).
#[derive(Debug, Default)]
pub struct RouteStats {
    by_class: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl RouteStats {
    /// Records one response with `status`, `elapsed` after the request arrived.
    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters by (service, route).
type Routes = BTreeMap<(String, String), Arc<RouteStats>>;

/// Every route's counters, by service, then route.
#[derive(Debug, Default)]
pub struct RequestRegistry {
    routes: Mutex<BTreeMap<String, BTreeMap<String, Arc<RouteStats>>>>,
}

impl RequestRegistry {
    /// The counters of (service, route), made on first use; finding existing ones allocates
    /// nothing (the inbound side asks once per request).
    pub fn stats(&self, service: &str, route: &str) -> Arc<RouteStats> {
        self.existing(service, route)
            .unwrap_or_else(|| self.add(service, route))
    }

    /// The counters of (service, route) if they were made already.
    pub fn existing(&self, service: &str, route: &str) -> Option<Arc<RouteStats>> {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes.get(service).and_then(|r| r.get(route)).cloned()
    }

    fn add(&self, service: &str, route: &str) -> Arc<RouteStats> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .entry(service.to_string())
            .or_default()
            .entry(route.to_string())
            .or_default()
            .clone()
    }

    fn snapshot(&self) -> Routes {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .iter()
            .flat_map(|(service, by_route)| {
                by_route
                    .iter()
                    .map(move |(route, s)| ((service.clone(), route.clone()), s.clone()))
            })
            .collect()
    }
}

/// The Prometheus text of the counters of every (direction, registry).
pub fn render(registries: &[(&str, &RequestRegistry)]) -> String {
    let all: Vec<(&str, Routes)> = registries
        .iter()
        .map(|(direction, r)| (*direction, r.snapshot()))
        .collect();
    let mut out = String::new();
    out.push_str("# HELP mesh_requests_total HTTP requests by response class.\n# TYPE mesh_requests_total counter\n");
    for (direction, routes) in &all {
        for ((service, route), s) in routes {
            for (i, class) in CLASSES.iter().enumerate() {
                let n = s.by_class[i].load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "mesh_requests_total{{direction=\"{direction}\",service=\"{}\",route=\"{}\",code_class=\"{class}\"}} {n}",
                        escape(service),
                        escape(route)
                    );
                }
            }
        }
    }
    out.push_str("# HELP mesh_request_duration_seconds Time from a request arriving to its response head.\n# TYPE mesh_request_duration_seconds histogram\n");
    for (direction, routes) in &all {
        for ((service, route), s) in routes {
            let labels = format!(
                "direction=\"{direction}\",service=\"{}\",route=\"{}\"",
                escape(service),
                escape(route)
            );
            let mut cumulative = 0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                cumulative += s.buckets[i].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "mesh_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let count = s.count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "mesh_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "mesh_request_duration_seconds_sum{{{labels}}} {}",
                s.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "mesh_request_duration_seconds_count{{{labels}}} {count}"
            );
        }
    }
    out
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_classes_and_builds_a_cumulative_histogram() {
        let reg = RequestRegistry::default();
        let s = reg.stats("web.default.svc:80", "default/web");
        assert!(
            Arc::ptr_eq(&s, &reg.stats("web.default.svc:80", "default/web")),
            "one counter set per route"
        );
        s.record(200, Duration::from_micros(800));
        s.record(204, Duration::from_millis(30));
        s.record(503, Duration::from_secs(20));
        let text = render(&[("outbound", &reg)]);
        let labels = "direction=\"outbound\",service=\"web.default.svc:80\",route=\"default/web\"";
        assert!(
            text.contains(&format!(
                "mesh_requests_total{{{labels},code_class=\"2xx\"}} 2\n"
            )),
            "{text}"
        );
        assert!(text.contains(&format!(
            "mesh_requests_total{{{labels},code_class=\"5xx\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "mesh_request_duration_seconds_bucket{{{labels},le=\"0.001\"}} 1\n"
        )));
        assert!(text.contains(&format!(
            "mesh_request_duration_seconds_bucket{{{labels},le=\"0.05\"}} 2\n"
        )));
        assert!(text.contains(&format!(
            "mesh_request_duration_seconds_bucket{{{labels},le=\"10\"}} 2\n"
        )));
        assert!(text.contains(&format!(
            "mesh_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 3\n"
        )));
        assert!(text.contains(&format!(
            "mesh_request_duration_seconds_count{{{labels}}} 3\n"
        )));
        // Every sample line belongs to a family announced by TYPE before it.
        let mut announced = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                announced.push(rest.split(' ').next().unwrap_or_default().to_string());
            } else if !line.starts_with('#') {
                let name = line.split('{').next().unwrap_or_default();
                assert!(
                    announced.iter().any(|f| name.starts_with(f.as_str())),
                    "{name} before its TYPE"
                );
            }
        }
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }
}
