//! The daemon's log, read from its stderr: one greppable line per
//! request at info, nothing from the request's environment or netconf at
//! any level, the level set by `--log-level` or `RUST_LOG`, and a client
//! that left before its answer noted.

mod daemon_support;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixStream;

use daemon_support::{
    exchange, netconf, pod_body, pod_env, post, post_request, wait_for, Daemon, Fixture, FAILS,
    GATE, OK,
};
use serde_json::json;

/// A value in the request's environment that must reach no log line.
const ENV_SECRET: &str = "env-secret-7f3a";

/// A value in the netconf that must reach no log line.
const NETCONF_SECRET: &str = "netconf-secret-91c2";

fn fixture(tag: &str) -> Fixture {
    let fixture = Fixture::new(tag);
    fixture
        .plugin("ok", OK)
        .plugin("fails", FAILS)
        .plugin("gate", GATE);
    fixture
}

/// Starts the daemon with `flags` and, when given, this `RUST_LOG`, and
/// waits until it listens.
fn start_daemon(fixture: &Fixture, flags: &[&str], rust_log: Option<&str>) -> Daemon {
    let mut command = Daemon::command(fixture, flags);
    if let Some(value) = rust_log {
        command.env("RUST_LOG", value);
    }
    let daemon = Daemon::spawn(command);
    daemon.wait_until_listening(fixture);
    daemon
}

/// A netconf for `delegate` that carries a secret of its own.
fn secret_netconf(delegate: &str) -> serde_json::Value {
    let mut config = netconf(delegate);
    config["credentials"] = json!({"token": NETCONF_SECRET});
    config
}

/// The `key=value` pairs of a log line, after its level and message.
fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split(' ')
        .filter_map(|word| word.split_once('='))
        .collect()
}

/// The log's request lines.
fn request_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| line.starts_with("INFO request "))
        .collect()
}

#[test]
fn each_request_has_one_info_line_with_its_facts_and_no_secrets() {
    // (how the level is chosen, the flags, RUST_LOG)
    let cases: [(&str, &[&str], Option<&str>); 3] = [
        ("the default level", &[], None),
        ("--log-level debug", &["--log-level", "debug"], None),
        ("RUST_LOG=debug", &[], Some("debug")),
    ];
    for (name, flags, rust_log) in cases {
        let fixture = fixture("log-lines");
        let daemon = start_daemon(&fixture, flags, rust_log);
        let socket = fixture.socket();

        let sent = [
            ("ADD", "c-ok", "pod-a", "ok"),
            ("ADD", "c-fail", "pod-b", "fails"),
            ("DEL", "c-ok", "pod-a", "ok"),
        ];
        for (command, container, pod, plugin) in sent {
            let env = pod_env(command, container, pod, ENV_SECRET);
            post(&socket, env, &secret_netconf(plugin));
        }
        let (status, log) = daemon.stop();
        assert!(status.success(), "{name}: exit {status}\n{log}");

        let lines = request_lines(&log);
        assert_eq!(lines.len(), sent.len(), "{name}: request lines in\n{log}");
        let wants = [
            ("ADD", "c-ok", "testns/pod-a", "ok"),
            ("ADD", "c-fail", "testns/pod-b", "error"),
            ("DEL", "c-ok", "testns/pod-a", "ok"),
        ];
        for (line, (command, container, pod, outcome)) in lines.iter().zip(wants) {
            let fields = fields(line);
            let want = [
                ("command", command),
                ("container", container),
                ("pod", pod),
                ("outcome", outcome),
            ];
            for (key, value) in want {
                assert_eq!(fields.get(key), Some(&value), "{name}: {key} in {line:?}");
            }
            let duration = fields.get("duration_ms").copied().unwrap_or("");
            assert!(
                duration.parse::<u64>().is_ok(),
                "{name}: duration_ms in {line:?}"
            );
        }
        assert_eq!(fields(lines[1]).get("code"), Some(&"7"), "{name}");

        for secret in [ENV_SECRET, NETCONF_SECRET] {
            assert!(
                !log.contains(secret),
                "{name}: the log shows {secret:?}:\n{log}"
            );
        }
    }
}

