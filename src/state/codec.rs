//! Encoding of stored values and keys.
//!
//! A value is `[FORMAT_VERSION][last touched, i64 little-endian][bincode]`:
//! the leading byte lets a later release read or migrate older state, and the
//! fixed-position timestamp lets the retention filter judge an entry without
//! decoding it.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Cf, StateError};

/// Version of the value layout. Bump it when a stored type changes shape.
pub const FORMAT_VERSION: u8 = 3;

const HEADER: usize = 9;

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// Encodes a value touched (event time) at `touched_ms`.
pub fn encode<T: Serialize>(touched_ms: i64, value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&touched_ms.to_le_bytes());
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .expect("writing into a Vec cannot fail and state types always serialize");
    out
}

/// Decodes a value written by [`encode`], returning its touch time too.
pub fn decode<T: DeserializeOwned>(cf: Cf, bytes: &[u8]) -> Result<(i64, T), StateError> {
    let corrupt = |message: String| StateError::Corrupt {
        cf: cf.name(),
        message,
    };
    let touched = touched(bytes).ok_or_else(|| {
        corrupt(format!(
            "value of {} bytes has no valid header",
            bytes.len()
        ))
    })?;
    let (value, _) = bincode::serde::decode_from_slice(&bytes[HEADER..], config())
        .map_err(|e| corrupt(format!("cannot decode value: {e}")))?;
    Ok((touched, value))
}

/// The touch time of an encoded value, if its header is valid.
pub fn touched(bytes: &[u8]) -> Option<i64> {
    if bytes.len() < HEADER || bytes[0] != FORMAT_VERSION {
        return None;
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&bytes[1..HEADER]);
    Some(i64::from_le_bytes(ts))
}

/// An i64 as 8 bytes whose byte order is the numeric order.
pub fn ordered_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

/// Inverse of [`ordered_i64`].
pub fn from_ordered_i64(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// The first bytes of every key of a scope.
pub fn scope_prefix(scope: i32) -> [u8; 4] {
    (scope as u32).to_be_bytes()
}

/// The keys of a scope in a scoped family: from its prefix (included) to
/// the next scope's (excluded).
pub fn scope_range(scope: i32) -> ([u8; 4], [u8; 4]) {
    (scope_prefix(scope), scope_prefix(scope.saturating_add(1)))
}

/// A key of a scoped family: the scope, then `key`.
pub fn scoped(scope: i32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&scope_prefix(scope));
    k.extend_from_slice(key);
    k
}

/// Splits a scoped key into scope and the rest.
pub fn unscoped(key: &[u8]) -> Option<(i32, &[u8])> {
    let (prefix, rest) = key.split_at_checked(4)?;
    Some((u32::from_be_bytes(prefix.try_into().ok()?) as i32, rest))
}

/// Key of a timer (or of a retained glob): scope, due time (ordered) then
/// the cache key (or glob), so that a scan returns a scope's timers in due
/// order.
pub fn timer_key(scope: i32, due_ms: i64, cache_key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(12 + cache_key.len());
    k.extend_from_slice(&scope_prefix(scope));
    k.extend_from_slice(&ordered_i64(due_ms));
    k.extend_from_slice(cache_key.as_bytes());
    k
}

/// Splits a timer key into scope, due time and cache key.
pub fn parse_timer_key(key: &[u8]) -> Option<(i32, i64, &str)> {
    let (scope, rest) = unscoped(key)?;
    let (due, cache_key) = rest.split_at_checked(8)?;
    let due = from_ordered_i64(due.try_into().ok()?);
    Some((scope, due, std::str::from_utf8(cache_key).ok()?))
}

