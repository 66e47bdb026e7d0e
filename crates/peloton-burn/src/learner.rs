//! [`NetworkLearner`]: a burn model and a data shard behind peloton's [`Learner`] trait, and
//! [`NetworkTask`], the factory that loads the data once and builds every worker's learner.
//!
//! The flat buffer is the source of truth: each step writes it into the model, runs forward
//! and backward on the autodiff device, and moves the gradients back out. The local optimizer
//! is peloton's own ([`peloton_core::optim`]), applied to the flat buffer, not burn's: that
//! keeps every algorithm's arithmetic exactly as specified (momentum buffers local, the
//! update order of `torch.optim.SGD`, Laplacian smoothing per tensor) and identical across
//! problems and backends.

use std::sync::Arc;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use peloton_core::checkpoint::StateDict;
use peloton_core::layout::ParamLayout;
use peloton_core::learner::{Evaluation, Learner, LearnerContext, LearnerFactory};
use peloton_core::seed::{self, Rng};
use peloton_core::{Error, Result};
use peloton_data::loader::fill_batch;
use peloton_data::{Batch, DataConfig, LoadedData, ShardLoader};
use rand::Rng as _;

use crate::config::{machine_cores, BatchNormPolicy, ModelConfig};
use crate::flat::FlatMap;
use crate::init::{initialize, Scheme};
use crate::memory::{estimate, EstimateInput, MemoryEstimate};
use crate::models::{fold_batch_statistics, Net, Pass};

/// Everything needed to build the workers' learners: the model config and the data,
/// loaded and sharded once for all in-process workers.
#[derive(Debug, Clone)]
pub struct NetworkTask {
    pub model: ModelConfig,
    pub data: Arc<LoadedData>,
    threads_per_worker: usize,
}

impl NetworkTask {
    /// Loads (or generates) the data and checks that the model fits it.
    /// Kernel threads of each in-process worker.
    pub fn threads_per_worker(&self) -> usize {
        self.threads_per_worker
    }

    pub fn load(model: ModelConfig, data: &DataConfig, workers: usize, seed: u64) -> Result<Self> {
        model.validate()?;
        let loaded = data.load(workers, seed)?;
        model.name.check_input(loaded.input_shape())?;
        Ok(Self {
            threads_per_worker: model.threads_per_worker(workers),
            model,
            data: Arc::new(loaded),
        })
    }

    /// What a run of `workers` in-process workers of this task is expected to hold
    /// ([`crate::memory`]), from the model's layer shapes and the data's sizes.
    pub fn memory_estimate(&self, workers: usize) -> Result<MemoryEstimate> {
        let input = self.data.input_shape();
        let params = self
            .model
            .name
            .parameters(input, self.data.classes(), &self.model.hidden);
        let data_bytes = [&self.data.train, &self.data.test]
            .iter()
            .map(|d| (d.pixels().len() + d.labels().len()) as u64)
            .sum();
        Ok(estimate(&EstimateInput {
            model: self.model.name,
            hidden: &self.model.hidden,
            input,
            classes: self.data.classes(),
            params,
            batch_size: self.data.batch_size,
            eval_batch_size: self.data.eval_batch_size.min(self.data.test.len().max(1)),
            data_bytes,
            workers,
        }))
    }
}

impl LearnerFactory for NetworkTask {
    fn build(&self, ctx: LearnerContext) -> Result<Box<dyn Learner>> {
        Ok(Box::new(NetworkLearner::new(self, ctx)?))
    }
}

