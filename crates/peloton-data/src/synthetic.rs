//! A synthetic image-classification dataset: each class is a prototype made of a few smooth
//! blobs; a sample is its class prototype, shifted, rescaled in contrast, with a distractor
//! blob and pixel noise. Small CNNs learn it in seconds but not in one step, which makes it the
//! data of the README's first command and of the tests (no files, no network).

use peloton_core::seed;
use peloton_core::{Error, Result};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::dataset::ImageDataset;

/// The most memory a generated dataset may take (16 GiB): larger requests are refused before
/// they are generated (CIFAR-10's training set is 150 MB).
pub const MAX_SYNTHETIC_BYTES: u128 = 16 << 30;

/// The generator's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    pub classes: usize,
    pub channels: usize,
    /// Images are `size × size`.
    pub size: usize,
    /// Training samples.
    pub train: usize,
    /// Test samples.
    pub test: usize,
    /// Standard deviation of the pixel noise, in units of the full pixel range.
    pub noise: f32,
    /// Largest random shift of the prototype, in pixels.
    pub shift: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            classes: 10,
            channels: 1,
            size: 28,
            train: 8192,
            test: 2048,
            noise: 0.3,
            shift: 3,
        }
    }
}

struct Blob {
    cy: f32,
    cx: f32,
    radius: f32,
    amplitude: Vec<f32>,
}

impl Blob {
    fn random(rng: &mut impl Rng, size: usize, channels: usize, strength: f32) -> Self {
        let s = size as f32;
        Blob {
            cy: rng.random_range(0.2 * s..0.8 * s),
            cx: rng.random_range(0.2 * s..0.8 * s),
            radius: rng.random_range(0.06 * s..0.18 * s),
            amplitude: (0..channels)
                .map(|_| strength * rng.random_range(0.4f32..1.0))
                .collect(),
        }
    }

    fn paint(&self, img: &mut [f32], size: usize, dy: f32, dx: f32, scale: f32) {
        let plane = size * size;
        let inv = 1.0 / (2.0 * self.radius * self.radius);
        for y in 0..size {
            for x in 0..size {
                let (ry, rx) = (y as f32 - self.cy - dy, x as f32 - self.cx - dx);
                let w = (-(ry * ry + rx * rx) * inv).exp() * scale;
                for (c, a) in self.amplitude.iter().enumerate() {
                    img[c * plane + y * size + x] += a * w;
                }
            }
        }
    }
}

