//! The shim as a container runtime sees it: the built binary, exec'd with
//! the `CNI_*` variables and a netconf on stdin, against a server running
//! in this process on a socket in a folder of the test's own.
//!
//! Every run gets a cleared environment plus the variables a runtime sets,
//! one secret-looking variable, and `PATH`, so what the server receives and
//! what the shim prints (and logs) can be checked exactly. The tests write
//! the server's `config.json` themselves where a running daemon would.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cniserver::client::{self, ClientConfig, Failure};
use cniserver::settings::{settings_path, write_settings};
use cniserver::{reference, CniRequest, PodError, PodRequest, PodResult, Server, ShutdownHandle};
use serde_json::{json, Value};

const SHIM: &str = env!("CARGO_BIN_EXE_cniserver-shim");

/// The netns every pod of these tests lives in.
const NETNS: &str = "/var/run/netns/pod-1";

/// A variable whose value must never appear in anything the shim prints.
const SECRET_NAME: &str = "REGISTRY_PASSWORD";
const SECRET_VALUE: &str = "hunter2-never-print-me";

/// How long a guard waits before a stuck test fails; never an assertion
/// about speed.
const GUARD: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Fixtures

/// A fresh folder of mode 0700 under the system temp folder, removed with
/// its contents when dropped.
struct TempFolder(PathBuf);

impl TempFolder {
    fn new(tag: &str) -> TempFolder {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "cnis-shim-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempFolder(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempFolder {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A CNI server on `cni.sock` in its own folder, answering with `handler`
/// and keeping every request its handler got.
struct TestServer {
    socket: PathBuf,
    seen: Arc<Mutex<Vec<PodRequest>>>,
    stop: ShutdownHandle,
    thread: Option<JoinHandle<()>>,
    _folder: TempFolder,
}

impl TestServer {
    /// A server that serves and has published its settings, as the daemon
    /// does once it listens.
    fn start(handler: fn(&PodRequest) -> PodResult) -> TestServer {
        let server = TestServer::unready(handler);
        publish_settings(&server.socket);
        server
    }

    /// A server that serves but has not published its settings (yet).
    fn unready(handler: fn(&PodRequest) -> PodResult) -> TestServer {
        let folder = TempFolder::new("srv");
        let socket = folder.join("cni.sock");
        // Bound and listening once `bind` returns: a shim may connect at once.
        let server = Server::bind(&socket).expect("bind the test server");
        let stop = server.shutdown_handle();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let thread = std::thread::spawn(move || {
            server
                .serve(move |request, reply| {
                    let result = handler(&request);
                    record.lock().expect("request log").push(request);
                    reply.send(result);
                })
                .expect("serve");
        });
        TestServer {
            socket,
            seen,
            stop,
            thread: Some(thread),
            _folder: folder,
        }
    }

    fn requests(&self) -> Vec<PodRequest> {
        self.seen.lock().expect("request log").clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Picks an answer by sandbox ID, so that one server can play every
/// handler the failure table needs; other pods get the reference answer.
fn scripted_handler(request: &PodRequest) -> PodResult {
    match request.sandbox_id.as_str() {
        "wants-cni-error" => Err(PodError::cni_json(CNI_ERROR.to_vec())),
        "wants-busy" => Err(PodError::message("too many pods at once").with_status(503)),
        "wants-silence" => Err(PodError::cni_json(Vec::new()).with_status(500)),
        _ => reference::answer(request),
    }
}

/// A delegate plugin's error, as the daemon passes it through.
const CNI_ERROR: &[u8] =
    br#"{"cniVersion":"0.4.0","code":7,"msg":"no bridge cni0","details":"create it first"}"#;

/// Writes the settings file beside `socket`, as a daemon that serves there
/// does.
fn publish_settings(socket: &Path) {
    write_settings(socket, &json!({"mtu": 1400})).expect("write config.json");
}

/// A netconf naming `socket`, in the layout a runtime writes.
fn netconf_for(socket: &Path) -> String {
    netconf_with(socket, &[])
}

/// A netconf naming `socket`, with more keys after it.
fn netconf_with(socket: &Path, extra: &[(&str, Value)]) -> String {
    let mut netconf = format!(
        r#"{{"cniVersion":"0.4.0","name":"podnet","type":"cniserver-shim","socket":{}"#,
        Value::String(socket.display().to_string())
    );
    for (key, value) in extra {
        netconf.push_str(&format!(",{}:{value}", Value::String(key.to_string())));
    }
    netconf.push('}');
    netconf
}

/// A `logFile` key for `netconf_with`.
fn log_key(log: &Path) -> (&'static str, Value) {
    ("logFile", Value::String(log.display().to_string()))
}

/// An environment for the shim, as name and value pairs.
type Env = Vec<(String, String)>;

/// Bytes written into this file.
type Bytes = &'static [u8];

/// The variables a runtime sets for a pod operation, plus a secret.
fn pod_env(command: &str, sandbox_id: &str) -> Env {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", sandbox_id),
        ("CNI_NETNS", NETNS),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
        (SECRET_NAME, SECRET_VALUE),
    ]
    .iter()
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect()
}

fn without(mut env: Env, name: &str) -> Env {
    env.retain(|(n, _)| n != name);
    env
}

/// What one exec of the shim printed and how it exited.
struct Run {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: Option<i32>,
}

impl Run {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The CNI error JSON on stdout, checked for the spec's shape.
    fn error(&self) -> Value {
        let error: Value = serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout_text()));
        assert!(error["code"].is_u64(), "no numeric code: {error}");
        assert!(error["msg"].is_string(), "no msg: {error}");
        assert!(error["cniVersion"].is_string(), "no cniVersion: {error}");
        error
    }

    fn assert_no_secret(&self) {
        for (stream, bytes) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let text = String::from_utf8_lossy(bytes);
            assert!(
                !text.contains(SECRET_VALUE),
                "{stream} shows an environment value: {text}"
            );
        }
    }
}

