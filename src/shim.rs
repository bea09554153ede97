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
//! [`main_with`] and [`run`], which take the arguments, environment and
//! stdin as values and give back what to print and the exit code; the
//! binary only reads its process state and writes the [`Outcome`]. Every
//! failure reaches the runtime as a CNI error JSON with the spec's code
//! that fits it. Nothing printed ever holds an environment value, unless
//! the server put it in its answer.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Read;
use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::client::{self, ClientConfig, ClientError, Failure};
use crate::cni::{CniRequest, DEFAULT_SOCKET_PATH};

/// The CNI spec version the shim speaks, used in its own error results
/// when the netconf does not name one.
pub const CNI_VERSION: &str = "1.1.0";

/// The CNI spec versions the shim reports for `VERSION`. The shim only
/// carries bytes, so it supports whatever the server's delegate plugins do.
pub const SUPPORTED_VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The text of `--help`.
pub const HELP: &str = "\
cniserver-shim: a CNI plugin that hands every call to the CNI server.

The container runtime execs it with CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS,
CNI_IFNAME, CNI_ARGS and CNI_PATH in its environment and the network
configuration (netconf) on stdin. It sends its whole environment and the
netconf to the CNI server over the server's Unix socket and prints the
server's answer: a result JSON, nothing (DEL), or a CNI error JSON with exit
status 1. It answers CNI_COMMAND=VERSION itself.

Netconf keys it reads:
  socket       absolute path of the CNI server's socket
               (default /var/run/openshift-sdn/cni-server.sock)
  cniVersion   the spec version of the error results it prints itself
               (default 1.1.0)

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
    /// The bytes for stderr; only usage errors write there.
    pub stderr: Vec<u8>,
    /// The process exit status.
    pub exit_code: u8,
}

impl Outcome {
    fn success(stdout: Vec<u8>) -> Outcome {
        Outcome {
            stdout,
            stderr: Vec::new(),
            exit_code: 0,
        }
    }

    fn failure(stdout: Vec<u8>) -> Outcome {
        Outcome {
            stdout,
            stderr: Vec::new(),
            exit_code: 1,
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
            stdout: Vec::new(),
            stderr: b"cniserver-shim: unexpected arguments; \
                      a runtime passes none, see --help\n"
                .to_vec(),
            exit_code: 2,
        },
    }
}

/// Runs one CNI call: `env` is the whole environment to send, `netconf`
/// the bytes from stdin.
pub fn run(env: BTreeMap<String, String>, netconf: Vec<u8>, config: &ClientConfig) -> Outcome {
    let parsed = parse_netconf(&netconf);
    let cni_version = parsed
        .as_ref()
        .ok()
        .and_then(|netconf| netconf.get("cniVersion"))
        .and_then(Value::as_str)
        .filter(|version| looks_like_version(version))
        .unwrap_or(CNI_VERSION)
        .to_owned();
    let fail =
        |code: ErrorCode, msg: &str| Outcome::failure(error_json(&cni_version, code, msg, None));

    match env.get("CNI_COMMAND").map(String::as_str) {
        None => return fail(ErrorCode::InvalidEnvironment, "CNI_COMMAND is not set"),
        Some("") => return fail(ErrorCode::InvalidEnvironment, "CNI_COMMAND is empty"),
        Some("VERSION") => return Outcome::success(version_result()),
        Some(_) => {}
    }

    let socket = match parsed {
        Ok(netconf) => match socket_path(&netconf) {
            Ok(socket) => socket,
            Err(msg) => return fail(ErrorCode::InvalidNetworkConfig, msg),
        },
        Err(msg) => return fail(ErrorCode::DecodingFailure, &msg),
    };

    let request = CniRequest {
        env,
        config: netconf,
    };
    match client::send_with(&socket, &request, config) {
        Ok(answer) if answer.status == 200 => Outcome::success(answer.body),
        Ok(answer) if is_cni_error(&answer.body) => Outcome::failure(answer.body),
        Ok(answer) => {
            let (code, msg) = server_error(answer.status, &answer.body);
            let details = format!(
                "the CNI server at {} answered {}",
                socket.display(),
                answer.status
            );
            Outcome::failure(error_json(&cni_version, code, &msg, Some(&details)))
        }
        Err(e) => fail(client_error_code(&e), &e.to_string()),
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

/// The server's socket: the netconf's `socket`, or the protocol's default.
/// A relative path would depend on the runtime's working folder, so it is
/// refused.
fn socket_path(netconf: &Map<String, Value>) -> Result<PathBuf, &'static str> {
    match netconf.get("socket") {
        None | Some(Value::Null) => Ok(PathBuf::from(DEFAULT_SOCKET_PATH)),
        Some(Value::String(path)) if path.starts_with('/') => Ok(PathBuf::from(path)),
        Some(Value::String(_)) => Err("netconf key \"socket\" must be an absolute path"),
        Some(_) => Err("netconf key \"socket\" must be a string"),
    }
}

/// Whether a body is already a CNI error: an object with a numeric `code`
/// and a string `msg`.
fn is_cni_error(body: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => {
            object.get("code").is_some_and(Value::is_number)
                && object.get("msg").is_some_and(Value::is_string)
        }
        _ => false,
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
    fn help_names_the_default_socket() {
        assert!(HELP.contains(DEFAULT_SOCKET_PATH), "{HELP}");
        assert!(HELP.contains(CNI_VERSION), "{HELP}");
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
