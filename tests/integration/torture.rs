//! `vigil torture`, short: three SIGKILLs, a 10 s broker outage and a
//! state store that fails as a full disk does, on a workload with every
//! fault kind; nothing lost, nothing added, the same final state as an
//! uncrashed `vigil check`.

use crate::support::*;

#[test]
fn torture_loses_nothing_through_kills_an_outage_and_a_full_store() {
    let dir = tempfile::tempdir().unwrap();
    let stdout = torture_without_loss(
        vigil()
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
            .arg(dir.path()),
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
    assert!(!stdout.contains("FAILED"), "{stdout}");
}
