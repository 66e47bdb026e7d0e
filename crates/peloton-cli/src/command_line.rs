//! The command line itself: clap's argument structs, the dispatch of each subcommand, and the
//! one-line error report. The `peloton` binary is `parse → run → report`; the command-line fuzz
//! target (`fuzz/fuzz_targets/command_line.rs`) parses argument vectors with the same structs
//! and runs the same checks ([`check`]) that every command makes before it does any work.

use crate::outln;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use peloton_core::algorithms::AlgorithmConfig;
use peloton_problems::ProblemConfig;

use crate::config::{self, Override};
pub use crate::output::{error_line, print_error, AlreadyReported};
use crate::{bench_training, report, sweep, topology, train};

/// peloton — distributed training: Leader SGD, elastic averaging, all-reduce, local SGD and
/// more, on worker threads in one process.
#[derive(Parser)]
#[command(name = "peloton", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Train: run an experiment (a TOML file, flags, or both) and write a run folder.
    ///
    /// Settings are applied in order: the file, then the flags below, then each --set.
    /// Example: peloton train --algorithm lsgd --workers 8 --set algorithm.group_size=4
    Train(TrainArgs),
    /// List the algorithms and problems with their config keys.
    List,
    /// Measure the kernels and the threads transport's all-reduce against memcpy.
    Bench(BenchArgs),
    /// Run a sweep file: every combination of its grid, then a report per group.
    /// Example: peloton run experiments/sim-network.toml
    Run(sweep::RunArgs),
    /// Inspect communication topologies and gossip schedules.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Compare run folders: SVG plots overlaying every run and a Markdown summary table.
    ///
    /// Example: peloton report runs/a runs/b --label lsgd --label all-reduce --out report
    Report(report::ReportArgs),
}

