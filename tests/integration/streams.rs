//! Inputs read as streams: standard input (`-`) and named pipes carry a
//! workload to `vigil check` and `vigil replay` with the same verdicts as the
//! files they were copied from; two inputs cannot share standard input.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::support::*;

/// A generated workload of every violation kind, in `kcat -J` lines.
fn workload(dir: &Path) {
    generate(
        dir,
        &[
            "--kcat",
            "--events",
            "20000",
            "--keys",
            "1000",
            "--seed",
            "7",
            "--missing-rate",
            "0.03",
            "--late-rate",
            "0.03",
            "--stale-fill-rate",
            "0.03",
            "--regression-rate",
            "0.02",
        ],
    );
}

/// Runs `cmd` with `input`'s bytes written into its standard input through
/// a pipe.
fn run_piped(cmd: &mut Command, input: &Path) -> Output {
    let bytes = std::fs::read(input).unwrap();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the vigil binary runs");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        // vigil may stop reading on a usage error: a broken pipe is its
        // answer, not the test's failure.
        let _ = stdin.write_all(&bytes);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output
}

fn check_cmd(dir: &Path, out: &str) -> Command {
    let mut cmd = vigil();
    cmd.args(["check", "--quiet", "--config"])
        .arg(dir.join("vigil.toml"))
        .arg("--out")
        .arg(dir.join(out));
    cmd
}

fn checked(output: &Output, out: &Path) -> Checked {
    Checked {
        code: output.status.code().unwrap_or(-1),
        summary: serde_json::from_slice(&output.stdout).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        out: out.to_path_buf(),
    }
}

fn ids(checked: &Checked) -> BTreeSet<String> {
    checked
        .violations()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect()
}

