//! Restarting the daemon without refusing anyone.
//!
//! Under systemd socket activation the service manager, not the daemon,
//! owns the listening socket: it binds it once and hands it to each daemon
//! it starts as file descriptor 3. While one daemon stops and the next
//! starts, the socket still listens, so a client's connection waits in
//! its queue instead of being refused, and the next daemon answers it.
//!
//! The launcher here does what systemd does, and a client keeps sending
//! an ADD every 10 ms while the daemon is stopped with SIGTERM and a new
//! one started on the same socket. Every request must get its 200; the
//! fake plugin puts its parent's PID, the daemon that ran it, into each
//! result, which tells which daemon answered.

mod daemon_support;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use daemon_support::{
    get, netconf, pod_body, pod_env, post, post_in_background, post_request, read_answer,
    socket_activated, try_exchange, wait_for, Answer, Daemon, ExchangeError, Fixture, NO_SECRET,
    PATIENCE,
};
use nix::sys::signal::Signal;

/// Answers at once, naming the daemon that ran it: its parent.
const WHO: &str = r#"#!/bin/sh
if [ "$CNI_COMMAND" = ADD ]; then
  printf '{"cniVersion":"0.4.0","ips":[],"dns":{"domain":"daemon-%s"}}' "$PPID"
fi
"#;

/// Logs its start as `daemon_support::GATE` does, waits until the test
/// releases its container, then answers like [`WHO`].
const GATE: &str = r#"#!/bin/sh
echo "start $CNI_COMMAND $CNI_CONTAINERID $CNI_ARGS" >> "@DIR@/gate.log"
while [ ! -e "@DIR@/release-$CNI_CONTAINERID" ]; do sleep 0.02; done
if [ "$CNI_COMMAND" = ADD ]; then
  printf '{"cniVersion":"0.4.0","ips":[],"dns":{"domain":"daemon-%s"}}' "$PPID"
fi
"#;

/// How often the client sends.
const SEND_EVERY: Duration = Duration::from_millis(10);

/// Answers each daemon must give before the test moves on; counts, not
/// time, decide when the restart happens and when sending stops.
const ANSWERS_PER_DAEMON: usize = 150;

/// Requests the client sends while no daemon runs, which can only wait in
/// the socket's queue.
const SENT_BETWEEN_DAEMONS: usize = 5;

/// The most requests the client sends, whatever happens: a bound on the
/// test's load, reached only if the test is failing anyway.
const MAX_REQUESTS: usize = 3_000;

// ---------------------------------------------------------------------------
// The launcher

/// What systemd's `.socket` unit does: holds a listening socket, bound in
/// a 0700 folder with mode 0600, across the daemons it starts.
struct Launcher {
    listener: UnixListener,
}

impl Launcher {
    fn bind(fixture: &Fixture) -> Launcher {
        let socket = fixture.socket();
        let folder = socket.parent().unwrap();
        fs::create_dir_all(folder).unwrap();
        fs::set_permissions(folder, fs::Permissions::from_mode(0o700)).unwrap();
        let listener = UnixListener::bind(&socket).unwrap();
        fs::set_permissions(&socket, fs::Permissions::from_mode(0o600)).unwrap();
        Launcher { listener }
    }

    /// Starts `cniserverd` on the socket, as systemd does.
    fn start(&self, args: &[OsString]) -> Daemon {
        Daemon::spawn(socket_activated(&self.listener, args))
    }
}

// ---------------------------------------------------------------------------
// The client

/// What became of each request the client sent, in sending order.
type Results = Arc<Mutex<Vec<Option<Result<Answer, ExchangeError>>>>>;

