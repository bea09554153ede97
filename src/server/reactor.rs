//! The event loop: accept, read a request, hand it over, write the answer,
//! close.
//!
//! Every connection lives in a slab slot whose key is its mio token. It is
//! registered once for both readiness kinds (edge-triggered), so no event
//! needs a re-registration syscall. Deadlines are checked by a sweep a few
//! times a second rather than by a timer per connection: idle connections
//! then cost one slab slot and nothing else.

use std::io::{self, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Token};
use slab::Slab;

use super::reply::{Completion, Mailbox, PodResult, ReplyHandle};
use super::{Server, ServerConfig};
use crate::cni::{decode_body, PodRequest};
use crate::http::{response, Method, Progress, RequestReader};
use crate::socket::SocketFile;

pub(super) const LISTENER: Token = Token(usize::MAX - 1);
pub(super) const WAKER: Token = Token(usize::MAX);

/// How often deadlines are checked while anything is open.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// The size of the one read buffer all connections share.
const READ_CHUNK: usize = 64 * 1024;

const SHUTTING_DOWN: &str = "server is shutting down";

/// Where a connection is in its one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the request.
    Reading,
    /// The handler holds the reply handle.
    Handling,
    /// Writing the answer; the connection closes once it is out.
    Writing,
}

struct Connection {
    stream: UnixStream,
    reader: RequestReader,
    phase: Phase,
    /// Bytes to write: an interim `100 Continue`, then the answer.
    out: Vec<u8>,
    written: usize,
    /// Tells this connection's answer from a late one for an earlier
    /// occupant of the same slab slot.
    request_id: u64,
    /// When the current phase runs out of time.
    deadline: Instant,
}

pub(super) struct Reactor {
    poll: mio::Poll,
    listener: Option<UnixListener>,
    socket_file: SocketFile,
    config: ServerConfig,
    mailbox: Arc<Mailbox>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
    conns: Slab<Connection>,
    next_request_id: u64,
    read_buf: Box<[u8]>,
    completions: Vec<Completion>,
    /// Set once shutdown has begun: when the grace period ends.
    draining_until: Option<Instant>,
    /// Set when accept failed for lack of file descriptors: retry on the
    /// next sweep rather than spin.
    accept_paused: bool,
    last_sweep: Instant,
}

impl Reactor {
    pub(super) fn new(server: Server) -> io::Result<Reactor> {
        let Server {
            socket,
            config,
            poll,
            mailbox,
            stopping,
        } = server;
        let (listener, socket_file) = socket.into_parts();
        let mut listener = UnixListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;

        Ok(Reactor {
            poll,
            listener: Some(listener),
            socket_file,
            config,
            mailbox,
            stopping,
            conns: Slab::new(),
            next_request_id: 0,
            read_buf: vec![0; READ_CHUNK].into_boxed_slice(),
            completions: Vec::new(),
            draining_until: None,
            accept_paused: false,
            last_sweep: Instant::now(),
        })
    }

