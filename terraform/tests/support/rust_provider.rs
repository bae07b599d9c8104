//! A small Terraform provider written in Rust, served over tfplugin6 with `rpcplugin::server`
//! and this crate's cty values: the test peer for the protocol-6 half of the client.
//!
//! `rust_file` manages a real file (path, content; computed id and size; nested `tags`
//! attributes; schema version 1, whose version 0 called `content` `contents`; identity {path};
//! states move to it from `legacy_file`), the data source `rust_file_info` reads one, the list
//! resource `rust_file` lists a directory's files, the ephemeral resource `rust_token` hands out
//! a token that must be renewed, and the function `reverse` reverses a string.

use grpcio::{RpcStatus, RpcStatusCode};
use protobuf::{EnumOrUnknown, MessageField};
use rpcplugin::server::{CallContext, PluginServer, ReplySink};
use rpcplugin_terraform::cty::{Number, Refinements, Type, Value};
use rpcplugin_terraform::proto::tfplugin6::{self as pb, schema};
use rpcplugin_terraform::proto::tfplugin6_grpc::{create_provider, Provider};
use rpcplugin_terraform::{MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE};

fn file_type() -> Type {
    Type::object([
        ("id", Type::String),
        ("path", Type::String),
        ("content", Type::String),
        ("size", Type::Number),
        (
            "tags",
            Type::list(Type::object([
                ("key", Type::String),
                ("value", Type::String),
            ])),
        ),
    ])
}

fn info_type() -> Type {
    Type::object([
        ("path", Type::String),
        ("exists", Type::Bool),
        ("size", Type::Number),
    ])
}

fn attribute(name: &str, ty: &str, flags: &str) -> schema::Attribute {
    schema::Attribute {
        name: name.into(),
        type_: ty.as_bytes().to_vec(),
        description: format!("The file's {name}."),
        required: flags.contains('r'),
        optional: flags.contains('o'),
        computed: flags.contains('c'),
        ..Default::default()
    }
}

fn block(attributes: Vec<schema::Attribute>, description: &str) -> MessageField<schema::Block> {
    MessageField::some(schema::Block {
        attributes,
        description: description.into(),
        ..Default::default()
    })
}

fn file_schema() -> pb::Schema {
    let tags = schema::Attribute {
        name: "tags".into(),
        nested_type: MessageField::some(schema::Object {
            attributes: vec![
                attribute("key", "\"string\"", "r"),
                attribute("value", "\"string\"", "o"),
            ],
            nesting: EnumOrUnknown::new(schema::object::NestingMode::LIST),
            ..Default::default()
        }),
        optional: true,
        description: "Labels, kept in state only.".into(),
        ..Default::default()
    };
    let attributes = vec![
        attribute("id", "\"string\"", "c"),
        attribute("path", "\"string\"", "r"),
        attribute("content", "\"string\"", "r"),
        attribute("size", "\"number\"", "c"),
        tags,
    ];
    pb::Schema {
        version: 1,
        block: block(attributes, "A file on the local disk."),
        ..Default::default()
    }
}

fn decode(dv: &MessageField<pb::DynamicValue>, ty: &Type) -> Result<Value, RpcStatus> {
    let Some(dv) = dv.as_ref() else {
        return Ok(Value::Null);
    };
    Value::from_msgpack(&dv.msgpack, ty)
        .map_err(|e| RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, e.to_string()))
}

fn encode(v: &Value, ty: &Type) -> MessageField<pb::DynamicValue> {
    MessageField::some(pb::DynamicValue {
        msgpack: v.to_msgpack(ty).expect("our own value fits"),
        ..Default::default()
    })
}

