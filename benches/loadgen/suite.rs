//! The whole comparison: every server measured in the same run, rounds
//! interleaved, medians taken, tables printed.
//!
//! Each measurement starts the server afresh, so its idle memory is read
//! before it has served anything and its peak (`VmHWM`) covers that one
//! load only. Round `r` starts with server `r`, so that no server always
//! follows the same one on a machine whose load drifts. Ratios are taken
//! pair by pair within a round, then their median, because on a shared
//! machine the ratio is steadier than either figure.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::exec::{self, ExecConfig, ExecTiming};
use crate::idle::{self, IdleConfig, IdleReport};
use crate::load::{self, Bound, LoadConfig};
use crate::procfs;
use crate::report;
use crate::server::{Binary, RunningServer};
use crate::sys;
use crate::workload;

/// What the suite runs.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// Our servers; the first is the one the targets and the exec timing use.
    pub ours: Vec<Binary>,
    /// The servers we compare against.
    pub peers: Vec<Binary>,
    /// Our shim, for the exec timing.
    pub shim: Option<Binary>,
    /// The peers' clients, for the exec timing.
    pub clients: Vec<Binary>,
    /// Load rounds.
    pub rounds: usize,
    /// Measured load per server per round.
    pub duration: Duration,
    /// Unmeasured load before it.
    pub warmup: Duration,
    /// Client threads.
    pub threads: usize,
    /// Idle connection counts to hold.
    pub idle_counts: Vec<usize>,
    /// Timed execs per client in all.
    pub exec_runs: usize,
    /// Where sockets, logs and scratch files go.
    pub workdir: PathBuf,
}

/// One server's figures from one load round.
#[derive(Debug, Clone, Default)]
pub struct LoadSample {
    /// Successful requests per second.
    pub requests_per_second: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// Slowest request, µs.
    pub max_us: f64,
    /// Server CPU time (user + system) per successful request, µs.
    pub cpu_us_per_request: f64,
    /// Server RSS before any request, KiB.
    pub rss_idle_kib: u64,
    /// The anonymous part of it (no binary or library pages), KiB.
    pub anon_idle_kib: u64,
    /// Server peak RSS, KiB.
    pub rss_peak_kib: u64,
    /// Failed requests.
    pub errors: u64,
    /// In the keep-alive probe: requests that reused a connection.
    pub keep_alive_reused: Option<u64>,
}

/// Everything measured for one server.
#[derive(Debug, Clone)]
pub struct ServerResults {
    /// The server.
    pub binary: Binary,
    /// Whether it is one of ours.
    pub ours: bool,
    /// One sample per round, in round order.
    pub rounds: Vec<LoadSample>,
    /// One report per idle count, in the order asked.
    pub idle: Vec<(usize, IdleReport)>,
}

/// All the suite measured.
#[derive(Debug, Clone)]
pub struct SuiteResults {
    /// Per server, ours first.
    pub servers: Vec<ServerResults>,
    /// Exec-to-answer per client, or why it was not measured.
    pub exec: Result<Vec<ExecTiming>, String>,
    /// Clients that could not be timed, and why.
    pub exec_skipped: Vec<(String, String)>,
    /// The server the clients were timed against.
    pub exec_server: String,
    /// Every client's binary, for sizes.
    pub clients: Vec<Binary>,
    /// Body bytes of the load's request.
    pub body_bytes: usize,
    /// Anything that went wrong on the way but did not stop the run.
    pub notes: Vec<String>,
}

/// Runs every phase and prints the tables on stdout (progress on stderr).
pub fn run(config: &SuiteConfig) -> Result<(), String> {
    match sys::raise_open_file_limit() {
        Ok(limit) => eprintln!("open-file limit raised to {limit}"),
        Err(e) => eprintln!("cannot raise the open-file limit: {e}"),
    }
    let request: Arc<[u8]> = workload::request().into();
    let mut results = SuiteResults {
        servers: config
            .ours
            .iter()
            .map(|b| (b, true))
            .chain(config.peers.iter().map(|b| (b, false)))
            .map(|(binary, ours)| ServerResults {
                binary: binary.clone(),
                ours,
                rounds: Vec::new(),
                idle: Vec::new(),
            })
            .collect(),
        exec: Err("not run".into()),
        exec_skipped: Vec::new(),
        exec_server: String::new(),
        clients: Vec::new(),
        body_bytes: workload::body().len(),
        notes: Vec::new(),
    };

    load_rounds(config, &request, &mut results)?;
    idle_phase(config, &request, &mut results)?;
    exec_phase(config, &mut results)?;

    print!("{}", report::render(config, &results));
    Ok(())
}

