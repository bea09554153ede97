//! The smallest useful embedding: a CNI server that answers every pod
//! request with the protocol's reference handler.
//!
//! ```text
//! cargo run --release --example embed -- --socket /run/embed/cni.sock
//! ```
//!
//! It stops cleanly, removing its socket, on SIGTERM or SIGINT.

use std::process::ExitCode;

use cniserver::{reference, shutdown_on_signals, Server};

const USAGE: &str = "usage: embed [--socket PATH]

Serves the CNI server protocol on PATH with the reference handler.

  --socket PATH   the Unix socket to listen on
                  (default /var/run/openshift-sdn/cni-server.sock)
  -h, --help      print this help";

fn main() -> ExitCode {
    let mut socket = cniserver::DEFAULT_SOCKET_PATH.to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--socket" => match args.next() {
                Some(path) => socket = path,
                None => return usage_error("--socket needs a path"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage_error(&format!("unknown argument {other:?}")),
        }
    }

    // The server exists before any thread starts, so the signal mask set
    // here covers every thread.
    let server = match Server::bind(&socket) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("embed: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = shutdown_on_signals(server.shutdown_handle()) {
        eprintln!("embed: cannot watch for signals: {e}");
        return ExitCode::FAILURE;
    }

    // Shims read this file before ADD: it says a server is up. This server
    // has no settings to hand out, so it publishes an empty object.
    let settings = cniserver::settings::settings_path(server.path());
    if let Err(e) = cniserver::settings::write_atomically(&settings, b"{}\n", 0o444) {
        eprintln!("embed: {e}");
        return ExitCode::FAILURE;
    }

    eprintln!("listening on {socket}");
    match server.serve(|request, reply| reply.send(reference::answer(&request))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("embed: {message}\n\n{USAGE}");
    ExitCode::from(2)
}
