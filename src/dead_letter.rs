//! What a dead letter is: an input record that could not be decoded or
//! mapped, with a reason code from a fixed set and a message for humans.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a record became a dead letter. The set is fixed so that metrics,
/// dashboards and `vigil replay --filter-reason` can rely on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The bytes are not valid UTF-8.
    InvalidUtf8,
    /// The text is not valid JSON (truncated, for example).
    InvalidJson,
    /// The record is larger than `inputs.max_record_bytes`.
    RecordTooLarge,
    /// Valid JSON, but not a record of any supported format: no format's
    /// marks fit it (the message lists its top-level fields), or it is a
    /// bare row where no flattened rows are declared.
    UnknownFormat,
    /// A field the format requires is absent.
    MissingField,
    /// A field has the wrong JSON type (a string where a number belongs...).
    WrongType,
    /// An operation code that the format does not define.
    UnknownOp,
    /// No primary key: no Kafka key, no `pk` columns in the row.
    MissingPk,
    /// A column that a key template or the version source needs is absent.
    MissingColumn,
    /// The version source gives no usable version for this record.
    MissingVersion,
    /// Neither the record nor its Kafka metadata carries an event time.
    MissingTimestamp,
    /// The record's table is not in `[[tables]]` (with
    /// `inputs.unmapped_tables = "dlq"`).
    UnmappedTable,
    /// A cache key that cannot be used (empty, a glob in a fill...).
    InvalidKey,
    /// A record in Confluent's schema registry framing whose schema id the
    /// schema registry does not know.
    UnknownSchema,
    /// A record in Confluent's Avro framing whose bytes do not decode with
    /// their writer schema (or whose writer schema does not parse).
    InvalidAvro,
    /// A record in Confluent's Protobuf framing whose bytes do not decode
    /// as the message its schema and message indexes name (or whose schema
    /// does not compile).
    InvalidProtobuf,
}

impl Reason {
    pub const ALL: [Reason; 16] = [
        Reason::InvalidUtf8,
        Reason::InvalidJson,
        Reason::RecordTooLarge,
        Reason::UnknownFormat,
        Reason::MissingField,
        Reason::WrongType,
        Reason::UnknownOp,
        Reason::MissingPk,
        Reason::MissingColumn,
        Reason::MissingVersion,
        Reason::MissingTimestamp,
        Reason::UnmappedTable,
        Reason::InvalidKey,
        Reason::UnknownSchema,
        Reason::InvalidAvro,
        Reason::InvalidProtobuf,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::RecordTooLarge => "record_too_large",
            Reason::UnknownFormat => "unknown_format",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::UnknownOp => "unknown_op",
            Reason::MissingPk => "missing_pk",
            Reason::MissingColumn => "missing_column",
            Reason::MissingVersion => "missing_version",
            Reason::MissingTimestamp => "missing_timestamp",
            Reason::UnmappedTable => "unmapped_table",
            Reason::InvalidKey => "invalid_key",
            Reason::UnknownSchema => "unknown_schema",
            Reason::InvalidAvro => "invalid_avro",
            Reason::InvalidProtobuf => "invalid_protobuf",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The stage that failed, in Kafka Connect's vocabulary
    /// (`__connect.errors.stage`).
    pub fn stage(self) -> Stage {
        match self {
            Reason::MissingPk
            | Reason::MissingColumn
            | Reason::MissingVersion
            | Reason::UnmappedTable
            | Reason::InvalidKey => Stage::Transformation,
            _ => Stage::ValueConverter,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The pipeline stage at which a record failed, named as Kafka Connect names
/// its stages so that existing DLQ tooling understands the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    ValueConverter,
    Transformation,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::ValueConverter => "VALUE_CONVERTER",
            Stage::Transformation => "TRANSFORMATION",
        }
    }
}

/// A decoding or mapping failure: the reason code and a message that names
/// the problem (the field, the expected type, the value found).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct RecordError {
    pub reason: Reason,
    pub message: String,
}

impl RecordError {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        RecordError {
            reason,
            message: message.into(),
        }
    }
}

