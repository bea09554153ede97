//! The request head: request line and headers, parsed by httparse and
//! reduced to the few facts the server acts on.

use super::HttpError;

/// The request methods the server tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `POST`, the only method `/` serves.
    Post,
    /// `GET`, used by health and metrics paths.
    Get,
    /// Any other method.
    Other,
}

/// How the body's end is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No `Content-Length` and no `Transfer-Encoding`: the body is empty.
    Empty,
    /// `Content-Length` bytes follow the head.
    Exact(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// What the server needs to know of a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// The path, without any query string.
    pub path: String,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// How long the body is.
    pub body: BodyLength,
    /// Whether the client waits for `100 Continue` before sending the body.
    pub expects_continue: bool,
    /// The length of the head in bytes, blank line included.
    pub len: usize,
}

/// Parses a request head from the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete. `max_headers` bounds
/// the number of header lines; more is [`HttpError::HeadTooLarge`].
pub fn parse_head(buf: &[u8], max_headers: usize) -> Result<Option<RequestHead>, HttpError> {
    // Room for the common case on the stack; the limit above it on the heap.
    let mut stack_headers = [httparse::EMPTY_HEADER; 32];
    let mut heap_headers;
    let headers: &mut [httparse::Header] = if max_headers <= stack_headers.len() {
        &mut stack_headers[..max_headers]
    } else {
        heap_headers = vec![httparse::EMPTY_HEADER; max_headers];
        &mut heap_headers
    };

    let mut request = httparse::Request::new(headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::Version) => return Err(version_error(buf)),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(_) => return Err(HttpError::Malformed),
    };

    let method = match request.method {
        Some("POST") => Method::Post,
        Some("GET") => Method::Get,
        _ => Method::Other,
    };
    let target = request.path.unwrap_or("/");
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let minor_version = request.version.unwrap_or(1);

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut expects_continue = false;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = parse_content_length(header.value)?;
            // Repeats are tolerated only when they agree.
            if content_length.is_some_and(|seen| seen != value) {
                return Err(HttpError::BadLength);
            }
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(header.value).map_err(|_| HttpError::Malformed)?;
            if chunked || !value.trim().eq_ignore_ascii_case("chunked") {
                return Err(HttpError::UnsupportedTransferCoding);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("expect") {
            if !header
                .value
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue")
            {
                return Err(HttpError::UnsupportedExpectation);
            }
            expects_continue = true;
        }
    }

    let body = match (content_length, chunked) {
        (Some(_), true) => return Err(HttpError::BadLength),
        (Some(0), false) | (None, false) => BodyLength::Empty,
        (Some(n), false) => BodyLength::Exact(n),
        (None, true) => BodyLength::Chunked,
    };

    Ok(Some(RequestHead {
        method,
        path,
        minor_version,
        body,
        // An HTTP/1.0 client knows no interim answers and does not wait for
        // one: its expectation is ignored.
        expects_continue: expects_continue && minor_version >= 1,
        len,
    }))
}

/// A request line that httparse rejects for its version is 505 when it
/// names some other HTTP version (the HTTP/2 preface says `HTTP/2.0`), and
/// plain malformed otherwise.
fn version_error(buf: &[u8]) -> HttpError {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = buf[..line_end].trim_ascii_end();
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    if version.starts_with(b"HTTP/") && version.len() > 5 && version[5].is_ascii_digit() {
        HttpError::UnsupportedVersion
    } else {
        HttpError::Malformed
    }
}

fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let digits = value.trim_ascii();
    // Digits only: no sign, no spaces inside, no empty value.
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::BadLength);
    }
    digits
        .iter()
        .try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or(HttpError::BadLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<RequestHead>, HttpError> {
        parse_head(text.as_bytes(), 32)
    }

    #[test]
    fn reads_method_path_and_length() {
        let head = parse("POST /?x=1 HTTP/1.1\r\nHost: d\r\nContent-Length: 12\r\n\r\nrest")
            .unwrap()
            .unwrap();
        assert_eq!(head.method, Method::Post);
        assert_eq!(head.path, "/");
        assert_eq!(head.body, BodyLength::Exact(12));
        assert_eq!(head.len, 52);
    }

    #[test]
    fn answers_each_bad_head_with_its_error() {
        let cases: &[(&str, &str, HttpError)] = &[
            ("garbage line", "HELLO\r\n\r\n", HttpError::Malformed),
            ("http2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", HttpError::UnsupportedVersion),
            ("http3", "POST / HTTP/3\r\n\r\n", HttpError::UnsupportedVersion),
            ("gzip coding", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", HttpError::UnsupportedTransferCoding),
            ("two codings", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", HttpError::UnsupportedTransferCoding),
            ("length and chunked", "POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", HttpError::BadLength),
            ("lengths disagree", "POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n", HttpError::BadLength),
            ("negative length", "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", HttpError::BadLength),
            ("length overflow", "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", HttpError::BadLength),
            ("other expectation", "POST / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n", HttpError::UnsupportedExpectation),
            ("nul in header", "POST / HTTP/1.1\r\nX: a\0b\r\n\r\n", HttpError::Malformed),
        ];
        for (name, input, want) in cases {
            assert_eq!(parse(input), Err(*want), "{name}: {input:?}");
        }
    }

    #[test]
    fn equal_repeated_lengths_are_one_length() {
        let head = parse("POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n");
        assert_eq!(head.unwrap().unwrap().body, BodyLength::Exact(3));
    }

    #[test]
    fn too_many_headers_is_head_too_large() {
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        let input = format!("POST / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse(&input), Err(HttpError::HeadTooLarge));
    }

    #[test]
    fn incomplete_head_is_none() {
        assert_eq!(parse("POST / HTTP/1.1\r\nHost: d\r\n"), Ok(None));
    }
}
