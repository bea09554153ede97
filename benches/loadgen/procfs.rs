//! What `/proc` says about a server process: memory, CPU time, open files.

use std::fs;
use std::io;
use std::time::Duration;

use crate::sys;

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the most ever resident (the process's peak).
    pub peak_kib: u64,
    /// `RssAnon`: the part of `VmRSS` that is the process's own memory
    /// (heap, stacks), without the pages of its binary and libraries.
    pub anon_kib: u64,
}

/// Reads `VmRSS`, `VmHWM` and `RssAnon` from `/proc/PID/status`.
pub fn memory(pid: u32) -> io::Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> io::Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| io::Error::other(format!("no {name} in /proc/{pid}/status")))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
        anon_kib: field("RssAnon:")?,
    })
}

/// User plus system CPU time of the whole process (every thread, living or
/// exited), from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted
    // from the last ')'. utime and stime are fields 14 and 15, that is the
    // 12th and 13th after the name.
    let after_name = stat
        .rfind(')')
        .map(|at| &stat[at + 1..])
        .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| -> io::Result<u64> {
        fields
            .get(index)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))
    };
    let total = ticks(11)? + ticks(12)?;
    let per_second = sys::clock_ticks_per_second();
    Ok(Duration::from_nanos(total * 1_000_000_000 / per_second))
}

/// How many file descriptors the process holds.
pub fn open_files(pid: u32) -> io::Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}
