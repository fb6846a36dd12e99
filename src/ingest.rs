//! Ingest: one raw input record (a Kafka message, or a line of a file) in,
//! pipeline [`Record`]s out — or the [`RecordError`] that makes it a dead
//! letter. Shared by every source, so files and topics are judged alike.

use std::sync::Arc;

use crate::config::{Config, TopicSelector, UnmappedTables};
use crate::dead_letter::{Reason, RecordError};
use crate::formats::{self, DecodedCdc};
use crate::mapping::{Change, Mapped, Mapper};
use crate::model::{CacheEvent, Millis, Provenance};
use crate::telemetry::Stats;

/// Which kind of input a record comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// A database change stream.
    Cdc,
    /// Cache invalidations and fills published by services.
    Cache,
}

/// A record as a source read it.
#[derive(Debug, Clone, Copy)]
pub struct RawInput<'a> {
    pub stream: Stream,
    pub key: Option<&'a [u8]>,
    /// `None` is a tombstone.
    pub value: Option<&'a [u8]>,
    /// Kafka timestamp, the fallback event time.
    pub timestamp_ms: Option<Millis>,
}

/// A decoded, mapped input record on its way through the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Change(Change),
    Cache(CacheEvent, Provenance),
}

impl Record {
    /// The event time the watermark advances on.
    pub fn event_time(&self) -> Millis {
        match self {
            Record::Change(c) => c.commit_ts_ms,
            Record::Cache(e, _) => e.ts_ms,
        }
    }
}

/// Decodes and maps raw records. Cheap to share between source threads.
pub struct Ingest {
    mapper: Mapper,
    flattened_topics: Vec<TopicSelector>,
    unmapped: UnmappedTables,
    stats: Arc<Stats>,
}

fn utf8<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, RecordError> {
    std::str::from_utf8(bytes).map_err(|e| {
        RecordError::new(
            Reason::InvalidUtf8,
            format!(
                "the {what} is not valid UTF-8 (first bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })
}

impl Ingest {
    pub fn new(config: &Config, stats: Arc<Stats>) -> Self {
        Ingest {
            mapper: Mapper::new(config),
            flattened_topics: config.inputs.flattened_topics.clone(),
            unmapped: config.inputs.unmapped_tables,
            stats,
        }
    }

    /// Decodes one record into `out`. Records that are recognised but carry
    /// nothing to check (tombstones, heartbeats, unmapped tables with
    /// `unmapped_tables = "count"`, ...) are counted and add nothing. On
    /// error `out` is left as it was: a record is taken whole or not at all.
    pub fn ingest(
        &self,
        input: RawInput<'_>,
        provenance: &Provenance,
        out: &mut Vec<Record>,
    ) -> Result<(), RecordError> {
        let value = input.value.map(|v| utf8(v, "message value")).transpose()?;
        match input.stream {
            Stream::Cache => {
                let Some(text) = value else {
                    self.stats.add_skipped(formats::Skip::Tombstone);
                    return Ok(());
                };
                let event = formats::decode_cache(text, input.timestamp_ms)?;
                out.push(Record::Cache(event, provenance.clone()));
                Ok(())
            }
            Stream::Cdc => self.ingest_cdc(input, value, provenance, out),
        }
    }

    /// Whether a record comes from a topic of `inputs.flattened_topics`.
    fn on_flattened_topic(&self, provenance: &Provenance) -> bool {
        !provenance.from_file
            && self
                .flattened_topics
                .iter()
                .any(|t| t.matches(&provenance.topic))
    }

    fn ingest_cdc(
        &self,
        input: RawInput<'_>,
        value: Option<&str>,
        provenance: &Provenance,
        out: &mut Vec<Record>,
    ) -> Result<(), RecordError> {
        // Where a record without any format's marks is a flattened row:
        // anywhere on a flattened topic, else on tables declared so.
        let declared =
            |table: &formats::TableRef<'_>| self.mapper.reads_flattened(table, provenance);
        let flattened = if self.on_flattened_topic(provenance) {
            formats::Flattened::Everywhere
        } else {
            formats::Flattened::Tables(&declared)
        };
        let changes = match formats::decode_cdc(value, flattened)? {
            DecodedCdc::Skipped(kind) => {
                self.stats.add_skipped(kind);
                return Ok(());
            }
            DecodedCdc::Changes(changes) => changes,
        };
        // A key that is not UTF-8 cannot be a JSON key: the primary key then
        // comes from the row.
        let key = input
            .key
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(formats::decode_key);
        let start = out.len();
        for raw in &changes {
            let mapped = self
                .mapper
                .map(raw, key.as_ref(), provenance, input.timestamp_ms);
            match mapped {
                Ok(Mapped::Change(change)) => out.push(Record::Change(change)),
                Ok(Mapped::Truncate) => self.stats.add_truncate(),
                Ok(Mapped::Unmapped { table }) => match self.unmapped {
                    UnmappedTables::Count => self.stats.add_unmapped(&table),
                    UnmappedTables::Dlq => {
                        out.truncate(start);
                        return Err(RecordError::new(
                            Reason::UnmappedTable,
                            format!("table {table:?} is not in [[tables]]"),
                        ));
                    }
                },
                Err(e) => {
                    out.truncate(start);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}