/// Key of an input position: source name, a zero byte, partition.
pub fn offset_key(source: &str, partition: i32) -> Vec<u8> {
    let mut k = Vec::with_capacity(source.len() + 5);
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// Value of an input position: the next offset to read, then (when the
/// partition has shown one) the highest event time read from it, so that
/// a restarted instance does not wait for a partition with nothing new to
/// read to tell it the time again. Values of 8 bytes (offset only) are
/// those written before the event time was kept.
pub fn offset_value(next_offset: i64, event_time: Option<i64>) -> Vec<u8> {
    let mut v = next_offset.to_le_bytes().to_vec();
    if let Some(ts) = event_time {
        v.extend_from_slice(&ts.to_le_bytes());
    }
    v
}

/// The next offset an [`offset_value`] holds (`None`: not one).
pub fn parse_offset_value(value: &[u8]) -> Option<i64> {
    match value.len() {
        8 | 16 => value[..8].try_into().ok().map(i64::from_le_bytes),
        _ => None,
    }
}

/// The event time an [`offset_value`] holds, if it holds one.
pub fn parse_offset_event_time(value: &[u8]) -> Option<i64> {
    match value.len() {
        16 => value[8..].try_into().ok().map(i64::from_le_bytes),
        _ => None,
    }
}

/// Splits an offset key into source name and partition.
pub fn parse_offset_key(key: &[u8]) -> Option<(&str, i32)> {
    let split = key.len().checked_sub(5)?;
    if key[split] != 0 {
        return None;
    }
    let source = std::str::from_utf8(&key[..split]).ok()?;
    let mut p = [0u8; 4];
    p.copy_from_slice(&key[split + 1..]);
    Some((source, i32::from_be_bytes(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_keep_their_event_time_and_read_the_older_form() {
        let v = offset_value(42, Some(1_700_000_000_000));
        assert_eq!(parse_offset_value(&v), Some(42));
        assert_eq!(parse_offset_event_time(&v), Some(1_700_000_000_000));
        let old = offset_value(7, None);
        assert_eq!(
            (parse_offset_value(&old), parse_offset_event_time(&old)),
            (Some(7), None)
        );
        assert_eq!(parse_offset_value(&[1, 2, 3]), None);
        assert_eq!(parse_offset_event_time(&[0; 12]), None);
    }

    #[test]
    fn values_round_trip_with_their_touch_time() {
        let bytes = encode(-42, &("abc".to_string(), 7u64, Some(3i64)));
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(touched(&bytes), Some(-42));
        let (t, v): (i64, (String, u64, Option<i64>)) = decode(Cf::Keys, &bytes).unwrap();
        assert_eq!((t, v), (-42, ("abc".to_string(), 7, Some(3))));
    }

    /// A key's changes and ids are held inline while few; the store keeps
    /// them as it kept vectors, so stores written before read the same.
    #[test]
    fn vectors_held_inline_are_stored_as_vectors() {
        let ids: crate::model::SeenIds = [7u64, 9].into_iter().collect();
        assert_eq!(encode(1, &ids), encode(1, &vec![7u64, 9]));
        let (_, back): (i64, Vec<u64>) = decode(Cf::Keys, &encode(1, &ids)).unwrap();
        assert_eq!(back, [7, 9]);
        let spilled: crate::model::SeenIds = (1..=5u64).collect();
        assert_eq!(
            encode(1, &spilled),
            encode(1, &(1..=5u64).collect::<Vec<_>>())
        );
    }

    #[test]
    fn corrupt_values_are_errors_not_panics() {
        assert!(decode::<u64>(Cf::Keys, &[]).is_err());
        assert!(decode::<u64>(Cf::Keys, &[99, 0, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
        let mut bytes = encode(1, &"long string".to_string());
        bytes.truncate(12);
        assert!(decode::<String>(Cf::Keys, &bytes).is_err());
    }

    #[test]
    fn ordered_keys_sort_numerically() {
        let mut ts = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        let mut keys: Vec<_> = ts.iter().map(|t| timer_key(3, *t, "k")).collect();
        keys.sort();
        let back: Vec<i64> = keys.iter().map(|k| parse_timer_key(k).unwrap().1).collect();
        ts.sort();
        assert_eq!(back, ts);
        assert_eq!(
            parse_timer_key(&timer_key(7, 5, "user:1")),
            Some((7, 5, "user:1"))
        );
        assert_eq!(unscoped(&scoped(2, b"abc")), Some((2, &b"abc"[..])));
        assert!(
            scoped(1, b"zzz") < scoped(2, b""),
            "scopes are contiguous key ranges"
        );
        assert_eq!(
            parse_offset_key(&offset_key("topic.a", 7)),
            Some(("topic.a", 7))
        );
    }
}
