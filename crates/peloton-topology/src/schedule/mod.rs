//! Gossip schedules: for every step `t`, the global mixing round W(t).
//!
//! Convention: after a round, `x_i ← W_ii·x_i + Σ_j W_ij·x_j`. A [`Round`] stores the diagonal
//! (`self_weight`) and the off-diagonal non-zeros as directed [`Edge`]s `from → to` with weight
//! `W_{to,from}`: the value `from` contributes to `to`. Push-sum (SGP) needs W column-stochastic
//! (every sender splits its own mass: `self_weight[j] + Σ_{e.from = j} e.weight = 1`); the
//! D-PSGD family (D-PSGD, MATCHA, AL-DSGD) needs W doubly stochastic so that the average is
//! preserved.
//!
//! Every schedule is a pure function of (config, n, run seed, t), so each worker computes the
//! same round without talking to the others: random activations are drawn from a stream seeded
//! by (run seed, t) alone, never from a generator advanced step by step.

mod bipartite;
mod circulant;
mod exponential;
mod matcha;
mod matchings;
mod rotation;
mod static_graph;

use std::collections::{BTreeMap, BTreeSet};

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use crate::graph::{GraphSpec, Matching};
use crate::matcha::MatchaSolution;
use crate::spectral::{self, Diagnostics};
use crate::weights::MixingWeights;
use crate::{ensure, Result, TopologyError};
use circulant::{Circulant, Shape};
use matcha::RandomMatchings;
use matchings::CyclicMatchings;
use rotation::{permute, Rotation};
use static_graph::StaticMix;

pub use bipartite::Role;
pub use exponential::Directions;

/// One directed use of a link in a round: `to` receives `weight · x_from`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Edge {
    pub from: usize,
    pub to: usize,
    pub weight: f64,
}

/// The global mixing of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    /// W_ii for every node.
    pub self_weight: Vec<f64>,
    /// Off-diagonal non-zeros, sorted by (to, from); no duplicates, no self-loops.
    pub edges: Vec<Edge>,
}

/// One node's view of a round.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeRound {
    /// W_ii.
    pub self_weight: f64,
    /// Peers this node sends to, with W_{peer, me}, sorted by peer.
    pub send: Vec<(usize, f64)>,
    /// Peers this node receives from, with W_{me, peer}, sorted by peer.
    pub recv: Vec<(usize, f64)>,
}

/// What a protocol requires of every round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Push-sum (SGP): column-stochastic rounds; the union over a window strongly connected.
    PushSum,
    /// Consensus averaging (D-PSGD, MATCHA, AL-DSGD): doubly-stochastic rounds; the union over
    /// a window connected.
    DoublyStochastic,
    /// Pairwise exchange (MATCHA, AL-DSGD): additionally symmetric, every node has at most one
    /// partner per matching, and receives from exactly the peers it sends to.
    Symmetric,
}

fn default_peers() -> usize {
    1
}
fn default_budget() -> f64 {
    0.5
}
fn default_copies() -> usize {
    2
}
fn default_graph() -> GraphSpec {
    GraphSpec::Ring
}

/// A schedule as written in a config file (`[algorithm.schedule]`, selected by `kind`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ScheduleConfig {
    /// The same graph every step, with static mixing weights.
    Static {
        #[serde(default = "default_graph")]
        graph: GraphSpec,
        #[serde(default)]
        weights: MixingWeights,
    },
    /// SGP's time-varying directed exponential graph: every node sends to `peers` peers per
    /// step, uniform weights 1/(peers + 1).
    Exponential {
        #[serde(default = "default_peers")]
        peers: usize,
        #[serde(default)]
        directions: Directions,
    },
    /// D-PSGD's / AD-PSGD's bipartite exponential graph: offsets ±1, ±3, ±5, ±9, … cycled, one
    /// peer per step, ½–½ weights; even ranks passive, odd ranks active (needs even n).
    Bipartite {},
    /// One matching of `graph` per step, cycling through `select` (all matchings when absent),
    /// with W = I − α·L_matching and α = 2/(λ₂ + λ_max) of the base graph's Laplacian (MATCHA's
    /// "FixedProcessor" D-PSGD baseline). Refused when the selected matchings do not connect
    /// the nodes.
    Matchings {
        #[serde(default = "default_graph")]
        graph: GraphSpec,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        select: Option<Vec<usize>>,
    },
    /// MATCHA: every matching of `graph` is active independently with its optimized
    /// probability (shared seed), W(t) = I − α·Σ_j B_j(t)·L_j.
    Matcha {
        #[serde(default = "default_graph")]
        graph: GraphSpec,
        /// C_b ∈ (0, 1]: expected fraction of matchings active per step.
        #[serde(default = "default_budget")]
        budget: f64,
        /// Override the optimized neighbour weight α.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alpha: Option<f64>,
    },
    /// AL-DSGD's dynamic graphs: step t uses copy t mod `copies` of `base` at that copy's own
    /// step t / copies; copy 0 is `base`, copy c > 0 relabels its nodes with a permutation drawn
    /// from `seed` and draws its own activations.
    Rotation {
        base: Box<ScheduleConfig>,
        #[serde(default = "default_copies")]
        copies: usize,
        #[serde(default)]
        seed: u64,
    },
}

/// A built schedule for `n` nodes.
#[derive(Debug, Clone)]
pub struct Schedule {
    n: usize,
    kind: Kind,
}

/// Sum tolerance of [`Schedule::check`].
const TOLERANCE: f64 = 1e-9;
/// Rounds of a random schedule checked by [`Schedule::check`].
const RANDOM_WINDOW: u64 = 256;
/// Domains separating the seed streams derived from one run seed.
const ACTIVATION_STREAM: u64 = 0x6d61_7463_6861_0001;
const COPY_STREAM: u64 = 0x726f_7461_7465_0002;
const RELABEL_STREAM: u64 = 0x7065_726d_7574_0003;

