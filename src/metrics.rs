//! Prometheus metrics, rendered as text on `/metrics`. A handful of series does not need a metrics crate.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Label value for requests whose source is not configured: attacker-chosen paths never become labels.
pub const UNKNOWN_SOURCE: &str = "(unknown)";

const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, &'static str), u64>>,
    verification_failures: Mutex<BTreeMap<(String, &'static str), u64>>,
    decisions: Mutex<BTreeMap<(String, &'static str), u64>>,
    jobs: Mutex<BTreeMap<(String, &'static str), u64>>,
    callbacks: Mutex<BTreeMap<(String, String, &'static str), u64>>,
    reconcile_drift: Mutex<BTreeMap<&'static str, u64>>,
    reconcile_actions: Mutex<BTreeMap<&'static str, u64>>,
    audit_dropped: Mutex<BTreeMap<(String, &'static str), u64>>,
    duration: Histogram,
}

/// Kinds of drift reconciliation finds, always rendered (zero until found) so that rates work from the start.
pub const RECONCILE_DRIFT_KINDS: [&str; 3] = ["missing", "lingering", "unknown"];
/// Repairs reconciliation makes, likewise.
pub const RECONCILE_ACTIONS: [&str; 2] = ["restored", "removed"];

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Metrics {
    pub fn record_request(&self, source: &str, outcome: &'static str, elapsed: Duration) {
        bump(&self.requests, source, outcome);
        let secs = elapsed.as_secs_f64();
        for (bound, counter) in BUCKETS.iter().zip(&self.duration.buckets) {
            if secs <= *bound {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.duration.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.duration.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn record_verification_failure(&self, source: &str, reason: &'static str) {
        bump(&self.verification_failures, source, reason);
    }

    /// `outcome` is `plan`, `ignored`, or the refusal code.
    pub fn record_decision(&self, source: &str, outcome: &'static str) {
        bump(&self.decisions, source, outcome);
    }

    /// `kind` is the grant kind; `outcome` is granted, already, revoked, expired, kept, retry or dead.
    pub fn record_job(&self, kind: &str, outcome: &'static str) {
        bump(&self.jobs, kind, outcome);
    }

    /// `kind` is the callback kind (granted, refused, ...); `outcome` is delivered, already_delivered, retry or dead.
    pub fn record_callback(&self, source: &str, kind: &str, outcome: &'static str) {
        // Kinds are our own words, but they come back from the database: anything unexpected is not a label.
        let kind = if !kind.is_empty() && kind.len() <= 32 && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        {
            kind
        } else {
            "other"
        };
        let mut map = self.callbacks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry((source.to_string(), kind.to_string(), outcome)).or_insert(0) += 1;
    }

    /// `kind` is `missing`, `lingering` or `unknown`; counted in dry runs too: it is drift found.
    pub fn record_reconcile_drift(&self, kind: &'static str, found: u64) {
        add(&self.reconcile_drift, kind, found);
    }

    /// `action` is `restored` or `removed`: repairs made in Entra.
    pub fn record_reconcile_action(&self, action: &'static str, done: u64) {
        add(&self.reconcile_actions, action, done);
    }

    /// An audit entry that could not be queued (the audit queue was full), by source and entry kind.
    pub fn record_audit_dropped(&self, source: &str, kind: &'static str) {
        bump(&self.audit_dropped, source, kind);
    }

    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        render_counter(
            &mut out,
            "grantbridge_webhook_requests_total",
            "Webhook requests by source and outcome.",
            ("source", "outcome"),
            &self.requests,
        );
        render_counter(
            &mut out,
            "grantbridge_webhook_verification_failures_total",
            "Webhook requests refused by signature verification, by source and reason.",
            ("source", "reason"),
            &self.verification_failures,
        );
        render_counter(
            &mut out,
            "grantbridge_decisions_total",
            "Decisions about stored events, by source and outcome (plan, ignored, or the refusal code).",
            ("source", "outcome"),
            &self.decisions,
        );
        render_counter(
            &mut out,
            "grantbridge_grant_jobs_total",
            "Grant and revoke jobs by grant kind and outcome (granted, already, revoked, retry, dead).",
            ("kind", "outcome"),
            &self.jobs,
        );
        let name = "grantbridge_callbacks_total";
        let _ = writeln!(
            out,
            "# HELP {name} Ticket callbacks by source, kind and outcome (delivered, already_delivered, retry, dead)."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        {
            let map = self.callbacks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for ((source, kind, outcome), n) in map.iter() {
                let _ = writeln!(out, "{name}{{source=\"{source}\",kind=\"{kind}\",outcome=\"{outcome}\"}} {n}");
            }
        }
        render_counter_by(
            &mut out,
            "grantbridge_reconcile_drift_total",
            "Drift between the grant ledger and Entra found by reconciliation, by kind (missing, lingering, unknown).",
            "kind",
            &RECONCILE_DRIFT_KINDS,
            &self.reconcile_drift,
        );
        render_counter_by(
            &mut out,
            "grantbridge_reconcile_actions_total",
            "Repairs made in Entra by reconciliation, by action (restored, removed).",
            "action",
            &RECONCILE_ACTIONS,
            &self.reconcile_actions,
        );
        render_counter(
            &mut out,
            "grantbridge_audit_entries_dropped_total",
            "Audit entries dropped because the audit queue was full, by source and kind.",
            ("source", "kind"),
            &self.audit_dropped,
        );
        let name = "grantbridge_webhook_request_duration_seconds";
        let _ = writeln!(out, "# HELP {name} Time to answer a webhook request, including the durable write.");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (bound, counter) in BUCKETS.iter().zip(&self.duration.buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", counter.load(Ordering::Relaxed));
        }
        let count = self.duration.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = Duration::from_nanos(self.duration.sum_nanos.load(Ordering::Relaxed)).as_secs_f64();
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

fn bump(map: &Mutex<BTreeMap<(String, &'static str), u64>>, source: &str, label: &'static str) {
    let mut map = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match map.get_mut(&(source.to_string(), label)) {
        Some(n) => *n += 1,
        None => {
            map.insert((source.to_string(), label), 1);
        }
    }
}

fn add(map: &Mutex<BTreeMap<&'static str, u64>>, label: &'static str, n: u64) {
    let mut map = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let count = map.entry(label).or_insert(0);
    *count = count.saturating_add(n);
}

/// A counter with one label, whose `known` values are rendered even before they are counted.
fn render_counter_by(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    known: &[&'static str],
    map: &Mutex<BTreeMap<&'static str, u64>>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    let map = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let extra = map.keys().filter(|k| !known.contains(k)).copied();
    for value in known.iter().copied().chain(extra) {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {}", map.get(value).copied().unwrap_or(0));
    }
}

fn render_counter(
    out: &mut String,
    name: &str,
    help: &str,
    (first, second): (&str, &str),
    map: &Mutex<BTreeMap<(String, &'static str), u64>>,
) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    let map = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for ((key, value), n) in map.iter() {
        // Source names are validated to [a-z0-9_-] at load and the rest are our own constants: nothing to escape.
        let _ = writeln!(out, "{name}{{{first}=\"{key}\",{second}=\"{value}\"}} {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_histogram() {
        let m = Metrics::default();
        m.record_request("jira", "accepted", Duration::from_millis(2));
        m.record_request("jira", "accepted", Duration::from_millis(30));
        m.record_verification_failure("jira", "signature_mismatch");
        let text = m.render();
        assert!(text.contains("grantbridge_webhook_requests_total{source=\"jira\",outcome=\"accepted\"} 2"), "{text}");
        assert!(text.contains("reason=\"signature_mismatch\"} 1"), "{text}");
        assert!(text.contains("duration_seconds_bucket{le=\"0.0025\"} 1"), "{text}");
        assert!(text.contains("duration_seconds_bucket{le=\"0.05\"} 2"), "{text}");
        assert!(text.contains("duration_seconds_count 2"), "{text}");
    }

    #[test]
    fn callbacks_are_counted_by_source_kind_and_outcome() {
        let m = Metrics::default();
        m.record_callback("jira", "granted", "delivered");
        m.record_callback("jira", "granted", "delivered");
        m.record_callback("snow", "Bad\"kind", "dead");
        let text = m.render();
        assert!(text.contains("# TYPE grantbridge_callbacks_total counter"), "{text}");
        assert!(text.contains("grantbridge_callbacks_total{source=\"jira\",kind=\"granted\",outcome=\"delivered\"} 2"));
        assert!(text.contains("grantbridge_callbacks_total{source=\"snow\",kind=\"other\",outcome=\"dead\"} 1"));
    }

    #[test]
    fn reconcile_counters_start_at_zero_and_add_up() {
        let m = Metrics::default();
        let text = m.render();
        assert!(text.contains("grantbridge_reconcile_drift_total{kind=\"lingering\"} 0"), "{text}");
        assert!(text.contains("grantbridge_reconcile_actions_total{action=\"removed\"} 0"), "{text}");
        m.record_reconcile_drift("lingering", 2);
        m.record_reconcile_drift("lingering", 1);
        m.record_reconcile_action("removed", 3);
        let text = m.render();
        assert!(text.contains("grantbridge_reconcile_drift_total{kind=\"lingering\"} 3"), "{text}");
        assert!(text.contains("grantbridge_reconcile_drift_total{kind=\"missing\"} 0"), "{text}");
        assert!(text.contains("grantbridge_reconcile_actions_total{action=\"removed\"} 3"), "{text}");
    }
}
