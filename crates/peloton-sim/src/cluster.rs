//! The simulated cluster: nodes of workers, the links between them, how collectives are
//! implemented, the compute model and injected faults — all from a TOML section.
//!
//! ```toml
//! [transport]
//! kind = "sim"
//!
//! [transport.cluster]
//! workers_per_node = 4
//! intra = { latency_us = 5, bandwidth_gbps = 800 }     # NVLink-class, inside a node
//! inter = { latency_us = 50, bandwidth_gbps = 10 }     # 10 Gb/s Ethernet between nodes
//! compute = { kind = "constant", seconds = 0.1 }
//! ```
//!
//! Workers are placed on nodes in rank order: ranks 0..k−1 on node 0, and so on.

use serde::{Deserialize, Serialize};

use crate::compute::ComputeModel;
use peloton_core::{ensure_config, Result};

/// One kind of link: latency α and bandwidth (β = 8 / (bandwidth_gbps · 10⁹) seconds per byte).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// α, in microseconds.
    pub latency_us: f64,
    /// In gigabits per second.
    pub bandwidth_gbps: f64,
}

impl Link {
    /// α in seconds.
    pub fn alpha(&self) -> f64 {
        self.latency_us * 1e-6
    }

    /// β: seconds per byte.
    pub fn beta(&self) -> f64 {
        8.0 / (self.bandwidth_gbps * 1e9)
    }

    fn validate(&self, what: &str) -> Result<()> {
        ensure_config!(
            self.latency_us.is_finite() && self.latency_us >= 0.0,
            "transport.cluster.{what}.latency_us must be ≥ 0, got {}",
            self.latency_us
        );
        ensure_config!(
            self.bandwidth_gbps.is_finite() && self.bandwidth_gbps > 0.0,
            "transport.cluster.{what}.bandwidth_gbps must be positive, got {}",
            self.bandwidth_gbps
        );
        Ok(())
    }
}

/// A link between two particular nodes that differs from `inter` (both directions).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkOverride {
    pub nodes: [usize; 2],
    pub latency_us: f64,
    pub bandwidth_gbps: f64,
}

/// How the collectives are costed (what MPI / NCCL would pick).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CollectiveAlgorithm {
    /// Ring all-reduce and all-gather, binomial-tree broadcast and reduce.
    Ring,
    /// Binomial-tree reduce followed by broadcast for all-reduce.
    Tree,
    /// The cheaper of ring and tree for each all-reduce (small messages favour the tree).
    #[default]
    Auto,
}

/// Faults are the core's: `at` is virtual seconds here.
pub use peloton_core::transport::{Fault, FaultKind};

/// The whole cluster model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Workers sharing a node (and its network interface).
    #[serde(default = "default_workers_per_node")]
    pub workers_per_node: usize,
    /// Number of nodes; when given, nodes × workers_per_node must equal the worker count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<usize>,
    /// Links inside a node.
    #[serde(default = "default_intra")]
    pub intra: Link,
    /// Links between nodes.
    #[serde(default = "default_inter")]
    pub inter: Link,
    /// Node pairs whose link differs from `inter`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<LinkOverride>,
    /// Messages leaving or entering a node share its NIC and serialize.
    #[serde(default = "yes")]
    pub contention: bool,
    #[serde(default)]
    pub collectives: CollectiveAlgorithm,
    #[serde(default)]
    pub compute: ComputeModel,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
    /// Write a Chrome / Perfetto trace (`trace.json`) of at most `trace_events` events.
    #[serde(default = "default_trace_events")]
    pub trace_events: usize,
    /// Virtual time an idle polling worker lets pass between two polls (asynchronous
    /// algorithms: a passive AD-PSGD worker waiting for requests), in microseconds.
    #[serde(default = "default_poll_interval_us")]
    pub poll_interval_us: f64,
}

fn default_poll_interval_us() -> f64 {
    100.0
}

fn default_workers_per_node() -> usize {
    4
}
fn default_intra() -> Link {
    Link {
        latency_us: 5.0,
        bandwidth_gbps: 800.0,
    }
}
fn default_inter() -> Link {
    Link {
        latency_us: 50.0,
        bandwidth_gbps: 10.0,
    }
}
fn yes() -> bool {
    true
}
fn default_trace_events() -> usize {
    200_000
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            workers_per_node: default_workers_per_node(),
            nodes: None,
            intra: default_intra(),
            inter: default_inter(),
            links: Vec::new(),
            contention: true,
            collectives: CollectiveAlgorithm::default(),
            compute: ComputeModel::default(),
            faults: Vec::new(),
            trace_events: default_trace_events(),
            poll_interval_us: default_poll_interval_us(),
        }
    }
}

