//! A running provider: one synchronous API over protocols 5 and 6.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use rpcplugin::{ClientConfig, RpcPluginClient};

use crate::convert::{check, v5, v6};
use crate::cty::{Type, Value};
use crate::diagnostics::Diagnostic;
use crate::error::{Error, ErrorKind, Result};
use crate::proto::{tfplugin5, tfplugin5_grpc, tfplugin6, tfplugin6_grpc};
use crate::schema::{Function, Schema};

/// The handshake cookie every Terraform provider checks.
pub const MAGIC_COOKIE_KEY: &str = "TF_PLUGIN_MAGIC_COOKIE";
/// Its value.
pub const MAGIC_COOKIE_VALUE: &str =
    "d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2";

/// What the provider says it can do (from its schema response).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerCapabilities {
    /// It wants `PlanResourceChange` for destroys too (else a destroy plans null without a call).
    pub plan_destroy: bool,
    /// Its schema may be cached across processes (else it is fetched by every new process).
    pub get_provider_schema_optional: bool,
    /// It implements `MoveResourceState`.
    pub move_resource_state: bool,
    /// It implements `GenerateResourceConfig`.
    pub generate_resource_config: bool,
}

/// What this client tells the provider it can handle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientCapabilities {
    /// The provider may defer a change instead of failing on unknown configuration.
    pub deferral_allowed: bool,
    /// The configuration may set write-only attributes.
    pub write_only_attributes_allowed: bool,
}

/// Why a provider deferred a change (only when [`ClientCapabilities::deferral_allowed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deferred {
    /// No reason given.
    Unknown,
    /// The resource's configuration has unknown values the provider needs.
    ResourceConfigUnknown,
    /// The provider's configuration has unknown values it needs.
    ProviderConfigUnknown,
    /// Something the change needs does not exist yet.
    AbsentPrerequisite,
}

/// Everything a provider's schema response holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProviderSchema {
    /// The `provider` block's configuration.
    pub provider: Schema,
    /// The `provider_meta` block, if the provider has one.
    pub provider_meta: Option<Schema>,
    /// Managed resource types.
    pub resources: BTreeMap<String, Schema>,
    /// Data source types.
    pub data_sources: BTreeMap<String, Schema>,
    /// Ephemeral resource types.
    pub ephemeral_resources: BTreeMap<String, Schema>,
    /// List resource types.
    pub list_resources: BTreeMap<String, Schema>,
    /// Provider-defined functions.
    pub functions: BTreeMap<String, Function>,
    /// What the provider can do.
    pub server_capabilities: ServerCapabilities,
    /// Warnings the schema call returned.
    pub warnings: Vec<Diagnostic>,
}

/// A planned change (`PlanResourceChange`).
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedChange {
    /// The state the provider plans; computed attributes it cannot know yet are unknown.
    pub planned_state: Value,
    /// Opaque bytes to hand back to apply.
    pub planned_private: Vec<u8>,
    /// Attribute paths whose change forces a replacement.
    pub requires_replace: Vec<crate::cty::Path>,
    /// Set when the provider deferred the change.
    pub deferred: Option<Deferred>,
    /// Warnings.
    pub warnings: Vec<Diagnostic>,
    /// The provider is an SDKv2 one, whose plans core checks less strictly (only warnings).
    pub legacy_type_system: bool,
}

/// An applied change (`ApplyResourceChange`).
#[derive(Clone, Debug, PartialEq)]
pub struct AppliedChange {
    /// The new state (null after a destroy); wholly known.
    pub new_state: Value,
    /// Opaque bytes to keep with the state.
    pub private: Vec<u8>,
    /// Warnings.
    pub warnings: Vec<Diagnostic>,
    /// The provider is an SDKv2 one, whose results core checks less strictly.
    pub legacy_type_system: bool,
}

/// A resource as read back (`ReadResource`): null if it no longer exists.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadState {
    /// The refreshed state, or null when the object is gone.
    pub new_state: Value,
    /// Opaque bytes to keep with the state.
    pub private: Vec<u8>,
    /// Set when the provider deferred the read.
    pub deferred: Option<Deferred>,
    /// Warnings.
    pub warnings: Vec<Diagnostic>,
}

/// What an import found (`ImportResourceState`).
#[derive(Clone, Debug, PartialEq)]
pub struct Imported {
    /// The objects (one, usually; some providers import several).
    pub resources: Vec<ImportedResource>,
    /// Set when the provider deferred the import.
    pub deferred: Option<Deferred>,
    /// Warnings.
    pub warnings: Vec<Diagnostic>,
}

/// A stored state upgraded to the current schema (`UpgradeResourceState`).
#[derive(Clone, Debug, PartialEq)]
pub struct UpgradedState {
    /// The state, typed by the current schema.
    pub state: Value,
    /// Warnings.
    pub warnings: Vec<Diagnostic>,
}

/// A data source read (`ReadDataSource`).
#[derive(Clone, Debug, PartialEq)]
pub struct DataSourceState {
    /// What the data source holds.
    pub state: Value,
    /// Set when the provider deferred the read.
    pub deferred: Option<Deferred>,
    /// Warnings.
    pub warnings: Vec<Diagnostic>,
}

/// One object an import found (`ImportResourceState`).
#[derive(Clone, Debug, PartialEq)]
pub struct ImportedResource {
    /// Its resource type.
    pub type_name: String,
    /// Its state (to be read with `read_resource` next, as Terraform does).
    pub state: Value,
    /// Opaque bytes to keep with the state.
    pub private: Vec<u8>,
}

