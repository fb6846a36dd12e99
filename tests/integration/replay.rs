//! `vigil replay` on files: what still fails is named with its reason and
//! exit status 3, a fixed configuration replays everything, a filter selects
//! by reason, a replay through the engine ends where a run with the fixed
//! configuration from the start would have, and a finished replay is not
//! done again. Through the engine to the output topics of the embedded
//! broker, a replay publishes exactly the violations it adds, and a broker
//! that cannot be reached or does not take them stops it with status 4.
//! Into a running two-stage deployment (`--stage one`), the running stage
//! two then reports what `vigil check` reports with the fix from the start.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use serde_json::Value;
use vigil::detect::key::KeyState;
use vigil::ingest::Stream;
use vigil::model::Millis;
use vigil::pipeline::Transfer;
use vigil::state::{Cf, RocksStore, Store, codec};

use crate::broker::{
    Broker, DLQ, Daemon, Out, STORMS, VIOLATIONS, headers_of, json_values, run_config,
};
use crate::support::*;

/// A generated workload in `kcat -J` lines, checked with table t2 unmapped
/// and its state in `s1`: the changes of t2 end in `o1/dlq.ndjson`.
fn dead_lettered(dir: &Path) -> u64 {
    generate(
        dir,
        &[
            "--kcat", "--events", "20000", "--keys", "2000", "--seed", "5",
        ],
    );
    let fixed = std::fs::read_to_string(dir.join("vigil.toml")).unwrap();
    let start = fixed.find("[[tables]]\ntable = \"public.t2\"").unwrap();
    let end = fixed[start + 1..]
        .find("[[tables]]")
        .map_or(fixed.len(), |i| start + 1 + i);
    let broken = format!("{}{}", &fixed[..start], &fixed[end..]);
    std::fs::write(dir.join("broken.toml"), broken).unwrap();
    let checked = check(
        Some(&dir.join("broken.toml")),
        &[&dir.join("cdc.ndjson")],
        &[&dir.join("cache.ndjson")],
        &dir.join("o1"),
        &["--state", dir.join("s1").to_str().unwrap()],
    );
    assert_eq!(checked.code, 0, "{}", checked.stderr);
    checked.summary["dead_letters"]["unmapped_table"]
        .as_u64()
        .unwrap()
}

fn replay(dir: &Path, args: &[&str]) -> (i32, Value) {
    let out = run(vigil()
        .arg("replay")
        .arg("--from-file")
        .arg(dir.join("o1/dlq.ndjson"))
        .args(args));
    let summary = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), summary)
}

#[test]
fn replay_reports_what_still_fails_and_replays_what_a_fix_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dead_lettered(dir.path());
    assert!(dead > 100);
    let broken = dir.path().join("broken.toml");
    let fixed = dir.path().join("vigil.toml");

    let (code, s) = replay(
        dir.path(),
        &["--dry-run", "--config", broken.to_str().unwrap()],
    );
    assert_eq!(code, 3, "{s}");
    assert_eq!(s["read"], dead);
    assert_eq!(s["still_failing"]["unmapped_table"]["count"], dead);
    assert_eq!(
        s["still_failing"]["unmapped_table"]["samples"][0], "0:1",
        "samples name DLQ positions"
    );

    let (code, s) = replay(
        dir.path(),
        &["--dry-run", "--config", fixed.to_str().unwrap()],
    );
    assert_eq!((code, s["replayed"].as_u64()), (0, Some(dead)), "{s}");

    let (code, s) = replay(
        dir.path(),
        &[
            "--dry-run",
            "--config",
            fixed.to_str().unwrap(),
            "--filter-reason",
            "invalid_json",
        ],
    );
    assert_eq!(
        (code, s["filtered"].as_u64(), s["replayed"].as_u64()),
        (0, Some(dead), Some(0))
    );

    // Through the engine, on the state the broken run left: the violations
    // of both runs are those of a run with the fixed configuration from the
    // start, with the same ids and contents, and so is the state. Run again,
    // the replay has nothing left to do.
    let (o2, s1) = (dir.path().join("o2"), dir.path().join("s1"));
    let pipeline = [
        "--config",
        fixed.to_str().unwrap(),
        "--to",
        "files",
        "--out",
        o2.to_str().unwrap(),
        "--state",
        s1.to_str().unwrap(),
    ];
    let (code, s) = replay(dir.path(), &pipeline);
    assert_eq!((code, s["replayed"].as_u64()), (0, Some(dead)), "{s}");
    assert_ends_as_from_start(dir.path(), &s1, &[&o2]);
    let (code, s) = replay(dir.path(), &pipeline);
    assert_eq!((code, s["read"].as_u64()), (0, Some(0)), "{s}");
}

