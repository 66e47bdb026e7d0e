//! `peloton._native`: the Rust side of the `peloton` Python package (python/peloton).
//!
//! A Python training loop drives peloton's algorithms through [`peloton_core::external`]:
//! a [`Session`] runs an experiment whose learners are outside loops (the config's `[external]`
//! task) on threads or the simulator, in the background, into a run folder like the CLI's;
//! each worker's loop holds a [`Worker`] — its model's tensors are views of the worker's
//! flat [`Buffer`]s, exported with the buffer protocol, so nothing is copied per step.
//!
//! Every error reaches Python as `peloton.Error` with the CLI's one-line message.

use std::os::raw::c_int;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyBufferError, PyException};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::{ffi, PyTypeInfo};

use peloton_cli::config::{ExperimentConfig, TransportConfig};
use peloton_cli::train::{resume_external, train_external, TrainOptions};
use peloton_core::algorithms::AlgorithmConfig;
use peloton_core::external::{Attach, Buffers, ExternalLoops, LoopHandle, Next, Reply, Request};
use peloton_core::flat::SharedBuffer;
use peloton_core::layout::ParamLayout;
use peloton_core::learner::{Evaluation, HostBuffers};

pyo3::create_exception!(
    peloton,
    Error,
    PyException,
    "A peloton error: a bad config, a failed run, a misused worker. The message is the CLI's one line."
);

/// The one-line message of an error chain, as the CLI prints it.
fn error(e: impl Into<anyhow::Error>) -> PyErr {
    let line = peloton_cli::output::error_line(&e.into());
    // The exception's type already says it is an error.
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    Error::new_err(line.to_string())
}

/// A worker's flat float32 buffer (its parameters, its gradient, or the model to evaluate),
/// exported with the buffer protocol: `numpy.asarray(buffer)` and `torch.frombuffer(buffer,
/// dtype=torch.float32)` are views of it, not copies. The memory lives as long as any view.
#[pyclass(frozen, module = "peloton._native")]
pub struct Buffer {
    data: Arc<SharedBuffer>,
    /// The view's shape and stride, at addresses that live as long as the object.
    shape: Box<[isize; 1]>,
    strides: Box<[isize; 1]>,
}

impl Buffer {
    fn new(data: Arc<SharedBuffer>) -> Self {
        let len = data.len() as isize;
        Self {
            data,
            shape: Box::new([len]),
            strides: Box::new([std::mem::size_of::<f32>() as isize]),
        }
    }
}

#[pymethods]
impl Buffer {
    fn __len__(&self) -> usize {
        self.data.len()
    }

    /// The first float's address: views of the buffer point here (the zero-copy tests).
    #[getter]
    fn address(&self) -> usize {
        self.data.as_ptr() as usize
    }

    /// # Safety
    /// `view` is a `Py_buffer` that Python hands in to be filled.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("the buffer view is null"));
        }
        let this = slf.get();
        let itemsize = std::mem::size_of::<f32>() as isize;
        // SAFETY: `view` is valid to write (checked non-null; CPython passes a live struct).
        // Every pointer stored in it stays valid while the view holds its reference to `slf`
        // (`obj`): the floats belong to the `Arc` this object keeps, the shape and strides to
        // its boxes, the format string is static. The buffer is writable by design: the
        // training loop's model tensors are views of it (see `SharedBuffer`'s turn-taking).
        unsafe {
            (*view).buf = this.data.as_ptr().cast();
            (*view).len = this.shape[0] * itemsize;
            (*view).readonly = 0;
            (*view).itemsize = itemsize;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
                c"f".as_ptr().cast_mut()
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = 1;
            (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
                this.shape.as_ptr().cast_mut()
            } else {
                std::ptr::null_mut()
            };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                this.strides.as_ptr().cast_mut()
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
            (*view).obj = slf.into_any().into_ptr();
        }
        Ok(())
    }
}

/// One worker's end of the run, held by its training loop.
#[pyclass(frozen, module = "peloton._native")]
pub struct Worker {
    handle: LoopHandle,
    workers: usize,
    seed: u64,
    buffers: OnceLock<Buffers>,
}

