//! Dead-letter replay (`vigil replay`), the parts that do no I/O: where a
//! dead-lettered record came from (the headers of Kafka Connect or of Spring
//! Kafka), how a DLQ file line is read, the headers of a republished record,
//! and the tally of what a replay did.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::dead_letter::{KafkaRecord, Reason, RecordError};
use crate::formats;

/// The header that counts how often a record was replayed to its original
/// topic (the loop guard).
pub const REPLAY_COUNT: &str = "vigil.replay.count";
/// vigil's reason code header on its dead letters.
pub const REASON: &str = "vigil.error.reason";

/// Where a dead-lettered record was first read, and why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    /// vigil's reason code, or Kafka Connect's exception class when the
    /// record was dead-lettered by something else.
    pub reason: Option<String>,
    /// Times it was replayed to its original topic already.
    pub replays: u32,
}

/// Why a DLQ record cannot be replayed at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("no original topic: neither __connect.errors.topic nor kafka_dlt-original-topic")]
    NoTopic,
    #[error("header {header} is not {expected}")]
    BadHeader {
        header: &'static str,
        expected: &'static str,
    },
}

impl OriginError {
    /// The code a still-failing record is counted under.
    pub fn code(&self) -> &'static str {
        match self {
            OriginError::NoTopic => "no_original_topic",
            OriginError::BadHeader { .. } => "bad_dlq_header",
        }
    }
}

fn header<'h>(headers: &'h [(String, Option<Vec<u8>>)], name: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
}

fn text<'h>(
    headers: &'h [(String, Option<Vec<u8>>)],
    name: &'static str,
) -> Result<Option<&'h str>, OriginError> {
    header(headers, name)
        .map(|v| {
            std::str::from_utf8(v).map_err(|_| OriginError::BadHeader {
                header: name,
                expected: "UTF-8 text",
            })
        })
        .transpose()
}

/// A number in Kafka Connect's form (decimal text) or Spring's (big-endian
/// binary of `width` bytes; text is accepted too, as `kcat -J` prints it).
fn number(
    headers: &[(String, Option<Vec<u8>>)],
    name: &'static str,
    width: usize,
) -> Result<Option<i64>, OriginError> {
    let Some(v) = header(headers, name) else {
        return Ok(None);
    };
    let bad = OriginError::BadHeader {
        header: name,
        expected: "a number (decimal text or big-endian binary)",
    };
    if let Some(n) = std::str::from_utf8(v)
        .ok()
        .and_then(|t| t.trim().parse::<i64>().ok())
    {
        return Ok(Some(n));
    }
    match (width, v.len()) {
        (4, 4) => Ok(Some(i64::from(i32::from_be_bytes(
            v.try_into().expect("4 bytes"),
        )))),
        (8, 8) => Ok(Some(i64::from_be_bytes(v.try_into().expect("8 bytes")))),
        _ => Err(bad),
    }
}

/// Reads a DLQ record's origin from its headers: Kafka Connect's
/// `__connect.errors.*` (UTF-8 text) or Spring Kafka's `kafka_dlt-original-*`
/// (partition 4-byte and offset, timestamp 8-byte big-endian).
pub fn origin(headers: &[(String, Option<Vec<u8>>)]) -> Result<Origin, OriginError> {
    let connect = text(headers, "__connect.errors.topic")?;
    let (topic, partition, offset, timestamp_ms) = match connect {
        Some(topic) => (
            topic,
            number(headers, "__connect.errors.partition", 4)?,
            number(headers, "__connect.errors.offset", 8)?,
            None,
        ),
        None => (
            text(headers, "kafka_dlt-original-topic")?.ok_or(OriginError::NoTopic)?,
            number(headers, "kafka_dlt-original-partition", 4)?,
            number(headers, "kafka_dlt-original-offset", 8)?,
            number(headers, "kafka_dlt-original-timestamp", 8)?,
        ),
    };
    let reason = match text(headers, REASON)? {
        Some(r) => Some(r.to_string()),
        None => text(headers, "__connect.errors.exception.class.name")?
            .or(text(headers, "kafka_dlt-exception-fqcn")?)
            .map(str::to_string),
    };
    let replays = number(headers, REPLAY_COUNT, 4)?.unwrap_or(0);
    Ok(Origin {
        topic: topic.to_string(),
        partition: i32::try_from(partition.unwrap_or(0)).map_err(|_| OriginError::BadHeader {
            header: "partition",
            expected: "a partition number",
        })?,
        offset: offset.unwrap_or(-1),
        timestamp_ms,
        reason,
        replays: u32::try_from(replays.max(0)).unwrap_or(u32::MAX),
    })
}