#[derive(Debug, Clone)]
enum Kind {
    Static(StaticMix),
    Circulant(Circulant),
    Matchings(CyclicMatchings),
    Matcha(RandomMatchings),
    Rotation(Rotation),
}

impl ScheduleConfig {
    /// Builds the schedule for `n` nodes; `seed` is the run seed (shared by all workers), used
    /// for random activations. Errors name the key and why (e.g. "bipartite needs an even
    /// number of workers, got 7").
    pub fn build(&self, n: usize, seed: u64) -> Result<Schedule> {
        ensure!(n >= 1, "a schedule needs at least one worker");
        let kind = match self {
            ScheduleConfig::Static { graph, weights } => {
                Kind::Static(StaticMix::build(n, graph, weights)?)
            }
            ScheduleConfig::Exponential { peers, directions } => {
                Kind::Circulant(Circulant::exponential(n, *peers, *directions)?)
            }
            ScheduleConfig::Bipartite {} => Kind::Circulant(Circulant::bipartite(n)?),
            ScheduleConfig::Matchings { graph, select } => {
                Kind::Matchings(CyclicMatchings::build(n, graph, select)?)
            }
            ScheduleConfig::Matcha {
                graph,
                budget,
                alpha,
            } => Kind::Matcha(RandomMatchings::build(n, seed, graph, budget, alpha)?),
            ScheduleConfig::Rotation {
                base,
                copies,
                seed: relabel_seed,
            } => Kind::Rotation(Rotation::build(n, seed, base, copies, relabel_seed)?),
        };
        Ok(Schedule { n, kind })
    }

    /// The `kind` of this schedule in config files.
    pub fn kind(&self) -> &'static str {
        match self {
            ScheduleConfig::Static { .. } => "static",
            ScheduleConfig::Exponential { .. } => "exponential",
            ScheduleConfig::Bipartite {} => "bipartite",
            ScheduleConfig::Matchings { .. } => "matchings",
            ScheduleConfig::Matcha { .. } => "matcha",
            ScheduleConfig::Rotation { .. } => "rotation",
        }
    }
}

impl Round {
    pub fn n(&self) -> usize {
        self.self_weight.len()
    }

    /// The round of a dense W (non-zero off-diagonal entries become edges).
    pub fn from_matrix(w: &DMatrix<f64>) -> Round {
        let n = w.nrows().min(w.ncols());
        let mut edges = Vec::new();
        for to in 0..n {
            for from in (0..n).filter(|&from| from != to && w[(to, from)] != 0.0) {
                edges.push(Edge {
                    from,
                    to,
                    weight: w[(to, from)],
                });
            }
        }
        Round {
            self_weight: (0..n).map(|i| w[(i, i)]).collect(),
            edges,
        }
    }

    /// Dense W (edges naming a node outside 0..n are ignored; see [`Round::check`]).
    pub fn matrix(&self) -> DMatrix<f64> {
        let n = self.n();
        let mut w =
            DMatrix::from_diagonal(&nalgebra::DVector::from_column_slice(&self.self_weight));
        for e in self.edges.iter().filter(|e| e.from < n && e.to < n) {
            w[(e.to, e.from)] += e.weight;
        }
        w
    }

    /// Node `rank`'s view (empty, with self weight 0, for a rank outside 0..n).
    pub fn node(&self, rank: usize) -> NodeRound {
        let Some(&self_weight) = self.self_weight.get(rank) else {
            return NodeRound::default();
        };
        let mut send: Vec<(usize, f64)> = self
            .edges
            .iter()
            .filter(|e| e.from == rank)
            .map(|e| (e.to, e.weight))
            .collect();
        let mut recv: Vec<(usize, f64)> = self
            .edges
            .iter()
            .filter(|e| e.to == rank)
            .map(|e| (e.from, e.weight))
            .collect();
        send.sort_by_key(|&(peer, _)| peer);
        recv.sort_by_key(|&(peer, _)| peer);
        NodeRound {
            self_weight,
            send,
            recv,
        }
    }

    /// Checks what `protocol` needs of one round, within `tol` (sums of f64 weights).
    pub fn check(&self, protocol: Protocol, tol: f64) -> Result<()> {
        let n = self.n();
        for (i, &w) in self.self_weight.iter().enumerate() {
            ensure!(w.is_finite(), "node {i} has self weight {w}");
        }
        for e in &self.edges {
            ensure!(
                e.from < n && e.to < n,
                "edge {} → {} names a node outside 0..{n}",
                e.from,
                e.to
            );
            ensure!(
                e.from != e.to,
                "edge {0} → {0} is a self-loop (self weights belong in self_weight)",
                e.from
            );
            ensure!(
                e.weight.is_finite(),
                "edge {} → {} has weight {}",
                e.from,
                e.to,
                e.weight
            );
        }
        let mut sent = self.self_weight.clone();
        let mut received = self.self_weight.clone();
        for e in &self.edges {
            sent[e.from] += e.weight;
            received[e.to] += e.weight;
        }
        for (j, &sum) in sent.iter().enumerate() {
            ensure!(
                within(sum, 1.0, tol),
                "node {j} sends a total weight of {sum} (self plus out-links), not 1: the round \
                 is not column-stochastic"
            );
        }
        if protocol == Protocol::PushSum {
            for (i, &w) in self.self_weight.iter().enumerate() {
                ensure!(
                    within(w.min(0.0), 0.0, tol),
                    "node {i} has negative self weight {w}; push-sum needs non-negative weights"
                );
            }
            for e in &self.edges {
                ensure!(
                    within(e.weight.min(0.0), 0.0, tol),
                    "edge {} → {} has negative weight {}; push-sum needs non-negative weights",
                    e.from,
                    e.to,
                    e.weight
                );
            }
            return Ok(());
        }
        for (i, &sum) in received.iter().enumerate() {
            ensure!(
                within(sum, 1.0, tol),
                "node {i} receives a total weight of {sum} (self plus in-links), not 1: the \
                 round is not doubly stochastic"
            );
        }
        if protocol == Protocol::Symmetric {
            let mut weights = BTreeMap::new();
            for e in &self.edges {
                *weights.entry((e.from, e.to)).or_insert(0.0) += e.weight;
            }
            for (&(from, to), &w) in &weights {
                match weights.get(&(to, from)) {
                    None => {
                        return Err(TopologyError(format!(
                            "edge {from} → {to} (weight {w}) has no reverse {to} → {from}: the \
                             round is not symmetric"
                        )))
                    }
                    Some(&back) => ensure!(
                        within(w, back, tol),
                        "edge {from} → {to} has weight {w} but {to} → {from} has {back}: the \
                         round is not symmetric"
                    ),
                }
            }
        }
        Ok(())
    }

