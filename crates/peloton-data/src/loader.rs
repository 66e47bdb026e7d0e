//! Augmentation and the batch iterator: each worker walks its shard in a fresh seeded random
//! order every epoch, and writes augmented, normalized `f32` batches into a buffer it reuses,
//! so drawing a batch allocates nothing.

use std::sync::Arc;

use peloton_core::checkpoint::StateDict;
use peloton_core::seed::Rng;
use peloton_core::{ensure_config, Error, Result};
use rand::seq::SliceRandom;
use rand::Rng as _;
use serde::{Deserialize, Serialize};

use crate::dataset::{ImageDataset, Normalization};

/// Training-time augmentation; evaluation uses its deterministic counterpart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Augmentation {
    /// Images as they are.
    #[default]
    None,
    /// Zero-pad by `pad` pixels, take a random crop of the original size, flip horizontally
    /// with probability ½ (the standard CIFAR recipe, pad 4). Evaluation: the image as is.
    PadCropFlip {
        #[serde(default = "default_pad")]
        pad: usize,
        #[serde(default = "yes")]
        flip: bool,
    },
    /// A random `size × size` crop without padding and a random flip (EASGD/LSGD's 28×28 CIFAR
    /// crops for CNN7). Evaluation: the center crop.
    CropFlip {
        size: usize,
        #[serde(default = "yes")]
        flip: bool,
    },
}

fn default_pad() -> usize {
    4
}

fn yes() -> bool {
    true
}

impl Augmentation {
    /// The shape of the images this produces from `[C, H, W]` inputs.
    pub fn output_shape(&self, [c, h, w]: [usize; 3]) -> [usize; 3] {
        match *self {
            Augmentation::CropFlip { size, .. } => [c, size, size],
            _ => [c, h, w],
        }
    }

    pub fn validate(&self, [_, h, w]: [usize; 3]) -> Result<()> {
        if let Augmentation::CropFlip { size, .. } = *self {
            ensure_config!(
                size >= 1 && size <= h && size <= w,
                "data.augmentation.size {size} does not fit {h}×{w} images"
            );
        }
        if let Augmentation::PadCropFlip { pad, .. } = *self {
            ensure_config!(
                pad <= h.min(w),
                "data.augmentation.pad {pad} is larger than the image"
            );
        }
        Ok(())
    }
}

/// A batch of normalized images (N×C×H×W, row-major) and their labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    /// `[C, H, W]` of each image.
    pub shape: [usize; 3],
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// This batch followed by `other` (same image shape): the union batch of two workers.
    pub fn concat(&self, other: &Batch) -> Batch {
        debug_assert_eq!(self.shape, other.shape);
        Batch {
            images: [self.images.as_slice(), &other.images].concat(),
            labels: [self.labels.as_slice(), &other.labels].concat(),
            shape: self.shape,
        }
    }
}

/// Writes image `index` of `data` into `out` (the output shape's worth of floats), cropped at
/// `(oy, ox)` in padded coordinates and optionally flipped.
#[allow(clippy::too_many_arguments)]
fn write_image(
    data: &ImageDataset,
    index: usize,
    tables: &[[f32; 256]],
    [c_out, h_out, w_out]: [usize; 3],
    pad: usize,
    oy: usize,
    ox: usize,
    flip: bool,
    out: &mut [f32],
) {
    let img = data.image(index);
    let (h, w) = (data.height, data.width);
    for c in 0..c_out {
        let table = &tables[c];
        let zero = table[0];
        let src = &img[c * h * w..(c + 1) * h * w];
        let dst = &mut out[c * h_out * w_out..(c + 1) * h_out * w_out];
        for y in 0..h_out {
            let sy = (y + oy) as isize - pad as isize;
            let row = &mut dst[y * w_out..(y + 1) * w_out];
            if sy < 0 || sy >= h as isize {
                row.fill(zero);
                continue;
            }
            let src_row = &src[sy as usize * w..(sy as usize + 1) * w];
            for (x, v) in row.iter_mut().enumerate() {
                let xx = if flip { w_out - 1 - x } else { x };
                let sx = (xx + ox) as isize - pad as isize;
                *v = if sx < 0 || sx >= w as isize {
                    zero
                } else {
                    table[src_row[sx as usize] as usize]
                };
            }
        }
    }
}

