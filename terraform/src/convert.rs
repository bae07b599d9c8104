//! Protocol messages to this crate's types, written once for both protocols: the messages of
//! tfplugin5 and tfplugin6 that are converted here have the same fields (5 lacks nested
//! attributes), so a macro expands the same code over each generated module.

use crate::cty::{Path, PathStep, Type, Value};
use crate::diagnostics::{Diagnostic, Severity};
use crate::error::{Error, ErrorKind, Result};
use crate::schema::StringKind;

/// A `DynamicValue`'s content as `ty`: msgpack if present, else JSON, else null (as core reads
/// them).
pub(crate) fn dynamic_value(msgpack: &[u8], json: &[u8], ty: &Type, what: &str) -> Result<Value> {
    let decoded = if !msgpack.is_empty() {
        Value::from_msgpack(msgpack, ty)
    } else if !json.is_empty() {
        let text = std::str::from_utf8(json)
            .map_err(|_| Error::new(ErrorKind::Value, format!("{what}: the JSON is not UTF-8")))?;
        Value::from_json(text, ty)
    } else {
        Ok(Value::Null)
    };
    decoded.map_err(|e| {
        Error::new(
            ErrorKind::Value,
            format!("{what}: the provider's value does not decode as {ty}: {e}"),
        )
    })
}

pub(crate) fn type_json(bytes: &[u8], what: &str) -> Result<Type> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::new(ErrorKind::Schema, format!("{what}: the type is not UTF-8")))?;
    Type::from_json(text).map_err(|e| Error::new(ErrorKind::Schema, format!("{what}: {e}")))
}

pub(crate) fn string_kind(markdown: bool) -> StringKind {
    if markdown {
        StringKind::Markdown
    } else {
        StringKind::Plain
    }
}

pub(crate) fn severity(error: bool) -> Severity {
    if error {
        Severity::Error
    } else {
        Severity::Warning
    }
}

pub(crate) fn path(steps: impl Iterator<Item = PathStep>) -> Option<Path> {
    let steps: Vec<PathStep> = steps.collect();
    (!steps.is_empty()).then_some(Path(steps))
}

/// Diagnostics, or the error they make when one is an error.
pub(crate) fn check(call: &str, diagnostics: Vec<Diagnostic>) -> Result<Vec<Diagnostic>> {
    if diagnostics.iter().any(Diagnostic::is_error) {
        Err(Error::from_diagnostics(call, diagnostics))
    } else {
        Ok(diagnostics)
    }
}