/// Checks that the state `state` and the violations of the broken run (in
/// `o1`) and of the replays (in `replayed`) are those of a run with the
/// fixed configuration from the start.
fn assert_ends_as_from_start(dir: &Path, state: &Path, replayed: &[&Path]) {
    let live = fixed_from_start(dir);
    let mut dirs = vec![dir.join("o1")];
    dirs.extend(replayed.iter().map(|d| d.to_path_buf()));
    let files: Vec<_> = dirs.iter().map(|d| d.join("violations.ndjson")).collect();
    let replayed = by_id(&files.iter().map(|f| f.as_path()).collect::<Vec<_>>());
    assert!(live.len() > 100, "{} violations", live.len());
    assert_same_by_id(&replayed, &live, "after the replay");
    let (after_replay, from_start) = (state_of(state), state_of(&dir.join("s2")));
    assert_eq!(after_replay.entities, from_start.entities);
    assert!(
        after_replay.keys == from_start.keys,
        "key states differ after the replay"
    );
}

/// Asserts that `got` (violations by id, `what` they are) equals `expected`,
/// naming the first ids that differ.
fn assert_same_by_id(
    got: &BTreeMap<String, Value>,
    expected: &BTreeMap<String, Value>,
    what: &str,
) {
    assert!(
        got == expected,
        "{} violations {what}, {} expected; first differing ids: {:?}",
        got.len(),
        expected.len(),
        got.keys()
            .filter(|id| got.get(*id) != expected.get(*id))
            .chain(expected.keys().filter(|id| !got.contains_key(*id)))
            .take(5)
            .collect::<Vec<_>>()
    );
}

/// Violations of some files by id (a violation written twice, with the same
/// id, counts once; its copies must be equal).
fn by_id(files: &[&Path]) -> BTreeMap<String, Value> {
    files
        .iter()
        .flat_map(|f| read_ndjson(f))
        .fold(BTreeMap::new(), |mut by_id, v| {
            let id = v["id"].as_str().unwrap().to_owned();
            if let Some(earlier) = by_id.insert(id, v.clone()) {
                assert_eq!(earlier, v, "copies of a violation differ");
            }
            by_id
        })
}

/// What a run leaves in its state: each entity's stored value, and each
/// key's changes (id, version, verdict, cover).
struct Snapshot {
    entities: BTreeMap<Vec<u8>, Vec<u8>>,
    keys: BTreeMap<Vec<u8>, Vec<String>>,
}

fn state_of(path: &Path) -> Snapshot {
    let store = RocksStore::open(path).unwrap();
    let mut entities = BTreeMap::new();
    store
        .scan(Cf::Entities, &[], &mut |k, v| {
            entities.insert(k.to_vec(), v.to_vec());
            true
        })
        .unwrap();
    let mut keys = BTreeMap::new();
    store
        .scan(Cf::Keys, &[], &mut |k, v| {
            let (_, (state, _)): (Millis, (KeyState, Option<Millis>)) =
                codec::decode(Cf::Keys, v).unwrap();
            let changes = state
                .changes
                .iter()
                .map(|c| {
                    format!(
                        "{} {:?} {:?} {:?}",
                        c.id,
                        c.version,
                        c.status,
                        c.cover.as_ref().map(|cover| cover.ts)
                    )
                })
                .collect();
            keys.insert(k.to_vec(), changes);
            true
        })
        .unwrap();
    Snapshot { entities, keys }
}

