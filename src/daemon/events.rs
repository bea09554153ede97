//! The server library's events as the daemon's log lines.
//!
//! The library logs nothing itself; it tells the daemon what it did on its
//! own through [`ServerEvent`]s, on the reactor thread. Each becomes one
//! `key=value` line that an operator can grep, with no value from a
//! request in it.
//!
//! Refusals for the connection limit come in bursts (a node reboot sends
//! thousands of connections at once), so that line is written at most
//! once a second and counts the refusals since the previous one. There is
//! no timer: refusals after the last line of a burst are counted in the
//! next one, and the metric `GET /metrics` shows counts them all.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::log::{self, Level, Value};
use crate::server::ServerEvent;

/// The least time between two connection-limit lines.
pub const LIMIT_LINE_INTERVAL: Duration = Duration::from_secs(1);

/// Turns server events into log lines; one for the daemon's lifetime.
#[derive(Debug, Default)]
pub struct EventLog {
    limit: Mutex<LimitBurst>,
}

/// Connection-limit refusals not yet written, and when the last line was.
#[derive(Debug, Default)]
struct LimitBurst {
    last_line: Option<Instant>,
    refused: u64,
}

impl EventLog {
    /// An event log that has written nothing yet.
    pub fn new() -> EventLog {
        EventLog::default()
    }

    /// Writes the line for `event`, if one is due.
    pub fn log(&self, event: &ServerEvent<'_>) {
        if let Some((level, line)) = self.line(event, Instant::now()) {
            log::write(level, format_args!("{line}"));
        }
    }

    /// The line for `event` happening at `now`, or `None` while the
    /// connection-limit line is held back.
    pub fn line(&self, event: &ServerEvent<'_>, now: Instant) -> Option<(Level, String)> {
        let line = match event {
            ServerEvent::ConnectionLimit { open } => {
                let refused = self.count_limit_refusal(now)?;
                let line = format!(
                    "connection refused reason=connection_limit open={open} refused={refused}"
                );
                (Level::Warn, line)
            }
            ServerEvent::PeerRefused { uid, pid } => (
                Level::Warn,
                format!("connection refused reason=peer_uid uid={uid} pid={pid}"),
            ),
            ServerEvent::OutOfDescriptors => (
                Level::Warn,
                "out of file descriptors; accepting paused".to_owned(),
            ),
            ServerEvent::HandlerPanicked { command } => (
                Level::Error,
                format!("handler panicked command={}", Value(command)),
            ),
            ServerEvent::HandlerTimedOut { command } => (
                Level::Warn,
                format!("handler timed out command={}", Value(command)),
            ),
            // A runtime that gave up on a request, which goes on without
            // anyone to answer: worth knowing, nothing wrong here.
            ServerEvent::ClientGone { command } => (
                Level::Info,
                format!("client left before its answer command={}", Value(command)),
            ),
            ServerEvent::Rejected { status, reason } => (
                rejection_level(*status),
                format!("request rejected status={status} reason={}", Value(reason)),
            ),
        };
        Some(line)
    }

    /// Counts one refusal; the count since the last line when a line is
    /// due.
    fn count_limit_refusal(&self, now: Instant) -> Option<u64> {
        let mut burst = self
            .limit
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        burst.refused += 1;
        let due = burst
            .last_line
            .is_none_or(|last| now.duration_since(last) >= LIMIT_LINE_INTERVAL);
        if !due {
            return None;
        }
        burst.last_line = Some(now);
        Some(std::mem::take(&mut burst.refused))
    }
}

/// The level of the line for a request the server answered itself.
///
/// A request that broke the protocol (400, 404, 405, 501, 505) is the
/// client's bug and was told so; the daemon is fine, so info. A request
/// that hit a limit (408 too slow, 413 body too large, 431 head too large)
/// is a warning: either a peer misbehaves or a limit is too tight for a
/// real workload, and the operator may have to act. The 503s of shutdown
/// are expected while the daemon stops: info. Anything else: warn.
pub fn rejection_level(status: u16) -> Level {
    match status {
        400 | 404 | 405 | 501 | 505 | 503 => Level::Info,
        _ => Level::Warn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_is_one_key_value_line() {
        let cases: [(ServerEvent<'_>, Level, &str); 7] = [
            (
                ServerEvent::ConnectionLimit { open: 16384 },
                Level::Warn,
                "connection refused reason=connection_limit open=16384 refused=1",
            ),
            (
                ServerEvent::PeerRefused {
                    uid: 65534,
                    pid: 12601,
                },
                Level::Warn,
                "connection refused reason=peer_uid uid=65534 pid=12601",
            ),
            (
                ServerEvent::OutOfDescriptors,
                Level::Warn,
                "out of file descriptors; accepting paused",
            ),
            (
                ServerEvent::HandlerPanicked { command: "ADD" },
                Level::Error,
                "handler panicked command=ADD",
            ),
            (
                ServerEvent::HandlerTimedOut { command: "ADD" },
                Level::Warn,
                "handler timed out command=ADD",
            ),
            (
                ServerEvent::ClientGone { command: "DEL" },
                Level::Info,
                "client left before its answer command=DEL",
            ),
            (
                ServerEvent::Rejected {
                    status: 400,
                    reason: "missing K8S_POD_NAME",
                },
                Level::Info,
                "request rejected status=400 reason=\"missing K8S_POD_NAME\"",
            ),
        ];
        for (event, level, want) in cases {
            let got = EventLog::new().line(&event, Instant::now());
            assert_eq!(got, Some((level, want.to_owned())), "event {event:?}");
        }
    }

    #[test]
    fn connection_limit_lines_come_once_a_second_with_a_count() {
        let events = EventLog::new();
        let start = Instant::now();
        let refused = ServerEvent::ConnectionLimit { open: 4 };
        let at = |ms: u64| start + Duration::from_millis(ms);
        let count = |line: Option<(Level, String)>| {
            line.map(|(_, text)| text.rsplit_once("refused=").unwrap().1.to_owned())
        };

        // (when, the count its line carries; None: no line)
        let cases = [
            (0, Some("1")),
            (10, None),
            (500, None),
            (999, None),
            (1000, Some("4")),
            (1001, None),
            (5000, Some("2")),
        ];
        for (ms, want) in cases {
            let got = count(events.line(&refused, at(ms)));
            assert_eq!(got.as_deref(), want, "refusal at {ms} ms");
        }
    }

    #[test]
    fn rejections_from_limits_warn_the_rest_inform() {
        let cases = [
            (400, Level::Info),
            (404, Level::Info),
            (405, Level::Info),
            (501, Level::Info),
            (505, Level::Info),
            (503, Level::Info),
            (408, Level::Warn),
            (413, Level::Warn),
            (431, Level::Warn),
        ];
        for (status, want) in cases {
            assert_eq!(rejection_level(status), want, "status {status}");
        }
    }
}
