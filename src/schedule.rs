//! Schedule arithmetic, pure: a cron expression (or `@every`) in a time zone, the next
//! scheduled time after an instant, and the scheduled times between two instants
//! (bounded). Cron patterns and their DST behaviour come from `croner` (as cron(8): a
//! fixed-time job whose wall-clock time falls in a DST gap runs at the first instant
//! after the gap, and once only when the time repeats; an interval job runs on both
//! repeated instants); zones from `chrono-tz`. `@every D` counts from the Unix epoch,
//! so it needs no remembered anchor: `@every 2s` fires on every even second.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use std::time::Duration;

pub type Timestamp = DateTime<Utc>;

/// The shortest `@every`.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Cron { cron: Box<Cron>, zone: Tz },
    Every(Duration),
}

/// A mistake in a schedule, naming the field of `spec.schedule` and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError {
    /// `cron` or `timeZone`.
    pub field: &'static str,
    pub message: String,
}

const FIELD_NAMES5: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];
const FIELD_NAMES6: [&str; 6] = ["second", "minute", "hour", "day of month", "month", "day of week"];

fn parser() -> CronParser {
    CronParser::builder().seconds(Seconds::Optional).build()
}

impl Schedule {
    /// Parses `cron` (5 fields, or 6 with seconds first; `@hourly`, `@daily`, `@weekly`,
    /// `@monthly`, `@yearly`; or `@every <duration>`) in `zone` (an IANA name; UTC when absent).
    pub fn parse(cron: &str, zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let zone = match zone {
            None => Tz::UTC,
            Some(name) => name.trim().parse::<Tz>().map_err(|_| ScheduleError {
                field: "timeZone",
                message: format!(
                    "{name:?} is not a known IANA time zone; write one such as UTC, Europe/Paris or America/New_York"
                ),
            })?,
        };
        let text = cron.trim();
        let bad = |message: String| ScheduleError { field: "cron", message };
        if let Some(rest) = text.strip_prefix("@every") {
            let every = humantime::parse_duration(rest.trim()).map_err(|_| {
                bad(format!(
                    "{text:?}: {:?} is not a duration; write e.g. @every 90s or @every 5m",
                    rest.trim()
                ))
            })?;
            if every < MIN_EVERY {
                return Err(bad(format!(
                    "{text:?}: @every must be at least 1s; write e.g. @every 1s"
                )));
            }
            return Ok(Schedule::Every(every));
        }
        if text.is_empty() {
            return Err(bad("is empty; write e.g. \"0 2 * * *\" or @daily".into()));
        }
        if text.starts_with('@') {
            let known = ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@hourly"];
            if !known.contains(&text.to_ascii_lowercase().as_str()) {
                return Err(bad(format!(
                    "{text:?} is not a known shorthand; use @hourly, @daily, @weekly, @monthly, @yearly or @every <duration>"
                )));
            }
        } else {
            let fields: Vec<&str> = text.split_whitespace().collect();
            let names: &[&str] = match fields.len() {
                5 => &FIELD_NAMES5,
                6 => &FIELD_NAMES6,
                n => {
                    return Err(bad(format!(
                        "{text:?} has {n} fields; write 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"
                    )));
                }
            };
            // Name the first field croner refuses on its own (the others left as `*`).
            for (i, field) in fields.iter().enumerate() {
                let mut probe = vec!["*"; fields.len()];
                probe[i] = field;
                if let Err(err) = parser().parse(&probe.join(" ")) {
                    return Err(bad(format!(
                        "{text:?}: the {} field {field:?} is not valid ({err}); fix that field",
                        names[i]
                    )));
                }
            }
        }
        let parsed = parser()
            .parse(text)
            .map_err(|err| bad(format!("{text:?} is not a cron expression ({err})")))?;
        // A pattern that never matches (e.g. 30 February) is refused now, not at run time.
        let probe = Schedule::Cron {
            cron: Box::new(parsed),
            zone,
        };
        if probe.next_after(Utc::now()).is_none() {
            return Err(bad(format!(
                "{text:?} never matches a date; fix the day and month fields"
            )));
        }
        Ok(probe)
    }

