//! The plugin's stderr: split into lines (long ones in pieces), parsed as hclog JSON when they are,
//! forwarded to `log`, to the caller's sinks, and remembered (a short tail for error messages).
//! The reads themselves are a task of the I/O thread (see `process`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::runtime::reactor::SharedWriter;
use crate::wire::hclog::{parse_line, plain, LogLine};

/// A callback for each stderr line of the plugin.
pub type LogCallback = Arc<dyn Fn(&LogLine) + Send + Sync>;

/// How many recent stderr lines errors quote.
pub(crate) const TAIL_LINES: usize = 20;
const TAIL_LINE_MAX: usize = 512;

/// Splits a plugin's stderr into lines as its bytes arrive (in any pieces) and delivers each to
/// the sinks. A line longer than the buffer size is delivered in pieces of that size.
pub(crate) struct StderrLines {
    sinks: StderrSinks,
    line: Vec<u8>,
    in_pieces: bool,
    panic_mode: bool,
}

impl StderrLines {
    /// Delivers every complete line in `data`, keeping the rest for the next call.
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        let limit = self.sinks.buffer_size.max(1);
        while !data.is_empty() {
            let room = limit - self.line.len();
            let window = &data[..data.len().min(room)];
            if let Some(newline) = window.iter().position(|&b| b == b'\n') {
                self.line.extend_from_slice(&window[..newline]);
                data = &data[newline + 1..];
                self.sinks
                    .deliver(&self.line, self.in_pieces, true, &mut self.panic_mode);
                self.line.clear();
                self.in_pieces = false;
            } else {
                self.line.extend_from_slice(window);
                data = &data[window.len()..];
                if self.line.len() >= limit {
                    self.sinks
                        .deliver(&self.line, true, false, &mut self.panic_mode);
                    self.line.clear();
                    self.in_pieces = true;
                }
            }
        }
    }

    /// The stream ended: delivers an unterminated last line.
    pub(crate) fn finish(&mut self) {
        if !self.line.is_empty() || self.in_pieces {
            self.sinks
                .deliver(&self.line, self.in_pieces, true, &mut self.panic_mode);
            self.line.clear();
            self.in_pieces = false;
        }
    }
}

/// Where stderr lines go. Shared by the stderr task (on the I/O thread) and whoever builds
/// errors.
pub(crate) struct StderrSinks {
    pub target: String,
    pub buffer_size: usize,
    pub writer: Option<SharedWriter>,
    pub callback: Option<LogCallback>,
    pub tail: Arc<Mutex<VecDeque<String>>>,
}

impl StderrSinks {
    /// A line splitter that delivers what is fed to it here, line by line, in order.
    pub(crate) fn lines(self) -> StderrLines {
        StderrLines {
            sinks: self,
            line: Vec::new(),
            in_pieces: false,
            panic_mode: false,
        }
    }

    fn deliver(&self, bytes: &[u8], piece: bool, ends_line: bool, panic_mode: &mut bool) {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if let Some(writer) = &self.writer {
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                let _ = w.write_all(bytes);
                if ends_line {
                    let _ = w.write_all(b"\n");
                }
                let _ = w.flush();
            }));
            if written.is_err() {
                log::error!(target: &self.target, "the stderr writer panicked");
            }
        }
        if piece && bytes.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(bytes);
        let line = if piece {
            plain(&text, log::Level::Debug, true)
        } else {
            parse_line(&text, panic_mode)
        };
        self.remember(&line.raw);
        self.log(&line);
        if let Some(callback) = &self.callback {
            // A panicking callback must not stop the reader: the plugin would block on stderr.
            let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| callback(&line)));
            if called.is_err() {
                log::error!(target: &self.target, "the on_log_line callback panicked; line dropped");
            }
        }
    }

    fn remember(&self, raw: &str) {
        let mut clipped = raw.to_owned();
        if clipped.len() > TAIL_LINE_MAX {
            let mut end = TAIL_LINE_MAX;
            while !clipped.is_char_boundary(end) {
                end -= 1;
            }
            clipped.truncate(end);
            clipped.push_str("...");
        }
        let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(clipped);
    }

    fn log(&self, line: &LogLine) {
        if !log::log_enabled!(target: &self.target, line.level) {
            return;
        }
        let mut text = line.message.clone();
        if let Some(module) = &line.module {
            text = format!("{module}: {text}");
        }
        for (k, v) in &line.fields {
            text.push_str(&format!(" {k}={v}"));
        }
        if let Some(ts) = &line.timestamp {
            text.push_str(&format!(" timestamp={ts}"));
        }
        log::logger().log(
            &log::Record::builder()
                .level(line.level)
                .target(&self.target)
                .args(format_args!("{text}"))
                .build(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_callback_does_not_stop_the_reader() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let sinks = StderrSinks {
            target: "t".into(),
            buffer_size: 1024,
            writer: None,
            callback: Some(Arc::new(move |l: &LogLine| {
                if l.raw == "boom" {
                    panic!("callback bug");
                }
                seen2.lock().unwrap().push(l.raw.clone());
            })),
            tail: Arc::default(),
        };
        let mut lines = sinks.lines();
        lines.feed(b"one\nboom\ntwo\n");
        lines.finish();
        assert_eq!(*seen.lock().unwrap(), ["one", "two"]);
    }

    #[test]
    fn long_lines_arrive_in_pieces_in_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let sinks = StderrSinks {
            target: "t".into(),
            buffer_size: 4,
            writer: Some(raw.clone()),
            callback: Some(Arc::new(move |l: &LogLine| {
                seen2.lock().unwrap().push((l.raw.clone(), l.partial))
            })),
            tail: Arc::default(),
        };
        // Fed in uneven pieces, as a pipe delivers them.
        let tail = sinks.tail.clone();
        let mut lines = sinks.lines();
        for piece in [&b"abc"[..], b"defghij\nx", b"y\r", b"\nen", b"d"] {
            lines.feed(piece);
        }
        lines.finish();
        let seen = seen.lock().unwrap().clone();
        let pieces: Vec<(&str, bool)> = seen.iter().map(|(s, p)| (s.as_str(), *p)).collect();
        assert_eq!(
            pieces,
            [
                ("abcd", true),
                ("efgh", true),
                ("ij", true),
                ("xy", false),
                ("end", false)
            ]
        );
        assert_eq!(&*raw.lock().unwrap(), b"abcdefghij\nxy\nend\n");
        assert_eq!(tail.lock().unwrap().back().unwrap(), "end");
    }
}
