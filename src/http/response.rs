//! The answers, laid out byte for byte.
//!
//! Every answer closes the connection, so every one says
//! `Connection: close` and carries a `Content-Length`.

use super::HttpError;

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// The reason phrase of the statuses this server sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Appends a whole answer to `out`: status line, headers, body.
///
/// Plain byte appends rather than `write!`: this runs once per request.
pub fn write(out: &mut Vec<u8>, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    out.reserve(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, status.into());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\nContent-Length: ");
    push_decimal(out, body.len() as u64);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// 200 with the handler's JSON (possibly empty).
pub fn success(out: &mut Vec<u8>, body: &[u8]) {
    write(out, 200, &[("Content-Type", "application/json")], body);
}

/// An error answer in the Go server's form: plain text, `nosniff`, and a
/// newline after the message.
pub fn error_text(out: &mut Vec<u8>, status: u16, message: &str) {
    let mut body = Vec::with_capacity(message.len() + 1);
    body.extend_from_slice(message.as_bytes());
    body.push(b'\n');
    error_body(out, status, &body);
}

/// An error answer whose body is sent as given (a CNI error JSON, say).
pub fn error_body(out: &mut Vec<u8>, status: u16, body: &[u8]) {
    let headers = [
        ("Content-Type", TEXT_PLAIN),
        ("X-Content-Type-Options", "nosniff"),
    ];
    write(out, status, &headers, body);
}

/// 404 for any path the server does not serve, with Go's body.
pub fn not_found(out: &mut Vec<u8>) {
    write(
        out,
        404,
        &[("Content-Type", TEXT_PLAIN)],
        b"404 page not found\n",
    );
}

/// 405 for a method the path does not serve.
pub fn method_not_allowed(out: &mut Vec<u8>, allow: &str) {
    let headers = [("Allow", allow), ("Content-Type", TEXT_PLAIN)];
    write(out, 405, &headers, b"method not allowed\n");
}

/// The answer to a request that could not be read.
pub fn http_error(out: &mut Vec<u8>, error: HttpError) {
    let body = format!("{error}\n");
    write(
        out,
        error.status(),
        &[("Content-Type", TEXT_PLAIN)],
        body.as_bytes(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_is_laid_out_exactly() {
        let mut out = Vec::new();
        success(&mut out, b"{}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn error_text_adds_newline_and_nosniff() {
        let mut out = Vec::new();
        error_text(&mut out, 400, "missing CNI_NETNS");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\nContent-Length: 18\r\n\r\nmissing CNI_NETNS\n"
        );
    }
}
