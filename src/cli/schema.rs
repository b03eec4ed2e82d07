//! `cutover schema`: the JSON Schema of the deployment file, generated from the same Rust types
//! serde reads the file into (`spec::raw`), so it cannot drift from the parser's keys.
//!
//! It is JSON Schema draft 7, the draft the YAML language server (VS Code's Red Hat YAML
//! extension and others) fully supports. The schema gives editors completion, hover help and
//! early errors; `cutover validate` stays the authority (references between versions, address
//! syntax, durations and the like are checked there only). `deploy.schema.json` at the
//! repository root is this output, kept current by a test.

use std::process::ExitCode;

use schemars::generate::SchemaSettings;
use serde_json::Value;

use super::output::say;
use crate::spec::RawSpec;

/// The schema as a JSON value.
pub fn deployment_schema() -> Value {
    let schema = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<RawSpec>();
    let mut value = schema.to_value();
    unwrap_descriptions(&mut value);
    value
}

/// Doc comments are wrapped at 100 columns; editors show descriptions as text, so the lines of
/// a paragraph are joined again (blank lines still separate paragraphs).
fn unwrap_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    Value::String(text) if key == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|paragraph| paragraph.split('\n').collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    other => unwrap_descriptions(other),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

/// The schema as pretty JSON text with a final newline: what `cutover schema` prints and
/// `deploy.schema.json` holds.
pub fn deployment_schema_text() -> String {
    let mut text =
        serde_json::to_string_pretty(&deployment_schema()).expect("a JSON value always serializes");
    text.push('\n');
    text
}

/// Prints [`deployment_schema_text`].
pub fn run() -> anyhow::Result<ExitCode> {
    say(format_args!("{}", deployment_schema_text()))?;
    Ok(ExitCode::SUCCESS)
}