enum Rpc {
    V5(tfplugin5_grpc::ProviderClient),
    V6(tfplugin6_grpc::ProviderClient),
}

/// A running Terraform or OpenTofu provider, speaking protocol 5 or 6 (negotiated).
///
/// Every call blocks. The schema is fetched when the provider starts (or taken from the cache
/// of this process when the provider allows it, as Terraform does), and every value is encoded
/// with the type the schema implies. Dropping the provider shuts it down (`close`).
pub struct Provider {
    plugin: RpcPluginClient,
    rpc: Rpc,
    schema: Arc<ProviderSchema>,
    capabilities: ClientCapabilities,
    identity_types: OnceLock<BTreeMap<String, Type>>,
    provider_meta: Value,
}

/// A provider binary: its path, length and modification time.
type BinaryKey = (PathBuf, u64, std::time::SystemTime);
type SchemaCache = Mutex<HashMap<BinaryKey, Arc<ProviderSchema>>>;

/// Schemas of providers that allow it, by binary.
fn schema_cache() -> &'static SchemaCache {
    static CACHE: OnceLock<SchemaCache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

fn binary_key(program: &OsString) -> Option<BinaryKey> {
    let path = std::fs::canonicalize(program).ok()?;
    let meta = std::fs::metadata(&path).ok()?;
    Some((path, meta.len(), meta.modified().ok()?))
}

impl Provider {
    /// Launches a provider binary (`command[0]`, with its arguments) with rpcplugin's defaults:
    /// auto mTLS, protocols 5 and 6 offered, the Terraform magic cookie.
    pub fn launch<I, S>(command: I) -> Result<Provider>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Provider::launch_with(command, ClientConfig::new())
    }

    /// Launches with your own [`ClientConfig`] (timeouts, logs, environment); the cookie and
    /// the protocol versions are set here.
    pub fn launch_with<I, S>(command: I, config: ClientConfig) -> Result<Provider>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let command: Vec<OsString> = command.into_iter().map(Into::into).collect();
        let key = command.first().and_then(binary_key);
        let config = config
            .magic_cookie(MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE)
            .protocol_versions([5, 6]);
        let plugin = RpcPluginClient::new(command, config);
        plugin
            .start()
            .map_err(|e| Error::plugin("starting the provider", e))?;
        Provider::over(plugin, key)
    }

    /// Drives a plugin you started yourself (it must have negotiated protocol 5 or 6).
    pub fn from_plugin(plugin: RpcPluginClient) -> Result<Provider> {
        Provider::over(plugin, None)
    }

    fn over(plugin: RpcPluginClient, key: Option<BinaryKey>) -> Result<Provider> {
        let channel = plugin
            .grpc_channel()
            .map_err(|e| Error::plugin("the provider's channel", e))?;
        let rpc = match plugin.negotiated_version() {
            Some(5) => Rpc::V5(tfplugin5_grpc::ProviderClient::new(channel)),
            Some(6) => Rpc::V6(tfplugin6_grpc::ProviderClient::new(channel)),
            other => {
                return Err(Error::new(
                    ErrorKind::Plugin,
                    format!(
                        "the plugin speaks protocol {other:?}; a Terraform provider speaks 5 or 6"
                    ),
                ))
            }
        };
        let cached = key.as_ref().and_then(|k| {
            schema_cache()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(k)
                .cloned()
        });
        let schema = match cached {
            Some(schema) => schema,
            None => {
                let schema = Arc::new(fetch_schema(&rpc)?);
                match (key, schema.server_capabilities.get_provider_schema_optional) {
                    // The first schema stored wins, so every provider of one binary shares it.
                    (Some(key), true) => schema_cache()
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(key)
                        .or_insert(schema)
                        .clone(),
                    _ => schema,
                }
            }
        };
        Ok(Provider {
            plugin,
            rpc,
            schema,
            capabilities: ClientCapabilities::default(),
            identity_types: OnceLock::new(),
            provider_meta: Value::Null,
        })
    }

    /// Sets what this client tells the provider it can handle (default: nothing).
    pub fn with_client_capabilities(mut self, capabilities: ClientCapabilities) -> Provider {
        self.capabilities = capabilities;
        self
    }

    /// Sets the module's `provider_meta` block for this provider (default null). Sent with
    /// plan, apply, read and data source reads when the provider has a `provider_meta` schema,
    /// as core does.
    pub fn with_provider_meta(mut self, meta: Value) -> Provider {
        self.provider_meta = meta;
        self
    }

    /// The `provider_meta` field of a request: the meta value encoded with its schema, or
    /// nothing when the provider has no `provider_meta` schema.
    fn meta<M: protobuf::Message>(
        &self,
        call: &str,
        encode: impl Fn(&Value, &Type) -> Result<protobuf::MessageField<M>>,
    ) -> Result<protobuf::MessageField<M>> {
        match &self.schema.provider_meta {
            Some(schema) => encode(&self.provider_meta, &schema.block.implied_type())
                .map_err(|e| Error::new(ErrorKind::Value, format!("{call}: provider_meta: {e}"))),
            None => Ok(protobuf::MessageField::none()),
        }
    }

    /// The protocol the provider speaks: 5 or 6.
    pub fn protocol_version(&self) -> u32 {
        match self.rpc {
            Rpc::V5(_) => 5,
            Rpc::V6(_) => 6,
        }
    }

    /// The provider's schema.
    pub fn schema(&self) -> &ProviderSchema {
        &self.schema
    }

    /// The plugin process (pid, exit status, logs).
    pub fn plugin(&self) -> &RpcPluginClient {
        &self.plugin
    }

    fn resource(&self, type_name: &str) -> Result<&Schema> {
        self.schema
            .resources
            .get(type_name)
            .ok_or_else(|| unknown_type("resource", type_name, &self.schema.resources))
    }

    fn data_source(&self, type_name: &str) -> Result<&Schema> {
        self.schema
            .data_sources
            .get(type_name)
            .ok_or_else(|| unknown_type("data source", type_name, &self.schema.data_sources))
    }

    /// Shuts the provider down: go-plugin's Shutdown, a grace period, then a kill; bounded.
    pub fn close(self) {
        self.plugin.close();
    }
}

