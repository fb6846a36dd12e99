//! Borrowed JSON access shared by the format decoders: parsing an object into
//! its fields without decoding their values, typed reads whose errors name the
//! field, scalar views and hashes of raw values, the `unknown_format` error
//! of an object no format's marks fit; times in text ([`timestamp`]) and
//! JSON string escapes ([`unescape`]).

pub(crate) mod timestamp;
pub(crate) mod unescape;

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::dead_letter::{Reason, RecordError};
use crate::formats::{Column, Row};
use crate::hash::Digest;
use crate::model::Millis;

/// A JSON value seen without decoding nested structures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar<'a> {
    Null,
    Bool(bool),
    /// The number's text as written (`1`, `-2.5`, `1e3`).
    Number(&'a str),
    /// A string's content, unescaped.
    Str(Cow<'a, str>),
    /// The raw text of an object or an array.
    Nested(&'a str),
}

/// Classifies a raw JSON value by its first byte; strings are unescaped.
pub fn scalar<'a>(v: &'a RawValue) -> Scalar<'a> {
    let text = v.get();
    match text.as_bytes().first() {
        Some(b'n') => Scalar::Null,
        Some(b't') => Scalar::Bool(true),
        Some(b'f') => Scalar::Bool(false),
        Some(b'"') => Scalar::Str(unescape(text)),
        Some(b'{' | b'[') => Scalar::Nested(text),
        _ => Scalar::Number(text),
    }
}

/// The content of a quoted JSON string, borrowed when it has no escapes.
fn unescape(quoted: &str) -> Cow<'_, str> {
    let inner = quoted
        .get(1..quoted.len().saturating_sub(1))
        .unwrap_or_default();
    if inner.contains('\\') {
        serde_json::from_str::<String>(quoted).map_or(Cow::Borrowed(inner), Cow::Owned)
    } else {
        Cow::Borrowed(inner)
    }
}

/// An order-independent hash of a row image.
///
/// Each field contributes the xxh3 hash of its name, a `0xff` byte and the
/// canonical text of its value (a `"` marker then the unescaped content for
/// strings, so that `"1"` and `1` differ; the raw text for numbers, booleans
/// and null; the raw text without insignificant whitespace for objects and
/// arrays). The field hashes are combined by wrapping addition, so neither
/// field order nor whitespace changes the result.
pub fn row_hash(row: &[Column]) -> u64 {
    let mut hasher = Digest::default();
    row.iter().fold(0u64, |sum, (name, value)| {
        hasher.reset();
        hasher.update(name.as_bytes());
        hasher.update(&[0xff]);
        let text = value.get();
        match text.as_bytes() {
            // Without escapes, the marker and the content are the text
            // up to its closing quote, fed as it is ([`scalar`] and
            // [`unescape`] give the same bytes).
            [b'"', inner @ .., b'"'] if memchr::memchr(b'\\', inner).is_none() => {
                hasher.update(&text.as_bytes()[..text.len() - 1]);
            }
            [b'"', ..] => {
                hasher.update(b"\"");
                hasher.update(unescape(text).as_bytes());
            }
            [b'{' | b'[', ..] => update_without_whitespace(&mut hasher, text),
            // Null, booleans and numbers, as written.
            _ => hasher.update(text.as_bytes()),
        }
        sum.wrapping_add(hasher.digest())
    })
}

/// Feeds JSON text to the hasher, leaving out whitespace outside strings.
fn update_without_whitespace(hasher: &mut Digest, json: &str) {
    let bytes = json.as_bytes();
    let mut start = 0;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            hasher.update(&bytes[start..i]);
            start = i + 1;
        }
    }
    hasher.update(&bytes[start..]);
}

// ---------------------------------------------------------------------------
// Parsing

/// The top level of a JSON text; `O` is what its object is read as.
pub(crate) enum Top<O> {
    Object(O),
    Null,
    /// Any other value, by its JSON type name.
    Other(&'static str),
}

/// Parses a JSON text, decoding only the top level. Invalid JSON (truncated,
/// trailing garbage...) is an `invalid_json` error.
pub(crate) fn parse(text: &str) -> Result<Top<Object<'_>>, RecordError> {
    Ok(match parse_with(text, FieldsVisitor)? {
        Top::Object(fields) => Top::Object(Object::top(fields)),
        Top::Null => Top::Null,
        Top::Other(kind) => Top::Other(kind),
    })
}

