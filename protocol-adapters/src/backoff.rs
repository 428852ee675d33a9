//! Exponential backoff with full jitter, for reconnecting to brokers and devices.
//!
//! Each delay is drawn uniformly from `[min, min(max, min * 2^attempt)]`, so a fleet of
//! gateways that lost the same broker does not come back in lockstep.

use rand::{Rng, SeedableRng, rngs::SmallRng};
use std::time::Duration;

#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: SmallRng,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max: max.max(min), attempt: 0, rng: SmallRng::from_os_rng() }
    }

    /// A backoff with a fixed seed, so the test below is reproducible.
    #[cfg(test)]
    fn seeded(min: Duration, max: Duration, seed: u64) -> Self {
        Backoff { rng: SmallRng::seed_from_u64(seed), ..Backoff::new(min, max) }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.min.saturating_mul(1 << self.attempt.min(20)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        if cap <= self.min {
            return self.min;
        }
        self.rng.random_range(self.min..=cap)
    }

    /// Start again from `min` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_reset() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut b = Backoff::seeded(min, max, 7);
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert_eq!(delays[0], min, "the first retry waits the minimum");
        for (i, d) in delays.iter().enumerate() {
            let cap = min.saturating_mul(1 << i.min(20)).min(max);
            assert!(*d >= min && *d <= cap, "attempt {i}: {d:?} outside [{min:?}, {cap:?}]");
        }
        assert!(delays[8..].iter().any(|d| *d > Duration::from_secs(1)), "the cap is reached: {delays:?}");
        assert!(delays.windows(2).any(|w| w[0] != w[1]), "jitter varies the delays");
        b.reset();
        assert_eq!(b.next_delay(), min);
    }
}
