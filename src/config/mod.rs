//! Configuration: TOML with environment overrides, every field documented
//! with its default (the same text as `config/default.toml`), validated at
//! start so that a bad setting fails with a message naming it.
//!
//! Environment overrides: `VIGIL_<SECTION>__<FIELD>=value`, for example
//! `VIGIL_DETECT__DEADLINE=10s` or `VIGIL_STATE__PATH=/var/lib/vigil`. The
//! value is read as a TOML value when it parses as one (numbers, booleans,
//! arrays), else as a string. `[[tables]]` cannot be overridden this way.

mod template;
mod units;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use template::{KeyTemplate, Segment, VersionSource};
pub use units::{ByteSize, Dur};

/// The embedded default configuration: every setting at its default.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Prefix of environment variables that override settings.
pub const ENV_PREFIX: &str = "VIGIL_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("invalid environment override {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid setting `{setting}`: {message}")]
    Invalid { setting: String, message: String },
}

fn invalid(setting: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        message: message.into(),
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub detect: DetectConfig,
    /// Tables and the cache keys that cache their rows. Default: none.
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub inputs: InputsConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub outputs: OutputsConfig,
    /// `[kafka]`: librdkafka properties, passed as they are
    /// (`bootstrap.servers`, `security.protocol`, `sasl.*`, `ssl.*`...).
    /// Default: none.
    #[serde(default)]
    pub kafka: BTreeMap<String, KafkaValue>,
    #[serde(default)]
    pub processing: ProcessingConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub storms: StormsConfig,
    #[serde(default)]
    pub incidents: IncidentsConfig,
    #[serde(default)]
    pub schema_registry: SchemaRegistryConfig,
}

/// A librdkafka property value: TOML strings, numbers and booleans are all
/// passed as text. Its `Debug` form never shows the value (it may be a
/// password, and `Debug` cannot tell by the property's name).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "toml::Value", into = "String")]
pub struct KafkaValue(pub String);

impl std::fmt::Debug for KafkaValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

/// What a secret is printed as.
pub const REDACTED: &str = "\"<redacted>\"";

/// Whether a setting or librdkafka property holds a secret (passwords,
/// client secrets, tokens): its value is never printed or logged.
pub fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "token"]
        .iter()
        .any(|word| name.contains(word))
        || name == "sasl.oauthbearer.config"
}

/// An optional secret, for `Debug` forms: whether it is set, not what it
/// is.
fn redacted(secret: &Option<String>) -> &'static str {
    match secret {
        Some(_) => "Some(\"<redacted>\")",
        None => "None",
    }
}

/// Hides the values of secret settings in the lines of a TOML error
/// message, which quotes the lines around the error.
fn redact_lines(message: &str) -> String {
    message
        .lines()
        .map(|line| match line.split_once('=') {
            Some((name, _)) if is_secret(name) => format!("{name}= <redacted>"),
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

impl TryFrom<toml::Value> for KafkaValue {
    type Error = String;

    fn try_from(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::String(s) => Ok(KafkaValue(s)),
            toml::Value::Integer(i) => Ok(KafkaValue(i.to_string())),
            toml::Value::Float(f) => Ok(KafkaValue(f.to_string())),
            toml::Value::Boolean(b) => Ok(KafkaValue(b.to_string())),
            other => Err(format!(
                "a librdkafka property must be a string, number or boolean, not {}",
                other.type_str()
            )),
        }
    }
}

impl From<KafkaValue> for String {
    fn from(v: KafkaValue) -> String {
        v.0
    }
}

/// `[detect]`: the semantics knobs of DESIGN.md sections 4 and 6.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Time a change's cache keys have to be invalidated. Default `"30s"`.
    pub deadline: Dur,
    /// Clock skew tolerated between the database and the services.
    /// Default `"100ms"`.
    pub skew: Dur,
    /// How long the watermark waits for slower inputs. Default `"5s"`.
    pub allowed_lateness: Dur,
    /// An input partition idle for longer stops holding the watermark back
    /// (live mode). Default `"10s"`.
    pub idle_timeout: Dur,
    /// After a `missing_invalidation`, how long (event time) vigil waits for
    /// a late invalidation to report as `late_invalidation`. Default `"1h"`.
    pub late_window: Dur,
    /// Changes remembered per cache key (pending ones and recent history).
    /// When a key exceeds it, its oldest decided changes are forgotten first
    /// (counted in `key_history_evictions`). It also bounds the
    /// invalidations and fills a key keeps as history. Default `64`.
    pub max_changes_per_key: usize,
    /// How long (event time, back from a key's latest record) a key keeps
    /// its invalidations and judged fills, so that a change arriving later
    /// (replayed from the dead-letter queue once its table is mapped) is
    /// judged as it would have been live. `"0s"` turns it off.
    /// Default `"1h"`.
    pub history: Dur,
    /// Check transactions against their BEGIN and END records (Debezium's
    /// `provide.transaction.metadata`), or Maxwell's rows by their `xid`,
    /// `xoffset` and `commit`: lost change events (`incomplete_transaction`)
    /// and transactions whose END never comes (`unterminated_transaction`).
    /// Default `false`.
    pub transactions: bool,
    /// How long (event time) after a transaction's earliest record its END
    /// may come before it is an `unterminated_transaction`. Default `"5m"`.
    pub transaction_timeout: Dur,
    /// Open transactions tracked at most (and as many decided ones
    /// remembered): beyond it the one due first is dropped undecided, and
    /// counted (`vigil_transactions_dropped_total`). Default `100000`.
    pub max_open_transactions: usize,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            deadline: Dur::from_secs(30),
            skew: Dur::from_millis(100),
            allowed_lateness: Dur::from_secs(5),
            idle_timeout: Dur::from_secs(10),
            late_window: Dur::from_secs(3_600),
            max_changes_per_key: 64,
            history: Dur::from_secs(3_600),
            transactions: false,
            transaction_timeout: Dur::from_secs(300),
            max_open_transactions: 100_000,
        }
    }
}

/// `[[tables]]`: one table and the cache keys that cache its rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// PostgreSQL `schema.table`; MySQL, Maxwell and Canal `database.table`.
    pub table: String,
    /// Primary-key columns, used when a record carries no Kafka key.
    /// Default: none (the Kafka key, or the record's own primary-key list).
    #[serde(default)]
    pub pk: Vec<String>,
    /// Cache-key templates over row columns, such as `"user:{id}"`.
    pub keys: Vec<KeyTemplate>,
    /// Version source: `"column:NAME"`, `"lsn"`, `"binlog"` or `"ts_ms"`.
    /// Default `"ts_ms"`.
    #[serde(default = "default_version")]
    pub version: VersionSource,
    /// Versions step by exactly one (only with a version column).
    /// Default `false`.
    #[serde(default)]
    pub contiguous: bool,
    /// Overrides `detect.deadline` for this table. Default: none.
    #[serde(default)]
    pub deadline: Option<Dur>,
    /// How the table's change records are recognised. Default `"auto"`.
    #[serde(default)]
    pub format: TableFormat,
}

fn default_version() -> VersionSource {
    VersionSource::TsMs
}

