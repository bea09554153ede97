//! The server: a socket, a single-threaded reactor, and a handler.
//!
//! One thread runs a mio poll loop over the listener and every connection.
//! Each connection reads one request; a `POST /` whose body decodes into a
//! [`PodRequest`] goes to the handler with a [`ReplyHandle`], and anything
//! else is answered by the server itself. The handler runs on the reactor
//! thread, so it must not block: slow work moves the reply handle to
//! another thread and answers from there.

mod reactor;
mod reply;

pub use reply::{PodError, PodResult, ReplyHandle, DROPPED_REPLY};

use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::cni::PodRequest;
use crate::http::Limits;
use crate::socket::{BoundSocket, SocketError};

/// How the server bounds its work. Every field has a default fit for a
/// node's CNI server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Limits on one request's head and body.
    pub limits: Limits,
    /// The most connections open at once; beyond it a new connection is
    /// answered 503 and closed, and the others go on.
    pub max_connections: usize,
    /// How long a client may take to send its whole request (beyond: 408).
    /// This is what closes a client that sends half a request and waits.
    pub request_timeout: Duration,
    /// How long a handler may take to answer (beyond: 504).
    pub reply_timeout: Duration,
    /// At shutdown, how long requests already with the handler may still
    /// take before they are answered 503.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            max_connections: 16 * 1024,
            request_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(150),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// A CNI server bound to its socket, ready to serve.
///
/// # Examples
///
/// ```no_run
/// use cniserver::{Command, Server};
///
/// let server = Server::bind("/run/example/cni.sock")?;
/// server.serve(|request, reply| match request.command {
///     // Answer right here: nothing slow to do.
///     Command::Del => reply.success(Vec::new()),
///     // Real work would move `reply` to a worker thread.
///     other => reply.error(format!("unhandled CNI command {other}")),
/// })?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub struct Server {
    socket: BoundSocket,
    config: ServerConfig,
    poll: mio::Poll,
    mailbox: Arc<reply::Mailbox>,
    stopping: Arc<AtomicBool>,
}

impl Server {
    /// Binds the socket at `path` with the default configuration.
    ///
    /// The socket's folder is created 0700 when missing; see
    /// [`crate::socket`] for what is refused.
    pub fn bind(path: impl AsRef<Path>) -> Result<Server, SocketError> {
        Server::bind_with(path, ServerConfig::default())
    }

    /// Binds the socket at `path` with this configuration.
    pub fn bind_with(path: impl AsRef<Path>, config: ServerConfig) -> Result<Server, SocketError> {
        let socket = BoundSocket::bind(path.as_ref())?;
        Server::with_socket(socket, config).map_err(|e| SocketError::from_io(path.as_ref(), e))
    }

    /// Serves on a socket that already listens, such as one passed by
    /// systemd socket activation. Its file is left in place at exit.
    pub fn from_listener(
        listener: UnixListener,
        path: PathBuf,
        config: ServerConfig,
    ) -> io::Result<Server> {
        Server::with_socket(BoundSocket::adopt(listener, path), config)
    }

    fn with_socket(socket: BoundSocket, config: ServerConfig) -> io::Result<Server> {
        socket.listener().set_nonblocking(true)?;
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), reactor::WAKER)?;
        Ok(Server {
            socket,
            config,
            poll,
            mailbox: Arc::new(reply::Mailbox::new(waker)),
            stopping: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The path the server listens on.
    pub fn path(&self) -> &Path {
        self.socket.path()
    }

    /// A handle that stops the server from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            mailbox: self.mailbox.clone(),
            stopping: self.stopping.clone(),
        }
    }

    /// Serves until shut down, calling `handler` on the reactor thread for
    /// every pod request.
    ///
    /// At shutdown it stops accepting, removes its socket, answers requests
    /// still being read with 503, gives the handler the grace period for
    /// requests it holds, and returns.
    pub fn serve<H>(self, handler: H) -> io::Result<()>
    where
        H: FnMut(PodRequest, ReplyHandle),
    {
        reactor::Reactor::new(self)?.run(handler)
    }
}

/// Stops a running [`Server`]; cheap to clone and `Send`.
#[derive(Clone)]
pub struct ShutdownHandle {
    mailbox: Arc<reply::Mailbox>,
    stopping: Arc<AtomicBool>,
}

impl ShutdownHandle {
    /// Asks the server to stop. It returns from `serve` once the requests
    /// in flight are answered or the grace period is over.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.mailbox.wake();
    }

    /// Whether shutdown has been asked for.
    pub fn is_shutting_down(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// Shuts the server down on SIGTERM or SIGINT.
///
/// Call it from the main thread before any other thread starts: it blocks
/// both signals in the calling thread (threads started later inherit that)
/// and waits for them on a thread of its own, so no signal handler runs.
pub fn shutdown_on_signals(handle: ShutdownHandle) -> io::Result<()> {
    use nix::sys::signal::{SigSet, Signal};

    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().map_err(io::Error::from)?;

    std::thread::Builder::new()
        .name("cniserver-signals".into())
        .spawn(move || {
            if signals.wait().is_ok() {
                handle.shutdown();
            }
        })?;
    Ok(())
}
