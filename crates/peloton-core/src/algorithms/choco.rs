//! CHOCO-SGD (Koloskova, Stich, Jaggi, ICML 2019, Algorithm 1 in its memory-efficient form):
//! decentralized SGD whose gossip messages are compressed, and which still converges.
//!
//! Naive compressed gossip, `x_i ← Σ_j W_ij·Q(x_j)`, stalls: the compression error is made
//! afresh every round and never averages out. CHOCO gossips *public copies* x̂ instead, which
//! every neighbour of a worker holds identically, and sends only a compressed correction:
//!
//! ```text
//! x_i ← x_i − η·g_i                              (the local optimizer's step)
//! q_i = Q(x_i − x̂_i);  send q_i to every neighbour, receive their q_j
//! x̂_j ← x̂_j + q_j  for j ∈ N(i) ∪ {i}           (kept as s_i = Σ_j W_ij·x̂_j)
//! x_i ← x_i + γ·(s_i − x̂_i)                     (consensus step, size γ)
//! ```
//!
//! As x and x̂ approach each other the corrections shrink, so the compression error vanishes
//! with them. Any compressor of `peloton-compression` serves as Q (`[algorithm.compression]`,
//! default top-1%); its messages travel as their encoded bytes.
//!
//! Every public copy must hear every correction. On a static graph (the default: a ring) a
//! worker keeps only x̂_i and s_i, two model-sized vectors. On a time-varying schedule
//! (one-peer exponential, bipartite, MATCHA, …) the weights change every round, so a worker
//! keeps x̂_j of every neighbour of the schedule's union graph, hears every correction on it,
//! and mixes with this round's weights: s_i = W_ii(t)·x̂_i + Σ_j W_ij(t)·x̂_j (memory: one copy
//! per union neighbour; the union is what the schedule's links can ever use).
//!
//! Communication: one encoded message (e.g. 8 bytes per kept value for top-k) to and from
//! every neighbour (of the union graph, for a time-varying schedule) per step.

use peloton_compression::{self as compression, CompressionConfig, Compressor, KindName};
use peloton_topology::{NodeRound, Protocol, Schedule, ScheduleConfig};
use serde::{Deserialize, Serialize};

use super::dpsgd::{build_checked, default_schedule};
use super::gossip::LinkStats;
use super::{Algorithm, AlgorithmSpec, Observation, RunShape, StepContext, Synchronous, Touches};
use crate::checkpoint::StateDict;
use crate::transport::{Communicator, Tag};
use crate::{ensure_config, kernels, Result};

/// Tag of CHOCO's compressed corrections.
pub const TAG_CHOCO: Tag = 0x6056;

/// `name = "choco-sgd"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChocoConfig {
    /// A static graph with doubly-stochastic weights (default: a ring, Metropolis–Hastings).
    #[serde(default = "default_schedule")]
    pub schedule: ScheduleConfig,
    /// γ, the consensus step size (default 0.1).
    #[serde(default = "default_gamma")]
    pub gamma: f32,
    /// Q, the compressor of the corrections: `kind` defaults to top-k (with its default
    /// fraction, 1%).
    #[serde(default, skip_serializing_if = "CompressionConfig::is_empty")]
    pub compression: CompressionConfig,
}

fn default_gamma() -> f32 {
    0.1
}

impl Default for ChocoConfig {
    fn default() -> Self {
        ChocoConfig {
            schedule: default_schedule(),
            gamma: default_gamma(),
            compression: CompressionConfig::default(),
        }
    }
}

impl ChocoConfig {
    /// The compression with its kind filled in (top-k where the table leaves it out).
    pub fn compression(&self) -> CompressionConfig {
        self.compression.or_kind(KindName::Topk)
    }

    fn schedule(&self, workers: usize, seed: u64) -> Result<Schedule> {
        build_checked(&self.schedule, workers, seed, Protocol::DoublyStochastic)
    }

    /// Checks every key against a run of `workers` and returns the (static) schedule.
    pub fn checked(&self, workers: usize, seed: u64) -> Result<Schedule> {
        ensure_config!(
            self.gamma > 0.0 && self.gamma <= 1.0,
            "algorithm.gamma must be in (0, 1], got {}",
            self.gamma
        );
        let q = self.compression();
        q.validate().map_err(|e| {
            crate::Error::Config(e.replacen("compression.", "algorithm.compression.", 1))
        })?;
        ensure_config!(
            q.kind() != KindName::Powersgd,
            "algorithm.compression.kind = \"powersgd\" does not apply to choco-sgd: PowerSGD compresses all-reduces, CHOCO gossips (choose fp16, bf16, int8, topk or randomk)"
        );
        ensure_config!(
            q.error_feedback.is_none() && q.apply_to.is_none(),
            "algorithm.compression.error_feedback and apply_to do not apply to choco-sgd: its public copies carry the compression error forward themselves"
        );
        self.schedule(workers, seed)
    }

