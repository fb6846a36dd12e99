//! Mapping: decoded records (the sample fixtures and small hand-written
//! records) and a `[[tables]]` configuration in, changes out.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::*;
use crate::formats::testing::data_file;
use crate::formats::{DecodedCdc, Flattened, decode_cdc, decode_key};

// ---------------------------------------------------------------------------
// Helpers

fn mapper(toml: &str) -> Mapper {
    let config =
        Config::parse_with_env("t", toml, Vec::new()).unwrap_or_else(|e| panic!("{toml}\n{e}"));
    Mapper::new(&config)
}

/// A one-table configuration.
fn table(table: &str, extra: &str) -> Mapper {
    mapper(&format!("[[tables]]\ntable = \"{table}\"\n{extra}\n"))
}

fn kafka(topic: &str) -> Provenance {
    Provenance {
        topic: crate::model::Name::new(topic),
        partition: 2,
        offset: 42,
        from_file: false,
    }
}

fn file() -> Provenance {
    Provenance {
        topic: crate::model::Name::new("/data/cdc.ndjson"),
        partition: 0,
        offset: 7,
        from_file: true,
    }
}

const KAFKA_TS: Millis = 1_700_000_000_123;

/// Maps every change of a CDC value (with an optional Kafka key text).
fn map_all(
    m: &Mapper,
    value: &str,
    key: Option<&str>,
    provenance: &Provenance,
    kafka_ts: Option<Millis>,
) -> Vec<Result<Mapped, RecordError>> {
    let raws = match decode_cdc(Some(value), Flattened::Everywhere) {
        Ok(DecodedCdc::Changes(raws)) => raws,
        other => panic!("{value}: expected changes, got {other:?}"),
    };
    let key = key.and_then(decode_key);
    raws.iter()
        .map(|raw| m.map(raw, key.as_ref(), provenance, kafka_ts))
        .collect()
}

/// Maps the one change of a CDC value.
fn map_with(
    m: &Mapper,
    value: &str,
    key: Option<&str>,
    provenance: &Provenance,
    kafka_ts: Option<Millis>,
) -> Result<Mapped, RecordError> {
    let mut all = map_all(m, value, key, provenance, kafka_ts);
    assert_eq!(all.len(), 1, "{value}");
    all.remove(0)
}

fn map(m: &Mapper, value: &str, key: Option<&str>) -> Result<Mapped, RecordError> {
    map_with(m, value, key, &kafka("cdc"), Some(KAFKA_TS))
}

fn mapped(m: &Mapper, value: &str, key: Option<&str>) -> Change {
    match map(m, value, key) {
        Ok(Mapped::Change(c)) => c,
        other => panic!("{value}: expected a change, got {other:?}"),
    }
}

fn unmapped(m: &Mapper, value: &str, provenance: &Provenance) -> String {
    match map_with(m, value, None, provenance, Some(KAFKA_TS)) {
        Ok(Mapped::Unmapped { table }) => table,
        other => panic!("{value}: expected an unmapped table, got {other:?}"),
    }
}

/// The reason a record fails to map, checking that the message names
/// `mention`.
fn failure(m: &Mapper, value: &str, key: Option<&str>, mention: &str) -> Reason {
    match map(m, value, key) {
        Err(e) => {
            assert!(e.message.contains(mention), "{value}: {e}");
            e.reason
        }
        Ok(other) => panic!("{value}: expected an error, got {other:?}"),
    }
}

fn keys(c: &Change) -> Vec<&str> {
    c.keys.iter().map(|k| k.as_ref()).collect()
}

/// One line of `tests/data/samples/*.ndjson`.
#[derive(Deserialize)]
struct Sample<'a> {
    #[serde(borrow)]
    key: &'a RawValue,
    #[serde(borrow)]
    value: &'a RawValue,
}

/// The value and key texts of line `index` of a sample file (the key is
/// `None` when the sample has none).
fn sample(name: &str, index: usize) -> (String, Option<String>) {
    let path = format!("samples/{name}.ndjson");
    let text = data_file(&path);
    let line = text
        .lines()
        .nth(index)
        .unwrap_or_else(|| panic!("{path} has no line {index}"));
    let s: Sample = serde_json::from_str(line).expect("a sample line");
    let key = (s.key.get() != "null").then(|| s.key.get().to_owned());
    (s.value.get().to_owned(), key)
}

/// A Debezium PostgreSQL create of `inventory.products` (schema `inventory`,
/// db `postgres`): `{"id":110,...}`, commit time 1596010946488.
fn pg_create() -> String {
    sample("debezium-postgres", 5).0
}

/// A schemaless Debezium record with the given op, images and source fields.
fn debezium(op: &str, before: &str, after: &str, source: &str) -> String {
    format!(
        r#"{{"op":"{op}","before":{before},"after":{after},"source":{{{source}}},"ts_ms":1700000000999}}"#
    )
}

const PG_SOURCE: &str =
    r#""db":"postgres","schema":"public","table":"users","ts_ms":1700000000000,"lsn":5000"#;

