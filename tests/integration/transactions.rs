//! Transaction checks through `vigil check`: a generated workload with
//! transactions (lost events, ENDs that never come, tables the
//! configuration does not map) reported exactly, the transaction of each
//! change on its violations, and open transactions kept within their
//! budget.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::schemas::Schema;
use crate::support::*;

/// A workload of 20 000 events in transactions of `format`, with lost
/// events, unterminated transactions and the usual faults.
fn generated(dir: &Path, format: &str) {
    let mut args = vec![
        "--events",
        "20000",
        "--keys",
        "1000",
        "--tables",
        "4",
        "--format",
        format,
        "--seed",
        "5",
        "--transactions",
        "--lost-event-rate",
        "0.05",
        "--unterminated-rate",
        "0.03",
    ];
    args.extend_from_slice(&FAULTY);
    generate(dir, &args);
}

fn check_dir(dir: &Path, config: &Path, out: &str) -> Checked {
    let checked = check(
        Some(config),
        &[&dir.join("cdc.ndjson")],
        &[&dir.join("cache.ndjson")],
        &dir.join(out),
        &[],
    );
    assert_eq!(checked.code, 0, "{}", checked.stderr);
    checked
}

#[test]
fn generated_transactions_are_reported_exactly() {
    let dir = tempfile::tempdir().unwrap();
    generated(dir.path(), "debezium");
    let expected = dir.path().join("expected.ndjson");
    assert_expects_some(
        &expected,
        &[
            "incomplete_transaction",
            "unterminated_transaction",
            "missing_invalidation",
            "version_gap",
            "transaction_not_invalidated",
        ],
    );
    let checked = check_dir(dir.path(), &dir.path().join("vigil.toml"), "out");
    assert_matches_expected(&expected, &checked);
    assert_eq!(checked.summary["dead_letters_total"], 0);
    assert!(
        checked.summary["duplicates"].as_u64().unwrap() > 0,
        "redeliveries were generated, and counted once"
    );

    let schema = Schema::named("urn:vigil:schema:violation:v1");
    for v in checked.violations() {
        let errors = schema.errors(&v["data"]);
        assert!(errors.is_empty(), "{v}: {errors:?}");
        let data = &v["data"];
        let kind = data["kind"].as_str().unwrap();
        match kind {
            "incomplete_transaction" | "unterminated_transaction" => {
                let id = data["transaction_id"].as_str().unwrap();
                assert_eq!(v["subject"], format!("transaction/{id}"));
                assert!(data["seen_events"].as_u64().is_some(), "{v}");
                if kind == "incomplete_transaction" {
                    assert!(
                        data["expected_events"].as_u64().unwrap()
                            > data["seen_events"].as_u64().unwrap(),
                        "{v}"
                    );
                }
            }
            // One summary per transaction with a missed change.
            "transaction_not_invalidated" => {
                let id = data["transaction_id"].as_str().unwrap();
                assert_eq!(v["subject"], format!("transaction/{id}"));
                let missing = data["keys_missing"].as_u64().unwrap();
                assert!(missing >= 1, "{v}");
                assert!(data["keys_late"].as_u64().unwrap() <= missing, "{v}");
                assert_eq!(
                    data["seen_events"].as_u64().unwrap(),
                    data["keys_in_time"].as_u64().unwrap() + missing,
                    "{v}"
                );
            }
            // Violations of a change name its transaction.
            "missing_invalidation"
            | "late_invalidation"
            | "version_regression"
            | "version_gap"
            | "conflicting_version" => {
                assert!(data["transaction_id"].is_string(), "{v}");
            }
            _ => assert!(data.get("transaction_id").is_none(), "{v}"),
        }
    }
    // Some ENDs name a table the configuration does not map: its count is
    // not held against the transaction.
    let cdc = fs::read_to_string(dir.path().join("cdc.ndjson")).unwrap();
    assert!(cdc.contains("public.audit_log"));
}

