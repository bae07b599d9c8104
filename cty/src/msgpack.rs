//! go-cty's msgpack encoding of values (`DynamicValue.msgpack`), both directions.

use std::collections::BTreeMap;

use rmp::encode as w;
use rmp::Marker;

use crate::number::Wire;
use crate::value::PathStep;
use crate::{Error, Number, Path, Refinements, Result, Type, Value};

/// The extension type of an unknown value that carries refinements (any other extension value is
/// a wholly unknown one; go-cty writes `d4 00 00`).
const REFINED_UNKNOWN: i8 = 0x0c;
/// go-cty refuses a refinement body over 1 KiB.
const MAX_REFINEMENTS: usize = 1024;
/// go-cty truncates a string prefix refinement to this many bytes.
const MAX_PREFIX: usize = 256;
/// How deep a value may nest (through its type and through dynamic values within dynamic
/// values), so hostile bytes cannot overflow a 2 MiB thread stack even in a debug build; real
/// values nest far less (a block nested in a block is two levels).
pub(crate) const MAX_DEPTH: usize = 64;
/// Elements reserved up front at most: a length prefix is the peer's word, not an allocation.
const MAX_RESERVE: usize = 1024;

impl Value {
    /// The msgpack bytes go-cty writes for this value as `ty` (a `DynamicValue.msgpack`).
    ///
    /// Fails with the path of the first part that does not fit `ty`, or that has marks.
    pub fn to_msgpack(&self, ty: &Type) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(64);
        encode(&mut out, self, ty, &Path::default())?;
        Ok(out)
    }

    /// Decodes msgpack bytes as `ty`, accepting everything go-cty accepts (integers in any
    /// width, float32, numbers as text, any extension value as an unknown).
    pub fn from_msgpack(bytes: &[u8], ty: &Type) -> Result<Value> {
        let mut rd = Reader {
            buf: bytes,
            depth: 0,
        };
        let value = rd.value(ty, &Trail::Root)?;
        if !rd.buf.is_empty() {
            return Err(Error::new(
                &Path::default(),
                format!("{} bytes follow the value", rd.buf.len()),
            ));
        }
        Ok(value)
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Unknown(_) => "an unknown",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::List(_) => "a list",
        Value::Set(_) => "a set",
        Value::Map(_) => "a map",
        Value::Object(_) => "an object",
        Value::Tuple(_) => "a tuple",
        Value::Dynamic(..) => "a dynamic value",
        Value::Marked(..) => "a marked value",
    }
}

pub(crate) fn mismatch(path: &Path, ty: &Type, v: &Value) -> Error {
    Error::new(
        path,
        format!("a value of type {ty} is required, got {}", kind(v)),
    )
}

/// What to write in a dynamic slot: the concrete type and the value, or `None` for a value of
/// no type (a null or an unknown of type `dynamic`).
pub(crate) fn dynamic_parts<'v>(v: &'v Value, path: &Path) -> Result<Option<(Type, &'v Value)>> {
    match v {
        Value::Null | Value::Unknown(_) => Ok(None),
        Value::Dynamic(Type::Dynamic, inner) => dynamic_parts(inner, path),
        Value::Dynamic(t, inner) => Ok(Some((t.clone(), inner))),
        other => match other.implied_type() {
            Some(t) => Ok(Some((t, other))),
            None => Err(Error::new(
                path,
                format!(
                    "the type of {} in a dynamic slot cannot be told from it; wrap it in Value::Dynamic",
                    kind(other)
                ),
            )),
        },
    }
}