/// Parses a JSON text that must be an object, its fields read by `fields`
/// in one pass; anything else is `unknown_format`.
pub(crate) fn parse_object_with<'a, V: Visitor<'a>>(
    text: &'a str,
    fields: V,
) -> Result<V::Value, RecordError> {
    match parse_with(text, fields)? {
        Top::Object(object) => Ok(object),
        Top::Null => Err(not_an_object("null")),
        Top::Other(kind) => Err(not_an_object(kind)),
    }
}

/// Parses a JSON text whose top-level object `fields` reads; the whole text
/// must be one value.
fn parse_with<'a, V: Visitor<'a>>(text: &'a str, fields: V) -> Result<Top<V::Value>, RecordError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    deserializer
        .deserialize_any(TopVisitor(fields))
        .and_then(|top| deserializer.end().map(|()| top))
        .or_else(|e| {
            // A number past f64's range (`1e999`) is valid JSON that serde
            // cannot hold: skipped unread, it is a number all the same.
            let number = text
                .trim_start()
                .starts_with(|c: char| c == '-' || c.is_ascii_digit());
            if number && serde_json::from_str::<IgnoredAny>(text).is_ok() {
                Ok(Top::Other("number"))
            } else {
                Err(e)
            }
        })
        .map_err(|e| RecordError::new(Reason::InvalidJson, format!("not valid JSON: {e}")))
}

pub(crate) fn not_an_object(kind: &str) -> RecordError {
    RecordError::new(
        Reason::UnknownFormat,
        format!("expected a JSON object, found {kind}"),
    )
}

/// Reads the top level: an object with the visitor it wraps, any other
/// value by its type.
struct TopVisitor<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for TopVisitor<V> {
    type Value = Top<V::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(map).map(Top::Object)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Top::Other("array"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Top::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Top::Other("bool"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Top::Other("number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Top::Other("number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Top::Other("number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Top::Other("string"))
    }
}

/// The fields of a JSON object, values undecoded.
pub(crate) struct Fields<'a>(pub(crate) Row<'a>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(FieldsVisitor).map(Fields)
    }
}

struct FieldsVisitor;

/// The columns a row gets room for once it outgrows its inline ones.
const ROW_COLUMNS: usize = 16;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Row<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Row::new();
        while let Some(Name(name)) = map.next_key()? {
            if fields.len() == fields.inline_size() {
                // Past the inline columns, room for a row image at once.
                fields.reserve(ROW_COLUMNS - fields.len());
            }
            fields.push((name, map.next_value()?));
        }
        Ok(fields)
    }
}

/// Stops a one-pass reader (of a Debezium envelope, of a cache event): the
/// general reader decodes the record and words any error.
pub(crate) fn not_plain<E: de::Error>() -> E {
    E::custom("not a plain record")
}

/// Sets a field a one-pass reader reads once; a second one stops it.
pub(crate) fn once<T, E: de::Error>(slot: &mut Option<T>, value: T) -> Result<(), E> {
    match slot.replace(value) {
        Some(_) => Err(not_plain()),
        None => Ok(()),
    }
}

/// A value as serde reads it straight from the text, without its raw text
/// kept: `null`, a non-negative integer or a string; any other value stops
/// the one-pass reader that asks for one.
pub(crate) enum Plain<'a> {
    Null,
    Uint(u64),
    Str(Cow<'a, str>),
}

impl<'de> Deserialize<'de> for Plain<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PlainVisitor)
    }
}

/// Reads `null`, a non-negative integer or a string; any other value stops
/// the one-pass reader.
struct PlainVisitor;

impl<'de> Visitor<'de> for PlainVisitor {
    type Value = Plain<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("null, a non-negative integer or a string")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Plain::Null)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Plain::Uint(v))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Plain::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Plain::Str(Cow::Owned(v.to_owned())))
    }
}

/// An object key (or a string value), borrowed from the input unless it
/// has escapes.
pub(crate) struct Name<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(NameVisitor)
    }
}

struct NameVisitor;

impl<'de> Visitor<'de> for NameVisitor {
    type Value = Name<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Name(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Name(Cow::Owned(v.to_owned())))
    }
}

/// Parses the text of a raw value known to be an object.
fn fields_of(v: &RawValue) -> Result<Row<'_>, RecordError> {
    serde_json::from_str::<Fields>(v.get())
        .map(|fields| fields.0)
        .map_err(|e| RecordError::new(Reason::InvalidJson, format!("not valid JSON: {e}")))
}

/// A JSON object: its fields in the order of the text, values undecoded.
pub(crate) struct Object<'a> {
    pub(crate) fields: Row<'a>,
    /// The field this object is the value of, for error messages.
    parent: Option<&'static str>,
}

