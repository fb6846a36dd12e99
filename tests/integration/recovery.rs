//! Crash recovery against tansu, an independent Kafka-compatible broker
//! (`./dev.sh test` installs it, see DEVELOPERS.md): `vigil run` as a
//! static group member, killed with SIGKILL mid-stream and started again
//! with the same `group.instance.id`, takes its partitions back well before
//! the killed member's session would have expired, and reports exactly what
//! an uncrashed `vigil check` of the same records reports. `vigil torture
//! --bootstrap` does the producing, killing and comparing.

use crate::support::*;
use crate::tansu::Tansu;

#[test]
fn a_static_member_killed_on_tansu_resumes_at_once_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let tansu = Tansu::start(dir.path());
    let stdout = torture_without_loss(
        vigil()
            .args([
                "torture",
                "--records",
                "100000",
                "--kills",
                "1",
                "--outage",
                "0s",
                "--store-failure",
                "false",
                "--seed",
                "6",
                "--group-instance-id",
                "vigil-recovery-0",
                "--bootstrap",
            ])
            .arg(format!("127.0.0.1:{}", tansu.port))
            .arg("--dir")
            .arg(dir.path().join("torture")),
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let kills: Vec<&&str> = lines.iter().filter(|l| l.starts_with("kill ")).collect();
    assert_eq!(kills.len(), 1, "{stdout}");
    // Killed mid-stream: vigil had not committed the whole workload.
    let committed: u64 = kills[0]
        .split_once(" records produced (")
        .and_then(|(_, rest)| rest.split_once(' '))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no offsets committed in {}", kills[0]));
    assert!(committed < 100_000, "{stdout}");
    // The killed member's session (30 s) never had to expire: the
    // restarted one had its partitions and committed within half of it.
    assert!(
        kills[0].contains("committing again after")
            && kills[0].contains("(static member: within half its 30s session timeout)"),
        "{stdout}"
    );
}