#[derive(Subcommand)]
pub enum TopologyCommand {
    /// Print a schedule: graph, matchings, MATCHA's probabilities and α, rounds, spectral gap.
    /// Example: peloton topology show --graph er --n 8 --seed 0 --budget 0.5
    Show(topology::ShowArgs),
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Experiment file (TOML). Without it, every setting has its default.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Algorithm name (see `peloton list`); switching drops the file's algorithm keys.
    #[arg(long, value_name = "NAME")]
    algorithm: Option<String>,
    /// Analytic problem kind instead of a network (see `peloton list`).
    #[arg(long, value_name = "KIND")]
    problem: Option<String>,
    /// Network to train (see `peloton list`): mlp, lenet, cnn7, resnet20, resnet32, resnet56, vgg16.
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// Dataset of the network: synthetic, mnist or cifar10.
    #[arg(long, value_name = "NAME")]
    dataset: Option<String>,
    /// Folder of the dataset's files (MNIST IDX or CIFAR-10 binary batches, raw or .gz).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Tensor backend: flex (pure Rust, default), torch or torch-cuda (LibTorch, feature `torch`).
    #[arg(long, value_name = "DEVICE")]
    device: Option<String>,
    /// Samples per worker per step.
    #[arg(long)]
    batch_size: Option<u64>,
    /// Number of workers.
    #[arg(short = 'n', long)]
    workers: Option<usize>,
    /// Local steps per worker.
    #[arg(long)]
    steps: Option<u64>,
    /// Passes over each worker's shard.
    #[arg(long)]
    epochs: Option<f64>,
    /// Wall-clock budget in seconds.
    #[arg(long, value_name = "SECONDS")]
    time_budget: Option<f64>,
    /// Run seed: the same seed and config give the same run, bit for bit.
    #[arg(long)]
    seed: Option<u64>,
    /// Base learning rate.
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    /// Steps between evaluations (0 = only at the end).
    #[arg(long, value_name = "STEPS")]
    eval_every: Option<u64>,
    /// Which parameters to evaluate: average, leader, center or workers.
    #[arg(long, value_name = "MODEL")]
    eval_model: Option<String>,
    /// Transport: threads (real time), sim (the simulator: virtual time) or mpi (one worker per
    /// MPI process: `mpirun -n 4 peloton train --transport mpi`; feature `mpi`).
    #[arg(long, value_name = "KIND")]
    transport: Option<String>,
    /// Simulated cluster (implies --transport sim): a preset (see `peloton list`) or a TOML
    /// file with the cluster's keys.
    #[arg(long, value_name = "FILE|PRESET")]
    pub(crate) cluster: Option<String>,
    /// Simulator only: time this many real local steps of worker 0 first and use their median
    /// as the compute model's seconds per step (written into the run's config.toml).
    #[arg(long, value_name = "STEPS")]
    calibrate: Option<usize>,
    /// Make a worker slower: WORKER=FACTOR, e.g. --slowdown 3=5 (repeatable). On threads the
    /// worker sleeps so that each of its steps takes FACTOR times longer; in the simulator its
    /// compute time is multiplied. Shows asynchrony on one machine.
    #[arg(long, value_name = "WORKER=FACTOR")]
    slowdown: Vec<String>,
    /// Any other setting as a dotted key, e.g. --set algorithm.tau=8 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Run folder (default: runs/<algorithm>-<problem>-<time>); must not exist or be empty.
    #[arg(short, long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue the interrupted run in RUN_DIR from its last checkpoint, exactly as if it had
    /// never stopped (its config.toml has `[checkpoint] every = N`; threads, the simulator,
    /// or `mpirun -n N peloton train --resume RUN_DIR` for an MPI run).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = [
        "config", "algorithm", "problem", "model", "dataset", "data_dir", "device", "batch_size",
        "workers", "steps", "epochs", "time_budget", "seed", "lr", "eval_every", "eval_model",
        "transport", "cluster", "calibrate", "slowdown", "set", "out", "print_config",
    ])]
    pub(crate) resume: Option<PathBuf>,
    /// Print the resolved experiment as TOML and exit without training.
    #[arg(long)]
    print_config: bool,
    /// No progress bar or summary.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Buffer size in MiB.
    #[arg(long, default_value_t = 16)]
    size_mib: usize,
    /// Timed repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 15)]
    repeats: usize,
    /// Worker counts for the all-reduce measurement.
    #[arg(long, value_delimiter = ',', default_value = "2,3,4")]
    workers: Vec<usize>,
    /// Also time a training step of these models through peloton against bare burn
    /// (comma-separated, e.g. lenet,resnet20).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Batch size of the model measurements.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Tensor backend of the model measurements: flex, torch or torch-cuda (feature `torch`).
    #[arg(long, value_name = "DEVICE", default_value = "flex")]
    device: String,
    /// Measure the simulator's message rate instead (against the threads transport).
    #[arg(long)]
    sim: bool,
    /// Measure the MPI transport instead, under mpirun (`mpirun -n 4 peloton bench --mpi`):
    /// all-reduce, broadcast and all-gather through peloton against bare rsmpi calls and the
    /// threads transport, at 64 KiB, 1 MiB, 16 MiB and --size-mib, then the asynchronous
    /// services (counter add, parameter-server pull + push of 1 MiB) (feature `mpi`).
    #[arg(long)]
    mpi: bool,
    /// Messages each worker sends in the simulator measurement.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Measure training throughput instead: aggregate samples/s of 1, 2 and 4 in-process
    /// workers under each way of sharing the cores, against one worker with all cores, with
    /// peak RSS and evaluation time per 10,000 images, for --models (default
    /// lenet,cnn7,resnet20); each configuration is a child `peloton train` run.
    #[arg(long)]
    training: bool,
    /// Steps per worker of each --training configuration (the first 2 are not timed).
    #[arg(long, default_value_t = 12)]
    steps: u64,
}

impl TrainArgs {
    /// The experiment these arguments describe: the file, the flags, then each `--set`, and
    /// the slowdowns (not yet validated: training validates it first thing).
    pub fn experiment(&self) -> Result<config::ExperimentConfig> {
        let mut config = config::load(self.config.as_deref(), &overrides(self)?)?;
        for spec in &self.slowdown {
            let (worker, factor) = parse_slowdown(spec)?;
            config.transport.slow_down(worker, factor)?;
        }
        Ok(config)
    }
}

