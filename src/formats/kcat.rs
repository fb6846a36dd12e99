//! Lines written by `kcat -J`: a message with its Kafka metadata, the value
//! as a JSON string in `payload`.

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::dead_letter::{KafkaRecord, RecordError};
use crate::formats::json::unescape::{escape, unescape};
use crate::formats::json::{
    Field, Nullable, Scalar, array, optional, required, row, scalar, string, uint, wrong_type,
};
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

/// One `kcat -J` line, borrowed: from the line, and for the topic, key and
/// payload from the [`KcatBuffers`] they were unescaped into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KcatLine<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The Kafka timestamp in ms; `None` when absent or negative.
    pub ts_ms: Option<Millis>,
    /// The message key; `None` when null.
    pub key: Option<&'a str>,
    /// The message value; `None` for a tombstone.
    pub payload: Option<&'a str>,
    /// The message headers, in order; a header value may be null.
    pub headers: Headers<'a>,
}

/// Message headers, names and values unescaped (borrowed when they have no
/// escapes), in order; a header value may be null.
pub type Headers<'a> = Vec<(Cow<'a, str>, Option<Cow<'a, str>>)>;

impl KcatLine<'_> {
    /// An owned copy, for what outlives the line (a dead letter, a replay).
    pub fn to_record(&self) -> KcatRecord {
        KcatRecord {
            topic: self.topic.to_owned(),
            partition: self.partition,
            offset: self.offset,
            ts_ms: self.ts_ms,
            key: self.key.map(str::to_owned),
            payload: self.payload.map(str::to_owned),
            headers: (self.headers.iter())
                .map(|(name, value)| {
                    (
                        name.clone().into_owned(),
                        value.clone().map(Cow::into_owned),
                    )
                })
                .collect(),
        }
    }
}

/// What a reader of `kcat -J` lines keeps from one line to the next: the
/// buffers that a line's topic, key and payload are unescaped into, so that
/// reading a line allocates nothing once they are large enough (but for the
/// list of its headers, when it has some).
#[derive(Debug, Default)]
pub struct KcatBuffers {
    topic: String,
    key: String,
    payload: String,
}

impl KcatBuffers {
    /// Reads a line as a `kcat -J` record, as [`parse_kcat_line`] does, its
    /// strings borrowed from the line or unescaped into these buffers.
    pub fn parse<'a>(&'a mut self, line: &'a str) -> Option<Result<KcatLine<'a>, RecordError>> {
        if !(mentions(line, &TOPIC) && mentions(line, &PAYLOAD)) {
            return None;
        }
        let fields = match scan(line, self) {
            Some(fields) => fields,
            None => serde_json::from_str::<Fields>(line).ok()?,
        };
        let complete = fields.topic.is_some()
            && fields.partition.is_some()
            && fields.offset.is_some()
            && fields.payload.is_some();
        complete.then(|| read(&fields, self))
    }
}

/// The names every `kcat -J` line has, searched for in each line before it
/// is parsed (memchr's searchers are several times as fast as `str::contains`
/// over a line that is not one, such as a Debezium record).
static TOPIC: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"topic\""));
static PAYLOAD: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"payload\""));

fn mentions(line: &str, name: &Finder) -> bool {
    name.find(line.as_bytes()).is_some()
}

/// Reads a line as a `kcat -J` record: an object with `topic`, `partition`,
/// `offset` and `payload`. Gives `None` for any other line (a bare message
/// value, which the caller decodes itself, or invalid JSON), and an error
/// when those fields or `ts`, `key`, `headers` have the wrong type.
///
/// Lines that do not mention both `"topic"` and `"payload"` are rejected
/// without parsing.
pub fn parse_kcat_line(line: &str) -> Option<Result<KcatRecord, RecordError>> {
    KcatBuffers::default()
        .parse(line)
        .map(|read| read.map(|line| line.to_record()))
}

/// The fields of a `kcat -J` line that are read: the first of each name,
/// `Some` when present (even as `null`).
#[derive(Default)]
struct Fields<'a> {
    topic: Option<Value<'a>>,
    partition: Option<&'a RawValue>,
    offset: Option<&'a RawValue>,
    ts: Option<&'a RawValue>,
    key: Option<Value<'a>>,
    payload: Option<Value<'a>>,
    headers: Option<&'a RawValue>,
}

