//! The generator is deterministic, keeps an entity's episodes apart, and
//! expects one violation per injected fault (two for a late invalidation:
//! the missing one it resolves, and itself).

use std::collections::{BTreeMap, BTreeSet};

use super::encode::CdcFormat;
use super::*;

fn spec(seed: u64) -> Spec {
    Spec {
        events: 20_000,
        keys: 500,
        tables: 3,
        rate: 5_000,
        format: CdcFormat::Debezium,
        seed,
        faults: FaultRates {
            missing: 0.05,
            late: 0.05,
            stale_fill: 0.05,
            fill_after_delete: 0.3,
            regression: 0.05,
            gap: 0.05,
            conflict: 0.05,
            duplicate: 0.05,
        },
        start_ms: START_MS,
        partitions: PARTITIONS,
        traffic: Traffic::Steady,
        storms: None,
        transactions: None,
    }
}

#[test]
fn the_same_seed_gives_the_same_workload() {
    let a: Vec<GenRecord> = Generator::new(spec(3)).collect();
    let b: Vec<GenRecord> = Generator::new(spec(3)).collect();
    let c: Vec<GenRecord> = Generator::new(spec(4)).collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.len() as u64 >= 20_000);
}

#[test]
fn every_injected_fault_is_expected_once_and_late_ones_twice() {
    let mut g = Generator::new(spec(9));
    g.by_ref().for_each(drop);
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for e in g.expected() {
        *expected.entry(e.kind).or_default() += 1;
    }
    let injected = &g.stats().injected;
    for (kind, n) in injected {
        let want = match *kind {
            "missing_invalidation" => n + injected["late_invalidation"],
            _ => *n,
        };
        assert_eq!(expected[kind], want, "{kind}");
        assert!(*n > 0, "{kind} was injected");
    }
}

#[test]
fn records_come_out_in_timestamp_order_within_the_allowed_lateness() {
    // Maxwell rows held until their place in their transaction is known
    // (up to three of its episodes, seconds apart here) come out in order
    // too, among Debezium's.
    let slow = Spec {
        rate: 2,
        events: 2_000,
        ..with_transactions(5)
    };
    let mixed = Generator::with_formats(slow, &[CdcFormat::Debezium, CdcFormat::Maxwell]);
    for g in [Generator::new(spec(5)), mixed] {
        let mut latest = [Millis::MIN; 2];
        let mut redelivered = 0;
        for r in g {
            let stream = r.stream as usize;
            if r.ts_ms + LATENESS_MS < latest[stream] {
                redelivered += 1;
            }
            latest[stream] = latest[stream].max(r.ts_ms);
        }
        assert_eq!(
            redelivered, 0,
            "only redeliveries may come later than the lateness, and they come within 1.5 s"
        );
    }
}

#[test]
fn an_entitys_episodes_are_spaced_apart_even_in_bursts() {
    for traffic in [Traffic::Steady, Traffic::Bursts] {
        let s = Spec {
            traffic,
            faults: FaultRates {
                duplicate: 0.0,
                ..spec(1).faults
            },
            ..spec(1)
        };
        let mut g = Generator::new(s.clone());
        let mut changes: BTreeMap<(Arc<str>, Vec<u8>), Vec<Millis>> = BTreeMap::new();
        for r in g
            .by_ref()
            .filter(|r| r.stream == Stream::Cdc && r.value.is_some())
        {
            let key = (r.topic, r.key.unwrap_or_default());
            changes.entry(key).or_default().push(r.ts_ms);
        }
        let mut apart = 0;
        for times in changes.values() {
            for pair in times.windows(2) {
                let gap = pair[1] - pair[0];
                // Within an episode, an extra change follows 5 ms later.
                assert!(gap <= 5 || gap >= SPACING_MS - 5, "{traffic:?}: {gap} ms");
                apart += usize::from(gap > 5);
            }
        }
        assert!(apart > 1_000, "{traffic:?}: {apart} entities changed twice");
        assert!(g.stats().effective_rate <= s.rate as f64 + 1.0);
    }
}

#[test]
fn the_generated_config_maps_every_table() {
    for format in [CdcFormat::Debezium, CdcFormat::Maxwell, CdcFormat::Canal] {
        let g = Generator::new(Spec { format, ..spec(1) });
        let config =
            crate::config::Config::parse_with_env("gen", &g.config_toml(), Vec::new()).unwrap();
        assert_eq!(config.tables.len(), 3);
        assert_eq!(config.tables[1].keys.len(), 2, "odd tables have two keys");
        assert_eq!(config.tables[0].table, format.table_name(0));
    }
}

