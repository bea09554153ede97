//! The daemon's command line, read by hand.
//!
//! Every flag but `--remove-conflist-on-exit` takes its value as the next
//! argument or after `=` (`--workers 8`, `--workers=8`). Parsing is a pure function of the
//! arguments and the two environment variables that stand in for flags,
//! so that it can be tested without a process.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::delegate::{PluginPath, DEFAULT_PLUGIN_PATH};
use super::log::{level_from_rust_log, Level};
use super::probe::Endpoint;
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
/// Where `--conflist` goes, unless `--cni-conf-dir` says otherwise.
pub const DEFAULT_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// The longest `--plugin-timeout` or `--shutdown-grace` accepted: a day.
const MAX_SECONDS: f64 = 86_400.0;
/// The smallest `--mtu` accepted: the least an IPv4 link must carry.
pub const MIN_MTU: u16 = 68;

/// The help text, documenting every flag and its default.
pub const USAGE: &str = "\
usage: cniserverd [OPTIONS]
       cniserverd probe healthz|readyz [--socket PATH]

Serves the CNI server protocol on a root-only Unix socket and, for each
request a CNI shim forwards, runs the delegate CNI plugin named by the
netconf key \"delegateType\" (a thick plugin).

Options:
  --socket PATH              the Unix socket to listen on, an absolute
                             path; its folder is created with mode 0700,
                             and config.json is written beside it for shims
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
  --shutdown-grace SECONDS   after SIGTERM, SIGINT or SIGHUP, how long
                             running plugins may still finish (default 30)
  --mtu N                    the MTU, 68 to 65535, published to shims in
                             config.json and given to each delegate plugin
                             as the netconf's \"mtu\" when the netconf has
                             none (default: none; plugins pick their own)
  --install-shim FOLDER      at start, copy the cniserver-shim that sits
                             beside this executable into FOLDER, the
                             runtime's CNI bin folder (default: no copy)
  --conflist FILE            once the socket listens, copy this network
                             config into --cni-conf-dir (default: no copy)
  --cni-conf-dir FOLDER      where --conflist goes (default /etc/cni/net.d)
  --remove-conflist-on-exit  remove the copied network config when the
                             daemon stops (default: leave it)
  --log-level LEVEL          error, warn, info or debug
                             (default: from $RUST_LOG, else info)
  -h, --help                 print this help and exit
  --version                  print the version and exit

Requests for one container ID run one at a time, in arrival order; a DEL
cancels an ADD of the same container that has not started yet.
SIGTERM, SIGINT or SIGHUP stops the daemon: it refuses new requests, lets
running plugins finish within the shutdown grace, removes its socket and
exits 0 (SIGHUP reloads nothing).
Under systemd socket activation (LISTEN_PID, LISTEN_FDS) it serves the
passed socket, which must be bound at --socket, and leaves it in place; at
SIGTERM it stops accepting, so that new clients wait for the next daemon,
and serves every request it already accepted within the shutdown grace.

GET /metrics on the socket shows the server's and the daemon's metrics in
the Prometheus text format.

cniserverd probe healthz|readyz asks the daemon at --socket over its socket
and exits 0 if it answers 200 (healthz: it runs; readyz: it takes requests),
1 otherwise.";

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
    /// How long running plugins may finish after SIGTERM, SIGINT or SIGHUP.
    pub shutdown_grace: Duration,
    /// The MTU for netconfs that name none, also published to shims.
    pub mtu: Option<u16>,
    /// The CNI bin folder to install the shim into, if any.
    pub install_shim: Option<PathBuf>,
    /// The network config to install once the socket listens, if any.
    pub conflist: Option<PathBuf>,
    /// The CNI conf folder the network config goes into.
    pub cni_conf_dir: PathBuf,
    /// Whether to remove the installed network config at exit.
    pub remove_conflist_on_exit: bool,
    /// The most detailed log level written.
    pub log_level: Level,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// Serve with this configuration.
    Run(DaemonConfig),
    /// Ask a running daemon how it is.
    Probe {
        /// What to ask.
        endpoint: Endpoint,
        /// The daemon's socket.
        socket: PathBuf,
    },
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

/// The arguments, as flags with their values.
struct Args {
    items: std::vec::IntoIter<String>,
}

impl Args {
    fn new<I: IntoIterator<Item = OsString>>(args: I) -> Result<Args, UsageError> {
        let items = args
            .into_iter()
            .map(|arg| {
                arg.into_string()
                    .map_err(|_| usage_error("an argument is not valid UTF-8"))
            })
            .collect::<Result<Vec<String>, UsageError>>()?;
        Ok(Args {
            items: items.into_iter(),
        })
    }

