//! Cache events: what a service did to its cache (DESIGN.md section 2).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::dead_letter::{Reason, RecordError};
use crate::formats::json::timestamp::{epoch_number_ms, parse_rfc3339};
use crate::formats::json::{
    Field, Name, Plain, Scalar, array, digits, not_plain, once, optional, parse_object_with,
    required, scalar, string, text, uint_or_digits, wrong_type,
};
use crate::model::{
    self, CacheAction, CacheEvent, CacheKeys, CacheOperation, Millis, is_glob, push_key_once,
};

/// Decodes one cache event. Without a `timestamp` the event time is the
/// Kafka timestamp `kafka_ts_ms`; without either the record is a
/// `missing_timestamp` error. Unknown fields are ignored. `entity_type` and
/// `entity_id` are checked (a string; a string or a number) but not kept:
/// nothing reads them.
pub fn decode_cache(value: &str, kafka_ts_ms: Option<Millis>) -> Result<CacheEvent, RecordError> {
    match decode_one_pass(value, kafka_ts_ms) {
        Some(event) => Ok(event),
        None => decode_general(value, kafka_ts_ms),
    }
}

/// Decodes a cache event from its fields read as raw values first, then
/// each as its type: every record, with every error worded.
fn decode_general(value: &str, kafka_ts_ms: Option<Millis>) -> Result<CacheEvent, RecordError> {
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
    let ts_ms = event_time(
        optional(event.timestamp, field("timestamp"), timestamp)?,
        kafka_ts_ms,
    )?;
    optional(event.entity_type, field("entity_type"), string)?;
    optional(event.entity_id, field("entity_id"), text)?;
    Ok(CacheEvent {
        operation,
        keys,
        source_service: optional(event.source_service, field("source_service"), string)?
            .map(|name| model::Name::new(&name)),
        version: optional(event.version, field("version"), uint_or_digits)?,
        ts_ms,
    })
}