fn unknown_type(kind: &str, name: &str, known: &BTreeMap<String, Schema>) -> Error {
    let names: Vec<&str> = known.keys().map(String::as_str).collect();
    Error::new(
        ErrorKind::Schema,
        format!(
            "the provider has no {kind} type {name:?}; it has {}",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        ),
    )
}

impl ProviderSchema {
    /// Asks a provider for its schema over a channel of your own (`GetProviderSchema`; v5
    /// `GetSchema`), for tools that talk to a provider without a [`Provider`].
    pub fn fetch(channel: grpcio::Channel, protocol_version: u32) -> Result<ProviderSchema> {
        match protocol_version {
            5 => fetch_schema(&Rpc::V5(tfplugin5_grpc::ProviderClient::new(channel))),
            6 => fetch_schema(&Rpc::V6(tfplugin6_grpc::ProviderClient::new(channel))),
            v => Err(Error::new(
                ErrorKind::Plugin,
                format!("protocol {v}: a Terraform provider speaks 5 or 6"),
            )),
        }
    }
}

fn fetch_schema(rpc: &Rpc) -> Result<ProviderSchema> {
    macro_rules! convert {
        ($conv:ident, $resp:expr) => {{
            let r = $resp;
            let warnings = check("GetProviderSchema", $conv::diagnostics(&r.diagnostics))?;
            ProviderSchema {
                provider: r
                    .provider
                    .as_ref()
                    .map(|s| $conv::schema(s, "the provider schema"))
                    .transpose()?
                    .unwrap_or_default(),
                provider_meta: r
                    .provider_meta
                    .as_ref()
                    .map(|s| $conv::schema(s, "the provider_meta schema"))
                    .transpose()?,
                resources: $conv::schemas(&r.resource_schemas, "resource")?,
                data_sources: $conv::schemas(&r.data_source_schemas, "data source")?,
                ephemeral_resources: $conv::schemas(
                    &r.ephemeral_resource_schemas,
                    "ephemeral resource",
                )?,
                list_resources: $conv::schemas(&r.list_resource_schemas, "list resource")?,
                functions: r
                    .functions
                    .iter()
                    .map(|(k, f)| Ok((k.clone(), $conv::function(f, &format!("function {k:?}"))?)))
                    .collect::<Result<_>>()?,
                server_capabilities: $conv::server_capabilities(&r.server_capabilities),
                warnings,
            }
        }};
    }
    let call = |e| Error::plugin("GetProviderSchema", e);
    Ok(match rpc {
        Rpc::V5(c) => convert!(v5, c.get_schema(&Default::default()).map_err(call)?),
        Rpc::V6(c) => convert!(
            v6,
            c.get_provider_schema(&Default::default()).map_err(call)?
        ),
    })
}

/// One body for both protocols: `$pb` names the messages, `$conv` the converters, `$c` the stub.
macro_rules! each_protocol {
    ($self:expr, |$c:ident, $pb:ident, $conv:ident| $body:expr) => {
        match &$self.rpc {
            Rpc::V5($c) => {
                use tfplugin5 as $pb;
                use v5 as $conv;
                $body
            }
            Rpc::V6($c) => {
                use tfplugin6 as $pb;
                use v6 as $conv;
                $body
            }
        }
    };
}

impl Provider {
    /// Validates the `provider` block's configuration (v5 `PrepareProviderConfig`, v6
    /// `ValidateProviderConfig`). Returns the warnings.
    pub fn validate_provider_config(&self, config: &Value) -> Result<Vec<Diagnostic>> {
        let ty = self.schema.provider.block.implied_type();
        let call = "ValidateProviderConfig";
        let e = |e| Error::plugin(call, e);
        match &self.rpc {
            Rpc::V5(c) => {
                let req = tfplugin5::prepare_provider_config::Request {
                    config: v5::to_dv(config, &ty, call)?,
                    ..Default::default()
                };
                check(
                    call,
                    v5::diagnostics(&c.prepare_provider_config(&req).map_err(e)?.diagnostics),
                )
            }
            Rpc::V6(c) => {
                let req = tfplugin6::validate_provider_config::Request {
                    config: v6::to_dv(config, &ty, call)?,
                    ..Default::default()
                };
                check(
                    call,
                    v6::diagnostics(&c.validate_provider_config(&req).map_err(e)?.diagnostics),
                )
            }
        }
    }

    /// Configures the provider (v5 `Configure`, v6 `ConfigureProvider`); `terraform_version`
    /// is what the provider is told core is ("1.10.7"). Returns the warnings.
    pub fn configure(&self, terraform_version: &str, config: &Value) -> Result<Vec<Diagnostic>> {
        let ty = self.schema.provider.block.implied_type();
        let call = "ConfigureProvider";
        let e = |e| Error::plugin(call, e);
        let caps = self.capabilities;
        match &self.rpc {
            Rpc::V5(c) => {
                let req = tfplugin5::configure::Request {
                    terraform_version: terraform_version.to_owned(),
                    config: v5::to_dv(config, &ty, call)?,
                    client_capabilities: client_caps(caps),
                    ..Default::default()
                };
                check(
                    call,
                    v5::diagnostics(&c.configure(&req).map_err(e)?.diagnostics),
                )
            }
            Rpc::V6(c) => {
                let req = tfplugin6::configure_provider::Request {
                    terraform_version: terraform_version.to_owned(),
                    config: v6::to_dv(config, &ty, call)?,
                    client_capabilities: client_caps(caps),
                    ..Default::default()
                };
                check(
                    call,
                    v6::diagnostics(&c.configure_provider(&req).map_err(e)?.diagnostics),
                )
            }
        }
    }

