//! `vigil run` through an embedded broker: the same verdicts as `vigil
//! check`, a crash that loses nothing, a broker outage survived, dead
//! letters with their headers, metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use rdkafka::mocking::MockCoordinator;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::Value;

use vigil::detect::key::{KeyState, RetainedGlob};
use vigil::detect::storm::ScopeType;
use vigil::ingest::Stream;
use vigil::inspect::{Entries, compare_entries, verdict_entries};
use vigil::model::Provenance;
use vigil::state::{Cf, RocksStore, codec};
use vigil::workload::encode::CdcFormat;
use vigil::workload::storms::{StormSchedule, Traffic};
use vigil::workload::{FaultRates, GenRecord, Generator, PARTITIONS, START_MS, Spec, TxFaults};

use crate::broker::*;
use crate::fake_registry::FakeRegistry;
use crate::support::*;

const FAULTS: FaultRates = FaultRates {
    missing: 0.03,
    late: 0.03,
    stale_fill: 0.03,
    fill_after_delete: 0.3,
    regression: 0.02,
    gap: 0.02,
    conflict: 0.02,
    duplicate: 0.05,
};

/// How long a test waits for the daemon's verdicts.
const VERDICTS: Duration = Duration::from_secs(120);

/// How far after a workload's last record its end markers are: far past
/// every deadline (1 s), late window (0.5 s) and allowed lateness (2 s).
const END_AFTER_MS: i64 = 600_000;

/// A generated workload, produced to the broker and written to files.
struct Workload {
    generator: Generator,
    records: Vec<GenRecord>,
}

/// A workload whose event time starts at `start_ms`, over `keys` entities.
fn spec(events: u64, seed: u64, start_ms: i64, keys: u64) -> Spec {
    Spec {
        events,
        keys,
        tables: 3,
        rate: 4_000,
        format: CdcFormat::Debezium,
        seed,
        faults: FAULTS,
        start_ms,
        partitions: PARTITIONS,
        traffic: Traffic::Steady,
        storms: None,
        transactions: None,
    }
}

/// A workload with every violation kind and two storms, of the kinds whose
/// thresholds need no warm-up.
fn stormy_spec() -> Spec {
    Spec {
        storms: Some(StormSchedule {
            warmup_ms: 1_000,
            length_ms: 3_000,
            every_ms: 4_000,
            kinds: vec![ScopeType::HotKey, ScopeType::Bulk],
            settle_ms: 0,
        }),
        ..spec(20_000, 21, START_MS, 1_000)
    }
}

impl Workload {
    fn new(events: u64, seed: u64) -> Self {
        Self::of(spec(events, seed, START_MS, 1_000))
    }

    fn of(spec: Spec) -> Self {
        let mut generator = Generator::new(spec);
        let records: Vec<GenRecord> = generator.by_ref().collect();
        Workload { generator, records }
    }

    fn broker(&self) -> Broker {
        let topics = self.generator.topics();
        let with_partitions: Vec<(&str, i32)> =
            topics.iter().map(|t| (t.as_str(), PARTITIONS)).collect();
        Broker::new(&with_partitions)
    }

    fn produce(&self, broker: &Broker, records: impl IntoIterator<Item = usize>) {
        for r in records.into_iter().map(|i| &self.records[i]) {
            broker.produce(&Out {
                topic: &r.topic,
                partition: r.partition,
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                headers: &[],
                ts_ms: Some(r.ts_ms),
            });
        }
        broker.flush();
    }

    /// Ends the workload by event time: on every partition of every input
    /// topic, a record [`END_AFTER_MS`] after the workload's last one that
    /// reports nothing (no violation, no dead letter). On a CDC topic it is
    /// the snapshot read of a row the workload does not have (the workloads
    /// here are Debezium's), on the cache topic an invalidation of a key no
    /// change has. Once an instance has read them, its watermark is past every
    /// deadline of the workload, without waiting for partitions to be idle.
    fn produce_end(&self, broker: &Broker) {
        let ts_ms = self.records.iter().map(|r| r.ts_ms).max().unwrap() + END_AFTER_MS;
        let topics = self.generator.topics();
        broker.produce_end_markers(
            topics.iter().map(|topic| {
                let stream = self.generator.stream_of_topic(topic).unwrap_or(Stream::Cdc);
                (topic.as_str(), stream)
            }),
            ts_ms,
        );
    }

    fn config(
        &self,
        dir: &Path,
        broker: &Broker,
        overrides: &[(&str, &str, toml::Value)],
    ) -> std::path::PathBuf {
        self.config_from(&self.generator.config_toml(), dir, broker, overrides)
    }

    /// A `vigil run` configuration over `base_toml`, reading the
    /// workload's topics on `broker`.
    fn config_from(
        &self,
        base_toml: &str,
        dir: &Path,
        broker: &Broker,
        overrides: &[(&str, &str, toml::Value)],
    ) -> std::path::PathBuf {
        let topics = self.generator.topics();
        let (cdc, cache): (Vec<&str>, Vec<&str>) = topics
            .iter()
            .map(String::as_str)
            .partition(|t| self.generator.stream_of_topic(t) == Some(Stream::Cdc));
        run_config(dir, base_toml, &broker.bootstrap, &cdc, &cache, overrides)
    }

    /// `vigil check` over the same records, from files written in `dir`.
    fn check_files(&self, dir: &Path) -> Checked {
        self.check_files_with(dir, &[])
    }

    /// As [`Workload::check_files`], with further flags for `vigil check`.
    fn check_files_with(&self, dir: &Path, extra: &[&str]) -> Checked {
        let (cdc, cache) = (dir.join("cdc.ndjson"), dir.join("cache.ndjson"));
        let mut files = (
            fs::File::create(&cdc).unwrap(),
            fs::File::create(&cache).unwrap(),
        );
        for r in &self.records {
            let f = match self.generator.stream_of_topic(&r.topic) {
                Some(Stream::Cache) => &mut files.1,
                _ => &mut files.0,
            };
            f.write_all(r.value.as_deref().unwrap_or(b"null")).unwrap();
            writeln!(f).unwrap();
        }
        drop(files);
        fs::write(dir.join("vigil.toml"), self.generator.config_toml()).unwrap();
        let checked = check(
            Some(&dir.join("vigil.toml")),
            &[&cdc],
            &[&cache],
            &dir.join("out"),
            extra,
        );
        assert_eq!(checked.code, 0, "{}", checked.stderr);
        checked
    }

    /// The expected violations as fingerprints.
    fn expected(&self, dir: &Path) -> BTreeMap<Fingerprint, usize> {
        let path = dir.join("expected.ndjson");
        let lines: Vec<String> = self
            .generator
            .expected()
            .iter()
            .map(|e| e.to_json().to_string())
            .collect();
        fs::write(&path, lines.join("\n")).unwrap();
        multiset(read_ndjson(&path).iter().map(fingerprint))
    }
}

/// Distinct violations (by id) read from the violations topic, checking
/// that every copy of an id is the same event.
fn distinct_by_id(values: &[Value]) -> BTreeMap<String, Value> {
    let mut by_id: BTreeMap<String, Value> = BTreeMap::new();
    for v in values {
        let id = v["id"].as_str().unwrap().to_string();
        if let Some(seen) = by_id.get(&id) {
            assert_eq!(
                seen["data"], v["data"],
                "a re-emitted violation must be identical"
            );
        }
        by_id.insert(id, v.clone());
    }
    by_id
}

fn fingerprints(by_id: &BTreeMap<String, Value>) -> BTreeMap<Fingerprint, usize> {
    multiset(by_id.values().map(|v| fingerprint(&v["data"])))
}

