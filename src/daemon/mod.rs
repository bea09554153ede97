//! `cniserverd`, the thick-plugin daemon: it serves the CNI server socket
//! and runs real CNI plugins on the shim's behalf.
//!
//! ```text
//! runtime --exec--> cniserver-shim --HTTP over the socket--> cniserverd
//!                                                              | exec
//!                                                              v
//!                                          delegate plugin (e.g. bridge)
//! ```
//!
//! STATUS is the one request the daemon answers itself, from its own
//! state: success while it serves, the spec's code 50 ("plugin not
//! available") once it is stopping. GC goes to the delegate like the pod
//! verbs.
//!
//! The runtime execs the shim as if it were the plugin. The shim forwards
//! its environment and netconf; the daemon execs the plugin named by the
//! netconf key `delegateType`, found in the daemon's own plugin path, with
//! the request's `CNI_*` variables and the netconf (its `type` set to the
//! plugin's name) on stdin, and answers with what the plugin printed. The
//! shim prints that to the runtime, so the runtime sees the plugin's own
//! result or CNI error.
//!
//! Once it listens, the daemon publishes `config.json` beside its socket
//! (see [`crate::settings`]): shims read it before an ADD to know a server
//! is up, and it carries the `--mtu` when one is set. It is left in place
//! at exit.
//!
//! The reactor thread only parses and queues; plugins run on a bounded
//! pool of worker threads ([`queue`]), one at a time per container. Each
//! run has a deadline, after which the plugin's whole process group is
//! killed ([`delegate`]).
//!
//! SIGTERM, SIGINT and SIGHUP all stop the daemon the same graceful way:
//! new requests are refused, running plugins finish within the shutdown
//! grace, the socket is removed and the exit status is 0. SIGHUP does not
//! reload anything: there is no config file to reload, and its default
//! action would kill the daemon with its plugins orphaned.
//!
//! For deployment the daemon can also serve a socket systemd holds
//! ([`activation`]), install the shim and the runtime's network config
//! ([`install`]), and answer its own liveness and readiness probes
//! ([`probe`]). `GET /metrics` shows the server library's metrics and the
//! daemon's own: its queue, its workers and its plugin runs ([`metrics`]).
//!
//! # Security
//!
//! Only root can connect to the socket (see [`crate::socket`]), and the
//! daemon runs plugins as root, so what a request may run is narrowed to
//! plain names inside the plugin path, and what it may hand them to the
//! `CNI_*` variables (with a fixed `PATH`). The request's environment (which may hold secrets)
//! never reaches a plugin, a log line or an error.

pub mod activation;
pub mod config;
pub mod delegate;
pub mod error;
pub mod events;
pub mod install;
pub mod log;
pub mod metrics;
pub mod probe;
pub mod queue;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use serde_json::json;

use crate::cni::{Command, PodRequest};
use crate::server::{PodError, ReplyHandle, Server, ServerConfig, ServerEvent, ShutdownHandle};
use crate::settings;
use crate::socket::SocketError;
use config::{parse_args, DaemonConfig, FlagEnv, Invocation, USAGE};
use error::{CniError, PLUGIN_NOT_AVAILABLE};
use events::EventLog;
use install::InstallError;
use log::Value;
use metrics::DaemonMetrics;
use queue::{QueueSettings, WorkQueue};

/// How much longer than a request's deadline the server waits for its
/// answer: time to kill and reap the plugin and send the error, so the
/// client gets the daemon's answer rather than the server's 504.
const REPLY_MARGIN: Duration = Duration::from_secs(10);

/// Runs the daemon with these arguments (without the program name) and
/// returns the process's exit status: 0 after a clean stop, 1 when it
/// could not serve, 2 for a bad command line.
pub fn main<I>(args: I, env: &FlagEnv) -> ExitCode
where
    I: IntoIterator<Item = OsString>,
{
    let config = match parse_args(args, env) {
        Ok(Invocation::Run(config)) => config,
        Ok(Invocation::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Version) => {
            println!("cniserverd {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Probe { endpoint, socket }) => {
            return match probe::probe(&socket, endpoint) {
                Ok(()) => {
                    println!("{}: ok", endpoint.as_str());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cniserverd probe: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Err(e) => {
            eprintln!("cniserverd: {e}\ntry 'cniserverd --help' for the flags");
            return ExitCode::from(2);
        }
    };

    log::set_level(config.log_level);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error(format_args!("{e}"));
            ExitCode::FAILURE
        }
    }
}

/// Why the daemon could not serve.
#[derive(Debug)]
pub enum DaemonError {
    /// The socket could not be set up.
    Listen(SocketError),
    /// The socket systemd passed cannot be served.
    Activation(String),
    /// The shim or the network config could not be installed.
    Install(InstallError),
    /// The settings file for shims could not be written beside the socket.
    Settings(io::Error),
    /// A thread could not be started, or signals could not be blocked.
    Start(&'static str, io::Error),
    /// The reactor failed while serving.
    Serve(io::Error),
}

impl fmt::Display for DaemonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonError::Listen(e) => write!(f, "cannot listen: {e}"),
            DaemonError::Activation(e) => write!(f, "socket activation: {e}"),
            DaemonError::Install(e) => write!(f, "{e}"),
            DaemonError::Settings(e) => write!(f, "cannot publish settings for shims: {e}"),
            DaemonError::Start(what, e) => write!(f, "cannot start {what}: {e}"),
            DaemonError::Serve(e) => write!(f, "serving failed: {e}"),
        }
    }
}