#[test]
fn bursts_vary_the_rate_and_triple_it_for_two_seconds() {
    let s = Spec {
        traffic: Traffic::Bursts,
        events: 700_000,
        keys: 5_000,
        rate: 1_000,
        ..spec(2)
    };
    let mut per_second: BTreeMap<Millis, u64> = BTreeMap::new();
    // Changes are stamped with their episode's start.
    for r in Generator::new(s).filter(|r| r.stream == Stream::Cdc && r.value.is_some()) {
        *per_second
            .entry((r.ts_ms - START_MS).div_euclid(1000))
            .or_default() += 1;
    }
    let minute = |from: Millis| -> f64 {
        (from..from + 60)
            .map(|s| per_second.get(&s).copied().unwrap_or(0))
            .sum::<u64>() as f64
            / 60.0
    };
    // The wave: highest a quarter period in, lowest three quarters in.
    let (high, low) = (minute(120), minute(420));
    assert!(high > 2.0 * low, "{high} vs {low}");
    // Each burst triples the rate around it for two seconds.
    for at in [150, 330, 510] {
        let burst = (per_second[&at] + per_second[&(at + 1)]) as f64;
        let around = (per_second[&(at - 2)] + per_second[&(at + 3)]) as f64;
        assert!(burst > 2.5 * around, "at {at} s: {burst} vs {around}");
    }
}

/// What identifies a violation: in `expected.ndjson` and in the data of a
/// reported CloudEvent.
type Fingerprint = (String, String, String, String, String, String);

fn fingerprint(v: &Value) -> Fingerprint {
    let field = |name: &str| v[name].to_string();
    (
        field("kind"),
        field("key"),
        field("table"),
        field("pk"),
        field("version"),
        field("lag_ms"),
    )
}

/// Writes the workload of `g` into `dir` (as kcat lines), checks it, and
/// returns the violations expected and reported, by fingerprint.
fn expected_and_reported(
    g: &mut Generator,
    dir: &std::path::Path,
) -> (BTreeMap<Fingerprint, usize>, BTreeMap<Fingerprint, usize>) {
    crate::modes::generate::write(g, dir, true).unwrap();
    let config =
        crate::config::Config::parse_with_env("gen", &g.config_toml(), Vec::new()).unwrap();
    let inputs =
        [("cdc.ndjson", Stream::Cdc), ("cache.ndjson", Stream::Cache)].map(|(name, stream)| {
            crate::io::file::FileInput {
                path: dir.join(name),
                stream,
            }
        });
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    let summary = crate::modes::check::check(&config, &inputs, &out, None, true).unwrap();
    assert_eq!(summary.dead_letters_total, 0);
    let count = |items: Vec<Value>| -> BTreeMap<_, usize> {
        let mut m = BTreeMap::new();
        for v in &items {
            *m.entry(fingerprint(v)).or_default() += 1;
        }
        m
    };
    let expected = count(g.expected().iter().map(Expected::to_json).collect());
    let reported = count(
        std::fs::read_to_string(out.join("violations.ndjson"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["data"].take())
            .collect(),
    );
    (expected, reported)
}

#[test]
fn a_workload_of_every_format_in_kcat_lines_is_reported_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Generator::with_formats(
        Spec {
            tables: 5,
            ..spec(6)
        },
        &CdcFormat::ALL,
    );
    let topics = g.topics();
    for topic in ["gen.public.t0", "gen.public.t2", "maxwell", "canal"] {
        assert!(topics.iter().any(|t| t == topic), "{topic} in {topics:?}");
    }
    let (expected, reported) = expected_and_reported(&mut g, dir.path());
    let tables: BTreeSet<&str> = expected.keys().map(|f| f.2.as_str()).collect();
    assert_eq!(tables.len(), 5, "violations in every table: {tables:?}");
    assert_eq!(reported, expected);
}

/// A spec with transactions and their faults.
fn with_transactions(seed: u64) -> Spec {
    Spec {
        tables: 4,
        transactions: Some(TxFaults {
            lost_event: 0.1,
            unterminated: 0.05,
        }),
        ..spec(seed)
    }
}