/// Reads violations until their distinct fingerprints are `expected`; on
/// failure shows the end of the daemon's log.
fn await_verdicts(
    broker: &Broker,
    expected: &BTreeMap<Fingerprint, usize>,
    daemon: &Daemon,
) -> BTreeMap<String, Value> {
    distinct_by_id(&await_violations(broker, expected, daemon, false))
}

/// Reads violations (with `committed`, only those of committed
/// transactions) until their distinct fingerprints are `expected`; returns
/// every one read, duplicates included; on failure shows the end of the
/// daemon's log.
fn await_violations(
    broker: &Broker,
    expected: &BTreeMap<Fingerprint, usize>,
    daemon: &Daemon,
    committed: bool,
) -> Vec<Value> {
    let total: usize = expected.values().sum();
    let enough = |m: &[OwnedMessage]| {
        m.len() >= total && fingerprints(&distinct_by_id(&json_values(m))) == *expected
    };
    let messages = if committed {
        broker.read_committed_until(VIOLATIONS, 3, VERDICTS, enough)
    } else {
        broker.read_until(VIOLATIONS, 3, VERDICTS, enough)
    };
    let values = json_values(&messages);
    let by_id = distinct_by_id(&values);
    let got = fingerprints(&by_id);
    if got != *expected {
        let log = daemon.log();
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let by_kind = |m: &BTreeMap<Fingerprint, usize>, other: &BTreeMap<Fingerprint, usize>| {
            let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
            for (f, n) in m {
                let missing = n.saturating_sub(other.get(f).copied().unwrap_or(0));
                if missing > 0 {
                    *kinds.entry(f.0.clone()).or_default() += missing;
                }
            }
            kinds
        };
        panic!(
            "distinct violations read {} of {} expected; not reported {:?}; unexpected {:?}; end of the daemon's log:\n{}",
            got.len(),
            expected.len(),
            by_kind(expected, &got),
            by_kind(&got, expected),
            tail.join("\n")
        );
    }
    values
}

fn expected_kinds_of(expected: &BTreeMap<Fingerprint, usize>, kind: &str) -> usize {
    expected
        .iter()
        .filter(|(f, _)| f.0 == kind)
        .map(|(_, n)| n)
        .sum()
}

/// Records a daemon has read from its inputs, as its metrics last said
/// (they are published once a second); `None` while it does not listen yet.
fn records_consumed(port: u16) -> Option<u64> {
    let metrics = http_get(port, "/metrics", None)?.body;
    let counts = metrics
        .lines()
        .filter(|l| l.starts_with("vigil_records_consumed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    Some(counts.sum())
}

/// The body of `/metrics`.
fn scrape(port: u16) -> String {
    let response = http_get(port, "/metrics", None).expect("the HTTP server listens");
    assert_eq!(response.status, 200, "{}", response.body);
    response.body
}

#[test]
fn run_reports_transactions_exactly_as_check_does() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::of(Spec {
        transactions: Some(TxFaults {
            lost_event: 0.05,
            unterminated: 0.03,
        }),
        ..spec(8_000, 23, START_MS, 1_000)
    });
    let broker = w.broker();
    w.produce(&broker, 0..w.records.len());
    w.produce_end(&broker);
    let expected = w.expected(dir.path());
    for kind in [
        "incomplete_transaction",
        "unterminated_transaction",
        "transaction_not_invalidated",
    ] {
        assert!(expected_kinds_of(&expected, kind) > 0, "some {kind}");
    }
    let checked = w.check_files(dir.path());
    let check_ids: BTreeSet<String> = checked
        .violations()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    let port = free_port();
    let listen = toml::Value::String(format!("127.0.0.1:{port}"));
    let config = w.config(dir.path(), &broker, &[("metrics", "listen", listen)]);
    let daemon = Daemon::start(&config);
    let by_id = await_verdicts(&broker, &expected, &daemon);
    let run_ids: BTreeSet<String> = by_id.keys().cloned().collect();
    assert_eq!(run_ids, check_ids, "the same verdicts with the same ids");
    // Verdicts reaching a summary already final are counted apart from the
    // late input records.
    let help = "# HELP vigil_late_transaction_verdicts_total ";
    let mut metrics = String::new();
    wait_until(VERDICTS, || {
        metrics = scrape(port);
        metrics.contains(help)
    });
    assert!(metrics.contains(help), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("vigil_late_transaction_verdicts_total ")),
        "{metrics}"
    );
}

#[test]
fn run_reports_exactly_what_check_reports_and_serves_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::of(stormy_spec());
    let broker = w.broker();
    w.produce(&broker, 0..w.records.len());
    let expected = w.expected(dir.path());

    let checked = w.check_files(dir.path());
    let check_ids: BTreeSet<String> = checked
        .violations()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();

    let port = free_port();
    let listen = toml::Value::String(format!("127.0.0.1:{port}"));
    let config = w.config(dir.path(), &broker, &[("metrics", "listen", listen)]);
    let daemon = Daemon::start(&config);
    let by_id = await_verdicts(&broker, &expected, &daemon);
    let run_ids: BTreeSet<String> = by_id.keys().cloned().collect();
    assert_eq!(
        run_ids, check_ids,
        "the same verdicts carry the same ids in both modes"
    );
    let storm = |v: &Value| {
        (
            v["id"].as_str().unwrap().to_string(),
            v["type"].as_str().unwrap().to_string(),
            v["subject"].as_str().unwrap().to_string(),
            v["data"]["count"].as_u64().unwrap(),
        )
    };
    let check_storms: BTreeSet<_> = read_ndjson(&checked.out.join("storms.ndjson"))
        .iter()
        .map(storm)
        .collect();
    let started = |s: &BTreeSet<(String, String, String, u64)>| {
        s.iter()
            .filter(|e| e.1 == "vigil.storm.started")
            .map(|e| e.2.clone())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        started(&check_storms),
        BTreeSet::from(["bulk:bulk".to_string(), "hot_key:t0:0:row".to_string()])
    );
    let messages = broker.read_until(STORMS, 1, VERDICTS, |m| {
        json_values(m).iter().map(storm).collect::<BTreeSet<_>>() == check_storms
    });
    let run_storms: BTreeSet<_> = json_values(&messages).iter().map(storm).collect();
    assert_eq!(
        run_storms, check_storms,
        "run publishes the storms check reports"
    );

    let names = [
        "vigil_records_consumed_total{topic=\"cache-events\"}",
        "vigil_violations_total{kind=\"stale_fill\"}",
        "vigil_dead_letters_total{reason=\"invalid_json\"} 0",
        "vigil_changes_total{op=\"u\"}",
        "vigil_cache_events_total{action=\"fill\"}",
        "vigil_invalidation_lag_seconds_bucket",
        "vigil_changes_decided_total{table=\"public.t0\"}",
        "vigil_changes_invalidated_in_time_total{table=\"public.t0\"}",
        "vigil_watermark_timestamp_seconds",
        "vigil_watermark_delay_seconds",
        "# HELP vigil_violations_total ",
        "vigil_build_info{version=\"",
        "vigil_batch_processing_seconds_bucket",
        "vigil_state_size_keys{kind=\"cache_key\"}",
        "vigil_producer_queue_records",
        "vigil_consumer_lag_records{",
        "vigil_invalidations_per_second{scope_type=\"global\"}",
        "vigil_active_storms{scope_type=\"hot_key\"}",
        "vigil_storms_started_total{scope_type=\"bulk\"} 1",
    ];
    // Metrics are published once a second: wait for the counts of the end.
    let stale = format!(
        "vigil_violations_total{{kind=\"stale_fill\"}} {}",
        expected_kinds_of(&expected, "stale_fill")
    );
    let mut metrics = String::new();
    wait_until(VERDICTS, || {
        metrics = scrape(port);
        metrics.contains(&stale) && names.iter().all(|n| metrics.contains(n))
    });
    for name in names {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    assert!(
        metrics.contains(&stale),
        "/metrics lacks {stale}:\n{metrics}"
    );
    promtool(&["check", "metrics"], Some(&metrics));
    crate::monitoring::assert_monitoring_uses_exported_metrics(&metrics);
    daemon.terminate();
    assert!(
        broker
            .read_until(DLQ, 1, Duration::from_millis(500), |m| !m.is_empty())
            .is_empty()
    );
}