    pub(super) fn run<H>(mut self, mut handler: H) -> io::Result<()>
    where
        H: FnMut(PodRequest, ReplyHandle),
    {
        let _on_reactor = self.mailbox.enter_reactor();
        let mut events = Events::with_capacity(1024);

        loop {
            let timeout =
                if self.conns.is_empty() && !self.accept_paused && self.draining_until.is_none() {
                    None
                } else {
                    Some(SWEEP_INTERVAL)
                };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                self.socket_file.remove();
                return Err(e);
            }

            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(&mut handler),
                    WAKER => {}
                    Token(key) => self.on_connection_event(key, event, &mut handler),
                }
            }
            self.deliver_completions();

            if self.stopping.load(Ordering::SeqCst) && self.draining_until.is_none() {
                self.begin_shutdown();
            }
            let now = Instant::now();
            if now.duration_since(self.last_sweep) >= SWEEP_INTERVAL {
                self.last_sweep = now;
                self.sweep(now, &mut handler);
            }
            if self.draining_until.is_some() && self.conns.is_empty() {
                return Ok(());
            }
        }
    }

    fn accept<H: FnMut(PodRequest, ReplyHandle)>(&mut self, handler: &mut H) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            let mut stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_out_of_descriptors(&e) => {
                    self.accept_paused = true;
                    return;
                }
                // The client went away before it was accepted.
                Err(_) => continue,
            };

            if self.conns.len() >= self.config.max_connections {
                refuse_busy(&mut stream);
                continue;
            }

            let entry = self.conns.vacant_entry();
            let key = entry.key();
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self
                .poll
                .registry()
                .register(&mut stream, Token(key), interest)
                .is_err()
            {
                continue;
            }
            self.next_request_id += 1;
            entry.insert(Connection {
                stream,
                reader: RequestReader::new(self.config.limits),
                phase: Phase::Reading,
                out: Vec::new(),
                written: 0,
                request_id: self.next_request_id,
                deadline: Instant::now() + self.config.request_timeout,
            });

            // The request has often arrived with the connection: read it now
            // instead of waiting for the readiness event.
            self.read_request(key, handler);
        }
    }

    fn on_connection_event<H: FnMut(PodRequest, ReplyHandle)>(
        &mut self,
        key: usize,
        event: &mio::event::Event,
        handler: &mut H,
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match conn.phase {
            Phase::Reading => {
                if event.is_writable() && conn.written < conn.out.len() {
                    self.flush(key);
                }
                if event.is_readable() || event.is_read_closed() {
                    self.read_request(key, handler);
                }
            }
            Phase::Handling => {
                // A half-closed client may still wait for its answer; one that
                // hung up entirely will never read it.
                if event.is_write_closed() || event.is_error() {
                    self.close(key);
                }
            }
            Phase::Writing => self.flush(key),
        }
    }

    fn read_request<H: FnMut(PodRequest, ReplyHandle)>(&mut self, key: usize, handler: &mut H) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if conn.phase != Phase::Reading {
                return;
            }
            let n = match conn.stream.read(&mut self.read_buf) {
                // The client closed before a whole request arrived.
                Ok(0) => return self.close(key),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(key),
            };
            match conn.reader.feed(&self.read_buf[..n]) {
                Ok(Progress::NeedMore) => {}
                Ok(Progress::SendContinue) => {
                    conn.out.extend_from_slice(response::CONTINUE);
                    self.flush(key);
                }
                Ok(Progress::Complete) => return self.dispatch(key, handler),
                Err(error) => {
                    let mut out = Vec::new();
                    response::http_error(&mut out, error);
                    return self.respond(key, &out);
                }
            }
        }
    }

    /// Routes a complete request: pod requests to the handler, the rest
    /// answered here.
    fn dispatch<H: FnMut(PodRequest, ReplyHandle)>(&mut self, key: usize, handler: &mut H) {
        let conn = &mut self.conns[key];
        let Some(request) = conn.reader.request() else {
            return;
        };
        let mut out = Vec::new();

        if request.head.path != "/" {
            response::not_found(&mut out);
        } else if request.head.method != Method::Post {
            response::method_not_allowed(&mut out, "POST");
        } else {
            match decode_body(request.body) {
                Err(error) => response::error_text(&mut out, 400, &error.to_string()),
                Ok(pod) => {
                    conn.phase = Phase::Handling;
                    conn.deadline = Instant::now() + self.config.reply_timeout;
                    let reply = ReplyHandle::new(key, conn.request_id, self.mailbox.clone());
                    if catch_unwind(AssertUnwindSafe(|| handler(pod, reply))).is_err() {
                        response::error_text(&mut out, 500, "the handler panicked");
                        self.respond(key, &out);
                    }
                    return;
                }
            }
        }
        self.respond(key, &out);
    }

    fn deliver_completions(&mut self) {
        self.mailbox.take(&mut self.completions);
        let mut completions = std::mem::take(&mut self.completions);
        for Completion {
            key,
            request_id,
            result,
        } in completions.drain(..)
        {
            let waiting = self
                .conns
                .get(key)
                .is_some_and(|c| c.request_id == request_id && c.phase == Phase::Handling);
            // Otherwise the client left, or timed out and got its answer.
            if waiting {
                self.respond(key, &answer(&result));
            }
        }
        self.completions = completions;
    }

    /// Queues an answer and starts writing it.
    fn respond(&mut self, key: usize, answer: &[u8]) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.out.extend_from_slice(answer);
        conn.phase = Phase::Writing;
        // A client that never reads its answer is dropped after this.
        conn.deadline = Instant::now() + self.config.request_timeout;
        self.flush(key);
    }

    /// Writes what is pending; a connection whose answer is out is closed.
    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        while conn.written < conn.out.len() {
            match conn.stream.write(&conn.out[conn.written..]) {
                Ok(0) => return self.close(key),
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(key),
            }
        }
        if conn.phase == Phase::Writing {
            self.close(key);
        } else {
            conn.out.clear();
            conn.written = 0;
        }
    }

    fn close(&mut self, key: usize) {
        if self.conns.contains(key) {
            // Dropping the stream closes it, which also takes it out of the
            // poll set: no deregister call is needed.
            drop(self.conns.remove(key));
        }
    }

    fn begin_shutdown(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.socket_file.remove();
        self.draining_until = Some(Instant::now() + self.config.shutdown_grace);

        let reading: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.phase == Phase::Reading)
            .map(|(key, _)| key)
            .collect();
        for key in reading {
            self.respond_text(key, 503, SHUTTING_DOWN);
        }
    }

    /// Answers whatever has run out of time.
    fn sweep<H: FnMut(PodRequest, ReplyHandle)>(&mut self, now: Instant, handler: &mut H) {
        if self.accept_paused {
            self.accept_paused = false;
            self.accept(handler);
        }
        let grace_over = self.draining_until.is_some_and(|until| now >= until);

        let expired: Vec<(usize, Phase)> = self
            .conns
            .iter()
            .filter(|(_, c)| now >= c.deadline || (grace_over && c.phase == Phase::Handling))
            .map(|(key, c)| (key, c.phase))
            .collect();
        for (key, phase) in expired {
            match phase {
                Phase::Reading => self.respond_text(key, 408, "request not received in time"),
                Phase::Handling if grace_over => self.respond_text(key, 503, SHUTTING_DOWN),
                Phase::Handling => {
                    self.respond_text(key, 504, "the handler did not answer in time")
                }
                Phase::Writing => self.close(key),
            }
        }
    }

    fn respond_text(&mut self, key: usize, status: u16, text: &str) {
        let mut out = Vec::new();
        response::error_text(&mut out, status, text);
        self.respond(key, &out);
    }
}

/// Lays out the answer to a handler's result.
fn answer(result: &PodResult) -> Vec<u8> {
    let mut out = Vec::new();
    match result {
        Ok(body) => response::success(&mut out, body),
        Err(error) => error.write_answer(&mut out),
    }
    out
}

/// Tells a connection over the limit so, without letting it cost more.
fn refuse_busy(stream: &mut UnixStream) {
    let mut out = Vec::new();
    response::error_text(&mut out, 503, "too many connections");
    // Best effort: the socket is new, so its buffer has room.
    let _ = stream.write(&out);
}

fn is_out_of_descriptors(error: &io::Error) -> bool {
    use nix::errno::Errno;
    let code = error.raw_os_error();
    code == Some(Errno::EMFILE as i32) || code == Some(Errno::ENFILE as i32)
}
