//! Sizes a worker can hold. A config asking for more is refused in validation with one line
//! naming the keys, instead of failing inside a worker when it allocates (an overflowing
//! multiplication, a capacity overflow, or the allocator aborting the process).

use crate::{Error, Result};

/// The most values of one array a worker allocates: 2³¹ (8 GiB of `f32`) — parameters, a
/// dataset's inputs, a model's largest layer.
pub const MAX_VALUES: u64 = 1 << 31;

/// Checks that `factors` multiply to at most [`MAX_VALUES`]; `what` names them for the error
/// ("problem.train_samples × problem.features").
pub fn ensure_values(what: &str, factors: &[usize]) -> Result<u64> {
    let product = factors
        .iter()
        .try_fold(1u128, |acc, &f| acc.checked_mul(f as u128));
    match product {
        Some(p) if p <= u128::from(MAX_VALUES) => Ok(p as u64),
        _ => {
            let shown = factors
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(" × ");
            Err(Error::Config(format!(
                "{what} = {shown} values is more than a worker can hold (at most 2^31 = {MAX_VALUES})"
            )))
        }
    }
}

/// The longest span any setting may give in seconds (a time budget, the watchdog, a fault's
/// time): 10⁹ s, about 32 years. A run asking for more can never finish, and every such
/// value becomes a `Duration` or a product with a clock, which must not overflow.
pub const MAX_SECONDS: f64 = 1e9;

/// The most local steps a worker may be asked for: 2⁴⁰ (a million steps a second would take
/// 12 days). Products with the worker count (≤ 2¹²) and with periods stay far inside `u64`.
pub const MAX_STEPS: u64 = 1 << 40;

/// The largest factor by which a fault may slow a worker: 10⁶ (a 1 ms step then takes
/// 17 minutes).
pub const MAX_SLOWDOWN: f64 = 1e6;

/// `secs` seconds of setting `key` as a `Duration`: the one checked conversion, for a
/// positive finite number of seconds up to [`MAX_SECONDS`].
pub fn seconds(key: &str, secs: f64) -> Result<std::time::Duration> {
    if !(secs.is_finite() && secs > 0.0 && secs <= MAX_SECONDS) {
        return Err(Error::Config(format!(
            "{key} must be a positive number of seconds up to {MAX_SECONDS:e} (about 32 years), got {secs}"
        )));
    }
    std::time::Duration::try_from_secs_f64(secs)
        .map_err(|e| Error::Config(format!("{key} = {secs} seconds: {e}")))
}

/// Checks a count of local steps against [`MAX_STEPS`].
pub fn ensure_steps(key: &str, steps: u64) -> Result<()> {
    if steps > MAX_STEPS {
        return Err(Error::Config(format!(
            "{key} = {steps} is more steps than a run can ever make (at most 2^40 = {MAX_STEPS})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_converted_only_within_range() {
        assert_eq!(
            seconds("watchdog_seconds", 1.5).unwrap(),
            std::time::Duration::from_millis(1500)
        );
        assert!(seconds("t", MAX_SECONDS).is_ok());
        for bad in [0.0, -1.0, 1e20, f64::NAN, f64::INFINITY, 1e300] {
            let e = seconds("watchdog_seconds", bad).unwrap_err().to_string();
            assert!(e.contains("watchdog_seconds must be"), "{bad}: {e}");
        }
        assert!(ensure_steps("steps", MAX_STEPS).is_ok());
        assert!(ensure_steps("steps", MAX_STEPS + 1).is_err());
    }

    #[test]
    fn products_are_checked_without_overflow() {
        assert_eq!(ensure_values("a", &[1 << 15, 1 << 16]).unwrap(), 1 << 31);
        let e = ensure_values(
            "problem.train_samples × problem.features",
            &[1 << 16, 1 << 16],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("65536 × 65536") && e.contains("more than a worker"),
            "{e}"
        );
        // usize::MAX² overflows u64 and u128 arithmetic must not.
        assert!(ensure_values("a", &[usize::MAX, usize::MAX, usize::MAX]).is_err());
        assert_eq!(ensure_values("empty", &[]).unwrap(), 1);
    }
}
