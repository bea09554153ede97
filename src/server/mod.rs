//! The server: a socket, a single-threaded reactor, and a handler.
//!
//! One thread runs a mio poll loop over the listener and every connection.
//! Each connection reads one request; a `POST /` whose body decodes into a
//! [`PodRequest`] goes to the handler with a [`ReplyHandle`], and anything
//! else is answered by the server itself. The handler runs on the reactor
//! thread, so it must not block: slow work moves the reply handle to
//! another thread and answers from there.

mod metrics;
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

/// How the server bounds its work and whom it serves. Every field has a
/// default fit for a node's CNI server.
#[derive(Clone)]
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
    /// Who may talk to the server, checked on each connection after the
    /// socket's file mode.
    pub peers: PeerPolicy,
    /// Told about refusals, timeouts, panics and clients that left. The
    /// server logs nothing itself.
    pub on_event: Option<EventHook>,
    /// Appends the embedder's own metrics to `GET /metrics`, in the text
    /// exposition format. It runs on the reactor thread: keep it quick.
    pub extra_metrics: Option<MetricsHook>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            max_connections: 16 * 1024,
            request_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(150),
            shutdown_grace: Duration::from_secs(30),
            peers: PeerPolicy::SameUser,
            on_event: None,
            extra_metrics: None,
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("limits", &self.limits)
            .field("max_connections", &self.max_connections)
            .field("request_timeout", &self.request_timeout)
            .field("reply_timeout", &self.reply_timeout)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("peers", &self.peers)
            .field("on_event", &self.on_event.is_some())
            .field("extra_metrics", &self.extra_metrics.is_some())
            .finish()
    }
}

/// Which peers may talk to the server, judged by their `SO_PEERCRED` uid.
///
/// # Background
///
/// The socket's folder (0700) and file (0600) already keep other users
/// out; this second check holds even if a mode is loosened by mistake or
/// the socket is handed in by a service manager with other permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerPolicy {
    /// Only processes of the server's own effective uid.
    SameUser,
    /// Only processes of these uids.
    Uids(Vec<u32>),
    /// Anyone who can open the socket.
    Anyone,
}

/// Receives the server's [`ServerEvent`]s, on the reactor thread.
pub type EventHook = Arc<dyn Fn(&ServerEvent<'_>) + Send + Sync>;

/// Writes extra metrics for `GET /metrics`.
pub type MetricsHook = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Something the server did on its own that an operator may want to know.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerEvent<'a> {
    /// A peer whose uid the policy does not allow was turned away.
    PeerRefused {
        /// The peer's uid.
        uid: u32,
        /// The peer's process ID.
        pid: i32,
    },
    /// A connection was turned away because too many were open.
    ConnectionLimit {
        /// How many were open.
        open: usize,
    },
    /// Accepting failed for lack of file descriptors; accepting resumes on
    /// the next sweep.
    OutOfDescriptors,
    /// The handler panicked; the client got a 500.
    HandlerPanicked {
        /// The request's command.
        command: &'a str,
    },
    /// The handler did not answer within the reply timeout; the client
    /// got a 504.
    HandlerTimedOut {
        /// The request's command.
        command: &'a str,
    },
    /// The client closed its connection before its answer was ready.
    ClientGone {
        /// The request's command.
        command: &'a str,
    },
    /// A request was answered with an error by the server itself, before
    /// or instead of the handler: malformed HTTP, a limit, a body that does
    /// not decode, a request that took too long to arrive, or shutdown.
    Rejected {
        /// The status it was answered with.
        status: u16,
        /// Why, as a short phrase that holds no value from the request.
        reason: &'a str,
    },
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
    /// Besides `POST /` it answers `GET /healthz` (200 while it runs),
    /// `GET /readyz` (200, then 503 once shutdown starts) and
    /// `GET /metrics`.
    ///
    /// At shutdown readiness goes false and new pod requests get 503
    /// "server is shutting down", while requests the handler holds have the
    /// grace period to finish. Plugin-level requests (STATUS, GC) still
    /// reach the handler then, so that it can answer them from its own
    /// state (see [`ShutdownHandle::is_shutting_down`]). Then the socket is removed and `serve`
    /// returns. A socket handed in by a service manager stops being
    /// accepted on at once instead, so that new clients wait in its queue
    /// for the next server, while requests on the connections already
    /// accepted are served as usual within the grace period: no other
    /// server could answer them.
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
