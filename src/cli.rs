//! The command line: subcommands and their flags, with the help text users
//! read (`vigil <command> --help`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::workload::{FaultRates, TxFaults};

/// vigil: a real-time consistency watchdog for cached data.
///
/// vigil reads a database's change stream (Debezium, Maxwell or Canal JSON)
/// and the cache invalidations and fills that services publish, keeps
/// per-key version state in RocksDB, and reports caches that lie: changes
/// whose keys were not invalidated in time, fills of stale versions, fills
/// after deletes, and version regressions, gaps and conflicts.
///
/// Exit status: 0 ran; 1 violations found (with --fail-on-violation);
/// 2 usage or configuration error; 4 runtime failure (I/O, state store);
/// 5 vigil torture found something lost, added or changed; 6 vigil run
/// fenced out of its consumer group (its group.instance.id taken).
#[derive(Debug, Parser)]
#[command(
    name = "vigil",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, help_heading = "Logging")]
    pub log_format: LogFormat,

    /// Log filter (tracing syntax: "info", "vigil=debug", ...); the
    /// RUST_LOG environment variable overrides it.
    #[arg(long, global = true, default_value = "info", help_heading = "Logging")]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, for log pipelines.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check CDC and cache-event files offline: every violation, every dead
    /// letter, and a JSON summary.
    ///
    /// Reads CDC files and cache-event files as parallel streams, kept in
    /// step by event time (merged a batch at a time), runs the same engine as
    /// `vigil run`, and writes:
    ///
    ///   DIR/violations.ndjson  one CloudEvents 1.0 JSON object a line per
    ///                          violation (type vigil.violation.<kind>);
    ///   DIR/dlq.ndjson         one line per input line that could not be
    ///                          decoded or mapped: file, line, reason (a fixed
    ///                          code), stage, message and the original line.
    ///
    /// A JSON summary goes to stdout: records read per input, changes, cache
    /// events, violations by kind, dead letters by reason, records skipped by
    /// kind (tombstones, heartbeats, transaction metadata...), elapsed seconds
    /// and events per second. Progress goes to stderr every few seconds.
    ///
    /// Input lines are either a bare message value or a `kcat -J` line (topic,
    /// partition, offset, ts, key, payload), so a topic dumped with kcat can be
    /// checked as it is. An input can be a regular file, a named pipe, or
    /// standard input (`-`; at most one input), so that
    /// `kcat -C -J -t T -e | vigil check --cdc - ...` works. The end of input
    /// makes every verdict final.
    ///
    /// Exit status: 0 it ran; 1 violations were found and --fail-on-violation
    /// was given; 2 usage or configuration error; 4 runtime failure (I/O,
    /// state store).
    #[command(verbatim_doc_comment)]
    Check(CheckArgs),
    /// Generate a synthetic workload with labelled faults, and the
    /// violations a correct engine must report for it.
    ///
    /// Writes DIR/cdc.ndjson (CDC records), DIR/cache.ndjson (invalidations
    /// and fills), DIR/expected.ndjson (the violations a correct engine must
    /// report, one JSON object a line: kind, key, table, pk, version and, for
    /// late invalidations, lag_ms) and
    /// DIR/vigil.toml (the configuration that maps the generated tables).
    /// With --brokers the records go to their Kafka topics instead of the
    /// two record files; --format avro and --format protobuf (Debezium in
    /// Confluent's Avro or Protobuf framing) need --brokers and
    /// --schema-registry.
    ///
    /// Every change's keys are invalidated in time and fills carry the current
    /// version, except where a fault is injected. Duplicate deliveries, clock
    /// skew within tolerance and reordering between the two files are added
    /// as noise that a correct engine must not report.
    #[command(verbatim_doc_comment)]
    Gen(GenArgs),
    /// Run the watchdog on Kafka: consume CDC and cache topics, produce
    /// violations and dead letters as they happen.
    ///
    /// Consumes `inputs.cdc_topics` and `inputs.cache_topics` in the consumer
    /// group `inputs.group_id` (librdkafka settings in `[kafka]`), runs the
    /// same engine as `vigil check`, and produces:
    ///
    ///   outputs.violations_topic  CloudEvents, keyed by cache key;
    ///   outputs.dlq_topic         undecodable records unchanged, with Kafka
    ///                             Connect's __connect.errors.* headers and
    ///                             vigil.error.reason.
    ///
    /// State and input offsets are committed together in RocksDB
    /// (state.path); after a crash vigil resumes from them. Metrics are
    /// served at metrics.listen (/metrics, Prometheus). SIGINT or SIGTERM
    /// stops it cleanly: stop reading, finish the batch, flush outputs,
    /// commit state and offsets; a second signal stops waiting for the
    /// broker.
    ///
    /// Exit status: 0 stopped cleanly; 2 usage or configuration error;
    /// 4 runtime failure; 6 fenced out of the consumer group by another
    /// instance with the same group.instance.id.
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
    /// Watch vigil work: an embedded broker, a live workload with injected
    /// faults, the real pipeline, figures every second, and the injected
    /// faults against the violations detected.
    ///
    /// Starts an in-process Kafka-protocol broker (librdkafka's mock
    /// cluster; its address is printed so that kcat can watch the topics),
    /// streams a `vigil gen` workload into it at --rate records per second
    /// for --duration, runs the `vigil run` pipeline against it, prints a line
    /// a second (records consumed per second, violations by kind, watermark
    /// delay), and ends with a table of injected faults against detected
    /// violations per kind. Ctrl-C stops it early.
    #[command(verbatim_doc_comment)]
    Demo(DemoArgs),
    /// Measure vigil on this machine: vigil check on files of several
    /// sizes, vigil run through an embedded broker, and latency.
    ///
    /// Generates workloads with the generator of `vigil gen` and measures:
    ///
    ///   vigil check (a child process) for each --check EVENTS:KEYS
    ///     (Debezium values) and --check-kcat EVENTS:KEYS (kcat -J lines,
    ///     five CDC formats): records per second, CPU time per record of
    ///     the whole process (user + system), time per record in each stage
    ///     (ingest, route, detect, commit), peak memory; the violations
    ///     found are checked against the expected ones. Then, on the same
    ///     files, the parse floor: the CPU time per record of reading every
    ///     line and parsing it with serde_json (borrowed, into IgnoredAny;
    ///     a kcat -J line's payload unescaped into a reused buffer and
    ///     parsed too), and nothing else: the work vigil cannot avoid;
    ///   vigil run through an embedded broker (librdkafka's mock cluster,
    ///     in this process): records per second from its first record read
    ///     to its last (the seconds before, mostly the consumer group's
    ///     join, are reported apart), and the CPU time per record of
    ///     vigil's threads apart from that of the broker's and the load
    ///     generator's;
    ///   latency at --latency-rate records per second: from a record's
    ///     produce time to its violation's produce time, for the kinds that
    ///     fire at once (regression, gap, conflict), beside its delivery
    ///     floor (the same workload through a new embedded broker to a
    ///     consumer that only reads: the load generator's batching and the
    ///     broker's fetch wait, which vigil's latency includes); and how
    ///     long after the watermark passes a deadline its missing
    ///     invalidation is produced;
    ///   decoding, in this process, of the Debezium changes (value and
    ///     key) of a workload of --decode-records records, written by the
    ///     JSON converter and by Confluent's Avro converter (writer schemas
    ///     at hand): CPU time per change of each, into the same
    ///     format-neutral change.
    ///
    /// The report is one JSON object on stdout (BENCHMARKS.md is written from
    /// it); progress goes to stderr.
    #[command(verbatim_doc_comment)]
    Bench(BenchArgs),
    /// Replay a dead-letter queue after a fix: through the detection engine
    /// (its outputs into files or to the output topics), back to the
    /// original topics, or as a dry run.
    ///
    /// Reads the DLQ from --from-topic (the [kafka] settings of --config) or
    /// from --from-file (kcat -J lines of a DLQ topic, or the dlq.ndjson of
    /// `vigil check` run on kcat -J inputs), from its start (or --from-offset,
    /// --since) up to where it ended when the replay started. Each record's
    /// original topic, partition and offset come from its headers: Kafka
    /// Connect's __connect.errors.* (text) or Spring Kafka's
    /// kafka_dlt-original-* (binary big-endian). Then:
    ///
    ///   --to files     (the default) decode it with the current
    ///                  configuration and run it through the engine as if it
    ///                  had arrived live on its original topic: state in
    ///                  --state (default state.path), violations, storm and
    ///                  incident events into --out DIR. The changes are
    ///                  judged against the invalidations and fills their keys
    ///                  kept (detect.history), so state and violations (same
    ///                  ids) end as if the fixed configuration had been used
    ///                  from the start;
    ///   --to pipeline  the same, but the events go to the output topics of
    ///                  the configuration ([outputs], [kafka]) as vigil run
    ///                  publishes them: same records, keys, headers and ids.
    ///                  Each checkpoint waits for the broker to acknowledge
    ///                  them before the state is committed; a broker that
    ///                  does not answer within --broker-timeout, or a
    ///                  record it does not take within message.timeout.ms
    ///                  ([kafka]), stops the replay with status 4 (run it
    ///                  again to continue). The changelog is not written.
    ///                  With --stage one, into a running two-stage
    ///                  deployment: see --stage;
    ///   --to original  publish it again to its original topic and partition
    ///                  with its key, value and headers (error headers
    ///                  removed, vigil.replay.count added); a record replayed
    ///                  --max-replays times already is skipped (loop guard);
    ///   --dry-run      decode it and report what would happen; write nothing.
    ///
    /// Records that still fail are counted, not dead-lettered again (they
    /// stay in the DLQ that was read).
    ///
    /// A replay stopped half-way continues where it stopped when run again:
    /// --to files and --to pipeline keep their position with the state
    /// (nothing is applied twice), --to original in --progress once the
    /// broker has acknowledged.
    /// Progress goes to stderr; a JSON summary to stdout: records read,
    /// replayed, filtered, skipped by the loop guard, still failing by reason
    /// with sample positions, elapsed seconds, records per second.
    ///
    /// Exit status: 0 every record was replayed; 3 some still fail (or were
    /// stopped by the loop guard); 2 usage or configuration error; 4 runtime
    /// failure.
    #[command(verbatim_doc_comment)]
    Replay(ReplayArgs),

    /// Prove that vigil loses no violation and invents none under faults:
    /// crashes, a broker outage and a failing state store.
    ///
    /// Generates a workload with every fault kind (the generator of `vigil
    /// gen`, plus undecodable records), streams it through a broker (an
    /// embedded one, librdkafka's mock cluster, or --bootstrap), and runs
    /// `vigil run` as a child process while it:
    ///
    ///   kills it with SIGKILL at --kills random points and restarts it;
    ///   takes the broker away for --outage once (embedded broker only);
    ///   makes its state store fail once, as a full disk does, and checks
    ///     that it stops with status 4 and committed no input offset to
    ///     Kafka past what its state holds.
    ///
    /// Then it compares with `vigil check` of the same records, uncrashed:
    /// every violation present, none extra, duplicates only with identical
    /// ids and contents, the same dead letters, and the final state equal
    /// key by key. It prints one line per fault and a verdict.
    ///
    /// Exit status: 0 nothing was lost; 5 something was lost, added or
    /// differs; 2 usage error; 4 runtime failure.
    #[command(verbatim_doc_comment)]
    Torture(TortureArgs),

    /// Show what an instance's state holds of a cache key, or its storms in
    /// progress or incidents open, as JSON or a table (--format).
    ///
    /// Reads a stopped instance's state directory (--state, opened
    /// read-only) or asks a running one (--url: GET /v1/keys/{key}, GET
    /// /v1/storms, GET /v1/incidents), and prints, as of the last checkpoint, the key: its
    /// changes (table, primary key, version, commit time, status Pending /
    /// Missed / Decided, the invalidation that covered it), its recent
    /// invalidations, its fills (waiting and judged, with the violation
    /// reported for each) and its armed deadline; or, with --storms, the
    /// storms in progress; or, with --incidents, the consistency incidents
    /// open.
    ///
    /// Exit status: 0 the key was found; 4 it was not, or the state cannot
    /// be read.
    Inspect(InspectArgs),

    /// Print a shell completion script to stdout.
    ///
    /// For example: `vigil completions bash > /etc/bash_completion.d/vigil`,
    /// `vigil completions zsh > "${fpath[1]}/_vigil"`,
    /// `vigil completions fish > ~/.config/fish/completions/vigil.fish`.
    Completions(CompletionsArgs),

    /// Write the manual pages (roff): vigil(1) to stdout, or vigil(1) and a
    /// page per subcommand (vigil-run(1), ...) into --out DIR.
    ///
    /// For example: `vigil man | man -l -`, or
    /// `vigil man --out /usr/local/share/man/man1`.
    Man(ManArgs),
}

