//! The daemon binary against fake delegate plugins: small shell scripts in
//! a temp folder given as `--cni-path`, each recording what it was given or
//! misbehaving in one way. Requests go over the daemon's socket as raw
//! HTTP, as the shim sends them.
//!
//! Ordering and parallelism are read from marker lines the fake plugins
//! append to a log, never from how long something took: a plugin that
//! must stay running waits for a release file the test creates.

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

/// How long the test waits for anything before it fails. A guard against
/// hangs, never an assertion about speed.
const PATIENCE: Duration = Duration::from_secs(20);

/// A value in the request's environment that must reach nothing.
const SECRET: &str = "hunter2-do-not-leak";

// ---------------------------------------------------------------------------
// Fake plugins. `@DIR@` becomes the test's folder. With an empty
// environment dash still finds `sleep`, `cat` and `env` on its default
// search path.

/// Prints a result naming its netns; nothing for DEL.
const ECHO_RESULT: &str = r#"#!/bin/sh
if [ "$CNI_COMMAND" = ADD ]; then
  printf '{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.99.0.5/24"}],"dns":{},"netns":"%s"}' "$CNI_NETNS"
fi
"#;

/// Records its environment and stdin, then prints a result.
const RECORDER: &str = r#"#!/bin/sh
env > "@DIR@/recorded.env"
cat > "@DIR@/recorded.stdin"
printf '{"cniVersion":"0.4.0","ips":[]}'
"#;

/// Fails the way a well-behaved plugin does.
const FAIL_CNI: &str = r#"#!/bin/sh
printf '{"cniVersion":"0.4.0","code":7,"msg":"bad config from the fake","details":"line 3"}'
exit 1
"#;

/// Fails with garbage on stdout and a reason on stderr.
const GARBAGE_FAIL: &str = r#"#!/bin/sh
echo 'this is not json'
echo 'fake trouble: no route to nowhere' >&2
exit 3
"#;

/// Claims success with garbage on stdout.
const GARBAGE_OK: &str = r#"#!/bin/sh
echo 'this is not a result either'
"#;

/// Never finishes, and starts a child that would outlive it.
const HANG: &str = r#"#!/bin/sh
"@DIR@/marked-sleep" 300 &
"@DIR@/marked-sleep" 300
"#;

/// Logs its start, waits until the test releases its container, logs its
/// end.
const GATE: &str = r#"#!/bin/sh
echo "start $CNI_COMMAND $CNI_CONTAINERID $CNI_ARGS" >> "@DIR@/order.log"
while [ ! -e "@DIR@/release-$CNI_CONTAINERID" ]; do sleep 0.02; done
echo "end $CNI_COMMAND $CNI_CONTAINERID $CNI_ARGS" >> "@DIR@/order.log"
if [ "$CNI_COMMAND" = ADD ]; then printf '{"cniVersion":"0.4.0","ips":[]}'; fi
"#;

/// Records which descriptors it has open.
const FDS: &str = r#"#!/bin/sh
ls -l /proc/$$/fd/ > "@DIR@/fds.txt"
printf '{"cniVersion":"0.4.0","ips":[]}'
"#;

/// Writes more than the daemon reads.
const FLOOD: &str = r#"#!/bin/sh
head -c 2097152 /dev/zero
"#;

const PLUGINS: [(&str, &str); 9] = [
    ("echo-result", ECHO_RESULT),
    ("flood", FLOOD),
    ("fds", FDS),
    ("recorder", RECORDER),
    ("fail-cni", FAIL_CNI),
    ("garbage-fail", GARBAGE_FAIL),
    ("garbage-ok", GARBAGE_OK),
    ("hang", HANG),
    ("gate", GATE),
];

// ---------------------------------------------------------------------------
// The test's folder and daemon

