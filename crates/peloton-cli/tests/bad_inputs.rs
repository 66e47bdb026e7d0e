//! The bad-input catalog: one table of inputs the `peloton` binary must refuse — out-of-range
//! hyperparameters, unknown keys, topologies that do not fit the worker count, broken dataset
//! files, diverging runs, unwritable run folders — each run by the real binary in a scratch
//! folder of its own.
//!
//! Every row must end with:
//! - a non-zero exit code (a process killed by a signal has none, so a crash fails the row);
//! - no panic: stderr mentions neither `panicked` nor `RUST_BACKTRACE`;
//! - exactly one non-empty line on stderr, starting with `error: ` (the CLI's error format,
//!   `main.rs`'s `print_error`), containing the row's expected text, which names the problem
//!   (the key, the file or the value);
//! - every file that existed in the scratch folder before the run byte-identical afterwards
//!   (the folder holds an old run, valid MNIST and CIFAR-10 folders and the row's own files);
//! - and a new run folder, when the run got far enough to make one, whose `summary.json` says
//!   the run failed.
//!
//! All rows run and the failures are reported together, so one run of this test shows every
//! row that regressed.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use peloton_data::synthetic::SyntheticConfig;
use peloton_data::{cifar, mnist};

/// One bad input.
struct Row {
    name: &'static str,
    /// The arguments after `peloton`; relative paths resolve in the row's scratch folder.
    args: Vec<&'static str>,
    /// Files written (relative to the scratch folder) after the common ones, possibly
    /// replacing one of them: a broken dataset file, an experiment file.
    files: Vec<(&'static str, Vec<u8>)>,
    /// Named pipes made (with `mkfifo`) in the scratch folder: a reader that opens one
    /// blocks until a writer comes, which none ever does here.
    fifos: Vec<&'static str>,
    /// Standard output goes to `/dev/full`: every write to it fails.
    full_stdout: bool,
    /// Standard error goes to `/dev/full`: the error line cannot be written, so the row
    /// asserts the exit code (1, or 2 for usage; a panic exits 101) and the files only.
    full_stderr: bool,
    /// Text the error line must contain.
    expect: &'static str,
}

fn row(name: &'static str, args: &[&'static str], expect: &'static str) -> Row {
    Row {
        name,
        args: args.to_vec(),
        files: Vec::new(),
        fifos: Vec::new(),
        full_stdout: false,
        full_stderr: false,
        expect,
    }
}

impl Row {
    /// Writes `path` (replacing an earlier file of the same path).
    fn file(mut self, path: &'static str, bytes: impl Into<Vec<u8>>) -> Self {
        self.files.retain(|(p, _)| *p != path);
        self.files.push((path, bytes.into()));
        self
    }

    /// Makes `path` a named pipe.
    fn fifo(mut self, path: &'static str) -> Self {
        self.fifos.push(path);
        self
    }

    /// Sends standard output to `/dev/full`.
    fn stdout_full(mut self) -> Self {
        self.full_stdout = true;
        self
    }

    /// Sends standard error to `/dev/full`.
    fn stderr_full(mut self) -> Self {
        self.full_stderr = true;
        self
    }

    /// Leaves `path` out.
    fn without(mut self, path: &'static str) -> Self {
        self.files.retain(|(p, _)| *p != path);
        self
    }
}