    /// One worker's state on `schedule` (from [`ChocoConfig::checked`]). x̂ starts at 0 on
    /// every worker, as in the paper: the first corrections carry x.
    pub fn worker(&self, schedule: Schedule, len: usize, seed: u64) -> Choco {
        Choco {
            schedule,
            gamma: self.gamma,
            compressor: compression::build(&self.compression().resolved(), seed),
            node: None,
            union: None,
            public: vec![0.0; len],
            mixed: vec![0.0; len],
            correction: vec![0.0; len],
            incoming: vec![0.0; len],
            received: Vec::new(),
            message: Vec::new(),
            words: Vec::new(),
            links: LinkStats::default(),
        }
    }
}

impl AlgorithmSpec for ChocoConfig {
    const NAME: &'static str = "choco-sgd";
    const SUMMARY: &'static str =
        "decentralized SGD with compressed gossip through public copies (top-1% by default)";
    type Timing = Synchronous;

    fn validate(&self, run: &RunShape<'_>) -> Result<()> {
        self.checked(run.workers, run.seed).map(drop)
    }

    fn build(&self, run: &RunShape<'_>, len: usize) -> Result<Box<dyn Algorithm>> {
        let schedule = self.checked(run.workers, run.seed)?;
        Ok(Box::new(self.worker(schedule, len, run.seed)))
    }

    fn variants() -> Vec<Self> {
        vec![
            ChocoConfig {
                compression: CompressionConfig {
                    kind: Some(KindName::Int8),
                    block: Some(64),
                    ..Default::default()
                },
                gamma: 0.5,
                ..Default::default()
            },
            // A time-varying schedule: public copies of the union graph's neighbours.
            ChocoConfig {
                schedule: ScheduleConfig::Bipartite {},
                compression: CompressionConfig {
                    kind: Some(KindName::Fp16),
                    ..Default::default()
                },
                gamma: 0.5,
            },
        ]
    }
}

/// One worker's CHOCO-SGD state.
pub struct Choco {
    schedule: Schedule,
    gamma: f32,
    /// `None`: exact corrections (`compression.kind = "none"`).
    compressor: Option<Box<dyn Compressor>>,
    /// This worker's round of the static graph (made at the first step, when the rank is
    /// known).
    node: Option<NodeRound>,
    /// A time-varying schedule's union neighbourhood and their public copies (made at the
    /// first step).
    union: Option<Union>,
    /// x̂_i, this worker's public copy.
    public: Vec<f32>,
    /// s_i = Σ_j W_ij·x̂_j over the neighbours and itself.
    mixed: Vec<f32>,
    /// Scratch: q_i decoded, then each neighbour's q_j.
    correction: Vec<f32>,
    incoming: Vec<f32>,
    /// Scratch: a neighbour's message as received.
    received: Vec<f32>,
    message: Vec<u8>,
    words: Vec<f32>,
    links: LinkStats,
}

/// A worker's neighbours on a time-varying schedule's union graph, and their public copies.
struct Union {
    /// Workers this one sends its corrections to (every round), sorted.
    out: Vec<usize>,
    /// Workers it hears, sorted, with x̂_j of each.
    copies: Vec<(usize, Vec<f32>)>,
}

impl Union {
    fn new(schedule: &Schedule, rank: usize, len: usize) -> Self {
        let links = schedule.links();
        Union {
            out: links
                .iter()
                .filter(|&&(from, to)| from == rank && to != rank)
                .map(|&(_, to)| to)
                .collect(),
            copies: links
                .iter()
                .filter(|&&(from, to)| to == rank && from != rank)
                .map(|&(from, _)| (from, vec![0.0; len]))
                .collect(),
        }
    }
}

