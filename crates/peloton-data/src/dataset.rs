//! An in-memory image-classification dataset: `u8` pixels in N×C×H×W order and `u8` labels.
//!
//! Pixels stay `u8` (CIFAR-10's training set is 150 MB this way, 600 MB as `f32`); batches are
//! converted to normalized `f32` when they are drawn.

use peloton_core::{Error, Result};

/// Images of one shape with class labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDataset {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub classes: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

impl ImageDataset {
    /// Checks sizes and labels: `pixels.len() == labels.len()·C·H·W` and every label `< classes`.
    pub fn new(
        shape: [usize; 3],
        classes: usize,
        pixels: Vec<u8>,
        labels: Vec<u8>,
    ) -> Result<Self> {
        let [channels, height, width] = shape;
        // Checked: the shape may come from a corrupted file header.
        let per_image = channels
            .checked_mul(height)
            .and_then(|n| n.checked_mul(width))
            .unwrap_or(0);
        if per_image == 0 || classes == 0 || classes > 256 {
            return Err(Error::Data(format!(
                "bad dataset shape {channels}×{height}×{width} with {classes} classes"
            )));
        }
        if labels.len().checked_mul(per_image) != Some(pixels.len()) {
            return Err(Error::Data(format!(
                "{} labels of {channels}×{height}×{width} images need {} pixels, got {}",
                labels.len(),
                labels.len() as u128 * per_image as u128,
                pixels.len()
            )));
        }
        if let Some(i) = labels.iter().position(|&l| l as usize >= classes) {
            return Err(Error::Data(format!(
                "label {} of sample {i} is not below {classes} classes",
                labels[i]
            )));
        }
        Ok(Self {
            channels,
            height,
            width,
            classes,
            pixels,
            labels,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Scalars per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// Every image's pixels, one after the other (N×C×H×W).
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// The first `count` samples (all of them when there are fewer).
    pub fn head(&self, count: usize) -> Self {
        let count = count.min(self.len());
        Self {
            pixels: self.pixels[..count * self.image_len()].to_vec(),
            labels: self.labels[..count].to_vec(),
            ..*self
        }
    }

    /// Samples per class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// Per-channel mean and standard deviation of the pixels scaled to [0, 1].
    pub fn channel_stats(&self) -> Normalization {
        let plane = self.height * self.width;
        let mut sum = vec![0f64; self.channels];
        let mut sum_sq = vec![0f64; self.channels];
        for img in self.pixels.chunks_exact(self.image_len()) {
            for (c, chan) in img.chunks_exact(plane).enumerate() {
                for &p in chan {
                    let v = p as f64 / 255.0;
                    sum[c] += v;
                    sum_sq[c] += v * v;
                }
            }
        }
        let count = (self.len() * plane).max(1) as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / count) as f32).collect();
        let std = sum_sq
            .iter()
            .zip(&mean)
            .map(|(sq, &m)| ((sq / count - (m as f64).powi(2)).max(1e-12).sqrt()) as f32)
            .collect();
        Normalization { mean, std }
    }
}

/// Per-channel `(x/255 − mean) / std`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Normalization {
    /// MNIST's usual constants.
    pub fn mnist() -> Self {
        Self {
            mean: vec![0.1307],
            std: vec![0.3081],
        }
    }

    /// CIFAR-10's usual constants.
    pub fn cifar10() -> Self {
        Self {
            mean: vec![0.4914, 0.4822, 0.4465],
            std: vec![0.2470, 0.2435, 0.2616],
        }
    }

    /// A lookup table per channel: `table[c][p]` is the normalized value of pixel `p`.
    pub(crate) fn tables(&self) -> Vec<[f32; 256]> {
        self.mean
            .iter()
            .zip(&self.std)
            .map(|(&m, &s)| {
                let mut t = [0f32; 256];
                for (p, v) in t.iter_mut().enumerate() {
                    *v = (p as f32 / 255.0 - m) / s;
                }
                t
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_sizes_and_labels() {
        assert!(ImageDataset::new([1, 2, 2], 3, vec![0; 8], vec![0, 2]).is_ok());
        let short = ImageDataset::new([1, 2, 2], 3, vec![0; 7], vec![0, 2]).unwrap_err();
        assert!(short.to_string().contains("need 8 pixels"), "{short}");
        let label = ImageDataset::new([1, 2, 2], 3, vec![0; 8], vec![0, 3]).unwrap_err();
        assert!(label.to_string().contains("sample 1"), "{label}");
    }

    #[test]
    fn channel_stats_of_a_known_image() {
        // One 2-channel 1×2 image: channel 0 = {0, 255} → mean ½, std ½; channel 1 = {51, 51}.
        let d = ImageDataset::new([2, 1, 2], 1, vec![0, 255, 51, 51], vec![0]).unwrap();
        let n = d.channel_stats();
        assert!((n.mean[0] - 0.5).abs() < 1e-6 && (n.std[0] - 0.5).abs() < 1e-6);
        assert!((n.mean[1] - 0.2).abs() < 1e-6 && n.std[1] < 1e-5);
        assert_eq!(d.class_counts(), vec![1]);
    }
}