/// `peloton train -q ARGS`, into `runs/new` unless ARGS name another run folder, with each
/// `(flag, value)` of `defaults` whose flag ARGS do not give (clap refuses a repeated flag).
fn train(args: &[&'static str], defaults: &[(&'static str, &'static str)]) -> Vec<&'static str> {
    let mut out = vec!["train", "-q"];
    out.extend(args);
    for &(flag, value) in [("-o", "runs/new")].iter().chain(defaults) {
        if !args.contains(&flag) {
            out.extend([flag, value]);
        }
    }
    out
}

/// A short run of the quadratic problem.
fn quad(args: &[&'static str]) -> Vec<&'static str> {
    let mut all = vec!["--problem", "quadratic"];
    all.extend(args);
    train(&all, &[("--steps", "5")])
}

/// A short MLP run on 2 workers on the MNIST files in `dir`.
fn on_mnist(dir: &'static str, args: &[&'static str]) -> Vec<&'static str> {
    let mut all = vec!["--dataset", "mnist", "--data-dir", dir, "--workers", "2"];
    all.extend(args);
    train(
        &all,
        &[("--model", "mlp"), ("--batch-size", "8"), ("--steps", "2")],
    )
}

/// A short MLP run on 2 workers on the CIFAR-10 files in `dir`.
fn on_cifar(dir: &'static str) -> Vec<&'static str> {
    let args = ["--model", "mlp", "--dataset", "cifar10", "--data-dir", dir];
    train(
        &args,
        &[("--workers", "2"), ("--batch-size", "4"), ("--steps", "2")],
    )
}

/// Decentralized SGD on `workers` with a static graph of `kind`, plus `extra`.
fn dpsgd_graph(
    workers: &'static str,
    kind: &'static str,
    extra: &[&'static str],
) -> Vec<&'static str> {
    let base = [
        "--algorithm",
        "d-psgd",
        "--workers",
        workers,
        "--set",
        "algorithm.schedule.kind=static",
        "--set",
        kind,
    ];
    quad(&base.iter().chain(extra).copied().collect::<Vec<_>>())
}

/// Small valid MNIST and CIFAR-10 files, generated once: `(file name, bytes)`.
struct Datasets {
    mnist: Vec<(String, Vec<u8>)>,
    cifar: Vec<(String, Vec<u8>)>,
}

fn datasets() -> &'static Datasets {
    static DATA: OnceLock<Datasets> = OnceLock::new();
    DATA.get_or_init(|| {
        let generate = |channels, size, train, test| {
            SyntheticConfig {
                channels,
                size,
                train,
                test,
                ..Default::default()
            }
            .generate(1)
            .expect("the generator's parameters are valid")
        };
        let read_back = |dir: &Path| -> Vec<(String, Vec<u8>)> {
            let mut files: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| {
                    let path = e.unwrap().path();
                    let name = path.file_name().unwrap().to_string_lossy().to_string();
                    (name, std::fs::read(&path).unwrap())
                })
                .collect();
            files.sort();
            files
        };
        // The crate's own writers make the files, so the catalog tracks the formats.
        let dir = common::scratch("datasets");
        let (train, test) = generate(1, 28, 64, 16);
        mnist::write_dir(&dir.join("mnist"), &train, &test, false).unwrap();
        let (train, test) = generate(3, 32, 20, 4);
        cifar::write_dir(&dir.join("cifar"), &train, &test, false).unwrap();
        let data = Datasets {
            mnist: read_back(&dir.join("mnist")),
            cifar: read_back(&dir.join("cifar")),
        };
        let _ = std::fs::remove_dir_all(&dir);
        data
    })
}

fn mnist_file(name: &str) -> Vec<u8> {
    let files = &datasets().mnist;
    files.iter().find(|f| f.0 == name).unwrap().1.clone()
}

fn cifar_file(name: &str) -> Vec<u8> {
    let files = &datasets().cifar;
    files.iter().find(|f| f.0 == name).unwrap().1.clone()
}

/// `bytes` with the big-endian word at `at` replaced.
fn set_word(mut bytes: Vec<u8>, at: usize, word: u32) -> Vec<u8> {
    bytes[at..at + 4].copy_from_slice(&word.to_be_bytes());
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

const TRAIN_IMAGES: &str = "mnist/train-images-idx3-ubyte";
const TRAIN_LABELS: &str = "mnist/train-labels-idx1-ubyte";
const TEST_IMAGES: &str = "mnist/t10k-images-idx3-ubyte";
const TEST_LABELS: &str = "mnist/t10k-labels-idx1-ubyte";

/// The catalog.
fn catalog() -> Vec<Row> {
    let images = || mnist_file("train-images-idx3-ubyte");
    let labels = || mnist_file("train-labels-idx1-ubyte");
    let batch = || cifar_file("data_batch_1.bin");
    vec![
        // Optimizer hyperparameters.
        row("lr zero", &quad(&["--lr", "0"]), "optimizer.lr must be positive, got 0"),
        row("lr negative", &quad(&["--lr", "-0.1"]), "optimizer.lr must be positive, got -0.1"),
        row("lr NaN", &quad(&["--set", "optimizer.lr=nan"]), "optimizer.lr must be positive, got NaN"),
        row("lr infinite", &quad(&["--lr", "inf"]), "optimizer.lr must be positive, got inf"),
        row("momentum 1", &quad(&["--set", "optimizer.momentum=1"]), "optimizer.momentum must be in [0, 1), got 1"),
        row("momentum negative", &quad(&["--set", "optimizer.momentum=-0.5"]), "optimizer.momentum must be in [0, 1), got -0.5"),
        row("nesterov without momentum", &quad(&["--set", "optimizer.nesterov=true"]), "optimizer.nesterov needs optimizer.momentum > 0"),
        row("weight decay negative", &quad(&["--set", "optimizer.weight_decay=-1e-4"]), "optimizer.weight_decay must be ≥ 0"),
        row(
            "schedule gamma zero",
            &quad(&["--set", "optimizer.schedule.kind=step", "--set", "optimizer.schedule.every=10", "--set", "optimizer.schedule.gamma=0"]),
            "optimizer.schedule.gamma must be positive, got 0",
        ),
        row(
            "milestones decreasing",
            &quad(&["--set", "optimizer.schedule.kind=multi-step", "--set", "optimizer.schedule.milestones=[20, 10]", "--set", "optimizer.schedule.gamma=0.1"]),
            "optimizer.schedule.milestones must be strictly increasing",
        ),
        // Algorithm hyperparameters.
        row("tau zero", &quad(&["--set", "algorithm.tau=0"]), "algorithm.tau must be at least 1"),
        row("lambda above 1", &quad(&["--set", "algorithm.lambda=1.5"]), "algorithm.lambda must be in [0, 1], got 1.5"),
        row("lambda NaN", &quad(&["--set", "algorithm.lambda=nan"]), "algorithm.lambda must be in [0, 1], got NaN"),
        row("prox above tau", &quad(&["--set", "algorithm.prox=9"]), "algorithm.prox = 9 exceeds tau = 4"),
        row("easgd beta above 1", &quad(&["--algorithm", "easgd", "--set", "algorithm.beta=2"]), "β = N·α = 2 exceeds 1"),
        row("easgd alpha zero", &quad(&["--algorithm", "easgd", "--set", "algorithm.alpha=0"]), "algorithm.alpha must be in (0, 1], got 0"),
        row(
            "easgd alpha and beta",
            &quad(&["--algorithm", "easgd", "--set", "algorithm.alpha=0.1", "--set", "algorithm.beta=0.4"]),
            "set either algorithm.alpha or algorithm.beta",
        ),
        row("eamsgd without nesterov", &quad(&["--algorithm", "eamsgd"]), "Nesterov"),
        row("local-sgd period zero", &quad(&["--algorithm", "local-sgd", "--set", "algorithm.period=0"]), "algorithm.period must be at least 1"),
        // Worker counts and groups.
        row("zero workers", &quad(&["--workers", "0"]), "workers must be at least 1"),
        row("group size does not divide N", &quad(&["--workers", "6", "--set", "algorithm.group_size=4"]), "not divisible by algorithm.group_size (4)"),
        row("group size above N", &quad(&["--set", "algorithm.group_size=8"]), "algorithm.group_size = 8 must be between 1 and the number of workers (4)"),
        row("group size zero", &quad(&["--set", "algorithm.group_size=0"]), "algorithm.group_size = 0"),
        row("lambda_global with one group", &quad(&["--set", "algorithm.lambda_global=0.1"]), "algorithm.lambda_global needs more than one group"),
        row(
            "tau_global not a multiple of tau",
            &quad(&["--set", "algorithm.group_size=2", "--set", "algorithm.tau_global=6"]),
            "algorithm.tau_global = 6 must be a multiple of algorithm.tau = 4",
        ),
        row("more workers than threads", &quad(&["--workers", "100000000", "--algorithm", "matcha"]), "the threads transport runs at most 1024 workers, got 100000000"),
        row(
            "more workers than the simulator takes",
            &quad(&["--workers", "100000", "--transport", "sim", "--algorithm", "d-psgd"]),
            "the simulator runs at most 4096 workers, got 100000",
        ),
        row(
            "simulated cluster size overflows",
            &quad(&["--transport", "sim", "--set", "transport.cluster.nodes=9223372036854775807", "--set", "transport.cluster.workers_per_node=3"]),
            "= 27670116110564327421 does not match the 4 workers",
        ),
        row(
            "tau so large the global period overflows",
            &quad(&["--set", "algorithm.group_size=2", "--set", "algorithm.tau=4611686018427387904"]),
            "must be a multiple of algorithm.tau = 4611686018427387904",
        ),
        row(
            "synthetic dataset larger than memory",
            &train(&["--set", "data.synthetic.train=9223372036854775807"], &[]),
            "data.synthetic.train + data.synthetic.test = 9223372036854777855 images",
        ),
        row("ad-psgd on odd N", &quad(&["--algorithm", "ad-psgd", "--workers", "5"]), "ad-psgd needs an even number of workers"),
        row("choco gamma zero", &quad(&["--algorithm", "choco-sgd", "--set", "algorithm.gamma=0"]), "algorithm.gamma must be in (0, 1], got 0"),
        row("choco powersgd", &quad(&["--algorithm", "choco-sgd", "--set", "algorithm.compression.kind=powersgd"]), "does not apply to choco-sgd: PowerSGD compresses all-reduces"),
        row("choco fraction zero", &quad(&["--algorithm", "choco-sgd", "--set", "algorithm.compression.fraction=0"]), "algorithm.compression.fraction must be in (0, 1], got 0"),
        row("choco fraction above 1", &quad(&["--algorithm", "choco-sgd", "--set", "algorithm.compression.fraction=1.5"]), "algorithm.compression.fraction must be in (0, 1], got 1.5"),
        row("choco unknown compressor", &quad(&["--algorithm", "choco-sgd", "--set", "algorithm.compression.kind=zip"]), "unknown variant `zip`"),
        // [compression]: the layer under every algorithm.
        row("compression fraction zero", &quad(&["--set", "compression.kind=topk", "--set", "compression.fraction=0"]), "compression.fraction must be in (0, 1], got 0"),
        row("compression fraction above 1", &quad(&["--set", "compression.kind=randomk", "--set", "compression.fraction=1.5"]), "compression.fraction must be in (0, 1], got 1.5"),
        row("compression rank zero", &quad(&["--set", "compression.kind=powersgd", "--set", "compression.rank=0"]), "compression.rank must be between 1 and 64, got 0"),
        row("compression unknown kind", &quad(&["--set", "compression.kind=zip"]), "unknown variant `zip`"),
        row("compression rank on fp16", &quad(&["--set", "compression.kind=fp16", "--set", "compression.rank=2"]), "compression.rank applies to kind = \"powersgd\" only"),
        row("compression apply_to empty", &quad(&["--set", "compression.kind=int8", "--set", "compression.apply_to=[]"]), "compression.apply_to is empty"),
        row("compression unknown role", &quad(&["--set", "compression.kind=int8", "--set", "compression.apply_to=[\"weights\"]"]), "unknown variant `weights`"),
        row("powersgd without a matrix", &quad(&["--algorithm", "all-reduce", "--set", "compression.kind=powersgd"]), "needs a matrix-shaped parameter"),
        row("powersgd for gossip", &train(&["--problem", "softmax", "--algorithm", "d-psgd", "--set", "compression.kind=powersgd"], &[("--steps", "5")]), "compresses gradient all-reduces only, and d-psgd sends a model-sized message (gossip)"),
        row("powersgd for a leader broadcast", &train(&["--problem", "softmax", "--algorithm", "lsgd", "--set", "compression.kind=powersgd"], &[("--steps", "5")]), "and lsgd sends a model-sized broadcast (models)"),
        row("choco block on top-k", &quad(&["--algorithm", "choco-sgd", "--set", "algorithm.compression.block=64"]), "algorithm.compression.block applies to kind = \"int8\" only"),
        row(
            "more shards than samples",
            &train(&["--problem", "softmax", "--workers", "8", "--set", "problem.train_samples=4"], &[]),
            "some shards would be empty",
        ),
        // Budgets and run settings.
        row("steps zero", &quad(&["--steps", "0"]), "steps must be at least 1"),
        row("epochs zero", &quad(&["--epochs", "0"]), "epochs must be positive, got 0"),
        row("time budget negative", &quad(&["--set", "time_budget=-1.0"]), "time_budget must be a positive number of seconds up to 1e9 (about 32 years), got -1"),
        row("log_every zero", &quad(&["--set", "log_every=0"]), "log_every must be at least 1"),
        row("leader_window zero", &quad(&["--set", "leader_window=0"]), "leader_window must be at least 1"),
        // Sizes no worker can hold: refused in validation, not by a worker's allocation.
        row("leader_window beyond memory", &quad(&["--set", "leader_window=1000000000000"]), "more losses than a worker keeps"),
        row("quadratic dim beyond memory", &quad(&["--set", "problem.dim=10000000000000"]), "problem.dim = 10000000000000 values is more than a worker can hold"),
        row(
            "softmax dataset beyond memory",
            &train(&["--problem", "softmax", "--set", "problem.train_samples=4000000000", "--set", "problem.features=4000000000"], &[]),
            "problem.train_samples × problem.features = 4000000000 × 4000000000 values",
        ),
        row(
            "matrix completion beyond memory",
            &train(&["--problem", "matrix-completion", "--set", "problem.d=100000"], &[("--steps", "2")]),
            "problem.d × problem.d = 100000 × 100000 values",
        ),
        row("MLP layer beyond memory", &on_mnist("mnist", &["--set", "model.hidden=[100000000000]"]), "a layer of model.hidden = 3072 × 100000000000 values"),
        // 1.6 G parameters × 4 workers (≈ 180 GB with gradients, momentum and the model's
        // copy): refused by the memory estimate before anything is allocated.
        row("a run beyond the machine's memory", &train(&["--model", "mlp", "--set", "model.hidden=[40000, 40000]"], &[("--steps", "1")]), "set memory_check = false to run anyway"),
        row("center without a center", &quad(&["--eval-model", "center"]), "eval.model = \"center\" needs an algorithm with a center"),
        row("batch size zero", &on_mnist("mnist", &["--batch-size", "0"]), "data.batch_size must be at least 1"),
        row("dirichlet alpha zero", &on_mnist("mnist", &["--set", "data.partition.kind=dirichlet", "--set", "data.partition.alpha=0"]), "data.partition.alpha must be positive, got 0"),
        // Unknown names and keys.
        row("unknown algorithm", &quad(&["--algorithm", "lsgdd"]), "unknown variant `lsgdd`"),
        row("unknown model", &train(&["--model", "resnet21"], &[]), "unknown variant `resnet21`"),
        row("unknown dataset", &train(&["--dataset", "imagenet"], &[]), "unknown variant `imagenet`"),
        row("unknown problem", &train(&["--problem", "rosenbrock"], &[]), "unknown variant `rosenbrock`"),
        row("unknown eval model", &quad(&["--eval-model", "best"]), "unknown variant `best`"),
        row("unknown transport", &quad(&["--transport", "carrier-pigeon"]), "carrier-pigeon"),
        row("unknown cluster", &quad(&["--cluster", "no-such-cluster"]), "--cluster no-such-cluster: neither a preset"),
        row("problem and model", &quad(&["--model", "mlp"]), "not both"),
        row("flag value does not parse", &quad(&["--workers", "four"]), "invalid value 'four' for '--workers <WORKERS>'"),
        row("unknown flag", &quad(&["--wrkers", "3"]), "unexpected argument '--wrkers'"),
        row("--set unknown top-level key", &quad(&["--set", "wrokers=3"]), "unknown field `wrokers`"),
        row("--set unknown nested key", &quad(&["--set", "optimizer.momentun=0.9"]), "unknown field `momentun`"),
        row("--set wrong type", &quad(&["--set", "workers=four"]), "invalid type: string \"four\""),
        row("--set without a value", &quad(&["--set", "workers"]), "--set expects KEY=VALUE, got \"workers\""),
        row("--set empty key part", &quad(&["--set", "algorithm..tau=3"]), "\"algorithm..tau\" is not a dotted key"),
        row("--set through a value", &quad(&["--seed", "3", "--set", "seed.x=1"]), "'seed' is a value, not a table"),
        // Experiment files.
        row("file: unknown top-level key", &quad(&["-c", "exp.toml"]), "exp.toml line 2: unknown field `wrokers`")
            .file("exp.toml", "workers = 4\nwrokers = 5\n"),
        row("file: unknown nested key", &quad(&["-c", "exp.toml"]), "exp.toml line 3: unknown field `momentun`")
            .file("exp.toml", "[optimizer]\nlr = 0.1\nmomentun = 0.9\n"),
        row("file: wrong value type", &quad(&["-c", "exp.toml"]), "exp.toml line 2: invalid type: string \"four\"")
            .file("exp.toml", "seed = 1\nworkers = \"four\"\n"),
        row("file: malformed TOML", &quad(&["-c", "exp.toml"]), "exp.toml line 3: invalid array")
            .file("exp.toml", "seed = 1\nworkers = [\n"),
        row("file: duplicate key", &quad(&["-c", "exp.toml"]), "exp.toml line 2: duplicate key")
            .file("exp.toml", "workers = 4\nworkers = 5\n"),
        row("file: wrong type names its line", &quad(&["-c", "exp.toml"]), "expected usize (at `workers = -1`)")
            .file("exp.toml", "seed = 1\nworkers = -1\n"),
        row("file: a task trained from Python", &["train", "-c", "exp.toml"], "run it from Python (peloton.run), not with peloton train")
            .file("exp.toml", "[external]\nname = \"my-cnn\"\n"),
        row("file: external with a problem", &quad(&["-c", "exp.toml"]), "[external] (a model trained from Python) excludes [problem] and [model]")
            .file("exp.toml", "[external]\nname = \"my-cnn\"\n"),
        row("file: external name with a slash", &["train", "-c", "exp.toml"], "external.name must be 1 to 64 letters")
            .file("exp.toml", "[external]\nname = \"../up\"\n"),
        row("file: external with an unknown key", &["train", "-c", "exp.toml"], "unknown field `model_name`")
            .file("exp.toml", "[external]\nname = \"x\"\nmodel_name = \"y\"\n"),
        row("file: missing", &quad(&["-c", "nowhere.toml"]), "cannot read config file nowhere.toml"),
        row("file: a directory", &quad(&["-c", "runs"]), "cannot read config file runs"),
        row("file: not UTF-8", &quad(&["-c", "exp.toml"]), "cannot read config file exp.toml")
            .file("exp.toml", b"workers = 4\n\xff\xfe\n".to_vec()),
        // Topologies that do not fit N.
        row(
            "hypercube on 6 workers",
            &dpsgd_graph("6", "algorithm.schedule.graph.kind=hypercube", &[]),
            "a hypercube needs a power-of-two number of nodes, got 6",
        ),
        row(
            "torus rows do not divide N",
            &dpsgd_graph("6", "algorithm.schedule.graph.kind=torus", &["--set", "algorithm.schedule.graph.rows=4"]),
            "torus rows = 4 does not divide 6 nodes",
        ),
        row(
            "regular degree too large",
            &dpsgd_graph("4", "algorithm.schedule.graph.kind=regular", &["--set", "algorithm.schedule.graph.degree=4"]),
            "a 4-regular graph needs more than 4 nodes, got 4",
        ),
        row(
            "graph file with another node count",
            &dpsgd_graph("4", "algorithm.schedule.graph.kind=file", &["--set", "algorithm.schedule.graph.path=\"ring3.txt\""]),
            "graph file ring3.txt has 3 nodes, but there are 4 workers",
        )
        .file("ring3.txt", "0 1\n1 2\n2 0\n"),
        row(
            "bipartite schedule on odd N",
            &quad(&["--algorithm", "d-psgd", "--workers", "7", "--set", "algorithm.schedule.kind=bipartite"]),
            "even",
        ),
        row("unknown graph", &quad(&["--algorithm", "matcha", "--set", "algorithm.graph.kind=moebius"]), "moebius"),
        row("topology show: hypercube on 6", &["topology", "show", "--graph", "hypercube", "--n", "6"], "power-of-two"),
        row(
            "simulated cluster of another size",
            &quad(&["--workers", "8", "--transport", "sim", "--set", "transport.cluster.nodes=3"]),
            "does not match the 8 workers",
        ),
        // Slow-downs and faults.
        row("--slowdown without a factor", &quad(&["--slowdown", "3"]), "--slowdown \"3\": expected WORKER=FACTOR"),
        row("--slowdown below 1", &quad(&["--slowdown", "1=0.5"]), "--slowdown \"1=0.5\": expected WORKER=FACTOR with a factor between 1 and 1e6"),
        row("--slowdown of a worker that does not exist", &quad(&["--slowdown", "9=2"]), "fault for worker 9 but the run has 4 workers"),
        row("fault of a worker that does not exist", &quad(&["-c", "exp.toml"]), "fault for worker 7 but the run has 4 workers")
            .file("exp.toml", "[transport]\nkind = \"threads\"\nfaults = [{ worker = 7, at = 0.5, kind = \"stop\" }]\n"),
        row("fault at a negative time", &quad(&["-c", "exp.toml"]), "fault time must be a non-negative number of seconds up to 1e9, got -1")
            .file("exp.toml", "[transport]\nkind = \"threads\"\nfaults = [{ worker = 1, at = -1.0, kind = \"stop\" }]\n"),
        // Dataset folders and files.
        row("mnist without a folder", &train(&["--dataset", "mnist"], &[]), "needs data.dir"),
        row("missing dataset folder", &on_mnist("nowhere", &[]), "nowhere has no train-images-idx3-ubyte"),
        row("dataset folder is a file", &on_mnist("blocker", &[]), "blocker has no train-images-idx3-ubyte"),
        row("MNIST test labels missing", &on_mnist("partial", &[]), "partial has no t10k-labels-idx1-ubyte")
            .file("partial/train-images-idx3-ubyte", images())
            .file("partial/train-labels-idx1-ubyte", labels())
            .file("partial/t10k-images-idx3-ubyte", images()),
        row("MNIST images truncated", &on_mnist("mnist", &[]), "train-images-idx3-ubyte: truncated")
            .file(TRAIN_IMAGES, images()[..1000].to_vec()),
        row("MNIST header truncated", &on_mnist("mnist", &[]), "train-images-idx3-ubyte: truncated header: 10 bytes")
            .file(TRAIN_IMAGES, images()[..10].to_vec()),
        row("MNIST images empty file", &on_mnist("mnist", &[]), "t10k-images-idx3-ubyte: truncated header: 0 bytes")
            .file(TEST_IMAGES, Vec::new()),
        // A gzip bomb: a header promising 64 labels, then 256 MiB of zeros (256 KiB
        // compressed); inflating stops one byte past the promise.
        row("MNIST labels that inflate without end", &on_mnist("mnist", &[]), "train-labels-idx1-ubyte: the header promises 64 labels (72 bytes), the file has 73 bytes")
            .file(TRAIN_LABELS, {
                let mut bomb = labels();
                bomb.truncate(8);
                bomb.resize(256 << 20, 0);
                gzip(&bomb)
            }),
        row("MNIST labels truncated", &on_mnist("mnist", &[]), "train-labels-idx1-ubyte: the header promises 64 labels")
            .file(TRAIN_LABELS, labels()[..40].to_vec()),
        row("MNIST images bad magic", &on_mnist("mnist", &[]), "train-images-idx3-ubyte: bad magic number 0x00000801")
            .file(TRAIN_IMAGES, set_word(images(), 0, 0x0801)),
        row("MNIST labels given as images", &on_mnist("mnist", &[]), "t10k-images-idx3-ubyte: bad magic number")
            .file(TEST_IMAGES, mnist_file("t10k-labels-idx1-ubyte")),
        row("MNIST dimensions disagree with the length", &on_mnist("mnist", &[]), "train-images-idx3-ubyte: has trailing bytes")
            .file(TRAIN_IMAGES, set_word(images(), 8, 20)),
        row("MNIST count disagrees with the length", &on_mnist("mnist", &[]), "train-images-idx3-ubyte: truncated: the header promises 65 images")
            .file(TRAIN_IMAGES, set_word(images(), 4, 65)),
        row("MNIST huge header dimensions", &on_mnist("mnist", &[]), "train-images-idx3-ubyte")
            .file(TRAIN_IMAGES, set_word(set_word(set_word(images(), 4, u32::MAX), 8, u32::MAX), 12, u32::MAX)),
        row("MNIST zero-sized images", &on_mnist("mnist", &[]), "train-images-idx3-ubyte: image size 0×28")
            .file(TRAIN_IMAGES, set_word(images()[..16].to_vec(), 8, 0)),
        row("MNIST fewer labels than images", &on_mnist("mnist", &[]), "holds 64 images but mnist/train-labels-idx1-ubyte holds 63 labels")
            .file(TRAIN_LABELS, mnist::encode_labels(&labels()[8..71])),
        row("MNIST label out of range", &on_mnist("mnist", &[]), "train-labels-idx1-ubyte: label 12 at byte 9 is not a digit")
            .file(TRAIN_LABELS, { let mut l = labels(); l[9] = 12; l }),
        row("MNIST corrupted gzip", &on_mnist("gz", &[]), "gz/train-images-idx3-ubyte.gz: corrupted gzip stream")
            .file("gz/train-images-idx3-ubyte.gz", { let g = gzip(&images()); g[..g.len() / 2].to_vec() })
            .file("gz/train-labels-idx1-ubyte", labels())
            .file("gz/t10k-images-idx3-ubyte", mnist_file("t10k-images-idx3-ubyte"))
            .file("gz/t10k-labels-idx1-ubyte", mnist_file("t10k-labels-idx1-ubyte")),
        row("MNIST empty training set", &on_mnist("mnist", &[]), "mnist: the mnist training set holds no images")
            .file(TRAIN_IMAGES, mnist::encode_images(28, 28, &[]))
            .file(TRAIN_LABELS, mnist::encode_labels(&[])),
        row("MNIST empty test set", &on_mnist("mnist", &[]), "mnist: the mnist test set holds no images")
            .file(TEST_IMAGES, mnist::encode_images(28, 28, &[]))
            .file(TEST_LABELS, mnist::encode_labels(&[])),
        row("MNIST images of the wrong size for the model", &on_mnist("mnist", &["--model", "lenet"]), "lenet takes 28×28 or 32×32 images, got 1×20×20")
            .file(TRAIN_IMAGES, mnist::encode_images(20, 20, &vec![0; 64 * 400]))
            .file(TEST_IMAGES, mnist::encode_images(20, 20, &vec![0; 16 * 400])),
        row("CIFAR batch truncated", &on_cifar("cifar"), "data_batch_1.bin: truncated")
            .file("cifar/data_batch_1.bin", batch()[..batch().len() - 100].to_vec()),
        row("CIFAR batch of the wrong length", &on_cifar("cifar"), "test_batch.bin: truncated: 3000 bytes is not a whole number of 3073-byte records")
            .file("cifar/test_batch.bin", vec![1; 3000]),
        row("CIFAR batch empty", &on_cifar("cifar"), "data_batch_3.bin: empty file")
            .file("cifar/data_batch_3.bin", Vec::new()),
        row("CIFAR label out of range", &on_cifar("cifar"), "data_batch_2.bin: label 10 at byte 3073 (record 1) is not a class 0-9")
            .file("cifar/data_batch_2.bin", { let mut b = cifar_file("data_batch_2.bin"); b[3073] = 10; b }),
        row("CIFAR batch missing", &on_cifar("few"), "few has no data_batch_4.bin")
            .file("few/data_batch_1.bin", batch())
            .file("few/data_batch_2.bin", batch())
            .file("few/data_batch_3.bin", batch()),
        // Run folders.
        row("run folder under a regular file", &quad(&["-o", "blocker/run"]), "cannot create run folder blocker/run"),
        row("run folder exists and is not empty", &quad(&["-o", "runs/old"]), "run folder runs/old already exists and is not empty"),
        row("run folder is a file", &quad(&["-o", "runs/old/summary.json"]), "run folder runs/old/summary.json exists but cannot be read"),
        // Losses and gradients that become infinite or NaN.
        row("quadratic diverges", &quad(&["--lr", "50", "--steps", "300"]), "diverged at step"),
        row("softmax diverges", &train(&["--problem", "softmax", "--lr", "1e30", "--steps", "300"], &[]), "diverged at step"),
        row("diverges in the simulator", &quad(&["--lr", "50", "--steps", "300", "--transport", "sim"]), "diverged at step"),
        row("network diverges", &on_mnist("mnist", &["--lr", "1e30", "--steps", "20"]), "diverged at step"),
        // Checkpoints: `peloton train --resume` of an interrupted run folder (`ck/`) whose
        // checkpoint files are damaged, of another run, or do not match its config.
        resume_row("checkpoint from another config", ckpt_sample(), "another configuration"),
        resume_row("checkpoint with a bad checksum", flipped(ckpt_sample()), "checksum mismatch"),
        resume_row("checkpoint truncated", truncated(ckpt_sample()), "truncated"),
        resume_row("checkpoint that is not one", b"not a checkpoint".to_vec(), "not a peloton checkpoint"),
        resume_row("checkpoint file missing", ckpt_sample(), "worker-0.ckpt: No such file")
            .without("ck/checkpoints/step-0000000005/worker-0.ckpt"),
        resume_row("checkpoint manifest corrupted", ckpt_sample(), "latest.json is corrupted")
            .file("ck/checkpoints/latest.json", "{\"step\": "),
        resume_row("checkpoint of another format version", ckpt_sample(), "format version 99")
            .file("ck/checkpoints/latest.json", manifest(99, CKPT_CONFIG)),
        resume_row("config edited after the checkpoint", ckpt_sample(), "changed since the checkpoint")
            .file("ck/config.toml", CKPT_CONFIG.replace("steps = 10", "steps = 11")),
        // A refused resume must leave every file as it was (the catalog checks every byte):
        // the kept metrics are read before anything is cut.
        resume_row("metrics whose first line is garbage", ckpt_sample(), "metrics.jsonl line 1 is not JSON")
            .file("ck/metrics.jsonl", "#".repeat(52) + "\n{\"type\":\"start\",\"params\":20,\"steps\":10,\"workers\":2}\n")
            .file("ck/checkpoints/latest.json", manifest_with_bytes(1, CKPT_CONFIG, 53)),
        resume_row("checkpoint that cuts a record in two", ckpt_sample(), "the checkpoint's 10 bytes end inside a record")
            .file("ck/metrics.jsonl", "{\"type\":\"start\",\"params\":20,\"steps\":10,\"workers\":2}\n")
            .file("ck/checkpoints/latest.json", manifest_with_bytes(1, CKPT_CONFIG, 10)),
        resume_row("metrics shorter than at the checkpoint", ckpt_sample(), "shorter")
            .file("ck/checkpoints/latest.json", manifest_with_bytes(1, CKPT_CONFIG, 100)),
        row("resume a run without checkpoints", &["train", "--resume", "plain"], "without checkpoints")
            .file("plain/config.toml", CKPT_CONFIG.replace("every = 5", "every = 0"))
            .file("plain/metrics.jsonl", ""),
        row("resume a run of a Python loop from the CLI", &["train", "--resume", "py"], "resume it from that loop")
            .file("py/config.toml", CKPT_CONFIG.replace("[problem]\nkind = \"quadratic\"", "[external]\nname = \"python\""))
            .file("py/metrics.jsonl", ""),
        row("resume a finished run", &["train", "--resume", "runs/old"], "finished already"),
        row("resume a folder that is not a run", &["train", "--resume", "nowhere"], "needs a run folder"),
        row("checkpoints of an asynchronous algorithm on threads", &quad(&["--algorithm", "async-easgd", "--set", "checkpoint.every=2"]), "need the simulator"),
        row(
            "checkpoints of an asynchronous run with a time budget",
            &quad(&["--algorithm", "async-easgd", "--transport", "sim", "--set", "checkpoint.every=2", "--set", "time_budget=1.0"]),
            "without time_budget",
        ),
        row(
            "checkpoints of an asynchronous run with a stop fault",
            &quad(&["--algorithm", "async-easgd", "--transport", "sim", "--set", "checkpoint.every=2", "--set", "transport.cluster.faults=[{worker=1, at=0.5, kind=\"stop\"}]"]),
            "\"stop\" faults",
        ),
        // Numbers near their types' limits (issue: hostile inputs, round 2): seconds that
        // become a Duration, step totals that overflowed, budgets that can never end, keys
        // nested past any table, and a value that smuggled a second key in on a new line.
        row("watchdog beyond any run", &quad(&["--set", "watchdog_seconds=1e20"]), "watchdog_seconds (0 turns it off) must be a positive number of seconds up to 1e9"),
        row("slowdown beyond any run", &quad(&["--slowdown", "1=1e300"]), "--slowdown \"1=1e300\": expected WORKER=FACTOR with a factor between 1 and 1e6"),
        row("time budget beyond any run", &quad(&["--time-budget", "1e300"]), "time_budget must be a positive number of seconds up to 1e9"),
        row("epochs beyond any run", &quad(&["--epochs", "1e300"]), "epochs = 1e300 can never finish"),
        row(
            "steps whose total over the workers overflows",
            &train(&["--problem", "quadratic", "--algorithm", "async-lsgd", "--workers", "8", "--steps", "4611686018427387904"], &[]),
            "steps = 4611686018427387904 is more steps than a run can ever make",
        ),
        row("a key of 5,000 parts", &quad(&["--set", Box::leak(format!("{}=1", vec!["a"; 5000].join(".")).into_boxed_str())]), "has more than 16 dotted parts"),
        row("a value with a second key on a new line", &quad(&["--set", "seed=1\nworkers = 1000000"]), "--set seed: the value must be on one line"),
        // Writes that fail: standard output on a full device.
        row("peloton list on a full device", &["list"], "cannot write to standard output").stdout_full(),
        row("--print-config on a full device", &train(&["--print-config"], &[]), "cannot write to standard output").stdout_full(),
        row("topology show on a full device", &["topology", "show", "--graph", "ring", "--n", "8"], "cannot write to standard output").stdout_full(),
        row("a run's summary on a full device", &["train", "--problem", "quadratic", "--steps", "5", "-o", "runs/full"], "cannot write to standard output").stdout_full(),
        // Writes that fail: standard error on a full device (the error line is lost; the exit
        // code is not, and nothing panics: a panic's message would fail too and exit 101).
        row("an error on a full standard error", &quad(&["--set", "workers=0"]), "").stderr_full(),
        row("a usage error on a full standard error", &["train", "--no-such-flag"], "").stderr_full(),
        row("a run's progress on a full standard error", &["train", "--problem", "quadratic", "--steps", "5", "--set", "algorithm.name=nope"], "").stderr_full(),
        // Found by the command-line fuzz target: a key that is not a key.
        row("a --set key with a line break", &quad(&["--set", "algorithm\n.tau=3"]), "is not a dotted key"),
        row("a --set key with a quote", &quad(&["--set", "a\"b=3"]), "is not a dotted key"),
        row("topology show printing for ever", &["topology", "show", "--rounds", "18446744073709551615"], "--rounds 18446744073709551615 is more than 100000"),
        row("bench of a buffer beyond memory", &["bench", "--size-mib", "100000000"], "--size-mib 100000000 is beyond 65536"),
        row("bench on more threads than a run takes", &["bench", "--workers", "2,100000"], "--workers beyond"),
        row("topology show beyond any run", &["topology", "show", "--graph", "ring", "--n", "100000"], "--n 100000 is more workers than any run takes"),
        // Model and data fields at and past their ranges.
        row("recompute over no batches", &train(&["--set", "model.recompute_batches=0"], &[("--steps", "1")]), "model.recompute_batches must be at least 1"),
        row("an MLP layer of width 0", &train(&["--model", "mlp", "--set", "model.hidden=[0]"], &[("--steps", "1")]), "model.hidden sizes must be positive"),
        row("generated data of no classes", &train(&["--set", "data.synthetic.classes=0"], &[("--steps", "1")]), "data.synthetic.classes must be in 2..=256, got 0"),
        row("generated data of more classes than a label holds", &train(&["--set", "data.synthetic.classes=1000"], &[("--steps", "1")]), "data.synthetic.classes must be in 2..=256, got 1000"),
        row("generated data without images", &train(&["--set", "data.synthetic.train=0"], &[("--steps", "1")]), "data.synthetic.train and data.synthetic.test must be at least 1"),
        row("generated data with negative noise", &train(&["--set", "data.synthetic.noise=-1"], &[("--steps", "1")]), "data.synthetic.noise must be ≥ 0, got -1"),
        row("generated data with NaN noise", &train(&["--set", "data.synthetic.noise=nan"], &[("--steps", "1")]), "data.synthetic.noise must be ≥ 0, got NaN"),
        row("generated data shifted off the image", &train(&["--set", "data.synthetic.shift=1000"], &[("--steps", "1")]), "data.synthetic.shift must be below half the image size, got 1000"),
        row("padding larger than the image", &train(&["--set", "data.augmentation={kind=\"pad-crop-flip\", pad=100000}"], &[("--steps", "1")]), "data.augmentation.pad 100000 is larger than the image"),
        row("a crop of size 0", &train(&["--set", "data.augmentation={kind=\"crop-flip\", size=0}"], &[("--steps", "1")]), "data.augmentation.size 0 does not fit 28×28 images"),
        row("evaluation on no test images", &train(&["--set", "data.test_samples=0"], &[("--steps", "1")]), "data.test_samples must be at least 1"),
        row("a negative seed", &quad(&["--set", "seed=-1"]), "expected u64"),
        row("a negative evaluation batch", &train(&["--set", "data.eval_batch_size=-5"], &[("--steps", "1")]), "expected usize"),
        row("a learning rate beyond f32", &quad(&["--set", "optimizer.lr=1e400"]), "expected f32"),
        row("simulated compute time NaN", &quad(&["--cluster", "ethernet-10g", "--set", "transport.cluster.compute.seconds=nan"]), "transport.cluster.compute.seconds must be ≥ 0, got NaN"),
        row("kernel threads beyond any machine", &train(&["--set", "model.threads=100000"], &[("--steps", "1")]), "model.threads must be between 1 and 256, got 100000"),
        // Mixed precision and memory formats: LibTorch's only; fp16 on GPUs only.
        row("bf16 on flex", &train(&["--set", "model.precision=bf16"], &[("--steps", "1")]), "model.precision = \"bf16\" needs a LibTorch device"),
        row("channels-last on flex", &train(&["--set", "model.memory_format=channels-last"], &[("--steps", "1")]), "model.memory_format = \"channels-last\" needs a LibTorch device"),
        row("fp16 on a CPU", &train(&["--device", "torch", "--set", "model.precision=fp16"], &[("--steps", "1")]), "model.precision = \"fp16\" is for GPUs"),
        row("an unknown precision", &train(&["--set", "model.precision=fp8"], &[("--steps", "1")]), "unknown variant `fp8`, expected one of `fp32`, `bf16`, `fp16`"),
        row("an unknown memory format", &train(&["--set", "model.memory_format=nhwc"], &[("--steps", "1")]), "unknown variant `nhwc`, expected `nchw` or `channels-last`"),
        row("a GPU index off the GPUs", &train(&["--set", "model.cuda_index=0"], &[("--steps", "1")]), "model.cuda_index needs model.device = \"torch-cuda\", got \"flex\""),
        row("a batch size whose total over the workers overflows", &train(&["--set", "data.batch_size=9223372036854775807"], &[("--steps", "1")]), "training samples cannot give 4 workers 9223372036854775807 samples each"),
        // Special files where a file is expected: refused at once, not read forever.
        row("a named pipe as MNIST images", &on_mnist("fifo", &[]), "fifo has no train-images-idx3-ubyte")
            .fifo("fifo/train-images-idx3-ubyte")
            .file("fifo/train-labels-idx1-ubyte", labels()),
        row("a named pipe as a CIFAR-10 batch", &on_cifar("cfifo"), "cfifo has no data_batch_1.bin").fifo("cfifo/data_batch_1.bin"),
        row("a named pipe as a run's summary", &["report", "runs/piped", "-o", "rep"], "summary.json: not a regular file")
            .file("runs/piped/metrics.jsonl", "{\"type\":\"start\",\"params\":2,\"steps\":1,\"workers\":1}\n")
            .fifo("runs/piped/summary.json"),
        row("a named pipe as the experiment file", &train(&["-c", "pipe.toml"], &[]), "pipe.toml: not a regular file").fifo("pipe.toml"),
        row(
            "a named pipe as a graph file",
            &dpsgd_graph("4", "algorithm.schedule.graph.kind=file", &["--set", "algorithm.schedule.graph.path=\"edges.txt\""]),
            "edges.txt: not a regular file",
        )
        .fifo("edges.txt"),
        // The watchdog and the divergence policy.
        row("watchdog negative", &quad(&["--set", "watchdog_seconds=-1"]), "watchdog_seconds"),
        row("watchdog NaN", &quad(&["--set", "watchdog_seconds=nan"]), "watchdog_seconds"),
        row("unknown divergence policy", &quad(&["--set", "on_divergence=\"retry\""]), "on_divergence"),
        row("reset-to-leader on an asynchronous algorithm", &quad(&["--algorithm", "async-easgd", "--set", "on_divergence=\"reset-to-leader\""]), "needs a synchronous algorithm"),
    ]
}

/// The experiment of the interrupted run `ck/`.
const CKPT_CONFIG: &str =
    "workers = 2\nsteps = 10\n\n[problem]\nkind = \"quadratic\"\n\n[checkpoint]\nevery = 5\n";

/// FNV-1a of a config file, as the CLI fingerprints `config.toml`.
fn fingerprint(text: &str) -> String {
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}")
}

fn manifest_with_bytes(version: u32, config: &str, metrics_bytes: u64) -> String {
    format!(
        "{{\"format_version\": {version}, \"step\": 5, \"metrics_bytes\": {metrics_bytes}, \"config_fingerprint\": \"{}\"}}",
        fingerprint(config)
    )
}

fn manifest(version: u32, config: &str) -> String {
    manifest_with_bytes(version, config, 0)
}

/// A valid checkpoint file of another run (its identity is not `ck/`'s).
fn ckpt_sample() -> Vec<u8> {
    peloton_core::checkpoint::sample_file()
}

fn flipped(mut bytes: Vec<u8>) -> Vec<u8> {
    let last = bytes.len() - 1;
    bytes[last] ^= 0x10;
    bytes
}

fn truncated(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes.truncate(bytes.len() - 7);
    bytes
}

/// `peloton train --resume ck`, where `ck/` is an interrupted run of [`CKPT_CONFIG`] with a
/// committed checkpoint at step 5 whose worker files are `worker_file`.
fn resume_row(name: &'static str, worker_file: Vec<u8>, expect: &'static str) -> Row {
    row(name, &["train", "--resume", "ck", "-q"], expect)
        .file("ck/config.toml", CKPT_CONFIG)
        .file("ck/metrics.jsonl", "")
        .file("ck/checkpoints/latest.json", manifest(1, CKPT_CONFIG))
        .file(
            "ck/checkpoints/step-0000000005/worker-0.ckpt",
            worker_file.clone(),
        )
        .file("ck/checkpoints/step-0000000005/worker-1.ckpt", worker_file)
}

/// Every file under `dir` and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if !path.is_file() {
                // A named pipe: reading it would block; its name is what must stay.
                files.insert(path.strip_prefix(dir).unwrap().to_path_buf(), Vec::new());
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.insert(path.strip_prefix(dir).unwrap().to_path_buf(), bytes);
            }
        }
    }
    files
}

