//! Lines written by `kcat -J`: a message with its Kafka metadata, the value
//! as a JSON string in `payload`.

use serde_json::value::RawValue;

use super::json::{
    Field, Object, Scalar, Top, array, parse, row, scalar, string, uint, wrong_type,
};
use crate::dead_letter::RecordError;
use crate::model::Millis;

/// One `kcat -J` line, owned (its key and payload are unescaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KcatRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The Kafka timestamp in ms; `None` when absent or negative (kcat
    /// writes -1 when the message has none).
    pub ts_ms: Option<Millis>,
    /// The message key; `None` when null.
    pub key: Option<String>,
    /// The message value; `None` for a tombstone.
    pub payload: Option<String>,
    /// The message headers, in order; a header value may be null.
    pub headers: Vec<(String, Option<String>)>,
}

/// Reads a line as a `kcat -J` record: an object with `topic`, `partition`,
/// `offset` and `payload`. Gives `None` for any other line (a bare message
/// value, which the caller decodes itself, or invalid JSON), and an error
/// when those fields or `ts`, `key`, `headers` have the wrong type.
///
/// Lines that do not mention both `"topic"` and `"payload"` are rejected
/// without parsing.
pub fn parse_kcat_line(line: &str) -> Option<Result<KcatRecord, RecordError>> {
    if !(line.contains("\"topic\"") && line.contains("\"payload\"")) {
        return None;
    }
    let Ok(Top::Object(record)) = parse(line) else {
        return None;
    };
    ["topic", "partition", "offset", "payload"]
        .iter()
        .all(|name| record.has(name))
        .then(|| read(&record))
}

fn read(record: &Object) -> Result<KcatRecord, RecordError> {
    Ok(KcatRecord {
        topic: record.required("topic", string)?.into_owned(),
        partition: record.required("partition", |value, field| {
            i32::try_from(uint(value, field)?)
                .map_err(|_| wrong_type(field, "a partition number", value))
        })?,
        offset: record.required("offset", |value, field| {
            i64::try_from(uint(value, field)?).map_err(|_| wrong_type(field, "an offset", value))
        })?,
        ts_ms: record.field("ts", timestamp)?.flatten(),
        key: record.field("key", string)?.map(Into::into),
        payload: record.field("payload", string)?.map(Into::into),
        headers: record.field("headers", headers)?.unwrap_or_default(),
    })
}

/// `ts`: ms since the epoch; kcat writes -1 when the message has none.
fn timestamp(value: &RawValue, field: Field) -> Result<Option<Millis>, RecordError> {
    match scalar(value) {
        Scalar::Number(number) => number.parse::<Millis>().ok(),
        _ => None,
    }
    .map(|ts| (ts >= 0).then_some(ts))
    .ok_or_else(|| wrong_type(field, "a time in ms since the epoch", value))
}