/// Flags of `vigil inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The state directory of a stopped instance (its state.path), opened
    /// read-only.
    #[arg(long, value_name = "DIR", required_unless_present = "url")]
    pub state: Option<PathBuf>,

    /// A running instance instead: the address of its HTTP server
    /// (metrics.listen), like http://127.0.0.1:9464.
    #[arg(long, value_name = "URL", conflicts_with = "state")]
    pub url: Option<String>,

    /// The instance's metrics.bearer_token, if it has one (with --url).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "VIGIL_METRICS__BEARER_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// The cache key, as services name it (`user:42`); with --entity, the
    /// row's primary key as a JSON object, as violations name it
    /// (`{"id":42}`).
    #[arg(value_name = "KEY", required_unless_present_any = ["storms", "incidents"])]
    pub key: Option<String>,

    /// Show a row's entity state instead of a key: the table, as
    /// [[tables]] names it (`public.users`); KEY is then the primary key.
    #[arg(long, value_name = "TABLE", conflicts_with_all = ["storms", "incidents"])]
    pub entity: Option<String>,

    /// Show the storms in progress instead of a key.
    #[arg(long, conflicts_with = "key")]
    pub storms: bool,

    /// Show the consistency incidents open instead of a key.
    #[arg(long, conflicts_with_all = ["key", "storms"])]
    pub incidents: bool,

    /// How to print the view: `json` (the HTTP API's document, for
    /// scripts) or `table` (aligned columns for a person: times as RFC
    /// 3339, where a record came from as `topic/partition@offset`).
    #[arg(long, value_enum, default_value = "json")]
    pub format: InspectFormat,
}