    /// Validates a resource's configuration (v5 `ValidateResourceTypeConfig`). Returns the
    /// warnings; errors carry the attribute path they are about.
    pub fn validate_resource_config(
        &self,
        type_name: &str,
        config: &Value,
    ) -> Result<Vec<Diagnostic>> {
        let ty = self.resource(type_name)?.block.implied_type();
        let call = "ValidateResourceConfig";
        let e = |e| Error::plugin(call, e);
        match &self.rpc {
            Rpc::V5(c) => {
                let req = tfplugin5::validate_resource_type_config::Request {
                    type_name: type_name.to_owned(),
                    config: v5::to_dv(config, &ty, call)?,
                    client_capabilities: client_caps(self.capabilities),
                    ..Default::default()
                };
                check(
                    call,
                    v5::diagnostics(
                        &c.validate_resource_type_config(&req)
                            .map_err(e)?
                            .diagnostics,
                    ),
                )
            }
            Rpc::V6(c) => {
                let req = tfplugin6::validate_resource_config::Request {
                    type_name: type_name.to_owned(),
                    config: v6::to_dv(config, &ty, call)?,
                    client_capabilities: client_caps(self.capabilities),
                    ..Default::default()
                };
                check(
                    call,
                    v6::diagnostics(&c.validate_resource_config(&req).map_err(e)?.diagnostics),
                )
            }
        }
    }

    /// Validates a data source's configuration (v5 `ValidateDataSourceConfig`).
    pub fn validate_data_source_config(
        &self,
        type_name: &str,
        config: &Value,
    ) -> Result<Vec<Diagnostic>> {
        let ty = self.data_source(type_name)?.block.implied_type();
        let call = "ValidateDataResourceConfig";
        let e = |e| Error::plugin(call, e);
        match &self.rpc {
            Rpc::V5(c) => {
                let req = tfplugin5::validate_data_source_config::Request {
                    type_name: type_name.to_owned(),
                    config: v5::to_dv(config, &ty, call)?,
                    ..Default::default()
                };
                check(
                    call,
                    v5::diagnostics(&c.validate_data_source_config(&req).map_err(e)?.diagnostics),
                )
            }
            Rpc::V6(c) => {
                let req = tfplugin6::validate_data_resource_config::Request {
                    type_name: type_name.to_owned(),
                    config: v6::to_dv(config, &ty, call)?,
                    ..Default::default()
                };
                check(
                    call,
                    v6::diagnostics(
                        &c.validate_data_resource_config(&req)
                            .map_err(e)?
                            .diagnostics,
                    ),
                )
            }
        }
    }

    /// Plans a change, as Terraform core does: `prior` is the current state (null to create),
    /// `config` the configuration (null to destroy). The proposed new state is computed here
    /// ([`crate::schema::Block::proposed_new_state`]). A destroy of a provider without
    /// `plan_destroy` plans null with no call, as core does.
    pub fn plan_resource_change(
        &self,
        type_name: &str,
        prior: &Value,
        config: &Value,
        prior_private: &[u8],
    ) -> Result<PlannedChange> {
        let schema = self.resource(type_name)?;
        let ty = schema.block.implied_type();
        let proposed = schema.block.proposed_new_state(prior, config);
        if proposed.is_null() && !self.schema.server_capabilities.plan_destroy {
            return Ok(PlannedChange {
                planned_state: Value::Null,
                planned_private: prior_private.to_vec(),
                requires_replace: vec![],
                deferred: None,
                warnings: vec![],
                legacy_type_system: false,
            });
        }
        let call = "PlanResourceChange";
        let e = |e| Error::plugin(call, e);
        let caps = self.capabilities;
        each_protocol!(self, |c, pb, conv| {
            let req = pb::plan_resource_change::Request {
                type_name: type_name.to_owned(),
                prior_state: conv::to_dv(prior, &ty, call)?,
                proposed_new_state: conv::to_dv(&proposed, &ty, call)?,
                config: conv::to_dv(config, &ty, call)?,
                prior_private: prior_private.to_vec(),
                provider_meta: self.meta(call, |v, t| conv::to_dv(v, t, call))?,
                client_capabilities: client_caps(caps),
                ..Default::default()
            };
            let r = c.plan_resource_change(&req).map_err(e)?;
            let warnings = check(call, conv::diagnostics(&r.diagnostics))?;
            Ok(PlannedChange {
                planned_state: conv::dv(&r.planned_state, &ty, call)?,
                planned_private: r.planned_private.clone(),
                requires_replace: r
                    .requires_replace
                    .iter()
                    .filter_map(conv::attribute_path)
                    .collect(),
                deferred: conv::deferred(&r.deferred),
                warnings,
                legacy_type_system: r.legacy_type_system,
            })
        })
    }

