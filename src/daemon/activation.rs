//! systemd socket activation: serving a socket the service manager holds.
//!
//! With a `.socket` unit, systemd binds the listening socket itself and
//! starts the daemon with it as file descriptor 3, announced by
//! `LISTEN_PID` (this process) and `LISTEN_FDS` (how many). Connections
//! made while the daemon restarts then wait in the socket's queue instead
//! of being refused.
//!
//! This is the crate's only unsafe code: taking ownership of descriptor 3.
//! It is sound because systemd passed that descriptor to this very process
//! (`LISTEN_PID` is our PID) and nothing else in the process claims it: it
//! is taken once, at start, before any other thread runs.

use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{getsockopt, sockopt, SockType};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Why the socket systemd passed cannot be served.
#[derive(Debug)]
pub struct ActivationError(String);

impl fmt::Display for ActivationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ActivationError {}

/// The listening socket systemd passed to this process, if it passed one.
///
/// `socket` is the path the daemon was told to serve (`--socket`): the
/// passed socket must be bound there, since shims find the socket, and
/// the settings file beside it, by that path.
pub fn inherited_listener(socket: &Path) -> Result<Option<UnixListener>, ActivationError> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if !for_us {
        return Ok(None);
    }
    let count = std::env::var("LISTEN_FDS").unwrap_or_default();
    match count.trim() {
        "" | "0" => return Ok(None),
        "1" => {}
        other => {
            return Err(ActivationError(format!(
                "systemd passed {other:?} sockets; the daemon serves exactly one \
                 (one ListenStream= in the socket unit)"
            )))
        }
    }

    if fcntl(LISTEN_FDS_START, FcntlArg::F_GETFD).is_err() {
        return Err(ActivationError(
            "LISTEN_FDS says systemd passed a socket, but fd 3 is not open".to_owned(),
        ));
    }
    // SAFETY: see the module docs; LISTEN_PID names this process and fd 3
    // is open, so it is the socket systemd passed, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
    let listener = check_listener(fd).map_err(|e| {
        ActivationError(format!(
            "the socket systemd passed (fd 3) cannot be served: {e}"
        ))
    })?;

    let bound: Option<PathBuf> = listener
        .local_addr()
        .ok()
        .and_then(|addr| addr.as_pathname().map(Path::to_owned));
    if bound.as_deref() != Some(socket) {
        let bound = bound.map_or("no path".to_owned(), |p| p.display().to_string());
        return Err(ActivationError(format!(
            "the socket systemd passed is bound at {bound}, not at --socket {}; \
             make ListenStream= and --socket name the same path",
            socket.display()
        )));
    }
    Ok(Some(listener))
}

/// Checks that `fd` is a listening Unix stream socket, and keeps it from
/// being inherited by the plugins the daemon starts.
fn check_listener(fd: OwnedFd) -> io::Result<UnixListener> {
    if getsockopt(&fd, sockopt::SockType)? != SockType::Stream {
        return Err(io::Error::other("it is not a stream socket"));
    }
    if !getsockopt(&fd, sockopt::AcceptConn)? {
        return Err(io::Error::other("it is not listening"));
    }
    // systemd passes it without close-on-exec; plugins must not hold it.
    fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC),
    )?;
    let listener = UnixListener::from(fd);
    listener
        .local_addr()
        .map_err(|_| io::Error::other("it is not a Unix socket"))?;
    Ok(listener)
}
