//! The plugin's stderr: split into lines (long ones in pieces), parsed as hclog JSON when they are,
//! forwarded to `log`, to the caller's sinks, and remembered (a short tail for error messages).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::config::{LogCallback, SharedWriter};

/// How many recent stderr lines errors quote.
pub(crate) const TAIL_LINES: usize = 20;
const TAIL_LINE_MAX: usize = 512;

/// One line (or one piece of an over-long line) the plugin wrote to stderr, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    /// The level: from `@level` of an hclog JSON line, or a `[LEVEL]` tag, or `Debug` for plain
    /// lines (`Error` once the plugin printed `panic:` or `fatal error:`).
    pub level: log::Level,
    /// The message (`@message` for JSON lines, the text otherwise).
    pub message: String,
    /// `@module` of a JSON line.
    pub module: Option<String>,
    /// `@timestamp` of a JSON line, as written.
    pub timestamp: Option<String>,
    /// The other key/value pairs of a JSON line, values rendered as JSON (strings unquoted).
    pub fields: Vec<(String, String)>,
    /// True when the line was hclog JSON.
    pub json: bool,
    /// True when this is one piece of a line longer than the log buffer.
    pub partial: bool,
    /// The line as written, without its line ending.
    pub raw: String,
}

/// Parses one complete stderr line. `panic_mode` carries go-plugin's rule that after `panic:` or
/// `fatal error:` untagged lines are errors.
pub fn parse_line(raw: &str, panic_mode: &mut bool) -> LogLine {
    if let Some(line) = parse_json(raw) {
        return line;
    }
    let tags = [
        ("[TRACE]", log::Level::Trace),
        ("[DEBUG]", log::Level::Debug),
        ("[INFO]", log::Level::Info),
        ("[WARN]", log::Level::Warn),
        ("[ERROR]", log::Level::Error),
    ];
    let level = match tags.iter().find(|(tag, _)| raw.starts_with(tag)) {
        Some((_, level)) => *level,
        None if raw.starts_with("panic: ") || raw.starts_with("fatal error: ") => {
            *panic_mode = true;
            log::Level::Error
        }
        None if *panic_mode => log::Level::Error,
        None => log::Level::Debug,
    };
    plain(raw, level, false)
}

fn plain(raw: &str, level: log::Level, partial: bool) -> LogLine {
    LogLine {
        level,
        message: raw.to_owned(),
        module: None,
        timestamp: None,
        fields: Vec::new(),
        json: false,
        partial,
        raw: raw.to_owned(),
    }
}

fn parse_json(raw: &str) -> Option<LogLine> {
    let trimmed = raw.trim_start();
    if !trimmed.starts_with('{') {
        return None;
    }
    let serde_json::Value::Object(map) = serde_json::from_str(trimmed).ok()? else {
        return None;
    };
    let timestamp = match map.get("@timestamp") {
        Some(serde_json::Value::String(ts)) if is_hclog_timestamp(ts) => Some(ts.clone()),
        Some(_) => return None,
        None => None,
    };
    let level = map.get("@level").and_then(|l| l.as_str()).and_then(|l| {
        match l.trim().to_ascii_lowercase().as_str() {
            "trace" => Some(log::Level::Trace),
            "debug" => Some(log::Level::Debug),
            "info" => Some(log::Level::Info),
            "warn" | "warning" => Some(log::Level::Warn),
            "error" => Some(log::Level::Error),
            _ => None,
        }
    });
    let Some(level) = level else {
        // go-plugin logs level-less JSON verbatim at debug.
        return Some(LogLine {
            json: true,
            ..plain(raw, log::Level::Debug, false)
        });
    };
    let render = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut fields = Vec::new();
    let mut module = None;
    for (key, value) in &map {
        match key.as_str() {
            "@level" | "@message" | "@timestamp" => {}
            "@module" => module = Some(render(value)),
            _ => fields.push((key.clone(), render(value))),
        }
    }
    Some(LogLine {
        level,
        message: map.get("@message").map(render).unwrap_or_default(),
        module,
        timestamp,
        fields,
        json: true,
        partial: false,
        raw: raw.to_owned(),
    })
}

/// hclog's layout `2006-01-02T15:04:05.000000Z07:00`: exactly six fractional digits, then `Z` or
/// `+hh:mm`/`-hh:mm`.
fn is_hclog_timestamp(ts: &str) -> bool {
    let b = ts.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    let head = b.len() >= 27
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..26);
    head && match &b[26..] {
        b"Z" => true,
        [sign, _, _, b':', _, _] if *sign == b'+' || *sign == b'-' => {
            digits(27..29) && digits(30..32)
        }
        _ => false,
    }
}

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

/// Where stderr lines go. Shared by the stderr thread and whoever builds errors.
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
    fn hclog_json_lines_keep_level_message_and_fields() {
        let mut panic = false;
        let l = parse_line(
            r#"{"@level":"info","@message":"plugin address","@module":"kv","@timestamp":"2026-01-02T03:04:05.123456Z","network":"unix","n":3}"#,
            &mut panic,
        );
        assert!(l.json);
        assert_eq!(l.level, log::Level::Info);
        assert_eq!(l.message, "plugin address");
        assert_eq!(l.module.as_deref(), Some("kv"));
        assert_eq!(
            l.fields,
            vec![("n".into(), "3".into()), ("network".into(), "unix".into())]
        );
        let l = parse_line(
            r#"{"@level":"WARN ","@message":"x","@timestamp":"2026-01-02T03:04:05.123456+01:00"}"#,
            &mut panic,
        );
        assert_eq!((l.level, l.json), (log::Level::Warn, true));
    }

    #[test]
    fn bad_timestamps_and_missing_levels_follow_go_plugin() {
        let mut panic = false;
        let l = parse_line(
            r#"{"@level":"info","@message":"x","@timestamp":"2026-01-02T03:04:05.123Z"}"#,
            &mut panic,
        );
        assert!(
            !l.json,
            "a timestamp with 3 digits makes the line plain text"
        );
        assert_eq!(l.level, log::Level::Debug);
        let l = parse_line(r#"{"@message":"no level"}"#, &mut panic);
        assert!(l.json);
        assert_eq!(l.level, log::Level::Debug);
        assert_eq!(l.message, r#"{"@message":"no level"}"#);
    }

    #[test]
    fn tags_and_panic_mode() {
        let mut panic = false;
        assert_eq!(
            parse_line("[WARN] disk", &mut panic).level,
            log::Level::Warn
        );
        assert_eq!(parse_line("hello", &mut panic).level, log::Level::Debug);
        assert_eq!(
            parse_line("panic: boom", &mut panic).level,
            log::Level::Error
        );
        assert!(panic);
        assert_eq!(
            parse_line("goroutine 1", &mut panic).level,
            log::Level::Error
        );
        assert_eq!(
            parse_line("[INFO] still tagged", &mut panic).level,
            log::Level::Info
        );
    }

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
