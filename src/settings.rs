//! Settings the server hands to its shims through a file beside the socket,
//! and the atomic file writes that publish it (and install files).
//!
//! The server writes `config.json` into the socket's folder once it
//! listens. A shim reads it before ADD: its presence says a server is up,
//! and its content carries what the server wants every pod to get (an MTU,
//! say) without a round trip. Readers never see a half-written file: every
//! write goes to a temporary file in the same folder that is then renamed
//! over the target.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The settings file's name, in the socket's folder.
pub const SETTINGS_FILE: &str = "config.json";

/// The settings file's mode: anyone who can enter the folder may read it,
/// nobody writes it in place.
pub const SETTINGS_MODE: u32 = 0o444;

/// Where the settings for the server at `socket_path` live.
pub fn settings_path(socket_path: &Path) -> PathBuf {
    socket_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(SETTINGS_FILE)
}

/// Publishes `settings` (any JSON value) beside the socket, atomically,
/// mode 0444. Returns the file's path.
pub fn write_settings(socket_path: &Path, settings: &serde_json::Value) -> io::Result<PathBuf> {
    let path = settings_path(socket_path);
    let mut bytes = serde_json::to_vec_pretty(settings).map_err(io::Error::other)?;
    bytes.push(b'\n');
    write_atomically(&path, &bytes, SETTINGS_MODE)?;
    Ok(path)
}

/// Reads the settings the server at `socket_path` published.
///
/// A missing file means the server is not (yet) serving: the error says
/// so and names the path.
pub fn read_settings(socket_path: &Path) -> io::Result<serde_json::Value> {
    let path = settings_path(socket_path);
    let bytes = fs::read(&path).map_err(|e| {
        let reason = if e.kind() == io::ErrorKind::NotFound {
            "server not ready: no settings file".to_owned()
        } else {
            format!("cannot read settings: {e}")
        };
        io::Error::new(e.kind(), format!("{reason} at {}", path.display()))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("settings at {} are not valid JSON: {e}", path.display()),
        )
    })
}

/// Removes the settings file, as a server does when it stops.
pub fn remove_settings(socket_path: &Path) {
    let _ = fs::remove_file(settings_path(socket_path));
}

/// Writes `bytes` to `path` so that readers see the old file or the whole
/// new one, never a part: temporary file in the same folder, flushed to
/// disk, then renamed over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp.{}", std::process::id()));
    let temp = folder.join(temp_name);

    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn temp_folder(name: &str) -> PathBuf {
        let folder =
            std::env::temp_dir().join(format!("cniserver-settings-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&folder);
        fs::create_dir_all(&folder).unwrap();
        folder
    }

    #[test]
    fn settings_round_trip_read_only() {
        let folder = temp_folder("roundtrip");
        let socket = folder.join("cni.sock");
        let settings = serde_json::json!({"mtu": 1400});

        let path = write_settings(&socket, &settings).unwrap();
        assert_eq!(path, folder.join("config.json"));
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o444);
        assert_eq!(read_settings(&socket).unwrap(), settings);

        // Rewriting replaces the read-only file.
        write_settings(&socket, &serde_json::json!({"mtu": 9000})).unwrap();
        assert_eq!(read_settings(&socket).unwrap()["mtu"], 9000);
        fs::remove_dir_all(&folder).unwrap();
    }

    #[test]
    fn missing_settings_say_server_not_ready() {
        let folder = temp_folder("missing");
        let error = read_settings(&folder.join("cni.sock")).unwrap_err();
        assert!(error.to_string().contains("server not ready"), "{error}");
        assert!(error.to_string().contains("config.json"), "{error}");
        fs::remove_dir_all(&folder).unwrap();
    }
}