// ---------------------------------------------------------------------------
// Table resolution

#[test]
fn schema_qualified_table_resolves() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\"]",
    );
    let c = mapped(&m, &pg_create(), None);
    assert_eq!(&*c.table, "inventory.products");
    assert_eq!(keys(&c), ["product:110"]);
}

#[test]
fn db_qualified_table_resolves() {
    let m = table(
        "inventory.customers",
        "pk = [\"id\"]\nkeys = [\"customer:{id}\"]",
    );
    let c = mapped(&m, &sample("debezium-mysql", 3).0, None);
    assert_eq!(&*c.table, "inventory.customers");
    assert_eq!(keys(&c), ["customer:1004"]);

    // A PostgreSQL record names both its schema and its database.
    let m = table(
        "postgres.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\"]",
    );
    assert_eq!(&*mapped(&m, &pg_create(), None).table, "postgres.products");
}

#[test]
fn schema_qualified_name_is_preferred_to_the_db_qualified_one() {
    let m = mapper(
        "[[tables]]\ntable = \"postgres.products\"\npk = [\"id\"]\nkeys = [\"db:{id}\"]\n\
         [[tables]]\ntable = \"inventory.products\"\npk = [\"id\"]\nkeys = [\"schema:{id}\"]\n",
    );
    let c = mapped(&m, &pg_create(), None);
    assert_eq!(&*c.table, "inventory.products");
    assert_eq!(keys(&c), ["schema:110"]);
}

#[test]
fn qualified_names_match_whichever_part_holds_a_dot() {
    // `a.b.c` is `a` + `b.c` and `a.b` + `c`; the bare name `c` is ambiguous.
    let m = mapper(
        "[[tables]]\ntable = \"a.b.c\"\npk = [\"id\"]\nkeys = [\"abc:{id}\"]\n\
         [[tables]]\ntable = \"x.c\"\npk = [\"id\"]\nkeys = [\"xc:{id}\"]\n",
    );
    for (schema, table) in [("a", "b.c"), ("a.b", "c")] {
        let source = format!(r#""schema":"{schema}","table":"{table}","ts_ms":1700000000000"#);
        let c = mapped(&m, &debezium("c", "null", r#"{"id":1}"#, &source), None);
        assert_eq!(&*c.table, "a.b.c", "{schema} {table}");
    }
    let source = r#""schema":"a","table":"c","ts_ms":1700000000000"#;
    assert_eq!(
        unmapped(
            &m,
            &debezium("c", "null", r#"{"id":1}"#, source),
            &kafka("cdc")
        ),
        "a.c"
    );
}

#[test]
fn unqualified_configured_name_resolves() {
    let m = table("products", "pk = [\"id\"]\nkeys = [\"product:{id}\"]");
    assert_eq!(&*mapped(&m, &pg_create(), None).table, "products");
}

#[test]
fn unique_bare_name_resolves_across_qualifiers() {
    let m = table("shop.products", "pk = [\"id\"]\nkeys = [\"product:{id}\"]");
    assert_eq!(&*mapped(&m, &pg_create(), None).table, "shop.products");
}

#[test]
fn ambiguous_bare_name_is_unmapped() {
    let m = mapper(
        "[[tables]]\ntable = \"a.products\"\npk = [\"id\"]\nkeys = [\"a:{id}\"]\n\
         [[tables]]\ntable = \"b.products\"\npk = [\"id\"]\nkeys = [\"b:{id}\"]\n",
    );
    assert_eq!(
        unmapped(&m, &pg_create(), &kafka("cdc")),
        "inventory.products"
    );
}

#[test]
fn ambiguous_bare_name_still_resolves_when_qualified() {
    let m = mapper(
        "[[tables]]\ntable = \"inventory.products\"\npk = [\"id\"]\nkeys = [\"a:{id}\"]\n\
         [[tables]]\ntable = \"b.products\"\npk = [\"id\"]\nkeys = [\"b:{id}\"]\n",
    );
    assert_eq!(&*mapped(&m, &pg_create(), None).table, "inventory.products");
}

#[test]
fn unmapped_table_is_named_by_schema_or_db() {
    let m = table("inventory.orders", "pk = [\"id\"]\nkeys = [\"order:{id}\"]");
    assert_eq!(
        unmapped(&m, &pg_create(), &kafka("cdc")),
        "inventory.products"
    );
    assert_eq!(
        unmapped(&m, &sample("canal", 4).0, &kafka("cdc")),
        "inventory.products2"
    );
    assert_eq!(
        unmapped(&m, &sample("maxwell", 0).0, &kafka("cdc")),
        "test.e"
    );
}

#[test]
fn unmapped_table_wins_over_record_errors() {
    // No primary key, no commit time: still only "unmapped".
    let m = table("inventory.orders", "keys = [\"order:{id}\"]");
    let value = r#"{"op":"c","after":{"x":1},"source":{"schema":"s","table":"t"}}"#;
    assert_eq!(
        map_with(&m, value, None, &kafka("cdc"), None),
        Ok(Mapped::Unmapped {
            table: "s.t".into()
        })
    );
}

/// A flattened record without `__table`: only the topic names the table.
const FLAT_NO_TABLE: &str = r#"{"id":5,"name":"x","__op":"u","__source_ts_ms":1700000000000}"#;

#[test]
fn record_without_table_resolves_by_the_topic_s_last_two_segments() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\"]",
    );
    let out = map_with(
        &m,
        FLAT_NO_TABLE,
        None,
        &kafka("dbserver1.inventory.products"),
        None,
    );
    let Ok(Mapped::Change(c)) = out else {
        panic!("{out:?}")
    };
    assert_eq!(&*c.table, "inventory.products");
    assert_eq!(keys(&c), ["product:5"]);
}

#[test]
fn record_without_table_resolves_by_topic_even_when_the_bare_name_is_ambiguous() {
    let m = mapper(
        "[[tables]]\ntable = \"inventory.products\"\npk = [\"id\"]\nkeys = [\"a:{id}\"]\n\
         [[tables]]\ntable = \"other.products\"\npk = [\"id\"]\nkeys = [\"b:{id}\"]\n",
    );
    for (topic, want) in [
        ("dbserver1.inventory.products", "inventory.products"),
        ("dbserver1.other.products", "other.products"),
    ] {
        let out = map_with(&m, FLAT_NO_TABLE, None, &kafka(topic), None);
        assert!(
            matches!(&out, Ok(Mapped::Change(c)) if &*c.table == want),
            "{topic}: {out:?}"
        );
    }
    assert_eq!(
        unmapped(&m, FLAT_NO_TABLE, &kafka("dbserver1.third.products")),
        "dbserver1.third.products"
    );
}

#[test]
fn record_without_table_resolves_by_the_topic_s_last_segment() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\"]",
    );
    for topic in ["products", "dbserver1.other.products"] {
        let out = map_with(&m, FLAT_NO_TABLE, None, &kafka(topic), None);
        assert!(
            matches!(&out, Ok(Mapped::Change(c)) if &*c.table == "inventory.products"),
            "{topic}: {out:?}"
        );
    }
}

