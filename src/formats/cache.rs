//! Cache events: what a service did to its cache (DESIGN.md section 2).

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use foldhash::fast::RandomState;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::dead_letter::{Reason, RecordError};
use crate::formats::json::timestamp::{epoch_number_ms, parse_rfc3339};
use crate::formats::json::{
    Field, Name, Scalar, array, optional, parse_object_with, required, scalar, string, text,
    uint_or_digits, wrong_type,
};
use crate::model::{CacheAction, CacheEvent, CacheOperation, Millis, is_glob};

/// Decodes one cache event. Without a `timestamp` the event time is the
/// Kafka timestamp `kafka_ts_ms`; without either the record is a
/// `missing_timestamp` error. Unknown fields are ignored. `entity_type` and
/// `entity_id` are checked (a string; a string or a number) but not kept:
/// nothing reads them.
pub fn decode_cache(value: &str, kafka_ts_ms: Option<Millis>) -> Result<CacheEvent, RecordError> {
    let event = parse_object_with(value, FieldsVisitor)?;
    let field = Field::new;
    let name = required(event.operation, field("operation"), string)?;
    let operation = CacheOperation::parse(&name).ok_or_else(|| {
        RecordError::new(
            Reason::UnknownOp,
            format!("{} has unknown operation {name:?}", field("operation")),
        )
    })?;
    let keys = keys(&event, operation)?;
    let ts_ms = match optional(event.timestamp, field("timestamp"), timestamp)? {
        Some(ts_ms) => ts_ms,
        None => kafka_ts_ms.ok_or_else(|| {
            RecordError::new(
                Reason::MissingTimestamp,
                "field \"timestamp\" is missing and the record has no Kafka timestamp",
            )
        })?,
    };
    optional(event.entity_type, field("entity_type"), string)?;
    optional(event.entity_id, field("entity_id"), text)?;
    Ok(CacheEvent {
        operation,
        keys,
        source_service: optional(event.source_service, field("source_service"), string)?
            .map(|name| service(&name)),
        version: optional(event.version, field("version"), uint_or_digits)?,
        ts_ms,
    })
}

/// The fields of a cache event that vigil reads, undecoded; the first
/// occurrence of a name counts, unknown names are skipped.
#[derive(Default)]
struct Fields<'a> {
    operation: Option<&'a RawValue>,
    cache_keys: Option<&'a RawValue>,
    cache_key: Option<&'a RawValue>,
    timestamp: Option<&'a RawValue>,
    entity_type: Option<&'a RawValue>,
    entity_id: Option<&'a RawValue>,
    source_service: Option<&'a RawValue>,
    version: Option<&'a RawValue>,
}

/// Reads [`Fields`] in one pass over the object.
struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        while let Some(Name(name)) = map.next_key()? {
            let slot = match name.as_ref() {
                "operation" => &mut fields.operation,
                "cache_keys" => &mut fields.cache_keys,
                "cache_key" => &mut fields.cache_key,
                "timestamp" => &mut fields.timestamp,
                "entity_type" => &mut fields.entity_type,
                "entity_id" => &mut fields.entity_id,
                "source_service" => &mut fields.source_service,
                "version" => &mut fields.version,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value = map.next_value()?;
            slot.get_or_insert(value);
        }
        Ok(fields)
    }
}

/// The keys of `cache_keys` then `cache_key`, each once, in that order.
fn keys(event: &Fields, operation: CacheOperation) -> Result<Vec<Arc<str>>, RecordError> {
    let listed = optional(event.cache_keys, Field::new("cache_keys"), array)?.unwrap_or_default();
    let single = event.cache_key.filter(|value| value.get() != "null");
    let mut keys: Vec<Arc<str>> = Vec::with_capacity(listed.len() + 1);
    let fields = (0..).map(|i| Field::new("cache_keys").at(i));
    for (value, field) in listed
        .into_iter()
        .zip(fields)
        .chain(single.map(|v| (v, Field::new("cache_key"))))
    {
        let key = key(value, field, operation)?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(RecordError::new(
            Reason::MissingField,
            "no cache key: fields \"cache_keys\" and \"cache_key\" are missing, null or empty",
        ));
    }
    Ok(keys)
}

/// One cache key: a non-empty string, a glob only in an invalidation.
fn key(value: &RawValue, field: Field, operation: CacheOperation) -> Result<Arc<str>, RecordError> {
    let key = string(value, field)?;
    if key.is_empty() {
        return Err(RecordError::new(
            Reason::InvalidKey,
            format!("{field} is an empty cache key"),
        ));
    }
    if operation.action() == CacheAction::Fill && is_glob(&key) {
        return Err(RecordError::new(
            Reason::InvalidKey,
            format!(
                "{field} is the glob {key:?}, but a {} writes keys: only invalidations may use globs",
                operation.as_str()
            ),
        ));
    }
    Ok(Arc::from(key.as_ref()))
}