/// Fills `batch` with `indices` of `data`: augmented with `rng` when given (training), the
/// deterministic evaluation transform otherwise.
pub fn fill_batch(
    data: &ImageDataset,
    indices: &[u32],
    augmentation: &Augmentation,
    tables: &[[f32; 256]],
    mut rng: Option<&mut Rng>,
    batch: &mut Batch,
) {
    let shape = augmentation.output_shape([data.channels, data.height, data.width]);
    let per = shape.iter().product::<usize>();
    batch.shape = shape;
    batch.images.resize(indices.len() * per, 0.0);
    batch.labels.clear();
    for (slot, &i) in indices.iter().enumerate() {
        let (pad, oy, ox, flip) = match (*augmentation, rng.as_deref_mut()) {
            (Augmentation::None, _) => (0, 0, 0, false),
            (Augmentation::PadCropFlip { pad, flip }, Some(r)) => (
                pad,
                r.random_range(0..=2 * pad),
                r.random_range(0..=2 * pad),
                flip && r.random_bool(0.5),
            ),
            (Augmentation::PadCropFlip { .. }, None) => (0, 0, 0, false),
            (Augmentation::CropFlip { size, flip }, Some(r)) => (
                0,
                r.random_range(0..=data.height - size),
                r.random_range(0..=data.width - size),
                flip && r.random_bool(0.5),
            ),
            (Augmentation::CropFlip { size, .. }, None) => {
                (0, (data.height - size) / 2, (data.width - size) / 2, false)
            }
        };
        write_image(
            data,
            i as usize,
            tables,
            shape,
            pad,
            oy,
            ox,
            flip,
            &mut batch.images[slot * per..(slot + 1) * per],
        );
        batch.labels.push(data.label(i as usize) as i64);
    }
}

/// One worker's training stream over its shard: reshuffled every epoch, last partial batch
/// dropped (every step sees a full batch, as the reference codes' loaders do).
pub struct ShardLoader {
    data: Arc<ImageDataset>,
    order: Vec<u32>,
    position: usize,
    batch_size: usize,
    augmentation: Augmentation,
    tables: Vec<[f32; 256]>,
    rng: Rng,
    epoch: u64,
}

impl ShardLoader {
    pub fn new(
        data: Arc<ImageDataset>,
        shard: Vec<u32>,
        batch_size: usize,
        augmentation: Augmentation,
        normalization: &Normalization,
        mut rng: Rng,
    ) -> Result<Self> {
        ensure_config!(batch_size >= 1, "data.batch_size must be at least 1");
        ensure_config!(
            shard.len() >= batch_size,
            "a shard of {} samples is smaller than the batch size {batch_size}",
            shard.len()
        );
        ensure_config!(
            normalization.mean.len() == data.channels && normalization.std.len() == data.channels,
            "the normalization has {} channels, the images {}",
            normalization.mean.len(),
            data.channels
        );
        augmentation.validate([data.channels, data.height, data.width])?;
        let mut order = shard;
        order.shuffle(&mut rng);
        Ok(Self {
            data,
            order,
            position: 0,
            batch_size,
            augmentation,
            tables: normalization.tables(),
            rng,
            epoch: 0,
        })
    }

    /// Full batches per pass over the shard.
    pub fn steps_per_epoch(&self) -> u64 {
        (self.order.len() / self.batch_size) as u64
    }

