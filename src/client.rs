//! The client side of the protocol: one request to the CNI server, one
//! answer.
//!
//! The shim runs this once per exec, so it is built for start-up cost: a
//! blocking [`UnixStream`], the request laid out by hand, httparse for the
//! answer's head, no threads and no reactor. Reading the answer is a pure
//! push parser, [`AnswerReader`], so it can be tested split at every offset
//! without a socket; [`send`] only moves bytes between the socket and it.
//!
//! # Timeouts
//!
//! Two bounds keep a shim from hanging its runtime. The connect timeout
//! covers a server that exists but accepts nothing (its listen backlog is
//! full): a blocking connect to a Unix socket waits for room in the backlog
//! for as long as the socket's send timeout allows, so the socket is made
//! with that timeout set before it connects, which std's `connect` cannot
//! do. The overall timeout covers everything from connecting to the last
//! byte of the answer.
//!
//! # Examples
//!
//! ```no_run
//! use std::path::Path;
//!
//! use cniserver::{client, CniRequest};
//!
//! let request = CniRequest {
//!     env: [("CNI_COMMAND", "DEL")].into_iter().collect(),
//!     config: br#"{"cniVersion":"1.1.0","name":"pods"}"#.to_vec(),
//! };
//!
//! let answer = client::send(Path::new(cniserver::DEFAULT_SOCKET_PATH), &request)?;
//! if answer.status != 200 {
//!     eprintln!("the server refused: {}", String::from_utf8_lossy(&answer.body));
//! }
//! # Ok::<(), client::ClientError>(())
//! ```

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cni::CniRequest;
use crate::http::{ChunkedDecoder, HttpError};

/// How long to wait for the server to accept the connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the whole exchange may take, connecting included.
///
/// It is longer than the server's default request timeout (10 s) and reply
/// timeout (150 s) together, so that a slow handler's own 504 reaches the
/// runtime rather than a timeout of the shim's.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(170);

/// The largest answer body accepted. CNI results are a few KiB at most.
pub const DEFAULT_MAX_ANSWER_BODY: usize = 16 * 1024 * 1024;

/// The largest answer head accepted, status line and headers together.
const MAX_ANSWER_HEAD: usize = 64 * 1024;

/// The most header fields an answer head may have.
const MAX_ANSWER_HEADERS: usize = 64;

/// How a client bounds its wait and the answer it accepts.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long to wait for the server to accept the connection.
    pub connect_timeout: Duration,
    /// How long the whole exchange may take, connecting included.
    pub timeout: Duration,
    /// The largest answer body accepted.
    pub max_answer_body: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            timeout: DEFAULT_TIMEOUT,
            max_answer_body: DEFAULT_MAX_ANSWER_BODY,
        }
    }
}

/// The server's answer: its status code and its body, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code; 200 is success and anything else failure.
    pub status: u16,
    /// The body: a CNI result (or nothing) on success, an error otherwise.
    pub body: Vec<u8>,
}

/// Sends `request` to the server listening at `socket` and reads its
/// answer, with the default timeouts and limits.
pub fn send(socket: &Path, request: &CniRequest) -> Result<Answer, ClientError> {
    send_with(socket, request, &ClientConfig::default())
}

/// Sends `request` to the server listening at `socket` and reads its
/// answer, bounded as `config` says.
///
/// Any status is an answer; only failing to get one is an error.
pub fn send_with(
    socket: &Path,
    request: &CniRequest,
    config: &ClientConfig,
) -> Result<Answer, ClientError> {
    exchange(socket, request, config).map_err(|failure| ClientError {
        socket: socket.to_owned(),
        failure,
    })
}

