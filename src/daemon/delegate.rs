//! Finding the delegate plugin, and running it the way a runtime would.
//!
//! The daemon is a "thick plugin": the shim forwards what the runtime gave
//! it, and the daemon execs the real CNI plugin named by the netconf key
//! `delegateType`, as root, with a netconf and environment it controls.
//! That makes the request a potential way to run arbitrary programs, so:
//!
//! - the name must be a plain file name, found only in the daemon's own
//!   plugin path (never the request's `CNI_PATH`);
//! - the plugin gets an empty environment plus the `CNI_*` variables of
//!   the spec and a fixed `PATH`, not the shim's whole environment, which
//!   may hold secrets;
//! - its output is read with bounds, and it runs in a process group of
//!   its own that is killed whole at its deadline, so that nothing it
//!   started outlives the request.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde_json::Value;

use super::error::{
    CniError, Outcome, DECODING_FAILURE, FALLBACK_CNI_VERSION, GENERIC_FAILURE,
    INVALID_ENVIRONMENT, INVALID_NETWORK_CONFIG, TRY_AGAIN_LATER,
};
use crate::cni::{Command, PodRequest};

/// Where plugins are looked for when neither `--cni-path` nor `CNI_PATH`
/// says: the upstream install location, then Debian's.
pub const DEFAULT_PLUGIN_PATH: &str = "/opt/cni/bin:/usr/lib/cni";

/// The `PATH` plugins run with. It is the daemon's own, never the
/// request's: plugins look up tools such as `iptables` on it (bridge with
/// `ipMasq`, portmap, firewall), and without one they fail.
pub const TOOL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The most a plugin may write to stdout, and to stderr; beyond it the
/// plugin is killed and the request fails.
pub const MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// The longest plugin name accepted (a file name's limit on Linux).
const MAX_NAME_BYTES: usize = 255;

/// How often a running plugin is checked on while it is quiet.
const TICK: Duration = Duration::from_millis(100);

/// How long to wait for a killed process group to be gone before answering.
const GROUP_EXIT_WAIT: Duration = Duration::from_millis(500);

/// The folders the daemon finds plugins in, in search order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginPath {
    folders: Vec<PathBuf>,
}

impl PluginPath {
    /// Reads a colon-separated list of absolute folders; empty entries are
    /// skipped. The error says what is wrong, for the flag's message.
    pub fn parse(list: &str) -> Result<PluginPath, String> {
        let mut folders = Vec::new();
        for entry in list.split(':').filter(|entry| !entry.is_empty()) {
            let folder = Path::new(entry);
            if !folder.is_absolute() {
                return Err(format!("folder {entry:?} is not an absolute path"));
            }
            folders.push(folder.to_owned());
        }
        if folders.is_empty() {
            return Err("names no folder".to_owned());
        }
        Ok(PluginPath { folders })
    }

    /// The folders, in search order.
    pub fn folders(&self) -> &[PathBuf] {
        &self.folders
    }

    /// The executable file called `name` in the first folder that has one.
    ///
    /// A file of that name that may not be executed is skipped, as a
    /// shell's `PATH` search skips it; when no folder has an executable
    /// one, the error names the first such file, since "not found" would
    /// send the operator looking for a file that is there.
    ///
    /// `name` must already be a plain name (see [`check_plugin_name`]).
    pub fn find(&self, name: &str) -> Result<PathBuf, PluginLookupError> {
        let mut not_executable = None;
        for candidate in self.folders.iter().map(|folder| folder.join(name)) {
            let Ok(meta) = std::fs::metadata(&candidate) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            if meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
            not_executable.get_or_insert(candidate);
        }
        Err(match not_executable {
            Some(path) => PluginLookupError::NotExecutable(path),
            None => PluginLookupError::NotFound,
        })
    }
}

/// Why [`PluginPath::find`] found no plugin to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginLookupError {
    /// No folder holds a file of that name.
    NotFound,
    /// A file of that name exists, at this path, but no execute bit is set
    /// on it (and no other folder has an executable one).
    NotExecutable(PathBuf),
}

impl fmt::Display for PluginPath {
    /// The folders joined with `:`, as `CNI_PATH` wants them.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, folder) in self.folders.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            f.write_str(&folder.to_string_lossy())?;
        }
        Ok(())
    }
}