#[test]
fn a_replay_killed_half_way_and_run_again_does_every_record_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dead_lettered(dir.path());
    let (s1, first, second) = (
        dir.path().join("s1"),
        dir.path().join("first"),
        dir.path().join("second"),
    );
    let pipeline = |out: &Path| {
        let mut cmd = vigil();
        cmd.arg("replay")
            .arg("--from-file")
            .arg(dir.path().join("o1/dlq.ndjson"))
            .arg("--config")
            .arg(dir.path().join("vigil.toml"))
            .args(["--to", "files", "--out"])
            .arg(out)
            .arg("--state")
            .arg(&s1);
        cmd
    };
    // Paced to last about eight seconds; killed at its first progress line
    // (five seconds in), after at least one batch was committed.
    let rate = (dead / 8).to_string();
    let mut child = pipeline(&first)
        .args(["--rate", &rate])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let progress = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("vigil replay:"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(progress.is_some(), "the replay reports progress");

    let out = run(&mut pipeline(&second));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{s}");
    let (done_before, read) = (
        s["resumed_past"].as_u64().unwrap(),
        s["read"].as_u64().unwrap(),
    );
    assert!(
        done_before > 0 && done_before < dead,
        "resumed half-way: {s}"
    );
    assert_eq!(done_before + read, dead, "{s}");
    assert_ends_as_from_start(dir.path(), &s1, &[&first, &second]);
}

#[test]
fn replay_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(vigil()
        .arg("replay")
        .arg("--from-file")
        .arg(dir.path().join("missing"))
        .arg("--dry-run"));
    assert_eq!(out.status.code(), Some(2));
    let out = run(vigil().arg("replay").arg("--dry-run"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from-topic"));
}

/// DLQ records as Kafka Connect (or vigil) and Spring Kafka write them, in a
/// DLQ topic of the embedded broker; `vigil replay --to original` sends each
/// back to its original topic and partition with its key, value and own
/// headers, counts the replay, and skips a record replayed too often.
#[test]
fn replay_to_original_republishes_from_a_topic_and_the_loop_guard_stops_repeat_failures() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::new(&[("orders", 3)]);
    let connect = |offset: &'static str, replays: Option<&'static str>| {
        let mut h = vec![
            ("trace-id", "t-1"),
            ("__connect.errors.topic", "orders"),
            ("__connect.errors.partition", "2"),
            ("__connect.errors.offset", offset),
            ("__connect.errors.stage", "VALUE_CONVERTER"),
            (
                "__connect.errors.exception.class.name",
                "vigil.error.InvalidJson",
            ),
            ("__connect.errors.exception.message", "expected a value"),
            ("vigil.error.reason", "invalid_json"),
        ];
        h.extend(replays.map(|n| ("vigil.replay.count", n)));
        h
    };
    let first = connect("41", None);
    let spring = [
        ("trace-id", "t-2"),
        ("kafka_dlt-original-topic", "orders"),
        ("kafka_dlt-original-partition", "\0\0\0\u{1}"),
        ("kafka_dlt-original-offset", "\0\0\0\0\0\0\0\u{7}"),
        ("kafka_dlt-original-timestamp", "\0\0\0\0\0\0\u{12}\u{34}"),
        ("kafka_dlt-exception-message", "boom"),
    ];
    let again = connect("42", Some("2"));
    let worn_out = connect("43", Some("3"));
    let dead: [(&str, &[(&str, &str)]); 4] = [
        ("k1", &first),
        ("k2", &spring),
        ("k3", &again),
        ("k4", &worn_out),
    ];
    for (key, headers) in dead {
        broker.produce(&Out {
            topic: DLQ,
            partition: 0,
            key: Some(key.as_bytes()),
            value: Some(format!("{{\"id\":\"{key}\"}}").as_bytes()),
            headers,
            ts_ms: Some(1_000),
        });
    }
    broker.flush();
    let config = run_config(dir.path(), "", &broker.bootstrap, &["orders"], &[], &[]);
    let progress = dir.path().join("progress.json");
    let replay = || {
        let out = run(vigil()
            .args(["replay", "--to", "original", "--from-topic", DLQ])
            .arg("--config")
            .arg(&config)
            .arg("--progress")
            .arg(&progress));
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code(), summary)
    };
    let (code, s) = replay();
    assert_eq!(code, Some(3), "a record skipped by the loop guard: {s}");
    assert_eq!(
        (s["read"].as_u64(), s["replayed"].as_u64()),
        (Some(4), Some(3))
    );
    assert_eq!(s["skipped_by_loop_guard"], 1);

    let republished = broker.read_until("orders", 3, Duration::from_secs(30), |m| m.len() >= 3);
    // Key, partition, value, headers and timestamp of each record.
    type Republished = (String, i32, String, Vec<(String, String)>, Option<i64>);
    let mut seen: Vec<Republished> = republished
        .iter()
        .map(|m| {
            let headers = m.headers().map_or(Vec::new(), |h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            });
            (
                String::from_utf8_lossy(m.key().unwrap()).into_owned(),
                m.partition(),
                String::from_utf8_lossy(m.payload().unwrap()).into_owned(),
                headers,
                m.timestamp().to_millis(),
            )
        })
        .collect();
    seen.sort();
    let headers = |trace: &str, count: &str| {
        vec![
            ("trace-id".to_owned(), trace.to_owned()),
            ("vigil.replay.count".to_owned(), count.to_owned()),
        ]
    };
    assert_eq!(
        seen,
        vec![
            (
                "k1".into(),
                2,
                r#"{"id":"k1"}"#.into(),
                headers("t-1", "1"),
                Some(1_000)
            ),
            (
                "k2".into(),
                1,
                r#"{"id":"k2"}"#.into(),
                headers("t-2", "1"),
                Some(0x1234)
            ),
            (
                "k3".into(),
                2,
                r#"{"id":"k3"}"#.into(),
                headers("t-1", "3"),
                Some(1_000)
            ),
        ]
    );

    let (code, s) = replay();
    assert_eq!(code, Some(0), "{s}");
    assert_eq!(s["read"], 0, "a finished replay is not done again: {s}");
}

