//! `state.retention` over hours of event time with ever-new keys: what is
//! older than the retention leaves memory and the store, what is within it
//! stays.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::Value;
use vigil::state::{Cf, RocksStore, Store, codec};

use crate::support::*;

const RETENTION_MS: i64 = 30 * 60_000;

/// The generated configuration with a retention, and a checkpoint at every
/// batch of 64 records (about a minute of event time), so that state ages
/// as the run goes.
fn config(dir: &Path, retention: &str) -> std::path::PathBuf {
    let generated = fs::read_to_string(dir.join("vigil.toml")).unwrap();
    let path = dir.join(format!("vigil-{retention}.toml"));
    fs::write(
        &path,
        format!(
            "{generated}\n[state]\nretention = \"{retention}\"\ncheckpoint_interval = \"1ms\"\n\
             \n[pipeline]\nbatch_size = 64\n"
        ),
    )
    .unwrap();
    path
}

/// The touch times (event time) of the entries of a family.
fn touched(store: &RocksStore, cf: Cf) -> Vec<i64> {
    let mut times = Vec::new();
    store
        .scan(cf, &[], &mut |_, value| {
            times.push(codec::touched(value).expect("a valid header"));
            true
        })
        .unwrap();
    times
}

/// The latest commit time of each row's changes in a Debezium file.
fn last_change_per_row(cdc: &Path) -> BTreeMap<(String, u64), i64> {
    let mut rows = BTreeMap::new();
    for record in read_ndjson(cdc) {
        let Some(source) = record.get("source") else {
            continue; // a heartbeat
        };
        let row = record["after"].as_object().or(record["before"].as_object());
        let (Some(table), Some(id), Some(ts)) = (
            source["table"].as_str(),
            row.and_then(|r| r["id"].as_u64()),
            source["ts_ms"].as_i64(),
        ) else {
            continue;
        };
        let last = rows.entry((table.to_string(), id)).or_insert(ts);
        *last = (*last).max(ts);
    }
    rows
}

#[test]
fn keys_and_entities_older_than_the_retention_leave_memory_and_the_store() {
    let dir = tempfile::tempdir().unwrap();
    // Eight hours of event time, a new entity at every episode.
    let summary = generate(
        dir.path(),
        &["--events", "30000", "--keys", "30000", "--span", "8h"],
    );
    let last_event = summary["generated"]["last_event_ms"].as_i64().unwrap();
    let cdc = dir.path().join("cdc.ndjson");
    let cache = dir.path().join("cache.ndjson");
    let state = dir.path().join("state");
    let checked = check(
        Some(&config(dir.path(), "30m")),
        &[&cdc],
        &[&cache],
        &dir.path().join("out"),
        &["--state", state.to_str().unwrap()],
    );
    assert_eq!(checked.code, 0, "{}", checked.stderr);

    // The store: every row changed within the retention of the end is
    // there; nothing older than twice the retention is (the store is swept
    // each time the horizon moves by a quarter of the retention).
    let rows = last_change_per_row(&cdc);
    let recent = rows
        .values()
        .filter(|&&t| t >= last_event - RETENTION_MS)
        .count();
    let store = RocksStore::open_read_only(&state).unwrap();
    let entities = touched(&store, Cf::Entities);
    let keys = touched(&store, Cf::Keys);
    let oldest_kept = last_event - 2 * RETENTION_MS;
    for (cf, times) in [("entities", &entities), ("keys", &keys)] {
        let old = times.iter().filter(|&&t| t < oldest_kept).count();
        assert_eq!(
            old,
            0,
            "{old} of {} {cf} are over twice the retention old",
            times.len()
        );
    }
    assert!(
        entities.len() >= recent,
        "{} entities kept, {recent} rows changed within the retention",
        entities.len()
    );
    assert!(
        entities.len() * 4 < rows.len(),
        "{} entities kept of {}",
        entities.len(),
        rows.len()
    );

    // Memory: the same run keeping a week holds every key and entity; with
    // half an hour, what has expired leaves memory as the run goes. State
    // leaves once the committer has moved the horizon, and how far it trails
    // the workers depends on the machine's load: the half-hour peak was 1.6
    // to 3.0 MB over runs, against 8.2 MB for the week (without expiry the
    // two would be equal).
    let peak = |retention: &str| -> u64 {
        let checked = check(
            Some(&config(dir.path(), retention)),
            &[&cdc],
            &[&cache],
            &dir.path().join(format!("out-{retention}")),
            &[],
        );
        assert_eq!(checked.code, 0, "{}", checked.stderr);
        let summary: &Value = &checked.summary;
        summary["state_peak_bytes"].as_u64().unwrap()
    };
    let (week, half_hour) = (peak("7d"), peak("30m"));
    assert!(
        half_hour * 2 < week,
        "state in memory at its peak: {half_hour} bytes keeping 30 minutes, {week} keeping 7 days"
    );
}
