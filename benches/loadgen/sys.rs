//! The few system calls std does not wrap: the open-file limit, SIGTERM and
//! the clock tick.
//!
//! The bench is Linux-only (it reads `/proc`), so the constants and the
//! `rlimit` layout are Linux's on 64-bit targets.

use std::io;

#[repr(C)]
struct RLimit {
    current: u64,
    maximum: u64,
}

const RLIMIT_NOFILE: i32 = 7;
const SIGTERM: i32 = 15;
const SC_CLK_TCK: i32 = 2;

extern "C" {
    fn getrlimit(resource: i32, limit: *mut RLimit) -> i32;
    fn setrlimit(resource: i32, limit: *const RLimit) -> i32;
    fn kill(pid: i32, signal: i32) -> i32;
    fn sysconf(name: i32) -> i64;
}

/// Raises this process's open-file limit to its hard limit and returns the
/// new limit. Children started afterwards inherit it.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let mut limit = RLimit {
        current: 0,
        maximum: 0,
    };
    // SAFETY: `limit` is a valid, writable `struct rlimit`.
    if unsafe { getrlimit(RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    limit.current = limit.maximum;
    // SAFETY: `limit` is a valid `struct rlimit` that outlives the call.
    if unsafe { setrlimit(RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.current)
}

/// Sends SIGTERM to `pid`.
pub fn terminate(pid: u32) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { kill(pid, SIGTERM) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Clock ticks per second, the unit of CPU times in `/proc/PID/stat`.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf(3) takes a plain integer and touches no memory of ours.
    let ticks = unsafe { sysconf(SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}
