//! The daemon binary against fake delegate plugins: small shell scripts in
//! a temp folder given as `--cni-path`, each recording what it was given or
//! misbehaving in one way. Requests go over the daemon's socket as raw
//! HTTP, as the shim sends them.
//!
//! Ordering and parallelism are read from marker lines the fake plugins
//! append to a log, never from how long something took: a plugin that
//! must stay running waits for a release file the test creates.

mod daemon_support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use daemon_support::{
    get, post, post_in_background, socket_activated, wait_for, Answer, Daemon, Fixture, DAEMON,
    FAILS, GATE, OK, RECORDER,
};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// A value in the request's environment that must reach nothing.
const SECRET: &str = "hunter2-do-not-leak";

// ---------------------------------------------------------------------------
// Fake plugins of this file's own. `@DIR@` becomes the test's folder.

/// Prints a result naming its netns; nothing for DEL.
const ECHO_RESULT: &str = r#"#!/bin/sh
if [ "$CNI_COMMAND" = ADD ]; then
  printf '{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.99.0.5/24"}],"dns":{},"netns":"%s"}' "$CNI_NETNS"
fi
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
    ("fail-cni", FAILS),
    ("garbage-fail", GARBAGE_FAIL),
    ("garbage-ok", GARBAGE_OK),
    ("hang", HANG),
    ("gate", GATE),
];

/// A folder of the test's own with every fake plugin above installed.
fn fixture(tag: &str) -> Fixture {
    let fixture = Fixture::new(tag);
    for (name, script) in PLUGINS {
        fixture.plugin(name, script);
    }
    // A sleep whose command line names this folder, so that the test can
    // find every process a plugin left behind.
    std::os::unix::fs::symlink("/bin/sleep", fixture.dir.join("marked-sleep")).unwrap();
    fixture
}

// ---------------------------------------------------------------------------
// Requests

/// A pod request's environment, with unrelated variables a shim would
/// also forward, one of them secret.
fn pod_env(command: &str, container: &str, pod: &str) -> BTreeMap<String, String> {
    let mut env = daemon_support::pod_env(command, container, pod, SECRET);
    env.insert("HOME".to_owned(), "/root".to_owned());
    env
}

/// A netconf for `delegate` with keys the daemon passes on untouched, one
/// of them secret.
fn netconf(delegate: &str) -> Value {
    let mut config = daemon_support::netconf(delegate);
    config["socket"] = json!("/somewhere/cni.sock");
    config["custom"] = json!({"nested": [1, 2, 3], "token": SECRET});
    config
}

// ---------------------------------------------------------------------------
// What the plugin is given

#[test]
fn plugin_gets_only_the_cni_variables_a_fixed_path_and_its_own_type() {
    let fixture = fixture("env");
    let daemon = Daemon::start(&fixture, &[]);
    let socket = fixture.socket();

    let answer = post(
        &socket,
        pod_env("ADD", "c-env", "recorded"),
        &netconf("recorder"),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, r#"{"cniVersion":"0.4.0","ips":[]}"#);

    // dash adds PWD to any environment; everything else came from the daemon.
    let recorded = fixture.recorded_env("c-env");
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

    let stdin = fixture.recorded_stdin("c-env");
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
    let fixture = fixture("answers");
    let daemon = Daemon::start(&fixture, &[]);
    let socket = fixture.socket();
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
            "a plugin without an execute bit is named as such",
            "ADD",
            "not-executable",
            Want::Error(
                999,
                "\"not-executable\" at @PLUGINS@/not-executable is not executable",
            ),
        ),
        (
            "a missing plugin names the folders searched",
            "ADD",
            "no-such-plugin",
            Want::Error(999, "\"no-such-plugin\" not found in "),
        ),
    ];

    // A plugin file that is there but may not be executed.
    let not_executable = fixture.plugins().join("not-executable");
    fs::write(&not_executable, OK).unwrap();
    fs::set_permissions(&not_executable, fs::Permissions::from_mode(0o644)).unwrap();

    for (name, command, delegate, want) in cases {
        let answer = post(
            &socket,
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
                let msg = msg.replace("@PLUGINS@", &plugins);
                assert!(answer.msg().contains(&msg), "{name}: {answer:?}");
                assert_eq!(answer.json()["cniVersion"], "0.4.0", "{name}");
            }
        }
    }

    let garbage = post(
        &socket,
        pod_env("ADD", "c-answers", "details"),
        &netconf("garbage-fail"),
    );
    assert_eq!(
        garbage.json()["details"],
        "fake trouble: no route to nowhere",
        "stderr becomes the details"
    );
    let missing = post(
        &socket,
        pod_env("ADD", "c-answers", "folders"),
        &netconf("no-such-plugin"),
    );
    assert!(missing.msg().ends_with(&plugins), "{missing:?}");
    daemon.stop();
}