/// The configuration of `vigil run` on the embedded broker, with the fixed
/// configuration of the workload `dead_lettered` generated and `overrides`.
fn pipeline_config(
    dir: &Path,
    bootstrap: &str,
    overrides: &[(&str, &str, toml::Value)],
) -> std::path::PathBuf {
    let fixed = std::fs::read_to_string(dir.join("vigil.toml")).unwrap();
    let cdc = [
        "gen.public.t0",
        "gen.public.t1",
        "gen.public.t2",
        "__debezium-heartbeat.gen",
    ];
    run_config(dir, &fixed, bootstrap, &cdc, &["cache-events"], overrides)
}

/// Records in a topic of the embedded broker: the sum of its partitions'
/// end offsets.
fn records_in(broker: &Broker, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum()
}

/// `vigil replay --to pipeline` publishes what the engine finds to the
/// output topics, as `vigil run` does (CloudEvents keyed by their subject):
/// while the violations topic's leader is down, a record not taken within
/// message.timeout.ms stops the replay with status 4; run again once the
/// broker is back (in Kafka transactions this time), it continues, and the
/// violations topic then holds exactly the violations a run with the fixed
/// configuration from the start has beyond those of the broken run, each
/// once, by id. Nothing that still fails is dead-lettered again.
#[test]
fn replay_to_pipeline_publishes_exactly_the_added_violations_to_the_output_topics() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dead_lettered(dir.path());
    let broker = Broker::new(&[]);
    for p in 0..3 {
        broker
            .cluster()
            .partition_leader(VIOLATIONS, p, Some(3))
            .unwrap();
    }
    broker.cluster().broker_down(3).unwrap();
    let s1 = dir.path().join("s1");
    let replay = |config: &Path| {
        run(vigil()
            .arg("replay")
            .arg("--from-file")
            .arg(dir.path().join("o1/dlq.ndjson"))
            .arg("--config")
            .arg(config)
            .args(["--to", "pipeline", "--state"])
            .arg(&s1))
    };

    let text = |s: &str| toml::Value::String(s.into());
    let config = pipeline_config(
        dir.path(),
        &broker.bootstrap,
        &[("kafka", "message.timeout.ms", text("1000"))],
    );
    let out = replay(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("cannot produce to Kafka topic") && stderr.contains("not delivered"),
        "the failed delivery is named: {stderr}"
    );

    broker.cluster().broker_up(3).unwrap();
    let config = pipeline_config(
        dir.path(),
        &broker.bootstrap,
        &[("processing", "guarantee", text("exactly_once"))],
    );
    let out = replay(&config);
    let s: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{s} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s["destination"], "pipeline");
    assert_eq!(s["topics"]["violations"], VIOLATIONS);
    assert_eq!(
        s["resumed_past"].as_u64().unwrap() + s["replayed"].as_u64().unwrap(),
        dead,
        "{s}"
    );

    // What the replay must add: the violations of the fixed configuration
    // from the start that the broken run did not report.
    let broken = by_id(&[&dir.path().join("o1/violations.ndjson")]);
    let mut expected = fixed_from_start(dir.path());
    expected.retain(|id, _| !broken.contains_key(id));
    assert!(expected.len() > 50, "{} violations added", expected.len());

    let published = broker.read_until(VIOLATIONS, 3, Duration::from_secs(30), |m| {
        m.len() >= expected.len()
    });
    assert_eq!(
        records_in(&broker, VIOLATIONS),
        expected.len() as i64,
        "each added violation once, nothing else"
    );
    for m in &published {
        let event: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(m.key(), event["subject"].as_str().map(str::as_bytes));
        assert_eq!(
            headers_of(m)["content-type"],
            "application/cloudevents+json"
        );
    }
    let published: BTreeMap<String, Value> = json_values(&published)
        .into_iter()
        .map(|v| (v["id"].as_str().unwrap().to_owned(), v))
        .collect();
    assert_same_by_id(&published, &expected, "published");
    assert_eq!(records_in(&broker, DLQ), 0, "nothing dead-lettered again");
    // The broken run's storms are in its files; the replay adds none.
    assert_eq!(records_in(&broker, STORMS), 0);
}

