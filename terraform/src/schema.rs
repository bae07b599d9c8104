//! Provider schemas: what every value a provider takes or gives looks like.
//!
//! The model is the protocol's, the same for protocols 5 and 6 (5 has no nested attributes).
//! [`Block::implied_type`] is the type every `DynamicValue` of a resource, data source or
//! provider configuration is encoded with, and [`Block::proposed_new_state`] is the value
//! Terraform core proposes to a provider when planning.

use std::collections::BTreeMap;

use crate::cty::{Type, Value};

/// A schema with its version (a resource's stored state records the version that wrote it).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schema {
    /// Bumped by the provider when the state layout changes (see `upgrade_resource_state`).
    pub version: i64,
    /// The top-level block.
    pub block: Block,
}

/// A block: attributes and nested blocks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Block {
    /// Attributes by name.
    pub attributes: BTreeMap<String, Attribute>,
    /// Nested block types by name.
    pub block_types: BTreeMap<String, NestedBlock>,
    /// Documentation.
    pub description: String,
    /// Whether `description` is plain text or Markdown.
    pub description_kind: StringKind,
    /// The block is deprecated.
    pub deprecated: bool,
    /// Why, and what to use instead (protocol 5.11 / 6.11).
    pub deprecation_message: String,
}

/// An attribute: a typed value, or (protocol 6) a nested object of attributes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attribute {
    /// The value's type; `None` when `nested_type` describes it instead.
    pub ty: Option<Type>,
    /// Nested attributes (protocol 6 only).
    pub nested_type: Option<NestedObject>,
    /// Documentation.
    pub description: String,
    /// Whether `description` is plain text or Markdown.
    pub description_kind: StringKind,
    /// The configuration must set it.
    pub required: bool,
    /// The configuration may set it.
    pub optional: bool,
    /// The provider may set it (with `optional`: when the configuration leaves it null).
    pub computed: bool,
    /// Shown redacted; core marks its values sensitive.
    pub sensitive: bool,
    /// The attribute is deprecated.
    pub deprecated: bool,
    /// Set from configuration but never stored in state (managed resources only).
    pub write_only: bool,
    /// Why, and what to use instead.
    pub deprecation_message: String,
}

/// Nested attributes (protocol 6's `Schema.Object`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NestedObject {
    /// Attributes by name.
    pub attributes: BTreeMap<String, Attribute>,
    /// One object, or a list, set or map of them (never `Group`).
    pub nesting: Nesting,
}

/// A nested block type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NestedBlock {
    /// What each block holds.
    pub block: Block,
    /// How many there may be and how they are addressed.
    pub nesting: Nesting,
    /// Bounds on a list or set of blocks (0: none).
    pub min_items: i64,
    /// (0: no upper bound).
    pub max_items: i64,
}

/// How nested blocks or objects repeat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Nesting {
    /// At most one; null when absent.
    #[default]
    Single,
    /// Exactly one; an absent block is an empty one, never null.
    Group,
    /// An ordered list.
    List,
    /// An unordered set.
    Set,
    /// A map, keyed by the block's label.
    Map,
}

/// How a description is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StringKind {
    /// Plain text.
    #[default]
    Plain,
    /// Markdown.
    Markdown,
}

/// A provider-defined function.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Function {
    /// Positional parameters.
    pub parameters: Vec<Parameter>,
    /// Extra arguments of one type, if the function takes any.
    pub variadic_parameter: Option<Parameter>,
    /// What it returns.
    pub return_type: Type,
    /// One line.
    pub summary: String,
    /// Documentation.
    pub description: String,
    /// Whether `description` is plain text or Markdown.
    pub description_kind: StringKind,
    /// Set when the function is deprecated.
    pub deprecation_message: String,
}

