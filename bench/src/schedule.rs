//! The open-loop send schedule: when request number `i` of a run is meant
//! to leave, whatever happened to the requests before it.
//!
//! The rate rises linearly from 0 to `rate` over `ramp` (the sale-start
//! spike), then stays flat. Latency is measured from these intended times
//! (wrk2's coordinated-omission correction), so a server that stalls cannot
//! hide the requests it kept from being sent.

use std::time::Duration;

/// A fixed open-loop schedule over the whole run (all threads together).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Requests per second once the ramp is over.
    rate: f64,
    /// Seconds from 0 to `rate`.
    ramp_s: f64,
}

impl Schedule {
    /// A schedule of `rate` requests/s reached linearly after `ramp`.
    pub fn new(rate: f64, ramp: Duration) -> Self {
        assert!(rate > 0.0, "the rate must be positive");
        Schedule {
            rate,
            ramp_s: ramp.as_secs_f64(),
        }
    }

    /// The steady rate, requests per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Nanoseconds after the start at which request `i` (0-based, counted
    /// over all threads) is meant to be sent.
    pub fn intended_ns(&self, i: u64) -> u64 {
        let i = i as f64;
        // During the ramp the count sent by t is rate·t²/(2·ramp).
        let ramp_count = self.rate * self.ramp_s / 2.0;
        let secs = if i < ramp_count {
            (2.0 * self.ramp_s * i / self.rate).sqrt()
        } else {
            self.ramp_s + (i - ramp_count) / self.rate
        };
        (secs * 1e9) as u64
    }

    /// How many requests the schedule sends in the first `d`.
    pub fn count_within(&self, d: Duration) -> u64 {
        let t = d.as_secs_f64();
        let n = if t < self.ramp_s {
            self.rate * t * t / (2.0 * self.ramp_s)
        } else {
            self.rate * self.ramp_s / 2.0 + (t - self.ramp_s) * self.rate
        };
        n.ceil() as u64
    }
}

/// Parses `250ms`, `5s`, `1.5s`, `2m`, `100us` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}: expected e.g. 500ms, 5s, 2m"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        _ => return Err(format!("bad duration unit {unit:?} in {text:?}")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {text:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_schedule_is_evenly_spaced() {
        let s = Schedule::new(1000.0, Duration::ZERO);
        assert_eq!(s.intended_ns(0), 0);
        assert_eq!(s.intended_ns(1), 1_000_000);
        assert_eq!(s.intended_ns(1500), 1_500_000_000);
        assert_eq!(s.count_within(Duration::from_secs(2)), 2000);
    }

    #[test]
    fn ramp_reaches_the_peak_rate_at_its_end() {
        let s = Schedule::new(10_000.0, Duration::from_millis(500));
        // 2,500 requests during the ramp, a quarter of them in its first half.
        assert_eq!(s.count_within(Duration::from_millis(500)), 2500);
        assert_eq!(s.count_within(Duration::from_millis(250)), 625);
        let end_of_ramp = s.intended_ns(2500);
        assert!(
            (end_of_ramp as i64 - 500_000_000).abs() < 1000,
            "{end_of_ramp}"
        );
        // Spacing at the end of the ramp is the peak spacing (100 µs).
        let gap = s.intended_ns(2601) - s.intended_ns(2600);
        assert!((gap as i64 - 100_000).abs() < 100, "{gap}");
        // Early in the ramp the spacing is much wider.
        assert!(s.intended_ns(2) - s.intended_ns(1) > 1_000_000);
        // Monotone everywhere.
        for i in 0..5000 {
            assert!(s.intended_ns(i + 1) >= s.intended_ns(i));
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
