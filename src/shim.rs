//! The shim: the CNI plugin a container runtime execs, as library code.
//!
//! The runtime execs the plugin for every pod operation, with `CNI_*`
//! variables in its environment and the netconf on stdin, and reads a
//! result (or nothing) on stdout, or a CNI error JSON and a non-zero exit.
//! The shim does no network work itself: it sends its environment and its
//! stdin to the CNI server and hands the answer back. It answers only
//! `VERSION` on its own, since that needs no server.
//!
//! Everything the `cniserver-shim` binary decides happens here, in
//! [`main_with`], [`run`] and [`decide`], which take the arguments,
//! environment and stdin as values and give back what to print and the exit
//! code (the one file they write is the log file the netconf names); the
//! binary only reads its process state and writes the [`Outcome`]. Every failure reaches the runtime as a CNI error JSON with
//! the spec's code that fits it. Nothing printed or logged ever holds an
//! environment value other than the command and the container ID, unless
//! the server put it in its answer.
//!
//! # Settings before ADD
//!
//! The server publishes `config.json` beside its socket once it serves
//! (see [`crate::settings`]). Before an ADD the shim reads it: without it
//! there is no server to give the pod a network, so the ADD fails at once
//! with code 11 ("server not ready") and no connection is made. What was
//! read is kept in [`Call::settings`]; the server applies it, so the shim
//! has no use for it yet. Other commands do not read it.
//!
//! # DEL when the server cannot be reached
//!
//! A pod whose DEL keeps failing stays stuck terminating, but a DEL that
//! claims success while the server still holds the pod's interface and
//! addresses leaks them. The shim tells the two apart by what is on disk:
//!
//! - If the connection fails and neither the socket nor `config.json`
//!   beside it exists, no server is installed on this node (or it was
//!   removed with its files), so nothing is left that it could tear down.
//!   DEL succeeds with nothing on stdout, and the log file, when there is
//!   one, says why.
//! - Otherwise a DEL that gets no answer (nothing listens on the socket,
//!   no answer in time, the connection cut) fails with code 11, so the
//!   runtime tries again once the server is back.
//! - Whatever the server answers, a real teardown error included, is
//!   printed as it would be for any other command: it is never hidden.
//!
//! This relies on the server leaving `config.json` in place when it stops
//! or restarts, so that only uninstalling removes both files. A file the
//! shim cannot examine (permission denied, say) counts as present.
//!
//! # The log file
//!
//! With `logFile` in the netconf the shim appends one line per call to that
//! file: the time in UTC (RFC 3339), the command, the container ID, the
//! outcome (`ok` or `error` with its code), the duration, and for failures
//! and the DEL policy's successes a quoted message. The file is created
//! with mode 0600; symbolic links and anything but a regular file are
//! refused. A log that cannot be written never fails the call: a note goes
//! to stderr instead.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::{self, Write as _};
use std::fs;
use std::io::{self, Read, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::client::{self, ClientConfig, ClientError, Failure};
use crate::cni::{CniRequest, Command, DEFAULT_SOCKET_PATH};
use crate::settings;

/// The CNI spec version the shim speaks, used in its own error results
/// when the netconf does not name one.
pub const CNI_VERSION: &str = "1.1.0";

/// The CNI spec versions the shim reports for `VERSION`. The shim only
/// carries bytes, so it supports whatever the server's delegate plugins do.
pub const SUPPORTED_VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The largest `connectTimeoutMs` or `timeoutMs` accepted: one day.
///
/// # Background
///
/// A timeout is added to the current time; a bound keeps that sum far from
/// overflowing, and no runtime waits a day for a CNI call.
pub const MAX_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

/// The text of `--help`.
pub const HELP: &str = "\
cniserver-shim: a CNI plugin that hands every call to the CNI server.

The container runtime execs it with CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS,
CNI_IFNAME, CNI_ARGS and CNI_PATH in its environment and the network
configuration (netconf) on stdin. It sends its whole environment and the
netconf to the CNI server over the server's Unix socket and prints the
server's answer: a result JSON, nothing (DEL), or a CNI error JSON with exit
status 1. It answers CNI_COMMAND=VERSION itself.

Before ADD it reads config.json, which the server writes beside its socket
once it serves. Without it the ADD fails at once with code 11 (\"server not
ready\") and nothing is sent.

Netconf keys it reads (the server gets the whole netconf unchanged):
  socket            absolute path of the CNI server's socket
                    (default /var/run/openshift-sdn/cni-server.sock)
  connectTimeoutMs  how long to wait for the server to accept the
                    connection, in milliseconds (default 5000)
  timeoutMs         how long the whole call may take, connecting included,
                    in milliseconds (default 170000)
  logFile           absolute path of a file to append one line per call to:
                    UTC time, command, container ID, outcome, duration and,
                    on failure, the error message; never the environment's
                    values or the netconf. Created with mode 0600. If it
                    cannot be written the call goes on and a note goes to
                    stderr. (default: no log)
  cniVersion        the spec version of the error results it prints itself
                    (default 1.1.0)
The timeouts take whole numbers from 1 to 86400000. A key with a value of
the wrong kind fails the call with code 7.

DEL when the server cannot be reached:
  If neither the socket nor config.json beside it exists, no CNI server is
  installed on this node, so nothing is left for one to tear down: DEL
  succeeds, prints nothing, and the log file (if set) says why. Otherwise a
  DEL that gets no answer (nothing listening, no answer in time, the
  connection cut) fails with code 11 so that the runtime tries again. An
  error the server answers is printed unchanged, as for any command.

Exit status:
  0  success: the result on stdout, or nothing (DEL, CHECK)
  1  failure: a CNI error JSON on stdout. The shim's own codes are 4 (bad
     environment), 5 (I/O failure), 6 (undecodable netconf or settings),
     7 (invalid netconf), 11 (try again later) and 999 (other); errors the
     server answers keep their codes.
  2  usage error: unexpected arguments (a runtime passes none)

Options:
  -h, --help   print this help
  --version    print the shim's version
";

/// A CNI error code, as the spec numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 4: a needed environment variable is missing or invalid.
    InvalidEnvironment,
    /// 5: reading or writing failed.
    IoFailure,
    /// 6: the netconf (or other input) could not be decoded.
    DecodingFailure,
    /// 7: the netconf decoded but is not valid.
    InvalidNetworkConfig,
    /// 11: a transient condition; the runtime should try again later.
    TryAgainLater,
    /// 999: an error with no better code, as the CNI libraries use it.
    Internal,
}