/// The scratch folder of a row: an old run, valid datasets, a regular file `blocker`, then
/// the row's own files.
fn prepare(dir: &Path, row: &Row) {
    let write = |rel: &str, bytes: &[u8]| {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    write("runs/old/config.toml", b"workers = 4\n");
    write("runs/old/metrics.jsonl", b"{\"type\":\"start\"}\n");
    write("runs/old/summary.json", b"{\"status\": \"ok\"}\n");
    write("blocker", b"a regular file, not a folder\n");
    for (name, bytes) in &datasets().mnist {
        write(&format!("mnist/{name}"), bytes);
    }
    for (name, bytes) in &datasets().cifar {
        write(&format!("cifar/{name}"), bytes);
    }
    for (rel, bytes) in &row.files {
        write(rel, bytes);
    }
    for rel in &row.fifos {
        if let Some(parent) = dir.join(rel).parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let status = Command::new("mkfifo").arg(dir.join(rel)).status();
        assert!(status.is_ok_and(|s| s.success()), "mkfifo {rel}");
    }
}

/// Runs one row; returns what went wrong, if anything.
fn check(index: usize, row: &Row) -> Option<String> {
    let dir = common::scratch(&format!("bad-{index}"));
    prepare(&dir, row);
    let before = snapshot(&dir);
    let mut command = Command::new(env!("CARGO_BIN_EXE_peloton"));
    command
        .args(&row.args)
        .current_dir(&dir)
        .env_remove("RUST_BACKTRACE");
    if row.full_stdout {
        command.stdout(std::fs::File::create("/dev/full").expect("/dev/full"));
    }
    if row.full_stderr {
        command.stderr(std::fs::File::create("/dev/full").expect("/dev/full"));
    }
    let out = command.output().expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let mut problems = Vec::new();
    match out.status.code() {
        None => problems.push(format!("killed by a signal ({:?})", out.status)),
        Some(0) => problems.push("exit code 0".to_string()),
        Some(_) => {}
    }
    if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
        problems.push("panicked".to_string());
    }
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if row.full_stderr {
        if !matches!(out.status.code(), Some(1 | 2)) {
            problems.push(format!("exit code {:?}, not 1 or 2", out.status.code()));
        }
    } else {
        match lines.as_slice() {
            [line] if line.starts_with("error: ") => {
                if !line.contains(row.expect) {
                    problems.push(format!("the error line lacks {:?}", row.expect));
                }
            }
            _ => problems.push(format!(
                "expected one line starting with 'error: ', got {}",
                lines.len()
            )),
        }
    }
    let after = snapshot(&dir);
    for (path, bytes) in &before {
        match after.get(path) {
            None => problems.push(format!("{} was removed", path.display())),
            Some(b) if b != bytes => problems.push(format!("{} was changed", path.display())),
            Some(_) => {}
        }
    }
    // A run that got as far as creating its folder says in its summary that it failed.
    let new_run = dir.join("runs/new");
    if new_run.exists() && !before.keys().any(|p| p.starts_with("runs/new")) {
        let summary = std::fs::read_to_string(new_run.join("summary.json")).unwrap_or_default();
        if !summary.contains("\"status\": \"failed\"") {
            problems.push(format!(
                "runs/new/summary.json does not say failed: {summary:?}"
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    (!problems.is_empty()).then(|| {
        format!(
            "row {index} '{}' (peloton {}): {}\n  stderr: {}",
            row.name,
            row.args.join(" "),
            problems.join("; "),
            stderr.trim_end().replace('\n', "\n          ")
        )
    })
}

#[test]
fn the_catalog_is_large_and_its_names_are_unique() {
    let rows = catalog();
    assert!(rows.len() >= 200, "only {} rows", rows.len());
    let mut names: Vec<&str> = rows.iter().map(|r| r.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), rows.len(), "two rows share a name");
}

#[test]
fn every_bad_input_ends_with_one_clear_line_and_damages_nothing() {
    let rows = catalog();
    let failures: Vec<String> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| check(i, r))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs were not handled cleanly:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}