    /// Applies a planned change: `planned` from [`Provider::plan_resource_change`] (null planned
    /// state to destroy), with the same prior and configuration. If the provider fails, the
    /// error holds the state it still returned ([`Error::partial_state`]).
    pub fn apply_resource_change(
        &self,
        type_name: &str,
        prior: &Value,
        planned: &PlannedChange,
        config: &Value,
    ) -> Result<AppliedChange> {
        let ty = self.resource(type_name)?.block.implied_type();
        let call = "ApplyResourceChange";
        let e = |e| Error::plugin(call, e);
        each_protocol!(self, |c, pb, conv| {
            let req = pb::apply_resource_change::Request {
                type_name: type_name.to_owned(),
                prior_state: conv::to_dv(prior, &ty, call)?,
                planned_state: conv::to_dv(&planned.planned_state, &ty, call)?,
                config: conv::to_dv(config, &ty, call)?,
                planned_private: planned.planned_private.clone(),
                provider_meta: self.meta(call, |v, t| conv::to_dv(v, t, call))?,
                ..Default::default()
            };
            let r = c.apply_resource_change(&req).map_err(e)?;
            // The provider's errors first: a value that does not decode must not hide them.
            let decoded = conv::dv(&r.new_state, &ty, call);
            let diagnostics = conv::diagnostics(&r.diagnostics);
            if diagnostics.iter().any(Diagnostic::is_error) {
                let err = Error::from_diagnostics(call, diagnostics);
                return Err(match decoded {
                    Ok(state) => err.with_partial_state(state.unknown_as_null()),
                    Err(_) => err,
                });
            }
            let new_state = decoded?;
            if !new_state.is_wholly_known() {
                // As core does: an error, and the state kept with the unknowns made null, since
                // the object may well exist.
                return Err(Error::new(
                    ErrorKind::Value,
                    format!("{call}: the provider left unknown values in the new state of {type_name}: {new_state:?}"),
                )
                .with_partial_state(new_state.unknown_as_null()));
            }
            Ok(AppliedChange {
                new_state,
                private: r.private.clone(),
                warnings: diagnostics,
                legacy_type_system: r.legacy_type_system,
            })
        })
    }

    /// Reads a resource's current state back from the real world (`ReadResource`); the new state
    /// is null if the object is gone.
    pub fn read_resource(
        &self,
        type_name: &str,
        current: &Value,
        private: &[u8],
    ) -> Result<ReadState> {
        let ty = self.resource(type_name)?.block.implied_type();
        let call = "ReadResource";
        let e = |e| Error::plugin(call, e);
        let caps = self.capabilities;
        each_protocol!(self, |c, pb, conv| {
            let req = pb::read_resource::Request {
                type_name: type_name.to_owned(),
                current_state: conv::to_dv(current, &ty, call)?,
                private: private.to_vec(),
                provider_meta: self.meta(call, |v, t| conv::to_dv(v, t, call))?,
                client_capabilities: client_caps(caps),
                ..Default::default()
            };
            let r = c.read_resource(&req).map_err(e)?;
            let warnings = check(call, conv::diagnostics(&r.diagnostics))?;
            Ok(ReadState {
                new_state: conv::dv(&r.new_state, &ty, call)?,
                private: r.private.clone(),
                deferred: conv::deferred(&r.deferred),
                warnings,
            })
        })
    }

    /// Imports existing objects by the provider's import id (`ImportResourceState`).
    pub fn import_resource_state(&self, type_name: &str, id: &str) -> Result<Imported> {
        self.resource(type_name)?;
        let call = "ImportResourceState";
        let e = |e| Error::plugin(call, e);
        let caps = self.capabilities;
        each_protocol!(self, |c, pb, conv| {
            let req = pb::import_resource_state::Request {
                type_name: type_name.to_owned(),
                id: id.to_owned(),
                client_capabilities: client_caps(caps),
                ..Default::default()
            };
            let r = c.import_resource_state(&req).map_err(e)?;
            let warnings = check(call, conv::diagnostics(&r.diagnostics))?;
            let resources = r
                .imported_resources
                .iter()
                .map(|i| {
                    let ty = self.resource(&i.type_name)?.block.implied_type();
                    Ok(ImportedResource {
                        type_name: i.type_name.clone(),
                        state: conv::dv(&i.state, &ty, call)?,
                        private: i.private.clone(),
                    })
                })
                .collect::<Result<_>>()?;
            Ok(Imported {
                resources,
                deferred: conv::deferred(&r.deferred),
                warnings,
            })
        })
    }

