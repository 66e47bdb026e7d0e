//! No communication: every worker runs plain local SGD. The baseline every method is
//! compared with, and the reference that "LSGD with λ = 0" must reproduce exactly.

use serde::{Deserialize, Serialize};

use super::Algorithm;

/// `name = "independent"`; no keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndependentConfig {}

/// The state of a worker that never communicates.
pub struct Independent;

impl Algorithm for Independent {}
