//! The config's JSON Schema (from the serde types via schemars) and the structural
//! check `check` runs with it, so the published schema and `check` cannot disagree.

use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use schemars::generate::SchemaSettings;
use serde_json::Value;

use super::types::ConfigFile;
use super::validate::Problem;
use super::values::{DURATION_PATTERN, RENEW_BEFORE_PATTERN, duration_message, renew_before_message};
use super::yaml::escape_pointer;

/// Field names that would hold a secret inline; tlsward only takes `*_file`/`*_env`.
const INLINE_SECRET_FIELDS: &[&str] = &["secret", "api_key", "hmac_key", "password", "token", "key_pem"];

/// The JSON Schema of the config file.
pub fn json_schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let schema = SchemaSettings::draft2020_12()
            .into_generator()
            .into_root_schema_for::<ConfigFile>();
        let mut value = serde_json::to_value(schema).expect("a schema is JSON");
        drop_null_alternatives(&mut value);
        value
    })
}

/// schemars lets optional fields be `null`; tlsward's config does not (an absent field
/// takes its default), so the schema says "the type, or absent".
fn drop_null_alternatives(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            for key in ["anyOf", "oneOf"] {
                if let Some(Value::Array(alts)) = map.get(key) {
                    let non_null: Vec<Value> = alts
                        .iter()
                        .filter(|a| a.get("type") != Some(&Value::String("null".into())))
                        .cloned()
                        .collect();
                    if non_null.len() == 1 && alts.len() == 2 {
                        map.remove(key);
                        if let Value::Object(inner) = &non_null[0] {
                            for (k, val) in inner {
                                map.entry(k.clone()).or_insert_with(|| val.clone());
                            }
                        }
                    }
                }
            }
            map.values_mut().for_each(drop_null_alternatives);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null_alternatives),
        _ => {}
    }
}

fn validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| jsonschema::validator_for(json_schema()).expect("the generated schema is valid"))
}

/// Every structural problem (types, unknown or missing fields, enums, patterns).
pub fn check(instance: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    for error in validator().iter_errors(instance) {
        let pointer = error.instance_path().as_str().to_string();
        match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected } => {
                let allowed = allowed_fields(&pointer);
                for field in unexpected {
                    let message = if INLINE_SECRET_FIELDS.contains(&field.as_str()) {
                        format!(
                            "secrets are never inline: use `{field}_file` (a path) or `{field}_env` (an environment variable) instead of `{field}`"
                        )
                    } else if allowed.is_empty() {
                        format!("unknown field `{field}`")
                    } else {
                        format!("unknown field `{field}`, expected one of: {}", allowed.join(", "))
                    };
                    problems.push(Problem::at_key(
                        &format!("{pointer}/{}", escape_pointer(field)),
                        message,
                    ));
                }
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or_default();
                problems.push(Problem::at_value(
                    &format!("{pointer}/{}", escape_pointer(name)),
                    "missing required field".into(),
                ));
            }
            ValidationErrorKind::MinProperties { .. } | ValidationErrorKind::MaxProperties { .. } => {
                let allowed = allowed_fields(&pointer);
                problems.push(Problem::at_value(
                    &pointer,
                    format!("set exactly one of: {}", allowed.join(", ")),
                ));
            }
            ValidationErrorKind::Pattern { pattern } => {
                let text = error.instance().as_str().unwrap_or_default().to_string();
                let message = if pattern == DURATION_PATTERN {
                    duration_message(&text)
                } else if pattern == RENEW_BEFORE_PATTERN {
                    renew_before_message(&text)
                } else {
                    error.to_string()
                };
                problems.push(Problem::at_value(&pointer, message));
            }
            ValidationErrorKind::Type { .. } => {
                let found = json_type(error.instance());
                let expected = schema_at(&pointer)
                    .and_then(|s| s.get("type"))
                    .map(|t| t.to_string().replace('"', ""))
                    .unwrap_or_else(|| "another type".into());
                problems.push(Problem::at_value(
                    &pointer,
                    format!("expected {expected}, found {found}"),
                ));
            }
            _ => problems.push(Problem::at_value(&pointer, error.to_string())),
        }
    }
    problems
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// The field names the schema allows for the object at `pointer`.
fn allowed_fields(pointer: &str) -> Vec<String> {
    schema_at(pointer)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// The sub-schema that governs the instance at `pointer`, following `$ref`s.
fn schema_at(pointer: &str) -> Option<&'static Value> {
    let root = json_schema();
    let resolve = |s: &'static Value| -> &'static Value {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => root.pointer(r.trim_start_matches('#')).unwrap_or(s),
            None => s,
        }
    };
    let mut schema = resolve(root);
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        let next = schema
            .get("properties")
            .and_then(|p| p.get(&seg))
            .or_else(|| schema.get("items"))
            .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))?;
        schema = resolve(next);
    }
    Some(schema)
}