impl ErrorCode {
    /// The number that goes into the error JSON's `code`.
    pub fn value(self) -> u32 {
        match self {
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::IoFailure => 5,
            ErrorCode::DecodingFailure => 6,
            ErrorCode::InvalidNetworkConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::Internal => 999,
        }
    }
}

/// What the shim prints and how it exits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The bytes for stdout: a result, a CNI error JSON, or nothing.
    pub stdout: Vec<u8>,
    /// The bytes for stderr: usage errors, and a log file that could not
    /// be written.
    pub stderr: Vec<u8>,
    /// The process exit status.
    pub exit_code: u8,
    /// Why a call succeeded without the server, for the log line; stdout
    /// has no room for it.
    pub note: Option<String>,
}

impl Outcome {
    fn success(stdout: Vec<u8>) -> Outcome {
        Outcome {
            stdout,
            ..Outcome::default()
        }
    }

    fn failure(stdout: Vec<u8>) -> Outcome {
        Outcome {
            stdout,
            exit_code: 1,
            ..Outcome::default()
        }
    }
}

/// Runs the shim as the binary does: `args` without the program name, the
/// process environment, and stdin, which is read only when needed.
pub fn main_with(
    args: impl IntoIterator<Item = OsString>,
    env: BTreeMap<String, String>,
    mut stdin: impl Read,
) -> Outcome {
    let mut args = args.into_iter();
    if let Some(arg) = args.next() {
        return answer_arguments(arg, args.next().is_some());
    }

    let mut netconf = Vec::new();
    if let Err(e) = stdin.read_to_end(&mut netconf) {
        let msg = format!("cannot read the netconf on stdin: {e}");
        return Outcome::failure(error_json(CNI_VERSION, ErrorCode::IoFailure, &msg, None));
    }
    run(env, netconf, &ClientConfig::default())
}

/// Handles the command line. A runtime passes no arguments; an operator
/// may ask for help or the version.
fn answer_arguments(first: OsString, more: bool) -> Outcome {
    match first.to_str() {
        Some("-h" | "--help") if !more => Outcome::success(HELP.as_bytes().to_vec()),
        Some("--version") if !more => {
            let text = format!(
                "cniserver-shim {}\nCNI spec versions: {}\n",
                env!("CARGO_PKG_VERSION"),
                SUPPORTED_VERSIONS.join(", ")
            );
            Outcome::success(text.into_bytes())
        }
        _ => Outcome {
            stderr: b"cniserver-shim: unexpected arguments; \
                      a runtime passes none, see --help\n"
                .to_vec(),
            exit_code: 2,
            ..Outcome::default()
        },
    }
}

/// Runs one CNI call: `env` is the whole environment to send, `netconf`
/// the bytes from stdin, and `defaults` the bounds the netconf does not
/// set. Writes the log line when the netconf asks for one.
pub fn run(env: BTreeMap<String, String>, netconf: Vec<u8>, defaults: &ClientConfig) -> Outcome {
    let started = Instant::now();
    let started_at = SystemTime::now();
    let command = env.get("CNI_COMMAND").cloned();
    let container_id = env.get("CNI_CONTAINERID").cloned();

    let (mut outcome, log_file) = match decide(env, netconf, defaults) {
        Decision::Answer { outcome, log_file } => (outcome, log_file),
        Decision::Forward(call) => {
            let log_file = call.options.log_file.clone();
            (call.forward(), log_file)
        }
    };

    if let Some(path) = log_file {
        let line = log_line(&LogEntry {
            at: started_at,
            command: command.as_deref(),
            container_id: container_id.as_deref(),
            duration: started.elapsed(),
            outcome: &outcome,
        });
        if let Err(e) = append_log(&path, &line) {
            let note = format!(
                "cniserver-shim: cannot write the log file {}: {e}\n",
                path.display()
            );
            outcome.stderr.extend_from_slice(note.as_bytes());
        }
    }
    outcome
}