impl std::error::Error for DaemonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DaemonError::Listen(e) => Some(e),
            DaemonError::Activation(_) => None,
            DaemonError::Install(e) => Some(e),
            DaemonError::Settings(e) | DaemonError::Start(_, e) | DaemonError::Serve(e) => Some(e),
        }
    }
}

/// Serves until SIGTERM, SIGINT or SIGHUP, then stops cleanly.
///
/// Call it from the main thread before starting any other: it blocks these
/// signals so that every thread it starts inherits the mask and only its
/// signal thread sees them.
pub fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    // Blocked before anything is published: a stop signal that comes right
    // after config.json or the conflist appear must still stop cleanly.
    let signals = block_stop_signals()?;

    if let Some(bin_dir) = &config.install_shim {
        let installed = install::install_shim(bin_dir).map_err(DaemonError::Install)?;
        log::info(format_args!(
            "installed the shim at {}",
            installed.display()
        ));
    }

    let conflist = config
        .conflist
        .as_deref()
        .map(install::Conflist::load)
        .transpose()
        .map_err(DaemonError::Install)?;

    if let Some(conflist) = &conflist {
        warn_of_other_sockets(conflist, &config.socket);
    }

    let metrics = Arc::new(DaemonMetrics::new(config.workers));
    let (server, inherited) = open_server(&config, &metrics)?;
    // Shims read this file before an ADD to learn that a server is up; it
    // stays when the daemon stops, so that a shim can tell a stopped
    // server from one that was never installed.
    let mut published = json!({"server": "cniserverd", "version": env!("CARGO_PKG_VERSION")});
    if let Some(mtu) = config.mtu {
        published["mtu"] = json!(mtu);
    }
    settings::write_settings(server.path(), &published).map_err(DaemonError::Settings)?;

    // The socket takes connections from here on, so the runtime may now
    // be pointed at the shim.
    let conflist = match conflist {
        Some(conflist) => {
            let installed = conflist
                .install(&config.cni_conf_dir)
                .map_err(DaemonError::Install)?;
            log::info(format_args!(
                "installed the network config at {}",
                installed.display()
            ));
            Some(installed)
        }
        None => None,
    };

    let served = serve(server, inherited, signals, &config, metrics);

    if let (true, Some(installed)) = (config.remove_conflist_on_exit, conflist) {
        match install::remove_conflist(&installed) {
            Ok(()) => log::info(format_args!("removed {}", installed.display())),
            Err(e) => log::error(format_args!("{e}")),
        }
    }
    served?;
    log::info(format_args!("stopped"));
    Ok(())
}

/// Warns when the network config points its shims at another socket than
/// the one served: the runtime would then call shims that reach no daemon,
/// or another one. Not an error, since the operator may run a second
/// daemon there on purpose, or move the socket with a bind mount.
fn warn_of_other_sockets(conflist: &install::Conflist, served: &std::path::Path) {
    for shim_socket in conflist.shim_sockets() {
        if shim_socket != served {
            log::warn(format_args!(
                "the network config's shim talks to another socket conflist={} shim_socket={} socket={}",
                Value(&conflist.source().to_string_lossy()),
                Value(&shim_socket.to_string_lossy()),
                Value(&served.to_string_lossy()),
            ));
        }
    }
}

