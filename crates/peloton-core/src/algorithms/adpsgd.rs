//! AD-PSGD, asynchronous decentralized parallel SGD (Lian, Zhang, Zhang, Liu, ICML 2018),
//! ALGORITHMS.md §5.3 and §3.6.
//!
//! Every worker, at its own pace: computes a gradient on its current model, averages its model
//! *atomically* with one random neighbour, `x_i = x_j = ½(x_i + x_j)`, then applies its
//! gradient. Nobody waits for the group.
//!
//! **Roles.** The graph is the bipartite exponential graph (offsets ±1, ±(1 + 2^k)): every link
//! joins an odd (*active*) and an even (*passive*) rank, so no two workers ever wait for each
//! other in a cycle:
//! * an active worker picks a neighbour uniformly at random (a per-worker seeded stream), sends
//!   it its model and blocks until the averaged model comes back;
//! * a passive worker never blocks: at each of its steps it polls for requests (any source),
//!   and for each one averages, keeps the average and sends it back. Both ends therefore hold
//!   the same bits, and the exchange is atomic: neither model moves while it is in progress.
//!
//! When a worker has spent its share of the run, passive workers keep answering until every
//! worker is done (the shared [`DONE`](super::asynchronous::DONE) counter). A neighbour that
//! stopped (an injected fault) is dropped from the active worker's choices; the run goes on.
//!
//! **Staleness** (reported per log record): for a passive worker, its own steps between the
//! moment a request was sent and the moment it averaged it; 0 for the active side, which
//! blocks.
//!
//! Communication per exchange: the active worker sends B (+8 bytes of timestamp) and
//! receives B.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::asynchronous::{self, Staleness, DONE};
use super::{
    Algorithm, AlgorithmSpec, AsyncAlgorithm, Asynchronous, RunShape, StepContext, Touches,
};
use crate::checkpoint::StateDict;
use crate::ensure_config;
use crate::kernels;
use crate::learner::HostBuffers;
use crate::transport::{Communicator, CounterOp, Tag};
use crate::{Error, Result};

const REQUEST: Tag = 0xAD_0001;
const REPLY: Tag = 0xAD_0002;

/// `name = "ad-psgd"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdPsgdConfig {}

impl AdPsgdConfig {
    pub fn validate(&self, workers: usize) -> Result<()> {
        ensure_config!(
            workers == 1 || workers.is_multiple_of(2),
            "ad-psgd needs an even number of workers (odd ranks are active, even ranks passive on the bipartite graph), got {workers}"
        );
        Ok(())
    }

    pub fn init(&self, workers: usize, len: usize, seed: u64) -> Result<AdPsgd> {
        self.validate(workers)?;
        Ok(AdPsgd {
            neighbours: Vec::new(),
            seed,
            rng: None,
            incoming: vec![0.0; len + 2],
            reply: vec![0.0; len],
            history: asynchronous::StepClock::default(),
            staleness: Staleness::default(),
            workers,
            exchanges: 0,
        })
    }
}

impl AlgorithmSpec for AdPsgdConfig {
    const NAME: &'static str = "ad-psgd";
    const SUMMARY: &'static str = "asynchronous decentralized SGD: each step, average atomically with a random neighbour of a bipartite graph";
    type Timing = Asynchronous;

    fn validate(&self, run: &RunShape<'_>) -> Result<()> {
        self.validate(run.workers)
    }

    fn build(&self, run: &RunShape<'_>, len: usize) -> Result<Box<dyn AsyncAlgorithm>> {
        Ok(Box::new(self.init(run.workers, len, run.seed)?))
    }
}