    /// The same round with node i renamed `perm[i]`.
    fn relabeled(&self, perm: &[usize]) -> Round {
        let mut self_weight = vec![0.0; self.n()];
        for (i, &w) in self.self_weight.iter().enumerate() {
            self_weight[perm[i]] = w;
        }
        let mut edges: Vec<Edge> = self
            .edges
            .iter()
            .map(|e| Edge {
                from: perm[e.from],
                to: perm[e.to],
                weight: e.weight,
            })
            .collect();
        sort_edges(&mut edges);
        Round { self_weight, edges }
    }
}

impl NodeRound {
    /// True when this node neither sends nor receives.
    pub fn is_idle(&self) -> bool {
        self.send.is_empty() && self.recv.is_empty()
    }
}

impl Schedule {
    pub fn n(&self) -> usize {
        self.n
    }

    /// The round of step `t`.
    pub fn round(&self, t: u64) -> Round {
        match &self.kind {
            Kind::Static(s) => s.round.clone(),
            Kind::Circulant(c) => c.round(self.n, t),
            Kind::Matchings(m) => laplacian_round(self.n, m.alpha, &m.active(t)),
            Kind::Matcha(m) => laplacian_round(self.n, m.solution.alpha, &m.active(t)),
            Kind::Rotation(r) => {
                let (copy, step) = r.at(t);
                copy.schedule.round(step).relabeled(&copy.perm)
            }
        }
    }

    /// Node `rank`'s view of step `t` (equal to `self.round(t).node(rank)`, cheaper).
    pub fn node(&self, t: u64, rank: usize) -> NodeRound {
        if rank >= self.n {
            return NodeRound::default();
        }
        match &self.kind {
            Kind::Static(s) => s.nodes[rank].clone(),
            Kind::Circulant(c) => c.node(self.n, t, rank),
            Kind::Matchings(m) => laplacian_node(m.alpha, &m.active(t), rank),
            Kind::Matcha(m) => laplacian_node(m.solution.alpha, &m.active(t), rank),
            Kind::Rotation(r) => {
                let (copy, step) = r.at(t);
                let view = copy.schedule.node(step, copy.inverse[rank]);
                let rename = |peers: Vec<(usize, f64)>| {
                    let mut peers: Vec<(usize, f64)> =
                        peers.into_iter().map(|(p, w)| (copy.perm[p], w)).collect();
                    peers.sort_by_key(|&(peer, _)| peer);
                    peers
                };
                NodeRound {
                    self_weight: view.self_weight,
                    send: rename(view.send),
                    recv: rename(view.recv),
                }
            }
        }
    }

    /// Some(P) when round(t) = round(t + P) for all t; None for random schedules (and for a
    /// rotation whose period would not fit in a u64).
    pub fn period(&self) -> Option<u64> {
        match &self.kind {
            Kind::Static(_) => Some(1),
            Kind::Circulant(c) => Some(c.steps.len() as u64),
            Kind::Matchings(m) => Some(m.select.len().max(1) as u64),
            Kind::Matcha(_) => None,
            Kind::Rotation(r) => {
                // Copy c is used at t ≡ c (mod C) with its own step t div C, so the whole
                // sequence repeats after C · lcm of the copies' periods.
                let mut common = 1u64;
                for copy in &r.copies {
                    let p = copy.schedule.period()?;
                    common = (common / gcd(common, p)).checked_mul(p)?;
                }
                common.checked_mul(r.copies.len() as u64)
            }
        }
    }

    /// True when, under uniform push-sum, every node's weight provably stays 1 (every round
    /// doubly stochastic): SGP may skip de-biasing.
    ///
    /// W·1 = 1 keeps the weight vector at all-ones — exactly for the ½–½ rounds, up to the
    /// rounding of the row sums otherwise, so dividing by it would be a no-op. Every
    /// shipped kind is: exponential and bipartite rounds are regular circulants with uniform
    /// weights, static weights are symmetric with W_ii = 1 − Σ_j W_ij, and matching rounds
    /// I − αL are symmetric with L·1 = 0.
    pub fn weights_stay_one(&self) -> bool {
        match &self.kind {
            Kind::Rotation(r) => r.copies.iter().all(|c| c.schedule.weights_stay_one()),
            Kind::Static(_) | Kind::Circulant(_) | Kind::Matchings(_) | Kind::Matcha(_) => true,
        }
    }

