//! Request parameter validation (pure functions, unit-tested) and the opaque pagination cursor.
//! Every problem found is reported at once in `invalid_params`.

use super::problem::{ApiError, InvalidParam};
use crate::contract::FeatureType;
use crate::db::HistoryQuery;
use chrono::{DateTime, NaiveDate, Utc};
use std::collections::HashMap;
use uuid::Uuid;

/// Most digits of a cursor's microseconds (a signed 64-bit count has 19).
const MAX_CURSOR_DIGITS: usize = 19;

/// `^[A-Za-z0-9._:-]{1,128}$`, checked by hand (no regex engine needed for one character class).
pub fn valid_sensor_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn check_sensor_id(name: &str, s: &str, errors: &mut Vec<InvalidParam>) {
    if !valid_sensor_id(s) {
        errors.push(InvalidParam::new(name, "must match ^[A-Za-z0-9._:-]{1,128}$"));
    }
}

/// Strictly `A` or `B`, as the OpenAPI enum says.
pub fn parse_type(s: &str) -> Result<FeatureType, String> {
    match s {
        "A" => Ok(FeatureType::A),
        "B" => Ok(FeatureType::B),
        _ => Err("must be A or B".into()),
    }
}

/// RFC 3339 with an explicit offset (`Z` or `±hh:mm`); naive times are ambiguous and refused.
pub fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("must be an RFC 3339 timestamp with offset, e.g. 2024-01-31T12:00:00Z ({e})"))
}

/// Decimal digits only, within `1..=max`.
pub fn parse_limit(s: &str, max: u32) -> Result<u32, String> {
    let reason = || format!("must be an integer between 1 and {max}");
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(reason());
    }
    match s.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(reason()),
    }
}

/// The keyset position after the last row of a page: `<captured_at as microseconds since
/// 1970-01-01T00:00:00Z>_<message_id as 32 hex digits>`, i.e. `^-?[0-9]{1,19}_[0-9a-fA-F]{32}$`.
/// Every string of that form is a cursor (the OpenAPI pattern says exactly this), so a client or
/// a fuzzer can never hold a "valid-looking" cursor the API refuses. Times beyond the years −1 …
/// 9999 are clamped to them: no row can lie outside, and the database never sees such a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// `captured_at` of the last row served (microsecond precision, like the column).
    pub t: DateTime<Utc>,
    /// `message_id` of the last row served.
    pub id: Uuid,
}

/// The range a cursor's time is clamped to: −0001-01-01 to 10000-01-01 (exclusive of rows).
fn cursor_time_bounds() -> (i64, i64) {
    let micros = |y| NaiveDate::from_ymd_opt(y, 1, 1).expect("in range").and_time(Default::default());
    (micros(-1).and_utc().timestamp_micros(), micros(10000).and_utc().timestamp_micros())
}

impl Cursor {
    pub fn encode(&self) -> String {
        format!("{}_{}", self.t.timestamp_micros(), self.id.simple())
    }
    pub fn decode(s: &str) -> Result<Self, String> {
        let bad = || "must be a cursor returned by this API (<microseconds>_<32 hex digits>)".to_string();
        let (t, id) = s.split_once('_').ok_or_else(bad)?;
        let digits = t.strip_prefix('-').unwrap_or(t);
        if digits.is_empty() || digits.len() > MAX_CURSOR_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let (lo, hi) = cursor_time_bounds();
        let micros = t.parse::<i128>().map_err(|_| bad())?.clamp(i128::from(lo), i128::from(hi));
        let t = DateTime::from_timestamp_micros(micros as i64).ok_or_else(bad)?;
        let id = Uuid::try_parse(id).map_err(|_| bad())?;
        Ok(Self { t, id })
    }
}

/// The query pairs by name, refusing unknown and repeated parameters.
fn by_name<'a>(
    pairs: &'a [(String, String)],
    allowed: &[&str],
    errors: &mut Vec<InvalidParam>,
) -> HashMap<&'a str, &'a str> {
    let mut map = HashMap::new();
    for (k, v) in pairs {
        if !allowed.contains(&k.as_str()) {
            errors.push(InvalidParam::new(k.as_str(), format!("unknown parameter; allowed: {}", allowed.join(", "))));
        } else if map.insert(k.as_str(), v.as_str()).is_some() {
            errors.push(InvalidParam::new(k.as_str(), "given more than once"));
        }
    }
    map
}

fn finish<T>(value: T, mut errors: Vec<InvalidParam>) -> Result<T, ApiError> {
    if errors.is_empty() {
        return Ok(value);
    }
    errors.dedup();
    Err(ApiError::validation(errors))
}