impl Choco {
    /// One exchange on a time-varying schedule: q_i to every union neighbour, every q_j into
    /// x̂_j, then s_i with round `step`'s weights.
    fn exchange_union(
        &mut self,
        comm: &mut dyn Communicator,
        union: &mut Union,
        step: u64,
    ) -> Result<()> {
        let mut sends = Vec::with_capacity(union.out.len());
        for &peer in &union.out {
            sends.push(comm.isend(peer, TAG_CHOCO, &self.words)?);
            self.links.sent_to(peer, self.words.len());
        }
        kernels::axpy(&mut self.public, 1.0, &self.correction);
        self.received.resize(self.words.len(), 0.0);
        for (peer, copy) in &mut union.copies {
            comm.recv(*peer, TAG_CHOCO, &mut self.received)?;
            self.links.received_from(*peer, self.received.len());
            self.expand()?;
            kernels::axpy(copy, 1.0, &self.incoming);
        }
        for request in sends {
            comm.wait_send(request)?;
        }
        // s_i with this round's weights: its own copy first, then its peers in rank order.
        let node = self.schedule.node(step, comm.rank());
        self.mixed.iter_mut().for_each(|m| *m = 0.0);
        kernels::axpy(&mut self.mixed, node.self_weight as f32, &self.public);
        for &(peer, weight) in &node.recv {
            let copy = union
                .copies
                .iter()
                .find(|(j, _)| *j == peer)
                .map(|(_, c)| c)
                .ok_or_else(|| {
                    crate::Error::Transport(format!(
                        "choco-sgd: worker {peer} mixes into worker {} but is not in its union graph",
                        comm.rank()
                    ))
                })?;
            kernels::axpy(&mut self.mixed, weight as f32, copy);
        }
        Ok(())
    }

    /// q = Q(x − x̂) into `self.correction` (what every receiver decodes) and `self.words`
    /// (what is sent).
    fn compress(&mut self, params: &[f32]) -> Result<()> {
        kernels::sub_into(&mut self.correction, params, &self.public);
        match &mut self.compressor {
            Some(c) => {
                c.encode(&self.correction, &mut self.message);
                compression::to_words(&self.message, &mut self.words);
                c.decode(&self.message, &mut self.correction)
                    .map_err(|e| crate::Error::Transport(e.to_string()))
            }
            None => {
                self.words.clear();
                self.words.extend_from_slice(&self.correction);
                Ok(())
            }
        }
    }

    /// Decodes the neighbour's message in `self.received` into `self.incoming`.
    fn expand(&mut self) -> Result<()> {
        match &self.compressor {
            Some(c) => {
                let len = c.encoded_len(self.incoming.len());
                compression::from_words(&self.received, len, &mut self.message);
                c.decode(&self.message, &mut self.incoming)
                    .map_err(|e| crate::Error::Transport(e.to_string()))
            }
            None => {
                self.incoming.copy_from_slice(&self.received);
                Ok(())
            }
        }
    }

    /// One exchange with the neighbours of `node`: send q_i, fold every q_j into x̂ and s.
    fn exchange(&mut self, comm: &mut dyn Communicator, node: &NodeRound) -> Result<()> {
        let mut sends = Vec::with_capacity(node.send.len());
        for &(peer, _) in &node.send {
            sends.push(comm.isend(peer, TAG_CHOCO, &self.words)?);
            self.links.sent_to(peer, self.words.len());
        }
        // x̂_i and s_i take this worker's own correction first, then the neighbours' in rank
        // order: the same sums, bit for bit, on every transport.
        kernels::axpy(&mut self.public, 1.0, &self.correction);
        kernels::axpy(&mut self.mixed, node.self_weight as f32, &self.correction);
        self.received.resize(self.words.len(), 0.0);
        for &(peer, weight) in &node.recv {
            comm.recv(peer, TAG_CHOCO, &mut self.received)?;
            self.links.received_from(peer, self.received.len());
            self.expand()?;
            kernels::axpy(&mut self.mixed, weight as f32, &self.incoming);
        }
        for request in sends {
            comm.wait_send(request)?;
        }
        Ok(())
    }
}

impl Algorithm for Choco {
    fn setup(&mut self, comm: &mut dyn Communicator, _params: &mut [f32]) -> Result<()> {
        if self.schedule.period() != Some(1) {
            self.union = Some(Union::new(&self.schedule, comm.rank(), self.public.len()));
        }
        Ok(())
    }

    /// The parameters, after the step, every step.
    fn touches(&self, _step: u64) -> Touches {
        Touches::after_step_params(true)
    }