/// How the change records of a table are recognised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableFormat {
    /// Each record by the marks of its format (a Debezium envelope, its
    /// CloudEvents form, Maxwell, Canal); a record with none is a dead
    /// letter (`unknown_format`).
    #[default]
    Auto,
    /// As `auto`, and a record without any format's marks is a row
    /// flattened by Debezium's `ExtractNewRecordState` (its `__` fields
    /// being metadata), read as a change of this table.
    Flattened,
}

/// The least `state.cache_size`: RocksDB needs a few memtables.
const MIN_CACHE_SIZE: ByteSize = ByteSize(8 << 20);

/// `[state]`: where and how long state is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// RocksDB directory. Default `"./vigil-state"`.
    pub path: PathBuf,
    /// Keys and entities untouched for longer (event time) are removed.
    /// Default `"7d"`.
    pub retention: Dur,
    /// How often state and input offsets are committed together.
    /// Default `"1s"`.
    pub checkpoint_interval: Dur,
    /// Memory for state: keys and entities kept in memory with their
    /// deadline timers and the index of keys awaiting an invalidation
    /// (three quarters, shared by the workers; the timers and that index,
    /// which every armed key has in memory or not, take the most they have
    /// taken since they were last empty, and leave the keys a quarter of it
    /// at least), RocksDB's block cache and its memtables (an
    /// eighth each). Beyond it, the least recently written keys and
    /// entities leave memory and are read back from RocksDB when needed;
    /// state that is kept once a checkpoint has saved it (a worker over its
    /// share asks for a checkpoint sooner than `checkpoint_interval`, and
    /// so does one whose changes since the last checkpoint pass a quarter
    /// of its share, so that no checkpoint writes more).
    /// Default `"1GiB"`.
    pub cache_size: ByteSize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            path: PathBuf::from("./vigil-state"),
            retention: Dur::from_secs(7 * 86_400),
            checkpoint_interval: Dur::from_secs(1),
            cache_size: ByteSize(1 << 30),
        }
    }
}

/// What to do with changes of tables that `[[tables]]` does not map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmappedTables {
    /// Send them to the dead-letter output (reason `unmapped_table`), so they
    /// can be replayed once the table is mapped.
    Dlq,
    /// Count them (`unmapped` in the summary) and go on.
    Count,
}

/// `[inputs]`: where records come from and how they are read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputsConfig {
    /// Kafka consumer group of `vigil run`. Default `"vigil"`.
    pub group_id: String,
    /// CDC topics (`vigil run`); an entry starting with `^` is a regular
    /// expression matching topic names. Default: none.
    pub cdc_topics: Vec<String>,
    /// Cache-event topics (`vigil run`), patterns as for `cdc_topics`.
    /// Default: none.
    pub cache_topics: Vec<String>,
    /// Topics of transaction BEGIN and END records (`vigil run`; Debezium's
    /// `<topic.prefix>.transaction`), patterns as for `cdc_topics`; read as
    /// CDC records (see `detect.transactions`). Default: none.
    pub transaction_topics: Vec<String>,
    /// CDC topics of rows flattened by Debezium's `ExtractNewRecordState`
    /// (names, or `^` patterns as for `cdc_topics`): a record of theirs
    /// without any format's marks is read as such a row, whatever its table
    /// (`format = "flattened"` on `[[tables]]` declares single tables).
    /// Matched against the topic of Kafka records and `kcat -J` lines.
    /// Default: none.
    pub flattened_topics: Vec<TopicSelector>,
    /// The CDC and cache topics are co-partitioned: an entity's changes and
    /// the cache events of its keys carry the same partition number (same
    /// partition counts, events keyed by the entity). Needed to run several
    /// instances in one group: state is then kept per partition and handed
    /// over through `outputs.changelog_topic` when partitions move.
    /// Default `false` (one instance sees every partition).
    pub co_partitioned: bool,
    /// The internal topic between the two stages of `vigil run --stage one`
    /// and `--stage two`: key-level items keyed by cache key, and each
    /// stage-one instance's watermark in every partition. Its partition
    /// count bounds the instances of stage two. Default `"vigil.repartition"`.
    pub repartition_topic: String,
    /// `"dlq"` or `"count"`. Default `"dlq"`.
    pub unmapped_tables: UnmappedTables,
    /// Larger records are dead letters (`record_too_large`). Default `"1MiB"`.
    pub max_record_bytes: ByteSize,
}

impl Default for InputsConfig {
    fn default() -> Self {
        InputsConfig {
            group_id: "vigil".into(),
            cdc_topics: Vec::new(),
            cache_topics: Vec::new(),
            transaction_topics: Vec::new(),
            flattened_topics: Vec::new(),
            co_partitioned: false,
            repartition_topic: "vigil.repartition".into(),
            unmapped_tables: UnmappedTables::Dlq,
            max_record_bytes: ByteSize(1 << 20),
        }
    }
}

/// `[pipeline]`: threads and batching.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Worker threads that own key and entity state; 0 means one per core.
    /// Default `0`.
    pub workers: usize,
    /// Records per batch between stages. Default `1024`.
    pub batch_size: usize,
    /// How long a consumed record may wait for its batch to fill before it
    /// is sent on anyway (`vigil run`; bounds the latency batching adds).
    /// Default `"5ms"`.
    pub linger: Dur,
    /// Batches queued between two stages before the producer waits
    /// (back-pressure). Default `16`.
    pub queue_batches: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            workers: 0,
            batch_size: 1024,
            linger: Dur::from_millis(5),
            queue_batches: 16,
        }
    }
}

impl PipelineConfig {
    /// The number of workers, resolving `0` to the number of cores.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }
}

/// `[outputs]`: how output events are written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputsConfig {
    /// CloudEvents `source` attribute of every event. Default `"/vigil"`.
    pub source: String,
    /// Topic of violation events (`vigil run`). Default `"vigil.violations"`.
    pub violations_topic: String,
    /// Dead-letter topic (`vigil run`). Default `"vigil.dlq"`.
    pub dlq_topic: String,
    /// Topic of storm events (`vigil run`). Default `"vigil.storms"`.
    pub storms_topic: String,
    /// Topic of incident events (`vigil run`). Default `"vigil.incidents"`.
    pub incidents_topic: String,
    /// Changelog of the state, one partition per input partition number
    /// (with `inputs.co_partitioned`; create it compacted, with as many
    /// partitions as the inputs; with `vigil run --stage one`, the entity
    /// state per CDC partition number). Default `"vigil.changelog"`.
    pub changelog_topic: String,
    /// Changelog of the key state of `vigil run --stage two`, one partition
    /// per partition of `inputs.repartition_topic` (create it compacted, with
    /// as many partitions). Default `"vigil.repartition.changelog"`.
    pub repartition_changelog_topic: String,
    /// How violations and storm events are written to Kafka. Default
    /// `"structured"`.
    pub cloudevents_mode: CloudEventsMode,
    /// The encoding of the events' data on Kafka. Default `"json"`.
    pub format: OutputFormat,
}

impl Default for OutputsConfig {
    fn default() -> Self {
        OutputsConfig {
            source: "/vigil".into(),
            violations_topic: "vigil.violations".into(),
            dlq_topic: "vigil.dlq".into(),
            storms_topic: "vigil.storms".into(),
            incidents_topic: "vigil.incidents".into(),
            changelog_topic: "vigil.changelog".into(),
            repartition_changelog_topic: "vigil.repartition.changelog".into(),
            cloudevents_mode: CloudEventsMode::Structured,
            format: OutputFormat::Json,
        }
    }
}

