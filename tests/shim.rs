//! The shim as a container runtime sees it: the built binary, exec'd with
//! the `CNI_*` variables and a netconf on stdin, against a server running
//! in this process on a socket in a folder of the test's own.
//!
//! Every run gets a cleared environment plus the variables a runtime sets,
//! one secret-looking variable, and `PATH`, so what the server receives and
//! what the shim prints can be checked exactly.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cniserver::client::{self, ClientConfig, Failure};
use cniserver::{reference, CniRequest, PodError, PodRequest, PodResult, Server, ShutdownHandle};
use serde_json::Value;

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
/// and keeping every request it decoded.
struct TestServer {
    socket: PathBuf,
    seen: Arc<Mutex<Vec<PodRequest>>>,
    stop: ShutdownHandle,
    thread: Option<JoinHandle<()>>,
    _folder: TempFolder,
}

impl TestServer {
    fn start(handler: fn(&PodRequest) -> PodResult) -> TestServer {
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

/// A netconf naming `socket`, in the layout a runtime writes.
fn netconf_for(socket: &Path) -> String {
    format!(
        r#"{{"cniVersion":"0.4.0","name":"podnet","type":"cniserver-shim","socket":{}}}"#,
        Value::String(socket.display().to_string())
    )
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
/// `PATH`), `stdin` written and closed, stdout and stderr collected.
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
    let output = child.wait_with_output().expect("wait for the shim");
    Run {
        stdout: output.stdout,
        stderr: output.stderr,
        exit: output.status.code(),
    }
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

#[test]
fn reports_an_absent_server_as_try_again_later() {
    let folder = TempFolder::new("absent");

    // A socket file that outlived its server: nothing accepts on it.
    let stale = folder.join("stale.sock");
    drop(UnixListener::bind(&stale).expect("bind and drop"));
    // A file that is not a socket at all.
    let plain = folder.join("plain.sock");
    fs::write(&plain, b"").expect("write a plain file");

    let cases: &[(&str, PathBuf)] = &[
        ("no socket file", nowhere(&folder)),
        ("no socket folder", folder.join("gone").join("cni.sock")),
        ("a socket nobody listens on", stale),
        ("a plain file", plain),
    ];
    for (name, socket) in cases {
        let run = exec_shim(
            &[],
            &pod_env("ADD", "sandbox-5"),
            netconf_for(socket).as_bytes(),
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
    for needle in ["CNI plugin", "CNI_COMMAND", "stdin", "socket", "cniVersion"] {
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
    use nix::sys::socket::{self as sock, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};

    let folder = TempFolder::new("full");
    let socket = folder.join("full.sock");
    let listener = sock::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let address = UnixAddr::new(&socket).expect("address");
    sock::bind(listener.as_raw_fd(), &address).expect("bind");
    sock::listen(&listener, Backlog::new(0).expect("backlog")).expect("listen");

    // Fill the backlog with connections that nobody accepts.
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
    drop(queued);
}
