//! The typed forms of arguments and instance values: versions, instants, numbers; and the
//! compiled argument of a predicate.

use std::cmp::Ordering;

use regex::Regex;

use super::{Operator, ParseError, Property};

/// A predicate's argument in the form its evaluation uses, built once at parse time.
#[derive(Clone, Debug)]
pub(super) enum Compiled {
    /// `exists` / `not_exists`: no argument.
    Nothing,
    /// String equality or membership: the predicate's arguments as written.
    Text,
    /// `agentConnected` equality or membership.
    Bools(Vec<bool>),
    /// A comparison on an attribute or task group: numeric when both sides are numbers, so the
    /// argument's number is kept if it is one.
    Ordered(Option<f64>),
    Pattern(Regex),
    Version(Vec<u64>),
    Count(i64),
    /// Nanoseconds since the Unix epoch.
    Instant(i128),
}

/// A literal as parsed, with where it starts (for error positions).
pub(super) struct Located<'a> {
    pub text: &'a str,
    pub position: usize,
}

pub(super) fn compile(
    property: &Property,
    operator: Operator,
    arguments: &[Located<'_>],
) -> Result<Compiled, ParseError> {
    let error = |argument: &Located<'_>, message: String| ParseError {
        position: argument.position,
        message,
    };
    if !operator.takes_argument() {
        return Ok(Compiled::Nothing);
    }
    let first = &arguments[0];
    if matches!(operator, Operator::Matches | Operator::NotMatches) {
        // Java's Pattern.matches, which ECS uses, matches the whole value.
        return Regex::new(&format!("^(?:{})$", first.text))
            .map(Compiled::Pattern)
            .map_err(|e| error(first, format!("invalid regular expression `{}`: {e}", first.text)));
    }
    match property {
        Property::AgentConnected => arguments
            .iter()
            .map(|argument| match argument.text {
                "true" => Ok(true),
                "false" => Ok(false),
                other => Err(error(argument, format!("agentConnected compares with true or false, not `{other}`"))),
            })
            .collect::<Result<_, _>>()
            .map(Compiled::Bools),
        Property::AgentVersion => parse_version(first.text)
            .map(Compiled::Version)
            .ok_or_else(|| error(first, format!("`{}` is not a version (dotted numbers, e.g. 1.14.5)", first.text))),
        Property::RunningTasksCount => first
            .text
            .parse()
            .map(Compiled::Count)
            .map_err(|_| error(first, format!("`{}` is not an integer", first.text))),
        Property::RegisteredAt => parse_instant(first.text).map(Compiled::Instant).ok_or_else(|| {
            error(
                first,
                format!(
                    "`{}` is not a date (2018-06-18T22:28:28+00:00, 2018-06-18T22:28:28Z, 2018-06-18T22:28:28 or 2018-06-18)",
                    first.text
                ),
            )
        }),
        Property::Ec2InstanceId | Property::Ec2InstanceType | Property::TaskGroup | Property::Attribute(_) => {
            Ok(match operator {
                Operator::GreaterThan | Operator::GreaterThanEqual | Operator::LessThan | Operator::LessThanEqual => {
                    Compiled::Ordered(first.text.parse().ok())
                }
                _ => Compiled::Text,
            })
        }
    }
}

impl Operator {
    /// Whether `value <op> argument` holds, given how `value` orders against `argument`.
    pub(super) fn accepts(self, ordering: Ordering) -> bool {
        match self {
            Operator::Equals => ordering.is_eq(),
            Operator::NotEquals => ordering.is_ne(),
            Operator::GreaterThan => ordering.is_gt(),
            Operator::GreaterThanEqual => ordering.is_ge(),
            Operator::LessThan => ordering.is_lt(),
            Operator::LessThanEqual => ordering.is_le(),
            _ => false,
        }
    }
}

/// Orders an attribute's or task group's value against an argument: as numbers when both are
/// numbers, else as strings. `None` when a number is NaN.
pub(super) fn compare_text(value: &str, argument: &str, argument_number: Option<f64>) -> Option<Ordering> {
    match (value.parse::<f64>(), argument_number) {
        (Ok(value), Some(argument)) => value.partial_cmp(&argument),
        _ => Some(value.cmp(argument)),
    }
}

