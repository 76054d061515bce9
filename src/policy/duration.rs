//! Durations as people write them in the policy and in tickets: `90m`, `8h`, `2d`, `1w`, ISO 8601 `PT8H`, `P1D`.

use std::time::Duration;

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const WEEK: u64 = 7 * DAY;
/// Shorter than a minute is a typo (seconds for minutes), not a grant anyone can use.
const SHORTEST: Duration = Duration::from_secs(MINUTE);
/// Ten years: longer is surely a mistake, and the bound keeps deadline arithmetic far from overflow.
const LONGEST: Duration = Duration::from_secs(3650 * DAY);

const FORMS: &str = "write e.g. 90m, 8h, 2d, 1w, PT8H or P1D";

/// Parses a duration from a ticket or the policy: `90m`, `8h`, `2d`, `1w`, ISO 8601 (`PT8H`, `P1DT12H`, `P2W`),
/// or a plain whole number meaning hours (`8`), which is how request forms usually ask.
///
/// Between one minute and ten years; months and years are refused because their length varies.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let hours = parse_number(t, s)?;
        return checked(hours.checked_mul(HOUR), s);
    }
    parse_with_unit(s)
}

/// The policy file's form: like [`parse_duration`] but a unit is required, so `8` cannot be read as minutes.
pub(crate) fn parse_config_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{t}` has no unit: {FORMS}"));
    }
    parse_with_unit(s)
}

fn parse_with_unit(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty duration: {FORMS}"));
    }
    if let Some(iso) = t.strip_prefix(['P', 'p']) {
        return parse_iso(iso, s);
    }
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    if number.is_empty() {
        return Err(format!("{} is not a duration: {FORMS}", crate::policy::shown(s)));
    }
    let unit_secs = match unit.trim().to_ascii_lowercase().as_str() {
        "m" | "min" => MINUTE,
        "h" => HOUR,
        "d" => DAY,
        "w" => WEEK,
        _ => return Err(format!("{} is not a duration: {FORMS}", crate::policy::shown(s))),
    };
    checked(parse_number(number, s)?.checked_mul(unit_secs), s)
}

/// The part after `P`: `[nW][nD][T[nH][nM][nS]]`, each designator at most once and in that order.
fn parse_iso(rest: &str, original: &str) -> Result<Duration, String> {
    let upper = rest.to_ascii_uppercase();
    let (date, time) = match upper.split_once('T') {
        Some((date, time)) => (date, Some(time)),
        None => (upper.as_str(), None),
    };
    if date.is_empty() && time.is_none() {
        return Err(format!("{}: no amount after P: {FORMS}", crate::policy::shown(original)));
    }
    if date.contains(['Y', 'M']) {
        return Err(format!(
            "{}: months and years have no fixed length; use weeks (P2W) or days (P30D)",
            crate::policy::shown(original)
        ));
    }
    let mut total = iso_part(date, &[('W', WEEK), ('D', DAY)], original)?;
    if let Some(time) = time {
        if time.is_empty() {
            return Err(format!("{}: nothing after T: {FORMS}", crate::policy::shown(original)));
        }
        let t = iso_part(time, &[('H', HOUR), ('M', MINUTE), ('S', 1)], original)?;
        total = total.and_then(|d| t.and_then(|t| d.checked_add(t)));
    }
    checked(total, original)
}

/// Seconds in one half of an ISO duration. `Ok(None)` means overflow; an empty part counts zero.
fn iso_part(part: &str, units: &[(char, u64)], original: &str) -> Result<Option<u64>, String> {
    let bad = || format!("{} is not an ISO 8601 duration: {FORMS}", crate::policy::shown(original));
    let mut total: Option<u64> = Some(0);
    let mut number = String::new();
    let mut next_unit = 0;
    for c in part.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let position = units.iter().position(|(u, _)| *u == c).ok_or_else(bad)?;
        let unit_secs = units.get(position).map_or(0, |(_, secs)| *secs);
        if position < next_unit || number.is_empty() {
            return Err(bad());
        }
        let n = parse_number(&number, original)?;
        total = total.and_then(|t| n.checked_mul(unit_secs).and_then(|x| t.checked_add(x)));
        number.clear();
        next_unit = position + 1;
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

fn parse_number(digits: &str, original: &str) -> Result<u64, String> {
    // Only digits reach here, so the one failure is a number too large for u64.
    digits.parse::<u64>().map_err(|_| format!("{} is too long: at most 10 years", crate::policy::shown(original)))
}

fn checked(secs: Option<u64>, original: &str) -> Result<Duration, String> {
    let Some(secs) = secs else {
        return Err(format!("{} is too long: at most 10 years", crate::policy::shown(original)));
    };
    let d = Duration::from_secs(secs);
    if d < SHORTEST {
        Err(format!("{} is too short: at least one minute", crate::policy::shown(original)))
    } else if d > LONGEST {
        Err(format!("{} is too long: at most 10 years", crate::policy::shown(original)))
    } else {
        Ok(d)
    }
}

/// A duration for people: `90m` as `1h30m`, `48h`, `3d`, `14d12h`; days only from three days up, where hours
/// stop being easy to read.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    if secs >= 3 * DAY {
        out.push_str(&format!("{}d", secs / DAY));
        secs %= DAY;
    }
    for (unit, name) in [(HOUR, "h"), (MINUTE, "m"), (1, "s")] {
        if secs >= unit {
            out.push_str(&format!("{}{name}", secs / unit));
            secs %= unit;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u64) -> Duration {
        Duration::from_secs(n * HOUR)
    }

    #[test]
    fn accepted_forms() {
        let cases = [
            ("90m", Duration::from_secs(90 * MINUTE)),
            ("90min", Duration::from_secs(90 * MINUTE)),
            ("8h", h(8)),
            (" 8H ", h(8)),
            ("2d", h(48)),
            ("1w", h(168)),
            ("PT8H", h(8)),
            ("pt8h", h(8)),
            ("P1D", h(24)),
            ("P1DT12H", h(36)),
            ("PT1H30M", Duration::from_secs(90 * MINUTE)),
            ("PT90S", Duration::from_secs(90)),
            ("P2W", h(336)),
            ("8", h(8)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refused_forms() {
        for text in [
            "",
            "h",
            "8x",
            "-8h",
            "8.5h",
            "1h30m",
            "P",
            "PT",
            "P1M",
            "P1Y",
            "PT1H2H",
            "PT1M1H",
            "P1H",
            "PT8",
            "P8",
            "30s",
            "0h",
            "PT30S",
            "3651d",
            "99999999999999999999h",
            "P99999999999999999W",
            "8 hours",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} should be refused");
        }
    }

    #[test]
    fn config_form_needs_a_unit() {
        assert!(parse_config_duration("8").unwrap_err().contains("no unit"));
        assert_eq!(parse_config_duration("8h"), Ok(h(8)));
    }

    #[test]
    fn formatting() {
        assert_eq!(format_duration(h(48)), "48h");
        assert_eq!(format_duration(h(24)), "24h");
        assert_eq!(format_duration(h(72)), "3d");
        assert_eq!(format_duration(h(14 * 24 + 12)), "14d12h");
        assert_eq!(format_duration(Duration::from_secs(90 * MINUTE)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(61)), "1m1s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
