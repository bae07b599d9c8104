//! cty types and their JSON form (`"string"`, `["list","string"]`, `["object",{…},[…]]`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::json::write_string;
use crate::{Error, Path, Result};

/// A cty type: what a schema says a value is, and what drives its encoding. The default is
/// `Dynamic` ("any type").
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Type {
    /// A Unicode string.
    String,
    /// An arbitrary-precision number.
    Number,
    /// `true` or `false`.
    Bool,
    /// "Any type": a value in this slot carries its own type on the wire.
    #[default]
    Dynamic,
    /// An ordered sequence of one element type.
    List(Box<Type>),
    /// An unordered collection of distinct values of one element type.
    Set(Box<Type>),
    /// String keys to values of one element type.
    Map(Box<Type>),
    /// Named attributes, each with its own type. `optional` names the attributes a type
    /// *constraint* lets a value leave out (function parameters, nested-attribute specs);
    /// values are always encoded with every attribute.
    Object {
        /// Attribute name to type.
        attributes: BTreeMap<String, Type>,
        /// Attributes marked `optional()` in a constraint (a subset of `attributes`' keys).
        optional: BTreeSet<String>,
    },
    /// A fixed-length sequence, each element with its own type.
    Tuple(Vec<Type>),
}

impl Type {
    /// `list(element)`.
    pub fn list(element: Type) -> Type {
        Type::List(Box::new(element))
    }

    /// `set(element)`.
    pub fn set(element: Type) -> Type {
        Type::Set(Box::new(element))
    }

    /// `map(element)`.
    pub fn map(element: Type) -> Type {
        Type::Map(Box::new(element))
    }

    /// `object({name = type, …})` with no optional attributes.
    pub fn object<K: Into<String>>(attributes: impl IntoIterator<Item = (K, Type)>) -> Type {
        Type::Object {
            attributes: attributes.into_iter().map(|(k, t)| (k.into(), t)).collect(),
            optional: BTreeSet::new(),
        }
    }

    /// `tuple([type, …])`.
    pub fn tuple(elements: impl IntoIterator<Item = Type>) -> Type {
        Type::Tuple(elements.into_iter().collect())
    }

    /// The element type of a list, set or map.
    pub fn element_type(&self) -> Option<&Type> {
        match self {
            Type::List(e) | Type::Set(e) | Type::Map(e) => Some(e),
            _ => None,
        }
    }

    /// Whether `dynamic` appears anywhere in the type (attribute names do not count).
    pub fn contains_dynamic(&self) -> bool {
        match self {
            Type::Dynamic => true,
            Type::List(e) | Type::Set(e) | Type::Map(e) => e.contains_dynamic(),
            Type::Tuple(ts) => ts.iter().any(Type::contains_dynamic),
            Type::Object { attributes, .. } => attributes.values().any(Type::contains_dynamic),
            Type::String | Type::Number | Type::Bool => false,
        }
    }

    /// The same type with every `optional` list emptied, at any depth: the type values of a
    /// constraint are encoded with (go-cty's `WithoutOptionalAttributesDeep`).
    pub fn without_optional_attributes(&self) -> Type {
        match self {
            Type::List(e) => Type::list(e.without_optional_attributes()),
            Type::Set(e) => Type::set(e.without_optional_attributes()),
            Type::Map(e) => Type::map(e.without_optional_attributes()),
            Type::Tuple(es) => {
                Type::Tuple(es.iter().map(Type::without_optional_attributes).collect())
            }
            Type::Object { attributes, .. } => Type::Object {
                attributes: attributes
                    .iter()
                    .map(|(k, t)| (k.clone(), t.without_optional_attributes()))
                    .collect(),
                optional: BTreeSet::new(),
            },
            primitive => primitive.clone(),
        }
    }

