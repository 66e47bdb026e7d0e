//! No communication: every worker runs plain local SGD. The baseline every method is
//! compared with, and the reference that "LSGD with λ = 0" must reproduce exactly.

use serde::{Deserialize, Serialize};

use super::{Algorithm, AlgorithmSpec, RunShape, Synchronous, Touches};
use crate::checkpoint::StateDict;
use crate::Result;

/// `name = "independent"`; no keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndependentConfig {}

impl AlgorithmSpec for IndependentConfig {
    const NAME: &'static str = "independent";
    const SUMMARY: &'static str = "no communication: N independent SGD runs";
    type Timing = Synchronous;

    fn build(&self, _run: &RunShape<'_>, _len: usize) -> Result<Box<dyn Algorithm>> {
        Ok(Box::new(Independent))
    }
}

/// The state of a worker that never communicates.
pub struct Independent;

impl Algorithm for Independent {
    // Stateless between steps: nothing to save.
    fn save_state(&self, _state: &mut StateDict) -> Result<()> {
        Ok(())
    }
    fn load_state(&mut self, _state: &StateDict) -> Result<()> {
        Ok(())
    }
    fn touches(&self, _step: u64) -> Touches {
        Touches::NONE
    }
}
