//! The closed-loop load: N client threads, each sending one request and
//! waiting for its answer before the next.
//!
//! Two modes. One connection per request is how a CNI shim talks: connect,
//! send, read until the server closes. Keep-alive sends the next request on
//! the same connection when the answer allows it; a server that answers
//! `Connection: close` (ours, the Go server and both Rust peers do) gets a
//! fresh connection each time, and the report counts those closes.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A client that waits longer than this for an answer counts an I/O error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// When the load stops.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    /// After this long.
    Duration(Duration),
    /// After this many requests in all.
    Count(u64),
}

/// How to drive the server.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The server's socket.
    pub socket: PathBuf,
    /// Concurrent client threads.
    pub threads: usize,
    /// When to stop.
    pub bound: Bound,
    /// Reuse a connection when the server allows it.
    pub keep_alive: bool,
}

/// Failures, by kind. A failed request is not timed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Errors {
    /// The connection was refused or failed.
    pub connect: u64,
    /// Writing the request or reading the answer failed or timed out.
    pub io: u64,
    /// The answer was not a complete HTTP answer.
    pub malformed: u64,
    /// The answer's status was not 200.
    pub status: u64,
}

impl Errors {
    /// All failures.
    pub fn total(&self) -> u64 {
        self.connect + self.io + self.malformed + self.status
    }

    fn add(&mut self, other: &Errors) {
        self.connect += other.connect;
        self.io += other.io;
        self.malformed += other.malformed;
        self.status += other.status;
    }
}

/// What one load run saw.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Requests answered 200.
    pub ok: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency of every successful request, sorted, in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// Failures.
    pub errors: Errors,
    /// Requests sent on a connection that had already carried one.
    pub reused: u64,
    /// Answers after which the server closed the connection.
    pub closed_by_server: u64,
}

impl LoadReport {
    /// Successful requests per second.
    pub fn requests_per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at percentile `p` (nearest rank), in microseconds.
    pub fn percentile_us(&self, p: f64) -> f64 {
        if self.latencies_ns.is_empty() {
            return f64::NAN;
        }
        let rank = (p / 100.0 * self.latencies_ns.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies_ns.len()) - 1;
        self.latencies_ns[index] as f64 / 1000.0
    }

    /// The slowest successful request, in microseconds.
    pub fn max_us(&self) -> f64 {
        self.latencies_ns
            .last()
            .map_or(f64::NAN, |&ns| ns as f64 / 1000.0)
    }
}

/// Runs the load and gathers what every client thread saw.
pub fn run(config: &LoadConfig, request: &Arc<[u8]>) -> LoadReport {
    let started = Instant::now();
    let deadline = match config.bound {
        Bound::Duration(d) => Some(started + d),
        Bound::Count(_) => None,
    };
    let budget = match config.bound {
        Bound::Count(n) => Some(Arc::new(AtomicU64::new(n))),
        Bound::Duration(_) => None,
    };

    let clients: Vec<_> = (0..config.threads.max(1))
        .map(|_| {
            let client = Client {
                socket: config.socket.clone(),
                request: request.clone(),
                keep_alive: config.keep_alive,
                deadline,
                budget: budget.clone(),
            };
            thread::spawn(move || client.run())
        })
        .collect();

    let mut report = LoadReport::default();
    for client in clients {
        // A client thread only panics on a bug in this file.
        let part = client.join().expect("client thread panicked");
        report.ok += part.ok;
        report.errors.add(&part.errors);
        report.reused += part.reused;
        report.closed_by_server += part.closed_by_server;
        report.latencies_ns.extend(part.latencies_ns);
    }
    report.elapsed = started.elapsed();
    report.latencies_ns.sort_unstable();
    report
}

/// Sends one request on a fresh connection and times it to the server's
/// close. Used for the request made while idle connections are held.
pub fn one_request(socket: &Path, request: &[u8]) -> io::Result<(Duration, Answer)> {
    let started = Instant::now();
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.write_all(request)?;
    let mut buf = Vec::with_capacity(1024);
    stream.read_to_end(&mut buf)?;
    let elapsed = started.elapsed();
    let answer = Answer::parse(&buf)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "incomplete answer"))?;
    Ok((elapsed, answer))
}

