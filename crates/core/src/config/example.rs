//! Renders the documented example configuration from the config struct's schema and defaults.

use serde_json::Value as Json;

use super::Config;

const HEADER: &str = "\
# Rhizome configuration. Every option is shown with its default value.
# This file is generated from the configuration struct: `rhizome config example`.
# Any key can also be set from the environment: RHIZOME_<KEY>, with `__` between
# nested keys, e.g. RHIZOME_REGISTRATION__MODE=open.
";

/// Renders the example file.
pub(super) fn render() -> String {
    let schema = schemars::schema_for!(Config);
    let root = schema.as_value();
    let defs = root.get("$defs").cloned().unwrap_or(Json::Null);
    let defaults = toml::Value::try_from(Config::default())
        .expect("invariant: the default configuration serialises to TOML");
    let mut out = String::from(HEADER);
    render_table(&mut out, root, &defs, &defaults, &[]);
    out
}

fn resolve<'a>(schema: &'a Json, defs: &'a Json) -> &'a Json {
    match schema.get("$ref").and_then(Json::as_str) {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap_or_default();
            defs.get(name).unwrap_or(schema)
        }
        None => {
            // `Option<T>` of a struct shows up as `anyOf: [T, null]`.
            if let Some(first) = schema.get("anyOf").and_then(|any| any.get(0))
                && first.get("$ref").is_some()
            {
                return resolve(first, defs);
            }
            schema
        }
    }
}

fn description(schema: &Json, resolved: &Json) -> Option<String> {
    schema
        .get("description")
        .or_else(|| resolved.get("description"))
        .and_then(Json::as_str)
        .map(str::to_owned)
}

fn comment(out: &mut String, text: &str) {
    for line in text.lines() {
        if line.is_empty() {
            out.push_str("#\n");
        } else {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
    }
}

fn render_table(
    out: &mut String,
    schema: &Json,
    defs: &Json,
    defaults: &toml::Value,
    path: &[&str],
) {
    let Some(properties) = schema.get("properties").and_then(Json::as_object) else {
        return;
    };
    let mut sections = Vec::new();
    for (key, property) in properties {
        let resolved = resolve(property, defs);
        let default = defaults.get(key);
        let is_section =
            resolved.get("properties").is_some() && default.is_none_or(toml::Value::is_table);
        if is_section {
            sections.push((key, property, resolved));
            continue;
        }
        out.push('\n');
        if let Some(text) = description(property, resolved) {
            comment(out, &text);
        }
        match default {
            Some(value) => out.push_str(&format!("{key} = {value}\n")),
            None => out.push_str(&format!("# {key} = (unset)\n")),
        }
    }
    for (key, property, resolved) in sections {
        let mut section_path = path.to_vec();
        section_path.push(key);
        out.push('\n');
        if let Some(text) = description(property, resolved) {
            comment(out, &text);
        }
        out.push_str(&format!("[{}]\n", section_path.join(".")));
        let empty = toml::Value::Table(toml::Table::new());
        let section_defaults = defaults.get(key).unwrap_or(&empty);
        render_table(out, resolved, defs, section_defaults, &section_path);
    }
}
