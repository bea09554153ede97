//! `Transfer-Encoding: chunked` bodies, decoded as bytes arrive.

use super::HttpError;

/// Where the decoder stands within the chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a chunk size line.
    Size,
    /// Inside a chunk, with this many data bytes to go.
    Data(u64),
    /// After a chunk's data, expecting its CRLF.
    DataEnd,
    /// After the last (zero) chunk, reading trailer lines until a blank one.
    Trailer,
    /// The body is complete.
    Done,
}

/// Decodes a chunked body from successive slices of input.
///
/// The caller keeps the bytes the decoder has not consumed yet and offers
/// them again, with more, on the next call: a size line or a CRLF split
/// across reads is then simply seen whole.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder { state: State::Size }
    }
}

impl ChunkedDecoder {
    /// Decodes what it can of `input`, appending body bytes to `body`.
    ///
    /// Returns how many bytes of `input` were consumed. The body is
    /// complete once [`is_done`](Self::is_done) says so; bytes after it are
    /// not consumed. A body that would outgrow `max_body` is an error.
    pub fn decode(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        max_body: usize,
    ) -> Result<usize, HttpError> {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            match self.state {
                State::Done => return Ok(pos),
                State::Size => match httparse::parse_chunk_size(rest) {
                    // httparse reads a line without digits as size 0, the
                    // last chunk; a chunk size has at least one digit.
                    Ok(httparse::Status::Complete(_)) if !rest[0].is_ascii_hexdigit() => {
                        return Err(HttpError::BadChunk)
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        pos += used;
                        self.state = if size == 0 {
                            State::Trailer
                        } else if size > (max_body - body.len()) as u64 {
                            return Err(HttpError::BodyTooLarge);
                        } else {
                            State::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => return Ok(pos),
                    Err(_) => return Err(HttpError::BadChunk),
                },
                State::Data(remaining) => {
                    if rest.is_empty() {
                        return Ok(pos);
                    }
                    let take = rest
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    body.extend_from_slice(&rest[..take]);
                    pos += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                }
                State::DataEnd => match line_end(rest)? {
                    Some((0, used)) => {
                        pos += used;
                        self.state = State::Size;
                    }
                    Some(_) => return Err(HttpError::BadChunk),
                    None => return Ok(pos),
                },
                State::Trailer => match line_end(rest)? {
                    Some((0, used)) => {
                        pos += used;
                        self.state = State::Done;
                    }
                    // Trailer fields are read past and ignored.
                    Some((_, used)) => pos += used,
                    None => return Ok(pos),
                },
            }
        }
    }

    /// Whether the terminating chunk and trailer have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

/// Finds the end of the line at the start of `input`: the line's length and
/// the bytes it takes with its CRLF. `None` while the line is incomplete.
fn line_end(input: &[u8]) -> Result<Option<(usize, usize)>, HttpError> {
    match input.iter().position(|&b| b == b'\n') {
        Some(nl) if nl > 0 && input[nl - 1] == b'\r' => Ok(Some((nl - 1, nl + 1))),
        Some(_) => Err(HttpError::BadChunk),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), HttpError> {
        let mut decoder = ChunkedDecoder::default();
        let mut body = Vec::new();
        let used = decoder.decode(input, &mut body, 1 << 20)?;
        Ok((body, used, decoder.is_done()))
    }

    #[test]
    fn decodes_chunks_and_stops_at_the_end() {
        let input = b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        let (body, used, done) = decode_all(input).unwrap();
        assert_eq!(body, b"Wikipedia");
        assert!(done);
        assert_eq!(&input[used..], b"NEXT");
    }

    #[test]
    fn same_result_split_at_every_offset() {
        let input = b"4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n";
        for split in 0..=input.len() {
            let mut decoder = ChunkedDecoder::default();
            let mut body = Vec::new();
            let mut pending = input[..split].to_vec();
            let used = decoder.decode(&pending, &mut body, 1 << 20).unwrap();
            pending.drain(..used);
            pending.extend_from_slice(&input[split..]);
            decoder.decode(&pending, &mut body, 1 << 20).unwrap();
            assert!(decoder.is_done(), "split at {split}");
            assert_eq!(body, b"Wikipedia", "split at {split}");
        }
    }

    #[test]
    fn rejects_bad_framing() {
        let cases: &[(&str, &[u8], HttpError)] = &[
            ("size not hex", b"zz\r\n", HttpError::BadChunk),
            ("size line without digits", b"\r\n\r\n", HttpError::BadChunk),
            (
                "extension without a size",
                b";ext\r\n\r\n",
                HttpError::BadChunk,
            ),
            (
                "data longer than size",
                b"2\r\nabc\r\n",
                HttpError::BadChunk,
            ),
            ("bare LF after data", b"2\r\nab\n", HttpError::BadChunk),
            (
                "chunk over the limit",
                b"200000\r\n",
                HttpError::BodyTooLarge,
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(decode_all(input).map(|_| ()), Err(*want), "{name}");
        }
    }
}
