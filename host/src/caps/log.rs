//! `bulkhead:tool/log`: log lines kept with the call's record.

use super::HostState;
use super::iface::log::{Host, Level};
use crate::model::LogLine;

/// Lines and bytes kept per call; the rest is counted and dropped.
pub const MAX_LOG_LINES: usize = 256;
pub const MAX_LOG_BYTES: usize = 64 * 1024;

#[derive(Default)]
pub struct LogBuffer {
    pub lines: Vec<LogLine>,
    bytes: usize,
    dropped: usize,
}

impl LogBuffer {
    fn push(&mut self, level: &str, message: String) {
        if self.lines.len() >= MAX_LOG_LINES || self.bytes + message.len() > MAX_LOG_BYTES {
            self.dropped += 1;
            if self.dropped == 1 {
                self.lines
                    .push(LogLine { level: "warn".into(), message: "log limit reached: later lines dropped".into() });
            }
            return;
        }
        self.bytes += message.len();
        self.lines.push(LogLine { level: level.into(), message });
    }
}

impl Host for HostState {
    async fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        };
        self.logs.push(level, message);
    }
}