#[test]
fn delegate_type_must_be_a_plain_name_and_nothing_runs_otherwise() {
    let fixture = fixture("names");
    let daemon = Daemon::start(&fixture, &[]);
    let socket = fixture.socket();
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
        let answer = post(&socket, pod_env("ADD", "c-names", name), &config);
        answer.assert_error(7, "delegateType");
        assert!(
            !answer.body.contains("recorder"),
            "{name}: the refused value is echoed: {answer:?}"
        );
    }

    let mut missing = netconf("recorder");
    missing.as_object_mut().unwrap().remove("delegateType");
    post(&socket, pod_env("ADD", "c-names", "none"), &missing).assert_error(7, "no delegateType");

    assert!(
        !fixture.dir.join("env-c-names").exists(),
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
    let fixture = fixture("timeout");
    let daemon = Daemon::start(&fixture, &["--plugin-timeout", "1"]);
    let socket = fixture.socket();
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
        &socket,
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
    let fixture = fixture("order");
    let daemon = Daemon::start(&fixture, &["--workers", "4"]);
    let socket = &fixture.socket();

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
        fixture.gate_log()
    );

    fixture.release("c-other");
    fixture.release("c-serial");
    for pending in [first, second, third, other] {
        let answer = pending.join().unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
    }

    let serial: Vec<(String, String)> = fixture
        .gate_log()
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
    let fixture = fixture("cancel");
    let daemon = Daemon::start(&fixture, &["--workers", "4"]);
    let socket = &fixture.socket();

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
        .gate_log()
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
    let fixture = fixture("full");
    let daemon = Daemon::start(&fixture, &["--workers", "1", "--max-queue", "2"]);
    let socket = &fixture.socket();

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
    let fixture = fixture("sigterm");
    let daemon = Daemon::start(&fixture, &["--workers", "1"]);
    let socket = fixture.socket();

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

#[test]
fn sighup_stops_gracefully_like_sigterm() {
    let fixture = fixture("sighup");
    let daemon = Daemon::start(&fixture, &[]);
    let socket = fixture.socket();

    let running = post_in_background(&socket, pod_env("ADD", "h1", "in-flight"), netconf("gate"));
    wait_for("the plugin to start", || {
        fixture.has_marker("start", "in-flight")
    });
    daemon.signal(Signal::SIGHUP);
    daemon.wait_for_log("received SIGHUP");

    fixture.release("h1");
    let answer = running.join().unwrap();
    assert_eq!(answer.status, 200, "the in-flight request: {answer:?}");
    assert!(fixture.has_marker("end", "in-flight"));

    let (status, log) = daemon.wait();
    assert_eq!(status.code(), Some(0), "exit status\n{log}");
    assert!(!socket.exists(), "the socket is left behind");

    let help = Command::new(DAEMON).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("SIGHUP"),
        "help does not mention SIGHUP:\n{text}"
    );
}

/// Appends its command to `runs.log`, and prints nothing.
const RECORDS_RUNS: &str = r#"#!/bin/sh
echo "$CNI_COMMAND" >> "@DIR@/runs.log"
"#;

