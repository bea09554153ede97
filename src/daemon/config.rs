//! The daemon's command line, read by hand.
//!
//! Every flag takes its value as the next argument or after `=`
//! (`--workers 8`, `--workers=8`). Parsing is a pure function of the
//! arguments and the two environment variables that stand in for flags,
//! so that it can be tested without a process.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::delegate::{PluginPath, DEFAULT_PLUGIN_PATH};
use super::log::{level_from_rust_log, Level};
use crate::cni::DEFAULT_SOCKET_PATH;

/// Plugins that may run at once, unless `--workers` says otherwise.
pub const DEFAULT_WORKERS: usize = 16;
/// The most `--workers` accepts.
pub const MAX_WORKERS: usize = 1024;
/// Requests that may wait for a worker, unless `--max-queue` says otherwise.
pub const DEFAULT_MAX_QUEUE: usize = 1024;
/// Seconds a request may take, unless `--plugin-timeout` says otherwise.
pub const DEFAULT_PLUGIN_TIMEOUT_SECS: u64 = 120;
/// Seconds running plugins may finish after SIGTERM, unless
/// `--shutdown-grace` says otherwise (the server library's default).
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;
/// The longest `--plugin-timeout` or `--shutdown-grace` accepted: a day.
const MAX_SECONDS: f64 = 86_400.0;

/// The help text, documenting every flag and its default.
pub const USAGE: &str = "\
usage: cniserverd [OPTIONS]

Serves the CNI server protocol on a root-only Unix socket and, for each
request a CNI shim forwards, runs the delegate CNI plugin named by the
netconf key \"delegateType\" (a thick plugin).

Options:
  --socket PATH              the Unix socket to listen on; its folder is
                             created with mode 0700
                             (default /var/run/openshift-sdn/cni-server.sock)
  --cni-path FOLDERS         colon-separated absolute folders to find delegate
                             plugins in; plugins also get it as CNI_PATH
                             (default: $CNI_PATH, else /opt/cni/bin:/usr/lib/cni)
  --workers N                how many plugins may run at once, 1 to 1024
                             (default 16)
  --max-queue N              how many requests may wait for a worker; beyond
                             it requests fail at once with CNI error 11
                             (default 1024)
  --plugin-timeout SECONDS   how long a request may take, queue wait
                             included; a plugin still running then is killed
                             with its whole process group (default 120)
  --shutdown-grace SECONDS   after SIGTERM or SIGINT, how long running
                             plugins may still finish (default 30)
  --log-level LEVEL          error, warn, info or debug
                             (default: from $RUST_LOG, else info)
  -h, --help                 print this help and exit
  --version                  print the version and exit

Requests for one container ID run one at a time, in arrival order; a DEL
cancels an ADD of the same container that has not started yet.
SIGTERM or SIGINT stops the daemon: it refuses new requests, lets running
plugins finish within the shutdown grace, removes its socket and exits 0.";

/// What the daemon runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// The socket to listen on.
    pub socket: PathBuf,
    /// Where delegate plugins are found.
    pub plugins: PluginPath,
    /// How many plugins may run at once.
    pub workers: usize,
    /// How many requests may wait for a worker.
    pub max_queue: usize,
    /// How long a request may take, queue wait included.
    pub plugin_timeout: Duration,
    /// How long running plugins may finish after SIGTERM or SIGINT.
    pub shutdown_grace: Duration,
    /// The most detailed log level written.
    pub log_level: Level,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// Serve with this configuration.
    Run(DaemonConfig),
    /// Print the help.
    Help,
    /// Print the version.
    Version,
}

/// The environment variables that stand in for flags.
#[derive(Debug, Clone, Default)]
pub struct FlagEnv {
    /// The daemon's own `CNI_PATH`, used when `--cni-path` is absent.
    pub cni_path: Option<OsString>,
    /// `RUST_LOG`, used when `--log-level` is absent.
    pub rust_log: Option<OsString>,
}

impl FlagEnv {
    /// Reads them from this process's environment.
    pub fn from_process() -> FlagEnv {
        FlagEnv {
            cni_path: std::env::var_os("CNI_PATH"),
            rust_log: std::env::var_os("RUST_LOG"),
        }
    }
}

/// A command line the daemon cannot run with; exit status 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage_error(message: impl Into<String>) -> UsageError {
    UsageError(message.into())
}