    /// The bipartite role of `rank`, for schedules that assign one (bipartite: even ranks
    /// passive, odd ranks active; every offset is odd, so each exchange pairs the two roles).
    pub fn role(&self, rank: usize) -> Option<Role> {
        match &self.kind {
            Kind::Circulant(Circulant {
                shape: Shape::Bipartite,
                ..
            }) if rank < self.n => Some(if rank.is_multiple_of(2) {
                Role::Passive
            } else {
                Role::Active
            }),
            _ => None,
        }
    }

    /// Checks every round of a window (the period, or 256 rounds of a random schedule plus the
    /// structure: matchings with positive probability) against `protocol`, and that the union
    /// of the links used is connected (strongly, for directed schedules). The error names the
    /// components, e.g. "the links used by the schedule leave nodes {0, 4} disconnected from
    /// {1, 2, 3, 5, 6, 7}".
    pub fn check(&self, protocol: Protocol) -> Result<()> {
        if protocol == Protocol::Symmetric && self.is_directed() {
            return Err(TopologyError(format!(
                "the {} schedule is directed (node r sends to r + o but receives from r − o); \
                 pairwise exchange needs static, matchings or matcha",
                self.kind_name()
            )));
        }
        let window = self.period().unwrap_or(RANDOM_WINDOW);
        for t in 0..window {
            self.round(t)
                .check(protocol, TOLERANCE)
                .map_err(|e| TopologyError(format!("step {t}: {e}")))?;
        }
        for round in self.busiest_rounds() {
            round
                .check(protocol, TOLERANCE)
                .map_err(|e| TopologyError(format!("with every possible matching active: {e}")))?;
        }
        check_connected(self.n, &self.links(), self.is_directed())
    }

    /// Every directed link (from, to) that some round can use, sorted: for random schedules
    /// from the structure (MATCHA: the matchings with positive probability), not a sample.
    pub fn links(&self) -> Vec<(usize, usize)> {
        let n = self.n;
        let links: BTreeSet<(usize, usize)> = match &self.kind {
            Kind::Static(s) => s.round.edges.iter().map(|e| (e.from, e.to)).collect(),
            Kind::Circulant(c) => c
                .steps
                .iter()
                .flatten()
                .flat_map(|&o| (0..n).map(move |r| (r, (r + o) % n)))
                .collect(),
            Kind::Matchings(m) => matching_links(m.select.iter().map(|&j| &m.matchings[j])),
            Kind::Matcha(m) => matching_links(
                m.matchings
                    .iter()
                    .zip(&m.solution.probabilities)
                    .filter(|&(_, &p)| p > 0.0)
                    .map(|(matching, _)| matching),
            ),
            Kind::Rotation(r) => r
                .copies
                .iter()
                .flat_map(|copy| {
                    copy.schedule
                        .links()
                        .into_iter()
                        .map(|(a, b)| (copy.perm[a], copy.perm[b]))
                })
                .collect(),
        };
        links.into_iter().collect()
    }

    /// E\[W\] over the randomness and over a period.
    pub fn expected_matrix(&self) -> DMatrix<f64> {
        match &self.kind {
            Kind::Static(s) => s.round.matrix(),
            Kind::Matcha(m) => {
                DMatrix::identity(self.n, self.n) - &m.moments.expected * m.solution.alpha
            }
            Kind::Rotation(r) => r.mean(|s| s.expected_matrix()),
            Kind::Circulant(_) | Kind::Matchings(_) => self.period_mean(|w| w),
        }
    }

    /// Spectral diagnostics of the expected mixing.
    pub fn diagnostics(&self) -> Diagnostics {
        let algebraic_connectivity = self
            .expected_laplacian()
            .map(|l| spectral::algebraic_connectivity(&l));
        Diagnostics::compute(
            &self.expected_matrix(),
            &self.second_moment(),
            algebraic_connectivity,
        )
    }

    /// The matchings used (matching-based schedules; for rotation, copy 0's).
    pub fn matchings(&self) -> Option<&[Matching]> {
        match &self.kind {
            Kind::Matchings(m) => Some(&m.matchings),
            Kind::Matcha(m) => Some(&m.matchings),
            Kind::Rotation(r) => r.copies[0].schedule.matchings(),
            Kind::Static(_) | Kind::Circulant(_) => None,
        }
    }

    /// MATCHA's probabilities and α (matcha schedules; for rotation, copy 0's).
    pub fn matcha(&self) -> Option<&MatchaSolution> {
        match &self.kind {
            Kind::Matcha(m) => Some(&m.solution),
            Kind::Rotation(r) => r.copies[0].schedule.matcha(),
            _ => None,
        }
    }

    /// A one-line description, e.g. "matcha on erdos-renyi(p=0.5, seed=0), 8 nodes, 5 matchings, budget 0.5".
    pub fn describe(&self) -> String {
        let n = self.n;
        match &self.kind {
            Kind::Static(s) => format!(
                "static {} with {} weights, {n} nodes",
                s.graph_name,
                s.weights.name()
            ),
            Kind::Circulant(c) => match c.shape {
                Shape::Exponential { peers, directions } => format!(
                    "exponential ({}, {peers} peer{} per step), {n} nodes, period {}",
                    match directions {
                        Directions::Forward => "forward",
                        Directions::Both => "both directions",
                    },
                    if peers == 1 { "" } else { "s" },
                    c.steps.len()
                ),
                Shape::Bipartite => {
                    format!("bipartite exponential, {n} nodes, period {}", c.steps.len())
                }
            },
            Kind::Matchings(m) => format!(
                "matchings of {}, {n} nodes, cycling {} of {} matchings, alpha {:.4}",
                m.graph_name,
                m.select.len(),
                m.matchings.len(),
                m.alpha
            ),
            Kind::Matcha(m) => format!(
                "matcha on {}, {n} nodes, {} matchings, budget {}, alpha {:.4}",
                m.graph_name,
                m.matchings.len(),
                m.budget,
                m.solution.alpha
            ),
            Kind::Rotation(r) => format!(
                "rotation among {} relabeled copies of {}",
                r.copies.len(),
                r.copies[0].schedule.describe()
            ),
        }
    }

