//! Helpers shared by the integration tests: running the binary, generating
//! workloads, comparing violations with the expected ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The `vigil` binary under test.
pub fn vigil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
}

/// Runs a command and returns its output, failing with stderr on a spawn error.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the vigil binary runs")
}

/// Runs `vigil gen --out dir` with extra flags and returns its summary.
pub fn generate(dir: &Path, args: &[&str]) -> Value {
    let out = run(vigil().arg("gen").arg("--out").arg(dir).args(args));
    assert!(
        out.status.success(),
        "vigil gen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("gen prints a JSON summary")
}

/// The result of a `vigil check` run.
pub struct Checked {
    pub code: i32,
    pub summary: Value,
    pub stderr: String,
    pub out: PathBuf,
}

impl Checked {
    pub fn violations(&self) -> Vec<Value> {
        read_ndjson(&self.out.join("violations.ndjson"))
    }

    pub fn dead_letters(&self) -> Vec<Value> {
        read_ndjson(&self.out.join("dlq.ndjson"))
    }
}

/// Runs `vigil check` and parses its summary (when it printed one).
pub fn check(
    config: Option<&Path>,
    cdc: &[&Path],
    cache: &[&Path],
    out: &Path,
    extra: &[&str],
) -> Checked {
    let mut cmd = vigil();
    cmd.arg("check").arg("--quiet").arg("--out").arg(out);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    for p in cdc {
        cmd.arg("--cdc").arg(p);
    }
    for p in cache {
        cmd.arg("--cache").arg(p);
    }
    cmd.args(extra);
    let output = run(&mut cmd);
    Checked {
        code: output.status.code().unwrap_or(-1),
        summary: serde_json::from_slice(&output.stdout).unwrap_or(Value::Null),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        out: out.to_path_buf(),
    }
}

/// Waits until `ready` holds, checking every 50 ms, for at most `timeout`;
/// says whether it held.
pub fn wait_until(timeout: std::time::Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::park_timeout(std::time::Duration::from_millis(50));
    }
}

pub fn read_ndjson(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: bad line {l}: {e}", path.display()))
        })
        .collect()
}

/// What identifies a violation in `expected.ndjson` and in a CloudEvent's data.
pub type Fingerprint = (String, Option<String>, String, String, String, Option<i64>);

pub fn fingerprint(v: &Value) -> Fingerprint {
    (
        v["kind"].as_str().unwrap_or_default().to_string(),
        v["key"].as_str().map(str::to_string),
        v["table"].as_str().unwrap_or_default().to_string(),
        v["pk"].to_string(),
        v["version"].to_string(),
        v["lag_ms"].as_i64(),
    )
}

/// Counts of each fingerprint (a multiset).
pub fn multiset(items: impl IntoIterator<Item = Fingerprint>) -> BTreeMap<Fingerprint, usize> {
    let mut m = BTreeMap::new();
    for f in items {
        *m.entry(f).or_insert(0) += 1;
    }
    m
}

/// Asserts that the violations of a run are exactly the expected ones, and
/// describes the first differences when they are not.
pub fn assert_matches_expected(expected_file: &Path, checked: &Checked) {
    let expected = multiset(read_ndjson(expected_file).iter().map(fingerprint));
    let actual = multiset(checked.violations().iter().map(|e| fingerprint(&e["data"])));
    if expected != actual {
        let missing: Vec<_> = expected
            .keys()
            .filter(|k| expected.get(*k) != actual.get(*k))
            .take(5)
            .collect();
        let extra: Vec<_> = actual
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .take(5)
            .collect();
        panic!(
            "violations differ from {}: {} expected, {} reported\nfirst expected not matched: {missing:#?}\nfirst unexpected: {extra:#?}",
            expected_file.display(),
            expected.values().sum::<usize>(),
            actual.values().sum::<usize>()
        );
    }
}

/// Counts of expected violations per kind.
pub fn expected_kinds(expected_file: &Path) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for v in read_ndjson(expected_file) {
        *m.entry(v["kind"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    m
}

/// Asserts that a generated workload expects some violations of each of
/// `kinds`, so that matching it exactly tests each of them.
pub fn assert_expects_some(expected_file: &Path, kinds: &[&str]) {
    let counts = expected_kinds(expected_file);
    for kind in kinds {
        assert!(
            counts.get(*kind).copied().unwrap_or(0) > 0,
            "the workload should expect some {kind}: {counts:?}"
        );
    }
}

/// A configuration mapping one table, `public.users`, versioned by a column.
pub const USERS_CONFIG: &str = r#"
[[tables]]
table = "public.users"
pk = ["id"]
keys = ["user:{id}"]
version = "column:version"
"#;

/// The seven violation kinds.
pub const KINDS: [&str; 7] = [
    "missing_invalidation",
    "late_invalidation",
    "stale_fill",
    "fill_after_delete",
    "version_regression",
    "version_gap",
    "conflicting_version",
];

/// Fault rates high enough that every kind appears in a small workload.
pub const FAULTY: [&str; 16] = [
    "--missing-rate",
    "0.03",
    "--late-rate",
    "0.03",
    "--stale-fill-rate",
    "0.03",
    "--fill-after-delete-rate",
    "0.3",
    "--regression-rate",
    "0.02",
    "--gap-rate",
    "0.02",
    "--conflict-rate",
    "0.02",
    "--duplicate-rate",
    "0.05",
];

/// Runs `promtool` (Prometheus's checker) with `args` and `stdin`, and
/// asserts that it finds nothing wrong. `./dev.sh test` installs it (Debian
/// package `prometheus`); a test that needs it fails when it is missing.
pub fn promtool(args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install Prometheus's promtool \
                 (`apt-get install prometheus`; ./dev.sh test does it)"
            )
        });
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool {args:?} finds problems:\n{}{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        stdin.unwrap_or_default()
    );
}

/// A TCP port free on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An HTTP response: status and body.
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// `GET path` from `127.0.0.1:port`, with a bearer token if given; `None`
/// while nothing listens there.
pub fn http_get(port: u16, path: &str, token: Option<&str>) -> Option<HttpResponse> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(HttpResponse {
        status,
        body: body.to_string(),
    })
}

/// Runs a `vigil torture` command and checks its report: exit status 0, no
/// violation missing or extra, no final-state entry differing, and the
/// verdict "no loss" last. Returns its stdout.
pub fn torture_without_loss(cmd: &mut Command) -> String {
    let out = run(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "torture found a loss:\n{stdout}\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
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
    assert_eq!(lines.last(), Some(&"verdict: no loss"), "{stdout}");
    stdout
}
