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

#[cfg(test)]
mod tests {
    use super::*;

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