/// What the shim makes of one invocation before it talks to the server.
#[derive(Debug)]
pub enum Decision {
    /// The shim answers alone: `VERSION`, or input it cannot use.
    Answer {
        /// What to print and how to exit.
        outcome: Outcome,
        /// Where to log the call, when the netconf said so and got that far.
        log_file: Option<PathBuf>,
    },
    /// The call goes to the server.
    Forward(Call),
}

/// A call the shim will send to the server, with everything it read first.
pub struct Call {
    /// The command from `CNI_COMMAND`.
    pub command: Command,
    /// The netconf keys the shim reads.
    pub options: NetconfOptions,
    /// The server's `config.json`, read before an ADD; `None` for the
    /// commands that do not read it.
    pub settings: Option<Value>,
    request: CniRequest,
}

/// The netconf keys the shim itself reads; the server gets the whole
/// netconf regardless.
#[derive(Debug, Clone)]
pub struct NetconfOptions {
    /// The server's socket (`socket`).
    pub socket: PathBuf,
    /// The client's bounds (`connectTimeoutMs`, `timeoutMs`).
    pub client: ClientConfig,
    /// Where to append the call's log line (`logFile`).
    pub log_file: Option<PathBuf>,
    /// The spec version of the shim's own error results (`cniVersion`).
    pub cni_version: String,
}

/// Decides what to do with one invocation: answer it alone, or send it to
/// the server. Reads `config.json` before an ADD and fails without it.
pub fn decide(
    env: BTreeMap<String, String>,
    netconf: Vec<u8>,
    defaults: &ClientConfig,
) -> Decision {
    let parsed = parse_netconf(&netconf);
    let cni_version = parsed
        .as_ref()
        .ok()
        .and_then(|netconf| netconf.get("cniVersion"))
        .and_then(Value::as_str)
        .filter(|version| looks_like_version(version))
        .unwrap_or(CNI_VERSION)
        .to_owned();
    // Known before anything else can fail, so that failures are logged.
    let log_file = parsed
        .as_ref()
        .ok()
        .and_then(|netconf| log_file_path(netconf).ok().flatten());
    let answer = |outcome: Outcome| Decision::Answer {
        outcome,
        log_file: log_file.clone(),
    };
    let fail = |code: ErrorCode, msg: &str| {
        answer(Outcome::failure(error_json(&cni_version, code, msg, None)))
    };

    let command = match env.get("CNI_COMMAND").map(String::as_str) {
        None => return fail(ErrorCode::InvalidEnvironment, "CNI_COMMAND is not set"),
        Some("") => return fail(ErrorCode::InvalidEnvironment, "CNI_COMMAND is empty"),
        Some("VERSION") => return answer(Outcome::success(version_result())),
        Some(command) => Command::parse(command),
    };

    let options = match parsed {
        Ok(netconf) => match read_options(&netconf, cni_version.clone(), defaults) {
            Ok(options) => options,
            Err(msg) => return fail(ErrorCode::InvalidNetworkConfig, &msg),
        },
        Err(msg) => return fail(ErrorCode::DecodingFailure, &msg),
    };

    let settings = if command == Command::Add {
        match settings::read_settings(&options.socket) {
            Ok(settings) => Some(settings),
            Err(e) => return fail(settings_error_code(&e), &e.to_string()),
        }
    } else {
        None
    };

    Decision::Forward(Call {
        command,
        options,
        settings,
        request: CniRequest {
            env: env.into(),
            config: netconf,
        },
    })
}

impl Call {
    /// Sends the call to the server and turns its answer, or the lack of
    /// one, into what the shim prints.
    pub fn forward(self) -> Outcome {
        let socket = &self.options.socket;
        let cni_version = &self.options.cni_version;
        match client::send_with(socket, &self.request, &self.options.client) {
            Ok(answer) if answer.status == 200 => Outcome::success(answer.body),
            Ok(answer) if is_cni_error(&answer.body) => Outcome::failure(answer.body),
            Ok(answer) => {
                let (code, msg) = server_error(answer.status, &answer.body);
                let details = format!(
                    "the CNI server at {} answered {}",
                    socket.display(),
                    answer.status
                );
                Outcome::failure(error_json(cni_version, code, &msg, Some(&details)))
            }
            Err(e) if self.command == Command::Del => unanswered_del(&e, cni_version),
            Err(e) => {
                let msg = e.to_string();
                Outcome::failure(error_json(cni_version, client_error_code(&e), &msg, None))
            }
        }
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The request is left out: it holds the environment and the netconf,
        // which may hold secrets.
        f.debug_struct("Call")
            .field("command", &self.command)
            .field("options", &self.options)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The DEL policy for a DEL that got no answer (see the module docs).
fn unanswered_del(error: &ClientError, cni_version: &str) -> Outcome {
    let socket = error.socket();
    let settings_file = settings::settings_path(socket);
    let not_installed = matches!(error.failure(), Failure::Connect(_))
        && is_absent(socket)
        && is_absent(&settings_file);
    if not_installed {
        return Outcome {
            note: Some(format!(
                "DEL done without a CNI server: neither {} nor {} exists, \
                 so none is installed and nothing is left to tear down",
                socket.display(),
                settings_file.display()
            )),
            ..Outcome::default()
        };
    }
    let msg = error.to_string();
    Outcome::failure(error_json(
        cni_version,
        ErrorCode::TryAgainLater,
        &msg,
        None,
    ))
}

/// Whether nothing is at `path`. Anything that cannot be examined counts as
/// there: only a sure absence may let a DEL succeed without the server.
fn is_absent(path: &Path) -> bool {
    matches!(fs::symlink_metadata(path), Err(e) if e.kind() == io::ErrorKind::NotFound)
}

/// The code for settings that could not be read: absent means the server
/// is not ready yet; unreadable or not JSON is not transient.
fn settings_error_code(error: &io::Error) -> ErrorCode {
    match error.kind() {
        io::ErrorKind::NotFound => ErrorCode::TryAgainLater,
        io::ErrorKind::InvalidData => ErrorCode::DecodingFailure,
        _ => ErrorCode::IoFailure,
    }
}

/// The shim's whole process environment, as it goes into the request.
///
/// Names and values that are not UTF-8 are converted lossily, as the Go
/// shim's JSON encoding did. A name given twice keeps its first value, the
/// one `getenv` reads.
pub fn process_environment() -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (name, value) in std::env::vars_os() {
        env.entry(name.to_string_lossy().into_owned())
            .or_insert_with(|| value.to_string_lossy().into_owned());
    }
    env
}

/// The answer to `CNI_COMMAND=VERSION`.
pub fn version_result() -> Vec<u8> {
    let mut out = format!("{{\"cniVersion\":\"{CNI_VERSION}\",\"supportedVersions\":[");
    for (i, version) in SUPPORTED_VERSIONS.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{version}\"");
    }
    out.push_str("]}");
    out.into_bytes()
}

