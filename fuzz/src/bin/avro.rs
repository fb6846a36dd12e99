//! Fuzz target: Debezium records in Confluent's Avro framing, decoded with
//! the writer schemas of a generated table.

fn main() {
    let schemas = vigil_fuzz::avro_schemas();
    afl::fuzz!(|data: &[u8]| vigil_fuzz::avro(&schemas, data));
}