/// `vigil gen --format avro` registers its schemas and produces Debezium
/// records in Confluent's Avro framing; `vigil run`, fetching the schemas
/// from the registry, reports exactly the violations the generator expects,
/// which are those of the same workload in JSON.
#[test]
fn run_on_an_avro_workload_reports_what_the_generator_expects() {
    run_on_a_registered_workload(CdcFormat::DebeziumAvro, "avro");
}

/// The same with `vigil gen --format protobuf`: Debezium in Confluent's
/// Protobuf framing, its schemas compiled by the daemon.
#[test]
fn run_on_a_protobuf_workload_reports_what_the_generator_expects() {
    run_on_a_registered_workload(CdcFormat::DebeziumProtobuf, "protobuf");
}

/// `vigil gen --format {flag}` through a registry, then `vigil run` on it.
fn run_on_a_registered_workload(format: CdcFormat, flag: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (events, seed, keys) = (6_000, 15, 1_000);
    let binary = Spec {
        format,
        ..spec(events, seed, START_MS, keys)
    };
    let json = Workload::of(spec(events, seed, START_MS, keys));
    // The same workload built here: its topics, end markers and expected
    // violations.
    let w = Workload::of(binary);
    assert_eq!(w.generator.expected(), json.generator.expected());
    let broker = w.broker();
    let registry = FakeRegistry::start();
    let gen_dir = dir.path().join("gen");
    let rate = |r: f64| r.to_string();
    let flags = [
        ("--format", flag.to_string()),
        ("--brokers", broker.bootstrap.clone()),
        ("--schema-registry", registry.url()),
        ("--events", events.to_string()),
        ("--keys", keys.to_string()),
        ("--seed", seed.to_string()),
        ("--rate", "4000".to_string()),
        ("--missing-rate", rate(FAULTS.missing)),
        ("--late-rate", rate(FAULTS.late)),
        ("--stale-fill-rate", rate(FAULTS.stale_fill)),
        ("--fill-after-delete-rate", rate(FAULTS.fill_after_delete)),
        ("--regression-rate", rate(FAULTS.regression)),
        ("--gap-rate", rate(FAULTS.gap)),
        ("--conflict-rate", rate(FAULTS.conflict)),
        ("--duplicate-rate", rate(FAULTS.duplicate)),
    ];
    let args: Vec<&str> = flags
        .iter()
        .flat_map(|(flag, value)| [*flag, value.as_str()])
        .collect();
    let summary = generate(&gen_dir, &args);
    assert_eq!(summary["topics"], serde_json::json!(w.generator.topics()));
    let subjects: Vec<String> = (0..3)
        .flat_map(|t| ["value", "key"].map(|part| format!("gen.public.t{t}-{part}")))
        .collect();
    assert_eq!(registry.subjects(), subjects);
    let expected = w.expected(dir.path());
    assert!(expected_kinds_of(&expected, "missing_invalidation") > 0);
    assert_eq!(
        multiset(
            read_ndjson(&gen_dir.join("expected.ndjson"))
                .iter()
                .map(fingerprint)
        ),
        expected,
        "vigil gen expects what the workload built here does"
    );
    let produced = broker.read_until("gen.public.t0", PARTITIONS, VERDICTS, |m| !m.is_empty());
    assert!(
        produced
            .iter()
            .filter_map(|m| m.payload())
            .all(|v| v.first() == Some(&0)),
        "the changes are in Confluent's framing"
    );
    w.produce_end(&broker);

    // vigil gen's configuration, which names the registry.
    let generated = fs::read_to_string(gen_dir.join("vigil.toml")).unwrap();
    let config = w.config_from(&generated, dir.path(), &broker, &[]);
    let daemon = Daemon::start(&config);
    await_verdicts(&broker, &expected, &daemon);
    assert!(
        registry.hits("/schemas/ids/1") >= 1,
        "the daemon fetched the schemas"
    );
    daemon.terminate();
    assert!(
        broker
            .read_until(DLQ, 1, Duration::from_millis(500), |m| !m.is_empty())
            .is_empty(),
        "no dead letters"
    );
}

#[test]
fn avro_workloads_need_brokers_and_a_registry() {
    let dir = tempfile::tempdir().unwrap();
    for (args, mentions) in [
        (&["--format", "avro"][..], "--brokers"),
        (
            &["--format", "avro", "--brokers", "127.0.0.1:9"][..],
            "--schema-registry",
        ),
        (
            &["--schema-registry", "http://127.0.0.1:9"][..],
            "--format avro",
        ),
        (
            &["--format", "protobuf", "--brokers", "127.0.0.1:9"][..],
            "--schema-registry",
        ),
        (&["--kcat", "--brokers", "127.0.0.1:9"][..], "--kcat"),
    ] {
        let out = run(vigil().arg("gen").arg("--out").arg(dir.path()).args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(mentions), "{args:?}: {stderr}");
    }
}

/// The records of `topic` by event id (the `id` of a structured event, the
/// `ce_id` header of a binary one), read until every id of `ids` is there.
fn events_by_id(
    broker: &Broker,
    topic: &str,
    partitions: i32,
    ids: &BTreeSet<String>,
    id_of: impl Fn(&OwnedMessage) -> String,
) -> BTreeMap<String, OwnedMessage> {
    let read = |m: &[OwnedMessage]| -> BTreeMap<String, OwnedMessage> {
        m.iter().map(|m| (id_of(m), m.clone())).collect()
    };
    let messages = broker.read_until(topic, partitions, VERDICTS, |m| {
        let got = read(m);
        ids.iter().all(|id| got.contains_key(id))
    });
    let got = read(&messages);
    assert_eq!(
        got.keys().cloned().collect::<BTreeSet<_>>(),
        *ids,
        "{topic} holds the events vigil check reports"
    );
    got
}

/// Event data without the top lists of storms: estimates whose lightest
/// entries depend on the order records arrive in, which differs between two
/// daemons reading the same partitions (the unit tests of `events` show
/// both modes write the same lists).
fn without_top_lists(data: &Value) -> Value {
    let mut data = data.clone();
    if let Some(fields) = data.as_object_mut() {
        fields.remove("top_keys");
        fields.remove("top_services");
    }
    data
}