/// `timestamp`: an epoch number (seconds below 1e11, else ms) or an RFC 3339
/// string.
fn timestamp(value: &RawValue, field: Field) -> Result<Millis, RecordError> {
    match scalar(value) {
        Scalar::Number(number) => epoch_number_ms(number),
        Scalar::Str(text) => parse_rfc3339(&text),
        _ => None,
    }
    .ok_or_else(|| {
        wrong_type(
            field,
            "epoch seconds, epoch milliseconds or an RFC 3339 date-time",
            value,
        )
    })
}

/// `source_service` names longer than this are not interned.
const MAX_INTERNED_SERVICE_BYTES: usize = 128;
/// Distinct `source_service` names a thread interns at most; past them,
/// each event allocates its own.
const MAX_INTERNED_SERVICES: usize = 4096;

thread_local! {
    /// The `source_service` names this thread's events have carried, each
    /// allocated once (a reader decodes its records on its own thread).
    static SERVICES: RefCell<HashSet<Arc<str>, RandomState>> = RefCell::default();
}

/// A `source_service` name, shared with the earlier events that carried it.
fn service(name: &str) -> Arc<str> {
    if name.len() > MAX_INTERNED_SERVICE_BYTES {
        return Arc::from(name);
    }
    SERVICES.with_borrow_mut(|names| {
        if let Some(shared) = names.get(name) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(name);
        if names.len() < MAX_INTERNED_SERVICES {
            names.insert(Arc::clone(&shared));
        }
        shared
    })
}

#[cfg(test)]
mod tests {
    use crate::formats::testing::data_file;
    use std::sync::Arc;

    use super::decode_cache;
    use crate::dead_letter::Reason;
    use crate::model::{CacheEvent, CacheOperation};

    const KAFKA_TS: i64 = 1714564806000;

    fn event(
        operation: CacheOperation,
        keys: &[&str],
        version: Option<u64>,
        ts_ms: i64,
    ) -> CacheEvent {
        CacheEvent {
            operation,
            keys: keys.iter().map(|&k| Arc::from(k)).collect(),
            source_service: None,
            version,
            ts_ms,
        }
    }

    #[test]
    fn fixture_decodes() {
        let text = data_file("formats/cache-events.ndjson");
        let decoded: Vec<CacheEvent> = text
            .lines()
            .map(|line| {
                decode_cache(line, Some(KAFKA_TS)).unwrap_or_else(|e| panic!("{line}: {e}"))
            })
            .collect();
        assert_eq!(
            decoded,
            [
                CacheEvent {
                    source_service: Some("orders-api".into()),
                    ..event(
                        CacheOperation::Invalidate,
                        &["order:42", "order-summary:42"],
                        Some(2),
                        1714564801000
                    )
                },
                event(CacheOperation::Delete, &["order:42"], None, 1714564802500),
                event(
                    CacheOperation::Update,
                    &["order:42", "order-list:7"],
                    Some(3),
                    1714564803123
                ),
                event(CacheOperation::Set, &["order:42"], Some(2), 1714564804000),
                event(CacheOperation::Fill, &["order:42"], None, 1714564805250),
                CacheEvent {
                    source_service: Some("admin".into()),
                    ..event(
                        CacheOperation::Invalidate,
                        &["order:*"],
                        None,
                        1714564800000
                    )
                },
                event(CacheOperation::Invalidate, &["product:9"], None, KAFKA_TS),
                event(CacheOperation::Set, &["product:9"], None, 1700000000123),
            ]
        );
    }

