//! `vigil check` end to end: generated workloads reported exactly, bad input
//! dead-lettered with its reason, real sample messages accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::support::*;

fn generated(dir: &Path, format: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "--events", "40000", "--keys", "2000", "--tables", "4", "--format", format, "--seed", "11",
    ];
    args.extend_from_slice(&FAULTY);
    args.extend_from_slice(extra);
    generate(dir, &args)
}

fn assert_every_kind_expected(expected: &Path) {
    assert_expects_some(expected, &KINDS);
}

#[test]
fn generated_workloads_of_every_format_are_reported_exactly() {
    for (format, kcat) in [
        ("debezium", false),
        ("debezium-schema", true),
        ("debezium-flat", false),
        ("maxwell", true),
        ("canal", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let flags: &[&str] = if kcat { &["--kcat"] } else { &[] };
        generated(dir.path(), format, flags);
        let expected = dir.path().join("expected.ndjson");
        assert_every_kind_expected(&expected);
        let checked = check(
            Some(&dir.path().join("vigil.toml")),
            &[&dir.path().join("cdc.ndjson")],
            &[&dir.path().join("cache.ndjson")],
            &dir.path().join("out"),
            &[],
        );
        assert_eq!(checked.code, 0, "{format}: {}", checked.stderr);
        assert_matches_expected(&expected, &checked);
        assert_eq!(checked.summary["dead_letters_total"], 0, "{format}");
        assert!(
            checked.summary["duplicates"].as_u64().unwrap() > 0,
            "{format}: redeliveries were generated"
        );
    }
}

/// Splits a file of `kcat -J` lines into one file per partition.
fn split_by_partition(file: &Path, dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut parts: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for line in fs::read_to_string(file).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        parts
            .entry(v["partition"].as_i64().unwrap())
            .or_default()
            .push(line.to_string());
    }
    assert!(parts.len() > 1, "the workload should span partitions");
    parts
        .into_iter()
        .map(|(p, lines)| {
            let path = dir.join(format!("{prefix}-{p}.ndjson"));
            fs::write(&path, lines.join("\n") + "\n").unwrap();
            path
        })
        .collect()
}

