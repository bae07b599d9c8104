//! A provider's schema as `terraform providers schema -json` / `tofu providers schema -json`
//! print it: the same fields, the same order (Go's struct order, map keys sorted), the same
//! omissions (`omitempty`), compact, with Go's string escaping.

use crate::cty::{json_string, Type};
use crate::provider::ProviderSchema;
use crate::schema::{Attribute, Block, Function, Nesting, Parameter, Schema, StringKind};

/// Writes `"key":` then the value, with a comma before every field but the first.
struct Fields<'o> {
    out: &'o mut String,
    first: bool,
}

impl<'o> Fields<'o> {
    fn open(out: &'o mut String) -> Fields<'o> {
        out.push('{');
        Fields { out, first: true }
    }

    fn key(&mut self, key: &str) -> &mut String {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push_str(&json_string(key));
        self.out.push(':');
        self.out
    }

    fn string(&mut self, key: &str, value: &str, omit_empty: bool) {
        if !(omit_empty && value.is_empty()) {
            let v = json_string(value);
            self.key(key).push_str(&v);
        }
    }

    fn flag(&mut self, key: &str, value: bool) {
        if value {
            self.key(key).push_str("true");
        }
    }

    fn close(self) {
        self.out.push('}');
    }
}

impl ProviderSchema {
    /// The document `terraform providers schema -json` prints for this one provider, under its
    /// fully qualified address (for example `registry.terraform.io/hashicorp/time`; OpenTofu's
    /// host is `registry.opentofu.org`). The wire never says a provider's address.
    pub fn to_schema_json(&self, address: &str) -> String {
        let mut out = String::with_capacity(4096);
        let mut doc = Fields::open(&mut out);
        doc.string("format_version", "1.0", false);
        let schemas = doc.key("provider_schemas");
        let mut by_address = Fields::open(schemas);
        let mut provider = Fields::open(by_address.key(address));
        write_schema(provider.key("provider"), &self.provider);
        for (key, map) in [
            ("resource_schemas", &self.resources),
            ("data_source_schemas", &self.data_sources),
        ] {
            if !map.is_empty() {
                let mut entries = Fields::open(provider.key(key));
                for (name, schema) in map {
                    write_schema(entries.key(name), schema);
                }
                entries.close();
            }
        }
        if !self.functions.is_empty() {
            let mut entries = Fields::open(provider.key("functions"));
            for (name, f) in &self.functions {
                write_function(entries.key(name), f);
            }
            entries.close();
        }
        provider.close();
        by_address.close();
        doc.close();
        out
    }
}

fn write_schema(out: &mut String, schema: &Schema) {
    let mut s = Fields::open(out);
    s.key("version")
        .push_str(&schema.version.max(0).to_string());
    write_block(s.key("block"), &schema.block);
    s.close();
}

fn kind(k: StringKind) -> &'static str {
    match k {
        StringKind::Plain => "plain",
        StringKind::Markdown => "markdown",
    }
}

fn nesting(n: Nesting) -> &'static str {
    match n {
        Nesting::Single => "single",
        Nesting::Group => "group",
        Nesting::List => "list",
        Nesting::Set => "set",
        Nesting::Map => "map",
    }
}

fn write_block(out: &mut String, block: &Block) {
    let mut b = Fields::open(out);
    if !block.attributes.is_empty() {
        let mut attrs = Fields::open(b.key("attributes"));
        for (name, a) in &block.attributes {
            write_attribute(attrs.key(name), a);
        }
        attrs.close();
    }
    if !block.block_types.is_empty() {
        let mut types = Fields::open(b.key("block_types"));
        for (name, nested) in &block.block_types {
            let mut t = Fields::open(types.key(name));
            t.string("nesting_mode", nesting(nested.nesting), true);
            write_block(t.key("block"), &nested.block);
            for (key, n) in [
                ("min_items", nested.min_items),
                ("max_items", nested.max_items),
            ] {
                if n > 0 {
                    t.key(key).push_str(&n.to_string());
                }
            }
            t.close();
        }
        types.close();
    }
    b.string("description", &block.description, true);
    b.string("description_kind", kind(block.description_kind), true);
    b.flag("deprecated", block.deprecated);
    b.close();
}

fn write_attribute(out: &mut String, a: &Attribute) {
    let mut f = Fields::open(out);
    if let Some(ty) = &a.ty {
        ty.write_json(f.key("type"));
    }
    if let Some(nested) = &a.nested_type {
        let mut n = Fields::open(f.key("nested_type"));
        if !nested.attributes.is_empty() {
            let mut attrs = Fields::open(n.key("attributes"));
            for (name, a) in &nested.attributes {
                write_attribute(attrs.key(name), a);
            }
            attrs.close();
        }
        n.string("nesting_mode", nesting(nested.nesting), true);
        n.close();
    }
    f.string("description", &a.description, true);
    f.string("description_kind", kind(a.description_kind), true);
    f.flag("deprecated", a.deprecated);
    f.flag("required", a.required);
    f.flag("optional", a.optional);
    f.flag("computed", a.computed);
    f.flag("sensitive", a.sensitive);
    f.close();
}

/// A function type as OpenTofu writes it: the type's JSON form, with an object's optional
/// attributes dropped at the top level (it writes `["object", attribute types]`).
fn write_function_type(out: &mut String, ty: &Type) {
    match ty {
        Type::Object { attributes, .. } => Type::object(attributes.clone()).write_json(out),
        ty => ty.write_json(out),
    }
}

fn write_parameter(out: &mut String, p: &Parameter) {
    let mut f = Fields::open(out);
    f.string("name", &p.name, false);
    f.string("description", &p.description, false);
    write_function_type(f.key("type"), &p.ty);
    f.flag("is_nullable", p.allow_null_value);
    f.close();
}

fn write_function(out: &mut String, function: &Function) {
    let mut f = Fields::open(out);
    f.string("description", &function.description, false);
    f.string("summary", &function.summary, false);
    write_function_type(f.key("return_type"), &function.return_type);
    if !function.parameters.is_empty() {
        let params = f.key("parameters");
        params.push('[');
        for (i, p) in function.parameters.iter().enumerate() {
            if i > 0 {
                params.push(',');
            }
            write_parameter(params, p);
        }
        params.push(']');
    }
    if let Some(p) = &function.variadic_parameter {
        write_parameter(f.key("variadic_parameter"), p);
    }
    f.close();
}