/// How `vigil inspect` prints a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InspectFormat {
    Json,
    Table,
}

/// Flags of `vigil completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Flags of `vigil man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Directory to write vigil.1 and the subcommands' pages into (created
    /// if missing); without it vigil.1 goes to stdout.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Where `vigil replay` sends records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplayTarget {
    /// Through the detection engine, its events into files in --out DIR.
    Files,
    /// Through the detection engine, its events to the output topics.
    Pipeline,
    /// Back to the topic each record first came from.
    Original,
}

/// Which stages of the engine `vigil replay --to pipeline` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReplayStage {
    /// Every check, in the replay's state.
    Both,
    /// Decoding, mapping and entity checks; key-level items to the
    /// repartition topic, for a running stage two.
    One,
}

/// Flags of `vigil replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Configuration file (TOML): the fixed [[tables]] and [inputs] topics,
    /// [kafka] for topics, and [outputs] for --to pipeline.
    #[arg(long, value_name = "FILE", env = "VIGIL_CONFIG")]
    pub config: Option<PathBuf>,

    /// The DLQ topic to read.
    #[arg(long, value_name = "TOPIC", conflicts_with = "from_file")]
    pub from_topic: Option<String>,

    /// A file of the DLQ: kcat -J lines, or vigil check's dlq.ndjson; `-`
    /// reads standard input (a pipe is read to its end).
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,

    /// Where replayed records go.
    #[arg(long, value_enum, default_value_t = ReplayTarget::Files)]
    pub to: ReplayTarget,

    /// Decode and report only; write nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Output directory of --to files (violations.ndjson, storms.ndjson,
    /// incidents.ndjson).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// State directory of --to files and --to pipeline [default:
    /// state.path; with --stage one, STATE_PATH/replay/stage-one].
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,

    /// The stages of the engine --to pipeline runs: `both` (every check, in
    /// the state of --state: a deployment of vigil run --stage both stopped,
    /// or a copy of its state), or `one`, into a two-stage deployment while
    /// it runs: the replay is one more producer of stage one, running the
    /// entity checks in its own --state and publishing each change's
    /// obligations, invalidations and fills to inputs.repartition_topic,
    /// where the running stage two judges them against its live key state:
    /// missing and late invalidations with the ids and verdicts of a run
    /// that had the fixed configuration from the start (within
    /// detect.history). It publishes no watermark marks, so it never holds
    /// stage two's watermark back: its records come as late records, judged
    /// at once when their deadline has passed (a fill is judged again on
    /// each replayed change of its key, so it can be reported on part of
    /// them: see the README). Refused with inputs.co_partitioned (one
    /// stage) or a missing repartition topic.
    #[arg(long, value_enum, default_value_t = ReplayStage::Both)]
    pub stage: ReplayStage,

    /// Replay only records dead-lettered for this reason (vigil's code, or
    /// the exception class of Kafka Connect or Spring); repeatable.
    #[arg(long, value_name = "REASON")]
    pub filter_reason: Vec<String>,

    /// At most this many records a second.
    #[arg(long)]
    pub rate: Option<u64>,

    /// Start at this offset of every DLQ partition (a line number, from 1,
    /// of a file) instead of the beginning.
    #[arg(long)]
    pub from_offset: Option<i64>,

    /// Start at the first DLQ record at or after this time (RFC 3339 or
    /// epoch milliseconds; topics only).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,

    /// --to original skips a record replayed this many times already.
    #[arg(long, default_value_t = 3)]
    pub max_replays: u32,

    /// Progress file of --to original [default:
    /// STATE_PATH/replay/<source>.json].
    #[arg(long, value_name = "FILE")]
    pub progress: Option<PathBuf>,

    /// How long to wait for the broker before giving up with status 4: its
    /// metadata at the start (the DLQ topic; the brokers of --to pipeline),
    /// and each batch's acknowledgements of --to original.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub broker_timeout: crate::config::Dur,
}