/// Reads the arguments (without the program name).
pub fn parse_args<I>(args: I, env: &FlagEnv) -> Result<Invocation, UsageError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut socket = None;
    let mut cni_path = None;
    let mut workers = None;
    let mut max_queue = None;
    let mut plugin_timeout = None;
    let mut shutdown_grace = None;
    let mut log_level = None;

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|_| usage_error("an argument is not valid UTF-8"))?;
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg, None),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Invocation::Help),
            "--version" => return Ok(Invocation::Version),
            "--socket" | "--cni-path" | "--workers" | "--max-queue" | "--plugin-timeout"
            | "--shutdown-grace" | "--log-level" => {}
            other => return Err(usage_error(format!("unknown argument {other:?}"))),
        }

        let value = match inline_value {
            Some(value) => value,
            None => args
                .next()
                .ok_or_else(|| usage_error(format!("{flag} needs a value")))?
                .into_string()
                .map_err(|_| usage_error(format!("{flag}: the value is not valid UTF-8")))?,
        };
        let slot_taken = match flag.as_str() {
            "--socket" => socket.replace(parse_socket(&value)?).is_some(),
            "--cni-path" => cni_path
                .replace(parse_plugin_path(&flag, &value)?)
                .is_some(),
            "--workers" => workers
                .replace(parse_count(&flag, &value, 1, MAX_WORKERS)?)
                .is_some(),
            "--max-queue" => max_queue
                .replace(parse_count(&flag, &value, 1, usize::MAX)?)
                .is_some(),
            "--plugin-timeout" => plugin_timeout
                .replace(parse_seconds(&flag, &value, false)?)
                .is_some(),
            "--shutdown-grace" => shutdown_grace
                .replace(parse_seconds(&flag, &value, true)?)
                .is_some(),
            _ => log_level
                .replace(
                    value
                        .parse()
                        .map_err(|e| usage_error(format!("--log-level: {e}")))?,
                )
                .is_some(),
        };
        if slot_taken {
            return Err(usage_error(format!("{flag} is given twice")));
        }
    }

    let plugins = match (cni_path, &env.cni_path) {
        (Some(plugins), _) => plugins,
        (None, Some(from_env)) => {
            let from_env = from_env
                .to_str()
                .ok_or_else(|| usage_error("CNI_PATH is not valid UTF-8"))?;
            parse_plugin_path("CNI_PATH", from_env)?
        }
        (None, None) => parse_plugin_path("the default plugin path", DEFAULT_PLUGIN_PATH)?,
    };
    let log_level = log_level
        .or_else(|| {
            let rust_log = env.rust_log.as_ref()?.to_str()?;
            level_from_rust_log(rust_log)
        })
        .unwrap_or(Level::Info);

    Ok(Invocation::Run(DaemonConfig {
        socket: socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH)),
        plugins,
        workers: workers.unwrap_or(DEFAULT_WORKERS),
        max_queue: max_queue.unwrap_or(DEFAULT_MAX_QUEUE),
        plugin_timeout: plugin_timeout.unwrap_or(Duration::from_secs(DEFAULT_PLUGIN_TIMEOUT_SECS)),
        shutdown_grace: shutdown_grace.unwrap_or(Duration::from_secs(DEFAULT_SHUTDOWN_GRACE_SECS)),
        log_level,
    }))
}

fn parse_socket(value: &str) -> Result<PathBuf, UsageError> {
    if value.is_empty() {
        return Err(usage_error("--socket needs a path"));
    }
    Ok(PathBuf::from(value))
}

fn parse_plugin_path(source: &str, value: &str) -> Result<PluginPath, UsageError> {
    PluginPath::parse(value).map_err(|why| usage_error(format!("{source}: {why}")))
}

fn parse_count(flag: &str, value: &str, min: usize, max: usize) -> Result<usize, UsageError> {
    match value.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ if max == usize::MAX => Err(usage_error(format!(
            "{flag}: expected a whole number of at least {min}, got {value:?}"
        ))),
        _ => Err(usage_error(format!(
            "{flag}: expected a whole number from {min} to {max}, got {value:?}"
        ))),
    }
}