/// The bipartite exponential graph's neighbours of `rank` among `n` workers.
fn neighbours(rank: usize, n: usize) -> Result<Vec<usize>> {
    if n < 2 {
        return Ok(Vec::new());
    }
    let schedule = peloton_topology::ScheduleConfig::Bipartite {}
        .build(n, 0)
        .map_err(|e| Error::Config(format!("ad-psgd graph: {e}")))?;
    let mut out: Vec<usize> = schedule
        .links()
        .into_iter()
        .filter(|&(from, _)| from == rank)
        .map(|(_, to)| to)
        .collect();
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// One worker's AD-PSGD state.
pub struct AdPsgd {
    /// Live neighbours (active workers drop the ones that left).
    neighbours: Vec<usize>,
    seed: u64,
    rng: Option<crate::seed::Rng>,
    /// A request: the partner's model and its send time (an f64 in two f32 slots).
    incoming: Vec<f32>,
    reply: Vec<f32>,
    history: asynchronous::StepClock,
    staleness: Staleness,
    workers: usize,
    exchanges: u64,
}

impl AdPsgd {
    fn active(rank: usize) -> bool {
        rank % 2 == 1
    }

    /// Answers every request that has arrived (passive side).
    fn serve(&mut self, comm: &mut dyn Communicator, params: &mut [f32]) -> Result<()> {
        let len = params.len();
        while let Some((src, got)) = comm.probe_any(REQUEST)? {
            if got != len + 2 {
                return Err(Error::Transport(format!(
                    "ad-psgd: worker {src} sent a model of {} values, this worker has {len}",
                    got.saturating_sub(2)
                )));
            }
            comm.recv(src, REQUEST, &mut self.incoming)?;
            let sent_at = asynchronous::decode_f64(&self.incoming[len..]);
            let now_step = self.history.steps();
            self.staleness
                .record(now_step - self.history.steps_at(sent_at));
            kernels::mix(params, &self.incoming[..len], 0.5);
            comm.send(src, REPLY, params)?;
            self.exchanges += 1;
        }
        Ok(())
    }

    /// Averages with a random live neighbour (active side).
    fn exchange(&mut self, comm: &mut dyn Communicator, params: &mut [f32]) -> Result<()> {
        let len = params.len();
        while !self.neighbours.is_empty() {
            let rng = self
                .rng
                .get_or_insert_with(|| crate::seed::rng(self.seed, "ad-psgd", comm.rank() as u64));
            let partner = self.neighbours[rng.random_range(0..self.neighbours.len())];
            self.incoming[..len].copy_from_slice(params);
            asynchronous::encode_f64(asynchronous::clock(comm), &mut self.incoming[len..]);
            comm.send(partner, REQUEST, &self.incoming)?;
            match comm.recv(partner, REPLY, &mut self.reply) {
                Ok(()) => {
                    params.copy_from_slice(&self.reply);
                    self.staleness.record(0);
                    self.exchanges += 1;
                    return Ok(());
                }
                // The partner stopped: never pick it again, try another one.
                Err(Error::Left { .. }) => {
                    self.neighbours.retain(|&w| w != partner);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Algorithm for AdPsgd {
    fn setup(&mut self, comm: &mut dyn Communicator, _params: &mut [f32]) -> Result<()> {
        self.neighbours = neighbours(comm.rank(), self.workers)?;
        Ok(())
    }
    fn before_step(&mut self, ctx: &mut StepContext<'_>) -> Result<()> {
        // The gradient was taken at the current model; average, then the optimizer applies it.
        self.history.record(asynchronous::clock(ctx.comm), ctx.step);
        if Self::active(ctx.comm.rank()) {
            self.exchange(ctx.comm, ctx.params)
        } else {
            self.serve(ctx.comm, ctx.params)
        }
    }
    /// Both sides average the parameters in `before_step` only, every step. The passive
    /// side also serves at a checkpoint cut and in `finish`, where the runner brings the
    /// parameters to the host itself.
    fn touches(&self, _step: u64) -> Touches {
        Touches {
            before_step: HostBuffers::PARAMS,
            ..Touches::NONE
        }
    }
    // Between two steps no exchange is in progress: an active worker has its reply, and a
    // passive one answered what it received (see `serves_at_cut`).
    fn save_state(&self, state: &mut StateDict) -> Result<()> {
        let live: Vec<u64> = self.neighbours.iter().map(|&w| w as u64).collect();
        state.put_u64s("neighbours", &live);
        if let Some(rng) = &self.rng {
            state.put_rng("rng", rng);
        }
        state.put_dict("history", self.history.save_state());
        state.put_dict("staleness", self.staleness.save_state());
        state.put_u64("exchanges", self.exchanges);
        Ok(())
    }
    fn load_state(&mut self, state: &StateDict) -> Result<()> {
        let live = state.u64s("neighbours")?;
        if live.iter().any(|&w| w as usize >= self.workers) {
            return Err(Error::Checkpoint(
                "ad-psgd: a neighbour is out of range".into(),
            ));
        }
        self.neighbours = live.iter().map(|&w| w as usize).collect();
        self.rng = if state.contains("rng") {
            Some(state.rng("rng")?)
        } else {
            None
        };
        self.history.load_state(state.dict("history")?)?;
        self.staleness.load_state(state.dict("staleness")?)?;
        self.exchanges = state.u64("exchanges")?;
        Ok(())
    }
}

impl AsyncAlgorithm for AdPsgd {
    fn finish(&mut self, comm: &mut dyn Communicator, params: &mut [f32]) -> Result<()> {
        if Self::active(comm.rank()) {
            return Ok(());
        }
        // Keep answering until every worker has finished: active workers only finish after
        // their last reply, so nothing is left waiting.
        loop {
            self.serve(comm, params)?;
            if comm.counter(DONE, CounterOp::Get)? >= self.workers as u64 {
                return self.serve(comm, params);
            }
            comm.pause()?;
        }
    }

    fn staleness(&mut self) -> Option<(f64, u64)> {
        self.staleness.take()
    }

    fn serves_at_cut(&self, rank: usize) -> bool {
        !Self::active(rank)
    }

    fn serve_at_cut(&mut self, comm: &mut dyn Communicator, params: &mut [f32]) -> Result<()> {
        self.serve(comm, params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbours_are_of_the_other_parity() {
        for n in [2usize, 4, 8, 16] {
            for r in 0..n {
                let nb = neighbours(r, n).unwrap();
                assert!(!nb.is_empty());
                assert!(nb.iter().all(|&j| j % 2 != r % 2), "n={n} r={r} {nb:?}");
            }
        }
        assert_eq!(neighbours(0, 4).unwrap(), vec![1, 3]);
    }

    #[test]
    fn odd_worker_counts_are_refused() {
        let e = AdPsgdConfig::default().validate(3).unwrap_err();
        assert!(e.to_string().contains("even number of workers"), "{e}");
        AdPsgdConfig::default().validate(1).unwrap();
    }
}
