//! Invalidation storms end to end: `vigil gen --storms` injects one of each
//! kind, `vigil check` reports each with its scope, start and end; traffic
//! with bursts and daily variation raises none.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use vigil::formats::parse_rfc3339;

use crate::support::*;

/// How soon after its onset a storm must be reported (event time).
const START_WITHIN_MS: i64 = 5_000;
/// How soon after its end a storm must be reported as ended.
const END_WITHIN_MS: i64 = 30_000;

fn check_generated(dir: &Path) -> Checked {
    check(
        Some(&dir.join("vigil.toml")),
        &[&dir.join("cdc.ndjson")],
        &[&dir.join("cache.ndjson")],
        &dir.join("out"),
        &[],
    )
}

/// The event time of a storm event (`time`).
fn time_of(e: &Value) -> i64 {
    parse_rfc3339(e["time"].as_str().unwrap()).unwrap()
}

#[test]
fn every_injected_storm_is_reported_with_its_scope_when_it_starts_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(
        dir.path(),
        &[
            "--storms", "--rate", "1000", "--keys", "5000", "--seed", "3",
        ],
    );
    assert_eq!(summary["expected_storms"].as_object().unwrap().len(), 6);
    let checked = check_generated(dir.path());
    assert_eq!(checked.code, 0, "{}", checked.stderr);
    // Storm traffic changes no verdict about the changes.
    assert_matches_expected(&dir.path().join("expected.ndjson"), &checked);

    let events = read_ndjson(&checked.out.join("storms.ndjson"));
    let mut by_scope: BTreeMap<(String, String), Vec<&Value>> = BTreeMap::new();
    for e in &events {
        assert_eq!(e["specversion"], "1.0");
        assert!(e["type"].as_str().unwrap().starts_with("vigil.storm."));
        let d = &e["data"];
        for field in [
            "rate",
            "peak",
            "baseline",
            "threshold",
            "count",
            "start",
            "duration_ms",
        ] {
            assert!(!d[field].is_null(), "{field} in {e}");
        }
        let scope = (
            d["scope_type"].as_str().unwrap().to_string(),
            d["scope"].as_str().unwrap().to_string(),
        );
        by_scope.entry(scope).or_default().push(e);
    }
    let expected = read_ndjson(&dir.path().join("expected-storms.ndjson"));
    assert_eq!(expected.len(), 6);
    assert_eq!(
        by_scope.len(),
        expected.len(),
        "exactly the injected scopes storm: {:?}",
        by_scope.keys().collect::<Vec<_>>()
    );
    for want in &expected {
        let scope = (
            want["scope_type"].as_str().unwrap().to_string(),
            want["scope"].as_str().unwrap().to_string(),
        );
        let (onset, end) = (
            want["start_ms"].as_i64().unwrap(),
            want["end_ms"].as_i64().unwrap(),
        );
        let storm = by_scope
            .get(&scope)
            .unwrap_or_else(|| panic!("{scope:?} was not reported"));
        let of_type = |t: &str| -> Vec<&Value> {
            storm
                .iter()
                .copied()
                .filter(|e| e["type"] == format!("vigil.storm.{t}"))
                .collect()
        };
        let (started, ended) = (of_type("started"), of_type("ended"));
        assert_eq!((started.len(), ended.len()), (1, 1), "{scope:?}");
        let start_time = time_of(started[0]);
        assert!(
            (onset..=onset + START_WITHIN_MS).contains(&start_time),
            "{scope:?} started at {start_time}, onset {onset}"
        );
        let reported_start = parse_rfc3339(started[0]["data"]["start"].as_str().unwrap()).unwrap();
        assert!((reported_start - onset).abs() <= START_WITHIN_MS);
        let end_time = time_of(ended[0]);
        assert!(
            (end..=end + END_WITHIN_MS).contains(&end_time),
            "{scope:?} ended at {end_time}, end {end}"
        );
        // Updates come while it lasts, at most every 5 s (the default).
        let updates: Vec<i64> = of_type("updated").into_iter().map(time_of).collect();
        assert!(!updates.is_empty(), "{scope:?} was updated");
        for pair in updates.windows(2) {
            assert!(pair[1] - pair[0] >= 5_000, "{scope:?}: {updates:?}");
        }
        let peak = ended[0]["data"]["peak"].as_f64().unwrap();
        let threshold = ended[0]["data"]["threshold"].as_f64().unwrap();
        assert!(peak > threshold, "{scope:?}: peak {peak} <= {threshold}");
    }
    // The hot key and the runaway service are named in their storms.
    let top = |scope: (&str, &str), list: &str| -> Vec<String> {
        let events = &by_scope[&(scope.0.to_string(), scope.1.to_string())];
        events[0]["data"][list]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        top(("hot_key", "t0:0:row"), "top_keys")
            .first()
            .map(String::as_str),
        Some("t0:0:row")
    );
    assert_eq!(
        top(("service", "svc-runaway"), "top_services")
            .first()
            .map(String::as_str),
        Some("svc-runaway")
    );
    assert_eq!(checked.summary["storms"]["bulk"]["started"], 1);

    // Decided in event time: a second run writes the same storms, same ids.
    let again = dir.path().join("again");
    let out = run(vigil()
        .env("VIGIL_PIPELINE__WORKERS", "1")
        .arg("check")
        .arg("--quiet")
        .arg("--config")
        .arg(dir.path().join("vigil.toml"))
        .arg("--cdc")
        .arg(dir.path().join("cdc.ndjson"))
        .arg("--cache")
        .arg(dir.path().join("cache.ndjson"))
        .arg("--out")
        .arg(&again));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = |out: &Path| -> Vec<String> {
        read_ndjson(&out.join("storms.ndjson"))
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&checked.out), ids(&again));
}

#[test]
fn traffic_with_bursts_and_daily_variation_raises_no_storm() {
    let dir = tempfile::tempdir().unwrap();
    // Eleven minutes of event time: a whole period of the variation and
    // its three 3x bursts.
    generate(
        dir.path(),
        &[
            "--bursts", "--rate", "1000", "--keys", "5000", "--events", "660000", "--seed", "4",
        ],
    );
    let checked = check_generated(dir.path());
    assert_eq!(checked.code, 0, "{}", checked.stderr);
    let storms = read_ndjson(&checked.out.join("storms.ndjson"));
    assert!(storms.is_empty(), "no storm expected: {storms:?}");
    assert_eq!(checked.summary["storms"], serde_json::json!({}));
    assert!(
        read_ndjson(&dir.path().join("expected-storms.ndjson")).is_empty(),
        "none injected"
    );
}

#[test]
fn storms_need_enough_normal_traffic_to_be_sized_against() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(vigil()
        .arg("gen")
        .arg("--out")
        .arg(dir.path())
        .args(["--storms", "--rate", "200"]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--storms") && stderr.contains("--rate"),
        "{stderr}"
    );
}