fn exchange(socket: &Path, request: &CniRequest, config: &ClientConfig) -> Result<Answer, Failure> {
    let deadline = Deadline::after(config.timeout);
    let connect_timeout = config.connect_timeout.min(deadline.remaining()?);
    let mut stream = connect(socket, connect_timeout)?;

    let sent = write_request(&mut stream, &request_bytes(request), &deadline);

    // A server that refuses early (503 when it is full, 413 for a body too
    // large) may answer and close before it reads the whole request, which
    // makes the write fail. Its answer says more than the write error.
    let answer = read_answer(&mut stream, config.max_answer_body, &deadline);
    match (sent, answer) {
        (Err(failure), Err(_)) => Err(failure),
        (_, answer) => answer,
    }
}

/// The request as it goes on the wire: `POST /` with the JSON body.
pub fn request_bytes(request: &CniRequest) -> Vec<u8> {
    let body = request.to_json();
    let mut out = Vec::with_capacity(128 + body.len());
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "POST / HTTP/1.1\r\nHost: dummy\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(&body);
    out
}

/// The point in time by which the whole exchange must be over.
struct Deadline(Instant);

impl Deadline {
    fn after(timeout: Duration) -> Deadline {
        Deadline(Instant::now() + timeout)
    }

    /// What is left of the time, or `TimedOut` when nothing is.
    fn remaining(&self) -> Result<Duration, Failure> {
        match self.0.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(left),
            _ => Err(Failure::TimedOut),
        }
    }
}

fn connect(socket: &Path, timeout: Duration) -> Result<UnixStream, Failure> {
    use nix::errno::Errno;
    use nix::sys::socket::{self as sock, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};
    use nix::sys::time::{TimeVal, TimeValLike};

    let io_error = |e: Errno| Failure::Connect(io::Error::from(e));
    let fd = sock::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io_error)?;

    // A send timeout of zero would mean no timeout at all.
    let micros = i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX);
    let micros = micros.clamp(1, 24 * 3600 * 1_000_000);
    sock::setsockopt(&fd, sockopt::SendTimeout, &TimeVal::microseconds(micros))
        .map_err(io_error)?;

    let address = UnixAddr::new(socket).map_err(io_error)?;
    match sock::connect(fd.as_raw_fd(), &address) {
        Ok(()) => Ok(UnixStream::from(fd)),
        // The backlog stayed full for the whole send timeout.
        Err(Errno::EAGAIN) => Err(Failure::ConnectTimedOut),
        Err(e) => Err(io_error(e)),
    }
}

