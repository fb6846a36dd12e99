//! Criterion benchmarks of vigil's hot stages, each on realistic input:
//! `cargo bench --bench stages` (see BENCHMARKS.md).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use vigil::config::StormsConfig;
use vigil::detect::storm::StormDetector;
use vigil::model::Millis;
use vigil::pipeline::storm_rules;

/// Invalidation events of a busy service fleet: one key each over a million
/// distinct keys, three prefixes, ten services, every tenth event a bulk of
/// 25 keys, 10,000 events a second of event time.
fn invalidations(n: usize) -> Vec<(Millis, Vec<Arc<str>>, &'static str)> {
    const SERVICES: [&str; 10] = [
        "users-api",
        "orders-api",
        "search",
        "catalog",
        "cart",
        "payments",
        "auth",
        "reviews",
        "inventory",
        "pricing",
    ];
    const PREFIXES: [&str; 3] = ["user", "order", "product"];
    (0..n)
        .map(|i| {
            let width = if i % 10 == 0 { 25 } else { 1 };
            let keys = (0..width)
                .map(|j| {
                    let k = (i * 7_919 + j * 104_729) % 1_000_000;
                    Arc::from(format!("{}:{k}", PREFIXES[k % 3]))
                })
                .collect();
            (i as Millis / 10, keys, SERVICES[i % 10])
        })
        .collect()
}

/// Storm detection: counting every invalidation by scope, and judging each
/// second as the watermark passes it.
fn storms(c: &mut Criterion) {
    let rules = storm_rules(&StormsConfig::default());
    let events = invalidations(100_000);
    let mut group = c.benchmark_group("storms");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("observe_and_advance", |b| {
        b.iter(|| {
            let mut detector = StormDetector::default();
            let mut out = Vec::new();
            for (ts, keys, service) in &events {
                detector.observe(*ts, keys, Some(service), &rules);
                if ts % 1_000 == 0 {
                    detector.advance(ts - 2_000, &rules, &mut out);
                }
            }
            detector.advance(Millis::MAX, &rules, &mut out);
            black_box(out)
        })
    });
    group.finish();
}

criterion_group!(benches, storms);
criterion_main!(benches);