impl Worker {
    /// One of the attached model's buffers, exported.
    fn buffer(&self, which: impl Fn(&Buffers) -> &Arc<SharedBuffer>) -> PyResult<Buffer> {
        let buffers = self
            .buffers
            .get()
            .ok_or_else(|| Error::new_err("attach the model first (worker.attach)"))?;
        Ok(Buffer::new(Arc::clone(which(buffers))))
    }
}

#[pymethods]
impl Worker {
    #[getter]
    fn rank(&self) -> usize {
        self.handle.rank()
    }

    #[getter]
    fn workers(&self) -> usize {
        self.workers
    }

    /// The run's seed (the config's `seed`).
    #[getter]
    fn seed(&self) -> u64 {
        self.seed
    }

    /// Gives the runner the model: its tensors' names and shapes in the flat order, its initial
    /// parameters (any float32-convertible buffer of the layout's length), whether the loop
    /// steps its own optimizer, its steps per epoch when known, the model state's initial
    /// values, and whether the model keeps memory of its own (a GPU's) that the buffers mirror.
    #[pyo3(signature = (names, shapes, initial, owns_optimizer, steps_per_epoch=None, state=None, mirrored=false))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn attach(
        &self,
        py: Python<'_>,
        names: Vec<String>,
        shapes: Vec<Vec<usize>>,
        initial: &Bound<'_, PyAny>,
        owns_optimizer: bool,
        steps_per_epoch: Option<u64>,
        state: Option<&Bound<'_, PyAny>>,
        mirrored: bool,
    ) -> PyResult<()> {
        if names.len() != shapes.len() {
            return Err(Error::new_err(format!(
                "attach: {} names for {} shapes",
                names.len(),
                shapes.len()
            )));
        }
        // The total is checked before the layout adds it up (its offsets must not overflow).
        let mut layout = ParamLayout::new();
        let mut total: usize = 0;
        for (name, shape) in names.iter().zip(&shapes) {
            total = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .and_then(|n| total.checked_add(n))
                .filter(|&t| t as u64 <= peloton_core::limits::MAX_VALUES)
                .ok_or_else(|| {
                    Error::new_err(format!(
                        "attach: the model is larger than peloton takes ({} parameters at most)",
                        peloton_core::limits::MAX_VALUES
                    ))
                })?;
            layout.push(name.as_str(), shape);
        }
        let initial = float32_buffer(initial, "attach: the initial parameters")?.to_vec(py)?;
        let state = match state {
            None => Vec::new(),
            Some(state) => float32_buffer(state, "attach: the model state")?.to_vec(py)?,
        };
        // The handle refuses a second model.
        let buffers = self
            .handle
            .attach(Attach {
                layout,
                initial,
                owns_optimizer,
                steps_per_epoch,
                state,
                mirrored,
            })
            .map_err(error)?;
        let _ = self.buffers.set(buffers);
        Ok(())
    }

    /// The flat parameters (the model's tensors are views of them).
    #[getter]
    fn params(&self) -> PyResult<Buffer> {
        self.buffer(|b| &b.params)
    }

    /// The flat gradient, written by the loop's backward pass.
    #[getter]
    fn grad(&self) -> PyResult<Buffer> {
        self.buffer(|b| &b.grad)
    }

    /// The model state the runner averages before evaluations (BatchNorm statistics).
    #[getter]
    fn state(&self) -> PyResult<Buffer> {
        self.buffer(|b| &b.state)
    }

    /// Where the runner puts a model to evaluate other than the worker's own.
    #[getter]
    fn eval_params(&self) -> PyResult<Buffer> {
        self.buffer(|b| &b.eval)
    }

    /// Waits (without the GIL) for the runner's next request: `("gradient", index)`,
    /// `("optimizer_step", lr)`, `("clear_optimizer", None)`, `("evaluate", own)`,
    /// `("to_host", (params, grad, state))`, `("from_host", (params, grad, state))` (a mirrored
    /// model's copies, each flag saying whether that buffer is copied), `("save_state", None)`
    /// (a checkpoint: answer with `reply_state`), `("load_state", bytes)` (a resume) or
    /// `("finished", None)`.
    fn next(&self, py: Python<'_>) -> PyResult<(&'static str, Py<PyAny>)> {
        let handle = self.handle.clone();
        let next = py.detach(move || handle.next()).map_err(error)?;
        Ok(match next {
            Next::Finished => ("finished", py.None()),
            Next::Request(Request::Gradient { index }) => {
                ("gradient", index.into_pyobject(py)?.into_any().unbind())
            }
            Next::Request(Request::OptimizerStep { lr }) => (
                "optimizer_step",
                f64::from(lr).into_pyobject(py)?.into_any().unbind(),
            ),
            Next::Request(Request::ClearOptimizer) => ("clear_optimizer", py.None()),
            Next::Request(Request::Evaluate { own }) => (
                "evaluate",
                pyo3::types::PyBool::new(py, own)
                    .to_owned()
                    .into_any()
                    .unbind(),
            ),
            Next::Request(Request::ToHost(which)) => ("to_host", copies(py, which)?),
            Next::Request(Request::FromHost(which)) => ("from_host", copies(py, which)?),
            Next::Request(Request::SaveState) => ("save_state", py.None()),
            Next::Request(Request::LoadState) => {
                let state = self.handle.state_to_load().map_err(error)?;
                ("load_state", PyBytes::new(py, &state).into_any().unbind())
            }
        })
    }

    /// Answers a gradient request: the mini-batch loss (the gradient is in `grad`).
    fn reply_loss(&self, loss: f64) -> PyResult<()> {
        self.handle.reply(Reply::Loss(loss)).map_err(error)
    }

    /// Answers an optimizer step or a clear.
    fn reply_done(&self) -> PyResult<()> {
        self.handle.reply(Reply::Done).map_err(error)
    }

    /// Answers a checkpoint's `save_state` with the loop's own state.
    fn reply_state(&self, state: &[u8]) -> PyResult<()> {
        self.handle
            .reply(Reply::State(state.to_vec()))
            .map_err(error)
    }

    /// Answers an evaluation: the test loss and, for a classifier, the accuracy in [0, 1].
    #[pyo3(signature = (loss, accuracy=None))]
    fn reply_evaluation(&self, loss: f64, accuracy: Option<f64>) -> PyResult<()> {
        if let Some(a) = accuracy {
            if !(0.0..=1.0).contains(&a) {
                return Err(Error::new_err(format!(
                    "an accuracy is a fraction in [0, 1], got {a}"
                )));
            }
        }
        self.handle
            .reply(Reply::Evaluation(Evaluation {
                loss,
                accuracy,
                grad_norm: None,
            }))
            .map_err(error)
    }

    /// The loop is done: it returned (`None`) or failed (the message).
    #[pyo3(signature = (failure=None))]
    fn leave(&self, failure: Option<String>) {
        self.handle.leave(failure);
    }
}