#[test]
fn warn_level_from_the_flag_or_rust_log_silences_request_lines() {
    let cases: [(&str, &[&str], Option<&str>); 3] = [
        ("--log-level warn", &["--log-level", "warn"], None),
        ("RUST_LOG=warn", &[], Some("warn")),
        (
            "RUST_LOG aimed at the daemon",
            &[],
            Some("info,cniserverd=warn"),
        ),
    ];
    for (name, flags, rust_log) in cases {
        let fixture = fixture("log-quiet");
        let daemon = start_daemon(&fixture, flags, rust_log);

        let env = pod_env("ADD", "c-quiet", "pod", ENV_SECRET);
        let answer = post(&fixture.socket(), env, &secret_netconf("ok"));
        assert_eq!(answer.status, 200, "{name}: {answer:?}");
        let (status, log) = daemon.stop();
        assert!(status.success(), "{name}: exit {status}\n{log}");
        assert!(
            !log.lines()
                .any(|line| line.starts_with("INFO ") || line.starts_with("DEBUG ")),
            "{name}: lines below warn in\n{log}"
        );
    }
}

#[test]
fn a_client_that_leaves_before_its_answer_is_logged() {
    let fixture = fixture("log-gone");
    let daemon = Daemon::start(&fixture, &[]);

    // The client sends its ADD and hangs up while the plugin runs.
    let env = pod_env("ADD", "c-gone", "pod-gone", ENV_SECRET);
    let request = post_request(&pod_body(env, &secret_netconf("gate")));
    let mut client = UnixStream::connect(fixture.socket()).unwrap();
    client.write_all(&request).unwrap();
    wait_for("the plugin to start", || fixture.gate_started("c-gone"));
    drop(client);

    daemon.wait_for_log("client left before its answer");
    fixture.release("c-gone");
    wait_for("the request's line", || {
        !request_lines(&daemon.log()).is_empty()
    });

    let (status, log) = daemon.stop();
    assert!(status.success(), "exit {status}\n{log}");
    let gone: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("client left before its answer"))
        .collect();
    assert_eq!(gone.len(), 1, "{log}");
    assert!(gone[0].starts_with("INFO "), "not at info: {:?}", gone[0]);
    assert_eq!(
        fields(gone[0]).get("command"),
        Some(&"ADD"),
        "{:?}",
        gone[0]
    );
    // The plugin's run still ends in its one request line.
    let lines = request_lines(&log);
    assert_eq!(lines.len(), 1, "{log}");
    assert_eq!(fields(lines[0]).get("container"), Some(&"c-gone"));
    assert!(
        !log.contains(ENV_SECRET) && !log.contains(NETCONF_SECRET),
        "{log}"
    );
}

#[test]
fn requests_the_server_answers_itself_get_one_line_without_request_values() {
    let fixture = fixture("log-rejected");
    let daemon = start_daemon(&fixture, &[], None);
    let socket = fixture.socket();

    // A body that decodes but names no pod, carrying secrets in its env
    // and netconf; a path the server does not serve; a body too large.
    let mut env = pod_env("ADD", "c-rejected", "pod", ENV_SECRET);
    env.insert(
        "CNI_ARGS".to_owned(),
        format!("K8S_POD_NAMESPACE={ENV_SECRET}"),
    );
    let no_pod = post(&socket, env, &secret_netconf("ok"));
    assert_eq!(no_pod.status, 400, "{no_pod:?}");
    let not_found = exchange(&socket, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(not_found.status, 404, "{not_found:?}");
    let too_large = exchange(
        &socket,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n",
    );
    assert_eq!(too_large.status, 413, "{too_large:?}");

    let (status, log) = daemon.stop();
    assert!(status.success(), "exit {status}\n{log}");
    let rejected: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(" request rejected "))
        .collect();
    // (level, status, reason as logged)
    let want = [
        ("INFO", "400", "\"missing K8S_POD_NAME\""),
        ("INFO", "404", "\"no such path\""),
        ("WARN", "413", ""),
    ];
    assert_eq!(rejected.len(), want.len(), "{log}");
    for (line, (level, status, reason)) in rejected.iter().zip(want) {
        assert!(line.starts_with(&format!("{level} ")), "{line}");
        let fields = fields(line);
        assert_eq!(fields.get("status"), Some(&status), "{line}");
        assert!(fields.contains_key("reason"), "{line}");
        assert!(line.contains(&format!("reason={reason}")), "{line}");
    }
    assert!(
        !log.contains(ENV_SECRET) && !log.contains(NETCONF_SECRET),
        "{log}"
    );
}
