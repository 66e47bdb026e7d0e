//! Compressed gossip on a quadratic: CHOCO-SGD with top-1% corrections reaches the optimum,
//! where naive top-1% gossip (x_i ← Σ_j W_ij·Q(x_j), defined below) does not: its compression
//! error is made afresh every round and never averages out.

mod common;

use peloton_compression::{self as compression, Compressor, TopK};
use peloton_core::algorithms::choco::ChocoConfig;
use peloton_core::algorithms::{
    Algorithm, AlgorithmConfig, AlgorithmSpec, RunShape, StepContext, Synchronous,
};
use peloton_core::runner::EvalModel;
use peloton_core::Result;
use peloton_problems::{ProblemConfig, QuadraticConfig};
use serde::{Deserialize, Serialize};

/// Naive compressed gossip on a ring, ⅓ to self and to each neighbour: every worker sends
/// Q(x_i) and mixes x_i ← ⅓·x_i + ⅓·Q(x_left) + ⅓·Q(x_right).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct NaiveConfig {
    fraction: f64,
}

struct Naive {
    topk: TopK,
    message: Vec<u8>,
    words: Vec<f32>,
    incoming: Vec<f32>,
    mixed: Vec<f32>,
}

impl AlgorithmSpec for NaiveConfig {
    const NAME: &'static str = "test-naive-compressed-gossip";
    const SUMMARY: &'static str = "naive top-k gossip (a test's baseline)";
    type Timing = Synchronous;
    fn build(&self, _: &RunShape<'_>, len: usize) -> Result<Box<dyn Algorithm>> {
        Ok(Box::new(Naive {
            topk: TopK::new(self.fraction),
            message: Vec::new(),
            words: Vec::new(),
            incoming: vec![0.0; len],
            mixed: vec![0.0; len],
        }))
    }
}

impl Algorithm for Naive {
    fn after_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        let (rank, n) = (ctx.comm.rank(), ctx.comm.size());
        let (left, right) = ((rank + n - 1) % n, (rank + 1) % n);
        self.topk.encode(ctx.params, &mut self.message);
        compression::to_words(&self.message, &mut self.words);
        let a = ctx.comm.isend(left, 0x7001, &self.words)?;
        let b = ctx.comm.isend(right, 0x7002, &self.words)?;
        for (i, x) in self.mixed.iter_mut().zip(ctx.params.iter()) {
            *i = x / 3.0;
        }
        let mut words = vec![0.0f32; self.words.len()];
        for (peer, tag) in [(right, 0x7001), (left, 0x7002)] {
            ctx.comm.recv(peer, tag, &mut words)?;
            compression::from_words(&words, self.message.len(), &mut self.message);
            self.topk
                .decode(&self.message, &mut self.incoming)
                .expect("a top-k message");
            for (m, q) in self.mixed.iter_mut().zip(&self.incoming) {
                *m += q / 3.0;
            }
        }
        ctx.comm.wait_send(a)?;
        ctx.comm.wait_send(b)?;
        ctx.params.copy_from_slice(&self.mixed);
        Ok(())
    }
}

fn worst_excess(algorithm: AlgorithmConfig, steps: u64) -> f64 {
    let problem = ProblemConfig::Quadratic(QuadraticConfig {
        dim: 100,
        noise: 0.2,
        ..Default::default()
    });
    let mut config = common::config(8, steps, algorithm, common::sgd(0.05));
    config.eval_model = EvalModel::Workers;
    let report = common::run(&config, &problem);
    report
        .final_evals
        .iter()
        .map(|e| e.eval.loss)
        .fold(0.0, f64::max)
}

#[test]
fn choco_with_top_1_percent_converges_where_naive_top_1_percent_gossip_stalls() {
    // 100 parameters: top-1% sends one coordinate per message.
    let choco = worst_excess(AlgorithmConfig::new(ChocoConfig::default()), 3000);
    let naive = worst_excess(AlgorithmConfig::new(NaiveConfig { fraction: 0.01 }), 3000);
    eprintln!("worst worker's f − f*: choco {choco}, naive {naive}");
    assert!(choco < 0.05, "CHOCO-SGD ends at f − f* = {choco}");
    assert!(
        naive > 10.0 * choco,
        "naive compressed gossip ends at f − f* = {naive}"
    );
}