/// The encoding of the `data` of the events `vigil run` produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    Json,
    /// Avro in Confluent's framing, the schemas registered in the Schema
    /// Registry (see [`crate::io::kafka::avro`]). Needs binary content
    /// mode and a registry.
    Avro,
}

/// CloudEvents content mode of the events `vigil run` produces (the
/// CloudEvents Kafka protocol binding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloudEventsMode {
    /// The record value is the whole event, one JSON object; header
    /// `content-type: application/cloudevents+json`.
    Structured,
    /// The record value is the event's `data` alone; the attributes are
    /// `ce_*` headers and `datacontenttype` the `content-type` header.
    /// Kafka only: files have no headers.
    Binary,
}

/// Delivery guarantee of `vigil run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Outputs are acknowledged before the state and positions that caused
    /// them are committed; after a crash some are produced again, with the
    /// same ids.
    AtLeastOnce,
    /// Outputs and consumed offsets are committed in one Kafka transaction.
    ExactlyOnce,
}

/// `[processing]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessingConfig {
    /// `"at_least_once"` or `"exactly_once"`. Default `"at_least_once"`.
    pub guarantee: Guarantee,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        ProcessingConfig {
            guarantee: Guarantee::AtLeastOnce,
        }
    }
}

/// `[metrics]`: the HTTP server of `vigil run` (`/metrics`, `/healthz`,
/// `/readyz`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the HTTP server; an empty string turns it off. Default
    /// `"127.0.0.1:9464"` (loopback: set `"0.0.0.0:9464"` to be scraped
    /// from other hosts).
    pub listen: String,
    /// `/readyz` answers ready once the consumer is at most this many
    /// records behind the ends of its assigned partitions (summed).
    /// Default 1000.
    pub ready_lag: u64,
    /// When set, every path but `/healthz` and `/readyz` asks for
    /// `Authorization: Bearer <token>`. Default: none.
    pub bearer_token: Option<String>,
}

impl std::fmt::Debug for MetricsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsConfig")
            .field("listen", &self.listen)
            .field("ready_lag", &self.ready_lag)
            .field(
                "bearer_token",
                &format_args!("{}", redacted(&self.bearer_token)),
            )
            .finish()
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9464".into(),
            ready_lag: 1000,
            bearer_token: None,
        }
    }
}

/// How records name their schema in the registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// Confluent's: byte 0, a 4-byte schema id (`GET /schemas/ids/{id}`).
    #[default]
    Confluent,
    /// Apicurio's: byte 0, an 8-byte global id (`GET
    /// /ids/globalIds/{id}` under the API root `url` names).
    Apicurio,
}

/// `[schema_registry]`: the Schema Registry (Confluent's, or Apicurio's)
/// that CDC records in its framing name their schemas in.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistryConfig {
    /// Base URL, like `"http://registry:8081"`; with Apicurio's framing,
    /// the root of its API, like `"http://apicurio:8080/apis/registry/v3"`.
    /// Default: none (no registry: records in a registry's framing are dead
    /// letters, `unknown_format`).
    pub url: Option<String>,
    /// How records name their schema: `"confluent"` or `"apicurio"`.
    /// Default `"confluent"`.
    pub framing: Framing,
    /// User of HTTP basic authentication. Default: none.
    pub basic_auth_user: Option<String>,
    /// Password of HTTP basic authentication (with `basic_auth_user`).
    /// Default: none.
    pub basic_auth_password: Option<String>,
    /// Bearer token sent as `Authorization: Bearer ...`; not with basic
    /// authentication. Default: none.
    pub bearer_token: Option<String>,
    /// PEM file of the certificate authorities trusted for an `https` URL,
    /// instead of the system's. Default: none.
    pub ca_file: Option<PathBuf>,
    /// Time one request to the registry may take. Default `"10s"`.
    pub timeout: Dur,
    /// Parsed schemas kept in memory; past it the longest-held one is
    /// dropped (and fetched again when a record names it). Default `1000`.
    pub max_schemas: usize,
}

impl std::fmt::Debug for SchemaRegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistryConfig")
            .field("url", &self.url)
            .field("framing", &self.framing)
            .field("basic_auth_user", &self.basic_auth_user)
            .field(
                "basic_auth_password",
                &format_args!("{}", redacted(&self.basic_auth_password)),
            )
            .field(
                "bearer_token",
                &format_args!("{}", redacted(&self.bearer_token)),
            )
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("max_schemas", &self.max_schemas)
            .finish()
    }
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        SchemaRegistryConfig {
            url: None,
            framing: Framing::Confluent,
            basic_auth_user: None,
            basic_auth_password: None,
            bearer_token: None,
            ca_file: None,
            timeout: Dur::from_secs(10),
            max_schemas: 1000,
        }
    }
}

/// `[incidents]`: consistency incidents, per table (see
/// [`crate::detect::incident`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentsConfig {
    /// Detect incidents at all. Default `true`.
    pub enabled: bool,
    /// The share of a table's changes to invalidate in time, in (0, 1).
    /// Default `0.999`.
    pub slo: f64,
    /// The sliding window of event time the share is taken over. Default
    /// `"5m"`.
    pub window: Dur,
    /// Decided changes a window needs before its share can open an
    /// incident. Default `100`.
    pub min_changes: u64,
    /// Least event time between two `vigil.incident.updated` of one
    /// incident. Default `"1m"`.
    pub update_every: Dur,
    /// An incident resolves once the share has stayed at or above the SLO
    /// this long. Default `"2m"`.
    pub hold: Dur,
    /// Tables followed at once. Default `1000`.
    pub max_tables: usize,
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        IncidentsConfig {
            enabled: true,
            slo: 0.999,
            window: Dur::from_millis(300_000),
            min_changes: 100,
            update_every: Dur::from_millis(60_000),
            hold: Dur::from_millis(120_000),
            max_tables: 1000,
        }
    }
}

/// `[storms]`: invalidation-storm detection (DESIGN.md section 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StormsConfig {
    /// Detect storms at all. Default `true`.
    pub enabled: bool,
    /// Event time during which baselines learn and relative thresholds wait
    /// (static thresholds apply at once). Default `"60s"`.
    pub warmup: Dur,
    /// Half-life of the baselines: how slowly they adapt. Default `"30m"`.
    pub baseline_half_life: Dur,
    /// Least event time between two `vigil.storm.updated` of one storm.
    /// Default `"5s"`.
    pub update_every: Dur,
    /// An invalidation event with at least this many keys is a bulk event.
    /// Default `20`.
    pub bulk_min_keys: usize,
    /// Regular expressions whose first capture group is a key's prefix,
    /// tried in order; a key that none matches has the part before its first
    /// `:` as prefix. Default: none.
    pub prefix_patterns: Vec<PrefixPattern>,
    /// Prefixes, services and hot keys followed at once, per scope type.
    /// Default `256`.
    pub max_tracked: usize,
    /// Thresholds of each scope type; a section may give only some fields,
    /// the others keep that scope type's defaults.
    #[serde(deserialize_with = "thresholds_over::<_, 0>")]
    pub global: ScopeThresholds,
    #[serde(deserialize_with = "thresholds_over::<_, 1>")]
    pub prefix: ScopeThresholds,
    #[serde(deserialize_with = "thresholds_over::<_, 2>")]
    pub service: ScopeThresholds,
    #[serde(deserialize_with = "thresholds_over::<_, 3>")]
    pub hot_key: ScopeThresholds,
    #[serde(deserialize_with = "thresholds_over::<_, 4>")]
    pub bulk: ScopeThresholds,
    #[serde(deserialize_with = "thresholds_over::<_, 5>")]
    pub wildcard: ScopeThresholds,
}