    /// Completed passes over the shard.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn shard_len(&self) -> usize {
        self.order.len()
    }

    /// The shard's sample indices, in the current epoch's order.
    pub fn shard(&self) -> &[u32] {
        &self.order
    }

    pub fn dataset(&self) -> &ImageDataset {
        &self.data
    }

    pub fn augmentation(&self) -> &Augmentation {
        &self.augmentation
    }

    pub fn tables(&self) -> &[[f32; 256]] {
        &self.tables
    }

    /// The iterator's position, for a checkpoint: this epoch's order, the next index, the
    /// epoch count and the shuffling/augmentation stream.
    pub fn save_state(&self) -> StateDict {
        let mut state = StateDict::new();
        let order: Vec<u64> = self.order.iter().map(|&i| i as u64).collect();
        state.put_u64s("order", &order);
        state.put_u64s("position", &[self.position as u64, self.epoch]);
        state.put_rng("rng", &self.rng);
        state
    }

    pub fn load_state(&mut self, state: &StateDict) -> Result<()> {
        let order: Vec<u32> = state.u64s("order")?.iter().map(|&i| i as u32).collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        let mut shard = self.order.clone();
        shard.sort_unstable();
        // The saved order must be a permutation of this worker's shard, or it is another run's.
        let &[position, epoch] = state.u64s("position")? else {
            return Err(Error::Checkpoint(
                "the loader position must be two numbers".into(),
            ));
        };
        if sorted != shard || position as usize > order.len() {
            return Err(Error::Checkpoint(
                "the data loader's saved order does not match this worker's shard".into(),
            ));
        }
        self.order = order;
        self.position = position as usize;
        self.epoch = epoch;
        self.rng = state.rng("rng")?;
        Ok(())
    }

    /// Writes the next training batch into `batch`.
    pub fn next_into(&mut self, batch: &mut Batch) {
        if self.position + self.batch_size > self.order.len() {
            self.order.shuffle(&mut self.rng);
            self.position = 0;
            self.epoch += 1;
        }
        let range = self.position..self.position + self.batch_size;
        self.position += self.batch_size;
        fill_batch(
            &self.data,
            &self.order[range],
            &self.augmentation,
            &self.tables,
            Some(&mut self.rng),
            batch,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peloton_core::seed;

    fn tiny() -> Arc<ImageDataset> {
        // 6 images of 1×2×3 whose pixels encode (image, position).
        let pixels = (0..6u8)
            .flat_map(|i| (0..6u8).map(move |p| i * 10 + p))
            .collect();
        Arc::new(ImageDataset::new([1, 2, 3], 3, pixels, vec![0, 1, 2, 0, 1, 2]).unwrap())
    }

    fn identity() -> Normalization {
        // x/255 → (x/255 − 0)/(1/255) = x: pixel values come out unchanged.
        Normalization {
            mean: vec![0.0],
            std: vec![1.0 / 255.0],
        }
    }

    #[test]
    fn every_epoch_visits_each_sample_once() {
        let mut l = ShardLoader::new(
            tiny(),
            vec![0, 2, 3, 5],
            2,
            Augmentation::None,
            &identity(),
            seed::rng(1, "t", 0),
        )
        .unwrap();
        assert_eq!(l.steps_per_epoch(), 2);
        let mut b = Batch::default();
        for _ in 0..3 {
            let mut seen = Vec::new();
            for _ in 0..2 {
                l.next_into(&mut b);
                assert_eq!(b.images.len(), 12);
                seen.extend(b.images.chunks(6).map(|img| img[0].round() as u32 / 10));
            }
            seen.sort_unstable();
            assert_eq!(seen, vec![0, 2, 3, 5]);
        }
        assert_eq!(l.epoch(), 2);
    }

    #[test]
    fn crop_flip_and_pad_follow_the_geometry() {
        let d = tiny();
        let tables = identity().tables();
        let mut b = Batch::default();
        // The center 2×2 crop of a 2×3 image starts at (0, ⌊1/2⌋) = (0, 0).
        fill_batch(
            &d,
            &[1],
            &Augmentation::CropFlip {
                size: 2,
                flip: true,
            },
            &tables,
            None,
            &mut b,
        );
        assert_eq!(b.shape, [1, 2, 2]);
        let rounded: Vec<f32> = b.images.iter().map(|v| v.round()).collect();
        assert_eq!(rounded, vec![10.0, 11.0, 13.0, 14.0]);
        // Padding fills with the normalized value of a zero pixel.
        let mut rng = seed::rng(3, "t", 0);
        fill_batch(
            &d,
            &[2],
            &Augmentation::PadCropFlip {
                pad: 1,
                flip: false,
            },
            &tables,
            Some(&mut rng),
            &mut b,
        );
        assert_eq!(b.shape, [1, 2, 3]);
        assert!(b
            .images
            .iter()
            .all(|&v| v == 0.0 || (19.5..25.5).contains(&v)));
        // Flipping mirrors each row.
        let mut flipped = 0;
        for s in 0..20 {
            let mut rng = seed::rng(s, "t", 0);
            fill_batch(
                &d,
                &[0],
                &Augmentation::CropFlip {
                    size: 2,
                    flip: true,
                },
                &tables,
                Some(&mut rng),
                &mut b,
            );
            let row = &b.images[..2];
            assert!(((row[0] - row[1]).abs() - 1.0).abs() < 1e-3);
            flipped += (row[0] > row[1]) as usize;
        }
        assert!(flipped > 0 && flipped < 20);
    }

    #[test]
    fn shard_smaller_than_batch_is_an_error() {
        let e = ShardLoader::new(
            tiny(),
            vec![0],
            2,
            Augmentation::None,
            &identity(),
            seed::rng(1, "t", 0),
        );
        assert!(e
            .err()
            .unwrap()
            .to_string()
            .contains("smaller than the batch size"));
    }
}
