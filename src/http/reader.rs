//! One request per connection, read incrementally: the head, then the body
//! by `Content-Length` or chunks.

use super::chunked::ChunkedDecoder;
use super::head::{parse_head, BodyLength, RequestHead};
use super::HttpError;

/// Bounds on what one request may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest request head, blank line included (beyond: 431).
    pub max_head_bytes: usize,
    /// The most header lines (beyond: 431).
    pub max_headers: usize,
    /// The longest body, after chunked decoding (beyond: 413).
    pub max_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            max_body_bytes: 4 * 1024 * 1024,
        }
    }
}

/// What the reader needs next, or what it has.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed.
    NeedMore,
    /// The head asks for `100 Continue` before the body is sent; the caller
    /// writes it once, then feeds again (an empty slice if nothing new came:
    /// the body may have arrived with the head).
    SendContinue,
    /// The whole request is in.
    Complete,
}

/// A complete request: its head and its (decoded) body.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The parsed head.
    pub head: &'a RequestHead,
    /// The body, de-chunked.
    pub body: &'a [u8],
}

#[derive(Debug)]
enum Phase {
    Head,
    Body,
    Complete,
}

/// Reads one HTTP/1.x request from bytes fed in any pieces.
///
/// Bytes after the request (a pipelined second request) are kept but never
/// read: the protocol allows one request per connection.
#[derive(Debug)]
pub struct RequestReader {
    limits: Limits,
    buf: Vec<u8>,
    phase: Phase,
    head: Option<RequestHead>,
    chunked: Option<(ChunkedDecoder, usize, Vec<u8>)>,
    continue_sent: bool,
    /// Where the search for the head's end resumes, so a head that arrives a
    /// byte at a time is not re-parsed from the start each time.
    scanned: usize,
    /// Where the request line begins, once it has. httparse skips blank
    /// lines before it, so a blank line among those ends no head.
    line_start: Option<usize>,
}

impl RequestReader {
    /// A reader for one request within `limits`.
    pub fn new(limits: Limits) -> RequestReader {
        RequestReader {
            limits,
            buf: Vec::new(),
            phase: Phase::Head,
            head: None,
            chunked: None,
            continue_sent: false,
            scanned: 0,
            line_start: None,
        }
    }

    /// Whether any byte of a request has arrived.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes more bytes and says what is needed next.
    pub fn feed(&mut self, data: &[u8]) -> Result<Progress, HttpError> {
        if matches!(self.phase, Phase::Complete) {
            return Ok(Progress::Complete);
        }
        self.buf.extend_from_slice(data);
        self.advance()
    }

    fn advance(&mut self) -> Result<Progress, HttpError> {
        if matches!(self.phase, Phase::Head) {
            let parsed = if self.head_may_be_complete() {
                parse_head(&self.buf, self.limits.max_headers)?
            } else {
                None
            };
            let Some(head) = parsed else {
                if self.buf.len() > self.limits.max_head_bytes {
                    return Err(HttpError::HeadTooLarge);
                }
                return Ok(Progress::NeedMore);
            };
            if head.len > self.limits.max_head_bytes {
                return Err(HttpError::HeadTooLarge);
            }
            match head.body {
                BodyLength::Exact(n) if n > self.limits.max_body_bytes as u64 => {
                    return Err(HttpError::BodyTooLarge)
                }
                BodyLength::Chunked => {
                    self.chunked = Some((ChunkedDecoder::default(), head.len, Vec::new()))
                }
                _ => {}
            }
            self.head = Some(head);
            self.phase = Phase::Body;
        }

        let head = self
            .head
            .as_ref()
            .expect("head is parsed in the body phase");
        let received = &self.buf[head.len..];
        let complete = match (&head.body, &mut self.chunked) {
            (BodyLength::Empty, _) => true,
            (BodyLength::Exact(n), _) => received.len() as u64 >= *n,
            (BodyLength::Chunked, Some((decoder, consumed, body))) => {
                let limit = self.limits.max_body_bytes;
                // Framing (size lines, extensions, trailers) may not grow
                // the raw bytes without bound either. Nothing past the
                // bound is decoded, so that where a read ends cannot change
                // the answer, and bytes after a finished body (a pipelined
                // request) do not count.
                let raw_end = (head.len + 4096).saturating_add(limit.saturating_mul(2));
                let available = self.buf.len().min(raw_end);
                *consumed += decoder.decode(&self.buf[*consumed..available], body, limit)?;
                if !decoder.is_done() && self.buf.len() > raw_end {
                    return Err(HttpError::BodyTooLarge);
                }
                decoder.is_done()
            }
            (BodyLength::Chunked, None) => unreachable!("a chunked head sets up its decoder"),
        };

        // Go's server always answers `100 Continue` before it reads an
        // announced body, even one that came with the head: so does this.
        let announced = !matches!(head.body, BodyLength::Empty);
        if head.expects_continue && announced && !self.continue_sent {
            self.continue_sent = true;
            return Ok(Progress::SendContinue);
        }
        if complete {
            self.phase = Phase::Complete;
            return Ok(Progress::Complete);
        }
        Ok(Progress::NeedMore)
    }