/// The event time: the event's own, else the Kafka timestamp.
fn event_time(ts_ms: Option<Millis>, kafka_ts_ms: Option<Millis>) -> Result<Millis, RecordError> {
    ts_ms.or(kafka_ts_ms).ok_or_else(|| {
        RecordError::new(
            Reason::MissingTimestamp,
            "field \"timestamp\" is missing and the record has no Kafka timestamp",
        )
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
fn keys(event: &Fields, operation: CacheOperation) -> Result<CacheKeys, RecordError> {
    let listed = optional(event.cache_keys, Field::new("cache_keys"), array)?.unwrap_or_default();
    let single = event.cache_key.filter(|value| value.get() != "null");
    let mut keys = CacheKeys::new();
    let fields = (0..).map(|i| Field::new("cache_keys").at(i));
    for (value, field) in listed
        .into_iter()
        .zip(fields)
        .chain(single.map(|v| (v, Field::new("cache_key"))))
    {
        let key = string(value, field)?;
        if let Some(fault) = KeyFault::of(&key, operation) {
            return Err(fault.error(&key, field, operation));
        }
        push_key_once(&mut keys, &key);
    }
    if keys.is_empty() {
        return Err(RecordError::new(
            Reason::MissingField,
            "no cache key: fields \"cache_keys\" and \"cache_key\" are missing, null or empty",
        ));
    }
    Ok(keys)
}

/// Why a text cannot be a cache key of an event.
#[derive(Debug, Clone, Copy)]
enum KeyFault {
    Empty,
    /// A glob in an event that writes keys: only invalidations may use them.
    GlobInFill,
}

impl KeyFault {
    /// What is wrong with `key` as a key of an event of `operation`, if
    /// anything: a key is a non-empty string, a glob only in an
    /// invalidation.
    fn of(key: &str, operation: CacheOperation) -> Option<Self> {
        if key.is_empty() {
            Some(KeyFault::Empty)
        } else if operation.action() == CacheAction::Fill && is_glob(key) {
            Some(KeyFault::GlobInFill)
        } else {
            None
        }
    }

    fn error(self, key: &str, field: Field, operation: CacheOperation) -> RecordError {
        let message = match self {
            KeyFault::Empty => format!("{field} is an empty cache key"),
            KeyFault::GlobInFill => format!(
                "{field} is the glob {key:?}, but a {} writes keys: only invalidations may use globs",
                operation.as_str()
            ),
        };
        RecordError::new(Reason::InvalidKey, message)
    }
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

// ---------------------------------------------------------------------------
// One pass

/// Decodes a cache event in one pass over the text, each field read as its
/// type as it comes (the general reader keeps the raw text of each field,
/// then parses it again).
///
/// Gives `None` whenever the record is anything but a well-formed event: a
/// wrong type, a field twice, a value the general reader would reject. The
/// caller then decodes the record with [`decode_general`], which words
/// every error; where this gives an event, it is the one the general reader
/// gives.
fn decode_one_pass(text: &str, kafka_ts_ms: Option<Millis>) -> Option<CacheEvent> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parts = deserializer.deserialize_map(PartsVisitor).ok()?;
    deserializer.end().ok()?;
    let Parts {
        operation,
        mut keys,
        cache_key,
        timestamp: ts,
        source_service,
        version,
        ..
    } = parts;
    let operation = operation?;
    if let Some(key) = cache_key.flatten() {
        push_key_once(&mut keys, &key);
    }
    // Each key checked once: a duplicate is the same text.
    if keys.is_empty() || keys.iter().any(|k| KeyFault::of(k, operation).is_some()) {
        return None;
    }
    let ts_ms = match ts.flatten() {
        Some(value) => Some(timestamp(value, Field::new("timestamp")).ok()?),
        None => None,
    };
    Some(CacheEvent {
        operation,
        keys,
        source_service: source_service.flatten().map(|name| model::Name::new(&name)),
        version: version.flatten(),
        ts_ms: event_time(ts_ms, kafka_ts_ms).ok()?,
    })
}

/// What [`decode_one_pass`] reads: each field at most once (`Some` when
/// present, with `None` inside for a `null`). The keys of `cache_keys` are
/// collected as they come, each once.
#[derive(Default)]
struct Parts<'a> {
    operation: Option<CacheOperation>,
    cache_keys: bool,
    keys: CacheKeys,
    cache_key: Option<Option<Cow<'a, str>>>,
    timestamp: Option<Option<&'a RawValue>>,
    entity_type: bool,
    entity_id: bool,
    source_service: Option<Option<Cow<'a, str>>>,
    version: Option<Option<u64>>,
}

/// Notes that a field was read; a second one stops the reader.
fn first<E: de::Error>(seen: &mut bool) -> Result<(), E> {
    if std::mem::replace(seen, true) {
        Err(not_plain())
    } else {
        Ok(())
    }
}

struct PartsVisitor;

impl<'de> Visitor<'de> for PartsVisitor {
    type Value = Parts<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a cache event")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut parts = Parts::default();
        while let Some(Name(name)) = map.next_key()? {
            match name.as_ref() {
                "operation" => {
                    let Name(name) = map.next_value()?;
                    let operation = CacheOperation::parse(&name).ok_or_else(not_plain)?;
                    once(&mut parts.operation, operation)?;
                }
                "cache_keys" => {
                    first(&mut parts.cache_keys)?;
                    map.next_value_seed(KeyList(&mut parts.keys))?;
                }
                "cache_key" => once(
                    &mut parts.cache_key,
                    map.next_value::<Option<Name>>()?.map(|n| n.0),
                )?,
                "timestamp" => once(&mut parts.timestamp, map.next_value()?)?,
                "entity_type" => {
                    first(&mut parts.entity_type)?;
                    map.next_value::<Option<Name>>()?;
                }
                "entity_id" => {
                    first(&mut parts.entity_id)?;
                    map.next_value::<Option<EntityId>>()?;
                }
                "source_service" => once(
                    &mut parts.source_service,
                    map.next_value::<Option<Name>>()?.map(|n| n.0),
                )?,
                "version" => {
                    // A non-negative integer, or a string of its digits.
                    let version = match map.next_value::<Option<Plain>>()? {
                        None | Some(Plain::Null) => None,
                        Some(Plain::Uint(n)) => Some(n),
                        Some(Plain::Str(s)) => Some(digits(&s).ok_or_else(not_plain)?),
                    };
                    once(&mut parts.version, version)?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(parts)
    }
}

/// The strings of `cache_keys` (or `null`), added to the keys each once.
struct KeyList<'k>(&'k mut CacheKeys);

impl<'de> DeserializeSeed<'de> for KeyList<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for KeyList<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of strings")
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(Name(key)) = seq.next_element()? {
            push_key_once(self.0, &key);
        }
        Ok(())
    }
}

/// An `entity_id`, checked and dropped: a string or a number.
struct EntityId;

impl<'de> de::Deserialize<'de> for EntityId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EntityIdVisitor)
    }
}

struct EntityIdVisitor;

