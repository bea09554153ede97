//! Answers travelling from handlers, on any thread, back to the reactor.

use std::cell::Cell;
use std::fmt;
use std::sync::{Arc, Mutex};

use mio::Waker;

/// What a handler answers: the success body (CNI result JSON, or empty), or
/// an error.
pub type PodResult = Result<Vec<u8>, PodError>;

/// A handler's error: a status code and a body.
///
/// A plain message is sent as the Go server sent errors, as text with a
/// newline. A CNI error JSON (`{"cniVersion":..,"code":..,"msg":..}`) is
/// sent unchanged, so the shim can print it to the runtime as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodError {
    status: u16,
    body: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ErrorBody {
    Message(String),
    CniJson(Vec<u8>),
}

impl PodError {
    /// A 400 with a text message.
    pub fn message(text: impl Into<String>) -> PodError {
        PodError {
            status: 400,
            body: ErrorBody::Message(text.into()),
        }
    }

    /// A 400 whose body is a CNI error JSON, passed through unchanged.
    pub fn cni_json(json: Vec<u8>) -> PodError {
        PodError {
            status: 400,
            body: ErrorBody::CniJson(json),
        }
    }

    /// The same error with another status code (any but 200).
    pub fn with_status(mut self, status: u16) -> PodError {
        self.status = if status == 200 { 500 } else { status };
        self
    }

    /// The status code the answer carries.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The body as sent: the message with its newline, or the JSON.
    pub fn body(&self) -> Vec<u8> {
        match &self.body {
            ErrorBody::Message(text) => format!("{text}\n").into_bytes(),
            ErrorBody::CniJson(json) => json.clone(),
        }
    }

    pub(crate) fn write_answer(&self, out: &mut Vec<u8>) {
        match &self.body {
            ErrorBody::Message(text) => crate::http::response::error_text(out, self.status, text),
            ErrorBody::CniJson(json) => crate::http::response::error_body(out, self.status, json),
        }
    }
}

impl fmt::Display for PodError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.body {
            ErrorBody::Message(text) => f.write_str(text),
            ErrorBody::CniJson(json) => f.write_str(&String::from_utf8_lossy(json)),
        }
    }
}

impl std::error::Error for PodError {}

impl From<String> for PodError {
    fn from(text: String) -> PodError {
        PodError::message(text)
    }
}

impl From<&str> for PodError {
    fn from(text: &str) -> PodError {
        PodError::message(text)
    }
}

/// The text sent when a reply handle is dropped without an answer.
pub const DROPPED_REPLY: &str = "the handler dropped the request without answering";

/// An answer on its way to the reactor, addressed to one connection.
pub(crate) struct Completion {
    pub key: usize,
    pub request_id: u64,
    pub result: PodResult,
    /// The handle was dropped unanswered; `result` says so to the client.
    pub dropped: bool,
}

/// The mailbox between reply handles and the reactor.
pub(crate) struct Mailbox {
    completions: Mutex<Vec<Completion>>,
    waker: Waker,
}

thread_local! {
    /// The mailbox of the reactor running on this thread, if any: answers
    /// given on that thread need no wake-up, the reactor looks right after
    /// the handler returns.
    static REACTOR_MAILBOX: Cell<*const Mailbox> = const { Cell::new(std::ptr::null()) };
}

impl Mailbox {
    pub fn new(waker: Waker) -> Mailbox {
        Mailbox {
            completions: Mutex::new(Vec::new()),
            waker,
        }
    }

    pub fn post(&self, completion: Completion) {
        self.completions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(completion);
        let on_reactor = REACTOR_MAILBOX.with(|current| std::ptr::eq(current.get(), self));
        if !on_reactor {
            // A failed wake leaves the answer queued for the next event; the
            // reactor also sweeps the mailbox on its periodic tick.
            let _ = self.waker.wake();
        }
    }

    pub fn wake(&self) {
        let _ = self.waker.wake();
    }

    pub fn take(&self, into: &mut Vec<Completion>) {
        let mut queue = self
            .completions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::swap(&mut *queue, into);
    }

    /// Marks this thread as the reactor's until the guard drops.
    pub fn enter_reactor(self: &Arc<Self>) -> ReactorGuard {
        let previous = REACTOR_MAILBOX.with(|current| current.replace(Arc::as_ptr(self)));
        ReactorGuard { previous }
    }
}

pub(crate) struct ReactorGuard {
    previous: *const Mailbox,
}

impl Drop for ReactorGuard {
    fn drop(&mut self) {
        REACTOR_MAILBOX.with(|current| current.set(self.previous));
    }
}

/// The way back to the client for one pod request.
///
/// It is `Send`: answer at once from the handler, or move it to another
/// thread and answer when the work is done; answering wakes the reactor.
/// Dropping it unanswered sends the client a 500 rather than leaving the
/// connection hanging.
pub struct ReplyHandle {
    key: usize,
    request_id: u64,
    mailbox: Option<Arc<Mailbox>>,
}

impl ReplyHandle {
    pub(crate) fn new(key: usize, request_id: u64, mailbox: Arc<Mailbox>) -> ReplyHandle {
        ReplyHandle {
            key,
            request_id,
            mailbox: Some(mailbox),
        }
    }

    /// Sends the answer.
    pub fn send(mut self, result: PodResult) {
        self.post(result, false);
    }

    /// Sends a success with this body (a CNI result, or empty).
    pub fn success(self, body: Vec<u8>) {
        self.send(Ok(body));
    }

    /// Sends an error.
    pub fn error(self, error: impl Into<PodError>) {
        self.send(Err(error.into()));
    }

    fn post(&mut self, result: PodResult, dropped: bool) {
        if let Some(mailbox) = self.mailbox.take() {
            mailbox.post(Completion {
                key: self.key,
                request_id: self.request_id,
                result,
                dropped,
            });
        }
    }
}

impl Drop for ReplyHandle {
    fn drop(&mut self) {
        if self.mailbox.is_some() {
            self.post(Err(PodError::message(DROPPED_REPLY).with_status(500)), true);
        }
    }
}

impl fmt::Debug for ReplyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyHandle")
            .field("request_id", &self.request_id)
            .finish()
    }
}