/// Execs the shim the way a runtime does: this environment only (and
/// `PATH`), `stdin` written and closed, stdout and stderr collected. A shim
/// still running after the guard is killed and the test fails.
fn exec_shim(args: &[&str], env: &[(String, String)], stdin: &[u8]) -> Run {
    let mut child = Command::new(SHIM)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(n, v)| (n, v)))
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("exec the shim");
    let mut pipe = child.stdin.take().expect("stdin pipe");
    // A shim that does not read stdin (--help) may close it first.
    let _ = pipe.write_all(stdin);
    drop(pipe);

    // What the shim prints is small enough for the pipes' buffers, so it
    // can be read once the shim has exited.
    let give_up = Instant::now() + GUARD;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the shim") {
            break status;
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the shim did not exit within {GUARD:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut run = Run {
        stdout: Vec::new(),
        stderr: Vec::new(),
        exit: status.code(),
    };
    if let Some(mut out) = child.stdout.take() {
        out.read_to_end(&mut run.stdout).expect("read stdout");
    }
    if let Some(mut err) = child.stderr.take() {
        err.read_to_end(&mut run.stderr).expect("read stderr");
    }
    run
}

/// A socket path in a fresh folder where nothing is listening.
fn nowhere(folder: &TempFolder) -> PathBuf {
    folder.join("nobody-home.sock")
}

// ---------------------------------------------------------------------------
// Success: the server's answer, unchanged

#[test]
fn prints_the_servers_result_unchanged() {
    let server = TestServer::start(reference::answer);
    let netconf = netconf_for(&server.socket);
    let add = reference::add_result(NETNS);
    let cases: &[(&str, &str, &[u8])] = &[
        ("ADD prints the result", "ADD", &add),
        ("DEL prints nothing", "DEL", b""),
        ("CHECK prints nothing", "CHECK", b""),
    ];
    for (name, command, want) in cases {
        let run = exec_shim(&[], &pod_env(command, "sandbox-1"), netconf.as_bytes());
        assert_eq!(
            run.stdout,
            *want,
            "{name}: stdout {:?}, stderr {:?}",
            run.stdout_text(),
            String::from_utf8_lossy(&run.stderr)
        );
        assert_eq!(run.exit, Some(0), "{name}");
        assert!(run.stderr.is_empty(), "{name}: stderr {:?}", run.stderr);
    }
}