/// `GET /v1/features`: validated into the database query (with `limit + 1` rows to fetch so the
/// handler knows whether another page exists) and the page size.
pub fn history_params(
    pairs: &[(String, String)],
    default_limit: u32,
    max_limit: u32,
) -> Result<(HistoryQuery, u32), ApiError> {
    let mut errors = Vec::new();
    let p = by_name(pairs, &["sensor_id", "type", "from", "to", "limit", "cursor"], &mut errors);
    let sensor_id = match p.get("sensor_id") {
        Some(s) => {
            check_sensor_id("sensor_id", s, &mut errors);
            s.to_string()
        }
        None => {
            errors.push(InvalidParam::new("sensor_id", "is required"));
            String::new()
        }
    };
    let feature_type =
        p.get("type").and_then(|v| parse_type(v).map_err(|r| errors.push(InvalidParam::new("type", r))).ok());
    let from =
        p.get("from").and_then(|v| parse_timestamp(v).map_err(|r| errors.push(InvalidParam::new("from", r))).ok());
    let to = p.get("to").and_then(|v| parse_timestamp(v).map_err(|r| errors.push(InvalidParam::new("to", r))).ok());
    let limit = match p.get("limit") {
        Some(v) => parse_limit(v, max_limit).map_err(|r| errors.push(InvalidParam::new("limit", r))).unwrap_or(1),
        None => default_limit,
    };
    let cursor =
        p.get("cursor").and_then(|v| Cursor::decode(v).map_err(|r| errors.push(InvalidParam::new("cursor", r))).ok());
    let query = HistoryQuery {
        sensor_id,
        feature_type,
        from,
        to,
        after: cursor.map(|c| (c.t, c.id)),
        limit: i64::from(limit) + 1,
    };
    finish((query, limit), errors)
}

/// `GET /v1/sensors/{sensor_id}/features/latest?type=`.
pub fn latest_params(sensor_id: &str, pairs: &[(String, String)]) -> Result<FeatureType, ApiError> {
    let mut errors = Vec::new();
    check_sensor_id("sensor_id", sensor_id, &mut errors);
    let p = by_name(pairs, &["type"], &mut errors);
    let feature_type = match p.get("type") {
        Some(v) => parse_type(v).map_err(|r| errors.push(InvalidParam::new("type", r))).ok(),
        None => {
            errors.push(InvalidParam::new("type", "is required"));
            None
        }
    };
    finish(feature_type.unwrap_or(FeatureType::A), errors)
}