fn parse_version_part(part: &str) -> Option<u64> {
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

pub(super) fn parse_version(text: &str) -> Option<Vec<u64>> {
    text.split('.').map(parse_version_part).collect()
}

/// Orders a dotted version against a parsed one without allocating; a missing trailing part
/// is 0 (1.14 == 1.14.0). `None` when `value` is not a version.
pub(super) fn compare_version(value: &str, argument: &[u64]) -> Option<Ordering> {
    let mut parts = value.split('.');
    let mut ordering = Ordering::Equal;
    for index in 0.. {
        let part = parts.next();
        let theirs = argument.get(index).copied();
        if part.is_none() && theirs.is_none() {
            break;
        }
        let ours = match part {
            Some(part) => parse_version_part(part)?,
            None => 0,
        };
        ordering = ordering.then(ours.cmp(&theirs.unwrap_or(0)));
    }
    Some(ordering)
}

/// Parses `2018-06-18T22:28:28+00:00`, `…Z`, `…28` (UTC) or `2018-06-18` (midnight UTC), with
/// optional fractional seconds, into nanoseconds since the Unix epoch.
pub(super) fn parse_instant(text: &str) -> Option<i128> {
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = bytes.get(range)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(digits.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    if bytes.get(4) != Some(&b'-') || bytes.get(7) != Some(&b'-') || !(1..=12).contains(&month) {
        return None;
    }
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if bytes.len() == 10 {
        return Some(i128::from(days) * 86_400 * 1_000_000_000);
    }
    if bytes.get(10) != Some(&b'T') || bytes.get(13) != Some(&b':') || bytes.get(16) != Some(&b':') {
        return None;
    }
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &bytes[19..];
    let mut nanos: i64 = 0;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = fraction[..digits]
            .iter()
            .fold(0, |n, d| n * 10 + i64::from(d - b'0'))
            * 10_i64.pow(9 - digits as u32);
        rest = &fraction[digits..];
    }
    let offset_seconds = match rest {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let digits = [*h1, *h2, *m1, *m2];
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let hours = i64::from((h1 - b'0') * 10 + (h2 - b'0'));
            let minutes = i64::from((m1 - b'0') * 10 + (m2 - b'0'));
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'+' { offset } else { -offset }
        }
        _ => return None,
    };
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Some(i128::from(seconds) * 1_000_000_000 + i128::from(nanos))
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

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_in_every_format() {
        let at = 1_529_360_908_i128 * 1_000_000_000; // 2018-06-18T22:28:28Z
        assert_eq!(parse_instant("2018-06-18T22:28:28+00:00"), Some(at));
        assert_eq!(parse_instant("2018-06-18T22:28:28Z"), Some(at));
        assert_eq!(parse_instant("2018-06-18T22:28:28"), Some(at));
        assert_eq!(parse_instant("2018-06-19T00:28:28+02:00"), Some(at));
        assert_eq!(parse_instant("2018-06-18T22:28:28.5Z"), Some(at + 500_000_000));
        assert_eq!(parse_instant("2018-06-18"), Some(1_529_280_000 * 1_000_000_000));
        assert_eq!(parse_instant("1970-01-01"), Some(0));
        assert_eq!(parse_instant("2020-02-29"), Some(18_321 * 86_400 * 1_000_000_000));
        for bad in [
            "2018-02-29",
            "2018-13-01",
            "2018-06-18T24:00:00",
            "2018-06-18T22:28",
            "18-06-18",
            "2018-06-18T22:28:28+0000",
        ] {
            assert_eq!(parse_instant(bad), None, "{bad}");
        }
    }

    #[test]
    fn versions_compare_by_parts() {
        let v = |text| parse_version(text).unwrap();
        assert_eq!(compare_version("1.14.5", &v("1.9.0")), Some(Ordering::Greater));
        assert_eq!(compare_version("1.14", &v("1.14.0")), Some(Ordering::Equal));
        assert_eq!(compare_version("1.14.0.1", &v("1.14")), Some(Ordering::Greater));
        assert_eq!(compare_version("1.2.x", &v("1")), None);
        assert_eq!(parse_version("1..2"), None);
    }
}
