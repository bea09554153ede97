//! Exec-to-answer: how long a runtime waits for a shim process, from exec
//! to exit, for one ADD against a running server.
//!
//! hyperfine 1.15 cannot feed a file to a command's stdin without a shell,
//! and its own correction for the shell's start-up is too coarse for a
//! command of about a millisecond (it gave 0 ms). So it runs, without a
//! shell of its own (`-N`), `sh -c 'exec CLIENT < netconf'` for each client
//! and `sh -c true` beside them, and the median of the latter is
//! subtracted: what remains is the client's exec, run and exit. The `exec`
//! keeps the shell from forking a second time. Rounds rotate the order so
//! a busy spell on the machine hits every client.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::server::Binary;
use crate::workload;

/// How every client is run and timed.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// The server's socket, given both ways the clients look for it: the
    /// netconf's `socket` key (our shim) and `CNI_SERVER_SOCKET` (the
    /// peers' clients).
    pub socket: PathBuf,
    /// Where the netconf file and hyperfine's CSV go.
    pub workdir: PathBuf,
    /// Timed runs per client per round.
    pub runs_per_round: usize,
    /// Rounds.
    pub rounds: usize,
}

/// The name of the `sh -c true` baseline in the timings.
pub const SHELL_BASELINE: &str = "sh -c true";

/// One client's exec-to-answer times, one median per round.
#[derive(Debug, Clone)]
pub struct ExecTiming {
    /// The client's name.
    pub name: String,
    /// hyperfine's median of each round, less the baseline's median of the
    /// same round (for the baseline itself: as measured).
    pub round_medians: Vec<Duration>,
}

/// Writes the netconf the clients read on stdin, naming the socket.
pub fn write_netconf(config: &ExecConfig) -> Result<PathBuf, String> {
    let base = workload::NETCONF
        .strip_suffix('}')
        .ok_or("the netconf is not a JSON object")?;
    let netconf = format!("{base},\"socket\":\"{}\"}}\n", config.socket.display());
    let path = config.workdir.join("netconf.json");
    fs::write(&path, netconf).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Runs the client once and checks that it printed an ADD result: a stub
/// or a broken client is reported rather than timed.
pub fn check(client: &Binary, config: &ExecConfig, netconf: &Path) -> Result<(), String> {
    let stdin = fs::File::open(netconf).map_err(|e| e.to_string())?;
    let output = client_command(&client.path, config)
        .stdin(stdin)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", client.path.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || !stdout.contains(workload::NETNS) {
        return Err(format!(
            "{} did not print an ADD result ({}): stdout {:?}, stderr {:?}",
            client.name,
            output.status,
            stdout.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// Times every client with hyperfine, round after round, and the
/// `sh -c true` baseline with them (the last entry of the result).
pub fn time(
    clients: &[Binary],
    config: &ExecConfig,
    netconf: &Path,
) -> Result<Vec<ExecTiming>, String> {
    let mut commands: Vec<(String, String)> = clients
        .iter()
        .map(|c| {
            let line = format!(
                "sh -c 'exec {} < {} > /dev/null'",
                c.path.display(),
                netconf.display()
            );
            (c.name.clone(), line)
        })
        .collect();
    commands.push((SHELL_BASELINE.to_owned(), "sh -c true".to_owned()));
    let mut raw: Vec<Vec<Duration>> = vec![Vec::new(); commands.len()];
    let csv = config.workdir.join("exec.csv");

    for round in 0..config.rounds {
        let mut hyperfine = Command::new("hyperfine");
        hyperfine
            .args(["-N", "--style", "none", "--warmup", "10"])
            .arg("--runs")
            .arg(config.runs_per_round.to_string())
            .arg("--export-csv")
            .arg(&csv);
        // Rotate the order so that no client always runs first.
        for offset in 0..commands.len() {
            let (name, line) = &commands[(round + offset) % commands.len()];
            hyperfine.arg("-n").arg(name).arg(line);
        }
        // Its warnings (outliers on a busy machine, short commands) would
        // drown the progress lines: they are shown only if it fails.
        let output = with_client_environment(&mut hyperfine, config)
            .stdout(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run hyperfine: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "hyperfine failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }

        let table = fs::read_to_string(&csv).map_err(|e| e.to_string())?;
        for (name, median) in parse_csv_medians(&table)? {
            if let Some(i) = commands.iter().position(|(n, _)| *n == name) {
                raw[i].push(median);
            }
        }
    }

    let baseline = raw.last().cloned().unwrap_or_default();
    Ok(commands
        .iter()
        .zip(raw)
        .enumerate()
        .map(|(i, ((name, _), medians))| {
            let is_baseline = i == commands.len() - 1;
            let round_medians = medians
                .iter()
                .zip(&baseline)
                .map(|(m, b)| {
                    if is_baseline {
                        *m
                    } else {
                        m.saturating_sub(*b)
                    }
                })
                .collect();
            ExecTiming {
                name: name.clone(),
                round_medians,
            }
        })
        .collect())
}

fn client_command(path: &Path, config: &ExecConfig) -> Command {
    let mut command = Command::new(path);
    with_client_environment(&mut command, config);
    command
}

/// The environment a runtime gives the shim: the workload's variables and
/// nothing inherited from this process, so every client sends the same.
fn with_client_environment<'a>(command: &'a mut Command, config: &ExecConfig) -> &'a mut Command {
    command.env_clear();
    for (name, value) in workload::environment() {
        command.env(name, value);
    }
    command.env("CNI_SERVER_SOCKET", &config.socket)
}

/// Reads `command,mean,stddev,median,...` rows, times in seconds.
fn parse_csv_medians(table: &str) -> Result<Vec<(String, Duration)>, String> {
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let (Some(command), Some(median)) = (column("command"), column("median")) else {
        return Err(format!("unexpected hyperfine CSV header: {header:?}"));
    };
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let seconds: f64 = fields
                .get(median)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| format!("unexpected hyperfine CSV row: {line}"))?;
            let name = fields.get(command).unwrap_or(&"").to_string();
            Ok((name, Duration::from_secs_f64(seconds.max(0.0))))
        })
        .collect()
}