    /// The compact JSON form go-cty writes (`Type.MarshalJSON`), as used in schemas, in
    /// dynamic values and in `providers schema -json`.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    /// Appends the JSON form to `out`.
    pub fn write_json(&self, out: &mut String) {
        let wrap = |out: &mut String, kind: &str, inner: &Type| {
            out.push_str("[\"");
            out.push_str(kind);
            out.push_str("\",");
            inner.write_json(out);
            out.push(']');
        };
        match self {
            Type::String => out.push_str("\"string\""),
            Type::Number => out.push_str("\"number\""),
            Type::Bool => out.push_str("\"bool\""),
            Type::Dynamic => out.push_str("\"dynamic\""),
            Type::List(e) => wrap(out, "list", e),
            Type::Set(e) => wrap(out, "set", e),
            Type::Map(e) => wrap(out, "map", e),
            Type::Tuple(es) => {
                out.push_str("[\"tuple\",[");
                for (i, e) in es.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    e.write_json(out);
                }
                out.push_str("]]");
            }
            Type::Object {
                attributes,
                optional,
            } => {
                out.push_str("[\"object\",{");
                for (i, (name, t)) in attributes.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(out, name);
                    out.push(':');
                    t.write_json(out);
                }
                out.push('}');
                if !optional.is_empty() {
                    out.push_str(",[");
                    for (i, name) in optional.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        write_string(out, name);
                    }
                    out.push(']');
                }
                out.push(']');
            }
        }
    }

    /// Parses the JSON form (the inverse of [`Type::to_json`]; whitespace is allowed).
    ///
    /// ```
    /// use rpcplugin_cty::Type;
    /// let ty = Type::from_json(r#"["map", ["list", "number"]]"#)?;
    /// assert_eq!(ty, Type::map(Type::list(Type::Number)));
    /// assert!(Type::from_json(r#"["list"]"#).unwrap_err().to_string().contains("list"));
    /// # Ok::<(), rpcplugin_cty::Error>(())
    /// ```
    pub fn from_json(text: &str) -> Result<Type> {
        let json: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            Error::new(
                &Path::default(),
                format!("a type in JSON form is required: {e}"),
            )
        })?;
        Type::from_json_value(&json)
    }

    pub(crate) fn from_json_value(json: &serde_json::Value) -> Result<Type> {
        use serde_json::Value as J;
        let bad = |what: &str| {
            Error::new(
                &Path::default(),
                format!("{what}; a type is \"string\", \"number\", \"bool\", \"dynamic\", [\"list\"|\"set\"|\"map\", T], [\"object\", {{…}}] or [\"tuple\", […]], got {json}"),
            )
        };
        match json {
            J::String(name) => match name.as_str() {
                "string" => Ok(Type::String),
                "number" => Ok(Type::Number),
                "bool" => Ok(Type::Bool),
                "dynamic" => Ok(Type::Dynamic),
                _ => Err(bad(&format!("unknown primitive type {name:?}"))),
            },
            J::Array(items) => {
                let Some(J::String(kind)) = items.first() else {
                    return Err(bad("a type array must start with its kind"));
                };
                match (kind.as_str(), &items[1..]) {
                    ("list", [e]) => Ok(Type::list(Type::from_json_value(e)?)),
                    ("set", [e]) => Ok(Type::set(Type::from_json_value(e)?)),
                    ("map", [e]) => Ok(Type::map(Type::from_json_value(e)?)),
                    ("tuple", [J::Array(es)]) => Ok(Type::Tuple(
                        es.iter()
                            .map(Type::from_json_value)
                            .collect::<Result<_>>()?,
                    )),
                    ("object", [J::Object(attrs), rest @ ..]) if rest.len() <= 1 => {
                        let attributes = attrs
                            .iter()
                            .map(|(k, t)| Ok((k.clone(), Type::from_json_value(t)?)))
                            .collect::<Result<BTreeMap<_, _>>>()?;
                        let mut optional = BTreeSet::new();
                        if let [names] = rest {
                            let J::Array(names) = names else {
                                return Err(bad(
                                    "an object's optional attributes must be an array of names",
                                ));
                            };
                            for name in names {
                                let J::String(name) = name else {
                                    return Err(bad("an optional attribute name must be a string"));
                                };
                                if !attributes.contains_key(name) {
                                    return Err(bad(&format!(
                                        "optional attribute {name:?} is not an attribute"
                                    )));
                                }
                                optional.insert(name.clone());
                            }
                        }
                        Ok(Type::Object {
                            attributes,
                            optional,
                        })
                    }
                    (kind @ ("list" | "set" | "map" | "tuple" | "object"), _) => {
                        Err(bad(&format!("malformed {kind} type")))
                    }
                    (kind, _) => Err(bad(&format!("unknown type kind {kind:?}"))),
                }
            }
            _ => Err(bad("not a type")),
        }
    }
}

/// The JSON form, as [`Type::to_json`] writes it.
impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_forms_from_the_go_cty_docs() {
        for text in [
            r#""string""#,
            r#"["map","string"]"#,
            r#"["list",["object",{"name":"string","port":"number"}]]"#,
            r#"["set",["tuple",["string","bool"]]]"#,
            r#"["object",{"a":"string","b":"number"},["b"]]"#,
            r#"["tuple",[]]"#,
            r#"["object",{}]"#,
            r#""dynamic""#,
        ] {
            let ty = Type::from_json(text).unwrap();
            assert_eq!(ty.to_json(), text);
        }
    }

    #[test]
    fn dynamic_is_found_in_types_not_in_attribute_names() {
        assert!(Type::from_json(r#"["map",["tuple",["string","dynamic"]]]"#)
            .unwrap()
            .contains_dynamic());
        assert!(!Type::from_json(r#"["object",{"dynamic":"string"}]"#)
            .unwrap()
            .contains_dynamic());
    }

    #[test]
    fn malformed_types_say_what_was_expected() {
        for (text, says) in [
            (r#""str""#, "unknown primitive type \"str\""),
            (r#"["list"]"#, "malformed list type"),
            (r#"["list","string","x"]"#, "malformed list type"),
            (
                r#"["object",{"a":"string"},["b"]]"#,
                "optional attribute \"b\" is not an attribute",
            ),
            (r#"["capsule","x"]"#, "unknown type kind \"capsule\""),
            ("42", "not a type"),
            (r#""string" x"#, "a type in JSON form is required"),
        ] {
            let err = Type::from_json(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }
}