/// Sends an ADD (for a container of its own) every [`SEND_EVERY`], each
/// on a thread of its own so that a request waiting in the socket's
/// queue holds up none of the others, until `stop` is set.
struct Client {
    results: Results,
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl Client {
    fn start(fixture: &Fixture) -> Client {
        let results: Results = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let socket = fixture.socket();
        let sender = {
            let results = results.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut requests = Vec::new();
                while !stop.load(Ordering::SeqCst) && requests.len() < MAX_REQUESTS {
                    let index = {
                        let mut results = results.lock().unwrap();
                        results.push(None);
                        results.len() - 1
                    };
                    let env = pod_env("ADD", &format!("restart-{index}"), "p", NO_SECRET);
                    let request = post_request(&pod_body(env, &netconf("who")));
                    let socket = socket.clone();
                    let results = results.clone();
                    requests.push(std::thread::spawn(move || {
                        let result = try_exchange(&socket, &request);
                        results.lock().unwrap()[index] = Some(result);
                    }));
                    std::thread::sleep(SEND_EVERY);
                }
                requests
            })
        };
        Client {
            results,
            stop,
            sender: Some(sender),
        }
    }

    /// How many requests were sent so far.
    fn sent(&self) -> usize {
        self.results.lock().unwrap().len()
    }

    /// How many answers so far came from the daemon with this PID.
    fn answered_by(&self, pid: u32) -> usize {
        let marker = format!("daemon-{pid}");
        let results = self.results.lock().unwrap();
        results
            .iter()
            .filter(|result| matches!(result, Some(Ok(answer)) if answer.body.contains(&marker)))
            .count()
    }

    /// Stops sending, waits for every answer, and returns them all.
    fn finish(mut self) -> Vec<Result<Answer, ExchangeError>> {
        self.stop.store(true, Ordering::SeqCst);
        let requests = self.sender.take().unwrap().join().unwrap();
        for request in requests {
            request.join().unwrap();
        }
        let results = std::mem::take(&mut *self.results.lock().unwrap());
        results
            .into_iter()
            .map(|result| result.expect("every request thread stores its result"))
            .collect()
    }
}

/// Which daemon an answer names, if it is a 200 from one.
fn served_by(answer: &Answer) -> Option<u32> {
    if answer.status != 200 {
        return None;
    }
    let domain = answer.json()["dns"]["domain"].as_str()?.to_owned();
    domain.strip_prefix("daemon-")?.parse().ok()
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn restart_under_socket_activation_refuses_no_one_and_loses_no_answer() {
    let fixture = Fixture::new("restart");
    fixture.plugin("who", WHO);
    let launcher = Launcher::bind(&fixture);

    let first = launcher.start(&fixture.daemon_args());
    first.wait_until_listening(&fixture);
    let first_pid = first.pid();
    let client = Client::start(&fixture);
    wait_for("answers from the first daemon", || {
        client.answered_by(first_pid) >= ANSWERS_PER_DAEMON
    });

    // The restart: stop, wait for the exit, start anew, as systemd does.
    let (status, first_log) = first.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "the first daemon's exit\n{first_log}"
    );
    assert!(
        fixture.socket().exists(),
        "the first daemon removed the socket it was handed"
    );
    // No daemon runs now: what is sent waits in the socket's queue.
    let gap_start = client.sent();
    wait_for("requests sent while no daemon runs", || {
        client.sent() >= gap_start + SENT_BETWEEN_DAEMONS
    });
    let gap_end = client.sent();
    let second = launcher.start(&fixture.daemon_args());
    let second_pid = second.pid();
    wait_for("answers from the second daemon", || {
        client.answered_by(second_pid) >= ANSWERS_PER_DAEMON
    });

    let results = client.finish();
    let (status, second_log) = second.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "the second daemon's exit\n{second_log}"
    );

    let mut by_daemon: BTreeMap<u32, usize> = BTreeMap::new();
    let mut refused = 0;
    let mut failures = Vec::new();
    for (index, result) in results.iter().enumerate() {
        match result {
            Ok(answer) => match served_by(answer) {
                Some(pid) => *by_daemon.entry(pid).or_default() += 1,
                None => failures.push(format!("request {index}: {answer:?}")),
            },
            Err(error) => {
                if matches!(error, ExchangeError::Connect(_)) {
                    refused += 1;
                }
                failures.push(format!("request {index}: {error:?}"));
            }
        }
    }
    println!(
        "restart: {} requests sent ({} while no daemon ran), {} answered by the first \
         daemon (pid {first_pid}), {} by the second (pid {second_pid}), {refused} refused, \
         {} failed",
        results.len(),
        gap_end - gap_start,
        by_daemon.get(&first_pid).copied().unwrap_or(0),
        by_daemon.get(&second_pid).copied().unwrap_or(0),
        failures.len(),
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests did not get their 200 ({refused} refused):\n{}\n\
         first daemon:\n{first_log}\nsecond daemon:\n{second_log}",
        failures.len(),
        results.len(),
        failures.join("\n")
    );
    let want: BTreeMap<u32, usize> = BTreeMap::from([
        (first_pid, by_daemon.get(&first_pid).copied().unwrap_or(0)),
        (second_pid, by_daemon.get(&second_pid).copied().unwrap_or(0)),
    ]);
    assert_eq!(by_daemon, want, "answers from a daemon that is neither");
    assert!(by_daemon[&first_pid] >= ANSWERS_PER_DAEMON, "{by_daemon:?}");
    assert!(
        by_daemon[&second_pid] >= ANSWERS_PER_DAEMON,
        "{by_daemon:?}"
    );
    assert_eq!(
        by_daemon.values().sum::<usize>(),
        results.len(),
        "every request answered by one of the two"
    );
    // What was sent while no daemon ran waited for the second one.
    for (index, result) in results.iter().enumerate().take(gap_end).skip(gap_start) {
        let served = result.as_ref().ok().and_then(served_by);
        assert_eq!(served, Some(second_pid), "request {index}: {result:?}");
    }
}