/// The value of a field that is unescaped into a buffer of [`KcatBuffers`]
/// (topic, key, payload).
#[derive(Clone, Copy)]
enum Value<'a> {
    /// Undecoded: any JSON value, a string still quoted and escaped.
    Raw(&'a RawValue),
    /// A string's content, part of the line (it has no escapes).
    Plain(&'a str),
    /// A string, already unescaped into the field's buffer.
    Buffered,
}

impl<'de> Deserialize<'de> for Value<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <&RawValue>::deserialize(deserializer).map(Value::Raw)
    }
}

impl Nullable for Value<'_> {
    fn is_null(self) -> bool {
        matches!(self, Value::Raw(raw) if raw.is_null())
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a kcat -J record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        while let Some(Name(slot)) = map.next_key()? {
            match slot {
                Some(Slot::Topic) => first(&mut map, &mut fields.topic)?,
                Some(Slot::Partition) => first(&mut map, &mut fields.partition)?,
                Some(Slot::Offset) => first(&mut map, &mut fields.offset)?,
                Some(Slot::Ts) => first(&mut map, &mut fields.ts)?,
                Some(Slot::Key) => first(&mut map, &mut fields.key)?,
                Some(Slot::Payload) => first(&mut map, &mut fields.payload)?,
                Some(Slot::Headers) => first(&mut map, &mut fields.headers)?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

/// Reads the next value into `slot` unless a value of that name came first.
fn first<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
    slot: &mut Option<T>,
) -> Result<(), A::Error> {
    match slot {
        Some(_) => map.next_value::<IgnoredAny>().map(drop),
        None => map.next_value().map(|value| *slot = Some(value)),
    }
}

/// Reads the fields of a line as serde_json would, in one pass over the
/// topic, key and payload strings: each is unescaped into its buffer while
/// it is checked, instead of being checked by serde_json then unescaped.
/// Other values are left to serde_json. Gives `None` for anything it does
/// not read exactly as serde_json would (escapes in a name, a lone surrogate,
/// invalid JSON...): the caller then parses the line with serde_json.
fn scan<'a>(line: &'a str, buffers: &mut KcatBuffers) -> Option<Fields<'a>> {
    let bytes = line.as_bytes();
    let mut fields = Fields::default();
    let mut at = whitespace(bytes, 0);
    (bytes.get(at) == Some(&b'{')).then_some(())?;
    at = whitespace(bytes, at + 1);
    if bytes.get(at) != Some(&b'}') {
        loop {
            (bytes.get(at) == Some(&b'"')).then_some(())?;
            let end = at + 1 + memchr::memchr2(b'"', b'\\', &bytes[at + 1..])?;
            let name = &line[at + 1..end];
            (bytes[end] == b'"' && !has_control(name)).then_some(())?;
            at = whitespace(bytes, end + 1);
            (bytes.get(at) == Some(&b':')).then_some(())?;
            at = whitespace(bytes, at + 1);
            let slot = Slot::of(name);
            let text = match slot {
                Some(Slot::Topic) if fields.topic.is_none() => {
                    Some((&mut fields.topic, &mut buffers.topic))
                }
                Some(Slot::Key) if fields.key.is_none() => {
                    Some((&mut fields.key, &mut buffers.key))
                }
                Some(Slot::Payload) if fields.payload.is_none() => {
                    Some((&mut fields.payload, &mut buffers.payload))
                }
                _ => None,
            };
            match text {
                Some((field, buffer)) if bytes.get(at) == Some(&b'"') => {
                    let (value, end) = string_at(line, at, buffer)?;
                    *field = Some(value);
                    at = end;
                }
                _ => {
                    let mut values =
                        serde_json::Deserializer::from_str(&line[at..]).into_iter::<&RawValue>();
                    let value = values.next()?.ok()?;
                    at += values.byte_offset();
                    let raw = match slot {
                        Some(Slot::Partition) => &mut fields.partition,
                        Some(Slot::Offset) => &mut fields.offset,
                        Some(Slot::Ts) => &mut fields.ts,
                        Some(Slot::Headers) => &mut fields.headers,
                        Some(Slot::Topic) => {
                            fields.topic.get_or_insert(Value::Raw(value));
                            &mut None
                        }
                        Some(Slot::Key) => {
                            fields.key.get_or_insert(Value::Raw(value));
                            &mut None
                        }
                        Some(Slot::Payload) => {
                            fields.payload.get_or_insert(Value::Raw(value));
                            &mut None
                        }
                        None => &mut None,
                    };
                    raw.get_or_insert(value);
                }
            }
            at = whitespace(bytes, at);
            match bytes.get(at) {
                Some(b',') => at = whitespace(bytes, at + 1),
                Some(b'}') => break,
                _ => return None,
            }
        }
    }
    (whitespace(bytes, at + 1) == bytes.len()).then_some(fields)
}