impl<'a> Object<'a> {
    /// The object a record is (its fields named by themselves in errors).
    pub(crate) fn top(fields: Row<'a>) -> Self {
        Object {
            fields,
            parent: None,
        }
    }

    /// The object that is the value of field `parent` (named so in errors).
    pub(crate) fn nested(parent: &'static str) -> impl FnOnce(Row<'a>) -> Self {
        move |fields| Object {
            fields,
            parent: Some(parent),
        }
    }

    /// The value of a field; the first one when the name repeats.
    pub(crate) fn get(&self, name: &str) -> Option<&'a RawValue> {
        super::column(&self.fields, name)
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// How errors name a field of this object.
    pub(crate) fn path<'p>(&self, name: &'p str) -> Field<'p> {
        Field {
            parent: self.parent,
            name,
            index: None,
        }
    }

    /// Reads an optional field: absent and `null` give `None`.
    pub(crate) fn field<T>(
        &self,
        name: &str,
        read: impl FnOnce(&'a RawValue, Field<'_>) -> Result<T, RecordError>,
    ) -> Result<Option<T>, RecordError> {
        optional(self.get(name), self.path(name), read)
    }

    /// Reads a field that must be present and not `null` (else
    /// `missing_field`).
    pub(crate) fn required<T>(
        &self,
        name: &str,
        read: impl FnOnce(&'a RawValue, Field<'_>) -> Result<T, RecordError>,
    ) -> Result<T, RecordError> {
        required(self.get(name), self.path(name), read)
    }

    /// Reads an optional field that must be an object.
    pub(crate) fn object(&self, name: &'static str) -> Result<Option<Object<'a>>, RecordError> {
        self.field(name, row)
            .map(|fields| fields.map(Object::nested(name)))
    }
}

/// A field's value that may be JSON `null`.
pub(crate) trait Nullable: Copy {
    fn is_null(self) -> bool;
}

impl Nullable for &RawValue {
    fn is_null(self) -> bool {
        self.get() == "null"
    }
}

/// Reads the value of an optional field: absent and `null` give `None`.
pub(crate) fn optional<V: Nullable, T>(
    value: Option<V>,
    field: Field<'_>,
    read: impl FnOnce(V, Field<'_>) -> Result<T, RecordError>,
) -> Result<Option<T>, RecordError> {
    match value {
        Some(v) if !v.is_null() => read(v, field).map(Some),
        _ => Ok(None),
    }
}

/// Reads the value of a field that must be present and not `null` (else
/// `missing_field`).
pub(crate) fn required<V: Nullable, T>(
    value: Option<V>,
    field: Field<'_>,
    read: impl FnOnce(V, Field<'_>) -> Result<T, RecordError>,
) -> Result<T, RecordError> {
    optional(value, field, read)?.ok_or_else(|| missing(field))
}

// ---------------------------------------------------------------------------
// Typed reads: each takes a non-null raw value and the field it came from.

/// Names a field in error messages: `"source.ts_ms"`, `"data[2]"`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field<'p> {
    parent: Option<&'p str>,
    name: &'p str,
    index: Option<usize>,
}

impl<'p> Field<'p> {
    /// A top-level field.
    pub(crate) fn new(name: &'p str) -> Self {
        Field {
            parent: None,
            name,
            index: None,
        }
    }

    /// A field of the object that is the value of field `parent`.
    pub(crate) fn nested(parent: &'p str, name: &'p str) -> Self {
        Field {
            parent: Some(parent),
            name,
            index: None,
        }
    }

    /// An element of this field's array.
    pub(crate) fn at(self, index: usize) -> Self {
        Field {
            index: Some(index),
            ..self
        }
    }
}

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("field \"")?;
        if let Some(parent) = self.parent {
            write!(f, "{parent}.")?;
        }
        f.write_str(self.name)?;
        if let Some(index) = self.index {
            write!(f, "[{index}]")?;
        }
        f.write_str("\"")
    }
}

/// `missing_field` for an absent or null field.
pub(crate) fn missing(field: Field) -> RecordError {
    RecordError::new(Reason::MissingField, format!("{field} is missing"))
}

/// `wrong_type`: what the field must be and what it holds.
pub(crate) fn wrong_type(field: Field, expected: &str, found: &RawValue) -> RecordError {
    RecordError::new(
        Reason::WrongType,
        format!("{field} must be {expected}, found {}", describe(found)),
    )
}