    /// Upgrades a stored state to the current schema (`UpgradeResourceState`): `version` is the
    /// schema version the state was written with, `raw_json` the state's `attributes` JSON as
    /// stored. Terraform calls this on every stored state, even at the current version.
    pub fn upgrade_resource_state(
        &self,
        type_name: &str,
        version: i64,
        raw_json: &str,
    ) -> Result<UpgradedState> {
        let ty = self.resource(type_name)?.block.implied_type();
        let call = "UpgradeResourceState";
        let e = |e| Error::plugin(call, e);
        each_protocol!(self, |c, pb, conv| {
            let req = pb::upgrade_resource_state::Request {
                type_name: type_name.to_owned(),
                version,
                raw_state: protobuf::MessageField::some(pb::RawState {
                    json: raw_json.as_bytes().to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let r = c.upgrade_resource_state(&req).map_err(e)?;
            let warnings = check(call, conv::diagnostics(&r.diagnostics))?;
            Ok(UpgradedState {
                state: conv::dv(&r.upgraded_state, &ty, call)?,
                warnings,
            })
        })
    }

    /// Reads a data source (`ReadDataSource`).
    pub fn read_data_source(&self, type_name: &str, config: &Value) -> Result<DataSourceState> {
        let ty = self.data_source(type_name)?.block.implied_type();
        let call = "ReadDataSource";
        let e = |e| Error::plugin(call, e);
        let caps = self.capabilities;
        each_protocol!(self, |c, pb, conv| {
            let req = pb::read_data_source::Request {
                type_name: type_name.to_owned(),
                config: conv::to_dv(config, &ty, call)?,
                provider_meta: self.meta(call, |v, t| conv::to_dv(v, t, call))?,
                client_capabilities: client_caps(caps),
                ..Default::default()
            };
            let r = c.read_data_source(&req).map_err(e)?;
            let warnings = check(call, conv::diagnostics(&r.diagnostics))?;
            Ok(DataSourceState {
                state: conv::dv(&r.state, &ty, call)?,
                deferred: conv::deferred(&r.deferred),
                warnings,
            })
        })
    }

    /// Calls a provider-defined function. Arguments are encoded with the parameter types (the
    /// variadic parameter's for the rest); the result is decoded with the return type.
    pub fn call_function(&self, name: &str, arguments: &[Value]) -> Result<Value> {
        let f = self.schema.functions.get(name).ok_or_else(|| {
            let names: Vec<&str> = self.schema.functions.keys().map(String::as_str).collect();
            Error::new(
                ErrorKind::Schema,
                format!(
                    "the provider has no function {name:?}; it has {}",
                    names.join(", ")
                ),
            )
        })?;
        let call = format!("CallFunction {name}");
        if arguments.len() < f.parameters.len() {
            return Err(Error::new(
                ErrorKind::Function,
                format!(
                    "{call}: takes {} arguments, got {}",
                    f.parameters.len(),
                    arguments.len()
                ),
            ));
        }
        // As core does: an argument that is not wholly known, for a parameter that does not
        // allow unknowns, means no call and an unknown result; a null one, for a parameter that
        // does not allow nulls, is an argument error.
        for (i, arg) in arguments.iter().enumerate() {
            let Some(p) = f.parameters.get(i).or(f.variadic_parameter.as_ref()) else {
                break;
            };
            if !p.allow_unknown_values && !arg.is_wholly_known() {
                return Ok(Value::unknown());
            }
            if !p.allow_null_value && arg.is_null() {
                return Err(Error::function(
                    &call,
                    &format!("argument {:?} must not be null", p.name),
                    Some(i as i64),
                ));
            }
        }
        let types: Vec<Type> = arguments
            .iter()
            .enumerate()
            .map(
                |(i, _)| match (f.parameters.get(i), &f.variadic_parameter) {
                    (Some(p), _) | (None, Some(p)) => Ok(p.ty.without_optional_attributes()),
                    (None, None) => Err(Error::new(
                        ErrorKind::Function,
                        format!(
                            "{call}: takes {} arguments, got {}",
                            f.parameters.len(),
                            arguments.len()
                        ),
                    )),
                },
            )
            .collect::<Result<_>>()?;
        let e = |e| Error::plugin(&call, e);
        each_protocol!(self, |c, pb, conv| {
            let req = pb::call_function::Request {
                name: name.to_owned(),
                arguments: arguments
                    .iter()
                    .zip(&types)
                    .map(|(v, t)| conv::to_dv(v, t, &call).map(|d| d.unwrap()))
                    .collect::<Result<_>>()?,
                ..Default::default()
            };
            let r = c.call_function(&req).map_err(e)?;
            if let Some(err) = r.error.as_ref() {
                return Err(Error::function(&call, &err.text, err.function_argument));
            }
            conv::dv(
                &r.result,
                &f.return_type.without_optional_attributes(),
                &call,
            )
        })
    }

    /// Asks the provider to stop work in flight (v5 `Stop`, v6 `StopProvider`); advisory.
    pub fn stop(&self) -> Result<()> {
        let e = |e| Error::plugin("StopProvider", e);
        let text = match &self.rpc {
            Rpc::V5(c) => c.stop(&Default::default()).map_err(e)?.Error,
            Rpc::V6(c) => c.stop_provider(&Default::default()).map_err(e)?.Error,
        };
        if text.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Plugin,
                format!("StopProvider: {text}"),
            ))
        }
    }
}

/// Client capabilities in whichever protocol's message the context wants.
fn client_caps<M: From<ClientCapabilities> + protobuf::Message>(
    c: ClientCapabilities,
) -> protobuf::MessageField<M> {
    protobuf::MessageField::some(M::from(c))
}

macro_rules! client_capabilities_message {
    ($pb:ident) => {
        impl From<ClientCapabilities> for $pb::ClientCapabilities {
            fn from(c: ClientCapabilities) -> Self {
                $pb::ClientCapabilities {
                    deferral_allowed: c.deferral_allowed,
                    write_only_attributes_allowed: c.write_only_attributes_allowed,
                    ..Default::default()
                }
            }
        }
    };
}

client_capabilities_message!(tfplugin5);
client_capabilities_message!(tfplugin6);

/// An opened ephemeral resource (`OpenEphemeralResource`).
#[derive(Clone, Debug, PartialEq)]
pub struct OpenedEphemeral {
    /// The resource's value (never stored).
    pub result: Value,
    /// Opaque bytes to hand to renew and close.
    pub private: Option<Vec<u8>>,
    /// When to renew it, if it must be renewed.
    pub renew_at: Option<SystemTime>,
    /// Set when the provider deferred the open.
    pub deferred: Option<Deferred>,
    /// Warnings.
    pub warnings: Vec<Diagnostic>,
}

