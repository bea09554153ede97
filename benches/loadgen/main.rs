//! `loadgen`: drives a CNI server on a Unix socket and reads what it costs
//! from `/proc`.
//!
//! It sends the realistic ADD of [`workload`] from N closed-loop client
//! threads and reports throughput, latency percentiles and errors; given
//! the server's process ID it also reports the server's CPU time per
//! request and its memory. `idle` holds many connections open instead, and
//! `suite` starts every server of a comparison itself, measures them in
//! interleaved rounds and prints markdown tables (`benches/run.sh` builds
//! everything and calls it). Only std is used, so the tool measures the
//! servers and not a client library.
//!
//! ```text
//! cargo bench --bench loadgen -- load --socket /tmp/x/cni.sock --pid 1234
//! ```

mod exec;
mod idle;
mod load;
mod procfs;
mod report;
mod server;
mod suite;
mod sys;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use load::{Bound, LoadConfig};
use server::Binary;

const USAGE: &str = "\
loadgen: drives a CNI server on a Unix socket and reads its cost from /proc.

Usage:
  loadgen load --socket PATH [--pid PID] [--threads N] [--duration SECS | --count N]
               [--warmup SECS] [--keep-alive]
  loadgen idle --socket PATH --pid PID [--conns N]
  loadgen suite [--ours NAME=SERVER]... [--peer NAME=SERVER]... [--shim NAME=CLIENT]
                [--client NAME=CLIENT]... [--rounds N] [--duration SECS] [--warmup SECS]
                [--threads N] [--idle N,N,...] [--exec-runs N] --workdir DIR
  loadgen body

load    closed-loop load from N threads (default 2) for SECS (default 3) or N
        requests; prints req/s, p50/p99/max latency and errors, and with
        --pid the server's CPU time per request and its RSS (idle before,
        peak after). --keep-alive reuses a connection when the server
        allows it (ours, Go's and the Rust peers all close after answering).
idle    opens --conns connections (default 1000), sends nothing, and reports
        the server's RSS growth per connection and a fresh request's time.
suite   starts each server (SERVER --socket PATH) in DIR, measures load in
        interleaved rounds (default 3 x 3 s after 0.5 s of warm-up),
        idle connections (default 1000,10000) and the clients' exec-to-answer
        time against the first --ours server (hyperfine, default 300 runs),
        then prints markdown tables and the targets.
body    prints the request the load sends.

Options:
  -h, --help   print this help";

fn main() -> ExitCode {
    // `cargo bench` adds `--bench`; it means nothing here.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some((command, rest)) = args.split_first() else {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    };
    let result = match command.as_str() {
        "load" => Options::parse(rest).and_then(|o| run_load(&o)),
        "idle" => Options::parse(rest).and_then(|o| run_idle(&o)),
        "suite" => Options::parse(rest).and_then(|o| run_suite(&o)),
        "body" => {
            println!("{}", String::from_utf8_lossy(&workload::request()));
            Ok(())
        }
        "-h" | "--help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("loadgen: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Every option of every command; each command reads the ones it needs.
#[derive(Debug, Default)]
struct Options {
    socket: Option<PathBuf>,
    pid: Option<u32>,
    threads: Option<usize>,
    duration: Option<Duration>,
    count: Option<u64>,
    warmup: Option<Duration>,
    keep_alive: bool,
    conns: Option<usize>,
    ours: Vec<Binary>,
    peers: Vec<Binary>,
    shim: Option<Binary>,
    clients: Vec<Binary>,
    rounds: Option<usize>,
    idle: Option<Vec<usize>>,
    exec_runs: Option<usize>,
    workdir: Option<PathBuf>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options::default();
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            if flag == "--keep-alive" {
                options.keep_alive = true;
                continue;
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number = || -> Result<u64, String> {
                value
                    .parse()
                    .map_err(|_| format!("{flag} takes a whole number, got {value:?}"))
            };
            let seconds = || -> Result<Duration, String> {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| format!("{flag} takes seconds, got {value:?}"))
            };
            match flag.as_str() {
                "--socket" => options.socket = Some(value.into()),
                "--pid" => options.pid = Some(number()? as u32),
                "--threads" => options.threads = Some(number()? as usize),
                "--duration" => options.duration = Some(seconds()?),
                "--count" => options.count = Some(number()?),
                "--warmup" => options.warmup = Some(seconds()?),
                "--conns" => options.conns = Some(number()? as usize),
                "--ours" => options.ours.push(Binary::parse(value)?),
                "--peer" => options.peers.push(Binary::parse(value)?),
                "--shim" => options.shim = Some(Binary::parse(value)?),
                "--client" => options.clients.push(Binary::parse(value)?),
                "--rounds" => options.rounds = Some(number()? as usize),
                "--exec-runs" => options.exec_runs = Some(number()? as usize),
                "--workdir" => options.workdir = Some(value.into()),
                "--idle" => {
                    let counts: Result<Vec<usize>, _> = value
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::parse)
                        .collect();
                    options.idle = Some(counts.map_err(|_| format!("bad --idle {value:?}"))?);
                }
                other => return Err(format!("unknown option {other:?}\n\n{USAGE}")),
            }
        }
        Ok(options)
    }

    fn socket(&self) -> Result<PathBuf, String> {
        self.socket
            .clone()
            .ok_or_else(|| "--socket is needed".into())
    }
}