fn encode(out: &mut Vec<u8>, v: &Value, ty: &Type, path: &Path) -> Result<()> {
    if let Value::Marked(..) = v {
        return Err(Error::new(
            path,
            "value has marks, so it cannot be serialized",
        ));
    }
    if *ty == Type::Dynamic {
        return match dynamic_parts(v, path)? {
            None if v.is_null() => {
                out.push(0xc0);
                Ok(())
            }
            None => {
                out.extend_from_slice(&[0xd4, 0, 0]);
                Ok(())
            }
            Some((t, inner)) => {
                w::write_array_len(out, 2).expect("Vec write");
                w::write_bin(out, t.to_json().as_bytes()).expect("Vec write");
                encode(out, inner, &t, path)
            }
        };
    }
    match (ty, v) {
        (_, Value::Dynamic(t, inner)) if t == ty => encode(out, inner, ty, path),
        (_, Value::Null) => {
            out.push(0xc0);
            Ok(())
        }
        (_, Value::Unknown(r)) => encode_unknown(out, r, ty, path),
        (Type::String, Value::String(s)) => {
            w::write_str(out, s).expect("Vec write");
            Ok(())
        }
        (Type::Bool, Value::Bool(b)) => {
            w::write_bool(out, *b).expect("Vec write");
            Ok(())
        }
        (Type::Number, Value::Number(n)) => {
            write_number(out, n);
            Ok(())
        }
        (Type::List(e), Value::List(vs)) | (Type::Set(e), Value::Set(vs)) => {
            write_len(out, vs.len(), path, w::write_array_len)?;
            for (i, v) in vs.iter().enumerate() {
                encode(out, v, e, &path.with(PathStep::Index(i as i64)))?;
            }
            Ok(())
        }
        (Type::Map(e), Value::Map(m)) => {
            write_len(out, m.len(), path, w::write_map_len)?;
            for (k, v) in m {
                w::write_str(out, k).expect("Vec write");
                encode(out, v, e, &path.with(PathStep::Key(k.clone())))?;
            }
            Ok(())
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
            write_len(out, vs.len(), path, w::write_array_len)?;
            for (i, (v, t)) in vs.iter().zip(ts).enumerate() {
                encode(out, v, t, &path.with(PathStep::Index(i as i64)))?;
            }
            Ok(())
        }
        (Type::Object { attributes, .. }, Value::Object(m)) => {
            check_attributes(m, attributes, path)?;
            write_len(out, attributes.len(), path, w::write_map_len)?;
            for (name, t) in attributes {
                w::write_str(out, name).expect("Vec write");
                let v = m.get(name).unwrap_or(&Value::Null);
                encode(out, v, t, &path.with(PathStep::Attr(name.clone())))?;
            }
            Ok(())
        }
        (ty, v) => Err(mismatch(path, ty, v)),
    }
}

