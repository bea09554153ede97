//! `cniserver-shim`: the CNI plugin a container runtime execs for every pod.
//!
//! It reads its arguments, environment and stdin, lets
//! [`cniserver::shim`] decide, and writes what it decided. See `--help`.

use std::io::Write;
use std::process::ExitCode;

use cniserver::shim;

fn main() -> ExitCode {
    let outcome = shim::main_with(
        std::env::args_os().skip(1),
        shim::process_environment(),
        std::io::stdin().lock(),
    );

    let _ = std::io::stderr().write_all(&outcome.stderr);
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(&outcome.stdout)
        .and_then(|()| stdout.flush())
    {
        // The runtime went away or closed our stdout: it cannot get the
        // result, so this call has failed whatever the server said.
        eprintln!("cniserver-shim: cannot write the result to stdout: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::from(outcome.exit_code)
}