#[test]
fn record_without_table_from_an_unknown_topic_is_unmapped_by_topic() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\"]",
    );
    assert_eq!(
        unmapped(&m, FLAT_NO_TABLE, &kafka("dbserver1.inventory.orders")),
        "dbserver1.inventory.orders"
    );
}

#[test]
fn record_without_table_from_a_file_is_unmapped() {
    // A file path is not a topic: it never names a table.
    let m = table("products", "pk = [\"id\"]\nkeys = [\"product:{id}\"]");
    let mut from_file = file();
    from_file.topic = crate::model::Name::new("products");
    assert_eq!(unmapped(&m, FLAT_NO_TABLE, &from_file), "(unnamed)");
}

// ---------------------------------------------------------------------------
// Primary keys

#[test]
fn pk_comes_from_the_kafka_key() {
    let (value, key) = sample("debezium-postgres", 1);
    assert!(key.is_some(), "the sample carries a key");
    let m = table("inventory.products", "keys = [\"product:{id}\"]");
    let c = mapped(&m, &value, key.as_deref());
    assert_eq!(&*c.pk, r#"{"id":107}"#);
    assert_eq!(
        c.entity,
        hash::entity("inventory.products", r#"{"id":107}"#)
    );
}

#[test]
fn pk_is_the_whole_kafka_key_without_configured_columns() {
    let m = table("inventory.products", "keys = [\"product:{id}\"]");
    let c = mapped(&m, &pg_create(), Some(r#"{"region":"eu", "id": 110}"#));
    assert_eq!(&*c.pk, r#"{"region":"eu","id":110}"#, "key order, compact");
}

#[test]
fn configured_pk_columns_are_picked_from_the_kafka_key() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\"]",
    );
    let c = mapped(&m, &pg_create(), Some(r#"{"region":"eu","id":110}"#));
    assert_eq!(&*c.pk, r#"{"id":110}"#);
}

#[test]
fn configured_pk_columns_come_from_the_row_when_the_key_lacks_them() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\"]",
    );
    let c = mapped(&m, &pg_create(), Some(r#"{"other":1}"#));
    assert_eq!(&*c.pk, r#"{"id":110}"#);
}

#[test]
fn configured_pk_columns_come_from_the_row_in_configured_order() {
    let m = table(
        "inventory.orders",
        "pk = [\"product_id\", \"purchaser\"]\nkeys = [\"order:{order_number}\"]",
    );
    let c = mapped(&m, &sample("debezium-mysql", 0).0, None);
    assert_eq!(&*c.pk, r#"{"product_id":107,"purchaser":1003}"#);
    assert_eq!(c.op, Op::Read);
}

#[test]
fn unusable_kafka_keys_fall_back_to_the_row() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\"]",
    );
    for key in ["not json", "42", "{}", "\"id\""] {
        assert_eq!(
            &*mapped(&m, &pg_create(), Some(key)).pk,
            r#"{"id":110}"#,
            "key {key}"
        );
    }
}

#[test]
fn maxwell_kafka_keys_give_the_pk() {
    let (value, _) = sample("maxwell", 5);
    let m = table("test.product", "keys = [\"product:{id}\"]");
    for key in [
        r#"{"database":"test","table":"product","pk.id":106}"#,
        r#"["test","product",[{"id":106}]]"#,
    ] {
        assert_eq!(
            &*mapped(&m, &value, Some(key)).pk,
            r#"{"id":106}"#,
            "key {key}"
        );
    }
}

#[test]
fn pk_comes_from_maxwell_primary_key_columns() {
    let m = table("test.e", "keys = [\"e:{id}\"]");
    let c = mapped(&m, &sample("maxwell", 0).0, None);
    assert_eq!(&*c.pk, r#"{"id":1,"c":"2016-10-21 05:33:37.523000"}"#);
}

#[test]
fn pk_comes_from_canal_pk_names() {
    let m = table("inventory.products2", "keys = [\"product:{id}\"]");
    let c = mapped(&m, &sample("canal", 4).0, None);
    assert_eq!(&*c.pk, r#"{"id":"111"}"#);
    assert_eq!(c.op, Op::Delete);
}

#[test]
fn configured_pk_overrides_the_record_s_own_pk_list() {
    let m = table(
        "inventory.products2",
        "pk = [\"name\"]\nkeys = [\"product:{id}\"]",
    );
    let c = mapped(&m, &sample("canal", 4).0, None);
    assert_eq!(&*c.pk, r#"{"name":"scooter"}"#);
}

#[test]
fn missing_pk_is_an_error() {
    let m = table("inventory.products", "keys = [\"product:{id}\"]");
    assert_eq!(
        failure(&m, &pg_create(), None, "inventory.products"),
        Reason::MissingPk
    );
    let m = table(
        "inventory.products",
        "pk = [\"sku\"]\nkeys = [\"product:{id}\"]",
    );
    assert_eq!(failure(&m, &pg_create(), None, "sku"), Reason::MissingPk);
}

#[test]
fn null_pk_column_is_missing() {
    let m = table("public.users", "pk = [\"id\"]\nkeys = [\"user:{email}\"]");
    let value = debezium("c", "null", r#"{"id":null,"email":"a@x"}"#, PG_SOURCE);
    assert_eq!(failure(&m, &value, None, "id"), Reason::MissingPk);
}

#[test]
fn delete_without_before_image_takes_pk_and_keys_from_the_kafka_key() {
    let (value, _) = sample("debezium-postgres", 8);
    let m = table(
        "inventory.products",
        "keys = [\"product:{id}\"]\nversion = \"column:version\"",
    );
    let c = mapped(&m, &value, Some(r#"{"id":111}"#));
    assert_eq!(c.op, Op::Delete);
    assert_eq!(&*c.pk, r#"{"id":111}"#);
    assert_eq!(keys(&c), ["product:111"]);
    assert_eq!(c.version, None);
    assert_eq!(c.row_hash, 0);

    assert_eq!(
        failure(&m, &value, None, "inventory.products"),
        Reason::MissingPk
    );
}

// ---------------------------------------------------------------------------
// Key templates

#[test]
fn every_template_is_rendered_from_the_row() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\", \"product:{id}:name:{name}\", \"w:{weight}\"]",
    );
    let c = mapped(&m, &pg_create(), None);
    assert_eq!(
        keys(&c),
        ["product:110", "product:110:name:jacket", "w:0.2"]
    );
}

#[test]
fn update_changing_a_key_column_gives_the_new_and_the_old_key() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\", \"desc:{description}\"]",
    );
    let c = mapped(&m, &sample("debezium-postgres", 6).0, None);
    assert_eq!(
        keys(&c),
        [
            "product:106",
            "desc:18oz carpenter hammer",
            "desc:16oz carpenter's hammer"
        ]
    );
}

#[test]
fn maxwell_and_canal_updates_give_the_old_key_from_old() {
    let m = table("test.product", "keys = [\"desc:{description}\"]");
    let c = mapped(&m, &sample("maxwell", 5).0, None);
    assert_eq!(
        keys(&c),
        ["desc:18oz carpenter hammer", "desc:16oz carpenter's hammer"]
    );

    let m = table("inventory.products2", "keys = [\"desc:{description}\"]");
    let c = mapped(&m, &sample("canal", 2).0, None);
    assert_eq!(
        keys(&c),
        ["desc:18oz carpenter hammer", "desc:16oz carpenter's hammer"]
    );
}

#[test]
fn partial_before_image_gives_only_the_keys_it_can() {
    let m = table(
        "public.users",
        "pk = [\"id\"]\nkeys = [\"user:{id}\", \"email:{email}\"]",
    );
    let value = debezium("u", r#"{"id":1}"#, r#"{"id":1,"email":"b@x"}"#, PG_SOURCE);
    assert_eq!(keys(&mapped(&m, &value, None)), ["user:1", "email:b@x"]);
}

#[test]
fn delete_renders_keys_from_the_before_image() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}:{name}\"]",
    );
    let c = mapped(&m, &sample("debezium-postgres", 7).0, None);
    assert_eq!(keys(&c), ["product:111:scooter"]);
}

#[test]
fn template_column_missing_from_the_row_is_an_error() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{sku}\"]",
    );
    assert_eq!(
        failure(&m, &pg_create(), None, "sku"),
        Reason::MissingColumn
    );
}

#[test]
fn template_column_that_is_null_is_an_error() {
    let m = table("public.users", "pk = [\"id\"]\nkeys = [\"email:{email}\"]");
    let value = debezium("c", "null", r#"{"id":1,"email":null}"#, PG_SOURCE);
    assert_eq!(failure(&m, &value, None, "email"), Reason::MissingColumn);
}

#[test]
fn template_column_holding_an_object_or_array_is_an_invalid_key() {
    let m = table(
        "postgres.array_data",
        "pk = [\"name\"]\nkeys = [\"pay:{pay_by_quarter}\"]",
    );
    let value = sample("debezium-flattened", 3).0;
    assert_eq!(
        failure(&m, &value, None, "pay_by_quarter"),
        Reason::InvalidKey
    );

    let m = table("public.users", "pk = [\"id\"]\nkeys = [\"geo:{geo}\"]");
    let value = debezium("c", "null", r#"{"id":1,"geo":{"lat":1}}"#, PG_SOURCE);
    assert_eq!(failure(&m, &value, None, "geo"), Reason::InvalidKey);
}

#[test]
fn template_renders_strings_unescaped_and_scalars_as_written() {
    let m = table(
        "public.users",
        "pk = [\"id\"]\nkeys = [\"u:{name}:{active}:{score}\"]",
    );
    let value = debezium(
        "c",
        "null",
        r#"{"id":1,"name":"a\"b\u00e9","active":false,"score":1.50}"#,
        PG_SOURCE,
    );
    assert_eq!(keys(&mapped(&m, &value, None)), ["u:a\"bé:false:1.50"]);
}

#[test]
fn template_falls_back_to_kafka_key_columns() {
    // The row lacks `tenant`, the Kafka key has it.
    let m = table("public.users", "keys = [\"user:{tenant}:{id}\"]");
    let value = debezium("c", "null", r#"{"id":1,"email":"a@x"}"#, PG_SOURCE);
    let c = mapped(&m, &value, Some(r#"{"tenant":"t1","id":1}"#));
    assert_eq!(keys(&c), ["user:t1:1"]);
}

// ---------------------------------------------------------------------------
// Versions

#[test]
fn column_version_is_the_column_s_integer() {
    let m = table(
        "public.users",
        "pk = [\"id\"]\nkeys = [\"user:{id}\"]\nversion = \"column:version\"",
    );
    let value = debezium("u", "null", r#"{"id":1,"version":7}"#, PG_SOURCE);
    let c = mapped(&m, &value, None);
    assert_eq!(c.version, Some(Version::scalar(7)));
    assert!(c.rules.row_version);
}

#[test]
fn column_version_accepts_canal_digit_strings() {
    let m = table(
        "inventory.products2",
        "keys = [\"product:{id}\"]\nversion = \"column:id\"",
    );
    let c = mapped(&m, &sample("canal", 4).0, None);
    assert_eq!(c.version, Some(Version::scalar(111)));

    let m = table(
        "shop.items",
        "keys = [\"item:{id}\"]\nversion = \"column:version\"",
    );
    let value = r#"{"data":[{"id":"1","version":"12"}],"database":"shop","table":"items","es":1700000000000,"id":3,"isDdl":false,"old":[{"version":"11"}],"pkNames":["id"],"type":"UPDATE"}"#;
    assert_eq!(mapped(&m, value, None).version, Some(Version::scalar(12)));
}

#[test]
fn column_version_missing_from_an_update_is_an_error() {
    let m = table(
        "public.users",
        "pk = [\"id\"]\nkeys = [\"user:{id}\"]\nversion = \"column:version\"",
    );
    for after in [r#"{"id":1}"#, r#"{"id":1,"version":null}"#] {
        let value = debezium("u", "null", after, PG_SOURCE);
        assert_eq!(
            failure(&m, &value, None, "version"),
            Reason::MissingVersion,
            "{after}"
        );
    }
}

#[test]
fn column_version_that_is_not_a_non_negative_integer_is_an_error() {
    let m = table(
        "public.users",
        "pk = [\"id\"]\nkeys = [\"user:{id}\"]\nversion = \"column:version\"",
    );
    for bad in ["-1", "1.5", "\"abc\"", "true", "[1]", "\"\""] {
        let value = debezium(
            "c",
            "null",
            &format!(r#"{{"id":1,"version":{bad}}}"#),
            PG_SOURCE,
        );
        assert_eq!(
            failure(&m, &value, None, "version"),
            Reason::MissingVersion,
            "{bad}"
        );
    }
}

#[test]
fn column_version_of_a_delete_comes_from_the_before_image_or_is_none() {
    let m = table(
        "public.users",
        "pk = [\"id\"]\nkeys = [\"user:{id}\"]\nversion = \"column:version\"",
    );
    let value = debezium("d", r#"{"id":1,"version":9}"#, "null", PG_SOURCE);
    assert_eq!(mapped(&m, &value, None).version, Some(Version::scalar(9)));
    let value = debezium("d", r#"{"id":1}"#, "null", PG_SOURCE);
    assert_eq!(mapped(&m, &value, None).version, None);
}

#[test]
fn lsn_version_is_the_commit_lsn_then_the_change_lsn() {
    let m = table(
        "public.customers",
        "keys = [\"customer:{id}\"]\nversion = \"lsn\"",
    );
    let c = mapped(&m, &sample("debezium-postgres", 0).0, Some(r#"{"id":1}"#));
    assert_eq!(c.version, Some(Version::new(24_023_119, 24_023_128)));
    assert!(!c.rules.row_version);
}

#[test]
fn lsn_version_without_a_commit_lsn_repeats_the_change_lsn() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\"]\nversion = \"lsn\"",
    );
    assert_eq!(
        mapped(&m, &pg_create(), None).version,
        Some(Version::new(34_132_560, 34_132_560))
    );
}

#[test]
fn lsn_version_of_a_record_without_lsn_is_an_error() {
    let m = table(
        "inventory.customers",
        "pk = [\"id\"]\nkeys = [\"customer:{id}\"]\nversion = \"lsn\"",
    );
    let value = sample("debezium-mysql", 3).0;
    assert_eq!(failure(&m, &value, None, "LSN"), Reason::MissingVersion);
}

#[test]
fn binlog_version_is_file_and_position_then_row() {
    let m = table(
        "inventory.customers",
        "pk = [\"id\"]\nkeys = [\"customer:{id}\"]\nversion = \"binlog\"",
    );
    let c = mapped(&m, &sample("debezium-mysql", 3).0, None);
    assert_eq!(c.version, Some(Version::new((3 << 32) | 154, 0)));

    let value = debezium(
        "u",
        "null",
        r#"{"id":1}"#,
        r#""db":"inventory","table":"customers","ts_ms":1700000000000,"file":"mysql-bin.000012","pos":9000,"row":2"#,
    );
    assert_eq!(
        mapped(&m, &value, None).version,
        Some(Version::new((12 << 32) | 9000, 2))
    );
}

#[test]
fn binlog_version_from_maxwell_position_and_xoffset() {
    let m = table("test.e", "keys = [\"e:{id}\"]\nversion = \"binlog\"");
    let c = mapped(&m, &sample("maxwell", 0).0, None);
    assert_eq!(c.version, Some(Version::new((6 << 32) | 800_911, 0)));
}

#[test]
fn binlog_version_falls_back_to_the_gtid() {
    let m = table(
        "inventory.customers",
        "pk = [\"id\"]\nkeys = [\"customer:{id}\"]\nversion = \"binlog\"",
    );
    let value = debezium(
        "u",
        "null",
        r#"{"id":1}"#,
        r#""db":"inventory","table":"customers","ts_ms":1700000000000,"gtid":"3e11fa47-71ca-11e1-9e33-c80aa9429562:23","row":1"#,
    );
    assert_eq!(mapped(&m, &value, None).version, Some(Version::new(23, 1)));
}

#[test]
fn binlog_version_orders_by_transaction_order_before_row() {
    let m = table(
        "inventory.customers",
        "pk = [\"id\"]\nkeys = [\"customer:{id}\"]\nversion = \"binlog\"",
    );
    let value = r#"{"op":"u","after":{"id":1},"source":{"db":"inventory","table":"customers","ts_ms":1700000000000,"file":"mysql-bin.000001","pos":10,"row":2},"transaction":{"id":"tx-1","total_order":4,"data_collection_order":1}}"#;
    let c = mapped(&m, value, None);
    assert_eq!(c.version, Some(Version::new((1 << 32) | 10, 4)));
    assert_eq!(c.tx_id.as_deref(), Some("tx-1"));
}

#[test]
fn binlog_version_of_a_record_without_position_is_an_error() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\"]\nversion = \"binlog\"",
    );
    assert_eq!(
        failure(&m, &pg_create(), None, "binlog"),
        Reason::MissingVersion
    );
}

#[test]
fn ts_ms_version_is_the_commit_time_then_the_order() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\"]\nversion = \"ts_ms\"",
    );
    let c = mapped(&m, &pg_create(), None);
    assert_eq!(c.version, Some(Version::new(1_596_010_946_488, 0)));
    assert!(!c.rules.row_version);

    // Version source by default.
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\"]",
    );
    assert_eq!(
        mapped(&m, &pg_create(), None).version,
        Some(Version::new(1_596_010_946_488, 0))
    );
}

#[test]
fn ts_ms_versions_of_canal_rows_follow_their_order() {
    let m = table("inventory.products2", "keys = [\"product:{id}\"]");
    let all = map_all(&m, &sample("canal", 1).0, None, &kafka("cdc"), None);
    assert_eq!(all.len(), 9);
    for (i, out) in all.into_iter().enumerate() {
        let Ok(Mapped::Change(c)) = out else {
            panic!("row {i}: {out:?}")
        };
        assert_eq!(
            c.version,
            Some(Version::new(1_589_373_515_000, i as u64)),
            "row {i}"
        );
        assert_eq!(&*c.pk, format!(r#"{{"id":"{}"}}"#, 101 + i));
    }
}

#[test]
fn ts_ms_version_of_a_record_without_commit_time_is_never_none() {
    // Change::version: "None only for a delete without a before image in a
    // table versioned by a column". Here: an update of a ts_ms table whose
    // record carries no commit time (a flattened record without
    // __source_ts_ms); the commit time is the Kafka timestamp.
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\"]",
    );
    let value = r#"{"id":5,"name":"x","__op":"u","__table":"products","__schema":"inventory"}"#;
    match map(&m, value, None) {
        Ok(Mapped::Change(c)) => {
            assert_eq!(c.commit_ts_ms, KAFKA_TS);
            assert!(c.version.is_some(), "an update without a version: {c:?}");
        }
        Err(e) => assert_eq!(e.reason, Reason::MissingVersion, "{e}"),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Commit time

#[test]
fn commit_time_comes_from_the_record() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\"]",
    );
    assert_eq!(
        mapped(&m, &pg_create(), None).commit_ts_ms,
        1_596_010_946_488
    );
}

#[test]
fn commit_time_falls_back_to_the_kafka_timestamp() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\"]",
    );
    let value = r#"{"id":5,"__op":"u","__table":"products","__schema":"inventory"}"#;
    let out = map_with(&m, value, None, &kafka("cdc"), Some(KAFKA_TS));
    let Ok(Mapped::Change(c)) = out else {
        panic!("{out:?}")
    };
    assert_eq!(c.commit_ts_ms, KAFKA_TS);
}

#[test]
fn change_without_any_time_is_an_error() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\"]",
    );
    let value = r#"{"id":5,"__op":"u","__table":"products","__schema":"inventory"}"#;
    let err = map_with(&m, value, None, &kafka("cdc"), None).unwrap_err();
    assert_eq!(err.reason, Reason::MissingTimestamp);
}

// ---------------------------------------------------------------------------
// Truncates

#[test]
fn truncate_of_a_mapped_table_obliges_the_glob_of_each_key_template() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\", \"product:{sku}\", \"product:{id}:{sku}\"]\n\
         version = \"column:version\"\ndeadline = \"5s\"",
    );
    let value = r#"{"op":"t","before":null,"after":null,"source":{"schema":"inventory","table":"products"}}"#;
    // Neither a primary key nor a version is needed; the Kafka timestamp
    // stands in for the commit time.
    let Ok(Mapped::Change(c)) = map_with(&m, value, None, &kafka("cdc"), Some(KAFKA_TS)) else {
        panic!("a truncate is a change")
    };
    assert_eq!(c.op, Op::Truncate);
    assert_eq!(&*c.table, "inventory.products");
    assert_eq!(&*c.pk, "{}");
    assert_eq!(c.version, None);
    assert_eq!(c.commit_ts_ms, KAFKA_TS);
    assert_eq!(c.rules.deadline_ms, 5_000);
    // `product:{id}` and `product:{sku}` have the same glob: it is obliged once.
    let keys: Vec<&str> = c.keys.iter().map(|k| &**k).collect();
    assert_eq!(keys, ["product:*", "product:*:*"]);
    // Without any time there is no deadline to judge it by.
    let err = map_with(&m, value, None, &kafka("cdc"), None).unwrap_err();
    assert_eq!(err.reason, Reason::MissingTimestamp);

    let m = table("shop.items", "keys = [\"item:{id}\"]");
    let canal = r#"{"data":null,"database":"shop","table":"items","es":1700000000000,"id":4,"isDdl":false,"type":"TRUNCATE"}"#;
    let c = mapped(&m, canal, None);
    assert_eq!((c.op, c.commit_ts_ms), (Op::Truncate, 1_700_000_000_000));
    assert_eq!(c.keys.as_slice(), ["item:*"]);
}

#[test]
fn truncate_of_an_unmapped_table_is_unmapped() {
    let m = table("inventory.orders", "pk = [\"id\"]\nkeys = [\"order:{id}\"]");
    let value = r#"{"op":"t","source":{"schema":"inventory","table":"products","ts_ms":1}}"#;
    assert_eq!(unmapped(&m, value, &kafka("cdc")), "inventory.products");
}

// ---------------------------------------------------------------------------
// The change itself

#[test]
fn change_carries_identity_rules_and_provenance() {
    let m = mapper(
        "[detect]\ndeadline = \"20s\"\n\
         [[tables]]\ntable = \"inventory.products\"\npk = [\"id\"]\nkeys = [\"product:{id}\"]\n\
         version = \"column:id\"\ncontiguous = true\ndeadline = \"5s\"\n\
         [[tables]]\ntable = \"inventory.customers\"\npk = [\"id\"]\nkeys = [\"customer:{id}\"]\n",
    );
    let provenance = kafka("dbserver1.inventory.products");
    let value = pg_create();
    let Ok(Mapped::Change(c)) = map_with(&m, &value, None, &provenance, Some(KAFKA_TS)) else {
        panic!("a change")
    };
    assert_eq!(c.op, Op::Create);
    assert_eq!(
        c.entity,
        hash::entity("inventory.products", r#"{"id":110}"#)
    );
    assert_eq!(
        c.rules,
        TableRules {
            deadline_ms: 5_000,
            contiguous: true,
            row_version: true
        }
    );
    assert_eq!(c.provenance, provenance);
    assert_eq!(c.tx_id.as_deref(), Some("604"));
    assert_ne!(c.row_hash, 0);
    assert_eq!(
        c.id,
        hash::change(
            c.entity,
            Op::Create,
            c.version,
            1_596_010_946_488,
            c.row_hash
        )
    );

    let other = mapped(&m, &sample("debezium-mysql", 3).0, None);
    assert_eq!(other.rules.deadline_ms, 20_000, "the default deadline");
    assert!(!other.rules.contiguous);
}

#[test]
fn ids_and_texts_of_a_change_are_pinned_across_releases() {
    // A primary-key name that JSON escapes (a quote, a backslash, control
    // characters; not its non-ASCII letter), keys from escaped strings.
    let m = table(
        "public.users",
        "pk = [\"id\", \"r\\\"e\\\\g\\b\\u001fión\"]\nkeys = [\"user:{id}:{email}\", \"user:{email}\"]",
    );
    let row = r#"{"id":1,"r\"e\\g\b\u001fión":"eu","email":"a\u0040x","tags":[1, "a b"],"n":null}"#;
    let c = mapped(&m, &debezium("u", "null", row, PG_SOURCE), None);
    assert_eq!(&*c.pk, r#"{"id":1,"r\"e\\g\b\u001fión":"eu"}"#);
    assert_eq!(keys(&c), ["user:1:a@x", "user:a@x"]);
    assert_eq!(
        [c.entity, c.row_hash, c.id],
        [
            8_099_958_932_498_936_358,
            5_012_044_095_952_664_401,
            9_578_511_510_227_230_071
        ]
    );
}

#[test]
fn row_hash_is_of_the_after_image_or_the_before_image_of_a_delete() {
    let m = table("public.users", "pk = [\"id\"]\nkeys = [\"user:{id}\"]");
    let row = r#"{"id":1,"email":"a@x"}"#;
    let create = mapped(&m, &debezium("c", "null", row, PG_SOURCE), None);
    let delete = mapped(&m, &debezium("d", row, "null", PG_SOURCE), None);
    assert_eq!(create.row_hash, delete.row_hash);
    let other = mapped(
        &m,
        &debezium("c", "null", r#"{"id":1,"email":"b@x"}"#, PG_SOURCE),
        None,
    );
    assert_ne!(create.row_hash, other.row_hash);
}

#[test]
fn redelivered_record_has_the_same_id() {
    let m = table(
        "inventory.products",
        "pk = [\"id\"]\nkeys = [\"product:{id}\"]",
    );
    let value = pg_create();
    let first = map_with(&m, &value, None, &kafka("cdc"), Some(KAFKA_TS)).unwrap();
    let mut later = kafka("cdc");
    later.offset = 9_999;
    let again = map_with(&m, &value, None, &later, Some(KAFKA_TS + 60_000)).unwrap();
    let (Mapped::Change(a), Mapped::Change(b)) = (first, again) else {
        panic!("changes")
    };
    assert_eq!(a.id, b.id);
    assert_eq!(a.entity, b.entity);
    assert_eq!(b.provenance.offset, 9_999);
}

#[test]
fn distinct_changes_of_one_row_have_distinct_ids() {
    let m = table("public.users", "pk = [\"id\"]\nkeys = [\"user:{id}\"]");
    let base = mapped(
        &m,
        &debezium("u", "null", r#"{"id":1,"email":"a@x"}"#, PG_SOURCE),
        None,
    );
    let other_row = mapped(
        &m,
        &debezium("u", "null", r#"{"id":1,"email":"b@x"}"#, PG_SOURCE),
        None,
    );
    let other_op = mapped(
        &m,
        &debezium("c", "null", r#"{"id":1,"email":"a@x"}"#, PG_SOURCE),
        None,
    );
    let later_source = PG_SOURCE
        .replace("1700000000000", "1700000000001")
        .replace("5000", "5001");
    let other_time = mapped(
        &m,
        &debezium("u", "null", r#"{"id":1,"email":"a@x"}"#, &later_source),
        None,
    );
    assert_eq!(base.entity, other_row.entity);
    let ids = [base.id, other_row.id, other_op.id, other_time.id];
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            assert_ne!(a, b, "{ids:?}");
        }
    }
}