fn overrides(args: &TrainArgs) -> Result<Vec<Override>> {
    let mut out = Vec::new();
    if let Some(a) = &args.algorithm {
        out.push(Override::new("algorithm.name", a.as_str()));
    }
    if let Some(p) = &args.problem {
        out.push(Override::new("problem.kind", p.as_str()));
    }
    let int = |v: u64| toml::Value::Integer(i64::try_from(v).unwrap_or(i64::MAX));
    if let Some(m) = &args.model {
        out.push(Override::new("model.name", m.as_str()));
    }
    if let Some(d) = &args.device {
        out.push(Override::new("model.device", d.as_str()));
    }
    if let Some(d) = &args.dataset {
        out.push(Override::new("data.dataset", d.as_str()));
    }
    if let Some(d) = &args.data_dir {
        out.push(Override::new("data.dir", d.display().to_string()));
    }
    if let Some(b) = args.batch_size {
        out.push(Override::new("data.batch_size", int(b)));
    }
    if let Some(w) = args.workers {
        out.push(Override::new("workers", int(w as u64)));
    }
    if let Some(s) = args.steps {
        out.push(Override::new("steps", int(s)));
    }
    if let Some(e) = args.epochs {
        out.push(Override::new("epochs", e));
    }
    if let Some(t) = args.time_budget {
        out.push(Override::new("time_budget", t));
    }
    if let Some(s) = args.seed {
        out.push(Override::new("seed", int(s)));
    }
    if let Some(lr) = args.lr {
        out.push(Override::new("optimizer.lr", lr));
    }
    if let Some(e) = args.eval_every {
        out.push(Override::new("eval.every", int(e)));
    }
    if let Some(m) = &args.eval_model {
        out.push(Override::new("eval.model", m.as_str()));
    }
    if let Some(c) = &args.cluster {
        out.push(Override::new("transport", config::cluster_table(c)?));
    }
    if let Some(t) = &args.transport {
        out.push(Override::new("transport.kind", t.as_str()));
    }
    for s in &args.set {
        out.push(Override::parse(s)?);
    }
    Ok(out)
}

/// `WORKER=FACTOR` of `--slowdown`.
fn parse_slowdown(spec: &str) -> Result<(usize, f64)> {
    let parsed = spec.split_once('=').and_then(|(w, f)| {
        Some((
            w.trim().parse::<usize>().ok()?,
            f.trim().parse::<f64>().ok()?,
        ))
    });
    match parsed {
        Some((w, f)) if (1.0..=peloton_core::limits::MAX_SLOWDOWN).contains(&f) => Ok((w, f)),
        _ => anyhow::bail!(
            "--slowdown {spec:?}: expected WORKER=FACTOR with a factor between 1 and {:e}, e.g. --slowdown 3=5",
            peloton_core::limits::MAX_SLOWDOWN
        ),
    }
}

fn list() {
    outln!("algorithms ([algorithm] name = ...):");
    for entry in AlgorithmConfig::catalog() {
        let keys = entry.keys();
        let keys = if keys.is_empty() {
            "(none)".to_string()
        } else {
            keys.join(", ")
        };
        let timing = if entry.asynchronous {
            " (asynchronous)"
        } else {
            ""
        };
        outln!(
            "  {:<18} {}{timing}\n  {:<18} keys: {keys}",
            entry.name,
            entry.summary,
            ""
        );
    }
    outln!("\nmodels ([model] name = ...; keys: hidden, device (flex | torch | torch-cuda), cuda_index, batch_norm, recompute_batches, threads, split_batch, precision (fp32 | bf16 | fp16; LibTorch), memory_format (nchw | channels-last; LibTorch)):");
    for (name, what) in peloton_burn::ModelName::catalog() {
        outln!("  {name:<18} {what}");
    }
    outln!("\ndatasets ([data] dataset = ...; keys: dir, batch_size, partition, augmentation, test_samples, eval_batch_size, synthetic):");
    for (name, what) in peloton_data::DatasetKind::catalog() {
        outln!("  {name:<18} {what}");
    }
    outln!("\nmessage compression ([compression] kind = ...; keys: block, fraction, rank, error_feedback, apply_to = gradients | models | gossip):");
    for (kind, what) in peloton_compression::KindName::catalog() {
        outln!("  {:<18} {what}", kind.as_str());
    }
    outln!("\nsimulated clusters (--transport sim --cluster NAME, or [transport] kind = \"sim\"):");
    for (name, what) in peloton_sim::ClusterConfig::presets() {
        outln!("  {name:<18} {what}");
    }
    outln!("\nanalytic problems, instead of a model ([problem] kind = ...):");
    for (name, what, keys) in ProblemConfig::catalog() {
        outln!("  {name:<18} {what}\n  {:<18} keys: {keys}", "");
    }
}