pub(crate) fn check_attributes(
    m: &BTreeMap<String, Value>,
    attributes: &BTreeMap<String, Type>,
    path: &Path,
) -> Result<()> {
    match m.keys().find(|k| !attributes.contains_key(*k)) {
        Some(extra) => Err(Error::new(
            path,
            format!(
                "unsupported attribute {extra:?}; the type has {}",
                attributes
                    .keys()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        None => Ok(()),
    }
}

fn write_len<E>(
    out: &mut Vec<u8>,
    len: usize,
    path: &Path,
    f: fn(&mut Vec<u8>, u32) -> Result<Marker, E>,
) -> Result<()> {
    let len = u32::try_from(len).map_err(|_| Error::new(path, "over 2^32 elements"))?;
    f(out, len)
        .map(drop)
        .map_err(|_| Error::new(path, "write failed"))
}

fn write_number(out: &mut Vec<u8>, n: &Number) {
    match n.wire() {
        // go-cty's encoder writes integers in their smallest form, unsigned codes for >= 0.
        Wire::Int(i) if i >= 0 => drop(w::write_uint(out, i as u64).expect("Vec write")),
        Wire::Int(i) => drop(w::write_sint(out, i).expect("Vec write")),
        Wire::Float(f) => w::write_f64(out, f).expect("Vec write"),
        Wire::Text(t) => w::write_str(out, &t).expect("Vec write"),
    }
}

fn encode_unknown(out: &mut Vec<u8>, r: &Refinements, ty: &Type, path: &Path) -> Result<()> {
    let misplaced = |what: &str| {
        Err(Error::new(
            path,
            format!("a {what} refinement on an unknown of type {ty}"),
        ))
    };
    let mut body = Vec::new();
    let mut entries = 0;
    if r.not_null {
        entries += 1;
        w::write_uint(&mut body, 1).expect("Vec write");
        w::write_bool(&mut body, false).expect("Vec write");
    }
    if r.string_prefix.as_deref().is_some_and(|p| !p.is_empty()) && *ty != Type::String {
        return misplaced("string prefix");
    }
    if (r.number_lower.is_some() || r.number_upper.is_some()) && *ty != Type::Number {
        return misplaced("number bound");
    }
    if (r.length_lower.is_some() || r.length_upper.is_some()) && ty.element_type().is_none() {
        return misplaced("collection length");
    }
    if let Some(prefix) = r.string_prefix.as_deref().filter(|p| !p.is_empty()) {
        let mut end = prefix.len().min(MAX_PREFIX - 1);
        if prefix.len() > MAX_PREFIX {
            while !prefix.is_char_boundary(end) {
                end -= 1;
            }
        } else {
            end = prefix.len();
        }
        entries += 1;
        w::write_uint(&mut body, 2).expect("Vec write");
        w::write_str(&mut body, &prefix[..end]).expect("Vec write");
    }
    for (key, bound) in [(3, &r.number_lower), (4, &r.number_upper)] {
        if let Some((n, inclusive)) = bound.as_ref().filter(|(n, _)| !n.is_infinite()) {
            entries += 1;
            w::write_uint(&mut body, key).expect("Vec write");
            w::write_array_len(&mut body, 2).expect("Vec write");
            write_number(&mut body, n);
            w::write_bool(&mut body, *inclusive).expect("Vec write");
        }
    }
    for (key, bound) in [(5, r.length_lower.filter(|&n| n != 0)), (6, r.length_upper)] {
        if let Some(n) = bound {
            entries += 1;
            w::write_uint(&mut body, key).expect("Vec write");
            w::write_uint(&mut body, n).expect("Vec write");
        }
    }
    if entries == 0 {
        out.extend_from_slice(&[0xd4, 0, 0]);
        return Ok(());
    }
    let mut head = Vec::new();
    w::write_map_len(&mut head, entries).expect("Vec write");
    w::write_ext_meta(out, (head.len() + body.len()) as u32, REFINED_UNKNOWN).expect("Vec write");
    out.extend_from_slice(&head);
    out.extend_from_slice(&body);
    Ok(())
}

/// Where the decoder is: a chain of borrowed steps on the stack, turned into a [`Path`] only
/// when an error needs one (building a `Path` per element cost more than the decoding).
enum Trail<'p> {
    Root,
    Index(&'p Trail<'p>, i64),
    Attr(&'p Trail<'p>, &'p str),
    Key(&'p Trail<'p>, &'p str),
}

impl<'p> Trail<'p> {
    fn index(&'p self, i: i64) -> Trail<'p> {
        Trail::Index(self, i)
    }

    fn attr(&'p self, name: &'p str) -> Trail<'p> {
        Trail::Attr(self, name)
    }

    fn key(&'p self, key: &'p str) -> Trail<'p> {
        Trail::Key(self, key)
    }

    fn path(&self) -> Path {
        let mut steps = Vec::new();
        let mut at = self;
        loop {
            match at {
                Trail::Root => break,
                Trail::Index(up, i) => {
                    steps.push(PathStep::Index(*i));
                    at = up;
                }
                Trail::Attr(up, name) => {
                    steps.push(PathStep::Attr((*name).to_owned()));
                    at = up;
                }
                Trail::Key(up, key) => {
                    steps.push(PathStep::Key((*key).to_owned()));
                    at = up;
                }
            }
        }
        steps.reverse();
        Path(steps)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    /// How many `value` calls are in progress (see `MAX_DEPTH`).
    depth: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self, path: &Trail<'_>) -> Result<Marker> {
        match self.buf.first() {
            Some(&b) => Ok(Marker::from_u8(b)),
            None => Err(Error::new(&path.path(), "the msgpack data ends early")),
        }
    }

    fn take(&mut self, n: usize, path: &Trail<'_>) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::new(
                &path.path(),
                format!(
                    "the msgpack data ends early: {n} bytes needed, {} left",
                    self.buf.len()
                ),
            ));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn uint(&mut self, n: usize, path: &Trail<'_>) -> Result<u64> {
        Ok(self
            .take(n, path)?
            .iter()
            .fold(0u64, |acc, &b| acc << 8 | u64::from(b)))
    }

    /// The marker, consumed.
    fn marker(&mut self, path: &Trail<'_>) -> Result<Marker> {
        let m = self.peek(path)?;
        self.buf = &self.buf[1..];
        Ok(m)
    }

    fn value(&mut self, ty: &Type, path: &Trail<'_>) -> Result<Value> {
        if self.depth >= MAX_DEPTH {
            return Err(Error::new(
                &path.path(),
                format!("the value nests over {MAX_DEPTH} levels deep"),
            ));
        }
        self.depth += 1;
        let value = self.value_at_depth(ty, path);
        self.depth -= 1;
        value
    }

    fn value_at_depth(&mut self, ty: &Type, path: &Trail<'_>) -> Result<Value> {
        let m = self.peek(path)?;
        if is_ext(m) {
            return self.unknown(ty, path);
        }
        if *ty == Type::Dynamic {
            return self.dynamic(path);
        }
        if m == Marker::Null {
            self.buf = &self.buf[1..];
            return Ok(Value::Null);
        }
        match ty {
            Type::Bool => match self.marker(path)? {
                Marker::True => Ok(Value::Bool(true)),
                Marker::False => Ok(Value::Bool(false)),
                m => Err(self.wrong(path, "bool", m)),
            },
            Type::Number => self.number(path).map(Value::Number),
            Type::String => self.string(path).map(Value::String),
            Type::List(e) | Type::Set(e) => {
                let len = self.array_len(path)?;
                let mut vs = Vec::with_capacity(len.min(MAX_RESERVE));
                for i in 0..len {
                    vs.push(self.value(e, &path.index(i as i64))?);
                }
                Ok(if matches!(ty, Type::List(_)) {
                    Value::List(vs)
                } else {
                    Value::Set(vs)
                })
            }
            Type::Map(e) => {
                let len = self.map_len(path)?;
                let mut m = BTreeMap::new();
                for _ in 0..len {
                    let k = self.string(path)?;
                    let v = self.value(e, &path.key(&k))?;
                    m.insert(k, v);
                }
                Ok(Value::Map(m))
            }
            Type::Tuple(ts) => {
                let len = self.array_len(path)?;
                if len != ts.len() {
                    return Err(Error::new(
                        &path.path(),
                        format!(
                            "a tuple of length {} is required, got {len} elements",
                            ts.len()
                        ),
                    ));
                }
                let vs = ts
                    .iter()
                    .enumerate()
                    .map(|(i, t)| self.value(t, &path.index(i as i64)))
                    .collect::<Result<_>>()?;
                Ok(Value::Tuple(vs))
            }
            Type::Object { attributes, .. } => {
                let len = self.map_len(path)?;
                if len != attributes.len() {
                    return Err(Error::new(
                        &path.path(),
                        format!(
                            "an object with {} attributes is required ({len} given)",
                            attributes.len()
                        ),
                    ));
                }
                let mut m = BTreeMap::new();
                for _ in 0..len {
                    let k = self.string(path)?;
                    let Some(t) = attributes.get(&k) else {
                        return Err(Error::new(
                            &path.path(),
                            format!("unsupported attribute {k:?}"),
                        ));
                    };
                    let v = self.value(t, &path.attr(&k))?;
                    if m.insert(k.clone(), v).is_some() {
                        return Err(Error::new(
                            &path.path(),
                            format!("attribute {k:?} given twice"),
                        ));
                    }
                }
                Ok(Value::Object(m))
            }
            Type::Dynamic => unreachable!("handled above"),
        }
    }

    fn wrong(&self, path: &Trail<'_>, what: &str, m: Marker) -> Error {
        Error::new(
            &path.path(),
            format!("{what} is required, got msgpack {}", describe(m)),
        )
    }

    fn array_len(&mut self, path: &Trail<'_>) -> Result<usize> {
        let len = match self.marker(path)? {
            Marker::FixArray(n) => u64::from(n),
            Marker::Array16 => self.uint(2, path)?,
            Marker::Array32 => self.uint(4, path)?,
            m => return Err(self.wrong(path, "an array", m)),
        };
        Ok(len as usize)
    }

    fn map_len(&mut self, path: &Trail<'_>) -> Result<usize> {
        let len = match self.marker(path)? {
            Marker::FixMap(n) => u64::from(n),
            Marker::Map16 => self.uint(2, path)?,
            Marker::Map32 => self.uint(4, path)?,
            m => return Err(self.wrong(path, "a map", m)),
        };
        Ok(len as usize)
    }

    /// A str, or a bin (go-cty's decoder takes either where it wants a string).
    fn raw_string(&mut self, path: &Trail<'_>) -> Result<&'a [u8]> {
        let len = match self.marker(path)? {
            Marker::FixStr(n) => u64::from(n),
            Marker::Str8 | Marker::Bin8 => self.uint(1, path)?,
            Marker::Str16 | Marker::Bin16 => self.uint(2, path)?,
            Marker::Str32 | Marker::Bin32 => self.uint(4, path)?,
            m => return Err(self.wrong(path, "a string", m)),
        };
        self.take(len as usize, path)
    }

    fn string(&mut self, path: &Trail<'_>) -> Result<String> {
        let raw = self.raw_string(path)?;
        String::from_utf8(raw.to_vec()).map_err(|e| {
            Error::new(
                &path.path(),
                format!("a string is required, got bytes that are not UTF-8: {e}"),
            )
        })
    }

    fn number(&mut self, path: &Trail<'_>) -> Result<Number> {
        let m = self.peek(path)?;
        let n = match m {
            Marker::FixPos(n) => Number::from(i64::from(n)),
            Marker::FixNeg(n) => Number::from(i64::from(n)),
            Marker::U8 | Marker::U16 | Marker::U32 | Marker::U64 => {
                self.buf = &self.buf[1..];
                Number::from(self.uint(width(m), path)?)
            }
            Marker::I8 | Marker::I16 | Marker::I32 | Marker::I64 => {
                self.buf = &self.buf[1..];
                let n = width(m);
                let raw = self.uint(n, path)?;
                let shift = 64 - 8 * n as u32;
                Number::from(((raw << shift) as i64) >> shift)
            }
            Marker::F32 | Marker::F64 => {
                self.buf = &self.buf[1..];
                let f = if m == Marker::F32 {
                    f64::from(f32::from_bits(self.uint(4, path)? as u32))
                } else {
                    f64::from_bits(self.uint(8, path)?)
                };
                return Number::from_f64(f)
                    .ok_or_else(|| Error::new(&path.path(), "a number is required, got NaN"));
            }
            _ => {
                let text = self.string(path).map_err(|_| {
                    Error::new(
                        &path.path(),
                        format!("a number is required, got msgpack {}", describe(m)),
                    )
                })?;
                return Number::parse(&text).map_err(|e| Error::new(&path.path(), e));
            }
        };
        if matches!(m, Marker::FixPos(_) | Marker::FixNeg(_)) {
            self.buf = &self.buf[1..];
        }
        Ok(n)
    }

    fn dynamic(&mut self, path: &Trail<'_>) -> Result<Value> {
        if self.peek(path)? == Marker::Null {
            self.buf = &self.buf[1..];
            return Ok(Value::Null);
        }
        let len = self.array_len(path)?;
        if len != 2 {
            return Err(Error::new(
                &path.path(),
                format!("a dynamic value is a [type, value] array; got an array of {len}"),
            ));
        }
        let type_json = self.raw_string(path)?;
        let text = std::str::from_utf8(type_json)
            .map_err(|_| Error::new(&path.path(), "a dynamic value's type is not UTF-8"))?;
        let t = Type::from_json(text).map_err(|e| {
            Error::new(
                &path.path(),
                format!("a dynamic value's type: {}", e.message()),
            )
        })?;
        let v = self.value(&t, path)?;
        Ok(match (t, v) {
            (Type::Dynamic, v) => v,
            (t, v) => Value::Dynamic(t, Box::new(v)),
        })
    }

    fn unknown(&mut self, ty: &Type, path: &Trail<'_>) -> Result<Value> {
        let (len, ext_type) = match self.marker(path)? {
            Marker::FixExt1 => (1, self.take(1, path)?[0]),
            Marker::FixExt2 => (2, self.take(1, path)?[0]),
            Marker::FixExt4 => (4, self.take(1, path)?[0]),
            Marker::FixExt8 => (8, self.take(1, path)?[0]),
            Marker::FixExt16 => (16, self.take(1, path)?[0]),
            m @ (Marker::Ext8 | Marker::Ext16 | Marker::Ext32) => {
                let len = self.uint(width(m), path)? as usize;
                (len, self.take(1, path)?[0])
            }
            m => unreachable!("not an extension: {m:?}"),
        };
        let body = self.take(len, path)?;
        if len <= 1 {
            return Ok(Value::unknown());
        }
        if ext_type as i8 != REFINED_UNKNOWN {
            return Err(Error::new(
                &path.path(),
                format!("unsupported extension type 0x{ext_type:02x} with len {len}; an unknown value is extension 0x0c"),
            ));
        }
        if len > MAX_REFINEMENTS {
            return Err(Error::new(
                &path.path(),
                format!(
                    "oversize unknown value refinement ({len} bytes, at most {MAX_REFINEMENTS})"
                ),
            ));
        }
        if *ty == Type::Dynamic {
            return Ok(Value::unknown());
        }
        self.refinements(body, ty, path)
    }

    fn refinements(&self, body: &'a [u8], ty: &Type, path: &Trail<'_>) -> Result<Value> {
        let mut rd = Reader {
            buf: body,
            depth: self.depth,
        };
        let bad =
            |what: &str| Error::new(&path.path(), format!("unknown value refinements: {what}"));
        let entries = rd.map_len(path).map_err(|_| bad("not a map"))?;
        let mut r = Refinements::default();
        for _ in 0..entries {
            let key = rd
                .number(path)
                .ok()
                .and_then(|n| n.as_i64())
                .ok_or_else(|| bad("non-integer key in map"))?;
            match key {
                1 => match rd.marker(path)? {
                    Marker::True => return Ok(Value::Null),
                    Marker::False => r.not_null = true,
                    _ => return Err(bad("null refinement is not boolean")),
                },
                2 => {
                    if *ty != Type::String {
                        return Err(bad("string prefix refinement for non-string type"));
                    }
                    let prefix = rd
                        .string(path)
                        .map_err(|_| bad("string prefix refinement is not a UTF-8 string"))?;
                    // An empty prefix refines nothing (go-cty's builder ignores it, and the
                    // encoder never writes one): kept as none, so the value round-trips.
                    r.string_prefix = (!prefix.is_empty()).then_some(prefix);
                }
                3 | 4 => {
                    if *ty != Type::Number {
                        return Err(bad("numeric bound refinement for non-number type"));
                    }
                    let bound = rd
                        .value(&Type::tuple([Type::Number, Type::Bool]), path)
                        .ok()
                        .and_then(|v| match v {
                            Value::Tuple(vs) => match &vs[..] {
                                [Value::Number(n), Value::Bool(b)] => Some((n.clone(), *b)),
                                _ => None,
                            },
                            _ => None,
                        })
                        .ok_or_else(|| bad("a number bound must be a [number, bool] array"))?;
                    if key == 3 {
                        r.number_lower = Some(bound);
                    } else {
                        r.number_upper = Some(bound);
                    }
                }
                5 | 6 => {
                    if ty.element_type().is_none() {
                        return Err(bad("length bound refinement for non-collection type"));
                    }
                    let n = rd
                        .number(path)
                        .ok()
                        .and_then(|n| n.as_i64())
                        .and_then(|n| u64::try_from(n).ok())
                        .ok_or_else(|| bad("a length bound must be a non-negative integer"))?;
                    if key == 5 {
                        r.length_lower = Some(n);
                    } else {
                        r.length_upper = Some(n);
                    }
                }
                // Keys from a later go-cty: skipped, as go-cty means to.
                _ => rd.skip(path, 0)?,
            }
        }
        Ok(Value::Unknown(r))
    }

    /// Skips one msgpack value of any kind.
    fn skip(&mut self, path: &Trail<'_>, depth: usize) -> Result<()> {
        if depth > 64 {
            return Err(Error::new(&path.path(), "msgpack nested over 64 deep"));
        }
        let m = self.marker(path)?;
        let (fixed, items) = match m {
            Marker::FixArray(n) => (0, usize::from(n)),
            Marker::FixMap(n) => (0, 2 * usize::from(n)),
            Marker::Array16 | Marker::Array32 => (0, self.uint(width(m), path)? as usize),
            Marker::Map16 | Marker::Map32 => (0, 2 * self.uint(width(m), path)? as usize),
            Marker::FixStr(n) => (usize::from(n), 0),
            Marker::Str8
            | Marker::Str16
            | Marker::Str32
            | Marker::Bin8
            | Marker::Bin16
            | Marker::Bin32 => (self.uint(width(m), path)? as usize, 0),
            Marker::Ext8 | Marker::Ext16 | Marker::Ext32 => {
                (self.uint(width(m), path)? as usize + 1, 0)
            }
            Marker::FixExt1 => (2, 0),
            Marker::FixExt2 => (3, 0),
            Marker::FixExt4 => (5, 0),
            Marker::FixExt8 => (9, 0),
            Marker::FixExt16 => (17, 0),
            Marker::Reserved => {
                return Err(Error::new(&path.path(), "msgpack byte 0xc1 is reserved"))
            }
            m => (width(m), 0),
        };
        self.take(fixed, path)?;
        for _ in 0..items {
            self.skip(path, depth + 1)?;
        }
        Ok(())
    }
}

fn is_ext(m: Marker) -> bool {
    matches!(
        m,
        Marker::FixExt1
            | Marker::FixExt2
            | Marker::FixExt4
            | Marker::FixExt8
            | Marker::FixExt16
            | Marker::Ext8
            | Marker::Ext16
            | Marker::Ext32
    )
}

/// The bytes that follow a marker: the value of a fixed-width one, the length of a sized one.
fn width(m: Marker) -> usize {
    match m {
        Marker::U8 | Marker::I8 | Marker::Str8 | Marker::Bin8 | Marker::Ext8 => 1,
        Marker::U16
        | Marker::I16
        | Marker::Str16
        | Marker::Bin16
        | Marker::Ext16
        | Marker::Array16
        | Marker::Map16 => 2,
        Marker::U32
        | Marker::I32
        | Marker::F32
        | Marker::Str32
        | Marker::Bin32
        | Marker::Ext32
        | Marker::Array32
        | Marker::Map32 => 4,
        Marker::U64 | Marker::I64 | Marker::F64 => 8,
        _ => 0,
    }
}

fn describe(m: Marker) -> String {
    format!("{m:?} (0x{:02x})", m.to_u8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The worked bytes of `../shared/TERRAFORM.md` §4.1.
    /// An empty string prefix refines nothing: it decodes as no prefix, so the value encodes back
    /// to what it means (found by the cty_msgpack fuzz target; seed `empty-string-prefix`).
    #[test]
    fn an_empty_string_prefix_is_no_refinement() {
        // Extension 12 holding {1: false, 2: ""}: not null, prefix "".
        let bytes = [0xc7, 0x05, 0x0c, 0x82, 0x01, 0xc2, 0x02, 0xa0];
        let v = Value::from_msgpack(&bytes, &Type::String).unwrap();
        let not_null = Value::Unknown(Refinements {
            not_null: true,
            ..Default::default()
        });
        assert_eq!(v, not_null);
        let again = v.to_msgpack(&Type::String).unwrap();
        assert_eq!(
            Value::from_msgpack(&again, &Type::String).unwrap(),
            not_null
        );
    }

    #[test]
    fn worked_examples() {
        let ty = Type::object([
            ("a", Type::String),
            ("b", Type::String),
            ("n", Type::Number),
        ]);
        let v = Value::object([("a", "x".into()), ("b", Value::Null), ("n", 5.into())]);
        assert_eq!(
            hex(&v.to_msgpack(&ty).unwrap()),
            "83 a1 61 a1 78 a1 62 c0 a1 6e 05"
        );

        let not_null = Refinements {
            not_null: true,
            ..Default::default()
        };
        let v = Value::Unknown(not_null.clone());
        assert_eq!(
            hex(&v.to_msgpack(&Type::String).unwrap()),
            "c7 03 0c 81 01 c2"
        );
        let v = Value::Unknown(Refinements {
            string_prefix: Some("ab".into()),
            ..not_null
        });
        assert_eq!(
            hex(&v.to_msgpack(&Type::String).unwrap()),
            "c7 07 0c 82 01 c2 02 a2 61 62"
        );

        let v = Value::from("hi");
        assert_eq!(
            hex(&v.to_msgpack(&Type::Dynamic).unwrap()),
            "92 c4 08 22 73 74 72 69 6e 67 22 a2 68 69"
        );
        assert_eq!(
            hex(&Value::unknown().to_msgpack(&Type::Dynamic).unwrap()),
            "d4 00 00"
        );
        assert_eq!(
            hex(&Value::from(300).to_msgpack(&Type::Number).unwrap()),
            "cd 01 2c"
        );
        assert_eq!(
            hex(&Value::from(-1).to_msgpack(&Type::Number).unwrap()),
            "ff"
        );
        let one_and_a_half = Value::Number(Number::from_f64(1.5).unwrap());
        assert_eq!(
            hex(&one_and_a_half.to_msgpack(&Type::Number).unwrap()),
            "cb 3f f8 00 00 00 00 00 00"
        );
    }

    #[test]
    fn bad_input_says_what_and_where() {
        let ty = Type::object([("a", Type::list(Type::Number))]);
        let err = Value::from_msgpack(&[0x81, 0xa1, b'a', 0x91, 0xc3], &ty).unwrap_err();
        assert_eq!(
            err.to_string(),
            "at .a[0]: a number is required, got msgpack True (0xc3)"
        );
        let err = Value::from_msgpack(&[0x80], &ty).unwrap_err();
        assert_eq!(
            err.to_string(),
            "an object with 1 attributes is required (0 given)"
        );
        let err = Value::from_msgpack(&[0xc0, 0xc0], &ty).unwrap_err();
        assert_eq!(err.to_string(), "1 bytes follow the value");
        let err = Value::from_msgpack(&[0xd5, 0x05, 0, 0], &Type::String).unwrap_err();
        assert!(
            err.to_string().contains("unsupported extension type 0x05"),
            "{err}"
        );
        let err = Value::object([("b", Value::Null)])
            .to_msgpack(&ty)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported attribute \"b\"; the type has \"a\""
        );
        let err = Value::from("x")
            .mark(crate::Mark::Sensitive)
            .to_msgpack(&Type::String)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "value has marks, so it cannot be serialized"
        );
        let err = Value::List(vec![]).to_msgpack(&Type::Dynamic).unwrap_err();
        assert!(
            err.to_string().contains("wrap it in Value::Dynamic"),
            "{err}"
        );
    }

    #[test]
    fn refined_null_is_null_and_later_keys_are_skipped() {
        // {1: true} is "refined to null": go-cty makes that a null.
        assert_eq!(
            Value::from_msgpack(&[0xc7, 3, 0x0c, 0x81, 0x01, 0xc3], &Type::String).unwrap(),
            Value::Null
        );
        // {9: [1, 2], 1: false}: key 9 is from a later go-cty, its value skipped whole.
        let bytes = [0xc7, 7, 0x0c, 0x82, 0x09, 0x92, 0x01, 0x02, 0x01, 0xc2];
        let not_null = Value::Unknown(Refinements {
            not_null: true,
            ..Default::default()
        });
        assert_eq!(
            Value::from_msgpack(&bytes, &Type::String).unwrap(),
            not_null
        );
    }
}

#[cfg(test)]
mod hostile {
    use super::*;

    #[test]
    fn dynamic_values_nested_without_end_are_refused_not_a_stack_overflow() {
        let mut bytes = Vec::new();
        for _ in 0..50_000 {
            bytes.extend_from_slice(b"\x92\xc4\x09\"dynamic\"");
        }
        bytes.push(0xc0);
        let err = Value::from_msgpack(&bytes, &Type::Dynamic).unwrap_err();
        assert!(err.to_string().contains("nests over 64 levels"), "{err}");
        let mut json = String::new();
        for _ in 0..300 {
            json.push_str(r#"{"type":"dynamic","value":"#);
        }
        json.push_str("null");
        json.push_str(&"}".repeat(300));
        // serde_json's own limit (128) or ours, whichever comes first: an error either way.
        assert!(Value::from_json(&json, &Type::Dynamic).is_err());
    }

    #[test]
    fn a_huge_length_prefix_reserves_nothing_much() {
        // An array of 2^32-1 numbers, then nothing: an error, not a 400 GiB allocation.
        let err = Value::from_msgpack(&[0xdd, 0xff, 0xff, 0xff, 0xff], &Type::list(Type::Number))
            .unwrap_err();
        assert!(err.to_string().contains("ends early"), "{err}");
    }
}