/// Reads a number of seconds, fractions allowed, up to a day; zero only
/// when `zero_ok`.
fn parse_seconds(flag: &str, value: &str, zero_ok: bool) -> Result<Duration, UsageError> {
    match value.parse::<f64>() {
        Ok(secs) if (secs > 0.0 || (zero_ok && secs == 0.0)) && secs <= MAX_SECONDS => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => {
            let least = if zero_ok { "0 or more" } else { "above 0" };
            Err(usage_error(format!(
                "{flag}: expected a number of seconds {least} and at most 86400, got {value:?}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &FlagEnv) -> Result<Invocation, UsageError> {
        parse_args(args.iter().map(OsString::from), env)
    }

    fn run_config(args: &[&str], env: &FlagEnv) -> DaemonConfig {
        match parse(args, env) {
            Ok(Invocation::Run(config)) => config,
            other => panic!("args {args:?}: expected a run, got {other:?}"),
        }
    }

    #[test]
    fn defaults_apply_without_flags_or_env() {
        let config = run_config(&[], &FlagEnv::default());
        assert_eq!(config.socket, PathBuf::from(DEFAULT_SOCKET_PATH));
        assert_eq!(config.plugins.to_string(), "/opt/cni/bin:/usr/lib/cni");
        assert_eq!(config.workers, 16);
        assert_eq!(config.max_queue, 1024);
        assert_eq!(config.plugin_timeout, Duration::from_secs(120));
        assert_eq!(config.shutdown_grace, Duration::from_secs(30));
        assert_eq!(config.log_level, Level::Info);
    }

    #[test]
    fn flags_set_every_field_in_both_spellings() {
        let config = run_config(
            &[
                "--socket",
                "/run/x/cni.sock",
                "--cni-path=/a:/b",
                "--workers",
                "3",
                "--max-queue=7",
                "--plugin-timeout",
                "1.5",
                "--shutdown-grace=0",
                "--log-level=debug",
            ],
            &FlagEnv::default(),
        );
        assert_eq!(config.socket, PathBuf::from("/run/x/cni.sock"));
        assert_eq!(config.plugins.to_string(), "/a:/b");
        assert_eq!(config.workers, 3);
        assert_eq!(config.max_queue, 7);
        assert_eq!(config.plugin_timeout, Duration::from_millis(1500));
        assert_eq!(config.shutdown_grace, Duration::ZERO);
        assert_eq!(config.log_level, Level::Debug);
    }

    #[test]
    fn flags_beat_the_environment_and_the_environment_beats_defaults() {
        let env = FlagEnv {
            cni_path: Some("/from/env".into()),
            rust_log: Some("warn".into()),
        };
        let from_env = run_config(&[], &env);
        assert_eq!(from_env.plugins.to_string(), "/from/env");
        assert_eq!(from_env.log_level, Level::Warn);

        let from_flags = run_config(&["--cni-path", "/flag", "--log-level", "error"], &env);
        assert_eq!(from_flags.plugins.to_string(), "/flag");
        assert_eq!(from_flags.log_level, Level::Error);

        let unusable_rust_log = FlagEnv {
            cni_path: None,
            rust_log: Some("mio=trace".into()),
        };
        assert_eq!(run_config(&[], &unusable_rust_log).log_level, Level::Info);
    }

    #[test]
    fn help_and_version_win() {
        let env = FlagEnv::default();
        assert_eq!(parse(&["-h"], &env), Ok(Invocation::Help));
        assert_eq!(
            parse(&["--workers", "2", "--help"], &env),
            Ok(Invocation::Help)
        );
        assert_eq!(parse(&["--version"], &env), Ok(Invocation::Version));
    }

    #[test]
    fn bad_flags_are_named_in_the_error() {
        let env = FlagEnv::default();
        let cases: [(&[&str], &str); 13] = [
            (&["--bogus"], "--bogus"),
            (&["stray"], "stray"),
            (&["--socket"], "--socket needs a value"),
            (&["--socket="], "--socket needs a path"),
            (&["--workers", "0"], "--workers"),
            (&["--workers", "1025"], "--workers"),
            (&["--workers", "many"], "--workers"),
            (&["--max-queue", "0"], "--max-queue"),
            (&["--plugin-timeout", "0"], "--plugin-timeout"),
            (&["--plugin-timeout", "NaN"], "--plugin-timeout"),
            (&["--shutdown-grace", "-1"], "--shutdown-grace"),
            (&["--log-level", "loud"], "--log-level"),
            (&["--cni-path", "relative/bin"], "--cni-path"),
        ];
        for (args, want) in cases {
            match parse(args, &env) {
                Err(e) => assert!(e.to_string().contains(want), "args {args:?}: error {e:?}"),
                Ok(other) => panic!("args {args:?}: expected an error, got {other:?}"),
            }
        }
        let twice = parse(&["--workers", "1", "--workers", "2"], &env);
        assert_eq!(twice, Err(usage_error("--workers is given twice")));
    }

    #[test]
    fn help_documents_every_flag() {
        for flag in [
            "--socket",
            "--cni-path",
            "--workers",
            "--max-queue",
            "--plugin-timeout",
            "--shutdown-grace",
            "--log-level",
            "--help",
            "--version",
        ] {
            assert!(USAGE.contains(flag), "help lacks {flag}");
        }
    }
}