/// A function parameter.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parameter {
    /// For documentation and errors.
    pub name: String,
    /// The argument's type (a constraint: it may contain `dynamic`).
    pub ty: Type,
    /// Null arguments are passed to the function (else they are an argument error).
    pub allow_null_value: bool,
    /// Unknown arguments are passed to the function (else the result is unknown, no call).
    pub allow_unknown_values: bool,
    /// Documentation.
    pub description: String,
    /// Whether `description` is plain text or Markdown.
    pub description_kind: StringKind,
}

impl Attribute {
    /// The type of the attribute's values, nested attributes included.
    pub fn value_type(&self) -> Type {
        match (&self.nested_type, &self.ty) {
            (Some(nested), _) => nested.implied_type(),
            (None, Some(ty)) => ty.without_optional_attributes(),
            (None, None) => Type::Dynamic,
        }
    }
}

impl NestedObject {
    /// The type of the nested value: an object, or a collection of objects.
    pub fn implied_type(&self) -> Type {
        let object = Type::object(
            self.attributes
                .iter()
                .map(|(k, a)| (k.clone(), a.value_type())),
        );
        match self.nesting {
            Nesting::Single | Nesting::Group => object,
            Nesting::List => Type::list(object),
            Nesting::Set => Type::set(object),
            Nesting::Map => Type::map(object),
        }
    }
}

impl Block {
    /// The type of this block's values, the one every `DynamicValue` for it is encoded with:
    /// an object with an attribute per schema attribute and per nested block type.
    ///
    /// ```
    /// use rpcplugin_terraform::cty::Type;
    /// use rpcplugin_terraform::schema::{Attribute, Block};
    ///
    /// let mut block = Block::default();
    /// block.attributes.insert("id".into(), Attribute { ty: Some(Type::String), computed: true, ..Default::default() });
    /// assert_eq!(block.implied_type().to_json(), r#"["object",{"id":"string"}]"#);
    /// ```
    pub fn implied_type(&self) -> Type {
        let attributes = self
            .attributes
            .iter()
            .map(|(k, a)| (k.clone(), a.value_type()));
        let blocks = self.block_types.iter().map(|(k, b)| {
            let object = b.block.implied_type();
            // A list or map of blocks with a dynamic part need not share one element type:
            // core gives the attribute type `dynamic` (hcldec's tuple and object block specs),
            // and the value is a tuple or an object of the blocks given.
            let ty = match b.nesting {
                Nesting::Single | Nesting::Group => object,
                Nesting::List | Nesting::Map if b.block.has_dynamic() => Type::Dynamic,
                Nesting::List => Type::list(object),
                Nesting::Set => Type::set(object),
                Nesting::Map => Type::map(object),
            };
            (k.clone(), ty)
        });
        Type::object(attributes.chain(blocks))
    }

    /// Whether any attribute of this block or of a block nested in it has a `dynamic` part.
    pub fn has_dynamic(&self) -> bool {
        self.attributes
            .values()
            .any(|a| a.value_type().contains_dynamic())
            || self.block_types.values().any(|b| b.block.has_dynamic())
    }

    /// A value of this block with every attribute null and every nested block absent (empty
    /// for lists, sets and maps, an empty block for `Group`): Terraform core's `EmptyValue`.
    pub fn empty_value(&self) -> Value {
        let attributes = self.attributes.keys().map(|k| (k.clone(), Value::Null));
        let blocks = self.block_types.iter().map(|(k, b)| {
            let v = match b.nesting {
                Nesting::Single => Value::Null,
                Nesting::Group => b.block.empty_value(),
                Nesting::List if b.block.has_dynamic() => {
                    Value::dynamic(Type::tuple([]), Value::Tuple(vec![]))
                }
                Nesting::Map if b.block.has_dynamic() => {
                    Value::dynamic(Type::object::<&str>([]), Value::Object(BTreeMap::new()))
                }
                Nesting::List => Value::List(vec![]),
                Nesting::Set => Value::Set(vec![]),
                Nesting::Map => Value::Map(BTreeMap::new()),
            };
            (k.clone(), v)
        });
        Value::Object(attributes.chain(blocks).collect())
    }
}
