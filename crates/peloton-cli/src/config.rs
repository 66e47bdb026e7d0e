//! The experiment file: one TOML document describing a whole run, validated with clear
//! one-line errors. Command-line flags and `--set key=value` overrides are applied on top of
//! the file before it is read, so every setting has exactly one meaning.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use peloton_burn::memory::MemoryEstimate;
use peloton_burn::{ModelConfig, ModelName};
use peloton_compression::CompressionConfig;
use peloton_core::algorithms::AlgorithmConfig;
use peloton_core::learner::LearnerFactory;
use peloton_core::optim::OptimizerConfig;
use peloton_core::runner::{DivergencePolicy, EvalModel, RunConfig, MAX_THREAD_WORKERS};
use peloton_data::DataConfig;
use peloton_problems::ProblemConfig;
use peloton_topology::text_file::read_text_file;
use serde::{Deserialize, Serialize};

/// The budget used when a file and the flags give none: analytic problems.
pub const DEFAULT_STEPS: u64 = 2000;
/// The budget used when a file and the flags give none: networks (≈ 20 s for the default
/// LeNet on 4 workers and 2 cores).
pub const DEFAULT_NETWORK_STEPS: u64 = 600;

/// The most workers a simulated run takes: schedules are checked on dense N×N matrices
/// (134 MB at 4096 workers).
pub const MAX_SIM_WORKERS: usize = 4096;

/// A whole experiment. Every key is documented in the README's configuration section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    #[serde(default = "default_workers")]
    pub workers: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<f64>,
    /// Seconds of wall-clock training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_budget: Option<f64>,
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    #[serde(default = "default_leader_window")]
    pub leader_window: usize,
    #[serde(default = "yes")]
    pub sync_init: bool,
    #[serde(default = "yes")]
    pub consensus: bool,
    /// Seconds a worker waits for the others before the run fails naming the missing ones
    /// (threads and MPI transports); 0 turns the watchdog off.
    #[serde(default = "default_watchdog")]
    pub watchdog_seconds: f64,
    /// A worker whose loss or gradient is NaN/∞: "stop" the run, or "reset-to-leader".
    #[serde(default)]
    pub on_divergence: DivergencePolicy,
    /// Refuse a network run whose memory estimate exceeds the memory available to this
    /// process (false: run anyway, for those who know better).
    #[serde(default = "yes")]
    pub memory_check: bool,
    #[serde(default)]
    pub eval: EvalSection,
    /// An analytic problem (quadratic, softmax, ...); exclusive with `[model]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<ProblemConfig>,
    /// A neural network trained on `[data]` (the default: LeNet-5 on synthetic images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelConfig>,
    /// The dataset of `[model]`.
    #[serde(default)]
    pub data: DataConfig,
    /// A model trained by a loop outside peloton (the Python package's `peloton.run`);
    /// exclusive with `[problem]` and `[model]`. `peloton train` cannot run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalTask>,
    #[serde(default)]
    pub algorithm: AlgorithmConfig,
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// What every algorithm message is compressed with (off unless `kind` is set).
    #[serde(default, skip_serializing_if = "CompressionConfig::is_empty")]
    pub compression: CompressionConfig,
    /// Where the workers run: threads (real time) or the simulator (virtual time).
    #[serde(default)]
    pub transport: TransportConfig,
    /// Checkpoints for `peloton train --resume` (off unless `every` is set).
    #[serde(default, skip_serializing_if = "CheckpointSection::is_off")]
    pub checkpoint: CheckpointSection,
}

/// `[checkpoint]`: every worker's full state is written to `RUN_DIR/checkpoints/` every
/// `every` local steps, so that `peloton train --resume RUN_DIR` continues a killed run exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Local steps between checkpoints; 0 (the default) takes none. An asynchronous run (on
    /// the simulator) takes checkpoint k when the whole run has done k·every·N local steps.
    #[serde(default)]
    pub every: u64,
}

impl CheckpointSection {
    pub fn is_off(&self) -> bool {
        self.every == 0
    }
}

