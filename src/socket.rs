//! The server's socket on disk: a private folder, a root-only socket, and
//! the rules that keep setting them up safe.
//!
//! The Go server removed the socket's folder recursively at start, whatever
//! it held. This module never removes a folder. It creates the folder 0700
//! when it is missing; it refuses one that is a symlink, is owned by another
//! user, or lets group or others in; it removes an old socket file only
//! when nothing listens on it; and at exit it removes the socket only if
//! the file is still the one it bound.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The mode of the socket's folder: only the owner may enter.
pub const FOLDER_MODE: u32 = 0o700;
/// The mode of the socket itself: only the owner may connect.
pub const SOCKET_MODE: u32 = 0o600;

/// A listening socket bound at a path, and the file it created there.
#[derive(Debug)]
pub struct BoundSocket {
    listener: UnixListener,
    file: SocketFile,
}

/// The socket's file on disk, remembered so that only this file is removed.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// Device and inode of the file this server bound; `None` for a socket
    /// it did not create, which it leaves alone.
    identity: Option<(u64, u64)>,
}

impl BoundSocket {
    /// Sets up the folder, clears a stale socket, binds and listens.
    pub fn bind(path: &Path) -> Result<BoundSocket, SocketError> {
        let folder = match path.parent() {
            Some(folder) if !folder.as_os_str().is_empty() => folder,
            _ => {
                return Err(SocketError::new(
                    path,
                    "has no folder; give a path like /run/x/cni.sock",
                ))
            }
        };
        prepare_folder(folder)?;
        clear_stale_socket(path)?;

        let listener =
            UnixListener::bind(path).map_err(|e| SocketError::io(path, "cannot bind", e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(|e| SocketError::io(path, "cannot set mode 0600 on", e))?;
        let meta =
            fs::symlink_metadata(path).map_err(|e| SocketError::io(path, "cannot stat", e))?;

        let file = SocketFile {
            path: path.to_owned(),
            identity: Some((meta.dev(), meta.ino())),
        };
        Ok(BoundSocket { listener, file })
    }

    /// Wraps a socket that is already listening, such as one handed over by
    /// a service manager. Its file is never removed.
    pub fn adopt(listener: UnixListener, path: PathBuf) -> BoundSocket {
        let file = SocketFile {
            path,
            identity: None,
        };
        BoundSocket { listener, file }
    }

    /// The path the socket was bound at.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// The listener.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Splits into the listener, for the reactor, and the file, to remove
    /// at exit.
    pub fn into_parts(self) -> (UnixListener, SocketFile) {
        (self.listener, self.file)
    }
}

impl SocketFile {
    /// The path of the socket.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the socket was handed in rather than bound here.
    pub fn is_adopted(&self) -> bool {
        self.identity.is_none()
    }

    /// Removes the socket file, if it is still the one this server bound: a
    /// newer server may already have replaced it.
    pub fn remove(&self) {
        let Some(identity) = self.identity else {
            return;
        };
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == identity {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

fn prepare_folder(folder: &Path) -> Result<(), SocketError> {
    match fs::symlink_metadata(folder) {
        Ok(meta) => check_folder(folder, &meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(above) = folder.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(above)
                    .map_err(|e| SocketError::io(above, "cannot create folder", e))?;
            }
            match fs::DirBuilder::new().mode(FOLDER_MODE).create(folder) {
                Ok(()) => {
                    // The umask may have taken bits away; set the mode exactly.
                    fs::set_permissions(folder, fs::Permissions::from_mode(FOLDER_MODE))
                        .map_err(|e| SocketError::io(folder, "cannot set mode 0700 on", e))
                }
                // Someone created it meanwhile: judge what is there now.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let meta = fs::symlink_metadata(folder)
                        .map_err(|e| SocketError::io(folder, "cannot stat", e))?;
                    check_folder(folder, &meta)
                }
                Err(e) => Err(SocketError::io(folder, "cannot create folder", e)),
            }
        }
        Err(e) => Err(SocketError::io(folder, "cannot stat", e)),
    }
}

fn check_folder(folder: &Path, meta: &fs::Metadata) -> Result<(), SocketError> {
    if meta.file_type().is_symlink() {
        return Err(SocketError::new(
            folder,
            "is a symlink; the socket folder must be a real folder",
        ));
    }
    if !meta.is_dir() {
        return Err(SocketError::new(folder, "is not a folder"));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(SocketError::new(
            folder,
            &format!(
                "is owned by uid {}, not by this server's uid {euid}",
                meta.uid()
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SocketError::new(
            folder,
            &format!("has mode {mode:04o}; the socket folder must be private (0700): use a folder of its own"),
        ));
    }
    Ok(())
}

fn clear_stale_socket(path: &Path) -> Result<(), SocketError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SocketError::io(path, "cannot stat", e)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::new(
            path,
            "exists and is not a socket; refusing to remove it",
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(SocketError::new(
            path,
            "has a live server listening; stop it first",
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => fs::remove_file(path)
            .map_err(|e| SocketError::io(path, "cannot remove stale socket", e)),
        Err(e) => Err(SocketError::io(path, "cannot probe existing socket", e)),
    }
}

/// Setting up the socket failed; `Display` names the path and the reason.
#[derive(Debug)]
pub struct SocketError {
    path: PathBuf,
    reason: String,
    source: Option<io::Error>,
}

impl SocketError {
    fn new(path: &Path, reason: &str) -> SocketError {
        SocketError {
            path: path.to_owned(),
            reason: reason.to_owned(),
            source: None,
        }
    }

    pub(crate) fn from_io(path: &Path, source: io::Error) -> SocketError {
        SocketError::io(path, "cannot serve on", source)
    }

    fn io(path: &Path, action: &str, source: io::Error) -> SocketError {
        SocketError {
            path: path.to_owned(),
            reason: action.to_owned(),
            source: Some(source),
        }
    }
}

impl fmt::Display for SocketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            // "cannot bind /run/x/cni.sock: permission denied"
            Some(source) => write!(f, "{} {}: {source}", self.reason, self.path.display()),
            // "/run/x is a symlink; ..."
            None => write!(f, "{} {}", self.path.display(), self.reason),
        }
    }
}

impl std::error::Error for SocketError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

impl From<SocketError> for io::Error {
    fn from(e: SocketError) -> io::Error {
        io::Error::other(e.to_string())
    }
}