/// The headers of a record republished to its original topic: the error
/// headers of Kafka Connect, Spring and vigil removed, the replay count set.
pub fn republished_headers(
    headers: &[(String, Option<Vec<u8>>)],
    replays: u32,
) -> Vec<(String, Option<Vec<u8>>)> {
    let error = |k: &str| {
        k.starts_with("__connect.errors.")
            || k.starts_with("kafka_dlt-")
            || k.starts_with("vigil.error.")
            || k == REPLAY_COUNT
    };
    let mut out: Vec<_> = headers.iter().filter(|(k, _)| !error(k)).cloned().collect();
    out.push((REPLAY_COUNT.into(), Some(replays.to_string().into_bytes())));
    out
}

/// A record as a DLQ holds it: what `kcat -J` wrote of a DLQ topic, or a
/// line of `vigil check`'s `dlq.ndjson` (whose `original` is the failed input
/// line; only `kcat -J` input lines carry the topic they came from).
pub fn dlq_file_record(line: &str, line_no: u64) -> Result<KafkaRecord, RecordError> {
    if let Some(k) = formats::parse_kcat_line(line) {
        return k.map(KafkaRecord::from);
    }
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
        RecordError::new(
            Reason::InvalidJson,
            format!("line {line_no} is neither a kcat -J record nor a dlq.ndjson line: {e}"),
        )
    })?;
    let original = v["original"].as_str().ok_or_else(|| {
        RecordError::new(
            Reason::MissingField,
            format!("line {line_no} has neither payload (kcat -J) nor original (dlq.ndjson)"),
        )
    })?;
    let reason = v["reason"].as_str().unwrap_or_default();
    match formats::parse_kcat_line(original) {
        Some(Ok(k)) => {
            let mut record = KafkaRecord::from(k);
            record.headers.push((
                "__connect.errors.topic".into(),
                Some(record.topic.clone().into_bytes()),
            ));
            record.headers.push((
                "__connect.errors.partition".into(),
                Some(record.partition.to_string().into_bytes()),
            ));
            record.headers.push((
                "__connect.errors.offset".into(),
                Some(record.offset.to_string().into_bytes()),
            ));
            record
                .headers
                .push((REASON.into(), Some(reason.as_bytes().to_vec())));
            record.topic = format!("dlq.ndjson:{line_no}");
            Ok(record)
        }
        Some(Err(e)) => Err(e),
        None => Err(RecordError::new(
            Reason::MissingField,
            format!(
                "line {line_no}: the failed line came from a plain file ({}), which says \
                 nothing of its stream; only kcat -J input lines can be replayed",
                v["file"].as_str().unwrap_or("?")
            ),
        )),
    }
}

/// Still-failing records of one reason.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Failing {
    pub count: u64,
    /// The DLQ positions (`partition:offset`, or the file line) of the first
    /// few.
    pub samples: Vec<String>,
}

/// Sample positions kept per reason.
const SAMPLES: usize = 5;

/// What a replay did, printed as JSON at its end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    /// DLQ records read (from the start position up to the end taken when the
    /// replay started).
    pub read: u64,
    /// Read before, by a replay that was stopped: not done again.
    pub resumed_past: u64,
    /// Not selected by `--filter-reason`.
    pub filtered: u64,
    pub replayed: u64,
    /// Not republished: replayed `--max-replays` times already.
    pub skipped_by_loop_guard: u64,
    /// Records that still fail, by reason.
    pub still_failing: BTreeMap<String, Failing>,
}

impl Tally {
    pub fn fail(&mut self, reason: &str, position: String) {
        let f = self.still_failing.entry(reason.to_string()).or_default();
        f.count += 1;
        if f.samples.len() < SAMPLES {
            f.samples.push(position);
        }
    }