/// `GET /v1/features/{message_id}`.
pub fn by_id_params(message_id: &str, pairs: &[(String, String)]) -> Result<Uuid, ApiError> {
    let mut errors = Vec::new();
    by_name(pairs, &[], &mut errors);
    let id =
        Uuid::try_parse(message_id).map_err(|_| errors.push(InvalidParam::new("message_id", "must be a UUID"))).ok();
    finish(id.unwrap_or_default(), errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn invalid_names(e: ApiError) -> Vec<String> {
        assert_eq!(e.status, 400);
        e.invalid_params.into_iter().map(|p| p.name).collect()
    }

    #[test]
    fn defaults_apply() {
        let (q, limit) = history_params(&pairs(&[("sensor_id", "s-1")]), 100, 1000).unwrap();
        assert_eq!(limit, 100);
        assert_eq!(q.limit, 101);
        assert_eq!((q.feature_type, q.from, q.to, q.after), (None, None, None, None));
    }

    #[test]
    fn everything_valid_is_parsed() {
        let c = Cursor { t: "2024-01-01T00:00:00.5Z".parse().unwrap(), id: Uuid::from_u128(7) };
        let (q, limit) = history_params(
            &pairs(&[
                ("sensor_id", "rack-1:mic_2.a"),
                ("type", "B"),
                ("from", "2024-01-01T02:00:00+02:00"),
                ("to", "2024-01-01T01:00:00Z"),
                ("limit", "1000"),
                ("cursor", &c.encode()),
            ]),
            100,
            1000,
        )
        .unwrap();
        assert_eq!(limit, 1000);
        assert_eq!(q.feature_type, Some(FeatureType::B));
        assert_eq!(q.from.unwrap().to_rfc3339(), "2024-01-01T00:00:00+00:00");
        assert_eq!(q.after, Some((c.t, c.id)));
    }

    #[test]
    fn equal_from_and_to_is_allowed() {
        let t = "2024-01-01T00:00:00Z";
        assert!(history_params(&pairs(&[("sensor_id", "s"), ("from", t), ("to", t)]), 10, 10).is_ok());
    }

    #[rstest]
    #[case::missing_sensor(&[], "sensor_id")]
    #[case::empty_sensor(&[("sensor_id", "")], "sensor_id")]
    #[case::injection(&[("sensor_id", "' OR 1=1 --")], "sensor_id")]
    #[case::semicolon(&[("sensor_id", "s1;DROP TABLE features")], "sensor_id")]
    #[case::slash(&[("sensor_id", "../etc")], "sensor_id")]
    #[case::non_ascii(&[("sensor_id", "sensör")], "sensor_id")]
    #[case::unknown_type(&[("sensor_id", "s"), ("type", "C")], "type")]
    #[case::lowercase_type(&[("sensor_id", "s"), ("type", "a")], "type")]
    #[case::bad_from(&[("sensor_id", "s"), ("from", "yesterday")], "from")]
    #[case::naive_from(&[("sensor_id", "s"), ("from", "2024-01-01T00:00:00")], "from")]
    #[case::date_only_to(&[("sensor_id", "s"), ("to", "2024-01-01")], "to")]
    #[case::limit_zero(&[("sensor_id", "s"), ("limit", "0")], "limit")]
    #[case::limit_over_max(&[("sensor_id", "s"), ("limit", "1001")], "limit")]
    #[case::limit_negative(&[("sensor_id", "s"), ("limit", "-1")], "limit")]
    #[case::limit_plus(&[("sensor_id", "s"), ("limit", "+5")], "limit")]
    #[case::limit_huge(&[("sensor_id", "s"), ("limit", "99999999999999999999")], "limit")]
    #[case::bad_cursor(&[("sensor_id", "s"), ("cursor", "not-a-cursor")], "cursor")]
    #[case::unknown_param(&[("sensor_id", "s"), ("sensor", "s")], "sensor")]
    #[case::repeated(&[("sensor_id", "s"), ("sensor_id", "t")], "sensor_id")]
    fn invalid_history_params_are_named(#[case] q: &[(&str, &str)], #[case] name: &str) {
        let err = history_params(&pairs(q), 100, 1000).unwrap_err();
        assert_eq!(invalid_names(err), vec![name.to_string()]);
    }

    #[test]
    fn a_128_char_sensor_id_is_the_limit() {
        assert!(valid_sensor_id(&"a".repeat(128)));
        assert!(!valid_sensor_id(&"a".repeat(129)));
    }

    #[test]
    fn all_problems_are_reported_together() {
        let err = history_params(&pairs(&[("type", "X"), ("limit", "0"), ("x", "1")]), 100, 1000).unwrap_err();
        let mut names = invalid_names(err);
        names.sort();
        assert_eq!(names, vec!["limit", "sensor_id", "type", "x"]);
    }

    #[test]
    fn cursor_round_trips_and_is_url_safe() {
        let c = Cursor { t: "2024-05-06T07:08:09.123456Z".parse().unwrap(), id: Uuid::from_u128(0xabc) };
        let s = c.encode();
        assert_eq!(s, "1714979289123456_00000000000000000000000000000abc");
        assert_eq!(Cursor::decode(&s).unwrap(), c);
        let before_1970 = Cursor { t: "1969-12-31T23:59:59.999999Z".parse().unwrap(), id: Uuid::nil() };
        assert_eq!(Cursor::decode(&before_1970.encode()).unwrap(), before_1970);
    }

    #[rstest]
    #[case::one_digit("0_0123456789abcdefABCDEF0123456789")]
    #[case::far_future("9999999999999999999_00000000000000000000000000000000")]
    #[case::far_past("-9999999999999999999_00000000000000000000000000000000")]
    fn every_cursor_the_pattern_allows_is_accepted(#[case] s: &str) {
        let c = Cursor::decode(s).unwrap();
        let (lo, hi) = cursor_time_bounds();
        assert!((lo..=hi).contains(&c.t.timestamp_micros()), "{s}: {}", c.t);
    }

    #[rstest]
    #[case::not_a_cursor("not-a-cursor")]
    #[case::old_base64_json("eyJ0IjoiMjAyNC0wMS0wMVQwMDowMDowMFoiLCJpZCI6IngifQ")]
    #[case::no_id("1714979289123456_")]
    #[case::short_id("1_0123456789abcdef")]
    #[case::hyphenated_id("1_00000000-0000-0000-0000-000000000000")]
    #[case::no_time("_00000000000000000000000000000000")]
    #[case::plus_sign("+1_00000000000000000000000000000000")]
    #[case::twenty_digits("10000000000000000000_00000000000000000000000000000000")]
    #[case::two_separators("1_2_00000000000000000000000000000000")]
    fn forged_cursors_are_refused(#[case] s: &str) {
        assert!(Cursor::decode(s).is_err(), "{s}");
    }

    #[rstest]
    #[case::missing_type("s", &[], "type")]
    #[case::unknown_type("s", &[("type", "AB")], "type")]
    #[case::bad_sensor("' OR 1=1 --", &[("type", "A")], "sensor_id")]
    #[case::unknown_param("s", &[("type", "A"), ("limit", "1")], "limit")]
    fn invalid_latest_params_are_named(#[case] sensor: &str, #[case] q: &[(&str, &str)], #[case] name: &str) {
        assert_eq!(invalid_names(latest_params(sensor, &pairs(q)).unwrap_err()), vec![name.to_string()]);
    }

    #[rstest]
    #[case::not_uuid("abc", &[], "message_id")]
    #[case::almost_uuid("0000000-0000-0000-0000-000000000000", &[], "message_id")]
    #[case::injection("1' OR '1'='1", &[], "message_id")]
    #[case::unknown_param("00000000-0000-0000-0000-000000000000", &[("x", "1")], "x")]
    fn invalid_by_id_params_are_named(#[case] id: &str, #[case] q: &[(&str, &str)], #[case] name: &str) {
        assert_eq!(invalid_names(by_id_params(id, &pairs(q)).unwrap_err()), vec![name.to_string()]);
    }
}
