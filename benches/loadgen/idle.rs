//! Idle connections: open many, send nothing, and see what holding them
//! costs the server and whether it still answers quickly.
//!
//! A server that closes connections which send nothing for a while (ours
//! answers 408 after `ServerConfig::request_timeout`, 10 s by default) must
//! be measured before that happens; the report says how long the
//! connections were held so a reader can check.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crate::load;
use crate::procfs;

/// How long to let the server settle before reading its memory.
const SETTLE: Duration = Duration::from_millis(300);
/// How long to wait for the server to accept every connection.
const ACCEPT_WAIT: Duration = Duration::from_secs(5);
/// Fresh requests timed while the connections are held.
const FRESH_REQUESTS: usize = 5;

/// What to measure.
#[derive(Debug, Clone)]
pub struct IdleConfig {
    /// The server's socket.
    pub socket: PathBuf,
    /// The server's process ID.
    pub pid: u32,
    /// How many connections to hold.
    pub connections: usize,
}

/// What holding the connections cost.
#[derive(Debug, Clone, Default)]
pub struct IdleReport {
    /// Connections opened (fewer than asked if the server or the open-file
    /// limit refused some).
    pub opened: usize,
    /// Why opening stopped early, if it did.
    pub open_error: Option<String>,
    /// Server RSS before any connection, KiB.
    pub rss_before_kib: u64,
    /// Server RSS with the connections held, KiB.
    pub rss_held_kib: u64,
    /// Server RSS after they closed again, KiB.
    pub rss_after_kib: u64,
    /// Fresh requests timed while the connections were held; `None` for a
    /// failed one.
    pub fresh: Vec<Option<Duration>>,
    /// From the first connect to the last fresh request.
    pub held_for: Duration,
}

impl IdleReport {
    /// RSS growth per held connection, in bytes.
    pub fn bytes_per_connection(&self) -> f64 {
        let growth = self.rss_held_kib.saturating_sub(self.rss_before_kib) * 1024;
        growth as f64 / self.opened.max(1) as f64
    }

    /// The median of the fresh requests that succeeded.
    pub fn fresh_median(&self) -> Option<Duration> {
        let mut times: Vec<Duration> = self.fresh.iter().flatten().copied().collect();
        times.sort_unstable();
        times.get(times.len().saturating_sub(1) / 2).copied()
    }
}

/// Holds the connections, measures, and lets them go.
pub fn run(config: &IdleConfig, request: &[u8]) -> io::Result<IdleReport> {
    let mut report = IdleReport {
        rss_before_kib: procfs::memory(config.pid)?.rss_kib,
        ..IdleReport::default()
    };
    let files_before = procfs::open_files(config.pid)?;

    let started = Instant::now();
    let mut held = Vec::with_capacity(config.connections);
    for _ in 0..config.connections {
        match UnixStream::connect(&config.socket) {
            Ok(stream) => held.push(stream),
            Err(e) => {
                report.open_error = Some(e.to_string());
                break;
            }
        }
    }
    report.opened = held.len();

    // A connect completes once the connection is queued; wait until the
    // server has taken every one, then for its memory to settle.
    let wait_until = Instant::now() + ACCEPT_WAIT;
    while procfs::open_files(config.pid)? < files_before + held.len() && Instant::now() < wait_until
    {
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(SETTLE);
    report.rss_held_kib = procfs::memory(config.pid)?.rss_kib;

    for _ in 0..FRESH_REQUESTS {
        let timed = load::one_request(&config.socket, request)
            .ok()
            .filter(|(_, answer)| answer.status == 200)
            .map(|(elapsed, _)| elapsed);
        report.fresh.push(timed);
    }
    report.held_for = started.elapsed();

    drop(held);
    thread::sleep(SETTLE);
    report.rss_after_kib = procfs::memory(config.pid)?.rss_kib;
    Ok(report)
}
