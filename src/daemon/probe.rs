//! `cniserverd probe healthz|readyz`: asks a running daemon how it is,
//! over its own socket, for container liveness and readiness probes.
//!
//! The server answers `GET /healthz` with 200 while its reactor runs and
//! `GET /readyz` with 200 until shutdown starts; the probe exits 0 only on
//! a 200, so a probe sees what the daemon does, not whether a file exists.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// What a probe asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Whether the daemon's reactor runs (`GET /healthz`).
    Healthz,
    /// Whether it takes new requests (`GET /readyz`).
    Readyz,
}

impl Endpoint {
    /// Reads `healthz` or `readyz`.
    pub fn parse(name: &str) -> Option<Endpoint> {
        match name {
            "healthz" => Some(Endpoint::Healthz),
            "readyz" => Some(Endpoint::Readyz),
            _ => None,
        }
    }

    /// The endpoint's name, as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Healthz => "healthz",
            Endpoint::Readyz => "readyz",
        }
    }
}

/// How long a probe waits for the whole answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The most of an answer a probe reads; the server's are a few bytes.
const MAX_ANSWER: u64 = 64 * 1024;

/// Why a probe failed: no answer, or an answer other than 200.
#[derive(Debug)]
pub struct ProbeError(String);

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProbeError {}

/// Asks the daemon at `socket`; `Ok` when it answers 200.
pub fn probe(socket: &Path, endpoint: Endpoint) -> Result<(), ProbeError> {
    let name = endpoint.as_str();
    let answer = exchange(socket, name)
        .map_err(|e| ProbeError(format!("{name}: no answer from {}: {e}", socket.display())))?;

    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).unwrap_or("");
    if status == "200" {
        return Ok(());
    }
    Err(ProbeError(format!(
        "{name}: the daemon at {} answered {status} {}",
        socket.display(),
        body.trim()
    )))
}

fn exchange(socket: &Path, name: &str) -> io::Result<Vec<u8>> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    let request = format!("GET /{name} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;

    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer)?;
    Ok(answer)
}
