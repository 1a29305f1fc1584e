//! Moments: what a user may type where a point in history is asked for.
//!
//! Accepted, tried in this order: `now`/`latest`; a sequence number (`1042` or `#1042`); a
//! version id (12 hex digits, from `history`); a relative age (`10m`, `8h`, `2d`, `1h30m`,
//! `1w`, `1.5h`, or in words: `10 minutes`, `an hour`; optionally followed by `ago`); an RFC
//! 3339 time; a local time `YYYY-MM-DD HH:MM[:SS]` or a local date `YYYY-MM-DD`; a time of day
//! (`09:00`: the last time the clock showed it), `today 09:00`, `yesterday 14:00`; a mark name.

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::ids::{Seq, VersionId};
use crate::store::{Store, StoreError};

/// Resolves `s` to the newest epoch at or before the moment it names.
pub fn resolve(store: &Store, s: &str) -> Result<Seq, StoreError> {
    let s = s.trim();
    let head = store.head();
    if head == Seq::ZERO {
        return Err(StoreError::NoSuchMoment(
            "nothing has been recorded yet".to_string(),
        ));
    }
    if matches!(s, "now" | "latest" | "head") {
        return Ok(head);
    }
    let digits = s.strip_prefix('#').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = digits.parse::<u64>() {
            if n >= 1 && n <= head.0 {
                if store.epoch(Seq(n))?.is_some() {
                    return Ok(Seq(n));
                }
                if s.len() != 12 {
                    return Err(pruned_moment(store, Seq(n))?);
                }
            }
            if s.len() != 12 {
                return Err(StoreError::NoSuchMoment(format!(
                    "there is no moment #{n}: moments go from #1 to #{head}"
                )));
            }
        }
    }
    if let Ok(v) = s.parse::<VersionId>() {
        if let Some((_, seq)) = store.version(v)? {
            return Ok(seq);
        }
    }
    if let Some(age) = parse_age(s) {
        let t = now_ns() - age;
        return at_time(store, t, s);
    }
    if let Some(t) = parse_time(s) {
        return at_time(store, t, s);
    }
    if let Some(m) = store.mark(s)? {
        return Ok(m.seq);
    }
    let marks: Vec<String> = store.marks()?.into_iter().map(|m| m.name).collect();
    Err(StoreError::NoSuchMoment(format!(
        "{s:?} is not a moment: give an age (10m, 2h, 1d, \"10 minutes ago\"), a time (09:00, yesterday 14:00, 2026-11-21 09:00 or RFC 3339), a sequence number (1..{head}), a version id, or a mark{}",
        if marks.is_empty() {
            String::new()
        } else {
            format!(" ({})", marks.join(", "))
        }
    )))
}

fn at_time(store: &Store, t: i64, said: &str) -> Result<Seq, StoreError> {
    if t > now_ns() + 1_000_000_000 {
        return Err(StoreError::NoSuchMoment(format!(
            "{said:?} ({}) is in the future",
            show_time(t)
        )));
    }
    match store.seq_at_time(t)? {
        Some(seq) => Ok(seq),
        None => {
            let (first, oldest) = store
                .first_moment()?
                .map(|(s, e)| (s, show_time(e.time_ns)))
                .unwrap_or_default();
            Err(StoreError::NoSuchMoment(format!(
                "no version exists at {said:?} ({}): the oldest moment is #{first} at {oldest}",
                show_time(t)
            )))
        }
    }
}

/// The error for a moment a prune folded away, naming the kept moments around it.
fn pruned_moment(store: &Store, n: Seq) -> Result<StoreError, StoreError> {
    let before = store.epochs_rev(Seq(1), n).next().transpose()?;
    let after = store.epochs_from(n, store.head()).next().transpose()?;
    let show = |m: Option<(Seq, crate::store::catalog::Epoch)>| {
        m.map(|(s, e)| format!("#{s} ({})", show_time(e.time_ns)))
    };
    let around: Vec<String> = [show(before), show(after)].into_iter().flatten().collect();
    Ok(StoreError::NoSuchMoment(format!(
        "moment #{n} was thinned out by `clawfs prune`; the nearest kept moments are {}",
        around.join(" and ")
    )))
}

/// An age, as people and agents write one: `10m`, `1h30m`, `2d`, `45s`, `1w`, `1.5h`, or in
/// words, `10 minutes`, `an hour`, `2 days, 3 hours`, `1 hr and 30 min`; each with an optional
/// ` ago`. Nanoseconds.
pub fn parse_age(s: &str) -> Option<i64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix("ago").unwrap_or(&s).trim_end();
    let mut rest = s;
    let mut total: i64 = 0;
    let mut terms = 0;
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(r) = rest.strip_prefix("and ") {
            rest = r;
            continue;
        }
        if rest.is_empty() {
            break;
        }
        let (n, after) = if let Some(r) = rest.strip_prefix("an ") {
            (1.0, r)
        } else if let Some(r) = rest.strip_prefix("a ") {
            (1.0, r)
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let n: f64 = rest[..end].parse().ok()?;
            (n, &rest[end..])
        };
        let after = after.trim_start();
        let end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let secs: i64 = match &after[..end] {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86400,
            "w" | "wk" | "wks" | "week" | "weeks" => 7 * 86400,
            _ => return None,
        };
        let ns = n * secs as f64 * 1e9;
        if !ns.is_finite() || ns >= i64::MAX as f64 {
            return None;
        }
        total = total.checked_add(ns.round() as i64)?;
        terms += 1;
        rest = &after[end..];
    }
    (terms > 0).then_some(total)
}