/// Flags of `vigil bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A vigil check run: records and distinct entities, like 1000000:100000
    /// (repeat for several sizes). CDC records are Debezium values without
    /// the schema wrapper, one a line, over three tables.
    #[arg(long, value_name = "EVENTS:KEYS", default_value = "1000000:100000")]
    pub check: Vec<String>,

    /// A vigil check run on kcat -J lines: records and distinct entities, as
    /// --check (repeat for several sizes). CDC records are in five formats,
    /// one per table: Debezium, Debezium with the schema wrapper, Debezium
    /// flattened, Maxwell, Canal; cache events are kcat -J lines too.
    #[arg(long, value_name = "EVENTS:KEYS")]
    pub check_kcat: Vec<String>,

    /// The --check workloads carry transaction metadata (as vigil gen
    /// --transactions writes it), and vigil check runs on the same files
    /// with detect.transactions off and on, alternately, for the checks'
    /// cost (records/s and CPU a record of each run, and the medians of on
    /// over off).
    #[arg(long)]
    pub transactions: bool,

    /// With --transactions: how many runs off, and as many on.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub transaction_rounds: u64,

    /// Records of the vigil run throughput measure.
    #[arg(long, default_value_t = 300_000)]
    pub kafka_events: u64,

    /// Distinct entities of the vigil run workloads.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,

    /// Records per second of the latency measure (default: 70 % of the
    /// rate `vigil run` reached in the throughput measure).
    #[arg(long)]
    pub latency_rate: Option<u64>,

    /// How long the latency measure streams (its first second warms the
    /// clients up and is not measured).
    #[arg(long, default_value = "20s")]
    pub latency_seconds: crate::config::Dur,

    /// Only the vigil check runs (and the decoding measure, --instances and
    /// --latency-two-stages).
    #[arg(long)]
    pub skip_kafka: bool,

    /// The latency measure also runs through two stages: a vigil run
    /// --stage one and a --stage two pipeline (in this process) over the
    /// repartition topic, at the same rate (--latency-rate, needed with
    /// --skip-kafka). Key verdicts then come from stage two, and deadline
    /// firing is measured from when stage one's watermark passed the
    /// deadline.
    #[arg(long)]
    pub latency_two_stages: bool,

    /// Scaling out: for each N, 1 vigil run --stage one process and N
    /// --stage two processes (after one --stage both process, the
    /// baseline) through the embedded broker, on --kafka-events records
    /// whose cache topic is keyed by service. Each must report exactly the
    /// expected violations; reports records/s and CPU a record of each, and
    /// the repartition's overhead a record over the one process.
    #[arg(long, value_name = "N,N...", value_delimiter = ',',
          value_parser = clap::value_parser!(u32).range(1..=12))]
    pub instances: Vec<u32>,

    /// Records of the workload whose Debezium changes the decoding measure
    /// decodes, JSON against Avro (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    pub decode_records: u64,

    /// Working directory for the generated files (default: a temporary one,
    /// removed at the end).
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
}

