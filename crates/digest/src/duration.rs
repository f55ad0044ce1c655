//! Go-style durations (`30s`, `1h30m`, `1.5h`, `250ms`), because bazel-remote
//! configurations are written for Go's `time.ParseDuration`. As an extension,
//! a bare integer (in YAML, or as a string from a flag) is a number of seconds.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// Parses a Go duration string, or a bare integer meaning seconds.
///
/// Negative durations are rejected: every duration we accept is a timeout.
pub fn parse_go_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("duration {input:?} is out of range"));
    }
    let (negative, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let invalid = || {
        format!(
            "invalid duration {input:?} (expected e.g. \"30s\", \"1h30m\" or a number of seconds)"
        )
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid());
    }

    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, after_int) = rest.split_at(int_len);
        let (frac_part, after_number) = match after_int.strip_prefix('.') {
            Some(after_dot) => {
                let frac_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
                after_dot.split_at(frac_len)
            }
            None => ("", after_int),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = after_number
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after_number.len());
        let (unit, next) = after_number.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            "" => return Err(format!("missing unit in duration {input:?}")),
            _ => return Err(format!("unknown unit {unit:?} in duration {input:?}")),
        };
        let out_of_range = || format!("duration {input:?} is out of range");
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| out_of_range())?
        };
        // Go keeps the fraction's precision only as far as nanoseconds go;
        // more digits than that cannot change the result.
        let frac_digits = &frac_part[..frac_part.len().min(18)];
        let frac_nanos = if frac_digits.is_empty() {
            0
        } else {
            let frac: u128 = frac_digits.parse().map_err(|_| invalid())?;
            frac * nanos_per_unit / 10u128.pow(frac_digits.len() as u32)
        };
        total = int
            .checked_mul(nanos_per_unit)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| n.checked_add(total))
            .ok_or_else(out_of_range)?;
        rest = next;
    }
    if negative && total != 0 {
        return Err(format!("duration {input:?} must not be negative"));
    }
    // Go durations are int64 nanoseconds; anything larger is a typo.
    let nanos = u64::try_from(total)
        .ok()
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| format!("duration {input:?} is out of range"))?;
    Ok(Duration::from_nanos(nanos))
}

/// A duration in the YAML schema: a Go duration string or whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct GoDurationVisitor;

        impl Visitor<'_> for GoDurationVisitor {
            type Value = GoDuration;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"30s\" or \"1h30m\", or a number of seconds")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<GoDuration, E> {
                parse_go_duration(v).map(GoDuration).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GoDuration, E> {
                Ok(GoDuration(Duration::from_secs(v)))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GoDuration, E> {
                u64::try_from(v)
                    .map(|secs| GoDuration(Duration::from_secs(secs)))
                    .map_err(|_| E::custom(format!("duration {v} must not be negative")))
            }
        }

        deserializer.deserialize_any(GoDurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        parse_go_duration(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn go_syntax() {
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("1h30m"), Duration::from_secs(5400));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("1m0.5s"), Duration::from_millis(60_500));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("2us"), Duration::from_micros(2));
        assert_eq!(ok("2µs"), Duration::from_micros(2));
        assert_eq!(ok("7ns"), Duration::from_nanos(7));
        assert_eq!(ok("+5s"), Duration::from_secs(5));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("-0"), Duration::ZERO);
    }

    #[test]
    fn bare_integer_is_seconds() {
        assert_eq!(ok("45"), Duration::from_secs(45));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "", "s", "1.5", "10x", "1h30", "-5s", "--5s", ".s", "h1", "1..5s",
        ] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_go_duration("3000000h").is_err(), "overflow accepted");
        assert!(
            parse_go_duration("10x")
                .unwrap_err()
                .contains("unknown unit \"x\"")
        );
        assert!(parse_go_duration("-5s").unwrap_err().contains("negative"));
    }

    #[test]
    fn deserializes_strings_and_integers() {
        let d: GoDuration = serde_yaml_ng::from_str("1h30m").unwrap();
        assert_eq!(d.0, Duration::from_secs(5400));
        let d: GoDuration = serde_yaml_ng::from_str("90").unwrap();
        assert_eq!(d.0, Duration::from_secs(90));
        let err = serde_yaml_ng::from_str::<GoDuration>("-3").unwrap_err();
        assert!(err.to_string().contains("negative"), "{err}");
        let err = serde_yaml_ng::from_str::<GoDuration>("[1]").unwrap_err();
        assert!(err.to_string().contains("a duration such as"), "{err}");
    }
}
