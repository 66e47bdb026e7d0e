//! Compressed communication on a quadratic, through the compression layer every algorithm
//! talks through (`[compression]`) and through CHOCO-SGD's own compressed gossip:
//!
//! * CHOCO-SGD with top-1% corrections reaches the optimum, where naive top-1% gossip does
//!   not: D-PSGD whose gossip the layer compresses (x_i ← W_ii·x_i + Σ_j W_ij·Q(x_j)) makes its
//!   compression error afresh every round, and it never averages out;
//! * all-reduce SGD with fp16, bf16, int8, top-k (with error feedback) and PowerSGD ends where
//!   the uncompressed run does, sending ÷2 to ÷20 fewer bytes;
//! * the same config and seed give the same bits; PowerSGD refuses an algorithm whose
//!   model-sized messages are not gradient all-reduces, with one line.

mod common;

use peloton_compression::CompressionConfig;
use peloton_core::algorithms::all_reduce::AllReduceConfig;
use peloton_core::algorithms::choco::ChocoConfig;
use peloton_core::algorithms::dpsgd::DpsgdConfig;
use peloton_core::algorithms::lsgd::LsgdConfig;
use peloton_core::algorithms::AlgorithmConfig;
use peloton_core::runner::{run_threads, EvalModel, RunConfig, RunReport};
use peloton_problems::{ProblemConfig, QuadraticConfig, SoftmaxConfig};

fn compression(text: &str) -> CompressionConfig {
    let c: CompressionConfig = toml::from_str(text).expect("a [compression] table");
    c.validate().expect("valid");
    c
}

fn quadratic() -> ProblemConfig {
    ProblemConfig::Quadratic(QuadraticConfig {
        dim: 100,
        noise: 0.2,
        ..Default::default()
    })
}

fn worst_excess(algorithm: AlgorithmConfig, compression: CompressionConfig, steps: u64) -> f64 {
    let mut config = common::config(8, steps, algorithm, common::sgd(0.05));
    config.eval_model = EvalModel::Workers;
    config.compression = compression;
    let report = common::run(&config, &quadratic());
    report
        .final_evals
        .iter()
        .map(|e| e.eval.loss)
        .fold(0.0, f64::max)
}

#[test]
fn choco_with_top_1_percent_converges_where_naive_top_1_percent_gossip_stalls() {
    // 100 parameters: top-1% sends one coordinate per message.
    let choco = worst_excess(
        AlgorithmConfig::new(ChocoConfig::default()),
        CompressionConfig::default(),
        3000,
    );
    let naive = worst_excess(
        AlgorithmConfig::new(DpsgdConfig::default()),
        compression("kind = \"topk\"\nfraction = 0.01\nerror_feedback = false"),
        3000,
    );
    eprintln!("worst worker's f − f*: choco {choco}, naive {naive}");
    assert!(choco < 0.05, "CHOCO-SGD ends at f − f* = {choco}");
    assert!(
        naive > 10.0 * choco,
        "naive compressed gossip ends at f − f* = {naive}"
    );
}

#[test]
fn choco_converges_on_time_varying_schedules_too() {
    // Public copies of every union-graph neighbour, mixed with each round's weights.
    for schedule in ["kind = \"bipartite\"", "kind = \"exponential\"\npeers = 1"] {
        let choco = ChocoConfig {
            schedule: toml::from_str(schedule).unwrap(),
            ..Default::default()
        };
        let excess = worst_excess(
            AlgorithmConfig::new(choco),
            CompressionConfig::default(),
            3000,
        );
        eprintln!("{schedule:?}: worst worker's f − f* = {excess}");
        assert!(
            excess < 0.05,
            "{schedule}: CHOCO-SGD ends at f − f* = {excess}"
        );
    }
}

fn softmax_run(compression: CompressionConfig, seed: u64) -> RunReport {
    let problem = ProblemConfig::Softmax(SoftmaxConfig::default());
    let mut config: RunConfig = common::config(
        4,
        400,
        AlgorithmConfig::new(AllReduceConfig::default()),
        common::sgd(0.2),
    );
    config.seed = seed;
    config.compression = compression;
    run_threads(&config, &problem, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn compressed_all_reduce_ends_where_the_exact_one_does_in_fewer_bytes() {
    let exact = softmax_run(CompressionConfig::default(), 5);
    let loss = |r: &RunReport| r.final_evals[0].eval.loss;
    let sent = |r: &RunReport| r.workers[0].stats.bytes_sent as f64;
    // (kind, the least ratio of fp32 to compressed bytes, the largest loss gap)
    for (text, least_ratio, gap) in [
        ("kind = \"fp16\"", 1.9, 0.01),
        ("kind = \"bf16\"", 1.9, 0.02),
        ("kind = \"int8\"", 3.5, 0.02),
        ("kind = \"topk\"\nfraction = 0.05", 8.0, 0.05),
        ("kind = \"powersgd\"\nrank = 2", 2.0, 0.05),
    ] {
        let run = softmax_run(compression(text), 5);
        let stats = run.workers[0].compression.expect("the layer's counters");
        eprintln!(
            "{text:?}: loss {} (exact {}), ratio {:.2}, bytes {} vs {}",
            loss(&run),
            loss(&exact),
            stats.ratio(),
            sent(&run),
            sent(&exact)
        );
        assert!(
            stats.ratio() >= least_ratio,
            "{text}: ratio {}",
            stats.ratio()
        );
        assert!(sent(&run) * least_ratio <= sent(&exact) * 1.01, "{text}");
        assert!(
            loss(&run) <= loss(&exact) + gap,
            "{text}: loss {} against {}",
            loss(&run),
            loss(&exact)
        );
        // Every worker holds the same model: compressed all-reduces give everyone the same bits.
        assert!(run
            .workers
            .iter()
            .all(|w| w.params == run.workers[0].params));
        let again = softmax_run(compression(text), 5);
        assert_eq!(
            again.workers[0].params, run.workers[0].params,
            "{text}: determinism"
        );
    }
}

#[test]
fn powersgd_refuses_an_algorithm_that_sends_models() {
    let mut config = common::config(
        4,
        20,
        AlgorithmConfig::new(LsgdConfig::default()),
        common::sgd(0.1),
    );
    config.compression = compression("kind = \"powersgd\"");
    let problem = ProblemConfig::Softmax(SoftmaxConfig::default());
    let e = run_threads(&config, &problem, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("compresses gradient all-reduces only, and lsgd sends a model-sized broadcast"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    // Limited to gradients, LSGD runs, and nothing of it is compressed.
    config.compression = compression("kind = \"powersgd\"\napply_to = [\"gradients\"]");
    let report = run_threads(&config, &problem, &mut |_| {}).unwrap();
    assert_eq!(report.workers[0].compression.unwrap().operations, 0);
}
