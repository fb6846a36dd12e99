//! `vigil gen`: writes a synthetic workload with labelled faults to files,
//! or produces it to Kafka topics (registering the schemas of Avro and
//! Protobuf records with a schema registry).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use serde_json::json;

use super::{ExitStatus, UsageError, create_dir, produce_generated};
use crate::cli::{CdcFormatArg, GenArgs};
use crate::config::SchemaRegistryConfig;
use crate::ingest::Stream;
use crate::io::file::kcat_line;
use crate::registry::{SchemaKind, SchemaRegistry};
use crate::workload::encode::CdcFormat;
use crate::workload::storms::{StormSchedule, Traffic};
use crate::workload::{FaultRates, Generator, Outage, Spec, TxFaults};

/// How long the last produced records may take to be delivered.
const FLUSH: Duration = Duration::from_secs(60);

pub fn run(args: &GenArgs) -> anyhow::Result<ExitStatus> {
    let spec = spec(args)?;
    let binary = matches!(
        spec.format,
        CdcFormat::DebeziumAvro | CdcFormat::DebeziumProtobuf
    );
    if binary && (args.brokers.is_none() || args.schema_registry.is_none()) {
        return Err(UsageError(
            "--format avro and --format protobuf write binary records to Kafka: give --brokers and --schema-registry"
                .into(),
        )
        .into());
    }
    if !binary && args.schema_registry.is_some() {
        return Err(UsageError(
            "--schema-registry is for --format avro and --format protobuf".into(),
        )
        .into());
    }
    if args.kcat && args.brokers.is_some() {
        return Err(UsageError(
            "--kcat writes files, --brokers produces to topics: give one of them".into(),
        )
        .into());
    }
    create_dir(&args.out, "output directory")?;
    let mut generator = Generator::new(spec);
    if let Some(span) = args.span {
        generator = generator.with_span(span.as_millis_i64());
    }
    if args.outage {
        generator = generator
            .with_outage(Outage::STANDARD)
            .map_err(UsageError)?;
    }
    generator.check_storms().map_err(UsageError)?;
    generator.check_transactions().map_err(UsageError)?;
    let summary = match &args.brokers {
        Some(brokers) => {
            let registry = args.schema_registry.as_deref();
            if let Some(url) = registry {
                register(&mut generator, url)?;
            }
            let mut client = ClientConfig::new();
            client
                .set("bootstrap.servers", brokers)
                .set("linger.ms", "5");
            for property in &args.kafka {
                let Some((key, value)) = property.split_once('=') else {
                    return Err(UsageError(format!(
                        "--kafka {property}: give a librdkafka property as KEY=VALUE"
                    ))
                    .into());
                };
                client.set(key, value);
            }
            produce(&mut generator, &args.out, client, registry)?
        }
        None => write(&mut generator, &args.out, args.kcat)?,
    };
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(ExitStatus::Ok)
}

/// Registers the workload's schemas under their subjects, and frames
/// its records with the ids the registry gives them.
fn register(generator: &mut Generator, url: &str) -> anyhow::Result<()> {
    let config = SchemaRegistryConfig {
        url: Some(url.to_string()),
        ..SchemaRegistryConfig::default()
    };
    let registry = SchemaRegistry::from_config(&config)?.context("a schema registry url")?;
    let schemas: Vec<(String, String, SchemaKind)> = generator
        .registered_schemas()
        .into_iter()
        .map(|s| (s.subject.clone(), s.text.clone(), s.kind))
        .collect();
    for (subject, text, kind) in schemas {
        let id = registry
            .register(&subject, &text, kind)
            .with_context(|| format!("registering the schema of {subject}"))?;
        generator.set_schema_id(&subject, id);
    }
    Ok(())
}

/// Counts the records the producer failed to deliver, and keeps the first
/// error.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Produces the records to their topics on the brokers of `client` (stamped with their
/// event time) and writes the rest of what [`write`] writes; `vigil.toml`
/// names the schema registry when there is one.
fn produce(
    generator: &mut Generator,
    dir: &Path,
    client: ClientConfig,
    registry: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let brokers = client
        .get("bootstrap.servers")
        .unwrap_or_default()
        .to_string();
    let mut config = generator.config_toml();
    if let Some(url) = registry {
        config.push_str(&format!("\n[schema_registry]\nurl = {}\n", json!(url)));
    }
    std::fs::write(dir.join("vigil.toml"), config).context("writing vigil.toml")?;
    let producer: ThreadedProducer<Deliveries> = client
        .create_with_context(Deliveries::default())
        .context("creating the producer")?;
    for record in generator.by_ref() {
        produce_generated(&producer, &record, record.ts_ms, ())?;
    }
    producer.flush(FLUSH).context("flushing the workload")?;
    let deliveries = producer.context();
    let failed = deliveries.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = deliveries
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        bail!(
            "{failed} records were not delivered to {brokers}; the first failed with: {}",
            first.as_deref().unwrap_or("?")
        );
    }
    let mut summary = write_expected(generator, dir)?;
    summary["topics"] = json!(generator.topics());
    summary["files"]["config"] = json!(dir.join("vigil.toml"));
    Ok(summary)
}