/// A plugin-level request as a shim forwards it: a command and no pod.
fn plugin_level_env(command: &str) -> BTreeMap<String, String> {
    [
        ("CNI_COMMAND", command),
        ("CNI_PATH", "/request/path/never/used"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[test]
fn status_is_answered_by_the_daemon_and_gc_goes_to_the_plugin() {
    let fixture = fixture("status");
    fixture.plugin("records-runs", RECORDS_RUNS);
    let daemon = Daemon::start(&fixture, &[]);
    let socket = fixture.socket();
    let runs = || fs::read_to_string(fixture.dir.join("runs.log")).unwrap_or_default();

    let status = post(
        &socket,
        plugin_level_env("STATUS"),
        &netconf("records-runs"),
    );
    assert_eq!(status.status, 200, "{status:?}");
    assert_eq!(status.body, "", "{status:?}");
    assert_eq!(runs(), "", "STATUS ran the plugin");

    let gc = post(&socket, plugin_level_env("GC"), &netconf("records-runs"));
    assert_eq!(gc.status, 200, "{gc:?}");
    assert_eq!(runs(), "GC\n", "GC did not reach the plugin");

    // While a plugin holds the daemon after SIGTERM, STATUS says it is
    // not available.
    let running = post_in_background(&socket, pod_env("ADD", "st1", "in-flight"), netconf("gate"));
    wait_for("the plugin to start", || {
        fixture.has_marker("start", "in-flight")
    });
    daemon.signal(Signal::SIGTERM);
    // Once readiness is gone the server is draining.
    wait_for("readyz to fail", || get(&socket, "/readyz").status != 200);
    let status = post(
        &socket,
        plugin_level_env("STATUS"),
        &netconf("records-runs"),
    );
    status.assert_error(50, "plugin not available");
    status.assert_error(50, "shutting down");
    assert_eq!(runs(), "GC\n", "STATUS ran the plugin while draining");

    fixture.release("st1");
    assert_eq!(running.join().unwrap().status, 200);
    let (exit, log) = daemon.wait();
    assert_eq!(exit.code(), Some(0), "exit status\n{log}");
}

/// Runs `cniserverd probe ENDPOINT`; returns its exit status.
fn probe(socket: &Path, endpoint: &str) -> i32 {
    let output = Command::new(DAEMON)
        .args(["probe", endpoint, "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    output.status.code().unwrap_or(-1)
}

#[test]
fn systemd_socket_activation_serves_the_passed_socket() {
    let fixture = fixture("activation");
    let socket = fixture.socket();
    fs::create_dir_all(socket.parent().unwrap()).unwrap();
    fs::set_permissions(socket.parent().unwrap(), fs::Permissions::from_mode(0o700)).unwrap();

    // What systemd does: bind, then start the service with the socket as
    // fd 3 (see `socket_activated`).
    let listener = UnixListener::bind(&socket).unwrap();

    // A passed socket bound elsewhere than --socket is refused.
    let mut elsewhere = fixture.daemon_args();
    elsewhere[1] = fixture.dir.join("other.sock").into();
    let refused = socket_activated(&listener, &elsewhere).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ListenStream="), "{stderr}");

    let daemon = Daemon::spawn(socket_activated(&listener, &fixture.daemon_args()));
    daemon.wait_until_listening(&fixture);
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
    let fixture = fixture("install");
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
    let broken = Command::new(DAEMON)
        .args(fixture.daemon_args())
        .arg("--conflist")
        .arg(&conflist)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert_eq!(broken.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("10-test.conflist"), "{stderr}");
    assert!(!fixture.socket().exists(), "a socket was bound");
}

#[test]
fn a_network_config_whose_shim_talks_to_another_socket_is_warned_of() {
    let fixture = fixture("conf-socket");
    let served = fixture.socket().to_string_lossy().into_owned();
    let other = "/run/elsewhere/cni.sock";
    let default = "/var/run/openshift-sdn/cni-server.sock";
    let shim = |socket: Option<&str>| match socket {
        Some(socket) => json!({"type": "cniserver-shim", "socket": socket}),
        None => json!({"type": "cniserver-shim"}),
    };
    // (what the row pins, file name, config, the shim socket warned of)
    let cases = [
        (
            "the same socket is fine",
            "10-same.conflist",
            json!({"cniVersion": "1.0.0", "name": "t", "plugins": [shim(Some(&served))]}),
            None,
        ),
        (
            "another socket",
            "10-other.conflist",
            json!({"cniVersion": "1.0.0", "name": "t", "plugins": [shim(Some(other))]}),
            Some(other),
        ),
        (
            "no socket key means the shim's default",
            "10-default.conflist",
            json!({"cniVersion": "1.0.0", "name": "t", "plugins": [shim(None)]}),
            Some(default),
        ),
        (
            "a single-plugin .conf is read too",
            "10-single.conf",
            json!({"cniVersion": "1.0.0", "name": "t", "type": "cniserver-shim", "socket": other}),
            Some(other),
        ),
    ];

    for (name, file, config, warned) in cases {
        let path = fixture.dir.join(file);
        fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        let conf_dir = fixture.dir.join("net.d");
        let daemon = Daemon::start(
            &fixture,
            &[
                "--conflist",
                path.to_str().unwrap(),
                "--cni-conf-dir",
                conf_dir.to_str().unwrap(),
            ],
        );
        let (status, log) = daemon.stop();
        assert!(status.success(), "{name}: exit {status}\n{log}");
        let warning = log
            .lines()
            .find(|line| line.starts_with("WARN ") && line.contains("another socket"));
        match warned {
            None => assert_eq!(warning, None, "{name}: {log}"),
            Some(shim_socket) => {
                let warning = warning.unwrap_or_else(|| panic!("{name}: no warning\n{log}"));
                assert!(
                    warning.contains(&format!("shim_socket={shim_socket} "))
                        && warning.contains(&format!("socket={served}")),
                    "{name}: {warning}"
                );
            }
        }
        fs::remove_file(fixture.settings()).unwrap();
    }
}

// ---------------------------------------------------------------------------
// The command line

#[test]
fn command_line_errors_exit_2_naming_the_flag() {
    let cases: [(&[&str], &str); 7] = [
        (&["--workers", "0"], "--workers"),
        (&["--socket", "relative.sock"], "--socket"),
        (&["--socket", "run/cni.sock"], "--socket"),
        (&["probe", "healthz", "--socket=cni.sock"], "--socket"),
        (&["--plugin-timeout", "soon"], "--plugin-timeout"),
        (&["--log-level", "chatty"], "--log-level"),
        (&["--frobnicate"], "--frobnicate"),
    ];
    for (args, flag) in cases {
        let output = Command::new(DAEMON).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "args {args:?}: {stderr}");
        assert!(stderr.contains(flag), "args {args:?}: {stderr}");
    }

    let help = Command::new(DAEMON).arg("--help").output().unwrap();
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

    let version = Command::new(DAEMON).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("cniserverd "));
}
