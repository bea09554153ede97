//! The connection state machine without a socket: `RequestReader` fed the
//! bytes of one connection in pieces.
//!
//! A peer decides how its bytes are cut into reads, so the reader must
//! come to the same result however they are cut: the input is fed in the
//! pieces it chooses, in one piece, and a byte at a time, and the three
//! results (need more, complete with a head and a body, or an error) must
//! agree. The limits are small so that the fuzzer reaches them.
//!
//! Layout of the input: the first byte's low four bits give a count N, the
//! next N bytes are the lengths of the first N pieces, and the rest is what
//! the peer sends (what the N lengths leave over is the last piece).

#![no_main]

use cniserver::http::{
    parse_head, BodyLength, HttpError, Limits, Progress, RequestHead, RequestReader,
};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_head_bytes: 256,
    max_headers: 8,
    max_body_bytes: 512,
};

/// A second request, sent on the same connection right after the first.
const PIPELINED: &[u8] = b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n";

/// Where the reader stands after the last piece.
#[derive(Debug, PartialEq)]
enum Outcome {
    NeedMore,
    Complete { head: RequestHead, body: Vec<u8> },
    Failed(HttpError),
}

/// An outcome, and how often the reader asked for `100 Continue` on the way.
#[derive(Debug)]
struct Run {
    outcome: Outcome,
    continues: usize,
}

fuzz_target!(|data: &[u8]| {
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count & 0x0f).min(rest.len());
    let (lengths, stream) = rest.split_at(count);

    let mut pieces = Vec::with_capacity(count + 1);
    let mut left = stream;
    for &length in lengths {
        let (piece, after) = left.split_at(usize::from(length).min(left.len()));
        pieces.push(piece);
        left = after;
    }
    pieces.push(left);

    let whole = feed(std::iter::once(stream));
    let chosen = feed(pieces.iter().copied());
    let bytewise = feed(stream.chunks(1));

    assert_eq!(chosen.outcome, whole.outcome, "pieces {pieces:?}");
    assert_eq!(bytewise.outcome, whole.outcome, "stream {stream:?}");
    for run in [&whole, &chosen, &bytewise] {
        assert!(run.continues <= 1, "stream {stream:?}: {run:?}");
    }

    // A head that fits the limit, that httparse reads as complete and that
    // announces no body is a complete request: the reader may not wait on.
    let within = &stream[..stream.len().min(LIMITS.max_head_bytes)];
    if let Ok(Some(head)) = parse_head(within, LIMITS.max_headers) {
        if head.body == BodyLength::Empty {
            let body = Vec::new();
            assert_eq!(
                whole.outcome,
                Outcome::Complete { head, body },
                "stream {stream:?}"
            );
        }
    }

    if let Outcome::Complete { head, body } = &whole.outcome {
        check_complete(stream, head, body);

        // A client that pipelines more requests in the same read changes
        // nothing: they are never read, however many bytes they take.
        let mut with_more = stream.to_vec();
        with_more.extend_from_slice(&PIPELINED.repeat(200));
        let pipelined = feed(std::iter::once(&with_more[..]));
        assert_eq!(pipelined.outcome, whole.outcome, "stream {stream:?}");

        // However the bytes came, a head that waits for `100 Continue` gets
        // it once when it announces a body, and never otherwise.
        let announced = head.body != BodyLength::Empty;
        let wanted = usize::from(head.expects_continue && announced);
        for run in [&whole, &chosen, &bytewise] {
            assert_eq!(run.continues, wanted, "pieces {pieces:?}: {run:?}");
        }
    }
});

/// Feeds the pieces to a fresh reader as the reactor would, stopping at the
/// first error or at completion.
fn feed<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> Run {
    let mut reader = RequestReader::new(LIMITS);
    let mut continues = 0;
    let mut fed = 0;

    for piece in pieces {
        fed += piece.len();
        assert!(reader.request().is_none(), "a request before completion");
        let mut progress = reader.feed(piece);
        if progress == Ok(Progress::SendContinue) {
            // As the reactor does: write the interim answer, then look at
            // what is already in, since the body may have come with the head.
            continues += 1;
            progress = reader.feed(&[]);
        }
        match progress {
            Ok(Progress::NeedMore) => {}
            Ok(Progress::SendContinue) => continues += 1,
            Ok(Progress::Complete) => {
                let (head, body) = {
                    let request = reader.request().expect("a complete reader has a request");
                    (request.head.clone(), request.body.to_vec())
                };

                // What follows a complete request is never read.
                assert_eq!(
                    reader.feed(b"POST / HTTP/1.1\r\n\r\n"),
                    Ok(Progress::Complete)
                );
                let again = reader.request().expect("still complete");
                assert_eq!((again.head, again.body), (&head, &body[..]));

                let outcome = Outcome::Complete { head, body };
                return Run { outcome, continues };
            }
            Err(error) => {
                let outcome = Outcome::Failed(error);
                return Run { outcome, continues };
            }
        }
    }

    assert_eq!(reader.is_empty(), fed == 0, "after {fed} bytes");
    Run {
        outcome: Outcome::NeedMore,
        continues,
    }
}

/// A complete request agrees with a direct parse of its head and with the
/// framing that head announced, within the limits.
fn check_complete(stream: &[u8], head: &RequestHead, body: &[u8]) {
    let parsed = parse_head(stream, LIMITS.max_headers);
    assert_eq!(
        parsed.as_ref(),
        Ok(&Some(head.clone())),
        "stream {stream:?}"
    );
    assert!(head.len <= LIMITS.max_head_bytes, "stream {stream:?}");
    assert!(body.len() <= LIMITS.max_body_bytes, "stream {stream:?}");

    let after_head = &stream[head.len..];
    match head.body {
        BodyLength::Empty => assert!(body.is_empty(), "stream {stream:?}"),
        BodyLength::Exact(n) => {
            assert_eq!(body, &after_head[..n as usize], "stream {stream:?}")
        }
        // De-chunking only drops framing: every body byte came in order
        // from the bytes after the head.
        BodyLength::Chunked => assert!(is_subsequence(body, after_head), "stream {stream:?}"),
    }
}

fn is_subsequence(needle: &[u8], haystack: &[u8]) -> bool {
    let mut rest = haystack.iter();
    needle.iter().all(|b| rest.any(|h| h == b))
}
