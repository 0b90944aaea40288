//! Counter: over random operation sequences the value is exactly what the applied operations
//! make it (the sum of the applied increments and decrements since the last set / reset), the
//! sequence counts applied operations, and a refused operation changes nothing.

use proptest::prelude::*;

use edge_realtime_core::counter::{self, CounterError, CounterOp, CounterState};
use edge_realtime_core::effects::To;
use edge_realtime_core::MAX_SAFE_INTEGER;

fn amount() -> BoxedStrategy<i64> {
    prop_oneof![
        6 => -100i64..100,
        1 => Just(MAX_SAFE_INTEGER),
        1 => (MAX_SAFE_INTEGER / 2)..=MAX_SAFE_INTEGER,
        1 => -MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER,
    ]
    .boxed()
}

fn op() -> BoxedStrategy<CounterOp> {
    prop_oneof![
        4 => amount().prop_map(CounterOp::Increment),
        4 => amount().prop_map(CounterOp::Decrement),
        1 => amount().prop_map(CounterOp::SetValue),
        1 => Just(CounterOp::Reset),
    ]
    .boxed()
}

fn delta_op() -> BoxedStrategy<CounterOp> {
    prop_oneof![amount().prop_map(CounterOp::Increment), amount().prop_map(CounterOp::Decrement)].boxed()
}

/// Apply `ops` at arbitrary (even backwards) times, checking every step against an i128 model.
fn run(ops: &[(CounterOp, i64)]) -> Result<(CounterState, i128, i128), TestCaseError> {
    let mut state = CounterState::new("c", 1_000);
    let mut model: i128 = 0;
    let mut applied_sum: i128 = 0;
    let mut applied = 0i64;
    for (op, now) in ops {
        let want = match op {
            CounterOp::Increment(n) => model + i128::from(*n),
            CounterOp::Decrement(n) => model - i128::from(*n),
            CounterOp::SetValue(v) => i128::from(*v),
            CounterOp::Reset => 0,
        };
        let ok = want.abs() <= i128::from(MAX_SAFE_INTEGER);
        match counter::mutate(&state, *op, "alice", None, *now) {
            Ok((next, event, seq, effects)) => {
                prop_assert!(ok, "{:?} on {} applied", op, model);
                applied += 1;
                if let CounterOp::Increment(n) = op {
                    applied_sum += i128::from(*n);
                } else if let CounterOp::Decrement(n) = op {
                    applied_sum -= i128::from(*n);
                }
                prop_assert_eq!(i128::from(next.value), want);
                prop_assert_eq!(next.seq, applied);
                prop_assert_eq!(seq, applied);
                prop_assert_eq!(next.operation_count, applied);
                prop_assert_eq!(next.updated_at, state.updated_at.max(*now), "updated_at never runs backwards");
                let ev: serde_json::Value = serde_json::from_str(&event).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&ev["seq"], &serde_json::json!(applied));
                prop_assert_eq!(&ev["value"], &serde_json::json!(next.value));
                prop_assert_eq!(&ev["previousValue"], &serde_json::json!(state.value));
                prop_assert_eq!(effects.store.len(), 2, "state row and history row in one store");
                prop_assert_eq!(effects.frames_to(&To::Tag(counter::op_tag(op.kind()))), vec![event.as_str()]);
                model = want;
                state = next;
            }
            Err(e) => {
                prop_assert!(!ok, "{:?} on {} refused: {}", op, model, e);
                prop_assert_eq!(e, CounterError::Overflow);
                // `mutate` takes the state by reference: the caller's state is the one kept.
            }
        }
    }
    Ok((state, model, applied_sum))
}

proptest! {
    #![proptest_config(crate::config())]

    /// Increments and decrements only: the value is the sum of the applied ones, exactly.
    #[test]
    fn counter_value_is_the_sum_of_applied_deltas(ops in prop::collection::vec((delta_op(), 0i64..10_000_000), 0..60)) {
        let (state, model, sum) = run(&ops)?;
        prop_assert_eq!(i128::from(state.value), sum);
        prop_assert_eq!(model, sum);
    }

    /// Any mix with sets and resets: the value follows the model and the sequence is gapless.
    #[test]
    fn counter_follows_every_applied_op_and_refusals_change_nothing(ops in prop::collection::vec((op(), 0i64..10_000_000), 0..60)) {
        let (state, model, _) = run(&ops)?;
        prop_assert_eq!(i128::from(state.value), model);
        prop_assert!(state.value.abs() <= MAX_SAFE_INTEGER);
    }

    /// The WebSocket frame of an op decodes back to that op and its id.
    #[test]
    fn counter_frames_round_trip(op in op(), id in proptest::option::of("[ -~]{1,128}")) {
        let mut frame = match op {
            CounterOp::Increment(n) => serde_json::json!({"type": "increment", "amount": n}),
            CounterOp::Decrement(n) => serde_json::json!({"type": "decrement", "amount": n}),
            CounterOp::SetValue(v) => serde_json::json!({"type": "setValue", "value": v}),
            CounterOp::Reset => serde_json::json!({"type": "reset"}),
        };
        if let Some(id) = &id {
            frame["id"] = serde_json::json!(id);
        }
        let got = crate::decoders::counter_frame(&frame.to_string());
        prop_assert_eq!(got, Ok((op, id)));
    }
}
