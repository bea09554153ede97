//! The second guard: on accept, the server judges the peer's `SO_PEERCRED`
//! uid against its `PeerPolicy`.
//!
//! The first guard, the socket folder's mode, keeps other users from ever
//! reaching the socket. To test the second one this file binds the socket
//! itself in a folder anyone may enter, makes the socket 0666, and hands it
//! to `Server::from_listener`. Clients run as root and as `nobody` (uid
//! 65534) in forked children that drop their privileges before connecting.

mod common;

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cniserver::{reference, PeerPolicy, Server, ServerConfig, ServerEvent};
use common::{pod_body, post, reference_add_result, show, Answer, Serving, TempDir, IO_GUARD};
use nix::sys::socket::UnixAddr;
use nix::unistd::Pid;

const ROOT: u32 = 0;
const NOBODY: u32 = 65534;

/// Runs the client of one exchange in a child process as `uid` (and the
/// same gid, no supplementary groups). Returns the child's pid, which is
/// the pid the server sees, and every byte the child read.
fn exchange_as(uid: u32, path: &Path, request: &[u8]) -> (i32, Vec<u8>) {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, pipe, ForkResult};

    // Everything the child needs is made before the fork: the child of a
    // threaded process may only make system calls.
    let address = UnixAddr::new(path).expect("socket path fits sockaddr_un");
    let (from_child, to_parent) = pipe().expect("pipe");

    // SAFETY: the child runs only `client_as`, which makes system calls and
    // touches no lock and no allocator, then leaves with `_exit`.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            drop(from_child);
            let code = client_as(uid, &address, request, &to_parent);
            // SAFETY: `_exit` ends the child at once, running nothing of
            // the parent's copied state.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(to_parent);
            let read = read_to_end(&from_child);
            let status = waitpid(child, None).expect("waitpid");
            assert_eq!(
                status,
                WaitStatus::Exited(child, 0),
                "the client as uid {uid} failed (1 privileges, 2 socket, 3 connect, 4 read)"
            );
            (child.as_raw(), read)
        }
    }
}

/// The child's side: drop to `uid`, connect, send, and copy the answer to
/// `out`. Returns the exit code.
fn client_as(uid: u32, address: &UnixAddr, request: &[u8], out: &OwnedFd) -> i32 {
    use nix::errno::Errno;
    use nix::sys::socket::{
        connect, recv, send, setsockopt, socket, sockopt::ReceiveTimeout, AddressFamily, MsgFlags,
        SockFlag, SockType,
    };
    use nix::sys::time::{TimeVal, TimeValLike};
    use nix::unistd::{setgroups, setresgid, setresuid, write, Gid, Uid};

    let (gid, uid) = (Gid::from_raw(uid), Uid::from_raw(uid));
    if setgroups(&[]).is_err() || setresgid(gid, gid, gid).is_err() {
        return 1;
    }
    if setresuid(uid, uid, uid).is_err() {
        return 1;
    }
    let Ok(socket) = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return 2;
    };
    let fd = socket.as_raw_fd();
    // Guards the reads below against a server that never answers.
    let guard = TimeVal::seconds(IO_GUARD.as_secs() as i64);
    if setsockopt(&socket, ReceiveTimeout, &guard).is_err() || connect(fd, address).is_err() {
        return 3;
    }

    // A refused peer may be closed before its request is all out: the
    // answer, already in its buffer, is what counts.
    let mut sent = 0;
    while sent < request.len() {
        match send(fd, &request[sent..], MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => sent += n,
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }

    let mut buf = [0u8; 4096];
    loop {
        match recv(fd, &mut buf, MsgFlags::empty()) {
            Ok(0) | Err(Errno::ECONNRESET) => return 0,
            Ok(n) => {
                let mut copied = 0;
                while copied < n {
                    match write(out, &buf[copied..n]) {
                        Ok(m) => copied += m,
                        Err(Errno::EINTR) => {}
                        Err(_) => return 4,
                    }
                }
            }
            Err(Errno::EINTR) => {}
            Err(_) => return 4,
        }
    }
}

fn read_to_end(fd: &OwnedFd) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => panic!("cannot read from the client: {e}"),
        }
    }
}

/// A server with `policy` on a socket any user can reach, reporting its
/// events; dropping it stops the server before the folder goes.
struct OpenServer {
    serving: Serving,
    events: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

fn start(policy: PeerPolicy) -> OpenServer {
    let dir = TempDir::new("peer-creds");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod folder");
    let path = dir.join("cni.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).expect("chmod socket");

    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let config = ServerConfig {
        peers: policy,
        on_event: Some(Arc::new(move |event: &ServerEvent<'_>| {
            seen.lock().unwrap().push(format!("{event:?}"));
        })),
        ..ServerConfig::default()
    };
    let server = Server::from_listener(listener, path, config).expect("serve on the listener");
    let serving = Serving::spawn(server, |request, reply| {
        reply.send(reference::answer(&request))
    });
    OpenServer {
        serving,
        events,
        _dir: dir,
    }
}

#[test]
fn peer_policy_decides_who_is_served() {
    let request = post(pod_body("ADD", "c1").as_bytes());
    let served = reference_add_result("/var/run/netns/c1");
    let policies = [
        ("SameUser", PeerPolicy::SameUser, [true, false]),
        (
            "Uids([65534])",
            PeerPolicy::Uids(vec![NOBODY]),
            [false, true],
        ),
        ("Anyone", PeerPolicy::Anyone, [true, true]),
    ];

    let mut failures = Vec::new();
    for (name, policy, allowed) in policies {
        let server = start(policy);
        for (uid, allowed) in [ROOT, NOBODY].into_iter().zip(allowed) {
            let (pid, raw) = exchange_as(uid, server.serving.path(), &request);
            let (status_line, body, event) = if allowed {
                ("HTTP/1.1 200 OK", served.clone(), None)
            } else {
                let event = format!("PeerRefused {{ uid: {uid}, pid: {pid} }}");
                let body = format!("peer uid {uid} is not allowed\n");
                ("HTTP/1.1 403 Forbidden", body, Some(event))
            };

            let mut found = Vec::new();
            match Answer::parse(&raw) {
                Ok(answer) if answer.status_line == status_line && answer.text() == body => {}
                Ok(answer) => found.push(format!("want {status_line:?} {body:?}, got {answer}")),
                Err(why) => found.push(why),
            }
            // The event is emitted before the refusal is written, so it is
            // in by the time the client has read its answer.
            let events = std::mem::take(&mut *server.events.lock().unwrap());
            if events != Vec::from_iter(event.clone()) {
                found.push(format!("events {events:?}, want {event:?}"));
            }
            if !found.is_empty() {
                failures.push(format!(
                    "{name}, client uid {uid} (pid {}): {}\n    read: {}",
                    Pid::from_raw(pid),
                    found.join("; "),
                    show(&raw)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