impl Visitor<'_> for EntityIdVisitor {
    type Value = EntityId;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or a number")
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<EntityId, E> {
        Ok(EntityId)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<EntityId, E> {
        Ok(EntityId)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<EntityId, E> {
        Ok(EntityId)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<EntityId, E> {
        Ok(EntityId)
    }
}

#[cfg(test)]
mod tests {
    use crate::formats::testing::data_file;

    use super::{decode_cache, decode_general, decode_one_pass};
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
            keys: keys.iter().map(|&k| k.into()).collect(),
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

    /// Where the one-pass reader gives an event, it is the general reader's;
    /// it gives one for the usual shapes.
    #[test]
    fn one_pass_agrees_with_the_general_reader() {
        let fixture = data_file("formats/cache-events.ndjson");
        let usual = fixture.lines().chain([
            r#"{"cache_key":"t1:602:row","entity_id":"602","entity_type":"t1","operation":"update","source_service":"svc-t1","timestamp":1699999999.938,"version":1}"#,
            r#"{"cache_key":"t2:285:row","entity_id":"285","entity_type":"t2","operation":"update","source_service":"svc-t2","timestamp":"2023-11-14T22:13:19.938Z","version":2}"#,
            r#"{"cache_keys":["a","b","a"],"cache_key":"b","operation":"invalidate","timestamp":1699999999949}"#,
            r#" { "oper\u0061tion" : "set" , "cache_key" : "k\"1" , "source_service" : "svc\u002d1" , "version" : "12" } "#,
            r#"{"operation":"delete","cache_key":"a","timestamp":1699999999.9385}"#,
            r#"{"operation":"delete","cache_key":"a","timestamp":-1.5,"entity_id":-3}"#,
            r#"{"operation":"delete","cache_key":"a","entity_id":2.5e3,"other":[1,{"x":1e999}]}"#,
            r#"{"operation":"fill","cache_keys":null,"cache_key":"a","version":18446744073709551615}"#,
        ]);
        for line in usual {
            let general =
                decode_general(line, Some(KAFKA_TS)).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(
                decode_one_pass(line, Some(KAFKA_TS)),
                Some(general),
                "{line}"
            );
        }
        // Left to the general reader, which words the error or takes what
        // the one-pass reader does not.
        for line in [
            r#"{"operation":"set","cache_key":"a","version":18446744073709551616}"#,
            r#"{"operation":"set","cache_key":"a","version":-0}"#,
            r#"{"operation":"set","cache_key":"a","version":"-1"}"#,
            r#"{"operation":"set","cache_key":"a","version":1e2}"#,
            r#"{"operation":"set","cache_key":"a","entity_id":1e999}"#,
            r#"{"operation":"set","cache_key":"a","entity_id":true}"#,
            r#"{"operation":"set","cache_key":"a","cache_key":"b"}"#,
            r#"{"operation":"set","operation":"fill","cache_key":"a"}"#,
            r#"{"operation":"set","cache_key":"\ud800"}"#,
            r#"{"operation":"set","cache_keys":["a",null]}"#,
            r#"{"operation":"set","cache_key":"a","timestamp":"2024-13-01T00:00:00Z"}"#,
            r#"{"operation":"set","cache_key":"a","timestamp":1e300}"#,
            r#"{"operation":"set","cache_key":"a"} x"#,
            r#"{"operation":null,"cache_key":"a"}"#,
            r#"{"operation":"purge","cache_key":"a"}"#,
            r#"{"operation":"set","cache_key":""}"#,
            r#"{"operation":"set","cache_key":"a*"}"#,
            r#"{"operation":"set","cache_keys":[]}"#,
            r#"{"operation":"set","cache_key":"a","timestamp":null}"#,
        ] {
            assert_eq!(decode_one_pass(line, None), None, "{line}");
            let event = decode_general(line, None);
            assert_eq!(decode_cache(line, None), event, "{line}");
        }
    }

    #[test]
    fn source_services_are_held_once_unless_long() {
        let line = r#"{"operation":"set","cache_key":"a","source_service":"svc-shared"}"#;
        let first = decode_cache(line, Some(KAFKA_TS)).expect("decodes");
        let second = decode_cache(line, Some(KAFKA_TS)).expect("decodes");
        let (Some(a), Some(b)) = (first.source_service, second.source_service) else {
            panic!("the service is read");
        };
        assert!(a.is_held() && b.is_held(), "the service is held");
        assert!(
            std::ptr::eq(a.as_str(), b.as_str()),
            "one copy for the process"
        );
        let long = format!(
            r#"{{"operation":"set","cache_key":"a","source_service":"{}"}}"#,
            "s".repeat(300)
        );
        let first = decode_cache(&long, Some(KAFKA_TS)).expect("decodes");
        let second = decode_cache(&long, Some(KAFKA_TS)).expect("decodes");
        assert_eq!(first, second);
        assert!(
            first.source_service.is_some_and(|s| !s.is_held()),
            "a long service is not held for the process"
        );
    }
}
