//! The socket on disk (see `src/socket.rs`): a private folder created when
//! missing, folders that are refused, old socket files, and the rule that
//! nothing ever removes a folder. Every error must name its path.
//!
//! These tests run as root, as the server does on a node: they chown a
//! folder to another uid and check that another uid cannot connect.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cniserver::socket::{FOLDER_MODE, SOCKET_MODE};
use cniserver::{reference, Server};
use common::{pod_body, post, reference_add_result, Serving, TempDir, TestServer};

const NOBODY: u32 = 65534;

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .mode()
        & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn serve_reference(server: Server) -> Serving {
    Serving::spawn(server, |request, reply| {
        reply.send(reference::answer(&request))
    })
}

/// Checks that the server on `path` answers an ADD.
fn assert_serves(path: &Path) {
    let answer = common::exchange(path, &post(pod_body("ADD", "c1").as_bytes()));
    assert_eq!(answer.status, 200, "{answer}");
    assert_eq!(
        answer.body,
        reference_add_result("/var/run/netns/c1").as_bytes()
    );
}

#[test]
fn default_socket_path_is_the_go_servers() {
    assert_eq!(
        cniserver::DEFAULT_SOCKET_PATH,
        "/var/run/openshift-sdn/cni-server.sock"
    );
}

#[test]
fn missing_folder_is_created_0700_with_a_0600_socket() {
    let dir = TempDir::new("sock-missing");
    for socket in ["run/cni.sock", "a/b/run/cni.sock"] {
        let path = dir.join(socket);
        let folder = path.parent().unwrap().to_owned();
        assert!(!folder.exists());

        let serving = serve_reference(Server::bind(&path).expect("bind"));
        let folder_meta = fs::symlink_metadata(&folder).expect("the folder exists");
        assert!(folder_meta.is_dir(), "{socket}");
        assert_eq!(mode(&folder), FOLDER_MODE, "{socket}: folder mode");
        assert_eq!(FOLDER_MODE, 0o700);
        // The test folder was made by this process: its owner is our uid.
        let own_uid = fs::metadata(dir.path()).expect("stat").uid();
        assert_eq!(folder_meta.uid(), own_uid, "{socket}: folder owner");

        let socket_meta = fs::symlink_metadata(&path).expect("the socket exists");
        assert!(socket_meta.file_type().is_socket(), "{socket}");
        assert_eq!(mode(&path), SOCKET_MODE, "{socket}: socket mode");
        assert_eq!(SOCKET_MODE, 0o600);
        assert_serves(&path);

        serving.stop().expect("serve returns Ok");
        assert!(!path.exists(), "{socket}: the socket is removed at exit");
        assert!(folder.is_dir(), "{socket}: the folder stays");
    }
}

#[test]
fn an_existing_private_folder_is_used_and_kept_with_its_contents() {
    let dir = TempDir::new("sock-existing");
    let folder = dir.join("run");
    fs::create_dir(&folder).expect("mkdir");
    set_mode(&folder, 0o700);
    fs::write(folder.join("keep.txt"), b"mine").expect("write");
    fs::create_dir(folder.join("sub")).expect("mkdir sub");

    let path = folder.join("cni.sock");
    let serving = serve_reference(Server::bind(&path).expect("bind"));
    assert_serves(&path);
    serving.stop().expect("serve returns Ok");

    assert!(!path.exists(), "the socket is removed at exit");
    assert_eq!(mode(&folder), 0o700);
    assert_eq!(fs::read(folder.join("keep.txt")).expect("kept"), b"mine");
    assert!(folder.join("sub").is_dir());
}

/// How a refused folder is set up, inside a test folder.
type Setup = fn(&Path) -> PathBuf;

fn folder_with_mode(root: &Path, mode: u32) -> PathBuf {
    let folder = root.join("run");
    fs::create_dir(&folder).expect("mkdir");
    set_mode(&folder, mode);
    folder
}

