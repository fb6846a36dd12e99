//! Allocations per record of ingest (decode + map, [`vigil::ingest`]), as
//! every source runs it, counted by a counting global allocator: for the CDC
//! records of each format, for cache events, for the Debezium workload of
//! `vigil bench --check` (CDC and cache together), and for the workload of
//! `vigil bench --check-kcat` (`kcat -J` lines, five CDC formats, one per
//! table) as the file source reads it. A test prints the figures
//! (`cargo test --release --test allocations -- --nocapture`) and fails when
//! one exceeds its bound, set a little above what the code allocates today:
//! it catches regressions, and a bound is lowered when the code allocates
//! less.
//!
//! Counted: every call to `alloc`, `alloc_zeroed` and `realloc` on the
//! thread that ingests, while it ingests; the records it builds are dropped
//! after each input record (frees are not counted).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use vigil::config::Config;
use vigil::ingest::{Ingest, RawInput, Stream};
use vigil::io::file::{LineDecoder, kcat_line};
use vigil::model::{Name, Provenance};
use vigil::telemetry::Stats;
use vigil::workload::encode::CdcFormat;
use vigil::workload::storms::Traffic;
use vigil::workload::{FaultRates, GenRecord, Generator, PARTITIONS, START_MS, Spec};

/// Counts the allocations of each thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    ALLOCATIONS.with(|n| n.set(n.get() + 1));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations of this thread so far.
fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// A generated workload, table `t` in `formats[t % formats.len()]`, and the
/// configuration that maps its tables.
fn workload(tables: u32, formats: &[CdcFormat]) -> (Vec<GenRecord>, Config) {
    let mut generator = Generator::with_formats(
        Spec {
            events: 20_000,
            keys: 2_000,
            tables,
            rate: 10_000,
            format: formats[0],
            seed: 1,
            faults: FaultRates::GEN,
            start_ms: START_MS,
            partitions: PARTITIONS,
            traffic: Traffic::Steady,
            storms: None,
            transactions: None,
        },
        formats,
    );
    let records = generator.by_ref().collect();
    let config = Config::parse_with_env("gen", &generator.config_toml(), Vec::new())
        .expect("the generator's configuration is valid");
    (records, config)
}

/// Allocations per record of ingesting `records` as a Kafka source hands
/// them over.
fn per_record(records: &[&GenRecord], config: &Config) -> f64 {
    let ingest = Ingest::new(config, Arc::new(Stats::default())).expect("ingest");
    let inputs: Vec<(RawInput<'_>, Provenance)> = records
        .iter()
        .enumerate()
        .map(|(offset, r)| {
            let input = r.raw_input();
            let provenance = Provenance {
                topic: Name::new(&r.topic),
                partition: r.partition,
                offset: offset as i64,
                from_file: false,
            };
            (input, provenance)
        })
        .collect();
    let mut out = Vec::with_capacity(16);
    let before = allocations();
    for (input, provenance) in &inputs {
        ingest
            .ingest(*input, provenance, &mut out)
            .expect("generated records decode and map");
        out.clear();
    }
    (allocations() - before) as f64 / inputs.len() as f64
}

/// Allocations per line of ingesting `records` written as `kcat -J` lines,
/// as the file source reads them: with its [`LineDecoder`], which keeps
/// buffers and topic names across lines.
fn per_kcat_line(records: &[GenRecord], config: &Config) -> f64 {
    let ingest = Ingest::new(config, Arc::new(Stats::default())).expect("ingest");
    let lines: Vec<(Stream, String)> = records
        .iter()
        .enumerate()
        .map(|(offset, r)| {
            let line = kcat_line(
                &r.topic,
                r.partition,
                offset as i64,
                Some(r.ts_ms),
                text(&r.key),
                text(&r.value),
            );
            (r.stream, line)
        })
        .collect();
    let file = Name::new("kcat.ndjson");
    let mut decoder = LineDecoder::default();
    let mut out = Vec::with_capacity(16);
    let before = allocations();
    for (line_no, (stream, line)) in (1..).zip(&lines) {
        decoder
            .decode(line.as_bytes(), line_no, &file, *stream, &ingest, &mut out)
            .expect("generated records decode and map");
        out.clear();
    }
    (allocations() - before) as f64 / lines.len() as f64
}

fn of_stream(records: &[GenRecord], stream: Stream) -> Vec<&GenRecord> {
    records.iter().filter(|r| r.stream == stream).collect()
}

/// The bounds of the test, about a tenth above what the code allocates
/// today (the figures of BENCHMARKS.md).
const BOUNDS: [(CdcFormat, &str, f64); 5] = [
    (CdcFormat::Debezium, "debezium", 1.8),
    (CdcFormat::DebeziumSchema, "debezium_schema", 2.8),
    (CdcFormat::DebeziumFlat, "debezium_flat", 1.1),
    (CdcFormat::Maxwell, "maxwell", 6.7),
    (CdcFormat::Canal, "canal", 9.6),
];
/// Bound of a cache event.
const CACHE_BOUND: f64 = 0.1;
/// Bound of the records of `vigil bench --check`, CDC and cache.
const MIX_BOUND: f64 = 0.8;
/// Bound of the `kcat -J` lines of `vigil bench --check-kcat`.
const KCAT_BOUND: f64 = 1.8;

#[test]
fn allocations_per_record_stay_within_their_bounds() {
    let mut figures: Vec<(String, f64, f64)> = Vec::new();
    for (format, name, bound) in BOUNDS {
        let (records, config) = workload(3, &[format]);
        let cdc = per_record(&of_stream(&records, Stream::Cdc), &config);
        figures.push((format!("CDC records, {name}"), cdc, bound));
        if format == CdcFormat::Debezium {
            let cache = per_record(&of_stream(&records, Stream::Cache), &config);
            figures.push(("cache events".into(), cache, CACHE_BOUND));
            let all: Vec<&GenRecord> = records.iter().collect();
            let mix = per_record(&all, &config);
            let name = "CDC and cache, debezium (vigil bench --check)";
            figures.push((name.into(), mix, MIX_BOUND));
        }
    }
    let (records, config) = workload(CdcFormat::ALL.len() as u32, &CdcFormat::ALL);
    let kcat = per_kcat_line(&records, &config);
    let name = "kcat -J lines, five formats (vigil bench --check-kcat)";
    figures.push((name.into(), kcat, KCAT_BOUND));
    println!("allocations per record:");
    for (name, n, bound) in &figures {
        println!("  {name}: {n:.3} (bound {bound})");
    }
    for (name, n, bound) in &figures {
        assert!(
            n <= bound,
            "{name}: {n:.2} allocations per record, over {bound}"
        );
    }
}

/// A generated JSON record's key or value as text.
fn text(bytes: &Option<Vec<u8>>) -> Option<&str> {
    bytes
        .as_deref()
        .map(|b| std::str::from_utf8(b).expect("a JSON record"))
}
