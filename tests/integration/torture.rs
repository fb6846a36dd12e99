//! `vigil torture`, short: three SIGKILLs, a 10 s broker outage and a
//! state store that fails as a full disk does, on a workload with every
//! fault kind; nothing lost, nothing added, the same final state as an
//! uncrashed `vigil check`.

use crate::support::*;

#[test]
fn torture_loses_nothing_through_kills_an_outage_and_a_full_store() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(vigil()
        .args([
            "torture",
            "--records",
            "100000",
            "--kills",
            "3",
            "--outage",
            "10s",
            "--seed",
            "3",
            "--dir",
        ])
        .arg(dir.path()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "torture found a loss:\n{stdout}\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let count = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
    assert_eq!(count("kill "), 3, "{stdout}");
    assert_eq!(count("broker outage: the broker away 10.0s"), 1, "{stdout}");
    let store = lines
        .iter()
        .find(|l| l.starts_with("store failure:"))
        .unwrap_or_else(|| panic!("no store failure line:\n{stdout}"));
    assert!(
        store.contains("exited with status 4")
            && store.contains("No space left on device")
            && store.contains("Kafka offsets not past the state's"),
        "{store}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("violations:") && l.contains(" 0 missing, 0 extra")),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("final state:") && l.contains(", 0 differ")),
        "{stdout}"
    );
    assert!(!stdout.contains("FAILED"), "{stdout}");
    assert_eq!(lines.last(), Some(&"verdict: no loss"), "{stdout}");
}