/// A folder of the test's own with the fake plugins in `plugins/`,
/// removed when dropped.
struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cnis-daemon-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("plugins")).unwrap();

        let text = |script: &str| script.replace("@DIR@", &dir.to_string_lossy());
        for (name, script) in PLUGINS {
            let path = dir.join("plugins").join(name);
            fs::write(&path, text(script)).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        // A sleep whose command line names this folder, so that the test
        // can find every process a plugin left behind.
        std::os::unix::fs::symlink("/bin/sleep", dir.join("marked-sleep")).unwrap();
        Fixture { dir }
    }

    fn plugins(&self) -> PathBuf {
        self.dir.join("plugins")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("sock").join("cni.sock")
    }

    fn release(&self, container: &str) {
        fs::write(self.dir.join(format!("release-{container}")), b"").unwrap();
    }

    /// The gate plugin's marker lines: (start|end, command, container, pod).
    fn order_log(&self) -> Vec<(String, String, String, String)> {
        let text = fs::read_to_string(self.dir.join("order.log")).unwrap_or_default();
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

    fn has_marker(&self, event: &str, pod: &str) -> bool {
        self.order_log()
            .iter()
            .any(|(e, _, _, p)| e == event && p == pod)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A running `cniserverd`, killed if the test did not stop it.
struct Daemon {
    child: Child,
    socket: PathBuf,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Daemon {
    fn start(fixture: &Fixture, extra: &[&str]) -> Daemon {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cniserverd"));
        command.args(daemon_args(fixture)).args(extra);
        Daemon::spawn(command, fixture)
    }

    /// Runs `command`, which starts the daemon, and waits until it listens.
    fn spawn(mut command: Command, fixture: &Fixture) -> Daemon {
        let mut child = command
            .env_remove("RUST_LOG")
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
        let daemon = Daemon {
            child,
            socket: fixture.socket(),
            stderr,
            reader: Some(reader),
        };
        wait_for("the daemon to listen", || {
            daemon.log().contains("listening on")
        });
        daemon
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the daemon to exit; its whole stderr comes with it.
    fn wait(mut self) -> (ExitStatus, String) {
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
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (status, self.log())
    }

    fn stop(self) -> (ExitStatus, String) {
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

/// The flags every test daemon gets: the fixture's socket and plugins.
fn daemon_args(fixture: &Fixture) -> Vec<OsString> {
    vec![
        "--socket".into(),
        fixture.socket().into(),
        "--cni-path".into(),
        fixture.plugins().into(),
    ]
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// Requests

/// A pod request's environment, with unrelated variables a shim would
/// also forward, one of them secret.
fn pod_env(command: &str, container: &str, pod: &str) -> BTreeMap<String, String> {
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
        ("HOME", "/root".to_owned()),
        ("API_TOKEN", SECRET.to_owned()),
    ];
    vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn netconf(delegate: &str) -> Value {
    json!({
        "cniVersion": "0.4.0",
        "name": "daemon-test",
        "type": "cniserver-shim",
        "delegateType": delegate,
        "socket": "/somewhere/cni.sock",
        "custom": {"nested": [1, 2, 3], "token": SECRET},
    })
}

/// The daemon's answer: status and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer body is not JSON ({e}): {self:?}"))
    }

    fn code(&self) -> u64 {
        self.json()["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("answer has no code: {self:?}"))
    }

    fn msg(&self) -> String {
        self.json()["msg"].as_str().unwrap_or("").to_owned()
    }

    fn assert_error(&self, code: u64, msg_has: &str) {
        assert_ne!(self.status, 200, "expected an error: {self:?}");
        assert_eq!(self.code(), code, "wrong code: {self:?}");
        assert!(
            self.msg().contains(msg_has),
            "msg lacks {msg_has:?}: {self:?}"
        );
    }
}

fn post(socket: &Path, env: BTreeMap<String, String>, netconf: &Value) -> Answer {
    let body = CniRequest {
        env: env.into(),
        config: serde_json::to_vec(netconf).unwrap(),
    }
    .to_json();
    let mut stream = UnixStream::connect(socket).expect("connect to the daemon");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: dummy\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();

    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the answer");
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Answer {
        status,
        body: body.to_owned(),
    }
}

fn post_in_background(
    socket: &Path,
    env: BTreeMap<String, String>,
    netconf: Value,
) -> JoinHandle<Answer> {
    let socket = socket.to_owned();
    std::thread::spawn(move || post(&socket, env, &netconf))
}

// ---------------------------------------------------------------------------
// What the plugin is given

#[test]
fn plugin_gets_only_the_cni_variables_a_fixed_path_and_its_own_type() {
    let fixture = Fixture::new("env");
    let daemon = Daemon::start(&fixture, &[]);

    let answer = post(
        &daemon.socket,
        pod_env("ADD", "c-env", "recorded"),
        &netconf("recorder"),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, r#"{"cniVersion":"0.4.0","ips":[]}"#);

    // dash adds PWD to any environment; everything else came from the daemon.
    let recorded = fs::read_to_string(fixture.dir.join("recorded.env")).unwrap();
    let env: BTreeMap<&str, &str> = recorded
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(name, _)| *name != "PWD")
        .collect();
    let plugins = fixture.plugins();
    let want = BTreeMap::from([
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=testns;K8S_POD_NAME=recorded",
        ),
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c-env"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/var/run/netns/fake-c-env"),
        ("CNI_PATH", plugins.to_str().unwrap()),
        // The daemon's fixed tool path, not the request's PATH.
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
    ]);
    assert_eq!(env, want, "the plugin's environment:\n{recorded}");

    let stdin: Value =
        serde_json::from_slice(&fs::read(fixture.dir.join("recorded.stdin")).unwrap()).unwrap();
    let mut expected = netconf("recorder");
    expected["type"] = json!("recorder");
    assert_eq!(stdin, expected, "the plugin's stdin");

    let (status, log) = daemon.stop();
    assert!(status.success(), "exit {status}\n{log}");
    assert!(
        log.contains(
            "request command=ADD container=c-env ifname=eth0 pod=testns/recorded outcome=ok"
        ),
        "no request line in the log:\n{log}"
    );
    assert!(log.contains("duration_ms="), "{log}");
    assert!(!log.contains(SECRET), "the log shows a secret:\n{log}");
}

// ---------------------------------------------------------------------------
// Answers

#[test]
fn answers_pass_plugin_output_through_or_describe_the_failure() {
    let fixture = Fixture::new("answers");
    let daemon = Daemon::start(&fixture, &[]);
    let plugins = fixture.plugins().to_string_lossy().into_owned();

    /// What the client gets: a status and this exact body, or a 400 with
    /// a CNI error the daemon built (code, a fragment of its msg).
    enum Want<'a> {
        Body(u16, &'a str),
        Error(u64, &'a str),
    }
    let add_result = r#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.99.0.5/24"}],"dns":{},"netns":"/var/run/netns/fake-c-answers"}"#;
    let plugin_error =
        r#"{"cniVersion":"0.4.0","code":7,"msg":"bad config from the fake","details":"line 3"}"#;
    let cases = [
        (
            "result passes through",
            "ADD",
            "echo-result",
            Want::Body(200, add_result),
        ),
        (
            "empty DEL is a success",
            "DEL",
            "echo-result",
            Want::Body(200, ""),
        ),
        (
            "plugin's CNI error passes through",
            "ADD",
            "fail-cni",
            Want::Body(400, plugin_error),
        ),
        (
            "garbage on failure gives a built error",
            "ADD",
            "garbage-fail",
            Want::Error(
                999,
                "delegate plugin \"garbage-fail\" failed (exit status: 3)",
            ),
        ),
        (
            "garbage on success gives a built error",
            "ADD",
            "garbage-ok",
            Want::Error(999, "its output is not a CNI result"),
        ),
        (
            "output past the bound is an error",
            "ADD",
            "flood",
            Want::Error(999, "wrote more than 1 MiB to stdout"),
        ),
        (
            "a missing plugin names the folders searched",
            "ADD",
            "no-such-plugin",
            Want::Error(999, "\"no-such-plugin\" not found in "),
        ),
    ];

    for (name, command, delegate, want) in cases {
        let answer = post(
            &daemon.socket,
            pod_env(command, "c-answers", name),
            &netconf(delegate),
        );
        match want {
            Want::Body(status, body) => {
                assert_eq!(answer.status, status, "{name}: {answer:?}");
                assert_eq!(answer.body, body, "{name}");
            }
            Want::Error(code, msg) => {
                assert_eq!(answer.status, 400, "{name}: {answer:?}");
                assert_eq!(answer.code(), code, "{name}: {answer:?}");
                assert!(answer.msg().contains(msg), "{name}: {answer:?}");
                assert_eq!(answer.json()["cniVersion"], "0.4.0", "{name}");
            }
        }
    }

    let garbage = post(
        &daemon.socket,
        pod_env("ADD", "c-answers", "details"),
        &netconf("garbage-fail"),
    );
    assert_eq!(
        garbage.json()["details"],
        "fake trouble: no route to nowhere",
        "stderr becomes the details"
    );
    let missing = post(
        &daemon.socket,
        pod_env("ADD", "c-answers", "folders"),
        &netconf("no-such-plugin"),
    );
    assert!(missing.msg().ends_with(&plugins), "{missing:?}");
    daemon.stop();
}

#[test]
fn delegate_type_must_be_a_plain_name_and_nothing_runs_otherwise() {
    let fixture = Fixture::new("names");
    let daemon = Daemon::start(&fixture, &[]);
    let escape = format!(
        "../{}/plugins/recorder",
        fixture.dir.file_name().unwrap().to_string_lossy()
    );

    let cases = [
        ("parent folder", json!("../plugins/recorder")),
        ("escape to a real plugin", json!(escape)),
        ("absolute path", json!(fixture.plugins().join("recorder"))),
        ("dot dot alone", json!("..")),
        ("empty", json!("")),
        ("NUL byte", json!("recorder\u{0}x")),
        ("not a string", json!(["recorder"])),
    ];
    for (name, delegate) in cases {
        let mut config = netconf("recorder");
        config["delegateType"] = delegate;
        let answer = post(&daemon.socket, pod_env("ADD", "c-names", name), &config);
        answer.assert_error(7, "delegateType");
        assert!(
            !answer.body.contains("recorder"),
            "{name}: the refused value is echoed: {answer:?}"
        );
    }

    let mut missing = netconf("recorder");
    missing.as_object_mut().unwrap().remove("delegateType");
    post(&daemon.socket, pod_env("ADD", "c-names", "none"), &missing)
        .assert_error(7, "no delegateType");

    assert!(
        !fixture.dir.join("recorded.env").exists(),
        "a refused delegateType ran the plugin"
    );
    daemon.stop();
}

// ---------------------------------------------------------------------------
// Deadlines

/// Processes whose command line names this marker.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(marker) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

#[test]
fn plugin_past_its_deadline_is_killed_with_its_process_group() {
    let fixture = Fixture::new("timeout");
    let daemon = Daemon::start(&fixture, &["--plugin-timeout", "1"]);
    let sleep_marker = fixture
        .dir
        .join("marked-sleep")
        .to_string_lossy()
        .into_owned();
    let plugin_marker = fixture
        .plugins()
        .join("hang")
        .to_string_lossy()
        .into_owned();

    let pending = post_in_background(
        &daemon.socket,
        pod_env("ADD", "c-timeout", "hang"),
        netconf("hang"),
    );
    // Both sleeps run before the deadline: the background one is the
    // process that would outlive the plugin.
    wait_for("the plugin's two sleeps", || {
        processes_with(&sleep_marker).len() == 2
    });

    let answer = pending.join().unwrap();
    answer.assert_error(999, "timeout");
    assert!(answer.msg().contains("\"hang\""), "{answer:?}");

    // Killing is done before the answer; a moment may pass before the
    // kernel has torn a killed process down.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<String> = processes_with(&sleep_marker)
            .into_iter()
            .chain(processes_with(&plugin_marker))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes left behind: {left:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.stop();
}

// ---------------------------------------------------------------------------
// Ordering and the queue

#[test]
fn one_container_runs_serially_in_arrival_order_others_in_parallel() {
    let fixture = Fixture::new("order");
    let daemon = Daemon::start(&fixture, &["--workers", "4"]);
    let socket = &daemon.socket;

    let first = post_in_background(socket, pod_env("ADD", "c-serial", "a1"), netconf("gate"));
    wait_for("a1 to start", || fixture.has_marker("start", "a1"));
    let second = post_in_background(socket, pod_env("ADD", "c-serial", "a2"), netconf("gate"));
    // Only sets up arrival order; nothing is asserted on time.
    std::thread::sleep(Duration::from_millis(150));
    let third = post_in_background(socket, pod_env("CHECK", "c-serial", "a3"), netconf("gate"));
    std::thread::sleep(Duration::from_millis(150));
    let other = post_in_background(socket, pod_env("ADD", "c-other", "b1"), netconf("gate"));

    // Another container starts while the first one's ADD is held...
    wait_for("b1 to start", || fixture.has_marker("start", "b1"));
    // ...and the first container's later requests, sent before it, have not.
    assert!(
        !fixture.has_marker("start", "a2") && !fixture.has_marker("start", "a3"),
        "a second request for c-serial started while the first ran: {:#?}",
        fixture.order_log()
    );

    fixture.release("c-other");
    fixture.release("c-serial");
    for pending in [first, second, third, other] {
        let answer = pending.join().unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
    }

    let serial: Vec<(String, String)> = fixture
        .order_log()
        .into_iter()
        .filter(|(_, _, container, _)| container == "c-serial")
        .map(|(event, _, _, pod)| (event, pod))
        .collect();
    let want: Vec<(String, String)> = [
        ("start", "a1"),
        ("end", "a1"),
        ("start", "a2"),
        ("end", "a2"),
        ("start", "a3"),
        ("end", "a3"),
    ]
    .iter()
    .map(|(e, p)| (e.to_string(), p.to_string()))
    .collect();
    assert_eq!(serial, want, "c-serial's runs");
    daemon.stop();
}

#[test]
fn del_cancels_a_queued_add_of_the_same_container() {
    let fixture = Fixture::new("cancel");
    let daemon = Daemon::start(&fixture, &["--workers", "4"]);
    let socket = &daemon.socket;

    let running = post_in_background(socket, pod_env("ADD", "c-cancel", "x1"), netconf("gate"));
    wait_for("x1 to start", || fixture.has_marker("start", "x1"));
    let queued = post_in_background(socket, pod_env("ADD", "c-cancel", "x2"), netconf("gate"));
    // Only sets up arrival order; nothing is asserted on time.
    std::thread::sleep(Duration::from_millis(150));
    let del = post_in_background(socket, pod_env("DEL", "c-cancel", "x3"), netconf("gate"));

    // The queued ADD is answered while x1 still holds the container.
    let cancelled = queued.join().unwrap();
    cancelled.assert_error(11, "cancelled");
    assert!(
        !fixture.has_marker("end", "x1"),
        "x1 ended before the cancel"
    );

    fixture.release("c-cancel");
    assert_eq!(running.join().unwrap().status, 200);
    assert_eq!(del.join().unwrap().status, 200);

    let runs: Vec<(String, String, String)> = fixture
        .order_log()
        .into_iter()
        .map(|(event, command, _, pod)| (event, command, pod))
        .collect();
    let want: Vec<(String, String, String)> = [
        ("start", "ADD", "x1"),
        ("end", "ADD", "x1"),
        ("start", "DEL", "x3"),
        ("end", "DEL", "x3"),
    ]
    .iter()
    .map(|(e, c, p)| (e.to_string(), c.to_string(), p.to_string()))
    .collect();
    assert_eq!(runs, want, "the cancelled ADD ran, or the DEL did not");
    daemon.stop();
}

#[test]
fn full_queue_answers_try_again_later_at_once() {
    let fixture = Fixture::new("full");
    let daemon = Daemon::start(&fixture, &["--workers", "1", "--max-queue", "2"]);
    let socket = &daemon.socket;

    let running = post_in_background(socket, pod_env("ADD", "k1", "q1"), netconf("gate"));
    wait_for("q1 to start", || fixture.has_marker("start", "q1"));
    let waiting: Vec<JoinHandle<Answer>> = ["k2", "k3"]
        .iter()
        .map(|container| {
            let pending =
                post_in_background(socket, pod_env("ADD", container, "q"), netconf("gate"));
            // Only sets up arrival order; nothing is asserted on time.
            std::thread::sleep(Duration::from_millis(150));
            pending
        })
        .collect();

    // The one worker is busy and two wait: the next is refused while
    // everything is still held.
    post(socket, pod_env("ADD", "k4", "q4"), &netconf("gate")).assert_error(11, "queue is full");

    for container in ["k1", "k2", "k3"] {
        fixture.release(container);
    }
    assert_eq!(running.join().unwrap().status, 200);
    for pending in waiting {
        let answer = pending.join().unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    assert!(
        !fixture.has_marker("start", "q4"),
        "the refused request ran"
    );
    daemon.stop();
}

// ---------------------------------------------------------------------------
// Stopping

#[test]
fn sigterm_lets_the_running_plugin_finish_then_exits_cleanly() {
    let fixture = Fixture::new("sigterm");
    let daemon = Daemon::start(&fixture, &["--workers", "1"]);
    let socket = daemon.socket.clone();

    let running = post_in_background(&socket, pod_env("ADD", "s1", "in-flight"), netconf("gate"));
    wait_for("the plugin to start", || {
        fixture.has_marker("start", "in-flight")
    });
    // The only worker is busy, so this one waits in the queue.
    let queued = post_in_background(&socket, pod_env("ADD", "s3", "queued"), netconf("gate"));
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(probe(&socket, "readyz"), 0, "ready before SIGTERM");
    daemon.signal(Signal::SIGTERM);

    // What has not started is answered at once, while the plugin runs.
    queued.join().unwrap().assert_error(11, "shutting down");

    // New requests are refused while the plugin runs: by the server (503)
    // or, if one slipped into the queue first, by the daemon (code 11).
    // The probe's plugin finishes at once, should it run anyway.
    wait_for("new requests to be refused", || {
        let probe = post(
            &socket,
            pod_env("ADD", "s2", "probe"),
            &netconf("echo-result"),
        );
        match probe.status {
            200 => false,
            503 => true,
            _ => {
                probe.assert_error(11, "shutting down");
                true
            }
        }
    });
    assert!(
        socket.exists(),
        "the socket went before the plugin finished"
    );
    // Draining: alive, but no longer ready.
    assert_eq!(probe(&socket, "healthz"), 0, "healthz while draining");
    assert_eq!(probe(&socket, "readyz"), 1, "readyz while draining");

    fixture.release("s1");
    let answer = running.join().unwrap();
    assert_eq!(answer.status, 200, "the in-flight request: {answer:?}");
    assert!(fixture.has_marker("end", "in-flight"));
    assert!(
        !fixture.has_marker("start", "queued"),
        "the queued request ran"
    );

    let (status, log) = daemon.wait();
    assert_eq!(status.code(), Some(0), "exit status\n{log}");
    assert!(!socket.exists(), "the socket is left behind");
    // The settings for shims stay: they tell a stopped server from none.
    let settings = socket.with_file_name("config.json");
    let published: Value = serde_json::from_slice(&fs::read(&settings).unwrap()).unwrap();
    assert_eq!(published["server"], "cniserverd", "{published}");
    assert!(log.contains("received SIGTERM"), "{log}");
}

/// Runs `cniserverd probe ENDPOINT`; returns its exit status.
fn probe(socket: &Path, endpoint: &str) -> i32 {
    let output = Command::new(env!("CARGO_BIN_EXE_cniserverd"))
        .args(["probe", endpoint, "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    output.status.code().unwrap_or(-1)
}

#[test]
fn systemd_socket_activation_serves_the_passed_socket() {
    let fixture = Fixture::new("activation");
    let socket = fixture.socket();
    fs::create_dir_all(socket.parent().unwrap()).unwrap();
    fs::set_permissions(socket.parent().unwrap(), fs::Permissions::from_mode(0o700)).unwrap();

    // What systemd does: bind, then start the service with the socket as
    // fd 3, LISTEN_FDS=1 and LISTEN_PID naming the service's own PID,
    // which a shell knows as $$ and keeps across exec.
    let listener = UnixListener::bind(&socket).unwrap();
    let activated = |args: Vec<OsString>| {
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(r#"export LISTEN_PID=$$ LISTEN_FDS=1; exec "$0" "$@""#)
            .arg(env!("CARGO_BIN_EXE_cniserverd"))
            .args(args);
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
    };

    // A passed socket bound elsewhere than --socket is refused.
    let mut elsewhere = daemon_args(&fixture);
    elsewhere[1] = fixture.dir.join("other.sock").into();
    let refused = activated(elsewhere).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ListenStream="), "{stderr}");

    let daemon = Daemon::spawn(activated(daemon_args(&fixture)), &fixture);
    drop(listener);

    let answer = post(&socket, pod_env("ADD", "c-fds", "fds"), &netconf("fds"));
    assert_eq!(answer.status, 200, "{answer:?}");
    let fds = fs::read_to_string(fixture.dir.join("fds.txt")).unwrap();
    assert!(
        !fds.contains("socket:"),
        "the plugin inherited a socket:\n{fds}"
    );

    let (status, log) = daemon.stop();
    assert!(status.success(), "exit {status}\n{log}");
    // The socket belongs to systemd: it stays for the next start.
    assert!(socket.exists(), "the passed socket was removed");
}

#[test]
fn installs_the_shim_and_the_network_config() {
    let fixture = Fixture::new("install");
    let conflist = fixture.dir.join("10-test.conflist");
    let config = br#"{"cniVersion":"1.0.0","name":"t","plugins":[{"type":"cniserver-shim"}]}"#;
    fs::write(&conflist, config).unwrap();
    let bin = fixture.dir.join("bin");
    let conf_dir = fixture.dir.join("net.d");

    let daemon = Daemon::start(
        &fixture,
        &[
            "--install-shim",
            bin.to_str().unwrap(),
            "--conflist",
            conflist.to_str().unwrap(),
            "--cni-conf-dir",
            conf_dir.to_str().unwrap(),
            "--remove-conflist-on-exit",
        ],
    );
    let shim = bin.join("cniserver-shim");
    assert_eq!(
        fs::read(&shim).unwrap(),
        fs::read(env!("CARGO_BIN_EXE_cniserver-shim")).unwrap(),
        "the installed shim differs from the built one"
    );
    let mode = fs::metadata(&shim).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "shim mode {mode:o}");
    let installed = conf_dir.join("10-test.conflist");
    assert_eq!(fs::read(&installed).unwrap(), config);

    let (status, log) = daemon.stop();
    assert!(status.success(), "exit {status}\n{log}");
    assert!(
        !installed.exists(),
        "--remove-conflist-on-exit left the config"
    );
    assert!(shim.exists(), "the shim was removed");

    // A broken config stops the daemon before it binds anything.
    fs::write(&conflist, b"{not json").unwrap();
    let broken = Command::new(env!("CARGO_BIN_EXE_cniserverd"))
        .args(daemon_args(&fixture))
        .arg("--conflist")
        .arg(&conflist)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert_eq!(broken.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("10-test.conflist"), "{stderr}");
    assert!(!fixture.socket().exists(), "a socket was bound");
}

// ---------------------------------------------------------------------------
// The command line

#[test]
fn command_line_errors_exit_2_naming_the_flag() {
    let cases: [(&[&str], &str); 4] = [
        (&["--workers", "0"], "--workers"),
        (&["--plugin-timeout", "soon"], "--plugin-timeout"),
        (&["--log-level", "chatty"], "--log-level"),
        (&["--frobnicate"], "--frobnicate"),
    ];
    for (args, flag) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_cniserverd"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "args {args:?}: {stderr}");
        assert!(stderr.contains(flag), "args {args:?}: {stderr}");
    }

    let help = Command::new(env!("CARGO_BIN_EXE_cniserverd"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--socket",
        "--cni-path",
        "--workers",
        "--max-queue",
        "--plugin-timeout",
    ] {
        assert!(text.contains(flag), "help lacks {flag}:\n{text}");
    }

    let version = Command::new(env!("CARGO_BIN_EXE_cniserverd"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("cniserverd "));
}
