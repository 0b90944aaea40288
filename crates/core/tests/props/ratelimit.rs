//! RateLimiter: for each algorithm, over random request times on a virtual clock, never more
//! is allowed than the algorithm's bound (fixed / sliding: `limit` per window; the buckets and
//! GCRA: capacity plus what refilled in between), each decision matches an independent model,
//! a denial changes nothing and its `retryAfterMs` is exact, and a row past `forget_at`
//! answers exactly like no row.

use std::collections::BTreeMap;

use proptest::prelude::*;

use edge_realtime_core::ratelimit::{
    self, Decision, GcraParams, LeakyBucketParams, Params, State, TokenBucketParams, WindowParams,
};

use crate::common::clock;

/// Run requests at `times`; every denial must leave the state as it was and name the exact
/// wait (one ms less is still denied, the wait itself is allowed). The allowed request times.
fn run(p: &Params, times: &[i64]) -> Result<(Vec<i64>, Vec<Decision>, State), TestCaseError> {
    let mut state = State::fresh(p.algorithm());
    let mut allowed = Vec::new();
    let mut decisions = Vec::new();
    for now in times {
        let (next, d) = p.check(&state, *now);
        if d.allowed() {
            prop_assert_eq!(d.retry_after_ms(), 0);
            allowed.push(*now);
        } else {
            prop_assert_eq!(&next, &state, "a denied request changes nothing");
            let wait = d.retry_after_ms();
            prop_assert!(wait >= 1);
            prop_assert!(!p.check(&state, now + wait - 1).1.allowed(), "allowed at now + retryAfterMs - 1 ({})", wait);
            prop_assert!(p.check(&state, now + wait).1.allowed(), "denied at now + retryAfterMs ({})", wait);
        }
        prop_assert_eq!(State::load(p.algorithm(), Some(&next.to_json())), next, "the row round-trips");
        decisions.push(d);
        state = next;
    }
    Ok((allowed, decisions, state))
}

/// At most `max` allowed in any half-open span `[t, t + span)`.
fn at_most_per_span(allowed: &[i64], span: i64, max: usize) -> Result<(), TestCaseError> {
    for (i, t) in allowed.iter().enumerate() {
        let n = allowed.iter().skip(i).take_while(|x| **x < t + span).count();
        prop_assert!(n <= max, "{} allowed in [{}, {})", n, t, t + span);
    }
    Ok(())
}

/// Virtual scheduling's bound: for any two allowed requests j ≤ k, the cost of j..=k is at most
/// the tolerance plus what the meter drained between them (all in scaled units).
fn metered(allowed: &[i64], cost: i128, unit: i128, capacity: i128, scale: i128) -> Result<(), TestCaseError> {
    for (j, tj) in allowed.iter().enumerate() {
        for (n, tk) in allowed.iter().skip(j).enumerate() {
            let spent = (n as i128 + 1) * cost * unit;
            prop_assert!(spent <= capacity * unit + i128::from(tk - tj) * scale, "{} requests in [{}, {}]", n + 1, tj, tk);
        }
    }
    Ok(())
}