/// Checks that a `delegateType` is a plain file name, so that it can only
/// name a file inside a plugin folder. The error says why it is not.
pub fn check_plugin_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.contains('\0') {
        Err("holds a NUL byte")
    } else if name.contains('/') {
        Err("holds a '/'")
    } else if name.contains("..") {
        Err("holds '..'")
    } else if name.len() > MAX_NAME_BYTES {
        Err("is longer than 255 bytes")
    } else {
        Ok(())
    }
}

/// The `cniVersion` a netconf asks for, if it is a plain version string;
/// errors the daemon builds carry it so the runtime can read them.
pub fn cni_version_of(netconf: &Value) -> String {
    match netconf.get("cniVersion").and_then(Value::as_str) {
        Some(version)
            if !version.is_empty()
                && version.len() <= 16
                && version.bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
        {
            version.to_owned()
        }
        _ => FALLBACK_CNI_VERSION.to_owned(),
    }
}

/// [`cni_version_of`] for netconf bytes that have not been parsed yet.
pub fn cni_version_of_bytes(config: &[u8]) -> String {
    serde_json::from_slice::<Value>(config)
        .map(|netconf| cni_version_of(&netconf))
        .unwrap_or_else(|_| FALLBACK_CNI_VERSION.to_owned())
}

/// A delegate plugin run, ready to start: what to exec and what to give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delegation {
    /// The plugin's name, from `delegateType`.
    pub plugin: String,
    /// Where it was found in the plugin path.
    pub executable: PathBuf,
    /// The `cniVersion` of the netconf, for errors the daemon builds.
    pub cni_version: String,
    /// The netconf for the plugin's stdin: `type` is the plugin's name.
    pub stdin: Vec<u8>,
    /// The plugin's whole environment.
    pub env: Vec<(&'static str, String)>,
}

impl Delegation {
    /// Works out the plugin run for a request, or the error to answer with
    /// when there is nothing that may be run.
    ///
    /// `mtu`, the daemon's `--mtu`, goes into a netconf that has no `mtu`
    /// of its own: plugins such as bridge read it from there.
    pub fn prepare(
        request: &PodRequest,
        plugins: &PluginPath,
        mtu: Option<u16>,
    ) -> Result<Delegation, Outcome> {
        let fail = |error: CniError, cni_version: &str| Outcome::failure(&error, cni_version);

        let netconf: Value = serde_json::from_slice(&request.config).map_err(|e| {
            let msg = format!("cannot decode the netconf: {e}");
            fail(CniError::new(DECODING_FAILURE, msg), FALLBACK_CNI_VERSION)
        })?;
        let cni_version = cni_version_of(&netconf);
        let Value::Object(mut netconf) = netconf else {
            let error = CniError::new(DECODING_FAILURE, "the netconf is not a JSON object");
            return Err(fail(error, &cni_version));
        };

        let plugin = match netconf.get("delegateType") {
            Some(Value::String(name)) => name.clone(),
            Some(_) => {
                let error = CniError::new(INVALID_NETWORK_CONFIG, "delegateType is not a string");
                return Err(fail(error, &cni_version));
            }
            None => {
                let msg = "the netconf has no delegateType naming the plugin to run";
                return Err(fail(
                    CniError::new(INVALID_NETWORK_CONFIG, msg),
                    &cni_version,
                ));
            }
        };
        if let Err(why) = check_plugin_name(&plugin) {
            let msg = format!("delegateType {why}: it must be the plain name of a plugin");
            return Err(fail(
                CniError::new(INVALID_NETWORK_CONFIG, msg),
                &cni_version,
            ));
        }

        let env = plugin_env(request, plugins).map_err(|error| fail(error, &cni_version))?;
        let executable = plugins.find(&plugin).map_err(|error| {
            let msg = match error {
                PluginLookupError::NotFound => {
                    format!("delegate plugin {plugin:?} not found in {plugins}")
                }
                PluginLookupError::NotExecutable(path) => format!(
                    "delegate plugin {plugin:?} at {} is not executable",
                    path.display()
                ),
            };
            fail(CniError::new(GENERIC_FAILURE, msg), &cni_version)
        })?;

        netconf.insert("type".to_owned(), Value::String(plugin.clone()));
        if let Some(mtu) = mtu {
            netconf.entry("mtu").or_insert(Value::from(mtu));
        }
        // Serializing a JSON value into a Vec cannot fail.
        let stdin = serde_json::to_vec(&netconf).unwrap_or_default();

        Ok(Delegation {
            plugin,
            executable,
            cni_version,
            stdin,
            env,
        })
    }

    fn failure(&self, error: CniError) -> Outcome {
        Outcome::failure(&error, &self.cni_version)
    }
}

