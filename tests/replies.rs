//! How handlers answer, over a real Unix socket: from another thread and
//! later, not at all, by panicking, with errors of each kind, many at once,
//! and while the server shuts down.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use cniserver::server::DROPPED_REPLY;
use cniserver::{PodError, PodRequest, ReplyHandle, ServerConfig};
use common::{pod_body, post, Answer, TestServer, IO_GUARD};

/// A pod request for `sandbox`, which the handlers below switch on.
fn request_for(sandbox: &str) -> Vec<u8> {
    post(pod_body("ADD", sandbox).as_bytes())
}

/// The success body the handlers below send: the sandbox ID, so that each
/// client can tell its answer from another's.
fn success_for(sandbox: &str) -> Vec<u8> {
    format!(r#"{{"sandbox":"{sandbox}"}}"#).into_bytes()
}

/// A CNI error JSON, as a delegate plugin would print it.
const CNI_ERROR: &str =
    r#"{"cniVersion":"1.0.0","code":11,"msg":"try again later","details":"pool \"a\" busy"}"#;

/// Answers from a thread of its own, a moment later.
fn later(reply: ReplyHandle, work: impl FnOnce(ReplyHandle) + Send + 'static) {
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        work(reply);
    });
}

fn cni_error() -> PodError {
    PodError::cni_json(CNI_ERROR.as_bytes().to_vec())
}

/// One way a handler can answer, picked by the request's sandbox ID.
fn answer_by_sandbox(request: PodRequest, reply: ReplyHandle) {
    match request.sandbox_id.as_str() {
        "now" => reply.success(success_for("now")),
        "later" => later(reply, |reply| reply.success(success_for("later"))),
        "empty-later" => later(reply, |reply| reply.success(Vec::new())),
        "dropped" => drop(reply),
        "dropped-later" => later(reply, drop),
        "worker-panics" => later(reply, |reply| {
            let _held = reply;
            panic!("worker panics while holding the reply (expected by the test)");
        }),
        "panics" => panic!("handler panics (expected by the test)"),
        "message" => reply.error("the pod's network is not ready"),
        "message-later" => later(reply, |reply| reply.error(format!("late {}", 42))),
        "cni-json" => reply.error(cni_error()),
        "cni-json-later" => later(reply, |reply| reply.send(Err(cni_error()))),
        "cni-json-503" => reply.error(cni_error().with_status(503)),
        "message-as-200" => reply.error(PodError::message("not a success").with_status(200)),
        other => reply.error(format!("unexpected sandbox {other}")),
    }
}

