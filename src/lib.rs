//! # vigil: a consistency watchdog for cached data
//!
//! vigil reads a database's change stream and the cache invalidations and
//! fills that services publish, and reports, as they happen, the ways a cache
//! comes to lie: changes whose keys were not invalidated in time, fills of
//! stale versions, fills after deletes, and version regressions, gaps and
//! conflicts in the change stream. `../shared/DESIGN.md` is the contract.
//!
//! ## Map of the crate, in the order data flows
//!
//! - [`formats`]: decoders for Debezium (JSON, or Avro or Protobuf in a
//!   schema registry's framing, Confluent's or Apicurio's), Maxwell, Canal,
//!   cache events and `kcat -J` lines (bytes in, format-neutral views out);
//!   JSON Schema records in that framing are read as JSON by [`ingest`].
//!   A tree whose leaves import nothing of their siblings: `recognise`
//!   (which format a JSON record is), `json` (the JSON helpers, times,
//!   escapes), `cdc` (one JSON CDC format a leaf, over the Debezium parts
//!   they share), `binary` (the registry framings, Avro, Protobuf, over the
//!   envelope reader they share), `cache`, `kcat`;
//! - [`mapping`]: a decoded change and `[[tables]]` in, a [`mapping::Change`]
//!   with entity, cache keys, version and commit time out;
//! - [`ingest`]: decode + map for one raw record, shared by every source
//!   (Avro and Protobuf schemas from the [`registry`]); failures become
//!   [`dead_letter`]s with a reason code;
//! - [`pipeline`]: router, workers and sink on threads and bounded channels:
//!   watermarks, sharding by key and entity, checkpoints, the storm,
//!   transaction and incident stages; each worker's shard of state (slots
//!   in memory over the store, timers, open keys) apart from the worker's
//!   loop; the key-level items and watermark marks that cross a
//!   repartition topic when `vigil run` runs as two stages
//!   ([`pipeline::Transfer`]);
//! - [`detect`]: the pure detectors ([`detect::entity`], [`detect::key`],
//!   invalidation storms in [`detect::storm`] over [`detect::sketch`],
//!   lost change events and unterminated transactions in
//!   [`detect::transaction`], consistency incidents in
//!   [`detect::incident`]; storms and incidents both living by
//!   [`detect::lifecycle`]);
//! - [`time`]: clock, watermarks, timer queue;
//! - [`state`]: the RocksDB store (and an in-memory one for tests, and a
//!   wrapper failing as a full disk does for `vigil torture`);
//! - [`events`]: violations and their CloudEvents form, [`hash`] their ids;
//! - [`io`]: file inputs and outputs, Kafka sources and outputs (events
//!   in JSON, or in Avro through the registry: [`io::kafka::avro`]), the
//!   state handover between instances and the repartition topic between
//!   the two stages ([`io::kafka::repartition`]);
//! - [`replay`]: what a dead letter says of its origin, for `vigil replay`;
//! - [`modes`]: `vigil check`, `run`, `demo`, `gen` ([`modes::generate`]),
//!   `bench` (its scaling measure of two stages in `modes/bench/instances.rs`),
//!   `replay`, `torture` (crashes, a broker outage and a failing
//!   store against an uncrashed check), each assembling sources, engine and
//!   outputs with [`modes::assemble`] and stopping by [`modes::shutdown`]
//!   (signals, the control handle); [`cli`] their flags;
//! - [`registry`]: the Schema Registry client (schemas by id, from
//!   Confluent's API or Apicurio's: Avro writer schemas, compiled Protobuf
//!   schemas, or the mark of a JSON Schema; registration of `vigil gen`'s
//!   schemas and of the Avro output schemas);
//! - [`config`]: the TOML configuration; [`telemetry`]: named events that
//!   count and log (every stage emits them), the counts they add to, the
//!   summary of a run and the Prometheus exporter built from those counts,
//!   process figures and logs; [`http`]: the HTTP server of `vigil run` (metrics, health,
//!   readiness, key state); [`inspect`]: read-only views of the state;
//! - [`model`]: the domain types every stage shares; [`workload`]: the
//!   synthetic workload generator behind `vigil gen` (JSON formats, or
//!   Debezium in Confluent's Avro or Protobuf framing with
//!   [`workload::avro`] and [`workload::protobuf`]).

pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod detect;
pub mod events;
pub mod formats;
pub mod hash;
pub mod http;
pub mod ingest;
pub mod inspect;
pub mod io;
pub mod mapping;
pub mod model;
pub mod modes;
pub mod pipeline;
pub mod registry;
pub mod replay;
pub mod state;
pub mod telemetry;
pub mod time;
pub mod workload;
