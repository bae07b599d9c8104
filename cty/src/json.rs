//! go-cty's JSON encoding of values (`DynamicValue.json`, state files), both directions.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::msgpack::{check_attributes, dynamic_parts, mismatch, MAX_DEPTH};
use crate::value::PathStep;
use crate::{Error, Number, Path, Result, Type, Value};

impl Value {
    /// The JSON go-cty writes for this value as `ty`: compact, objects with every attribute and
    /// keys sorted, numbers in plain decimal, dynamic values as `{"value":…,"type":…}`.
    ///
    /// JSON cannot carry unknown values or infinities; both are errors.
    pub fn to_json(&self, ty: &Type) -> Result<String> {
        let mut out = String::with_capacity(64);
        encode(&mut out, self, ty, &Path::default())?;
        Ok(out)
    }

    /// Decodes JSON as `ty`, as go-cty does: missing object attributes are null, a number or
    /// bool is taken for a string, and a string for a number or bool.
    pub fn from_json(text: &str, ty: &Type) -> Result<Value> {
        let raw: &RawValue = serde_json::from_str(text)
            .map_err(|e| Error::new(&Path::default(), format!("JSON is required: {e}")))?;
        decode(raw, ty, &Path::default(), 0)
    }
}

/// Writes `s` as Go's `encoding/json` does: `<`, `>`, `&`, U+2028 and U+2029 escaped too.
pub(crate) fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn encode(out: &mut String, v: &Value, ty: &Type, path: &Path) -> Result<()> {
    match v {
        Value::Marked(..) => {
            return Err(Error::new(
                path,
                "value has marks, so it cannot be serialized as JSON",
            ))
        }
        Value::Unknown(_) => return Err(Error::new(path, "value is not known")),
        Value::Dynamic(_, inner) if !inner.is_known() => {
            return Err(Error::new(path, "value is not known"))
        }
        _ => {}
    }
    if *ty == Type::Dynamic {
        return match dynamic_parts(v, path)? {
            None => {
                out.push_str("null");
                Ok(())
            }
            Some((t, inner)) => {
                out.push_str("{\"value\":");
                encode(out, inner, &t, path)?;
                out.push_str(",\"type\":");
                t.write_json(out);
                out.push('}');
                Ok(())
            }
        };
    }
    match (ty, v) {
        (_, Value::Dynamic(t, inner)) if t == ty => encode(out, inner, ty, path),
        (_, Value::Null) => {
            out.push_str("null");
            Ok(())
        }
        (Type::String, Value::String(s)) => {
            write_string(out, s);
            Ok(())
        }
        (Type::Bool, Value::Bool(b)) => {
            out.push_str(if *b { "true" } else { "false" });
            Ok(())
        }
        (Type::Number, Value::Number(n)) => {
            if n.is_infinite() {
                return Err(Error::new(path, "cannot serialize infinity as JSON"));
            }
            out.push_str(&n.to_string());
            Ok(())
        }
        (Type::List(e), Value::List(vs)) | (Type::Set(e), Value::Set(vs)) => {
            let ts = std::iter::repeat(&**e);
            encode_array(out, vs, ts, path)
        }
        (Type::Tuple(ts), Value::Tuple(vs)) => {
            if ts.len() != vs.len() {
                return Err(Error::new(
                    path,
                    format!(
                        "a tuple of {} elements is required, got {}",
                        ts.len(),
                        vs.len()
                    ),
                ));
            }
            encode_array(out, vs, ts.iter(), path)
        }
        (Type::Map(e), Value::Map(m)) => {
            let entries = m
                .iter()
                .map(|(k, v)| (k, v, &**e, PathStep::Key(k.clone())));
            encode_object(out, entries, path)
        }
        (Type::Object { attributes, .. }, Value::Object(m)) => {
            check_attributes(m, attributes, path)?;
            let entries = attributes.iter().map(|(k, t)| {
                (
                    k,
                    m.get(k).unwrap_or(&Value::Null),
                    t,
                    PathStep::Attr(k.clone()),
                )
            });
            encode_object(out, entries, path)
        }
        (ty, v) => Err(mismatch(path, ty, v)),
    }
}