/// The run: its resolved config, its workers' meeting points, and the background thread that
/// runs it once started.
#[pyclass(frozen, module = "peloton._native")]
pub struct Session {
    config: ExperimentConfig,
    loops: Arc<ExternalLoops>,
    out: Option<PathBuf>,
    /// The interrupted run folder this session continues.
    resume: Option<PathBuf>,
    quiet: bool,
    run: Mutex<RunState>,
}

enum RunState {
    NotStarted,
    Running(JoinHandle<anyhow::Result<PathBuf>>),
    Joined,
}

#[pymethods]
impl Session {
    /// A run of the experiment described by `config_toml` (the CLI's config format, with an
    /// `[external]` task), written to `out` (default: `runs/ALGORITHM-TASK-TIME`); or, with
    /// `resume`, the continuation of the interrupted run in that folder (`config_toml` is then
    /// its `config.toml`).
    #[new]
    #[pyo3(signature = (config_toml, out=None, quiet=false, resume=None))]
    fn new(
        config_toml: &str,
        out: Option<PathBuf>,
        quiet: bool,
        resume: Option<PathBuf>,
    ) -> PyResult<Self> {
        let mut config =
            peloton_cli::config::parse("the config", config_toml, &[]).map_err(error)?;
        let ranks = match config.transport {
            TransportConfig::Mpi => {
                // One worker per MPI process: this one's rank, as mpirun tells it (MPI itself
                // starts with the run, on the run's thread).
                let (rank, size) = mpi_rank_from_env()?;
                config.workers = size;
                rank..rank + 1
            }
            _ => 0..config.workers,
        };
        config.validate().map_err(error)?;
        if !matches!(
            config.task().map_err(error)?,
            peloton_cli::config::Task::External(_)
        ) {
            return Err(Error::new_err(
                "a Python run trains its own model: give [external] name = \"...\", not [problem] or [model]",
            ));
        }
        Ok(Self {
            config,
            loops: Arc::new(ExternalLoops::new(ranks)),
            out,
            resume,
            quiet,
            run: Mutex::new(RunState::NotStarted),
        })
    }

