//! Fuzz target: Debezium records in Confluent's Protobuf framing, decoded
//! with the schemas of a generated table.

fn main() {
    let schemas = vigil_fuzz::proto_schemas();
    afl::fuzz!(|data: &[u8]| vigil_fuzz::protobuf(&schemas, data));
}