#[test]
fn sends_the_netconf_unchanged_and_the_whole_environment() {
    let server = TestServer::start(reference::answer);
    // Spacing, a non-ASCII name, unknown keys and a trailing newline: the
    // server must get these bytes exactly.
    let netconf = format!(
        "{{\n  \"cniVersion\": \"1.0.0\",\n  \"name\": \"p\u{f6}dnet\",\n  \
         \"socket\": {},\n  \"delegateType\": \"bridge\", \"ipam\": {{}}\n}}\n",
        Value::String(server.socket.display().to_string())
    );
    let mut env = pod_env("ADD", "sandbox-env");
    env.push(("UNRELATED".into(), "with = and ; inside".into()));

    let run = exec_shim(&[], &env, netconf.as_bytes());
    assert_eq!(run.exit, Some(0), "stdout {}", run.stdout_text());

    let requests = server.requests();
    assert_eq!(requests.len(), 1, "one exec, one request");
    let request = &requests[0];
    assert_eq!(
        String::from_utf8_lossy(&request.config),
        netconf,
        "netconf bytes"
    );
    let mut want: BTreeMap<String, String> = env.into_iter().collect();
    want.insert("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into());
    assert_eq!(request.env, want, "environment");
}

// ---------------------------------------------------------------------------
// Failure: always a CNI error JSON on stdout and exit 1

/// What a failing run must print.
enum Want {
    /// These exact bytes.
    Exact(Bytes),
    /// An error JSON with this code and this msg, in the netconf's version.
    Error { code: u64, msg: &'static str },
}

#[test]
fn prints_server_failures_as_cni_errors() {
    let server = TestServer::start(scripted_handler);
    let netconf = netconf_for(&server.socket);
    let cases: Vec<(&str, Env, Want)> = vec![
        (
            "a CNI error from the handler passes through unchanged",
            pod_env("ADD", "wants-cni-error"),
            Want::Exact(CNI_ERROR),
        ),
        (
            "a DEL's CNI error from the handler passes through unchanged",
            pod_env("DEL", "wants-cni-error"),
            Want::Exact(CNI_ERROR),
        ),
        (
            "a DEL's plain-text handler error is not hidden",
            pod_env("DEL", "wants-silence"),
            Want::Error {
                code: 999,
                msg: "the CNI server answered 500 with no message",
            },
        ),
        (
            "a busy server answering a DEL means try again later",
            pod_env("DEL", "wants-busy"),
            Want::Error {
                code: 11,
                msg: "too many pods at once",
            },
        ),
        (
            "a plain-text handler error becomes the msg",
            pod_env("FROB", "sandbox-2"),
            Want::Error {
                code: 999,
                msg: "unhandled CNI command FROB",
            },
        ),
        (
            "a busy server means try again later",
            pod_env("ADD", "wants-busy"),
            Want::Error {
                code: 11,
                msg: "too many pods at once",
            },
        ),
        (
            "an empty error body still says what happened",
            pod_env("ADD", "wants-silence"),
            Want::Error {
                code: 999,
                msg: "the CNI server answered 500 with no message",
            },
        ),
        (
            "a variable the server needs is invalid environment",
            without(pod_env("ADD", "sandbox-3"), "CNI_NETNS"),
            Want::Error {
                code: 4,
                msg: "missing CNI_NETNS",
            },
        ),
        (
            "CNI_ARGS without the pod is invalid environment",
            pod_env("ADD", "sandbox-4")
                .into_iter()
                .map(|(n, v)| match n.as_str() {
                    "CNI_ARGS" => (n, "IgnoreUnknown=1".to_owned()),
                    _ => (n, v),
                })
                .collect(),
            Want::Error {
                code: 4,
                msg: "missing K8S_POD_NAMESPACE",
            },
        ),
    ];
    for (name, env, want) in cases {
        let run = exec_shim(&[], &env, netconf.as_bytes());
        assert_eq!(run.exit, Some(1), "{name}: stdout {}", run.stdout_text());
        run.assert_no_secret();
        match want {
            Want::Exact(bytes) => {
                assert_eq!(run.stdout_text(), String::from_utf8_lossy(bytes), "{name}")
            }
            Want::Error { code, msg } => {
                let error = run.error();
                assert_eq!(error["code"], code, "{name}: {error}");
                assert_eq!(error["msg"], msg, "{name}: {error}");
                assert_eq!(error["cniVersion"], "0.4.0", "{name}: {error}");
            }
        }
    }
}

/// What is left at a socket path when no server answers there.
#[derive(Debug, Clone, Copy)]
enum Leftover {
    /// Nothing: no socket, no settings file.
    Nothing,
    /// Not even the socket's folder.
    NoFolder,
    /// A socket file that outlived its server: nothing accepts on it.
    StaleSocket,
    /// The settings file, but no socket.
    SettingsOnly,
    /// A stale socket and the settings file.
    StaleSocketAndSettings,
    /// A plain file where the socket should be.
    PlainFile,
}

/// Leaves `leftover` in `folder` and gives the socket path to use.
fn leave(folder: &TempFolder, leftover: Leftover) -> PathBuf {
    let socket = folder.join("cni.sock");
    match leftover {
        Leftover::Nothing => {}
        Leftover::NoFolder => return folder.join("gone").join("cni.sock"),
        Leftover::StaleSocket => drop(UnixListener::bind(&socket).expect("bind and drop")),
        Leftover::SettingsOnly => publish_settings(&socket),
        Leftover::StaleSocketAndSettings => {
            drop(UnixListener::bind(&socket).expect("bind and drop"));
            publish_settings(&socket);
        }
        Leftover::PlainFile => fs::write(&socket, b"").expect("write a plain file"),
    }
    socket
}

#[test]
fn reports_an_absent_server_as_try_again_later() {
    let cases: &[(&str, &str, Leftover)] = &[
        ("ADD after the server left", "ADD", Leftover::SettingsOnly),
        (
            "ADD to a stale socket",
            "ADD",
            Leftover::StaleSocketAndSettings,
        ),
        ("CHECK with no socket folder", "CHECK", Leftover::NoFolder),
        ("CHECK with no socket", "CHECK", Leftover::Nothing),
        ("CHECK to a plain file", "CHECK", Leftover::PlainFile),
        ("STATUS to a stale socket", "STATUS", Leftover::StaleSocket),
    ];
    for (name, command, leftover) in cases {
        let folder = TempFolder::new("absent");
        let socket = leave(&folder, *leftover);
        let run = exec_shim(
            &[],
            &pod_env(command, "sandbox-5"),
            netconf_for(&socket).as_bytes(),
        );
        assert_eq!(run.exit, Some(1), "{name}: stdout {}", run.stdout_text());
        run.assert_no_secret();
        let error = run.error();
        assert_eq!(error["code"], 11, "{name}: {error}");
        assert_eq!(error["cniVersion"], "0.4.0", "{name}: {error}");
        let msg = error["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains(&socket.display().to_string()),
            "{name}: msg does not name the socket: {msg}"
        );
    }
}

#[test]
fn add_fails_fast_until_the_server_publishes_its_settings() {
    let server = TestServer::unready(reference::answer);
    let netconf = netconf_for(&server.socket);
    let settings_file = settings_path(&server.socket).display().to_string();

    let run = exec_shim(&[], &pod_env("ADD", "early"), netconf.as_bytes());
    assert_eq!(run.exit, Some(1), "stdout {}", run.stdout_text());
    run.assert_no_secret();
    let error = run.error();
    assert_eq!(error["code"], 11, "{error}");
    let msg = error["msg"].as_str().unwrap_or_default();
    assert!(msg.starts_with("server not ready"), "{msg}");
    assert!(
        msg.contains(&settings_file),
        "msg does not name the file: {msg}"
    );
    assert_eq!(server.requests().len(), 0, "the handler was called");

    // Commands other than ADD do not wait for the settings.
    for command in ["DEL", "CHECK"] {
        let run = exec_shim(&[], &pod_env(command, "early"), netconf.as_bytes());
        assert_eq!(run.exit, Some(0), "{command}: stdout {}", run.stdout_text());
    }
    assert_eq!(
        server.requests().len(),
        2,
        "DEL and CHECK reach the handler"
    );

    publish_settings(&server.socket);
    let run = exec_shim(&[], &pod_env("ADD", "early"), netconf.as_bytes());
    assert_eq!(run.exit, Some(0), "stdout {}", run.stdout_text());
    assert_eq!(run.stdout, reference::add_result(NETNS));
    assert_eq!(server.requests().len(), 3, "the ADD reaches the handler");
}

#[test]
fn add_without_settings_does_not_even_connect() {
    let folder = TempFolder::new("noconn");
    let socket = folder.join("cni.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");

    let run = exec_shim(
        &[],
        &pod_env("ADD", "sandbox-7"),
        netconf_for(&socket).as_bytes(),
    );
    assert_eq!(run.error()["code"], 11, "stdout {}", run.stdout_text());

    // A connection would wait in the backlog whether or not it was
    // accepted; there is none.
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the shim connected: {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// DEL when the server cannot be reached

/// What a DEL with no server behind it must come to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum DelWant {
    /// Exit 0 and nothing printed: no server is installed.
    Done,
    /// Code 11, so that the runtime tries again.
    Retry,
}

#[test]
fn del_without_a_server_succeeds_only_when_none_is_installed() {
    let cases: &[(&str, Leftover, DelWant)] = &[
        (
            "no socket and no settings: nothing to tear down",
            Leftover::Nothing,
            DelWant::Done,
        ),
        (
            "no socket folder at all: nothing to tear down",
            Leftover::NoFolder,
            DelWant::Done,
        ),
        (
            "a stale socket: the server is down or restarting",
            Leftover::StaleSocket,
            DelWant::Retry,
        ),
        (
            "settings without a socket: the server is down or restarting",
            Leftover::SettingsOnly,
            DelWant::Retry,
        ),
        (
            "a stale socket and settings",
            Leftover::StaleSocketAndSettings,
            DelWant::Retry,
        ),
        (
            "something else where the socket should be",
            Leftover::PlainFile,
            DelWant::Retry,
        ),
    ];
    for (name, leftover, want) in cases {
        let folder = TempFolder::new("del");
        let logs = TempFolder::new("del-log");
        let log = logs.join("shim.log");
        let socket = leave(&folder, *leftover);
        let netconf = netconf_with(&socket, &[log_key(&log)]);

        let run = exec_shim(&[], &pod_env("DEL", "sandbox-del"), netconf.as_bytes());
        run.assert_no_secret();
        let logged = fs::read_to_string(&log).unwrap_or_default();
        let socket = socket.display().to_string();
        assert_eq!(logged.lines().count(), 1, "{name}: log {logged:?}");
        assert!(!logged.contains(SECRET_VALUE), "{name}: log {logged:?}");
        match want {
            DelWant::Done => {
                assert_eq!(run.exit, Some(0), "{name}: stdout {}", run.stdout_text());
                assert!(run.stdout.is_empty(), "{name}: {}", run.stdout_text());
                assert!(run.stderr.is_empty(), "{name}: {:?}", run.stderr);
                assert!(logged.contains(" outcome=ok "), "{name}: log {logged:?}");
                assert!(logged.contains("neither"), "{name}: log {logged:?}");
                assert!(logged.contains(&socket), "{name}: log {logged:?}");
            }
            DelWant::Retry => {
                assert_eq!(run.exit, Some(1), "{name}: stdout {}", run.stdout_text());
                let error = run.error();
                assert_eq!(error["code"], 11, "{name}: {error}");
                let msg = error["msg"].as_str().unwrap_or_default();
                assert!(msg.contains(&socket), "{name}: msg {msg}");
                assert!(
                    logged.contains(" outcome=error code=11 "),
                    "{name}: log {logged:?}"
                );
            }
        }
    }
}

#[test]
fn netconf_timeouts_bound_the_wait() {
    let folder = TempFolder::new("bounds");

    // Accepted by the backlog, never read or answered. The defaults would
    // wait longer than the test's guard: only the netconf's bound ends it.
    let mute = folder.join("mute.sock");
    let listener = UnixListener::bind(&mute).expect("bind");
    publish_settings(&mute);

    // A backlog full of connections nobody accepts.
    let full = folder.join("full").join("cni.sock");
    fs::DirBuilder::new()
        .mode(0o700)
        .create(folder.join("full"))
        .expect("folder");
    let (_queue_listener, _queued) = fill_backlog(&full);
    publish_settings(&full);

    // Name, command, socket, the netconf's bound, what the error says.
    type Case<'a> = (&'a str, &'a str, &'a Path, (&'a str, Value), &'a str);
    let cases: &[Case<'_>] = &[
        (
            "ADD gives up after timeoutMs",
            "ADD",
            &mute,
            ("timeoutMs", json!(300)),
            "in time",
        ),
        (
            "DEL gives up after timeoutMs and asks to retry",
            "DEL",
            &mute,
            ("timeoutMs", json!(300)),
            "in time",
        ),
        (
            "ADD gives up connecting after connectTimeoutMs",
            "ADD",
            &full,
            ("connectTimeoutMs", json!(100)),
            "accepts no connections",
        ),
        (
            "DEL gives up connecting after connectTimeoutMs",
            "DEL",
            &full,
            ("connectTimeoutMs", json!(100)),
            "accepts no connections",
        ),
    ];
    for (name, command, socket, key, says) in cases {
        let netconf = netconf_with(socket, std::slice::from_ref(key));
        let run = exec_shim(&[], &pod_env(command, "sandbox-8"), netconf.as_bytes());
        assert_eq!(run.exit, Some(1), "{name}: stdout {}", run.stdout_text());
        let error = run.error();
        assert_eq!(error["code"], 11, "{name}: {error}");
        let msg = error["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{name}: msg {msg}");
    }
    drop(listener);
}

#[test]
fn refuses_timeouts_that_are_not_whole_milliseconds() {
    let server = TestServer::start(reference::answer);
    let logs = TempFolder::new("timeouts");
    let log = logs.join("shim.log");
    let values = [
        json!(0),
        json!(-1),
        json!(1.5),
        json!(1e3),
        json!(true),
        json!([1000]),
        json!("timeout-value-never-echoed"),
        json!(86_400_001_u64),
        json!(u64::MAX),
    ];

    let mut runs = 0;
    for key in ["timeoutMs", "connectTimeoutMs"] {
        for value in &values {
            for command in ["ADD", "DEL"] {
                let netconf = netconf_with(&server.socket, &[(key, value.clone()), log_key(&log)]);
                let run = exec_shim(&[], &pod_env(command, "sandbox-9"), netconf.as_bytes());
                runs += 1;
                let name = format!("{command} with {key}={value}");
                assert_eq!(run.exit, Some(1), "{name}: stdout {}", run.stdout_text());
                let error = run.error();
                assert_eq!(error["code"], 7, "{name}: {error}");
                let msg = error["msg"].as_str().unwrap_or_default();
                assert!(msg.contains(key), "{name}: msg {msg}");
                let text = value.to_string();
                if text.len() > 3 {
                    let bare = text.trim_matches('"');
                    assert!(!run.stdout_text().contains(bare), "{name}: echoed");
                }
            }
        }
    }
    assert_eq!(server.requests().len(), 0, "a call reached the handler");

    // Bad values are logged as such, without the value.
    let logged = fs::read_to_string(&log).expect("read the log");
    assert_eq!(logged.lines().count(), runs, "{logged}");
    for line in logged.lines() {
        assert!(line.contains(" outcome=error code=7 "), "{line}");
        assert!(!line.contains("timeout-value-never-echoed"), "{line}");
    }

    // Good values work.
    let netconf = netconf_with(
        &server.socket,
        &[
            ("connectTimeoutMs", json!(2000)),
            ("timeoutMs", json!(60000)),
        ],
    );
    let run = exec_shim(&[], &pod_env("ADD", "sandbox-9"), netconf.as_bytes());
    assert_eq!(run.exit, Some(0), "stdout {}", run.stdout_text());
    assert_eq!(server.requests().len(), 1);
}

// ---------------------------------------------------------------------------
// The log file

/// A netconf value that must never reach the log.
const NETCONF_SECRET: &str = "netconf-token-never-log-me";

/// Whether `token` is an RFC 3339 UTC time as the shim writes it:
/// `2024-02-29T23:59:59.123Z`.
fn is_utc_timestamp(token: &str) -> bool {
    let shape = "dddd-dd-ddTdd:dd:dd.dddZ";
    token.len() == shape.len()
        && token
            .bytes()
            .zip(shape.bytes())
            .all(|(got, want)| match want {
                b'd' => got.is_ascii_digit(),
                _ => got == want,
            })
}

#[test]
fn logs_one_line_per_call_and_no_secrets() {
    let server = TestServer::start(scripted_handler);
    let logs = TempFolder::new("log");
    let log = logs.join("shim.log");
    let netconf = netconf_with(
        &server.socket,
        &[
            log_key(&log),
            ("delegateType", json!("bridge")),
            ("token", json!(NETCONF_SECRET)),
        ],
    );

    let calls: &[(&str, &str, &str)] = &[
        ("ADD", "log-add", "outcome=ok"),
        ("CHECK", "log-check", "outcome=ok"),
        ("DEL", "wants-cni-error", "outcome=error code=7"),
        ("ADD", "wants-busy", "outcome=error code=11"),
        ("DEL", "log-del", "outcome=ok"),
    ];
    for (command, sandbox_id, _) in calls {
        let run = exec_shim(&[], &pod_env(command, sandbox_id), netconf.as_bytes());
        assert!(
            run.stderr.is_empty(),
            "{command}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
    }

    let logged = fs::read_to_string(&log).expect("read the log");
    let lines: Vec<&str> = logged.lines().collect();
    assert_eq!(lines.len(), calls.len(), "{logged}");
    for (line, (command, sandbox_id, outcome)) in lines.iter().zip(calls) {
        let (time, rest) = line.split_once(' ').unwrap_or_default();
        assert!(is_utc_timestamp(time), "not a UTC time: {line}");
        let head = format!("command={command} container={sandbox_id} {outcome} duration_ms=");
        assert!(rest.starts_with(&head), "want {head:?}...: {line}");
        let duration = rest[head.len()..].split(' ').next().unwrap_or_default();
        assert!(
            !duration.is_empty() && duration.bytes().all(|b| b.is_ascii_digit()),
            "duration: {line}"
        );
    }
    assert!(
        lines[2].ends_with(" msg=\"no bridge cni0\""),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].ends_with(" msg=\"too many pods at once\""),
        "{}",
        lines[3]
    );

    let mode = fs::metadata(&log)
        .expect("stat the log")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "log mode {mode:o}");
    for secret in [SECRET_VALUE, NETCONF_SECRET, NETNS, "web-1", "/opt/cni/bin"] {
        assert!(
            !logged.contains(secret),
            "the log shows {secret:?}: {logged}"
        );
    }
}

#[test]
fn a_log_that_cannot_be_written_does_not_fail_the_call() {
    let server = TestServer::start(reference::answer);
    let logs = TempFolder::new("badlog");
    let target = logs.join("target.log");
    fs::write(&target, b"").expect("write the link's target");
    let link = logs.join("link.log");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");

    let cases: &[(&str, PathBuf)] = &[
        (
            "the log's folder is missing",
            logs.join("gone").join("shim.log"),
        ),
        ("the log is a symbolic link", link),
        ("the log is a folder", logs.0.clone()),
    ];
    for (name, log) in cases {
        let netconf = netconf_with(&server.socket, &[log_key(log)]);
        let run = exec_shim(&[], &pod_env("ADD", "sandbox-10"), netconf.as_bytes());
        assert_eq!(run.exit, Some(0), "{name}: stdout {}", run.stdout_text());
        assert_eq!(run.stdout, reference::add_result(NETNS), "{name}");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            stderr.contains("cannot write the log file"),
            "{name}: {stderr}"
        );
        run.assert_no_secret();
    }
    let target_text = fs::read_to_string(&target).expect("read the target");
    assert!(
        target_text.is_empty(),
        "written through a link: {target_text}"
    );
}

#[test]
fn reports_a_broken_answer_as_an_io_failure() {
    let cases: &[(&str, Bytes, Option<Bytes>)] = &[
        ("not HTTP at all", b"hello there\r\n\r\n", None),
        (
            "cut short",
            b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}",
            None,
        ),
        ("closed without a word", b"", None),
        (
            "chunked is read too",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            Some(&b"{}"[..]),
        ),
    ];
    for (name, answer, success) in cases {
        let folder = TempFolder::new("raw");
        let socket = folder.join("raw.sock");
        publish_settings(&socket);
        let server = answer_once(&socket, answer);
        let run = exec_shim(
            &[],
            &pod_env("ADD", "sandbox-6"),
            netconf_for(&socket).as_bytes(),
        );
        server.join().expect("raw server");

        run.assert_no_secret();
        match success {
            Some(body) => {
                assert_eq!(run.exit, Some(0), "{name}: {}", run.stdout_text());
                assert_eq!(run.stdout, *body, "{name}");
            }
            None => {
                assert_eq!(run.exit, Some(1), "{name}: stdout {}", run.stdout_text());
                let error = run.error();
                assert_eq!(error["code"], 5, "{name}: {error}");
                let msg = error["msg"].as_str().unwrap_or_default();
                assert!(
                    msg.contains(&socket.display().to_string()),
                    "{name}: msg does not name the socket: {msg}"
                );
            }
        }
    }
}