/// A value's JSON type, with its text when that is short enough to help.
fn describe(v: &RawValue) -> String {
    const MAX: usize = 64;
    let kind = match scalar(v) {
        Scalar::Null => return "null".to_owned(),
        Scalar::Bool(_) => "bool",
        Scalar::Number(_) => "number",
        Scalar::Str(_) => "string",
        Scalar::Nested(text) if text.starts_with('[') => return "array".to_owned(),
        Scalar::Nested(_) => return "object".to_owned(),
    };
    let text = v.get();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{kind} {}...", &text[..cut]),
        None => format!("{kind} {text}"),
    }
}

pub(crate) fn string<'a>(v: &'a RawValue, field: Field) -> Result<Cow<'a, str>, RecordError> {
    match scalar(v) {
        Scalar::Str(s) => Ok(s),
        _ => Err(wrong_type(field, "a string", v)),
    }
}

/// A non-negative JSON integer.
pub(crate) fn uint(v: &RawValue, field: Field) -> Result<u64, RecordError> {
    match scalar(v) {
        Scalar::Number(text) => digits(text),
        _ => None,
    }
    .ok_or_else(|| wrong_type(field, "a non-negative integer", v))
}

/// A non-negative integer, as a JSON number or a string of decimal digits.
pub(crate) fn uint_or_digits(v: &RawValue, field: Field) -> Result<u64, RecordError> {
    match scalar(v) {
        Scalar::Number(text) => digits(text),
        Scalar::Str(text) => digits(&text),
        _ => None,
    }
    .ok_or_else(|| wrong_type(field, "a non-negative integer", v))
}

/// Parses a non-empty string of ASCII decimal digits that fits a `u64`.
pub(crate) fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A time in ms since the epoch, as a non-negative JSON integer.
pub(crate) fn millis(v: &RawValue, field: Field) -> Result<Millis, RecordError> {
    Millis::try_from(uint(v, field)?)
        .map_err(|_| wrong_type(field, "a time in ms since the epoch", v))
}

/// An identifier: a string, or a number taken as its text.
pub(crate) fn text<'a>(v: &'a RawValue, field: Field) -> Result<Cow<'a, str>, RecordError> {
    match scalar(v) {
        Scalar::Str(s) => Ok(s),
        Scalar::Number(n) => Ok(Cow::Borrowed(n)),
        _ => Err(wrong_type(field, "a string or a number", v)),
    }
}

/// A boolean, also written as the string `"true"` or `"false"`.
pub(crate) fn flag(v: &RawValue, field: Field) -> Result<bool, RecordError> {
    match scalar(v) {
        Scalar::Bool(b) => Ok(b),
        Scalar::Str(s) if s == "true" => Ok(true),
        Scalar::Str(s) if s == "false" => Ok(false),
        _ => Err(wrong_type(field, "a boolean", v)),
    }
}

/// An object, as a row image.
pub(crate) fn row<'a>(v: &'a RawValue, field: Field) -> Result<Row<'a>, RecordError> {
    if v.get().starts_with('{') {
        fields_of(v)
    } else {
        Err(wrong_type(field, "an object", v))
    }
}

/// An array, elements undecoded.
pub(crate) fn array<'a>(v: &'a RawValue, field: Field) -> Result<Vec<&'a RawValue>, RecordError> {
    if v.get().starts_with('[') {
        serde_json::from_str(v.get())
            .map_err(|e| RecordError::new(Reason::InvalidJson, format!("not valid JSON: {e}")))
    } else {
        Err(wrong_type(field, "an array", v))
    }
}

/// An array of strings (column names).
pub(crate) fn strings<'a>(v: &'a RawValue, field: Field) -> Result<Vec<Cow<'a, str>>, RecordError> {
    array(v, field)?
        .into_iter()
        .enumerate()
        .map(|(i, element)| string(element, field.at(i)))
        .collect()
}

/// The index of a MySQL binlog file: the digits after the last `.` of its
/// name (`mysql-bin.000003` -> 3).
pub(crate) fn binlog_file_index(name: &str) -> Option<u64> {
    name.rsplit_once('.').and_then(|(_, index)| digits(index))
}

/// A before image: the after image with the values of `old` (the previous
/// values of the changed columns, as Maxwell and Canal give them) put back.
/// Columns only in `old` are appended.
pub(crate) fn overlay<'a>(after: &Row<'a>, old: Row<'a>) -> Row<'a> {
    let mut before = after.clone();
    for (name, value) in old {
        match before.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => before.push((name, value)),
        }
    }
    before
}