#[test]
fn binary_mode_puts_the_attributes_in_headers_and_the_data_in_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::of(stormy_spec());
    let broker = w.broker();
    const BINARY_VIOLATIONS: &str = "binary.violations";
    const BINARY_STORMS: &str = "binary.storms";
    broker
        .cluster()
        .create_topic(BINARY_VIOLATIONS, 3, 1)
        .unwrap();
    broker.cluster().create_topic(BINARY_STORMS, 1, 1).unwrap();
    w.produce(&broker, 0..w.records.len());
    let checked = w.check_files(dir.path());
    let ids = |events: &[Value]| -> BTreeSet<String> {
        events
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    let violation_ids = ids(&checked.violations());
    let storm_ids = ids(&read_ndjson(&checked.out.join("storms.ndjson")));
    assert!(!violation_ids.is_empty() && !storm_ids.is_empty());

    // Two daemons over the same inputs: one writes structured events, the
    // other binary ones, to topics of their own.
    let text = |s: &str| toml::Value::String(s.to_string());
    let (structured_dir, binary_dir) = (dir.path().join("structured"), dir.path().join("binary"));
    fs::create_dir_all(&structured_dir).unwrap();
    fs::create_dir_all(&binary_dir).unwrap();
    let structured = Daemon::start(&w.config(&structured_dir, &broker, &[]));
    let binary = Daemon::start(&w.config(
        &binary_dir,
        &broker,
        &[
            ("inputs", "group_id", text("vigil-it-binary")),
            ("outputs", "violations_topic", text(BINARY_VIOLATIONS)),
            ("outputs", "storms_topic", text(BINARY_STORMS)),
            ("outputs", "cloudevents_mode", text("binary")),
        ],
    ));
    let structured_id = |m: &OwnedMessage| -> String {
        let event: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        event["id"].as_str().unwrap().to_string()
    };
    let binary_id = |m: &OwnedMessage| -> String {
        headers_of(m)
            .remove("ce_id")
            .unwrap_or_else(|| panic!("no ce_id header: {:?}", headers_of(m)))
    };
    let mut schemas = BTreeMap::new();
    for (topic, binary_topic, partitions, ids) in [
        (VIOLATIONS, BINARY_VIOLATIONS, 3, &violation_ids),
        (STORMS, BINARY_STORMS, 1, &storm_ids),
    ] {
        let want = events_by_id(&broker, topic, partitions, ids, structured_id);
        let got = events_by_id(&broker, binary_topic, partitions, ids, binary_id);
        for (id, m) in &got {
            let event: Value = serde_json::from_slice(want[id].payload().unwrap()).unwrap();
            let attribute = |name: &str| event[name].as_str().unwrap().to_string();
            let expected_headers = BTreeMap::from([
                ("ce_specversion".to_string(), attribute("specversion")),
                ("ce_id".to_string(), attribute("id")),
                ("ce_source".to_string(), attribute("source")),
                ("ce_type".to_string(), attribute("type")),
                ("ce_time".to_string(), attribute("time")),
                ("ce_subject".to_string(), attribute("subject")),
                ("ce_dataschema".to_string(), attribute("dataschema")),
                ("content-type".to_string(), attribute("datacontenttype")),
            ]);
            assert_eq!(headers_of(m), expected_headers, "{binary_topic}: {id}");
            assert_eq!(m.key(), want[id].key(), "the same Kafka key");
            let data: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            assert_eq!(
                without_top_lists(&data),
                without_top_lists(&event["data"]),
                "{binary_topic}: the value is the data"
            );
            let schema = schemas
                .entry(attribute("dataschema"))
                .or_insert_with_key(|uri| crate::schemas::Schema::named(uri));
            let errors = schema.errors(&data);
            assert!(errors.is_empty(), "{data}: {errors:?}");
        }
    }
    assert_eq!(schemas.len(), 2, "violations and storms have their schemas");
    for daemon in [structured, binary] {
        daemon.terminate();
    }
}

/// `outputs.format = "avro"`: the data of each event an Avro datum in
/// Confluent's framing, its schema registered under `{topic}-value`, read
/// back by a registry-aware deserializer written elsewhere
/// (`schema_registry_converter`, against the test's registry).
#[test]
fn avro_events_are_read_back_by_a_registry_aware_deserializer() {
    use schema_registry_converter::blocking::avro::AvroDecoder;
    use schema_registry_converter::blocking::schema_registry::SrSettings;

    let dir = tempfile::tempdir().unwrap();
    let w = Workload::of(stormy_spec());
    let broker = w.broker();
    const AVRO_VIOLATIONS: &str = "avro.violations";
    const AVRO_STORMS: &str = "avro.storms";
    broker
        .cluster()
        .create_topic(AVRO_VIOLATIONS, 3, 1)
        .unwrap();
    broker.cluster().create_topic(AVRO_STORMS, 1, 1).unwrap();
    w.produce(&broker, 0..w.records.len());
    let checked = w.check_files(dir.path());
    let by_id = |events: Vec<Value>| -> BTreeMap<String, Value> {
        events
            .into_iter()
            .map(|e| (e["id"].as_str().unwrap().to_string(), e))
            .collect()
    };
    let violations = by_id(checked.violations());
    let storms = by_id(read_ndjson(&checked.out.join("storms.ndjson")));
    assert!(!violations.is_empty() && !storms.is_empty());

    let registry = FakeRegistry::start();
    let text = |s: &str| toml::Value::String(s.to_string());
    let daemon_dir = dir.path().join("avro");
    fs::create_dir_all(&daemon_dir).unwrap();
    let daemon = Daemon::start(&w.config(
        &daemon_dir,
        &broker,
        &[
            ("outputs", "violations_topic", text(AVRO_VIOLATIONS)),
            ("outputs", "storms_topic", text(AVRO_STORMS)),
            ("outputs", "cloudevents_mode", text("binary")),
            ("outputs", "format", text("avro")),
            ("schema_registry", "url", text(&registry.url())),
        ],
    ));
    let ce_id = |m: &OwnedMessage| headers_of(m).remove("ce_id").unwrap_or_default();
    let decoder = AvroDecoder::new(SrSettings::new(registry.url()));
    for (topic, partitions, want) in [(AVRO_VIOLATIONS, 3, &violations), (AVRO_STORMS, 1, &storms)]
    {
        let ids: BTreeSet<String> = want.keys().cloned().collect();
        for (id, m) in events_by_id(&broker, topic, partitions, &ids, ce_id) {
            let event = &want[&id];
            let headers = headers_of(&m);
            assert_eq!(headers["content-type"], "application/avro", "{topic}: {id}");
            assert_eq!(headers["ce_type"], event["type"].as_str().unwrap());
            assert_eq!(
                headers["ce_dataschema"],
                event["dataschema"].as_str().unwrap()
            );
            let decoded = decoder
                .decode(m.payload())
                .unwrap_or_else(|e| panic!("{topic}: {id} does not decode: {e:?}"));
            let mut data = Value::try_from(decoded.value).unwrap();
            // Avro writes every field; JSON leaves the empty optional ones out.
            data.as_object_mut()
                .unwrap()
                .retain(|name, v| !v.is_null() || event["data"].get(name).is_some());
            let mut expected = event["data"].clone();
            if let Some(pk) = expected.get_mut("pk") {
                // An Avro record cannot hold an object of any shape: the
                // primary key is its JSON text.
                *pk = Value::String(pk.to_string());
            }
            if let Some(evidence) = expected.get_mut("evidence") {
                // vigil check read files: the same records, named by line.
                let read = data["evidence"].as_array().unwrap();
                assert_eq!(read.len(), evidence.as_array().unwrap().len(), "{id}");
                assert!(
                    read.iter()
                        .all(|e| e["topic"].is_string() && e["offset"].is_i64())
                );
                *evidence = data["evidence"].clone();
            }
            if topic == AVRO_STORMS {
                for field in ["rate", "peak", "baseline", "threshold"] {
                    assert_eq!(
                        data[field].as_f64(),
                        expected[field].as_f64(),
                        "{id}: {field}"
                    );
                    expected[field] = data[field].clone();
                }
            }
            assert_eq!(
                without_top_lists(&data),
                without_top_lists(&expected),
                "{topic}: {id}"
            );
        }
    }
    let subjects = registry.subjects();
    for topic in [AVRO_VIOLATIONS, AVRO_STORMS] {
        assert!(
            subjects.contains(&format!("{topic}-value")),
            "{topic}'s schema is registered: {subjects:?}"
        );
    }
    daemon.terminate();
}

#[test]
fn a_killed_daemon_resumes_without_losing_or_changing_violations() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::new(30_000, 22);
    let broker = w.broker();
    let half = w.records.len() / 2;
    w.produce(&broker, 0..half);
    let expected = w.expected(dir.path());
    let config = w.config(dir.path(), &broker, &[]);

    let first = Daemon::start(&config);
    let some = broker.read_until(VIOLATIONS, 3, VERDICTS, |m| m.len() >= 50);
    assert!(some.len() >= 50, "the first run produced violations");
    first.kill();

    w.produce(&broker, half..w.records.len());
    let second = Daemon::start(&config);
    assert!(
        second.wait_for_log("resumed_from_state", VERDICTS),
        "{}",
        second.log()
    );
    let by_id = await_verdicts(&broker, &expected, &second);
    assert!(!by_id.is_empty());
    second.terminate();
}

