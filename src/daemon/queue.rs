//! The work queue: a bounded pool of worker threads, and per-container
//! lanes that keep one container's requests in arrival order.
//!
//! The reactor thread must never block, and a plugin run can take seconds,
//! so every request becomes a job that a worker thread runs. Requests
//! for different containers run in parallel, up to the number of workers;
//! requests for one container ID wait in that container's lane and run
//! one at a time, because a DEL racing the ADD it undoes would leave
//! half-built interfaces and leaked addresses behind.
//!
//! Three things answer a request without running anything, all with the
//! CNI code 11 ("try again later") that tells the runtime to retry:
//!
//! - the queue already holds `max_queue` waiting jobs;
//! - a DEL arrives for a container whose ADD is still waiting: the ADD is
//!   dropped (the DEL would undo it anyway) and the DEL runs;
//! - the request waited past its deadline, or the daemon is stopping.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::delegate::{self, cni_version_of_bytes, Delegation, PluginPath};
use super::error::{CniError, Outcome, TRY_AGAIN_LATER};
use super::log::{self, Level, Value};
use super::metrics::{DaemonMetrics, Rejection};
use crate::cni::{Command, PodRequest};
use crate::server::{PodError, ReplyHandle};

/// How the queue runs its jobs.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// How many plugins may run at once.
    pub workers: usize,
    /// How many requests may wait for a worker; beyond it new requests are
    /// refused at once.
    pub max_queue: usize,
    /// How long a request may take from its arrival to its answer, queue
    /// wait included; a plugin still running then is killed.
    pub request_timeout: Duration,
    /// Where delegate plugins are found.
    pub plugins: PluginPath,
    /// The MTU for netconfs that name none (`--mtu`).
    pub mtu: Option<u16>,
}

/// One pod request on its way through the queue.
struct Job {
    request: PodRequest,
    reply: ReplyHandle,
    arrived: Instant,
    deadline: Instant,
}

impl Job {
    fn new(request: PodRequest, reply: ReplyHandle, timeout: Duration) -> Job {
        let arrived = Instant::now();
        Job {
            request,
            reply,
            arrived,
            deadline: arrived + timeout,
        }
    }

    /// Answers without running anything, with code 11 and `msg`.
    fn refuse(self, msg: &str) {
        let version = cni_version_of_bytes(&self.request.config);
        let outcome = Outcome::failure(&CniError::new(TRY_AGAIN_LATER, msg), &version);
        self.finish(outcome);
    }

    /// Logs the request's line and sends its answer.
    fn finish(self, outcome: Outcome) {
        let request = &self.request;
        let elapsed_ms = self.arrived.elapsed().as_millis();
        let pod = format!("{}/{}", request.pod_namespace, request.pod_name);
        let result = match &outcome {
            Outcome::Success(_) => "outcome=ok".to_owned(),
            Outcome::Failure { code, .. } => format!("outcome=error code={code}"),
        };
        log::info(format_args!(
            "request command={} container={} ifname={} pod={} {result} duration_ms={elapsed_ms}",
            Value(request.command.as_str()),
            Value(&request.sandbox_id),
            Value(&request.ifname),
            Value(&pod),
        ));
        if let (true, Outcome::Failure { json, .. }) = (log::enabled(Level::Debug), &outcome) {
            // The answer is a CNI error: its msg is ours or the plugin's,
            // never a value from the request's environment.
            log::debug(format_args!(
                "request container={} answer={}",
                Value(&request.sandbox_id),
                String::from_utf8_lossy(json)
            ));
        }

        match outcome {
            Outcome::Success(body) => self.reply.success(body),
            Outcome::Failure { json, .. } => self.reply.error(PodError::cni_json(json)),
        }
    }

    /// Whether a DEL for `del` makes this job pointless.
    fn is_undone_by(&self, del: &PodRequest) -> bool {
        self.request.command == Command::Add && self.request.ifname == del.ifname
    }
}

/// The jobs of one container ID.
#[derive(Default)]
struct Lane {
    /// A worker runs one of this container's jobs.
    running: bool,
    /// Its jobs not started yet, in arrival order.
    waiting: VecDeque<Job>,
}

