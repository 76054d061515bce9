//! A client-side token bucket for an upstream's write limit, so that writes are paced to the budget instead of
//! learning it from 429s. Microsoft Graph documents its identity-and-access write limit as a token bucket (3,000
//! writes per 150 s per app and tenant); this bucket mirrors it: full at the start, refilled continuously, one token
//! per write. A 429 empties it until the upstream's `Retry-After` has passed, because the upstream's bucket, not
//! ours, is the truth (other apps' or replicas' writes count against it too).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Pacing for one upstream's writes, shared by every client that writes to it.
#[derive(Debug)]
pub struct WriteBudget {
    capacity: f64,
    per_sec: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    refilled_at: Instant,
    /// After a 429: no write before this instant, whatever the bucket holds.
    blocked_until: Option<Instant>,
}

impl WriteBudget {
    /// `writes` per `window`, starting full. A zero window or zero writes means one write per second.
    pub fn new(writes: u32, window: Duration) -> Self {
        let capacity = f64::from(writes.max(1));
        let secs = window.as_secs_f64();
        let per_sec = if secs > 0.0 { capacity / secs } else { 1.0 };
        WriteBudget {
            capacity,
            per_sec,
            state: Mutex::new(State { tokens: capacity, refilled_at: Instant::now(), blocked_until: None }),
        }
    }

    /// Waits until one write may go out, and takes its token.
    pub async fn acquire(&self) {
        loop {
            let wait = self.try_take(Instant::now());
            match wait {
                None => return,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// How long until a write could go out, without taking anything: zero when a token is there now.
    pub fn wait_time(&self) -> Duration {
        let now = Instant::now();
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(until) = state.blocked_until.filter(|u| now < *u) {
            return until - now;
        }
        let elapsed = now.saturating_duration_since(state.refilled_at).as_secs_f64();
        let tokens = (state.tokens + elapsed * self.per_sec).min(self.capacity);
        if tokens >= 1.0 { Duration::ZERO } else { Duration::from_secs_f64((1.0 - tokens) / self.per_sec) }
    }

    /// Takes a token if one is there; otherwise says how long until one will be.
    fn try_take(&self, now: Instant) -> Option<Duration> {
        // A poisoned lock only means a panic elsewhere while holding it; the numbers are still usable.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(until) = state.blocked_until {
            if now < until {
                return Some(until - now);
            }
            state.blocked_until = None;
        }
        let elapsed = now.saturating_duration_since(state.refilled_at).as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.per_sec).min(self.capacity);
        state.refilled_at = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - state.tokens) / self.per_sec))
        }
    }

    /// The upstream answered 429: nothing more until `retry_after` has passed (one refill interval when it gave
    /// none), and the bucket starts empty again from there.
    pub fn throttled(&self, retry_after: Option<Duration>) {
        let wait = retry_after.unwrap_or_else(|| Duration::from_secs_f64(1.0 / self.per_sec));
        let until = Instant::now() + wait;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.tokens = 0.0;
        state.refilled_at = until;
        state.blocked_until = Some(state.blocked_until.map_or(until, |b| b.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_bucket_then_the_refill_rate() {
        // Ten writes per second, three of them at once.
        let budget = WriteBudget::new(3, Duration::from_millis(300));
        let start = Instant::now();
        for _ in 0..3 {
            budget.acquire().await;
        }
        assert!(start.elapsed() < Duration::from_millis(50), "the burst is free: {:?}", start.elapsed());
        budget.acquire().await;
        budget.acquire().await;
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(195), "two more wait for the refill: {elapsed:?}");
    }

    #[tokio::test]
    async fn a_429_blocks_until_retry_after_and_empties_the_bucket() {
        let budget = WriteBudget::new(10, Duration::from_secs(1));
        budget.acquire().await;
        let start = Instant::now();
        budget.throttled(Some(Duration::from_millis(300)));
        budget.acquire().await;
        let first = start.elapsed();
        // Blocked for 300 ms, then the bucket starts empty: the first token comes 100 ms later.
        assert!(first >= Duration::from_millis(395), "{first:?}");
        budget.acquire().await;
        assert!(start.elapsed() >= first + Duration::from_millis(95), "{:?}", start.elapsed());
    }
}
