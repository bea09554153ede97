//! The HTTP/1.1 codec: just enough of the protocol for one request per
//! connection, as pure functions over bytes.
//!
//! Nothing here touches a socket. [`RequestReader`] takes bytes as they
//! arrive and says when a whole request (head and body) is in; the
//! [`response`] functions lay out the answers. The reactor only moves bytes
//! between the two, which keeps the codec easy to fuzz and to test split at
//! every offset.

mod chunked;
mod head;
mod reader;
pub mod response;

pub use chunked::ChunkedDecoder;
pub use head::{parse_head, BodyLength, Method, RequestHead};
pub use reader::{Limits, Progress, Request, RequestReader};

use std::fmt;

/// Why a request could not be read; each maps to one status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// The request line or a header is not valid HTTP/1.x.
    Malformed,
    /// The request announces its length in two ways that disagree, or a
    /// `Content-Length` that is not a number.
    BadLength,
    /// A chunk size line or chunk framing is invalid.
    BadChunk,
    /// The head is longer than the limit, or has too many headers.
    HeadTooLarge,
    /// The body is longer than the limit.
    BodyTooLarge,
    /// `Expect` holds something other than `100-continue`.
    UnsupportedExpectation,
    /// `Transfer-Encoding` is something other than `chunked`.
    UnsupportedTransferCoding,
    /// The HTTP version is not 1.0 or 1.1 (an HTTP/2 preface, say).
    UnsupportedVersion,
}

impl HttpError {
    /// The status code that answers this error.
    pub fn status(self) -> u16 {
        match self {
            HttpError::Malformed | HttpError::BadLength | HttpError::BadChunk => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::UnsupportedExpectation => 417,
            HttpError::UnsupportedTransferCoding => 501,
            HttpError::UnsupportedVersion => 505,
        }
    }
}

impl HttpError {
    /// The error as a short lowercase phrase.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpError::Malformed => "malformed request",
            HttpError::BadLength => "invalid or conflicting body length",
            HttpError::BadChunk => "invalid chunked body",
            HttpError::HeadTooLarge => "request header block too large",
            HttpError::BodyTooLarge => "request body too large",
            HttpError::UnsupportedExpectation => "unsupported expectation",
            HttpError::UnsupportedTransferCoding => "unsupported transfer coding",
            HttpError::UnsupportedVersion => "unsupported HTTP version",
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for HttpError {}
