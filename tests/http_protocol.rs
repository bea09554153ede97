//! The rows of PROTOCOL.md sections 1 to 5 that the shared wire table does
//! not hold, over a real Unix socket: routing, the server's own error
//! answers, decoding as the handler sees it, one request per connection,
//! and requests split at every byte offset.

mod common;

use std::sync::{Arc, Mutex};

use cniserver::PodRequest;
use common::{
    connect, pod_body, post, read_until_closed, reference_add_result, show, wire_cases,
    write_tolerant, Answer, TestServer,
};

/// The answer a group of rows must get.
#[derive(Debug, Clone, Copy)]
struct Want {
    status: u16,
    headers: &'static [(&'static str, &'static str)],
    body: Body,
}

/// What the body must be.
#[derive(Debug, Clone, Copy)]
enum Body {
    Exact(&'static str),
    Prefix(&'static str),
    /// The reference handler's ADD result for [`add_body`].
    AddResult,
    /// Some short text: what the server says about a request it refused.
    ShortText,
}

const TEXT: (&str, &str) = ("content-type", "text/plain; charset=utf-8");
const NOSNIFF: (&str, &str) = ("x-content-type-options", "nosniff");
const JSON: (&str, &str) = ("content-type", "application/json");
const ALLOW_POST: (&str, &str) = ("allow", "POST");

const ADDED: Want = Want {
    status: 200,
    headers: &[JSON],
    body: Body::AddResult,
};
const JSON_ERROR: Want = Want {
    status: 400,
    headers: &[TEXT, NOSNIFF],
    body: Body::Prefix("JSON unmarshal error: "),
};

/// A 400 decoding failure or handler error with exactly this text.
const fn refused(text: &'static str) -> Want {
    Want {
        status: 400,
        headers: &[TEXT, NOSNIFF],
        body: Body::Exact(text),
    }
}

/// One of the server's own error answers.
const fn short(status: u16) -> Want {
    Want {
        status,
        headers: &[],
        body: Body::ShortText,
    }
}

/// Rows, each a name and the bytes sent, that must all get one answer.
type Group = (Want, Vec<(&'static str, Vec<u8>)>);

/// Sends every row of every group to `server` and fails listing every row
/// that did not get its answer.
fn check_groups(server: &TestServer, groups: &[Group]) {
    let mut failures = Vec::new();
    let mut count = 0;
    for (want, rows) in groups {
        for (name, request) in rows {
            count += 1;
            let outcome = common::try_exchange(server.path(), request).and_then(|answer| {
                let found = mismatches(want, &answer);
                if found.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{}\n    got:  {answer}", found.join("; ")))
                }
            });
            if let Err(why) = outcome {
                failures.push(format!(
                    "{name}\n    sent: {}\n    want: {want:?}\n    why:  {why}",
                    show(request)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} rows failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

fn mismatches(want: &Want, answer: &Answer) -> Vec<String> {
    let mut found = Vec::new();
    if answer.status != want.status {
        found.push(format!(
            "status {} instead of {}",
            answer.status, want.status
        ));
    }
    for (name, value) in want.headers {
        let got = answer.header(name);
        if got != Some(*value) {
            found.push(format!("header {name} is {got:?} instead of {value:?}"));
        }
    }
    if let Err(why) = answer.check_connection_close() {
        found.push(why);
    }
    if !answer.interim.is_empty() {
        found.push(format!("unexpected interim answers {:?}", answer.interim));
    }
    let body_ok = match want.body {
        Body::Exact(text) => answer.body == text.as_bytes(),
        Body::Prefix(text) => answer.body.starts_with(text.as_bytes()),
        Body::AddResult => answer.body == add_answer().as_bytes(),
        Body::ShortText => {
            let is_text = std::str::from_utf8(&answer.body).is_ok();
            !answer.body.is_empty() && answer.body.len() <= 200 && is_text
        }
    };
    if !body_ok {
        found.push(format!("body is not {:?}", want.body));
    }
    found
}

fn add_body() -> String {
    pod_body("ADD", "c1")
}

fn add_answer() -> String {
    reference_add_result("/var/run/netns/c1")
}

/// `<method target> HTTP/1.1` with a dummy Host and this body.
fn request(method_target: &str, body: &str) -> Vec<u8> {
    let length = body.len();
    format!("{method_target} HTTP/1.1\r\nHost: dummy\r\nContent-Length: {length}\r\n\r\n{body}")
        .into_bytes()
}

/// `POST / HTTP/1.1` with these header lines (each ending in CRLF), a
/// Content-Length, and this body.
fn post_with(headers: &str, body: &str) -> Vec<u8> {
    let length = body.len();
    format!("POST / HTTP/1.1\r\n{headers}Content-Length: {length}\r\n\r\n{body}").into_bytes()
}

/// A POST whose body is `{"env":{<vars>}}`.
fn env_body(vars: &str) -> Vec<u8> {
    post(format!(r#"{{"env":{{{vars}}}}}"#).as_bytes())
}

fn bytes(text: &str) -> Vec<u8> {
    text.as_bytes().to_vec()
}

/// Routing and the server's own answers: every path, method and malformed
/// request of PROTOCOL.md sections 1, 2 and 5 that the wire table leaves
/// out.
#[test]
fn server_answers_each_request_as_the_protocol_says() {
    let server = TestServer::reference("http-rows");
    let add = add_body();
    let big_value = "a".repeat(20 * 1024);
    let many_headers: String = (0..100).map(|i| format!("X-Header-{i}: v\r\n")).collect();
    let not_found = Want {
        status: 404,
        headers: &[TEXT],
        body: Body::Exact("404 page not found\n"),
    };
    let not_allowed = Want {
        status: 405,
        headers: &[ALLOW_POST],
        body: Body::ShortText,
    };

    let groups: Vec<Group> = vec![
        // Sections 1 and 2: any Host, a query string, header names in any case.
        (
            ADDED,
            vec![
                (
                    "query string on / reaches the handler",
                    request("POST /?x=1", &add),
                ),
                ("empty query string on /", request("POST /?", &add)),
                ("query with several pairs", request("POST /?a=b&c=d", &add)),
                ("no Host header", post_with("", &add)),
                ("Host: localhost", post_with("Host: localhost\r\n", &add)),
                ("empty Host value", post_with("Host:\r\n", &add)),
                ("Host with a port", post_with("Host: [::1]:8080\r\n", &add)),
                (
                    "header names in any case",
                    post_with("hOST: x\r\ncontent-TYPE: y\r\n", &add),
                ),
            ],
        ),
        (
            JSON_ERROR,
            vec![
                ("Content-Length: 0 is an empty body", request("POST /", "")),
                // Nothing to wait for: no interim answer (the group checks).
                (
                    "Expect with an empty body",
                    post_with("Expect: 100-continue\r\n", ""),
                ),
            ],
        ),
        // Section 5: other methods on /.
        (
            not_allowed,
            vec![
                ("GET /", request("GET /", "")),
                ("GET / with a query string", request("GET /?x=1", "")),
                ("PUT / with a pod body", request("PUT /", &add)),
                ("DELETE /", request("DELETE /", "")),
                ("PATCH / with a pod body", request("PATCH /", &add)),
                ("OPTIONS /", request("OPTIONS /", "")),
                ("lowercase post is another method", request("post /", &add)),
            ],
        ),
        // Section 5: other paths.
        (
            not_found,
            vec![
                ("POST /other with a pod body", request("POST /other", &add)),
                ("GET /other", request("GET /other", "")),
                ("POST /cni", request("POST /cni", &add)),
                ("POST //", request("POST //", &add)),
                ("POST /other?x=/", request("POST /other?x=/", &add)),
                ("asterisk target", request("POST *", &add)),
            ],
        ),
        // Section 5: malformed HTTP.
        (
            short(400),
            vec![
                ("garbage request line", bytes("HELLO\r\n\r\n")),
                (
                    "request line without a target",
                    bytes("POST HTTP/1.1\r\n\r\n"),
                ),
                (
                    "header without a colon",
                    bytes("POST / HTTP/1.1\r\nHost dummy\r\n\r\n"),
                ),
                (
                    "NUL in a header value",
                    bytes("POST / HTTP/1.1\r\nX: a\0b\r\n\r\n"),
                ),
                (
                    "Content-Length not a number",
                    post_with("Content-Length: ten\r\n", ""),
                ),
                (
                    "negative Content-Length",
                    bytes("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
                ),
                (
                    "Content-Length beyond u64",
                    bytes("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n"),
                ),
                (
                    "two Content-Length values",
                    post_with("Content-Length: 3\r\n", "{}"),
                ),
                (
                    "Content-Length with chunked",
                    post_with("Transfer-Encoding: chunked\r\n", "0\r\n\r\n"),
                ),
                (
                    "chunk size not hex",
                    bytes("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
                ),
                (
                    "chunk longer than its size",
                    bytes("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n"),
                ),
            ],
        ),
        // Section 5: a header block too large.
        (
            short(431),
            vec![
                (
                    "one huge header value",
                    post_with(&format!("X-Big: {big_value}\r\n"), "{}"),
                ),
                ("too many headers", post_with(&many_headers, "{}")),
            ],
        ),
        // Section 5: transfer codings other than chunked.
        (
            short(501),
            vec![
                (
                    "gzip",
                    bytes("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
                ),
                (
                    "gzip then chunked",
                    bytes("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
                ),
                (
                    "identity",
                    bytes("POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n"),
                ),
            ],
        ),
        // Section 5: HTTP versions other than 1.x.
        (
            short(505),
            vec![
                (
                    "HTTP/2.0 preface",
                    bytes("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
                ),
                (
                    "HTTP/2 request line",
                    bytes("POST / HTTP/2\r\nHost: dummy\r\n\r\n"),
                ),
                ("HTTP/3.0", bytes("POST / HTTP/3.0\r\nHost: dummy\r\n\r\n")),
                ("HTTP/0.9", bytes("POST / HTTP/0.9\r\nHost: dummy\r\n\r\n")),
            ],
        ),
    ];
    check_groups(&server, &groups);
}

/// A head that keeps growing past the limit is refused as soon as it is
/// too large, not when (if ever) its end arrives.
#[test]
fn endless_header_block_is_refused_before_it_ends() {
    let server = TestServer::reference("http-endless");
    let mut stream = connect(server.path()).expect("connect");
    let mut head = b"POST / HTTP/1.1\r\nHost: dummy\r\n".to_vec();
    while head.len() < 40 * 1024 {
        head.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
    }
    // No blank line: the head never ends, and the connection stays open.
    write_tolerant(&mut stream, &head).expect("write");
    let raw = read_until_closed(&mut stream).expect("an answer before the head ends");
    let answer = Answer::parse(&raw).expect("a whole answer");
    assert_eq!(answer.status, 431, "{answer}");
    answer.check_connection_close().unwrap();
}

/// Every decoding failure and handler error of the wire table, seen for
/// the headers the table does not list: plain text, `nosniff`, and the
/// text ending in a newline.
#[test]
fn decoding_errors_are_plain_text_with_nosniff_and_a_newline() {
    let server = TestServer::reference("http-decode-headers");
    let cases: Vec<_> = wire_cases()
        .into_iter()
        .filter(|case| case.is_body && case.status == 400)
        .collect();
    assert!(cases.len() >= 10, "the wire table lost its decoding rows");

    let mut failures = Vec::new();
    for case in &cases {
        let answer = common::exchange(server.path(), &case.request);
        let mut found = Vec::new();
        for (name, want) in [TEXT, NOSNIFF] {
            if answer.header(name) != Some(want) {
                found.push(format!("{name} is {:?}", answer.header(name)));
            }
        }
        if !answer.body.ends_with(b"\n") {
            found.push("body does not end in a newline".to_owned());
        }
        if answer.body[..answer.body.len().saturating_sub(1)].contains(&b'\n') {
            found.push("body holds more than one line".to_owned());
        }
        if let Err(why) = answer.check_connection_close() {
            found.push(why);
        }
        if !found.is_empty() {
            failures.push(format!(
                "{}: {}\n    got: {answer}",
                case.name,
                found.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Section 2's rules where this server deliberately differs from Go, and
/// section 3's edges, as answered by the reference handler.
#[test]
fn request_body_rules_of_sections_2_and_3() {
    let server = TestServer::reference("http-body-rules");
    // Every variable a pod request needs but the command.
    let pod = concat!(
        r#""CNI_CONTAINERID":"c1","CNI_NETNS":"/var/run/netns/c1","#,
        r#""CNI_ARGS":"K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p""#
    );
    let add = format!(r#""CNI_COMMAND":"ADD",{pod}"#);
    let up_to_args =
        r#""CNI_COMMAND":"ADD","CNI_CONTAINERID":"c1","CNI_NETNS":"/var/run/netns/c1""#;
    let with_args = |args: &str| env_body(&format!(r#"{up_to_args},"CNI_ARGS":"{args}""#));
    let whole = |json: String| post(json.as_bytes());

    let groups: Vec<Group> = vec![
        (
            refused("unexpected or missing CNI_COMMAND\n"),
            vec![
                (
                    "key names match in lowercase only",
                    whole(format!(r#"{{"Env":{{{add}}}}}"#)),
                ),
                (
                    "env null is an empty env",
                    whole(r#"{"env":null}"#.to_owned()),
                ),
                ("an empty object is an empty env", whole("{}".to_owned())),
            ],
        ),
        (
            JSON_ERROR,
            vec![
                (
                    "duplicate env key",
                    whole(format!(r#"{{"env":{{{add}}},"env":{{}}}}"#)),
                ),
                (
                    "duplicate config key",
                    whole(r#"{"config":"","config":""}"#.to_owned()),
                ),
                (
                    "duplicate env variable",
                    env_body(&format!(r#"{add},"CNI_NETNS":"/x""#)),
                ),
                (
                    "config without padding",
                    whole(format!(r#"{{"env":{{{add}}},"config":"e30"}}"#)),
                ),
                (
                    "config a number",
                    whole(format!(r#"{{"env":{{{add}}},"config":5}}"#)),
                ),
                (
                    "env an array",
                    whole(r#"{"env":["CNI_COMMAND=ADD"]}"#.to_owned()),
                ),
                ("body null", whole("null".to_owned())),
            ],
        ),
        (
            refused("unhandled CNI command \n"),
            vec![(
                "an empty CNI_COMMAND passes decoding",
                env_body(&format!(r#""CNI_COMMAND":"",{pod}"#)),
            )],
        ),
        (
            refused("unhandled CNI command add\n"),
            vec![(
                "commands match exactly",
                env_body(&format!(r#""CNI_COMMAND":"add",{pod}"#)),
            )],
        ),
        (
            refused("missing CNI_CONTAINERID\n"),
            vec![(
                "CNI_CONTAINERID before CNI_NETNS",
                env_body(r#""CNI_COMMAND":"ADD""#),
            )],
        ),
        (
            refused("invalid CNI_ARG 'x'\n"),
            vec![("pieces checked before names", with_args("=;x"))],
        ),
        (
            refused("invalid CNI_ARG '==b'\n"),
            vec![("a piece with two =", with_args("K8S_POD_NAMESPACE=a;==b"))],
        ),
        (
            refused("missing K8S_POD_NAMESPACE\n"),
            vec![("K8S_POD_NAMESPACE before K8S_POD_NAME", with_args("A=1"))],
        ),
        (
            ADDED,
            vec![
                (
                    "an empty key and value is a piece",
                    with_args("=;K8S_POD_NAMESPACE=n;K8S_POD_NAME=p"),
                ),
                (
                    "an empty pod name is present",
                    with_args("K8S_POD_NAMESPACE=n;K8S_POD_NAME="),
                ),
                (
                    "whitespace around the JSON",
                    whole(format!(" \n{{\"env\":{{{add}}}}}\n ")),
                ),
            ],
        ),
        (
            Want {
                status: 200,
                headers: &[JSON],
                body: Body::Exact(""),
            },
            vec![(
                "DEL answers an empty body",
                env_body(&format!(r#""CNI_COMMAND":"DEL",{pod}"#)),
            )],
        ),
    ];
    check_groups(&server, &groups);
}

/// The request carries the shim's whole environment, secrets included: no
/// answer may echo a value from it (the Go server dumped the whole env when
/// CNI_ARGS was missing).
#[test]
fn error_answers_never_echo_environment_values() {
    let server = TestServer::reference("http-secrets");
    let secret = "s3cr3t-t0ken-value";
    let token = format!(r#""TOKEN":"{secret}""#);
    let start = r#""CNI_COMMAND":"ADD","CNI_CONTAINERID":"c","CNI_NETNS":"/n""#;
    let args = r#""CNI_ARGS":"K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p""#;
    let bodies = [
        ("missing CNI_ARGS", env_body(&format!("{start},{token}"))),
        ("missing CNI_COMMAND", env_body(&token)),
        (
            "missing pod name",
            env_body(&format!(
                r#"{start},"CNI_ARGS":"K8S_POD_NAMESPACE=n",{token}"#
            )),
        ),
        ("duplicate variable", env_body(&format!("{token},{token}"))),
        (
            "truncated after the value",
            post(format!(r#"{{"env":{{{token}"#).as_bytes()),
        ),
        (
            "config the secret",
            post(format!(r#"{{"env":{{}},"config":"{secret}"}}"#).as_bytes()),
        ),
        (
            "unknown command",
            env_body(&format!(r#"{start},{args},{token}"#).replace("ADD", "FROB")),
        ),
    ];
    let mut failures = Vec::new();
    for (name, request) in &bodies {
        let answer = common::exchange(server.path(), request);
        if answer.status != 400 {
            failures.push(format!("{name}: status {} in {answer}", answer.status));
        }
        if answer.text().contains(secret) {
            failures.push(format!("{name}: the answer echoes the secret: {answer}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Starts a server whose handler keeps every request it is given and
/// answers with an empty success.
fn recording_server(tag: &str) -> (TestServer, Arc<Mutex<Vec<PodRequest>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let server = TestServer::start(tag, move |request, reply| {
        record.lock().unwrap().push(request);
        reply.success(Vec::new());
    });
    (server, seen)
}

/// Section 3's last paragraph: what the handler gets out of a request.
#[test]
fn pod_request_carries_what_the_shim_sent() {
    let (server, seen) = recording_server("http-pod-request");
    // {"cniVersion":"1.0.0"} in base64.
    let body = concat!(
        r#"{"env":{"CNI_COMMAND":"ADD","CNI_CONTAINERID":"sandbox-1","#,
        r#""CNI_NETNS":"/var/run/netns/p1","#,
        r#""CNI_ARGS":" IgnoreUnknown = 1 ;K8S_POD_NAMESPACE=first;"#,
        r#"K8S_POD_NAMESPACE=kube-system; K8S_POD_NAME = coredns-0 ","#,
        r#""CNI_PATH":"/opt/cni/bin","OTHER":"x=y"},"#,
        r#""config":"eyJjbmlWZXJzaW9uIjoiMS4wLjAifQ==","ignored":{"a":[1,2]}}"#
    );
    let answer = server.exchange(&post(body.as_bytes()));
    assert_eq!(answer.status, 200, "{answer}");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "one request, one handler call");
    let request = &seen[0];
    assert_eq!(request.command.as_str(), "ADD");
    assert_eq!(request.sandbox_id, "sandbox-1");
    assert_eq!(request.netns, "/var/run/netns/p1");
    assert_eq!(request.ifname, "eth0", "CNI_IFNAME absent means eth0");
    assert_eq!(
        request.pod_namespace, "kube-system",
        "a later duplicate key wins"
    );
    assert_eq!(request.pod_name, "coredns-0", "keys and values are trimmed");
    let args: Vec<(&str, &str)> = request
        .cni_args
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        args,
        [
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAME", "coredns-0"),
            ("K8S_POD_NAMESPACE", "kube-system")
        ]
    );
    assert_eq!(
        request.env.len(),
        6,
        "the whole env: {:?}",
        request.env.names().collect::<Vec<_>>()
    );
    assert_eq!(request.env.get("OTHER"), Some("x=y"));
    assert_eq!(request.config, br#"{"cniVersion":"1.0.0"}"#);
}

/// Section 4: every command string reaches the handler as given; the
/// server judges none of them.
#[test]
fn every_command_reaches_the_handler_as_given() {
    let (server, seen) = recording_server("http-commands");
    let commands = [
        "ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS", "UPDATE", "FROB", "add", "",
    ];
    let mut failures = Vec::new();
    for command in commands {
        let answer = server.exchange(&post(pod_body(command, "c1").as_bytes()));
        if answer.status != 200 {
            failures.push(format!("{command:?}: {answer}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let got: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.command.as_str().to_owned())
        .collect();
    assert_eq!(got, commands);
}

/// Section 1: one request per connection. A second request written on the
/// same connection is never handled, whatever the first one was.
#[test]
fn pipelined_second_request_is_never_processed() {
    let (server, seen) = recording_server("http-pipelined");
    let second = post(pod_body("DEL", "second").as_bytes());
    let with_second = |first: Vec<u8>| [first, second.clone()].concat();
    let first_add = post(pod_body("ADD", "first").as_bytes());
    let first_chunked = {
        let body = pod_body("CHECK", "first-chunked");
        format!(
            "POST / HTTP/1.1\r\nHost: dummy\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
        .into_bytes()
    };
    let first_expect = {
        let body = pod_body("UPDATE", "first-expect");
        format!(
            "POST / HTTP/1.1\r\nHost: dummy\r\nExpect: 100-continue\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };

    let rows: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        (
            "after a pod request",
            with_second(first_add),
            200,
            Some("ADD first"),
        ),
        (
            "after a chunked pod request",
            with_second(first_chunked),
            200,
            Some("CHECK first-chunked"),
        ),
        (
            "after an expect-100 pod request",
            with_second(first_expect),
            200,
            Some("UPDATE first-expect"),
        ),
        (
            "after a 404",
            with_second(b"POST /other HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec()),
            404,
            None,
        ),
        (
            "after a 405",
            with_second(b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            405,
            None,
        ),
        (
            "after a decoding error",
            with_second(post(b"{}")),
            400,
            None,
        ),
    ];
    let mut failures = Vec::new();
    for (name, request, status, handled) in &rows {
        let before = seen.lock().unwrap().len();
        // One write: both requests are in the server's first read.
        let answer = common::exchange(server.path(), request);
        if answer.status != *status {
            failures.push(format!("{name}: {answer}"));
        }
        let calls: Vec<String> = seen.lock().unwrap()[before..]
            .iter()
            .map(|r| format!("{} {}", r.command, r.sandbox_id))
            .collect();
        let want: Vec<String> = handled.iter().map(|s| s.to_string()).collect();
        if calls != want {
            failures.push(format!(
                "{name}: handler calls {calls:?} instead of {want:?}"
            ));
        }
    }

    // The server went on serving, and nothing was handled in between.
    let before = seen.lock().unwrap().len();
    let answer = server.exchange(&post(pod_body("DEL", "last").as_bytes()));
    assert_eq!(answer.status, 200, "{answer}");
    let after: Vec<String> = seen.lock().unwrap()[before..]
        .iter()
        .map(|r| r.sandbox_id.clone())
        .collect();
    assert_eq!(after, ["last"]);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The requests the split tests send, with the answer each must get.
fn split_requests() -> Vec<(&'static str, Vec<u8>, Vec<String>)> {
    let body = add_body();
    let chunked = {
        let (a, b) = body.split_at(body.len() / 3);
        format!(
            "POST / HTTP/1.1\r\nHost: dummy\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x}\r\n{a}\r\n{:X};ext=1\r\n{b}\r\n0\r\nX-Trailer: t\r\n\r\n",
            a.len(),
            b.len()
        )
    };
    let expect = |version: &str| {
        format!(
            "POST / HTTP/1.{version}\r\nHost: dummy\r\nExpect: 100-continue\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let continue_line = vec!["HTTP/1.1 100 Continue".to_owned()];
    vec![
        ("Content-Length", post(body.as_bytes()), vec![]),
        (
            "chunked with extension and trailer",
            chunked.into_bytes(),
            vec![],
        ),
        (
            "expect 100-continue",
            expect("1").into_bytes(),
            continue_line,
        ),
        ("HTTP/1.0 ignores Expect", expect("0").into_bytes(), vec![]),
    ]
}

fn check_split_answer(want_interim: &[String], answer: &Answer) -> Result<(), String> {
    if answer.status != 200 || answer.body != add_answer().as_bytes() {
        return Err(format!("not the ADD result: {answer}"));
    }
    if answer.interim != want_interim {
        return Err(format!(
            "interim {:?} instead of {want_interim:?}",
            answer.interim
        ));
    }
    answer.check_connection_close()
}

/// The same request split in two at every byte offset gets the same
/// answer as when it is sent whole.
#[test]
fn request_split_at_every_offset_gets_the_same_answer() {
    let server = TestServer::reference("http-split");
    let mut failures = Vec::new();

    for (name, request, interim) in split_requests() {
        let whole = common::exchange(server.path(), &request);
        if let Err(why) = check_split_answer(&interim, &whole) {
            failures.push(format!("{name}, sent whole: {why}"));
            continue;
        }

        failures.extend(common::split_failures(
            server.path(),
            name,
            &request,
            &whole,
        ));
    }
    failures.truncate(20);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same request sent one byte at a time gets the same answer.
#[test]
fn request_sent_one_byte_at_a_time_gets_the_same_answer() {
    let server = TestServer::reference("http-bytewise");
    let mut failures = Vec::new();
    for (name, request, interim) in split_requests() {
        let answer = common::exchange_byte_at_a_time(server.path(), &request);
        match answer.and_then(|answer| check_split_answer(&interim, &answer)) {
            Ok(()) => {}
            Err(why) => failures.push(format!("{name}: {why}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What one curl run gave.
struct CurlRun {
    /// `%{http_code}`.
    code: String,
    /// Every header block curl received, interim ones included.
    headers: String,
    body: Vec<u8>,
    /// curl's `-v` trace: the request it sent is on lines starting "> ".
    trace: String,
}

/// Runs curl against the socket of `server`, with these arguments before
/// the URL and `stdin` fed to it.
fn curl(server: &TestServer, args: &[&str], stdin: &[u8]) -> CurlRun {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let headers = server.dir().join("curl-headers");
    let body = server.dir().join("curl-body");
    let mut child = Command::new("curl")
        .args(["-v", "-sS", "--max-time", "10", "-w", "%{http_code}"])
        .arg("--unix-socket")
        .arg(server.path())
        .arg("-D")
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(args)
        .arg("http://dummy/")
        .current_dir(server.dir().path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl is installed (apt package curl)");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("feed curl");
    drop(input);
    let output = child.wait_with_output().expect("curl runs");
    let trace = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "curl {args:?} failed: {trace}");

    CurlRun {
        code: String::from_utf8_lossy(&output.stdout).into_owned(),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body: std::fs::read(&body).unwrap_or_default(),
        trace,
    }
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines()
        .any(|l| l.trim_end().eq_ignore_ascii_case(line))
}

/// Fails the test, showing `text`, unless it has `line` (any case).
#[track_caller]
fn assert_has_line(text: &str, line: &str) {
    assert!(has_line(text, line), "{text}");
}

#[test]
fn curl_posts_a_file_with_content_length() {
    let server = TestServer::reference("curl-file");
    let file = server.dir().join("request.json");
    std::fs::write(&file, add_body()).expect("write the request");

    let run = curl(&server, &["--data-binary", "@request.json"], b"");
    assert_eq!(run.code, "200", "{}", run.trace);
    assert_eq!(run.body, add_answer().as_bytes());
    assert!(has_line(
        &run.trace,
        &format!("> Content-Length: {}", add_body().len())
    ));
    assert_has_line(&run.headers, "Content-Type: application/json");
    assert_has_line(&run.headers, "Connection: close");
}

#[test]
fn curl_uploads_stdin_chunked_after_100_continue() {
    let server = TestServer::reference("curl-stdin");
    let run = curl(&server, &["-X", "POST", "-T", "-"], add_body().as_bytes());

    // The request had the shape the test is about.
    assert_has_line(&run.trace, "> POST / HTTP/1.1");
    assert_has_line(&run.trace, "> Transfer-Encoding: chunked");
    assert_has_line(&run.trace, "> Expect: 100-continue");

    assert_eq!(run.code, "200", "{}", run.trace);
    assert_has_line(&run.headers, "HTTP/1.1 100 Continue");
    assert_eq!(run.body, add_answer().as_bytes());
    assert_has_line(&run.headers, "Connection: close");
}

#[test]
fn curl_get_is_405_with_allow_post() {
    let server = TestServer::reference("curl-get");
    let run = curl(&server, &[], b"");
    assert_eq!(run.code, "405", "{}", run.trace);
    assert_has_line(&run.headers, "Allow: POST");
    assert_has_line(&run.headers, "Connection: close");
}
