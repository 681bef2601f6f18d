//! Logging through Envoy's own log stream (`[dynamic_modules]` logger) when the module runs inside
//! Envoy, else to standard error (unit tests, or a callback Envoy does not export). Every line
//! starts with `meshauthz: `. State owned: none (the callbacks live in `ffi`).

/// Envoy's log levels, in the ABI's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace = 0,
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// Logs one line.
pub fn log(level: Level, message: &str) {
    let line = format!("meshauthz: {message}");
    if !crate::ffi::envoy_log(level, &line) {
        eprintln!("[{level:?}] {line}");
    }
}

/// Whether a line at `level` would be written (so callers skip formatting it otherwise).
pub fn enabled(level: Level) -> bool {
    crate::ffi::envoy_log_enabled(level).unwrap_or(level >= Level::Info)
}
