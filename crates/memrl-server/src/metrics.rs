//! `GET /metrics`: the Prometheus text format, written by hand (a few counters and histograms
//! need no library).
//!
//! - `memrl_http_requests_total{route,method,status}` and
//!   `memrl_http_request_duration_seconds{route,method,status}` (a histogram), per route
//!   template (`/v1/namespaces/{ns}/retrieve`, never the raw path: bounded cardinality);
//! - `memrl_embedding_tokens_total`: tokens of every text the server embedded;
//! - per namespace: `memrl_queue_depth`, `memrl_batch_size` (a histogram of the batches its
//!   queue ran), `memrl_memories`, `memrl_intents`, `memrl_q{quantile}` (min, quartiles, max),
//!   `memrl_q_sign_total{sign}`, `memrl_log_fsyncs_total`, `memrl_log_bytes`;
//! - `memrl_namespaces`, `memrl_uptime_seconds`.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use memrl::BatchStats;

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default, Clone)]
struct Histogram {
    /// Observations at or below each bound (not cumulative; summed when written).
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| seconds <= b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// The server's own counters (the namespaces' figures are read when scraped).
pub struct Metrics {
    requests: Mutex<HashMap<(String, String, u16), Histogram>>,
    embedding_tokens: AtomicU64,
    started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// What a scrape reads of one namespace.
pub struct NamespaceFigures {
    /// The name.
    pub name: String,
    /// Requests waiting in its queue.
    pub queue_depth: usize,
    /// Its queue's batches.
    pub batches: Option<BatchStats>,
    /// Memories.
    pub memories: usize,
    /// Intent keys.
    pub intents: usize,
    /// Q: min, quartiles, max (none when empty).
    pub q_quantiles: Option<[f32; 5]>,
    /// Memories with Q below, at and above zero.
    pub q_signs: [usize; 3],
    /// Log fsyncs since the bank opened.
    pub log_syncs: u64,
    /// Bytes in the log.
    pub log_bytes: u64,
}

impl Metrics {
    /// No observation yet.
    pub fn new() -> Self {
        Self {
            requests: Mutex::new(HashMap::new()),
            embedding_tokens: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// One answered request.
    pub fn observe(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let key = (route.to_string(), method.to_string(), status);
        requests
            .entry(key)
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// Tokens embedded.
    pub fn add_embedding_tokens(&self, tokens: usize) {
        self.embedding_tokens
            .fetch_add(tokens as u64, Ordering::Relaxed);
    }

    /// The text format, with the namespaces' figures.
    pub fn render(&self, namespaces: &[NamespaceFigures]) -> String {
        let mut out = String::new();
        let requests: Vec<((String, String, u16), Histogram)> = {
            let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            let mut all: Vec<_> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all
        };
        header(
            &mut out,
            "memrl_http_requests_total",
            "counter",
            "HTTP requests answered, by route template, method and status.",
        );
        for ((route, method, status), h) in &requests {
            let _ = writeln!(
                out,
                "memrl_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {}",
                escape(route),
                escape(method),
                h.count
            );
        }
        header(
            &mut out,
            "memrl_http_request_duration_seconds",
            "histogram",
            "Time from a request's arrival to its answer, by route template, method and status.",
        );
        for ((route, method, status), h) in &requests {
            let labels = format!(
                "route=\"{}\",method=\"{}\",status=\"{status}\"",
                escape(route),
                escape(method)
            );
            let mut cumulative = 0;
            for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "memrl_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "memrl_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "memrl_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "memrl_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        header(
            &mut out,
            "memrl_embedding_tokens_total",
            "counter",
            "Tokens of the texts the server embedded (queries, intents, /v1/embeddings).",
        );
        let _ = writeln!(
            out,
            "memrl_embedding_tokens_total {}",
            self.embedding_tokens.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "memrl_uptime_seconds",
            "gauge",
            "Seconds since the server started.",
        );
        let _ = writeln!(
            out,
            "memrl_uptime_seconds {:.3}",
            self.started.elapsed().as_secs_f64()
        );
        header(&mut out, "memrl_namespaces", "gauge", "Open namespaces.");
        let _ = writeln!(out, "memrl_namespaces {}", namespaces.len());

        let per_ns = |out: &mut String,
                      name: &str,
                      kind: &str,
                      help: &str,
                      value: &dyn Fn(&NamespaceFigures) -> String| {
            header(out, name, kind, help);
            for ns in namespaces {
                let _ = writeln!(
                    out,
                    "{name}{{namespace=\"{}\"}} {}",
                    escape(&ns.name),
                    value(ns)
                );
            }
        };
        per_ns(
            &mut out,
            "memrl_queue_depth",
            "gauge",
            "Requests waiting in the namespace's batching queue.",
            &|ns| ns.queue_depth.to_string(),
        );
        per_ns(
            &mut out,
            "memrl_memories",
            "gauge",
            "Memories in the namespace.",
            &|ns| ns.memories.to_string(),
        );
        per_ns(
            &mut out,
            "memrl_intents",
            "gauge",
            "Intent keys in the namespace.",
            &|ns| ns.intents.to_string(),
        );
        per_ns(&mut out, "memrl_log_fsyncs_total", "counter", "fsyncs of the namespace's write-ahead log since it opened (group commit: one covers many writes).", &|ns| ns.log_syncs.to_string());
        per_ns(
            &mut out,
            "memrl_log_bytes",
            "gauge",
            "Bytes in the namespace's write-ahead log.",
            &|ns| ns.log_bytes.to_string(),
        );

        header(
            &mut out,
            "memrl_q",
            "gauge",
            "Q of the namespace's memories: minimum (quantile 0), quartiles, maximum (quantile 1).",
        );
        for ns in namespaces {
            if let Some(q) = ns.q_quantiles {
                for (p, v) in ["0", "0.25", "0.5", "0.75", "1"].iter().zip(q) {
                    let _ = writeln!(
                        out,
                        "memrl_q{{namespace=\"{}\",quantile=\"{p}\"}} {v}",
                        escape(&ns.name)
                    );
                }
            }
        }
        header(
            &mut out,
            "memrl_q_sign",
            "gauge",
            "Memories with Q below, at and above zero.",
        );
        for ns in namespaces {
            for (sign, n) in ["negative", "zero", "positive"].iter().zip(ns.q_signs) {
                let _ = writeln!(
                    out,
                    "memrl_q_sign{{namespace=\"{}\",sign=\"{sign}\"}} {n}",
                    escape(&ns.name)
                );
            }
        }
        header(
            &mut out,
            "memrl_batch_size",
            "histogram",
            "Requests per batch the namespace's queue ran.",
        );
        for ns in namespaces {
            let Some(stats) = &ns.batches else { continue };
            let name = escape(&ns.name);
            let mut cumulative = 0;
            for (i, n) in stats.sizes.iter().enumerate() {
                cumulative += n;
                if i + 1 < stats.sizes.len() {
                    let _ = writeln!(
                        out,
                        "memrl_batch_size_bucket{{namespace=\"{name}\",le=\"{}\"}} {cumulative}",
                        1u64 << i
                    );
                }
            }
            let _ = writeln!(
                out,
                "memrl_batch_size_bucket{{namespace=\"{name}\",le=\"+Inf\"}} {}",
                stats.batches
            );
            let _ = writeln!(
                out,
                "memrl_batch_size_sum{{namespace=\"{name}\"}} {}",
                stats.requests
            );
            let _ = writeln!(
                out,
                "memrl_batch_size_count{{namespace=\"{name}\"}} {}",
                stats.batches
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_labelled() {
        let m = Metrics::new();
        m.observe("/health", "GET", 200, Duration::from_micros(300));
        m.observe("/health", "GET", 200, Duration::from_millis(20));
        m.add_embedding_tokens(7);
        let text = m.render(&[NamespaceFigures {
            name: "a".into(),
            queue_depth: 2,
            batches: Some(BatchStats {
                batches: 3,
                requests: 9,
                sizes: {
                    let mut s = [0; 17];
                    s[0] = 1;
                    s[3] = 2;
                    s
                },
            }),
            memories: 5,
            intents: 4,
            q_quantiles: Some([-1.0, 0.0, 0.1, 0.2, 1.0]),
            q_signs: [1, 2, 2],
            log_syncs: 1,
            log_bytes: 100,
        }]);
        for line in [
            "memrl_http_requests_total{route=\"/health\",method=\"GET\",status=\"200\"} 2",
            "memrl_http_request_duration_seconds_bucket{route=\"/health\",method=\"GET\",status=\"200\",le=\"0.0005\"} 1",
            "memrl_http_request_duration_seconds_bucket{route=\"/health\",method=\"GET\",status=\"200\",le=\"0.025\"} 2",
            "memrl_http_request_duration_seconds_count{route=\"/health\",method=\"GET\",status=\"200\"} 2",
            "memrl_embedding_tokens_total 7",
            "memrl_queue_depth{namespace=\"a\"} 2",
            "memrl_q{namespace=\"a\",quantile=\"0.5\"} 0.1",
            "memrl_q_sign{namespace=\"a\",sign=\"zero\"} 2",
            "memrl_batch_size_bucket{namespace=\"a\",le=\"4\"} 1",
            "memrl_batch_size_bucket{namespace=\"a\",le=\"8\"} 3",
            "memrl_batch_size_bucket{namespace=\"a\",le=\"+Inf\"} 3",
            "memrl_batch_size_sum{namespace=\"a\"} 9",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
    }
}