    pub fn still_failing_total(&self) -> u64 {
        self.still_failing.values().map(|f| f.count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &[u8])]) -> Vec<(String, Option<Vec<u8>>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_vec())))
            .collect()
    }

    #[test]
    fn connect_headers_give_the_origin_and_vigils_reason() {
        let headers = h(&[
            ("__connect.errors.topic", b"dbserver1.public.users"),
            ("__connect.errors.partition", b"2"),
            ("__connect.errors.offset", b"1234"),
            (
                "__connect.errors.exception.class.name",
                b"vigil.UnmappedTable",
            ),
            (REASON, b"unmapped_table"),
        ]);
        let o = origin(&headers).unwrap();
        assert_eq!(
            (o.topic.as_str(), o.partition, o.offset),
            ("dbserver1.public.users", 2, 1234)
        );
        assert_eq!(o.reason.as_deref(), Some("unmapped_table"));
        assert_eq!(o.replays, 0);
    }

    #[test]
    fn spring_headers_are_big_endian_binary() {
        let headers = h(&[
            ("kafka_dlt-original-topic", b"cache-invalidation"),
            ("kafka_dlt-original-partition", &7i32.to_be_bytes()),
            ("kafka_dlt-original-offset", &9_876_543_210i64.to_be_bytes()),
            (
                "kafka_dlt-original-timestamp",
                &1_700_000_000_123i64.to_be_bytes(),
            ),
            ("kafka_dlt-exception-fqcn", b"org.example.BadEvent"),
            (REPLAY_COUNT, b"2"),
        ]);
        let o = origin(&headers).unwrap();
        assert_eq!(
            o,
            Origin {
                topic: "cache-invalidation".into(),
                partition: 7,
                offset: 9_876_543_210,
                timestamp_ms: Some(1_700_000_000_123),
                reason: Some("org.example.BadEvent".into()),
                replays: 2,
            }
        );
    }

    #[test]
    fn records_without_an_origin_or_with_bad_headers_are_named() {
        assert_eq!(origin(&h(&[("x", b"y")])), Err(OriginError::NoTopic));
        let bad = h(&[
            ("kafka_dlt-original-topic", b"t"),
            ("kafka_dlt-original-partition", b"\x01\x02"),
        ]);
        assert!(matches!(
            origin(&bad),
            Err(OriginError::BadHeader {
                header: "kafka_dlt-original-partition",
                ..
            })
        ));
    }

    #[test]
    fn republished_records_lose_the_error_headers_and_count_replays() {
        let headers = h(&[
            ("traceparent", b"00-abc"),
            ("__connect.errors.topic", b"t"),
            ("kafka_dlt-original-offset", b"1"),
            (REASON, b"invalid_json"),
            (REPLAY_COUNT, b"1"),
        ]);
        assert_eq!(
            republished_headers(&headers, 2),
            h(&[("traceparent", b"00-abc"), (REPLAY_COUNT, b"2")])
        );
    }

    #[test]
    fn dlq_ndjson_lines_of_kcat_inputs_are_replayable_and_plain_ones_are_not() {
        let kcat = r#"{"topic":"users","partition":1,"offset":5,"ts":1700000000000,"key":"{\"id\":1}","payload":"{\"op\":\"c\"}"}"#;
        let line = serde_json::json!({
            "file": "in.ndjson", "line": 3, "topic": "users", "partition": 1, "offset": 5,
            "original": kcat, "reason": "unmapped_table", "stage": "map", "message": "m"
        })
        .to_string();
        let r = dlq_file_record(&line, 9).unwrap();
        let o = origin(&r.headers).unwrap();
        assert_eq!((o.topic.as_str(), o.partition, o.offset), ("users", 1, 5));
        assert_eq!(o.reason.as_deref(), Some("unmapped_table"));
        assert_eq!(r.value.as_deref(), Some(&br#"{"op":"c"}"#[..]));
        let plain = serde_json::json!({"file": "in.ndjson", "line": 3, "original": "{}", "reason": "invalid_json"});
        let err = dlq_file_record(&plain.to_string(), 1).unwrap_err();
        assert!(err.message.contains("plain file"), "{}", err.message);
    }
}