/// The thresholds of one scope type. A storm starts when the scope's average
/// rate over `for` exceeds `rate` or `factor` times its baseline (but at
/// least `min_rate`), and ends once its rate has stayed below `end_factor`
/// times that starting threshold for `hold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeThresholds {
    /// Static threshold, invalidations per second; 0 turns it off.
    pub rate: f64,
    /// Relative threshold, a multiple of the baseline; 0 turns it off.
    pub factor: f64,
    /// Floor of the relative threshold, invalidations per second.
    pub min_rate: f64,
    /// How long the rate must stay above a threshold.
    #[serde(rename = "for")]
    pub sustain: Dur,
    /// Fraction of the starting threshold below which a storm calms down.
    pub end_factor: f64,
    /// How long a storm must stay calm to end.
    pub hold: Dur,
}

/// Defaults of `[storms.global|prefix|service|hot_key|bulk|wildcard]`, in
/// that order.
const STORM_THRESHOLDS: [ScopeThresholds; 6] = {
    const RELATIVE: ScopeThresholds = ScopeThresholds {
        rate: 0.0,
        factor: 5.0,
        min_rate: 100.0,
        sustain: Dur::from_secs(3),
        end_factor: 0.8,
        hold: Dur::from_secs(10),
    };
    [
        RELATIVE,
        RELATIVE,
        RELATIVE,
        ScopeThresholds {
            rate: 20.0,
            factor: 0.0,
            min_rate: 0.0,
            ..RELATIVE
        },
        ScopeThresholds {
            rate: 1_000.0,
            min_rate: 1_000.0,
            sustain: Dur::from_secs(1),
            ..RELATIVE
        },
        ScopeThresholds {
            min_rate: 10.0,
            ..RELATIVE
        },
    ]
};

/// Some fields of a [`ScopeThresholds`] section.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartialThresholds {
    rate: Option<f64>,
    factor: Option<f64>,
    min_rate: Option<f64>,
    #[serde(rename = "for")]
    sustain: Option<Dur>,
    end_factor: Option<f64>,
    hold: Option<Dur>,
}

/// Reads a thresholds section over the defaults of scope type `T`.
fn thresholds_over<'de, D: serde::Deserializer<'de>, const T: usize>(
    d: D,
) -> Result<ScopeThresholds, D::Error> {
    let p = PartialThresholds::deserialize(d)?;
    let base = STORM_THRESHOLDS[T];
    Ok(ScopeThresholds {
        rate: p.rate.unwrap_or(base.rate),
        factor: p.factor.unwrap_or(base.factor),
        min_rate: p.min_rate.unwrap_or(base.min_rate),
        sustain: p.sustain.unwrap_or(base.sustain),
        end_factor: p.end_factor.unwrap_or(base.end_factor),
        hold: p.hold.unwrap_or(base.hold),
    })
}

impl Default for StormsConfig {
    fn default() -> Self {
        let [global, prefix, service, hot_key, bulk, wildcard] = STORM_THRESHOLDS;
        StormsConfig {
            enabled: true,
            warmup: Dur::from_secs(60),
            baseline_half_life: Dur::from_secs(30 * 60),
            update_every: Dur::from_secs(5),
            bulk_min_keys: 20,
            prefix_patterns: Vec::new(),
            max_tracked: 256,
            global,
            prefix,
            service,
            hot_key,
            bulk,
            wildcard,
        }
    }
}

impl StormsConfig {
    /// The sections of every scope type, with their names.
    pub fn sections(&self) -> [(&'static str, &ScopeThresholds); 6] {
        [
            ("global", &self.global),
            ("prefix", &self.prefix),
            ("service", &self.service),
            ("hot_key", &self.hot_key),
            ("bulk", &self.bulk),
            ("wildcard", &self.wildcard),
        ]
    }
}

/// A topic name, or (starting with `^`) a regular expression over topic
/// names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TopicSelector {
    Name(String),
    Pattern(regex::Regex),
}

impl TopicSelector {
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicSelector::Name(name) => name == topic,
            TopicSelector::Pattern(re) => re.is_match(topic),
        }
    }
}

impl TryFrom<String> for TopicSelector {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text.starts_with('^') {
            regex::Regex::new(&text)
                .map(TopicSelector::Pattern)
                .map_err(|e| format!("invalid pattern {text:?}: {e}"))
        } else {
            Ok(TopicSelector::Name(text))
        }
    }
}

impl From<TopicSelector> for String {
    fn from(t: TopicSelector) -> String {
        match t {
            TopicSelector::Name(name) => name,
            TopicSelector::Pattern(re) => re.as_str().to_string(),
        }
    }
}

impl PartialEq for TopicSelector {
    fn eq(&self, other: &Self) -> bool {
        String::from(self.clone()) == String::from(other.clone())
    }
}

/// A key-prefix pattern: a regular expression with a capture group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PrefixPattern(pub regex::Regex);

impl TryFrom<String> for PrefixPattern {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let re = regex::Regex::new(&text).map_err(|e| format!("invalid pattern {text:?}: {e}"))?;
        if re.captures_len() < 2 {
            return Err(format!(
                "pattern {text:?} has no capture group; the first group is the prefix, like \"^([a-z]+)/\""
            ));
        }
        Ok(PrefixPattern(re))
    }
}

impl From<PrefixPattern> for String {
    fn from(p: PrefixPattern) -> String {
        p.0.as_str().to_string()
    }
}