/// The environment a plugin runs with: the spec's variables, and a fixed
/// `PATH`; nothing from the request beyond `CNI_*`.
fn plugin_env(
    request: &PodRequest,
    plugins: &PluginPath,
) -> Result<Vec<(&'static str, String)>, CniError> {
    let mut env = vec![
        ("CNI_COMMAND", request.command.as_str().to_owned()),
        ("CNI_CONTAINERID", request.sandbox_id.clone()),
        ("CNI_NETNS", request.netns.clone()),
        ("CNI_IFNAME", request.ifname.clone()),
    ];
    if let Some(args) = request.env.get("CNI_ARGS") {
        env.push(("CNI_ARGS", args.to_owned()));
    }
    env.push(("CNI_PATH", plugins.to_string()));
    env.push(("PATH", TOOL_PATH.to_owned()));

    if let Some((name, _)) = env.iter().find(|(_, value)| value.contains('\0')) {
        let msg = format!("{name} holds a NUL byte");
        return Err(CniError::new(INVALID_ENVIRONMENT, msg));
    }
    Ok(env)
}

/// How a plugin run ended, as the daemon's metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunResult {
    /// It exited 0 with an acceptable result.
    Success = 0,
    /// It failed, or claimed success with output that is not a result.
    Error,
    /// It ran past its deadline and was killed.
    Timeout,
    /// The daemon stopped and killed it.
    Aborted,
    /// It wrote more than [`MAX_OUTPUT_BYTES`] and was killed.
    OutputLimit,
    /// It could not be started.
    ExecFailed,
}

impl RunResult {
    /// Every result, in the order of their discriminants.
    pub const ALL: [RunResult; 6] = [
        RunResult::Success,
        RunResult::Error,
        RunResult::Timeout,
        RunResult::Aborted,
        RunResult::OutputLimit,
        RunResult::ExecFailed,
    ];

    /// The result as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            RunResult::Success => "success",
            RunResult::Error => "error",
            RunResult::Timeout => "timeout",
            RunResult::Aborted => "aborted",
            RunResult::OutputLimit => "output_limit",
            RunResult::ExecFailed => "exec_failed",
        }
    }
}

/// A finished plugin run: the client's answer, and what metrics count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginRun {
    /// The answer for the client.
    pub outcome: Outcome,
    /// How the run ended.
    pub result: RunResult,
    /// From just before the exec to the plugin's exit (or its kill).
    pub took: Duration,
}

/// Runs the delegate plugin to completion, its deadline, or `abort`, and
/// turns what happened into the answer for the client.
///
/// `timeout` is only for the message: the deadline is what counts.
pub fn run(
    delegation: &Delegation,
    command: &Command,
    deadline: Instant,
    timeout: Duration,
    abort: &AtomicBool,
) -> PluginRun {
    let started = Instant::now();
    let executed = execute(delegation, deadline, abort);
    let took = started.elapsed();

    let (outcome, result) = match executed {
        Ok(run) => {
            let ending = run.ending;
            let outcome = judge(delegation, command, run, timeout);
            let result = match ending {
                Ending::Exited if matches!(outcome, Outcome::Success(_)) => RunResult::Success,
                Ending::Exited => RunResult::Error,
                Ending::TimedOut => RunResult::Timeout,
                Ending::Aborted => RunResult::Aborted,
                Ending::TooMuchOutput(_) => RunResult::OutputLimit,
            };
            (outcome, result)
        }
        Err(e) => {
            let msg = format!("cannot run delegate plugin {:?}: {e}", delegation.plugin);
            let outcome = delegation.failure(CniError::new(GENERIC_FAILURE, msg));
            (outcome, RunResult::ExecFailed)
        }
    };
    PluginRun {
        outcome,
        result,
        took,
    }
}

/// How a plugin run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// It exited by itself.
    Exited,
    /// It ran past its deadline and was killed.
    TimedOut,
    /// The daemon stopped and killed it.
    Aborted,
    /// It wrote more than [`MAX_OUTPUT_BYTES`] to this stream and was killed.
    TooMuchOutput(&'static str),
}