#[test]
fn without_transaction_checks_the_metadata_is_counted_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    generated(dir.path(), "debezium");
    let config = fs::read_to_string(dir.path().join("vigil.toml")).unwrap();
    assert!(config.contains("transactions = true"));
    let off = dir.path().join("off.toml");
    fs::write(
        &off,
        config.replace("transactions = true", "transactions = false"),
    )
    .unwrap();
    let checked = check_dir(dir.path(), &off, "out-off");
    let kinds: Vec<String> = checked
        .violations()
        .iter()
        .map(|v| v["data"]["kind"].as_str().unwrap().to_string())
        .collect();
    assert!(kinds.iter().all(|k| !k.ends_with("_transaction")));
    assert!(kinds.iter().any(|k| k == "missing_invalidation"));
    assert!(
        checked.summary["skipped"]["transaction_metadata"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(checked.summary["dead_letters_total"], 0);
}

#[test]
fn open_transactions_stay_within_their_budget() {
    let dir = tempfile::tempdir().unwrap();
    // Transactions that begin and never end, far more than the budget.
    const OPENED: u64 = 20_000;
    const BUDGET: u64 = 100;
    let mut cdc = String::new();
    for i in 0..OPENED {
        writeln!(
            cdc,
            r#"{{"status":"BEGIN","id":"tx-{i}","ts_ms":{},"event_count":null,"data_collections":null}}"#,
            1_700_000_000_000u64 + i
        )
        .unwrap();
    }
    fs::write(dir.path().join("cdc.ndjson"), cdc).unwrap();
    fs::write(dir.path().join("cache.ndjson"), "").unwrap();
    let config = dir.path().join("vigil.toml");
    fs::write(
        &config,
        format!(
            "[detect]\ntransactions = true\ntransaction_timeout = \"1h\"\nmax_open_transactions = {BUDGET}\n{USERS_CONFIG}"
        ),
    )
    .unwrap();
    let checked = check_dir(dir.path(), &config, "out");
    assert_eq!(
        checked.summary["transactions_dropped"].as_u64(),
        Some(OPENED - BUDGET),
        "{}",
        checked.summary
    );
    let unterminated: Vec<Value> = checked
        .violations()
        .into_iter()
        .filter(|v| v["data"]["kind"] == "unterminated_transaction")
        .collect();
    assert_eq!(unterminated.len() as u64, BUDGET, "the last ones kept");
    assert_eq!(
        unterminated[0]["data"]["table"], "(none)",
        "no change of a mapped table was seen"
    );
}

#[test]
fn maxwell_transactions_are_checked_by_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    // Rows as Maxwell writes them (`output_xoffset` on): `xoffset` on every
    // row but the last, which carries `commit`; `shop.audit` is not mapped
    // and its rows count all the same. Each is redelivered once.
    let row = |xid: u64, table: &str, id: u64, tail: &str| {
        format!(
            r#"{{"database":"shop","table":"{table}","type":"insert","ts":1714564800,"xid":{xid},{tail}"data":{{"id":{id}}}}}"#
        )
    };
    let rows = [
        // Complete, its commit row in the unmapped table.
        row(1, "orders", 1, r#""xoffset":0,"#),
        row(1, "orders", 2, r#""xoffset":1,"#),
        row(1, "audit", 3, r#""commit":true,"#),
        // Row 1 lost.
        row(2, "orders", 4, r#""xoffset":0,"#),
        row(2, "audit", 5, r#""xoffset":2,"#),
        row(2, "orders", 6, r#""commit":true,"#),
        // No commit row.
        row(3, "orders", 7, r#""xoffset":0,"#),
        row(3, "orders", 8, r#""xoffset":1,"#),
    ];
    let mut cdc = String::new();
    for r in rows.iter().chain(rows.iter().rev()) {
        writeln!(cdc, "{r}").unwrap();
    }
    fs::write(dir.path().join("cdc.ndjson"), cdc).unwrap();
    fs::write(dir.path().join("cache.ndjson"), "").unwrap();
    let config = dir.path().join("vigil.toml");
    fs::write(
        &config,
        "[detect]\ntransactions = true\ntransaction_timeout = \"1m\"\n\n[[tables]]\ntable = \"shop.orders\"\npk = [\"id\"]\nkeys = [\"order:{id}\"]\nversion = \"ts_ms\"\n",
    )
    .unwrap();
    let checked = check_dir(dir.path(), &config, "out");
    let schema = Schema::named("urn:vigil:schema:violation:v1");
    let mut tx_level: Vec<(String, String)> = Vec::new();
    for v in checked.violations() {
        let errors = schema.errors(&v["data"]);
        assert!(errors.is_empty(), "{v}: {errors:?}");
        let data = &v["data"];
        let kind = data["kind"].as_str().unwrap();
        if kind.ends_with("_transaction") {
            tx_level.push((kind.into(), data["transaction_id"].as_str().unwrap().into()));
        }
        if kind == "incomplete_transaction" {
            assert_eq!(data["missing_xoffsets"], serde_json::json!([1]), "{v}");
            assert_eq!(data["table"], "(unknown)");
            assert_eq!(
                data["tables"],
                serde_json::json!(["shop.audit", "shop.orders"])
            );
        }
    }
    tx_level.sort();
    assert_eq!(
        tx_level,
        [
            ("incomplete_transaction".into(), "2".into()),
            ("unterminated_transaction".into(), "3".into())
        ]
    );
    // The rows of the unmapped table are dead letters (the default
    // `inputs.unmapped_tables`), and still took their places.
    assert_eq!(checked.summary["dead_letters"]["unmapped_table"], 4);
}

#[test]
fn generated_maxwell_transactions_are_reported_exactly() {
    let dir = tempfile::tempdir().unwrap();
    generated(dir.path(), "maxwell");
    let expected = dir.path().join("expected.ndjson");
    assert_expects_some(
        &expected,
        &[
            "incomplete_transaction",
            "unterminated_transaction",
            "transaction_not_invalidated",
            "missing_invalidation",
        ],
    );
    // The checks are on, and no BEGIN or END topic is read: Maxwell has none.
    let config = fs::read_to_string(dir.path().join("vigil.toml")).unwrap();
    assert!(config.contains("transactions = true"), "{config}");
    assert!(!config.contains("transaction_topics"), "{config}");

    // Per xid, from the rows written: their xoffsets, and whether the
    // commit row came.
    let mut rows: std::collections::BTreeMap<String, (Vec<u64>, bool)> = Default::default();
    for row in read_ndjson(&dir.path().join("cdc.ndjson")) {
        assert!(row.get("status").is_none(), "no BEGIN or END: {row}");
        if row["type"] == "bootstrap-insert" {
            continue;
        }
        let tx = rows
            .entry(row["xid"].as_u64().unwrap().to_string())
            .or_default();
        match row.get("xoffset") {
            Some(x) => tx.0.push(x.as_u64().unwrap()),
            None => tx.1 = row["commit"] == true,
        }
    }
    for (xoffsets, _) in rows.values_mut() {
        xoffsets.sort_unstable();
        xoffsets.dedup();
    }

    let checked = check_dir(dir.path(), &dir.path().join("vigil.toml"), "out");
    assert_matches_expected(&expected, &checked);
    assert_eq!(checked.summary["dead_letters_total"], 0);
    let schema = Schema::named("urn:vigil:schema:violation:v1");
    for v in checked.violations() {
        let errors = schema.errors(&v["data"]);
        assert!(errors.is_empty(), "{v}: {errors:?}");
        let data = &v["data"];
        let kind = data["kind"].as_str().unwrap();
        if !kind.ends_with("_transaction") {
            continue;
        }
        let id = data["transaction_id"].as_str().unwrap();
        assert_eq!(v["subject"], format!("transaction/{id}"));
        let (xoffsets, commit) = &rows[id];
        match kind {
            "incomplete_transaction" => {
                assert!(*commit, "{v}");
                let highest = *xoffsets.last().unwrap();
                let gaps: Vec<u64> = (0..highest)
                    .filter(|x| xoffsets.binary_search(x).is_err())
                    .collect();
                assert_eq!(data["missing_xoffsets"], serde_json::json!(gaps), "{v}");
                assert_eq!(data["seen_events"], xoffsets.len() as u64 + 1, "{v}");
                assert_eq!(data["table"], "(unknown)", "{v}");
                assert!(data.get("expected_events").is_none(), "{v}");
            }
            "unterminated_transaction" => {
                assert!(!*commit, "{v}");
                assert_eq!(data["seen_events"], xoffsets.len() as u64, "{v}");
            }
            _ => {}
        }
    }
}
