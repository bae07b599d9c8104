//! hclog, the log format of go-plugin plugins: one stderr line parsed into a [`LogLine`], JSON
//! (`@level`, `@message`, `@module`, `@timestamp` and fields) or plain text with an optional
//! `[LEVEL]` tag, with go-plugin's rules for levels, timestamps and panics.

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

pub(crate) fn plain(raw: &str, level: log::Level, partial: bool) -> LogLine {
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
}