impl PartialEq for PrefixPattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Config {
    /// Loads a config file (or the embedded default when `path` is `None`),
    /// applies `VIGIL_*` environment overrides and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] with the environment given explicitly (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (origin, text) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                (p.display().to_string(), text)
            }
            None => ("(embedded default)".to_string(), DEFAULT_TOML.to_string()),
        };
        Self::parse_with_env(&origin, &text, env)
    }

    /// Parses TOML text (`origin` names it in errors), applies environment
    /// overrides and validates.
    pub fn parse_with_env(
        origin: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let parse_err = |e: toml::de::Error| ConfigError::Parse {
            origin: origin.to_string(),
            message: redact_lines(&e.to_string()),
        };
        // Parse the file on its own first: errors then carry line and column.
        let from_file: Config = toml::from_str(text).map_err(parse_err)?;
        let overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .filter(|(k, _)| {
                // Settings have a section: other VIGIL_* variables, like
                // the service links Kubernetes gives every pod of a
                // namespace with a Service named vigil (VIGIL_PORT, ...) or
                // VIGIL_CONFIG, are not settings.
                let setting = k.contains("__");
                if !setting {
                    tracing::debug!(var = %k, "not a setting (no `__`): ignored");
                }
                setting
            })
            .collect();
        let config = if overrides.is_empty() {
            from_file
        } else {
            let mut tree: toml::Table = toml::from_str(text).map_err(parse_err)?;
            for (var, value) in &overrides {
                apply_override(&mut tree, var, value)?;
            }
            let vars: Vec<&str> = overrides.iter().map(|(k, _)| k.as_str()).collect();
            Config::deserialize(toml::Value::Table(tree)).map_err(|e| ConfigError::Env {
                var: vars.join(", "),
                message: e.to_string(),
            })?
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot: relations between settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.detect;
        if d.deadline.0.is_zero() {
            return Err(invalid("detect.deadline", "must be greater than zero"));
        }
        if d.skew >= d.deadline {
            return Err(invalid(
                "detect.skew",
                format!(
                    "({}) must be smaller than detect.deadline ({})",
                    d.skew, d.deadline
                ),
            ));
        }
        if d.max_changes_per_key < 2 {
            return Err(invalid("detect.max_changes_per_key", "must be at least 2"));
        }
        if d.transaction_timeout.0.is_zero() {
            return Err(invalid(
                "detect.transaction_timeout",
                "must be greater than zero",
            ));
        }
        if d.max_open_transactions == 0 {
            return Err(invalid(
                "detect.max_open_transactions",
                "must be at least 1",
            ));
        }
        if d.transactions && self.inputs.co_partitioned {
            return Err(invalid(
                "detect.transactions",
                "transaction checks need every partition of a transaction on one instance: they cannot run with inputs.co_partitioned",
            ));
        }
        let mut names = BTreeSet::new();
        for (i, t) in self.tables.iter().enumerate() {
            let at = |field: &str| format!("tables[{i}].{field}");
            if t.table.trim().is_empty() {
                return Err(invalid(at("table"), "must not be empty"));
            }
            if !names.insert(t.table.as_str()) {
                return Err(invalid(
                    at("table"),
                    format!("{:?} is mapped twice", t.table),
                ));
            }
            if t.keys.is_empty() {
                return Err(invalid(
                    at("keys"),
                    format!("table {:?} needs at least one key template", t.table),
                ));
            }
            if t.pk.iter().any(|c| c.trim().is_empty()) {
                return Err(invalid(at("pk"), "column names must not be empty"));
            }
            if t.contiguous && !t.version.is_row_version() {
                return Err(invalid(
                    at("contiguous"),
                    format!(
                        "table {:?}: contiguous versions need a version column (version = \"column:NAME\"), not {:?}",
                        t.table,
                        String::from(t.version.clone())
                    ),
                ));
            }
            if let Some(dl) = t.deadline
                && dl <= d.skew
            {
                return Err(invalid(
                    at("deadline"),
                    format!("({dl}) must be greater than detect.skew ({})", d.skew),
                ));
            }
        }
        if self.state.checkpoint_interval.0.is_zero() {
            return Err(invalid(
                "state.checkpoint_interval",
                "must be greater than zero",
            ));
        }
        if self.state.cache_size < MIN_CACHE_SIZE {
            return Err(invalid(
                "state.cache_size",
                format!(
                    "({}) must be at least {MIN_CACHE_SIZE}",
                    self.state.cache_size
                ),
            ));
        }
        if self.state.retention < d.late_window {
            return Err(invalid(
                "state.retention",
                format!(
                    "({}) must be at least detect.late_window ({})",
                    self.state.retention, d.late_window
                ),
            ));
        }
        if self.inputs.max_record_bytes.0 < 1024 {
            return Err(invalid("inputs.max_record_bytes", "must be at least 1KiB"));
        }
        if self.pipeline.batch_size == 0 {
            return Err(invalid("pipeline.batch_size", "must be at least 1"));
        }
        if self.pipeline.queue_batches == 0 {
            return Err(invalid("pipeline.queue_batches", "must be at least 1"));
        }
        self.validate_storms()?;
        self.validate_incidents()?;
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "metrics.listen",
                format!(
                    "{:?} is not an address like \"127.0.0.1:9464\"",
                    self.metrics.listen
                ),
            ));
        }
        if self
            .metrics
            .bearer_token
            .as_deref()
            .is_some_and(str::is_empty)
        {
            return Err(invalid(
                "metrics.bearer_token",
                "is empty: remove it to serve without a token",
            ));
        }
        self.validate_schema_registry()?;
        self.validate_output_format()
    }

    /// Avro outputs need what carries them: a registry for the schemas and
    /// binary content mode (the attributes in headers, the value the data).
    fn validate_output_format(&self) -> Result<(), ConfigError> {
        if self.outputs.format != OutputFormat::Avro {
            return Ok(());
        }
        if self.schema_registry.url.is_none() {
            return Err(invalid(
                "outputs.format",
                "\"avro\" registers the events' schemas in the Schema Registry: set [schema_registry] url",
            ));
        }
        if self.outputs.cloudevents_mode != CloudEventsMode::Binary {
            return Err(invalid(
                "outputs.format",
                "\"avro\" writes the events' data alone as the record value, with the CloudEvents attributes in headers: set outputs.cloudevents_mode = \"binary\"",
            ));
        }
        Ok(())
    }

    fn validate_schema_registry(&self) -> Result<(), ConfigError> {
        let r = &self.schema_registry;
        let at = |field: &str| format!("schema_registry.{field}");
        if let Some(url) = &r.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                at("url"),
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        if r.basic_auth_user.is_some() != r.basic_auth_password.is_some() {
            return Err(invalid(
                at("basic_auth_user"),
                "basic_auth_user and basic_auth_password go together: set both or neither",
            ));
        }
        if r.basic_auth_user.is_some() && r.bearer_token.is_some() {
            return Err(invalid(
                at("bearer_token"),
                "set either a bearer token or basic authentication, not both",
            ));
        }
        if let Some(ca) = &r.ca_file
            && !ca.is_file()
        {
            return Err(invalid(
                at("ca_file"),
                format!("{} is not a readable file", ca.display()),
            ));
        }
        if r.timeout.0.is_zero() {
            return Err(invalid(at("timeout"), "must be greater than zero"));
        }
        if r.max_schemas == 0 {
            return Err(invalid(at("max_schemas"), "must be at least 1"));
        }
        Ok(())
    }

    fn validate_incidents(&self) -> Result<(), ConfigError> {
        let i = &self.incidents;
        if !(i.slo > 0.0 && i.slo < 1.0) {
            return Err(invalid(
                "incidents.slo",
                format!("({}) must be in (0, 1), like 0.999", i.slo),
            ));
        }
        for (field, d) in [("window", i.window), ("hold", i.hold)] {
            if d.0 < std::time::Duration::from_secs(1) {
                return Err(invalid(
                    format!("incidents.{field}"),
                    "must be at least 1s (verdicts are counted per second)",
                ));
            }
        }
        if i.min_changes == 0 {
            return Err(invalid("incidents.min_changes", "must be at least 1"));
        }
        if i.max_tables == 0 {
            return Err(invalid("incidents.max_tables", "must be at least 1"));
        }
        Ok(())
    }

    fn validate_storms(&self) -> Result<(), ConfigError> {
        let s = &self.storms;
        if s.baseline_half_life.0 < std::time::Duration::from_secs(1) {
            return Err(invalid("storms.baseline_half_life", "must be at least 1s"));
        }
        if s.bulk_min_keys < 2 {
            return Err(invalid("storms.bulk_min_keys", "must be at least 2"));
        }
        if s.max_tracked == 0 {
            return Err(invalid("storms.max_tracked", "must be at least 1"));
        }
        for (name, t) in s.sections() {
            let at = |field: &str| format!("storms.{name}.{field}");
            for (field, v) in [
                ("rate", t.rate),
                ("factor", t.factor),
                ("min_rate", t.min_rate),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(invalid(at(field), format!("({v}) must be a number >= 0")));
                }
            }
            if t.rate == 0.0 && t.factor == 0.0 {
                return Err(invalid(
                    at("rate"),
                    "rate and factor are both 0: set one (or storms.enabled = false)",
                ));
            }
            if t.sustain.0 < std::time::Duration::from_secs(1) {
                return Err(invalid(
                    at("for"),
                    "must be at least 1s (rates are per second)",
                ));
            }
            if t.hold.0 < std::time::Duration::from_secs(1) {
                return Err(invalid(at("hold"), "must be at least 1s"));
            }
            if !(t.end_factor > 0.0 && t.end_factor <= 1.0) {
                return Err(invalid(
                    at("end_factor"),
                    format!("({}) must be in (0, 1]", t.end_factor),
                ));
            }
        }
        Ok(())
    }

    /// What `vigil run` needs beyond [`Config::validate`]: a broker and
    /// input topics.
    pub fn validate_for_run(&self) -> Result<(), ConfigError> {
        if !self.kafka.contains_key("bootstrap.servers") {
            return Err(invalid(
                "kafka.\"bootstrap.servers\"",
                "is required by vigil run (the brokers to connect to)",
            ));
        }
        if self.inputs.cdc_topics.is_empty() && self.inputs.cache_topics.is_empty() {
            return Err(invalid(
                "inputs.cdc_topics",
                "vigil run needs at least one CDC or cache topic (inputs.cdc_topics, inputs.cache_topics)",
            ));
        }
        for (field, topic) in [
            ("outputs.violations_topic", &self.outputs.violations_topic),
            ("outputs.dlq_topic", &self.outputs.dlq_topic),
            ("outputs.storms_topic", &self.outputs.storms_topic),
            ("outputs.incidents_topic", &self.outputs.incidents_topic),
            ("outputs.changelog_topic", &self.outputs.changelog_topic),
            (
                "outputs.repartition_changelog_topic",
                &self.outputs.repartition_changelog_topic,
            ),
            ("inputs.repartition_topic", &self.inputs.repartition_topic),
        ] {
            if topic.is_empty() {
                return Err(invalid(field, "must not be empty"));
            }
        }
        if self.inputs.group_id.is_empty() {
            return Err(invalid("inputs.group_id", "must not be empty"));
        }
        if let Some(id) = self.kafka.get("group.instance.id") {
            validate_group_instance_id(&id.0)?;
        }
        if let Some(strategy) = self.kafka.get("partition.assignment.strategy")
            && self.inputs.co_partitioned
            && strategy.0.trim() != "range"
        {
            return Err(invalid(
                "kafka.\"partition.assignment.strategy\"",
                format!(
                    "{:?} with inputs.co_partitioned = true: state is handed over by partition number, so each instance must hold the same partition numbers of every input topic, which only \"range\" (the default) assigns; \"cooperative-sticky\" and \"roundrobin\" split them",
                    strategy.0
                ),
            ));
        }
        Ok(())
    }

    /// What `vigil run --stage one` (`stage_one`) or `--stage two` needs
    /// beyond [`Config::validate_for_run`].
    pub fn validate_for_stages(&self, stage_one: bool) -> Result<(), ConfigError> {
        if self.inputs.co_partitioned {
            return Err(invalid(
                "inputs.co_partitioned",
                "is true: co-partitioned inputs run in one stage (vigil run --stage both, the default); the two stages are for inputs keyed otherwise",
            ));
        }
        if self.detect.transactions {
            return Err(invalid(
                "detect.transactions",
                "transaction checks need a transaction's changes and its keys' verdicts in one process: they cannot run with two stages",
            ));
        }
        if let Some(strategy) = self.kafka.get("partition.assignment.strategy")
            && stage_one
            && strategy.0.trim() != "range"
        {
            return Err(invalid(
                "kafka.\"partition.assignment.strategy\"",
                format!(
                    "{:?} in stage one: its entity state is handed over by CDC partition number, so each instance must hold the same partition numbers of every CDC topic, which only \"range\" (the default) assigns",
                    strategy.0
                ),
            ));
        }
        Ok(())
    }

    /// What the modes that write events to files (`vigil check`, `vigil
    /// replay --to files`) need beyond [`Config::validate`]: structured
    /// events, since a line of a file has no headers for the attributes.
    pub fn validate_for_files(&self, mode: &str) -> Result<(), ConfigError> {
        if self.outputs.format == OutputFormat::Avro {
            return Err(invalid(
                "outputs.format",
                format!(
                    "\"avro\" writes events to Kafka through the Schema Registry, but {mode} writes files of JSON lines: use \"json\" (the default; VIGIL_OUTPUTS__FORMAT=json overrides the file)"
                ),
            ));
        }
        if self.outputs.cloudevents_mode == CloudEventsMode::Binary {
            return Err(invalid(
                "outputs.cloudevents_mode",
                format!(
                    "\"binary\" puts the attributes of events in Kafka headers, but {mode} writes files, which have none: use \"structured\" (the default; VIGIL_OUTPUTS__CLOUDEVENTS_MODE=structured overrides the file)"
                ),
            ));
        }
        Ok(())
    }

    /// The deadline of a table (its override, else `detect.deadline`).
    pub fn deadline_of(&self, table: &TableConfig) -> Dur {
        table.deadline.unwrap_or(self.detect.deadline)
    }
}

