//! Counters the reactor keeps about itself, rendered in the Prometheus text
//! exposition format for `GET /metrics`.
//!
//! Only the reactor thread touches them, so they are plain integers: the
//! CNI path pays an array index and an add per request, nothing more.

use std::fmt::Write;
use std::time::Duration;

use crate::cni::Command;

/// Command labels: the spec's commands, UPDATE, any other string, and
/// requests whose body never decoded far enough to name one.
const COMMANDS: [&str; 9] = [
    "ADD",
    "DEL",
    "CHECK",
    "VERSION",
    "GC",
    "STATUS",
    "UPDATE",
    "other",
    "undecoded",
];

/// The label index of a request that did not decode.
pub(crate) const UNDECODED: usize = 8;

/// How a pod request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The handler answered with success.
    Success = 0,
    /// The handler answered with an error.
    Error,
    /// The body did not decode; the handler never saw it.
    Rejected,
    /// The handler took longer than the reply timeout.
    Timeout,
    /// The server was shutting down.
    ShuttingDown,
    /// The handler panicked or dropped its reply handle.
    Failed,
    /// The client left before the answer.
    ClientGone,
}

const OUTCOMES: [&str; 7] = [
    "success",
    "error",
    "rejected",
    "timeout",
    "shutting_down",
    "failed",
    "client_gone",
];

/// Why a connection was turned away at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Too many connections were open.
    ConnectionLimit = 0,
    /// The peer's uid is not allowed.
    PeerUid,
}

const REFUSALS: [&str; 2] = ["connection_limit", "peer_uid"];

/// Upper bounds of the latency buckets, in microseconds and as their `le`
/// label in seconds: from a fast handler's answer to kubelet's two-minute
/// CRI timeout. Integers keep float formatting (and its code) out of the
/// binary.
const BUCKETS: [(u64, &str); 13] = [
    (500, "0.0005"),
    (1_000, "0.001"),
    (5_000, "0.005"),
    (10_000, "0.01"),
    (50_000, "0.05"),
    (100_000, "0.1"),
    (500_000, "0.5"),
    (1_000_000, "1"),
    (5_000_000, "5"),
    (10_000_000, "10"),
    (30_000_000, "30"),
    (60_000_000, "60"),
    (120_000_000, "120"),
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Counts per bucket, not cumulative; the last slot is +Inf.
    counts: [u64; BUCKETS.len() + 1],
    sum_micros: u64,
}

/// The reactor's counters.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    requests: [[u64; OUTCOMES.len()]; COMMANDS.len()],
    latency: [Histogram; COMMANDS.len()],
    refused: [u64; REFUSALS.len()],
    http_errors: Vec<(u16, u64)>,
    pub in_flight: u64,
}

/// The label of a command index, for events.
pub(crate) fn label_name(index: usize) -> &'static str {
    COMMANDS[index]
}

/// The label index of a command.
pub(crate) fn command_label(command: &Command) -> usize {
    match command {
        Command::Add => 0,
        Command::Del => 1,
        Command::Check => 2,
        Command::Version => 3,
        Command::Gc => 4,
        Command::Status => 5,
        Command::Update => 6,
        Command::Other(_) => 7,
    }
}

impl Metrics {
    /// Counts a finished pod request and, when it was handled, its latency.
    pub fn request(&mut self, command: usize, outcome: Outcome, took: Option<Duration>) {
        self.requests[command][outcome as usize] += 1;
        if let Some(took) = took {
            let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            let histogram = &mut self.latency[command];
            let bucket = BUCKETS
                .iter()
                .position(|&(le, _)| micros <= le)
                .unwrap_or(BUCKETS.len());
            histogram.counts[bucket] += 1;
            histogram.sum_micros = histogram.sum_micros.saturating_add(micros);
        }
    }

    /// Counts a connection turned away at accept.
    pub fn refused(&mut self, why: Refusal) {
        self.refused[why as usize] += 1;
    }

    /// Counts a request answered with an HTTP-level error status.
    pub fn http_error(&mut self, status: u16) {
        match self.http_errors.iter_mut().find(|(s, _)| *s == status) {
            Some((_, count)) => *count += 1,
            None => self.http_errors.push((status, 1)),
        }
    }

    /// Renders every metric in the text exposition format, version 0.0.4.
    pub fn render(&self, open_connections: usize, out: &mut String) {
        // Writing into a String cannot fail.
        let _ = self.render_into(open_connections, out);
    }

    fn render_into(&self, open_connections: usize, out: &mut String) -> std::fmt::Result {
        writeln!(
            out,
            "# HELP cniserver_requests_total CNI requests answered, by command and outcome."
        )?;
        writeln!(out, "# TYPE cniserver_requests_total counter")?;
        for (c, command) in COMMANDS.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                let n = self.requests[c][o];
                if n > 0 {
                    writeln!(
                        out,
                        "cniserver_requests_total{{command=\"{command}\",outcome=\"{outcome}\"}} {n}"
                    )?;
                }
            }
        }

        writeln!(out, "# HELP cniserver_request_duration_seconds Time from a complete request to its answer, by command.")?;
        writeln!(out, "# TYPE cniserver_request_duration_seconds histogram")?;
        for (c, command) in COMMANDS.iter().enumerate() {
            let histogram = &self.latency[c];
            let total: u64 = histogram.counts.iter().sum();
            if total == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (b, (_, le)) in BUCKETS.iter().enumerate() {
                cumulative += histogram.counts[b];
                writeln!(
                    out,
                    "cniserver_request_duration_seconds_bucket{{command=\"{command}\",le=\"{le}\"}} {cumulative}"
                )?;
            }
            writeln!(
                out,
                "cniserver_request_duration_seconds_bucket{{command=\"{command}\",le=\"+Inf\"}} {total}"
            )?;
            writeln!(
                out,
                "cniserver_request_duration_seconds_sum{{command=\"{command}\"}} {}.{:06}",
                histogram.sum_micros / 1_000_000,
                histogram.sum_micros % 1_000_000
            )?;
            writeln!(
                out,
                "cniserver_request_duration_seconds_count{{command=\"{command}\"}} {total}"
            )?;
        }

        writeln!(
            out,
            "# HELP cniserver_requests_in_flight Pod requests the handler holds now."
        )?;
        writeln!(out, "# TYPE cniserver_requests_in_flight gauge")?;
        writeln!(out, "cniserver_requests_in_flight {}", self.in_flight)?;

        writeln!(
            out,
            "# HELP cniserver_connections_open Connections open now, this scrape's included."
        )?;
        writeln!(out, "# TYPE cniserver_connections_open gauge")?;
        writeln!(out, "cniserver_connections_open {open_connections}")?;

        writeln!(out, "# HELP cniserver_connections_refused_total Connections turned away at accept, by reason.")?;
        writeln!(out, "# TYPE cniserver_connections_refused_total counter")?;
        for (r, reason) in REFUSALS.iter().enumerate() {
            writeln!(
                out,
                "cniserver_connections_refused_total{{reason=\"{reason}\"}} {}",
                self.refused[r]
            )?;
        }

        writeln!(out, "# HELP cniserver_http_errors_total Requests answered with an HTTP-level error, by status.")?;
        writeln!(out, "# TYPE cniserver_http_errors_total counter")?;
        for (status, n) in &self.http_errors {
            writeln!(
                out,
                "cniserver_http_errors_total{{status=\"{status}\"}} {n}"
            )?;
        }
        Ok(())
    }
}