/// Flags of `vigil demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How long the workload streams (then the last verdicts come in).
    #[arg(long, default_value = "30s")]
    pub duration: crate::config::Dur,

    /// Records per second streamed into the broker.
    #[arg(long, default_value_t = 3_000)]
    pub rate: u64,

    /// Distinct entities (rows) of the workload.
    #[arg(long, default_value_t = 5_000)]
    pub keys: u64,

    /// Seed of the workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Flags of `vigil torture`.
#[derive(Debug, Args)]
pub struct TortureArgs {
    /// Records of the workload (CDC and cache events together).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,

    /// Distinct entities (rows) of the workload; default a tenth of the
    /// records.
    #[arg(long)]
    pub keys: Option<u64>,

    /// SIGKILLs of `vigil run`, at random points of the stream.
    #[arg(long, default_value_t = 20)]
    pub kills: u32,

    /// How long the broker is away, once, while vigil runs (0s: no
    /// outage). Only with the embedded broker.
    #[arg(long, default_value = "70s")]
    pub outage: crate::config::Dur,

    /// Make the state store fail once (as a full disk does); `false` skips
    /// that fault.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub store_failure: bool,

    /// Seed of the workload and of the points where faults strike.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// An external broker (HOST:PORT) instead of the embedded one: its
    /// topics must not exist yet or be empty; no outage is injected.
    #[arg(long, value_name = "HOST:PORT")]
    pub bootstrap: Option<String>,