#[test]
fn a_new_daemon_starts_at_once_on_the_path_a_stopped_one_bound() {
    // (how the first daemon ends, whether it leaves its socket file)
    let cases = [
        ("SIGTERM", Signal::SIGTERM, false),
        ("SIGKILL", Signal::SIGKILL, true),
    ];
    for (name, signal, leaves_socket) in cases {
        let fixture = Fixture::new("rebind");
        fixture.plugin("who", WHO);
        let env = || pod_env("ADD", "rebind", "p", NO_SECRET);

        let first = Daemon::start(&fixture, &[]);
        let first_pid = first.pid();
        let answer = post(&fixture.socket(), env(), &netconf("who"));
        assert_eq!(served_by(&answer), Some(first_pid), "{name}: {answer:?}");
        first.signal(signal);
        let (status, log) = first.wait();
        if signal == Signal::SIGTERM {
            assert_eq!(
                status.code(),
                Some(0),
                "{name}: the first daemon's exit\n{log}"
            );
        }
        assert_eq!(
            fixture.socket().exists(),
            leaves_socket,
            "{name}: the socket file after the first daemon"
        );

        // The settings file stays behind; it goes here only so that the
        // next daemon's own can be waited for.
        fs::remove_file(fixture.settings()).unwrap();
        let second = Daemon::start(&fixture, &[]);
        let answer = post(&fixture.socket(), env(), &netconf("who"));
        assert_eq!(served_by(&answer), Some(second.pid()), "{name}: {answer:?}");
        let (status, log) = second.stop();
        assert_eq!(
            status.code(),
            Some(0),
            "{name}: the second daemon's exit\n{log}"
        );
    }
}

#[test]
fn sigterm_under_socket_activation_serves_every_request_already_accepted() {
    let fixture = Fixture::new("accepted");
    fixture.plugin("gate", GATE);
    let launcher = Launcher::bind(&fixture);
    let socket = fixture.socket();
    let mut args = fixture.daemon_args();
    args.extend(["--workers".into(), "1".into()]);
    let daemon = launcher.start(&args);
    daemon.wait_until_listening(&fixture);
    let metric = |line: &str| {
        get(&socket, "/metrics")
            .body
            .contains(&format!("\n{line}\n"))
    };
    let env = |container: &str| pod_env("ADD", container, "p", NO_SECRET);

    // a1 runs on the only worker; a2 waits in the daemon's queue.
    let running = post_in_background(&socket, env("a1"), netconf("gate"));
    wait_for("a1 to start", || fixture.gate_started("a1"));
    let queued = post_in_background(&socket, env("a2"), netconf("gate"));
    wait_for("a2 to wait in the queue", || {
        metric("cniserverd_requests_queued 1")
    });
    // a3's connection is accepted, but only the head of its request is in.
    let body = pod_body(env("a3"), &netconf("gate"));
    let request = post_request(&body);
    let (head, rest) = request.split_at(request.len() - body.len());
    let mut half_sent = UnixStream::connect(&socket).unwrap();
    half_sent.set_read_timeout(Some(PATIENCE)).unwrap();
    half_sent.write_all(head).unwrap();
    // a1, a2, a3 and this scrape.
    wait_for("a3's connection to be accepted", || {
        metric("cniserver_connections_open 4")
    });

    daemon.signal(Signal::SIGTERM);
    daemon.wait_for_log("received SIGTERM");
    // The held requests finish; then the half-sent one, which the daemon
    // must still be waiting for, sends the rest.
    for container in ["a1", "a2", "a3"] {
        fixture.release(container);
    }
    let running = running.join().unwrap();
    let queued = queued.join().unwrap();
    let sent = half_sent.write_all(rest);
    let half_sent = read_answer(&mut half_sent).unwrap_or_else(|read| {
        panic!("the half-sent request got no answer: sending {sent:?}, reading {read:?}")
    });
    let answers = [
        ("running", running),
        ("queued", queued),
        ("half sent", half_sent),
    ];
    let pid = daemon.pid();
    let (status, log) = daemon.wait();
    for (name, answer) in answers {
        assert_eq!(served_by(&answer), Some(pid), "{name}: {answer:?}\n{log}");
    }
    assert_eq!(status.code(), Some(0), "exit\n{log}");
}