fn window_start(t: i64, w: i64) -> i64 {
    t - t.rem_euclid(w)
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn fixed_window_never_allows_more_than_the_limit_per_window(limit in 1i64..8, window in 1i64..5_000, times in clock(80, 1_500)) {
        let p = Params::FixedWindow(WindowParams::new(limit, window).map_err(|e| TestCaseError::fail(e.to_string()))?);
        let (allowed, decisions, _) = run(&p, &times)?;
        let mut per: BTreeMap<i64, i64> = BTreeMap::new();
        let mut k = 0;
        for (t, d) in times.iter().zip(&decisions) {
            let used = per.entry(window_start(*t, window)).or_default();
            prop_assert_eq!(d.allowed(), *used < limit, "model: {} used of {} in the window of {}", used, limit, t);
            if d.allowed() {
                *used += 1;
                k += 1;
            }
        }
        prop_assert_eq!(k, allowed.len());
        prop_assert!(per.values().all(|n| *n <= limit));
    }

    #[test]
    fn sliding_window_matches_its_estimate_and_never_exceeds_the_limit(limit in 1i64..8, window in 1i64..5_000, times in clock(80, 1_500)) {
        let p = Params::SlidingWindow(WindowParams::new(limit, window).map_err(|e| TestCaseError::fail(e.to_string()))?);
        let (allowed, decisions, _) = run(&p, &times)?;
        let mut per: BTreeMap<i64, i64> = BTreeMap::new();
        for (t, d) in times.iter().zip(&decisions) {
            let start = window_start(*t, window);
            let prev = i128::from(per.get(&(start - window)).copied().unwrap_or(0));
            let cur = i128::from(per.get(&start).copied().unwrap_or(0));
            let (w, e) = (i128::from(window), i128::from(t - start));
            // prev * (1 - e/w) + cur + 1 <= limit, times w.
            let want = prev * (w - e) + (cur + 1) * w <= i128::from(limit) * w;
            prop_assert_eq!(d.allowed(), want, "estimate at {}: prev {} cur {}", t, prev, cur);
            if d.allowed() {
                *per.entry(start).or_default() += 1;
            }
        }
        prop_assert!(per.values().all(|n| *n <= limit), "more than limit in one window");
        // The weighted estimate admits at most 2 × limit in any span of one window.
        at_most_per_span(&allowed, window, 2 * limit as usize)?;
    }

    #[test]
    fn token_bucket_never_spends_more_than_it_refilled(capacity in 1i64..10, rate in 0.001f64..50.0, tokens in 1i64..10, times in clock(60, 1_500)) {
        let tokens = tokens.min(capacity);
        let p = TokenBucketParams::new(capacity, rate, tokens).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (allowed, _, _) = run(&Params::TokenBucket(p), &times)?;
        prop_assert!(!allowed.is_empty(), "a fresh bucket allows the first request");
        metered(&allowed, i128::from(tokens), 1_000_000_000, i128::from(capacity), i128::from(p.refill_micro_per_sec()))?;
    }

    #[test]
    fn leaky_bucket_never_holds_more_than_its_capacity(capacity in 1i64..10, rate in 0.001f64..50.0, times in clock(60, 1_500)) {
        let p = LeakyBucketParams::new(capacity, rate).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (allowed, _, _) = run(&Params::LeakyBucket(p), &times)?;
        metered(&allowed, 1, 1_000_000_000, i128::from(capacity), i128::from(p.leak_micro_per_sec()))?;
    }

    #[test]
    fn gcra_never_exceeds_its_burst_plus_the_rate(rate in 1i64..10, period in 1i64..10_000, burst in 1i64..10, times in clock(60, 1_500)) {
        let p = GcraParams::new(rate, period, burst).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let (allowed, _, _) = run(&Params::Gcra(p), &times)?;
        metered(&allowed, 1, i128::from(period), i128::from(burst), i128::from(rate))?;
    }

    /// docs/protocol.md §6.6: the upgrade limit admits at most 2 × n − 1 in any 60 s span.
    #[test]
    fn upgrade_limit_admits_at_most_twice_the_allowance_minus_one_per_minute(n in 1u32..30, times in clock(150, 3_000)) {
        let (allowed, _, _) = run(&ratelimit::upgrade_limit_params(n), &times)?;
        at_most_per_span(&allowed, 60_000, 2 * n as usize - 1)?;
        // And a burst of n from fresh.
        let burst = vec![times.first().copied().unwrap_or(0); n as usize + 1];
        let (first, _, _) = run(&ratelimit::upgrade_limit_params(n), &burst)?;
        prop_assert_eq!(first.len(), n as usize);
    }

    /// From `forget_at` on, a row answers exactly like no row (so the alarm may delete it).
    #[test]
    fn a_row_past_forget_at_is_a_fresh_key(which in 0usize..5, times in clock(30, 1_500), later in 0i64..10_000) {
        let p = [
            Params::FixedWindow(WindowParams::new(3, 1_000).map_err(|e| TestCaseError::fail(e.to_string()))?),
            Params::SlidingWindow(WindowParams::new(3, 1_000).map_err(|e| TestCaseError::fail(e.to_string()))?),
            Params::TokenBucket(TokenBucketParams::new(3, 2.5, 1).map_err(|e| TestCaseError::fail(e.to_string()))?),
            Params::LeakyBucket(LeakyBucketParams::new(3, 0.7).map_err(|e| TestCaseError::fail(e.to_string()))?),
            Params::Gcra(GcraParams::new(3, 1_000, 2).map_err(|e| TestCaseError::fail(e.to_string()))?),
        ];
        let p = p.get(which).copied().ok_or_else(|| TestCaseError::fail("no such algorithm"))?;
        let (_, _, state) = run(&p, &times)?;
        let last = times.last().copied().unwrap_or(0);
        let at = state.forget_at().max(last) + later;
        prop_assert!(state.is_idle(at));
        let fresh = State::fresh(p.algorithm());
        prop_assert_eq!(p.check(&state, at), p.check(&fresh, at));
    }
}