    /// The resolved config as the run folder's `config.toml` will hold it.
    fn config_toml(&self) -> PyResult<String> {
        self.config.to_toml().map_err(error)
    }

    /// Where the workers run: `threads`, `sim` or `mpi`.
    fn transport(&self) -> &'static str {
        self.config.transport.name()
    }

    /// The ranks of the workers whose loops run in this process.
    fn ranks(&self) -> Vec<usize> {
        self.loops.ranks().collect()
    }

    /// Worker `rank`'s end of the run.
    fn worker(&self, rank: usize) -> PyResult<Worker> {
        let handle = self.loops.handle(rank).ok_or_else(|| {
            Error::new_err(format!(
                "worker {rank} is not in this run (workers 0..{})",
                self.config.workers
            ))
        })?;
        Ok(Worker {
            handle,
            workers: self.config.workers,
            seed: self.config.seed,
            buffers: OnceLock::new(),
        })
    }

    /// Starts the run in the background; the workers' loops then attach and answer.
    fn start(&self) -> PyResult<()> {
        let mut run = self.run.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(*run, RunState::NotStarted) {
            return Err(Error::new_err("the session was started already"));
        }
        let (config, loops) = (self.config.clone(), Arc::clone(&self.loops));
        let resume = self.resume.clone();
        let options = TrainOptions {
            out: self.out.clone(),
            quiet: self.quiet,
            calibrate: None,
        };
        let thread = std::thread::Builder::new()
            .name("peloton-run".into())
            .spawn(move || {
                let result = match &resume {
                    Some(run_dir) => resume_external(run_dir, loops.as_ref(), &options),
                    None => train_external(&config, loops.as_ref(), &options),
                };
                // However the run ended, no loop waits for it any longer.
                loops.close();
                result
            })
            .map_err(|e| Error::new_err(format!("cannot start the run's thread: {e}")))?;
        *run = RunState::Running(thread);
        Ok(())
    }

    /// Waits (without the GIL) for the run's end; returns its run folder or raises its error.
    fn join(&self, py: Python<'_>) -> PyResult<PathBuf> {
        let state = {
            let mut run = self.run.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *run, RunState::Joined)
        };
        let thread = match state {
            RunState::Running(thread) => thread,
            RunState::NotStarted => return Err(Error::new_err("the session was not started")),
            RunState::Joined => return Err(Error::new_err("the session was joined already")),
        };
        let result = py.detach(move || thread.join());
        match result {
            Ok(Ok(path)) => Ok(path),
            Ok(Err(e)) => Err(error(e)),
            Err(_) => Err(Error::new_err("the run's thread panicked")),
        }
    }
}

/// This process's MPI rank and the job's size, from the variables the launcher sets (Open MPI,
/// MPICH/Hydra and PMIx ones).
fn mpi_rank_from_env() -> PyResult<(usize, usize)> {
    if !cfg!(feature = "mpi") {
        return Err(Error::new_err(
            "this peloton package was built without MPI support: build it with `maturin build --release --features mpi` (needs libopenmpi-dev openmpi-bin libclang-dev) and start the script with mpirun",
        ));
    }
    let read = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
    };
    let rank = read(&["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]);
    let size = read(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]);
    match (rank, size) {
        (Some(rank), Some(size)) if rank < size => Ok((rank, size)),
        _ => Err(Error::new_err(
            "transport.kind = \"mpi\": this process has no MPI rank; start the script with mpirun (e.g. mpirun -n 4 python train.py)",
        )),
    }
}

