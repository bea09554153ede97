//! Holds thousands of idle and slow-loris connections on one server and
//! shows what they cost it, while good requests go on being served.
//!
//! ```text
//! cargo bench --bench hold_connections
//! ```
//!
//! The program runs itself twice over: as the driver, and, started by the
//! driver with `--serve PATH`, as the server under test, so that the
//! server's resident memory is read from `/proc/PID/smaps_rollup` (exact,
//! unlike the counters of `/proc/PID/status`) of a process
//! that holds nothing else. (The `embed` example would serve as well, but
//! it has no flag for the request timeout, and at its default of 10 s the
//! slow-loris clients would be closed before the figures are taken.)
//!
//! Each round opens 5,000 idle connections and 500 slow-loris ones (each
//! sends the start of a head, then one byte a second), sends good requests
//! meanwhile, closes everything, and prints the server's RSS before, during
//! and after. A second round shows whether what the first one left behind
//! grows. Everything happens on a socket in a temporary folder of its own,
//! bounded in count and in time; the figures are printed, never judged,
//! and only failed requests make the program exit non-zero.
//!
//! The server runs with glibc's mmap threshold fixed at its default
//! (`GLIBC_TUNABLES`, unless already set). Left dynamic, glibc raises it
//! when the first round's large blocks are freed, so the second round's
//! come from the heap, where glibc keeps them for reuse once freed: RSS
//! would then show the allocator's cache, not what the server holds.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use cniserver::{reference, shutdown_on_signals, Server, ServerConfig};

/// Idle connections held in each round: they connect and send nothing.
const IDLE: usize = 5_000;
/// Slow-loris connections held in each round.
const SLOW_LORIS: usize = 500;
/// Seconds of slow-loris bytes in each round; good requests go in between.
const SLOW_TICKS: usize = 8;
/// Good requests sent after each slow-loris tick.
const GOOD_PER_TICK: usize = 25;
/// Rounds of open-hold-close.
const ROUNDS: usize = 2;

/// The server's request timeout: far longer than a round, so that only
/// the driver closes the held connections.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// A guard on every socket read and write, and on each wait below.
const IO_GUARD: Duration = Duration::from_secs(20);
/// The whole run may take no longer than this.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// glibc's default mmap threshold, fixed so that it does not move: see the
/// module docs.
const FIXED_MMAP_THRESHOLD: &str = "glibc.malloc.mmap_threshold=131072";

