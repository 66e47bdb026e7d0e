//! # peloton-topology
//!
//! Who talks to whom, and with which weights — as data. Decentralized algorithms in
//! peloton-core never build graphs themselves: they ask a [`Schedule`] for the [`Round`] of
//! step `t` (a sparse mixing matrix W(t), identical on every worker because it is a pure
//! function of the config, the worker count, the run seed and `t`) and exchange accordingly.
//!
//! Following fairscale's split of gossip into *graph* (who), *mixing* (weights) and
//! *protocol* (what is sent), this crate holds the first two:
//! * [`graph`]: static undirected graphs (ring, torus, hypercube, complete, star, exponential,
//!   Erdős–Rényi, random regular, edge lists) and their decomposition into matchings;
//! * [`weights`]: mixing weights on a static graph (uniform, Metropolis–Hastings, max-degree,
//!   best constant);
//! * [`schedule`]: time-varying schedules (SGP's exponential graphs, bipartite exponential
//!   graphs, cycling matchings, MATCHA's random matchings, rotation among relabeled graphs),
//!   with the checks each protocol needs (stochasticity, connectivity of the union);
//! * [`matcha`]: MATCHA's activation probabilities and neighbour weight;
//! * [`spectral`]: the spectral gap and mixing rate of a schedule's expected mixing matrix.
//!
//! No transport and no tensor library here: the protocols live in peloton-core.

pub mod graph;
pub mod matcha;
pub mod schedule;
pub mod spectral;
pub mod text_file;
pub mod weights;

pub use graph::{Graph, GraphSpec, Matching};
pub use matcha::MatchaSolution;
pub use schedule::{Directions, Edge, NodeRound, Protocol, Role, Round, Schedule, ScheduleConfig};
pub use spectral::Diagnostics;
pub use weights::MixingWeights;

/// A topology that cannot be built or does not fit its use; the message is one line naming
/// the problem (the key, the node, the worker count).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TopologyError(pub String);

/// Shorthand used throughout the crate.
pub type Result<T, E = TopologyError> = std::result::Result<T, E>;

/// Returns `Err(TopologyError)` with the formatted message when `cond` is false.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::TopologyError(format!($($arg)+)));
        }
    };
}
pub(crate) use ensure;