    fn after_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        self.compress(ctx.params)?;
        let rank = ctx.comm.rank();
        // The node or union leaves `self` while the exchange borrows it, and comes back.
        let exchanged = if self.schedule.period() == Some(1) {
            let node = self
                .node
                .take()
                .unwrap_or_else(|| self.schedule.node(0, rank));
            let exchanged = self.exchange(ctx.comm, &node);
            self.node = Some(node);
            exchanged
        } else {
            let mut union = self
                .union
                .take()
                .unwrap_or_else(|| Union::new(&self.schedule, rank, self.public.len()));
            let exchanged = self.exchange_union(ctx.comm, &mut union, ctx.step);
            self.union = Some(union);
            exchanged
        };
        exchanged?;
        // x ← x + γ (s − x̂)
        for ((x, &s), &h) in ctx.params.iter_mut().zip(&self.mixed).zip(&self.public) {
            *x += self.gamma * (s - h);
        }
        Ok(())
    }

    fn observe(&mut self) -> Observation<'_> {
        Observation {
            links: Some(&mut self.links),
            ..Default::default()
        }
    }

    // The scratch buffers are rewritten every step; the public copy, the mixed copies, the
    // compressor's message count (random-k's positions) and the link counters are state.
    fn save_state(&self, state: &mut StateDict) -> Result<()> {
        state.put_f32s("public", &self.public);
        state.put_f32s("mixed", &self.mixed);
        let messages = self.compressor.as_ref().map_or(0, |c| c.messages());
        state.put_u64("messages", messages);
        state.put_dict("links", self.links.save_state());
        if let Some(union) = &self.union {
            for (peer, copy) in &union.copies {
                state.put_f32s(&format!("copy_{peer}"), copy);
            }
        }
        Ok(())
    }

    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        state.f32s_into("public", &mut self.public)?;
        state.f32s_into("mixed", &mut self.mixed)?;
        let messages = state.u64("messages")?;
        if let Some(c) = &mut self.compressor {
            c.set_messages(messages);
        }
        if let Some(union) = &mut self.union {
            for (peer, copy) in &mut union.copies {
                state.f32s_into(&format!("copy_{peer}"), copy)?;
            }
        }
        self.links.load_state(state.dict("links")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With exact corrections (no compression) and γ = 1, one CHOCO round is one plain gossip
    /// round of the public copies: on two workers with W = ½·[[1, 1], [1, 1]], starting from
    /// x̂ = 0, x₀ = 1 and x₁ = 3 both end at the average 2.
    #[test]
    fn exact_corrections_and_unit_gamma_are_plain_gossip() {
        let config = ChocoConfig {
            gamma: 1.0,
            compression: CompressionConfig {
                kind: Some(KindName::None),
                ..Default::default()
            },
            schedule: ScheduleConfig::Static {
                graph: peloton_topology::GraphSpec::Complete,
                weights: peloton_topology::MixingWeights::MetropolisHastings,
            },
        };
        let out = crate::transport::threads::run_workers(2, |comm| {
            let rank = comm.rank();
            let mut alg = config.worker(config.checked(2, 0)?, 1, 0);
            let mut params = vec![1.0 + 2.0 * rank as f32];
            let mut grad = vec![0.0];
            let mut ctx = StepContext {
                comm,
                params: &mut params,
                grad: &mut grad,
                step: 0,
                loss: 0.0,
                metric: 0.0,
                lr: 0.1,
            };
            alg.after_step(&mut ctx)?;
            Ok(params[0])
        });
        let out: Vec<f32> = out.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(out, [2.0, 2.0]);
    }

    #[test]
    fn bad_configs_are_one_line_errors() {
        let bad = |c: ChocoConfig, needle: &str| {
            let err = c.checked(4, 0).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        };
        bad(
            ChocoConfig {
                gamma: 0.0,
                ..Default::default()
            },
            "algorithm.gamma must be in (0, 1], got 0",
        );
        bad(
            ChocoConfig {
                compression: CompressionConfig {
                    kind: Some(KindName::Powersgd),
                    ..Default::default()
                },
                ..Default::default()
            },
            "does not apply to choco-sgd: PowerSGD compresses all-reduces",
        );
        bad(
            ChocoConfig {
                compression: CompressionConfig {
                    fraction: Some(2.0),
                    ..Default::default()
                },
                ..Default::default()
            },
            "algorithm.compression.fraction must be in (0, 1], got 2",
        );
        bad(
            ChocoConfig {
                compression: CompressionConfig {
                    kind: Some(KindName::Int8),
                    error_feedback: Some(true),
                    ..Default::default()
                },
                ..Default::default()
            },
            "do not apply to choco-sgd",
        );
    }
}