/// The registered algorithms: `(name, summary, asynchronous, keys)` each, as `peloton list`
/// shows them.
#[pyfunction]
fn algorithms() -> Vec<(&'static str, &'static str, bool, Vec<&'static str>)> {
    AlgorithmConfig::catalog()
        .into_iter()
        .map(|r| (r.name, r.summary, r.asynchronous, r.keys()))
        .collect()
}

/// Checks a config (TOML text) as `peloton train` does and returns it resolved, every default
/// written out; raises `peloton.Error` naming the first problem.
#[pyfunction]
fn resolve_config(config_toml: &str) -> PyResult<String> {
    let config = peloton_cli::config::parse("the config", config_toml, &[]).map_err(error)?;
    config.validate().map_err(error)?;
    config.to_toml().map_err(error)
}

/// Turns a config given as JSON (what the Python package makes of a dict) into TOML text:
/// JSON's `null` has no TOML form and is refused.
#[pyfunction]
fn config_from_json(json: &str) -> PyResult<String> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| Error::new_err(format!("the config is not valid JSON: {e}")))?;
    let value = toml::Value::try_from(value).map_err(|e| {
        Error::new_err(format!(
            "the config has a value TOML cannot hold (None, or a table inside a list): {e}"
        ))
    })?;
    toml::to_string(&value).map_err(|e| Error::new_err(format!("cannot write the config: {e}")))
}

/// Runs a whole experiment the way `peloton train` does (a built-in `[problem]` or `[model]`),
/// quietly unless asked; returns its run folder.
#[pyfunction]
#[pyo3(signature = (config_toml, out=None, quiet=true))]
fn train(
    py: Python<'_>,
    config_toml: &str,
    out: Option<PathBuf>,
    quiet: bool,
) -> PyResult<PathBuf> {
    let config = peloton_cli::config::parse("the config", config_toml, &[]).map_err(error)?;
    let options = TrainOptions {
        out,
        quiet,
        calibrate: None,
    };
    py.detach(move || peloton_cli::train::train(&config, &options))
        .map_err(error)
}

/// One worker's learner of a built-in analytic problem (`[problem]`), for a Python loop to
/// call: the same data and gradients as the CLI's run of that problem.
#[pyclass(module = "peloton._native")]
pub struct ProblemLearner {
    learner: Mutex<Box<dyn peloton_core::learner::Learner>>,
}