/// The position of the first byte from `at` that is not JSON whitespace.
fn whitespace(bytes: &[u8], at: usize) -> usize {
    at + (bytes.get(at..).unwrap_or_default())
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .count()
}

/// Whether a text has a control character, which a JSON string must escape.
fn has_control(text: &str) -> bool {
    text.bytes().fold(false, |found, b| found | (b < 0x20))
}

/// Reads the string literal at `at` (its opening quote): its content, part of
/// the line when it has no escapes, else unescaped into `buffer`; and where
/// the literal ends. `None` when it is not a valid JSON string or has a lone
/// surrogate.
fn string_at<'a>(line: &'a str, at: usize, buffer: &mut String) -> Option<(Value<'a>, usize)> {
    let bytes = line.as_bytes();
    let mut from = at + 1;
    let mut escaped = false;
    loop {
        // Parts between escapes are short in a JSON payload: a loop beats
        // a vectorised search that starts anew at each.
        let end = from
            + bytes[from..]
                .iter()
                .position(|&b| SPECIAL[usize::from(b)])?;
        let part = &line[from..end];
        match bytes[end] {
            b'"' if !escaped => return Some((Value::Plain(part), end + 1)),
            b'"' => {
                buffer.push_str(part);
                return Some((Value::Buffered, end + 1));
            }
            b'\\' => {
                if !escaped {
                    buffer.clear();
                    escaped = true;
                }
                buffer.push_str(part);
                let (c, len) = escape(&line[end..]).ok()?;
                buffer.push(c);
                from = end + len;
            }
            _ => return None,
        }
    }
}

/// The bytes that end a part of a JSON string: its closing quote, an escape,
/// and the control characters it may not hold.
const SPECIAL: [bool; 256] = {
    let mut special = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        special[b] = true;
        b += 1;
    }
    special[b'"' as usize] = true;
    special[b'\\' as usize] = true;
    special
};

/// The fields of [`Fields`].
enum Slot {
    Topic,
    Partition,
    Offset,
    Ts,
    Key,
    Payload,
    Headers,
}

/// An object key: the field of [`Fields`] it names, if any (compared
/// unescaped, without keeping it).
struct Name(Option<Slot>);

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(NameVisitor)
    }
}

struct NameVisitor;

impl Visitor<'_> for NameVisitor {
    type Value = Name;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(Name(Slot::of(name)))
    }
}

impl Slot {
    /// The field of [`Fields`] a name (unescaped) is.
    fn of(name: &str) -> Option<Slot> {
        match name {
            "topic" => Some(Slot::Topic),
            "partition" => Some(Slot::Partition),
            "offset" => Some(Slot::Offset),
            "ts" => Some(Slot::Ts),
            "key" => Some(Slot::Key),
            "payload" => Some(Slot::Payload),
            "headers" => Some(Slot::Headers),
            _ => None,
        }
    }
}

fn read<'a>(
    fields: &Fields<'a>,
    buffers: &'a mut KcatBuffers,
) -> Result<KcatLine<'a>, RecordError> {
    let KcatBuffers {
        topic,
        key,
        payload,
    } = buffers;
    Ok(KcatLine {
        topic: required(fields.topic, Field::new("topic"), move |v, field| {
            text(v, field, topic)
        })?,
        partition: required(fields.partition, Field::new("partition"), |value, field| {
            i32::try_from(uint(value, field)?)
                .map_err(|_| wrong_type(field, "a partition number", value))
        })?,
        offset: required(fields.offset, Field::new("offset"), |value, field| {
            i64::try_from(uint(value, field)?).map_err(|_| wrong_type(field, "an offset", value))
        })?,
        ts_ms: optional(fields.ts, Field::new("ts"), timestamp)?.flatten(),
        key: optional(fields.key, Field::new("key"), move |v, field| {
            text(v, field, key)
        })?,
        payload: optional(fields.payload, Field::new("payload"), move |v, field| {
            text(v, field, payload)
        })?,
        headers: optional(fields.headers, Field::new("headers"), headers)?.unwrap_or_default(),
    })
}