impl BenchArgs {
    /// Every check of the arguments, made before anything is measured.
    pub fn check(&self) -> Result<()> {
        anyhow::ensure!(
            self.size_mib >= 1 && self.repeats >= 1,
            "--size-mib and --repeats must be at least 1"
        );
        // The buffers are allocated whole (several per worker): a size beyond 64 GiB is a typo.
        anyhow::ensure!(
            self.size_mib <= 1 << 16,
            "--size-mib {} is beyond 65536 (64 GiB)",
            self.size_mib
        );
        anyhow::ensure!(
            self.workers.iter().all(|&w| w >= 1),
            "--workers must be at least 1"
        );
        anyhow::ensure!(
            self.workers
                .iter()
                .all(|&w| w <= peloton_core::runner::MAX_THREAD_WORKERS),
            "--workers beyond {} (the threads transport's most)",
            peloton_core::runner::MAX_THREAD_WORKERS
        );
        anyhow::ensure!(self.batch >= 1, "--batch must be at least 1");
        if self.sim {
            anyhow::ensure!(self.messages >= 1, "--messages must be at least 1");
            anyhow::ensure!(
                self.workers.iter().all(|&w| w >= 2),
                "--workers must be at least 2 for the message exchange"
            );
        }
        self.device()?;
        for name in &self.models {
            model_name(name)?;
        }
        Ok(())
    }

    fn device(&self) -> Result<peloton_burn::DeviceKind> {
        toml::Value::String(self.device.clone())
            .try_into()
            .map_err(|_| {
                anyhow::anyhow!(
                    "unknown device '{}' (flex, torch or torch-cuda)",
                    self.device
                )
            })
    }
}

fn bench(args: &BenchArgs) -> Result<()> {
    args.check()?;
    if args.mpi {
        return mpi_bench(args);
    }
    if args.sim {
        for &w in &args.workers {
            outln!(
                "point-to-point messages on {w} workers, {} each (ratio = rate / threads transport's rate, same run):",
                args.messages
            );
            let rates = peloton_sim::bench::message_rates(w, args.messages)?;
            outln!("{}", peloton_sim::bench::format_rates(&rates));
        }
        return Ok(());
    }
    if args.training {
        return training_bench(args);
    }
    if !args.models.is_empty() {
        let device = args.device()?;
        let mut rows = Vec::new();
        for name in &args.models {
            let model = model_name(name)?;
            rows.push(if device.is_torch() {
                torch_model_step(model, device, args.batch, args.repeats)?
            } else {
                peloton_burn::bench::model_step(model, device, args.batch, args.repeats)?
            });
        }
        outln!(
            "training step on {}, all cores (overhead = peloton / bare {} − 1; round = read params + mix + write back):",
            device.as_str(),
            if device.is_torch() { "LibTorch" } else { "burn" }
        );
        outln!("{}", peloton_burn::bench::format_table(&rows));
        if device.is_torch() {
            torch_formats(args, device)?;
        }
        return Ok(());
    }
    let bytes = args.size_mib << 20;
    outln!(
        "kernels on {} MiB buffers (ratio = bandwidth / memcpy bandwidth, same run):",
        args.size_mib
    );
    outln!(
        "{}",
        peloton_core::bench::format_table(&peloton_core::bench::kernels(bytes, args.repeats))
    );
    outln!(
        "message compressors on {} MiB of f32 (size = encoded / f32 bytes; ratio = memcpy time / time, same run):",
        args.size_mib
    );
    let (memcpy, rows) = peloton_compression::bench::compressors(bytes, args.repeats);
    outln!(
        "{}",
        peloton_compression::bench::format_table(memcpy, &rows)
    );
    outln!(
        "all-reduce on the threads transport, {} MiB:",
        args.size_mib
    );
    outln!(
        "{}",
        peloton_core::bench::format_table(&peloton_core::bench::all_reduce(
            bytes,
            &args.workers,
            args.repeats
        ))
    );
    Ok(())
}

