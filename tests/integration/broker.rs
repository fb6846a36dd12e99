//! A Kafka-protocol broker for the tests (librdkafka's mock cluster,
//! embedded, or tansu) and the `vigil run` daemon as a child process
//! connected to it.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use vigil::ingest::Stream;
use vigil::workload::{PARTITIONS, end_marker};

use crate::support::{vigil, wait_until};
use crate::tansu::Tansu;

pub const VIOLATIONS: &str = "vigil.violations";
pub const DLQ: &str = "vigil.dlq";
pub const STORMS: &str = "vigil.storms";
pub const CHANGELOG: &str = "vigil.changelog";

/// A record to produce.
pub struct Out<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, &'a str)],
    pub ts_ms: Option<i64>,
}

/// The topics of vigil's outputs every broker of the tests has, with their
/// partitions.
const OUTPUT_TOPICS: [(&str, i32); 4] = [(VIOLATIONS, 3), (DLQ, 1), (STORMS, 1), (CHANGELOG, 3)];

pub struct Broker {
    /// The mock cluster, unless the broker is tansu.
    mock: Option<MockCluster<'static, DefaultProducerContext>>,
    /// The tansu broker, stopped when dropped.
    _tansu: Option<Tansu>,
    pub bootstrap: String,
    producer: ThreadedProducer<DefaultProducerContext>,
}

impl Broker {
    /// A mock cluster of three brokers (ids 1 to 3) with the given topics,
    /// their partitions led by the brokers in turn.
    pub fn new(topics: &[(&str, i32)]) -> Self {
        let cluster = MockCluster::new(3).expect("the mock cluster starts");
        for (topic, partitions) in topics.iter().chain(&OUTPUT_TOPICS) {
            cluster.create_topic(topic, *partitions, 1).unwrap();
        }
        let bootstrap = cluster.bootstrap_servers();
        Self::with(Some(cluster), None, bootstrap)
    }

    /// A tansu broker (its log in `dir`) with the given topics. tansu
    /// creates no topic on first use, as the mock cluster does: the
    /// incidents topic too is created here.
    pub fn on_tansu(dir: &Path, topics: &[(&str, i32)]) -> Self {
        let tansu = Tansu::start(dir);
        let incidents = [("vigil.incidents", 1)];
        for (topic, partitions) in topics.iter().chain(&OUTPUT_TOPICS).chain(&incidents) {
            tansu.create_topic(topic, *partitions);
        }
        let bootstrap = format!("127.0.0.1:{}", tansu.port);
        Self::with(None, Some(tansu), bootstrap)
    }

    fn with(
        mock: Option<MockCluster<'static, DefaultProducerContext>>,
        tansu: Option<Tansu>,
        bootstrap: String,
    ) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("linger.ms", "2")
            .create()
            .unwrap();
        Broker {
            mock,
            _tansu: tansu,
            bootstrap,
            producer,
        }
    }

    /// The mock cluster, for tests that create topics as they go or take
    /// its brokers down.
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        self.mock
            .as_ref()
            .expect("this test needs the mock cluster")
    }

    pub fn produce(&self, r: &Out<'_>) {
        let mut headers = OwnedHeaders::new();
        for (k, v) in r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(r.topic)
            .partition(r.partition)
            .headers(headers);
        if let Some(k) = r.key {
            record = record.key(k);
        }
        if let Some(v) = r.value {
            record = record.payload(v);
        }
        if let Some(ts) = r.ts_ms {
            record = record.timestamp(ts);
        }
        self.producer.send(record).map_err(|(e, _)| e).unwrap();
    }

    /// On every partition of each topic, the workload's end marker for its
    /// stream at `ts_ms` ([`vigil::workload::end_marker`], the topic's
    /// place in `topics` telling the markers apart); then flushes.
    pub fn produce_end_markers<'a>(
        &self,
        topics: impl IntoIterator<Item = (&'a str, Stream)>,
        ts_ms: i64,
    ) {
        for (t, (topic, stream)) in topics.into_iter().enumerate() {
            for partition in 0..PARTITIONS {
                let (key, value) = end_marker(stream, t, partition, ts_ms);
                self.produce(&Out {
                    topic,
                    partition,
                    key: key.as_deref().map(str::as_bytes),
                    value: Some(value.as_bytes()),
                    headers: &[],
                    ts_ms: Some(ts_ms),
                });
            }
        }
        self.flush();
    }

    pub fn flush(&self) {
        self.producer.flush(Duration::from_secs(30)).unwrap();
    }

    /// Reads `topic` from its beginning until `enough` says so or `timeout`
    /// passes; returns what was read.
    pub fn read_until(
        &self,
        topic: &str,
        partitions: i32,
        timeout: Duration,
        enough: impl Fn(&[OwnedMessage]) -> bool,
    ) -> Vec<OwnedMessage> {
        self.read_isolated_until("read_uncommitted", topic, partitions, timeout, enough)
    }

    /// As [`Broker::read_until`], reading only records of committed
    /// transactions (and records written outside transactions).
    pub fn read_committed_until(
        &self,
        topic: &str,
        partitions: i32,
        timeout: Duration,
        enough: impl Fn(&[OwnedMessage]) -> bool,
    ) -> Vec<OwnedMessage> {
        self.read_isolated_until("read_committed", topic, partitions, timeout, enough)
    }

    fn read_isolated_until(
        &self,
        isolation: &str,
        topic: &str,
        partitions: i32,
        timeout: Duration,
        enough: impl Fn(&[OwnedMessage]) -> bool,
    ) -> Vec<OwnedMessage> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &self.bootstrap)
            .set("isolation.level", isolation);
        read_until(client, topic, partitions, timeout, enough)
    }
}