#[test]
fn a_broker_outage_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    // Big enough to be caught mid-way, small enough for the mock cluster's
    // 5 MB a partition while vigil waits for the broker.
    let w = Workload::new(90_000, 23);
    let broker = w.broker();
    w.produce(&broker, 0..w.records.len());
    let expected = w.expected(dir.path());
    let total: usize = expected.values().sum();
    let config = w.config(dir.path(), &broker, &[]);
    let daemon = Daemon::start(&config);
    let some = broker.read_until(VIOLATIONS, 3, VERDICTS, |m| !m.is_empty());
    assert!(
        !some.is_empty() && some.len() < total,
        "the outage starts mid-way"
    );

    // Broker 2 leads a third of every topic's partitions: while it is down
    // vigil can neither read them nor write their outputs.
    let before = daemon.log().len();
    broker.cluster().broker_down(2).unwrap();
    let noticed = daemon.wait_for_log_after(before, "Connection refused", VERDICTS);
    assert!(
        noticed,
        "the outage is noticed and logged:\n{}",
        &daemon.log()[before..]
    );
    broker.cluster().broker_up(2).unwrap();
    await_verdicts(&broker, &expected, &daemon);
    daemon.terminate();
}

#[test]
fn exactly_once_commits_outputs_and_offsets_in_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::new(10_000, 24);
    let broker = w.broker();
    w.produce(&broker, 0..w.records.len());
    let expected = w.expected(dir.path());
    let guarantee = toml::Value::String("exactly_once".into());
    let config = w.config(
        dir.path(),
        &broker,
        &[("processing", "guarantee", guarantee)],
    );
    let daemon = Daemon::start(&config);
    await_verdicts(&broker, &expected, &daemon);
    daemon.terminate();
}

/// The CDC and cache topics of the dead-letter tests.
const CDC: &str = "db.public.users";
const CACHE: &str = "cache";

/// Records that cannot be decoded or mapped, with their reason, after one
/// good change; `key-{i}` keys them.
const MALFORMED: [(&str, &[u8], &str); 5] = [
    (CDC, br#"{"op":"c","after":{"id":2"#, "invalid_json"),
    (CDC, br#"{"op":"x","after":{"id":3,"version":1},"source":{"ts_ms":1000}}"#, "unknown_op"),
    (
        CDC,
        br#"{"op":"c","after":{"id":4,"version":1},"source":{"ts_ms":1000,"schema":"public","table":"orders"}}"#,
        "unmapped_table",
    ),
    (CACHE, br#"{"operation":"invalidate","cache_key":"user:1","timestamp":"yesterday"}"#, "wrong_type"),
    (CACHE, b"\xff\xfe not text", "invalid_utf8"),
];

/// Produces a good change, then the malformed records.
fn produce_malformed(broker: &Broker) {
    let good = r#"{"op":"c","after":{"id":1,"version":1},"source":{"ts_ms":1000,"schema":"public","table":"users"}}"#;
    broker.produce(&Out {
        topic: CDC,
        partition: 0,
        key: Some(br#"{"id":1}"#),
        value: Some(good.as_bytes()),
        headers: &[],
        ts_ms: Some(1_000),
    });
    for (i, (topic, value, _)) in MALFORMED.iter().enumerate() {
        broker.produce(&Out {
            topic,
            partition: 0,
            key: Some(format!("key-{i}").as_bytes()),
            value: Some(value),
            headers: &[("trace-id", &format!("t{i}"))],
            ts_ms: Some(1_700_000_000_000 + i as i64),
        });
    }
    broker.flush();
}

#[test]
fn malformed_records_reach_the_dlq_unchanged_with_their_headers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::new(&[(CDC, 1), (CACHE, 1)]);
    produce_malformed(&broker);
    let config = run_config(
        dir.path(),
        USERS_CONFIG,
        &broker.bootstrap,
        &[CDC],
        &[CACHE],
        &[],
    );
    let daemon = Daemon::start(&config);
    let dead = broker.read_until(DLQ, 1, VERDICTS, |m| m.len() >= MALFORMED.len());
    assert_eq!(dead.len(), MALFORMED.len());
    let mut by_key = BTreeMap::new();
    for m in &dead {
        by_key.insert(
            String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
            m.clone(),
        );
    }
    for (i, (topic, value, reason)) in MALFORMED.iter().enumerate() {
        let m = &by_key[&format!("key-{i}")];
        assert_eq!(m.payload(), Some(*value), "the record is unchanged");
        assert_eq!(
            m.timestamp().to_millis(),
            Some(1_700_000_000_000 + i as i64)
        );
        let headers = headers_of(m);
        assert_eq!(
            headers["trace-id"],
            format!("t{i}"),
            "original headers are kept"
        );
        assert_eq!(headers["__connect.errors.topic"], *topic);
        assert_eq!(headers["__connect.errors.partition"], "0");
        let offset = if *topic == CDC { i + 1 } else { i - 3 };
        assert_eq!(headers["__connect.errors.offset"], offset.to_string());
        assert_eq!(headers["vigil.error.reason"], *reason);
        assert!(!headers["__connect.errors.exception.message"].is_empty());
        assert!(!headers["__connect.errors.exception.class.name"].is_empty());
        assert!(
            ["VALUE_CONVERTER", "TRANSFORMATION"]
                .contains(&headers["__connect.errors.stage"].as_str())
        );
    }
    daemon.terminate();
}

/// While the DLQ topic cannot be written, vigil holds the input offsets of
/// its dead letters: killed during the outage and started again once it is
/// over, it still delivers every one.
#[test]
fn dead_letters_are_not_lost_when_the_dlq_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::new(&[(CDC, 1), (CACHE, 1)]);
    for topic in [CDC, CACHE, VIOLATIONS, STORMS] {
        for p in 0..3 {
            let _ = broker.cluster().partition_leader(topic, p, Some(1));
        }
    }
    broker
        .cluster()
        .coordinator(MockCoordinator::Group("vigil-it".into()), 1)
        .unwrap();
    broker.cluster().partition_leader(DLQ, 0, Some(3)).unwrap();
    broker.cluster().broker_down(3).unwrap();
    produce_malformed(&broker);
    let config = run_config(
        dir.path(),
        USERS_CONFIG,
        &broker.bootstrap,
        &[CDC],
        &[CACHE],
        &[],
    );

    let daemon = Daemon::start(&config);
    assert!(
        daemon.wait_for_log(
            "waiting for the broker to acknowledge outputs before committing",
            VERDICTS
        ),
        "vigil read dead letters and waits for the DLQ:\n{}",
        daemon.log()
    );
    daemon.kill();

    broker.cluster().broker_up(3).unwrap();
    let daemon = Daemon::start(&config);
    let dead = broker.read_until(DLQ, 1, VERDICTS, |m| {
        let keys: BTreeSet<_> = m.iter().filter_map(|m| m.key()).collect();
        keys.len() >= MALFORMED.len()
    });
    let keys: BTreeSet<String> = dead
        .iter()
        .map(|m| String::from_utf8_lossy(m.key().unwrap()).into_owned())
        .collect();
    let expected: BTreeSet<String> = (0..MALFORMED.len()).map(|i| format!("key-{i}")).collect();
    assert_eq!(keys, expected, "{}", daemon.log());
    daemon.terminate();
}

/// A static member fenced out of its group (another instance joined with
/// its `group.instance.id`; the broker answers its heartbeats with
/// FENCED_INSTANCE_ID, as Kafka does) stops with an error naming the id and
/// exit status 6, instead of retrying for ever. Neither broker of the tests
/// fences by itself (see DEVELOPERS.md): the mock cluster is told to answer
/// so.
#[test]
fn a_fenced_static_member_stops_naming_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::new(2_000, 24);
    let broker = w.broker();
    w.produce(&broker, 0..w.records.len());
    let id = ("kafka", "group.instance.id", "vigil-fenced-0".into());
    let config = w.config(dir.path(), &broker, &[id]);
    let daemon = Daemon::start(&config);
    assert!(
        daemon.wait_for_log("partitions assigned", VERDICTS),
        "{}",
        daemon.log()
    );
    broker.cluster().request_errors(
        RDKafkaApiKey::Heartbeat,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID],
    );
    let (code, log) = daemon.wait_exit(VERDICTS);
    assert_eq!(code, Some(6), "{log}");
    assert!(
        log.contains("same group.instance.id \"vigil-fenced-0\""),
        "{log}"
    );
}

