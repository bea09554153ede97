//! Installing what the container runtime needs to reach the daemon: the
//! shim in the CNI bin folder and the network config in the CNI conf folder.
//!
//! Both are written atomically (a temporary file renamed over the target,
//! see [`crate::settings::write_atomically`]), so a runtime never execs a
//! half-copied shim or reads half a config, and replacing a shim that is
//! running is safe. The shim is installed before the socket is served and
//! the config after, so the runtime is never pointed at a shim with no
//! server behind it.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cni::DEFAULT_SOCKET_PATH;
use crate::settings::write_atomically;

/// The shim's file name, beside the daemon and in the CNI bin folder.
pub const SHIM_NAME: &str = "cniserver-shim";

/// The mode of the installed shim: the runtime execs it.
const SHIM_MODE: u32 = 0o755;
/// The mode of the installed network config: the runtime reads it.
const CONFLIST_MODE: u32 = 0o644;

/// Why an install failed; `Display` names the file and the reason.
#[derive(Debug)]
pub struct InstallError(String);

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InstallError {}

/// Copies the shim that sits beside this executable into `bin_dir`,
/// creating the folder if needed. Returns the installed file's path.
pub fn install_shim(bin_dir: &Path) -> Result<PathBuf, InstallError> {
    let daemon = std::env::current_exe()
        .map_err(|e| InstallError(format!("cannot find the daemon's own executable: {e}")))?;
    let source = daemon.parent().unwrap_or(Path::new("/")).join(SHIM_NAME);
    let bytes = fs::read(&source).map_err(|e| {
        InstallError(format!(
            "cannot read the shim to install at {}: {e}",
            source.display()
        ))
    })?;

    let target = bin_dir.join(SHIM_NAME);
    write_into(bin_dir, &target, &bytes, SHIM_MODE)?;
    Ok(target)
}

/// A network config read and checked, ready to install.
#[derive(Debug, Clone)]
pub struct Conflist {
    source: PathBuf,
    bytes: Vec<u8>,
}

impl Conflist {
    /// Reads `file` and checks that it is a JSON object. Done before the
    /// socket is bound, so that a broken file stops the daemon before it
    /// has changed anything.
    pub fn load(file: &Path) -> Result<Conflist, InstallError> {
        let bytes = fs::read(file).map_err(|e| {
            InstallError(format!(
                "cannot read the network config {}: {e}",
                file.display()
            ))
        })?;
        if file.file_name().is_none() {
            return Err(InstallError(format!("{} names no file", file.display())));
        }
        // The runtime would skip a broken file silently; refusing it here
        // makes the mistake visible where it was made.
        let problem = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(_)) => None,
            Ok(_) => Some("is not a JSON object".to_owned()),
            Err(e) => Some(format!("is not valid JSON: {e}")),
        };
        if let Some(problem) = problem {
            return Err(InstallError(format!(
                "the network config {} {problem}",
                file.display()
            )));
        }
        Ok(Conflist {
            source: file.to_owned(),
            bytes,
        })
    }

    /// The file it was read from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The sockets the shims this config runs will connect to: one per
    /// plugin entry whose `type` is the shim's name, its `socket` key or,
    /// when it has none (or one that is not a string), the shim's default.
    /// Both a `.conflist` (`plugins` array) and a single-plugin `.conf`
    /// are read.
    pub fn shim_sockets(&self) -> Vec<PathBuf> {
        let Ok(Value::Object(config)) = serde_json::from_slice::<Value>(&self.bytes) else {
            return Vec::new();
        };
        let entries: Vec<&Value> = match config.get("plugins") {
            Some(Value::Array(plugins)) => plugins.iter().collect(),
            _ => Vec::new(),
        };
        let top = Value::Object(config.clone());
        let entries = if entries.is_empty() {
            vec![&top]
        } else {
            entries
        };
        entries
            .into_iter()
            .filter(|entry| entry.get("type").and_then(Value::as_str) == Some(SHIM_NAME))
            .map(|entry| {
                let socket = entry.get("socket").and_then(Value::as_str);
                PathBuf::from(socket.unwrap_or(DEFAULT_SOCKET_PATH))
            })
            .collect()
    }

    /// Copies it into `conf_dir` under its own file name, creating the
    /// folder if needed. Returns the installed file's path.
    pub fn install(&self, conf_dir: &Path) -> Result<PathBuf, InstallError> {
        let name = self.source.file_name().unwrap_or_default();
        let target = conf_dir.join(name);
        write_into(conf_dir, &target, &self.bytes, CONFLIST_MODE)?;
        Ok(target)
    }
}

/// Removes an installed network config; a file already gone is fine.
pub fn remove_conflist(installed: &Path) -> Result<(), InstallError> {
    match fs::remove_file(installed) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(InstallError(format!(
            "cannot remove the network config {}: {e}",
            installed.display()
        ))),
    }
}

fn write_into(folder: &Path, target: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    fs::create_dir_all(folder)
        .map_err(|e| InstallError(format!("cannot create {}: {e}", folder.display())))?;
    write_atomically(target, bytes, mode).map_err(|e| InstallError(format!("cannot install: {e}")))
}