    /// Run vigil as a static member of its consumer group with this
    /// `group.instance.id` and a session timeout of 30 s: a restarted
    /// vigil must commit again within half of it (it takes its partitions
    /// back without waiting for the session of the killed one to expire),
    /// else the kill is a finding. The embedded broker does not honour
    /// static membership: use it with --bootstrap.
    #[arg(long, value_name = "ID")]
    pub group_instance_id: Option<String>,

    /// Working directory (workload files, state, logs of each run of
    /// vigil); default a new directory under the system's temporary
    /// directory, removed at the end when nothing was lost.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Flags of `vigil run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (TOML): [kafka], [inputs] topics, [outputs],
    /// [[tables]]... (see config/example.toml).
    #[arg(long, value_name = "FILE", env = "VIGIL_CONFIG")]
    pub config: Option<PathBuf>,

    /// How long a broker of [kafka] bootstrap.servers may take to answer at
    /// the start. Past it vigil stops with status 4 and librdkafka's
    /// latest error (a refused connection, `certificate verify failed`, a
    /// failed SASL handshake) instead of retrying forever; a broker lost
    /// later is waited for.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub broker_timeout: crate::config::Dur,

    /// Which part of the pipeline this process runs. `both` (the default):
    /// all of it, as one stage; several instances then share the consumer
    /// group only with inputs.co_partitioned = true. For inputs keyed
    /// otherwise (a cache topic keyed by service, say), run the pipeline as
    /// two stages, each as many instances as needed: `one` reads the CDC and
    /// cache topics, runs the entity checks and storms, and publishes the
    /// key-level records to inputs.repartition_topic keyed by cache key;
    /// `two` reads that topic in the group "<inputs.group_id>-stage2" and
    /// runs the key checks. Both stages need at_least_once, and no
    /// detect.transactions.
    #[arg(long, value_enum, default_value = "both")]
    pub stage: crate::io::kafka::repartition::Stage,
}