fn write_request(
    stream: &mut UnixStream,
    bytes: &[u8],
    deadline: &Deadline,
) -> Result<(), Failure> {
    let mut written = 0;
    while written < bytes.len() {
        stream
            .set_write_timeout(Some(deadline.remaining()?))
            .map_err(Failure::Send)?;
        match stream.write(&bytes[written..]) {
            Ok(0) => return Err(Failure::Send(io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(Failure::TimedOut),
            Err(e) => return Err(Failure::Send(e)),
        }
    }
    Ok(())
}

fn read_answer(
    stream: &mut UnixStream,
    max_body: usize,
    deadline: &Deadline,
) -> Result<Answer, Failure> {
    let mut reader = AnswerReader::new(max_body);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        stream
            .set_read_timeout(Some(deadline.remaining()?))
            .map_err(Failure::Receive)?;
        match stream.read(&mut chunk) {
            Ok(0) => return reader.finish().map_err(Failure::BadAnswer),
            Ok(n) => {
                if let Some(answer) = reader.push(&chunk[..n]).map_err(Failure::BadAnswer)? {
                    return Ok(answer);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(Failure::TimedOut),
            // A server that closes without reading all of the request
            // leaves a reset behind its answer; what came before it counts.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return reader.finish().map_err(|_| Failure::Receive(e));
            }
            Err(e) => return Err(Failure::Receive(e)),
        }
    }
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Why the exchange with the server failed, and at which socket.
///
/// `Display` names the socket and the step that failed, in a form an
/// operator can grep; it never holds anything from the request.
#[derive(Debug)]
pub struct ClientError {
    socket: PathBuf,
    failure: Failure,
}

/// The step of the exchange that failed.
#[derive(Debug)]
pub enum Failure {
    /// Connecting failed (no socket, nothing listening, no permission).
    Connect(io::Error),
    /// The server did not accept the connection within the connect timeout.
    ConnectTimedOut,
    /// Writing the request failed and no answer came back.
    Send(io::Error),
    /// Reading the answer failed.
    Receive(io::Error),
    /// The exchange was not over within the overall timeout.
    TimedOut,
    /// The answer is not a well-formed HTTP/1.x response.
    BadAnswer(BadAnswer),
}

impl ClientError {
    /// The socket the request was for.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The step that failed.
    pub fn failure(&self) -> &Failure {
        &self.failure
    }

    /// Whether no server was there to take the request: the socket is
    /// missing, nothing listens on it, or it accepts no connections. The
    /// request never reached a server, so trying again later is safe.
    pub fn is_unreachable(&self) -> bool {
        match &self.failure {
            Failure::Connect(e) => matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ),
            Failure::ConnectTimedOut => true,
            _ => false,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let socket = self.socket.display();
        match &self.failure {
            Failure::Connect(e) => write!(
                f,
                "cannot connect to the CNI server at {socket}: {}",
                describe_connect_error(e)
            ),
            Failure::ConnectTimedOut => write!(
                f,
                "cannot connect to the CNI server at {socket}: it accepts no connections \
                 (timed out)"
            ),
            Failure::Send(e) => write!(
                f,
                "cannot send the request to the CNI server at {socket}: {e}"
            ),
            Failure::Receive(e) => write!(
                f,
                "cannot read the answer of the CNI server at {socket}: {e}"
            ),
            Failure::TimedOut => write!(f, "no answer from the CNI server at {socket} in time"),
            Failure::BadAnswer(e) => {
                write!(f, "bad answer from the CNI server at {socket}: {e}")
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.failure {
            Failure::Connect(e) | Failure::Send(e) | Failure::Receive(e) => Some(e),
            Failure::BadAnswer(e) => Some(e),
            Failure::ConnectTimedOut | Failure::TimedOut => None,
        }
    }
}

/// Says what a failed connect means for someone looking for the daemon.
fn describe_connect_error(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => "no socket there; is the daemon running?".to_owned(),
        io::ErrorKind::ConnectionRefused => {
            "nothing listens on the socket; is the daemon running?".to_owned()
        }
        io::ErrorKind::PermissionDenied => "permission denied; the socket is root-only".to_owned(),
        _ => error.to_string(),
    }
}

/// Why the bytes that came back are not a usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadAnswer {
    /// The connection closed before any answer.
    Empty,
    /// The status line or a header is not valid HTTP/1.x.
    Malformed,
    /// The head is longer than the limit, or has too many headers.
    HeadTooLarge,
    /// `Content-Length` is not a number, or two of them disagree.
    BadLength,
    /// `Transfer-Encoding` is something other than `chunked`.
    UnsupportedTransferCoding,
    /// The chunked body is not well formed.
    BadChunk,
    /// The body is longer than the limit.
    BodyTooLarge,
    /// The connection closed in the middle of the answer.
    Truncated,
}

impl fmt::Display for BadAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadAnswer::Empty => "connection closed without an answer",
            BadAnswer::Malformed => "malformed status line or header",
            BadAnswer::HeadTooLarge => "header block too large",
            BadAnswer::BadLength => "invalid or conflicting content length",
            BadAnswer::UnsupportedTransferCoding => "unsupported transfer coding",
            BadAnswer::BadChunk => "invalid chunked body",
            BadAnswer::BodyTooLarge => "body too large",
            BadAnswer::Truncated => "connection closed in the middle of the answer",
        })
    }
}

impl std::error::Error for BadAnswer {}

