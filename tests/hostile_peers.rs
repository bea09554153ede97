//! Clients that break the rules, over a real Unix socket: malformed and
//! ambiguous requests, bytes the protocol never expects, and clients that
//! half-close, reset, stall or never read their answer.
//!
//! Every row pins what its client sees (an answer, or none) and then that
//! the server still serves a good request and holds no connection for it.
//! The rows that are only bytes also run split at every offset and one byte
//! at a time, and must get the same answer each way.

mod common;

use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::Duration;

use cniserver::{reference, PodRequest, ReplyHandle, ServerConfig};
use common::{
    connect, pod_body, post, read_until_closed, reference_add_result, show, write_tolerant, Answer,
    TestServer, IO_GUARD,
};

/// How long a client may take to send its request, and to read its answer,
/// on the servers of this file: short, so that the stalling rows end soon.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The size of the answer the sandbox `huge` gets: far more than a socket
/// buffer holds, so that a client that never reads keeps it unsent.
const HUGE_ANSWER: usize = 8 * 1024 * 1024;

/// How one row's client behaves.
enum Client {
    /// Writes these bytes and reads the answer. These are the codec rows:
    /// they also run split at every offset and one byte at a time.
    Sends(Vec<u8>),
    /// Writes these bytes, then waits for whatever comes, however long the
    /// server takes.
    SendsAndWaits(Vec<u8>),
    /// Writes these bytes, shuts down its writing side, then reads.
    SendsThenHalfCloses(Vec<u8>),
    /// Writes these bytes, then closes with `SO_LINGER` 0.
    SendsThenResets(Vec<u8>),
    /// Writes these bytes, waits until the server's `100 Continue` is in
    /// its buffer, and closes with `SO_LINGER` 0 without reading it. On a
    /// Unix socket it is unread bytes, not the linger setting, that make
    /// the server's side fail with a reset.
    ResetsOverInterim(Vec<u8>),
    /// Writes these bytes and never reads the answer.
    NeverReads(Vec<u8>),
}

/// What the client of a row must see.
#[derive(Debug)]
enum Want {
    /// One answer with this status and body, then the end.
    Answer(u16, Body),
    /// The end of the connection, without a byte.
    ClosedWithoutAnswer,
    /// Nothing to look at: the client is gone.
    Nothing,
    /// The start of an answer, then the end: the server gave up writing.
    CutShort,
}

#[derive(Debug)]
enum Body {
    Exact(String),
    Prefix(&'static str),
}

struct Row {
    name: &'static str,
    client: Client,
    want: Want,
}

fn row(name: &'static str, client: Client, want: Want) -> Row {
    Row { name, client, want }
}

fn exact(status: u16, text: &str) -> Want {
    Want::Answer(status, Body::Exact(text.to_owned()))
}

/// The reference handler's ADD result for `pod_body("ADD", sandbox)`.
fn added(sandbox: &str) -> Want {
    let result = reference_add_result(&format!("/var/run/netns/{sandbox}"));
    Want::Answer(200, Body::Exact(result))
}

const MALFORMED: &str = "malformed request\n";
const BAD_LENGTH: &str = "invalid or conflicting body length\n";
const BAD_CHUNK: &str = "invalid chunked body\n";
const JSON_ERROR: &str = "JSON unmarshal error: ";

fn malformed() -> Want {
    exact(400, MALFORMED)
}

fn json_error() -> Want {
    Want::Answer(400, Body::Prefix(JSON_ERROR))
}

/// The reference handler, except for two sandboxes: `slow` is answered
/// from another thread a moment later, `huge` with [`HUGE_ANSWER`] bytes.
fn handler(request: PodRequest, reply: ReplyHandle) {
    match request.sandbox_id.as_str() {
        "slow" => {
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(50));
                reply.send(reference::answer(&request));
            });
        }
        "huge" => reply.success(vec![b' '; HUGE_ANSWER]),
        _ => reply.send(reference::answer(&request)),
    }
}

fn start(tag: &str) -> TestServer {
    let config = ServerConfig {
        request_timeout: REQUEST_TIMEOUT,
        ..ServerConfig::default()
    };
    TestServer::start_with(tag, config, handler)
}