impl SyntheticConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !(2..=256).contains(&self.classes) {
            return bad(format!(
                "data.synthetic.classes must be in 2..=256, got {}",
                self.classes
            ));
        }
        if !(1..=4).contains(&self.channels) {
            return bad(format!(
                "data.synthetic.channels must be in 1..=4, got {}",
                self.channels
            ));
        }
        if !(8..=256).contains(&self.size) {
            return bad(format!(
                "data.synthetic.size must be in 8..=256, got {}",
                self.size
            ));
        }
        if self.train == 0 || self.test == 0 {
            return bad("data.synthetic.train and data.synthetic.test must be at least 1".into());
        }
        // The images are generated in memory as u8 pixels (and one f32 image at a time).
        let bytes = (self.train as u128 + self.test as u128)
            * (self.channels * self.size * self.size) as u128;
        if bytes > MAX_SYNTHETIC_BYTES {
            return bad(format!(
                "data.synthetic.train + data.synthetic.test = {} images of {}×{}×{} would take {bytes} bytes, more than the {MAX_SYNTHETIC_BYTES} a generated dataset may take",
                self.train as u128 + self.test as u128,
                self.channels,
                self.size,
                self.size
            ));
        }
        if !(self.noise.is_finite() && self.noise >= 0.0) {
            return bad(format!(
                "data.synthetic.noise must be ≥ 0, got {}",
                self.noise
            ));
        }
        if self.shift >= self.size / 2 {
            return bad(format!(
                "data.synthetic.shift must be below half the image size, got {}",
                self.shift
            ));
        }
        Ok(())
    }

    /// The training and test sets for `seed` (the same on every worker and every run).
    pub fn generate(&self, seed_value: u64) -> Result<(ImageDataset, ImageDataset)> {
        self.validate()?;
        let mut rng = seed::rng(seed_value, "synthetic-prototypes", 0);
        let prototypes: Vec<Vec<Blob>> = (0..self.classes)
            .map(|_| {
                (0..3)
                    .map(|_| Blob::random(&mut rng, self.size, self.channels, 1.0))
                    .collect()
            })
            .collect();
        let train = self.samples(&prototypes, self.train, seed_value, 0)?;
        let test = self.samples(&prototypes, self.test, seed_value, 1)?;
        Ok((train, test))
    }

    fn samples(
        &self,
        prototypes: &[Vec<Blob>],
        count: usize,
        seed_value: u64,
        split: u64,
    ) -> Result<ImageDataset> {
        let mut rng = seed::rng(seed_value, "synthetic-samples", split);
        let noise =
            Normal::new(0.0f32, self.noise.max(1e-12)).map_err(|e| Error::Config(e.to_string()))?;
        let n = self.channels * self.size * self.size;
        let mut pixels = Vec::with_capacity(count * n);
        let mut labels = Vec::with_capacity(count);
        let mut img = vec![0f32; n];
        let s = self.shift as f32;
        for i in 0..count {
            // Balanced classes, in a shuffled-looking but deterministic order.
            let label = (i + rng.random_range(0..self.classes)) % self.classes;
            img.fill(0.0);
            let (dy, dx) = if s > 0.0 {
                (rng.random_range(-s..=s), rng.random_range(-s..=s))
            } else {
                (0.0, 0.0)
            };
            let contrast = rng.random_range(0.6f32..1.2);
            for blob in &prototypes[label] {
                blob.paint(&mut img, self.size, dy, dx, contrast);
            }
            Blob::random(&mut rng, self.size, self.channels, 0.5)
                .paint(&mut img, self.size, 0.0, 0.0, 1.0);
            for v in &img {
                let x = (v + noise.sample(&mut rng)).clamp(0.0, 1.0);
                pixels.push((x * 255.0).round() as u8);
            }
            labels.push(label as u8);
        }
        ImageDataset::new(
            [self.channels, self.size, self.size],
            self.classes,
            pixels,
            labels,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_balanced_and_shaped() {
        let c = SyntheticConfig {
            train: 500,
            test: 100,
            ..Default::default()
        };
        let (a, t) = c.generate(5).unwrap();
        let (b, _) = c.generate(5).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c.generate(6).unwrap().0);
        assert_eq!((a.len(), t.len(), a.channels, a.height), (500, 100, 1, 28));
        assert!(
            a.class_counts().iter().all(|&k| k > 20),
            "{:?}",
            a.class_counts()
        );
    }

    #[test]
    fn classes_are_separable_by_nearest_mean() {
        // A nearest-class-mean classifier (no learning) must beat chance by far, and must not
        // be perfect: the data is learnable but not trivial.
        let c = SyntheticConfig {
            train: 2000,
            test: 500,
            ..Default::default()
        };
        let (train, test) = c.generate(1).unwrap();
        let n = train.image_len();
        let mut means = vec![vec![0f64; n]; c.classes];
        let counts = train.class_counts();
        for i in 0..train.len() {
            let l = train.label(i) as usize;
            for (m, &p) in means[l].iter_mut().zip(train.image(i)) {
                *m += p as f64 / counts[l] as f64;
            }
        }
        let correct = (0..test.len())
            .filter(|&i| {
                let d = |m: &Vec<f64>| -> f64 {
                    m.iter()
                        .zip(test.image(i))
                        .map(|(a, &b)| (a - b as f64).powi(2))
                        .sum()
                };
                let best = (0..c.classes)
                    .min_by(|&a, &b| d(&means[a]).total_cmp(&d(&means[b])))
                    .unwrap();
                best == test.label(i) as usize
            })
            .count();
        let acc = correct as f64 / test.len() as f64;
        assert!(acc > 0.4 && acc < 0.999, "nearest-mean accuracy {acc}");
    }

    #[test]
    fn rejects_bad_configs() {
        let bad = SyntheticConfig {
            shift: 20,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("shift"));
        assert!(SyntheticConfig {
            classes: 1,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
