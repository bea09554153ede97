//! `cniserverd`: the thick-plugin daemon. See `cniserver::daemon` and
//! `cniserverd --help`.

use std::process::ExitCode;

use cniserver::daemon::config::FlagEnv;

fn main() -> ExitCode {
    cniserver::daemon::main(std::env::args_os().skip(1), &FlagEnv::from_process())
}
