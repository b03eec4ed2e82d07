//! What cutover's admin API answers, read into the types it is written from ([`crate::api`],
//! [`crate::telemetry::TelemetryReport`]) so that tests and benches compare fields and enums,
//! not JSON paths and strings, and read exactly so that the types hide nothing from them.
//!
//! The api types read leniently on purpose: a missing field takes its default and a state this
//! release does not know reads as `Unknown`, so that a `cutover status` of one release can read
//! another's. A test must not: there, a field the types do not carry, a field missing or a state
//! spelled another way is a change of the wire that an assertion on the JSON would have caught.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// `json` read into `T`, exactly: `T` written back must be `json` again, or the answer says
/// where they differ.
pub fn read_exact<T: DeserializeOwned + Serialize>(json: &Value) -> Result<T, String> {
    let name = std::any::type_name::<T>();
    let typed = T::deserialize(json).map_err(|e| format!("does not read as {name}: {e}"))?;
    let back = serde_json::to_value(&typed).map_err(|e| format!("{name} as JSON: {e}"))?;
    match first_difference(json, &back, "") {
        None => Ok(typed),
        Some(difference) => Err(format!(
            "does not read back as it came as {name} (a change of the wire?): {difference}"
        )),
    }
}

/// [`read_exact`], or a panic that says what `what` answered: a body that does not read back
/// will not read back on the next poll either.
pub(super) fn exact<T: DeserializeOwned + Serialize>(json: &Value, what: &str) -> T {
    read_exact(json).unwrap_or_else(|e| panic!("{what} {e}; it answered {json}"))
}

/// The first place (a JSON pointer) where what was sent and what was read differ.
fn first_difference(sent: &Value, read: &Value, at: &str) -> Option<String> {
    match (sent, read) {
        (Value::Object(s), Value::Object(r)) => s.keys().chain(r.keys()).find_map(|key| {
            let at = format!("{at}/{key}");
            match (s.get(key), r.get(key)) {
                (Some(s), Some(r)) => first_difference(s, r, &at),
                (Some(s), None) => Some(format!("{at} is {s}, which the type does not carry")),
                (None, Some(r)) => Some(format!("{at} is missing, and reads as {r}")),
                (None, None) => None,
            }
        }),
        (Value::Array(s), Value::Array(r)) if s.len() == r.len() => s
            .iter()
            .zip(r)
            .enumerate()
            .find_map(|(i, (s, r))| first_difference(s, r, &format!("{at}/{i}"))),
        _ if sent == read => None,
        _ => Some(format!("{at} is {sent}, and reads as {read}")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::StatusReport;

    #[test]
    fn what_the_server_writes_reads_exactly() {
        let mut report = StatusReport {
            config_version: Some("v1".to_owned()),
            ..StatusReport::default()
        };
        report
            .services
            .insert("checkout".to_owned(), Default::default());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(read_exact::<StatusReport>(&json), Ok(report));
    }

    #[test]
    fn a_change_of_the_wire_fails_the_read_saying_where() {
        let sent = json!({
            "file": "deploy.yaml", "config_version": "v1", "last_reload": null, "services": {},
            "nodes": [], "nodes_without_telemetry": [],
        });
        assert!(read_exact::<StatusReport>(&sent).is_ok());
        let read = |change: &dyn Fn(&mut serde_json::Map<String, Value>)| {
            let mut json = sent.clone();
            change(json.as_object_mut().unwrap());
            read_exact::<StatusReport>(&json).unwrap_err()
        };
        let added = read(&|j| drop(j.insert("clients".to_owned(), json!([]))));
        assert!(
            added.ends_with(": /clients is [], which the type does not carry"),
            "{added}"
        );
        let missing = read(&|j| drop(j.remove("nodes_without_telemetry")));
        assert!(
            missing.ends_with(": /nodes_without_telemetry is missing, and reads as []"),
            "{missing}"
        );
        let rollout = json!({"kind": "canary", "version": "v2", "baseline": "v1",
            "state": "rolling_sideways", "awaiting_ack": false, "failed_checks": 0, "history": []});
        let unknown =
            read(&|j| drop(j.insert("services".to_owned(), json!({"s": {"rollout": rollout}}))));
        assert!(
            unknown.contains(
                ": /services/s/rollout/state is \"rolling_sideways\", and reads as \"unknown\""
            ),
            "{unknown}"
        );
        let retyped = read(&|j| drop(j.insert("nodes".to_owned(), json!({}))));
        assert!(retyped.starts_with("does not read as "), "{retyped}");
    }
}