    fn kind_name(&self) -> &'static str {
        match &self.kind {
            Kind::Static(_) => "static",
            Kind::Circulant(Circulant {
                shape: Shape::Exponential { .. },
                ..
            }) => "exponential",
            Kind::Circulant(_) => "bipartite",
            Kind::Matchings(_) => "matchings",
            Kind::Matcha(_) => "matcha",
            Kind::Rotation(_) => "rotation",
        }
    }

    /// Circulant schedules send to r + o but receive from r − o.
    fn is_directed(&self) -> bool {
        match &self.kind {
            Kind::Circulant(_) => true,
            Kind::Rotation(r) => r.copies[0].schedule.is_directed(),
            Kind::Static(_) | Kind::Matchings(_) | Kind::Matcha(_) => false,
        }
    }

    /// Rounds a random window may miss: MATCHA with every matching of positive probability
    /// active, where self weights 1 − α·deg are smallest.
    fn busiest_rounds(&self) -> Vec<Round> {
        match &self.kind {
            Kind::Matcha(m) => {
                let possible: Vec<&Matching> = m
                    .matchings
                    .iter()
                    .zip(&m.solution.probabilities)
                    .filter(|&(_, &p)| p > 0.0)
                    .map(|(matching, _)| matching)
                    .collect();
                vec![laplacian_round(self.n, m.solution.alpha, &possible)]
            }
            Kind::Rotation(r) => r
                .copies
                .iter()
                .flat_map(|copy| {
                    copy.schedule
                        .busiest_rounds()
                        .into_iter()
                        .map(|round| round.relabeled(&copy.perm))
                })
                .collect(),
            Kind::Static(_) | Kind::Circulant(_) | Kind::Matchings(_) => Vec::new(),
        }
    }

    /// E\[WᵀW\]: the mean over a period, MATCHA's closed form, or the mean over copies.
    fn second_moment(&self) -> DMatrix<f64> {
        match &self.kind {
            Kind::Matcha(m) => m.moments.second_moment(m.solution.alpha),
            Kind::Rotation(r) => r.mean(|s| s.second_moment()),
            Kind::Static(_) | Kind::Circulant(_) | Kind::Matchings(_) => {
                self.period_mean(|w| w.transpose() * w)
            }
        }
    }

    /// The mean of f(W(t)) over one period of a periodic schedule.
    fn period_mean(&self, f: impl Fn(DMatrix<f64>) -> DMatrix<f64>) -> DMatrix<f64> {
        let period = self.period().unwrap_or(1);
        let mut total = DMatrix::zeros(self.n, self.n);
        for t in 0..period {
            total += f(self.round(t).matrix());
        }
        total / period as f64
    }

    /// The expected Laplacian L with E\[W\] = I − αL, for graph-based schedules: the graph's
    /// Laplacian (static), the mean of the cycled matchings' Laplacians, MATCHA's Σ_j p_j L_j,
    /// and for a rotation the mean of its copies'.
    fn expected_laplacian(&self) -> Option<DMatrix<f64>> {
        match &self.kind {
            Kind::Static(s) => Some(s.graph.laplacian()),
            Kind::Circulant(_) => None,
            Kind::Matchings(m) => {
                let mut total = DMatrix::zeros(self.n, self.n);
                for &j in &m.select {
                    total += m.matchings[j].laplacian(self.n);
                }
                Some(total / m.select.len().max(1) as f64)
            }
            Kind::Matcha(m) => Some(m.moments.expected.clone()),
            Kind::Rotation(r) => {
                let mut total = DMatrix::zeros(self.n, self.n);
                for copy in &r.copies {
                    total += permute(&copy.schedule.expected_laplacian()?, &copy.perm);
                }
                Some(total / r.copies.len() as f64)
            }
        }
    }
}

/// W = I − α·Σ_active L_j: matched nodes exchange with weight α and keep 1 − α·degree.
fn laplacian_round(n: usize, alpha: f64, active: &[&Matching]) -> Round {
    let mut degree = vec![0usize; n];
    let mut edges = Vec::new();
    for matching in active {
        for &(a, b) in &matching.edges {
            degree[a] += 1;
            degree[b] += 1;
            edges.push(Edge {
                from: a,
                to: b,
                weight: alpha,
            });
            edges.push(Edge {
                from: b,
                to: a,
                weight: alpha,
            });
        }
    }
    sort_edges(&mut edges);
    Round {
        self_weight: degree.iter().map(|&d| 1.0 - alpha * d as f64).collect(),
        edges,
    }
}

/// Node `rank`'s view of [`laplacian_round`].
fn laplacian_node(alpha: f64, active: &[&Matching], rank: usize) -> NodeRound {
    let mut partners: Vec<(usize, f64)> = active
        .iter()
        .filter_map(|m| m.partner(rank))
        .map(|peer| (peer, alpha))
        .collect();
    partners.sort_by_key(|&(peer, _)| peer);
    NodeRound {
        self_weight: 1.0 - alpha * partners.len() as f64,
        send: partners.clone(),
        recv: partners,
    }
}

/// |a − b| ≤ tol, false when anything is NaN (so a NaN weight or tolerance fails a check).
fn within(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

/// Both directions of every edge of the matchings.
fn matching_links<'a>(matchings: impl Iterator<Item = &'a Matching>) -> BTreeSet<(usize, usize)> {
    matchings
        .flat_map(|m| m.edges.iter().flat_map(|&(a, b)| [(a, b), (b, a)]))
        .collect()
}

