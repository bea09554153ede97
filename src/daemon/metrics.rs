//! The daemon's own metrics, appended to the server's `GET /metrics`:
//! its queue, its workers, and the delegate plugins it runs.
//!
//! Worker threads and the reactor thread both touch these values, and the
//! reactor renders them while it serves, so every value is an atomic: a
//! scrape never waits for a worker and a worker never waits for a scrape.
//! The only lock is taken the first time a plugin name is seen, by the
//! worker that sees it.
//!
//! Plugin names come from requests (the netconf's `delegateType`), so the
//! number of distinct `plugin` labels is bounded: after
//! [`MAX_PLUGIN_LABELS`] names, further plugins are counted under
//! `plugin="other"`. Only plugins that were found and run are counted, so
//! in practice the bound is the number of plugins installed.

use std::fmt::{self, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::delegate::RunResult;

/// The most plugin names that get a label of their own.
pub const MAX_PLUGIN_LABELS: usize = 64;

/// The label that counts every plugin past [`MAX_PLUGIN_LABELS`].
pub const OTHER_PLUGIN: &str = "other";

/// Upper bounds of the plugin run time buckets, in seconds: from a plugin
/// that only prints a result to one that hits the two-minute default
/// deadline.
const PLUGIN_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Why a request was answered without running anything (besides a DEL
/// cancelling it, which has a counter of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The queue held `--max-queue` waiting requests.
    QueueFull = 0,
    /// The daemon was stopping.
    ShuttingDown,
    /// The request waited for a worker past its deadline.
    Expired,
}

const REJECTIONS: [&str; 3] = ["queue_full", "shutting_down", "expired"];

/// The daemon's counters and gauges; shared by the queue, its workers and
/// the metrics hook.
#[derive(Debug)]
pub struct DaemonMetrics {
    workers: u64,
    queued: AtomicU64,
    busy: AtomicU64,
    cancelled: AtomicU64,
    rejected: [AtomicU64; REJECTIONS.len()],
    plugins: PluginTable,
}

impl DaemonMetrics {
    /// Metrics for a daemon with this many worker threads, all counts zero.
    pub fn new(workers: usize) -> DaemonMetrics {
        DaemonMetrics {
            workers: workers as u64,
            queued: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            rejected: Default::default(),
            plugins: PluginTable::new(),
        }
    }

    /// Sets how many requests wait for a worker now.
    pub fn set_queued(&self, waiting: usize) {
        self.queued.store(waiting as u64, Ordering::Relaxed);
    }

    /// A worker took a job.
    pub fn worker_started(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    /// A worker finished its job.
    pub fn worker_finished(&self) {
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts queued ADDs that a DEL for the same container cancelled.
    pub fn cancelled(&self, count: usize) {
        self.cancelled.fetch_add(count as u64, Ordering::Relaxed);
    }

    /// Counts a request answered without running anything.
    pub fn rejected(&self, why: Rejection) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a delegate plugin run: how it ended and how long it took.
    pub fn plugin_run(&self, plugin: &str, result: RunResult, took: Duration) {
        self.plugins.slot(plugin).record(result, took);
    }

    /// Appends every metric, in the text exposition format.
    pub fn render(&self, out: &mut String) {
        // Writing into a String cannot fail.
        let _ = self.render_into(out);
    }

    fn render_into(&self, out: &mut String) -> fmt::Result {
        let gauges = [
            (
                "cniserverd_requests_queued",
                "Requests waiting for a worker now.",
                self.queued.load(Ordering::Relaxed),
            ),
            (
                "cniserverd_workers_busy",
                "Worker threads running a request now.",
                self.busy.load(Ordering::Relaxed),
            ),
            (
                "cniserverd_workers",
                "Worker threads, busy or not (--workers).",
                self.workers,
            ),
        ];
        for (name, help, value) in gauges {
            writeln!(out, "# HELP {name} {help}")?;
            writeln!(out, "# TYPE {name} gauge")?;
            writeln!(out, "{name} {value}")?;
        }

        writeln!(out, "# HELP cniserverd_requests_cancelled_total Queued ADDs cancelled by a DEL for the same container.")?;
        writeln!(out, "# TYPE cniserverd_requests_cancelled_total counter")?;
        writeln!(
            out,
            "cniserverd_requests_cancelled_total {}",
            self.cancelled.load(Ordering::Relaxed)
        )?;

        writeln!(out, "# HELP cniserverd_requests_rejected_total Requests answered with code 11 without running, by reason.")?;
        writeln!(out, "# TYPE cniserverd_requests_rejected_total counter")?;
        for (reason, count) in REJECTIONS.iter().zip(&self.rejected) {
            writeln!(
                out,
                "cniserverd_requests_rejected_total{{reason=\"{reason}\"}} {}",
                count.load(Ordering::Relaxed)
            )?;
        }

        self.plugins.render_into(out)
    }
}

/// Per-plugin counts in fixed slots: [`MAX_PLUGIN_LABELS`] named on first
/// use, then the one for [`OTHER_PLUGIN`].
#[derive(Debug)]
struct PluginTable {
    slots: Box<[PluginSlot]>,
    /// How many of the leading slots have a name; a slot's name is set
    /// before this count covers it.
    named: AtomicUsize,
    /// Held only while a new name takes a slot.
    naming: Mutex<()>,
}

#[derive(Debug, Default)]
struct PluginSlot {
    name: OnceLock<String>,
    /// Runs per bucket, not cumulative; the last is +Inf.
    buckets: [AtomicU64; PLUGIN_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    runs: [AtomicU64; RunResult::ALL.len()],
}

impl PluginSlot {
    fn record(&self, result: RunResult, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = PLUGIN_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(PLUGIN_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.runs[result as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn is_used(&self) -> bool {
        self.runs.iter().any(|n| n.load(Ordering::Relaxed) > 0)
    }
}

impl PluginTable {
    fn new() -> PluginTable {
        let slots: Box<[PluginSlot]> = (0..=MAX_PLUGIN_LABELS)
            .map(|_| PluginSlot::default())
            .collect();
        let _ = slots[MAX_PLUGIN_LABELS].name.set(OTHER_PLUGIN.to_owned());
        PluginTable {
            slots,
            named: AtomicUsize::new(0),
            naming: Mutex::new(()),
        }
    }

    fn other(&self) -> &PluginSlot {
        &self.slots[MAX_PLUGIN_LABELS]
    }

    /// The named slots, in the order their names were first seen.
    fn named(&self) -> &[PluginSlot] {
        &self.slots[..self.named.load(Ordering::Acquire)]
    }

    fn find(&self, plugin: &str) -> Option<&PluginSlot> {
        self.named()
            .iter()
            .find(|slot| slot.name.get().is_some_and(|name| name == plugin))
    }

    /// The slot that counts `plugin`, naming a free one after it if there
    /// is one left.
    fn slot(&self, plugin: &str) -> &PluginSlot {
        if plugin == OTHER_PLUGIN {
            return self.other();
        }
        if let Some(slot) = self.find(plugin) {
            return slot;
        }

        let _naming = self
            .naming
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Another worker may have named a slot after it meanwhile.
        if let Some(slot) = self.find(plugin) {
            return slot;
        }
        let next = self.named.load(Ordering::Acquire);
        if next == MAX_PLUGIN_LABELS {
            return self.other();
        }
        let slot = &self.slots[next];
        let _ = slot.name.set(plugin.to_owned());
        self.named.store(next + 1, Ordering::Release);
        slot
    }

    fn render_into(&self, out: &mut String) -> fmt::Result {
        let other = Some(self.other()).filter(|slot| slot.is_used());
        let slots: Vec<&PluginSlot> = self.named().iter().chain(other).collect();

        writeln!(out, "# HELP cniserverd_plugin_runs_total Delegate plugin runs, by plugin and how they ended.")?;
        writeln!(out, "# TYPE cniserverd_plugin_runs_total counter")?;
        for slot in &slots {
            let plugin = LabelValue(slot.name.get().map_or("", String::as_str));
            for (result, count) in RunResult::ALL.iter().zip(&slot.runs) {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    writeln!(
                        out,
                        "cniserverd_plugin_runs_total{{plugin=\"{plugin}\",result=\"{}\"}} {count}",
                        result.as_str()
                    )?;
                }
            }
        }

        writeln!(out, "# HELP cniserverd_plugin_duration_seconds Delegate plugin run time, from exec to exit, by plugin.")?;
        writeln!(out, "# TYPE cniserverd_plugin_duration_seconds histogram")?;
        for slot in &slots {
            let plugin = LabelValue(slot.name.get().map_or("", String::as_str));
            // Each bucket is read once, so the buckets and the count agree
            // even while a worker records a run.
            let mut cumulative = 0;
            for (le, count) in PLUGIN_BUCKETS.iter().zip(&slot.buckets) {
                cumulative += count.load(Ordering::Relaxed);
                writeln!(
                    out,
                    "cniserverd_plugin_duration_seconds_bucket{{plugin=\"{plugin}\",le=\"{le}\"}} {cumulative}"
                )?;
            }
            cumulative += slot.buckets[PLUGIN_BUCKETS.len()].load(Ordering::Relaxed);
            writeln!(
                out,
                "cniserverd_plugin_duration_seconds_bucket{{plugin=\"{plugin}\",le=\"+Inf\"}} {cumulative}"
            )?;
            let sum = slot.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            writeln!(
                out,
                "cniserverd_plugin_duration_seconds_sum{{plugin=\"{plugin}\"}} {sum}"
            )?;
            writeln!(
                out,
                "cniserverd_plugin_duration_seconds_count{{plugin=\"{plugin}\"}} {cumulative}"
            )?;
        }
        Ok(())
    }
}

/// A label value with the three characters the exposition format escapes.
struct LabelValue<'a>(&'a str);

impl fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(metrics: &DaemonMetrics) -> String {
        let mut text = String::new();
        metrics.render(&mut text);
        text
    }

    #[test]
    fn plugin_labels_stop_at_the_bound_then_count_as_other() {
        let metrics = DaemonMetrics::new(4);
        for i in 0..MAX_PLUGIN_LABELS + 6 {
            metrics.plugin_run(&format!("p{i}"), RunResult::Success, Duration::ZERO);
        }
        // A name that already has a slot keeps it after the table is full.
        metrics.plugin_run("p0", RunResult::Error, Duration::ZERO);

        let text = rendered(&metrics);
        let labels: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("cniserverd_plugin_runs_total{plugin=\""))
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert_eq!(labels.len(), MAX_PLUGIN_LABELS + 1, "{labels:?}");
        assert!(labels.contains(OTHER_PLUGIN));
        assert!(!labels.contains(format!("p{MAX_PLUGIN_LABELS}").as_str()));
        assert!(
            text.contains("cniserverd_plugin_runs_total{plugin=\"other\",result=\"success\"} 6\n")
        );
        assert!(text.contains("cniserverd_plugin_runs_total{plugin=\"p0\",result=\"error\"} 1\n"));
    }

    #[test]
    fn a_plugin_named_other_shares_the_overflow_series() {
        let metrics = DaemonMetrics::new(1);
        metrics.plugin_run(OTHER_PLUGIN, RunResult::Success, Duration::ZERO);
        let text = rendered(&metrics);
        let count = text
            .lines()
            .filter(|line| line.starts_with("cniserverd_plugin_duration_seconds_count"))
            .count();
        assert_eq!(count, 1, "{text}");
    }

    #[test]
    fn plugin_run_times_fall_into_cumulative_buckets() {
        let metrics = DaemonMetrics::new(1);
        for millis in [3, 40, 40, 2_000, 500_000] {
            let took = Duration::from_millis(millis);
            metrics.plugin_run("bridge", RunResult::Success, took);
        }
        let text = rendered(&metrics);
        let cases = [
            ("le=\"0.005\"", 1),
            ("le=\"0.05\"", 3),
            ("le=\"2.5\"", 4),
            ("le=\"120\"", 4),
            ("le=\"+Inf\"", 5),
        ];
        for (le, want) in cases {
            let line = format!(
                "cniserverd_plugin_duration_seconds_bucket{{plugin=\"bridge\",{le}}} {want}\n"
            );
            assert!(text.contains(&line), "missing {line:?} in:\n{text}");
        }
        assert!(
            text.contains("cniserverd_plugin_duration_seconds_sum{plugin=\"bridge\"} 502.083\n")
        );
        assert!(text.contains("cniserverd_plugin_duration_seconds_count{plugin=\"bridge\"} 5\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let cases = [
            ("bridge", "bridge"),
            ("a\"b", "a\\\"b"),
            ("a\\b", "a\\\\b"),
            ("a\nb", "a\\nb"),
        ];
        for (raw, want) in cases {
            assert_eq!(LabelValue(raw).to_string(), want, "label {raw:?}");
        }
    }

    #[test]
    fn gauges_and_counters_show_their_values() {
        let metrics = DaemonMetrics::new(8);
        metrics.set_queued(3);
        metrics.worker_started();
        metrics.worker_started();
        metrics.worker_finished();
        metrics.cancelled(2);
        metrics.rejected(Rejection::QueueFull);
        let text = rendered(&metrics);
        for line in [
            "cniserverd_requests_queued 3\n",
            "cniserverd_workers_busy 1\n",
            "cniserverd_workers 8\n",
            "cniserverd_requests_cancelled_total 2\n",
            "cniserverd_requests_rejected_total{reason=\"queue_full\"} 1\n",
            "cniserverd_requests_rejected_total{reason=\"shutting_down\"} 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