/// A broker that cannot be reached stops `--to pipeline` before it reads
/// anything, with status 4 and a message that says so.
#[test]
fn replay_to_pipeline_without_a_broker_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let dlq = dir.path().join("dlq.ndjson");
    std::fs::write(&dlq, "{}\n").unwrap();
    let bootstrap = format!("127.0.0.1:{}", free_port());
    let config = run_config(dir.path(), USERS_CONFIG, &bootstrap, &["cdc"], &[], &[]);
    let out = run(vigil()
        .arg("replay")
        .arg("--from-file")
        .arg(&dlq)
        .arg("--config")
        .arg(&config)
        .args(["--to", "pipeline", "--broker-timeout", "1s"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach the Kafka brokers {bootstrap}")),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no summary of a replay not done");

    let out = run(vigil()
        .arg("replay")
        .arg("--from-file")
        .arg(&dlq)
        .arg("--config")
        .arg(&config)
        .args(["--to", "pipeline", "--out"])
        .arg(dir.path().join("out")));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--out is for --to files"));
}

/// The repartition topic between the stages, and stage two's changelog.
const REPARTITION: &str = "vigil.repartition";
const REPARTITION_CHANGELOG: &str = "vigil.repartition.changelog";

/// Produces the `kcat -J` lines of `file` to their topics and partitions,
/// with their keys and timestamps.
fn produce_kcat(broker: &Broker, file: &Path) {
    for line in read_ndjson(file) {
        broker.produce(&Out {
            topic: line["topic"].as_str().unwrap(),
            partition: line["partition"].as_i64().unwrap() as i32,
            key: line["key"].as_str().map(str::as_bytes),
            value: line["payload"].as_str().map(str::as_bytes),
            headers: &[],
            ts_ms: line["ts"].as_i64(),
        });
    }
    broker.flush();
}

/// The violations, by id, of `vigil check` with the fixed configuration
/// (`dir/vigil.toml`) over the workload's files from the start; its state
/// in `dir/s2`.
fn fixed_from_start(dir: &Path) -> BTreeMap<String, Value> {
    let from_start = check(
        Some(&dir.join("vigil.toml")),
        &[&dir.join("cdc.ndjson")],
        &[&dir.join("cache.ndjson")],
        &dir.join("fixed"),
        &["--state", dir.join("s2").to_str().unwrap()],
    );
    assert_eq!(from_start.code, 0, "{}", from_start.stderr);
    by_id(&[&dir.join("fixed/violations.ndjson")])
}

/// Ends a workload by event time: on every partition of `cdc` and `cache`,
/// a record ten minutes after `last_ms` (past every deadline, late window
/// and allowed lateness) that reports nothing: a snapshot read of a row the
/// workload does not have, an invalidation of a key no change has.
fn produce_end(broker: &Broker, cdc: &[&str], cache: &[&str], last_ms: Millis) {
    let topics =
        (cdc.iter().map(|t| (*t, Stream::Cdc))).chain(cache.iter().map(|t| (*t, Stream::Cache)));
    broker.produce_end_markers(topics, last_ms + 600_000);
}

/// The kinds stage two judges per fill, against the changes of its key it
/// holds when the fill is judged again.
const FILL_KINDS: [&str; 2] = ["stale_fill", "fill_after_delete"];

/// Reads the violations topic until every violation of `expected` is in it
/// (by id, with the same kind, key, table, pk, version and lag), then
/// checks that nothing else is, but for violations of [`FILL_KINDS`] on the
/// keys of `replayed` (a table replayed into stage two).
fn assert_published(
    broker: &Broker,
    expected: &BTreeMap<String, Value>,
    replayed: Option<&str>,
    what: &str,
) {
    let fingerprints = |m: &[rdkafka::message::OwnedMessage]| -> BTreeMap<String, Fingerprint> {
        json_values(m)
            .into_iter()
            .map(|v| {
                (
                    v["id"].as_str().unwrap().to_owned(),
                    fingerprint(&v["data"]),
                )
            })
            .collect()
    };
    let expected: BTreeMap<String, Fingerprint> = expected
        .iter()
        .map(|(id, v)| (id.clone(), fingerprint(&v["data"])))
        .collect();
    broker.read_until(VIOLATIONS, 3, Duration::from_secs(120), |m| {
        m.len() >= expected.len() && {
            let got = fingerprints(m);
            expected.iter().all(|(id, f)| got.get(id) == Some(f))
        }
    });
    let written = records_in(broker, VIOLATIONS) as usize;
    let got = fingerprints(
        &broker.read_until(VIOLATIONS, 3, Duration::from_secs(60), |m| {
            m.len() >= written
        }),
    );
    let missing: Vec<_> = expected
        .iter()
        .filter(|(id, f)| got.get(*id) != Some(f))
        .take(5)
        .collect();
    let unexpected: Vec<_> = got
        .iter()
        .filter(|(id, _)| !expected.contains_key(*id))
        .filter(|(_, f)| !(FILL_KINDS.contains(&f.0.as_str()) && replayed == Some(f.2.as_str())))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "{} violations {what}, {} expected; not reported or different: {missing:?}; unexpected: {unexpected:?}",
        got.len(),
        expected.len(),
    );
}