/// Bytes of an oversized record kept in its dead letter.
pub const KEPT_PREFIX_BYTES: usize = 64 << 10;

/// Where a dead letter came from, with the original record unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of an input file: its bytes (only the first
    /// [`KEPT_PREFIX_BYTES`] when it was too large) and its full length.
    Line {
        file: std::sync::Arc<str>,
        line: u64,
        text: Vec<u8>,
        len: usize,
        /// The Kafka coordinates when the line was a `kcat -J` record.
        kafka: Option<Box<KafkaRecord>>,
    },
    /// A Kafka message.
    Kafka(KafkaRecord),
}

/// A Kafka record as it was consumed: what a DLQ record must carry unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp_ms: Option<i64>,
}

/// A record that could not be decoded or mapped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub error: RecordError,
    pub origin: Origin,
}

impl DeadLetter {
    /// The line of `dlq.ndjson` for a dead letter read from a file: file, line
    /// number, reason, stage, message and the original line (as text, or as
    /// base64 when it is not UTF-8), plus the Kafka coordinates of a `kcat`
    /// line.
    pub fn to_file_json(&self) -> serde_json::Value {
        let mut obj = serde_json::Map::new();
        match &self.origin {
            Origin::Line {
                file,
                line,
                text,
                len,
                kafka,
            } => {
                obj.insert("file".into(), file.as_ref().into());
                obj.insert("line".into(), (*line).into());
                if let Some(k) = kafka {
                    obj.insert("topic".into(), k.topic.as_str().into());
                    obj.insert("partition".into(), k.partition.into());
                    obj.insert("offset".into(), k.offset.into());
                }
                insert_bytes(&mut obj, "original", text);
                if text.len() < *len {
                    obj.insert("truncated".into(), true.into());
                    obj.insert("original_bytes".into(), (*len).into());
                }
            }
            Origin::Kafka(k) => {
                obj.insert("topic".into(), k.topic.as_str().into());
                obj.insert("partition".into(), k.partition.into());
                obj.insert("offset".into(), k.offset.into());
                if let Some(key) = &k.key {
                    insert_bytes(&mut obj, "key", key);
                }
                match &k.value {
                    Some(v) => insert_bytes(&mut obj, "original", v),
                    None => {
                        obj.insert("original".into(), serde_json::Value::Null);
                    }
                }
            }
        }
        obj.insert("reason".into(), self.error.reason.as_str().into());
        obj.insert("stage".into(), self.error.reason.stage().as_str().into());
        obj.insert("message".into(), self.error.message.as_str().into());
        serde_json::Value::Object(obj)
    }
}

/// Inserts bytes as `name` (UTF-8 text) or `name_base64`.
fn insert_bytes(obj: &mut serde_json::Map<String, serde_json::Value>, name: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => obj.insert(name.into(), text.into()),
        Err(_) => obj.insert(format!("{name}_base64"), base64(bytes).into()),
    };
}

/// Standard base64 with padding (RFC 4648).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_and_have_stages() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(r));
        }
        assert_eq!(Reason::UnmappedTable.stage().as_str(), "TRANSFORMATION");
        assert_eq!(Reason::InvalidJson.stage().as_str(), "VALUE_CONVERTER");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn file_dead_letters_keep_the_original_line() {
        let d = DeadLetter {
            error: RecordError::new(Reason::InvalidUtf8, "bad"),
            origin: Origin::Line {
                file: "in.ndjson".into(),
                line: 3,
                text: vec![0xff, b'a'],
                len: 10,
                kafka: None,
            },
        };
        let j = d.to_file_json();
        assert_eq!(j["file"], "in.ndjson");
        assert_eq!(j["line"], 3);
        assert_eq!(j["reason"], "invalid_utf8");
        assert_eq!(j["stage"], "VALUE_CONVERTER");
        assert_eq!(j["original_base64"], "/2E=");
        assert_eq!(j["truncated"], true);
        assert_eq!(j["original_bytes"], 10);
    }
}