/// Records read, over every input.
fn records_read(checked: &Checked) -> u64 {
    checked.summary["records_read"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum()
}

#[test]
fn standard_input_gives_the_verdicts_of_the_file_it_carries() {
    let dir = tempfile::tempdir().unwrap();
    workload(dir.path());
    let (cdc, cache) = (
        dir.path().join("cdc.ndjson"),
        dir.path().join("cache.ndjson"),
    );
    let expected = dir.path().join("expected.ndjson");
    let from_files = check(
        Some(&dir.path().join("vigil.toml")),
        &[&cdc],
        &[&cache],
        &dir.path().join("files"),
        &[],
    );
    assert_eq!(from_files.code, 0, "{}", from_files.stderr);
    assert_matches_expected(&expected, &from_files);

    for (stdin_flag, other_flag, piped, other, out) in [
        ("--cdc", "--cache", &cdc, &cache, "cdc-stdin"),
        ("--cache", "--cdc", &cache, &cdc, "cache-stdin"),
    ] {
        let mut cmd = check_cmd(dir.path(), out);
        cmd.args([stdin_flag, "-", other_flag]).arg(other);
        let from_stdin = checked(&run_piped(&mut cmd, piped), &dir.path().join(out));
        assert_eq!(from_stdin.code, 0, "{out}: {}", from_stdin.stderr);
        assert_matches_expected(&expected, &from_stdin);
        assert_eq!(ids(&from_stdin), ids(&from_files), "{out}");
        assert_eq!(from_stdin.summary["dead_letters_total"], 0, "{out}");
        assert_eq!(
            records_read(&from_stdin),
            records_read(&from_files),
            "{out}: every line was read"
        );
        assert!(
            from_stdin.summary["records_read"]["stdin"].as_u64() > Some(0),
            "{out}: counted under the name stdin: {}",
            from_stdin.summary
        );
    }
}

/// Makes a named pipe.
fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

/// Opens a named pipe for writing once a reader has opened it (without
/// blocking, so a reader that never comes fails the test instead of hanging
/// it), then writes `bytes` into it and closes it.
fn feed_fifo(fifo: &Path, bytes: &[u8]) {
    let mut writer = None;
    let opened = wait_until(Duration::from_secs(60), || {
        writer = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
            .ok();
        writer.is_some()
    });
    assert!(opened, "vigil opened the named pipe {}", fifo.display());
    let writer: File = writer.unwrap();
    // Back to blocking writes: the reader takes the bytes at its own pace.
    // SAFETY: the descriptor is open for the duration of the call.
    let rc = unsafe {
        use std::os::fd::AsRawFd;
        libc::fcntl(writer.as_raw_fd(), libc::F_SETFL, 0)
    };
    assert_eq!(rc, 0);
    let mut writer = writer;
    writer.write_all(bytes).unwrap();
}

#[test]
fn a_named_pipe_gives_the_verdicts_of_the_file_it_carries() {
    let dir = tempfile::tempdir().unwrap();
    workload(dir.path());
    let (cdc, cache) = (
        dir.path().join("cdc.ndjson"),
        dir.path().join("cache.ndjson"),
    );
    let fifo = dir.path().join("cache.fifo");
    mkfifo(&fifo);
    let mut cmd = check_cmd(dir.path(), "fifo");
    cmd.arg("--cdc")
        .arg(&cdc)
        .arg("--cache")
        .arg(&fifo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("the vigil binary runs");
    feed_fifo(&fifo, &std::fs::read(&cache).unwrap());
    let from_fifo = checked(&child.wait_with_output().unwrap(), &dir.path().join("fifo"));
    assert_eq!(from_fifo.code, 0, "{}", from_fifo.stderr);
    assert_matches_expected(&dir.path().join("expected.ndjson"), &from_fifo);
    assert_eq!(from_fifo.summary["dead_letters_total"], 0);
}

#[test]
fn inputs_that_cannot_be_streams_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.ndjson");
    std::fs::write(&empty, "").unwrap();
    let out = dir.path().join("out");
    for (args, says) in [
        (
            vec!["--cdc", "-", "--cache", "/dev/stdin"],
            "both read standard input: at most one input can be standard input",
        ),
        (
            vec!["--cdc", "-", "-"],
            "both read standard input: at most one input can be standard input",
        ),
        (
            vec!["--cdc", dir.path().to_str().unwrap()],
            "is not a readable file or pipe",
        ),
        (
            vec!["--cache", "/nonexistent/cache.ndjson"],
            "input /nonexistent/cache.ndjson is not readable",
        ),
    ] {
        let mut cmd = vigil();
        cmd.args(["check", "--quiet", "--out"])
            .arg(&out)
            .args(&args);
        let output = run_piped(&mut cmd, &empty);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn replay_reads_a_dead_letter_queue_from_standard_input() {
    let dir = tempfile::tempdir().unwrap();
    workload(dir.path());
    // Table t1 unmapped: its changes are dead letters.
    let fixed = std::fs::read_to_string(dir.path().join("vigil.toml")).unwrap();
    let broken = fixed.replace("table = \"public.t1\"", "table = \"public.unused\"");
    assert_ne!(broken, fixed);
    std::fs::write(dir.path().join("broken.toml"), broken).unwrap();
    let dead = check(
        Some(&dir.path().join("broken.toml")),
        &[&dir.path().join("cdc.ndjson")],
        &[&dir.path().join("cache.ndjson")],
        &dir.path().join("o1"),
        &[],
    );
    assert_eq!(dead.code, 0, "{}", dead.stderr);
    let dead = dead.summary["dead_letters"]["unmapped_table"]
        .as_u64()
        .unwrap();
    assert!(dead > 100);
    let dlq = dir.path().join("o1/dlq.ndjson");
    let replay = |from: &str| {
        let mut cmd = vigil();
        cmd.args(["replay", "--dry-run", "--config"])
            .arg(dir.path().join("vigil.toml"))
            .args(["--from-file", from]);
        let output = run_piped(&mut cmd, &dlq);
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        (output.status.code(), summary)
    };
    let (code, from_file) = replay(dlq.to_str().unwrap());
    assert_eq!(
        (code, from_file["replayed"].as_u64()),
        (Some(0), Some(dead)),
        "{from_file}"
    );
    let (code, from_stdin) = replay("-");
    assert_eq!(
        (code, from_stdin["replayed"].as_u64()),
        (Some(0), Some(dead)),
        "{from_stdin}"
    );
    assert_eq!(from_stdin["read"], from_file["read"]);
    assert_eq!(from_stdin["source"], "replay:stdin");
}