macro_rules! protocol {
    ($module:ident, $variant:ident, $pb:ident, |$attr:ident, $what:ident| $nested:expr) => {
        pub(crate) mod $module {
            use std::collections::BTreeMap;

            use super::*;
            use crate::proto::$pb as pb;
            use crate::provider::{Deferred, ServerCapabilities};
            use crate::schema::{
                Attribute, Block, Function, NestedBlock, Nesting, Parameter, Schema,
            };

            pub(crate) fn diagnostics(ds: &[pb::Diagnostic]) -> Vec<Diagnostic> {
                ds.iter()
                    .map(|d| Diagnostic {
                        // INVALID (0), which no provider should send, counts as a warning,
                        // not an error: OpenTofu does not fail the call for it.
                        severity: severity(
                            d.severity.enum_value() == Ok(pb::diagnostic::Severity::ERROR),
                        ),
                        summary: d.summary.clone(),
                        detail: d.detail.clone(),
                        attribute: d.attribute.as_ref().and_then(|p| attribute_path(p)),
                    })
                    .collect()
            }

            pub(crate) fn attribute_path(p: &pb::AttributePath) -> Option<Path> {
                use pb::attribute_path::step::Selector;
                path(p.steps.iter().filter_map(|s| match &s.selector {
                    Some(Selector::AttributeName(n)) => Some(PathStep::Attr(n.clone())),
                    Some(Selector::ElementKeyString(k)) => Some(PathStep::Key(k.clone())),
                    Some(Selector::ElementKeyInt(i)) => Some(PathStep::Index(*i)),
                    _ => None,
                }))
            }

            pub(crate) fn deferred(d: &protobuf::MessageField<pb::Deferred>) -> Option<Deferred> {
                use pb::deferred::Reason;
                d.as_ref().map(|d| match d.reason.enum_value() {
                    Ok(Reason::RESOURCE_CONFIG_UNKNOWN) => Deferred::ResourceConfigUnknown,
                    Ok(Reason::PROVIDER_CONFIG_UNKNOWN) => Deferred::ProviderConfigUnknown,
                    Ok(Reason::ABSENT_PREREQ) => Deferred::AbsentPrerequisite,
                    _ => Deferred::Unknown,
                })
            }

            pub(crate) fn server_capabilities(
                c: &protobuf::MessageField<pb::ServerCapabilities>,
            ) -> ServerCapabilities {
                c.as_ref()
                    .map(|c| ServerCapabilities {
                        plan_destroy: c.plan_destroy,
                        get_provider_schema_optional: c.get_provider_schema_optional,
                        move_resource_state: c.move_resource_state,
                        generate_resource_config: c.generate_resource_config,
                    })
                    .unwrap_or_default()
            }

            pub(crate) fn schema(s: &pb::Schema, what: &str) -> Result<Schema> {
                Ok(Schema {
                    version: s.version,
                    block: s
                        .block
                        .as_ref()
                        .map(|b| block(b, what))
                        .transpose()?
                        .unwrap_or_default(),
                })
            }

            fn block(b: &pb::schema::Block, what: &str) -> Result<Block> {
                let attributes = b
                    .attributes
                    .iter()
                    .map(|a| Ok((a.name.clone(), attribute(a, what)?)))
                    .collect::<Result<BTreeMap<_, _>>>()?;
                let block_types = b
                    .block_types
                    .iter()
                    .map(|n| {
                        let nested = NestedBlock {
                            block: n
                                .block
                                .as_ref()
                                .map(|b| block(b, what))
                                .transpose()?
                                .unwrap_or_default(),
                            nesting: nesting(n.nesting.value(), what)?,
                            min_items: n.min_items,
                            max_items: n.max_items,
                        };
                        Ok((n.type_name.clone(), nested))
                    })
                    .collect::<Result<BTreeMap<_, _>>>()?;
                Ok(Block {
                    attributes,
                    block_types,
                    description: b.description.clone(),
                    description_kind: string_kind(b.description_kind.value() == 1),
                    deprecated: b.deprecated,
                    deprecation_message: b.deprecation_message.clone(),
                })
            }

            pub(super) fn nesting(n: i32, what: &str) -> Result<Nesting> {
                Ok(match n {
                    1 => Nesting::Single,
                    2 => Nesting::List,
                    3 => Nesting::Set,
                    4 => Nesting::Map,
                    5 => Nesting::Group,
                    n => {
                        return Err(Error::new(
                            ErrorKind::Schema,
                            format!("{what}: nesting mode {n} is not 1 to 5"),
                        ))
                    }
                })
            }

            pub(super) fn attribute(
                $attr: &pb::schema::Attribute,
                what: &str,
            ) -> Result<Attribute> {
                let $what = format!("{what}, attribute {:?}", $attr.name);
                let ty = if $attr.type_.is_empty() {
                    None
                } else {
                    Some(type_json(&$attr.type_, &$what)?)
                };
                Ok(Attribute {
                    ty,
                    nested_type: $nested,
                    description: $attr.description.clone(),
                    description_kind: string_kind($attr.description_kind.value() == 1),
                    required: $attr.required,
                    optional: $attr.optional,
                    computed: $attr.computed,
                    sensitive: $attr.sensitive,
                    deprecated: $attr.deprecated,
                    write_only: $attr.write_only,
                    deprecation_message: $attr.deprecation_message.clone(),
                })
            }

            pub(crate) fn function(f: &pb::Function, what: &str) -> Result<Function> {
                let parameter = |p: &pb::function::Parameter| -> Result<Parameter> {
                    Ok(Parameter {
                        name: p.name.clone(),
                        ty: type_json(&p.type_, &format!("{what}, parameter {:?}", p.name))?,
                        allow_null_value: p.allow_null_value,
                        allow_unknown_values: p.allow_unknown_values,
                        description: p.description.clone(),
                        description_kind: string_kind(p.description_kind.value() == 1),
                    })
                };
                Ok(Function {
                    parameters: f.parameters.iter().map(parameter).collect::<Result<_>>()?,
                    variadic_parameter: f.variadic_parameter.as_ref().map(parameter).transpose()?,
                    return_type: match f.return_.as_ref() {
                        Some(r) => type_json(&r.type_, &format!("{what}, return type"))?,
                        None => Type::Dynamic,
                    },
                    summary: f.summary.clone(),
                    description: f.description.clone(),
                    description_kind: string_kind(f.description_kind.value() == 1),
                    deprecation_message: f.deprecation_message.clone(),
                })
            }

            pub(crate) fn schemas(
                m: &std::collections::HashMap<String, pb::Schema>,
                kind: &str,
            ) -> Result<BTreeMap<String, Schema>> {
                m.iter()
                    .map(|(k, s)| Ok((k.clone(), schema(s, &format!("{kind} {k:?}"))?)))
                    .collect()
            }

            pub(crate) fn dv(
                v: &protobuf::MessageField<pb::DynamicValue>,
                ty: &Type,
                what: &str,
            ) -> Result<Value> {
                match v.as_ref() {
                    Some(v) => dynamic_value(&v.msgpack, &v.json, ty, what),
                    None => Ok(Value::Null),
                }
            }

            pub(crate) fn events(
                r: rpcplugin::rpc::Replies<pb::list_resource::Event>,
            ) -> crate::provider::Events {
                crate::provider::Events::$variant(r)
            }

            pub(crate) fn to_dv(
                v: &Value,
                ty: &Type,
                what: &str,
            ) -> Result<protobuf::MessageField<pb::DynamicValue>> {
                let msgpack = v.to_msgpack(ty).map_err(|e| {
                    Error::new(
                        ErrorKind::Value,
                        format!("{what}: the value does not fit {ty}: {e}"),
                    )
                })?;
                Ok(protobuf::MessageField::some(pb::DynamicValue {
                    msgpack,
                    ..Default::default()
                }))
            }
        }
    };
}

protocol!(v5, V5, tfplugin5, |a, _what| None);
protocol!(v6, V6, tfplugin6, |a, what| match a.nested_type.as_ref() {
    None => None,
    Some(o) => Some(crate::schema::NestedObject {
        attributes: o
            .attributes
            .iter()
            .map(|x| Ok((x.name.clone(), attribute(x, what.as_str())?)))
            .collect::<Result<BTreeMap<_, _>>>()?,
        nesting: nesting(o.nesting.value(), what.as_str())?,
    }),
});