    /// The first scheduled time strictly after `t`; `None` when there is none.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Every(every) => {
                let step = every.as_millis() as i64;
                let ms = t.timestamp_millis();
                let next = (ms.div_euclid(step) + 1).checked_mul(step)?;
                Utc.timestamp_millis_opt(next).single()
            }
            Schedule::Cron { cron, zone } => {
                let local = t.with_timezone(zone);
                cron.find_next_occurrence(&local, false)
                    .ok()
                    .map(|n| n.with_timezone(&Utc))
                    .filter(|n| *n > t)
            }
        }
    }

    /// The scheduled times in `(after, until]`, oldest first, at most `limit` of them;
    /// `true` when more were left out.
    pub fn due(&self, after: Timestamp, until: Timestamp, limit: usize) -> (Vec<Timestamp>, bool) {
        let mut out = Vec::new();
        let mut t = after;
        while let Some(next) = self.next_after(t) {
            if next > until {
                return (out, false);
            }
            if out.len() == limit {
                return (out, true);
            }
            out.push(next);
            t = next;
        }
        (out, false)
    }

    /// The last scheduled time at or before `t`, if one is found within a year.
    pub fn last_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Every(every) => {
                let step = every.as_millis() as i64;
                let ms = t.timestamp_millis();
                Utc.timestamp_millis_opt(ms.div_euclid(step) * step).single()
            }
            Schedule::Cron { cron, zone } => {
                let local = t.with_timezone(zone);
                cron.find_previous_occurrence(&local, true)
                    .ok()
                    .map(|n| n.with_timezone(&Utc))
                    .filter(|n| *n <= t)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(text: &str) -> Timestamp {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn next(cron: &str, zone: Option<&str>, after: &str) -> String {
        let s = Schedule::parse(cron, zone).unwrap();
        s.next_after(at(after)).unwrap().to_rfc3339()
    }

    #[test]
    fn next_times_in_zones_and_across_dst() {
        let table = [
            ("0 2 * * *", None, "2026-03-01T00:00:00Z", "2026-03-01T02:00:00+00:00"),
            (
                "0 2 * * *",
                Some("Europe/Paris"),
                "2026-03-01T00:00:00Z",
                "2026-03-01T01:00:00+00:00",
            ),
            // Paris springs forward at 02:00 on 29 March 2026: 02:30 does not exist that day;
            // cron(8) runs it at the first instant after the gap (03:00 CEST = 01:00Z).
            (
                "30 2 * * *",
                Some("Europe/Paris"),
                "2026-03-28T12:00:00Z",
                "2026-03-29T01:00:00+00:00",
            ),
            // Paris falls back at 03:00 on 25 October 2026: 02:30 happens twice; a fixed-time
            // job runs once, at the first (CEST, 00:30Z).
            (
                "30 2 * * *",
                Some("Europe/Paris"),
                "2026-10-24T12:00:00Z",
                "2026-10-25T00:30:00+00:00",
            ),
            (
                "30 2 * * *",
                Some("Europe/Paris"),
                "2026-10-25T00:30:00Z",
                "2026-10-26T01:30:00+00:00",
            ),
            (
                "*/15 * * * * *",
                None,
                "2026-01-01T00:00:01Z",
                "2026-01-01T00:00:15+00:00",
            ),
            ("@hourly", None, "2026-01-01T00:00:00Z", "2026-01-01T01:00:00+00:00"),
            (
                "@daily",
                Some("America/New_York"),
                "2026-01-01T00:00:00Z",
                "2026-01-01T05:00:00+00:00",
            ),
            ("@weekly", None, "2026-01-01T00:00:00Z", "2026-01-04T00:00:00+00:00"),
            ("@every 90s", None, "2026-01-01T00:00:00Z", "2026-01-01T00:01:30+00:00"),
            (
                "@every 2s",
                None,
                "2026-01-01T00:00:01.500Z",
                "2026-01-01T00:00:02+00:00",
            ),
        ];
        for (cron, zone, after, want) in table {
            assert_eq!(next(cron, zone, after), want, "{cron} in {zone:?} after {after}");
        }
    }

    #[test]
    fn an_interval_job_runs_on_both_repeated_hours() {
        // Every 30 minutes through Paris's fall-back: 02:00 and 02:30 happen twice.
        let s = Schedule::parse("*/30 * * * *", Some("Europe/Paris")).unwrap();
        let (times, more) = s.due(at("2026-10-24T23:45:00Z"), at("2026-10-25T02:00:00Z"), 100);
        assert!(!more);
        let got: Vec<String> = times.iter().map(|t| t.format("%H:%M").to_string()).collect();
        assert_eq!(got, ["00:00", "00:30", "01:00", "01:30", "02:00"]);
    }

    #[test]
    fn due_is_bounded_and_says_so() {
        let s = Schedule::parse("* * * * * *", None).unwrap();
        let (times, more) = s.due(at("2026-01-01T00:00:00Z"), at("2026-01-02T00:00:00Z"), 10);
        assert_eq!(times.len(), 10);
        assert!(more);
        let (times, more) = s.due(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:00:03Z"), 10);
        assert_eq!(times.len(), 3);
        assert!(!more);
        assert_eq!(
            s.last_at_or_before(at("2026-01-01T00:00:03.5Z")),
            Some(at("2026-01-01T00:00:03Z"))
        );
    }

    #[test]
    fn mistakes_name_the_field_and_the_fix() {
        let table = [
            ("61 * * * *", None, "cron", "minute field \"61\""),
            ("0 25 * * *", None, "cron", "hour field"),
            ("0 0 * 13 *", None, "cron", "month field"),
            ("0 0 * * funday", None, "cron", "day of week field"),
            ("0 0 32 * *", None, "cron", "day of month field"),
            ("* * *", None, "cron", "has 3 fields"),
            ("@every 500ms", None, "cron", "at least 1s"),
            ("@every soon", None, "cron", "not a duration"),
            ("@fortnightly", None, "cron", "not a known shorthand"),
            ("", None, "cron", "is empty"),
            (
                "0 2 * * *",
                Some("Mars/Olympus"),
                "timeZone",
                "not a known IANA time zone",
            ),
        ];
        for (cron, zone, field, words) in table {
            let err = Schedule::parse(cron, zone).unwrap_err();
            assert_eq!(err.field, field, "{cron}");
            assert!(err.message.contains(words), "{cron}: {}", err.message);
        }
    }

    proptest! {
        #[test]
        fn due_times_are_increasing_in_range_and_each_is_the_next_of_the_last(
            start in 1_700_000_000i64..1_900_000_000,
            span in 0i64..200_000,
            pattern in prop::sample::select(vec!["*/7 * * * *", "0 */3 * * *", "30 2 * * *", "@every 45s", "@hourly"]),
            zone in prop::sample::select(vec!["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe"]),
        ) {
            let s = Schedule::parse(pattern, Some(zone)).unwrap();
            let t0 = Utc.timestamp_opt(start, 0).unwrap();
            let t1 = t0 + chrono::Duration::seconds(span);
            let (times, _) = s.due(t0, t1, 10_000);
            let mut last = t0;
            for t in times {
                prop_assert!(t > last && t <= t1);
                prop_assert_eq!(s.next_after(last), Some(t));
                last = t;
            }
            prop_assert!(s.next_after(last).is_none_or(|n| n > t1));
        }
    }
}