#[test]
fn maxwell_transactions_number_their_rows_and_end_with_a_commit_row() {
    let mut g = Generator::new(Spec {
        format: CdcFormat::Maxwell,
        ..with_transactions(7)
    });
    assert!(
        !g.topics().iter().any(|t| t == TX_TOPIC),
        "no BEGIN nor END"
    );
    // Per xid: the xoffsets of its rows, and whether a commit row came.
    let mut txs: BTreeMap<u64, (BTreeSet<u64>, bool)> = BTreeMap::new();
    for r in g.by_ref().filter(|r| r.topic.as_ref() == "maxwell") {
        let v: Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        if v["type"] == "bootstrap-insert" {
            continue;
        }
        let tx = txs.entry(v["xid"].as_u64().unwrap()).or_default();
        match (v.get("xoffset"), v.get("commit")) {
            (Some(x), None) => {
                tx.0.insert(x.as_u64().unwrap());
            }
            (None, Some(commit)) => {
                assert_eq!(commit, true);
                tx.1 = true;
            }
            _ => panic!("a row carries xoffset or commit, not both: {v}"),
        }
    }
    // What the rows show: no commit row, or an xoffset missing below the
    // highest.
    let (mut unterminated, mut incomplete, mut multi_row) = (0, 0, 0);
    for (xoffsets, commit) in txs.values() {
        let highest = xoffsets.last().map_or(0, |&h| h + 1);
        unterminated += usize::from(!commit);
        incomplete += usize::from(*commit && highest > xoffsets.len() as u64);
        multi_row += usize::from(*commit && !xoffsets.is_empty());
    }
    let kinds = |kind: &str| g.expected().iter().filter(|e| e.kind == kind).count();
    assert_eq!(unterminated, kinds("unterminated_transaction"));
    assert_eq!(incomplete, kinds("incomplete_transaction"));
    assert!(
        unterminated > 10 && incomplete > 10,
        "{unterminated} {incomplete}"
    );
    assert!(
        multi_row > 1_000,
        "{multi_row} transactions of several rows"
    );
    let unknown = crate::detect::transaction::UNKNOWN_TABLE;
    assert!(
        g.expected()
            .iter()
            .filter(|e| e.kind == "incomplete_transaction")
            .all(|e| e.table == unknown)
    );
}

#[test]
fn maxwell_transactions_alone_and_beside_debeziums_are_reported_exactly() {
    for formats in [
        &[CdcFormat::Maxwell][..],
        &[CdcFormat::Debezium, CdcFormat::Maxwell],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Generator::with_formats(with_transactions(8), formats);
        g.check_transactions().unwrap();
        let (expected, reported) = expected_and_reported(&mut g, dir.path());
        for kind in [
            "incomplete_transaction",
            "unterminated_transaction",
            "transaction_not_invalidated",
        ] {
            let n: usize = expected
                .iter()
                .filter(|(f, _)| f.0 == format!("\"{kind}\""))
                .map(|(_, n)| n)
                .sum();
            assert!(n > 5, "{formats:?}: {n} {kind}");
        }
        assert_eq!(reported, expected, "{formats:?}");
    }
}

#[test]
fn canal_and_flattened_debezium_cannot_carry_transactions() {
    for format in [CdcFormat::Canal, CdcFormat::DebeziumFlat] {
        let g = Generator::with_formats(with_transactions(1), &[CdcFormat::Maxwell, format]);
        let error = g.check_transactions().unwrap_err();
        assert!(
            error.contains("--format debezium, debezium-schema or maxwell"),
            "{error}"
        );
    }
}

#[test]
fn a_span_spreads_the_records_over_it_with_an_entity_new_at_every_episode() {
    const SPAN_MS: i64 = 6 * 3_600_000;
    let mut g = Generator::new(Spec {
        events: 10_000,
        keys: 100_000,
        ..spec(5)
    })
    .with_span(SPAN_MS);
    let records: Vec<GenRecord> = g.by_ref().collect();
    let stats = g.stats();
    let span = stats.last_event_ms.unwrap() - stats.first_event_ms.unwrap();
    assert!(
        (SPAN_MS * 95 / 100..=SPAN_MS * 105 / 100).contains(&span),
        "{span} ms of event time"
    );
    let entities: BTreeSet<&[u8]> = records
        .iter()
        .filter(|r| r.topic.starts_with("gen.public."))
        .filter_map(|r| r.key.as_deref())
        .collect();
    assert_eq!(entities.len() as u64, stats.episodes);
}