/// One worker's model and data.
pub struct NetworkLearner {
    rank: usize,
    seed: u64,
    /// The training (autodiff) device.
    device: Device,
    /// The model's segment tables (the same for every lane's replica, in the same order).
    flat: FlatMap,
    scheme: Scheme,
    loader: ShardLoader,
    data: Arc<LoadedData>,
    batch: Batch,
    dropout_rng: Rng,
    policy: BatchNormPolicy,
    recompute_batches: Option<usize>,
    /// The worker's training lanes: lane 0 holds the model whose BatchNorm statistics are
    /// the worker's; with more than one lane, a batch is split over them ([`ModelConfig`]'s
    /// `split_batch`).
    lanes: Vec<Lane>,
    /// Evaluation's lanes, made at the first evaluation (see [`NetworkLearner::eval_lanes`]):
    /// evaluation is exact on any number of lanes.
    eval_lanes: Option<Arc<[Kernels]>>,
}

/// A replica of the model on kernel threads of its own.
struct Lane {
    net: Option<Net>,
    flat: FlatMap,
    kernels: Kernels,
    grad: Vec<f32>,
    part: Batch,
}

impl Lane {
    fn net(&self) -> &Net {
        self.net.as_ref().expect("the model is always put back")
    }

    /// Writes `values` into the replica's parameters (`buffers = false`) or statistics.
    fn write(&mut self, values: &[f32], buffers: bool) {
        if buffers {
            // Fold pending updates in first, or a stale one would overwrite what is written.
            let _ = self.net().valid();
        }
        let net = self.net.take().expect("the model is always put back");
        self.net = Some(self.flat.write(net, values, buffers));
    }

    /// The replica's BatchNorm statistics (pending updates folded in first).
    fn read_buffers(&self, out: &mut [f32]) {
        self.flat.read(&self.net().valid(), out, true);
    }

    /// Forward and backward of `batch` at the parameters last written, with the gradient of
    /// the batch's mean loss written into `grad`; returns that loss.
    fn loss_and_grad(
        &self,
        device: &Device,
        batch: &Batch,
        rng: Option<&mut Rng>,
        grad: &mut [f32],
    ) -> f32 {
        let net = self.net();
        let flat = &self.flat;
        self.kernels.install(|| {
            let x = images(batch, device);
            let targets = Tensor::<1, Int>::from_data(
                TensorData::new(batch.labels.clone(), [batch.len()]),
                device,
            );
            let mut pass = Pass {
                train: true,
                rng,
                batch_stats: None,
            };
            let logits = net.forward(x, &mut pass);
            let loss = CrossEntropyLossConfig::new()
                .init(&logits.device())
                .forward(logits, targets);
            let value = loss.clone().into_scalar::<f32>();
            let mut grads = loss.backward();
            flat.read_grads(net, &mut grads, grad);
            value
        })
    }
}

/// One single-threaded `flex` pool per core, made once per process for every worker's
/// evaluation.
fn shared_flex_lanes() -> Result<Arc<[Kernels]>> {
    static LANES: std::sync::Mutex<Option<Arc<[Kernels]>>> = std::sync::Mutex::new(None);
    let mut shared = LANES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(lanes) = &*shared {
        return Ok(Arc::clone(lanes));
    }
    let lanes: Arc<[Kernels]> = (0..machine_cores())
        .map(|lane| Kernels::rayon(1, move |_| format!("peloton-eval-{lane}")))
        .collect::<Result<Vec<_>>>()?
        .into();
    *shared = Some(Arc::clone(&lanes));
    Ok(lanes)
}

/// `batch` as an `N×C×H×W` tensor on `device`.
fn images(batch: &Batch, device: &Device) -> Tensor<4> {
    let [c, h, w] = batch.shape;
    let data = TensorData::new(batch.images.clone(), [batch.len(), c, h, w]);
    Tensor::from_data(data, device)
}