fn load_rounds(
    config: &SuiteConfig,
    request: &Arc<[u8]>,
    results: &mut SuiteResults,
) -> Result<(), String> {
    let count = results.servers.len();
    for round in 0..config.rounds {
        for offset in 0..count {
            let index = (round + offset) % count;
            let binary = results.servers[index].binary.clone();
            eprintln!(
                "load round {}/{}: {}",
                round + 1,
                config.rounds,
                binary.name
            );
            let probe_keep_alive = round == 0;
            let sample = measure_load(
                config,
                &binary,
                request,
                probe_keep_alive,
                &mut results.notes,
            )?;
            results.servers[index].rounds.push(sample);
        }
    }
    Ok(())
}

fn measure_load(
    config: &SuiteConfig,
    binary: &Binary,
    request: &Arc<[u8]>,
    probe_keep_alive: bool,
    notes: &mut Vec<String>,
) -> Result<LoadSample, String> {
    let server = RunningServer::start(binary, &config.workdir)?;
    let pid = server.pid();
    let proc_error = |e: std::io::Error| format!("{}: cannot read /proc/{pid}: {e}", binary.name);

    thread::sleep(Duration::from_millis(200));
    let idle = procfs::memory(pid).map_err(proc_error)?;

    let mut load_config = LoadConfig {
        socket: server.socket().to_owned(),
        threads: config.threads,
        bound: Bound::Duration(config.warmup),
        keep_alive: false,
    };
    load::run(&load_config, request);

    load_config.bound = Bound::Duration(config.duration);
    let cpu_before = procfs::cpu_time(pid).map_err(proc_error)?;
    let measured = load::run(&load_config, request);
    let cpu_after = procfs::cpu_time(pid).map_err(proc_error)?;
    let memory = procfs::memory(pid).map_err(proc_error)?;

    let keep_alive_reused = probe_keep_alive.then(|| {
        let probe = LoadConfig {
            threads: 1,
            bound: Bound::Count(100),
            keep_alive: true,
            ..load_config.clone()
        };
        load::run(&probe, request).reused
    });

    if let Err(e) = server.stop() {
        notes.push(e);
    }
    let cpu = cpu_after.saturating_sub(cpu_before);
    Ok(LoadSample {
        requests_per_second: measured.requests_per_second(),
        p50_us: measured.percentile_us(50.0),
        p99_us: measured.percentile_us(99.0),
        max_us: measured.max_us(),
        cpu_us_per_request: cpu.as_secs_f64() * 1e6 / measured.ok.max(1) as f64,
        rss_idle_kib: idle.rss_kib,
        anon_idle_kib: idle.anon_kib,
        rss_peak_kib: memory.peak_kib,
        errors: measured.errors.total(),
        keep_alive_reused,
    })
}

fn idle_phase(
    config: &SuiteConfig,
    request: &Arc<[u8]>,
    results: &mut SuiteResults,
) -> Result<(), String> {
    for &connections in &config.idle_counts {
        for server_results in results.servers.iter_mut() {
            let binary = &server_results.binary;
            eprintln!("idle connections: {connections} on {}", binary.name);
            let server = RunningServer::start(binary, &config.workdir)?;
            thread::sleep(Duration::from_millis(200));
            let idle_config = IdleConfig {
                socket: server.socket().to_owned(),
                pid: server.pid(),
                connections,
            };
            let report = idle::run(&idle_config, request)
                .map_err(|e| format!("{}: idle connections: {e}", binary.name))?;
            if let Some(error) = &report.open_error {
                results.notes.push(format!(
                    "{}: opened only {} of {connections} connections: {error}",
                    binary.name, report.opened
                ));
            }
            if let Err(e) = server.stop() {
                results.notes.push(e);
            }
            server_results.idle.push((connections, report));
        }
    }
    Ok(())
}

fn exec_phase(config: &SuiteConfig, results: &mut SuiteResults) -> Result<(), String> {
    let Some(target) = config.ours.first() else {
        return Ok(());
    };
    let mut clients: Vec<Binary> = config.shim.iter().cloned().collect();
    clients.extend(config.clients.iter().cloned());
    if clients.is_empty() || config.exec_runs == 0 {
        return Ok(());
    }
    eprintln!("exec-to-answer against {}", target.name);
    results.exec_server = target.name.clone();
    results.clients = clients.clone();

    let server = RunningServer::start(target, &config.workdir)?;
    let exec_config = ExecConfig {
        socket: server.socket().to_owned(),
        workdir: config.workdir.clone(),
        rounds: config.rounds.max(1),
        runs_per_round: (config.exec_runs / config.rounds.max(1)).max(10),
    };
    let netconf = exec::write_netconf(&exec_config)?;

    let mut timed = Vec::new();
    for client in clients {
        match exec::check(&client, &exec_config, &netconf) {
            Ok(()) => timed.push(client),
            Err(why) => results.exec_skipped.push((client.name.clone(), why)),
        }
    }
    // The cost of starting any process at all, for scale.
    timed.push(Binary {
        name: report::SPAWN_FLOOR.to_owned(),
        path: PathBuf::from("/bin/true"),
    });
    results.exec = exec::time(&timed, &exec_config, &netconf);

    if let Err(e) = server.stop() {
        results.notes.push(e);
    }
    Ok(())
}