/// A running two-stage deployment with table t2 unmapped: stage one
/// dead-letters its changes, and the stages report what `vigil check`
/// reports with t2 unmapped. Then `vigil replay --to pipeline --stage one`
/// of the DLQ topic with t2 mapped, while both stages run: the replay runs
/// the entity checks of t2's changes, the running stage two judges their
/// obligations against the invalidations and fills its keys kept, and the
/// violations topic then holds every violation of `vigil check` with t2
/// mapped from the start, by id, and no other violation but of a fill of
/// a t2 key (README, replay: stage two judges a fill again at once on each replayed
/// change of its key, so one judged before the key's next replayed change
/// came can be reported falsely). The replay publishes no watermark mark
/// (only stage one's producer marks), reports no key verdict itself, and
/// run again has nothing left to do.
#[test]
fn replay_through_stage_two_of_a_running_deployment_reports_what_check_reports() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dead_lettered(dir.path());
    let cdc = [
        "gen.public.t0",
        "gen.public.t1",
        "gen.public.t2",
        "__debezium-heartbeat.gen",
    ];
    let cache = ["cache-events"];
    let partitions = vigil::workload::PARTITIONS;
    let mut topics: Vec<(&str, i32)> = cdc.iter().chain(&cache).map(|t| (*t, partitions)).collect();
    topics.extend([(REPARTITION, 4), (REPARTITION_CHANGELOG, 4)]);
    let broker = Broker::new(&topics);

    // Event time alone moves the watermarks: end markers end the workload.
    let text = |s: &str| toml::Value::String(s.into());
    let overrides = [
        ("detect", "idle_timeout", text("1h")),
        ("inputs", "repartition_topic", text(REPARTITION)),
        (
            "outputs",
            "repartition_changelog_topic",
            text(REPARTITION_CHANGELOG),
        ),
    ];
    let config = |name: &str, base: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let base = std::fs::read_to_string(dir.path().join(base)).unwrap();
        run_config(&d, &base, &broker.bootstrap, &cdc, &cache, &overrides)
    };
    let two = Daemon::start_with(&config("two", "broken.toml"), &["--stage", "two"]);
    assert!(
        two.wait_for_log("partitions assigned", Duration::from_secs(120)),
        "stage two joins its group:\n{}",
        two.log()
    );
    let one = Daemon::start_with(&config("one", "broken.toml"), &["--stage", "one"]);
    produce_kcat(&broker, &dir.path().join("cdc.ndjson"));
    produce_kcat(&broker, &dir.path().join("cache.ndjson"));
    let last_ms = read_ndjson(&dir.path().join("cdc.ndjson"))
        .iter()
        .chain(&read_ndjson(&dir.path().join("cache.ndjson")))
        .filter_map(|l| l["ts"].as_i64())
        .max()
        .unwrap();
    produce_end(&broker, &cdc, &cache, last_ms);

    let broken = by_id(&[&dir.path().join("o1/violations.ndjson")]);
    assert_published(&broker, &broken, None, "of the deployment with t2 unmapped");
    assert!(
        wait_until(Duration::from_secs(60), || records_in(&broker, DLQ)
            == dead as i64),
        "t2's changes are dead letters: {} of {dead}",
        records_in(&broker, DLQ)
    );

    let fixed = config("replay", "vigil.toml");
    let replay_state = dir.path().join("replay-state");
    let replay = || {
        let out = run(vigil()
            .args([
                "replay",
                "--from-topic",
                DLQ,
                "--to",
                "pipeline",
                "--stage",
                "one",
            ])
            .arg("--config")
            .arg(&fixed)
            .arg("--state")
            .arg(&replay_state));
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{summary} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        summary
    };
    let s = replay();
    assert_eq!(s["replayed"].as_u64(), Some(dead), "{s}");
    assert_eq!(s["topics"]["repartition"], REPARTITION, "{s}");
    // The replay reports the entity verdicts; the key verdicts are stage
    // two's.
    let found: BTreeSet<&str> = s["violations"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert!(
        found.is_subset(&BTreeSet::from([
            "version_regression",
            "version_gap",
            "conflicting_version"
        ])),
        "{s}"
    );

    let expected = fixed_from_start(dir.path());
    let keys_added = expected
        .iter()
        .filter(|(id, v)| !broken.contains_key(*id) && !v["data"]["key"].is_null())
        .count();
    assert!(keys_added > 20, "{keys_added} key violations to add");
    assert_published(
        &broker,
        &expected,
        Some("public.t2"),
        "after the replay through stage two",
    );

    let written = records_in(&broker, REPARTITION) as usize;
    let producers: BTreeSet<String> = broker
        .read_until(REPARTITION, 4, Duration::from_secs(60), |m| {
            m.len() >= written
        })
        .iter()
        .filter_map(|m| match Transfer::decode(m.payload()?) {
            Ok(Transfer::Mark { producer, .. }) => Some(producer.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(producers.len(), 1, "only stage one marks: {producers:?}");

    let s = replay();
    assert_eq!(s["read"], 0, "a finished replay is not done again: {s}");
    for daemon in [one, two] {
        daemon.terminate();
    }
}

/// `--stage one` is for `--to pipeline` and refuses co-partitioned inputs
/// (one stage), with status 2 and a message saying why, before anything is
/// read or any broker asked.
#[test]
fn replay_through_stage_two_refuses_what_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let dlq = dir.path().join("dlq.ndjson");
    std::fs::write(&dlq, "{}\n").unwrap();
    let bootstrap = format!("127.0.0.1:{}", free_port());
    let config = |overrides: &[(&str, &str, toml::Value)]| {
        run_config(
            dir.path(),
            USERS_CONFIG,
            &bootstrap,
            &["cdc"],
            &[],
            overrides,
        )
    };
    let out = dir.path().join("out");
    let replay = |config: &Path, to: &[&str]| {
        let out = run(vigil()
            .arg("replay")
            .arg("--from-file")
            .arg(&dlq)
            .arg("--config")
            .arg(config)
            .args(["--stage", "one", "--to"])
            .args(to)
            .arg("--state")
            .arg(dir.path().join("replay-state")));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.stdout.is_empty(),
            "no summary of a replay not done: {stderr}"
        );
        (out.status.code(), stderr)
    };
    let (code, stderr) = replay(&config(&[]), &["files", "--out", out.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--stage one is for --to pipeline"),
        "{stderr}"
    );

    let co_partitioned = config(&[("inputs", "co_partitioned", toml::Value::Boolean(true))]);
    let (code, stderr) = replay(&co_partitioned, &["pipeline"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--stage one replays into a running two-stage deployment")
            && stderr.contains("inputs.co_partitioned"),
        "{stderr}"
    );
}