/// The canonical edge order of a [`Round`]: by (to, from).
fn sort_edges(edges: &mut [Edge]) {
    edges.sort_by_key(|e| (e.to, e.from));
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// SplitMix64's output function: a bijective mix with full avalanche, so neighbouring inputs
/// (steps t and t + 1, copies c and c + 1) give unrelated seeds.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of item `index` of the stream `domain` derived from `seed`.
fn derive_seed(seed: u64, domain: u64, index: u64) -> u64 {
    splitmix64(splitmix64(seed ^ domain) ^ index)
}

/// Errors unless `links` connect all n nodes (strongly, when `directed`), naming the groups.
fn check_connected(n: usize, links: &[(usize, usize)], directed: bool) -> Result<()> {
    let mut groups = strong_components(n, links);
    match groups.len() {
        0 | 1 => Ok(()),
        2 => {
            groups.sort_by_key(|g| (g.len(), g[0]));
            let (a, b) = (node_set(&groups[0]), node_set(&groups[1]));
            Err(TopologyError(if directed {
                format!(
                    "the directed links used by the schedule are not strongly connected: nodes \
                     {a} and {b} cannot reach each other both ways"
                )
            } else {
                format!("the links used by the schedule leave nodes {a} disconnected from {b}")
            }))
        }
        count => {
            let listed: Vec<String> = groups.iter().map(|g| node_set(g)).collect();
            Err(TopologyError(format!(
                "the links used by the schedule split the nodes into {count} {}groups: {}",
                if directed { "strongly connected " } else { "" },
                listed.join(", ")
            )))
        }
    }
}

/// Strongly connected components (components, for symmetric links), each sorted, ordered by
/// their smallest node: node s's component is what s reaches and what reaches s.
fn strong_components(n: usize, links: &[(usize, usize)]) -> Vec<Vec<usize>> {
    let mut forward = vec![Vec::new(); n];
    let mut backward = vec![Vec::new(); n];
    for &(a, b) in links {
        forward[a].push(b);
        backward[b].push(a);
    }
    let reach = |adjacency: &[Vec<usize>], start: usize| {
        let mut seen = vec![false; n];
        seen[start] = true;
        let mut stack = vec![start];
        while let Some(v) = stack.pop() {
            for &w in &adjacency[v] {
                if !seen[w] {
                    seen[w] = true;
                    stack.push(w);
                }
            }
        }
        seen
    };
    let mut assigned = vec![false; n];
    let mut components = Vec::new();
    for start in 0..n {
        if assigned[start] {
            continue;
        }
        let (ahead, behind) = (reach(&forward, start), reach(&backward, start));
        let component: Vec<usize> = (0..n).filter(|&v| ahead[v] && behind[v]).collect();
        for &v in &component {
            assigned[v] = true;
        }
        components.push(component);
    }
    components
}

/// "{0, 4}", shortened after 16 nodes.
fn node_set(nodes: &[usize]) -> String {
    const SHOWN: usize = 16;
    let mut parts: Vec<String> = nodes.iter().take(SHOWN).map(|v| v.to_string()).collect();
    if nodes.len() > SHOWN {
        parts.push(format!("… ({} nodes)", nodes.len()));
    }
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(super) fn exponential(peers: usize, directions: Directions) -> ScheduleConfig {
        ScheduleConfig::Exponential { peers, directions }
    }

    pub(super) fn matcha_on(graph: GraphSpec) -> ScheduleConfig {
        ScheduleConfig::Matcha {
            graph,
            budget: 0.5,
            alpha: None,
        }
    }

    pub(super) fn er(seed: u64) -> GraphSpec {
        GraphSpec::ErdosRenyi { p: 0.5, seed }
    }

    fn static_mh(graph: GraphSpec) -> ScheduleConfig {
        ScheduleConfig::Static {
            graph,
            weights: MixingWeights::MetropolisHastings,
        }
    }

    /// One config of every shipped kind, with the protocol it is meant for.
    fn shipped() -> Vec<(ScheduleConfig, Protocol)> {
        vec![
            (static_mh(GraphSpec::Ring), Protocol::Symmetric),
            (
                ScheduleConfig::Static {
                    graph: GraphSpec::Exponential,
                    weights: MixingWeights::Uniform,
                },
                Protocol::PushSum,
            ),
            (exponential(1, Directions::Forward), Protocol::PushSum),
            (exponential(2, Directions::Forward), Protocol::PushSum),
            (exponential(1, Directions::Both), Protocol::PushSum),
            (exponential(2, Directions::Both), Protocol::PushSum),
            (ScheduleConfig::Bipartite {}, Protocol::DoublyStochastic),
            (
                ScheduleConfig::Matchings {
                    graph: GraphSpec::Torus { rows: None },
                    select: None,
                },
                Protocol::Symmetric,
            ),
            (matcha_on(er(0)), Protocol::Symmetric),
            (matcha_on(GraphSpec::Ring), Protocol::DoublyStochastic),
            (
                ScheduleConfig::Rotation {
                    base: Box::new(matcha_on(er(1))),
                    copies: 2,
                    seed: 3,
                },
                Protocol::Symmetric,
            ),
            (
                ScheduleConfig::Rotation {
                    base: Box::new(exponential(1, Directions::Forward)),
                    copies: 3,
                    seed: 0,
                },
                Protocol::PushSum,
            ),
        ]
    }

    /// The worker counts the configs of [`shipped`] do not fit.
    fn unfit(config: &ScheduleConfig, n: usize) -> bool {
        match config {
            ScheduleConfig::Bipartite {} => !n.is_multiple_of(2),
            ScheduleConfig::Exponential { peers, .. } => n > 1 && *peers >= n,
            _ => false,
        }
    }

    pub(super) fn apply(round: &Round, x: &[f64]) -> Vec<f64> {
        let mut out: Vec<f64> = x
            .iter()
            .zip(&round.self_weight)
            .map(|(x, w)| x * w)
            .collect();
        for e in &round.edges {
            out[e.to] += e.weight * x[e.from];
        }
        out
    }

    #[test]
    fn every_kind_builds_and_checks_for_many_n() {
        for (config, protocol) in shipped() {
            for n in 1..=20 {
                let schedule = match config.build(n, 11) {
                    Ok(schedule) => schedule,
                    Err(e) if unfit(&config, n) => {
                        assert!(!e.0.is_empty());
                        continue;
                    }
                    Err(e) => panic!("{} on {n}: {e}", config.kind()),
                };
                assert_eq!(schedule.n(), n);
                schedule
                    .check(protocol)
                    .unwrap_or_else(|e| panic!("{} on {n}: {e}", schedule.describe()));
                assert!(schedule.weights_stay_one());
                for t in [0, 1, 2, 7, 1000, u64::MAX] {
                    let round = schedule.round(t);
                    assert_eq!(round, schedule.round(t), "pure function of t");
                    for rank in 0..n {
                        assert_eq!(schedule.node(t, rank), round.node(rank), "node view");
                    }
                    if let (Some(period), true) = (schedule.period(), t < 1000) {
                        assert_eq!(round, schedule.round(t + period));
                    }
                }
                assert_eq!(schedule.node(0, n), NodeRound::default());
            }
        }
    }

    #[test]
    fn directed_schedules_refuse_the_symmetric_protocol() {
        for config in [
            exponential(1, Directions::Forward),
            ScheduleConfig::Bipartite {},
        ] {
            let err = config
                .build(8, 0)
                .unwrap()
                .check(Protocol::Symmetric)
                .unwrap_err()
                .0;
            assert!(err.contains("directed"), "{err}");
        }
    }

    #[test]
    fn round_check_messages() {
        let good = Round {
            self_weight: vec![0.5, 0.5],
            edges: vec![
                Edge {
                    from: 1,
                    to: 0,
                    weight: 0.5,
                },
                Edge {
                    from: 0,
                    to: 1,
                    weight: 0.5,
                },
            ],
        };
        assert_eq!(good.check(Protocol::Symmetric, 1e-12), Ok(()));
        // Column-stochastic only: node 0 keeps ½ and sends ½ to 1 and nothing comes back.
        let push = Round {
            self_weight: vec![0.5, 1.0],
            edges: vec![Edge {
                from: 0,
                to: 1,
                weight: 0.5,
            }],
        };
        assert_eq!(push.check(Protocol::PushSum, 1e-12), Ok(()));
        let err = push.check(Protocol::DoublyStochastic, 1e-12).unwrap_err().0;
        assert!(
            err.starts_with("node 0 receives a total weight of 0.5"),
            "{err}"
        );
        let leaky = Round {
            self_weight: vec![0.5, 1.0],
            edges: vec![],
        };
        let err = leaky.check(Protocol::PushSum, 1e-12).unwrap_err().0;
        assert!(
            err.starts_with("node 0 sends a total weight of 0.5"),
            "{err}"
        );
        // Doubly stochastic but one-way: the directed 3-cycle with ½–½ weights.
        let cycle = Round {
            self_weight: vec![0.5; 3],
            edges: vec![
                Edge {
                    from: 2,
                    to: 0,
                    weight: 0.5,
                },
                Edge {
                    from: 0,
                    to: 1,
                    weight: 0.5,
                },
                Edge {
                    from: 1,
                    to: 2,
                    weight: 0.5,
                },
            ],
        };
        assert_eq!(cycle.check(Protocol::DoublyStochastic, 1e-12), Ok(()));
        let err = cycle.check(Protocol::Symmetric, 1e-12).unwrap_err().0;
        assert!(
            err.starts_with("edge 0 → 1 (weight 0.5) has no reverse 1 → 0"),
            "{err}"
        );
        // Doubly stochastic, every link both ways, but with different weights.
        let lopsided = Round::from_matrix(&DMatrix::from_row_slice(
            3,
            3,
            &[0.5, 0.3, 0.2, 0.2, 0.5, 0.3, 0.3, 0.2, 0.5],
        ));
        assert_eq!(lopsided.check(Protocol::DoublyStochastic, 1e-12), Ok(()));
        let err = lopsided.check(Protocol::Symmetric, 1e-12).unwrap_err().0;
        assert!(
            err.contains("has weight") && err.contains("not symmetric"),
            "{err}"
        );
        let negative = Round {
            self_weight: vec![-0.5, -0.5],
            edges: vec![
                Edge {
                    from: 1,
                    to: 0,
                    weight: 1.5,
                },
                Edge {
                    from: 0,
                    to: 1,
                    weight: 1.5,
                },
            ],
        };
        assert_eq!(negative.check(Protocol::Symmetric, 1e-12), Ok(()));
        assert!(negative
            .check(Protocol::PushSum, 1e-12)
            .unwrap_err()
            .0
            .contains("negative"));
        let outside = Round {
            self_weight: vec![1.0],
            edges: vec![Edge {
                from: 0,
                to: 3,
                weight: 0.0,
            }],
        };
        assert!(outside
            .check(Protocol::PushSum, 1e-12)
            .unwrap_err()
            .0
            .contains("0 → 3"));
        assert_eq!(outside.matrix(), DMatrix::identity(1, 1));
        assert_eq!(outside.node(4), NodeRound::default());
    }

    #[test]
    fn round_views_and_matrix() {
        let s = exponential(1, Directions::Forward).build(4, 0).unwrap();
        let round = s.round(1);
        let w = round.matrix();
        assert_eq!(w[(2, 0)], 0.5);
        assert_eq!(w[(0, 0)], 0.5);
        assert_eq!(Round::from_matrix(&w), round);
        let view = round.node(0);
        assert_eq!(view.send, vec![(2, 0.5)]);
        assert_eq!(view.recv, vec![(2, 0.5)]);
        assert!(!view.is_idle());
        let idle = ScheduleConfig::Matchings {
            graph: GraphSpec::Ring,
            select: Some(vec![2]),
        }
        .build(5, 0)
        .unwrap();
        assert!((0..5).filter(|&r| idle.node(0, r).is_idle()).count() == 3);
    }

    #[test]
    fn disconnected_static_graph_names_every_group() {
        let s = static_mh(GraphSpec::Edges {
            edges: vec![[0, 1], [2, 3]],
        })
        .build(5, 0)
        .unwrap();
        let err = s.check(Protocol::DoublyStochastic).unwrap_err().0;
        assert!(
            err.ends_with("split the nodes into 3 groups: {0, 1}, {2, 3}, {4}"),
            "{err}"
        );
        // Directed links: 0 ⇄ 1 → 2 reaches 2 but nothing comes back.
        let err = check_connected(3, &[(0, 1), (1, 0), (1, 2)], true)
            .unwrap_err()
            .0;
        assert!(
            err.ends_with("nodes {2} and {0, 1} cannot reach each other both ways"),
            "{err}"
        );
        let err = check_connected(3, &[(0, 1), (1, 2)], true).unwrap_err().0;
        assert!(err.contains("3 strongly connected groups"), "{err}");
        assert_eq!(check_connected(3, &[(0, 1), (1, 2), (2, 0)], true), Ok(()));
        let long: Vec<usize> = (0..40).collect();
        assert!(node_set(&long).ends_with("15, … (40 nodes)}"));
    }

    #[test]
    fn toml_round_trip() {
        let text = "kind = \"matcha\"\nbudget = 0.5\ngraph = { kind = \"erdos-renyi\", p = 0.5, seed = 0 }\n";
        let config: ScheduleConfig = toml::from_str(text).unwrap();
        assert_eq!(config, matcha_on(er(0)));
        assert_eq!(config.kind(), "matcha");
        let back: ScheduleConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(back, config);
        let rotation =
            "kind = \"rotation\"\ncopies = 3\n[base]\nkind = \"matchings\"\nselect = [0, 1]\n";
        let config: ScheduleConfig = toml::from_str(rotation).unwrap();
        assert_eq!(
            config,
            ScheduleConfig::Rotation {
                base: Box::new(ScheduleConfig::Matchings {
                    graph: GraphSpec::Ring,
                    select: Some(vec![0, 1]),
                }),
                copies: 3,
                seed: 0,
            }
        );
        let back: ScheduleConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(back, config);
        for (config, _) in shipped() {
            let back: ScheduleConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
            assert_eq!(back, config);
        }
        let defaults: ScheduleConfig = toml::from_str("kind = \"exponential\"").unwrap();
        assert_eq!(defaults, exponential(1, Directions::Forward));
        assert!(toml::from_str::<ScheduleConfig>("kind = \"bipartite\"\npeers = 2").is_err());
    }

    /// Every configuration the property tests draw from, on a connected random graph.
    fn random_config(graph_seed: u64) -> impl Strategy<Value = ScheduleConfig> {
        let graph = er(graph_seed);
        prop_oneof![
            (1usize..4).prop_map(|k| exponential(k, Directions::Forward)),
            (1usize..4).prop_map(|k| exponential(k, Directions::Both)),
            Just(ScheduleConfig::Bipartite {}),
            Just(static_mh(graph.clone())),
            Just(matcha_on(graph)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn rounds_are_stochastic_and_preserve_averages(
            n in 1usize..=33,
            run_seed in any::<u64>(),
            config in any::<u64>().prop_flat_map(random_config),
            x in prop::collection::vec(-1.0f64..1.0, 33),
        ) {
            prop_assume!(!unfit(&config, n));
            let schedule = config.build(n, run_seed).unwrap();
            let x = &x[..n];
            let mean = x.iter().sum::<f64>() / n as f64;
            for t in 0..12 {
                let round = schedule.round(t);
                round.check(Protocol::DoublyStochastic, 1e-12).unwrap();
                prop_assert!(schedule.weights_stay_one());
                let mixed = apply(&round, x);
                let mixed_mean = mixed.iter().sum::<f64>() / n as f64;
                prop_assert!((mixed_mean - mean).abs() <= 1e-12 * n as f64);
            }
        }
    }

    proptest! {
        // Each case solves MATCHA three times; fewer cases keep the suite fast.
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn links_are_connected_for_every_shipped_kind(
            n in 2usize..=24, graph_seed in any::<u64>(), run_seed in any::<u64>()
        ) {
            let configs = [
                static_mh(er(graph_seed)),
                ScheduleConfig::Matchings { graph: er(graph_seed), select: None },
                matcha_on(er(graph_seed)),
                exponential(1, Directions::Forward),
                exponential(1, Directions::Both),
                ScheduleConfig::Rotation {
                    base: Box::new(matcha_on(er(graph_seed))),
                    copies: 2,
                    seed: run_seed,
                },
            ];
            for config in configs {
                let schedule = config.build(n, run_seed).unwrap();
                prop_assert_eq!(schedule.check(Protocol::DoublyStochastic), Ok(()));
            }
            if n.is_multiple_of(2) {
                let bipartite = ScheduleConfig::Bipartite {}.build(n, 0).unwrap();
                prop_assert_eq!(bipartite.check(Protocol::DoublyStochastic), Ok(()));
            }
        }
    }
}