struct State {
    lanes: HashMap<String, Lane>,
    /// Container IDs whose lane has a job ready to start.
    ready: VecDeque<String>,
    /// Jobs waiting in all lanes.
    waiting: usize,
    /// New requests are taken; false once the daemon is stopping.
    accepting: bool,
    /// Workers exit once there is nothing left for them.
    stopped: bool,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    settings: QueueSettings,
    /// Set when the daemon exits: running plugins are killed.
    abort: AtomicBool,
    metrics: Arc<DaemonMetrics>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// Changes the count of waiting jobs, and the gauge that shows it.
    fn set_waiting(&mut self, waiting: usize, metrics: &DaemonMetrics) {
        self.waiting = waiting;
        metrics.set_queued(waiting);
    }
}

/// The handle requests are queued through; cheap to clone, `Send`.
#[derive(Clone)]
pub struct WorkQueue {
    shared: Arc<Shared>,
}

/// The worker threads, to be stopped when the server is done.
pub struct Workers {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl WorkQueue {
    /// Starts the worker threads, which count what they do in `metrics`.
    pub fn start(
        settings: QueueSettings,
        metrics: Arc<DaemonMetrics>,
    ) -> std::io::Result<(WorkQueue, Workers)> {
        let worker_count = settings.workers.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                lanes: HashMap::new(),
                ready: VecDeque::new(),
                waiting: 0,
                accepting: true,
                stopped: false,
            }),
            work: Condvar::new(),
            settings,
            abort: AtomicBool::new(false),
            metrics,
        });

        let mut workers = Workers {
            shared: shared.clone(),
            threads: Vec::with_capacity(worker_count),
        };
        for i in 0..worker_count {
            let shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("cniserverd-worker-{i}"))
                .spawn(move || work(&shared));
            match thread {
                Ok(thread) => workers.threads.push(thread),
                Err(e) => {
                    workers.stop();
                    return Err(e);
                }
            }
        }
        Ok((WorkQueue { shared }, workers))
    }

    /// Queues a request; its answer comes from a worker, or at once when
    /// the request is refused.
    pub fn submit(&self, request: PodRequest, reply: ReplyHandle) {
        let shared = &self.shared;
        let job = Job::new(request, reply, shared.settings.request_timeout);
        let mut undone = Vec::new();

        let refused = {
            let mut state = shared.lock();
            if !state.accepting {
                Some((job, Rejection::ShuttingDown, "the daemon is shutting down"))
            } else {
                if job.request.command == Command::Del {
                    undone = take_undone_adds(&mut state, &job.request, &shared.metrics);
                }
                if state.waiting >= shared.settings.max_queue {
                    let msg = "the daemon's request queue is full";
                    Some((job, Rejection::QueueFull, msg))
                } else {
                    enqueue(&mut state, job, &shared.metrics);
                    shared.work.notify_one();
                    None
                }
            }
        };

        // Answers go out with the lock released.
        if let Some((job, why, msg)) = refused {
            shared.metrics.rejected(why);
            job.refuse(msg);
        }
        shared.metrics.cancelled(undone.len());
        for job in undone {
            job.refuse("cancelled: a DEL for the same container arrived before this ADD ran");
        }
    }

    /// Stops taking requests and answers every waiting one: the daemon is
    /// going away. Running jobs go on.
    pub fn drain(&self) {
        let drained: Vec<Job> = {
            let mut state = self.shared.lock();
            state.accepting = false;
            state.set_waiting(0, &self.shared.metrics);
            state.ready.clear();
            let drained = state
                .lanes
                .values_mut()
                .flat_map(|lane| lane.waiting.drain(..))
                .collect();
            // A running lane is freed by its worker when its job is done.
            state.lanes.retain(|_, lane| lane.running);
            drained
        };
        for job in drained {
            self.shared.metrics.rejected(Rejection::ShuttingDown);
            job.refuse("the daemon is shutting down");
        }
    }
}

