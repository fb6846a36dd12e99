//! vigil reaching a broker only through TLS, with verification on: tansu
//! (an independent Kafka-compatible broker) listens in plain text on a port
//! nothing here uses, and advertises the port of a TLS terminator
//! (`stunnel`) in front of it, whose certificate a test CA signed. The
//! workload is produced through TLS (`vigil gen --brokers --kafka`), `vigil
//! run` reads it and publishes its violations through TLS; with another CA
//! it stops at once, naming the certificate problem. `./dev.sh test`
//! installs tansu, stunnel and openssl.

use std::fs;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::Message;
use serde_json::Value;

use crate::broker::{CHANGELOG, DLQ, Daemon, STORMS, VIOLATIONS, read_until, run_config};
use crate::support::*;
use crate::tansu::Tansu;

/// Runs a setup command, failing the test with its output if it fails.
fn setup(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} did not start ({e}); ./dev.sh test installs it"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a certificate it signed for 127.0.0.1; and another CA.
fn certificates(dir: &Path) {
    let openssl = |args: &[&str]| setup(Command::new("openssl").args(args).current_dir(dir));
    for (name, subject) in [("ca", "/CN=vigil test CA"), ("other", "/CN=another CA")] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            subject,
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ]);
    }
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.cnf",
        "-out",
        "server.pem",
    ]);
}

/// The TLS terminator, stopped when the test ends, however it ends.
struct Stunnel(Child);

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tansu in plain text on `plain`, advertising `tls`, where stunnel
/// terminates TLS with the test CA's certificate.
fn broker_behind_tls(dir: &Path, plain: u16, tls: u16) -> (Tansu, Stunnel) {
    let tansu = Tansu::start_advertising(dir, plain, tls);
    let conf = dir.join("stunnel.conf");
    fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\ncert = {}\nkey = {}\n",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        ),
    )
    .unwrap();
    let log = |name: &str| Stdio::from(fs::File::create(dir.join(name)).unwrap());
    let stunnel = Stunnel(
        Command::new("stunnel4")
            .arg(&conf)
            .stdout(log("stunnel.log"))
            .stderr(log("stunnel.err"))
            .spawn()
            .expect("stunnel4 starts (./dev.sh test installs it)"),
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", tls)).is_ok()
        }),
        "stunnel listens on {tls}"
    );
    (tansu, stunnel)
}

/// The TLS settings of a client that trusts `ca`.
fn tls_client(bootstrap: &str, ca: &Path) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", bootstrap)
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", ca.display().to_string());
    client
}

#[test]
fn vigil_reaches_a_broker_only_through_tls_and_names_a_wrong_ca() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (plain, tls) = (free_port(), free_port());
    let (tansu, _stunnel) = broker_behind_tls(dir.path(), plain, tls);
    let cdc = ["gen.public.t0", "gen.public.t1", "gen.public.t2"];
    for topic in cdc
        .iter()
        .chain(&["cache-events", "__debezium-heartbeat.gen"])
    {
        tansu.create_topic(topic, 3);
    }
    for topic in [VIOLATIONS, DLQ, STORMS, CHANGELOG, "vigil.incidents"] {
        tansu.create_topic(topic, 1);
    }
    let bootstrap = format!("127.0.0.1:{tls}");
    let ca = dir.path().join("ca.pem");
    let work = dir.path().join("work");
    let generated = run(vigil()
        .args([
            "gen", "--events", "3000", "--keys", "300", "--seed", "5", "--out",
        ])
        .arg(&work)
        .args(["--brokers", &bootstrap])
        .args(["--kafka", "security.protocol=ssl", "--kafka"])
        .arg(format!("ssl.ca.location={}", ca.display())));
    assert!(
        generated.status.success(),
        "the workload is produced through TLS: {}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let expected = read_ndjson(&work.join("expected.ndjson"));
    assert!(!expected.is_empty());
    let expected_kinds: std::collections::BTreeSet<String> = expected
        .iter()
        .map(|v| v["kind"].as_str().unwrap().to_string())
        .collect();

    let base = fs::read_to_string(work.join("vigil.toml")).unwrap();
    let text = |s: &str| toml::Value::String(s.to_string());
    let config = |ca: &Path| {
        run_config(
            dir.path(),
            &base,
            &bootstrap,
            &cdc,
            &["cache-events"],
            &[
                ("kafka", "security.protocol", text("ssl")),
                ("kafka", "ssl.ca.location", text(&ca.display().to_string())),
            ],
        )
    };

    // Verification on, the right CA: violations come out through TLS.
    let daemon = Daemon::start(&config(&ca));
    let violations = read_until(
        tls_client(&bootstrap, &ca),
        VIOLATIONS,
        1,
        Duration::from_secs(60),
        |m| m.len() >= 10,
    );
    let log = daemon.terminate();
    assert!(violations.len() >= 10, "violations through TLS:\n{log}");
    for m in &violations {
        let event: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let kind = event["type"]
            .as_str()
            .unwrap()
            .trim_start_matches("vigil.violation.");
        assert!(expected_kinds.contains(kind), "{event}");
    }

    // Another CA: vigil stops at once with status 4, naming the problem
    // (bounded: without the check it would retry forever).
    let mut refused = vigil()
        .args(["run", "--broker-timeout", "5s", "--config"])
        .arg(config(&dir.path().join("other.pem")))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stopped = wait_until(Duration::from_secs(60), || {
        refused.try_wait().unwrap().is_some()
    });
    if !stopped {
        let _ = refused.kill();
    }
    let out = refused.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stopped,
        "vigil run kept retrying a broker it cannot verify:\n{stderr}"
    );
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach the Kafka brokers {bootstrap}"))
            && stderr.contains("certificate verify failed"),
        "{stderr}"
    );
}
