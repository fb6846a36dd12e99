//! `vigil gen`: writes a synthetic workload with labelled faults to files.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde_json::json;

use super::{ExitStatus, UsageError, create_dir};
use crate::cli::{CdcFormatArg, GenArgs};
use crate::ingest::Stream;
use crate::io::file::kcat_line;
use crate::workload::encode::CdcFormat;
use crate::workload::storms::{StormSchedule, Traffic};
use crate::workload::{FaultRates, Generator, Spec};

pub fn run(args: &GenArgs) -> anyhow::Result<ExitStatus> {
    let spec = spec(args)?;
    create_dir(&args.out, "output directory")?;
    let mut generator = Generator::new(spec);
    generator.check_storms().map_err(UsageError)?;
    let summary = write(&mut generator, &args.out, args.kcat)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(ExitStatus::Ok)
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
    })
}

/// Writes `cdc.ndjson`, `cache.ndjson`, `expected.ndjson`,
/// `expected-storms.ndjson` and `vigil.toml` into `dir`, and returns a
/// summary of what was written.
pub fn write(
    generator: &mut Generator,
    dir: &Path,
    kcat: bool,
) -> anyhow::Result<serde_json::Value> {
    let create = |name: &str| -> anyhow::Result<BufWriter<File>> {
        let path = dir.join(name);
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(BufWriter::with_capacity(1 << 20, file))
    };
    std::fs::write(dir.join("vigil.toml"), generator.config_toml())
        .context("writing vigil.toml")?;
    let mut cdc = create("cdc.ndjson")?;
    let mut cache = create("cache.ndjson")?;
    let mut offsets: HashMap<(Arc<str>, i32), i64> = HashMap::new();
    for record in generator.by_ref() {
        let out = match record.stream {
            Stream::Cdc => &mut cdc,
            Stream::Cache => &mut cache,
        };
        if kcat {
            let offset = offsets
                .entry((Arc::clone(&record.topic), record.partition))
                .or_default();
            let line = kcat_line(
                &record.topic,
                record.partition,
                *offset,
                Some(record.ts_ms),
                record.key.as_deref(),
                record.value.as_deref(),
            );
            *offset += 1;
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}", record.value.as_deref().unwrap_or("null"))?;
        }
    }
    cdc.flush()?;
    cache.flush()?;
    let mut expected = create("expected.ndjson")?;
    let mut by_kind: BTreeMap<&str, u64> = BTreeMap::new();
    for e in generator.expected() {
        *by_kind.entry(e.kind).or_default() += 1;
        writeln!(expected, "{}", e.to_json())?;
    }
    expected.flush()?;
    let mut expected_storms = create("expected-storms.ndjson")?;
    let mut storms_by_type: BTreeMap<&str, u64> = BTreeMap::new();
    for storm in generator.expected_storms() {
        *storms_by_type.entry(storm.scope_type.as_str()).or_default() += 1;
        writeln!(expected_storms, "{}", serde_json::to_string(&storm)?)?;
    }
    expected_storms.flush()?;
    Ok(json!({
        "files": {
            "cdc": dir.join("cdc.ndjson"),
            "cache": dir.join("cache.ndjson"),
            "expected": dir.join("expected.ndjson"),
            "expected_storms": dir.join("expected-storms.ndjson"),
            "config": dir.join("vigil.toml"),
        },
        "generated": generator.stats(),
        "expected_violations": by_kind,
        "expected_storms": storms_by_type,
    }))
}