fn error(summary: &str, attribute: Option<&str>) -> pb::Diagnostic {
    pb::Diagnostic {
        severity: EnumOrUnknown::new(pb::diagnostic::Severity::ERROR),
        summary: summary.into(),
        attribute: attribute
            .map(|name| pb::AttributePath {
                steps: vec![pb::attribute_path::Step {
                    selector: Some(pb::attribute_path::step::Selector::AttributeName(
                        name.into(),
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .into(),
        ..Default::default()
    }
}

fn text<'v>(v: &'v Value, name: &str) -> Option<&'v str> {
    v.attr(name).and_then(Value::as_str)
}

/// The state of the file at `path` with the configuration's other attributes, or null.
fn read_file(path: &str, tags: Value) -> Value {
    match std::fs::read_to_string(path) {
        Ok(content) => Value::object([
            ("id", Value::from(path)),
            ("path", Value::from(path)),
            ("size", Value::from(content.len() as i64)),
            ("content", Value::from(content)),
            ("tags", tags),
        ]),
        Err(_) => Value::Null,
    }
}

struct RustProvider;

impl Provider for RustProvider {
    fn get_provider_schema(
        &self,
        _: &CallContext,
        _: pb::get_provider_schema::Request,
    ) -> Result<pb::get_provider_schema::Response, RpcStatus> {
        let info = pb::Schema {
            block: block(
                vec![
                    attribute("path", "\"string\"", "r"),
                    attribute("exists", "\"bool\"", "c"),
                    attribute("size", "\"number\"", "c"),
                ],
                "Facts about a file.",
            ),
            ..Default::default()
        };
        let reverse = pb::Function {
            parameters: vec![pb::function::Parameter {
                name: "text".into(),
                type_: b"\"string\"".to_vec(),
                ..Default::default()
            }],
            return_: MessageField::some(pb::function::Return {
                type_: b"\"string\"".to_vec(),
                ..Default::default()
            }),
            summary: "Reverses a string".into(),
            ..Default::default()
        };
        Ok(pb::get_provider_schema::Response {
            provider: MessageField::some(pb::Schema {
                block: block(vec![], "No configuration."),
                ..Default::default()
            }),
            provider_meta: MessageField::some(pb::Schema {
                block: block(
                    vec![attribute("module_name", "\"string\"", "o")],
                    "What the module says about itself.",
                ),
                ..Default::default()
            }),
            resource_schemas: [("rust_file".to_owned(), file_schema())].into(),
            data_source_schemas: [("rust_file_info".to_owned(), info)].into(),
            functions: [("reverse".to_owned(), reverse)].into(),
            ephemeral_resource_schemas: [(
                "rust_token".to_owned(),
                pb::Schema {
                    block: block(
                        vec![
                            attribute("name", "\"string\"", "r"),
                            attribute("token", "\"string\"", "c"),
                        ],
                        "A token.",
                    ),
                    ..Default::default()
                },
            )]
            .into(),
            list_resource_schemas: [(
                "rust_file".to_owned(),
                pb::Schema {
                    block: block(
                        vec![attribute("dir", "\"string\"", "r")],
                        "The files of a directory.",
                    ),
                    ..Default::default()
                },
            )]
            .into(),
            server_capabilities: MessageField::some(pb::ServerCapabilities {
                plan_destroy: true,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn validate_provider_config(
        &self,
        _: &CallContext,
        _: pb::validate_provider_config::Request,
    ) -> Result<pb::validate_provider_config::Response, RpcStatus> {
        Ok(Default::default())
    }

    fn configure_provider(
        &self,
        _: &CallContext,
        _: pb::configure_provider::Request,
    ) -> Result<pb::configure_provider::Response, RpcStatus> {
        Ok(Default::default())
    }

    fn validate_resource_config(
        &self,
        _: &CallContext,
        req: pb::validate_resource_config::Request,
    ) -> Result<pb::validate_resource_config::Response, RpcStatus> {
        let config = decode(&req.config, &file_type())?;
        let mut diagnostics = vec![];
        if let Some(path) = text(&config, "path") {
            if !path.starts_with('/') {
                diagnostics.push(error("the path must be absolute", Some("path")));
            }
        }
        Ok(pb::validate_resource_config::Response {
            diagnostics,
            ..Default::default()
        })
    }

    fn upgrade_resource_state(
        &self,
        _: &CallContext,
        req: pb::upgrade_resource_state::Request,
    ) -> Result<pb::upgrade_resource_state::Response, RpcStatus> {
        let raw = std::str::from_utf8(&req.raw_state.json).unwrap_or_default();
        let bad = |e: rpcplugin_terraform::cty::Error| {
            RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, e.to_string())
        };
        let value = match req.version {
            // Version 0 called the content `contents`.
            0 => {
                let mut v0 = file_type();
                if let Type::Object { attributes, .. } = &mut v0 {
                    let content = attributes.remove("content").unwrap();
                    attributes.insert("contents".into(), content);
                }
                let Value::Object(mut state) = Value::from_json(raw, &v0).map_err(bad)? else {
                    return Err(RpcStatus::with_message(
                        RpcStatusCode::INVALID_ARGUMENT,
                        "an object is required".into(),
                    ));
                };
                let content = state.remove("contents").unwrap_or(Value::Null);
                state.insert("content".into(), content);
                Value::Object(state)
            }
            _ => Value::from_json(raw, &file_type()).map_err(bad)?,
        };
        Ok(pb::upgrade_resource_state::Response {
            upgraded_state: encode(&value, &file_type()),
            ..Default::default()
        })
    }

    fn read_resource(
        &self,
        _: &CallContext,
        req: pb::read_resource::Request,
    ) -> Result<pb::read_resource::Response, RpcStatus> {
        let current = decode(&req.current_state, &file_type())?;
        let state = match text(&current, "path") {
            Some(path) => read_file(path, current.attr("tags").cloned().unwrap_or(Value::Null)),
            None => Value::Null,
        };
        Ok(pb::read_resource::Response {
            new_state: encode(&state, &file_type()),
            private: req.private,
            ..Default::default()
        })
    }

    fn plan_resource_change(
        &self,
        _: &CallContext,
        req: pb::plan_resource_change::Request,
    ) -> Result<pb::plan_resource_change::Response, RpcStatus> {
        let ty = file_type();
        // provider_meta, which core sends with every plan: "refuse" makes the plan fail.
        let meta = decode(
            &req.provider_meta,
            &Type::object([("module_name", Type::String)]),
        )?;
        if text(&meta, "module_name") == Some("refuse") {
            let diagnostics = vec![error("the module refuses plans", None)];
            return Ok(pb::plan_resource_change::Response {
                diagnostics,
                ..Default::default()
            });
        }
        let prior = decode(&req.prior_state, &ty)?;
        let proposed = decode(&req.proposed_new_state, &ty)?;
        if proposed.is_null() {
            return Ok(pb::plan_resource_change::Response {
                planned_state: encode(&Value::Null, &ty),
                ..Default::default()
            });
        }
        let Value::Object(mut planned) = proposed.clone() else {
            return Err(RpcStatus::with_message(
                RpcStatusCode::INVALID_ARGUMENT,
                "an object is required".into(),
            ));
        };
        let mut requires_replace = vec![];
        let same = |name: &str| prior.attr(name) == proposed.attr(name);
        if prior.is_null() || !same("path") {
            let not_null = Refinements {
                not_null: true,
                ..Default::default()
            };
            planned.insert("id".into(), Value::Unknown(not_null.clone()));
            planned.insert(
                "size".into(),
                Value::Unknown(Refinements {
                    number_lower: Some((Number::from(0), true)),
                    ..not_null
                }),
            );
            if !prior.is_null() {
                requires_replace.push(pb::AttributePath {
                    steps: vec![pb::attribute_path::Step {
                        selector: Some(pb::attribute_path::step::Selector::AttributeName(
                            "path".into(),
                        )),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
            }
        } else if !same("content") {
            planned.insert("size".into(), Value::unknown());
        }
        Ok(pb::plan_resource_change::Response {
            planned_state: encode(&Value::Object(planned), &ty),
            requires_replace,
            planned_private: b"planned".to_vec(),
            ..Default::default()
        })
    }

    fn apply_resource_change(
        &self,
        _: &CallContext,
        req: pb::apply_resource_change::Request,
    ) -> Result<pb::apply_resource_change::Response, RpcStatus> {
        let ty = file_type();
        let prior = decode(&req.prior_state, &ty)?;
        let planned = decode(&req.planned_state, &ty)?;
        if planned.is_null() {
            if let Some(path) = text(&prior, "path") {
                let _ = std::fs::remove_file(path);
            }
            return Ok(pb::apply_resource_change::Response {
                new_state: encode(&Value::Null, &ty),
                ..Default::default()
            });
        }
        let path = text(&planned, "path").unwrap_or_default();
        let content = text(&planned, "content").unwrap_or_default();
        if let Err(e) = std::fs::write(path, content) {
            return Ok(pb::apply_resource_change::Response {
                new_state: encode(&prior, &ty),
                diagnostics: vec![error(&format!("writing {path}: {e}"), Some("path"))],
                ..Default::default()
            });
        }
        let state = read_file(path, planned.attr("tags").cloned().unwrap_or(Value::Null));
        Ok(pb::apply_resource_change::Response {
            new_state: encode(&state, &ty),
            private: req.planned_private,
            ..Default::default()
        })
    }

    fn import_resource_state(
        &self,
        _: &CallContext,
        req: pb::import_resource_state::Request,
    ) -> Result<pb::import_resource_state::Response, RpcStatus> {
        let state = read_file(&req.id, Value::Null);
        if state.is_null() {
            return Ok(pb::import_resource_state::Response {
                diagnostics: vec![error(&format!("no file at {:?}", req.id), None)],
                ..Default::default()
            });
        }
        let imported = pb::import_resource_state::ImportedResource {
            type_name: req.type_name,
            state: encode(&state, &file_type()),
            ..Default::default()
        };
        Ok(pb::import_resource_state::Response {
            imported_resources: vec![imported],
            ..Default::default()
        })
    }

    fn read_data_source(
        &self,
        _: &CallContext,
        req: pb::read_data_source::Request,
    ) -> Result<pb::read_data_source::Response, RpcStatus> {
        let config = decode(&req.config, &info_type())?;
        let path = text(&config, "path").unwrap_or_default();
        let meta = std::fs::metadata(path);
        let state = Value::object([
            ("path", Value::from(path)),
            ("exists", Value::from(meta.is_ok())),
            (
                "size",
                meta.map(|m| Value::from(m.len() as i64))
                    .unwrap_or(Value::Null),
            ),
        ]);
        Ok(pb::read_data_source::Response {
            state: encode(&state, &info_type()),
            ..Default::default()
        })
    }

    fn call_function(
        &self,
        _: &CallContext,
        req: pb::call_function::Request,
    ) -> Result<pb::call_function::Response, RpcStatus> {
        let arg = req
            .arguments
            .first()
            .map(|a| Value::from_msgpack(&a.msgpack, &Type::String));
        match arg {
            Some(Ok(Value::String(s))) if !s.is_empty() => {
                let reversed: String = s.chars().rev().collect();
                Ok(pb::call_function::Response {
                    result: encode(&Value::from(reversed), &Type::String),
                    ..Default::default()
                })
            }
            _ => Ok(pb::call_function::Response {
                error: MessageField::some(pb::FunctionError {
                    text: "a non-empty string is required".into(),
                    function_argument: Some(0),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
    }

    fn get_resource_identity_schemas(
        &self,
        _: &CallContext,
        _: pb::get_resource_identity_schemas::Request,
    ) -> Result<pb::get_resource_identity_schemas::Response, RpcStatus> {
        let path = pb::resource_identity_schema::IdentityAttribute {
            name: "path".into(),
            type_: b"\"string\"".to_vec(),
            required_for_import: true,
            ..Default::default()
        };
        let schema = pb::ResourceIdentitySchema {
            identity_attributes: vec![path],
            ..Default::default()
        };
        Ok(pb::get_resource_identity_schemas::Response {
            identity_schemas: [("rust_file".to_owned(), schema)].into(),
            ..Default::default()
        })
    }

    fn list_resource(
        &self,
        _: &CallContext,
        req: pb::list_resource::Request,
        mut sink: ReplySink<pb::list_resource::Event>,
    ) -> Result<(), RpcStatus> {
        let config = decode(&req.config, &Type::object([("dir", Type::String)]))?;
        let dir = text(&config, "dir").unwrap_or_default().to_owned();
        let mut paths: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| Some(e.ok()?.path().to_str()?.to_owned()))
                .collect(),
            Err(e) => {
                let event = pb::list_resource::Event {
                    diagnostic: vec![error(&format!("reading {dir}: {e}"), Some("dir"))],
                    ..Default::default()
                };
                let _ = sink.send(event);
                return Ok(());
            }
        };
        paths.sort();
        for path in paths
            .into_iter()
            .take(usize::try_from(req.limit).unwrap_or(0))
        {
            let identity = Value::object([("path", Value::from(path.as_str()))]);
            let event = pb::list_resource::Event {
                identity: MessageField::some(pb::ResourceIdentityData {
                    identity_data: encode(&identity, &Type::object([("path", Type::String)])),
                    ..Default::default()
                }),
                display_name: path.rsplit('/').next().unwrap_or_default().to_owned(),
                resource_object: if req.include_resource_object {
                    encode(&read_file(&path, Value::Null), &file_type())
                } else {
                    MessageField::none()
                },
                ..Default::default()
            };
            if sink.send(event).is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    fn open_ephemeral_resource(
        &self,
        _: &CallContext,
        req: pb::open_ephemeral_resource::Request,
    ) -> Result<pb::open_ephemeral_resource::Response, RpcStatus> {
        let ty = Type::object([("name", Type::String), ("token", Type::String)]);
        let config = decode(&req.config, &ty)?;
        let name = text(&config, "name").unwrap_or_default();
        let result = Value::object([
            ("name", Value::from(name)),
            ("token", Value::from(format!("token-for-{name}"))),
        ]);
        Ok(pb::open_ephemeral_resource::Response {
            result: encode(&result, &ty),
            private: Some(format!("lease:{name}:0").into_bytes()),
            renew_at: MessageField::some(protobuf::well_known_types::timestamp::Timestamp {
                seconds: 4_102_444_800,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn renew_ephemeral_resource(
        &self,
        _: &CallContext,
        req: pb::renew_ephemeral_resource::Request,
    ) -> Result<pb::renew_ephemeral_resource::Response, RpcStatus> {
        // lease:NAME:N becomes lease:NAME:N+1; anything else is refused.
        let lease = String::from_utf8(req.private.unwrap_or_default()).unwrap_or_default();
        let renewed = lease
            .rsplit_once(':')
            .and_then(|(head, n)| Some(format!("{head}:{}", n.parse::<u32>().ok()? + 1)));
        match renewed {
            Some(private) if lease.starts_with("lease:") => {
                Ok(pb::renew_ephemeral_resource::Response {
                    private: Some(private.into_bytes()),
                    renew_at: MessageField::some(
                        protobuf::well_known_types::timestamp::Timestamp {
                            seconds: 4_102_448_400,
                            ..Default::default()
                        },
                    ),
                    ..Default::default()
                })
            }
            _ => Ok(pb::renew_ephemeral_resource::Response {
                diagnostics: vec![error(&format!("not a lease: {lease:?}"), None)],
                ..Default::default()
            }),
        }
    }

    fn close_ephemeral_resource(
        &self,
        _: &CallContext,
        req: pb::close_ephemeral_resource::Request,
    ) -> Result<pb::close_ephemeral_resource::Response, RpcStatus> {
        let lease = String::from_utf8(req.private.unwrap_or_default()).unwrap_or_default();
        let diagnostics = if lease.starts_with("lease:") {
            vec![]
        } else {
            vec![error("closing something never opened", None)]
        };
        Ok(pb::close_ephemeral_resource::Response {
            diagnostics,
            ..Default::default()
        })
    }

    fn move_resource_state(
        &self,
        _: &CallContext,
        req: pb::move_resource_state::Request,
    ) -> Result<pb::move_resource_state::Response, RpcStatus> {
        if req.source_type_name != "legacy_file" || req.target_type_name != "rust_file" {
            let why = format!(
                "cannot move {} to {}",
                req.source_type_name, req.target_type_name
            );
            return Ok(pb::move_resource_state::Response {
                diagnostics: vec![error(&why, None)],
                ..Default::default()
            });
        }
        let legacy = Type::object([("filename", Type::String), ("body", Type::String)]);
        let raw = std::str::from_utf8(&req.source_state.json).unwrap_or_default();
        let old = Value::from_json(raw, &legacy)
            .map_err(|e| RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, e.to_string()))?;
        let path = text(&old, "filename").unwrap_or_default();
        let body = text(&old, "body").unwrap_or_default();
        let state = Value::object([
            ("id", Value::from(path)),
            ("path", Value::from(path)),
            ("content", Value::from(body)),
            ("size", Value::from(body.len() as i64)),
            ("tags", Value::Null),
        ]);
        Ok(pb::move_resource_state::Response {
            target_state: encode(&state, &file_type()),
            target_private: req.source_private,
            ..Default::default()
        })
    }

    fn stop_provider(
        &self,
        _: &CallContext,
        _: pb::stop_provider::Request,
    ) -> Result<pb::stop_provider::Response, RpcStatus> {
        Ok(Default::default())
    }
}

fn main() {
    let served = PluginServer::new(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
        .versions([6])
        .serve(|_| vec![create_provider(RustProvider)]);
    if let Err(e) = served {
        eprintln!("rust provider: {e}");
        std::process::exit(1);
    }
}