    /// Looks for the blank line that ends a head in the bytes not yet
    /// scanned. A head without one cannot be complete.
    ///
    /// Only the first `max_head_bytes` are searched: a head that ends
    /// beyond them is too large however its bytes arrive, rather than
    /// malformed when they come in one read and too large when they trickle.
    fn head_may_be_complete(&mut self) -> bool {
        let end = self.buf.len().min(self.limits.max_head_bytes);
        let line_start = match self.line_start {
            Some(line_start) => line_start,
            None => {
                let new = &self.buf[self.scanned..end];
                let Some(at) = new.iter().position(|&b| b != b'\r' && b != b'\n') else {
                    self.scanned = end;
                    return false;
                };
                *self.line_start.insert(self.scanned + at)
            }
        };
        let start = self.scanned.saturating_sub(2).max(line_start).min(end);
        let unscanned = &self.buf[start..end];
        // httparse ends a line at a CRLF or a bare LF, so the blank line
        // that ends a head is an LF followed by either.
        let found = contains_blank_line(unscanned);
        self.scanned = end;
        found
    }

    /// The complete request, once [`feed`](Self::feed) said so.
    pub fn request(&self) -> Option<Request<'_>> {
        if !matches!(self.phase, Phase::Complete) {
            return None;
        }
        let head = self.head.as_ref()?;
        let body = match (&head.body, &self.chunked) {
            (BodyLength::Empty, _) => &[][..],
            (BodyLength::Exact(n), _) => &self.buf[head.len..head.len + *n as usize],
            (BodyLength::Chunked, Some((_, _, body))) => &body[..],
            (BodyLength::Chunked, None) => return None,
        };
        Some(Request { head, body })
    }

    /// Bytes held for this request, for accounting.
    pub fn buffered(&self) -> usize {
        self.buf.capacity() + self.chunked.as_ref().map_or(0, |(_, _, b)| b.capacity())
    }
}

/// Whether `bytes` hold an LF followed by an LF or a CRLF, in one pass that
/// stops at the first: the body behind a head is not scanned.
fn contains_blank_line(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while let Some(at) = rest.iter().position(|&b| b == b'\n') {
        rest = &rest[at + 1..];
        match rest {
            [b'\n', ..] | [b'\r', b'\n', ..] => return true,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in one piece and a byte at a time; both must agree.
    fn read_both_ways(input: &[u8], limits: Limits) -> Result<Progress, HttpError> {
        let mut whole = RequestReader::new(limits);
        let at_once = whole.feed(input);

        let mut trickle = RequestReader::new(limits);
        let mut bytewise = Ok(Progress::NeedMore);
        for byte in input.chunks(1) {
            bytewise = trickle.feed(byte);
            if !matches!(bytewise, Ok(Progress::NeedMore)) {
                break;
            }
        }

        assert_eq!(
            at_once,
            bytewise,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
        at_once
    }

    #[test]
    fn fuzz_blank_lines_before_a_malformed_line() {
        let input = b"\r\n\r\n\x0e\n\reTP/1.st/\r\n";
        assert_eq!(
            read_both_ways(input, Limits::default()),
            Ok(Progress::NeedMore)
        );
    }

    #[test]
    fn fuzz_blank_lines_then_a_chunk_line() {
        let input = b"\r\n\n4;ext=1\r\nWiki\r\n0\r\nX-Trailer: TTP\r\n";
        assert_eq!(
            read_both_ways(input, Limits::default()),
            Ok(Progress::NeedMore)
        );
    }

    #[test]
    fn fuzz_chunked_body_then_pipelined_requests() {
        let limits = Limits {
            max_body_bytes: 512,
            ..Limits::default()
        };
        let request = b"PT / HTTP/1.1\r\nHost: dummy\r\nTransfer-Encoding: chunked\r\n\r\n0;\r\n{\": {POD\r\n\r\n_";
        let pipelined = b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n".repeat(200);
        let input = [&request[..], &pipelined].concat();
        assert_eq!(read_both_ways(&input, limits), Ok(Progress::Complete));
    }

    #[test]
    fn fuzz_head_ending_in_lf_then_crlf() {
        let input = b"POST / HTTP/1.1\r\nX-Trailer: t\xfa\n\r\n";
        assert_eq!(
            read_both_ways(input, Limits::default()),
            Ok(Progress::Complete)
        );
    }

    #[test]
    fn fuzz_malformed_head_ending_past_the_limit() {
        let limits = Limits {
            max_head_bytes: 32,
            ..Limits::default()
        };
        let input = b"POST / HTTP/1.1\r\nX-Padding: abcdefghijklmnop\x0e\r\n\r\n";
        assert_eq!(read_both_ways(input, limits), Err(HttpError::HeadTooLarge));
    }
}
