//! A small leveled logger that writes one line per event to stderr.
//!
//! The daemon runs under a service manager that timestamps and collects
//! stderr, so a line is only `LEVEL message key=value...`. Values that
//! came from a request are written through [`Value`], which quotes
//! anything that could break a line apart or fool a `grep`.

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

/// How much the daemon says, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Only what stops the daemon or a request from working.
    Error = 1,
    /// Also what looks wrong but goes on.
    Warn = 2,
    /// Also the start-up line and one line per request.
    Info = 3,
    /// Also each step of a request: the plugin found, its exit status.
    Debug = 4,
}

impl Level {
    /// The level as written at the start of a line.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

/// A level name that is not one of `error`, `warn`, `info`, `debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownLevel;

impl fmt::Display for UnknownLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected one of error, warn, info, debug")
    }
}

impl std::error::Error for UnknownLevel {}

impl FromStr for Level {
    type Err = UnknownLevel;

    /// Reads a level name in any case. `trace` means `debug`, the most
    /// this logger says, so that a `RUST_LOG=trace` habit still works.
    fn from_str(name: &str) -> Result<Level, UnknownLevel> {
        match name.to_ascii_lowercase().as_str() {
            "error" => Ok(Level::Error),
            "warn" | "warning" => Ok(Level::Warn),
            "info" => Ok(Level::Info),
            "debug" | "trace" => Ok(Level::Debug),
            _ => Err(UnknownLevel),
        }
    }
}

/// Reads the level out of a `RUST_LOG` value.
///
/// Only the parts the daemon can honour are used: a bare level
/// (`debug`) or one aimed at the daemon (`cniserverd=debug`,
/// `cniserver=debug`); directives for other crates are skipped. `None`
/// when nothing in it applies.
pub fn level_from_rust_log(value: &str) -> Option<Level> {
    let mut level = None;
    for directive in value.split(',').map(str::trim) {
        match directive.split_once('=') {
            None => {
                if let Ok(bare) = directive.parse() {
                    level = level.or(Some(bare));
                }
            }
            Some((target, name)) => {
                let ours = matches!(target.trim(), "cniserverd" | "cniserver");
                if let (true, Ok(aimed)) = (ours, name.trim().parse()) {
                    // A directive naming the daemon beats a bare one.
                    return Some(aimed);
                }
            }
        }
    }
    level
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the most detailed level written from now on.
pub fn set_level(level: Level) {
    MAX_LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether lines at `level` are written.
pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX_LEVEL.load(Ordering::Relaxed)
}

/// Writes one line at `level`, if that level is on.
///
/// The line goes out in one `write` so lines from worker threads never
/// interleave. A failed write to stderr is ignored: there is nowhere
/// better to report it.
pub fn write(level: Level, message: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let line = format!("{} {}\n", level.as_str(), message);
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Writes a line at error level.
pub fn error(message: fmt::Arguments<'_>) {
    write(Level::Error, message);
}

/// Writes a line at warn level.
pub fn warn(message: fmt::Arguments<'_>) {
    write(Level::Warn, message);
}

/// Writes a line at info level.
pub fn info(message: fmt::Arguments<'_>) {
    write(Level::Info, message);
}

/// Writes a line at debug level.
pub fn debug(message: fmt::Arguments<'_>) {
    write(Level::Debug, message);
}

/// A value from a request, written bare when it is a plain token and
/// quoted with escapes otherwise, so that `key=value` pairs stay
/// unambiguous whatever a client sends.
pub struct Value<'a>(pub &'a str);

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = !self.0.is_empty()
            && self
                .0
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@+".contains(&b));
        if plain {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_in_any_case() {
        let cases = [
            ("error", Some(Level::Error)),
            ("WARN", Some(Level::Warn)),
            ("Info", Some(Level::Info)),
            ("debug", Some(Level::Debug)),
            ("trace", Some(Level::Debug)),
            ("loud", None),
            ("", None),
        ];
        for (name, want) in cases {
            assert_eq!(name.parse::<Level>().ok(), want, "level {name:?}");
        }
    }

    #[test]
    fn rust_log_directives_for_the_daemon_win() {
        let cases = [
            ("debug", Some(Level::Debug)),
            ("warn,cniserverd=debug", Some(Level::Debug)),
            ("cniserver=error", Some(Level::Error)),
            ("mio=trace", None),
            ("mio=trace,info", Some(Level::Info)),
            ("nonsense", None),
            ("", None),
        ];
        for (value, want) in cases {
            assert_eq!(level_from_rust_log(value), want, "RUST_LOG={value:?}");
        }
    }

    #[test]
    fn values_are_quoted_unless_plain() {
        let cases = [
            ("abc-123", "abc-123"),
            ("/var/run/netns/x", "/var/run/netns/x"),
            ("", "\"\""),
            ("two words", "\"two words\""),
            ("line\nbreak", "\"line\\nbreak\""),
            ("a=b", "\"a=b\""),
        ];
        for (raw, want) in cases {
            assert_eq!(Value(raw).to_string(), want, "value {raw:?}");
        }
    }
}
