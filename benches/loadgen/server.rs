//! Starting and stopping a server under test.
//!
//! Every server here takes `--socket PATH`, prints `listening on PATH` on
//! stderr once it accepts, and removes its socket and exits 0 on SIGTERM.
//! Each gets a folder of its own (mode 0700) in the run's work folder, its
//! stderr goes to a log beside it, and its process ID to a `.pid` file so
//! that the calling script can stop it should this process die first.

use std::fs::{self, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::sys;

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A named program: a server, or a client for the exec timing.
#[derive(Debug, Clone)]
pub struct Binary {
    /// The name the tables show.
    pub name: String,
    /// The executable.
    pub path: PathBuf,
}

impl Binary {
    /// Parses `NAME=PATH`.
    pub fn parse(spec: &str) -> Result<Binary, String> {
        match spec.split_once('=') {
            Some((name, path)) if !name.is_empty() && !path.is_empty() => Ok(Binary {
                name: name.to_owned(),
                path: PathBuf::from(path),
            }),
            _ => Err(format!("expected NAME=PATH, got {spec:?}")),
        }
    }

    /// The executable's size in bytes (the script hands over stripped
    /// copies), or `None` when it cannot be read.
    pub fn size(&self) -> Option<u64> {
        fs::metadata(&self.path).ok().map(|m| m.len())
    }
}

/// A server process started by [`RunningServer::start`]; killed on drop if
/// it was not stopped.
pub struct RunningServer {
    name: String,
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    pid_file: PathBuf,
}

impl RunningServer {
    /// Starts `binary` on a socket in its own folder under `workdir` and
    /// waits until it listens.
    pub fn start(binary: &Binary, workdir: &Path) -> Result<RunningServer, String> {
        let folder = workdir.join(&binary.name);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&folder)
            .map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
        let socket = folder.join("cni.sock");
        let log = workdir.join(format!("{}.log", binary.name));
        let log_file =
            File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;

        let child = Command::new(&binary.path)
            .arg("--socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.path.display()))?;
        let pid_file = workdir.join(format!("{}.pid", binary.name));
        let _ = fs::write(&pid_file, format!("{}\n", child.id()));

        let mut server = RunningServer {
            name: binary.name.clone(),
            child: Some(child),
            socket,
            log,
            pid_file,
        };
        server.wait_until_listening()?;
        Ok(server)
    }

    fn wait_until_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            if log.contains("listening on") && self.socket.exists() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("{} exited at start ({status}): {log}", self.name));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("{} did not start listening: {log}", self.name));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The socket it listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stops the server with SIGTERM and checks that it exited cleanly and
    /// removed its socket.
    pub fn stop(mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = fs::remove_file(&self.pid_file);
        sys::terminate(child.id()).map_err(|e| format!("cannot stop {}: {e}", self.name))?;

        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{} ignored SIGTERM and was killed", self.name));
                }
            }
        };
        if !status.success() {
            return Err(format!("{} exited with {status} on SIGTERM", self.name));
        }
        if self.socket.exists() {
            return Err(format!("{} left its socket behind", self.name));
        }
        Ok(())
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = fs::remove_file(&self.pid_file);
        }
    }
}