/// A CNI error JSON: `{"cniVersion":..,"code":..,"msg":..}`, with
/// `details` when given.
pub fn error_json(cni_version: &str, code: ErrorCode, msg: &str, details: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + msg.len() + details.map_or(0, str::len));
    // Serializing strings into a Vec cannot fail.
    out.extend_from_slice(b"{\"cniVersion\":");
    let _ = serde_json::to_writer(&mut out, cni_version);
    out.extend_from_slice(format!(",\"code\":{},\"msg\":", code.value()).as_bytes());
    let _ = serde_json::to_writer(&mut out, msg);
    if let Some(details) = details {
        out.extend_from_slice(b",\"details\":");
        let _ = serde_json::to_writer(&mut out, details);
    }
    out.push(b'}');
    out
}

/// Reads the netconf as a JSON object. The error says why it is not one,
/// without quoting it: a netconf may hold credentials.
fn parse_netconf(netconf: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(netconf) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err("the netconf on stdin is not a JSON object".to_owned()),
        Err(e) => Err(format!("cannot decode the netconf on stdin: {e}")),
    }
}

/// Whether a netconf's `cniVersion` is fit to echo in an error result.
fn looks_like_version(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= 32
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
}

/// Reads the keys the shim uses. An error names the key and what it must
/// be, never the value it has.
fn read_options(
    netconf: &Map<String, Value>,
    cni_version: String,
    defaults: &ClientConfig,
) -> Result<NetconfOptions, String> {
    let log_file = log_file_path(netconf)?;
    let socket =
        absolute_path(netconf, "socket")?.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH));
    let client = ClientConfig {
        connect_timeout: milliseconds(netconf, "connectTimeoutMs")?
            .unwrap_or(defaults.connect_timeout),
        timeout: milliseconds(netconf, "timeoutMs")?.unwrap_or(defaults.timeout),
        ..defaults.clone()
    };
    Ok(NetconfOptions {
        socket,
        client,
        log_file,
        cni_version,
    })
}

fn log_file_path(netconf: &Map<String, Value>) -> Result<Option<PathBuf>, String> {
    absolute_path(netconf, "logFile")
}

/// An absolute path under `key`, or `None` when the key is absent or null.
/// A relative path would depend on the runtime's working folder, so it is
/// refused.
fn absolute_path(netconf: &Map<String, Value>, key: &str) -> Result<Option<PathBuf>, String> {
    match netconf.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(path)) if path.starts_with('/') => Ok(Some(PathBuf::from(path))),
        Some(Value::String(_)) => Err(format!("netconf key \"{key}\" must be an absolute path")),
        Some(_) => Err(format!("netconf key \"{key}\" must be a string")),
    }
}

/// A timeout under `key` in whole milliseconds, or `None` when the key is
/// absent or null.
fn milliseconds(netconf: &Map<String, Value>, key: &str) -> Result<Option<Duration>, String> {
    match netconf.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => match value.as_u64() {
            Some(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => Ok(Some(Duration::from_millis(ms))),
            _ => Err(format!(
                "netconf key \"{key}\" must be a whole number of milliseconds \
                 from 1 to {MAX_TIMEOUT_MS}"
            )),
        },
    }
}

/// Whether a body is already a CNI error: an object with a numeric `code`
/// and a string `msg`.
fn is_cni_error(body: &[u8]) -> bool {
    cni_error_parts(body).is_some()
}