    /// The next argument, split into a flag and a value given after `=`.
    fn next_flag(&mut self) -> Option<(String, Option<String>)> {
        let arg = self.items.next()?;
        Some(match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.into())),
            _ => (arg, None),
        })
    }

    /// The flag's value: given after `=`, or the next argument.
    fn value(&mut self, flag: &str, inline: Option<String>) -> Result<String, UsageError> {
        inline
            .or_else(|| self.items.next())
            .ok_or_else(|| usage_error(format!("{flag} needs a value")))
    }
}

/// Fills a flag's slot, refusing a flag given twice.
fn set<T>(slot: &mut Option<T>, flag: &str, value: T) -> Result<(), UsageError> {
    if slot.replace(value).is_some() {
        return Err(usage_error(format!("{flag} is given twice")));
    }
    Ok(())
}

/// Reads the arguments (without the program name).
pub fn parse_args<I>(args: I, env: &FlagEnv) -> Result<Invocation, UsageError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut args = Args::new(args)?;
    if args.items.as_slice().first().map(String::as_str) == Some("probe") {
        args.items.next();
        return parse_probe(args);
    }

    let mut socket = None;
    let mut cni_path = None;
    let mut workers = None;
    let mut max_queue = None;
    let mut plugin_timeout = None;
    let mut shutdown_grace = None;
    let mut mtu = None;
    let mut install_shim = None;
    let mut conflist = None;
    let mut cni_conf_dir = None;
    let mut remove_conflist_on_exit = None;
    let mut log_level = None;

    while let Some((flag, inline)) = args.next_flag() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(Invocation::Help),
            "--version" => return Ok(Invocation::Version),
            "--remove-conflist-on-exit" => {
                if inline.is_some() {
                    return Err(usage_error(format!("{flag} takes no value")));
                }
                set(&mut remove_conflist_on_exit, &flag, true)?;
                continue;
            }
            _ => {}
        }
        let f = flag.as_str();
        match f {
            "--socket" => set(&mut socket, f, parse_socket(f, args.value(f, inline)?)?)?,
            "--cni-path" => set(
                &mut cni_path,
                f,
                parse_plugin_path(f, &args.value(f, inline)?)?,
            )?,
            "--workers" => set(
                &mut workers,
                f,
                parse_count(f, &args.value(f, inline)?, 1, MAX_WORKERS)?,
            )?,
            "--max-queue" => set(
                &mut max_queue,
                f,
                parse_count(f, &args.value(f, inline)?, 1, usize::MAX)?,
            )?,
            "--plugin-timeout" => set(
                &mut plugin_timeout,
                f,
                parse_seconds(f, &args.value(f, inline)?, false)?,
            )?,
            "--shutdown-grace" => set(
                &mut shutdown_grace,
                f,
                parse_seconds(f, &args.value(f, inline)?, true)?,
            )?,
            "--mtu" => set(&mut mtu, f, parse_mtu(f, &args.value(f, inline)?)?)?,
            "--install-shim" => set(&mut install_shim, f, parse_path(f, args.value(f, inline)?)?)?,
            "--conflist" => set(&mut conflist, f, parse_path(f, args.value(f, inline)?)?)?,
            "--cni-conf-dir" => set(&mut cni_conf_dir, f, parse_path(f, args.value(f, inline)?)?)?,
            "--log-level" => {
                let level = args.value(f, inline)?.parse();
                set(
                    &mut log_level,
                    f,
                    level.map_err(|e| usage_error(format!("{f}: {e}")))?,
                )?
            }
            other => return Err(usage_error(format!("unknown argument {other:?}"))),
        }
    }

    if conflist.is_none() && (cni_conf_dir.is_some() || remove_conflist_on_exit.is_some()) {
        return Err(usage_error(
            "--cni-conf-dir and --remove-conflist-on-exit need --conflist",
        ));
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
        mtu,
        install_shim,
        conflist,
        cni_conf_dir: cni_conf_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_CNI_CONF_DIR)),
        remove_conflist_on_exit: remove_conflist_on_exit.unwrap_or(false),
        log_level,
    }))
}

/// Reads `probe healthz|readyz [--socket PATH]`.
fn parse_probe(mut args: Args) -> Result<Invocation, UsageError> {
    let mut endpoint = None;
    let mut socket = None;
    while let Some((flag, inline)) = args.next_flag() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(Invocation::Help),
            "--socket" => {
                let path = parse_socket("--socket", args.value("--socket", inline)?)?;
                set(&mut socket, "--socket", path)?
            }
            name if endpoint.is_none() && !name.starts_with('-') => {
                endpoint = Some(Endpoint::parse(name).ok_or_else(|| {
                    usage_error(format!("probe: expected healthz or readyz, got {name:?}"))
                })?);
            }
            other => return Err(usage_error(format!("probe: unknown argument {other:?}"))),
        }
    }
    Ok(Invocation::Probe {
        endpoint: endpoint.ok_or_else(|| usage_error("probe needs healthz or readyz"))?,
        socket: socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH)),
    })
}