/// A model name as the config spells it.
fn model_name(name: &str) -> Result<peloton_burn::ModelName> {
    toml::Value::String(name.to_string())
        .try_into()
        .map_err(|_| anyhow::anyhow!("unknown model '{name}' (see `peloton list`)"))
}

fn training_bench(args: &BenchArgs) -> Result<()> {
    let names = if args.models.is_empty() {
        vec!["lenet".to_string(), "cnn7".into(), "resnet20".into()]
    } else {
        args.models.clone()
    };
    let models = names
        .iter()
        .map(|n| model_name(n))
        .collect::<Result<Vec<_>>>()?;
    let cores = peloton_burn::config::machine_cores();
    outln!(
        "training throughput on flex, {cores} cores, batch {} per worker, {} steps per worker (all-reduce SGD, generated images; ratio = samples/s / one worker with all cores for burn's kernels, same run):",
        args.batch, args.steps
    );
    let rows = bench_training::run(&models, args.batch, args.steps)?;
    outln!("{}", bench_training::format_table(&rows));
    outln!("evaluation (one worker, its evaluation lanes; timed on 2,000 generated images):");
    for &model in &models {
        let (seconds, lanes) = peloton_burn::bench::eval_seconds_per_10k(model, 2_000)?;
        outln!(
            "{:<9} {seconds:>8.2} s per 10,000 images on {lanes} lanes",
            model.as_str()
        );
    }
    Ok(())
}

#[cfg(feature = "torch")]
fn torch_model_step(
    model: peloton_burn::ModelName,
    device: peloton_burn::DeviceKind,
    batch: usize,
    repeats: usize,
) -> Result<peloton_burn::bench::ModelBench> {
    Ok(peloton_torch::bench::model_step(
        model, device, batch, repeats,
    )?)
}

/// Every precision and memory format of the LibTorch learner against PyTorch's default.
#[cfg(feature = "torch")]
fn torch_formats(args: &BenchArgs, device: peloton_burn::DeviceKind) -> Result<()> {
    let mut rows = Vec::new();
    for name in &args.models {
        rows.extend(peloton_torch::bench::formats(
            model_name(name)?,
            device,
            args.batch,
            args.repeats,
        )?);
    }
    let bf16 = match peloton_torch::cpu_has_bf16() {
        Some(true) => "this CPU has bf16 arithmetic (AVX512-BF16 or AMX-BF16)",
        Some(false) => "this CPU has no bf16 arithmetic: bf16 is converted in software",
        None => "this CPU's bf16 support is unknown",
    };
    outln!(
        "precision and memory format on {}, all cores (ratio = peloton step / bare LibTorch fp32 nchw step, PyTorch's default, same run; {bf16}):",
        device.as_str()
    );
    outln!("{}", peloton_torch::bench::format_formats(&rows));
    Ok(())
}

#[cfg(not(feature = "torch"))]
fn torch_formats(_args: &BenchArgs, device: peloton_burn::DeviceKind) -> Result<()> {
    peloton_torch::check_device(device)?;
    anyhow::bail!("{} is not a LibTorch device", device.as_str())
}

#[cfg(not(feature = "torch"))]
fn torch_model_step(
    _model: peloton_burn::ModelName,
    device: peloton_burn::DeviceKind,
    _batch: usize,
    _repeats: usize,
) -> Result<peloton_burn::bench::ModelBench> {
    peloton_torch::check_device(device)?;
    anyhow::bail!("{} is not a LibTorch device", device.as_str())
}

#[cfg(not(feature = "mpi"))]
fn mpi_bench(_args: &BenchArgs) -> Result<()> {
    anyhow::bail!("this peloton was built without MPI support: rebuild with --features mpi")
}

