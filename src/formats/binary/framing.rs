//! The framings a schema registry's records come in: a magic byte 0, then
//! Confluent's 4-byte schema id ([`framed`]) or Apicurio's 8-byte global id
//! ([`framed_apicurio`]), then the payload (an Avro datum, Protobuf message
//! indexes and message, or JSON text). No JSON text starts with byte 0.

/// The magic byte that opens a record in a registry's framing.
const MAGIC: u8 = 0;

/// A record in a registry's framing: its schema's id and the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed<'a> {
    pub schema_id: u32,
    pub datum: &'a [u8],
}

/// Whether bytes are in Confluent's framing: byte 0, then a 4-byte
/// big-endian schema id.
pub fn framed(bytes: &[u8]) -> Option<Framed<'_>> {
    match bytes {
        [MAGIC, a, b, c, d, datum @ ..] => Some(Framed {
            schema_id: u32::from_be_bytes([*a, *b, *c, *d]),
            datum,
        }),
        _ => None,
    }
}

/// The opening of a record in Confluent's framing with schema `id` (byte
/// 0, the id), in a vector with room for `payload` bytes after it.
pub fn confluent_opening(id: u32, payload: usize) -> Vec<u8> {
    let mut framed = Vec::with_capacity(5 + payload);
    framed.push(MAGIC);
    framed.extend(id.to_be_bytes());
    framed
}

/// A record in Apicurio's framing: its schema's global id and the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalFramed<'a> {
    pub global_id: u64,
    pub datum: &'a [u8],
}

/// Whether bytes are in Apicurio's framing: byte 0, then an 8-byte
/// big-endian global id.
pub fn framed_apicurio(bytes: &[u8]) -> Option<GlobalFramed<'_>> {
    let (id, datum) = bytes.strip_prefix(&[MAGIC])?.split_first_chunk::<8>()?;
    Some(GlobalFramed {
        global_id: u64::from_be_bytes(*id),
        datum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confluent_framing_is_byte_zero_and_a_schema_id() {
        assert_eq!(
            framed(&[0, 0, 0, 1, 2, 9]),
            Some(Framed {
                schema_id: 258,
                datum: &[9]
            })
        );
        assert_eq!(framed(&[0, 0, 0, 1]), None, "too short for an id");
        assert_eq!(framed(b"{\"op\":\"c\"}"), None);
        assert_eq!(framed(b""), None);
    }

    #[test]
    fn apicurio_framing_is_byte_zero_and_a_global_id() {
        assert_eq!(
            framed_apicurio(&[0, 0, 0, 0, 0, 0, 0, 1, 2, 9]),
            Some(GlobalFramed {
                global_id: 258,
                datum: &[9]
            })
        );
        assert_eq!(
            framed_apicurio(&[0, 1, 0, 0, 0, 0, 0, 0, 0]),
            Some(GlobalFramed {
                global_id: 1 << 56,
                datum: &[]
            })
        );
        assert_eq!(framed_apicurio(&[0, 0, 0, 0, 0, 0, 0, 1]), None);
        assert_eq!(framed_apicurio(b"{\"op\":\"c\"}"), None);
    }
}
