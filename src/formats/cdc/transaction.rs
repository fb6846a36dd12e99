//! Debezium transaction metadata (`provide.transaction.metadata`): the
//! BEGIN and END records of the transaction topic. An END says how many
//! events the transaction wrote, in all and per table (`data_collections`).

use std::borrow::Cow;

use crate::dead_letter::RecordError;
use crate::formats::json::{Field, Object, array, millis, row, string, text, uint};
use crate::formats::{DecodedCdc, TxMarker, TxStatus};

/// Whether a record is a BEGIN or END record: an `id` and a `status` of
/// `BEGIN` or `END`.
pub(in crate::formats) fn is_marker(object: &Object) -> bool {
    object.has("id")
        && object
            .get("status")
            .is_some_and(|s| matches!(s.get(), "\"BEGIN\"" | "\"END\""))
}

/// Decodes a record recognised by [`is_marker`].
pub(in crate::formats) fn decode<'a>(object: &Object<'a>) -> Result<DecodedCdc<'a>, RecordError> {
    let status = match object.required("status", string)?.as_ref() {
        "BEGIN" => TxStatus::Begin,
        _ => TxStatus::End,
    };
    let mut data_collections = Vec::new();
    if status == TxStatus::End
        && let Some(collections) = object.field("data_collections", array)?
    {
        let field = Field::new("data_collections");
        for (i, element) in collections.into_iter().enumerate() {
            let entry = Object::nested("data_collections")(row(element, field.at(i))?);
            let name: Cow<'a, str> = entry.required("data_collection", string)?;
            let count = entry.required("event_count", uint)?;
            data_collections.push((name, count));
        }
    }
    Ok(DecodedCdc::Transaction(TxMarker {
        status,
        id: object.required("id", text)?,
        ts_ms: object.field("ts_ms", millis)?,
        event_count: match status {
            TxStatus::Begin => None,
            TxStatus::End => object.field("event_count", uint)?,
        },
        data_collections,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::Reason;
    use crate::formats::testing::{data_file, samples};
    use crate::formats::{Flattened, decode_cdc};

    fn marker(value: &str) -> TxMarker<'_> {
        match decode_cdc(Some(value), Flattened::Nowhere) {
            Ok(DecodedCdc::Transaction(m)) => m,
            other => panic!("{value}: expected a transaction marker, got {other:?}"),
        }
    }

    #[test]
    fn samples_decode_to_begin_and_end() {
        let text = data_file("samples/debezium-metadata.ndjson");
        let lines = samples(&text);
        assert_eq!(lines.len(), 6);
        let begin = marker(lines[0].value.get());
        assert_eq!(begin.status, TxStatus::Begin);
        assert_eq!(begin.id, "571:53195829");
        assert_eq!(begin.ts_ms, Some(1486500577125));
        assert_eq!(begin.event_count, None);
        assert!(begin.data_collections.is_empty());
        let end = marker(lines[1].value.get());
        assert_eq!(end.status, TxStatus::End);
        assert_eq!(end.event_count, Some(2));
        assert_eq!(
            end.data_collections,
            [(Cow::Borrowed("s1.a"), 1), (Cow::Borrowed("s2.a"), 1)]
        );
        let sqlserver = marker(lines[5].value.get());
        assert_eq!(sqlserver.id, "00000025:00000d08:0025");
        assert_eq!(sqlserver.data_collections[1].0, "testDB.dbo.testDB.tableb");
    }

    #[test]
    fn wrapped_in_schema_and_payload() {
        let value = r#"{"schema":{},"payload":{"status":"END","id":"7","ts_ms":5,"event_count":3,"data_collections":[{"data_collection":"public.orders","event_count":3}]}}"#;
        let end = marker(value);
        assert_eq!(end.id, "7");
        assert_eq!(end.event_count, Some(3));
        assert_eq!(end.data_collections.len(), 1);
    }

    #[test]
    fn a_bad_count_is_a_dead_letter_naming_it() {
        let value = r#"{"status":"END","id":"7","ts_ms":5,"event_count":3,"data_collections":[{"data_collection":"public.orders","event_count":-1}]}"#;
        let err = decode_cdc(Some(value), Flattened::Nowhere).unwrap_err();
        assert_eq!(err.reason, Reason::WrongType);
        assert!(err.message.contains("event_count"), "{}", err.message);
    }
}
