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

use crate::config::{BatchNormPolicy, DeviceKind, ModelConfig};
use crate::flat::FlatMap;
use crate::init::{initialize, Scheme};
use crate::models::{Net, Pass};

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
    net: Option<Net>,
    /// The training (autodiff) device.
    device: Device,
    flat: FlatMap,
    scheme: Scheme,
    loader: ShardLoader,
    data: Arc<LoadedData>,
    batch: Batch,
    dropout_rng: Rng,
    policy: BatchNormPolicy,
    recompute_batches: Option<usize>,
    /// This worker's kernel threads (shared with `install` calls that borrow `self`).
    pool: Arc<Kernels>,
}

/// Where a worker's tensor kernels get their threads, so that workers × threads never
/// exceeds the cores. `flex` parallelizes with rayon: each worker gets a pool of its own.
/// LibTorch ignores rayon and runs its own OpenMP threads, whose count is a per-thread
/// setting: it must be set on the thread that calls the kernels, or every worker starts a
/// team as large as the machine (on 2 cores, 4 ResNet-20 workers with 2 threads each step
/// 7% slower than with 1 each; BENCHMARKS.md, "LibTorch device").
pub(crate) enum Kernels {
    Rayon(rayon::ThreadPool),
    /// LibTorch's intra-op threads, set on the calling (worker) thread.
    #[cfg(feature = "tch")]
    Torch(usize),
}

impl Kernels {
    pub(crate) fn new(device: DeviceKind, threads: usize, rank: usize) -> Result<Self> {
        #[cfg(feature = "tch")]
        if device != DeviceKind::Flex {
            return Ok(Kernels::Torch(threads));
        }
        let _ = device;
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(move |i| format!("peloton-w{rank}-k{i}"))
            .build()
            .map(Kernels::Rayon)
            .map_err(|e| Error::Config(format!("cannot start kernel threads: {e}")))
    }

    /// Applies the thread setting to the calling thread where it is per thread (LibTorch), so
    /// that work done outside [`Kernels::install`] (writing parameters in, building input
    /// tensors) does not start a machine-wide team either.
    pub(crate) fn enter(&self) {
        #[cfg(feature = "tch")]
        if let Kernels::Torch(threads) = self {
            set_torch_threads(*threads);
        }
    }

    /// Runs `f` with this worker's kernel threads.
    pub(crate) fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match self {
            Kernels::Rayon(pool) => pool.install(f),
            #[cfg(feature = "tch")]
            Kernels::Torch(threads) => {
                set_torch_threads(*threads);
                f()
            }
        }
    }
}

/// Sets LibTorch's intra-op threads for the calling thread, once per thread: the call also
/// clears oneDNN's cache of compiled kernels, so it must not run every step.
#[cfg(feature = "tch")]
fn set_torch_threads(threads: usize) {
    use std::cell::Cell;
    thread_local!(static SET: Cell<usize> = const { Cell::new(0) });
    SET.with(|set| {
        if set.get() != threads {
            tch::set_num_threads(i32::try_from(threads).unwrap_or(i32::MAX));
            set.set(threads);
        }
    });
}

impl NetworkLearner {
    pub fn new(task: &NetworkTask, ctx: LearnerContext) -> Result<Self> {
        let device = task.model.device.device(task.model.cuda_index)?.autodiff();
        let data = Arc::clone(&task.data);
        let net = Net::new(
            task.model.name,
            data.input_shape(),
            data.classes(),
            &task.model.hidden,
            &device,
        )?;
        let flat = FlatMap::discover(&net);
        let shard = data
            .shards
            .get(ctx.rank)
            .cloned()
            .ok_or_else(|| Error::Config(format!("no data shard for worker {}", ctx.rank)))?;
        let loader = ShardLoader::new(
            Arc::clone(&data.train),
            shard,
            data.batch_size,
            data.augmentation,
            &data.normalization,
            seed::rng(ctx.seed, "batches", ctx.rank as u64),
        )?;
        let pool = Arc::new(Kernels::new(
            task.model.device,
            task.threads_per_worker,
            ctx.rank,
        )?);
        Ok(Self {
            rank: ctx.rank,
            seed: ctx.seed,
            scheme: net.init_scheme(),
            net: Some(net),
            device,
            flat,
            loader,
            data,
            batch: Batch::default(),
            dropout_rng: seed::rng(ctx.seed, "dropout", ctx.rank as u64),
            policy: task.model.batch_norm,
            recompute_batches: task.model.recompute_batches,
            pool,
        })
    }

    fn take_net(&mut self) -> Net {
        self.net.take().expect("the model is always put back")
    }

    /// Writes `params` into the model's trainable tensors.
    fn load(&mut self, params: &[f32]) {
        let net = self.take_net();
        self.net = Some(self.flat.write(net, params, false));
    }

    fn images(&self, batch: &Batch, device: &Device) -> Tensor<4> {
        let [c, h, w] = batch.shape;
        let data = TensorData::new(batch.images.clone(), [batch.len(), c, h, w]);
        Tensor::from_data(data, device)
    }