fn run_load(options: &Options) -> Result<(), String> {
    let request: Arc<[u8]> = workload::request().into();
    let bound = match (options.count, options.duration) {
        (Some(_), Some(_)) => return Err("give --duration or --count, not both".into()),
        (Some(n), None) => Bound::Count(n),
        (None, d) => Bound::Duration(d.unwrap_or(Duration::from_secs(3))),
    };
    let mut config = LoadConfig {
        socket: options.socket()?,
        threads: options.threads.unwrap_or(2),
        bound: Bound::Duration(options.warmup.unwrap_or_default()),
        keep_alive: options.keep_alive,
    };
    let pid = options.pid;
    let idle = pid
        .map(procfs::memory)
        .transpose()
        .map_err(|e| e.to_string())?;

    if options.warmup.is_some_and(|w| !w.is_zero()) {
        load::run(&config, &request);
    }
    config.bound = bound;
    let cpu_before = pid
        .map(procfs::cpu_time)
        .transpose()
        .map_err(|e| e.to_string())?;
    let report = load::run(&config, &request);
    let cpu_after = pid
        .map(procfs::cpu_time)
        .transpose()
        .map_err(|e| e.to_string())?;

    println!(
        "load: {} threads, {}, body {} bytes",
        config.threads,
        if config.keep_alive {
            "keep-alive where the server allows it"
        } else {
            "one connection per request"
        },
        workload::body().len()
    );
    println!(
        "requests: {} ok in {:.2} s = {} req/s",
        report.ok,
        report.elapsed.as_secs_f64(),
        report::thousands(report.requests_per_second())
    );
    println!(
        "latency µs: p50 {:.0}  p99 {:.0}  max {:.0}",
        report.percentile_us(50.0),
        report.percentile_us(99.0),
        report.max_us()
    );
    let e = report.errors;
    println!(
        "errors: {} (connect {}, io {}, malformed {}, status {})",
        e.total(),
        e.connect,
        e.io,
        e.malformed,
        e.status
    );
    if config.keep_alive {
        println!(
            "keep-alive: {} requests reused a connection, the server closed {} times",
            report.reused, report.closed_by_server
        );
    }
    if let (Some(pid), Some(idle), Some(before), Some(after)) = (pid, idle, cpu_before, cpu_after) {
        let memory = procfs::memory(pid).map_err(|e| e.to_string())?;
        let cpu = after.saturating_sub(before).as_secs_f64() * 1e6 / report.ok.max(1) as f64;
        println!(
            "server {pid}: CPU {cpu:.1} µs/req, RSS idle {} KiB, now {} KiB, peak {} KiB",
            idle.rss_kib, memory.rss_kib, memory.peak_kib
        );
    }
    Ok(())
}

fn run_idle(options: &Options) -> Result<(), String> {
    let limit = sys::raise_open_file_limit().map_err(|e| format!("open-file limit: {e}"))?;
    let config = idle::IdleConfig {
        socket: options.socket()?,
        pid: options.pid.ok_or("--pid is needed")?,
        connections: options.conns.unwrap_or(1000),
    };
    let report = idle::run(&config, &workload::request()).map_err(|e| e.to_string())?;
    println!(
        "idle: {} of {} connections held (open-file limit {limit}) for {:.2} s",
        report.opened,
        config.connections,
        report.held_for.as_secs_f64()
    );
    if let Some(error) = &report.open_error {
        println!("opening stopped: {error}");
    }
    println!(
        "server RSS: {} KiB idle, {} KiB held, {} KiB after closing: {:.3} KiB per connection",
        report.rss_before_kib,
        report.rss_held_kib,
        report.rss_after_kib,
        report.bytes_per_connection() / 1024.0
    );
    let fresh: Vec<String> = report
        .fresh
        .iter()
        .map(|t| t.map_or("failed".into(), |d| format!("{:.3}", d.as_secs_f64() * 1e3)))
        .collect();
    println!("fresh requests while held, ms: {}", fresh.join(", "));
    Ok(())
}

fn run_suite(options: &Options) -> Result<(), String> {
    let workdir = options.workdir.clone().ok_or("--workdir is needed")?;
    let config = suite::SuiteConfig {
        ours: options.ours.clone(),
        peers: options.peers.clone(),
        shim: options.shim.clone(),
        clients: options.clients.clone(),
        rounds: options.rounds.unwrap_or(3).max(1),
        duration: options.duration.unwrap_or(Duration::from_secs(3)),
        warmup: options.warmup.unwrap_or(Duration::from_millis(500)),
        threads: options.threads.unwrap_or(2).max(1),
        idle_counts: options.idle.clone().unwrap_or(vec![1000, 10_000]),
        exec_runs: options.exec_runs.unwrap_or(300),
        workdir,
    };
    if config.ours.is_empty() && config.peers.is_empty() {
        return Err("give at least one --ours or --peer server".into());
    }
    suite::run(&config)
}