/// Checks the flags and turns them into a [`Spec`].
pub fn spec(args: &GenArgs) -> Result<Spec, UsageError> {
    let faults = FaultRates {
        missing: args.missing_rate,
        late: args.late_rate,
        stale_fill: args.stale_fill_rate,
        fill_after_delete: args.fill_after_delete_rate,
        regression: args.regression_rate,
        gap: args.gap_rate,
        conflict: args.conflict_rate,
        duplicate: args.duplicate_rate,
    };
    let named = [
        ("--missing-rate", faults.missing),
        ("--late-rate", faults.late),
        ("--stale-fill-rate", faults.stale_fill),
        ("--fill-after-delete-rate", faults.fill_after_delete),
        ("--regression-rate", faults.regression),
        ("--gap-rate", faults.gap),
        ("--conflict-rate", faults.conflict),
        ("--duplicate-rate", faults.duplicate),
        ("--lost-event-rate", args.lost_event_rate),
        ("--unterminated-rate", args.unterminated_rate),
    ];
    for (flag, rate) in named {
        if !(0.0..=1.0).contains(&rate) {
            return Err(UsageError(format!(
                "{flag} must be between 0 and 1, not {rate}"
            )));
        }
    }
    let update_faults = faults.missing
        + faults.late
        + faults.stale_fill
        + faults.regression
        + faults.gap
        + faults.conflict;
    if update_faults > 1.0 {
        return Err(UsageError(format!(
            "the fault rates of an update add up to {update_faults}, more than 1"
        )));
    }
    if faults.missing + faults.late + faults.fill_after_delete > 1.0 {
        return Err(UsageError(
            "the fault rates of a delete add up to more than 1".into(),
        ));
    }
    if args.keys == 0 || args.tables == 0 || args.rate == 0 {
        return Err(UsageError(
            "--keys, --tables and --rate must be at least 1".into(),
        ));
    }
    let format = match args.format {
        CdcFormatArg::Debezium => CdcFormat::Debezium,
        CdcFormatArg::DebeziumSchema => CdcFormat::DebeziumSchema,
        CdcFormatArg::DebeziumFlat => CdcFormat::DebeziumFlat,
        CdcFormatArg::Maxwell => CdcFormat::Maxwell,
        CdcFormatArg::Canal => CdcFormat::Canal,
        CdcFormatArg::Avro => CdcFormat::DebeziumAvro,
        CdcFormatArg::Protobuf => CdcFormat::DebeziumProtobuf,
    };
    Ok(Spec {
        events: args.events,
        keys: args.keys,
        tables: args.tables,
        rate: args.rate,
        format,
        seed: args.seed,
        faults,
        start_ms: crate::workload::START_MS,
        partitions: crate::workload::PARTITIONS,
        traffic: if args.bursts {
            Traffic::Bursts
        } else {
            Traffic::Steady
        },
        storms: args.storms.then(StormSchedule::standard),
        transactions: args.transactions.then_some(TxFaults {
            lost_event: args.lost_event_rate,
            unterminated: args.unterminated_rate,
        }),
    })
}

/// Writes `cdc.ndjson`, `cache.ndjson`, `expected.ndjson`,
/// `expected-storms.ndjson` and `vigil.toml` into `dir`, and returns a
/// summary of what was written. The records must be text (JSON).
pub fn write(
    generator: &mut Generator,
    dir: &Path,
    kcat: bool,
) -> anyhow::Result<serde_json::Value> {
    std::fs::write(dir.join("vigil.toml"), generator.config_toml())
        .context("writing vigil.toml")?;
    let mut cdc = create(dir, "cdc.ndjson")?;
    let mut cache = create(dir, "cache.ndjson")?;
    let mut offsets: HashMap<(Arc<str>, i32), i64> = HashMap::new();
    for record in generator.by_ref() {
        let out = match record.stream {
            Stream::Cdc => &mut cdc,
            Stream::Cache => &mut cache,
        };
        let value = record.value.as_deref().map(text).transpose()?;
        if kcat {
            let offset = offsets
                .entry((Arc::clone(&record.topic), record.partition))
                .or_default();
            let line = kcat_line(
                &record.topic,
                record.partition,
                *offset,
                Some(record.ts_ms),
                record.key.as_deref().map(text).transpose()?,
                value,
            );
            *offset += 1;
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}", value.unwrap_or("null"))?;
        }
    }
    cdc.flush()?;
    cache.flush()?;
    let mut summary = write_expected(generator, dir)?;
    summary["files"]["cdc"] = json!(dir.join("cdc.ndjson"));
    summary["files"]["cache"] = json!(dir.join("cache.ndjson"));
    summary["files"]["config"] = json!(dir.join("vigil.toml"));
    Ok(summary)
}

fn text(bytes: &[u8]) -> anyhow::Result<&str> {
    std::str::from_utf8(bytes).context("a binary record cannot be written to a text file")
}

fn create(dir: &Path, name: &str) -> anyhow::Result<BufWriter<File>> {
    let path = dir.join(name);
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(BufWriter::with_capacity(1 << 20, file))
}

/// Writes `expected.ndjson` and `expected-storms.ndjson` into `dir` once
/// the generator is exhausted, and returns a summary of the workload.
fn write_expected(generator: &Generator, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let mut expected = create(dir, "expected.ndjson")?;
    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    for e in generator.expected() {
        *by_kind.entry(e.kind).or_default() += 1;
        writeln!(expected, "{}", e.to_json())?;
    }
    expected.flush()?;
    let mut expected_storms = create(dir, "expected-storms.ndjson")?;
    let mut storms_by_type: BTreeMap<&str, u64> = BTreeMap::new();
    for storm in generator.expected_storms() {
        *storms_by_type.entry(storm.scope_type.as_str()).or_default() += 1;
        writeln!(expected_storms, "{}", serde_json::to_string(&storm)?)?;
    }
    expected_storms.flush()?;
    Ok(json!({
        "files": {
            "expected": dir.join("expected.ndjson"),
            "expected_storms": dir.join("expected-storms.ndjson"),
        },
        "generated": generator.stats(),
        "expected_violations": by_kind,
        "expected_storms": storms_by_type,
    }))
}