fn encode_array<'t>(
    out: &mut String,
    vs: &[Value],
    ts: impl Iterator<Item = &'t Type>,
    path: &Path,
) -> Result<()> {
    out.push('[');
    for (i, (v, t)) in vs.iter().zip(ts).enumerate() {
        if i > 0 {
            out.push(',');
        }
        encode(out, v, t, &path.with(PathStep::Index(i as i64)))?;
    }
    out.push(']');
    Ok(())
}

fn encode_object<'v>(
    out: &mut String,
    entries: impl Iterator<Item = (&'v String, &'v Value, &'v Type, PathStep)>,
    path: &Path,
) -> Result<()> {
    out.push('{');
    for (i, (k, v, t, step)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, k);
        out.push(':');
        encode(out, v, t, &path.with(step))?;
    }
    out.push('}');
    Ok(())
}

fn parse<'a, T: serde::Deserialize<'a>>(raw: &'a RawValue, what: &str, path: &Path) -> Result<T> {
    serde_json::from_str(raw.get()).map_err(|_| {
        Error::new(
            path,
            format!("{what} is required, got {}", excerpt(raw.get())),
        )
    })
}

fn excerpt(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn decode(raw: &RawValue, ty: &Type, path: &Path, depth: usize) -> Result<Value> {
    if depth >= MAX_DEPTH {
        return Err(Error::new(
            path,
            format!("the value nests over {MAX_DEPTH} levels deep"),
        ));
    }
    let depth = depth + 1;
    let text = raw.get();
    if text == "null" {
        return Ok(Value::Null);
    }
    let first = text.as_bytes()[0];
    match ty {
        Type::Dynamic => decode_dynamic(raw, path, depth),
        Type::String => match first {
            b'"' => Ok(Value::String(parse(raw, "a string", path)?)),
            b't' | b'f' => Ok(Value::String(text.to_owned())),
            b'-' | b'0'..=b'9' => Ok(Value::String(text.to_owned())),
            _ => Err(Error::new(
                path,
                format!("a string is required, got {}", excerpt(text)),
            )),
        },
        Type::Number => {
            let digits = if first == b'"' {
                parse::<String>(raw, "a number", path)?
            } else {
                text.to_owned()
            };
            if !(first == b'"' || first == b'-' || first.is_ascii_digit()) {
                return Err(Error::new(
                    path,
                    format!("a number is required, got {}", excerpt(text)),
                ));
            }
            Number::parse(&digits)
                .map(Value::Number)
                .map_err(|e| Error::new(path, e))
        }
        Type::Bool => match text {
            // go-cty converts the strings "true", "1", "false" and "0".
            "true" | "\"true\"" | "\"1\"" => Ok(Value::Bool(true)),
            "false" | "\"false\"" | "\"0\"" => Ok(Value::Bool(false)),
            _ => Err(Error::new(
                path,
                format!("a bool is required, got {}", excerpt(text)),
            )),
        },
        Type::List(e) | Type::Set(e) => {
            let items: Vec<&RawValue> = parse(raw, "an array", path)?;
            let vs = items
                .iter()
                .enumerate()
                .map(|(i, item)| decode(item, e, &path.with(PathStep::Index(i as i64)), depth))
                .collect::<Result<_>>()?;
            Ok(if matches!(ty, Type::List(_)) {
                Value::List(vs)
            } else {
                Value::Set(vs)
            })
        }
        Type::Tuple(ts) => {
            let items: Vec<&RawValue> = parse(raw, "an array", path)?;
            if items.len() != ts.len() {
                return Err(Error::new(
                    path,
                    format!(
                        "a tuple of length {} is required, got {} elements",
                        ts.len(),
                        items.len()
                    ),
                ));
            }
            let vs = items
                .iter()
                .zip(ts)
                .enumerate()
                .map(|(i, (item, t))| decode(item, t, &path.with(PathStep::Index(i as i64)), depth))
                .collect::<Result<_>>()?;
            Ok(Value::Tuple(vs))
        }
        Type::Map(_) | Type::Object { .. } => decode_keyed(raw, ty, path, depth),
    }
}

/// A map or an object: a JSON object.
fn decode_keyed(raw: &RawValue, ty: &Type, path: &Path, depth: usize) -> Result<Value> {
    let entries: BTreeMap<String, &RawValue> = parse(raw, "an object", path)?;
    match ty {
        Type::Map(e) => {
            let m = entries
                .into_iter()
                .map(|(k, item)| {
                    let v = decode(item, e, &path.with(PathStep::Key(k.clone())), depth)?;
                    Ok((k, v))
                })
                .collect::<Result<_>>()?;
            Ok(Value::Map(m))
        }
        Type::Object { attributes, .. } => {
            let mut m = BTreeMap::new();
            for (k, item) in entries {
                let Some(t) = attributes.get(&k) else {
                    return Err(Error::new(path, format!("unsupported attribute {k:?}")));
                };
                let v = decode(item, t, &path.with(PathStep::Attr(k.clone())), depth)?;
                m.insert(k, v);
            }
            for k in attributes.keys() {
                m.entry(k.clone()).or_insert(Value::Null);
            }
            Ok(Value::Object(m))
        }
        _ => unreachable!("decode_keyed is for maps and objects"),
    }
}

fn decode_dynamic(raw: &RawValue, path: &Path, depth: usize) -> Result<Value> {
    let parts: BTreeMap<String, &RawValue> =
        parse(raw, "a dynamic value ({\"value\":…,\"type\":…})", path)?;
    if let Some(key) = parts.keys().find(|k| *k != "type" && *k != "value") {
        return Err(Error::new(
            path,
            format!("invalid key {key:?} in dynamically-typed value"),
        ));
    }
    let t = parts
        .get("type")
        .ok_or_else(|| Error::new(path, "missing type in dynamically-typed value"))?;
    let t = Type::from_json(t.get())
        .map_err(|e| Error::new(path, format!("a dynamic value's type: {}", e.message())))?;
    let v = parts
        .get("value")
        .ok_or_else(|| Error::new(path, "missing value in dynamically-typed value"))?;
    let v = decode(v, &t, path, depth)?;
    Ok(match t {
        Type::Dynamic => v,
        t => Value::Dynamic(t, Box::new(v)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_go_escapes_them() {
        let mut out = String::new();
        write_string(&mut out, "a<b>&\"\\\n\u{1}\u{2028}é\u{8}");
        assert_eq!(out, r#""a\u003cb\u003e\u0026\"\\\n\u0001\u2028é\b""#);
    }

    #[test]
    fn decoding_is_lenient_as_go_cty_is() {
        let ty = Type::object([
            ("s", Type::String),
            ("n", Type::Number),
            ("b", Type::Bool),
            ("gone", Type::String),
        ]);
        let v = Value::from_json(r#"{"s": 1.50, "n": "12e-1", "b": "true"}"#, &ty).unwrap();
        assert_eq!(v.attr("s").unwrap().as_str(), Some("1.50"));
        assert_eq!(v.attr("n").unwrap().as_number().unwrap().to_string(), "1.2");
        assert_eq!(v.attr("b").unwrap().as_bool(), Some(true));
        assert!(v.attr("gone").unwrap().is_null());
        assert_eq!(
            v.to_json(&ty).unwrap(),
            r#"{"b":true,"gone":null,"n":1.2,"s":"1.50"}"#
        );
        let err = Value::from_json(r#"{"x": 1}"#, &ty).unwrap_err();
        assert_eq!(err.to_string(), "unsupported attribute \"x\"");
        let err = Value::from_json(r#"{"n": [1]}"#, &ty).unwrap_err();
        assert_eq!(err.to_string(), "at .n: a number is required, got [1]");
    }

    #[test]
    fn dynamic_values_carry_their_type() {
        let v = Value::from_json(
            r#"{"type":["list","string"],"value":["a"]}"#,
            &Type::Dynamic,
        )
        .unwrap();
        assert_eq!(
            v,
            Value::dynamic(Type::list(Type::String), Value::list(["a".into()]))
        );
        assert_eq!(
            v.to_json(&Type::Dynamic).unwrap(),
            r#"{"value":["a"],"type":["list","string"]}"#
        );
        let err =
            Value::from_json(r#"{"type":"string","value":"a","x":1}"#, &Type::Dynamic).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid key \"x\" in dynamically-typed value"
        );
        assert_eq!(
            Value::unknown()
                .to_json(&Type::String)
                .unwrap_err()
                .to_string(),
            "value is not known"
        );
    }
}