#[test]
fn unsafe_folders_are_refused_and_left_alone() {
    let rows: &[(&str, Setup, &str)] = &[
        (
            "a symlink to a private folder",
            |root| {
                let real = folder_with_mode(root, 0o700);
                let link = root.join("link");
                symlink(&real, &link).expect("symlink");
                link
            },
            "is a symlink",
        ),
        (
            "a folder owned by another uid",
            |root| {
                let folder = folder_with_mode(root, 0o700);
                std::os::unix::fs::chown(&folder, Some(NOBODY), Some(NOBODY)).expect("chown");
                folder
            },
            "is owned by uid 65534",
        ),
        (
            "mode 0755",
            |root| folder_with_mode(root, 0o755),
            "has mode 0755",
        ),
        (
            "mode 0750",
            |root| folder_with_mode(root, 0o750),
            "has mode 0750",
        ),
        (
            "mode 0710",
            |root| folder_with_mode(root, 0o710),
            "has mode 0710",
        ),
        (
            "mode 0701",
            |root| folder_with_mode(root, 0o701),
            "has mode 0701",
        ),
        (
            "mode 0777",
            |root| folder_with_mode(root, 0o777),
            "has mode 0777",
        ),
        (
            "mode 1777",
            |root| folder_with_mode(root, 0o1777),
            "has mode 1777",
        ),
        (
            "a regular file where the folder should be",
            |root| {
                let file = root.join("run");
                fs::write(&file, b"not a folder").expect("write");
                file
            },
            "is not a folder",
        ),
    ];

    let mut failures = Vec::new();
    for (name, setup, phrase) in rows {
        let dir = TempDir::new("sock-refused");
        let folder = setup(dir.path());
        let before = fs::symlink_metadata(&folder).expect("set up");
        let path = folder.join("cni.sock");

        match Server::bind(&path) {
            Ok(_) => failures.push(format!("{name}: bind succeeded")),
            Err(e) => {
                let text = e.to_string();
                if !text.contains(&folder.display().to_string()) {
                    failures.push(format!("{name}: error does not name the folder: {text}"));
                }
                if !text.contains(phrase) {
                    failures.push(format!("{name}: error does not say {phrase:?}: {text}"));
                }
            }
        }

        // Refusing changed nothing: same kind, mode and owner, nothing new.
        let after = fs::symlink_metadata(&folder).expect("still there");
        if (after.ino(), after.mode(), after.uid()) != (before.ino(), before.mode(), before.uid()) {
            failures.push(format!("{name}: the folder was changed"));
        }
        if fs::symlink_metadata(&path).is_ok() {
            failures.push(format!("{name}: a socket was created in it"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_path_without_a_folder_is_refused() {
    let e = Server::bind("cni.sock").err().expect("refused");
    let text = e.to_string();
    assert!(text.contains("cni.sock"), "{text}");
    assert!(text.contains("has no folder"), "{text}");
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = TempDir::new("sock-stale");
    let folder = folder_with_mode(dir.path(), 0o700);
    let path = folder.join("cni.sock");

    // A server that died without cleaning up: the file stays, nothing
    // listens on it.
    drop(UnixListener::bind(&path).expect("bind the old socket"));
    let old = fs::symlink_metadata(&path).expect("the stale socket");
    assert!(old.file_type().is_socket());

    let serving = serve_reference(Server::bind(&path).expect("bind over a stale socket"));
    assert_serves(&path);
    assert_eq!(mode(&path), 0o600);
    serving.stop().expect("serve returns Ok");
}

#[test]
fn a_live_server_is_not_replaced() {
    let first = TestServer::reference("sock-live");
    let path = first.path().to_owned();
    let inode = fs::symlink_metadata(&path).expect("socket").ino();

    let e = Server::bind(&path).err().expect("a second bind must fail");
    let text = e.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("live server"), "{text}");

    // The first server still serves, on the same file.
    assert_eq!(fs::symlink_metadata(&path).expect("socket").ino(), inode);
    assert_serves(&path);
}

#[test]
fn what_is_not_a_socket_at_the_socket_path_is_refused_and_kept() {
    let dir = TempDir::new("sock-not-socket");
    let folder = folder_with_mode(dir.path(), 0o700);
    let path = folder.join("cni.sock");
    let other = folder.join("elsewhere");
    fs::write(&other, b"target").expect("write");

    let rows: &[(&str, &dyn Fn())] = &[
        ("a regular file", &|| {
            fs::write(&path, b"keep me").expect("write")
        }),
        ("a folder", &|| fs::create_dir(&path).expect("mkdir")),
        ("a symlink", &|| symlink(&other, &path).expect("symlink")),
    ];
    let mut failures = Vec::new();
    for (name, setup) in rows {
        setup();
        let before = fs::symlink_metadata(&path).expect("set up");
        match Server::bind(&path) {
            Ok(_) => failures.push(format!("{name}: bind succeeded")),
            Err(e) => {
                let text = e.to_string();
                if !text.contains(&path.display().to_string()) || !text.contains("not a socket") {
                    failures.push(format!("{name}: unclear error: {text}"));
                }
            }
        }
        match fs::symlink_metadata(&path) {
            Ok(after) if after.ino() == before.ino() => {}
            _ => failures.push(format!("{name}: it was removed or replaced")),
        }
        // Clear it for the next row; only the test removes things.
        if before.is_dir() {
            fs::remove_dir(&path).expect("rmdir");
        } else {
            fs::remove_file(&path).expect("rm");
        }
    }
    assert_eq!(fs::read(&other).expect("kept"), b"target");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn exit_removes_only_the_socket_file_it_bound() {
    let dir = TempDir::new("sock-replaced");
    let path = dir.join("run/cni.sock");
    let first = serve_reference(Server::bind(&path).expect("bind first"));

    // Someone moves the first server's file away and a second server binds
    // the path afresh.
    fs::rename(&path, dir.join("run/old.sock")).expect("rename");
    let second = serve_reference(Server::bind(&path).expect("bind second"));

    first.stop().expect("first returns Ok");
    assert!(
        path.exists(),
        "the first server removed the second's socket"
    );
    assert_serves(&path);
    second.stop().expect("second returns Ok");
    assert!(!path.exists());
    assert!(
        dir.join("run/old.sock").exists(),
        "a moved file is not chased"
    );
}

/// The modes are the security model: a process of another uid cannot even
/// reach the socket. curl, run as nobody, stands in for such a process.
#[test]
fn another_user_cannot_connect() {
    let server = TestServer::reference("sock-nobody");
    let output = Command::new("curl")
        .args(["-v", "-sS", "--max-time", "10"])
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--unix-socket")
        .arg(server.path())
        .args(["--data-binary", "{}", "http://dummy/"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .output()
        .expect("curl is installed (apt package curl)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(7),
        "curl as uid {NOBODY} must fail to connect; stderr: {stderr}"
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "000");
    // curl -v tells why: the 0700 folder keeps uid 65534 out.
    assert!(stderr.contains("Permission denied"), "{stderr}");

    // Root still can.
    assert_serves(server.path());
}