impl ProblemLearner {
    fn learner(&self) -> std::sync::MutexGuard<'_, Box<dyn peloton_core::learner::Learner>> {
        self.learner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl ProblemLearner {
    /// Worker `rank` of `workers` of the problem in `problem_toml` (the `[problem]` table's
    /// keys), seeded by the run seed as the CLI seeds it.
    #[new]
    fn new(problem_toml: &str, rank: usize, workers: usize, seed: u64) -> PyResult<Self> {
        let problem: peloton_problems::ProblemConfig = toml::from_str(problem_toml)
            .map_err(|e| Error::new_err(format!("[problem]: {}", e.message())))?;
        problem.validate(workers).map_err(error)?;
        if rank >= workers {
            return Err(Error::new_err(format!(
                "rank {rank} is not a worker of {workers}"
            )));
        }
        let learner = peloton_core::learner::LearnerFactory::build(
            &problem,
            peloton_core::learner::LearnerContext {
                rank,
                workers,
                seed,
            },
        )
        .map_err(error)?;
        Ok(Self {
            learner: Mutex::new(learner),
        })
    }

    /// The parameter tensors: `[(name, shape), ...]`.
    fn layout(&self) -> Vec<(String, Vec<usize>)> {
        self.learner()
            .layout()
            .segments()
            .iter()
            .map(|s| (s.name.clone(), s.shape.clone()))
            .collect()
    }

    /// Writes the initial parameters into `out` (float32, the layout's length).
    fn init_params(&self, py: Python<'_>, out: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut learner = self.learner();
        let mut params = vec![0.0f32; learner.layout().len()];
        learner.init_params(&mut params);
        write_buffer(py, out, &params)
    }

    /// The next mini-batch's loss at `params`, its gradient written into `grad`.
    fn loss_and_grad(
        &self,
        py: Python<'_>,
        params: &Bound<'_, PyAny>,
        grad: &Bound<'_, PyAny>,
    ) -> PyResult<f64> {
        let mut learner = self.learner();
        let params = read_buffer(py, params, learner.layout().len())?;
        let mut g = vec![0.0f32; params.len()];
        let loss = learner.loss_and_grad(&params, &mut g).map_err(error)?;
        write_buffer(py, grad, &g)?;
        Ok(loss)
    }

    /// `(loss, accuracy)` of `params` (the exact objective for analytic problems).
    fn evaluate(&self, py: Python<'_>, params: &Bound<'_, PyAny>) -> PyResult<(f64, Option<f64>)> {
        let mut learner = self.learner();
        let params = read_buffer(py, params, learner.layout().len())?;
        let e = learner.evaluate(&params).map_err(error)?;
        Ok((e.loss, e.accuracy))
    }
}

/// `obj` as a float32 buffer; `what` names it in the error.
fn float32_buffer(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<PyBuffer<f32>> {
    PyBuffer::<f32>::get(obj).map_err(|e| {
        Error::new_err(format!(
            "{what} must be a float32 buffer (a NumPy array of dtype float32): {e}"
        ))
    })
}

/// A float32 buffer's values, checked to hold `len`.
fn read_buffer(py: Python<'_>, obj: &Bound<'_, PyAny>, len: usize) -> PyResult<Vec<f32>> {
    let buffer = float32_buffer(obj, "the argument")?;
    if buffer.item_count() != len {
        return Err(Error::new_err(format!(
            "expected {len} float32 values, got {}",
            buffer.item_count()
        )));
    }
    buffer.to_vec(py)
}

/// Copies `values` into a writable float32 buffer of the same length.
fn write_buffer(py: Python<'_>, obj: &Bound<'_, PyAny>, values: &[f32]) -> PyResult<()> {
    let buffer = float32_buffer(obj, "the argument")?;
    if buffer.item_count() != values.len() {
        return Err(Error::new_err(format!(
            "expected room for {} float32 values, got {}",
            values.len(),
            buffer.item_count()
        )));
    }
    if buffer.readonly() {
        return Err(Error::new_err("the buffer is read-only"));
    }
    buffer.copy_from_slice(py, values)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("Error", Error::type_object(m.py()))?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Whether `transport.kind = "mpi"` works (the wheel was built with `--features mpi`).
    m.add("HAS_MPI", cfg!(feature = "mpi"))?;
    // The CLI's lines (the run's header, evaluations, summary) go to `sys.stdout`, whatever it
    // is when they are written: a notebook's cell, a redirected stream.
    peloton_cli::output::set_sink(write_to_python_stdout);
    m.add_class::<Session>()?;
    m.add_class::<Worker>()?;
    m.add_class::<Buffer>()?;
    m.add_function(wrap_pyfunction!(algorithms, m)?)?;
    m.add_function(wrap_pyfunction!(resolve_config, m)?)?;
    m.add_function(wrap_pyfunction!(config_from_json, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_class::<ProblemLearner>()?;
    Ok(())
}

/// A mirrored model's copy request as `(params, grad, state)` flags.
fn copies(py: Python<'_>, which: HostBuffers) -> PyResult<Py<PyAny>> {
    Ok((which.params, which.grad, which.state)
        .into_pyobject(py)?
        .into_any()
        .unbind())
}

/// Writes one line to Python's `sys.stdout` (taking the GIL, which the run's waits release);
/// where that fails (the interpreter is finishing), to the process's standard output.
fn write_to_python_stdout(line: &str) {
    let written = Python::attach(|py| -> PyResult<()> {
        let stdout = py.import("sys")?.getattr("stdout")?;
        if stdout.is_none() {
            return Err(Error::new_err("no sys.stdout"));
        }
        stdout.call_method1("write", (format!("{line}\n"),))?;
        stdout.call_method0("flush")?;
        Ok(())
    });
    if written.is_err() {
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }
}