/// Reads an HTTP/1.x answer from bytes as they arrive.
///
/// Interim answers (1xx) are skipped. The body is framed by
/// `Content-Length`, by chunked transfer coding, or by the end of the
/// connection; bytes after a complete answer are ignored.
///
/// # Examples
///
/// ```
/// use cniserver::client::{Answer, AnswerReader};
///
/// let mut reader = AnswerReader::new(1024);
/// // The head arrives first, then the body.
/// assert_eq!(reader.push(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"), Ok(None));
/// let answer = reader.push(b"{}").unwrap();
/// assert_eq!(answer, Some(Answer { status: 200, body: b"{}".to_vec() }));
/// ```
#[derive(Debug)]
pub struct AnswerReader {
    max_body: usize,
    state: ReadState,
}

#[derive(Debug)]
enum ReadState {
    /// Collecting the head; the bytes so far.
    Head(Vec<u8>),
    /// A body of known length.
    Sized {
        status: u16,
        body: Vec<u8>,
        length: usize,
    },
    /// A chunked body; input the decoder has not consumed yet is kept.
    Chunked {
        status: u16,
        body: Vec<u8>,
        decoder: ChunkedDecoder,
        pending: Vec<u8>,
    },
    /// A body that ends with the connection.
    UntilClose { status: u16, body: Vec<u8> },
    /// The answer was handed out.
    Done,
}

/// How the body of an answer is framed, as its head says.
enum Framing {
    Sized(usize),
    Chunked,
    UntilClose,
}

impl AnswerReader {
    /// A reader that accepts bodies up to `max_body` bytes.
    pub fn new(max_body: usize) -> AnswerReader {
        AnswerReader {
            max_body,
            state: ReadState::Head(Vec::new()),
        }
    }

    /// Takes the next bytes from the connection; returns the answer once it
    /// is complete, and `None` while more bytes are needed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<Answer>, BadAnswer> {
        match &mut self.state {
            ReadState::Head(head) => {
                head.extend_from_slice(bytes);
                self.parse_head()
            }
            _ => self.take_body(bytes),
        }
    }

    /// The connection closed: the answer, if the end of the connection
    /// completes it.
    pub fn finish(&mut self) -> Result<Answer, BadAnswer> {
        match std::mem::replace(&mut self.state, ReadState::Done) {
            ReadState::UntilClose { status, body } => Ok(Answer { status, body }),
            ReadState::Head(head) if head.is_empty() => Err(BadAnswer::Empty),
            _ => Err(BadAnswer::Truncated),
        }
    }

    /// Parses the head collected so far; once it is whole, moves on to the
    /// body with whatever followed it.
    fn parse_head(&mut self) -> Result<Option<Answer>, BadAnswer> {
        let ReadState::Head(buffer) = &mut self.state else {
            return Ok(None);
        };
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            let head_len = match response.parse(buffer) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) if buffer.len() > MAX_ANSWER_HEAD => {
                    return Err(BadAnswer::HeadTooLarge)
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(httparse::Error::TooManyHeaders) => return Err(BadAnswer::HeadTooLarge),
                Err(_) => return Err(BadAnswer::Malformed),
            };
            if head_len > MAX_ANSWER_HEAD {
                return Err(BadAnswer::HeadTooLarge);
            }
            let status = response.code.ok_or(BadAnswer::Malformed)?;

            // An interim answer (100 Continue, say) precedes the real one.
            if (100..200).contains(&status) && status != 101 {
                buffer.drain(..head_len);
                continue;
            }

            let framing = framing(status, response.headers, self.max_body)?;
            let rest = buffer.split_off(head_len);
            self.state = match framing {
                Framing::Sized(length) => ReadState::Sized {
                    status,
                    body: Vec::with_capacity(length),
                    length,
                },
                Framing::Chunked => ReadState::Chunked {
                    status,
                    body: Vec::new(),
                    decoder: ChunkedDecoder::default(),
                    pending: Vec::new(),
                },
                Framing::UntilClose => ReadState::UntilClose {
                    status,
                    body: Vec::new(),
                },
            };
            return self.take_body(&rest);
        }
    }

    /// Adds body bytes; returns the answer once the body is complete.
    fn take_body(&mut self, bytes: &[u8]) -> Result<Option<Answer>, BadAnswer> {
        let max_body = self.max_body;
        let complete = match &mut self.state {
            ReadState::Sized {
                body, length: want, ..
            } => {
                let take = bytes.len().min(*want - body.len());
                body.extend_from_slice(&bytes[..take]);
                body.len() == *want
            }
            ReadState::Chunked {
                body,
                decoder,
                pending,
                ..
            } => {
                pending.extend_from_slice(bytes);
                let used = decoder
                    .decode(pending, body, max_body)
                    .map_err(|e| match e {
                        HttpError::BodyTooLarge => BadAnswer::BodyTooLarge,
                        _ => BadAnswer::BadChunk,
                    })?;
                pending.drain(..used);
                decoder.is_done()
            }
            ReadState::UntilClose { body, .. } => {
                if bytes.len() > max_body - body.len() {
                    return Err(BadAnswer::BodyTooLarge);
                }
                body.extend_from_slice(bytes);
                false
            }
            ReadState::Head(_) | ReadState::Done => false,
        };
        if !complete {
            return Ok(None);
        }
        match std::mem::replace(&mut self.state, ReadState::Done) {
            ReadState::Sized { status, body, .. } | ReadState::Chunked { status, body, .. } => {
                Ok(Some(Answer { status, body }))
            }
            _ => Ok(None),
        }
    }
}