/// A renewed ephemeral resource (`RenewEphemeralResource`).
#[derive(Clone, Debug, PartialEq)]
pub struct RenewedEphemeral {
    /// The new opaque bytes.
    pub private: Option<Vec<u8>>,
    /// When to renew it next, if again.
    pub renew_at: Option<SystemTime>,
    /// Warnings.
    pub warnings: Vec<Diagnostic>,
}

/// A resource state moved from another type (`MoveResourceState`).
#[derive(Clone, Debug, PartialEq)]
pub struct MovedState {
    /// The state as the target type.
    pub target_state: Value,
    /// Opaque bytes to keep with it.
    pub target_private: Vec<u8>,
    /// Warnings.
    pub warnings: Vec<Diagnostic>,
}

/// One resource a list found (`ListResource`).
#[derive(Clone, Debug, PartialEq)]
pub struct ListedResource {
    /// What to call it.
    pub display_name: String,
    /// Its identity, typed by the resource's identity schema (null if the provider has none).
    pub identity: Value,
    /// The whole resource, when asked for with `include_resource_object`.
    pub resource_object: Option<Value>,
    /// Warnings about this one.
    pub warnings: Vec<Diagnostic>,
}

pub(crate) enum Events {
    V5(rpcplugin::rpc::Replies<tfplugin5::list_resource::Event>),
    V6(rpcplugin::rpc::Replies<tfplugin6::list_resource::Event>),
}

/// The resources a `ListResource` call streams back: a blocking iterator; dropping it cancels
/// the call. An event with error diagnostics is an `Err` item, and the iteration goes on.
pub struct ListedResources {
    events: Events,
    object_type: Type,
    identity_type: Type,
}

impl Iterator for ListedResources {
    type Item = Result<ListedResource>;

    fn next(&mut self) -> Option<Result<ListedResource>> {
        let call = "ListResource";
        macro_rules! event {
            ($replies:expr, $conv:ident) => {
                $replies.next().map(|e| {
                    let e = e.map_err(|err| Error::plugin(call, err))?;
                    let warnings = check(call, $conv::diagnostics(&e.diagnostic))?;
                    let identity = match e.identity.as_ref() {
                        Some(id) => $conv::dv(&id.identity_data, &self.identity_type, call)?,
                        None => Value::Null,
                    };
                    let resource_object = match e.resource_object.as_ref() {
                        Some(_) => Some($conv::dv(&e.resource_object, &self.object_type, call)?),
                        None => None,
                    };
                    Ok(ListedResource {
                        display_name: e.display_name.clone(),
                        identity,
                        resource_object,
                        warnings,
                    })
                })
            };
        }
        match &mut self.events {
            Events::V5(r) => event!(r, v5),
            Events::V6(r) => event!(r, v6),
        }
    }
}

fn timestamp(
    t: &protobuf::MessageField<protobuf::well_known_types::timestamp::Timestamp>,
) -> Option<SystemTime> {
    let t = t.as_ref()?;
    // seconds may be negative; nanos (0 to 999 999 999) always count forward from them.
    let whole = Duration::from_secs(t.seconds.unsigned_abs());
    let at = if t.seconds >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(whole)?
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(whole)?
    };
    at.checked_add(Duration::from_nanos(u64::try_from(t.nanos).unwrap_or(0)))
}

impl Provider {
    fn ephemeral(&self, type_name: &str) -> Result<&Schema> {
        self.schema
            .ephemeral_resources
            .get(type_name)
            .ok_or_else(|| {
                unknown_type(
                    "ephemeral resource",
                    type_name,
                    &self.schema.ephemeral_resources,
                )
            })
    }

    /// The identity types of the provider's resources (`GetResourceIdentitySchemas`, asked once;
    /// a provider without the call has none).
    pub fn identity_types(&self) -> Result<&BTreeMap<String, Type>> {
        if let Some(types) = self.identity_types.get() {
            return Ok(types);
        }
        let call = "GetResourceIdentitySchemas";
        macro_rules! fetch {
            ($c:expr, $conv:ident) => {
                match $c.get_resource_identity_schemas(&Default::default()) {
                    Ok(r) => {
                        check(call, $conv::diagnostics(&r.diagnostics))?;
                        r.identity_schemas
                            .iter()
                            .map(|(name, s)| {
                                let attrs = s
                                    .identity_attributes
                                    .iter()
                                    .map(|a| {
                                        Ok((
                                            a.name.clone(),
                                            crate::convert::type_json(&a.type_, call)?,
                                        ))
                                    })
                                    .collect::<Result<Vec<_>>>()?;
                                Ok((name.clone(), Type::object(attrs)))
                            })
                            .collect::<Result<BTreeMap<_, _>>>()?
                    }
                    Err(e) if e.rpc_code() == Some(grpcio::RpcStatusCode::UNIMPLEMENTED) => {
                        BTreeMap::new()
                    }
                    Err(e) => return Err(Error::plugin(call, e)),
                }
            };
        }
        let types = match &self.rpc {
            Rpc::V5(c) => fetch!(c, v5),
            Rpc::V6(c) => fetch!(c, v6),
        };
        Ok(self.identity_types.get_or_init(|| types))
    }

    /// Validates an ephemeral resource's configuration.
    pub fn validate_ephemeral_resource_config(
        &self,
        type_name: &str,
        config: &Value,
    ) -> Result<Vec<Diagnostic>> {
        let ty = self.ephemeral(type_name)?.block.implied_type();
        let call = "ValidateEphemeralResourceConfig";
        let e = |e| Error::plugin(call, e);
        each_protocol!(self, |c, pb, conv| {
            let req = pb::validate_ephemeral_resource_config::Request {
                type_name: type_name.to_owned(),
                config: conv::to_dv(config, &ty, call)?,
                ..Default::default()
            };
            check(
                call,
                conv::diagnostics(
                    &c.validate_ephemeral_resource_config(&req)
                        .map_err(e)?
                        .diagnostics,
                ),
            )
        })
    }