/// Reads `topic` from its beginning with a consumer of `client` (the
/// brokers and any TLS settings; records uncommitted too unless it sets
/// `isolation.level`) until `enough` says so or `timeout` passes; returns
/// what was read.
pub fn read_until(
    mut client: ClientConfig,
    topic: &str,
    partitions: i32,
    timeout: Duration,
    enough: impl Fn(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    if client.get("isolation.level").is_none() {
        client.set("isolation.level", "read_uncommitted");
    }
    let consumer: BaseConsumer = client
        .set("group.id", "vigil-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while !enough(&out) && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
    }
    out
}

/// The JSON values of a topic's records.
pub fn json_values(messages: &[OwnedMessage]) -> Vec<serde_json::Value> {
    messages
        .iter()
        .filter_map(|m| m.payload())
        .map(|p| serde_json::from_slice(p).expect("outputs are JSON"))
        .collect()
}

/// The headers of a record, their values as text.
pub fn headers_of(m: &OwnedMessage) -> BTreeMap<String, String> {
    m.headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A `vigil run` child process. Its stderr is collected, so tests can wait
/// for what it logs.
pub struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    pub fn start(config: &Path) -> Self {
        Self::start_with(config, &[])
    }

    /// `vigil run` with further flags.
    pub fn start_with(config: &Path, flags: &[&str]) -> Self {
        let mut child = vigil()
            .args(["run", "--config"])
            .arg(config)
            .args(flags)
            .env(
                "RUST_LOG",
                std::env::var("TEST_LOG_FILTER").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vigil run starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Daemon { child, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_log_after(0, needle, timeout)
    }

    /// Waits until the log after its first `from` bytes contains `needle`.
    pub fn wait_for_log_after(&self, from: usize, needle: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.log()[from..].contains(needle))
    }

    /// Sends SIGTERM and asserts a clean exit (status 0); returns the log.
    pub fn terminate(mut self) -> String {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let code = self.child.wait().unwrap().code();
        let log = self.log();
        assert_eq!(code, Some(0), "a clean stop exits 0:\n{log}");
        log
    }

    /// Waits for the process to exit on its own, for at most `timeout`
    /// (then kills it): its exit code, if it exited, and its log.
    pub fn wait_exit(mut self, timeout: Duration) -> (Option<i32>, String) {
        let mut status = None;
        wait_until(timeout, || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        (status.and_then(|s| s.code()), self.log())
    }

    /// Kills the process outright (SIGKILL): no shutdown, no flush.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `vigil run` configuration: the workload's tables and timing (its
/// `vigil.toml`), this broker, the given topics, a state directory, and
/// `overrides` as (section, field, value).
pub fn run_config(
    dir: &Path,
    base_toml: &str,
    bootstrap: &str,
    cdc: &[&str],
    cache: &[&str],
    overrides: &[(&str, &str, toml::Value)],
) -> PathBuf {
    let mut t: toml::Table = toml::from_str(base_toml).unwrap();
    let list = |v: &[&str]| {
        toml::Value::Array(
            v.iter()
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        )
    };
    let text = |s: &str| toml::Value::String(s.to_string());
    let mut set = |section: &str, field: &str, value: toml::Value| {
        t.entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap()
            .insert(field.to_string(), value);
    };
    set("kafka", "bootstrap.servers", text(bootstrap));
    // A killed daemon leaves its group only when its session times out.
    set("kafka", "session.timeout.ms", text("6000"));
    set("kafka", "heartbeat.interval.ms", text("500"));
    set("inputs", "group_id", text("vigil-it"));
    set("inputs", "cdc_topics", list(cdc));
    set("inputs", "cache_topics", list(cache));
    set("outputs", "violations_topic", text(VIOLATIONS));
    set("outputs", "dlq_topic", text(DLQ));
    set("outputs", "storms_topic", text(STORMS));
    set("outputs", "changelog_topic", text(CHANGELOG));
    set(
        "state",
        "path",
        text(&dir.join("state").display().to_string()),
    );
    set("state", "checkpoint_interval", text("200ms"));
    set("detect", "idle_timeout", text("1s"));
    set("metrics", "listen", text(""));
    for (section, field, value) in overrides {
        set(section, field, value.clone());
    }
    let path = dir.join("run.toml");
    fs::write(&path, toml::to_string(&t).unwrap()).unwrap();
    path
}