/// What a finished plugin run left.
struct Run {
    ending: Ending,
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

fn execute(delegation: &Delegation, deadline: Instant, abort: &AtomicBool) -> io::Result<Run> {
    let mut child = spawn(delegation)?;
    // The plugin leads a process group of its own: its ID is the group's.
    let group = Pid::from_raw(child.id() as i32);

    let mut output = Output::default();
    let ending = output.pump(&mut child, &delegation.stdin, deadline, abort);

    // Whatever happened, nothing of the group outlives the request, also
    // after a clean exit: a process a plugin means to keep must start a
    // session of its own. The leader is not reaped yet, so the group ID
    // cannot have been reused.
    //
    // Known gap: a process that left the group (setsid, setpgid) escapes
    // this kill, and killed members the plugin had started are reaped by
    // init, not here (the daemon is not a child subreaper).
    let _ = killpg(group, Signal::SIGKILL);
    let status = child.wait()?;
    wait_until_group_gone(group);

    Ok(Run {
        ending: ending?,
        status,
        stdout: output.stdout,
        stderr: output.stderr,
    })
}

/// Starts the plugin. A text file busy error (the file is still open for
/// writing somewhere, as while a plugin is being installed) is retried a
/// few times before it counts.
fn spawn(delegation: &Delegation) -> io::Result<Child> {
    let mut attempt = 0;
    loop {
        let mut command = std::process::Command::new(&delegation.executable);
        command
            .env_clear()
            .envs(delegation.env.iter().map(|(name, value)| (name, value)))
            .current_dir("/")
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(Errno::ETXTBSY as i32) && attempt < 5 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(10 * attempt));
            }
            other => return other,
        }
    }
}

