//! Checksums of whole runs, recorded before the algorithm registry restructuring (issue 20) and
//! kept since (algorithms added later, at the end of the table, recorded when they were added): every algorithm, written as a config file writes it, runs 30 steps of a small
//! softmax problem on the simulator (deterministic for synchronous and asynchronous algorithms
//! alike, jittered compute times, evaluations and consensus on) and the run's every number is
//! hashed: each event (virtual times included), each worker's final parameters, losses, traffic,
//! per-link traffic, center, leader changes and shared state.
//!
//! A change in any algorithm's arithmetic, communication order, config defaults or reporting
//! shows up here. When a change is meant to alter results, rerun with
//! `PELOTON_RECORD_GOLDEN=1 cargo test -p peloton-sim --test golden -- --nocapture` and paste
//! the printed table, saying why in the commit.

use peloton_core::algorithms::AlgorithmConfig;
use peloton_core::optim::OptimizerConfig;
use peloton_core::runner::{EvalModel, Event, RunConfig, RunReport};
use peloton_problems::{ProblemConfig, SoftmaxConfig};
use peloton_sim::{run_sim, ClusterConfig, ComputeModel};

/// (algorithm table as in a config file, evaluation model, Nesterov momentum, checksum).
const GOLDEN: &[(&str, EvalModel, bool, u64)] = &[
    (r#"name = "independent""#, EvalModel::Workers, false, 0x69cdf9ca0b5aded2),
    (r#"name = "all-reduce""#, EvalModel::Average, false, 0xafcf00ddab7e11fc),
    (r#"name = "local-sgd""#, EvalModel::Average, false, 0x48ecf20b2123013d),
    (
        "name = \"local-sgd\"\nperiod = 3\nwarmup_steps = 8\ngroup_size = 2",
        EvalModel::Average,
        false,
        0xcba75f8fa8ac9f1b,
    ),
    ("name = \"easgd\"\ntau = 2\nbeta = 0.8", EvalModel::Center, false, 0xef1240f075cac8b0),
    ("name = \"eamsgd\"\nalpha = 0.1", EvalModel::Center, true, 0xa72b67e0a9c007d3),
    (r#"name = "lsgd""#, EvalModel::Leader, false, 0xc49dc537ff60faf0),
    (
        "name = \"lsgd\"\ntau = 3\nlambda = 0.2\nprox = 0.01\ngroup_size = 2\ntau_global = 6\nlambda_global = 0.3",
        EvalModel::Average,
        true,
        0x22925bad5ccfc99c,
    ),
    (r#"name = "d-psgd""#, EvalModel::Workers, false, 0xd0be28f4db5b3e83),
    (
        "name = \"d-psgd\"\nvariant = \"combine-while-computing\"",
        EvalModel::Average,
        false,
        0x322b4ea609c4159f,
    ),
    (r#"name = "sgp""#, EvalModel::Workers, false, 0xbecedebaa5c674ba),
    (
        "name = \"sgp\"\noverlap = true\nstaleness = 2\neager = true",
        EvalModel::Average,
        false,
        0x039cf96270dc492e,
    ),
    ("name = \"matcha\"\nbudget = 0.5", EvalModel::Workers, false, 0x9ae690cf9ce8bad7),
    (r#"name = "al-dsgd""#, EvalModel::Average, false, 0xcdd53cb40e6c209d),
    ("name = \"layered-sgd\"\ngroup_size = 2", EvalModel::Average, false, 0xf5d5d5866ac0d3ce),
    (r#"name = "slowmo""#, EvalModel::Average, false, 0x53301f9fdaa177d8),
    (
        "name = \"slowmo\"\nbase = \"sgp\"\nfrequency = 6\nsharded = true",
        EvalModel::Average,
        false,
        0xf3330d651fa472bc,
    ),
    ("name = \"async-lsgd\"\ntau = 2\nlambda = 0.2", EvalModel::Leader, false, 0xa3dde8da1df4a6b5),
    (
        "name = \"async-lsgd\"\ntau = 2\ngroup_size = 2\ntau_global = 4",
        EvalModel::Average,
        false,
        0xf19fe55f8aa46b20,
    ),
    ("name = \"async-easgd\"\ntau = 2\nservers = 2", EvalModel::Center, false, 0x9c5a4b91f424d675),
    ("name = \"async-eamsgd\"\ntau = 3", EvalModel::Average, true, 0x9b6993efdb9d36b4),
    (r#"name = "ad-psgd""#, EvalModel::Average, false, 0xfda406319cede410),
    (r#"name = "choco-sgd""#, EvalModel::Workers, false, 0xb135c50bbc4995a2),
    (
        "name = \"choco-sgd\"\ngamma = 0.5\n[compression]\nkind = \"int8\"\nblock = 4",
        EvalModel::Average,
        false,
        0x5a063b3d1936b8d6,
    ),
];

fn problem() -> ProblemConfig {
    ProblemConfig::Softmax(SoftmaxConfig {
        classes: 4,
        features: 6,
        train_samples: 400,
        test_samples: 100,
        batch_size: 8,
        ..Default::default()
    })
}

fn cluster() -> ClusterConfig {
    let mut cluster = ClusterConfig {
        workers_per_node: 2,
        compute: ComputeModel {
            seconds: 0.01,
            ..Default::default()
        },
        ..Default::default()
    };
    cluster.compute.sigma = 0.3;
    cluster.compute.straggler_probability = 0.1;
    cluster
}

fn run_config(algorithm: AlgorithmConfig, eval_model: EvalModel, nesterov: bool) -> RunConfig {
    RunConfig {
        workers: 4,
        seed: 11,
        steps: Some(30),
        log_every: 5,
        eval_every: 10,
        eval_model,
        optimizer: OptimizerConfig {
            lr: 0.2,
            momentum: if nesterov { 0.9 } else { 0.0 },
            nesterov,
            ..Default::default()
        },
        algorithm,
        ..Default::default()
    }
}

/// The bytes a run is judged by, hashed with peloton's own FNV-1a (stable across Rust
/// versions and platforms; std's hasher is neither).
#[derive(Default)]
struct Bytes(Vec<u8>);

impl Bytes {
    fn bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
    fn f32s(&mut self, values: &[f32]) {
        for v in values {
            self.bytes(&v.to_bits().to_le_bytes());
        }
    }
    fn f64s(&mut self, values: &[f64]) {
        for v in values {
            self.bytes(&v.to_bits().to_le_bytes());
        }
    }
    fn hash(self) -> u64 {
        peloton_core::layout::fnv1a(self.0)
    }
}

fn checksum(events: &[Event], report: &RunReport) -> u64 {
    let mut h = Bytes::default();
    for event in events {
        h.bytes(format!("{event:?}").as_bytes());
    }
    for w in &report.workers {
        h.f32s(&w.params);
        h.f64s(&w.losses);
        h.f32s(&w.shared_state);
        h.f32s(w.center.as_deref().unwrap_or(&[]));
        h.f64s(&[w.metric]);
        h.bytes(
            format!(
                "{:?}{:?}{:?}{}",
                w.stats, w.links, w.leader_changes, w.steps
            )
            .as_bytes(),
        );
    }
    h.bytes(format!("{:?}", report.final_evals).as_bytes());
    h.hash()
}

#[test]
fn every_algorithm_gives_the_recorded_run() {
    let record = std::env::var_os("PELOTON_RECORD_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for &(table, eval_model, nesterov, expected) in GOLDEN {
        let algorithm: AlgorithmConfig =
            toml::from_str(table).unwrap_or_else(|e| panic!("{table}: {e}"));
        let config = run_config(algorithm, eval_model, nesterov);
        let mut events = Vec::new();
        let (report, sim, _) = run_sim(&config, &cluster(), &problem(), &mut |e| {
            events.push(e.clone())
        })
        .unwrap_or_else(|e| panic!("{table}: {e}"));
        assert!(sim.simulated_seconds > 0.0);
        let got = checksum(&events, &report);
        if record {
            println!("{table:?} {eval_model:?} {nesterov} 0x{got:016x}");
        } else if got != expected {
            mismatches.push(format!(
                "{table:?}: 0x{got:016x}, recorded 0x{expected:016x}"
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "runs differ from the recorded ones:\n{}",
        mismatches.join("\n")
    );
}

/// How each algorithm table is written back (a run folder's `config.toml`, whose bytes the
/// checkpoints' config fingerprint hashes, and JSON), recorded before the restructuring: the
/// name first, then the keys in the config's order.
const WRITTEN: &[u64] = &[
    0x5485b59edbd7d995,
    0x60987f6c6c7b177d,
    0xccc7f9c7143b2df9,
    0x10d27f920240aa36,
    0xeecc36f8561a5994,
    0x59aee4d2a61c7975,
    0x0d1a6de53f137a97,
    0x3dbc1549f20a5455,
    0x5006468402200142,
    0x1c57b232581a312a,
    0xf10f0aead3eba04b,
    0x61165af9eb29f959,
    0x7516d30cd76748f6,
    0xd012caa152d17d6a,
    0x44d8cd7911d0f380,
    0xc54f1f0919be10bf,
    0xbfb19c8dcb5a5051,
    0xca60004f6c6be6f0,
    0x4e577955bbdf1f37,
    0xde38c03cc171280d,
    0x416103f64084335c,
    0x68e04f29e56cdb81,
    0xf5358254a4fe7bf5,
    0xe6b776cbfc090185,
];

#[test]
fn every_algorithm_config_is_written_as_recorded() {
    #[derive(serde::Serialize)]
    struct File<'a> {
        workers: usize,
        algorithm: &'a AlgorithmConfig,
    }
    let record = std::env::var_os("PELOTON_RECORD_GOLDEN").is_some();
    let mut got = Vec::new();
    for &(table, ..) in GOLDEN {
        let algorithm: AlgorithmConfig = toml::from_str(table).unwrap();
        let text = toml::to_string(&File {
            workers: 4,
            algorithm: &algorithm,
        })
        .unwrap();
        let json = serde_json::to_string(&algorithm).unwrap();
        let back: AlgorithmConfig = toml::from_str(&toml::to_string(&algorithm).unwrap()).unwrap();
        assert_eq!(back, algorithm, "{table}: round trip");
        let mut h = Bytes::default();
        h.bytes(text.as_bytes());
        h.bytes(json.as_bytes());
        let h = h.hash();
        if record {
            println!("{text}{json}\n0x{h:016x}\n");
        }
        got.push(h);
    }
    if !record {
        assert_eq!(got, WRITTEN);
    }
}

/// Runs under the compression layer (issue 25), recorded when it was added: (algorithm table,
/// `[compression]` table, evaluation model, checksum). The layer's counters are hashed too.
const GOLDEN_COMPRESSED: &[(&str, &str, EvalModel, u64)] = &[
    (
        r#"name = "all-reduce""#,
        "kind = \"int8\"\nblock = 4",
        EvalModel::Average,
        0xc1859590b81c9260,
    ),
    (
        r#"name = "all-reduce""#,
        "kind = \"powersgd\"\nrank = 1",
        EvalModel::Average,
        0x353351655ad20116,
    ),
    (
        r#"name = "d-psgd""#,
        "kind = \"topk\"\nfraction = 0.25",
        EvalModel::Workers,
        0xdc59a22ec57db753,
    ),
    (
        r#"name = "lsgd""#,
        "kind = \"bf16\"",
        EvalModel::Leader,
        0x5ddf8b4e60b0d268,
    ),
    (
        "name = \"sgp\"\noverlap = true",
        "kind = \"fp16\"",
        EvalModel::Workers,
        0x9c52127d4add3f57,
    ),
    (
        r#"name = "ad-psgd""#,
        "kind = \"randomk\"\nfraction = 0.5",
        EvalModel::Workers,
        0x79d0ac9db396ef4d,
    ),
];

#[test]
fn compressed_runs_give_the_recorded_run() {
    let record = std::env::var_os("PELOTON_RECORD_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for &(table, compression, eval_model, expected) in GOLDEN_COMPRESSED {
        let algorithm: AlgorithmConfig = toml::from_str(table).unwrap();
        let mut config = run_config(algorithm, eval_model, false);
        config.compression = toml::from_str(compression).unwrap();
        let mut events = Vec::new();
        let (report, _, _) = run_sim(&config, &cluster(), &problem(), &mut |e| {
            events.push(e.clone())
        })
        .unwrap_or_else(|e| panic!("{table} {compression}: {e}"));
        let mut h = Bytes::default();
        h.bytes(&checksum(&events, &report).to_le_bytes());
        for w in &report.workers {
            h.bytes(format!("{:?}", w.compression).as_bytes());
        }
        let got = h.hash();
        if record {
            println!("{table:?} {compression:?} {eval_model:?} 0x{got:016x}");
        } else if got != expected {
            mismatches.push(format!(
                "{table:?} {compression:?}: 0x{got:016x}, recorded 0x{expected:016x}"
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "runs differ from the recorded ones:\n{}",
        mismatches.join("\n")
    );
}