/// A valid ADD request body for `sandbox`.
fn add_body(sandbox: &str) -> String {
    pod_body("ADD", sandbox)
}

/// `POST / HTTP/1.1`, a Host, these header lines (each ending in CRLF),
/// the blank line, and the body as given: no other header is added.
fn raw_post(headers: impl AsRef<[u8]>, body: &[u8]) -> Vec<u8> {
    let start = b"POST / HTTP/1.1\r\nHost: dummy\r\n";
    [&start[..], headers.as_ref(), b"\r\n", body].concat()
}

/// An ADD for `sandbox` with these header lines, then a correct
/// Content-Length.
fn post_with(headers: impl AsRef<[u8]>, sandbox: &str) -> Vec<u8> {
    let body = add_body(sandbox);
    let length = format!("Content-Length: {}\r\n", body.len());
    let headers = [headers.as_ref(), length.as_bytes()].concat();
    raw_post(headers, body.as_bytes())
}

/// A chunked POST whose chunk framing is `chunks`, raw.
fn chunked(chunks: &str) -> Vec<u8> {
    raw_post("Transfer-Encoding: chunked\r\n", chunks.as_bytes())
}

/// A POST of `body` with its exact Content-Length.
fn post_bytes(body: &[u8]) -> Vec<u8> {
    raw_post(format!("Content-Length: {}\r\n", body.len()), body)
}

/// A pod body for ADD whose container ID holds these raw bytes, unescaped.
fn body_with_raw_id(id: &[u8]) -> Vec<u8> {
    let body = add_body("ID");
    let (before, after) = body.split_once("\"ID\"").expect("the ID is quoted");
    [before.as_bytes(), b"\"", id, b"\"", after.as_bytes()].concat()
}

