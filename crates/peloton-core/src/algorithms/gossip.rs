//! The shared gossip block of the decentralized family (ALGORITHMS.md §9.2): one round of
//! neighbour mixing driven by a [`NodeRound`] from peloton-topology, and the per-link traffic
//! counters every decentralized algorithm reports.
//!
//! Two protocols use it (fairscale's split: the schedule says *who*, the round's weights say
//! *how much*, the algorithm says *what is sent*):
//! * **consensus** ([`Gossip::mix`]): every node sends its raw parameters and the receiver
//!   weights them, `x_i ← W_ii·x_i + Σ_j W_ij·x_j` (D-PSGD, MATCHA, AL-DSGD);
//! * **push-sum** lives in `sgp.rs`: the sender splits its own mass (`W` column-stochastic).
//!
//! Sends are non-blocking and buffered by every transport, and every node posts its sends
//! before its receives, so no round can deadlock whatever the graph (the bipartite
//! active/passive ordering of the reference codes is only needed with unbuffered sends).

use std::collections::{BTreeMap, BTreeSet};

use peloton_topology::NodeRound;

use crate::checkpoint::StateDict;
use crate::kernels;
use crate::transport::{Communicator, SendRequest, Tag};
use crate::Result;

/// Tag of consensus gossip messages.
pub const TAG_GOSSIP: Tag = 0x6055;

/// Bytes per link and the peers talked to, as the decentralized metrics report them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkStats {
    sent: BTreeMap<usize, u64>,
    received: BTreeMap<usize, u64>,
    window: BTreeSet<usize>,
}

impl LinkStats {
    /// Counts `values` f32s sent to `peer`.
    pub fn sent_to(&mut self, peer: usize, values: usize) {
        *self.sent.entry(peer).or_default() += 4 * values as u64;
        self.window.insert(peer);
    }

    /// Counts `values` f32s received from `peer`.
    pub fn received_from(&mut self, peer: usize, values: usize) {
        *self.received.entry(peer).or_default() += 4 * values as u64;
        self.window.insert(peer);
    }

    /// Bytes sent to each peer so far, by peer rank.
    pub fn bytes_sent(&self) -> &BTreeMap<usize, u64> {
        &self.sent
    }

    /// Bytes received from each peer so far, by peer rank.
    pub fn bytes_received(&self) -> &BTreeMap<usize, u64> {
        &self.received
    }

    /// The number of distinct peers talked to (either way) since the previous call.
    pub fn take_window(&mut self) -> usize {
        let peers = self.window.len();
        self.window.clear();
        peers
    }

    /// The counters, for a checkpoint: (peer, bytes) pairs flattened, and the window's peers.
    pub fn save_state(&self) -> StateDict {
        let pairs = |m: &BTreeMap<usize, u64>| -> Vec<u64> {
            m.iter().flat_map(|(&p, &b)| [p as u64, b]).collect()
        };
        let mut state = StateDict::new();
        state.put_u64s("sent", &pairs(&self.sent));
        state.put_u64s("received", &pairs(&self.received));
        let window: Vec<u64> = self.window.iter().map(|&p| p as u64).collect();
        state.put_u64s("window", &window);
        state
    }

    pub fn load_state(&mut self, state: &StateDict) -> Result<()> {
        let map = |key: &str| -> Result<BTreeMap<usize, u64>> {
            let v = state.u64s(key)?;
            if !v.len().is_multiple_of(2) {
                return Err(crate::Error::Checkpoint(format!(
                    "entry '{key}' must hold (peer, bytes) pairs"
                )));
            }
            Ok(v.chunks_exact(2).map(|c| (c[0] as usize, c[1])).collect())
        };
        self.sent = map("sent")?;
        self.received = map("received")?;
        self.window = state.u64s("window")?.iter().map(|&p| p as usize).collect();
        Ok(())
    }
}

/// One worker's gossip buffers and counters.
#[derive(Debug, Default)]
pub struct Gossip {
    incoming: Vec<f32>,
    /// Sends still in flight; completed after the round's receives, so that a transport
    /// whose large sends wait for the matching receive (MPI's rendezvous) cannot deadlock.
    sends: Vec<SendRequest>,
    pub links: LinkStats,
}

impl Gossip {
    pub fn new(len: usize) -> Self {
        Self {
            incoming: vec![0.0; len],
            sends: Vec::new(),
            links: LinkStats::default(),
        }
    }

    /// A whole consensus round: send `params` to the round's out-peers, then
    /// `params ← W_ii·params + Σ_j W_ij·x_j` over the in-peers, in peer order.
    pub fn mix(
        &mut self,
        comm: &mut dyn Communicator,
        node: &NodeRound,
        params: &mut [f32],
    ) -> Result<()> {
        self.start(comm, node, params)?;
        self.finish(comm, node, params)
    }

    /// Sends `params` to the round's out-peers (the transport copies them, so `params` may
    /// change right away): the first half of a round whose receives come later, as in
    /// combine-while-computing D-PSGD.
    pub fn start(
        &mut self,
        comm: &mut dyn Communicator,
        node: &NodeRound,
        params: &[f32],
    ) -> Result<()> {
        for &(peer, _) in &node.send {
            self.sends.push(comm.isend(peer, TAG_GOSSIP, params)?);
            self.links.sent_to(peer, params.len());
        }
        Ok(())
    }

    /// Receives the round's in-peers' parameters and mixes them into `params`.
    pub fn finish(
        &mut self,
        comm: &mut dyn Communicator,
        node: &NodeRound,
        params: &mut [f32],
    ) -> Result<()> {
        if node.self_weight != 1.0 {
            kernels::scale(params, node.self_weight as f32);
        }
        self.incoming.resize(params.len(), 0.0);
        for &(peer, weight) in &node.recv {
            comm.recv(peer, TAG_GOSSIP, &mut self.incoming)?;
            self.links.received_from(peer, params.len());
            kernels::axpy(params, weight as f32, &self.incoming);
        }
        for request in self.sends.drain(..) {
            comm.wait_send(request)?;
        }
        Ok(())
    }
}