/// Reads how the body is framed from the answer's status and headers.
fn framing(
    status: u16,
    headers: &[httparse::Header<'_>],
    max_body: usize,
) -> Result<Framing, BadAnswer> {
    if status == 204 || status == 304 {
        return Ok(Framing::Sized(0));
    }

    let mut length: Option<usize> = None;
    let mut chunked = false;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(header.value).map_err(|_| BadAnswer::Malformed)?;
            // Only `chunked` alone is understood; any other coding would
            // leave the body unreadable.
            for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                if !coding.eq_ignore_ascii_case("chunked") || chunked {
                    return Err(BadAnswer::UnsupportedTransferCoding);
                }
                chunked = true;
            }
        } else if header.name.eq_ignore_ascii_case("content-length") {
            let value = parse_length(header.value)?;
            if length.is_some_and(|seen| seen != value) {
                return Err(BadAnswer::BadLength);
            }
            length = Some(value);
        }
    }

    match (chunked, length) {
        // A chunked body's own framing wins over a stray length.
        (true, _) => Ok(Framing::Chunked),
        (false, Some(length)) if length > max_body => Err(BadAnswer::BodyTooLarge),
        (false, Some(length)) => Ok(Framing::Sized(length)),
        (false, None) => Ok(Framing::UntilClose),
    }
}