#[test]
fn two_instances_share_the_partitions_and_a_rebalance_loses_nothing() {
    handover(false);
}

/// A rebalance while the cache topic lags seconds of event time behind the
/// CDC topic: the partitions revoked together end together, so the watermark
/// never stands on the CDC partitions alone (it did when they ended one by
/// one: about 1,600 false missing and late invalidations).
#[test]
fn a_rebalance_while_a_topic_lags_reports_nothing_false() {
    handover(true);
}

/// Instance A reads the first half (with `cache_lags`, the cache records
/// after its first quarter are held back), B joins and takes over
/// partitions, then the rest is produced: every expected violation, nothing
/// else.
fn handover(cache_lags: bool) {
    let dir = tempfile::tempdir().unwrap();
    // Event time alone moves the watermarks: with an idle timeout longer than
    // the test no partition is ever idle, so neither the wall clock nor how
    // long the group joins and the handover take on a busy machine matter,
    // and markers on every input partition end the workload. The heartbeat
    // partitions have no event time (vigil skips heartbeats) until those
    // markers: until then they hold the watermarks back, so version
    // violations come as records are read and most key verdicts at the end.
    let w = Workload::of(spec(30_000, 25, START_MS, 4_000));
    let broker = w.broker();
    let half = w.records.len() / 2;
    let expected = w.expected(dir.path());
    let overrides = [
        ("inputs", "co_partitioned", toml::Value::Boolean(true)),
        ("detect", "idle_timeout", toml::Value::String("1h".into())),
        (
            "state",
            "checkpoint_interval",
            toml::Value::String("500ms".into()),
        ),
    ];
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir_all(&dir_a).unwrap();
    fs::create_dir_all(&dir_b).unwrap();
    let port_a = free_port();
    let listen_a = ("metrics", "listen", format!("127.0.0.1:{port_a}").into());
    let (config_a, config_b) = (
        w.config(&dir_a, &broker, &[&overrides[..], &[listen_a]].concat()),
        w.config(&dir_b, &broker, &overrides),
    );
    let held = |i: usize| {
        cache_lags
            && i >= half / 4
            && w.generator.stream_of_topic(&w.records[i].topic) == Some(Stream::Cache)
    };
    let (first_half, held_back): (Vec<usize>, Vec<usize>) = (0..half).partition(|i| !held(*i));
    let read_by_a = first_half.len() as u64;

    w.produce(&broker, first_half);
    let a = Daemon::start(&config_a);
    let first = broker.read_until(VIOLATIONS, 3, VERDICTS, |m| m.len() >= 20);
    assert!(first.len() >= 20, "instance A works alone first");
    // B joins once A has read what it was given, however loaded the machine.
    wait_until(VERDICTS, || records_consumed(port_a) == Some(read_by_a));
    assert_eq!(
        records_consumed(port_a),
        Some(read_by_a),
        "A reads the first half"
    );

    let lag_series = || {
        scrape(port_a)
            .lines()
            .filter(|l| l.starts_with("vigil_consumer_lag_records{"))
            .count()
    };
    let mut alone = 0;
    wait_until(VERDICTS, || {
        alone = lag_series();
        alone > 0
    });
    assert!(alone > 0, "A publishes the lag of its partitions");

    let b = Daemon::start(&config_b);
    assert!(
        b.wait_for_log("state of partition restored", VERDICTS),
        "B restores the state of the partitions it is given:\n{}",
        b.log()
    );
    assert!(
        a.wait_for_log("state of released partitions forgotten", VERDICTS),
        "A hands partitions over:\n{}",
        a.log()
    );
    assert!(
        wait_until(VERDICTS, || lag_series() < alone),
        "the lag series of the partitions A released are removed"
    );
    w.produce(&broker, held_back);
    w.produce(&broker, half..w.records.len());
    w.produce_end(&broker);
    await_verdicts(&broker, &expected, &b);
    assert!(
        broker
            .read_until(DLQ, 1, Duration::from_millis(500), |m| !m.is_empty())
            .is_empty(),
        "neither the workload nor its end markers are dead letters"
    );
    for daemon in [a, b] {
        daemon.terminate();
    }
}

/// The repartition topic between the stages, and the changelog of stage two.
const REPARTITION: &str = "vigil.repartition";
const REPARTITION_CHANGELOG: &str = "vigil.repartition.changelog";

/// The cache topic keyed by service, as services commonly publish it: an
/// entity's changes and its keys' cache events do not share a partition
/// number. Stage one (decoding, entity checks) and two instances of stage
/// two (key checks, over the repartition topic) report exactly the
/// violations of one `vigil check` of the same records, with the same ids.
#[test]
fn two_stages_through_a_repartition_topic_report_what_check_reports() {
    two_stages(false, false, false);
}

/// The same through tansu, an independent Kafka-compatible broker.
#[test]
fn two_stages_on_tansu_report_what_check_reports() {
    two_stages(false, true, false);
}

/// As above, with three instances of stage two: mid-stream one of them is
/// killed (SIGKILL; the others restore its partitions from the changelog
/// once its session times out), stage one is killed and started again (it
/// publishes again what it had not committed), then a fourth instance of
/// stage two joins and takes partitions over: the same violations still,
/// by id, duplicates aside.
#[test]
fn two_stages_lose_nothing_when_instances_are_killed() {
    two_stages(true, false, false);
}

/// The kill test with `processing.guarantee = "exactly_once"`: each stage
/// commits its outputs, its changelog, its input offsets and (stage one)
/// its repartition records and marks in one transaction per checkpoint,
/// and the violations are read as a `read_committed` consumer reads them.
/// The same violations by id; a crash may show some twice (the module
/// docs of `vigil::io::kafka::outputs` say which), identical. The mock
/// cluster keeps what a killed instance's open transaction wrote visible
/// (it writes no abort markers), so only a broker with transactions shows
/// that an aborted transaction's records are never read.
#[test]
fn two_stages_exactly_once_lose_nothing_when_instances_are_killed() {
    two_stages(true, false, true);
}