/// `[transport]`: `kind = "threads"` (the default), `kind = "sim"` with the cluster model in
/// `[transport.cluster]` (see `peloton_sim::ClusterConfig`), or `kind = "mpi"` (one worker per
/// MPI process, started by `mpirun`; needs the `mpi` feature).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[allow(clippy::large_enum_variant)] // one per experiment
pub enum TransportConfig {
    /// One OS thread per worker, wall-clock time. `faults` slow down or stop workers at
    /// wall-clock seconds (`[{ worker = 3, kind = "slow", factor = 5 }]`).
    Threads {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        faults: Vec<peloton_core::transport::Fault>,
    },
    /// The deterministic simulator: real computation, virtual time.
    Sim {
        #[serde(default)]
        cluster: peloton_sim::ClusterConfig,
    },
    /// One MPI process per worker (`mpirun -n N peloton train --transport mpi`), wall-clock
    /// time. Parsed by every build so that a build without the `mpi` feature can say so.
    Mpi,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig::Threads { faults: Vec::new() }
    }
}

impl TransportConfig {
    /// Adds a `slow` fault from the start of the run (`--slowdown worker=factor`) on threads
    /// or the simulator.
    pub fn slow_down(&mut self, worker: usize, factor: f64) -> Result<()> {
        let fault = peloton_core::transport::Fault {
            worker,
            at: 0.0,
            kind: peloton_core::transport::FaultKind::Slow,
            factor,
        };
        match self {
            TransportConfig::Threads { faults } => faults.push(fault),
            TransportConfig::Sim { cluster } => cluster.faults.push(fault),
            TransportConfig::Mpi => anyhow::bail!(
                "--slowdown works on the threads and sim transports, not on mpi (slow a rank down with the machine itself)"
            ),
        }
        Ok(())
    }

    pub fn name(&self) -> &'static str {
        match self {
            TransportConfig::Threads { .. } => "threads",
            TransportConfig::Sim { .. } => "sim",
            TransportConfig::Mpi => "mpi",
        }
    }
}

/// The `[transport]` table of `--cluster FILE|PRESET`: a preset name
/// (`peloton list` shows them) or a TOML file with the cluster's keys.
pub fn cluster_table(spec: &str) -> Result<toml::Value> {
    let cluster = match peloton_sim::ClusterConfig::preset(spec) {
        Some(c) => c,
        None => {
            let path = Path::new(spec);
            let text = read_text_file(path).with_context(|| {
                let names: Vec<&str> = peloton_sim::ClusterConfig::presets()
                    .iter()
                    .map(|p| p.0)
                    .collect();
                format!(
                    "--cluster {spec}: neither a preset ({}) nor a readable file",
                    names.join(", ")
                )
            })?;
            toml::from_str::<peloton_sim::ClusterConfig>(&text)
                .map_err(|e| one_line(spec, &text, &e))?
        }
    };
    let mut table = toml::Table::new();
    table.insert("kind".into(), "sim".into());
    table.insert(
        "cluster".into(),
        toml::Value::try_from(&cluster).context("cannot convert the cluster")?,
    );
    Ok(toml::Value::Table(table))
}

/// `[eval]`: when and on which parameters to evaluate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Steps between evaluations (0 = only at the end).
    #[serde(default = "default_eval_every")]
    pub every: u64,
    #[serde(default)]
    pub model: EvalModel,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            every: default_eval_every(),
            model: EvalModel::default(),
        }
    }
}

fn default_workers() -> usize {
    4
}
fn default_log_every() -> u64 {
    50
}
fn default_leader_window() -> usize {
    10
}
fn default_eval_every() -> u64 {
    200
}
fn yes() -> bool {
    true
}
fn default_watchdog() -> f64 {
    peloton_core::runner::DEFAULT_WATCHDOG_SECONDS
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        toml::from_str("").expect("the empty experiment uses every default")
    }
}

