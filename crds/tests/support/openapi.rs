//! The subset of OpenAPI v3 validation our CRD schemas use, checked the way the API server's
//! validator does: types, nullable, required, unknown fields, enum, pattern (RE2, here the
//! regex crate), lengths, bounds, formats `ipv4`/`date-time`, item counts, and the
//! uniqueness that `x-kubernetes-list-type` set/map implies.

use std::collections::BTreeSet;

use serde_json::Value;

pub fn validate(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let mut complain = |what: String| errors.push(format!("{}: {what}", display(path)));
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            complain("must not be null".into());
        }
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        complain(format!("unsupported value {value}, allowed: {allowed:?}"));
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => match value.as_str() {
            Some(text) => check_string(schema, text, &mut complain),
            None => complain(format!("must be a string, got {value}")),
        },
        Some("integer") => match value.as_i64() {
            Some(number) => check_bounds(schema, number as f64, &mut complain),
            None => complain(format!("must be an integer, got {value}")),
        },
        Some("boolean") => {
            if !value.is_boolean() {
                complain(format!("must be a boolean, got {value}"));
            }
        }
        Some("array") => match value.as_array() {
            Some(items) => check_array(schema, items, path, errors),
            None => complain(format!("must be an array, got {value}")),
        },
        Some("object") => match value.as_object() {
            Some(fields) => check_object(schema, fields, path, errors),
            None => complain(format!("must be an object, got {value}")),
        },
        other => complain(format!("schema has no usable type: {other:?}")),
    }
}

fn display(path: &str) -> &str {
    if path.is_empty() { "<root>" } else { path }
}

fn check_string(schema: &Value, text: &str, complain: &mut impl FnMut(String)) {
    let length = text.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && length > max
    {
        complain(format!("may not be longer than {max}"));
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && length < min
    {
        complain(format!("must be at least {min} characters"));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
        && !regex::Regex::new(pattern).unwrap().is_match(text)
    {
        complain(format!("{text:?} should match '{pattern}'"));
    }
    match schema.get("format").and_then(Value::as_str) {
        Some("ipv4") if text.parse::<std::net::Ipv4Addr>().is_err() => {
            complain(format!("{text:?} is not an ipv4 address"))
        }
        Some("date-time") if text.parse::<k8s_openapi::jiff::Timestamp>().is_err() => {
            complain(format!("{text:?} is not a date-time"))
        }
        _ => {}
    }
}

fn check_bounds(schema: &Value, number: f64, complain: &mut impl FnMut(String)) {
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
        && number > max
    {
        complain(format!("should be less than or equal to {max}"));
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
        && number < min
    {
        complain(format!("should be greater than or equal to {min}"));
    }
}

fn check_array(schema: &Value, items: &[Value], path: &str, errors: &mut Vec<String>) {
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && items.len() as u64 > max
    {
        errors.push(format!("{}: must have at most {max} items", display(path)));
    }
    let item_schema = &schema["items"];
    for (index, item) in items.iter().enumerate() {
        validate(item_schema, item, &format!("{path}[{index}]"), errors);
    }
    let keys: Vec<String> = match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => items.iter().map(Value::to_string).collect(),
        Some("map") => {
            let key_names = schema["x-kubernetes-list-map-keys"].as_array().unwrap();
            items
                .iter()
                .map(|item| {
                    let key: Vec<&Value> = key_names
                        .iter()
                        .map(|k| &item[k.as_str().unwrap()])
                        .collect();
                    format!("{key:?}")
                })
                .collect()
        }
        _ => return,
    };
    let mut seen = BTreeSet::new();
    for key in keys {
        if !seen.insert(key.clone()) {
            errors.push(format!("{}: Duplicate value: {key}", display(path)));
        }
    }
}

fn check_object(
    schema: &Value,
    fields: &serde_json::Map<String, Value>,
    path: &str,
    errors: &mut Vec<String>,
) {
    let properties = schema.get("properties").and_then(Value::as_object);
    for required in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = required.as_str().unwrap();
        if !fields.contains_key(name) {
            errors.push(format!("{path}.{name}: Required value"));
        }
    }
    let at_root = path.is_empty();
    for (name, value) in fields {
        // The API server validates apiVersion, kind and metadata itself; the CRD schema
        // leaves them out.
        if at_root && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match properties.and_then(|p| p.get(name)) {
            Some(property) => validate(property, value, &format!("{path}.{name}"), errors),
            None => errors.push(format!("{path}.{name}: field not declared in schema")),
        }
    }
}
