//! Evaluation and BatchNorm recomputation hold one batch of activations at a time: their
//! peak memory, counted by a global allocator, does not grow with the number of images
//! they go through. (Recomputing statistics with burn's training-mode BatchNorm on the
//! autodiff device kept every batch's tape until the next backward: 24 GB on CIFAR-10.)
//!
//! Alone in its binary: the allocator counts every thread of the process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use peloton_burn::models::ModelName;
use peloton_burn::{BatchNormPolicy, ModelConfig, NetworkLearner, NetworkTask};
use peloton_core::learner::{Learner, LearnerContext};
use peloton_data::{DataConfig, SyntheticConfig};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only
// observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let now = CURRENT.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated at the peak of one evaluation of a ResNet-20 worker (BatchNorm
/// recomputed over its whole shard of `train` images, then `test` images evaluated), above
/// what was allocated before it.
fn evaluation_peak(train: usize, test: usize) -> usize {
    let data = DataConfig {
        batch_size: 16,
        eval_batch_size: 16,
        synthetic: SyntheticConfig {
            channels: 3,
            size: 16,
            train,
            test,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut model = ModelConfig::new(ModelName::Resnet20);
    model.batch_norm = BatchNormPolicy::Recompute;
    model.threads = Some(1);
    let task = NetworkTask::load(model, &data, 1, 3).unwrap();
    let ctx = LearnerContext {
        rank: 0,
        workers: 1,
        seed: 3,
    };
    let mut learner = NetworkLearner::new(&task, ctx).unwrap();
    let mut params = vec![0.0; learner.layout().len()];
    learner.init_params(&mut params);
    let mut grad = vec![0.0; params.len()];
    // One training step first, as in a run (the autodiff graph exists).
    learner.loss_and_grad(&params, &mut grad).unwrap();
    // A first evaluation makes the evaluation lanes; the second is measured.
    learner.evaluate(&params).unwrap();
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let e = learner.evaluate(&params).unwrap();
    assert!(e.loss.is_finite());
    PEAK.load(Ordering::Relaxed) - before
}

#[test]
fn evaluation_memory_does_not_grow_with_the_images_evaluated() {
    // 8 recompute batches and 8 test batches, against 64 of each.
    let small = evaluation_peak(128, 128);
    let large = evaluation_peak(1024, 1024);
    // A held tape or a kept batch per image would make `large` about 8× `small` (one
    // 16-image ResNet-20 batch at 16×16 keeps ≈ 6 MB of activations for backward).
    assert!(
        (large as f64) < 1.5 * small as f64,
        "peak {large} bytes for 1,024 images against {small} for 128"
    );
}