impl ExperimentConfig {
    /// The runner's view of this experiment (a step budget is filled in when none is given).
    pub fn run_config(&self) -> RunConfig {
        let no_budget = self.steps.is_none() && self.epochs.is_none() && self.time_budget.is_none();
        RunConfig {
            workers: self.workers,
            seed: self.seed,
            steps: if no_budget {
                Some(if self.problem.is_some() {
                    DEFAULT_STEPS
                } else {
                    DEFAULT_NETWORK_STEPS
                })
            } else {
                self.steps
            },
            epochs: self.epochs,
            time_budget: self.time_budget,
            log_every: self.log_every,
            eval_every: self.eval.every,
            eval_model: self.eval.model,
            leader_window: self.leader_window,
            sync_init: self.sync_init,
            consensus: self.consensus,
            optimizer: self.optimizer.clone(),
            algorithm: self.algorithm.clone(),
            // Set by `peloton train`, which knows the run folder.
            checkpoint: None,
            watchdog: (self.watchdog_seconds != 0.0).then_some(self.watchdog_seconds),
            on_divergence: self.on_divergence,
            compression: self.compression.clone(),
        }
    }

    /// The network trained when no `[problem]` is given.
    pub fn default_model() -> ModelConfig {
        ModelConfig::new(ModelName::Lenet)
    }

    /// What is trained: an analytic problem or a network on a dataset.
    pub fn task(&self) -> Result<Task> {
        if let Some(external) = &self.external {
            if self.problem.is_some() || self.model.is_some() {
                bail!("[external] (a model trained from Python) excludes [problem] and [model]");
            }
            return Ok(Task::External(external.clone()));
        }
        match (&self.problem, &self.model) {
            (Some(_), Some(_)) => bail!(
                "give either [problem] (an analytic problem) or [model] (a network on [data]), not both"
            ),
            (Some(p), None) => Ok(Task::Problem(p.clone())),
            (None, m) => Ok(Task::Network(
                m.clone().unwrap_or_else(Self::default_model),
                self.data.clone(),
            )),
        }
    }

    /// A short name of the task for run folders and progress lines, e.g. `lenet-synthetic`.
    pub fn task_name(&self) -> String {
        match self.task() {
            Ok(Task::Problem(p)) => p.name().to_string(),
            Ok(Task::Network(m, d)) => format!("{}-{}", m.name.as_str(), d.dataset.name()),
            Ok(Task::External(e)) => e.name,
            Err(_) => "invalid".into(),
        }
    }

    /// Checks everything that can be checked before a run starts (the dataset's files are
    /// read, and the model fitted to them, when the run starts).
    pub fn validate(&self) -> Result<()> {
        // Before the algorithm's checks: some build an N-node graph or an N×N mixing matrix,
        // which for a huge N would hang or exhaust memory instead of failing.
        let most = match self.transport {
            TransportConfig::Threads { .. } => Some((MAX_THREAD_WORKERS, "threads transport")),
            TransportConfig::Sim { .. } => Some((MAX_SIM_WORKERS, "simulator")),
            TransportConfig::Mpi => None,
        };
        if let Some((most, transport)) = most {
            if self.workers > most {
                return Err(peloton_core::Error::Config(format!(
                    "the {transport} runs at most {most} workers, got {}",
                    self.workers
                ))
                .into());
            }
        }
        self.run_config().validate()?;
        if !self.checkpoint.is_off() {
            if self.algorithm.is_async() && !matches!(self.transport, TransportConfig::Sim { .. }) {
                bail!(
                    "checkpoint.every: checkpoints of asynchronous algorithms ({}) need the simulator (transport.kind = \"sim\"): on threads the workers' interleaving cannot be reproduced",
                    self.algorithm.name()
                );
            }
            if let TransportConfig::Sim { cluster } = &self.transport {
                if self.algorithm.is_async()
                    && cluster
                        .faults
                        .iter()
                        .any(|f| f.kind == peloton_sim::FaultKind::Stop)
                {
                    bail!(
                        "checkpoint.every: checkpoints of an asynchronous run cannot be combined with \"stop\" faults (a stopped worker never reaches a checkpoint cut)"
                    );
                }
            }
        }
        match &self.transport {
            TransportConfig::Sim { cluster } => cluster.validate(self.workers)?,
            TransportConfig::Threads { faults } => {
                for f in faults {
                    f.validate(self.workers).map_err(|e| {
                        peloton_core::Error::Config(format!("transport.faults: {e}"))
                    })?;
                }
            }
            // Every algorithm runs on MPI, the asynchronous ones through rank 0's services.
            TransportConfig::Mpi => {}
        }
        match self.task()? {
            Task::Problem(p) => p.validate(self.workers)?,
            Task::External(e) => e.validate()?,
            Task::Network(m, d) => {
                m.validate()?;
                peloton_torch::check_device(m.device)?;
                d.validate()?;
            }
        }
        Ok(())
    }