/// A stand-in server that reads one whole request, writes `answer` as
/// raw bytes and closes.
fn answer_once(socket: &Path, answer: Bytes) -> JoinHandle<()> {
    let listener = UnixListener::bind(socket).expect("bind the raw server");
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(GUARD)).expect("read guard");
        read_request(&mut stream);
        let _ = stream.write_all(answer);
    })
}

/// Reads a request head and its `Content-Length` body.
fn read_request(stream: &mut UnixStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut request = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = request.parse(&bytes) {
            let length: usize = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .expect("the shim sends Content-Length");
            if bytes.len() >= head + length {
                return bytes;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return bytes,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
        }
    }
}

// ---------------------------------------------------------------------------
// What the shim decides alone

#[test]
fn answers_version_without_a_server() {
    let folder = TempFolder::new("version");
    let version = br#"{"cniVersion":"1.1.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}"#;
    let netconf = netconf_for(&nowhere(&folder));
    let stdins: &[(&str, &[u8])] = &[
        ("as the spec sends it", br#"{"cniVersion":"1.1.0"}"#),
        ("a whole netconf", netconf.as_bytes()),
        ("nothing", b""),
    ];
    for (name, stdin) in stdins {
        let env = vec![("CNI_COMMAND".to_owned(), "VERSION".to_owned())];
        let run = exec_shim(&[], &env, stdin);
        assert_eq!(run.exit, Some(0), "{name}");
        assert_eq!(
            run.stdout_text(),
            String::from_utf8_lossy(version),
            "{name}"
        );
    }
}

#[test]
fn refuses_input_it_cannot_use() {
    let folder = TempFolder::new("input");
    let netconf = netconf_for(&nowhere(&folder));
    let cases: &[(&str, Env, &[u8], u64, &str)] = &[
        ("empty stdin", pod_env("ADD", "s"), b"", 6, "1.1.0"),
        (
            "stdin not JSON",
            pod_env("ADD", "s"),
            b"cniVersion=1.0.0",
            6,
            "1.1.0",
        ),
        (
            "stdin cut short",
            pod_env("ADD", "s"),
            b"{\"cniVersion\":\"1.0.0\"",
            6,
            "1.1.0",
        ),
        (
            "stdin a JSON list",
            pod_env("ADD", "s"),
            b"[{\"cniVersion\":\"1.0.0\"}]",
            6,
            "1.1.0",
        ),
        (
            "stdin not UTF-8",
            pod_env("DEL", "s"),
            b"{\"name\":\"\xff\"}",
            6,
            "1.1.0",
        ),
        (
            "no CNI_COMMAND",
            without(pod_env("ADD", "s"), "CNI_COMMAND"),
            netconf.as_bytes(),
            4,
            "0.4.0",
        ),
        (
            "socket not a string",
            pod_env("ADD", "s"),
            br#"{"cniVersion":"1.0.0","socket":["/run/a.sock"]}"#,
            7,
            "1.0.0",
        ),
    ];
    for (name, env, stdin, code, version) in cases {
        let run = exec_shim(&[], env, stdin);
        assert_eq!(run.exit, Some(1), "{name}: stdout {}", run.stdout_text());
        run.assert_no_secret();
        let error = run.error();
        assert_eq!(error["code"], *code, "{name}: {error}");
        assert_eq!(error["cniVersion"], *version, "{name}: {error}");
    }
}

#[test]
fn says_what_it_is_when_asked() {
    let run = exec_shim(&["--help"], &[], b"");
    assert_eq!(run.exit, Some(0));
    let help = run.stdout_text();
    for needle in [
        "CNI plugin",
        "CNI_COMMAND",
        "stdin",
        "socket",
        "connectTimeoutMs",
        "timeoutMs",
        "logFile",
        "cniVersion",
        "config.json",
        "DEL when the server cannot be reached",
        "Exit status",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}: {help}");
    }
    assert_eq!(exec_shim(&["-h"], &[], b"").stdout_text(), help);

    let run = exec_shim(&["--version"], &[], b"");
    assert_eq!(run.exit, Some(0));
    assert!(
        run.stdout_text().contains(env!("CARGO_PKG_VERSION")),
        "{}",
        run.stdout_text()
    );

    let run = exec_shim(&["ADD"], &[], b"");
    assert_eq!(run.exit, Some(2));
    assert!(run.stdout.is_empty(), "usage errors stay off stdout");
}

