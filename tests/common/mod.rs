//! Shared helpers for the integration tests: a server on a real Unix socket
//! in a folder of its own, a client that sends raw bytes and parses the
//! whole answer, and the reader of the shared protocol cases.
//!
//! Every test file uses a different part of this module, so unused items
//! are expected in each of them.

#![allow(dead_code)]

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cniserver::{PodRequest, ReplyHandle, Server, ServerConfig, ShutdownHandle};

/// How long any socket read or write may block before the test gives up.
/// A guard against hangs, never an assertion about speed.
pub const IO_GUARD: Duration = Duration::from_secs(10);

/// The ADD result the reference handler gives for this netns.
pub fn reference_add_result(netns: &str) -> String {
    format!(
        concat!(
            r#"{{"cniVersion":"0.4.0","interfaces":[{{"name":"eth0","sandbox":"{}"}}],"#,
            r#""ips":[{{"version":"4","address":"10.0.0.2/24","gateway":"10.0.0.1","#,
            r#""interface":0}}]}}"#
        ),
        netns
    )
}

// ---------------------------------------------------------------------------
// Folders

/// A folder of its own for one test under the system temp folder, removed
/// with everything in it when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, empty folder whose name starts with `tag`.
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // Socket paths must stay under about 100 bytes, so the tag is cut.
        let tag: String = tag.chars().take(24).collect();
        let name = format!(
            "cnis-{tag}-{}-{}-{nanos:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let path = std::env::temp_dir().join(name);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the folder.
    pub fn join(&self, rest: &str) -> PathBuf {
        self.path.join(rest)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// Servers

/// A server serving on a background thread until stopped or dropped.
pub struct Serving {
    path: PathBuf,
    stop: ShutdownHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Serving {
    /// Runs `server` with `handler` on a thread of its own.
    pub fn spawn<H>(server: Server, handler: H) -> Serving
    where
        H: FnMut(PodRequest, ReplyHandle) + Send + 'static,
    {
        let path = server.path().to_owned();
        let stop = server.shutdown_handle();
        let thread = std::thread::Builder::new()
            .name("cniserver-under-test".into())
            .spawn(move || server.serve(handler))
            .expect("cannot start the server thread");
        Serving {
            path,
            stop,
            thread: Some(thread),
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle to stop the server from elsewhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.stop.clone()
    }

    /// Asks the server to stop and waits for `serve` to return.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop.shutdown();
        self.join()
    }

    /// Waits for `serve` to return, without asking it to stop.
    pub fn join(&mut self) -> io::Result<()> {
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the server thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop.shutdown();
            let _ = self.join();
        }
    }
}

/// A server on `<fresh temp folder>/run/cni.sock`, serving on a background
/// thread. Dropping it stops the server, then removes the folder.
pub struct TestServer {
    // Declared first so that it is dropped, and the server stopped, before
    // the folder goes.
    serving: Serving,
    dir: TempDir,
}

impl TestServer {
    /// Starts a server with `handler` in a folder named after `tag`.
    pub fn start<H>(tag: &str, handler: H) -> TestServer
    where
        H: FnMut(PodRequest, ReplyHandle) + Send + 'static,
    {
        TestServer::start_with(tag, ServerConfig::default(), handler)
    }

    /// Starts a server with this configuration.
    pub fn start_with<H>(tag: &str, config: ServerConfig, handler: H) -> TestServer
    where
        H: FnMut(PodRequest, ReplyHandle) + Send + 'static,
    {
        let dir = TempDir::new(tag);
        let path = dir.join("run/cni.sock");
        let server = Server::bind_with(&path, config)
            .unwrap_or_else(|e| panic!("cannot bind the test server: {e}"));
        TestServer {
            serving: Serving::spawn(server, handler),
            dir,
        }
    }

    /// Starts a server running the protocol's reference handler.
    pub fn reference(tag: &str) -> TestServer {
        TestServer::start(tag, |request, reply| {
            reply.send(cniserver::reference::answer(&request))
        })
    }

    /// Starts a server whose handler gives each request to `at_once`,
    /// which answers those it can and hands back the others; those go to
    /// the test, unanswered, through the channel.
    pub fn holding<H>(
        tag: &str,
        config: ServerConfig,
        mut at_once: H,
    ) -> (TestServer, mpsc::Receiver<(PodRequest, ReplyHandle)>)
    where
        H: FnMut(PodRequest, ReplyHandle) -> Option<(PodRequest, ReplyHandle)> + Send + 'static,
    {
        let (held, take) = mpsc::channel();
        let server = TestServer::start_with(tag, config, move |request, reply| {
            if let Some(unanswered) = at_once(request, reply) {
                let _ = held.send(unanswered);
            }
        });
        (server, take)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        self.serving.path()
    }

    /// The test's folder.
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }

    /// A handle to stop the server from elsewhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.serving.shutdown_handle()
    }

    /// Sends `request` as is and returns the parsed answer; panics with the
    /// reason if there is none.
    pub fn exchange(&self, request: &[u8]) -> Answer {
        exchange(self.path(), request)
    }

    /// [`TestServer::exchange`] on a thread of its own.
    pub fn exchange_in_background(&self, request: Vec<u8>) -> JoinHandle<Answer> {
        let path = self.path().to_owned();
        std::thread::spawn(move || exchange(&path, &request))
    }

    /// Stops the server and returns what `serve` returned. The folder stays
    /// until the value is dropped.
    pub fn stop(self) -> (io::Result<()>, TempDir) {
        let TestServer { serving, dir } = self;
        (serving.stop(), dir)
    }
}

