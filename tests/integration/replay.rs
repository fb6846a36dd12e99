//! `vigil replay` on files: what still fails is named with its reason and
//! exit status 3, a fixed configuration replays everything, a filter selects
//! by reason, and a finished replay is not done again.

use std::path::Path;

use serde_json::Value;

use crate::support::*;

/// A generated workload in `kcat -J` lines, checked with table t2 unmapped:
/// its changes end in `o1/dlq.ndjson`.
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
        &[],
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

    // Through the engine; run again, it has nothing left to do.
    let state = dir.path().join("state");
    let o2 = dir.path().join("o2");
    let pipeline = [
        "--config",
        fixed.to_str().unwrap(),
        "--to",
        "pipeline",
        "--out",
        o2.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
    ];
    let (code, s) = replay(dir.path(), &pipeline);
    assert_eq!((code, s["replayed"].as_u64()), (0, Some(dead)), "{s}");
    assert!(!read_ndjson(&dir.path().join("o2/violations.ndjson")).is_empty());
    let (code, s) = replay(dir.path(), &pipeline);
    assert_eq!((code, s["read"].as_u64()), (0, Some(0)), "{s}");
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
