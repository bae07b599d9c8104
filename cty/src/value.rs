//! cty values: known, null, unknown (with refinements), marked.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::{Number, Type};

/// A cty value. Its type is the schema's: the same value encodes differently in a `number` slot
/// and in a `dynamic` one, and [`Value::Null`] is a null of whatever type its slot has.
///
/// ```
/// use rpcplugin_cty::{Refinements, Type, Value};
///
/// let planned = Value::object([
///     ("id", Value::Unknown(Refinements { not_null: true, ..Default::default() })),
///     ("triggers", Value::Null),
/// ]);
/// let ty = Type::object([("id", Type::String), ("triggers", Type::map(Type::String))]);
/// let bytes = planned.to_msgpack(&ty)?;
/// assert_eq!(Value::from_msgpack(&bytes, &ty)?, planned);
/// assert!(!planned.is_wholly_known());
/// # Ok::<(), rpcplugin_cty::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Null, of the slot's type.
    Null,
    /// Not known yet (in a plan); what is known about it is in the refinements.
    Unknown(Refinements),
    /// A bool.
    Bool(bool),
    /// A number.
    Number(Number),
    /// A string.
    String(String),
    /// A list's elements, in order.
    List(Vec<Value>),
    /// A set's elements (distinct; the order is the wire's, which carries no meaning).
    Set(Vec<Value>),
    /// A map's entries.
    Map(BTreeMap<String, Value>),
    /// An object's attributes. Attributes of the type left out here encode as null.
    Object(BTreeMap<String, Value>),
    /// A tuple's elements, one per element type.
    Tuple(Vec<Value>),
    /// A value of a concrete type where the schema says `dynamic`: decoding gives one for
    /// every value in a dynamic slot that is not a null or unknown of no type, and encoding
    /// needs one where the type cannot be told from the value (a null, an unknown, an empty
    /// collection); other values in dynamic slots have their type inferred.
    Dynamic(Type, Box<Value>),
    /// A value with marks (sensitive, ephemeral). Marks are never encoded: take them off with
    /// [`Value::unmark_deep`] before a call, and put them back with [`Value::mark_paths`].
    Marked(BTreeSet<Mark>, Box<Value>),
}

/// What Terraform core knows about an unknown value. Each field is "no refinement" by default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Refinements {
    /// The value will not be null.
    pub not_null: bool,
    /// A string value will start with this (at most 256 bytes are encoded).
    pub string_prefix: Option<String>,
    /// A number value will be above this bound (`true`: or equal to it).
    pub number_lower: Option<(Number, bool)>,
    /// A number value will be below this bound (`true`: or equal to it).
    pub number_upper: Option<(Number, bool)>,
    /// A collection will have at least this many elements.
    pub length_lower: Option<u64>,
    /// A collection will have at most this many elements.
    pub length_upper: Option<u64>,
}

/// A mark Terraform core puts on values; never sent to a provider.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mark {
    /// Shown as `(sensitive value)`; from a `sensitive` attribute or variable.
    Sensitive,
    /// Must not be persisted (ephemeral resources, write-only attributes).
    Ephemeral,
}

/// Where in a value: the steps from its root, as diagnostics' attribute paths give them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path(pub Vec<PathStep>);

/// One step of a [`Path`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathStep {
    /// An object attribute, or a nested block by name.
    Attr(String),
    /// A list or tuple index.
    Index(i64),
    /// A map key.
    Key(String),
}

impl Path {
    /// Whether this is the value itself.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn with(&self, step: PathStep) -> Path {
        let mut p = self.clone();
        p.0.push(step);
        p
    }
}

/// `.name[0]["key"]`, as Terraform prints paths; the root is `(root)`.
impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(root)");
        }
        for step in &self.0 {
            match step {
                PathStep::Attr(name) => write!(f, ".{name}")?,
                PathStep::Index(i) => write!(f, "[{i}]")?,
                PathStep::Key(k) => write!(f, "[{k:?}]")?,
            }
        }
        Ok(())
    }
}

impl Value {
    /// A wholly unknown value (no refinements).
    pub fn unknown() -> Value {
        Value::Unknown(Refinements::default())
    }