struct Client {
    socket: PathBuf,
    request: Arc<[u8]>,
    keep_alive: bool,
    deadline: Option<Instant>,
    budget: Option<Arc<AtomicU64>>,
}

enum Outcome {
    Ok,
    Status,
    Malformed,
}

impl Client {
    fn run(self) -> LoadReport {
        let mut report = LoadReport::default();
        let mut buf = Vec::with_capacity(4096);
        let mut open: Option<UnixStream> = None;

        while self.may_send() {
            let started = Instant::now();
            let reusing = open.is_some();
            let mut stream = match open.take() {
                Some(stream) => stream,
                None => match self.connect() {
                    Ok(stream) => stream,
                    Err(_) => {
                        report.errors.connect += 1;
                        continue;
                    }
                },
            };

            let result = if self.keep_alive {
                exchange_framed(&mut stream, &self.request, &mut buf)
            } else {
                exchange_to_close(&mut stream, &self.request, &mut buf)
            };
            let elapsed = started.elapsed();

            let answer = match result {
                Ok(answer) => answer,
                Err(_) => {
                    report.errors.io += 1;
                    continue;
                }
            };
            match answer.outcome() {
                Outcome::Ok => {
                    report.ok += 1;
                    report.latencies_ns.push(elapsed.as_nanos() as u64);
                }
                Outcome::Status => report.errors.status += 1,
                Outcome::Malformed => report.errors.malformed += 1,
            }
            if reusing {
                report.reused += 1;
            }
            if answer.closes {
                report.closed_by_server += 1;
            } else if self.keep_alive {
                open = Some(stream);
            }
        }
        report
    }

    fn may_send(&self) -> bool {
        if let Some(deadline) = self.deadline {
            return Instant::now() < deadline;
        }
        match &self.budget {
            Some(budget) => budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
            None => false,
        }
    }

    fn connect(&self) -> io::Result<UnixStream> {
        let stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        Ok(stream)
    }
}

/// One request on a connection the server closes after answering: the
/// answer ends where the stream does.
fn exchange_to_close(
    stream: &mut UnixStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> io::Result<Answer> {
    stream.write_all(request)?;
    buf.clear();
    stream.read_to_end(buf)?;
    let mut answer = Answer::parse(buf).unwrap_or_default();
    answer.closes = true;
    Ok(answer)
}

/// One request on a connection that may stay open: the answer ends where
/// its `Content-Length` says.
fn exchange_framed(
    stream: &mut UnixStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> io::Result<Answer> {
    stream.write_all(request)?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(answer) = Answer::parse(buf) {
            return Ok(answer);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            // The server closed early; what arrived is all there is.
            let mut answer = Answer::parse(buf).unwrap_or_default();
            answer.closes = true;
            return Ok(answer);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// What the load generator needs of an answer.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// The status code; 0 when the status line was unreadable.
    pub status: u16,
    /// Whether the server closes the connection after this answer.
    pub closes: bool,
    /// Whether the whole body (by `Content-Length`) arrived.
    pub complete: bool,
}

impl Answer {
    /// Parses an answer once its head and whole body are in `buf`.
    pub fn parse(buf: &[u8]) -> Option<Answer> {
        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = std::str::from_utf8(&buf[..head_end]).ok()?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);

        let mut length = None;
        let mut closes = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection") {
                closes = value.eq_ignore_ascii_case("close");
            }
        }

        let body = &buf[head_end..];
        let length = length.unwrap_or(body.len());
        if body.len() < length {
            return None;
        }
        Some(Answer {
            status,
            closes,
            complete: true,
        })
    }

    fn outcome(&self) -> Outcome {
        match (self.complete, self.status) {
            (false, _) => Outcome::Malformed,
            (true, 200) => Outcome::Ok,
            (true, _) => Outcome::Status,
        }
    }
}