/// A time, as people write one: RFC 3339; a local `YYYY-MM-DD[ HH:MM[:SS]]`; a local time of
/// day `HH:MM[:SS]`, the last time the clock showed it (today, or yesterday if it is not that
/// late yet); `today HH:MM` or `yesterday HH:MM`. Nanoseconds since the epoch.
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(ts) = s.parse::<Timestamp>() {
        return Some(ts.as_nanosecond() as i64);
    }
    let norm = s.replace('T', " ");
    let candidates = [
        norm.clone(),
        format!("{norm}:00"),
        format!("{norm} 00:00:00"),
    ];
    for c in candidates {
        if let Ok(dt) = c.parse::<DateTime>() {
            if let Ok(z) = dt.to_zoned(TimeZone::system()) {
                return Some(z.timestamp().as_nanosecond() as i64);
            }
        }
    }
    time_of_day(s.trim(), Timestamp::now())
}

/// `HH:MM[:SS]`, `today HH:MM[:SS]` or `yesterday HH:MM[:SS]`, local, as seen at `now`.
fn time_of_day(s: &str, now: Timestamp) -> Option<i64> {
    let lower = s.to_ascii_lowercase();
    let (days_back, clock) = if let Some(r) = lower.strip_prefix("yesterday ") {
        (Some(1), r.trim())
    } else if let Some(r) = lower.strip_prefix("today ") {
        (Some(0), r.trim())
    } else {
        (None, lower.as_str())
    };
    let time = clock
        .parse::<jiff::civil::Time>()
        .or_else(|_| format!("{clock}:00").parse::<jiff::civil::Time>())
        .ok()?;
    let today = now.to_zoned(TimeZone::system());
    let on = |days: i64| -> Option<i64> {
        let date = today
            .date()
            .checked_sub(jiff::Span::new().days(days))
            .ok()?;
        let z = date.to_datetime(time).to_zoned(TimeZone::system()).ok()?;
        Some(z.timestamp().as_nanosecond() as i64)
    };
    match days_back {
        Some(d) => on(d),
        None => {
            let t = on(0)?;
            if t <= now.as_nanosecond() as i64 {
                Some(t)
            } else {
                on(1)
            }
        }
    }
}

/// Now, in nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    crate::store::catalog::now_ns()
}

/// A time for people: local, to the second.
pub fn show_time(ns: i64) -> String {
    match Timestamp::from_nanosecond(ns as i128) {
        Ok(ts) => ts
            .to_zoned(TimeZone::system())
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string(),
        Err(_) => "?".into(),
    }
}

/// A time for machines: RFC 3339 in UTC.
pub fn rfc3339(ns: i64) -> String {
    Timestamp::from_nanosecond(ns as i128)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// How long ago, for people: `12s ago`, `5m ago`, `3h ago`, `2d ago`.
pub fn ago(ns: i64) -> String {
    let d = (now_ns() - ns).max(0) / 1_000_000_000;
    match d {
        0..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m ago", d / 60),
        3600..=86399 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("10m", Some(600))]
    #[case("1h30m", Some(5400))]
    #[case("2d", Some(172800))]
    #[case("1w", Some(604800))]
    #[case("45s ago", Some(45))]
    #[case("10 minutes ago", Some(600))]
    #[case("10 min ago", Some(600))]
    #[case("10m ago", Some(600))]
    #[case("an hour ago", Some(3600))]
    #[case("a day", Some(86400))]
    #[case("1 hr and 30 mins", Some(5400))]
    #[case("2 days, 3 hours ago", Some(2 * 86400 + 3 * 3600))]
    #[case("1.5h", Some(5400))]
    #[case("1 Week Ago", Some(604800))]
    #[case("10", None)]
    #[case("10x", None)]
    #[case("", None)]
    #[case("ago", None)]
    #[case("yesterday", None)]
    #[case("a", None)]
    #[case("10 minutes from now", None)]
    #[case("99999999999999w", None)]
    fn ages(#[case] s: &str, #[case] secs: Option<i64>) {
        assert_eq!(parse_age(s), secs.map(|x| x * 1_000_000_000));
    }

    #[test]
    fn times() {
        assert_eq!(
            parse_time("2026-11-21T09:00:00Z"),
            Some(1_795_251_600_000_000_000)
        );
        assert!(parse_time("2026-11-21 09:00").is_some());
        assert!(parse_time("2026-11-21").is_some());
        assert!(parse_time("yesterday-ish").is_none());
    }

    /// A time of day is the last time the clock showed it; `today` and `yesterday` name the day.
    #[test]
    fn times_of_day() {
        let tz = TimeZone::system();
        let at = |s: &str| {
            s.parse::<DateTime>()
                .unwrap()
                .to_zoned(tz.clone())
                .unwrap()
                .timestamp()
        };
        let ns = |s: &str| Some(at(s).as_nanosecond() as i64);
        let now = at("2026-11-24 20:15:00");
        assert_eq!(time_of_day("09:00", now), ns("2026-11-24 09:00:00"));
        assert_eq!(time_of_day("20:15", now), ns("2026-11-24 20:15:00"));
        assert_eq!(time_of_day("21:00", now), ns("2026-11-23 21:00:00"));
        assert_eq!(time_of_day("08:30:15", now), ns("2026-11-24 08:30:15"));
        assert_eq!(
            time_of_day("yesterday 14:00", now),
            ns("2026-11-23 14:00:00")
        );
        assert_eq!(time_of_day("Today 21:00", now), ns("2026-11-24 21:00:00"));
        assert_eq!(time_of_day("25:00", now), None);
        assert_eq!(time_of_day("yesterday", now), None);
        assert_eq!(time_of_day("tomorrow 09:00", now), None);
    }
}