    /// An object from `(name, value)` pairs.
    pub fn object<K: Into<String>>(attributes: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Object(attributes.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// A map from `(key, value)` pairs.
    pub fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// A list.
    pub fn list(elements: impl IntoIterator<Item = Value>) -> Value {
        Value::List(elements.into_iter().collect())
    }

    /// A set (the caller keeps elements distinct).
    pub fn set(elements: impl IntoIterator<Item = Value>) -> Value {
        Value::Set(elements.into_iter().collect())
    }

    /// A tuple.
    pub fn tuple(elements: impl IntoIterator<Item = Value>) -> Value {
        Value::Tuple(elements.into_iter().collect())
    }

    /// `value` with its concrete type, for a `dynamic` slot.
    pub fn dynamic(ty: Type, value: Value) -> Value {
        Value::Dynamic(ty, Box::new(value))
    }

    /// This value with `mark` added.
    pub fn mark(self, mark: Mark) -> Value {
        match self {
            Value::Marked(mut marks, inner) => {
                marks.insert(mark);
                Value::Marked(marks, inner)
            }
            other => Value::Marked(BTreeSet::from([mark]), Box::new(other)),
        }
    }

    /// The value without a [`Value::Dynamic`] or [`Value::Marked`] wrapper.
    pub fn inner(&self) -> &Value {
        match self {
            Value::Dynamic(_, v) | Value::Marked(_, v) => v.inner(),
            v => v,
        }
    }

    /// Whether the value is null.
    pub fn is_null(&self) -> bool {
        matches!(self.inner(), Value::Null)
    }

    /// Whether the value itself is known (its elements may not be).
    pub fn is_known(&self) -> bool {
        !matches!(self.inner(), Value::Unknown(_))
    }

    /// Whether the value and everything in it is known.
    pub fn is_wholly_known(&self) -> bool {
        match self.inner() {
            Value::Unknown(_) => false,
            Value::List(vs) | Value::Set(vs) | Value::Tuple(vs) => {
                vs.iter().all(Value::is_wholly_known)
            }
            Value::Map(m) | Value::Object(m) => m.values().all(Value::is_wholly_known),
            _ => true,
        }
    }

    /// The value with every unknown in it replaced by null (Terraform core's `UnknownAsNull`,
    /// applied to what a failed apply leaves).
    pub fn unknown_as_null(&self) -> Value {
        match self {
            Value::Unknown(_) => Value::Null,
            Value::List(vs) => Value::List(vs.iter().map(Value::unknown_as_null).collect()),
            Value::Set(vs) => Value::Set(vs.iter().map(Value::unknown_as_null).collect()),
            Value::Tuple(vs) => Value::Tuple(vs.iter().map(Value::unknown_as_null).collect()),
            Value::Map(m) => Value::Map(
                m.iter()
                    .map(|(k, v)| (k.clone(), v.unknown_as_null()))
                    .collect(),
            ),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.clone(), v.unknown_as_null()))
                    .collect(),
            ),
            Value::Dynamic(t, v) => Value::Dynamic(t.clone(), Box::new(v.unknown_as_null())),
            Value::Marked(marks, v) => Value::Marked(marks.clone(), Box::new(v.unknown_as_null())),
            v => v.clone(),
        }
    }

    /// The string, if this is a known string.
    pub fn as_str(&self) -> Option<&str> {
        match self.inner() {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number, if this is a known number.
    pub fn as_number(&self) -> Option<&Number> {
        match self.inner() {
            Value::Number(n) => Some(n),
            _ => None,
        }
    }

    /// The bool, if this is a known bool.
    pub fn as_bool(&self) -> Option<bool> {
        match self.inner() {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// An object's attribute (`None` if absent or not an object).
    pub fn attr(&self, name: &str) -> Option<&Value> {
        match self.inner() {
            Value::Object(m) => m.get(name),
            _ => None,
        }
    }

    /// The value's own type, where it shows: `None` for nulls, unknowns and empty collections
    /// (which need a [`Value::Dynamic`] wrapper in a dynamic slot), and for collections whose
    /// elements disagree.
    pub fn implied_type(&self) -> Option<Type> {
        fn same<'v>(mut vs: impl Iterator<Item = &'v Value>) -> Option<Type> {
            let first = vs.next()?.implied_type()?;
            vs.all(|v| v.implied_type().as_ref() == Some(&first))
                .then_some(first)
        }
        Some(match self {
            Value::Null | Value::Unknown(_) => return None,
            Value::Bool(_) => Type::Bool,
            Value::Number(_) => Type::Number,
            Value::String(_) => Type::String,
            Value::List(vs) => Type::list(same(vs.iter())?),
            Value::Set(vs) => Type::set(same(vs.iter())?),
            Value::Map(m) => Type::map(same(m.values())?),
            Value::Tuple(vs) => {
                Type::Tuple(vs.iter().map(Value::implied_type).collect::<Option<_>>()?)
            }
            Value::Object(m) => Type::object(
                m.iter()
                    .map(|(k, v)| Some((k.clone(), v.implied_type()?)))
                    .collect::<Option<Vec<_>>>()?,
            ),
            Value::Dynamic(t, _) => t.clone(),
            Value::Marked(_, v) => v.implied_type()?,
        })
    }

    /// The value with every mark taken off, and where each mark was (Terraform core's
    /// `UnmarkDeepWithPaths`). Set elements lose their marks to the set itself.
    pub fn unmark_deep(self) -> (Value, Vec<(Path, BTreeSet<Mark>)>) {
        let mut found = Vec::new();
        let value = self.unmark_at(&Path::default(), &mut found);
        (value, found)
    }

    fn unmark_at(self, path: &Path, found: &mut Vec<(Path, BTreeSet<Mark>)>) -> Value {
        match self {
            Value::Marked(marks, inner) => {
                let at = found.len();
                let inner = inner.unmark_at(path, found);
                found.insert(at, (path.clone(), marks));
                inner
            }
            Value::List(vs) => Value::List(
                vs.into_iter()
                    .enumerate()
                    .map(|(i, v)| v.unmark_at(&path.with(PathStep::Index(i as i64)), found))
                    .collect(),
            ),
            Value::Tuple(vs) => Value::Tuple(
                vs.into_iter()
                    .enumerate()
                    .map(|(i, v)| v.unmark_at(&path.with(PathStep::Index(i as i64)), found))
                    .collect(),
            ),
            Value::Set(vs) => {
                let mut marks = BTreeSet::new();
                let vs = vs
                    .into_iter()
                    .map(|v| {
                        let (v, inner) = v.unmark_deep();
                        marks.extend(inner.into_iter().flat_map(|(_, m)| m));
                        v
                    })
                    .collect();
                if !marks.is_empty() {
                    found.push((path.clone(), marks));
                }
                Value::Set(vs)
            }
            Value::Map(m) => Value::Map(
                m.into_iter()
                    .map(|(k, v)| {
                        let v = v.unmark_at(&path.with(PathStep::Key(k.clone())), found);
                        (k, v)
                    })
                    .collect(),
            ),
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .map(|(k, v)| {
                        let v = v.unmark_at(&path.with(PathStep::Attr(k.clone())), found);
                        (k, v)
                    })
                    .collect(),
            ),
            Value::Dynamic(t, v) => Value::Dynamic(t, Box::new(v.unmark_at(path, found))),
            other => other,
        }
    }

    /// Puts marks back where [`Value::unmark_deep`] found them (on a value of the same shape,
    /// such as a provider's answer). A path that no longer leads anywhere is skipped.
    pub fn mark_paths(self, marks: &[(Path, BTreeSet<Mark>)]) -> Value {
        marks
            .iter()
            .fold(self, |v, (path, marks)| v.mark_at(&path.0, marks))
    }

    fn mark_at(self, steps: &[PathStep], marks: &BTreeSet<Mark>) -> Value {
        let Some((step, rest)) = steps.split_first() else {
            return marks.iter().cloned().fold(self, Value::mark);
        };
        match (self, step) {
            (Value::Marked(m, inner), _) => Value::Marked(m, Box::new(inner.mark_at(steps, marks))),
            (Value::Dynamic(t, inner), _) => {
                Value::Dynamic(t, Box::new(inner.mark_at(steps, marks)))
            }
            (Value::List(vs), PathStep::Index(i)) => Value::List(mark_element(vs, *i, rest, marks)),
            (Value::Tuple(vs), PathStep::Index(i)) => {
                Value::Tuple(mark_element(vs, *i, rest, marks))
            }
            (Value::Map(mut m), PathStep::Key(k)) | (Value::Object(mut m), PathStep::Attr(k)) => {
                let is_map = matches!(step, PathStep::Key(_));
                if let Some(v) = m.get_mut(k) {
                    *v = std::mem::replace(v, Value::Null).mark_at(rest, marks);
                }
                if is_map {
                    Value::Map(m)
                } else {
                    Value::Object(m)
                }
            }
            (other, _) => other,
        }
    }
}

fn mark_element(
    mut vs: Vec<Value>,
    i: i64,
    rest: &[PathStep],
    marks: &BTreeSet<Mark>,
) -> Vec<Value> {
    if let Some(v) = usize::try_from(i).ok().and_then(|i| vs.get_mut(i)) {
        *v = std::mem::replace(v, Value::Null).mark_at(rest, marks);
    }
    vs
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(s)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Number(i.into())
    }
}

impl From<i32> for Value {
    fn from(i: i32) -> Value {
        Value::Number(i.into())
    }
}

impl From<Number> for Value {
    fn from(n: Number) -> Value {
        Value::Number(n)
    }
}
