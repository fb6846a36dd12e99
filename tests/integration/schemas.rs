//! The JSON Schemas under `schemas/`: every event vigil writes for a
//! workload with every violation kind and every kind of storm names its
//! schema in `dataschema`, and its `data` is valid against that file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use jsonschema::Validator;
use serde_json::{Value, json};

use crate::support::*;

/// A committed schema file and its validator.
pub struct Schema {
    pub path: PathBuf,
    validator: Validator,
}

impl Schema {
    /// The file a `dataschema` names: `urn:vigil:schema:FAMILY:VERSION` is
    /// `schemas/FAMILY.VERSION.json`, whose `$id` must be that URI. The file
    /// must itself be a valid draft 2020-12 schema; formats (`date-time`) are
    /// checked too.
    pub fn named(dataschema: &str) -> Schema {
        let (family, version) = dataschema
            .strip_prefix("urn:vigil:schema:")
            .and_then(|rest| rest.split_once(':'))
            .unwrap_or_else(|| panic!("{dataschema:?} is not urn:vigil:schema:FAMILY:VERSION"));
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas")
            .join(format!("{family}.{version}.json"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{dataschema} names {}: {e}", path.display()));
        let schema: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        assert_eq!(
            schema["$id"],
            dataschema,
            "the $id of {} is the URI that names it",
            path.display()
        );
        if let Err(e) = jsonschema::draft202012::meta::validate(&schema) {
            panic!("{} is not a draft 2020-12 schema: {e}", path.display());
        }
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Schema { path, validator }
    }

    /// The reasons `data` is not valid (none when it is).
    pub fn errors(&self, data: &Value) -> Vec<String> {
        self.validator
            .iter_errors(data)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    /// Asserts that `event`'s data is valid, naming the event if not.
    fn assert_valid(&self, event: &Value) {
        let errors = self.errors(&event["data"]);
        assert!(
            errors.is_empty(),
            "the data of {event} is not valid against {}:\n{}",
            self.path.display(),
            errors.join("\n")
        );
    }
}

/// Validates every event of `events` against the schema its `dataschema`
/// names; returns each distinct (`type`, `dataschema`, schema file).
fn validate_all(events: &[Value]) -> BTreeSet<(String, String, PathBuf)> {
    let mut schemas: Vec<(String, Schema)> = Vec::new();
    let mut seen = BTreeSet::new();
    for e in events {
        let uri = e["dataschema"]
            .as_str()
            .unwrap_or_else(|| panic!("no dataschema in {e}"));
        if !schemas.iter().any(|(u, _)| u == uri) {
            schemas.push((uri.to_string(), Schema::named(uri)));
        }
        let schema = &schemas.iter().find(|(u, _)| u == uri).unwrap().1;
        schema.assert_valid(e);
        seen.insert((
            e["type"].as_str().unwrap().to_string(),
            uri.to_string(),
            schema.path.clone(),
        ));
    }
    seen
}

fn schema_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(name)
}

#[test]
fn every_event_s_data_is_valid_against_the_schema_its_dataschema_names() {
    let dir = tempfile::tempdir().unwrap();
    // Storms of every kind, among traffic with the default fault rates; as
    // kcat -J lines, so the evidence names topics, partitions and offsets.
    let storms = dir.path().join("storms");
    generate(
        &storms,
        &[
            "--storms", "--kcat", "--rate", "1000", "--keys", "5000", "--seed", "3",
        ],
    );
    // Every violation kind, often, from bare lines: evidence names files
    // and lines.
    let faulty = dir.path().join("faulty");
    let mut args = vec![
        "--events", "40000", "--keys", "2000", "--tables", "4", "--seed", "11",
    ];
    args.extend_from_slice(&FAULTY);
    generate(&faulty, &args);
    let mut seen = BTreeSet::new();
    let mut evidence = BTreeSet::new();
    for workload in [&storms, &faulty] {
        let checked = check(
            Some(&workload.join("vigil.toml")),
            &[&workload.join("cdc.ndjson")],
            &[&workload.join("cache.ndjson")],
            &workload.join("out"),
            &[],
        );
        assert_eq!(checked.code, 0, "{}", checked.stderr);
        let violations = checked.violations();
        for v in &violations {
            for e in v["data"]["evidence"].as_array().unwrap() {
                evidence.insert(e.get("file").is_some());
            }
        }
        seen.extend(validate_all(&violations));
        seen.extend(validate_all(&read_ndjson(
            &workload.join("out").join("storms.ndjson"),
        )));
        seen.extend(validate_all(&read_ndjson(
            &workload.join("out").join("incidents.ndjson"),
        )));
    }
    let violation = schema_file("violation.v1.json");
    let storm = schema_file("storm.v1.json");
    let incident = schema_file("incident.v1.json");
    let mut expected: BTreeSet<(String, String, PathBuf)> = KINDS
        .iter()
        .map(|k| {
            (
                format!("vigil.violation.{k}"),
                "urn:vigil:schema:violation:v1".to_string(),
                violation.clone(),
            )
        })
        .collect();
    for phase in ["started", "updated", "ended"] {
        expected.insert((
            format!("vigil.storm.{phase}"),
            "urn:vigil:schema:storm:v1".to_string(),
            storm.clone(),
        ));
    }
    for phase in ["opened", "updated", "resolved"] {
        expected.insert((
            format!("vigil.incident.{phase}"),
            "urn:vigil:schema:incident:v1".to_string(),
            incident.clone(),
        ));
    }
    assert_eq!(
        seen, expected,
        "every event type was validated, each with its family's schema"
    );
    assert_eq!(
        evidence,
        BTreeSet::from([false, true]),
        "both forms of evidence were validated"
    );
}

#[test]
fn the_schemas_reject_data_of_another_shape() {
    let violation = Schema::named("urn:vigil:schema:violation:v1");
    let valid = json!({
        "kind": "late_invalidation",
        "key": "user:1",
        "table": "public.users",
        "pk": {"id": 1},
        "op": "u",
        "version": 3,
        "change_ts": "2020-07-29T08:21:29.629Z",
        "cache_ts": "2020-07-29T08:21:31.000Z",
        "deadline_ms": 1000,
        "lag_ms": 1371,
        "severity": "low",
        "source_service": "users-api",
        "evidence": [
            {"topic": "cdc", "partition": 0, "offset": 7},
            {"file": "cache.ndjson", "line": 12}
        ]
    });
    assert_eq!(violation.errors(&valid), Vec::<String>::new());
    let changed = |change: &dyn Fn(&mut Value)| {
        let mut v = valid.clone();
        change(&mut v);
        v
    };
    let invalid = [
        (
            "a required field absent",
            changed(&|v| {
                v.as_object_mut().unwrap().remove("table");
            }),
        ),
        (
            "a field vigil does not write",
            changed(&|v| v["lag"] = json!(1371)),
        ),
        (
            "a number as text",
            changed(&|v| v["deadline_ms"] = json!("1000")),
        ),
        (
            "a time that is not RFC 3339",
            changed(&|v| v["change_ts"] = json!("1596010889629")),
        ),
        (
            "a kind's field absent",
            changed(&|v| {
                v.as_object_mut().unwrap().remove("lag_ms");
            }),
        ),
        (
            "another kind's field",
            changed(&|v| v["expected"] = json!(4)),
        ),
        (
            "another kind's severity",
            changed(&|v| v["severity"] = json!("high")),
        ),
        (
            "a key-level kind without a key",
            changed(&|v| v["key"] = Value::Null),
        ),
        (
            "evidence of both forms at once",
            changed(&|v| v["evidence"][0]["line"] = json!(1)),
        ),
        ("an unknown kind", changed(&|v| v["kind"] = json!("late"))),
    ];
    for (what, data) in &invalid {
        assert!(
            !violation.errors(data).is_empty(),
            "{what} passed the violation schema: {data}"
        );
    }

    let storm = Schema::named("urn:vigil:schema:storm:v1");
    let valid = json!({
        "scope_type": "hot_key",
        "scope": "user:1",
        "phase": "updated",
        "start": "2020-07-29T08:21:29.000Z",
        "duration_ms": 5000,
        "rate": 1200.0,
        "peak": 1500.0,
        "baseline": 2.5,
        "threshold": 500.0,
        "count": 7000,
        "top_keys": [{"name": "user:1", "count": 7000}],
        "top_services": [{"name": "users-api", "count": 7000}]
    });
    assert_eq!(storm.errors(&valid), Vec::<String>::new());
    let mut no_count = valid.clone();
    no_count.as_object_mut().unwrap().remove("count");
    let mut extra = valid.clone();
    extra["top_keys"][0]["share"] = json!(1.0);
    let mut phase = valid.clone();
    phase["phase"] = json!("over");
    for data in [no_count, extra, phase] {
        assert!(!storm.errors(&data).is_empty(), "{data} passed");
    }
}
