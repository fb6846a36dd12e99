//! tansu, an independent Kafka-compatible broker (`./dev.sh test` installs
//! it, see DEVELOPERS.md), started by the tests that need a second broker
//! beside librdkafka's mock cluster.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{free_port, wait_until};

/// The version `./dev.sh test` installs.
const TANSU_VERSION: &str = "0.6.0";

/// The tansu binary: `$TANSU`, else cargo's bin directory, else `PATH`;
/// the test fails with what to do when it is missing or another version.
pub fn tansu_binary() -> PathBuf {
    let binary = if let Some(path) = std::env::var_os("TANSU") {
        PathBuf::from(path)
    } else {
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
        match cargo_home.map(|h| h.join("bin/tansu")) {
            Some(path) if path.is_file() => path,
            _ => PathBuf::from("tansu"),
        }
    };
    let version = Command::new(&binary).arg("--version").output();
    let found = version
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    assert!(
        matches!(&found, Ok(v) if v == &format!("tansu {TANSU_VERSION}")),
        "tansu {TANSU_VERSION} is needed by this test and was not found at {} ({found:?}): \
         `./dev.sh test` installs it (cargo install tansu --version {TANSU_VERSION} \
         --features dynostore), or set TANSU to its path",
        binary.display()
    );
    binary
}

/// A tansu broker in memory, stopped when dropped.
pub struct Tansu {
    child: Child,
    /// The port it listens on.
    pub port: u16,
}

impl Tansu {
    /// On a free port, advertising that port.
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        Self::start_advertising(dir, port, port)
    }

    /// On `port`, advertising `advertised` to clients (where a TLS
    /// terminator in front of it listens, say).
    pub fn start_advertising(dir: &Path, port: u16, advertised: u16) -> Self {
        let log = std::fs::File::create(dir.join("tansu.log")).unwrap();
        let child = Command::new(tansu_binary())
            .args(["broker", "--listener-url"])
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{advertised}"))
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu starts");
        let tansu = Tansu { child, port };
        assert!(
            wait_until(Duration::from_secs(30), || {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            }),
            "tansu did not listen on port {port}"
        );
        tansu
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let out = Command::new(tansu_binary())
            .args(["topic", "create", "--partitions"])
            .arg(partitions.to_string())
            .arg("--broker")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg(topic)
            .output()
            .expect("tansu topic create runs");
        assert!(
            out.status.success(),
            "creating {topic} on tansu: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
