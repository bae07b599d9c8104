//! The `proposed_new_state` Terraform core sends with `PlanResourceChange`, as OpenTofu's
//! `objchange.ProposedNew` computes it (v1.10): the configuration, except where a computed
//! attribute is left null (then the prior value, unless an optional nested attribute's prior
//! holds something the configuration could set), with nested blocks and nested attributes merged
//! element by element (lists by index, maps by key, sets by matching each configuration element
//! to a prior one that differs only in computed attributes the configuration leaves null).

use std::collections::BTreeMap;

use crate::cty::Value;
use crate::schema::{Attribute, Block, Nesting};

impl Block {
    /// The `proposed_new_state` for planning a change from `prior` to `config`. A null
    /// configuration (a destroy) proposes null; a null prior (create) counts as
    /// [`Block::empty_value`]. Core never adds unknowns here; making computed attributes unknown
    /// is the provider's part of planning.
    pub fn proposed_new_state(&self, prior: &Value, config: &Value) -> Value {
        if config.is_null() {
            return Value::Null;
        }
        if !config.is_known() || !prior.is_known() {
            return config.clone();
        }
        let empty;
        let prior = if prior.is_null() {
            empty = self.empty_value();
            &empty
        } else {
            prior
        };
        let mut out = BTreeMap::new();
        for (name, attr) in &self.attributes {
            let c = config.attr(name).unwrap_or(&Value::Null);
            let p = prior.attr(name).unwrap_or(&Value::Null);
            out.insert(name.clone(), attr.proposed(p, c));
        }
        for (name, nested) in &self.block_types {
            let c = config.attr(name).unwrap_or(&Value::Null);
            let p = prior.attr(name).unwrap_or(&Value::Null);
            out.insert(
                name.clone(),
                merge_nested(nested.nesting, &nested.block, p, c),
            );
        }
        Value::Object(out)
    }
}

impl Attribute {
    fn proposed(&self, prior: &Value, config: &Value) -> Value {
        if self.computed && config.is_null() {
            if self.optional && self.nested_type.is_some() && sets_non_computed(self, prior) {
                return config.clone();
            }
            return prior.clone();
        }
        match &self.nested_type {
            Some(nested) if !config.is_null() => merge_nested(
                nested.nesting,
                &nested_block(&nested.attributes),
                prior,
                config,
            ),
            _ => config.clone(),
        }
    }
}

fn nested_block(attributes: &BTreeMap<String, Attribute>) -> Block {
    Block {
        attributes: attributes.clone(),
        ..Default::default()
    }
}

/// OpenTofu's `optionalValueNotComputable`: whether `value` (the prior of an optional, computed
/// nested attribute) sets any attribute that is not computed, which only the configuration can.
fn sets_non_computed(attr: &Attribute, value: &Value) -> bool {
    fn walk(attributes: &BTreeMap<String, Attribute>, v: &Value) -> bool {
        match v.inner() {
            Value::Object(m) => m.iter().any(|(k, v)| {
                if v.is_null() {
                    return false;
                }
                match attributes.get(k) {
                    Some(a) if !a.computed => true,
                    Some(Attribute {
                        nested_type: Some(n),
                        ..
                    }) => walk(&n.attributes, v),
                    _ => false,
                }
            }),
            Value::List(vs) | Value::Set(vs) | Value::Tuple(vs) => {
                vs.iter().any(|v| walk(attributes, v))
            }
            Value::Map(m) => m.values().any(|v| walk(attributes, v)),
            _ => false,
        }
    }
    attr.nested_type
        .as_ref()
        .is_some_and(|n| walk(&n.attributes, value))
}

/// Equal, unknowns compared without their refinements (core's `unrefinedValue` + `RawEquals`).
fn same(a: &Value, b: &Value) -> bool {
    match (a.inner(), b.inner()) {
        (Value::Unknown(_), Value::Unknown(_)) => true,
        (Value::List(x), Value::List(y))
        | (Value::Set(x), Value::Set(y))
        | (Value::Tuple(x), Value::Tuple(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Map(x), Value::Map(y)) | (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, a), (kb, b))| ka == kb && same(a, b))
        }
        (a, b) => a == b,
    }
}

/// OpenTofu's `validPriorFromConfig`: whether `prior` can be the prior of the set element
/// `config`, which it can if they differ only where an attribute is computed and null in
/// `config`.
fn valid_prior(block: &Block, prior: &Value, config: &Value) -> bool {
    if same(prior, config) {
        return true;
    }
    let (Value::Object(p), Value::Object(c)) = (prior.inner(), config.inner()) else {
        return false;
    };
    p.iter().all(|(name, pv)| {
        let cv = c.get(name).unwrap_or(&Value::Null);
        if same(pv, cv) {
            return true;
        }
        if let Some(attr) = block.attributes.get(name) {
            return match &attr.nested_type {
                Some(n) => valid_nested(n.nesting, &nested_block(&n.attributes), pv, cv),
                None => attr.computed && cv.is_null(),
            };
        }
        match block.block_types.get(name) {
            Some(b) => valid_nested(b.nesting, &b.block, pv, cv),
            None => true,
        }
    })
}