/// Binds the socket, or takes the one systemd passed (see
/// [`Server::from_listener`] for how that changes shutdown); says which.
fn open_server(
    config: &DaemonConfig,
    metrics: &Arc<DaemonMetrics>,
) -> Result<(Server, bool), DaemonError> {
    let scraped = metrics.clone();
    let events = EventLog::new();
    let server_config = ServerConfig {
        reply_timeout: config.plugin_timeout + REPLY_MARGIN,
        shutdown_grace: config.shutdown_grace,
        on_event: Some(Arc::new(move |event: &ServerEvent<'_>| events.log(event))),
        // Only atomics are read: a scrape never waits for a worker.
        extra_metrics: Some(Arc::new(move |out: &mut String| scraped.render(out))),
        ..ServerConfig::default()
    };
    let inherited = activation::inherited_listener(&config.socket)
        .map_err(|e| DaemonError::Activation(e.to_string()))?;
    match inherited {
        Some(listener) => {
            log::debug(format_args!("serving the socket systemd passed"));
            let server = Server::from_listener(listener, config.socket.clone(), server_config)
                .map_err(|e| DaemonError::Activation(format!("cannot serve it: {e}")))?;
            Ok((server, true))
        }
        None => Server::bind_with(&config.socket, server_config)
            .map(|server| (server, false))
            .map_err(DaemonError::Listen),
    }
}

/// Blocks the signals that stop the daemon, in this thread and so in every
/// thread started after it; the signal thread waits for them.
fn block_stop_signals() -> Result<SigSet, DaemonError> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    // The default action of SIGHUP kills the process outright, leaving
    // its socket and orphaning running plugins; a daemon has no terminal
    // or config to reload, so a hangup is taken as a request to stop.
    signals.add(Signal::SIGHUP);
    signals
        .thread_block()
        .map_err(|e| DaemonError::Start("signal handling", e.into()))?;
    Ok(signals)
}

/// Starts the workers and the signal thread, and serves until stopped.
/// `inherited` says the socket is one systemd passed.
fn serve(
    server: Server,
    inherited: bool,
    signals: SigSet,
    config: &DaemonConfig,
    metrics: Arc<DaemonMetrics>,
) -> Result<(), DaemonError> {
    let settings = QueueSettings {
        workers: config.workers,
        max_queue: config.max_queue,
        request_timeout: config.plugin_timeout,
        plugins: config.plugins.clone(),
        mtu: config.mtu,
    };
    let (queue, workers) =
        WorkQueue::start(settings, metrics).map_err(|e| DaemonError::Start("worker threads", e))?;
    // With its own socket the daemon is going away for good as far as it
    // knows, so what has not started is answered at once (code 11: the
    // runtime retries). With a socket systemd holds, a successor takes
    // the new connections, and only this daemon can answer those it
    // accepted: they all run, within the shutdown grace.
    let refused_at_stop = (!inherited).then(|| queue.clone());
    if let Err(e) = watch_signals(signals, server.shutdown_handle(), refused_at_stop) {
        workers.stop();
        return Err(DaemonError::Start("the signal thread", e));
    }

    log::info(format_args!("listening on {}", server.path().display()));
    log::debug(format_args!(
        "settings plugin_path={} workers={} max_queue={} plugin_timeout={:?} shutdown_grace={:?} mtu={}",
        Value(&config.plugins.to_string()),
        config.workers,
        config.max_queue,
        config.plugin_timeout,
        config.shutdown_grace,
        config.mtu.map_or("none".to_owned(), |mtu| mtu.to_string()),
    ));

    let stopping = server.shutdown_handle();
    let served = server.serve(|request, reply| match request.command {
        Command::Status => answer_status(&request, reply, stopping.is_shutting_down()),
        _ => queue.submit(request, reply),
    });
    workers.stop();
    served.map_err(DaemonError::Serve)
}

/// Answers STATUS from the daemon's own state, on the reactor thread and
/// without running a plugin: success (an empty body) while it serves, the
/// spec's code 50 once it is stopping.
///
/// The delegate plugin cannot answer it: the request names no container,
/// and plugins older than CNI 1.1 reject it, so a forwarded STATUS would
/// tell the runtime the network is never ready.
fn answer_status(request: &PodRequest, reply: ReplyHandle, stopping: bool) {
    if !stopping {
        log::info(format_args!("request command=STATUS outcome=ok"));
        reply.success(Vec::new());
        return;
    }
    let error = CniError::new(
        PLUGIN_NOT_AVAILABLE,
        "plugin not available: the daemon is shutting down",
    );
    let version = delegate::cni_version_of_bytes(&request.config);
    log::info(format_args!(
        "request command=STATUS outcome=error code={PLUGIN_NOT_AVAILABLE}"
    ));
    reply.error(PodError::cni_json(error.to_json(&version)));
}

/// Waits for SIGTERM, SIGINT or SIGHUP on a thread of its own, then stops the
/// server and, when `queue` is given, answers its requests that have not
/// started.
fn watch_signals(
    signals: SigSet,
    server: ShutdownHandle,
    queue: Option<WorkQueue>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("cniserverd-signals".into())
        .spawn(move || {
            if let Ok(signal) = signals.wait() {
                let what_finishes = match queue {
                    Some(_) => "running plugins",
                    None => "accepted requests",
                };
                log::info(format_args!(
                    "received {}: stopping; {what_finishes} may finish",
                    signal.as_str()
                ));
                server.shutdown();
                if let Some(queue) = queue {
                    queue.drain();
                }
            }
        })?;
    Ok(())
}