    /// Builds the learners' factory: for a network this reads or generates the data and
    /// shards it, once for all workers.
    ///
    /// A network's memory is estimated before anything runs (`in_process` workers share this
    /// process: all of them on threads and the simulator, one on MPI), and a run that cannot
    /// fit in the memory available is refused unless `memory_check = false`.
    pub fn factory(&self, in_process: usize) -> Result<Prepared> {
        Ok(match self.task()? {
            Task::Problem(p) => Prepared {
                factory: Box::new(p),
                memory: None,
            },
            Task::External(e) => bail!(
                "this experiment trains \"{}\" with a training loop outside peloton ([external]): run it from Python (peloton.run), not with peloton train",
                e.name
            ),
            Task::Network(m, d) => {
                let torch = m.device.is_torch();
                let task = peloton_burn::NetworkTask::load(m, &d, self.workers, self.seed)?;
                let (factory, memory): (Box<dyn LearnerFactory>, _) = if torch {
                    peloton_torch::factory(task, in_process)?
                } else {
                    let memory = task.memory_estimate(in_process)?;
                    (Box::new(task), memory)
                };
                if self.memory_check {
                    if let Some(available) = peloton_burn::memory::available_memory() {
                        check_memory(&memory, available)?;
                    }
                }
                Prepared {
                    factory,
                    memory: Some(memory),
                }
            }
        })
    }

    /// Workers that share this process: all of them, except on MPI (one per process).
    pub fn workers_in_process(&self) -> usize {
        match self.transport {
            TransportConfig::Mpi => 1,
            _ => self.workers,
        }
    }

    /// The resolved config as TOML (every default written out). Values stored as `f32` are
    /// written in their shortest form (0.1, not 0.10000000149011612).
    pub fn to_toml(&self) -> Result<String> {
        let mut value =
            toml::Value::try_from(self).context("cannot write the resolved config as TOML")?;
        shorten_floats(&mut value);
        toml::to_string(&value).context("cannot write the resolved config as TOML")
    }
}

/// The learners' factory of an experiment, with the memory estimate of a network.
pub struct Prepared {
    pub factory: Box<dyn LearnerFactory>,
    pub memory: Option<MemoryEstimate>,
}

/// Refuses an estimate above `available` bytes, with one line naming both and the way out.
pub fn check_memory(memory: &MemoryEstimate, available: u64) -> Result<()> {
    use peloton_burn::memory::human;
    if memory.total() > available {
        bail!(
            "this run needs about {} ({} per worker × {} workers, data {}) but only {} is available; use fewer workers, a smaller model or smaller batches (data.batch_size, data.eval_batch_size), or set memory_check = false to run anyway",
            human(memory.total()),
            human(memory.per_worker()),
            memory.workers,
            human(memory.data),
            human(available)
        );
    }
    Ok(())
}

/// What an experiment trains.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    Problem(ProblemConfig),
    Network(ModelConfig, DataConfig),
    External(ExternalTask),
}

/// `[external]`: the run's model is trained by a loop outside peloton — a PyTorch loop in
/// Python driving the algorithms through `peloton.run` (see `peloton_core::external`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalTask {
    /// What the loop trains, for run folders and reports (e.g. `resnet20-cifar10`).
    pub name: String,
}

impl ExternalTask {
    /// The most characters of a name (it becomes part of a folder's name).
    pub const MAX_NAME: usize = 64;

    pub fn validate(&self) -> Result<()> {
        let n = &self.name;
        let fine = n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if n.is_empty() || n.len() > Self::MAX_NAME || !fine || n.starts_with('.') {
            bail!(
                "external.name must be 1 to {} letters, digits, '-', '_' or '.' (not first), got {:?}",
                Self::MAX_NAME,
                n.chars().take(80).collect::<String>()
            );
        }
        Ok(())
    }
}