/// A string, borrowed from the line when it has no escapes, else unescaped
/// into `buffer` (where [`scan`] may have put it already). A string whose
/// escapes give no Unicode text (a lone surrogate) is kept as written
/// between its quotes, as the decoders keep such a string: a payload then
/// fails to decode and becomes a dead letter with its Kafka record.
fn text<'a>(
    value: Value<'a>,
    field: Field,
    buffer: &'a mut String,
) -> Result<&'a str, RecordError> {
    let value = match value {
        Value::Raw(raw) => raw,
        Value::Plain(text) => return Ok(text),
        Value::Buffered => return Ok(buffer),
    };
    if !value.get().starts_with('"') {
        return Err(wrong_type(field, "a string", value));
    }
    let quoted = value.get();
    match unescape(quoted, buffer) {
        Ok(text) => Ok(text),
        Err(_) => Ok(quoted.get(1..quoted.len() - 1).unwrap_or_default()),
    }
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
fn headers<'a>(value: &'a RawValue, field: Field) -> Result<Headers<'a>, RecordError> {
    let header_value = |value: &'a RawValue, field| match scalar(value) {
        Scalar::Null => Ok(None),
        _ => string(value, field).map(Some),
    };
    if value.get().starts_with('{') {
        return row(value, field)?
            .into_iter()
            .map(|(name, value)| Ok((name, header_value(value, field)?)))
            .collect();
    }
    let items = array(value, field)?;
    if items.iter().all(|item| item.get().starts_with('[')) {
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match array(item, field.at(i))?.as_slice() {
                [name, value] => Ok((
                    string(name, field.at(i))?,
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
                    string(pair[0], field.at(2 * i))?,
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

/// A `kcat -J` record as the Kafka record a dead letter carries.
impl From<KcatRecord> for KafkaRecord {
    fn from(k: KcatRecord) -> Self {
        KafkaRecord {
            topic: k.topic,
            partition: k.partition,
            offset: k.offset,
            key: k.key.map(String::into_bytes),
            value: k.payload.map(String::into_bytes),
            headers: k
                .headers
                .into_iter()
                .map(|(name, v)| (name, v.map(String::into_bytes)))
                .collect(),
            timestamp_ms: k.ts_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::formats::decode_cache;
    use crate::formats::testing::{change, data_file};
    use proptest::prelude::*;

    use super::{Fields, KcatBuffers, KcatRecord, parse_kcat_line, read, scan};
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
    fn escaped_payloads_decode_as_their_bare_value() {
        let bare = r#"{"before":null,"after":{"id":1,"name":"say \"hi\" \\ café 😀"},"source":{"ts_ms":1700000000000,"db":"shop","schema":"public","table":"users","lsn":42},"op":"c","ts_ms":1700000000001}"#;
        let payload = serde_json::to_string(bare)
            .unwrap()
            .replace('é', r"\u00e9")
            .replace('😀', r"\ud83d\ude00");
        assert!(payload.contains(r#"\\\""#) && payload.contains(r"\\\\"));
        let line = format!(
            r#"{{"topic":"shop.public.users","partition":0,"offset":7,"key":"{{\"id\":1}}","payload":{payload}}}"#
        );
        let mut buffers = KcatBuffers::default();
        let mut capacity = None;
        for _ in 0..2 {
            let record = buffers.parse(&line).expect("a kcat line").expect(&line);
            assert_eq!(record.payload, Some(bare));
            assert_eq!(record.key, Some(r#"{"id":1}"#));
            let (kcat, plain) = (change(record.payload.unwrap()), change(bare));
            assert_eq!(format!("{kcat:?}"), format!("{plain:?}"));
            // The change borrows the buffer, which is read next.
            drop(kcat);
            let now = buffers.payload.capacity();
            assert_eq!(*capacity.get_or_insert(now), now, "the buffer is reused");
        }
    }

    #[test]
    fn the_first_of_a_repeated_field_counts_and_names_are_unescaped() {
        let line =
            r#"{"topic":"a","t\u006fpic":"b","partition":0,"offset":1,"payload":"x","payload":5}"#;
        let record = parse_kcat_line(line).expect("a kcat line").expect(line);
        assert_eq!(
            (record.topic.as_str(), record.payload.as_deref()),
            ("a", Some("x"))
        );
    }

    #[test]
    fn a_lone_surrogate_is_kept_as_written() {
        let line = r#"{"topic":"t","partition":0,"offset":1,"payload":"x\ud800"}"#;
        let record = parse_kcat_line(line).expect("a kcat line").expect(line);
        assert_eq!(record.payload.as_deref(), Some(r"x\ud800"));
    }

    /// When the one-pass scan reads a line, serde_json reads it too, and
    /// the record (or the error) is the same.
    fn scan_agrees(line: &str) {
        let mut buffers = KcatBuffers::default();
        let Some(fields) = scan(line, &mut buffers) else {
            return;
        };
        let fast = read(&fields, &mut buffers).map(|l| l.to_record());
        let serde = serde_json::from_str::<Fields>(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let mut buffers = KcatBuffers::default();
        let slow = read(&serde, &mut buffers).map(|l| l.to_record());
        assert_eq!(fast, slow, "{line}");
        let present = |f: &Fields| {
            [f.topic.is_some(), f.partition.is_some(), f.offset.is_some()]
                .into_iter()
                .chain([f.ts.is_some(), f.key.is_some(), f.payload.is_some()])
                .chain([f.headers.is_some()])
                .collect::<Vec<_>>()
        };
        assert_eq!(present(&fields), present(&serde), "{line}");
    }

    #[test]
    fn the_scan_reads_lines_as_serde_json_does() {
        let text = data_file("formats/kcat.ndjson");
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.extend([
            r#" { "topic" : "t" , "partition" : 0 , "offset" : 1 , "payload" : "x" } "#.into(),
            r#"{"topic":"t","partition":0,"offset":1,"payload":"x","payload":"y","topic":5}"#
                .into(),
            r#"{"topic":"t\u00e9","partition":0,"offset":1,"key":null,"payload":"\ud83d\ude00"}"#
                .into(),
            r#"{"topic":"t","partition":0,"offset":1,"payload":"\ud800","x":"\ud800"}"#.into(),
            r#"{"topic":"t","partition":0,"offset":1,"payload":"a\u0001b\/"}"#.into(),
            "{\"topic\":\"t\",\"partition\":0,\"offset\":1,\"payload\":\"a\u{1}\"}".into(),
            r#"{"topic":"t","partition":0,"offset":1,"payload":{"a":[1,"}"]},"key":7}"#.into(),
            r#"{"topic":"t","partition":0,"offset":1,"payload":"x"}}"#.into(),
            r#"{"topic":"t","partition":0,"offset":1,"payload":"x",}"#.into(),
            r#"{"topic":"t","partition":0,"offset":01,"payload":"x"}"#.into(),
            r#"{"t\u006fpic":"t","partition":0,"offset":1,"payload":"x","topic":"u"}"#.into(),
            r#"{"topic":"t","partition":0,"offset":1,"payload":"x\"}"#.into(),
            "{}".into(),
        ]);
        let mutated: Vec<String> = lines
            .iter()
            .flat_map(|line| {
                let cuts = (0..=line.len()).filter(|&i| line.is_char_boundary(i));
                let prefixes = cuts.clone().map(|i| line[..i].to_owned());
                let replaced = cuts.filter(|&i| i < line.len()).flat_map(move |i| {
                    let rest = &line[i..][line[i..].chars().next().map_or(0, char::len_utf8)..];
                    ["\"", "\\", "\u{1}", " ", ",", "}", "u", "0", "-"]
                        .map(|with| format!("{}{with}{rest}", &line[..i]))
                });
                prefixes.chain(replaced).collect::<Vec<_>>()
            })
            .collect();
        for line in lines.iter().chain(&mutated) {
            scan_agrees(line);
        }
        let read = |line: &str| scan(line, &mut KcatBuffers::default()).is_some();
        assert!(lines[..5].iter().all(|line| read(line)));
        assert!(read(&lines[6]) && read(&lines[7]) && read(&lines[8]));
    }

    proptest! {
        /// Strings of escapes, valid or not, in every field.
        #[test]
        fn the_scan_agrees_on_escapes(parts in prop::collection::vec(prop_oneof![
            Just(r"\u00e9".to_owned()),
            Just(r"\ud83d".to_owned()),
            Just(r"\ude00".to_owned()),
            Just(r"\n".to_owned()),
            Just(r#"\""#.to_owned()),
            Just(r"\\".to_owned()),
            Just(r"\x".to_owned()),
            Just("\u{1}".to_owned()),
            "[a-zé]{0,3}",
        ], 0..8), field in 0..3usize) {
            let text = format!("\"{}\"", parts.concat());
            let mut values = [r#""t""#, r#""k""#, r#""p""#];
            values[field] = &text;
            let [topic, key, payload] = values;
            scan_agrees(&format!(
                r#"{{"topic":{topic},"partition":0,"offset":1,"key":{key},"payload":{payload}}}"#
            ));
        }
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