fn bytes(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

fn rows() -> Vec<Row> {
    use Client::*;

    let add = add_body("c1");
    let http2_preface = [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        // An empty SETTINGS frame, as HTTP/2 clients send right after it.
        &[0, 0, 0, 4, 0, 0, 0, 0, 0],
    ]
    .concat();
    let half_body = {
        let body = add.as_bytes();
        let length = format!("Content-Length: {}\r\n", body.len());
        raw_post(length, &body[..body.len() / 2])
    };
    let half_head = b"POST / HTTP/1.1\r\nHost: dummy\r\nContent-Le".to_vec();
    let expect_continue = {
        let length = format!("Content-Length: {}\r\n", add.len());
        raw_post(format!("Expect: 100-continue\r\n{length}"), b"")
    };

    vec![
        // The request line.
        row(
            "request line without a version",
            Sends(bytes("POST /\r\nHost: dummy\r\n\r\n")),
            malformed(),
        ),
        row(
            "request line with a word after the version",
            Sends(bytes("POST / HTTP/1.1 x\r\nHost: dummy\r\n\r\n")),
            malformed(),
        ),
        row(
            "request line separated by tabs",
            Sends(bytes("POST\t/\tHTTP/1.1\r\nHost: dummy\r\n\r\n")),
            malformed(),
        ),
        row(
            "lowercase protocol name",
            Sends(bytes("POST / http/1.1\r\nHost: dummy\r\n\r\n")),
            malformed(),
        ),
        row(
            "NUL before the request line",
            Sends([b"\0".as_slice(), &post(add.as_bytes())].concat()),
            malformed(),
        ),
        row(
            "bytes without any line end wait for the request timeout",
            // A TLS ClientHello's first bytes: no blank line ever comes.
            SendsAndWaits(vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]),
            exact(408, "request not received in time\n"),
        ),
        // Versions.
        row(
            "HTTP/1.0 is served",
            Sends(
                format!(
                    "POST / HTTP/1.0\r\nContent-Length: {}\r\n\r\n{add}",
                    add.len()
                )
                .into_bytes(),
            ),
            added("c1"),
        ),
        row(
            "HTTP/1.0 without Content-Length has an empty body",
            Sends(format!("POST / HTTP/1.0\r\n\r\n{add}").into_bytes()),
            json_error(),
        ),
        row(
            "HTTP/2 preface with a SETTINGS frame",
            Sends(http2_preface),
            exact(505, "unsupported HTTP version\n"),
        ),
        row(
            "an h2c upgrade is served as HTTP/1.1",
            Sends(post_with(
                "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n",
                "c1",
            )),
            added("c1"),
        ),
        // Body lengths.
        row(
            "two different Content-Length headers",
            Sends(raw_post(
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                b"123456",
            )),
            exact(400, BAD_LENGTH),
        ),
        row(
            "a Content-Length list of two values",
            Sends(raw_post("Content-Length: 5, 6\r\n", b"123456")),
            exact(400, BAD_LENGTH),
        ),
        row(
            "a Content-Length list of equal values",
            Sends(raw_post(
                format!("Content-Length: {0}, {0}\r\n", add.len()),
                add.as_bytes(),
            )),
            exact(400, BAD_LENGTH),
        ),
        row(
            "repeated equal Content-Length headers",
            Sends(post_with(format!("Content-Length: {}\r\n", add.len()), "c1")),
            added("c1"),
        ),
        row(
            "Transfer-Encoding before Content-Length",
            Sends(raw_post(
                format!("Transfer-Encoding: chunked\r\nContent-Length: {}\r\n", add.len()),
                format!("{:x}\r\n{add}\r\n0\r\n\r\n", add.len()).as_bytes(),
            )),
            exact(400, BAD_LENGTH),
        ),
        row(
            "a space before a header's colon",
            Sends(raw_post("Content-Length : 2\r\n", b"{}")),
            malformed(),
        ),
        // Chunk sizes.
        row("chunk size not hex", Sends(chunked("1g\r\nx\r\n0\r\n\r\n")), exact(400, BAD_CHUNK)),
        row("negative chunk size", Sends(chunked("-1\r\nx\r\n0\r\n\r\n")), exact(400, BAD_CHUNK)),
        row(
            "chunk size of 17 hex digits overflows",
            Sends(chunked("10000000000000000\r\nx\r\n0\r\n\r\n")),
            exact(400, BAD_CHUNK),
        ),
        row(
            "chunk size of u64::MAX is over the body limit",
            Sends(chunked("ffffffffffffffff\r\nx\r\n0\r\n\r\n")),
            exact(413, "request body too large\n"),
        ),
        row("empty chunk size line", Sends(chunked("\r\nx\r\n0\r\n\r\n")), exact(400, BAD_CHUNK)),
        row(
            "chunk extension without a size",
            Sends(chunked(";ext=1\r\nx\r\n0\r\n\r\n")),
            exact(400, BAD_CHUNK),
        ),
        row(
            "chunk size with a 0x prefix",
            Sends(chunked("0x2\r\n{}\r\n0\r\n\r\n")),
            exact(400, BAD_CHUNK),
        ),
        // Header lines.
        row(
            "obs-fold continuation line",
            Sends(post_with("X-Folded: first\r\n second\r\n", "c1")),
            malformed(),
        ),
        row("bare LF line ends are served", Sends(post(add.as_bytes()).iter().copied().filter(|&b| b != b'\r').collect()), added("c1")),
        // NUL and non-UTF-8 bytes.
        row(
            "NUL in the request target",
            Sends(bytes("POST /\0 HTTP/1.1\r\n\r\n")),
            malformed(),
        ),
        row("NUL in a header name", Sends(post_with("X-A\0b: v\r\n", "c1")), malformed()),
        row("NUL in the body", Sends(post_bytes(&body_with_raw_id(b"c\0d"))), json_error()),
        row(
            "non-UTF-8 in a header value is served",
            Sends(post_with(b"X-Note: caf\xe9\r\n", "c1")),
            added("c1"),
        ),
        row("non-UTF-8 in a header name", Sends(post_with(b"X-Caf\xe9: v\r\n", "c1")), malformed()),
        row(
            "non-UTF-8 in the request target",
            Sends(b"POST /\xff HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec()),
            malformed(),
        ),
        row(
            "non-UTF-8 in Transfer-Encoding",
            Sends(raw_post(b"Transfer-Encoding: chunk\xe9d\r\n", b"0\r\n\r\n")),
            malformed(),
        ),
        row("non-UTF-8 in a body string", Sends(post_bytes(&body_with_raw_id(b"c\xff"))), json_error()),
        // Bodies longer or shorter than announced.
        row(
            "body longer than announced: the extra bytes are ignored",
            Sends([post(add.as_bytes()), b"}}garbage\0\xff".to_vec()].concat()),
            added("c1"),
        ),
        row(
            "pipelined second request gets no answer",
            Sends([post(add.as_bytes()), post(add_body("second").as_bytes())].concat()),
            added("c1"),
        ),
        row(
            "body shorter than announced, then half-close",
            SendsThenHalfCloses(half_body.clone()),
            Want::ClosedWithoutAnswer,
        ),
        // Clients that close early, or never read.
        row(
            "half-close after a complete request",
            SendsThenHalfCloses(post(add.as_bytes())),
            added("c1"),
        ),
        row(
            "half-close while the handler works",
            SendsThenHalfCloses(post(add_body("slow").as_bytes())),
            added("slow"),
        ),
        row(
            "half-close in the middle of the head",
            SendsThenHalfCloses(half_head.clone()),
            Want::ClosedWithoutAnswer,
        ),
        row("reset in the middle of the head", SendsThenResets(half_head), Want::Nothing),
        row("reset in the middle of the body", SendsThenResets(half_body), Want::Nothing),
        row(
            "reset with the 100 Continue unread",
            ResetsOverInterim(expect_continue),
            Want::Nothing,
        ),
        row(
            "reset while the handler works",
            SendsThenResets(post(add_body("slow").as_bytes())),
            Want::Nothing,
        ),
        row(
            "never reads its answer: dropped at the request timeout",
            NeverReads(post(add_body("huge").as_bytes())),
            Want::CutShort,
        ),
    ]
}

/// Plays one row's client against the socket at `path`; the error says
/// what went wrong.
fn play(path: &Path, client: &Client, want: &Want) -> Result<(), String> {
    let mut stream = connect(path).map_err(|e| format!("cannot connect: {e}"))?;
    match client {
        Client::Sends(request) | Client::SendsAndWaits(request) => {
            write_tolerant(&mut stream, request)?;
            judge(want, &read_until_closed(&mut stream)?)
        }
        Client::SendsThenHalfCloses(request) => {
            write_tolerant(&mut stream, request)?;
            stream
                .shutdown(Shutdown::Write)
                .map_err(|e| format!("cannot half-close: {e}"))?;
            judge(want, &read_until_closed(&mut stream)?)
        }
        Client::SendsThenResets(request) => {
            write_tolerant(&mut stream, request)?;
            reset(stream)
        }
        Client::ResetsOverInterim(request) => {
            write_tolerant(&mut stream, request)?;
            wait_for_bytes(&stream)?;
            reset(stream)
        }
        Client::NeverReads(request) => {
            write_tolerant(&mut stream, request)?;
            // The server goes on serving others meanwhile.
            check_good_request(path)?;
            // The server closes the connection once the timeout is over;
            // only then does this client read what got through.
            wait_for_open_connections(path, 1)?;
            judge(want, &read_until_closed(&mut stream)?)
        }
    }
}

/// Checks everything a client read against what it should have.
fn judge(want: &Want, raw: &[u8]) -> Result<(), String> {
    match want {
        Want::Answer(status, body) => {
            let answer = Answer::parse(raw)?;
            let mut found = Vec::new();
            if answer.status != *status {
                found.push(format!("status {} instead of {status}", answer.status));
            }
            if answer.status_line.ends_with(" Unknown") {
                found.push("no reason phrase".to_owned());
            }
            let body_ok = match body {
                Body::Exact(text) => answer.body == text.as_bytes(),
                Body::Prefix(text) => answer.body.starts_with(text.as_bytes()),
            };
            if !body_ok {
                found.push(format!("body is not {body:?}"));
            }
            if let Err(why) = answer.check_connection_close() {
                found.push(why);
            }
            if found.is_empty() {
                Ok(())
            } else {
                Err(format!("{}\n    got:  {answer}", found.join("; ")))
            }
        }
        Want::ClosedWithoutAnswer if raw.is_empty() => Ok(()),
        Want::CutShort if raw.starts_with(b"HTTP/1.1 200 OK\r\n") && raw.len() < HUGE_ANSWER => {
            Ok(())
        }
        Want::Nothing => Ok(()),
        _ => Err(format!("got {}", show(raw))),
    }
}

/// Closes with `SO_LINGER` 0, the way a client aborts a TCP connection.
fn reset(stream: UnixStream) -> Result<(), String> {
    use nix::sys::socket::{setsockopt, sockopt::Linger};

    let abort = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(&stream, Linger, &abort).map_err(|e| format!("cannot set SO_LINGER: {e}"))?;
    drop(stream);
    Ok(())
}

/// Waits until the server has sent something, without reading it.
fn wait_for_bytes(stream: &UnixStream) -> Result<(), String> {
    use nix::sys::socket::{recv, MsgFlags};

    let mut byte = [0u8; 1];
    // The read timeout set by `connect` bounds the wait.
    match recv(stream.as_raw_fd(), &mut byte, MsgFlags::MSG_PEEK) {
        Ok(1) => Ok(()),
        Ok(_) => Err("the server closed instead of sending 100 Continue".into()),
        Err(e) => Err(format!("no 100 Continue came: {e}")),
    }
}

/// A good request must get its answer.
fn check_good_request(path: &Path) -> Result<(), String> {
    let good = Client::Sends(post(add_body("good").as_bytes()));
    play(path, &good, &added("good")).map_err(|why| format!("a good request failed: {why}"))
}

/// The server's count of open connections, the scrape's own included.
fn open_connections(path: &Path) -> Result<usize, String> {
    let answer = common::try_exchange(path, b"GET /metrics HTTP/1.1\r\n\r\n")?;
    let text = answer.text();
    text.lines()
        .find_map(|line| line.strip_prefix("cniserver_connections_open "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("no open connection count in {answer}"))
}

/// Waits until the server holds `count` connections (the scrape's own
/// included). The bound only guards against a hang.
fn wait_for_open_connections(path: &Path, count: usize) -> Result<(), String> {
    let mut open = 0;
    for _ in 0..(IO_GUARD.as_millis() / 10) {
        open = open_connections(path)?;
        if open == count {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(10));
    }
    Err(format!(
        "the server still holds {open} connections, not {count}"
    ))
}

#[test]
fn each_hostile_client_gets_a_defined_outcome_and_the_server_goes_on() {
    let server = start("hostile-rows");
    let rows = rows();
    let mut failures = Vec::new();

    for row in &rows {
        let sent = match &row.client {
            Client::Sends(r)
            | Client::SendsAndWaits(r)
            | Client::SendsThenHalfCloses(r)
            | Client::SendsThenResets(r)
            | Client::ResetsOverInterim(r)
            | Client::NeverReads(r) => r,
        };
        let outcome = play(server.path(), &row.client, &row.want)
            .and_then(|()| check_good_request(server.path()))
            // Whatever the client did, the server keeps nothing for it.
            .and_then(|()| wait_for_open_connections(server.path(), 1));
        if let Err(why) = outcome {
            failures.push(format!(
                "{}\n    sent: {}\n    want: {:?}\n    why:  {why}",
                row.name,
                show(sent),
                row.want
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n\n")
    );
}

/// The rows that are only bytes.
fn codec_rows() -> Vec<(&'static str, Vec<u8>)> {
    rows()
        .into_iter()
        .filter_map(|row| match row.client {
            Client::Sends(request) => Some((row.name, request)),
            _ => None,
        })
        .collect()
}

#[test]
fn codec_rows_get_the_same_answer_split_at_every_offset() {
    let server = start("hostile-split");
    let mut failures = Vec::new();

    for (name, request) in codec_rows() {
        let whole = common::exchange(server.path(), &request);
        failures.extend(common::split_failures(
            server.path(),
            name,
            &request,
            &whole,
        ));
    }
    assert!(check_good_request(server.path()).is_ok());
    failures.truncate(20);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn codec_rows_get_the_same_answer_one_byte_at_a_time() {
    let server = start("hostile-bytewise");
    let mut failures = Vec::new();

    for (name, request) in codec_rows() {
        let whole = common::exchange(server.path(), &request);
        match common::exchange_byte_at_a_time(server.path(), &request) {
            Ok(answer) if answer == whole => {}
            Ok(answer) => {
                failures.push(format!("{name}:\n    got:   {answer}\n    whole: {whole}"))
            }
            Err(why) => failures.push(format!("{name}: {why}")),
        }
    }
    assert!(check_good_request(server.path()).is_ok());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