/// Rewrites every float that is exactly an `f32` with the shortest decimal that reads back as
/// the same `f32`.
fn shorten_floats(value: &mut toml::Value) {
    match value {
        toml::Value::Float(v) if (*v as f32) as f64 == *v => {
            *v = (*v as f32).to_string().parse().unwrap_or(*v);
        }
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| shorten_floats(v)),
        toml::Value::Array(a) => a.iter_mut().for_each(shorten_floats),
        _ => {}
    }
}

/// The most dotted parts a `--set` key may have.
const MAX_KEY_PARTS: usize = 16;

/// One change on top of the file: a dotted key and a TOML value.
#[derive(Debug, Clone)]
pub struct Override {
    pub key: String,
    pub value: toml::Value,
}

impl Override {
    /// Parses `key.path=value`; the value is read as TOML (`0.1`, `true`, `[1, 2]`,
    /// `"text"`), and as a plain string when it is not valid TOML (`name=lsgd`).
    pub fn parse(text: &str) -> Result<Self> {
        let (key, raw) = text
            .split_once('=')
            .ok_or_else(|| anyhow!("--set expects KEY=VALUE, got {text:?}"))?;
        let key = key.trim();
        // Every key of an experiment is made of these; anything else (a line break, a quote)
        // could only be a mistake, or an attempt to write TOML through the key.
        let valid_part = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !key.split('.').all(valid_part) {
            let start: String = key.chars().take(40).collect();
            bail!(
                "--set: {start:?} is not a dotted key (letters, digits, '_' and '-' between dots)"
            );
        }
        // No key of an experiment is nested deeper than a few tables; a longer path is a
        // mistake (and the nested tables it would build are walked recursively).
        if key.split('.').count() > MAX_KEY_PARTS {
            let start: String = key.chars().take(40).collect();
            bail!("--set: '{start}…' has more than {MAX_KEY_PARTS} dotted parts");
        }
        let raw = raw.trim();
        // Exactly one TOML value: a value with a line break cannot smuggle in a second key.
        if raw.contains(['\n', '\r']) {
            bail!("--set {key}: the value must be on one line");
        }
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.to_string()));
        Ok(Self {
            key: key.to_string(),
            value,
        })
    }

    pub fn new(key: &str, value: impl Into<toml::Value>) -> Self {
        Self {
            key: key.to_string(),
            value: value.into(),
        }
    }

    fn apply(&self, table: &mut toml::Table) -> Result<()> {
        let mut parts: Vec<&str> = self.key.split('.').collect();
        let last = parts.pop().expect("keys are non-empty");
        let mut node = table;
        for part in parts {
            let entry = node
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            node = entry
                .as_table_mut()
                .ok_or_else(|| anyhow!("--set {}: '{part}' is a value, not a table", self.key))?;
        }
        // Switching the algorithm or the problem drops the keys that belonged to the old one.
        if (last == "name" || last == "kind") && node.get(last) != Some(&self.value) {
            node.clear();
        }
        node.insert(last.to_string(), self.value.clone());
        Ok(())
    }
}

/// A TOML error as one line: "FILE line L: message".
fn one_line(origin: &str, text: &str, err: &toml::de::Error) -> anyhow::Error {
    let message = err.message().trim().replace('\n', " ");
    match err.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            // The line itself names the key, where the message may not ("expected usize").
            let source: String = text
                .lines()
                .nth(line - 1)
                .unwrap_or("")
                .trim()
                .chars()
                .take(60)
                .collect();
            if source.is_empty() {
                anyhow!("{origin} line {line}: {message}")
            } else {
                anyhow!("{origin} line {line}: {message} (at `{source}`)")
            }
        }
        None => anyhow!("{origin}: {message}"),
    }
}

