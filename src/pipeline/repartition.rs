//! What crosses the repartition topic between the two stages of a
//! scaled-out deployment (DESIGN.md section 9): the key-level items the
//! router would otherwise hand to its own key workers, and the watermark
//! progress of each stage-one producer.
//!
//! Stage one publishes every item to the partition of its cache key (a glob
//! invalidation to every partition) and, after the items routed before it,
//! its watermark to every partition. Stage two applies the items of its
//! partitions to its key workers, scoped by repartition partition, and
//! advances its watermark to the least mark of the producers it hears from.
//!
//! A record's value is `[FORMAT_VERSION][bincode]`, so a later release can
//! read, or refuse clearly, what an older one wrote.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{OutputError, WorkItem};
use crate::detect::key::{Fill, Invalidation};
use crate::mapping::Change;
use crate::model::{CacheKey, Millis};

/// The leading byte of every repartition record's value.
pub const FORMAT_VERSION: u8 = 1;

/// A key-level item: what a key worker applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyedItem {
    /// A change's obligation for one of its cache keys.
    Change { key: CacheKey, change: Arc<Change> },
    /// An invalidation of one cache key.
    Invalidation { key: CacheKey, inv: Invalidation },
    /// A glob invalidation: every partition gets it.
    Wildcard {
        pattern: Arc<str>,
        inv: Invalidation,
    },
    /// A fill of one cache key.
    Fill { key: CacheKey, fill: Fill },
}

impl KeyedItem {
    /// The cache key it is about; `None` for a glob, which is about every
    /// key it matches.
    pub fn key(&self) -> Option<&str> {
        match self {
            KeyedItem::Change { key, .. }
            | KeyedItem::Invalidation { key, .. }
            | KeyedItem::Fill { key, .. } => Some(key),
            KeyedItem::Wildcard { .. } => None,
        }
    }

    /// The event time of the record behind it.
    pub fn event_ts(&self) -> Millis {
        match self {
            KeyedItem::Change { change, .. } => change.commit_ts_ms,
            KeyedItem::Invalidation { inv, .. } | KeyedItem::Wildcard { inv, .. } => inv.ts,
            KeyedItem::Fill { fill, .. } => fill.ts,
        }
    }

    /// The item as the router had it, for publishing. `None` for an entity
    /// item, which stays with stage one.
    pub(super) fn from_work(item: WorkItem) -> Option<Self> {
        Some(match item {
            WorkItem::Entity { .. } => return None,
            WorkItem::Change { key, change, .. } => KeyedItem::Change { key, change },
            WorkItem::Invalidation { key, inv, .. } => KeyedItem::Invalidation { key, inv },
            WorkItem::Wildcard { pattern, inv, .. } => KeyedItem::Wildcard { pattern, inv },
            WorkItem::Fill { key, fill, .. } => KeyedItem::Fill { key, fill },
        })
    }

    /// The item for a key worker, its state scoped by `scope`.
    pub(super) fn into_work(self, scope: i32) -> WorkItem {
        match self {
            KeyedItem::Change { key, change } => WorkItem::Change { key, change, scope },
            KeyedItem::Invalidation { key, inv } => WorkItem::Invalidation { key, inv, scope },
            KeyedItem::Wildcard { pattern, inv } => WorkItem::Wildcard {
                pattern,
                inv,
                scope,
            },
            KeyedItem::Fill { key, fill } => WorkItem::Fill { key, fill, scope },
        }
    }
}