impl ClusterConfig {
    /// The named presets, with a one-line description each.
    pub fn presets() -> &'static [(&'static str, &'static str)] {
        &[
            (
                "ethernet-10g",
                "4 GPUs per node (NVLink-class 5 µs, 800 Gb/s inside), 10 Gb/s Ethernet between nodes (50 µs); --workers 16 is the LSGD paper's 4 × 4",
            ),
            (
                "ethernet-1g",
                "4 GPUs per node, 1 Gb/s Ethernet between nodes (100 µs): a slow network",
            ),
            (
                "infiniband-100g",
                "8 GPUs per node (5 µs, 800 Gb/s inside), 100 Gb/s InfiniBand between nodes (2 µs); --workers 256 is SGP's 32 × 8",
            ),
        ]
    }

    /// A preset by name.
    pub fn preset(name: &str) -> Option<ClusterConfig> {
        let base = ClusterConfig::default();
        Some(match name {
            "ethernet-10g" => base,
            "ethernet-1g" => ClusterConfig {
                inter: Link {
                    latency_us: 100.0,
                    bandwidth_gbps: 1.0,
                },
                ..base
            },
            "infiniband-100g" => ClusterConfig {
                workers_per_node: 8,
                inter: Link {
                    latency_us: 2.0,
                    bandwidth_gbps: 100.0,
                },
                ..base
            },
            _ => return None,
        })
    }

    /// Checks the model against a run of `workers` workers.
    pub fn validate(&self, workers: usize) -> Result<()> {
        ensure_config!(
            self.workers_per_node >= 1,
            "transport.cluster.workers_per_node must be at least 1"
        );
        if let Some(nodes) = self.nodes {
            // u128: the product of two configured counts may not fit a usize.
            let total = nodes as u128 * self.workers_per_node as u128;
            ensure_config!(
                total == workers as u128,
                "transport.cluster.nodes × transport.workers_per_node = {nodes} × {} = {total} does not match the {workers} workers",
                self.workers_per_node,
            );
        }
        self.intra.validate("intra")?;
        self.inter.validate("inter")?;
        let nodes = self.node_count(workers);
        for o in &self.links {
            ensure_config!(
                o.nodes[0] < nodes && o.nodes[1] < nodes && o.nodes[0] != o.nodes[1],
                "transport.cluster.links: nodes {:?} must be two different nodes of 0..{nodes}",
                o.nodes
            );
            Link {
                latency_us: o.latency_us,
                bandwidth_gbps: o.bandwidth_gbps,
            }
            .validate("links")?;
        }
        self.compute.validate(workers)?;
        for f in &self.faults {
            f.validate(workers).map_err(|e| {
                peloton_core::Error::Config(format!("transport.cluster.faults: {e}"))
            })?;
        }
        ensure_config!(
            self.poll_interval_us.is_finite() && self.poll_interval_us > 0.0,
            "transport.cluster.poll_interval_us must be positive, got {}",
            self.poll_interval_us
        );
        Ok(())
    }

    /// Nodes used by `workers` workers.
    pub fn node_count(&self, workers: usize) -> usize {
        workers.div_ceil(self.workers_per_node.max(1))
    }

    /// The node of a worker.
    pub fn node_of(&self, worker: usize) -> usize {
        worker / self.workers_per_node.max(1)
    }

    /// The link between two workers (intra-node when they share a node).
    pub fn link(&self, a: usize, b: usize) -> Link {
        let (na, nb) = (self.node_of(a), self.node_of(b));
        if na == nb {
            return self.intra;
        }
        self.links
            .iter()
            .find(|o| o.nodes == [na, nb] || o.nodes == [nb, na])
            .map(|o| Link {
                latency_us: o.latency_us,
                bandwidth_gbps: o.bandwidth_gbps,
            })
            .unwrap_or(self.inter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_documented() {
        for (name, _) in ClusterConfig::presets() {
            let c = ClusterConfig::preset(name).unwrap();
            c.validate(16).unwrap();
        }
        assert!(ClusterConfig::preset("nope").is_none());
    }

    #[test]
    fn links_follow_nodes_and_overrides() {
        let c = ClusterConfig {
            workers_per_node: 2,
            links: vec![LinkOverride {
                nodes: [2, 0],
                latency_us: 1.0,
                bandwidth_gbps: 1.0,
            }],
            ..Default::default()
        };
        assert_eq!(c.link(0, 1), c.intra);
        assert_eq!(c.link(0, 2), c.inter);
        assert_eq!(c.link(5, 1).latency_us, 1.0);
        // 10 Gb/s = 1.25 GB/s: 0.8 ns per byte.
        assert!((c.inter.beta() - 0.8e-9).abs() < 1e-20);
        assert_eq!(c.node_count(5), 3);
    }

    #[test]
    fn bad_clusters_are_named() {
        let err = |c: ClusterConfig, n: usize| c.validate(n).unwrap_err().to_string();
        assert!(err(
            ClusterConfig {
                nodes: Some(3),
                ..Default::default()
            },
            16
        )
        .contains("does not match the 16 workers"));
        assert!(err(
            ClusterConfig {
                inter: Link {
                    latency_us: 1.0,
                    bandwidth_gbps: 0.0
                },
                ..Default::default()
            },
            4
        )
        .contains("bandwidth_gbps"));
        let toml_err = toml::from_str::<ClusterConfig>("workers_per_nod = 4").unwrap_err();
        assert!(toml_err.to_string().contains("workers_per_nod"));
    }
}