/// Reads the experiment from an optional file plus overrides (applied in order).
pub fn load(path: Option<&Path>, overrides: &[Override]) -> Result<ExperimentConfig> {
    match path {
        Some(p) => {
            let text = read_text_file(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            parse(&p.display().to_string(), &text, overrides)
        }
        None => parse("defaults", "", overrides),
    }
}

/// The experiment of a file's text plus overrides (applied in order); `origin` names the file
/// in errors. Not validated: see [`ExperimentConfig::validate`].
pub fn parse(origin: &str, text: &str, overrides: &[Override]) -> Result<ExperimentConfig> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| one_line(origin, text, &e))?;
    // Read the file alone first, so that its mistakes are reported with line numbers.
    let from_file: ExperimentConfig =
        toml::from_str(text).map_err(|e| one_line(origin, text, &e))?;
    if overrides.is_empty() {
        return Ok(from_file);
    }
    // Overrides of a section the file left out refer to that section's default.
    let defaults = ExperimentConfig::default();
    let default_model = ExperimentConfig::default_model();
    for (section, tag, default) in [
        ("algorithm", "name", defaults.algorithm.name()),
        ("problem", "kind", ProblemConfig::default().name()),
        ("model", "name", default_model.name.as_str()),
    ] {
        let touched = overrides
            .iter()
            .any(|o| o.key.starts_with(&format!("{section}.")));
        if !touched {
            continue;
        }
        if let Some(t) = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
        {
            t.entry(tag).or_insert_with(|| default.into());
        }
    }
    for o in overrides {
        o.apply(&mut table)?;
    }
    let merged = toml::to_string(&table).context("cannot merge the overrides")?;
    toml::from_str(&merged).map_err(|e| {
        let keys: Vec<&str> = overrides.iter().map(|o| o.key.as_str()).collect();
        anyhow!(
            "{} (after applying the command-line settings {})",
            e.message().trim().replace('\n', " "),
            keys.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ExperimentConfig> {
        let dir = std::env::temp_dir().join(format!("peloton-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!(
            "{:x}.toml",
            text.len() * 7919 + text.bytes().map(|b| b as usize).sum::<usize>()
        ));
        std::fs::write(&path, text)?;
        let out = load(Some(&path), &[]);
        let _ = std::fs::remove_file(&path);
        out
    }

    #[test]
    fn defaults_are_a_valid_experiment() {
        let c = ExperimentConfig::default();
        c.validate().unwrap();
        assert_eq!(c.algorithm.name(), "lsgd");
        assert_eq!(c.run_config().steps, Some(DEFAULT_NETWORK_STEPS));
        assert!(matches!(c.task().unwrap(), Task::Network(m, _) if m.name == ModelName::Lenet));
    }

    #[test]
    fn resolved_config_round_trips() {
        let c = parse("workers = 6\n[algorithm]\nname = \"lsgd\"\ngroup_size = 3\n[optimizer.schedule]\nkind = \"multi-step\"\nmilestones = [10, 20]\ngamma = 0.1\n").unwrap();
        let back: ExperimentConfig = toml::from_str(&c.to_toml().unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_keys_and_names_are_one_line_errors_with_a_line_number() {
        for (text, needle) in [
            (
                "workers = 4\nwrokers = 5\n",
                "line 2: unknown field `wrokers`",
            ),
            (
                "[algorithm]\nname = \"lsgd\"\nlamda = 0.1\n",
                "line 1: unknown field `lamda`, expected one of `tau`",
            ),
            ("[algorithm]\nname = \"sgp2\"\n", "unknown variant `sgp2`"),
            (
                "[problem]\nkind = \"quadratic\"\nbatch = 3\n",
                "unknown field `batch`",
            ),
            ("[eval]\nmodel = \"best\"\n", "unknown variant `best`"),
            ("workers = -1\n", "line 1"),
            ("workers = [\n", "line"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(!err.contains('\n'), "not one line: {err}");
        }
    }

    #[test]
    fn overrides_apply_in_order_and_switch_algorithms() {
        let c = load(
            None,
            &[
                Override::parse("algorithm.name=easgd").unwrap(),
                Override::parse("algorithm.tau=8").unwrap(),
                Override::parse("optimizer.lr=0.05").unwrap(),
                Override::parse("workers=2").unwrap(),
            ],
        )
        .unwrap();
        assert_eq!(c.workers, 2);
        assert_eq!(c.optimizer.lr, 0.05);
        match c.algorithm.get::<peloton_core::algorithms::EasgdConfig>() {
            Some(e) => assert_eq!(e.tau, Some(8)),
            None => panic!("{:?}", c.algorithm),
        }
        let err = load(None, &[Override::parse("algorithm.lamda=0.1").unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field `lamda`") && err.contains("algorithm.lamda"),
            "{err}"
        );
        assert!(Override::parse("novalue").is_err());
    }
}