/// Runs jobs `0..jobs` on `lanes` (job j on lane j mod lanes, each lane on a thread of its
/// own) and returns the results in job order, so whatever is summed from them is summed in
/// the same order on any number of lanes.
fn on_lanes<T: Send>(lanes: &[Kernels], jobs: usize, job: &(dyn Fn(usize) -> T + Sync)) -> Vec<T> {
    if lanes.len() <= 1 || jobs <= 1 {
        return (0..jobs).map(|j| lanes[0].install(|| job(j))).collect();
    }
    let mut out: Vec<Option<T>> = (0..jobs).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .iter()
            .enumerate()
            .map(|(l, lane)| {
                scope.spawn(move || {
                    (l..jobs)
                        .step_by(lanes.len())
                        .map(|j| (j, lane.install(|| job(j))))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(results) => results.into_iter().for_each(|(j, r)| out[j] = Some(r)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    out.into_iter()
        .map(|r| r.expect("every job ran on its lane"))
        .collect()
}

/// Where a worker's tensor kernels get their threads, so that workers × threads never
/// exceeds the cores: `flex` parallelizes with rayon, and each worker gets a pool of its own.
pub(crate) struct Kernels(rayon::ThreadPool);

impl Kernels {
    pub(crate) fn new(threads: usize, rank: usize) -> Result<Self> {
        Self::rayon(threads, move |i| format!("peloton-w{rank}-k{i}"))
    }

    /// A rayon pool of `threads` threads named by `name`.
    fn rayon(threads: usize, name: impl Fn(usize) -> String + 'static) -> Result<Self> {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(name)
            .build()
            .map(Kernels)
            .map_err(|e| Error::Config(format!("cannot start kernel threads: {e}")))
    }

    /// Runs `f` with this worker's kernel threads.
    pub(crate) fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.0.install(f)
    }
}

impl NetworkLearner {
    pub fn new(task: &NetworkTask, ctx: LearnerContext) -> Result<Self> {
        let device = task.model.device.device()?.autodiff();
        let data = Arc::clone(&task.data);
        let threads = task.threads_per_worker;
        // Splitting the batch is how a worker uses several cores on `flex`: burn's own kernel
        // threads barely help there (BENCHMARKS.md, "Where the cores go").
        let (lane_count, lane_threads) = if task.model.split_batch && threads > 1 {
            (threads, 1)
        } else {
            (1, threads)
        };
        let mut lanes = Vec::with_capacity(lane_count);
        for _ in 0..lane_count {
            let net = Net::new(
                task.model.name,
                data.input_shape(),
                data.classes(),
                &task.model.hidden,
                &device,
            )?;
            let flat = FlatMap::discover(&net);
            lanes.push(Lane {
                // A single lane writes straight into the caller's gradient.
                grad: if lane_count > 1 {
                    vec![0.0; flat.params.len()]
                } else {
                    Vec::new()
                },
                net: Some(net),
                flat,
                kernels: Kernels::new(lane_threads, ctx.rank)?,
                part: Batch::default(),
            });
        }
        let loader = data.shard_loader(ctx.rank, ctx.seed)?;
        Ok(Self {
            rank: ctx.rank,
            seed: ctx.seed,
            scheme: lanes[0].net().init_scheme(),
            flat: lanes[0].flat.clone(),
            device,
            loader,
            data,
            batch: Batch::default(),
            dropout_rng: seed::rng(ctx.seed, "dropout", ctx.rank as u64),
            policy: task.model.batch_norm,
            recompute_batches: task.model.recompute_batches,
            lanes,
            eval_lanes: None,
        })
    }

    /// Training lanes of this worker (1 unless it splits its batches over several cores).
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// The recomputed BatchNorm statistics of `model`'s parameters over the shard's first
    /// batches (all of them, or `recompute_batches`), written into `buffers`: each batch
    /// normalized by its own statistics on the inference device (no tape), the statistics
    /// folded in batch order with momentum 1/(k+1) at batch k — the cumulative average, as a
    /// training-mode pass with that momentum leaves it. One batch of activations lives at a
    /// time on each lane, and the result is the same on any number of lanes.
    fn recompute_batch_norm(
        &self,
        lanes: &[Kernels],
        model: &Net,
        buffers: &mut [f32],
    ) -> Result<()> {
        let size = self.data.batch_size;
        let limit = self.recompute_batches.unwrap_or(usize::MAX);
        let shard = self.loader.shard();
        let batches = (shard.len() / size).min(limit);
        let device = self.device.clone().without_autodiff();
        let (data, tables) = (&self.data, self.loader.tables());
        let per_batch = on_lanes(lanes, batches, &|k| {
            let mut batch = Batch::default();
            let chunk = &shard[k * size..(k + 1) * size];
            fill_batch(
                &data.train,
                chunk,
                &data.augmentation,
                tables,
                None,
                &mut batch,
            );
            let mut pass = Pass::batch_statistics();
            let _ = model.forward(images(&batch, &device), &mut pass);
            pass.batch_stats.unwrap_or_default()
        });
        let running = fold_batch_statistics(per_batch);
        let layers = model.batch_norms();
        if batches == 0 {
            // A shard smaller than one batch: the statistics stay as they were.
            return Ok(());
        }
        let mismatch = |what: String| Error::Learner {
            worker: self.rank,
            message: format!("BatchNorm recomputation: {what}"),
        };
        if running.len() != layers.len() {
            return Err(mismatch(format!(
                "{} layers reported statistics, the model has {}",
                running.len(),
                layers.len()
            )));
        }
        for (i, (bn, stats)) in layers.into_iter().zip(&running).enumerate() {
            let slots = self.flat.buffer_slots(bn);
            for (&(offset, numel), values) in slots.iter().zip([&stats.mean, &stats.var]) {
                if numel != values.len() {
                    return Err(mismatch(format!(
                        "layer {i} reported {} values for {numel} channels",
                        values.len()
                    )));
                }
                buffers[offset..offset + numel].copy_from_slice(values);
            }
        }
        Ok(())
    }

    /// The mini-batch loss at `params` on `batch`, with its gradient written into `grad`.
    /// With several lanes the batch is split into contiguous parts, one per lane, and the
    /// parts' mean losses and gradients are averaged with weights part size / batch size,
    /// which is the whole batch's mean loss and gradient (up to rounding; BatchNorm
    /// normalizes each part by its own statistics, as data-parallel replicas do).
    pub fn loss_and_grad_on(
        &mut self,
        params: &[f32],
        batch: &Batch,
        grad: &mut [f32],
    ) -> Result<f64> {
        let device = self.device.clone();
        let n = batch.len();
        let used = self.lanes.len().min(n).max(1);
        if used == 1 {
            let lane = &mut self.lanes[0];
            lane.write(params, false);
            let loss = lane.loss_and_grad(&device, batch, Some(&mut self.dropout_rng), grad);
            return Ok(loss as f64);
        }
        let per = batch.images.len() / n;
        let mut start = 0;
        for (i, lane) in self.lanes.iter_mut().take(used).enumerate() {
            let len = n / used + usize::from(i < n % used);
            lane.part.shape = batch.shape;
            lane.part.images.clear();
            lane.part
                .images
                .extend_from_slice(&batch.images[start * per..(start + len) * per]);
            lane.part.labels.clear();
            lane.part
                .labels
                .extend_from_slice(&batch.labels[start..start + len]);
            start += len;
        }
        // Each part's dropout masks come from a stream of its own, seeded from the worker's.
        let mut streams: Vec<Rng> = (0..used)
            .map(|_| seed::rng(self.dropout_rng.random::<u64>(), "dropout-part", 0))
            .collect();
        let losses: Vec<f32> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .lanes
                .iter_mut()
                .zip(streams.iter_mut())
                .map(|(lane, rng)| {
                    let device = &device;
                    scope.spawn(move || {
                        lane.write(params, false);
                        let mut g = std::mem::take(&mut lane.grad);
                        let loss = lane.loss_and_grad(device, &lane.part, Some(rng), &mut g);
                        lane.grad = g;
                        loss
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        grad.fill(0.0);
        let mut loss = 0.0f64;
        for (lane, &l) in self.lanes.iter().zip(&losses) {
            let w = lane.part.len() as f32 / n as f32;
            peloton_core::kernels::axpy(grad, w, &lane.grad);
            loss += w as f64 * l as f64;
        }
        self.average_lane_buffers(used);
        Ok(loss)
    }

    /// Gives every lane the average of the first `used` lanes' BatchNorm statistics, so the
    /// worker keeps one set (each lane saw a part of every batch).
    fn average_lane_buffers(&mut self, used: usize) {
        let len = self.flat.buffers.len();
        if len == 0 {
            return;
        }
        let mut sum = vec![0.0f32; len];
        let mut one = vec![0.0f32; len];
        for lane in &self.lanes[..used] {
            lane.read_buffers(&mut one);
            sum.iter_mut().zip(&one).for_each(|(s, v)| *s += v);
        }
        let scale = 1.0 / used as f32;
        sum.iter_mut().for_each(|s| *s *= scale);
        for lane in &mut self.lanes {
            lane.write(&sum, true);
        }
    }

    /// Evaluation's lanes: one single-threaded lane per core of the machine, shared by every
    /// worker of the process (the other workers of a synchronous run wait while one
    /// evaluates; workers evaluating at once queue on the lanes).
    fn eval_lanes(&mut self) -> Result<Arc<[Kernels]>> {
        if let Some(lanes) = &self.eval_lanes {
            return Ok(Arc::clone(lanes));
        }
        let lanes = shared_flex_lanes()?;
        self.eval_lanes = Some(Arc::clone(&lanes));
        Ok(lanes)
    }

    /// Test loss and accuracy of `params` (after recomputing BatchNorm statistics where
    /// that is the policy), the test set's batches spread over `lanes`: each batch's loss
    /// and hits are summed in batch order, so the result is the same on any number of lanes.
    fn evaluate_on(&mut self, lanes: &[Kernels], params: &[f32]) -> Result<Evaluation> {
        let lane = &mut self.lanes[0];
        lane.write(params, false);
        let mut model = lane.net().valid();
        if self.policy == BatchNormPolicy::Recompute {
            let mut buffers = self.buffers();
            self.recompute_batch_norm(lanes, &model, &mut buffers)?;
            // The recomputed statistics are the worker's from now on (a checkpoint saves them).
            model = self.flat.write(model, &buffers, true);
            self.write_shared_state(&buffers);
        }
        let device = self.device.clone().without_autodiff();
        let test = &self.data.test;
        let size = self.data.eval_batch_size;
        let (augmentation, tables) = (&self.data.augmentation, self.loader.tables());
        let model = &model;
        let batches = test.len().div_ceil(size);
        let per_batch = on_lanes(lanes, batches, &|k| {
            let indices: Vec<u32> = (k * size..((k + 1) * size).min(test.len()))
                .map(|i| i as u32)
                .collect();
            let mut batch = Batch::default();
            fill_batch(test, &indices, augmentation, tables, None, &mut batch);
            let logits = model
                .forward(images(&batch, &device), &mut Pass::eval())
                .into_data()
                .convert::<f32>();
            logits
                .as_slice::<f32>()
                .map(|logits| score(logits, &batch.labels))
                .map_err(|e| format!("cannot read logits: {e:?}"))
        });
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for r in per_batch {
            let (l, c) = r.map_err(|message| Error::Learner {
                worker: self.rank,
                message,
            })?;
            loss_sum += l;
            correct += c;
        }
        let n = test.len().max(1) as f64;
        Ok(Evaluation {
            loss: loss_sum / n,
            accuracy: Some(correct as f64 / n),
            grad_norm: None,
        })
    }

    /// Draws the next training batch of this worker's stream.
    pub fn next_batch(&mut self, batch: &mut Batch) {
        self.loader.next_into(batch);
    }

    /// The BatchNorm running statistics (and any other non-trainable buffers) of the model.
    pub fn buffers(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.flat.buffers.len()];
        self.read_buffers(&mut out);
        out
    }

    fn read_buffers(&self, out: &mut [f32]) {
        self.lanes[0].read_buffers(out);
    }

    /// The segment tables of the parameters and of the buffers.
    pub fn flat_map(&self) -> &FlatMap {
        &self.flat
    }
}

/// What a network learner checkpoints besides the parameters (which are the runner's): the
/// model's BatchNorm statistics (every policy), the loader's position and the dropout stream.
/// The keys are shared by every backend's learner, so a checkpoint resumes on any of them.
pub fn save_worker_state(
    state: &mut StateDict,
    buffers: &[f32],
    loader: &ShardLoader,
    dropout: &Rng,
) {
    state.put_f32s("buffers", buffers);
    state.put_dict("loader", loader.save_state());
    state.put_rng("dropout", dropout);
}

/// Restores what [`save_worker_state`] wrote into `loader` and `dropout`, and returns the
/// `buffers` BatchNorm values for the caller's model.
pub fn load_worker_state(
    state: &StateDict,
    buffers: usize,
    loader: &mut ShardLoader,
    dropout: &mut Rng,
) -> Result<Vec<f32>> {
    let mut values = vec![0.0; buffers];
    state.f32s_into("buffers", &mut values)?;
    loader.load_state(state.dict("loader")?)?;
    *dropout = state.rng("dropout")?;
    Ok(values)
}

/// The summed cross-entropy (in f64, log-sum-exp shifted by the row's maximum) and the
/// number of correct predictions (the first maximum wins) of `logits` rows against `labels`.
pub fn score(logits: &[f32], labels: &[i64]) -> (f64, usize) {
    let (mut loss_sum, mut correct) = (0.0f64, 0usize);
    let classes = (logits.len() / labels.len().max(1)).max(1);
    for (row, &label) in logits.chunks_exact(classes).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let log_sum = row
            .iter()
            .map(|&z| (z as f64 - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        loss_sum += log_sum - row[label as usize] as f64;
        let predicted = row
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &z)| {
                if z > best.1 {
                    (i, z)
                } else {
                    best
                }
            })
            .0;
        correct += (predicted == label as usize) as usize;
    }
    (loss_sum, correct)
}

impl Learner for NetworkLearner {
    fn layout(&self) -> &ParamLayout {
        &self.flat.params
    }

    fn init_params(&mut self, params: &mut [f32]) {
        let mut rng = seed::rng(self.seed, "init", self.rank as u64);
        initialize(&self.flat.params, self.scheme, &mut rng, params);
    }

    fn loss_and_grad(&mut self, params: &[f32], grad: &mut [f32]) -> Result<f64> {
        let mut batch = std::mem::take(&mut self.batch);
        self.loader.next_into(&mut batch);
        let loss = self.loss_and_grad_on(params, &batch, grad);
        self.batch = batch;
        loss
    }

    fn evaluate(&mut self, params: &[f32]) -> Result<Evaluation> {
        let lanes = self.eval_lanes()?;
        self.evaluate_on(&lanes, params)
    }

    fn steps_per_epoch(&self) -> Option<u64> {
        Some(self.loader.steps_per_epoch())
    }

    fn shared_state_len(&self) -> usize {
        if self.policy == BatchNormPolicy::Average {
            self.flat.buffers.len()
        } else {
            0
        }
    }

    fn read_shared_state(&mut self, out: &mut [f32]) {
        self.read_buffers(out);
    }

    fn save_state(&mut self, state: &mut StateDict) -> Result<()> {
        save_worker_state(state, &self.buffers(), &self.loader, &self.dropout_rng);
        Ok(())
    }

    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        let buffers = load_worker_state(
            state,
            self.flat.buffers.len(),
            &mut self.loader,
            &mut self.dropout_rng,
        )?;
        self.write_shared_state(&buffers);
        Ok(())
    }

    fn write_shared_state(&mut self, state: &[f32]) {
        for lane in &mut self.lanes {
            lane.write(state, true);
        }
    }
}