/// kcat's flat `["k1", "v1", "k2", null]`, an array of `[key, value]` pairs,
/// or an object.
fn headers(value: &RawValue, field: Field) -> Result<Vec<(String, Option<String>)>, RecordError> {
    let header_value = |value: &RawValue, field| match scalar(value) {
        Scalar::Null => Ok(None),
        _ => string(value, field).map(|s| Some(s.into_owned())),
    };
    if value.get().starts_with('{') {
        return row(value, field)?
            .into_iter()
            .map(|(name, value)| Ok((name.into_owned(), header_value(value, field)?)))
            .collect();
    }
    let items = array(value, field)?;
    if items.iter().all(|item| item.get().starts_with('[')) {
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match array(item, field.at(i))?.as_slice() {
                [name, value] => Ok((
                    string(name, field.at(i))?.into_owned(),
                    header_value(value, field.at(i))?,
                )),
                _ => Err(wrong_type(field.at(i), "a [key, value] pair", item)),
            })
            .collect()
    } else if items.len() % 2 == 0 {
        items
            .chunks_exact(2)
            .enumerate()
            .map(|(i, pair)| {
                Ok((
                    string(pair[0], field.at(2 * i))?.into_owned(),
                    header_value(pair[1], field.at(2 * i + 1))?,
                ))
            })
            .collect()
    } else {
        Err(wrong_type(
            field,
            "an even-length array of keys and values",
            value,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::decode_cache;
    use super::super::testing::{change, data_file};
    use super::{KcatRecord, parse_kcat_line};
    use crate::dead_letter::Reason;
    use crate::model::Op;

    #[test]
    fn fixture_lines() {
        let text = data_file("formats/kcat.ndjson");
        let records: Vec<Option<KcatRecord>> = text
            .lines()
            .map(|line| parse_kcat_line(line).map(|r| r.unwrap_or_else(|e| panic!("{line}: {e}"))))
            .collect();
        assert_eq!(records.len(), 6);

        let first = records[0].as_ref().expect("a kcat line");
        assert_eq!(
            (
                first.topic.as_str(),
                first.partition,
                first.offset,
                first.ts_ms
            ),
            ("shop.public.orders", 2, 1337, Some(1714564800200))
        );
        assert_eq!(first.key.as_deref(), Some(r#"{"id":42}"#));
        assert_eq!(
            first.headers,
            [
                ("trace-id".to_owned(), Some("4bf92f3577b34da6".to_owned())),
                ("retry".to_owned(), None)
            ]
        );
        let payload = first.payload.as_deref().expect("a payload");
        let create = change(payload);
        assert_eq!(create.op, Op::Create);
        assert_eq!(create.pos.lsn, Some(38117256));

        let second = records[1].as_ref().expect("a kcat line");
        assert_eq!(second.key, None);
        assert!(second.headers.is_empty());
        let event = decode_cache(second.payload.as_deref().expect("a payload"), second.ts_ms);
        assert_eq!(event.map(|e| e.ts_ms), Ok(1714564801000));

        let tombstone = records[2].as_ref().expect("a kcat line");
        assert_eq!(tombstone.payload, None);
        assert_eq!(tombstone.offset, 1338);

        let no_time = records[3].as_ref().expect("a kcat line");
        assert_eq!(no_time.ts_ms, None);
        assert_eq!(
            no_time.headers,
            [("source".to_owned(), Some("replay".to_owned()))]
        );

        let object_headers = records[4].as_ref().expect("a kcat line");
        assert_eq!(object_headers.ts_ms, None);
        assert_eq!(object_headers.payload.as_deref(), Some(""));
        assert_eq!(
            object_headers.headers,
            [
                ("source".to_owned(), Some("backfill".to_owned())),
                ("empty".to_owned(), None)
            ]
        );

        assert_eq!(records[5], None);
    }

    #[test]
    fn other_lines_are_not_kcat() {
        for line in [
            r#"{"op":"c","after":{"topic":"x","payload":"y"}}"#,
            r#"{"id":1,"topic":"news","payload":"{}"}"#,
            r#"{"topic":"t","partition":0,"offset":1,"payload":"x""#,
            r#"["topic","payload"]"#,
            "",
        ] {
            assert_eq!(parse_kcat_line(line), None, "{line}");
        }
    }

    #[test]
    fn wrong_types() {
        let cases = [
            (
                r#"{"topic":1,"partition":0,"offset":1,"payload":"x"}"#,
                "\"topic\"",
            ),
            (
                r#"{"topic":"t","partition":-1,"offset":1,"payload":"x"}"#,
                "\"partition\"",
            ),
            (
                r#"{"topic":"t","partition":4294967296,"offset":1,"payload":"x"}"#,
                "\"partition\"",
            ),
            (
                r#"{"topic":"t","partition":0,"offset":"1","payload":"x"}"#,
                "\"offset\"",
            ),
            (
                r#"{"topic":"t","partition":0,"offset":1,"payload":{"id":1}}"#,
                "\"payload\"",
            ),
            (
                r#"{"topic":"t","partition":0,"offset":1,"payload":"x","key":5}"#,
                "\"key\"",
            ),
            (
                r#"{"topic":"t","partition":0,"offset":1,"payload":"x","ts":"now"}"#,
                "\"ts\"",
            ),
            (
                r#"{"topic":"t","partition":0,"offset":1,"payload":"x","headers":["k"]}"#,
                "\"headers\"",
            ),
            (
                r#"{"topic":"t","partition":0,"offset":1,"payload":"x","headers":[1,"v"]}"#,
                "\"headers[0]\"",
            ),
            (
                r#"{"topic":"t","partition":0,"offset":1,"payload":"x","headers":[["k"]]}"#,
                "\"headers[0]\"",
            ),
            (
                r#"{"topic":"t","partition":0,"offset":1,"payload":"x","headers":{"k":1}}"#,
                "\"headers\"",
            ),
            (
                r#"{"topic":"t","partition":0,"offset":1,"payload":"x","headers":"k=v"}"#,
                "\"headers\"",
            ),
        ];
        for (line, mention) in cases {
            let error = parse_kcat_line(line).expect("a kcat line").expect_err(line);
            assert_eq!(error.reason, Reason::WrongType, "{line}: {error}");
            assert!(error.message.contains(mention), "{line}: {error}");
        }
        let missing = r#"{"topic":"t","partition":null,"offset":1,"payload":"x"}"#;
        let error = parse_kcat_line(missing)
            .expect("a kcat line")
            .expect_err(missing);
        assert_eq!(error.reason, Reason::MissingField);
    }
}