/// Flags of `vigil check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Configuration file (TOML); without it the embedded default
    /// (config/default.toml, no tables mapped) is used.
    #[arg(long, value_name = "FILE", env = "VIGIL_CONFIG")]
    pub config: Option<PathBuf>,

    /// CDC input files (Debezium, Maxwell or Canal JSON; repeat the flag or
    /// list several paths). `-` is standard input.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub cdc: Vec<PathBuf>,

    /// Cache-event input files (invalidations and fills). `-` is standard
    /// input.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub cache: Vec<PathBuf>,

    /// Output directory (created if missing; its two files are replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// RocksDB state directory to use and keep (state is written to it at
    /// every checkpoint, and a later run resumes from it). Without it state
    /// lives in memory for the run only, so that runs are independent.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,

    /// Exit with status 1 when any violation was found.
    #[arg(long)]
    pub fail_on_violation: bool,

    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Flags of `vigil gen`.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Output directory (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Total number of records (CDC and cache events together).
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,

    /// Number of distinct entities (rows), each cached under one or two keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,

    /// Number of tables.
    #[arg(long, default_value_t = 3)]
    pub tables: u32,

    /// Records per second of event time (the span of the workload).
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,

    /// Spread the records over this much event time instead (like `7d`):
    /// --events / SPAN records a second, fewer than one if need be. With
    /// more --keys than episodes (about --events / 2.6) every episode is of
    /// a new entity, so keys keep coming for the whole span: a workload
    /// for `state.retention`. Not with --storms, which are sized for a
    /// rate.
    #[arg(long, value_name = "SPAN", conflicts_with_all = ["rate", "storms"])]
    pub span: Option<crate::config::Dur>,

    /// Format of the CDC records.
    #[arg(long, value_enum, default_value_t = CdcFormatArg::Debezium)]
    pub format: CdcFormatArg,

    /// Write `kcat -J` lines (topic, partition, offset, key, payload)
    /// instead of bare message values.
    #[arg(long)]
    pub kcat: bool,

    /// Produce the records to their topics on this Kafka cluster
    /// (bootstrap servers), stamped with their event time, instead of
    /// writing cdc.ndjson and cache.ndjson; the topics must exist with at
    /// least 3 partitions. --out still receives vigil.toml and the expected
    /// violations and storms.
    #[arg(long, value_name = "HOST:PORT")]
    pub brokers: Option<String>,

    /// A librdkafka property of the --brokers producer, as KEY=VALUE
    /// (repeatable), for a cluster behind TLS or SASL:
    /// `--kafka security.protocol=ssl --kafka ssl.ca.location=ca.pem`.
    #[arg(long = "kafka", value_name = "KEY=VALUE", requires = "brokers")]
    pub kafka: Vec<String>,

    /// The Confluent Schema Registry that --format avro or protobuf registers its
    /// schemas with (subjects TOPIC-value and TOPIC-key); the records carry
    /// the ids it gives, and vigil.toml names it.
    #[arg(long, value_name = "URL")]
    pub schema_registry: Option<String>,

    /// Share of changes whose invalidation of one key is dropped.
    #[arg(long, default_value_t = FaultRates::GEN.missing)]
    pub missing_rate: f64,

    /// Share of changes whose invalidation of one key comes after the deadline.
    #[arg(long, default_value_t = FaultRates::GEN.late)]
    pub late_rate: f64,

    /// Share of updates followed by a fill of the previous version.
    #[arg(long, default_value_t = FaultRates::GEN.stale_fill)]
    pub stale_fill_rate: f64,

    /// Share of deletes followed by a fill of the deleted row.
    #[arg(long, default_value_t = FaultRates::GEN.fill_after_delete)]
    pub fill_after_delete_rate: f64,

    /// Share of updates followed by a change with an older version.
    #[arg(long, default_value_t = FaultRates::GEN.regression)]
    pub regression_rate: f64,

    /// Share of updates that skip a version.
    #[arg(long, default_value_t = FaultRates::GEN.gap)]
    pub gap_rate: f64,

    /// Share of updates followed by another change of the same version
    /// with different data.
    #[arg(long, default_value_t = FaultRates::GEN.conflict)]
    pub conflict_rate: f64,

    /// Share of records delivered twice.
    #[arg(long, default_value_t = FaultRates::GEN.duplicate)]
    pub duplicate_rate: f64,

    /// Seed of the random generator: the same seed gives the same files.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Inject an invalidation storm of every kind (global, prefix, service,
    /// hot key, bulk, wildcard): after 90 s of normal traffic, 20 s each,
    /// one a minute. They are written to expected-storms.ndjson, and the
    /// workload lasts until the last one is over (about 7.5 minutes of event
    /// time) whatever --events says. Needs at least 500 normal
    /// invalidations/s (--rate 1000 or more) and 3 tables.
    #[arg(long)]
    pub storms: bool,

    /// Stop the service that invalidates table 1 (svc-t1) for two minutes
    /// after one minute of traffic: every change of table 1 in that time
    /// misses all its invalidations (expected as missing_invalidation), a
    /// consistency incident of that table. The workload lasts until three
    /// minutes after the outage whatever --events says. Needs at least 2
    /// tables.
    #[arg(long)]
    pub outage: bool,

    /// Vary the normal traffic by +-50% over ten minutes, with three 3x
    /// bursts of two seconds each: traffic that must raise no storm.
    #[arg(long)]
    pub bursts: bool,

    /// Wrap the changes in transactions of one to three episodes (so
    /// across tables). Debezium (--format debezium or debezium-schema):
    /// BEGIN and END records on the topic gen.transaction and a
    /// transaction block on each change, as Debezium writes them with
    /// provide.transaction.metadata. Maxwell: the rows of a transaction
    /// share an xid, every row but the last carries its xoffset (from 0)
    /// and the last commit: true, as Maxwell writes them with
    /// output_xoffset. Not with the other formats (Canal's flat messages
    /// name no transaction).
    #[arg(long)]
    pub transactions: bool,

    /// With --transactions: share of transactions that lose an event (an
    /// incomplete_transaction): a Debezium END announces one event more
    /// than was written; a Maxwell transaction skips an xoffset below one
    /// it writes (0 or 1, drawn; a transaction too short for that, of one
    /// row or of two when 1 was drawn, is left whole: the loss could not
    /// be told).
    #[arg(long, default_value_t = TxFaults::GEN.lost_event)]
    pub lost_event_rate: f64,

    /// With --transactions: share of transactions whose END (Maxwell:
    /// commit row) is never written (an unterminated_transaction).
    #[arg(long, default_value_t = TxFaults::GEN.unterminated)]
    pub unterminated_rate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CdcFormatArg {
    /// Debezium envelope (before/after/source/op) without schema.
    Debezium,
    /// Debezium envelope inside the JSON converter's schema/payload wrapper.
    DebeziumSchema,
    /// Debezium flattened by ExtractNewRecordState (__op, __table, ...).
    DebeziumFlat,
    /// Maxwell JSON.
    Maxwell,
    /// Canal flat-message JSON.
    Canal,
    /// Debezium envelope written by Confluent's Avro converter: binary, so
    /// produced to Kafka (--brokers) with its schemas registered
    /// (--schema-registry).
    Avro,
    /// Debezium envelope written by Confluent's Protobuf converter: binary,
    /// so produced to Kafka (--brokers) with its schemas registered
    /// (--schema-registry).
    Protobuf,
}
