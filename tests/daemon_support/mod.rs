//! Shared harness for the tests that run the real `cniserverd` binary:
//! a folder of the test's own with fake delegate plugins (shell scripts,
//! the ones several files need kept here), the daemon as a child process
//! with its stderr collected, started directly or the way systemd's socket
//! activation starts it, and a client that speaks the shim's protocol over
//! the socket as raw HTTP.
//!
//! A daemon counts as started once `config.json` is beside its socket:
//! the daemon writes it only after the socket listens, and it is there
//! whatever the log level.
//!
//! Every test file uses a different part of this module, so unused items
//! are expected in each of them.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cniserver::CniRequest;
use nix::fcntl::{FcntlArg, FdFlag};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// How long a test waits for anything before it fails. A guard against
/// hangs, never an assertion about speed.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The daemon binary under test.
pub const DAEMON: &str = env!("CARGO_BIN_EXE_cniserverd");

/// Polls `done` until it holds; fails the test after [`PATIENCE`].
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------
// Fake delegate plugins, for `Fixture::plugin`

/// Prints a result for ADD, nothing for the other commands.
pub const OK: &str = r#"#!/bin/sh
if [ "$CNI_COMMAND" = ADD ]; then printf '{"cniVersion":"0.4.0","ips":[]}'; fi
"#;

/// Fails the way a well-behaved plugin does: a CNI error with code 7.
pub const FAILS: &str = r#"#!/bin/sh
printf '{"cniVersion":"0.4.0","code":7,"msg":"bad config from the fake","details":"line 3"}'
exit 1
"#;

/// Records its environment and stdin under its container's name (see
/// [`Fixture::recorded_env`]), then prints a result.
pub const RECORDER: &str = r#"#!/bin/sh
env > "@DIR@/env-$CNI_CONTAINERID"
cat > "@DIR@/stdin-$CNI_CONTAINERID.json"
printf '{"cniVersion":"0.4.0","ips":[]}'
"#;

/// Logs its start to `gate.log`, waits until the test releases its
/// container ([`Fixture::release`]), logs its end, and prints a result for
/// ADD. Ordering is read from these marks, never from time.
pub const GATE: &str = r#"#!/bin/sh
echo "start $CNI_COMMAND $CNI_CONTAINERID $CNI_ARGS" >> "@DIR@/gate.log"
while [ ! -e "@DIR@/release-$CNI_CONTAINERID" ]; do sleep 0.02; done
echo "end $CNI_COMMAND $CNI_CONTAINERID $CNI_ARGS" >> "@DIR@/gate.log"
if [ "$CNI_COMMAND" = ADD ]; then printf '{"cniVersion":"0.4.0","ips":[]}'; fi
"#;

// ---------------------------------------------------------------------------
// The test's folder

/// A folder of the test's own, with fake plugins in `plugins/` and the
/// socket in `sock/`; removed when dropped.
pub struct Fixture {
    pub dir: PathBuf,
}

impl Fixture {
    /// A fresh folder whose name holds `tag`, with no plugins yet.
    pub fn new(tag: &str) -> Fixture {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // Socket paths must stay under about 100 bytes.
        let tag: String = tag.chars().take(16).collect();
        let dir = std::env::temp_dir().join(format!(
            "cnis-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("plugins")).unwrap();
        Fixture { dir }
    }

    /// Installs a fake plugin; `@DIR@` in the script becomes the folder.
    /// With an empty environment dash still finds `cat`, `sleep` and the
    /// like on its default search path.
    pub fn plugin(&self, name: &str, script: &str) -> &Fixture {
        let path = self.plugins().join(name);
        let text = script.replace("@DIR@", &self.dir.to_string_lossy());
        // Written aside and renamed, so that no daemon execs a file still
        // open for writing.
        let temp = self.dir.join(format!(".{name}.tmp"));
        fs::write(&temp, text).unwrap();
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&temp, &path).unwrap();
        self
    }

    pub fn plugins(&self) -> PathBuf {
        self.dir.join("plugins")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("sock").join("cni.sock")
    }

    pub fn settings(&self) -> PathBuf {
        self.dir.join("sock").join("config.json")
    }

    /// The flags every test daemon gets: the folder's socket and plugins.
    pub fn daemon_args(&self) -> Vec<OsString> {
        vec![
            "--socket".into(),
            self.socket().into(),
            "--cni-path".into(),
            self.plugins().into(),
        ]
    }

    /// What [`RECORDER`] found in its environment for `container`.
    pub fn recorded_env(&self, container: &str) -> String {
        fs::read_to_string(self.dir.join(format!("env-{container}"))).unwrap()
    }

    /// The netconf [`RECORDER`] got on stdin for `container`.
    pub fn recorded_stdin(&self, container: &str) -> Value {
        let path = self.dir.join(format!("stdin-{container}.json"));
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    /// Lets the gate plugins held for `container` finish.
    pub fn release(&self, container: &str) {
        fs::write(self.dir.join(format!("release-{container}")), b"").unwrap();
    }

    /// The marks of [`GATE`] so far, in order: (start|end, command,
    /// container, pod name).
    pub fn gate_log(&self) -> Vec<(String, String, String, String)> {
        let text = fs::read_to_string(self.dir.join("gate.log")).unwrap_or_default();
        text.lines()
            .map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let pod = fields[3]
                    .split(';')
                    .find_map(|arg| arg.strip_prefix("K8S_POD_NAME="))
                    .unwrap_or("")
                    .to_owned();
                (fields[0].into(), fields[1].into(), fields[2].into(), pod)
            })
            .collect()
    }

