//! Fuzz target: records in Apicurio's framing, Avro or Protobuf by their
//! global id.

fn main() {
    let avro = vigil_fuzz::avro_schemas();
    let proto = vigil_fuzz::proto_schemas();
    afl::fuzz!(|data: &[u8]| vigil_fuzz::apicurio(&avro, &proto, data));
}