/// After the group was killed, waits a little for its last members to die
/// so that the answer means "gone". Zombies that the system's init has
/// not reaped yet count as members, hence the bound.
fn wait_until_group_gone(group: Pid) {
    let until = Instant::now() + GROUP_EXIT_WAIT;
    while killpg(group, None).is_ok() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The plugin's stdout and stderr, as read so far.
#[derive(Default)]
struct Output {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Output {
    /// Feeds stdin and reads stdout and stderr until the plugin exits, or
    /// it must be killed. Exit is noticed without reaping, so the caller
    /// can still kill the group safely.
    fn pump(
        &mut self,
        child: &mut Child,
        input: &[u8],
        deadline: Instant,
        abort: &AtomicBool,
    ) -> io::Result<Ending> {
        let pid = Pid::from_raw(child.id() as i32);
        let mut pipes = Pipes::take(child, input)?;

        while pipes.stdout.is_some() || pipes.stderr.is_some() {
            if let Some(ending) = interruption(deadline, abort) {
                return Ok(ending);
            }
            let wait = deadline.saturating_duration_since(Instant::now()).min(TICK);
            let [stdin_ready, stdout_ready, stderr_ready] = pipes.wait_ready(wait)?;

            if stdin_ready {
                pipes.feed(input);
            }
            if stdout_ready && read_available(&mut pipes.stdout, &mut self.stdout).is_err() {
                return Ok(Ending::TooMuchOutput("stdout"));
            }
            if stderr_ready && read_available(&mut pipes.stderr, &mut self.stderr).is_err() {
                return Ok(Ending::TooMuchOutput("stderr"));
            }

            // A process the plugin left behind may hold its pipes open:
            // the plugin's own exit is what ends the run.
            if has_exited(pid) {
                return Ok(self.read_rest(&mut pipes));
            }
        }

        // Both pipes are closed: the plugin is exiting, or closed them and
        // goes on running.
        drop(pipes);
        wait_for_exit(pid, deadline, abort)
    }

    /// Reads what the plugin wrote before it exited.
    fn read_rest(&mut self, pipes: &mut Pipes) -> Ending {
        if read_available(&mut pipes.stdout, &mut self.stdout).is_err() {
            Ending::TooMuchOutput("stdout")
        } else if read_available(&mut pipes.stderr, &mut self.stderr).is_err() {
            Ending::TooMuchOutput("stderr")
        } else {
            Ending::Exited
        }
    }
}

/// The plugin's ends of its standard streams, non-blocking; each is
/// `None` once closed.
struct Pipes {
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    /// How much of the input has gone to stdin.
    written: usize,
}

impl Pipes {
    fn take(child: &mut Child, input: &[u8]) -> io::Result<Pipes> {
        let pipes = Pipes {
            stdin: child.stdin.take().filter(|_| !input.is_empty()),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            written: 0,
        };
        let fds = [
            pipes.stdin.as_ref().map(AsRawFd::as_raw_fd),
            pipes.stdout.as_ref().map(AsRawFd::as_raw_fd),
            pipes.stderr.as_ref().map(AsRawFd::as_raw_fd),
        ];
        for fd in fds.into_iter().flatten() {
            fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        }
        Ok(pipes)
    }

    /// Waits up to `wait` for stdin to take bytes or stdout or stderr to
    /// have some (or be closed); says which are ready, in that order.
    fn wait_ready(&self, wait: Duration) -> io::Result<[bool; 3]> {
        let mut fds = Vec::with_capacity(3);
        let mut slots = [None; 3];
        let wanted = [
            (self.stdin.as_ref().map(AsFd::as_fd), PollFlags::POLLOUT),
            (self.stdout.as_ref().map(AsFd::as_fd), PollFlags::POLLIN),
            (self.stderr.as_ref().map(AsFd::as_fd), PollFlags::POLLIN),
        ];
        for (slot, (fd, events)) in slots.iter_mut().zip(wanted) {
            if let Some(fd) = fd {
                *slot = Some(fds.len());
                fds.push(PollFd::new(fd, events));
            }
        }

        // The wait is at most a tick, well within a u16 of milliseconds.
        let millis = wait.as_millis().min(u128::from(u16::MAX)) as u16;
        match poll(&mut fds, millis) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(slots.map(|slot| {
            slot.and_then(|i| fds[i].revents())
                .is_some_and(|events| !events.is_empty())
        }))
    }

    /// Writes what stdin takes; closes it once all is written or the
    /// plugin stopped reading.
    fn feed(&mut self, input: &[u8]) {
        let Some(stdin) = &mut self.stdin else {
            return;
        };
        loop {
            match stdin.write(&input[self.written..]) {
                Ok(n) => {
                    self.written += n;
                    if self.written == input.len() || n == 0 {
                        self.stdin = None;
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The plugin closed its stdin: what it did not read, it
                // did not want.
                Err(_) => {
                    self.stdin = None;
                    return;
                }
            }
        }
    }
}

/// Waits, without reaping, for a plugin that closed its output to exit.
fn wait_for_exit(pid: Pid, deadline: Instant, abort: &AtomicBool) -> io::Result<Ending> {
    let mut nap = Duration::from_millis(1);
    loop {
        if has_exited(pid) {
            return Ok(Ending::Exited);
        }
        if let Some(ending) = interruption(deadline, abort) {
            return Ok(ending);
        }
        std::thread::sleep(nap.min(deadline.saturating_duration_since(Instant::now())));
        nap = (nap * 2).min(Duration::from_millis(50));
    }
}

fn interruption(deadline: Instant, abort: &AtomicBool) -> Option<Ending> {
    if abort.load(Ordering::SeqCst) {
        Some(Ending::Aborted)
    } else if Instant::now() >= deadline {
        Some(Ending::TimedOut)
    } else {
        None
    }
}

/// Reads what the pipe holds; at end of file the pipe is dropped. Fails
/// when the buffer would pass [`MAX_OUTPUT_BYTES`].
fn read_available<R: Read>(pipe: &mut Option<R>, buffer: &mut Vec<u8>) -> Result<(), ()> {
    let Some(reader) = pipe else {
        return Ok(());
    };
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => {
                *pipe = None;
                return Ok(());
            }
            Ok(n) => {
                if buffer.len() + n > MAX_OUTPUT_BYTES {
                    return Err(());
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                *pipe = None;
                return Ok(());
            }
        }
    }
}

/// Whether the child has exited, leaving it unreaped.
fn has_exited(pid: Pid) -> bool {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(pid), flags) {
        Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => false,
        Ok(_) => true,
        // Not our child any more: nothing to wait for.
        Err(_) => true,
    }
}

/// Turns a finished run into the client's answer.
fn judge(delegation: &Delegation, command: &Command, run: Run, timeout: Duration) -> Outcome {
    let plugin = &delegation.plugin;
    let diagnostics = if run.stderr.iter().all(u8::is_ascii_whitespace) {
        &run.stdout
    } else {
        &run.stderr
    };

    let error = match run.ending {
        Ending::TimedOut => CniError::new(
            GENERIC_FAILURE,
            format!("delegate plugin {plugin:?} did not finish within the {timeout:?} timeout and was killed"),
        ),
        Ending::Aborted => CniError::new(
            TRY_AGAIN_LATER,
            format!("the daemon stopped while delegate plugin {plugin:?} ran, and killed it"),
        ),
        Ending::TooMuchOutput(stream) => CniError::new(
            GENERIC_FAILURE,
            format!("delegate plugin {plugin:?} wrote more than 1 MiB to {stream} and was killed"),
        ),
        Ending::Exited if run.status.success() => match success_body(command, &run.stdout) {
            Some(body) => return Outcome::Success(body),
            None => CniError::new(
                GENERIC_FAILURE,
                format!("delegate plugin {plugin:?} succeeded but its output is not a CNI result"),
            ),
        },
        Ending::Exited => {
            if let Some(code) = cni_error_code(&run.stdout) {
                return Outcome::Failure {
                    code,
                    json: run.stdout,
                };
            }
            CniError::new(
                GENERIC_FAILURE,
                format!("delegate plugin {plugin:?} failed ({})", run.status),
            )
        }
    };
    delegation.failure(error.with_details(diagnostics))
}

/// The body to answer a successful run with, if its output is acceptable:
/// a JSON object, or nothing at all for commands other than ADD.
fn success_body(command: &Command, stdout: &[u8]) -> Option<Vec<u8>> {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return (*command != Command::Add).then(Vec::new);
    }
    match serde_json::from_slice::<Value>(stdout) {
        Ok(Value::Object(_)) => Some(stdout.to_vec()),
        _ => None,
    }
}

/// The code of a CNI error JSON, if `stdout` is one.
fn cni_error_code(stdout: &[u8]) -> Option<u64> {
    let value: Value = serde_json::from_slice(stdout).ok()?;
    value.get("msg")?.as_str()?;
    value.get("code")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_must_be_plain() {
        let cases = [
            ("bridge", Ok(())),
            ("host-local", Ok(())),
            ("a.b", Ok(())),
            ("", Err("is empty")),
            ("../bridge", Err("holds a '/'")),
            ("..", Err("holds '..'")),
            ("/usr/bin/id", Err("holds a '/'")),
            ("br\0idge", Err("holds a NUL byte")),
        ];
        for (name, want) in cases {
            assert_eq!(check_plugin_name(name), want, "name {name:?}");
        }
        assert!(check_plugin_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn plugin_paths_are_absolute_folders() {
        let path = PluginPath::parse("/opt/cni/bin::/usr/lib/cni:").unwrap();
        assert_eq!(path.to_string(), "/opt/cni/bin:/usr/lib/cni");
        assert_eq!(path.folders().len(), 2);
        assert!(PluginPath::parse("").is_err());
        assert!(PluginPath::parse(":").is_err());
        assert!(PluginPath::parse("/ok:relative/bin").is_err());
    }

    #[test]
    fn cni_version_is_taken_only_when_plain() {
        let cases = [
            (r#"{"cniVersion":"1.0.0"}"#, "1.0.0"),
            (r#"{"cniVersion":"0.3.1"}"#, "0.3.1"),
            (r#"{"cniVersion":"1.0.0\"}"}"#, FALLBACK_CNI_VERSION),
            (r#"{"cniVersion":7}"#, FALLBACK_CNI_VERSION),
            (r#"{}"#, FALLBACK_CNI_VERSION),
            ("not json", FALLBACK_CNI_VERSION),
        ];
        for (config, want) in cases {
            assert_eq!(
                cni_version_of_bytes(config.as_bytes()),
                want,
                "netconf {config}"
            );
        }
    }

    #[test]
    fn success_output_must_be_a_result() {
        let result = br#"{"cniVersion":"0.4.0","ips":[]}"#.to_vec();
        type Case<'a> = (Command, &'a [u8], Option<Vec<u8>>);
        let cases: [Case; 6] = [
            (Command::Add, &result, Some(result.clone())),
            (Command::Add, b"", None),
            (Command::Add, b"garbage", None),
            (Command::Del, b"\n", Some(Vec::new())),
            (Command::Check, b"", Some(Vec::new())),
            (Command::Del, b"[1]", None),
        ];
        for (command, stdout, want) in cases {
            assert_eq!(
                success_body(&command, stdout),
                want,
                "{command} with stdout {:?}",
                String::from_utf8_lossy(stdout)
            );
        }
    }

    #[test]
    fn cni_errors_are_recognized() {
        let cases: [(&[u8], Option<u64>); 5] = [
            (br#"{"cniVersion":"0.4.0","code":7,"msg":"bad"}"#, Some(7)),
            (br#"{"code":999,"msg":"x","details":"y"}"#, Some(999)),
            (br#"{"code":"7","msg":"bad"}"#, None),
            (br#"{"code":7}"#, None),
            (b"plain text", None),
        ];
        for (stdout, want) in cases {
            assert_eq!(
                cni_error_code(stdout),
                want,
                "stdout {:?}",
                String::from_utf8_lossy(stdout)
            );
        }
    }
}
