//! Per-core rate limits of purchase requests: one per user id and one per
//! client IP, each a GCRA (generic cell rate algorithm, the token bucket
//! written as one "theoretical arrival time" per key).
//!
//! PERFORMANCE-CRITICAL PATH: [`RateLimits::check`] runs on every purchase
//! that passed the sale gate. Per core, no shared state, no lock: a user or
//! an IP is limited on each core it reaches, so the node-wide ceiling is at
//! most `cores ×` the configured rate (a client's keep-alive connection
//! stays on one core). Keys are 64-bit hashes (SipHash with per-node random
//! keys), so checking a key allocates nothing; a map entry is made only the
//! first time a key is seen.
//!
//! Bounded memory: each limiter keeps at most `max_tracked` keys per core.
//! A key whose time has passed is as good as absent, so a full map is swept
//! of those (at most every `SWEEP_EVERY`); a key that finds the map full
//! of active keys is let through untracked (fail open: the limit sheds
//! load, while the per-user purchase limit and the stock are held by the
//! authority whatever happens here).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How often a full map may be swept of idle keys.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// One limit: `per_s` requests a second, bursts of up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_s: f64,
    pub burst: u32,
}

/// A request over a limit, and how long until it would conform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
    /// Which limit refused it: `"user"` or `"ip"`.
    pub by: &'static str,
}

/// The rate limits of one core.
pub struct RateLimits {
    user: Option<Limiter>,
    ip: Option<Limiter>,
}

impl RateLimits {
    /// `None` turns a limit off.
    pub fn new(user: Option<Rate>, ip: Option<Rate>, max_tracked: usize) -> Self {
        let hasher = std::collections::hash_map::RandomState::new();
        RateLimits {
            user: user.map(|r| Limiter::new(r, max_tracked, hasher.clone())),
            ip: ip.map(|r| Limiter::new(r, max_tracked, hasher.clone())),
        }
    }

    /// Whether any limit is on.
    pub fn is_on(&self) -> bool {
        self.user.is_some() || self.ip.is_some()
    }

    /// Charges one request of `user` from `peer` at `now`, or says which
    /// limit it is over. A request refused by the IP limit is not charged
    /// to the user.
    pub fn check(&self, user: &str, peer: IpAddr, now: Instant) -> Result<(), Limited> {
        if let Some(ip) = &self.ip {
            ip.check(&peer, now).map_err(|retry_after| Limited {
                retry_after,
                by: "ip",
            })?;
        }
        if let Some(u) = &self.user {
            u.check(user.as_bytes(), now)
                .map_err(|retry_after| Limited {
                    retry_after,
                    by: "user",
                })?;
        }
        Ok(())
    }
}

/// One GCRA limiter over hashed keys.
struct Limiter<S = std::collections::hash_map::RandomState> {
    /// Time one request costs, in ns.
    interval: u64,
    /// How far ahead of now a key's theoretical arrival time may run:
    /// `(burst - 1) × interval`.
    tolerance: u64,
    /// Key hash → theoretical arrival time (ns since `epoch`).
    tats: RefCell<HashMap<u64, u64>>,
    max_tracked: usize,
    hasher: S,
    epoch: Instant,
    last_sweep: Cell<u64>,
}

impl<S: BuildHasher> Limiter<S> {
    fn new(rate: Rate, max_tracked: usize, hasher: S) -> Self {
        let interval = (1e9 / rate.per_s).max(1.0) as u64;
        Limiter {
            interval,
            tolerance: interval.saturating_mul(u64::from(rate.burst.max(1) - 1)),
            tats: RefCell::new(HashMap::new()),
            max_tracked,
            hasher,
            epoch: Instant::now(),
            last_sweep: Cell::new(0),
        }
    }

    /// Charges one request of `key`, or returns how long until it conforms.
    fn check<K: Hash + ?Sized>(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let now = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let hash = self.hasher.hash_one(key);
        let mut tats = self.tats.borrow_mut();
        if let Some(tat) = tats.get_mut(&hash) {
            let start = (*tat).max(now);
            if start - now > self.tolerance {
                return Err(Duration::from_nanos(start - now - self.tolerance));
            }
            *tat = start + self.interval;
            return Ok(());
        }
        if tats.len() >= self.max_tracked {
            if now.saturating_sub(self.last_sweep.get()) >= SWEEP_EVERY.as_nanos() as u64 {
                self.last_sweep.set(now);
                tats.retain(|_, tat| *tat > now);
            }
            if tats.len() >= self.max_tracked {
                return Ok(());
            }
        }
        tats.insert(hash, now + self.interval);
        Ok(())
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.tats.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_then_the_rate() {
        let limits = RateLimits::new(
            Some(Rate {
                per_s: 10.0,
                burst: 3,
            }),
            None,
            1000,
        );
        let t0 = Instant::now();
        for _ in 0..3 {
            limits.check("alice", LOCAL, t0).unwrap();
        }
        let refused = limits.check("alice", LOCAL, t0).unwrap_err();
        assert_eq!(refused.by, "user");
        assert_eq!(refused.retry_after, ms(100));
        // Another user has a bucket of their own.
        limits.check("bob", LOCAL, t0).unwrap();
        // One interval later, one more request conforms, and only one.
        let t1 = t0 + ms(100);
        limits.check("alice", LOCAL, t1).unwrap();
        assert!(limits.check("alice", LOCAL, t1).is_err());
        // Refused requests are not charged: a steady 10/s goes through.
        for i in 2..30 {
            limits.check("alice", LOCAL, t0 + ms(100 * i)).unwrap();
        }
    }

    #[test]
    fn the_ip_limit_is_checked_first_and_does_not_charge_the_user() {
        let limits = RateLimits::new(
            Some(Rate {
                per_s: 1.0,
                burst: 2,
            }),
            Some(Rate {
                per_s: 1.0,
                burst: 1,
            }),
            1000,
        );
        let t0 = Instant::now();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        limits.check("alice", LOCAL, t0).unwrap();
        assert_eq!(limits.check("alice", LOCAL, t0).unwrap_err().by, "ip");
        // The refused request cost alice nothing: her second unit of burst
        // is still there, from another address.
        limits.check("alice", other, t0).unwrap();
        assert_eq!(
            limits
                .check("alice", "10.0.0.3".parse().unwrap(), t0)
                .unwrap_err()
                .by,
            "user"
        );
        assert!(!RateLimits::new(None, None, 1).is_on());
    }

    #[test]
    fn memory_is_bounded_and_idle_keys_are_swept() {
        let limiter = Limiter::new(
            Rate {
                per_s: 1.0,
                burst: 1,
            },
            100,
            std::collections::hash_map::RandomState::new(),
        );
        let t0 = Instant::now();
        for i in 0..1000u32 {
            limiter.check(&i, t0).unwrap();
        }
        assert_eq!(limiter.tracked(), 100, "at most max_tracked keys");
        // Key 0 is tracked and limited; a key past the cap is let through.
        assert!(limiter.check(&0u32, t0).is_err());
        limiter.check(&5000u32, t0).unwrap();
        // Two seconds on, every key is idle: the next new key sweeps them.
        let t2 = t0 + Duration::from_secs(2);
        limiter.check(&7000u32, t2).unwrap();
        assert_eq!(limiter.tracked(), 1);
        assert!(limiter.check(&7000u32, t2).is_err());
    }
}