fn parse_path(flag: &str, value: String) -> Result<PathBuf, UsageError> {
    if value.is_empty() {
        return Err(usage_error(format!("{flag} needs a path")));
    }
    Ok(PathBuf::from(value))
}

/// Reads the socket's path, which must be absolute and name a file: the
/// socket's folder is created and locked down, and shims and probes find
/// the socket by this same path whatever their working folder.
fn parse_socket(flag: &str, value: String) -> Result<PathBuf, UsageError> {
    let path = parse_path(flag, value)?;
    if !path.is_absolute() || path.file_name().is_none() {
        return Err(usage_error(format!(
            "{flag}: expected an absolute path to the socket file, got {:?}",
            path.display().to_string()
        )));
    }
    Ok(path)
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

fn parse_mtu(flag: &str, value: &str) -> Result<u16, UsageError> {
    let count = parse_count(flag, value, MIN_MTU.into(), u16::MAX.into())?;
    // parse_count kept it within u16.
    Ok(count as u16)
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
        assert_eq!(config.mtu, None);
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
                "--mtu",
                "1450",
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
        assert_eq!(config.mtu, Some(1450));
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
        let cases: [(&[&str], &str); 16] = [
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
            (
                &["--mtu", "67"],
                "--mtu: expected a whole number from 68 to 65535",
            ),
            (&["--mtu", "65536"], "--mtu"),
            (&["--mtu", "jumbo"], "--mtu"),
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
    fn install_flags_go_together() {
        let env = FlagEnv::default();
        let config = run_config(
            &[
                "--install-shim",
                "/host/opt/cni/bin",
                "--conflist=/etc/cniserver/10-podnet.conflist",
                "--cni-conf-dir",
                "/host/etc/cni/net.d",
                "--remove-conflist-on-exit",
            ],
            &env,
        );
        assert_eq!(
            config.install_shim,
            Some(PathBuf::from("/host/opt/cni/bin"))
        );
        assert_eq!(
            config.conflist,
            Some(PathBuf::from("/etc/cniserver/10-podnet.conflist"))
        );
        assert_eq!(config.cni_conf_dir, PathBuf::from("/host/etc/cni/net.d"));
        assert!(config.remove_conflist_on_exit);

        let defaults = run_config(&["--conflist", "/x.conflist"], &env);
        assert_eq!(defaults.cni_conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert!(!defaults.remove_conflist_on_exit);

        for args in [
            &["--cni-conf-dir", "/etc/cni/net.d"][..],
            &["--remove-conflist-on-exit"][..],
            &["--conflist", "/x", "--remove-conflist-on-exit=yes"][..],
        ] {
            assert!(parse(args, &env).is_err(), "args {args:?} were accepted");
        }
    }

    #[test]
    fn probe_takes_an_endpoint_and_a_socket() {
        let env = FlagEnv::default();
        /// The arguments, and the probe they ask for (`None`: an error).
        type Case<'a> = (&'a [&'a str], Option<(Endpoint, &'a str)>);
        let cases: [Case; 7] = [
            (
                &["probe", "healthz"],
                Some((Endpoint::Healthz, DEFAULT_SOCKET_PATH)),
            ),
            (
                &["probe", "readyz", "--socket", "/run/x.sock"],
                Some((Endpoint::Readyz, "/run/x.sock")),
            ),
            (
                &["probe", "--socket=/run/x.sock", "healthz"],
                Some((Endpoint::Healthz, "/run/x.sock")),
            ),
            (&["probe"], None),
            (&["probe", "metrics"], None),
            (&["probe", "healthz", "readyz"], None),
            (&["probe", "healthz", "--workers", "2"], None),
        ];
        for (args, want) in cases {
            let got = parse(args, &env);
            match want {
                Some((endpoint, socket)) => assert_eq!(
                    got,
                    Ok(Invocation::Probe {
                        endpoint,
                        socket: PathBuf::from(socket)
                    }),
                    "args {args:?}"
                ),
                None => assert!(got.is_err(), "args {args:?}: {got:?}"),
            }
        }
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
            "--mtu",
            "--install-shim",
            "--conflist",
            "--cni-conf-dir",
            "--remove-conflist-on-exit",
            "--log-level",
            "--help",
            "--version",
        ] {
            assert!(USAGE.contains(flag), "help lacks {flag}");
        }
    }
}