struct Row {
    sandbox: &'static str,
    status: u16,
    content_type: &'static str,
    nosniff: bool,
    body: Vec<u8>,
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

#[test]
fn each_way_of_answering_reaches_the_client() {
    let server = TestServer::start("replies-ways", answer_by_sandbox);
    let dropped = format!("{DROPPED_REPLY}\n").into_bytes();
    let cni_error = CNI_ERROR.as_bytes().to_vec();
    let row = |sandbox, status, content_type, body: Vec<u8>| Row {
        sandbox,
        status,
        content_type,
        nosniff: content_type == TEXT,
        body,
    };
    let rows = [
        row("now", 200, JSON, success_for("now")),
        row("later", 200, JSON, success_for("later")),
        row("empty-later", 200, JSON, Vec::new()),
        row("dropped", 500, TEXT, dropped.clone()),
        row("dropped-later", 500, TEXT, dropped.clone()),
        row("worker-panics", 500, TEXT, dropped),
        row(
            "message",
            400,
            TEXT,
            b"the pod's network is not ready\n".to_vec(),
        ),
        row("message-later", 400, TEXT, b"late 42\n".to_vec()),
        // A CNI error JSON passes through byte for byte, no newline added.
        row("cni-json", 400, TEXT, cni_error.clone()),
        row("cni-json-later", 400, TEXT, cni_error.clone()),
        row("cni-json-503", 503, TEXT, cni_error),
        // An error can never pass for a success.
        row("message-as-200", 500, TEXT, b"not a success\n".to_vec()),
    ];

    let mut failures = Vec::new();
    for row in &rows {
        let answer = server.exchange(&request_for(row.sandbox));
        let mut found = Vec::new();
        if answer.status != row.status {
            found.push(format!(
                "status {} instead of {}",
                answer.status, row.status
            ));
        }
        if answer.body != row.body {
            found.push(format!("body is not {}", common::show(&row.body)));
        }
        if answer.header("content-type") != Some(row.content_type) {
            found.push(format!("Content-Type is not {}", row.content_type));
        }
        if row.nosniff && answer.header("x-content-type-options") != Some("nosniff") {
            found.push("no X-Content-Type-Options: nosniff".to_owned());
        }
        if let Err(why) = answer.check_connection_close() {
            found.push(why);
        }
        if !found.is_empty() {
            failures.push(format!(
                "{}: {}\n    got: {answer}",
                row.sandbox,
                found.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn handler_panic_is_a_500_and_the_server_goes_on() {
    let server = TestServer::start("replies-panic", answer_by_sandbox);

    let answer = server.exchange(&request_for("panics"));
    assert_eq!(answer.status, 500, "{answer}");
    assert!(answer.text().contains("panicked"), "{answer}");
    answer.check_connection_close().unwrap();

    // The reactor survived: the next requests, quick and slow, are served.
    for sandbox in ["now", "later", "panics", "now"] {
        let answer = server.exchange(&request_for(sandbox));
        let want = if sandbox == "panics" { 500 } else { 200 };
        assert_eq!(answer.status, want, "{sandbox}: {answer}");
    }
}

/// Fifty requests whose handlers each answer from a thread after a pause.
/// Every worker waits until all fifty requests are with the handler at
/// once before it answers, so the test passes only if the one reactor
/// thread holds them all in flight together.
#[test]
fn one_reactor_serves_many_slow_requests_at_once() {
    const CLIENTS: usize = 50;
    let in_flight = Arc::new((Mutex::new(0usize), Condvar::new()));
    let gate = in_flight.clone();
    let server = TestServer::start("replies-many", move |request, reply| {
        let gate = gate.clone();
        thread::spawn(move || {
            let (count, all_in) = &*gate;
            let mut count = count.lock().unwrap();
            *count += 1;
            all_in.notify_all();
            // The timeout only guards against a hang.
            let (count, waited) = all_in
                .wait_timeout_while(count, IO_GUARD, |n| *n < CLIENTS)
                .unwrap();
            let together = !waited.timed_out();
            drop(count);

            thread::sleep(Duration::from_millis(200));
            if together {
                reply.success(success_for(&request.sandbox_id));
            } else {
                reply.error("the requests were not all in flight at once");
            }
        });
    });

    let path = server.path().to_owned();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let path = path.clone();
            thread::spawn(move || {
                let sandbox = format!("sandbox-{i}");
                (common::exchange(&path, &request_for(&sandbox)), sandbox)
            })
        })
        .collect();

    let mut failures = Vec::new();
    for client in clients {
        let (answer, sandbox) = client.join().expect("client thread");
        if answer.status != 200 || answer.body != success_for(&sandbox) {
            failures.push(format!("{sandbox}: {answer}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(*in_flight.0.lock().unwrap(), CLIENTS);
}

/// A server whose handler answers the sandbox "probe" at once and hands
/// every other reply to the test through the channel.
fn holding_server(
    tag: &str,
    config: ServerConfig,
) -> (TestServer, mpsc::Receiver<(PodRequest, ReplyHandle)>) {
    TestServer::holding(tag, config, |request, reply| {
        if request.sandbox_id == "probe" {
            reply.success(Vec::new());
            return None;
        }
        Some((request, reply))
    })
}

/// Sends probes until one is refused as the server drains; returns that
/// answer. The loop's bound only guards against a hang.
fn wait_for_draining(server: &TestServer) -> Answer {
    for _ in 0..2000 {
        let answer = server.exchange(&request_for("probe"));
        if answer.status != 200 {
            return answer;
        }
        thread::sleep(Duration::from_millis(5));
    }
    panic!("the server never started draining");
}

#[test]
fn shutdown_lets_the_request_in_flight_finish() {
    let (server, held) = holding_server("replies-shutdown", ServerConfig::default());
    let path = server.path().to_owned();
    assert!(path.exists());

    let in_flight = server.exchange_in_background(request_for("in-flight"));
    let (request, reply) = held
        .recv_timeout(IO_GUARD)
        .expect("the request reaches the handler");
    assert_eq!(request.sandbox_id, "in-flight");

    server.shutdown_handle().shutdown();
    // While it drains, new pod requests are turned away and the socket is
    // still there to tell them so.
    let refused = wait_for_draining(&server);
    assert_eq!(refused.status, 503, "{refused}");
    assert_eq!(refused.text(), "server is shutting down\n");
    refused.check_connection_close().unwrap();

    reply.success(success_for("in-flight"));
    let answer = in_flight.join().expect("client thread");
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(answer.body, success_for("in-flight"));

    let (served, _dir) = server.stop();
    served.expect("serve returns Ok after a shutdown");
    assert!(!path.exists(), "the socket file is removed");
    assert!(path.parent().unwrap().is_dir(), "its folder stays");
    assert!(
        common::connect(&path).is_err(),
        "a new connection after shutdown must fail"
    );
}

#[test]
fn shutdown_of_an_idle_server_returns_at_once() {
    let server = TestServer::reference("replies-idle-stop");
    let path = server.path().to_owned();
    let answer = server.exchange(&request_for("c1"));
    assert_eq!(answer.status, 200, "{answer}");

    let (served, _dir) = server.stop();
    served.expect("serve returns Ok");
    assert!(!path.exists(), "the socket file is removed");
    assert!(common::connect(&path).is_err());
}

#[test]
fn shutdown_grace_ends_with_503_for_what_is_still_held() {
    let config = ServerConfig {
        shutdown_grace: Duration::from_millis(100),
        ..ServerConfig::default()
    };
    let (server, held) = holding_server("replies-grace", config);
    let path = server.path().to_owned();

    let in_flight = server.exchange_in_background(request_for("never-answered"));
    let (_request, reply) = held
        .recv_timeout(IO_GUARD)
        .expect("the request reaches the handler");

    let (served, _dir) = server.stop();
    served.expect("serve returns Ok once the grace period is over");
    let answer = in_flight.join().expect("client thread");
    assert_eq!(answer.status, 503, "{answer}");
    assert_eq!(answer.text(), "server is shutting down\n");
    assert!(!path.exists());

    // Answering after the server is gone goes nowhere and harms nothing.
    reply.success(Vec::new());
}

#[test]
fn late_answer_after_a_timeout_never_reaches_the_next_client() {
    let config = ServerConfig {
        reply_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let (server, held) = holding_server("replies-late", config);

    let first = server.exchange_in_background(request_for("first"));
    let (_request, first_reply) = held.recv_timeout(IO_GUARD).expect("first request");
    let timed_out = first.join().expect("client thread");
    assert_eq!(timed_out.status, 504, "{timed_out}");
    timed_out.check_connection_close().unwrap();

    // The next connection takes the first one's slot in the reactor.
    let second = server.exchange_in_background(request_for("second"));
    let (_request, second_reply) = held.recv_timeout(IO_GUARD).expect("second request");
    first_reply.success(success_for("first"));
    second_reply.success(success_for("second"));

    let answer = second.join().expect("client thread");
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(answer.body, success_for("second"), "{answer}");
}
