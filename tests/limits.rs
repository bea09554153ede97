//! Each of the server's limits, over a real Unix socket with a small
//! `ServerConfig`: what the client past the limit gets, that the server
//! goes on serving the others, and which event the embedder is told.
//!
//! Durations here are only limits under test and guards against hangs:
//! no test asserts how long anything took.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use cniserver::http::Limits;
use cniserver::{reference, PodRequest, ReplyHandle, ServerConfig, ServerEvent};
use common::{
    connect, pod_body, post, read_until_closed, reference_add_result, show, write_tolerant, Answer,
    TestServer, IO_GUARD,
};

/// The events a server reported, in order, as their `Debug` text.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<String>>>);

impl Events {
    /// A configuration that reports to this recorder.
    fn config(&self, config: ServerConfig) -> ServerConfig {
        let seen = self.0.clone();
        ServerConfig {
            on_event: Some(Arc::new(move |event: &ServerEvent<'_>| {
                seen.lock().unwrap().push(format!("{event:?}"));
            })),
            ..config
        }
    }

    fn seen(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until `count` events came. The bound only guards against a
    /// hang.
    fn wait_for(&self, count: usize) -> Vec<String> {
        for _ in 0..(IO_GUARD.as_millis() / 10) {
            let seen = self.seen();
            if seen.len() >= count {
                return seen;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.seen()
    }
}

/// An ADD request for `sandbox`.
fn add(sandbox: &str) -> Vec<u8> {
    post(pod_body("ADD", sandbox).as_bytes())
}

/// The reference handler's answer to [`add`].
fn added(sandbox: &str) -> String {
    reference_add_result(&format!("/var/run/netns/{sandbox}"))
}

/// Checks that a good request is served: the server survived the row.
fn check_served(path: &Path) {
    let answer = common::exchange(path, &add("good"));
    assert_eq!(answer.status, 200, "a good request afterwards: {answer}");
    assert_eq!(answer.text(), added("good"), "a good request afterwards");
}

/// Checks an answer's status and text, and that it closes the connection.
fn check_answer(name: &str, answer: &Answer, status: u16, text: &str) -> Result<(), String> {
    let named = !answer.status_line.ends_with(" Unknown");
    if answer.status != status || !named || answer.text() != text {
        return Err(format!("{name}: want {status} {text:?}\n    got: {answer}"));
    }
    answer
        .check_connection_close()
        .map_err(|why| format!("{name}: {why}"))
}

// ---------------------------------------------------------------------------
// Head and body sizes

const HEAD_LIMIT: usize = 512;
const HEADER_LIMIT: usize = 8;
const BODY_LIMIT: usize = 1024;

/// An ADD whose head is exactly `len` bytes, padded by one header.
fn head_of_len(len: usize) -> Vec<u8> {
    let body = pod_body("ADD", "c1");
    let start = format!(
        "POST / HTTP/1.1\r\nHost: dummy\r\nContent-Length: {}\r\n",
        body.len()
    );
    let bare = start.len() + "X-Pad: \r\n\r\n".len();
    let pad = "p".repeat(len.checked_sub(bare).expect("room for the padding"));
    format!("{start}X-Pad: {pad}\r\n\r\n{body}").into_bytes()
}

/// An ADD with `count` header lines.
fn headers(count: usize) -> Vec<u8> {
    let body = pod_body("ADD", "c1");
    let mut head = format!(
        "POST / HTTP/1.1\r\nHost: dummy\r\nContent-Length: {}\r\n",
        body.len()
    );
    for i in 2..count {
        head.push_str(&format!("X-{i}: v\r\n"));
    }
    format!("{head}\r\n{body}").into_bytes()
}

/// An ADD body padded with trailing spaces (valid JSON) to `len` bytes.
fn body_of_len(len: usize) -> Vec<u8> {
    let mut body = pod_body("ADD", "c1").into_bytes();
    body.resize(len, b' ');
    body
}

/// `body` sent in chunks of 100 bytes.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut request =
        b"POST / HTTP/1.1\r\nHost: dummy\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in body.chunks(100) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

#[test]
fn head_header_and_body_limits_each_have_their_status() {
    let config = ServerConfig {
        limits: Limits {
            max_head_bytes: HEAD_LIMIT,
            max_headers: HEADER_LIMIT,
            max_body_bytes: BODY_LIMIT,
        },
        ..ServerConfig::default()
    };
    let server = TestServer::start_with("limits-sizes", config, |request, reply| {
        reply.send(reference::answer(&request))
    });
    let head_too_large = "request header block too large\n";
    let body_too_large = "request body too large\n";
    let big_chunk = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n".to_vec();

    // (name, request, status, body)
    let rows: Vec<(&str, Vec<u8>, u16, String)> = vec![
        (
            "head at the limit",
            head_of_len(HEAD_LIMIT),
            200,
            added("c1"),
        ),
        (
            "head one byte over",
            head_of_len(HEAD_LIMIT + 1),
            431,
            head_too_large.into(),
        ),
        (
            "headers at the limit",
            headers(HEADER_LIMIT),
            200,
            added("c1"),
        ),
        (
            "one header too many",
            headers(HEADER_LIMIT + 1),
            431,
            head_too_large.into(),
        ),
        (
            "body at the limit",
            post(&body_of_len(BODY_LIMIT)),
            200,
            added("c1"),
        ),
        (
            "body one byte over",
            post(&body_of_len(BODY_LIMIT + 1)),
            413,
            body_too_large.into(),
        ),
        (
            "chunked body at the limit",
            chunked(&body_of_len(BODY_LIMIT)),
            200,
            added("c1"),
        ),
        (
            "chunked body one byte over",
            chunked(&body_of_len(BODY_LIMIT + 1)),
            413,
            body_too_large.into(),
        ),
        (
            "one chunk over the limit, refused from its size",
            big_chunk,
            413,
            body_too_large.into(),
        ),
    ];

    let mut failures = Vec::new();
    for (name, request, status, body) in &rows {
        let outcome = common::try_exchange(server.path(), request)
            .and_then(|answer| check_answer(name, &answer, *status, body));
        if let Err(why) = outcome {
            failures.push(format!("{why}\n    sent: {}", show(request)));
        }
        check_served(server.path());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A real conflist of at least `size` bytes: a bridge with host-local IPAM
/// whose routes make up the bulk, as a large cluster's netconf does.
fn large_conflist(size: usize) -> Vec<u8> {
    let mut routes = Vec::new();
    let mut length = 0;
    for i in 0.. {
        let route = format!(
            r#"{{"dst":"10.{}.{}.0/24","gw":"10.244.0.1"}}"#,
            i / 256 % 256,
            i % 256
        );
        length += route.len() + 1;
        routes.push(route);
        if length >= size {
            break;
        }
    }
    format!(
        concat!(
            r#"{{"cniVersion":"1.0.0","name":"podnet","plugins":[{{"type":"bridge","#,
            r#""bridge":"cni0","isGateway":true,"ipMasq":true,"ipam":{{"type":"host-local","#,
            r#""ranges":[[{{"subnet":"10.244.0.0/16"}}]],"routes":[{}]}}}},"#,
            r#"{{"type":"portmap","capabilities":{{"portMappings":true}}}}]}}"#
        ),
        routes.join(",")
    )
    .into_bytes()
}

#[test]
fn default_body_limit_fits_a_1_mib_netconf() {
    let netconf = large_conflist(1024 * 1024);
    assert!(netconf.len() >= 1024 * 1024);
    let want = netconf.clone();
    // The handler answers 200 only when the netconf came whole.
    let server = TestServer::start("limits-1mib", move |request, reply| {
        if request.config == want {
            reply.success(format!("{}", request.config.len()).into_bytes());
        } else {
            reply.error(format!("netconf of {} bytes", request.config.len()));
        }
    });

    let body = format!(
        concat!(
            r#"{{"env":{{"CNI_COMMAND":"ADD","CNI_CONTAINERID":"c1","CNI_NETNS":"/n","#,
            r#""CNI_ARGS":"K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"}},"config":"{}"}}"#
        ),
        cniserver::base64::encode(&netconf)
    );
    for (name, request) in [
        ("Content-Length", post(body.as_bytes())),
        ("chunked", chunked(body.as_bytes())),
    ] {
        let answer = common::exchange(server.path(), &request);
        assert_eq!(
            answer.status,
            200,
            "{name}, a {} byte body: {answer}",
            body.len()
        );
        assert_eq!(answer.text(), netconf.len().to_string(), "{name}");
    }
}

// ---------------------------------------------------------------------------
// Connections

#[test]
fn connection_past_the_limit_is_refused_and_the_others_go_on() {
    const LIMIT: usize = 4;
    let events = Events::default();
    let config = events.config(ServerConfig {
        max_connections: LIMIT,
        ..ServerConfig::default()
    });
    let server = TestServer::start_with("limits-conns", config, |request, reply| {
        reply.send(reference::answer(&request))
    });

    // The server accepts in the order clients connected: these four are
    // in before the fifth.
    let request = add("held");
    let (first, rest) = request.split_at(20);
    let mut held: Vec<_> = (0..LIMIT)
        .map(|_| {
            let mut stream = connect(server.path()).expect("connect");
            stream.write_all(first).expect("first part");
            stream
        })
        .collect();

    let extra = common::exchange(server.path(), &add("extra"));
    check_answer(
        "the extra connection",
        &extra,
        503,
        "too many connections\n",
    )
    .unwrap();

    for (i, stream) in held.iter_mut().enumerate() {
        write_tolerant(stream, rest).expect("the rest");
        let answer = read_until_closed(stream).and_then(|raw| Answer::parse(&raw));
        match answer {
            Ok(answer) => assert_eq!(answer.text(), added("held"), "held connection {i}"),
            Err(why) => panic!("held connection {i}: {why}"),
        }
    }
    check_served(server.path());
    assert_eq!(
        events.seen(),
        [format!("ConnectionLimit {{ open: {LIMIT} }}")]
    );
}

// ---------------------------------------------------------------------------
// Time

/// How one slow client sends its request.
enum Slow {
    /// Connects and sends nothing.
    Silent,
    /// Sends these bytes, then nothing more.
    Stops(Vec<u8>),
    /// Sends the start of a head, then this byte again and again, a pause
    /// after each.
    Trickles(Vec<u8>, u8),
}

/// Plays a slow client and returns everything the server sent.
fn play_slow(path: &Path, slow: &Slow) -> Result<Vec<u8>, String> {
    let mut stream = connect(path).map_err(|e| format!("cannot connect: {e}"))?;
    match slow {
        Slow::Silent => {}
        Slow::Stops(bytes) => write_tolerant(&mut stream, bytes)?,
        Slow::Trickles(start, byte) => {
            write_tolerant(&mut stream, start)?;
            // A short read timeout paces the bytes and tells, between them,
            // whether an answer came; the loop's bound only guards against
            // a hang.
            stream
                .set_read_timeout(Some(Duration::from_millis(100)))
                .map_err(|e| e.to_string())?;
            let mut first = [0u8; 1];
            let mut answered = None;
            for _ in 0..IO_GUARD.as_millis() / 100 {
                write_tolerant(&mut stream, &[*byte])?;
                if let Ok(n) = stream.read(&mut first) {
                    answered = Some(n);
                    break;
                }
            }
            stream
                .set_read_timeout(Some(IO_GUARD))
                .map_err(|e| e.to_string())?;
            let rest = read_until_closed(&mut stream)?;
            return match answered {
                Some(n) => Ok([&first[..n], &rest].concat()),
                None => Err("no answer while trickling".into()),
            };
        }
    }
    read_until_closed(&mut stream)
}

#[test]
fn slow_clients_get_408_at_the_request_timeout() {
    let server = TestServer::start_with(
        "limits-slowloris",
        ServerConfig {
            request_timeout: Duration::from_secs(1),
            ..ServerConfig::default()
        },
        |request, reply| reply.send(reference::answer(&request)),
    );
    let request = add("slow");
    let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let rows = [
        ("connects and sends nothing", Slow::Silent),
        (
            "half a head, then silence",
            Slow::Stops(request[..head_end / 2].to_vec()),
        ),
        (
            "the head and half the body, then silence",
            Slow::Stops(request[..(head_end + request.len()) / 2].to_vec()),
        ),
        (
            "a head one byte at a time, never ending",
            Slow::Trickles(b"POST / HTTP/1.1\r\nX-Slow: ".to_vec(), b'a'),
        ),
    ];

    // All at once, so that the others are served while they wait.
    let path = server.path().to_owned();
    let clients: Vec<_> = rows
        .into_iter()
        .map(|(name, slow)| {
            let path = path.clone();
            thread::spawn(move || (name, play_slow(&path, &slow)))
        })
        .collect();
    check_served(server.path());

    let mut failures = Vec::new();
    for client in clients {
        let (name, outcome) = client.join().expect("client thread");
        let outcome = outcome
            .and_then(|raw| Answer::parse(&raw))
            .and_then(|answer| check_answer(name, &answer, 408, "request not received in time\n"));
        if let Err(why) = outcome {
            failures.push(why);
        }
    }
    check_served(server.path());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A server whose handler answers sandboxes named `good` at once, panics
/// on `panic`, and hands every other reply to the test.
fn holding_server(
    tag: &str,
    config: ServerConfig,
) -> (TestServer, mpsc::Receiver<(PodRequest, ReplyHandle)>) {
    TestServer::holding(tag, config, |request, reply| {
        match request.sandbox_id.as_str() {
            "good" => reply.send(reference::answer(&request)),
            "panic" => panic!("the handler panics (expected by the test)"),
            _ => return Some((request, reply)),
        }
        None
    })
}

#[test]
fn handler_past_the_reply_timeout_gets_504_and_its_late_answer_is_dropped() {
    let events = Events::default();
    let config = events.config(ServerConfig {
        reply_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    });
    let (server, held) = holding_server("limits-reply", config);

    let client = server.exchange_in_background(add("stuck"));
    let (request, reply) = held.recv_timeout(IO_GUARD).expect("the request");
    assert_eq!(request.sandbox_id, "stuck");
    let answer = client.join().expect("client thread");
    check_answer(
        "stuck",
        &answer,
        504,
        "the handler did not answer in time\n",
    )
    .unwrap();

    // The next request is held in the slot the first one left; the late
    // answer must not reach it.
    let next = server.exchange_in_background(post(pod_body("DEL", "next").as_bytes()));
    let (_request, next_reply) = held.recv_timeout(IO_GUARD).expect("the next request");
    reply.success(b"late".to_vec());
    next_reply.success(b"next".to_vec());
    let answer = next.join().expect("client thread");
    assert_eq!(
        (answer.status, answer.text().as_str()),
        (200, "next"),
        "{answer}"
    );

    check_served(server.path());
    assert_eq!(events.seen(), [r#"HandlerTimedOut { command: "ADD" }"#]);
}

#[test]
fn handler_panic_is_a_500_and_the_server_goes_on() {
    let events = Events::default();
    let config = events.config(ServerConfig::default());
    let (server, _held) = holding_server("limits-panic", config);

    let answer = server.exchange(&post(pod_body("DEL", "panic").as_bytes()));
    check_answer("panic", &answer, 500, "the handler panicked\n").unwrap();

    check_served(server.path());
    assert_eq!(events.seen(), [r#"HandlerPanicked { command: "DEL" }"#]);
}

#[test]
fn client_that_leaves_before_its_answer_is_reported_gone() {
    let events = Events::default();
    let config = events.config(ServerConfig::default());
    let (server, held) = holding_server("limits-gone", config);

    let mut stream = connect(server.path()).expect("connect");
    stream
        .write_all(&post(pod_body("CHECK", "leaves").as_bytes()))
        .expect("the request");
    let (_request, reply) = held.recv_timeout(IO_GUARD).expect("the request");
    drop(stream);

    let seen = events.wait_for(1);
    assert_eq!(seen, [r#"ClientGone { command: "CHECK" }"#]);
    // Answering a client that left goes nowhere and harms nothing.
    reply.success(Vec::new());
    check_served(server.path());
    assert_eq!(events.seen().len(), 1, "{:?}", events.seen());
}