    #[test]
    fn bad_events() {
        let cases = [
            (
                "{\"operation\":\"invalidate\",",
                Reason::InvalidJson,
                "JSON",
            ),
            ("[1]", Reason::UnknownFormat, "array"),
            // Found by the cache fuzz target: valid JSON, past f64's range.
            ("1.5e14580", Reason::UnknownFormat, "number"),
            (
                r#"{"cache_key":"a"}"#,
                Reason::MissingField,
                "\"operation\"",
            ),
            (
                r#"{"operation":7,"cache_key":"a"}"#,
                Reason::WrongType,
                "\"operation\"",
            ),
            (
                r#"{"operation":"purge","cache_key":"a"}"#,
                Reason::UnknownOp,
                "\"purge\"",
            ),
            (
                r#"{"operation":"invalidate"}"#,
                Reason::MissingField,
                "cache_keys",
            ),
            (
                r#"{"operation":"invalidate","cache_keys":[]}"#,
                Reason::MissingField,
                "cache_keys",
            ),
            (
                r#"{"operation":"invalidate","cache_keys":null,"cache_key":null}"#,
                Reason::MissingField,
                "cache_key",
            ),
            (
                r#"{"operation":"invalidate","cache_key":""}"#,
                Reason::InvalidKey,
                "\"cache_key\"",
            ),
            (
                r#"{"operation":"invalidate","cache_keys":["a",""]}"#,
                Reason::InvalidKey,
                "\"cache_keys[1]\"",
            ),
            (
                r#"{"operation":"invalidate","cache_keys":["a",1]}"#,
                Reason::WrongType,
                "\"cache_keys[1]\"",
            ),
            (
                r#"{"operation":"invalidate","cache_keys":"a"}"#,
                Reason::WrongType,
                "\"cache_keys\"",
            ),
            (
                r#"{"operation":"fill","cache_key":"user:*"}"#,
                Reason::InvalidKey,
                "glob",
            ),
            (
                r#"{"operation":"set","cache_keys":["user:1","user:*"]}"#,
                Reason::InvalidKey,
                "\"cache_keys[1]\"",
            ),
            (
                r#"{"operation":"set","cache_key":"a","version":-1}"#,
                Reason::WrongType,
                "\"version\"",
            ),
            (
                r#"{"operation":"set","cache_key":"a","version":1.5}"#,
                Reason::WrongType,
                "\"version\"",
            ),
            (
                r#"{"operation":"set","cache_key":"a","version":"v2"}"#,
                Reason::WrongType,
                "\"version\"",
            ),
            (
                r#"{"operation":"set","cache_key":"a","entity_type":7}"#,
                Reason::WrongType,
                "\"entity_type\"",
            ),
            (
                r#"{"operation":"set","cache_key":"a","entity_id":{}}"#,
                Reason::WrongType,
                "\"entity_id\"",
            ),
            (
                r#"{"operation":"set","cache_key":"a","timestamp":"yesterday"}"#,
                Reason::WrongType,
                "yesterday",
            ),
            (
                r#"{"operation":"set","cache_key":"a","timestamp":{"s":1}}"#,
                Reason::WrongType,
                "\"timestamp\"",
            ),
            (
                r#"{"operation":"set","cache_key":"a","timestamp":true}"#,
                Reason::WrongType,
                "\"timestamp\"",
            ),
            (
                r#"{"operation":"set","cache_key":"a","timestamp":1e300}"#,
                Reason::WrongType,
                "\"timestamp\"",
            ),
        ];
        for (value, reason, mention) in cases {
            let error = decode_cache(value, Some(KAFKA_TS)).expect_err(value);
            assert_eq!(error.reason, reason, "{value}: {error}");
            assert!(error.message.contains(mention), "{value}: {error}");
        }
    }

    #[test]
    fn timestamp_falls_back_to_kafka() {
        let value = r#"{"operation":"delete","cache_key":"a","timestamp":null}"#;
        assert_eq!(decode_cache(value, Some(5)).map(|e| e.ts_ms), Ok(5));
        let error = decode_cache(value, None).expect_err("no time");
        assert_eq!(error.reason, Reason::MissingTimestamp);
        // A time in the record wins over the Kafka one.
        let value = r#"{"operation":"delete","cache_key":"a","timestamp":1700000000}"#;
        assert_eq!(
            decode_cache(value, Some(5)).map(|e| e.ts_ms),
            Ok(1700000000000)
        );
        assert_eq!(
            decode_cache(value, None).map(|e| e.ts_ms),
            Ok(1700000000000)
        );
    }

    #[test]
    fn source_services_are_shared() {
        let line = r#"{"operation":"set","cache_key":"a","source_service":"svc-shared"}"#;
        let first = decode_cache(line, Some(KAFKA_TS)).expect("decodes");
        let second = decode_cache(line, Some(KAFKA_TS)).expect("decodes");
        let (Some(a), Some(b)) = (first.source_service, second.source_service) else {
            panic!("no source_service");
        };
        assert!(Arc::ptr_eq(&a, &b));
        let long = format!(
            r#"{{"operation":"set","cache_key":"a","source_service":"{}"}}"#,
            "s".repeat(200)
        );
        let first = decode_cache(&long, Some(KAFKA_TS)).expect("decodes");
        let second = decode_cache(&long, Some(KAFKA_TS)).expect("decodes");
        assert_eq!(first, second);
        assert!(!Arc::ptr_eq(
            first.source_service.as_ref().expect("a service"),
            second.source_service.as_ref().expect("a service")
        ));
    }
}