/// One record of the repartition topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transfer {
    Item(KeyedItem),
    /// Stage-one producer `producer` has routed everything before this
    /// record, and its watermark (allowed lateness already taken off) is
    /// `watermark`.
    Mark {
        producer: Arc<str>,
        watermark: Millis,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("empty repartition record")]
    Empty,
    #[error(
        "repartition record of format version {0}, this release reads version {FORMAT_VERSION} \
         (run the same release in both stages)"
    )]
    Version(u8),
    #[error("repartition record does not decode: {0}")]
    Decode(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

impl Transfer {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(FORMAT_VERSION);
        bincode::serde::encode_into_std_write(self, &mut out, config())
            .expect("writing into a Vec cannot fail and the items always serialize");
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, TransferError> {
        let (&version, rest) = bytes.split_first().ok_or(TransferError::Empty)?;
        if version != FORMAT_VERSION {
            return Err(TransferError::Version(version));
        }
        let (transfer, read) = bincode::serde::decode_from_slice(rest, config())
            .map_err(|e| TransferError::Decode(e.to_string()))?;
        if read != rest.len() {
            return Err(TransferError::Decode(format!(
                "{} bytes left after the record",
                rest.len() - read
            )));
        }
        Ok(transfer)
    }
}

/// Where stage one's router sends key-level items instead of its own key
/// workers.
pub trait Repartition: Send {
    /// Publishes `items` (each to the partition of its key, a glob to every
    /// partition), then, if `mark` is given, this producer's watermark to
    /// every partition, after them. Acknowledged by the outputs' next
    /// flush, before the input positions that produced them are committed.
    fn publish(&mut self, items: &[KeyedItem], mark: Option<Millis>) -> Result<(), OutputError>;
}

/// Key-level items read from one repartition partition, for stage two.
#[derive(Debug)]
pub struct Repartitioned {
    /// The repartition partition: the scope of their key state.
    pub scope: i32,
    pub items: Vec<KeyedItem>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::TableRules;
    use crate::model::{Op, Provenance, Version};

    fn evidence() -> Provenance {
        Provenance {
            topic: "cache".into(),
            partition: 2,
            offset: 41,
            from_file: false,
        }
    }

    fn items() -> Vec<Transfer> {
        let change = Change {
            id: 7,
            entity: 9,
            table: "public.users".into(),
            pk: r#"{"id":1}"#.into(),
            op: Op::Update,
            version: Some(Version::new(3, 1)),
            commit_ts_ms: 1_700_000_000_000,
            tx_id: Some("tx-1".into()),
            tx_order: Some(2),
            row_hash: 11,
            keys: ["user:1".into(), "user:1:profile".into()]
                .into_iter()
                .collect(),
            rules: TableRules {
                deadline_ms: 1_000,
                contiguous: true,
                row_version: false,
            },
            provenance: evidence(),
        };
        let inv = Invalidation {
            ts: 1_700_000_000_500,
            version: Some(3),
            service: Some("users-api".into()),
            evidence: evidence(),
        };
        vec![
            Transfer::Item(KeyedItem::Change {
                key: "user:1".into(),
                change: Arc::new(change),
            }),
            Transfer::Item(KeyedItem::Invalidation {
                key: "user:1".into(),
                inv: inv.clone(),
            }),
            Transfer::Item(KeyedItem::Wildcard {
                pattern: "user:*".into(),
                inv,
            }),
            Transfer::Item(KeyedItem::Fill {
                key: "user:1".into(),
                fill: Fill {
                    id: 5,
                    ts: 1_700_000_000_900,
                    version: None,
                    service: None,
                    evidence: evidence(),
                    reported: None,
                },
            }),
            Transfer::Mark {
                producer: "stage-one-a".into(),
                watermark: 1_699_999_998_000,
            },
        ]
    }

    #[test]
    fn every_transfer_decodes_to_what_was_encoded() {
        for t in items() {
            let bytes = t.encode();
            assert_eq!(bytes[0], FORMAT_VERSION);
            assert_eq!(Transfer::decode(&bytes).unwrap(), t);
        }
    }

    #[test]
    fn other_versions_and_damaged_records_are_refused() {
        let mut bytes = items()[0].encode();
        assert!(matches!(Transfer::decode(&[]), Err(TransferError::Empty)));
        let mut newer = bytes.clone();
        newer[0] = FORMAT_VERSION + 1;
        assert!(matches!(
            Transfer::decode(&newer),
            Err(TransferError::Version(v)) if v == FORMAT_VERSION + 1
        ));
        bytes.truncate(bytes.len() / 2);
        assert!(matches!(
            Transfer::decode(&bytes),
            Err(TransferError::Decode(_))
        ));
        let mut longer = items()[1].encode();
        longer.push(0);
        assert!(matches!(
            Transfer::decode(&longer),
            Err(TransferError::Decode(_))
        ));
    }

    #[test]
    fn items_go_back_to_work_in_the_given_scope() {
        for t in items() {
            let Transfer::Item(item) = t else { continue };
            let ts = item.event_ts();
            let work = item.clone().into_work(4);
            assert_eq!(work.event_ts(), ts);
            assert_eq!(KeyedItem::from_work(work), Some(item));
        }
    }
}
