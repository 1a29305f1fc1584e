//! Moments: what a user may type where a point in history is asked for.
//!
//! Accepted, tried in this order: `now`/`latest`; a sequence number (`1042` or `#1042`); a
//! version id (12 hex digits, from `history`); a relative age (`10m`, `8h`, `2d`, `1h30m`,
//! `1w`, optionally followed by `ago`); an RFC 3339 time; a local time `YYYY-MM-DD HH:MM[:SS]`
//! or a local date `YYYY-MM-DD`; a mark name.

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
        "{s:?} is not a moment: give an age (10m, 2h, 1d), a time (2026-11-21 09:00 or RFC 3339), a sequence number (1..{head}), a version id, or a mark{}",
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

/// `10m`, `1h30m`, `2d`, `45s`, `1w`, with an optional trailing ` ago`; nanoseconds.
pub fn parse_age(s: &str) -> Option<i64> {
    let s = s.strip_suffix("ago").unwrap_or(s).trim();
    if s.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().ok()?;
        num.clear();
        let unit: i64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 7 * 86400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?.checked_mul(1_000_000_000)?)?;
    }
    if !num.is_empty() {
        return None;
    }
    Some(total)
}

/// An RFC 3339 time, or a local `YYYY-MM-DD[ HH:MM[:SS]]`; nanoseconds since the epoch.
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
    None
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
    #[case("10", None)]
    #[case("10x", None)]
    #[case("", None)]
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
}
