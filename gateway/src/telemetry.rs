//! Logs (tracing, JSON by default for machines, text for a terminal) and
//! Prometheus text metrics kept in atomics, so recording costs no lock on
//! the hot path beyond one short map lookup per request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Install the global subscriber. `FHIRWALL_LOG` overrides the filter
/// (e.g. `fhirwall=debug`), `FHIRWALL_LOG_FORMAT=text` switches to text.
pub fn init_logging(default_text: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FHIRWALL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let text = match std::env::var("FHIRWALL_LOG_FORMAT").as_deref() {
        Ok("json") => false,
        Ok("text") => true,
        _ => default_text,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if text {
        {
            use std::io::IsTerminal;
            let color = std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal();
            builder.with_ansi(color).try_init()
        }
    } else {
        builder.json().flatten_event(true).with_current_span(false).try_init()
    };
}

/// Upper bounds (seconds) of the request duration histogram.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    over: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        match BUCKETS.iter().position(|b| secs <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, out: &mut String) {
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.over.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Process-wide counters, rendered by the admin listener's `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (interaction, status) -> count
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    request_duration: Histogram,
    upstream_duration: Histogram,
    upstream_errors: AtomicU64,
    connections_open: AtomicU64,
}

impl Metrics {
    pub fn record_request(&self, interaction: &'static str, status: u16, elapsed: Duration) {
        if let Ok(mut map) = self.requests.lock() {
            *map.entry((interaction, status)).or_default() += 1;
        }
        self.request_duration.observe(elapsed);
    }

    pub fn record_upstream(&self, elapsed: Duration, ok: bool) {
        self.upstream_duration.observe(elapsed);
        if !ok {
            self.upstream_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        out.push_str("# HELP fhirwall_requests_total FHIR requests answered, by interaction and status.\n");
        out.push_str("# TYPE fhirwall_requests_total counter\n");
        if let Ok(map) = self.requests.lock() {
            for ((interaction, status), count) in map.iter() {
                let _ = writeln!(
                    out,
                    "fhirwall_requests_total{{interaction=\"{interaction}\",status=\"{status}\"}} {count}"
                );
            }
        }
        out.push_str("# HELP fhirwall_request_duration_seconds Time to answer a FHIR request.\n");
        self.request_duration.render("fhirwall_request_duration_seconds", &mut out);
        out.push_str("# HELP fhirwall_upstream_duration_seconds Time of upstream exchanges.\n");
        self.upstream_duration.render("fhirwall_upstream_duration_seconds", &mut out);
        out.push_str("# HELP fhirwall_upstream_errors_total Upstream exchanges that failed or timed out.\n");
        out.push_str("# TYPE fhirwall_upstream_errors_total counter\n");
        let _ =
            writeln!(out, "fhirwall_upstream_errors_total {}", self.upstream_errors.load(Ordering::Relaxed));
        out.push_str("# HELP fhirwall_connections_open Client connections currently open.\n");
        out.push_str("# TYPE fhirwall_connections_open gauge\n");
        let _ = writeln!(out, "fhirwall_connections_open {}", self.connections_open.load(Ordering::Relaxed));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.record_request("read", 200, Duration::from_micros(700));
        m.record_request("read", 200, Duration::from_millis(30));
        m.record_request("search-type", 403, Duration::from_secs(9));
        let text = m.render();
        assert!(text.contains("fhirwall_requests_total{interaction=\"read\",status=\"200\"} 2"));
        assert!(text.contains("fhirwall_request_duration_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("fhirwall_request_duration_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("fhirwall_request_duration_seconds_count 3"));
    }
}