    /// Whether the gate log holds `event` (start or end) for this pod.
    pub fn has_marker(&self, event: &str, pod: &str) -> bool {
        self.gate_log()
            .iter()
            .any(|(e, _, _, p)| e == event && p == pod)
    }

    /// Whether a gate plugin started for `container`.
    pub fn gate_started(&self, container: &str) -> bool {
        self.gate_log()
            .iter()
            .any(|(e, _, c, _)| e == "start" && c == container)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// The daemon

/// A running `cniserverd`, killed if the test did not stop it.
pub struct Daemon {
    pub child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Daemon {
    /// Starts the daemon on the fixture with `extra` flags, without
    /// `RUST_LOG`, and waits until it listens.
    pub fn start(fixture: &Fixture, extra: &[&str]) -> Daemon {
        let daemon = Daemon::spawn(Daemon::command(fixture, extra));
        daemon.wait_until_listening(fixture);
        daemon
    }

    /// The command [`Daemon::start`] runs, to be changed before
    /// [`Daemon::spawn`].
    pub fn command(fixture: &Fixture, extra: &[&str]) -> Command {
        let mut command = Command::new(DAEMON);
        command
            .args(fixture.daemon_args())
            .args(extra)
            .env_remove("RUST_LOG");
        command
    }

    /// Runs `command`, which starts the daemon, collecting its stderr; does
    /// not wait for anything.
    pub fn spawn(mut command: Command) -> Daemon {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cniserverd");

        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Daemon {
            child,
            stderr,
            reader: Some(reader),
        }
    }

    /// Waits for the settings file the daemon writes once it listens.
    pub fn wait_until_listening(&self, fixture: &Fixture) {
        wait_for("the daemon to publish config.json", || {
            fixture.settings().exists()
        });
    }

    /// Waits until the daemon's stderr holds `text`; the log so far comes
    /// with the failure.
    pub fn wait_for_log(&self, text: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {text:?} in the log\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the daemon to exit; its whole stderr comes with it.
    pub fn wait(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (status, self.log())
    }

    /// SIGTERM, then [`Daemon::wait`].
    pub fn stop(self) -> (ExitStatus, String) {
        self.signal(Signal::SIGTERM);
        self.wait()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `cniserverd` with `args`, started as systemd's socket activation starts
/// it: `listener` as fd 3, `LISTEN_FDS=1`, and `LISTEN_PID` naming the
/// daemon itself, without `RUST_LOG`. Only the new process knows its PID,
/// so a shell sets it from `$$` and then execs the daemon, which keeps it.
pub fn socket_activated(listener: &UnixListener, args: &[OsString]) -> Command {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(r#"export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" "$@""#)
        .arg(DAEMON)
        .args(args)
        .env_remove("RUST_LOG");
    let fd = listener.as_raw_fd();
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (dup2, fcntl).
    unsafe {
        command.pre_exec(move || {
            if fd == 3 {
                nix::fcntl::fcntl(3, FcntlArg::F_SETFD(FdFlag::empty()))?;
            } else {
                nix::unistd::dup2(fd, 3)?;
            }
            Ok(())
        });
    }
    command
}

// ---------------------------------------------------------------------------
// Requests

/// The `secret` of [`pod_env`] for tests that do not look for leaks.
pub const NO_SECRET: &str = "-";

/// A pod request's environment as a shim forwards it, with variables
/// the daemon must not pass on: `secret` is the value of one of them.
pub fn pod_env(
    command: &str,
    container: &str,
    pod: &str,
    secret: &str,
) -> BTreeMap<String, String> {
    let vars = [
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", container.to_owned()),
        ("CNI_NETNS", format!("/var/run/netns/fake-{container}")),
        ("CNI_IFNAME", "eth0".to_owned()),
        (
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=testns;K8S_POD_NAME={pod}"),
        ),
        ("CNI_PATH", "/request/path/never/used".to_owned()),
        ("PATH", "/request/bin".to_owned()),
        ("API_TOKEN", secret.to_owned()),
    ];
    vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// A netconf that names `delegate` as the plugin to run.
pub fn netconf(delegate: &str) -> Value {
    json!({
        "cniVersion": "0.4.0",
        "name": "daemon-test",
        "type": "cniserver-shim",
        "delegateType": delegate,
    })
}

/// The body of a pod request, as the shim sends it.
pub fn pod_body(env: BTreeMap<String, String>, netconf: &Value) -> Vec<u8> {
    CniRequest {
        env: env.into(),
        config: serde_json::to_vec(netconf).unwrap(),
    }
    .to_json()
}

/// A `POST /` with `body`, as the shim sends it.
pub fn post_request(body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST / HTTP/1.1\r\nHost: dummy\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// The daemon's answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer body is not JSON ({e}): {self:?}"))
    }

    /// The CNI error code; fails the test when there is none.
    pub fn code(&self) -> u64 {
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("answer has no code: {self:?}"))
    }

    /// The CNI error message, empty when there is none.
    pub fn msg(&self) -> String {
        self.json()["msg"].as_str().unwrap_or("").to_owned()
    }

    /// Fails the test unless this is a CNI error with `code` whose message
    /// holds `msg_has`.
    pub fn assert_error(&self, code: u64, msg_has: &str) {
        assert_ne!(self.status, 200, "expected an error: {self:?}");
        assert_eq!(self.code(), code, "wrong code: {self:?}");
        assert!(
            self.msg().contains(msg_has),
            "msg lacks {msg_has:?}: {self:?}"
        );
    }
}

/// Why an exchange did not end with a whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeError {
    /// The connection was not taken (`connect` failed), with the reason.
    Connect(String),
    /// Sending the request failed.
    Send(String),
    /// The answer did not come whole: a read error, or the server closed
    /// the connection early.
    Answer(String),
}

/// Sends `request` on a new connection and reads the whole answer.
pub fn try_exchange(socket: &Path, request: &[u8]) -> Result<Answer, ExchangeError> {
    let mut stream =
        UnixStream::connect(socket).map_err(|e| ExchangeError::Connect(e.to_string()))?;
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(request)
        .map_err(|e| ExchangeError::Send(e.to_string()))?;
    read_answer(&mut stream)
}

/// Reads until the daemon closes the connection and parses the answer.
pub fn read_answer(stream: &mut UnixStream) -> Result<Answer, ExchangeError> {
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| ExchangeError::Answer(e.to_string()))?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(ExchangeError::Answer(format!("no whole head in {text:?}")));
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| ExchangeError::Answer(format!("no status in {head:?}")))?;
    Ok(Answer {
        status,
        body: body.to_owned(),
    })
}

/// [`try_exchange`] that fails the test on anything but a whole answer.
pub fn exchange(socket: &Path, request: &[u8]) -> Answer {
    try_exchange(socket, request).unwrap_or_else(|e| panic!("exchange failed: {e:?}"))
}

/// Sends a pod request and returns the answer.
pub fn post(socket: &Path, env: BTreeMap<String, String>, netconf: &Value) -> Answer {
    exchange(socket, &post_request(&pod_body(env, netconf)))
}

/// [`post`] on a thread of its own.
pub fn post_in_background(
    socket: &Path,
    env: BTreeMap<String, String>,
    netconf: Value,
) -> JoinHandle<Answer> {
    let socket = socket.to_owned();
    std::thread::spawn(move || post(&socket, env, &netconf))
}

/// `GET path`, answered whole.
pub fn get(socket: &Path, path: &str) -> Answer {
    let request = format!("GET {path} HTTP/1.1\r\nHost: dummy\r\n\r\n");
    exchange(socket, request.as_bytes())
}
