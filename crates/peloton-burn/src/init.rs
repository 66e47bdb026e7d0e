//! Standard initializations written straight into the flat parameter buffer from a worker's
//! seeded stream (burn's own initializers draw from a backend-global generator, which worker
//! threads would share, so runs would not repeat).
//!
//! Tensors are recognized by their role in the segment table: a 4-D `weight` is a
//! convolution `[out, in, kh, kw]` (fan-in in·kh·kw, fan-out out·kh·kw), a 2-D `weight` a
//! linear layer `[in, out]` (burn's row layout: fan-in = in), a `bias` takes the fan-in of the
//! weight before it, `gamma`/`beta` are BatchNorm's scale (1) and shift (0).

use peloton_core::layout::ParamLayout;
use peloton_core::seed::Rng;
use rand::Rng as _;
use rand_distr::{Distribution, Normal};

/// The initialization of a model's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// PyTorch's default for `Conv2d`/`Linear`: weights and biases U(±1/√fan_in)
    /// (kaiming_uniform with a = √5).
    PytorchDefault,
    /// He normal, N(0, 2/fan_in), for convolution and linear weights (the CIFAR ResNets of
    /// the LSGD code); biases as PyTorch's default.
    KaimingNormalFanIn,
    /// VGG for CIFAR: convolutions N(0, 2/fan_out) with zero bias; linear layers as PyTorch's
    /// default.
    VggConvFanOut,
}

/// Fills `params` (laid out as `layout`) with `scheme`.
pub fn initialize(layout: &ParamLayout, scheme: Scheme, rng: &mut Rng, params: &mut [f32]) {
    let mut last_fan_in = 1usize;
    let mut last_was_conv = false;
    for seg in layout.segments() {
        let role = seg.name.rsplit('.').next().unwrap_or("");
        let out = &mut params[seg.range()];
        match (role, seg.shape.as_slice()) {
            ("gamma", _) => out.fill(1.0),
            ("beta", _) => out.fill(0.0),
            ("weight", &[o, i, kh, kw]) => {
                last_fan_in = i * kh * kw;
                last_was_conv = true;
                match scheme {
                    Scheme::PytorchDefault => uniform(out, last_fan_in, rng),
                    Scheme::KaimingNormalFanIn => {
                        normal(out, (2.0 / last_fan_in as f64).sqrt(), rng)
                    }
                    Scheme::VggConvFanOut => normal(out, (2.0 / (o * kh * kw) as f64).sqrt(), rng),
                }
            }
            ("weight", &[i, _]) => {
                last_fan_in = i;
                last_was_conv = false;
                match scheme {
                    Scheme::KaimingNormalFanIn => normal(out, (2.0 / i as f64).sqrt(), rng),
                    _ => uniform(out, i, rng),
                }
            }
            ("bias", _) => {
                if scheme == Scheme::VggConvFanOut && last_was_conv {
                    out.fill(0.0)
                } else {
                    uniform(out, last_fan_in, rng)
                }
            }
            // Anything else (a model added later): PyTorch's default by its leading dimension.
            (_, shape) => uniform(out, shape.iter().skip(1).product::<usize>().max(1), rng),
        }
    }
}

fn uniform(out: &mut [f32], fan_in: usize, rng: &mut Rng) {
    let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
    out.iter_mut()
        .for_each(|v| *v = rng.random_range(-bound..=bound));
}

fn normal(out: &mut [f32], std: f64, rng: &mut Rng) {
    let n = Normal::new(0.0, std).expect("a positive standard deviation");
    out.iter_mut().for_each(|v| *v = n.sample(rng) as f32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use peloton_core::seed;

    #[test]
    fn roles_and_scales() {
        let layout = ParamLayout::new()
            .with("conv.weight", &[8, 4, 3, 3])
            .with("conv.bias", &[8])
            .with("bn.gamma", &[8])
            .with("bn.beta", &[8])
            .with("fc.weight", &[100, 10])
            .with("fc.bias", &[10]);
        let mut p = vec![f32::NAN; layout.len()];
        initialize(
            &layout,
            Scheme::PytorchDefault,
            &mut seed::rng(0, "t", 0),
            &mut p,
        );
        let seg = |i: usize| &p[layout.segments()[i].range()];
        // conv: fan-in 36 → |w| ≤ 1/6; fc: fan-in 100 → |w| ≤ 0.1.
        assert!(
            seg(0).iter().all(|w| w.abs() <= 1.0 / 6.0) && seg(0).iter().any(|w| w.abs() > 0.1)
        );
        assert!(seg(1).iter().all(|w| w.abs() <= 1.0 / 6.0));
        assert!(seg(2).iter().all(|&g| g == 1.0) && seg(3).iter().all(|&b| b == 0.0));
        assert!(seg(4).iter().all(|w| w.abs() <= 0.1) && seg(5).iter().all(|w| w.abs() <= 0.1));
        let mut v = vec![0.0; layout.len()];
        initialize(
            &layout,
            Scheme::VggConvFanOut,
            &mut seed::rng(0, "t", 0),
            &mut v,
        );
        assert!(v[layout.segments()[1].range()].iter().all(|&b| b == 0.0));
        // He normal for the fc weight: std √(2/100) ≈ 0.141.
        initialize(
            &layout,
            Scheme::KaimingNormalFanIn,
            &mut seed::rng(0, "t", 0),
            &mut v,
        );
        let w = &v[layout.segments()[4].range()];
        let std = (w.iter().map(|x| (x * x) as f64).sum::<f64>() / w.len() as f64).sqrt();
        assert!((std - 0.1414).abs() < 0.015, "{std}");
    }
}