/// The start of every slow-loris head; one more byte of the header value
/// follows each second.
const SLOW_HEAD: &[u8] = b"POST / HTTP/1.1\r\nHost: dummy\r\nX-Slow: ";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; anything else but `--serve` is ignored.
    let outcome = match args.iter().position(|a| a == "--serve") {
        Some(at) => match args.get(at + 1) {
            Some(path) => serve(Path::new(path)),
            None => Err(io::Error::other("--serve needs a socket path")),
        },
        None => drive(),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("hold_connections: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// The server side

/// Serves the reference handler on `path` until SIGTERM; says "ready" on
/// stdout once the socket listens.
fn serve(path: &Path) -> io::Result<bool> {
    raise_open_file_limit()?;
    let config = ServerConfig {
        request_timeout: REQUEST_TIMEOUT,
        shutdown_grace: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let server = Server::bind_with(path, config)?;
    // Before any thread starts, so that every thread has the signals blocked.
    shutdown_on_signals(server.shutdown_handle())?;
    println!("ready");
    io::stdout().flush()?;
    server.serve(|request, reply| reply.send(reference::answer(&request)))?;
    Ok(true)
}

// ---------------------------------------------------------------------------
// The driver

/// The server child, stopped and waited for when dropped, and the folder
/// of its socket, removed then.
struct ServerUnderTest {
    child: Child,
    folder: PathBuf,
    socket: PathBuf,
}

impl ServerUnderTest {
    fn start() -> io::Result<ServerUnderTest> {
        let folder = std::env::temp_dir().join(format!("cnis-hold-{}", std::process::id()));
        fs::create_dir(&folder)?;
        let socket = folder.join("run/cni.sock");
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("--serve")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if std::env::var_os("GLIBC_TUNABLES").is_none() {
            command.env("GLIBC_TUNABLES", FIXED_MMAP_THRESHOLD);
        }
        let mut child = command.spawn()?;

        let stdout = child.stdout.take().expect("stdout is piped");
        let server = ServerUnderTest {
            child,
            folder,
            socket,
        };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            return Err(io::Error::other("the server did not start"));
        }
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory, in kB.
    fn rss_kb(&self) -> io::Result<u64> {
        let rollup = fs::read_to_string(format!("/proc/{}/smaps_rollup", self.pid()))?;
        rollup
            .lines()
            .find_map(|line| line.strip_prefix("Rss:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| io::Error::other("no Rss in /proc/PID/smaps_rollup"))
    }
}

impl Drop for ServerUnderTest {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;

        let pid = Pid::from_raw(self.child.id() as i32);
        if kill(pid, Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + IO_GUARD;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = fs::remove_dir_all(&self.folder);
    }
}

/// How the good requests of a round fared.
#[derive(Default)]
struct Good {
    sent: usize,
    failed: Vec<String>,
    latencies: Vec<Duration>,
}

impl Good {
    fn send(&mut self, socket: &Path) {
        self.sent += 1;
        let started = Instant::now();
        match good_request(socket) {
            Ok(()) => self.latencies.push(started.elapsed()),
            Err(e) => self.failed.push(e),
        }
    }

    fn summary(&mut self) -> String {
        self.latencies.sort();
        let at = |q: f64| {
            let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
            self.latencies.get(i).copied().unwrap_or_default()
        };
        format!(
            "{}/{} succeeded (latency median {:?}, p99 {:?}, max {:?})",
            self.sent - self.failed.len(),
            self.sent,
            at(0.5),
            at(0.99),
            at(1.0)
        )
    }
}

fn drive() -> io::Result<bool> {
    let limit = raise_open_file_limit()?;
    let run_deadline = Instant::now() + RUN_LIMIT;
    let server = ServerUnderTest::start()?;
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or(FIXED_MMAP_THRESHOLD.into());
    println!(
        "hold_connections: server pid {} (this program with --serve), socket {}, \
         open-file limit {limit}, request timeout {REQUEST_TIMEOUT:?}, GLIBC_TUNABLES={tunables}",
        server.pid(),
        server.socket.display()
    );

    let at_start = server.rss_kb()?;
    let mut warm_up = Good::default();
    for _ in 0..100 {
        warm_up.send(&server.socket);
    }
    let before = server.rss_kb()?;
    println!(
        "RSS at start {at_start} kB; before the connections {before} kB \
         (after 100 good requests: {})",
        warm_up.summary()
    );

    let mut all_good = warm_up.failed.is_empty();
    let mut rounds = Vec::new();
    for round in 1..=ROUNDS {
        let figures = hold_round(&server, round, before, run_deadline)?;
        all_good &= figures.all_good;
        rounds.push((figures.during_kb, figures.after_kb));
    }
    println!("summary: RSS before {before} kB; (during, after) each round in kB: {rounds:?}");
    Ok(all_good)
}

/// What one round measured.
struct Round {
    /// The highest RSS sampled while the connections were held.
    during_kb: u64,
    /// RSS once they were all closed.
    after_kb: u64,
    /// Whether every good request succeeded.
    all_good: bool,
}

/// One round: open, hold with good requests going through, close.
fn hold_round(
    server: &ServerUnderTest,
    round: usize,
    before_kb: u64,
    run_deadline: Instant,
) -> io::Result<Round> {
    let socket = &server.socket;
    println!("round {round}:");

    let opening = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(connect(socket)?);
    }
    let mut slow = Vec::with_capacity(SLOW_LORIS);
    for _ in 0..SLOW_LORIS {
        let mut stream = connect(socket)?;
        stream.write_all(SLOW_HEAD)?;
        slow.push(stream);
    }
    let open = wait_for_open(socket, IDLE + SLOW_LORIS + 1)?;
    println!(
        "  opened {IDLE} idle + {SLOW_LORIS} slow-loris connections in {:?}; \
         the server counts {open} open (this scrape included)",
        opening.elapsed()
    );

    // One byte a second on every slow-loris connection, good requests in
    // between; memory sampled on every tick.
    let mut good = Good::default();
    let mut during_kb = server.rss_kb()?;
    let mut slow_closed = 0;
    for _ in 0..SLOW_TICKS {
        if Instant::now() > run_deadline {
            return Err(io::Error::other("the run took longer than its limit"));
        }
        let tick = Instant::now();
        for stream in &mut slow {
            if stream.write_all(b"a").is_err() {
                slow_closed += 1;
            }
        }
        for _ in 0..GOOD_PER_TICK {
            good.send(socket);
        }
        during_kb = during_kb.max(server.rss_kb()?);
        thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
    let held = (IDLE + SLOW_LORIS) as u64;
    let added_kb = during_kb.saturating_sub(before_kb);
    println!(
        "  RSS during {during_kb} kB (highest sample): +{added_kb} kB over before, \
         {} bytes per held connection",
        added_kb * 1024 / held
    );
    println!(
        "  good requests during the load: {}; slow-loris writes refused: {slow_closed}",
        good.summary()
    );
    for failure in good.failed.iter().take(5) {
        println!("    failed: {failure}");
    }

    let closing = Instant::now();
    drop(idle);
    drop(slow);
    let open = wait_for_open(socket, 1)?;
    let after_kb = server.rss_kb()?;
    println!(
        "  closed them all in {:?} (the server counts {open} open); RSS after {after_kb} kB \
         ({:+} kB over before)",
        closing.elapsed(),
        after_kb as i64 - before_kb as i64
    );
    Ok(Round {
        during_kb,
        after_kb,
        all_good: good.failed.is_empty(),
    })
}

fn connect(socket: &Path) -> io::Result<UnixStream> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(IO_GUARD))?;
    stream.set_write_timeout(Some(IO_GUARD))?;
    Ok(stream)
}

/// Sends `request` on a new connection and reads until the server closes.
fn exchange(socket: &Path, request: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = connect(socket)?;
    stream.write_all(request)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(answer)
}

/// One ADD that must get the reference handler's exact answer.
fn good_request(socket: &Path) -> Result<(), String> {
    let body = concat!(
        r#"{"env":{"CNI_COMMAND":"ADD","CNI_CONTAINERID":"good","#,
        r#""CNI_NETNS":"/var/run/netns/good","CNI_ARGS":"K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"},"#,
        r#""config":"e30="}"#
    );
    let request = format!(
        "POST / HTTP/1.1\r\nHost: dummy\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(socket, request.as_bytes()).map_err(|e| e.to_string())?;
    let result = reference::add_result("/var/run/netns/good");
    if answer.starts_with(b"HTTP/1.1 200 OK\r\n") && answer.ends_with(&result) {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&answer).into_owned())
    }
}

/// The server's count of open connections, this scrape's own included.
fn open_connections(socket: &Path) -> io::Result<usize> {
    let answer = exchange(socket, b"GET /metrics HTTP/1.1\r\n\r\n")?;
    String::from_utf8_lossy(&answer)
        .lines()
        .find_map(|line| line.strip_prefix("cniserver_connections_open "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no open connection count in /metrics"))
}

/// Waits until the server counts `count` open connections; returns the
/// last count seen when the guard runs out first.
fn wait_for_open(socket: &Path, count: usize) -> io::Result<usize> {
    let deadline = Instant::now() + IO_GUARD;
    loop {
        let open = open_connections(socket)?;
        if open == count || Instant::now() > deadline {
            return Ok(open);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Raises the soft open-file limit to the hard one; children inherit it.
///
/// std has no call for it and the crate's nix is built without its
/// resource module, so the two libc functions are declared here, with
/// `struct rlimit` and `RLIMIT_NOFILE` as 64-bit Linux (x86-64, arm64)
/// lays them out: like `/proc`, this program is for Linux only.
fn raise_open_file_limit() -> io::Result<u64> {
    use std::os::raw::c_int;

    #[repr(C)]
    struct Rlimit {
        soft: u64,
        hard: u64,
    }
    extern "C" {
        fn getrlimit(resource: c_int, limit: *mut Rlimit) -> c_int;
        fn setrlimit(resource: c_int, limit: *const Rlimit) -> c_int;
    }
    const RLIMIT_NOFILE: c_int = 7;

    let mut limit = Rlimit { soft: 0, hard: 0 };
    // SAFETY: `limit` is a writable `struct rlimit` for the whole call.
    if unsafe { getrlimit(RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    limit.soft = limit.hard;
    // SAFETY: `limit` is a valid `struct rlimit` for the whole call.
    if unsafe { setrlimit(RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let needed = (IDLE + SLOW_LORIS + 64) as u64;
    if limit.soft < needed {
        return Err(io::Error::other(format!(
            "the open-file limit is {}, below the {needed} this program needs",
            limit.soft
        )));
    }
    Ok(limit.soft)
}