fn parse_length(value: &[u8]) -> Result<usize, BadAnswer> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(BadAnswer::BadLength);
    }
    std::str::from_utf8(digits)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(BadAnswer::BadLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in two pieces split at `split` and then closes.
    fn read_split(input: &[u8], split: usize, max_body: usize) -> Result<Answer, BadAnswer> {
        let mut reader = AnswerReader::new(max_body);
        for piece in [&input[..split], &input[split..]] {
            if let Some(answer) = reader.push(piece)? {
                return Ok(answer);
            }
        }
        reader.finish()
    }

    fn answer(status: u16, body: &[u8]) -> Result<Answer, BadAnswer> {
        Ok(Answer {
            status,
            body: body.to_vec(),
        })
    }

    #[test]
    fn reads_answers_split_at_every_offset() {
        let cases: &[(&str, &[u8], Result<Answer, BadAnswer>)] = &[
            (
                "content length",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                answer(200, b"{}"),
            ),
            (
                "empty success",
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                answer(200, b""),
            ),
            (
                "bytes after the answer are ignored",
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nno\nHTTP/1.1 200",
                answer(400, b"no\n"),
            ),
            (
                "chunked",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  2\r\n{\"\r\n4\r\na\":1\r\n1\r\n}\r\n0\r\n\r\n",
                answer(200, b"{\"a\":1}"),
            ),
            (
                "until close",
                b"HTTP/1.0 500 Internal Server Error\r\n\r\nboom\n",
                answer(500, b"boom\n"),
            ),
            (
                "interim answer skipped",
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
                answer(200, b"x"),
            ),
            (
                "no content has no body",
                b"HTTP/1.1 204 No Content\r\n\r\n",
                answer(204, b""),
            ),
            (
                "repeated equal lengths",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
                answer(200, b"x"),
            ),
            ("nothing at all", b"", Err(BadAnswer::Empty)),
            (
                "not HTTP",
                b"SSH-2.0-OpenSSH_9.6\r\n",
                Err(BadAnswer::Malformed),
            ),
            (
                "head cut short",
                b"HTTP/1.1 200 OK\r\nContent-",
                Err(BadAnswer::Truncated),
            ),
            (
                "body cut short",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}",
                Err(BadAnswer::Truncated),
            ),
            (
                "chunked body cut short",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n",
                Err(BadAnswer::Truncated),
            ),
            (
                "conflicting lengths",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
                Err(BadAnswer::BadLength),
            ),
            (
                "signed length",
                b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx",
                Err(BadAnswer::BadLength),
            ),
            (
                "unknown coding",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Err(BadAnswer::UnsupportedTransferCoding),
            ),
            (
                "bad chunk size",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                Err(BadAnswer::BadChunk),
            ),
            (
                "length over the limit",
                b"HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n",
                Err(BadAnswer::BodyTooLarge),
            ),
        ];
        for (name, input, want) in cases {
            for split in 0..=input.len() {
                let got = read_split(input, split, 64);
                assert_eq!(&got, want, "{name}, split at {split}");
            }
        }
    }

    #[test]
    fn refuses_bodies_over_the_limit_however_framed() {
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let until_close = b"HTTP/1.1 200 OK\r\n\r\nhello";
        for input in [&chunked[..], &until_close[..]] {
            assert_eq!(
                read_split(input, input.len(), 4),
                Err(BadAnswer::BodyTooLarge),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn refuses_endless_heads() {
        let mut reader = AnswerReader::new(64);
        assert_eq!(reader.push(b"HTTP/1.1 200 OK\r\n"), Ok(None));
        let filler = b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        let mut got = Ok(None);
        for _ in 0..(2 * MAX_ANSWER_HEAD / filler.len()) {
            got = reader.push(filler);
            if got.is_err() {
                break;
            }
        }
        assert_eq!(got, Err(BadAnswer::HeadTooLarge));
    }

    #[test]
    fn lays_out_the_request_as_the_go_shim_did() {
        let request = CniRequest {
            env: [("CNI_COMMAND", "DEL")].into_iter().collect(),
            config: b"{}".to_vec(),
        };
        let body = br#"{"env":{"CNI_COMMAND":"DEL"},"config":"e30="}"#;
        let want = format!(
            "POST / HTTP/1.1\r\nHost: dummy\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{}",
            body.len(),
            String::from_utf8_lossy(body)
        );
        assert_eq!(
            String::from_utf8_lossy(&request_bytes(&request)),
            want.as_str()
        );
    }

    #[test]
    fn says_which_socket_and_step_failed() {
        let error = ClientError {
            socket: PathBuf::from("/run/x/cni.sock"),
            failure: Failure::Connect(io::ErrorKind::NotFound.into()),
        };
        assert!(error.is_unreachable());
        assert_eq!(
            error.to_string(),
            "cannot connect to the CNI server at /run/x/cni.sock: \
             no socket there; is the daemon running?"
        );

        let error = ClientError {
            socket: PathBuf::from("/run/x/cni.sock"),
            failure: Failure::BadAnswer(BadAnswer::Truncated),
        };
        assert!(!error.is_unreachable());
        assert_eq!(
            error.to_string(),
            "bad answer from the CNI server at /run/x/cni.sock: \
             connection closed in the middle of the answer"
        );
    }
}