impl Workers {
    /// Answers the waiting jobs, kills plugins still running, and joins
    /// the threads. The server is done by now, so no answer is awaited.
    pub fn stop(mut self) {
        WorkQueue {
            shared: self.shared.clone(),
        }
        .drain();
        self.shared.abort.store(true, Ordering::SeqCst);
        self.shared.lock().stopped = true;
        self.shared.work.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Takes out the waiting ADDs a DEL for the same container undoes.
fn take_undone_adds(state: &mut State, del: &PodRequest, metrics: &DaemonMetrics) -> Vec<Job> {
    let Some(lane) = state.lanes.get_mut(&del.sandbox_id) else {
        return Vec::new();
    };
    let (undone, kept): (VecDeque<Job>, VecDeque<Job>) = lane
        .waiting
        .drain(..)
        .partition(|job| job.is_undone_by(del));
    lane.waiting = kept;
    let waiting = state.waiting - undone.len();
    state.set_waiting(waiting, metrics);
    undone.into()
}

fn enqueue(state: &mut State, job: Job, metrics: &DaemonMetrics) {
    let id = job.request.sandbox_id.clone();
    let lane = state.lanes.entry(id.clone()).or_default();
    lane.waiting.push_back(job);
    if !lane.running && lane.waiting.len() == 1 {
        state.ready.push_back(id);
    }
    let waiting = state.waiting + 1;
    state.set_waiting(waiting, metrics);
}

/// A worker thread: takes the next ready job, runs it, frees its lane.
fn work(shared: &Shared) {
    while let Some((id, job)) = next_job(shared) {
        shared.metrics.worker_started();
        let outcome = run_job(shared, &job);
        // Before the answer goes out, so that a client that has its answer
        // never sees its worker still counted busy.
        shared.metrics.worker_finished();
        job.finish(outcome);

        let mut state = shared.lock();
        let lane_has_more = match state.lanes.get_mut(&id) {
            Some(lane) => {
                lane.running = false;
                !lane.waiting.is_empty()
            }
            None => false,
        };
        if lane_has_more {
            state.ready.push_back(id);
            shared.work.notify_one();
        } else {
            state.lanes.remove(&id);
        }
    }
}

/// Waits for a job whose lane is free and marks the lane running; `None`
/// once the queue has stopped.
fn next_job(shared: &Shared) -> Option<(String, Job)> {
    let mut state = shared.lock();
    loop {
        if state.stopped {
            return None;
        }
        let Some(id) = state.ready.pop_front() else {
            state = shared
                .work
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            continue;
        };
        // A lane may be listed twice, or emptied by a DEL since it was
        // listed: only a free lane with a job gives one.
        let Some(lane) = state.lanes.get_mut(&id) else {
            continue;
        };
        if lane.running {
            continue;
        }
        match lane.waiting.pop_front() {
            Some(job) => {
                lane.running = true;
                let waiting = state.waiting - 1;
                state.set_waiting(waiting, &shared.metrics);
                return Some((id, job));
            }
            None => {
                state.lanes.remove(&id);
            }
        }
    }
}

fn run_job(shared: &Shared, job: &Job) -> Outcome {
    let request = &job.request;
    let settings = &shared.settings;
    let version = || cni_version_of_bytes(&request.config);

    if Instant::now() >= job.deadline {
        shared.metrics.rejected(Rejection::Expired);
        let msg = format!(
            "the request waited for a worker past its {:?} deadline",
            settings.request_timeout
        );
        return Outcome::failure(&CniError::new(TRY_AGAIN_LATER, msg), &version());
    }
    let delegation = match Delegation::prepare(request, &settings.plugins, settings.mtu) {
        Ok(delegation) => delegation,
        Err(outcome) => return outcome,
    };
    log::debug(format_args!(
        "running plugin={} path={} command={} container={}",
        Value(&delegation.plugin),
        delegation.executable.display(),
        Value(request.command.as_str()),
        Value(&request.sandbox_id),
    ));
    let run = delegate::run(
        &delegation,
        &request.command,
        job.deadline,
        settings.request_timeout,
        &shared.abort,
    );
    shared
        .metrics
        .plugin_run(&delegation.plugin, run.result, run.took);
    log::debug(format_args!(
        "plugin finished plugin={} result={} duration_ms={} container={}",
        Value(&delegation.plugin),
        run.result.as_str(),
        run.took.as_millis(),
        Value(&request.sandbox_id),
    ));
    run.outcome
}