// ---------------------------------------------------------------------------
// Clients

/// Connects to the socket with read and write guards set.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(IO_GUARD))?;
    stream.set_write_timeout(Some(IO_GUARD))?;
    Ok(stream)
}

/// Writes all of `bytes`. A server that answers early (an error found in
/// the head) may close before the rest is written: that is not an error
/// here, the answer is what the test looks at.
pub fn write_tolerant(stream: &mut UnixStream, bytes: &[u8]) -> Result<(), String> {
    match stream.write_all(bytes) {
        Ok(()) => Ok(()),
        Err(e) if closed_by_peer(&e) => Ok(()),
        Err(e) => Err(format!("cannot write the request: {e}")),
    }
}

/// Reads until the server closes the connection.
///
/// A Unix socket closed with unread bytes in it (a pipelined request, the
/// rest of an oversized head) reports "connection reset" once its buffered
/// data is read; that counts as the end here.
pub fn read_until_closed(stream: &mut UnixStream) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(raw),
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(raw),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "the server did not close the connection within {IO_GUARD:?}; got so far: {}",
                    show(&raw)
                ))
            }
            Err(e) => return Err(format!("cannot read the answer: {e}")),
        }
    }
}

fn closed_by_peer(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// Sends `request` as is on a new connection and parses the whole answer.
pub fn try_exchange(path: &Path, request: &[u8]) -> Result<Answer, String> {
    let mut stream = connect(path).map_err(|e| format!("cannot connect: {e}"))?;
    write_tolerant(&mut stream, request)?;
    let raw = read_until_closed(&mut stream)?;
    Answer::parse(&raw)
}

/// [`try_exchange`], panicking with the reason when there is no answer.
pub fn exchange(path: &Path, request: &[u8]) -> Answer {
    try_exchange(path, request).unwrap_or_else(|e| panic!("request {}: {e}", show(request)))
}

/// Sends `request` split in two at every byte offset and describes each
/// answer that is not `whole`, the answer to it sent at once; `name` opens
/// each description.
///
/// Many connections run at once: each gets its first part, then, after a
/// pause that lets the server read those parts on their own, the rest.
pub fn split_failures(path: &Path, name: &str, request: &[u8], whole: &Answer) -> Vec<String> {
    let mut failures = Vec::new();
    let offsets: Vec<usize> = (1..request.len()).collect();
    for batch in offsets.chunks(64) {
        let mut streams = Vec::new();
        for &offset in batch {
            let mut stream = connect(path).expect("connect");
            write_tolerant(&mut stream, &request[..offset]).expect("first part");
            streams.push((offset, stream));
        }
        std::thread::sleep(Duration::from_millis(20));
        for (offset, stream) in &mut streams {
            write_tolerant(stream, &request[*offset..]).expect("second part");
        }
        for (offset, mut stream) in streams {
            match read_until_closed(&mut stream).and_then(|raw| Answer::parse(&raw)) {
                Ok(answer) if answer == *whole => {}
                Ok(answer) => failures.push(format!(
                    "{name}, split at {offset} ({} | {}):\n    got:   {answer}\n    whole: {whole}",
                    show(&request[..offset]),
                    show(&request[offset..])
                )),
                Err(why) => failures.push(format!("{name}, split at {offset}: {why}")),
            }
        }
    }
    failures
}

/// Sends `request` one byte at a time on a new connection and parses the
/// whole answer.
pub fn exchange_byte_at_a_time(path: &Path, request: &[u8]) -> Result<Answer, String> {
    let mut stream = connect(path).expect("connect");
    for byte in request.chunks(1) {
        write_tolerant(&mut stream, byte).expect("write");
        // Long enough for the server to take most bytes in reads of their
        // own.
        std::thread::sleep(Duration::from_micros(300));
    }
    read_until_closed(&mut stream).and_then(|raw| Answer::parse(&raw))
}

/// A `POST /` with this body, as the Go shim sends it.
pub fn post(body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST / HTTP/1.1\r\nHost: dummy\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// A valid request body for `command` whose netns and container ID derive
/// from `container_id` (which must need no JSON escaping).
pub fn pod_body(command: &str, container_id: &str) -> String {
    format!(
        concat!(
            r#"{{"env":{{"CNI_COMMAND":"{command}","CNI_CONTAINERID":"{id}","#,
            r#""CNI_NETNS":"/var/run/netns/{id}","CNI_IFNAME":"eth0","CNI_PATH":"/opt/cni/bin","#,
            r#""CNI_ARGS":"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"}},"#,
            r#""config":"e30="}}"#
        ),
        command = command,
        id = container_id
    )
}

/// Bytes for a failure message: printable, escaped, and cut when long.
pub fn show(bytes: &[u8]) -> String {
    const LIMIT: usize = 400;
    let text = String::from_utf8_lossy(bytes);
    let escaped: String = text.escape_debug().collect();
    if escaped.chars().count() > LIMIT {
        let head: String = escaped.chars().take(LIMIT).collect();
        format!("\"{head}\"... ({} bytes)", bytes.len())
    } else {
        format!("\"{escaped}\"")
    }
}

// ---------------------------------------------------------------------------
// Answers

/// One whole answer as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Interim (1xx) status lines, in order, before the final one.
    pub interim: Vec<String>,
    /// The final status line.
    pub status_line: String,
    /// The final status code.
    pub status: u16,
    /// The final answer's headers, in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, exactly `Content-Length` bytes.
    pub body: Vec<u8>,
}

impl Answer {
    /// Parses everything the server sent on one connection. Anything but
    /// interim answers and then one answer with a `Content-Length` body and
    /// nothing after it is an error.
    pub fn parse(raw: &[u8]) -> Result<Answer, String> {
        let fail = |why: String| Err(format!("{why}; the server sent {}", show(raw)));
        let mut rest = raw;
        let mut interim = Vec::new();

        loop {
            let Some(head_end) = find(rest, b"\r\n\r\n") else {
                return fail("no complete answer head".into());
            };
            let head = match std::str::from_utf8(&rest[..head_end]) {
                Ok(head) => head,
                Err(_) => return fail("answer head is not UTF-8".into()),
            };
            rest = &rest[head_end + 4..];

            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default().to_owned();
            let status = match parse_status_line(&status_line) {
                Ok(status) => status,
                Err(why) => return fail(why),
            };
            let mut headers = Vec::new();
            for line in lines {
                match line.split_once(':') {
                    Some((name, value)) if !name.is_empty() && !name.contains(' ') => {
                        headers.push((name.to_owned(), value.trim().to_owned()))
                    }
                    _ => return fail(format!("bad header line {line:?}")),
                }
            }

            if (100..200).contains(&status) {
                if !headers.is_empty() {
                    return fail(format!("interim answer {status_line:?} has headers"));
                }
                interim.push(status_line);
                continue;
            }

            let lengths: Vec<&str> = headers
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .map(|(_, value)| value.as_str())
                .collect();
            let length = match lengths.as_slice() {
                [one] => match one.parse::<usize>() {
                    Ok(n) => n,
                    Err(_) => return fail(format!("bad Content-Length {one:?}")),
                },
                _ => return fail(format!("{} Content-Length headers", lengths.len())),
            };
            if rest.len() != length {
                return fail(format!(
                    "Content-Length says {length} bytes but {} followed the head",
                    rest.len()
                ));
            }
            return Ok(Answer {
                interim,
                status_line,
                status,
                headers,
                body: rest.to_vec(),
            });
        }
    }

    /// The value of the header `name` (any case); `None` when absent.
    /// Panics when it is present more than once, which no answer may do.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        let first = values.next();
        assert!(values.next().is_none(), "header {name} repeated in {self}");
        first
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Checks what every answer of this server must carry: it closes the
    /// connection and says so.
    pub fn check_connection_close(&self) -> Result<(), String> {
        match self.header("connection") {
            Some(value) if value.eq_ignore_ascii_case("close") => Ok(()),
            other => Err(format!("Connection header is {other:?}, want \"close\"")),
        }
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.interim {
            write!(f, "[{line}] ")?;
        }
        write!(f, "{}", self.status_line)?;
        for (name, value) in &self.headers {
            write!(f, " | {name}: {value}")?;
        }
        write!(f, " | body {}", show(&self.body))
    }
}

fn parse_status_line(line: &str) -> Result<u16, String> {
    let Some(rest) = line.strip_prefix("HTTP/1.1 ") else {
        return Err(format!("status line {line:?} does not start with HTTP/1.1"));
    };
    let code = rest.split(' ').next().unwrap_or_default();
    match code.parse::<u16>() {
        Ok(status) if code.len() == 3 => Ok(status),
        _ => Err(format!("status line {line:?} has no 3-digit status")),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// The shared protocol cases

/// The cases file, copied verbatim from the shared protocol folder.
pub fn wire_fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wire.json")
}

/// One row of `wire.json`.
#[derive(Debug, Clone)]
pub struct WireCase {
    pub name: String,
    /// The bytes to write to the socket.
    pub request: Vec<u8>,
    pub status: u16,
    /// The exact body, if given.
    pub response: Option<String>,
    /// The start of the body, if given.
    pub response_prefix: Option<String>,
    /// The expected `Content-Type`, if given.
    pub content_type: Option<String>,
    /// Headers (lowercase names) that must be present with these values.
    pub headers: Vec<(String, String)>,
    /// An interim status line expected before the final one.
    pub interim: Option<String>,
    /// Whether the case is a body POSTed to `/` (rather than raw HTTP).
    pub is_body: bool,
}

/// Reads every case of the fixture; panics naming the row on a bad one.
pub fn wire_cases() -> Vec<WireCase> {
    let path = wire_fixture_path();
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let root: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let Some(cases) = root["cases"].as_array() else {
        panic!("{}: no \"cases\" array", path.display());
    };

    let text_of = |case: &serde_json::Value, key: &str| case[key].as_str().map(str::to_owned);
    cases
        .iter()
        .enumerate()
        .map(|(index, case)| {
            let name = text_of(case, "name").unwrap_or_else(|| format!("case #{index}"));
            let (request, is_body) = match (text_of(case, "body"), text_of(case, "http")) {
                (Some(body), None) => (post(body.as_bytes()), true),
                (None, Some(http)) => (http.into_bytes(), false),
                _ => panic!("{name}: needs exactly one of \"body\" and \"http\""),
            };
            let status = case["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .unwrap_or_else(|| panic!("{name}: no status"));
            let headers = match &case["headers"] {
                serde_json::Value::Object(fields) => fields
                    .iter()
                    .map(|(k, v)| {
                        let v = v.as_str().unwrap_or_else(|| panic!("{name}: header {k}"));
                        (k.clone(), v.to_owned())
                    })
                    .collect(),
                serde_json::Value::Null => Vec::new(),
                _ => panic!("{name}: \"headers\" is not an object"),
            };
            WireCase {
                request,
                status,
                response: text_of(case, "response"),
                response_prefix: text_of(case, "response_prefix"),
                content_type: text_of(case, "content_type"),
                headers,
                interim: text_of(case, "interim"),
                is_body,
                name,
            }
        })
        .collect()
}