/// Top-level field names an `unknown_format` message lists at most, and
/// the characters of each name it keeps.
const LISTED_FIELDS: usize = 16;
const LISTED_NAME_CHARS: usize = 40;

/// `unknown_format` for an object that no format's marks fit, listing its
/// top-level fields (sorted, at most [`LISTED_FIELDS`], long names cut).
pub(crate) fn unrecognised(object: &Object) -> RecordError {
    let mut names: Vec<&str> = object.fields.iter().map(|(n, _)| n.as_ref()).collect();
    names.sort_unstable();
    names.dedup();
    let mut listed: Vec<String> = names
        .iter()
        .take(LISTED_FIELDS)
        .map(|name| match name.char_indices().nth(LISTED_NAME_CHARS) {
            Some((cut, _)) => format!("{:?}...", &name[..cut]),
            None => format!("{name:?}"),
        })
        .collect();
    if names.len() > LISTED_FIELDS {
        listed.push(format!("and {} more", names.len() - LISTED_FIELDS));
    }
    let found = if listed.is_empty() {
        "no fields".to_owned()
    } else {
        format!("top-level fields {}", listed.join(", "))
    };
    RecordError::new(
        Reason::UnknownFormat,
        format!(
            "no CDC format recognised ({found}); a bare row (ExtractNewRecordState output) is read only for a [[tables]] entry with format = \"flattened\""
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use serde_json::value::RawValue;

    use super::{Scalar, row_hash, scalar};
    use crate::dead_letter::Reason;
    use crate::formats::testing::{cols, failure};
    use crate::formats::{Row, decode_key};

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).expect("valid JSON")
    }

    /// The fields of an object text.
    fn fields(text: &str) -> Row<'_> {
        super::parse_object_with(text, super::FieldsVisitor).expect("an object")
    }

    #[test]
    fn scalars() {
        assert_eq!(scalar(&raw("null")), Scalar::Null);
        assert_eq!(scalar(&raw("true")), Scalar::Bool(true));
        assert_eq!(scalar(&raw("false")), Scalar::Bool(false));
        assert_eq!(scalar(&raw("-1.5e3")), Scalar::Number("-1.5e3"));
        assert_eq!(
            scalar(&raw(r#""plain""#)),
            Scalar::Str(Cow::Borrowed("plain"))
        );
        assert_eq!(
            scalar(&raw(r#""a\"b\u00e9\n""#)),
            Scalar::Str(Cow::Owned("a\"b\u{e9}\n".to_owned()))
        );
        assert_eq!(
            scalar(&raw(r#"{"a": [1]}"#)),
            Scalar::Nested(r#"{"a": [1]}"#)
        );
        assert_eq!(scalar(&raw("[]")), Scalar::Nested("[]"));
    }

    #[test]
    fn row_hash_ignores_order_and_whitespace() {
        let a = fields(r#"{"id":1,"name":"x","tags":["a","b"],"meta":{"k":"v w"}}"#);
        let b = fields(
            r#"{ "meta" : { "k" : "v w" } , "tags" : [ "a" , "b" ] , "name" : "x" , "id" : 1 }"#,
        );
        assert_eq!(row_hash(&a), row_hash(&b));
        let escaped =
            fields(r#"{"id":1,"n\u0061me":"\u0078","tags":["a","b"],"meta":{"k":"v w"}}"#);
        assert_eq!(row_hash(&a), row_hash(&escaped));
    }

    #[test]
    fn row_hash_sees_value_changes() {
        let base = r#"{"id":1,"name":"x","tags":["a","b"],"meta":{"k":"v w"}}"#;
        let hash = row_hash(&fields(base));
        for changed in [
            r#"{"id":2,"name":"x","tags":["a","b"],"meta":{"k":"v w"}}"#,
            r#"{"id":"1","name":"x","tags":["a","b"],"meta":{"k":"v w"}}"#,
            r#"{"id":1,"name":"y","tags":["a","b"],"meta":{"k":"v w"}}"#,
            r#"{"id":1,"name":null,"tags":["a","b"],"meta":{"k":"v w"}}"#,
            r#"{"id":1,"name":"x","tags":["b","a"],"meta":{"k":"v w"}}"#,
            r#"{"id":1,"name":"x","tags":["a","b"],"meta":{"k":"vw"}}"#,
            r#"{"id":1,"nam":"x","tags":["a","b"],"meta":{"k":"v w"}}"#,
            r#"{"id":1,"tags":["a","b"],"meta":{"k":"v w"}}"#,
        ] {
            assert_ne!(row_hash(&fields(changed)), hash, "{changed}");
        }
        assert_ne!(
            row_hash(&fields(r#"{"a":"1"}"#)),
            row_hash(&fields(r#"{"a":1}"#))
        );
        assert_ne!(
            row_hash(&fields(r#"{"a":"true"}"#)),
            row_hash(&fields(r#"{"a":true}"#))
        );
        assert_ne!(
            row_hash(&fields(r#"{"a":"b"}"#)),
            row_hash(&fields(r#"{"b":"a"}"#))
        );
    }

    #[test]
    fn row_hashes_are_pinned_across_releases() {
        // Row hashes go into change ids, which consumers deduplicate on:
        // however the bytes are fed, these values must not move.
        let long = format!(
            r#"{{"id":7,"blob":"{}","n\u00e4me":"x"}}"#,
            "ab".repeat(200)
        );
        let rows = [
            r#"{"id":1,"name":"x"}"#,
            r#"{"a":null,"b":true,"c":false,"d":-1.5e3,"e":""}"#,
            r#"{"s":"a\"b\u00e9\n\\ \/","t":"\u0078"}"#,
            r#"{"plain":"café ☃ 😀","q\"k":"v"}"#,
            r#"{"tags" : [ "a" , "b c" ], "meta" : { "k" : "v \" w" , "n" : [1, {"x" : null}] }}"#,
            &long,
            r#"{}"#,
        ];
        let hashes = rows.map(|row| row_hash(&fields(row)));
        assert_eq!(
            hashes,
            [
                10_857_364_590_876_759_920,
                256_818_408_676_412_814,
                5_059_312_821_701_667_293,
                1_657_659_720_831_405_908,
                16_084_201_282_590_334_295,
                17_387_466_503_041_822_057,
                0,
            ]
        );
    }

    #[test]
    fn keys() {
        assert_eq!(cols(&decode_key(r#"{"id":1}"#)), [("id", "1")]);
        assert_eq!(
            cols(&decode_key(
                r#"{"schema":{"type":"struct"},"payload":{"id":1,"region":"eu"}}"#
            )),
            [("id", "1"), ("region", "\"eu\"")]
        );
        assert_eq!(
            cols(&decode_key(
                r#"{"database":"test","table":"e","pk.id":1,"pk.c":"2016-10-21"}"#
            )),
            [("id", "1"), ("c", "\"2016-10-21\"")]
        );
        assert_eq!(
            cols(&decode_key(
                r#"{"database":"test","table":"e","pk\u002eid":1}"#
            )),
            [("id", "1")]
        );
        assert_eq!(
            cols(&decode_key(
                r#" ["test","e",[{"id":1},{"c":"2016-10-21"}]]"#
            )),
            [("id", "1"), ("c", "\"2016-10-21\"")]
        );
        for key in [
            "",
            "1",
            "\"abc\"",
            "null",
            "{}",
            "{\"id\":",
            "[]",
            "[\"test\",\"e\"]",
            "[\"test\",\"e\",[1]]",
            r#"{"schema":{},"payload":null}"#,
            r#"{"schema":{},"payload":5}"#,
        ] {
            assert!(decode_key(key).is_none(), "{key}");
        }
    }

    #[test]
    fn unrecognised_values() {
        assert_eq!(
            failure(r#"{"op":"c","after":{"id":1}"#, "JSON"),
            Reason::InvalidJson
        );
        assert_eq!(failure(r#"{"op":"c"} x"#, "JSON"), Reason::InvalidJson);
        assert_eq!(failure("", "JSON"), Reason::InvalidJson);
        assert_eq!(failure("not json", "JSON"), Reason::InvalidJson);
        assert_eq!(failure("[1,2]", "array"), Reason::UnknownFormat);
        assert_eq!(failure(r#""a string""#, "string"), Reason::UnknownFormat);
        assert_eq!(failure("42", "number"), Reason::UnknownFormat);
        // Found by the debezium fuzz target: valid JSON, past f64's range.
        assert_eq!(failure(" 9E9999999999 ", "number"), Reason::UnknownFormat);
        assert_eq!(failure("-1e999", "number"), Reason::UnknownFormat);
        assert_eq!(failure("1e999 x", "JSON"), Reason::InvalidJson);
        assert_eq!(failure("true", "bool"), Reason::UnknownFormat);
        assert_eq!(failure("{}", "no fields"), Reason::UnknownFormat);
    }
}