    /// Runs the shard through the model in training mode (no backward), with BatchNorm
    /// momentum 1/(k+1) at batch k, which leaves the cumulative average of the batch
    /// statistics in the running buffers.
    fn recompute_batch_norm(&mut self) {
        let mut net = self.take_net();
        let size = self.data.batch_size;
        let limit = self.recompute_batches.unwrap_or(usize::MAX);
        let mut batch = Batch::default();
        for (k, chunk) in self
            .loader
            .shard()
            .chunks_exact(size)
            .take(limit)
            .enumerate()
        {
            for bn in net.batch_norms_mut() {
                bn.momentum = 1.0 / (k as f64 + 1.0);
            }
            fill_batch(
                &self.data.train,
                chunk,
                &self.data.augmentation,
                self.loader.tables(),
                None,
                &mut batch,
            );
            let x = self.images(&batch, &self.device).detach();
            let _ = net.forward(x, &mut Pass::eval());
        }
        for bn in net.batch_norms_mut() {
            bn.momentum = 0.1;
        }
        self.net = Some(net);
    }
    /// The mini-batch loss at `params` on `batch`, with its gradient written into `grad`.
    pub fn loss_and_grad_on(
        &mut self,
        params: &[f32],
        batch: &Batch,
        grad: &mut [f32],
    ) -> Result<f64> {
        self.pool.enter();
        self.load(params);
        let device = self.device.clone();
        let x = self.images(batch, &device);
        let targets = Tensor::<1, Int>::from_data(
            TensorData::new(batch.labels.clone(), [batch.len()]),
            &device,
        );
        let net = self.net.as_ref().expect("model present");
        let flat = &self.flat;
        let rng = &mut self.dropout_rng;
        let loss = self.pool.install(|| {
            let mut pass = Pass {
                train: true,
                rng: Some(rng),
            };
            let logits = net.forward(x, &mut pass);
            let loss = CrossEntropyLossConfig::new()
                .init(&logits.device())
                .forward(logits, targets);
            let value = loss.clone().into_scalar::<f32>();
            let mut grads = loss.backward();
            flat.read_grads(net, &mut grads, grad);
            value
        });
        Ok(loss as f64)
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
        self.pool.enter();
        // `valid()` folds pending running-statistics updates in before they are read.
        let synced = self.net.as_ref().expect("model present").valid();
        self.flat.read(&synced, out, true);
    }

    /// The segment tables of the parameters and of the buffers.
    pub fn flat_map(&self) -> &FlatMap {
        &self.flat
    }
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
        self.pool.enter();
        self.load(params);
        if self.policy == BatchNormPolicy::Recompute {
            let pool = Arc::clone(&self.pool);
            pool.install(|| self.recompute_batch_norm());
        }
        let model = self.net.as_ref().expect("model present").valid();
        let device = self.device.clone().without_autodiff();
        let test = Arc::clone(&self.data.test);
        let indices: Vec<u32> = (0..test.len() as u32).collect();
        let mut batch = Batch::default();
        let (mut loss_sum, mut correct) = (0.0f64, 0usize);
        for chunk in indices.chunks(self.data.eval_batch_size) {
            fill_batch(
                &test,
                chunk,
                &self.data.augmentation,
                self.loader.tables(),
                None,
                &mut batch,
            );
            let x = self.images(&batch, &device);
            let logits = self
                .pool
                .install(|| model.forward(x, &mut Pass::eval()))
                .into_data()
                .convert::<f32>();
            let logits = logits.as_slice::<f32>().map_err(|e| Error::Learner {
                worker: self.rank,
                message: format!("cannot read logits: {e:?}"),
            })?;
            let classes = logits.len() / batch.len();
            for (row, &label) in logits.chunks_exact(classes).zip(&batch.labels) {
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
        }
        let n = test.len().max(1) as f64;
        Ok(Evaluation {
            loss: loss_sum / n,
            accuracy: Some(correct as f64 / n),
            grad_norm: None,
        })
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

    // The parameters are the runner's; the model keeps its BatchNorm statistics (every
    // policy), the loader its position, and dropout its stream.
    fn save_state(&mut self, state: &mut StateDict) -> Result<()> {
        state.put_f32s("buffers", &self.buffers());
        state.put_dict("loader", self.loader.save_state());
        state.put_rng("dropout", &self.dropout_rng);
        Ok(())
    }

    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        let mut buffers = vec![0.0; self.flat.buffers.len()];
        state.f32s_into("buffers", &mut buffers)?;
        self.write_shared_state(&buffers);
        self.loader.load_state(state.dict("loader")?)?;
        self.dropout_rng = state.rng("dropout")?;
        Ok(())
    }

    fn write_shared_state(&mut self, state: &[f32]) {
        self.pool.enter();
        // Fold pending updates in first, or a stale one would overwrite what is written.
        let _ = self.net.as_ref().expect("model present").valid();
        let net = self.take_net();
        self.net = Some(self.flat.write(net, state, true));
    }
}