    /// Opens an ephemeral resource: its value exists only until it is closed.
    pub fn open_ephemeral_resource(
        &self,
        type_name: &str,
        config: &Value,
    ) -> Result<OpenedEphemeral> {
        let ty = self.ephemeral(type_name)?.block.implied_type();
        let call = "OpenEphemeralResource";
        let e = |e| Error::plugin(call, e);
        let caps = self.capabilities;
        each_protocol!(self, |c, pb, conv| {
            let req = pb::open_ephemeral_resource::Request {
                type_name: type_name.to_owned(),
                config: conv::to_dv(config, &ty, call)?,
                client_capabilities: client_caps(caps),
                ..Default::default()
            };
            let r = c.open_ephemeral_resource(&req).map_err(e)?;
            let warnings = check(call, conv::diagnostics(&r.diagnostics))?;
            Ok(OpenedEphemeral {
                result: conv::dv(&r.result, &ty, call)?,
                private: r.private.clone(),
                renew_at: timestamp(&r.renew_at),
                deferred: conv::deferred(&r.deferred),
                warnings,
            })
        })
    }

    /// Renews an ephemeral resource with the private bytes of its open (or last renew).
    pub fn renew_ephemeral_resource(
        &self,
        type_name: &str,
        private: Option<&[u8]>,
    ) -> Result<RenewedEphemeral> {
        self.ephemeral(type_name)?;
        let call = "RenewEphemeralResource";
        let e = |e| Error::plugin(call, e);
        each_protocol!(self, |c, pb, conv| {
            let req = pb::renew_ephemeral_resource::Request {
                type_name: type_name.to_owned(),
                private: private.map(<[u8]>::to_vec),
                ..Default::default()
            };
            let r = c.renew_ephemeral_resource(&req).map_err(e)?;
            let warnings = check(call, conv::diagnostics(&r.diagnostics))?;
            Ok(RenewedEphemeral {
                private: r.private.clone(),
                renew_at: timestamp(&r.renew_at),
                warnings,
            })
        })
    }

    /// Closes an ephemeral resource. Returns the warnings.
    pub fn close_ephemeral_resource(
        &self,
        type_name: &str,
        private: Option<&[u8]>,
    ) -> Result<Vec<Diagnostic>> {
        self.ephemeral(type_name)?;
        let call = "CloseEphemeralResource";
        let e = |e| Error::plugin(call, e);
        each_protocol!(self, |c, pb, conv| {
            let req = pb::close_ephemeral_resource::Request {
                type_name: type_name.to_owned(),
                private: private.map(<[u8]>::to_vec),
                ..Default::default()
            };
            check(
                call,
                conv::diagnostics(&c.close_ephemeral_resource(&req).map_err(e)?.diagnostics),
            )
        })
    }

    /// Lists the existing resources of a list resource type (`ListResource`, a server stream):
    /// at most `limit` of them, each with its whole object if `include_resource_object`.
    pub fn list_resource(
        &self,
        type_name: &str,
        config: &Value,
        include_resource_object: bool,
        limit: i64,
    ) -> Result<ListedResources> {
        let list =
            self.schema.list_resources.get(type_name).ok_or_else(|| {
                unknown_type("list resource", type_name, &self.schema.list_resources)
            })?;
        let ty = list.block.implied_type();
        let object_type = self
            .schema
            .resources
            .get(type_name)
            .map(|s| s.block.implied_type())
            .unwrap_or_default();
        let identity_type = self
            .identity_types()?
            .get(type_name)
            .cloned()
            .unwrap_or_default();
        let call = "ListResource";
        let e = |e| Error::plugin(call, e);
        let events = each_protocol!(self, |c, pb, conv| {
            let req = pb::list_resource::Request {
                type_name: type_name.to_owned(),
                config: conv::to_dv(config, &ty, call)?,
                include_resource_object,
                limit,
                ..Default::default()
            };
            conv::events(c.list_resource(&req).map_err(e)?)
        });
        Ok(ListedResources {
            events,
            object_type,
            identity_type,
        })
    }

    /// Moves a stored state from another resource type (possibly of another provider) to one of
    /// this provider's: the source's state JSON as stored, with the schema version it was
    /// written with.
    pub fn move_resource_state(
        &self,
        source_provider_address: &str,
        source_type_name: &str,
        source_schema_version: i64,
        source_state_json: &str,
        source_private: &[u8],
        target_type_name: &str,
    ) -> Result<MovedState> {
        let ty = self.resource(target_type_name)?.block.implied_type();
        let call = "MoveResourceState";
        let e = |e| Error::plugin(call, e);
        each_protocol!(self, |c, pb, conv| {
            let req = pb::move_resource_state::Request {
                source_provider_address: source_provider_address.to_owned(),
                source_type_name: source_type_name.to_owned(),
                source_schema_version,
                source_state: protobuf::MessageField::some(pb::RawState {
                    json: source_state_json.as_bytes().to_vec(),
                    ..Default::default()
                }),
                target_type_name: target_type_name.to_owned(),
                source_private: source_private.to_vec(),
                ..Default::default()
            };
            let r = c.move_resource_state(&req).map_err(e)?;
            let warnings = check(call, conv::diagnostics(&r.diagnostics))?;
            Ok(MovedState {
                target_state: conv::dv(&r.target_state, &ty, call)?,
                target_private: r.target_private.clone(),
                warnings,
            })
        })
    }
}