/// The `code` and `msg` of a CNI error JSON. The code is the spec's
/// integer, or `None` for a number of another kind.
fn cni_error_parts(body: &[u8]) -> Option<(Option<i64>, String)> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => match (object.get("code"), object.get("msg")) {
            (Some(Value::Number(code)), Some(Value::String(msg))) => {
                Some((code.as_i64(), msg.clone()))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The beginnings of the server's own texts for a request whose `CNI_*`
/// variables or `CNI_ARGS` did not decode (its answers are 400s).
const ENVIRONMENT_ERRORS: [&str; 4] = [
    "unexpected or missing CNI_COMMAND",
    "missing CNI_",
    "invalid CNI_ARG",
    "missing K8S_POD_",
];

/// The code and message for a failure answered in plain text.
fn server_error(status: u16, body: &[u8]) -> (ErrorCode, String) {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();

    let code = match status {
        // Too slow to send, full or shutting down, or a handler that took
        // too long: all of them pass.
        408 | 503 | 504 => ErrorCode::TryAgainLater,
        400 if ENVIRONMENT_ERRORS
            .iter()
            .any(|start| text.starts_with(start)) =>
        {
            ErrorCode::InvalidEnvironment
        }
        _ => ErrorCode::Internal,
    };
    let msg = if text.is_empty() {
        format!("the CNI server answered {status} with no message")
    } else {
        text.to_owned()
    };
    (code, msg)
}

/// The code for a request that got no answer. A server that is not there
/// or did not answer in time may be starting or busy: try again later.
fn client_error_code(error: &ClientError) -> ErrorCode {
    if error.is_unreachable() || matches!(error.failure(), Failure::TimedOut) {
        ErrorCode::TryAgainLater
    } else {
        ErrorCode::IoFailure
    }
}

// ---------------------------------------------------------------------------
// The log file

/// The longest field a log line carries; a longer one is cut.
const MAX_LOG_FIELD: usize = 1024;

/// What one log line records.
struct LogEntry<'a> {
    at: SystemTime,
    command: Option<&'a str>,
    container_id: Option<&'a str>,
    duration: Duration,
    outcome: &'a Outcome,
}

/// One line: `<time> command=<c> container=<id> outcome=ok|error
/// [code=<n>] duration_ms=<ms> [msg="<text>"]`. Fields that might hold
/// spaces or line breaks are quoted as JSON strings, so a line stays one
/// line whatever the runtime or the server sent.
fn log_line(entry: &LogEntry<'_>) -> String {
    let mut line = rfc3339(entry.at);
    let _ = write!(
        line,
        " command={} container={}",
        log_field(entry.command),
        log_field(entry.container_id)
    );

    let outcome = entry.outcome;
    let mut msg = outcome.note.clone();
    if outcome.exit_code == 0 {
        line.push_str(" outcome=ok");
    } else {
        let (code, text) = match cni_error_parts(&outcome.stdout) {
            Some((Some(code), text)) => (code.to_string(), Some(text)),
            Some((None, text)) => ("-".to_owned(), Some(text)),
            None => ("-".to_owned(), None),
        };
        let _ = write!(line, " outcome=error code={code}");
        msg = msg.or(text);
    }
    let millis = u64::try_from(entry.duration.as_millis()).unwrap_or(u64::MAX);
    let _ = write!(line, " duration_ms={millis}");
    if let Some(msg) = msg {
        let _ = write!(line, " msg={}", quoted(&msg));
    }
    line.push('\n');
    line
}

/// A field as it goes into the log: bare when it is a plain token, `-`
/// when absent, and a JSON string otherwise.
fn log_field(value: Option<&str>) -> String {
    match value {
        None => "-".to_owned(),
        Some(value)
            if !value.is_empty()
                && value.len() <= MAX_LOG_FIELD
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) =>
        {
            value.to_owned()
        }
        Some(value) => quoted(value),
    }
}

/// `text` cut to [`MAX_LOG_FIELD`] bytes and quoted as a JSON string.
fn quoted(text: &str) -> String {
    let mut end = text.len().min(MAX_LOG_FIELD);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    // Serializing a string cannot fail.
    serde_json::to_string(&text[..end]).unwrap_or_default()
}

/// Appends `line` to the log file, creating it with mode 0600.
///
/// It refuses a symbolic link in the last place of the path, so that a
/// planted link cannot make a root shim append to another file, and
/// anything but a regular file; a FIFO without a reader fails at once
/// instead of blocking the call.
fn append_log(path: &Path, line: &str) -> io::Result<()> {
    use nix::fcntl::OFlag;

    let mut file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    // One write, so that lines of shims running at once do not interleave.
    file.write_all(line.as_bytes())
}

