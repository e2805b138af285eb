//! meshd's own metrics (Prometheus text format).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::snapshot::XdsType;

#[derive(Debug, Default)]
pub struct Metrics {
    pushes: [AtomicU64; XdsType::ALL.len()],
    nacks: [AtomicU64; XdsType::ALL.len()],
    push_latency_us_sum: AtomicU64,
    push_latency_count: AtomicU64,
    push_latency_us_max: AtomicU64,
    certificates_issued: AtomicU64,
    certificates_refused: AtomicU64,
}

fn index(ty: XdsType) -> usize {
    XdsType::ALL.iter().position(|t| *t == ty).unwrap_or(0)
}

impl Metrics {
    /// A response was sent, `latency` after its snapshot was built.
    pub fn pushed(&self, ty: XdsType, latency: Duration) {
        self.pushes[index(ty)].fetch_add(1, Ordering::Relaxed);
        let us = latency.as_micros() as u64;
        self.push_latency_us_sum.fetch_add(us, Ordering::Relaxed);
        self.push_latency_count.fetch_add(1, Ordering::Relaxed);
        self.push_latency_us_max.fetch_max(us, Ordering::Relaxed);
    }

    /// The CA answered a certificate request (`issued`) or refused it.
    pub fn certificate_issued(&self, issued: bool) {
        let counter = if issued {
            &self.certificates_issued
        } else {
            &self.certificates_refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn nacked(&self, ty: XdsType) {
        self.nacks[index(ty)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, connected: usize, generation: u64, revision: u64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP meshd_connected_proxies xDS streams currently open.\n# TYPE meshd_connected_proxies gauge\nmeshd_connected_proxies {connected}"
        );
        let _ = writeln!(
            out,
            "# HELP meshd_generation Current snapshot generation.\n# TYPE meshd_generation gauge\nmeshd_generation {generation}"
        );
        let _ = writeln!(
            out,
            "# HELP meshd_revision Current stored revision.\n# TYPE meshd_revision gauge\nmeshd_revision {revision}"
        );
        for (name, help, values) in [
            (
                "meshd_xds_pushes_total",
                "xDS responses sent, by type.",
                &self.pushes,
            ),
            (
                "meshd_xds_nacks_total",
                "xDS responses refused by proxies, by type.",
                &self.nacks,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ty in XdsType::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{type=\"{}\"}} {}",
                    ty.short(),
                    values[index(ty)].load(Ordering::Relaxed)
                );
            }
        }
        let sum = self.push_latency_us_sum.load(Ordering::Relaxed) as f64 / 1e6;
        let count = self.push_latency_count.load(Ordering::Relaxed);
        let max = self.push_latency_us_max.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "# HELP meshd_xds_push_seconds Time from a snapshot being built to a response carrying it being sent.\n# TYPE meshd_xds_push_seconds summary\nmeshd_xds_push_seconds_sum {sum}\nmeshd_xds_push_seconds_count {count}"
        );
        let _ = writeln!(
            out,
            "# HELP meshd_xds_push_seconds_max Longest push so far.\n# TYPE meshd_xds_push_seconds_max gauge\nmeshd_xds_push_seconds_max {max}"
        );
        let _ = writeln!(
            out,
            "# HELP meshd_ca_requests_total Certificate requests, by outcome.\n# TYPE meshd_ca_requests_total counter\nmeshd_ca_requests_total{{outcome=\"issued\"}} {}\nmeshd_ca_requests_total{{outcome=\"refused\"}} {}",
            self.certificates_issued.load(Ordering::Relaxed),
            self.certificates_refused.load(Ordering::Relaxed)
        );
        out
    }
}