#[test]
fn verdicts_do_not_depend_on_partitioning_or_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    generated(dir.path(), "debezium", &["--kcat"]);
    let cdc = split_by_partition(&dir.path().join("cdc.ndjson"), dir.path(), "cdc");
    let cache = split_by_partition(&dir.path().join("cache.ndjson"), dir.path(), "cache");
    let config = dir.path().join("vigil.toml");
    let expected = dir.path().join("expected.ndjson");
    let mut ids: Vec<BTreeSet<String>> = Vec::new();
    for workers in ["1", "4"] {
        let out = dir.path().join(format!("out-{workers}"));
        let mut cmd = vigil();
        cmd.env("VIGIL_PIPELINE__WORKERS", workers);
        cmd.args(["check", "--quiet", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(&out);
        for p in &cdc {
            cmd.arg("--cdc").arg(p);
        }
        for p in &cache {
            cmd.arg("--cache").arg(p);
        }
        let output = run(&mut cmd);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let checked = Checked {
            code: 0,
            summary: serde_json::from_slice(&output.stdout).unwrap(),
            stderr: String::new(),
            out,
        };
        assert_matches_expected(&expected, &checked);
        ids.push(
            checked
                .violations()
                .iter()
                .map(|v| v["id"].as_str().unwrap().to_string())
                .collect(),
        );
    }
    assert_eq!(ids[0], ids[1], "the same verdicts carry the same ids");
}

#[test]
fn violation_ids_are_unique_and_the_same_on_every_run() {
    let dir = tempfile::tempdir().unwrap();
    generated(dir.path(), "maxwell", &[]);
    let run_ids = |out: &str| -> Vec<String> {
        let checked = check(
            Some(&dir.path().join("vigil.toml")),
            &[&dir.path().join("cdc.ndjson")],
            &[&dir.path().join("cache.ndjson")],
            &dir.path().join(out),
            &[],
        );
        assert_eq!(checked.code, 0, "{}", checked.stderr);
        let mut ids: Vec<String> = checked
            .violations()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let first = run_ids("a");
    let unique: BTreeSet<&String> = first.iter().collect();
    assert_eq!(unique.len(), first.len(), "ids are unique within a run");
    assert_eq!(first, run_ids("b"));
}

#[test]
fn violations_are_cloudevents_with_the_documented_data() {
    let dir = tempfile::tempdir().unwrap();
    generated(dir.path(), "debezium", &[]);
    let checked = check(
        Some(&dir.path().join("vigil.toml")),
        &[&dir.path().join("cdc.ndjson")],
        &[&dir.path().join("cache.ndjson")],
        &dir.path().join("out"),
        &[],
    );
    let mut seen = BTreeSet::new();
    for v in checked.violations() {
        for attr in [
            "specversion",
            "id",
            "source",
            "type",
            "time",
            "subject",
            "datacontenttype",
            "data",
        ] {
            assert!(!v[attr].is_null(), "missing {attr} in {v}");
        }
        assert_eq!(v["specversion"], "1.0");
        let data = &v["data"];
        let kind = data["kind"].as_str().unwrap();
        assert_eq!(v["type"], format!("vigil.violation.{kind}"));
        for field in ["table", "pk", "version", "severity", "evidence"] {
            assert!(!data[field].is_null(), "{kind}: missing {field}");
        }
        assert!(data["pk"].is_object());
        assert!(!data["evidence"].as_array().unwrap().is_empty());
        let entity_level = matches!(
            kind,
            "version_regression" | "version_gap" | "conflicting_version"
        );
        assert_eq!(
            data["key"].is_null(),
            entity_level,
            "{kind}: key is null exactly for entity-level kinds"
        );
        if !entity_level {
            assert_eq!(v["subject"], data["key"]);
        }
        match kind {
            "late_invalidation" => {
                assert!(data["lag_ms"].as_i64().unwrap() > data["deadline_ms"].as_i64().unwrap())
            }
            "stale_fill" => assert!(
                data["latest_version"].as_u64().unwrap() > data["version"].as_u64().unwrap()
            ),
            "version_gap" => assert_eq!(
                data["expected"].as_u64().unwrap(),
                data["latest_version"].as_u64().unwrap() + 1
            ),
            "missing_invalidation" => assert_eq!(data["deadline_ms"], 1000),
            _ => {}
        }
        seen.insert(kind.to_string());
    }
    assert_eq!(seen.len(), KINDS.len(), "every kind was checked: {seen:?}");
}

fn debezium_user(op: &str, id: Option<u64>, version: u64, ts: i64) -> String {
    let mut row = json!({ "name": "Ada", "version": version });
    if let Some(id) = id {
        row["id"] = json!(id);
    }
    let (before, after) = if op == "d" {
        (row, Value::Null)
    } else {
        (Value::Null, row)
    };
    json!({
        "before": before, "after": after, "op": op,
        "source": { "ts_ms": ts, "schema": "public", "table": "users", "db": "app" }
    })
    .to_string()
}

fn debezium_truncate(table: &str, ts: i64) -> String {
    json!({
        "before": null, "after": null, "op": "t",
        "source": { "ts_ms": ts, "schema": "public", "table": table, "db": "app" }
    })
    .to_string()
}

#[test]
fn a_truncate_is_covered_by_globs_matching_its_key_templates() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    fs::write(
        &config,
        r#"
[detect]
deadline = "1s"
skew = "100ms"
allowed_lateness = "0ms"
late_window = "10s"

[[tables]]
table = "public.users"
pk = ["id"]
keys = ["user:{id}", "user:{id}:profile"]
version = "column:version"
"#,
    )
    .unwrap();
    let cdc = dir.path().join("cdc.ndjson");
    fs::write(
        &cdc,
        [
            debezium_truncate("users", 1_000),
            debezium_truncate("users", 10_000),
            debezium_user("c", Some(1), 1, 10_000),
            debezium_truncate("users", 20_000),
            debezium_truncate("orders", 20_000),
        ]
        .join("\n"),
    )
    .unwrap();
    let cache = dir.path().join("cache.ndjson");
    fs::write(
        &cache,
        [
            // Covers both patterns of the first truncate in time.
            r#"{"operation":"invalidate","cache_key":"user:*","timestamp":1.5}"#,
            // The second: exact keys and `user:1*` do not cover `user:*`,
            // `user:*:profile` covers only itself.
            r#"{"operation":"invalidate","cache_key":"user:1","version":1,"timestamp":10.05}"#,
            r#"{"operation":"invalidate","cache_key":"user:1:profile","version":1,"timestamp":10.05}"#,
            r#"{"operation":"invalidate","cache_key":"user:1*","timestamp":10.2}"#,
            r#"{"operation":"invalidate","cache_key":"user:*:profile","timestamp":10.3}"#,
            r#"{"operation":"fill","cache_key":"user:1","version":1,"timestamp":12}"#,
            // The third: after its deadline, within the late window.
            r#"{"operation":"invalidate","cache_key":"*","timestamp":23}"#,
        ]
        .join("\n"),
    )
    .unwrap();

    let checked = check(
        Some(&config),
        &[&cdc],
        &[&cache],
        &dir.path().join("out"),
        &[],
    );
    assert_eq!(checked.code, 0, "{}", checked.stderr);
    let violations = checked.violations();
    let mut got: Vec<(String, String, i64)> = violations
        .iter()
        .map(|v| {
            let d = &v["data"];
            let change_ts = d["change_ts"].as_str().unwrap();
            let seconds = change_ts[17..19].parse::<i64>().unwrap();
            (
                d["kind"].as_str().unwrap().to_string(),
                d["key"].as_str().unwrap().to_string(),
                seconds,
            )
        })
        .collect();
    got.sort();
    let want = |kind: &str, key: &str, s: i64| (kind.to_string(), key.to_string(), s);
    assert_eq!(
        got,
        vec![
            want("late_invalidation", "user:*", 20),
            want("late_invalidation", "user:*:profile", 20),
            want("missing_invalidation", "user:*", 10),
            want("missing_invalidation", "user:*", 20),
            want("missing_invalidation", "user:*:profile", 20),
        ],
        "{violations:#?}"
    );
    let schema = crate::schemas::Schema::named("urn:vigil:schema:violation:v1");
    for v in &violations {
        let d = &v["data"];
        assert_eq!(v["subject"], d["key"]);
        assert_eq!(d["table"], "public.users");
        assert_eq!(d["pk"], json!({}));
        assert_eq!(d["op"], "t");
        assert_eq!(d["version"], Value::Null);
        assert_eq!(d["deadline_ms"], 1000);
        if d["kind"] == "late_invalidation" {
            assert_eq!(d["lag_ms"], 3000);
        }
        let errors = schema.errors(d);
        assert!(errors.is_empty(), "{v}: {errors:?}");
    }
    let s = &checked.summary;
    assert_eq!(s["truncates"], 3);
    // A truncate of an unmapped table is what any of its changes is.
    assert_eq!(s["dead_letters"]["unmapped_table"], 1);
}

#[test]
fn bad_input_ends_in_the_dlq_with_its_reason_and_never_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    fs::write(&config, USERS_CONFIG).unwrap();

    let huge = format!(
        "{{\"op\":\"c\",\"after\":{{\"blob\":\"{}\"}}}}",
        "x".repeat(10 << 20)
    );
    let mut cdc_lines: Vec<Vec<u8>> = vec![
        debezium_user("c", Some(1), 1, 1_000).into_bytes(),
        br#"{"op":"c","after":{"id":2,"version":1"#.to_vec(),
        br#"{"op":5,"after":{"id":3,"version":1},"source":{"ts_ms":1000,"schema":"public","table":"users"}}"#.to_vec(),
        debezium_user("c", None, 1, 1_000).into_bytes(),
        br#"{"op":"x","after":{"id":4,"version":1},"source":{"ts_ms":1000,"schema":"public","table":"users"}}"#.to_vec(),
        b"{\"op\":\"c\",\"after\":{\"id\":5,\"name\":\"\xff\xfe\"}}".to_vec(),
        huge.into_bytes(),
        br#"{"op":"c","after":{"id":6,"version":1},"source":{"ts_ms":1000,"schema":"public","table":"orders"}}"#.to_vec(),
        br#"{"op":"u","after":{"id":1,"name":"Ada"},"source":{"ts_ms":2000,"schema":"public","table":"users"}}"#.to_vec(),
        b"   ".to_vec(),
        debezium_user("u", Some(1), 2, 3_000).into_bytes(),
    ];
    let cdc = dir.path().join("cdc.ndjson");
    let mut f = fs::File::create(&cdc).unwrap();
    for line in cdc_lines.drain(..) {
        f.write_all(&line).unwrap();
        f.write_all(b"\n").unwrap();
    }
    drop(f);
    let cache = dir.path().join("cache.ndjson");
    fs::write(
        &cache,
        [
            r#"{"operation":"invalidate","cache_key":"user:1","version":1,"timestamp":1.2}"#,
            r#"{"operation":"purge","cache_key":"user:1","timestamp":1}"#,
            r#"{"operation":"invalidate","timestamp":1}"#,
            r#"{"operation":"fill","cache_key":"user:*","timestamp":1}"#,
            r#"{"operation":"invalidate","cache_key":"user:1","timestamp":"yesterday"}"#,
            r#"[1,2]"#,
            r#"{"operation":"invalidate","cache_key":"user:1","version":2,"timestamp":3.1}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let empty = dir.path().join("empty.ndjson");
    fs::write(&empty, "").unwrap();

    let checked = check(
        Some(&config),
        &[&cdc],
        &[&cache, &empty],
        &dir.path().join("out"),
        &[],
    );
    assert_eq!(checked.code, 0, "{}", checked.stderr);

    let dead: Vec<(String, u64, String)> = checked
        .dead_letters()
        .iter()
        .map(|d| {
            let file = Path::new(d["file"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (
                file,
                d["line"].as_u64().unwrap(),
                d["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut dead_sorted = dead.clone();
    dead_sorted.sort();
    let want = |file: &str, line: u64, reason: &str| (file.to_string(), line, reason.to_string());
    assert_eq!(
        dead_sorted,
        vec![
            want("cache.ndjson", 2, "unknown_op"),
            want("cache.ndjson", 3, "missing_field"),
            want("cache.ndjson", 4, "invalid_key"),
            want("cache.ndjson", 5, "wrong_type"),
            want("cache.ndjson", 6, "unknown_format"),
            want("cdc.ndjson", 2, "invalid_json"),
            want("cdc.ndjson", 3, "wrong_type"),
            want("cdc.ndjson", 4, "missing_pk"),
            want("cdc.ndjson", 5, "unknown_op"),
            want("cdc.ndjson", 6, "invalid_utf8"),
            want("cdc.ndjson", 7, "record_too_large"),
            want("cdc.ndjson", 8, "unmapped_table"),
            want("cdc.ndjson", 9, "missing_version"),
        ]
    );
    for d in checked.dead_letters() {
        assert!(!d["message"].as_str().unwrap().is_empty());
        assert!(d["stage"].is_string());
        match d["reason"].as_str().unwrap() {
            "invalid_utf8" => assert!(d["original_base64"].is_string()),
            "record_too_large" => {
                assert_eq!(d["truncated"], true);
                assert!(d["original_bytes"].as_u64().unwrap() > 10 << 20);
                assert!(d["original"].as_str().unwrap().len() <= 64 << 10);
            }
            "invalid_json" => assert_eq!(d["original"], r#"{"op":"c","after":{"id":2,"version":1"#),
            _ => assert!(d["original"].is_string()),
        }
    }
    let s = &checked.summary;
    assert_eq!(s["dead_letters_total"], 13);
    assert_eq!(s["dead_letters"]["missing_pk"], 1);
    assert_eq!(
        s["records_read"][cdc.display().to_string()],
        10,
        "the blank line is not a record"
    );
    assert_eq!(s["records_read"][cache.display().to_string()], 7);
    assert_eq!(
        s["changes"], 2,
        "the good records were processed around the bad ones"
    );
    assert_eq!(s["invalidations"], 2);
    assert_eq!(s["violations_total"], 0);
}

#[test]
fn empty_inputs_make_an_empty_run() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.ndjson");
    fs::write(&empty, "").unwrap();
    let checked = check(None, &[&empty], &[&empty], &dir.path().join("out"), &[]);
    assert_eq!(checked.code, 0, "{}", checked.stderr);
    assert_eq!(checked.summary["violations_total"], 0);
    assert_eq!(checked.summary["dead_letters_total"], 0);
    assert!(checked.violations().is_empty());
    assert!(checked.dead_letters().is_empty());
}

/// Every sample message (copied from the tools' documentation and test
/// fixtures), with its Kafka key, as a `kcat -J` line.
fn samples_as_kcat(dir: &Path) -> PathBuf {
    let samples = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("run by cargo or nextest"))
        .join("tests/data/samples");
    let mut lines = Vec::new();
    let mut files: Vec<_> = fs::read_dir(&samples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ndjson"))
        .collect();
    files.sort();
    for path in files {
        let topic = format!("samples.{}", path.file_stem().unwrap().to_string_lossy());
        for (offset, line) in fs::read_to_string(&path).unwrap().lines().enumerate() {
            let sample: Value = serde_json::from_str(line).unwrap();
            let text = |v: &Value| (!v.is_null()).then(|| v.to_string());
            lines.push(
                json!({
                    "topic": topic, "partition": 0, "offset": offset, "ts": 1_600_000_000_000i64,
                    "key": text(&sample["key"]), "payload": text(&sample["value"])
                })
                .to_string(),
            );
        }
    }
    let out = dir.join("samples.ndjson");
    fs::write(&out, lines.join("\n")).unwrap();
    out
}

/// The configuration of the sample run: the samples' tables that have a
/// primary key, unmapped tables counted, and the topic of the flattened
/// samples declared flattened.
const SAMPLES_CONFIG: &str = r#"
[inputs]
unmapped_tables = "count"
flattened_topics = ["samples.debezium-flattened"]

[[tables]]
table = "public.customers"
pk = ["id"]
keys = ["customer:{id}"]

[[tables]]
table = "inventory.customers"
pk = ["id"]
keys = ["customer:{id}", "customer-email:{email}"]

[[tables]]
table = "inventory.products"
pk = ["id"]
keys = ["product:{id}"]

[[tables]]
table = "inventory.products2"
pk = ["id"]
keys = ["product:{id}"]

[[tables]]
table = "test.product"
pk = ["id"]
keys = ["product:{id}"]

[[tables]]
table = "test.e"
keys = ["e:{id}:{c}"]

[[tables]]
table = "MyDatabase.User"
pk = ["UserID"]
keys = ["user:{UserID}"]
version = "column:Version"
"#;

#[test]
fn every_sample_message_is_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    fs::write(&config, SAMPLES_CONFIG).unwrap();
    let input = samples_as_kcat(dir.path());
    let checked = check(Some(&config), &[&input], &[], &dir.path().join("out"), &[]);
    assert_eq!(checked.code, 0, "{}", checked.stderr);
    let s = &checked.summary;
    // The only record that cannot be used: a PostgreSQL delete with neither
    // before image nor Kafka key (REPLICA IDENTITY NOTHING), whose primary
    // key nobody knows.
    let dead = checked.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["reason"], "missing_pk");
    assert_eq!(dead[0]["topic"], "samples.debezium-postgres");
    assert_eq!(s["skipped"]["tombstone"], 1);
    assert_eq!(s["skipped"]["transaction_metadata"], 6);
    assert_eq!(s["skipped"]["logical_message"], 1);
    assert_eq!(s["skipped"]["ddl"], 1);
    let changes = s["changes"].as_u64().unwrap();
    let unmapped: u64 = s["unmapped"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    // 9 PostgreSQL + 7 MySQL + 5 flattened + 1 CloudEvents + 8 Maxwell + 17
    // Canal rows, less the dead letter.
    assert_eq!(
        changes + unmapped,
        9 + 7 + 5 + 1 + 8 + 17 - 1,
        "changes {changes}, unmapped {unmapped}"
    );
    assert!(changes >= 30, "most samples map to a table: {changes}");
    assert_eq!(s["unmapped"]["s1.a"], 1, "the CloudEvents sample's table");

    // Without the declaration, the flattened samples (and they alone) are
    // dead letters naming their fields.
    let strict = dir.path().join("strict.toml");
    fs::write(
        &strict,
        SAMPLES_CONFIG.replace("flattened_topics = [\"samples.debezium-flattened\"]", ""),
    )
    .unwrap();
    let checked = check(
        Some(&strict),
        &[&input],
        &[],
        &dir.path().join("strict"),
        &[],
    );
    assert_eq!(checked.code, 0, "{}", checked.stderr);
    let unknown: Vec<Value> = checked
        .dead_letters()
        .into_iter()
        .filter(|d| d["reason"] != "missing_pk")
        .collect();
    assert_eq!(unknown.len(), 5, "{unknown:#?}");
    for d in &unknown {
        assert_eq!(d["reason"], "unknown_format");
        assert_eq!(d["topic"], "samples.debezium-flattened");
    }
    assert!(
        unknown[0]["message"]
            .as_str()
            .unwrap()
            .contains(r#"top-level fields "field1", "field2""#),
        "{}",
        unknown[0]["message"]
    );
}

#[test]
fn a_record_without_any_format_s_marks_is_a_change_only_where_flattened_rows_are_declared() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    let tables = r#"
[[tables]]
table = "public.users"
pk = ["id"]
keys = ["user:{id}"]
version = "column:version"

[[tables]]
table = "public.orders"
pk = ["id"]
keys = ["order:{id}"]
version = "column:version"
format = "flattened"
"#;
    fs::write(&config, tables).unwrap();
    let cdc = dir.path().join("cdc.ndjson");
    fs::write(
        &cdc,
        [
            // A bare row of a table declared flattened: a change.
            r#"{"id":1,"version":1,"__op":"c","__schema":"public","__table":"orders","__source_ts_ms":1000}"#,
            // The same shape for a table that is not: unknown_format.
            r#"{"id":1,"version":1,"__op":"c","__schema":"public","__table":"users","__source_ts_ms":1000}"#,
            // An object of no format at all.
            r#"{"foo":"bar"}"#,
            // Many fields: the message lists a bounded number.
            &format!(
                "{{{}}}",
                (0..40)
                    .map(|i| format!("\"f{i:02}\":{i}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ]
        .join("\n"),
    )
    .unwrap();
    let checked = check(Some(&config), &[&cdc], &[], &dir.path().join("out"), &[]);
    assert_eq!(checked.code, 0, "{}", checked.stderr);
    assert_eq!(checked.summary["changes"], 1);
    let dead = checked.dead_letters();
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["unknown_format"; 3]);
    let message = |i: usize| dead[i]["message"].as_str().unwrap().to_string();
    assert!(
        message(0).contains(
            r#"top-level fields "__op", "__schema", "__source_ts_ms", "__table", "id", "version""#
        ),
        "{}",
        message(0)
    );
    assert!(
        message(0).contains(r#"format = "flattened""#),
        "{}",
        message(0)
    );
    assert!(
        message(1).contains(r#"top-level fields "foo")"#),
        "{}",
        message(1)
    );
    assert!(
        message(2).contains(r#""f15", and 24 more)"#) && !message(2).contains("\"f16\""),
        "{}",
        message(2)
    );

    // Declared for the whole topic instead, kcat -J lines of that topic are
    // read as flattened rows whatever their table.
    let kcat = dir.path().join("kcat.ndjson");
    let line = |payload: &str| {
        json!({"topic": "pg.flat", "partition": 0, "offset": 0, "ts": 1000, "key": null, "payload": payload})
            .to_string()
    };
    fs::write(
        &kcat,
        line(r#"{"id":2,"version":1,"__op":"c","__schema":"public","__table":"users","__source_ts_ms":1000}"#),
    )
    .unwrap();
    let topic_config = dir.path().join("topic.toml");
    fs::write(
        &topic_config,
        format!("[inputs]\nflattened_topics = [\"^pg\\\\.\"]\n{tables}"),
    )
    .unwrap();
    let checked = check(
        Some(&topic_config),
        &[&kcat],
        &[],
        &dir.path().join("topic"),
        &[],
    );
    assert_eq!(checked.code, 0, "{}", checked.stderr);
    assert_eq!(checked.summary["changes"], 1, "{}", checked.summary);
    assert_eq!(checked.summary["dead_letters_total"], 0);
}

#[test]
fn exit_status_tells_violations_usage_and_configuration_errors_apart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    fs::write(&config, USERS_CONFIG).unwrap();
    let cdc = dir.path().join("cdc.ndjson");
    fs::write(&cdc, debezium_user("c", Some(1), 1, 1_000)).unwrap();
    let out = dir.path().join("out");

    let ran = check(Some(&config), &[&cdc], &[], &out, &[]);
    assert_eq!(
        ran.code, 0,
        "a missing invalidation is reported, not an error"
    );
    assert_eq!(ran.summary["violations"]["missing_invalidation"], 1);
    let failed = check(Some(&config), &[&cdc], &[], &out, &["--fail-on-violation"]);
    assert_eq!(failed.code, 1);

    let missing_file = check(
        Some(&config),
        &[&dir.path().join("nope.ndjson")],
        &[],
        &out,
        &[],
    );
    assert_eq!(missing_file.code, 2);
    assert!(
        missing_file.stderr.contains("nope.ndjson"),
        "{}",
        missing_file.stderr
    );

    let bad = dir.path().join("bad.toml");
    fs::write(&bad, "[detect]\ndeadline = \"soon\"\n").unwrap();
    let bad_config = check(Some(&bad), &[&cdc], &[], &out, &[]);
    assert_eq!(bad_config.code, 2);
    assert!(
        bad_config.stderr.contains("deadline"),
        "{}",
        bad_config.stderr
    );

    // Files have no headers for binary CloudEvents.
    let binary = dir.path().join("binary.toml");
    fs::write(
        &binary,
        format!("{USERS_CONFIG}\n[outputs]\ncloudevents_mode = \"binary\"\n"),
    )
    .unwrap();
    let binary_config = check(Some(&binary), &[&cdc], &[], &out, &[]);
    assert_eq!(binary_config.code, 2);
    assert!(
        binary_config.stderr.contains("outputs.cloudevents_mode"),
        "{}",
        binary_config.stderr
    );

    // A schema registry CA file that holds no certificate.
    let ca = dir.path().join("ca.pem");
    fs::write(&ca, "not a certificate\n").unwrap();
    let registry = dir.path().join("registry.toml");
    fs::write(
        &registry,
        format!(
            "{USERS_CONFIG}\n[schema_registry]\nurl = \"https://registry:8081\"\nca_file = {:?}\n",
            ca.display().to_string()
        ),
    )
    .unwrap();
    let registry_config = check(Some(&registry), &[&cdc], &[], &out, &[]);
    assert_eq!(registry_config.code, 2, "{}", registry_config.stderr);
    assert!(
        registry_config.stderr.contains("schema_registry.ca_file"),
        "{}",
        registry_config.stderr
    );

    let no_input = check(Some(&config), &[], &[], &out, &[]);
    assert_eq!(no_input.code, 2);
    let usage = run(vigil().args(["check", "--no-such-flag"]));
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn check_help_explains_every_flag_and_output() {
    let help = run(vigil().args(["check", "--help"]));
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for needle in [
        "--config",
        "--cdc",
        "--cache",
        "--out",
        "--state",
        "--fail-on-violation",
        "--quiet",
        "violations.ndjson",
        "dlq.ndjson",
        "kcat",
        "Exit status",
    ] {
        assert!(
            text.contains(needle),
            "`vigil check --help` should mention {needle}"
        );
    }
}

#[test]
fn bench_measures_check_and_verifies_its_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(vigil()
        .args([
            "bench",
            "--skip-kafka",
            "--check",
            "3000:300",
            "--check",
            "2000:100",
            "--decode-records",
            "5000",
            "--work",
        ])
        .arg(dir.path()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = report["check"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for r in runs {
        assert!(r["records_per_second"].as_f64().unwrap() > 0.0);
        assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0);
        assert_eq!(r["violations"], r["expected_violations"]);
        for stage in ["ingest", "route", "detect", "commit"] {
            assert!(r["stage_ns_per_record"][stage].is_u64(), "{stage} in {r}");
        }
    }
    assert_eq!(runs[0]["events"], 3000);
    assert_eq!(runs[1]["keys"], 100);
    assert!(report["machine"]["cpus"].as_u64().unwrap() >= 1);
    // Every change decoded in each format (the measure fails otherwise).
    let decode = &report["decode"];
    assert!(decode["records"].as_u64().unwrap() > 1000, "{decode}");
    for figure in [
        "json_ns_per_record",
        "avro_ns_per_record",
        "protobuf_ns_per_record",
    ] {
        assert!(decode[figure].as_f64().unwrap() > 0.0, "{decode}");
    }
    for binary in ["avro_bytes_per_record", "protobuf_bytes_per_record"] {
        assert!(
            decode[binary].as_f64() < decode["json_bytes_per_record"].as_f64(),
            "{decode}"
        );
    }
}

#[test]
fn state_beyond_the_cache_size_leaves_memory_and_the_verdicts_stay_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "--events", "60000", "--keys", "30000", "--tables", "4", "--seed", "12",
    ];
    args.extend_from_slice(&FAULTY);
    generate(dir.path(), &args);
    let mut config: toml::Table =
        toml::from_str(&fs::read_to_string(dir.path().join("vigil.toml")).unwrap()).unwrap();
    let mut state = toml::Table::new();
    state.insert("cache_size".into(), "8MiB".into());
    state.insert("checkpoint_interval".into(), "20ms".into());
    config.insert("state".into(), state.into());
    let config_path = dir.path().join("small-cache.toml");
    fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let expected = dir.path().join("expected.ndjson");

    let kept = dir.path().join("state");
    let kept_flags = ["--state", kept.to_str().unwrap()];
    for (name, extra) in [("in memory", &[][..]), ("kept", &kept_flags[..])] {
        let out = dir.path().join(name);
        let checked = check(
            Some(&config_path),
            &[&dir.path().join("cdc.ndjson")],
            &[&dir.path().join("cache.ndjson")],
            &out,
            extra,
        );
        assert_eq!(checked.code, 0, "{name}: {}", checked.stderr);
        assert_matches_expected(&expected, &checked);
        // Without kept state a slot over the budget is spilled at once;
        // with it, a slot leaves only once the checkpoint that wrote it is
        // committed, so how many leave during so short a run depends on how
        // many checkpoints the committer finished meanwhile (a few when the
        // disk is busy with other work).
        let least = if extra.is_empty() { 1000 } else { 1 };
        assert!(
            checked.summary["state_evictions"].as_u64().unwrap() >= least,
            "{name}: keys and entities left memory: {}",
            checked.summary
        );
        assert!(
            !out.join(".vigil-check-state").exists(),
            "{name}: the scratch store is removed"
        );
    }
}