/// `at` in UTC as RFC 3339 with milliseconds: `2024-02-29T23:59:59.123Z`.
fn rfc3339(at: SystemTime) -> String {
    const DAY: u64 = 86_400;
    // The Gregorian calendar repeats every 400 years, which are this many
    // days; skipping whole cycles keeps the year loop short for any clock.
    const CYCLE_DAYS: u64 = 146_097;

    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let mut days = seconds / DAY;
    let of_day = seconds % DAY;

    let mut year = 1970 + 400 * (days / CYCLE_DAYS);
    days %= CYCLE_DAYS;
    loop {
        let length = if is_leap_year(year) { 366 } else { 365 };
        if days < length {
            break;
        }
        days -= length;
        year += 1;
    }

    let february = if is_leap_year(year) { 29 } else { 28 };
    let month_lengths = [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut month = 1;
    for length in month_lengths {
        if days < length {
            break;
        }
        days -= length;
        month += 1;
    }

    format!(
        "{year:04}-{month:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        days + 1,
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since_epoch.subsec_millis()
    )
}

fn is_leap_year(year: u64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn error_of(outcome: &Outcome) -> Value {
        serde_json::from_slice(&outcome.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}",
                String::from_utf8_lossy(&outcome.stdout)
            )
        })
    }

    /// A fresh folder for one test, removed when dropped.
    struct Folder(PathBuf);

    impl Folder {
        fn new(tag: &str) -> Folder {
            let path = std::env::temp_dir()
                .join(format!("cniserver-shim-unit-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("create the test folder");
            Folder(path)
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn decides_without_a_server_when_it_can() {
        let socket = r#"{"cniVersion":"0.4.0","socket":"/nonexistent/cniserver-shim/cni.sock"}"#;
        let cases: &[(&str, Option<&str>, &str, u64, &str)] = &[
            ("no command", None, socket, 4, "0.4.0"),
            ("empty command", Some(""), socket, 4, "0.4.0"),
            ("netconf not JSON", Some("ADD"), "{", 6, CNI_VERSION),
            ("netconf empty", Some("ADD"), "", 6, CNI_VERSION),
            ("netconf a list", Some("ADD"), "[]", 6, CNI_VERSION),
            (
                "socket a number",
                Some("ADD"),
                r#"{"cniVersion":"1.0.0","socket":7}"#,
                7,
                "1.0.0",
            ),
            (
                "socket relative",
                Some("ADD"),
                r#"{"socket":"run/cni.sock"}"#,
                7,
                CNI_VERSION,
            ),
            (
                "version not fit to echo",
                Some("ADD"),
                r#"{"cniVersion":"1.0.0\"x","socket":7}"#,
                7,
                CNI_VERSION,
            ),
            (
                "log file relative",
                Some("DEL"),
                r#"{"cniVersion":"0.4.0","logFile":"shim.log"}"#,
                7,
                "0.4.0",
            ),
            (
                "timeout zero",
                Some("DEL"),
                r#"{"cniVersion":"0.4.0","timeoutMs":0}"#,
                7,
                "0.4.0",
            ),
            (
                "connect timeout a string",
                Some("DEL"),
                r#"{"cniVersion":"0.4.0","connectTimeoutMs":"100"}"#,
                7,
                "0.4.0",
            ),
            (
                "ADD without the server's settings",
                Some("ADD"),
                socket,
                11,
                "0.4.0",
            ),
        ];
        for (name, command, netconf, code, version) in cases {
            let vars = command.map(|command| ("CNI_COMMAND", command));
            let outcome = run(
                env(vars.as_slice()),
                netconf.as_bytes().to_vec(),
                &ClientConfig::default(),
            );
            let error = error_of(&outcome);
            assert_eq!(outcome.exit_code, 1, "{name}");
            assert_eq!(error["code"], *code, "{name}: {error}");
            assert_eq!(error["cniVersion"], *version, "{name}: {error}");
            assert!(error["msg"].is_string(), "{name}: {error}");
        }
    }

    #[test]
    fn reads_timeouts_in_whole_milliseconds() {
        let max = MAX_TIMEOUT_MS;
        // What the key gives: the default (None), milliseconds, or an error.
        type Want = Result<Option<u64>, ()>;
        let cases: &[(&str, &str, Want)] = &[
            ("absent", r#"{}"#, Ok(None)),
            ("null", r#"{"timeoutMs":null}"#, Ok(None)),
            ("one", r#"{"timeoutMs":1}"#, Ok(Some(1))),
            ("a day", &format!(r#"{{"timeoutMs":{max}}}"#), Ok(Some(max))),
            ("zero", r#"{"timeoutMs":0}"#, Err(())),
            ("negative", r#"{"timeoutMs":-5}"#, Err(())),
            ("fraction", r#"{"timeoutMs":1.5}"#, Err(())),
            ("exponent", r#"{"timeoutMs":1e3}"#, Err(())),
            ("string", r#"{"timeoutMs":"1000"}"#, Err(())),
            ("bool", r#"{"timeoutMs":true}"#, Err(())),
            (
                "over a day",
                &format!(r#"{{"timeoutMs":{}}}"#, max + 1),
                Err(()),
            ),
            ("huge", r#"{"timeoutMs":18446744073709551615}"#, Err(())),
        ];
        for (name, netconf, want) in cases {
            let netconf = parse_netconf(netconf.as_bytes()).expect("a JSON object");
            let got = milliseconds(&netconf, "timeoutMs");
            match (want, &got) {
                (Ok(want), Ok(got)) => {
                    assert_eq!(*got, want.map(Duration::from_millis), "{name}")
                }
                (Err(()), Err(msg)) => {
                    assert!(msg.contains("timeoutMs"), "{name}: {msg}");
                }
                _ => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn netconf_timeouts_override_the_defaults() {
        let netconf = br#"{"socket":"/run/x/cni.sock","connectTimeoutMs":250,"timeoutMs":9000}"#;
        let Decision::Forward(call) = decide(
            env(&[("CNI_COMMAND", "DEL")]),
            netconf.to_vec(),
            &ClientConfig::default(),
        ) else {
            panic!("a DEL goes to the server");
        };
        assert_eq!(
            call.options.client.connect_timeout,
            Duration::from_millis(250)
        );
        assert_eq!(call.options.client.timeout, Duration::from_millis(9000));
        assert_eq!(call.options.socket, PathBuf::from("/run/x/cni.sock"));
        assert_eq!(call.options.log_file, None);

        let Decision::Forward(call) = decide(
            env(&[("CNI_COMMAND", "DEL")]),
            b"{}".to_vec(),
            &ClientConfig::default(),
        ) else {
            panic!("a DEL goes to the server");
        };
        assert_eq!(
            call.options.client.connect_timeout,
            client::DEFAULT_CONNECT_TIMEOUT
        );
        assert_eq!(call.options.client.timeout, client::DEFAULT_TIMEOUT);
        assert_eq!(call.options.socket, PathBuf::from(DEFAULT_SOCKET_PATH));
    }

    #[test]
    fn keeps_the_settings_read_before_add() {
        let folder = Folder::new("settings");
        let socket = folder.0.join("cni.sock");
        let settings = serde_json::json!({"mtu": 1400});
        settings::write_settings(&socket, &settings).expect("write settings");
        let netconf = format!(
            r#"{{"socket":{}}}"#,
            Value::String(socket.display().to_string())
        );

        let cases: &[(&str, Option<&Value>)] = &[
            ("ADD", Some(&settings)),
            ("DEL", None),
            ("CHECK", None),
            ("GC", None),
            ("STATUS", None),
        ];
        for (command, want) in cases {
            let decision = decide(
                env(&[("CNI_COMMAND", command)]),
                netconf.as_bytes().to_vec(),
                &ClientConfig::default(),
            );
            let Decision::Forward(call) = decision else {
                panic!("{command} goes to the server: {decision:?}");
            };
            assert_eq!(call.settings.as_ref(), *want, "{command}");
        }
    }

    #[test]
    fn settings_that_cannot_be_used_fail_add() {
        let folder = Folder::new("bad-settings");
        let socket = folder.0.join("cni.sock");
        let netconf = format!(
            r#"{{"socket":{}}}"#,
            Value::String(socket.display().to_string())
        );
        let add = || {
            run(
                env(&[("CNI_COMMAND", "ADD")]),
                netconf.as_bytes().to_vec(),
                &ClientConfig::default(),
            )
        };
        let path = settings::settings_path(&socket).display().to_string();

        let error = error_of(&add());
        assert_eq!(error["code"], 11, "{error}");
        let msg = error["msg"].as_str().unwrap_or_default();
        assert!(msg.starts_with("server not ready"), "{msg}");
        assert!(msg.contains(&path), "{msg}");

        fs::write(settings::settings_path(&socket), b"{\"mtu\":").expect("write");
        let error = error_of(&add());
        assert_eq!(error["code"], 6, "{error}");
        let msg = error["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(&path), "{msg}");
    }

    #[test]
    fn answers_version_itself() {
        let outcome = run(
            env(&[("CNI_COMMAND", "VERSION")]),
            b"not even JSON".to_vec(),
            &ClientConfig::default(),
        );
        assert_eq!(outcome.exit_code, 0);
        assert_eq!(
            String::from_utf8_lossy(&outcome.stdout),
            r#"{"cniVersion":"1.1.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#
        );
    }

    #[test]
    fn maps_plain_text_server_errors_to_codes() {
        let cases: &[(&str, u16, &str, ErrorCode, &str)] = &[
            (
                "handler error",
                400,
                "unhandled CNI command FROB\n",
                ErrorCode::Internal,
                "unhandled CNI command FROB",
            ),
            (
                "missing variable",
                400,
                "missing CNI_NETNS\n",
                ErrorCode::InvalidEnvironment,
                "missing CNI_NETNS",
            ),
            (
                "bad CNI_ARGS",
                400,
                "invalid CNI_ARG 'x'\n",
                ErrorCode::InvalidEnvironment,
                "invalid CNI_ARG 'x'",
            ),
            (
                "server full",
                503,
                "server busy\n",
                ErrorCode::TryAgainLater,
                "server busy",
            ),
            (
                "handler too slow",
                504,
                "",
                ErrorCode::TryAgainLater,
                "the CNI server answered 504 with no message",
            ),
            (
                "not found",
                404,
                "404 page not found\n",
                ErrorCode::Internal,
                "404 page not found",
            ),
        ];
        for (name, status, body, code, msg) in cases {
            let got = server_error(*status, body.as_bytes());
            assert_eq!(got, (*code, msg.to_string()), "{name}");
        }
    }

    #[test]
    fn recognizes_cni_errors() {
        let cases: &[(&str, bool)] = &[
            (r#"{"cniVersion":"1.0.0","code":7,"msg":"bad"}"#, true),
            (r#"{"code":100,"msg":"x","details":"y"}"#, true),
            (r#"{"code":"7","msg":"bad"}"#, false),
            (r#"{"code":7}"#, false),
            (r#"[{"code":7,"msg":"bad"}]"#, false),
            ("unhandled CNI command X\n", false),
        ];
        for (body, want) in cases {
            assert_eq!(is_cni_error(body.as_bytes()), *want, "{body}");
        }
    }

    #[test]
    fn escapes_error_json() {
        let json = error_json(
            "1.1.0",
            ErrorCode::Internal,
            "a \"quoted\"\nline",
            Some("d"),
        );
        assert_eq!(
            String::from_utf8_lossy(&json),
            r#"{"cniVersion":"1.1.0","code":999,"msg":"a \"quoted\"\nline","details":"d"}"#
        );
    }

    #[test]
    fn formats_times_as_rfc3339_utc() {
        let cases: &[(u64, u32, &str)] = &[
            (0, 0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, 7, "2000-02-29T00:00:00.007Z"),
            (951_868_799, 999, "2000-02-29T23:59:59.999Z"),
            (1_709_251_199, 120, "2024-02-29T23:59:59.120Z"),
            (1_733_332_800, 0, "2024-12-04T17:20:00.000Z"),
            (4_102_444_800, 0, "2100-01-01T00:00:00.000Z"),
            (253_402_300_799, 0, "9999-12-31T23:59:59.000Z"),
        ];
        for (seconds, millis, want) in cases {
            let at = UNIX_EPOCH + Duration::new(*seconds, millis * 1_000_000);
            assert_eq!(rfc3339(at), *want, "{seconds}.{millis:03}");
        }
        // A clock before 1970 is logged as the epoch rather than failing.
        let before = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn writes_one_line_per_call() {
        let at = UNIX_EPOCH + Duration::from_millis(1_709_251_199_120);
        let failure = Outcome::failure(error_json(
            "1.0.0",
            ErrorCode::TryAgainLater,
            "server not ready: no settings file at /run/x/config.json",
            None,
        ));
        let noted = Outcome {
            note: Some("nothing to tear down".to_owned()),
            ..Outcome::default()
        };
        let passed_through = Outcome::failure(br#"{"code":7,"msg":"two\nlines"}"#.to_vec());
        // Name, command, container ID, outcome, the line.
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            Option<&'a str>,
            &'a Outcome,
            &'a str,
        );
        let cases: &[Case<'_>] = &[
            (
                "success",
                Some("ADD"),
                Some("abc-123_x.y"),
                &Outcome::success(b"{}".to_vec()),
                "2024-02-29T23:59:59.120Z command=ADD container=abc-123_x.y outcome=ok \
                 duration_ms=42\n",
            ),
            (
                "the shim's own failure",
                Some("ADD"),
                Some("abc"),
                &failure,
                "2024-02-29T23:59:59.120Z command=ADD container=abc outcome=error code=11 \
                 duration_ms=42 msg=\"server not ready: no settings file at \
                 /run/x/config.json\"\n",
            ),
            (
                "a success with a reason",
                Some("DEL"),
                Some("abc"),
                &noted,
                "2024-02-29T23:59:59.120Z command=DEL container=abc outcome=ok duration_ms=42 \
                 msg=\"nothing to tear down\"\n",
            ),
            (
                "odd values stay on one line",
                Some("DEL\nX"),
                None,
                &passed_through,
                "2024-02-29T23:59:59.120Z command=\"DEL\\nX\" container=- outcome=error \
                 code=7 duration_ms=42 msg=\"two\\nlines\"\n",
            ),
        ];
        for (name, command, container_id, outcome, want) in cases {
            let line = log_line(&LogEntry {
                at,
                command: *command,
                container_id: *container_id,
                duration: Duration::from_millis(42),
                outcome,
            });
            assert_eq!(line, *want, "{name}");
        }
    }

    #[test]
    fn cuts_long_log_fields_on_a_character_boundary() {
        let long = "\u{e9}".repeat(MAX_LOG_FIELD);
        let field: String = serde_json::from_str(&quoted(&long)).expect("a JSON string");
        assert!(field.len() <= MAX_LOG_FIELD, "{}", field.len());
        assert!(long.starts_with(&field));
    }

    #[test]
    fn help_names_every_key_and_default() {
        let needles = [
            DEFAULT_SOCKET_PATH.to_owned(),
            CNI_VERSION.to_owned(),
            format!("(default {})", client::DEFAULT_CONNECT_TIMEOUT.as_millis()),
            format!("(default {})", client::DEFAULT_TIMEOUT.as_millis()),
            format!("from 1 to {MAX_TIMEOUT_MS}"),
            "connectTimeoutMs".to_owned(),
            "timeoutMs".to_owned(),
            "logFile".to_owned(),
            "cniVersion".to_owned(),
            "DEL when the server cannot be reached".to_owned(),
            "Exit status".to_owned(),
        ];
        for needle in needles {
            assert!(HELP.contains(&needle), "--help lacks {needle:?}");
        }
    }

    #[test]
    fn refuses_unexpected_arguments() {
        let cases: &[(&[&str], u8)] = &[
            (&["--help"], 0),
            (&["-h"], 0),
            (&["--version"], 0),
            (&["--help", "extra"], 2),
            (&["ADD"], 2),
        ];
        for (args, code) in cases {
            let args = args.iter().map(OsString::from);
            let outcome = main_with(args.clone(), BTreeMap::new(), &b""[..]);
            assert_eq!(outcome.exit_code, *code, "{:?}", args.collect::<Vec<_>>());
        }
    }
}