/// A static member's id (`kafka."group.instance.id"`) as Kafka accepts
/// it: 1 to 249 characters of `[a-zA-Z0-9._-]`. An empty one would make
/// the member dynamic without a word, and the broker refuses the others
/// only once the group is joined.
fn validate_group_instance_id(id: &str) -> Result<(), ConfigError> {
    const SETTING: &str = "kafka.\"group.instance.id\"";
    if id.is_empty() || id.len() > 249 {
        return Err(invalid(
            SETTING,
            format!(
                "must be 1 to 249 characters long, not {} (leave it out for a dynamic member)",
                id.len()
            ),
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(
            SETTING,
            format!("{id:?} holds {c:?}: only letters, digits, '.', '_' and '-' are allowed"),
        ));
    }
    Ok(())
}

/// Applies `VIGIL_SECTION__FIELD=value` to a parsed TOML tree.
fn apply_override(tree: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let env_err = |message: String| ConfigError::Env {
        var: var.to_string(),
        message,
    };
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(|p| p.to_ascii_lowercase())
        .collect();
    if path.len() < 2 || path.iter().any(String::is_empty) {
        return Err(env_err(format!(
            "expected {ENV_PREFIX}<SECTION>__<FIELD>, like VIGIL_DETECT__DEADLINE"
        )));
    }
    if path[0] == "tables" {
        return Err(env_err(
            "[[tables]] cannot be set from the environment".into(),
        ));
    }
    if path[0] == "kafka" {
        // librdkafka names use dots: VIGIL_KAFKA__BOOTSTRAP_SERVERS sets
        // "bootstrap.servers".
        let name = path[1..].join("__").replace('_', ".");
        tree.entry("kafka")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| env_err("`kafka` is not a section".into()))?
            .insert(name, toml::Value::String(value.to_string()));
        return Ok(());
    }
    let (last, sections) = path.split_last().expect("path has at least two parts");
    // A secret is text as it is (a numeric token stays a string, and no
    // type error quotes it).
    let parsed = if is_secret(last) {
        toml::Value::String(value.to_string())
    } else {
        toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()))
    };
    let mut node = tree;
    for section in sections {
        let entry = node
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| env_err(format!("`{section}` is not a section")))?;
    }
    node.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_with_env("test", text, Vec::new())
    }

    /// Secrets of every kind, each a distinct word to look for.
    const SECRETS: [&str; 5] = [
        "kafka-sasl-hunter2",
        "kafka-key-hunter2",
        "registry-basic-hunter2",
        "metrics-bearer-hunter2",
        "oauth-client-hunter2",
    ];

    #[test]
    fn secrets_never_appear_in_the_printed_configuration_or_errors() {
        let text = format!(
            "[kafka]\n\"sasl.password\" = \"{}\"\n\"ssl.key.password\" = \"{}\"\n\
             \"sasl.oauthbearer.client.secret\" = \"{}\"\n\
             [schema_registry]\nurl = \"http://registry:8081\"\nbasic_auth_user = \"u\"\n\
             basic_auth_password = \"{}\"\n[metrics]\nbearer_token = \"{}\"\n",
            SECRETS[0], SECRETS[1], SECRETS[4], SECRETS[2], SECRETS[3]
        );
        let config = parse(&text).unwrap();
        assert_eq!(
            config.kafka["sasl.password"].0, SECRETS[0],
            "the value itself is kept for librdkafka"
        );
        let printed = format!("{config:?} {config:#?}");
        for secret in SECRETS {
            assert!(!printed.contains(secret), "{secret} printed: {printed}");
        }
        assert!(printed.contains("<redacted>"), "{printed}");

        // A syntax error on a secret's line quotes the line, without it.
        for (line, secret) in [
            (
                format!("[kafka]\n\"sasl.password\" = {} oops\n", SECRETS[0]),
                SECRETS[0],
            ),
            (
                format!("[metrics]\nbearer_token = {}\n", SECRETS[3]),
                SECRETS[3],
            ),
            (
                format!(
                    "[schema_registry]\nbasic_auth_password = \"{}\n",
                    SECRETS[2]
                ),
                SECRETS[2],
            ),
        ] {
            let err = parse(&line).unwrap_err().to_string();
            assert!(!err.contains(secret), "{secret} in the error: {err}");
            assert!(err.contains("<redacted>"), "{err}");
        }

        // From the environment, a token that looks like a number is text,
        // and an invalid one is not quoted back.
        let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        let config =
            Config::parse_with_env("t", "", env("VIGIL_METRICS__BEARER_TOKEN", "12345678"))
                .unwrap();
        assert_eq!(config.metrics.bearer_token.as_deref(), Some("12345678"));
        let err = Config::parse_with_env(
            "t",
            "",
            env("VIGIL_SCHEMA_REGISTRY__BASIC_AUTH_PASSWORD", SECRETS[2]),
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains(SECRETS[2]), "{err}");
        assert!(err.contains("basic_auth_password"), "{err}");
    }

    #[test]
    fn default_toml_is_exactly_the_defaults() {
        let parsed = parse(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn example_toml_parses() {
        let text = include_str!("../../config/example.toml");
        let config = parse(text).unwrap();
        assert!(!config.tables.is_empty());
    }

    #[test]
    fn the_container_configuration_is_valid_for_run() {
        let config = parse(include_str!("../../docker/vigil.toml")).unwrap();
        config.validate().unwrap();
        config.validate_for_run().unwrap();
    }

    #[test]
    fn binary_cloudevents_are_for_kafka_only() {
        let binary = parse("[outputs]\ncloudevents_mode = \"binary\"\n").unwrap();
        assert_eq!(binary.outputs.cloudevents_mode, CloudEventsMode::Binary);
        let err = binary
            .validate_for_files("vigil check")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("outputs.cloudevents_mode") && err.contains("vigil check"),
            "{err}"
        );
        Config::default().validate_for_files("vigil check").unwrap();
        let err = parse("[outputs]\ncloudevents_mode = \"batched\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("batched"), "{err}");
    }

    #[test]
    fn avro_outputs_need_a_registry_binary_mode_and_kafka() {
        let err = |text: &str| parse(text).unwrap_err().to_string();
        let avro = "[outputs]\nformat = \"avro\"\n";
        assert!(err(avro).contains("[schema_registry] url"), "{}", err(avro));
        let with_registry = format!("{avro}\n[schema_registry]\nurl = \"http://registry:8081\"\n");
        assert!(
            err(&with_registry).contains("cloudevents_mode = \"binary\""),
            "{}",
            err(&with_registry)
        );
        let complete = with_registry.replace(
            "format = \"avro\"",
            "format = \"avro\"\ncloudevents_mode = \"binary\"",
        );
        let config = parse(&complete).unwrap();
        assert_eq!(config.outputs.format, OutputFormat::Avro);
        let files = config
            .validate_for_files("vigil check")
            .unwrap_err()
            .to_string();
        assert!(
            files.contains("outputs.format") && files.contains("vigil check"),
            "{files}"
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = parse("[detect]\ndedline = \"3s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("dedline"), "{err}");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let err = parse("[detect]\ndeadline = \"3 parsecs\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("deadline") && err.contains("3 parsecs"),
            "{err}"
        );
        let err = parse("[[tables]]\ntable = \"a.b\"\nkeys = [\"k:{id\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unclosed"), "{err}");
        let err = parse("[[tables]]\ntable = \"a.b\"\nkeys = [\"k:{id}\"]\ncontiguous = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("tables[0].contiguous"), "{err}");
        let err = parse("[detect]\nskew = \"40s\"\n").unwrap_err().to_string();
        assert!(err.contains("detect.skew"), "{err}");
        let twice = "[[tables]]\ntable = \"a.b\"\nkeys = [\"k:{id}\"]\n".repeat(2);
        assert!(
            parse(&twice)
                .unwrap_err()
                .to_string()
                .contains("mapped twice")
        );
    }

    #[test]
    fn environment_overrides_apply_and_are_named_when_wrong() {
        let env = vec![
            ("VIGIL_DETECT__DEADLINE".to_string(), "12s".to_string()),
            ("VIGIL_PIPELINE__WORKERS".to_string(), "3".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let c = Config::parse_with_env("t", "", env).unwrap();
        assert_eq!(c.detect.deadline, Dur::from_secs(12));
        assert_eq!(c.pipeline.workers, 3);

        let bad = vec![("VIGIL_DETECT__DEADLINE".to_string(), "soon".to_string())];
        let err = Config::parse_with_env("t", "", bad)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("VIGIL_DETECT__DEADLINE") && err.contains("soon"),
            "{err}"
        );

        let tables = vec![("VIGIL_TABLES__X".to_string(), "1".to_string())];
        assert!(Config::parse_with_env("t", "", tables).is_err());
        let service_links = [
            ("VIGIL_SERVICE_HOST", "10.0.0.7"),
            ("VIGIL_SERVICE_PORT", "9464"),
            ("VIGIL_PORT", "tcp://10.0.0.7:9464"),
            ("VIGIL_PORT_9464_TCP_ADDR", "10.0.0.7"),
            ("VIGIL_CONFIG", "/etc/vigil/vigil.toml"),
        ];
        let env = service_links
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([("VIGIL_PIPELINE__WORKERS".to_string(), "3".to_string())]);
        let c = Config::parse_with_env("t", "", env).unwrap();
        assert_eq!(c.pipeline.workers, 3, "variables without `__` are ignored");

        let kafka = vec![(
            "VIGIL_KAFKA__BOOTSTRAP_SERVERS".to_string(),
            "b:9092".to_string(),
        )];
        let c = Config::parse_with_env("t", "[kafka]\n\"linger.ms\" = 5\n", kafka).unwrap();
        assert_eq!(c.kafka["bootstrap.servers"].0, "b:9092");
        assert_eq!(c.kafka["linger.ms"].0, "5", "numbers are passed as text");
    }

    #[test]
    fn schema_registry_settings_are_checked() {
        let c = parse("[schema_registry]\nurl = \"http://registry:8081\"\nbasic_auth_user = \"u\"\nbasic_auth_password = \"p\"\ntimeout = \"2s\"\n").unwrap();
        assert_eq!(
            c.schema_registry.url.as_deref(),
            Some("http://registry:8081")
        );
        assert_eq!(c.schema_registry.timeout, Dur::from_secs(2));
        assert_eq!(c.schema_registry.framing, Framing::Confluent);
        let c = parse("[schema_registry]\nframing = \"apicurio\"\n").unwrap();
        assert_eq!(c.schema_registry.framing, Framing::Apicurio);
        assert!(parse("[schema_registry]\nframing = \"other\"\n").is_err());
        for (text, setting) in [
            ("url = \"registry:8081\"", "schema_registry.url"),
            ("basic_auth_user = \"u\"", "schema_registry.basic_auth_user"),
            (
                "basic_auth_password = \"p\"",
                "schema_registry.basic_auth_user",
            ),
            (
                "basic_auth_user = \"u\"\nbasic_auth_password = \"p\"\nbearer_token = \"t\"",
                "schema_registry.bearer_token",
            ),
            (
                "ca_file = \"/nonexistent/ca.pem\"",
                "schema_registry.ca_file",
            ),
            ("timeout = \"0s\"", "schema_registry.timeout"),
            ("max_schemas = 0", "schema_registry.max_schemas"),
        ] {
            let err = parse(&format!("[schema_registry]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(setting), "{text}: {err}");
        }
        let env = vec![(
            "VIGIL_SCHEMA_REGISTRY__URL".to_string(),
            "https://r:8081".to_string(),
        )];
        let c = Config::parse_with_env("t", "", env).unwrap();
        assert_eq!(c.schema_registry.url.as_deref(), Some("https://r:8081"));
    }

    #[test]
    fn run_needs_a_broker_and_topics() {
        let err = parse("")
            .unwrap()
            .validate_for_run()
            .unwrap_err()
            .to_string();
        assert!(err.contains("bootstrap.servers"), "{err}");
        let c = parse("[kafka]\n\"bootstrap.servers\" = \"b:9092\"\n").unwrap();
        assert!(
            c.validate_for_run()
                .unwrap_err()
                .to_string()
                .contains("inputs.cdc_topics")
        );
        let c = parse(
            "[kafka]\n\"bootstrap.servers\" = \"b:9092\"\n[inputs]\ncache_topics = [\"c\"]\n",
        )
        .unwrap();
        c.validate_for_run().unwrap();
        assert!(
            parse("[metrics]\nlisten = \"nowhere\"\n")
                .unwrap_err()
                .to_string()
                .contains("metrics.listen")
        );
    }

    #[test]
    fn a_static_member_id_is_checked_before_joining() {
        let with = |id: &str| {
            parse(&format!(
                "[kafka]\n\"bootstrap.servers\" = \"b:9092\"\n\"group.instance.id\" = \"{id}\"\n\
                 [inputs]\ncache_topics = [\"c\"]\n"
            ))
            .unwrap()
            .validate_for_run()
        };
        with("vigil-0.eu_west").unwrap();
        for (id, says) in [
            ("", "1 to 249"),
            ("vigil 0", "' '"),
            ("vigil/0", "'/'"),
            (&"v".repeat(250), "not 250"),
        ] {
            let err = with(id).unwrap_err().to_string();
            assert!(
                err.contains("group.instance.id") && err.contains(says),
                "{id:?}: {err}"
            );
        }
        let env = vec![(
            "VIGIL_KAFKA__GROUP_INSTANCE_ID".to_string(),
            "pod-7".to_string(),
        )];
        let c = Config::parse_with_env("t", "", env).unwrap();
        assert_eq!(c.kafka["group.instance.id"].0, "pod-7");
    }

    #[test]
    fn two_stages_refuse_what_needs_one_process() {
        // Lines of [kafka], lines of [inputs], then further sections.
        let with = |kafka: &str, inputs: &str, tail: &str, stage_one: bool| {
            let c = parse(&format!(
                "[kafka]\n\"bootstrap.servers\" = \"b:9092\"\n{kafka}\n\
                 [inputs]\ncache_topics = [\"c\"]\n{inputs}\n{tail}\n"
            ))
            .unwrap();
            c.validate_for_run().unwrap();
            c.validate_for_stages(stage_one)
        };
        let roundrobin = "\"partition.assignment.strategy\" = \"roundrobin\"";
        with("", "", "", true).unwrap();
        with(roundrobin, "", "", false).unwrap();
        // Each stage commits in transactions of its own.
        let exactly_once = "[processing]\nguarantee = \"exactly_once\"";
        with("", "", exactly_once, true).unwrap();
        with("", "", exactly_once, false).unwrap();
        for (kafka, inputs, tail, field) in [
            (roundrobin, "", "", "partition.assignment.strategy"),
            ("", "co_partitioned = true", "", "inputs.co_partitioned"),
            (
                "",
                "",
                "[detect]\ntransactions = true",
                "detect.transactions",
            ),
        ] {
            let err = with(kafka, inputs, tail, true).unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn co_partitioned_inputs_need_the_range_assignor() {
        let with = |co_partitioned: bool, strategy: &str| {
            parse(&format!(
                "[kafka]\n\"bootstrap.servers\" = \"b:9092\"\n\
                 \"partition.assignment.strategy\" = \"{strategy}\"\n\
                 [inputs]\ncache_topics = [\"c\"]\nco_partitioned = {co_partitioned}\n"
            ))
            .unwrap()
            .validate_for_run()
        };
        with(true, "range").unwrap();
        with(false, "cooperative-sticky").unwrap();
        for strategy in ["cooperative-sticky", "roundrobin", "range,roundrobin"] {
            let err = with(true, strategy).unwrap_err().to_string();
            assert!(
                err.contains("partition.assignment.strategy") && err.contains("co_partitioned"),
                "{strategy}: {err}"
            );
        }
    }
}
