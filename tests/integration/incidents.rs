//! Consistency incidents end to end: `vigil gen --outage` stops the service
//! that invalidates one table for two minutes; `vigil check` opens, updates
//! and resolves exactly that table's incident, with the same ids whatever
//! the run and the number of workers.

use std::path::Path;

use serde_json::Value;
use vigil::formats::parse_rfc3339;

use crate::support::*;

/// A short window and hold, so that the incident resolves within the three
/// minutes of traffic after the outage.
const INCIDENTS: &str = r#"
[incidents]
window = "30s"
min_changes = 50
update_every = "30s"
hold = "30s"
"#;

fn time_of(e: &Value) -> i64 {
    parse_rfc3339(e["time"].as_str().unwrap()).unwrap()
}

fn check_with_workers(dir: &Path, workers: &str) -> Vec<Value> {
    let out = dir.join(format!("out-{workers}"));
    let mut cmd = vigil();
    cmd.arg("check")
        .arg("--quiet")
        .arg("--config")
        .arg(dir.join("vigil.toml"))
        .arg("--cdc")
        .arg(dir.join("cdc.ndjson"))
        .arg("--cache")
        .arg(dir.join("cache.ndjson"))
        .arg("--out")
        .arg(&out)
        .env("VIGIL_PIPELINE__WORKERS", workers);
    let output = run(&mut cmd);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    read_ndjson(&out.join("incidents.ndjson"))
}

#[test]
fn an_outage_of_one_service_opens_updates_and_resolves_one_incident_with_stable_ids() {
    let dir = tempfile::tempdir().unwrap();
    generate(
        dir.path(),
        &[
            "--outage",
            "--rate",
            "500",
            "--keys",
            "3000",
            "--missing-rate",
            "0",
            "--late-rate",
            "0",
            "--seed",
            "5",
        ],
    );
    let config = dir.path().join("vigil.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(INCIDENTS);
    std::fs::write(&config, text).unwrap();

    let events = check_with_workers(dir.path(), "1");
    let phases: Vec<&str> = events
        .iter()
        .map(|e| e["data"]["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases.first(), Some(&"opened"), "{phases:?}");
    assert_eq!(phases.last(), Some(&"resolved"), "{phases:?}");
    assert!(
        phases[1..phases.len() - 1].iter().all(|p| *p == "updated") && phases.len() >= 5,
        "one incident, updated every 30 s of a two-minute outage: {phases:?}"
    );
    for e in &events {
        assert_eq!(e["subject"], "public.t1", "only table 1's incident: {e}");
        assert_eq!(e["data"]["table"], "public.t1");
        assert_eq!(e["data"]["service"], "svc-t1", "{e}");
        assert_eq!(e["dataschema"], "urn:vigil:schema:incident:v1");
        assert_eq!(e["data"]["start"], events[0]["data"]["start"]);
    }
    let start = parse_rfc3339(events[0]["data"]["start"].as_str().unwrap()).unwrap();
    let opened = &events[0];
    let d = &opened["data"];
    assert!(d["ratio"].as_f64().unwrap() < 0.999, "{opened}");
    assert!(d["decided"].as_u64().unwrap() >= 50);
    assert!(d["violations"]["missing_invalidation"].as_u64().unwrap() > 0);
    let first = &d["first_violation"];
    assert_eq!(first["kind"], "missing_invalidation");
    assert_eq!(
        parse_rfc3339(first["time"].as_str().unwrap()).unwrap(),
        start
    );
    assert!(
        time_of(opened) - start <= 2_000,
        "opened within 2 s of the first miss: {opened}"
    );
    let resolved = events.last().unwrap();
    let r = &resolved["data"];
    let keys = r["top_keys"].as_array().unwrap();
    assert!(!keys.is_empty() && keys.len() <= 10, "{resolved}");
    for k in keys {
        assert!(k["name"].as_str().unwrap().starts_with("t1:"), "{k}");
    }
    let latest = parse_rfc3339(r["latest_violation"]["time"].as_str().unwrap()).unwrap();
    // The outage lasts two minutes (a change's miss is decided at its
    // deadline, 1 s after it).
    let outage_ms = latest - start;
    assert!((118_000..=121_000).contains(&outage_ms), "{outage_ms} ms");
    // Resolved once the misses have left the 30 s window and 30 s passed.
    let after = time_of(resolved) - latest;
    assert!((59_000..=62_000).contains(&after), "{after} ms");

    // The same input gives the same events, ids included, in another run
    // and with other numbers of workers.
    for workers in ["1", "4"] {
        let again = check_with_workers(dir.path(), workers);
        assert_eq!(again, events, "with {workers} workers");
    }
}