// ---------------------------------------------------------------------------
// The client's bounds, through the library (the binary's are minutes long)

#[test]
fn client_gives_up_on_a_server_that_never_answers() {
    let folder = TempFolder::new("mute");
    let socket = folder.join("mute.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let config = ClientConfig {
        timeout: Duration::from_millis(200),
        ..ClientConfig::default()
    };

    // The connection is accepted by the backlog and never read or answered.
    let error = client::send_with(&socket, &CniRequest::default(), &config)
        .expect_err("no answer can come");
    assert!(
        matches!(error.failure(), Failure::TimedOut),
        "{error:?}: {error}"
    );
    assert!(
        error.to_string().contains(&socket.display().to_string()),
        "{error}"
    );
    drop(listener);
}

#[test]
fn client_gives_up_on_a_server_that_accepts_nothing() {
    let folder = TempFolder::new("full");
    let socket = folder.join("full.sock");
    let (_listener, _queued) = fill_backlog(&socket);

    let config = ClientConfig {
        connect_timeout: Duration::from_millis(100),
        timeout: GUARD,
        ..ClientConfig::default()
    };
    let error = client::send_with(&socket, &CniRequest::default(), &config)
        .expect_err("the backlog is full");
    assert!(
        matches!(error.failure(), Failure::ConnectTimedOut),
        "{error:?}: {error}"
    );
    assert!(error.is_unreachable(), "{error}");
}

/// A socket listening at `socket` with the smallest backlog, filled with
/// connections that nobody accepts; both stay open while kept.
fn fill_backlog(socket: &Path) -> (OwnedFd, Vec<OwnedFd>) {
    use nix::sys::socket::{self as sock, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};

    let listener = sock::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let address = UnixAddr::new(socket).expect("address");
    sock::bind(listener.as_raw_fd(), &address).expect("bind");
    sock::listen(&listener, Backlog::new(0).expect("backlog")).expect("listen");

    let mut queued = Vec::new();
    for _ in 0..64 {
        let fd = sock::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .expect("socket");
        if sock::connect(fd.as_raw_fd(), &address).is_err() {
            break;
        }
        queued.push(fd);
    }
    (listener, queued)
}
