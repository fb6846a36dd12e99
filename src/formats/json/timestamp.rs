//! Event times of cache events to ms since the epoch: epoch numbers (seconds
//! or milliseconds) and RFC 3339 text.

use crate::model::Millis;

/// 9999-12-31T23:59:59.999Z, the latest time an RFC 3339 text can name; epoch
/// numbers beyond it (either side of the epoch) are rejected too.
const MAX_MS: Millis = 253_402_300_799_999;

/// The text of a JSON number: epoch seconds, possibly fractional, when its
/// absolute value is below 1e11, else epoch milliseconds; rounded to the
/// nearest millisecond.
pub(in crate::formats) fn epoch_number_ms(text: &str) -> Option<Millis> {
    let value: f64 = text.parse().ok()?;
    let ms = if value.abs() < 1e11 {
        value * 1000.0
    } else {
        value
    }
    .round();
    // Also false for NaN; in range, the conversion is exact.
    (ms.abs() <= MAX_MS as f64).then_some(ms as Millis)
}

/// An RFC 3339 date-time (`2024-05-01T12:00:00Z`,
/// `2024-05-01T12:00:00.123+02:00`; `T` and `Z` in either case, 1 to 9
/// fraction digits rounded to the nearest millisecond, a leap second `:60`
/// taken as the next second).
pub fn parse_rfc3339(text: &str) -> Option<Millis> {
    let mut cursor = Cursor {
        bytes: text.as_bytes(),
        at: 0,
    };
    let year = cursor.number(4)?;
    cursor.expect(b"-")?;
    let month = cursor.number(2)?;
    cursor.expect(b"-")?;
    let day = cursor.number(2)?;
    cursor.expect(b"Tt")?;
    let hour = cursor.number(2)?;
    cursor.expect(b":")?;
    let minute = cursor.number(2)?;
    cursor.expect(b":")?;
    let second = cursor.number(2)?;
    let frac_ms = if cursor.expect(b".").is_some() {
        cursor.fraction_ms()?
    } else {
        0
    };
    let offset_minutes = match cursor.expect(b"Zz+-")? {
        b'+' => cursor.offset()?,
        b'-' => -cursor.offset()?,
        _ => 0,
    };
    let valid = cursor.at == cursor.bytes.len()
        && (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour <= 23
        && minute <= 59
        && second <= 60;
    if !valid {
        return None;
    }
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_minutes * 60;
    Some(seconds * 1000 + frac_ms)
}

/// A forward-only reader over the bytes of a date-time.
struct Cursor<'t> {
    bytes: &'t [u8],
    at: usize,
}

impl Cursor<'_> {
    /// Exactly `len` decimal digits.
    fn number(&mut self, len: usize) -> Option<i64> {
        let digits = self.bytes.get(self.at..self.at + len)?;
        let mut value = 0;
        for &b in digits {
            if !b.is_ascii_digit() {
                return None;
            }
            value = value * 10 + i64::from(b - b'0');
        }
        self.at += len;
        Some(value)
    }

    /// One byte among `allowed`, returned.
    fn expect(&mut self, allowed: &[u8]) -> Option<u8> {
        let b = *self.bytes.get(self.at).filter(|b| allowed.contains(b))?;
        self.at += 1;
        Some(b)
    }

    /// 1 to 9 fraction digits, rounded to milliseconds (0 to 1000).
    fn fraction_ms(&mut self) -> Option<i64> {
        let mut nanos = 0;
        let mut len: u32 = 0;
        while let Some(digit) = self.bytes.get(self.at).filter(|b| b.is_ascii_digit()) {
            if len == 9 {
                return None;
            }
            nanos = nanos * 10 + i64::from(digit - b'0');
            len += 1;
            self.at += 1;
        }
        if len == 0 {
            return None;
        }
        nanos *= 10_i64.pow(9 - len);
        Some((nanos + 500_000) / 1_000_000)
    }

    /// `HH:MM` after the sign of an offset, in minutes.
    fn offset(&mut self) -> Option<i64> {
        let hours = self.number(2)?;
        self.expect(b":")?;
        let minutes = self.number(2)?;
        (hours <= 23 && minutes <= 59).then_some(hours * 60 + minutes)
    }
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
pub(in crate::formats) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::{epoch_number_ms, parse_rfc3339};

    #[test]
    fn epoch_numbers() {
        assert_eq!(epoch_number_ms("0"), Some(0));
        assert_eq!(epoch_number_ms("1700000000"), Some(1700000000000));
        assert_eq!(epoch_number_ms("1700000000.123"), Some(1700000000123));
        assert_eq!(epoch_number_ms("1700000000.1236"), Some(1700000000124));
        assert_eq!(epoch_number_ms("1.7e9"), Some(1700000000000));
        assert_eq!(epoch_number_ms("99999999999"), Some(99999999999000));
        // From 1e11 on, milliseconds.
        assert_eq!(epoch_number_ms("100000000000"), Some(100000000000));
        assert_eq!(epoch_number_ms("1700000000123"), Some(1700000000123));
        assert_eq!(epoch_number_ms("1700000000123.6"), Some(1700000000124));
        assert_eq!(epoch_number_ms("-1.5"), Some(-1500));
        assert_eq!(epoch_number_ms("1e300"), None);
        assert_eq!(epoch_number_ms("abc"), None);
    }

    #[test]
    fn rfc3339_known_values() {
        let cases = [
            ("1970-01-01T00:00:00Z", 0),
            ("1970-01-01T00:00:00.001Z", 1),
            ("1969-12-31T23:59:59Z", -1000),
            ("2000-01-01T00:00:00Z", 946684800000),
            ("2024-02-29T00:00:00Z", 1709164800000),
            ("2024-03-01T00:00:00Z", 1709251200000),
            ("2024-05-01T12:00:00Z", 1714564800000),
            ("2024-05-01t12:00:00z", 1714564800000),
            ("2024-05-01T12:00:00.123+02:00", 1714557600123),
            ("2024-05-01T12:00:00-05:30", 1714584600000),
            ("2024-05-01T12:00:00.5Z", 1714564800500),
            ("2024-05-01T12:00:00.123456789Z", 1714564800123),
            ("2024-05-01T12:00:00.9996Z", 1714564801000),
            ("2016-12-31T23:59:60Z", 1483228800000),
            ("9999-12-31T23:59:59.999Z", 253402300799999),
            ("0000-01-01T00:00:00Z", -62167219200000),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_rfc3339(text), Some(ms), "{text}");
        }
    }

    #[test]
    fn rfc3339_rejects() {
        let cases = [
            "",
            "garbage",
            "2024-13-01T00:00:00Z",
            "2024-00-01T00:00:00Z",
            "2024-01-32T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-05-01 12:00:00Z",
            "2024-05-0112:00:00Z",
            "2024-05-01T24:00:00Z",
            "2024-05-01T12:60:00Z",
            "2024-05-01T12:00:61Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00.Z",
            "2024-05-01T12:00:00.1234567891Z",
            "2024-05-01T12:00:00+2:00",
            "2024-05-01T12:00:00+24:00",
            "2024-05-01T12:00:00+02:60",
            "2024-05-01T12:00:00Z ",
            "2024-05-01",
            "+2024-05-01T12:00:00Z",
            "2024-5-01T12:00:00Z",
            "2024-05-01T12:00:00.12٣Z",
        ];
        for text in cases {
            assert_eq!(parse_rfc3339(text), None, "{text}");
        }
    }
}
