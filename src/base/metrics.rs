//! The node's counters and histograms, kept where events happen (this
//! module's [`Metrics`] for the gRPC edge and TLS, `store`'s stats for
//! batches and fsyncs, `broker`'s for deliveries). Plain values with no
//! knowledge of the node: `ops` renders them at scrape time.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A counter with one label, over a small set of values.
#[derive(Debug, Default)]
pub struct Labeled {
    values: Mutex<BTreeMap<&'static str, u64>>,
}

impl Labeled {
    pub fn inc(&self, label: &'static str) {
        *self.values.lock().entry(label).or_default() += 1;
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.values.lock().iter().map(|(k, v)| (*k, *v)).collect()
    }
}

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus +Inf.
    counts: Vec<AtomicU64>,
    /// Sum of observations, in millionths.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add((v * 1e6).max(0.0) as u64, Ordering::Relaxed);
    }

    /// Writes the histogram in the Prometheus text format.
    pub fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Bounds of the fsync latency histogram, in seconds.
pub const FSYNC_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Bounds of the records-per-commit histogram.
pub const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// What the gRPC edge and the TLS accept loop count.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Publishes stored, by result: accepted, duplicate.
    pub publishes: Labeled,
    /// Publishes refused, by reason.
    pub refusals: Labeled,
    /// TLS handshakes refused, by reason.
    pub handshake_failures: Labeled,
    /// TCP connections closed before a TLS ClientHello (TCP health probes).
    pub closed_before_tls: Counter,
    /// Requests answered on the TAXII port (TAXII and the MISP feed), by
    /// status class: 2xx, 4xx, 5xx.
    pub taxii_requests: Labeled,
}

/// A plain counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Log lines the process could not write (its stderr refused them: a
/// closed pipe, a full disk): dropped, never retried or waited for.
pub static LOG_WRITE_FAILURES: Counter = Counter(AtomicU64::new(0));

/// Where the count of log lines dropped because the writer fell behind (a
/// stalled log pipe) is read from, once logging is set up.
pub static LOG_QUEUE_DROPS: std::sync::OnceLock<Box<dyn Fn() -> u64 + Send + Sync>> =
    std::sync::OnceLock::new();

/// Log lines dropped, for any reason.
pub fn log_lines_dropped() -> u64 {
    LOG_WRITE_FAILURES.get() + LOG_QUEUE_DROPS.get().map_or(0, |f| f())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 5.0, 50.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.write(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"1\"} 2"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 3"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4"), "{out}");
        assert!(out.contains("x_count 4"), "{out}");
    }
}