/// `valid_prior` through a nested block or object: the walk goes into lists by index and maps by
/// key, and a set that differs makes the element invalid.
fn valid_nested(nesting: Nesting, block: &Block, prior: &Value, config: &Value) -> bool {
    match (nesting, prior.inner(), config.inner()) {
        // Nothing in a null prior can disagree with the config.
        (_, Value::Null, _) => true,
        (Nesting::Single | Nesting::Group, _, _) => valid_prior(block, prior, config),
        (Nesting::List, Value::List(ps), Value::List(cs)) => ps
            .iter()
            .enumerate()
            .all(|(i, p)| cs.get(i).is_some_and(|c| valid_prior(block, p, c))),
        (Nesting::Map, Value::Map(ps), Value::Map(cs)) => ps
            .iter()
            .all(|(k, p)| cs.get(k).is_some_and(|c| valid_prior(block, p, c))),
        _ => false,
    }
}

/// Merges prior and config of a nested block or nested attribute by its nesting mode.
fn merge_nested(nesting: Nesting, block: &Block, prior: &Value, config: &Value) -> Value {
    if !config.is_known() || config.is_null() {
        return config.clone();
    }
    let known_prior = if prior.is_known() {
        prior
    } else {
        &Value::Null
    };
    let merge = |p: &Value, c: &Value| block.proposed_new_state(p, c);
    match (nesting, known_prior.inner(), config.inner()) {
        (Nesting::Single | Nesting::Group, _, _) => merge(known_prior, config),
        (Nesting::List, ps, Value::List(cs)) => {
            let ps: &[Value] = if let Value::List(ps) = ps { ps } else { &[] };
            Value::List(
                cs.iter()
                    .enumerate()
                    .map(|(i, c)| merge(ps.get(i).unwrap_or(&Value::Null), c))
                    .collect(),
            )
        }
        (Nesting::Map, ps, Value::Map(cs)) => {
            let empty = BTreeMap::new();
            let ps = if let Value::Map(ps) = ps { ps } else { &empty };
            Value::Map(
                cs.iter()
                    .map(|(k, c)| (k.clone(), merge(ps.get(k).unwrap_or(&Value::Null), c)))
                    .collect(),
            )
        }
        (Nesting::Set, ps, Value::Set(cs)) => {
            let ps: &[Value] = if let Value::Set(ps) = ps { ps } else { &[] };
            let mut used = vec![false; ps.len()];
            let merged = cs.iter().map(|c| {
                let found = (0..ps.len()).find(|&i| !used[i] && valid_prior(block, &ps[i], c));
                match found {
                    Some(i) => {
                        used[i] = true;
                        merge(&ps[i], c)
                    }
                    None => merge(&Value::Null, c),
                }
            });
            Value::Set(merged.collect())
        }
        _ => config.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cty::Type;
    use crate::schema::{NestedBlock, NestedObject};

    fn attr(ty: Type, optional: bool, computed: bool) -> Attribute {
        Attribute {
            ty: Some(ty),
            optional,
            computed,
            required: !optional && !computed,
            ..Default::default()
        }
    }

    /// A block with these attributes.
    fn block<const N: usize>(attributes: [(&str, Attribute); N]) -> Block {
        Block {
            attributes: attributes.map(|(k, a)| (k.to_owned(), a)).into(),
            ..Default::default()
        }
    }

    /// `outer` with `inner` nested under `name`.
    fn nest(mut outer: Block, name: &str, inner: Block, nesting: Nesting) -> Block {
        outer.block_types.insert(
            name.to_owned(),
            NestedBlock {
                block: inner,
                nesting,
                ..Default::default()
            },
        );
        outer
    }

    fn rule(port: i64, id: Value) -> Value {
        Value::object([("port", port.into()), ("id", id)])
    }

    #[test]
    fn set_elements_find_their_prior_by_what_config_sets() {
        let inner = block([
            ("port", attr(Type::Number, false, false)),
            ("id", attr(Type::String, false, true)),
        ]);
        let block = nest(Block::default(), "rule", inner, Nesting::Set);
        let prior = Value::object([(
            "rule",
            Value::set([rule(80, "r-80".into()), rule(22, "r-22".into())]),
        )]);
        let config = Value::object([(
            "rule",
            Value::set([rule(22, Value::Null), rule(443, Value::Null)]),
        )]);
        // 22 keeps its computed id; 443 is new, so its id stays null (the provider plans it).
        let proposed = block.proposed_new_state(&prior, &config);
        assert_eq!(
            proposed,
            Value::object([(
                "rule",
                Value::set([rule(22, "r-22".into()), rule(443, Value::Null)])
            )])
        );
    }

    #[test]
    fn an_optional_computed_nested_attribute_set_by_config_before_is_not_kept() {
        let mut nested = BTreeMap::new();
        nested.insert("name".to_owned(), attr(Type::String, true, false));
        let settings = Attribute {
            nested_type: Some(NestedObject {
                attributes: nested,
                nesting: Nesting::Single,
            }),
            optional: true,
            computed: true,
            ..Default::default()
        };
        let block = block([("settings", settings)]);
        let prior = Value::object([("settings", Value::object([("name", "a".into())]))]);
        let config = Value::object([("settings", Value::Null)]);
        // `name` is not computed: only config can have set it, so removing `settings` from the
        // config proposes null rather than the prior.
        assert_eq!(block.proposed_new_state(&prior, &config), config);
        // A prior with nothing the config could set is kept.
        let prior = Value::object([("settings", Value::object([("name", Value::Null)]))]);
        assert_eq!(block.proposed_new_state(&prior, &config), prior);
    }

    #[test]
    fn proposed_new_state_keeps_prior_for_computed_nulls_only() {
        let block = block([
            ("id", attr(Type::String, false, true)),
            ("name", attr(Type::String, false, false)),
            ("rfc3339", attr(Type::String, true, true)),
            ("note", attr(Type::String, true, false)),
        ]);
        let config = Value::object([
            ("name", "a".into()),
            ("id", Value::Null),
            ("rfc3339", Value::Null),
            ("note", Value::Null),
        ]);
        // Create: prior null, so computed attributes stay null, config for the rest.
        let created = block.proposed_new_state(&Value::Null, &config);
        assert_eq!(
            created,
            Value::object([
                ("id", Value::Null),
                ("name", "a".into()),
                ("note", Value::Null),
                ("rfc3339", Value::Null)
            ])
        );
        // Update: computed attributes null in config keep the prior value; optional-only ones don't.
        let prior = Value::object([
            ("id", "x".into()),
            ("name", "old".into()),
            ("rfc3339", "t".into()),
            ("note", "n".into()),
        ]);
        let updated = block.proposed_new_state(&prior, &config);
        assert_eq!(
            updated,
            Value::object([
                ("id", "x".into()),
                ("name", "a".into()),
                ("note", Value::Null),
                ("rfc3339", "t".into())
            ])
        );
        // Destroy: config null proposes null.
        assert_eq!(block.proposed_new_state(&prior, &Value::Null), Value::Null);
    }

    #[test]
    fn nested_blocks_merge_by_nesting_mode() {
        let inner = block([
            ("port", attr(Type::Number, false, false)),
            ("tag", attr(Type::String, false, true)),
        ]);
        let block = nest(Block::default(), "rule", inner.clone(), Nesting::List);
        let block = nest(block, "group", inner, Nesting::Group);
        assert_eq!(
            block.implied_type().to_json(),
            r#"["object",{"group":["object",{"port":"number","tag":"string"}],"rule":["list",["object",{"port":"number","tag":"string"}]]}]"#
        );
        assert_eq!(
            block.empty_value(),
            Value::object([
                (
                    "group",
                    Value::object([("port", Value::Null), ("tag", Value::Null)])
                ),
                ("rule", Value::List(vec![]))
            ])
        );
        let rule = |port: i64, tag: Value| Value::object([("port", port.into()), ("tag", tag)]);
        let prior = Value::object([
            ("group", rule(1, "g".into())),
            ("rule", Value::list([rule(80, "web".into())])),
        ]);
        let config = Value::object([
            ("group", rule(2, Value::Null)),
            (
                "rule",
                Value::list([rule(443, Value::Null), rule(22, Value::Null)]),
            ),
        ]);
        let proposed = block.proposed_new_state(&prior, &config);
        let expected = Value::object([
            ("group", rule(2, "g".into())),
            (
                "rule",
                Value::list([rule(443, "web".into()), rule(22, Value::Null)]),
            ),
        ]);
        assert_eq!(proposed, expected);
    }

    #[test]
    fn a_set_element_whose_prior_nested_block_was_absent_still_matches() {
        // core's walk of a null prior finds nothing to refuse: the prior stays a match.
        let tag = block([("name", attr(Type::String, false, false))]);
        let inner = block([
            ("port", attr(Type::Number, false, false)),
            ("id", attr(Type::String, false, true)),
        ]);
        let inner = nest(inner, "tag", tag, Nesting::Single);
        let block = nest(Block::default(), "rule", inner, Nesting::Set);
        let element =
            |id: Value, tag: Value| Value::object([("port", 80.into()), ("id", id), ("tag", tag)]);
        let prior = Value::object([("rule", Value::set([element("r-80".into(), Value::Null)]))]);
        let tag = Value::object([("name", "web".into())]);
        let config = Value::object([("rule", Value::set([element(Value::Null, tag.clone())]))]);
        let proposed = block.proposed_new_state(&prior, &config);
        assert_eq!(
            proposed,
            Value::object([("rule", Value::set([element("r-80".into(), tag)]))])
        );
    }
}