fn two_stages(kill: bool, on_tansu: bool, exactly_once: bool) {
    let dir = tempfile::tempdir().unwrap();
    let w = Workload::of(spec(12_000, 27, START_MS, 2_000));
    let mut topics: Vec<(String, i32)> = w
        .generator
        .topics()
        .into_iter()
        .map(|t| (t, PARTITIONS))
        .collect();
    topics.push((REPARTITION.into(), 4));
    topics.push((REPARTITION_CHANGELOG.into(), 4));
    let with_partitions: Vec<(&str, i32)> = topics.iter().map(|(t, n)| (t.as_str(), *n)).collect();
    let broker = if on_tansu {
        Broker::on_tansu(dir.path(), &with_partitions)
    } else {
        Broker::new(&with_partitions)
    };

    let check_state = dir.path().join("check-state");
    let checked = w.check_files_with(dir.path(), &["--state", check_state.to_str().unwrap()]);
    let expected = multiset(checked.violations().iter().map(|v| fingerprint(&v["data"])));
    let check_ids: BTreeSet<String> = checked
        .violations()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert!(check_ids.len() > 100, "the workload has violations to find");

    // Event time alone moves the watermarks (see `handover`): end markers
    // on every input partition end the workload.
    let mut overrides = vec![
        ("detect", "idle_timeout", toml::Value::String("1h".into())),
        (
            "state",
            "checkpoint_interval",
            toml::Value::String("500ms".into()),
        ),
        ("inputs", "repartition_topic", REPARTITION.into()),
        (
            "outputs",
            "repartition_changelog_topic",
            REPARTITION_CHANGELOG.into(),
        ),
    ];
    if exactly_once {
        overrides.push(("processing", "guarantee", "exactly_once".into()));
    }
    let config = |name: &str| {
        let d = dir.path().join(name);
        fs::create_dir_all(&d).unwrap();
        let port = free_port();
        let listen = ("metrics", "listen", format!("127.0.0.1:{port}").into());
        (
            w.config(&d, &broker, &[&overrides[..], &[listen]].concat()),
            port,
        )
    };
    let (one, one_port) = config("one");
    // Stage two's instances: with kills, three from the start and a fourth
    // added after the kill.
    let twos: Vec<(std::path::PathBuf, u16)> = (0..if kill { 4 } else { 2 })
        .map(|i| config(&format!("two-{i}")))
        .collect();
    let start_two = |i: usize| Daemon::start_with(&twos[i].0, &["--stage", "two"]);

    // The instances of stage two split the repartition partitions first,
    // joining one after the other.
    let mut stage_two = vec![start_two(0)];
    assert!(
        stage_two[0].wait_for_log("partitions assigned", VERDICTS),
        "stage two joins its group:\n{}",
        stage_two[0].log()
    );
    for i in 1..if kill { 3 } else { 2 } {
        let before: Vec<usize> = stage_two.iter().map(|d| d.log().len()).collect();
        stage_two.push(start_two(i));
        assert!(
            stage_two[i].wait_for_log("state of partition restored", VERDICTS),
            "instance {i} of stage two takes partitions:\n{}",
            stage_two[i].log()
        );
        assert!(
            wait_until(VERDICTS, || stage_two[..i].iter().zip(&before).any(
                |(d, from)| { d.log()[*from..].contains("state of released partitions forgotten") }
            )),
            "the instances before hand partitions over to instance {i}:\n{}",
            stage_two[0].log()
        );
    }
    let mut a = Daemon::start_with(&one, &["--stage", "one"]);

    // The cache topic keyed, and partitioned, by service.
    let place = |r: &GenRecord| match w.generator.stream_of_topic(&r.topic) {
        Some(Stream::Cache) => {
            let event: Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            let service = event["source_service"].as_str().unwrap().to_string();
            let hash = service
                .bytes()
                .fold(0i32, |h, b| (h * 31 + b as i32) % 1_000);
            (hash % PARTITIONS, Some(service.into_bytes()))
        }
        _ => (r.partition, r.key.clone()),
    };
    let produce = |records: std::ops::Range<usize>| {
        for r in &w.records[records] {
            let value = r.value.as_deref();
            let (partition, key) = place(r);
            broker.produce(&Out {
                topic: &r.topic,
                partition,
                key: key.as_deref(),
                value,
                headers: &[],
                ts_ms: Some(r.ts_ms),
            });
        }
        broker.flush();
    };
    let half = w.records.len() / 2;
    // The instance of stage two killed, if any (see below).
    let mut killed = None;
    if kill {
        produce(0..half);
        // Both stages have checkpointed part of the first half (each
        // checkpoint commits offsets: Kafka's committed offsets move).
        let consumed = |port: u16, topic: &str| {
            let line = format!("vigil_records_consumed_total{{topic=\"{topic}\"}} ");
            http_get(port, "/metrics", None)
                .map(|r| r.body)
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix(&line)?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // An instance that reads repartition records is killed, and not the
        // first: tansu 0.6.0 makes the first member to join a group its
        // leader, and never replaces a leader whose session times out
        // (DEVELOPERS.md, "A killed member's partitions on tansu"). Which of
        // the other two reads is the group's choice: the rebalances of the
        // joins can leave one of them with nothing new to read.
        let mut reading = None;
        assert!(
            wait_until(VERDICTS, || {
                reading = (1..3).find(|&i| consumed(twos[i].1, REPARTITION) > 500);
                reading.is_some()
            }),
            "an instance of stage two after the first reads its partitions:\n{}\n{}\n{}",
            stage_two[0].log(),
            stage_two[1].log(),
            stage_two[2].log()
        );
        let k = reading.expect("found above");
        killed = Some(k);
        let before: Vec<usize> = stage_two.iter().map(|d| d.log().len()).collect();
        stage_two.remove(k).kill();
        a.kill();
        a = Daemon::start_with(&one, &["--stage", "one"]);
        let left: Vec<usize> = (0..3).filter(|&i| i != k).map(|i| before[i]).collect();
        assert!(
            wait_until(VERDICTS, || stage_two.iter().zip(&left).any(|(d, from)| d
                .log()[*from..]
                .contains("state of partition restored"))),
            "the instances left of stage two restore the partitions of the one killed:\n{}\n{}",
            stage_two[0].log(),
            stage_two[1].log()
        );
        stage_two.push(start_two(3));
        assert!(
            stage_two[2].wait_for_log("state of partition restored", VERDICTS),
            "an instance of stage two added after the kill takes partitions:\n{}",
            stage_two[2].log()
        );
        produce(half..w.records.len());
    } else {
        produce(0..w.records.len());
    }
    w.produce_end(&broker);

    let read = await_violations(&broker, &expected, &stage_two[0], exactly_once);
    let by_id = distinct_by_id(&read);
    if read.len() > by_id.len() {
        eprintln!(
            "{} of {} violations read more than once",
            read.len() - by_id.len(),
            by_id.len()
        );
    }
    let run_ids: BTreeSet<String> = by_id.keys().cloned().collect();
    assert_eq!(
        run_ids, check_ids,
        "the same verdicts carry the same ids through two stages"
    );
    assert!(
        broker
            .read_until(DLQ, 1, Duration::from_millis(500), |m| !m.is_empty())
            .is_empty(),
        "neither the workload, its end markers nor the repartition records are dead letters"
    );
    if !kill {
        // Stage one reports the entity violations, the two instances of
        // stage two share the key violations (metrics are published once a
        // second).
        let reported = |port: u16, kind: &str| {
            let line = format!("vigil_violations_total{{kind=\"{kind}\"}} ");
            scrape(port)
                .lines()
                .find_map(|l| l.strip_prefix(&line)?.parse::<usize>().ok())
                .unwrap_or(0)
        };
        let split = |kind: &str| [one_port, twos[0].1, twos[1].1].map(|p| reported(p, kind));
        for (kind, stage) in [("missing_invalidation", 2), ("version_regression", 1)] {
            let total = expected_kinds_of(&expected, kind);
            assert!(total > 0, "the workload has {kind}");
            wait_until(VERDICTS, || split(kind).iter().sum::<usize>() == total);
            let [by_one, by_b, by_c] = split(kind);
            if stage == 1 {
                assert_eq!(
                    (by_one, by_b, by_c),
                    (total, 0, 0),
                    "{kind} comes from stage one"
                );
            } else {
                assert_eq!(
                    (by_one, by_b + by_c),
                    (0, total),
                    "{kind} comes from stage two"
                );
                assert!(
                    by_b > 0 && by_c > 0,
                    "both instances of stage two check keys"
                );
            }
        }
    }
    a.terminate();
    // The instances left, in the order of `stage_two`: those started first
    // but the one killed, then the one added.
    let instances: Vec<usize> = match killed {
        Some(k) => (0..4).filter(|&i| i != k).collect(),
        None => vec![0, 1],
    };
    let mut stores = Vec::new();
    for (daemon, i) in stage_two.into_iter().zip(&instances) {
        let log = daemon.terminate();
        stores.push((dir.path().join(format!("two-{i}/state")), log));
    }
    let origins = file_origins(&w, dir.path(), |r| place(r).0);
    assert_same_final_state(
        &dir.path().join("one/state"),
        &stores,
        &check_state,
        &origins,
        w.records.iter().map(|r| r.ts_ms).max().unwrap() + END_AFTER_MS,
    );
}

/// For each record the stages read from Kafka, where `vigil check` read it
/// (the file and line `Workload::check_files` wrote it to), the records
/// going to the topic partitions `partition_of` says, in order.
fn file_origins(
    w: &Workload,
    dir: &Path,
    partition_of: impl Fn(&GenRecord) -> i32,
) -> BTreeMap<(String, i32, i64), Provenance> {
    let mut next_offset: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut lines = BTreeMap::new();
    let mut origins = BTreeMap::new();
    for r in &w.records {
        let file = match w.generator.stream_of_topic(&r.topic) {
            Some(Stream::Cache) => dir.join("cache.ndjson"),
            _ => dir.join("cdc.ndjson"),
        };
        let partition = partition_of(r);
        let offset = next_offset
            .entry((r.topic.to_string(), partition))
            .or_default();
        let line = lines.entry(file.clone()).or_insert(0);
        *line += 1;
        origins.insert(
            (r.topic.to_string(), partition, *offset),
            Provenance {
                topic: file.display().to_string().as_str().into(),
                partition: 0,
                offset: *line,
                from_file: true,
            },
        );
        *offset += 1;
    }
    origins
}

/// The scopes a stage-two instance held when it was told to stop, from its
/// log: the partitions whose state it restored and did not release since.
/// (Stopping, it releases them all, but their state stays in its store.)
fn held_scopes(log: &str) -> BTreeSet<i32> {
    let mut held = BTreeSet::new();
    for line in log.lines() {
        if line.contains("stopping: ") {
            break;
        } else if line.contains("state of partition restored") {
            let scope = line
                .split_once("scope=")
                .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a restored partition has its scope: {line}"));
            held.insert(scope);
        } else if line.contains("state of released partitions forgotten") {
            let (list, _) = line
                .split_once("scopes=[")
                .and_then(|(_, rest)| rest.split_once(']'))
                .unwrap_or_else(|| panic!("released partitions have their scopes: {line}"));
            for n in list.split(',').filter(|n| !n.trim().is_empty()) {
                held.remove(&n.trim().parse::<i32>().unwrap());
            }
        }
    }
    held
}

/// The final state of two stages equals that of `vigil check` over the
/// same records: stage one's entities, and the keys, timers and wildcards
/// of each repartition partition in the store of the instance of stage two
/// that held it last (`twos`, with their logs, in the order they stopped;
/// an instance that released a partition keeps a stale copy until it takes
/// it again, and one that stopped before the partition's next owner took it
/// over holds what that owner restored). Entries are compared without their
/// scope: `vigil check` keeps everything in scope 0, stage one scopes
/// entities by CDC partition, stage two keys by repartition partition.
/// Every repartition partition holds each glob invalidation (stage one
/// sends it to all); those copies must be the same but for their scope.
///
/// The stages read the records from Kafka, `vigil check` from files: the
/// evidence of what the run holds is translated to the file and line
/// `origins` gives, and the end markers (records only the stages read) are
/// left out: the entries touched at their time.
fn assert_same_final_state(
    one: &Path,
    twos: &[(std::path::PathBuf, String)],
    check: &Path,
    origins: &BTreeMap<(String, i32, i64), Provenance>,
    end_ms: i64,
) {
    let mut owner = BTreeMap::new();
    for (i, (_, log)) in twos.iter().enumerate() {
        for scope in held_scopes(log) {
            owner.insert(scope, i);
        }
    }
    assert_eq!(
        owner.keys().copied().collect::<Vec<i32>>(),
        (0..4).collect::<Vec<i32>>(),
        "every repartition partition has an owner at the end"
    );
    let mut run = Entries::new();
    let mut clashes = Vec::new();
    let mut add = |entries: Entries| {
        for ((cf, key), value) in entries {
            if codec::touched(&value) == Some(end_ms) {
                continue;
            }
            let (key, value) = unscope(cf, &key, in_files(cf, value, origins));
            if let Some(held) = run.insert((cf, key.clone()), value.clone())
                && !(cf == Cf::Wildcards && held == value)
            {
                clashes.push(format!("{} {}", cf.name(), String::from_utf8_lossy(&key)));
            }
        }
    };
    add(verdict_entries(&RocksStore::open_read_only(one).unwrap(), |_| true).unwrap());
    for (i, (path, _)) in twos.iter().enumerate() {
        let store = RocksStore::open_read_only(path).unwrap();
        add(verdict_entries(&store, |scope| owner.get(&scope) == Some(&i)).unwrap());
    }
    assert!(
        clashes.is_empty(),
        "entries held differently by two scopes: {:?}",
        &clashes[..clashes.len().min(5)]
    );
    let check = verdict_entries(&RocksStore::open_read_only(check).unwrap(), |_| true).unwrap();
    let check: Entries = check
        .into_iter()
        .map(|((cf, key), value)| {
            let (key, value) = unscope(cf, &key, value);
            ((cf, key), value)
        })
        .collect();
    let compared = compare_entries(&run, "two stages", &check);
    assert!(
        compared.compared > 1_000,
        "the states hold entries: {compared:?}"
    );
    assert!(
        compared.differing.is_empty(),
        "{} of {} entries differ from vigil check's, the first:\n{}",
        compared.differing.len(),
        compared.compared,
        compared.differing[..compared.differing.len().min(5)].join("\n")
    );
}

/// An entry with the evidence of its key state or retained glob where
/// `vigil check` read the same records.
fn in_files(cf: Cf, value: Vec<u8>, origins: &BTreeMap<(String, i32, i64), Provenance>) -> Vec<u8> {
    let file = |p: &mut Provenance| {
        if let Some(origin) = origins.get(&(p.topic.to_string(), p.partition, p.offset)) {
            *p = origin.clone();
        }
    };
    match cf {
        Cf::Keys => {
            let (touched, mut state): (i64, KeyState) = codec::decode(cf, &value).unwrap();
            for c in &mut state.changes {
                file(&mut c.evidence);
                if let Some(cover) = &mut c.cover {
                    file(&mut cover.evidence);
                }
            }
            for i in &mut state.invalidations {
                file(&mut i.evidence);
            }
            for f in state.fills.iter_mut() {
                file(&mut f.evidence);
            }
            codec::encode(touched, &state)
        }
        Cf::Wildcards => {
            let (touched, mut glob): (i64, RetainedGlob) = codec::decode(cf, &value).unwrap();
            file(&mut glob.inv.evidence);
            codec::encode(touched, &glob)
        }
        _ => value,
    }
}

/// An entry's key without its scope, and for a retained glob its value
/// with scope 0.
fn unscope(cf: Cf, key: &[u8], value: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    let (_, rest) = codec::unscoped(key).expect("a scoped family's key starts with its scope");
    let value = if cf == Cf::Wildcards {
        let (touched, mut glob): (i64, RetainedGlob) = codec::decode(cf, &value).unwrap();
        glob.scope = 0;
        codec::encode(touched, &glob)
    } else {
        value
    };
    (rest.to_vec(), value)
}
