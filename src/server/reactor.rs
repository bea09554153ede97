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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Token};
use slab::Slab;

use super::metrics::{command_label, label_name, Metrics, Outcome, Refusal, UNDECODED};
use super::reply::{Completion, Mailbox, PodResult, ReplyHandle};
use super::{PeerPolicy, Server, ServerConfig, ServerEvent};
use crate::cni::{decode_body, PodRequest};
use crate::http::{response, HttpError, Method, Progress, RequestReader};
use crate::socket::SocketFile;

pub(super) const LISTENER: Token = Token(usize::MAX - 1);
pub(super) const WAKER: Token = Token(usize::MAX);

/// How often deadlines are checked while anything is open.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Connection slots kept allocated while none is open.
const RETAINED_SLOTS: usize = 1024;

/// The size of the one read buffer all connections share.
const READ_CHUNK: usize = 64 * 1024;

const SHUTTING_DOWN: &str = "server is shutting down";

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

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
    /// While handling: the command's metrics label and when it started.
    command: usize,
    started: Instant,
}

pub(super) struct Reactor {
    poll: mio::Poll,
    listener: Option<UnixListener>,
    socket_file: SocketFile,
    config: ServerConfig,
    mailbox: Arc<Mailbox>,
    stopping: Arc<AtomicBool>,
    conns: Slab<Connection>,
    next_request_id: u64,
    read_buf: Box<[u8]>,
    completions: Vec<Completion>,
    metrics: Metrics,
    /// Set once shutdown has begun: when the grace period ends.
    draining_until: Option<Instant>,
    /// Set when accept failed for lack of file descriptors: retry on the
    /// next sweep rather than spin.
    accept_paused: bool,
    last_sweep: Instant,
    own_uid: u32,
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
            metrics: Metrics::default(),
            draining_until: None,
            accept_paused: false,
            last_sweep: Instant::now(),
            own_uid: nix::unistd::geteuid().as_raw(),
        })
    }

    pub(super) fn run<H>(mut self, mut handler: H) -> io::Result<()>
    where
        H: FnMut(PodRequest, ReplyHandle),
    {
        let _on_reactor = self.mailbox.enter_reactor();
        let mut events = Events::with_capacity(1024);

        loop {
            let idle =
                self.conns.is_empty() && !self.accept_paused && self.draining_until.is_none();
            let timeout = if idle { None } else { Some(SWEEP_INTERVAL) };
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
            if self.draining_until.is_some() && self.drained() {
                self.finish_shutdown();
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
                    self.emit(ServerEvent::OutOfDescriptors);
                    return;
                }
                // The client went away before it was accepted.
                Err(_) => continue,
            };

            if self.conns.len() >= self.config.max_connections {
                self.metrics.refused(Refusal::ConnectionLimit);
                self.emit(ServerEvent::ConnectionLimit {
                    open: self.conns.len(),
                });
                refuse(&mut stream, 503, "too many connections");
                continue;
            }
            if let Some((uid, pid)) = self.refused_peer(&stream) {
                self.metrics.refused(Refusal::PeerUid);
                self.emit(ServerEvent::PeerRefused { uid, pid });
                refuse(&mut stream, 403, &format!("peer uid {uid} is not allowed"));
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
            let now = Instant::now();
            entry.insert(Connection {
                stream,
                reader: RequestReader::new(self.config.limits),
                phase: Phase::Reading,
                out: Vec::new(),
                written: 0,
                request_id: self.next_request_id,
                deadline: now + self.config.request_timeout,
                command: UNDECODED,
                started: now,
            });

            // The request has often arrived with the connection: read it now
            // instead of waiting for the readiness event.
            self.read_request(key, handler);
        }
    }

    /// The peer's uid and pid when the policy turns it away.
    fn refused_peer(&self, stream: &UnixStream) -> Option<(u32, i32)> {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

        if self.config.peers == PeerPolicy::Anyone {
            return None;
        }
        // Without credentials there is nothing to judge by: refuse.
        let Ok(creds) = getsockopt(stream, PeerCredentials) else {
            return Some((u32::MAX, 0));
        };
        let allowed = match &self.config.peers {
            PeerPolicy::SameUser => creds.uid() == self.own_uid,
            PeerPolicy::Uids(uids) => uids.contains(&creds.uid()),
            PeerPolicy::Anyone => true,
        };
        (!allowed).then(|| (creds.uid(), creds.pid()))
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
                    let command = conn.command;
                    self.metrics.in_flight -= 1;
                    self.metrics.request(command, Outcome::ClientGone, None);
                    self.emit(ServerEvent::ClientGone {
                        command: label_name(command),
                    });
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
            let mut progress = conn.reader.feed(&self.read_buf[..n]);
            if matches!(progress, Ok(Progress::SendContinue)) {
                conn.out.extend_from_slice(response::CONTINUE);
                self.flush(key);
                let Some(conn) = self.conns.get_mut(key) else {
                    return;
                };
                // The body may have come with the head: look at what is
                // already in before waiting for more.
                progress = conn.reader.feed(&[]);
            }
            match progress {
                Ok(Progress::NeedMore | Progress::SendContinue) => {}
                Ok(Progress::Complete) => return self.dispatch(key, handler),
                Err(error) => return self.respond_http_error(key, error),
            }
        }
    }

    /// Routes a complete request: pod requests to the handler, the rest
    /// answered here.
    fn dispatch<H: FnMut(PodRequest, ReplyHandle)>(&mut self, key: usize, handler: &mut H) {
        // On a handed-in socket every connection was accepted before the
        // shutdown, and no other server can answer it: it is served.
        let refusing = self.draining_until.is_some() && !self.socket_file.is_adopted();
        let draining = self.draining_until.is_some();
        let conn = &mut self.conns[key];
        let Some(request) = conn.reader.request() else {
            return;
        };
        let (method, body) = (request.head.method, request.body);
        let mut out = Vec::new();
        let mut rejected = None;

        match request.head.path.as_str() {
            "/" if method != Method::Post => {
                self.metrics.http_error(405);
                rejected = Some((405, "method not allowed"));
                response::method_not_allowed(&mut out, "POST")
            }
            // While draining, plugin-level requests (STATUS, GC) still
            // reach the handler: they ask about the server itself, and
            // only it can answer them in CNI terms ("not available").
            "/" if refusing && !decode_body(body).is_ok_and(|pod| pod.is_plugin_level()) => {
                self.metrics.request(UNDECODED, Outcome::ShuttingDown, None);
                rejected = Some((503, SHUTTING_DOWN));
                response::error_text(&mut out, 503, SHUTTING_DOWN);
            }
            "/" => match decode_body(body) {
                Err(error) => {
                    self.metrics.request(UNDECODED, Outcome::Rejected, None);
                    rejected = Some((400, error.kind()));
                    response::error_text(&mut out, 400, &error.to_string());
                }
                Ok(pod) => {
                    let now = Instant::now();
                    conn.phase = Phase::Handling;
                    conn.deadline = now + self.config.reply_timeout;
                    conn.command = command_label(&pod.command);
                    conn.started = now;
                    self.metrics.in_flight += 1;
                    let reply = ReplyHandle::new(key, conn.request_id, self.mailbox.clone());
                    if catch_unwind(AssertUnwindSafe(|| handler(pod, reply))).is_err() {
                        self.finish_handling(key, Outcome::Failed);
                        let command = self.conns[key].command;
                        self.emit(ServerEvent::HandlerPanicked {
                            command: label_name(command),
                        });
                        response::error_text(&mut out, 500, "the handler panicked");
                        self.respond(key, &out);
                    }
                    return;
                }
            },
            "/healthz" | "/readyz" | "/metrics" if method != Method::Get => {
                self.metrics.http_error(405);
                rejected = Some((405, "method not allowed"));
                response::method_not_allowed(&mut out, "GET")
            }
            "/healthz" => response::write(&mut out, 200, &[("Content-Type", TEXT_PLAIN)], b"ok\n"),
            "/readyz" if draining => response::error_text(&mut out, 503, SHUTTING_DOWN),
            "/readyz" => {
                response::write(&mut out, 200, &[("Content-Type", TEXT_PLAIN)], b"ready\n")
            }
            "/metrics" => self.render_metrics(&mut out),
            _ => {
                self.metrics.http_error(404);
                rejected = Some((404, "no such path"));
                response::not_found(&mut out)
            }
        }
        if let Some((status, reason)) = rejected {
            self.emit(ServerEvent::Rejected { status, reason });
        }
        self.respond(key, &out);
    }

    fn render_metrics(&self, out: &mut Vec<u8>) {
        let mut text = String::with_capacity(4096);
        self.metrics.render(self.conns.len(), &mut text);
        if let Some(extra) = &self.config.extra_metrics {
            extra(&mut text);
        }
        let content_type = "text/plain; version=0.0.4; charset=utf-8";
        response::write(out, 200, &[("Content-Type", content_type)], text.as_bytes());
    }

    /// Counts a request the handler held as done.
    fn finish_handling(&mut self, key: usize, outcome: Outcome) {
        let conn = &self.conns[key];
        let took = conn.started.elapsed();
        self.metrics.in_flight -= 1;
        self.metrics.request(conn.command, outcome, Some(took));
    }

    fn deliver_completions(&mut self) {
        self.mailbox.take(&mut self.completions);
        let mut completions = std::mem::take(&mut self.completions);
        for Completion {
            key,
            request_id,
            result,
            dropped,
        } in completions.drain(..)
        {
            let waiting = self
                .conns
                .get(key)
                .is_some_and(|c| c.request_id == request_id && c.phase == Phase::Handling);
            // Otherwise the client left, or timed out and got its answer.
            if waiting {
                let outcome = match &result {
                    _ if dropped => Outcome::Failed,
                    Ok(_) => Outcome::Success,
                    Err(_) => Outcome::Error,
                };
                self.finish_handling(key, outcome);
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

    fn respond_http_error(&mut self, key: usize, error: HttpError) {
        self.metrics.http_error(error.status());
        self.emit(ServerEvent::Rejected {
            status: error.status(),
            reason: error.as_str(),
        });
        let mut out = Vec::new();
        response::http_error(&mut out, error);
        self.respond(key, &out);
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
        // A burst of connections grows the slab for good; once the last of
        // them is gone, its memory goes back. Late answers for the old keys
        // are told apart by their request IDs, which never repeat.
        if self.conns.is_empty() && self.conns.capacity() > RETAINED_SLOTS {
            self.conns = Slab::new();
        }
    }

    fn begin_shutdown(&mut self) {
        self.draining_until = Some(Instant::now() + self.config.shutdown_grace);
        // New clients of a handed-in socket wait in its queue for the next
        // server, and those already accepted are served; on our own socket
        // they are told we are going.
        if self.socket_file.is_adopted() {
            if let Some(mut listener) = self.listener.take() {
                let _ = self.poll.registry().deregister(&mut listener);
            }
        }
    }

    /// Whether nothing the handler holds or the server owes is left. On a
    /// handed-in socket that includes requests still arriving, until the
    /// grace period ends.
    fn drained(&self) -> bool {
        let idle = self.conns.iter().all(|(_, c)| c.phase == Phase::Reading);
        let grace_over = self
            .draining_until
            .is_some_and(|until| Instant::now() >= until);
        let awaited = self.socket_file.is_adopted() && !grace_over && !self.conns.is_empty();
        idle && !awaited
    }

    fn finish_shutdown(&mut self) {
        self.listener = None;
        self.socket_file.remove();
        for (_, conn) in self.conns.iter_mut() {
            refuse(&mut conn.stream, 503, SHUTTING_DOWN);
        }
        self.conns.clear();
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
                Phase::Reading => {
                    let reason = "request not received in time";
                    self.metrics.http_error(408);
                    self.emit(ServerEvent::Rejected {
                        status: 408,
                        reason,
                    });
                    self.respond_text(key, 408, reason);
                }
                Phase::Handling if grace_over => {
                    self.finish_handling(key, Outcome::ShuttingDown);
                    self.respond_text(key, 503, SHUTTING_DOWN);
                }
                Phase::Handling => {
                    self.finish_handling(key, Outcome::Timeout);
                    let command = self.conns[key].command;
                    self.emit(ServerEvent::HandlerTimedOut {
                        command: label_name(command),
                    });
                    self.respond_text(key, 504, "the handler did not answer in time");
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

    fn emit(&self, event: ServerEvent<'_>) {
        if let Some(hook) = &self.config.on_event {
            hook(&event);
        }
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

/// Answers a connection the server will not serve, without letting it
/// cost more: one best-effort write into a socket buffer that has room.
fn refuse(stream: &mut UnixStream, status: u16, text: &str) {
    let mut out = Vec::new();
    response::error_text(&mut out, status, text);
    let _ = stream.write(&out);
}

fn is_out_of_descriptors(error: &io::Error) -> bool {
    use nix::errno::Errno;
    let code = error.raw_os_error();
    code == Some(Errno::EMFILE as i32) || code == Some(Errno::ENFILE as i32)
}