#[cfg(feature = "mpi")]
fn mpi_bench(args: &BenchArgs) -> Result<()> {
    // The services are measured too: their waits must yield (see `init_for_services`).
    let mpi = peloton_mpi::Mpi::init_for_services()?;
    let rows = {
        let mut world = mpi.world();
        let sizes = [64 << 10, 1 << 20, 16 << 20, args.size_mib << 20];
        let mut sizes: Vec<usize> = sizes
            .into_iter()
            .filter(|&s| s <= args.size_mib << 20)
            .collect();
        sizes.dedup();
        let table = peloton_mpi::bench::measure(&mut world, &sizes, args.repeats)?;
        // The asynchronous services at 1 MiB (an EASGD exchange of a mid-sized model).
        let services = peloton_mpi::bench::measure_services(&mut world, 1 << 20, args.repeats)?;
        (table, services)
    };
    if mpi.world_rank() == 0 {
        outln!(
            "MPI transport, {} ranks, median of {} (ratio = time / bare rsmpi time: 1.00 = no overhead):",
            mpi.world_size(),
            args.repeats
        );
        outln!("{}", peloton_mpi::bench::format_table(&rows.0));
        outln!("Asynchronous services, every rank at once (mean time per operation of the slowest rank):");
        outln!("{}", peloton_mpi::bench::format_service_table(&rows.1));
    }
    Ok(())
}

/// The whole `peloton` process: parses the command line, runs it, prints a failure as one
/// line and returns the exit code. A user crate whose binary registers algorithms of its own
/// ([`peloton_core::algorithms::register`]) calls this from its `main` to get the full CLI
/// (train on threads, the simulator or MPI, resume, report, list) with them.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let result = run(cli);
    // A failed write to standard output is the command's error when nothing else failed.
    let result = match (result, crate::output::failure()) {
        (Ok(()), Some(e)) => Err(anyhow::anyhow!("cannot write to standard output: {e}")),
        (result, _) => result,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<AlreadyReported>().is_none() {
                print_error(&e);
            }
            ExitCode::FAILURE
        }
    }
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Train(args) => {
            if let Some(run_dir) = &args.resume {
                let options = train::TrainOptions {
                    out: None,
                    quiet: args.quiet,
                    calibrate: None,
                };
                train::resume(run_dir, &options)?;
                return Ok(());
            }
            let config = args.experiment()?;
            if args.print_config {
                config.validate()?;
                outln!("{}", config.to_toml()?.trim_end());
                return Ok(());
            }
            train::train(
                &config,
                &train::TrainOptions {
                    out: args.out,
                    quiet: args.quiet,
                    calibrate: args.calibrate,
                },
            )?;
            Ok(())
        }
        Command::List => {
            list();
            Ok(())
        }
        Command::Bench(args) => bench(&args),
        Command::Run(args) => sweep::run(&args),
        Command::Topology(TopologyCommand::Show(args)) => topology::show(&args),
        Command::Report(args) => report::report(&args),
    }
}

/// A command-line usage error (an unknown flag, a value that does not parse) as one `error:`
/// line like every other error, clap's tip and usage folded into it; exit code 2 as clap's.
/// Help and version requests print as clap prints them.
pub fn usage_error(e: &clap::Error) -> ExitCode {
    match usage_line(e) {
        Some(line) => {
            crate::errln!("{line}");
            ExitCode::from(2)
        }
        None => {
            let _ = e.print();
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2))
        }
    }
}

/// The one line of a usage error; `None` for a help or version request, which prints as clap
/// prints it.
pub fn usage_line(e: &clap::Error) -> Option<String> {
    if !e.use_stderr()
        || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    {
        return None;
    }
    let text = e.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Some(parts.join("; "))
}

/// The checks a command makes before it does any work, for the command-line fuzz target:
/// the experiment a `train` command describes is built and validated (as `train` does first
/// thing, and `--print-config` before printing), `topology show`'s and `bench`'s arguments
/// are checked. Nothing is trained, measured, read from a run folder or written.
pub fn check(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Train(args) if args.resume.is_none() => args.experiment()?.validate(),
        Command::Train(_) | Command::List | Command::Run(_) | Command::Report(_) => Ok(()),
        Command::Bench(args) => args.check(),
        Command::Topology(TopologyCommand::Show(args)) => args.check().map(|_| ()),
    }
}
