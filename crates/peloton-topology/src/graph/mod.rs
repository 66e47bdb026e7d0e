//! Static undirected communication graphs and their decomposition into matchings.
//!
//! A [`Graph`] is simple (no self-loops, no multi-edges) and stored in a canonical form — edges
//! normalized to `a < b`, sorted and deduplicated, adjacency lists sorted — so that two workers
//! building the same graph get bit-identical structures, and everything derived from it
//! (matchings, mixing weights, schedules) is the same on every worker.

mod complete;
mod edge_list;
mod erdos_renyi;
mod exponential;
mod hypercube;
mod matchings;
mod regular;
mod ring;
mod star;
mod torus;

use std::collections::VecDeque;
use std::path::PathBuf;

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};

use crate::{ensure, Result, TopologyError};
use torus::most_square_rows;

/// How many graphs [`Graph::erdos_renyi`] and [`Graph::random_regular`] draw before giving up.
const MAX_DRAWS: usize = 1000;

/// An undirected simple graph on nodes `0..n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    n: usize,
    /// Canonical edge list: `a < b`, sorted, no duplicates.
    edges: Vec<(usize, usize)>,
    /// Sorted neighbour list of every node.
    adjacency: Vec<Vec<usize>>,
}

impl Graph {
    /// Builds a graph from any edge list; the order and orientation of the edges and repeated
    /// edges do not matter. Errors on `n = 0`, self-loops and nodes `≥ n`.
    pub fn new(n: usize, edges: impl IntoIterator<Item = (usize, usize)>) -> Result<Graph> {
        ensure!(n >= 1, "a graph needs at least one node");
        let mut canonical = Vec::new();
        for (a, b) in edges {
            ensure!(a != b, "edge ({a}, {b}) is a self-loop");
            ensure!(
                a < n && b < n,
                "edge ({a}, {b}) names node {}, but the graph has {n} nodes (0..{n})",
                a.max(b)
            );
            canonical.push((a.min(b), a.max(b)));
        }
        canonical.sort_unstable();
        canonical.dedup();
        let mut adjacency = vec![Vec::new(); n];
        for &(a, b) in &canonical {
            adjacency[a].push(b);
            adjacency[b].push(a);
        }
        for list in &mut adjacency {
            list.sort_unstable();
        }
        Ok(Graph {
            n,
            edges: canonical,
            adjacency,
        })
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Canonical edges: `a < b`, sorted.
    pub fn edges(&self) -> &[(usize, usize)] {
        &self.edges
    }

    /// Sorted neighbours of `i` (empty for `i ≥ n`).
    pub fn neighbors(&self, i: usize) -> &[usize] {
        self.adjacency.get(i).map_or(&[], Vec::as_slice)
    }

    pub fn degree(&self, i: usize) -> usize {
        self.neighbors(i).len()
    }

    /// Δ, the largest degree.
    pub fn max_degree(&self) -> usize {
        self.adjacency.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// True when every node has the same degree.
    pub fn is_regular(&self) -> bool {
        let d = self.degree(0);
        self.adjacency.iter().all(|list| list.len() == d)
    }

    pub fn is_connected(&self) -> bool {
        self.components().len() == 1
    }

    /// Connected components, each sorted, ordered by their smallest node.
    pub fn components(&self) -> Vec<Vec<usize>> {
        let mut seen = vec![false; self.n];
        let mut components = Vec::new();
        for start in 0..self.n {
            if seen[start] {
                continue;
            }
            seen[start] = true;
            let mut component = vec![start];
            let mut queue = VecDeque::from([start]);
            while let Some(v) = queue.pop_front() {
                for &w in &self.adjacency[v] {
                    if !seen[w] {
                        seen[w] = true;
                        component.push(w);
                        queue.push_back(w);
                    }
                }
            }
            component.sort_unstable();
            components.push(component);
        }
        components
    }

    /// L = D − A.
    pub fn laplacian(&self) -> DMatrix<f64> {
        edge_laplacian(self.n, &self.edges)
    }

    /// The same graph with node `i` renamed `perm[i]`; errors unless `perm` is a permutation of
    /// `0..n`.
    pub fn relabel(&self, perm: &[usize]) -> Result<Graph> {
        check_permutation(perm, self.n)?;
        Graph::new(self.n, self.edges.iter().map(|&(a, b)| (perm[a], perm[b])))
    }
}

/// Errors unless `perm` is a permutation of `0..n`.
pub(crate) fn check_permutation(perm: &[usize], n: usize) -> Result<()> {
    ensure!(
        perm.len() == n,
        "a relabeling of {n} nodes needs {n} labels, got {}",
        perm.len()
    );
    let mut seen = vec![false; n];
    for &p in perm {
        ensure!(
            p < n && !seen[p],
            "the relabeling is not a permutation of 0..{n} (label {p})"
        );
        seen[p] = true;
    }
    Ok(())
}

/// The Laplacian of an edge list on `n` nodes; edges naming a node `≥ n` are ignored.
fn edge_laplacian(n: usize, edges: &[(usize, usize)]) -> DMatrix<f64> {
    let mut l = DMatrix::zeros(n, n);
    for &(a, b) in edges.iter().filter(|&&(a, b)| a < n && b < n) {
        l[(a, a)] += 1.0;
        l[(b, b)] += 1.0;
        l[(a, b)] -= 1.0;
        l[(b, a)] -= 1.0;
    }
    l
}
/// A set of node-disjoint edges: every node has at most one partner.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Matching {
    pub edges: Vec<(usize, usize)>,
}

impl Matching {
    /// A validated matching on `n` nodes: edges normalized (`a < b`) and sorted; errors on
    /// self-loops, nodes `≥ n` and nodes used twice.
    pub fn new(n: usize, edges: impl IntoIterator<Item = (usize, usize)>) -> Result<Matching> {
        let matching = Matching {
            edges: edges
                .into_iter()
                .map(|(a, b)| (a.min(b), a.max(b)))
                .collect(),
        };
        matching.validate(n)?;
        let mut edges = matching.edges;
        edges.sort_unstable();
        Ok(Matching { edges })
    }

    /// Errors unless every edge joins two distinct nodes `< n` and no node appears twice.
    pub fn validate(&self, n: usize) -> Result<()> {
        let mut used = vec![false; n];
        for &(a, b) in &self.edges {
            ensure!(a != b, "matching edge ({a}, {b}) is a self-loop");
            ensure!(
                a < n && b < n,
                "matching edge ({a}, {b}) names node {}, but there are {n} nodes",
                a.max(b)
            );
            for v in [a, b] {
                ensure!(!used[v], "node {v} appears twice in one matching");
                used[v] = true;
            }
        }
        Ok(())
    }

    /// The node matched with `i`, if any.
    pub fn partner(&self, i: usize) -> Option<usize> {
        self.edges.iter().find_map(|&(a, b)| {
            if a == i {
                Some(b)
            } else if b == i {
                Some(a)
            } else {
                None
            }
        })
    }

    /// True when `i` is matched.
    pub fn contains(&self, i: usize) -> bool {
        self.partner(i).is_some()
    }

    /// The Laplacian of the matching on `n` nodes (edges naming a node `≥ n` are ignored; see
    /// [`Matching::validate`]). For a matching L² = 2L, which makes MATCHA's second moment
    /// closed-form.
    pub fn laplacian(&self, n: usize) -> DMatrix<f64> {
        edge_laplacian(n, &self.edges)
    }
}

fn default_p() -> f64 {
    0.5
}

/// A graph as written in a config file (`graph = { kind = "torus", rows = 2 }`); built for the
/// worker count with [`GraphSpec::build`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum GraphSpec {
    #[default]
    Ring,
    /// A rows × (n / rows) wraparound grid; the most square factorization when `rows` is absent.
    Torus {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows: Option<usize>,
    },
    Hypercube,
    Complete,
    Star,
    Exponential,
    /// G(n, p) conditioned on being connected.
    ErdosRenyi {
        #[serde(default = "default_p")]
        p: f64,
        #[serde(default)]
        seed: u64,
    },
    /// A random connected `degree`-regular graph.
    Regular {
        degree: usize,
        #[serde(default)]
        seed: u64,
    },
    /// An edge-list file (see [`Graph::parse_edge_list`]); its node count must be n.
    File {
        path: PathBuf,
    },
    /// An explicit edge list on nodes `0..n`.
    Edges {
        edges: Vec<[usize; 2]>,
    },
}

impl GraphSpec {
    /// Builds the graph for `n` workers; errors when it does not fit `n`.
    pub fn build(&self, n: usize) -> Result<Graph> {
        ensure!(n >= 1, "a graph needs at least one node");
        match self {
            GraphSpec::Ring => Graph::ring(n),
            GraphSpec::Torus { rows } => {
                let rows = match *rows {
                    Some(rows) => {
                        ensure!(
                            rows >= 1 && n.is_multiple_of(rows),
                            "torus rows = {rows} does not divide {n} nodes"
                        );
                        rows
                    }
                    None => most_square_rows(n),
                };
                Graph::torus(rows, n / rows)
            }
            GraphSpec::Hypercube => Graph::hypercube(n),
            GraphSpec::Complete => Graph::complete(n),
            GraphSpec::Star => Graph::star(n),
            GraphSpec::Exponential => Graph::exponential(n),
            GraphSpec::ErdosRenyi { p, seed } => Graph::erdos_renyi(n, *p, *seed),
            GraphSpec::Regular { degree, seed } => Graph::random_regular(n, *degree, *seed),
            GraphSpec::File { path } => {
                let graph = Graph::from_file(path)?;
                ensure!(
                    graph.n() == n,
                    "graph file {} has {} nodes, but there are {n} workers",
                    path.display(),
                    graph.n()
                );
                Ok(graph)
            }
            GraphSpec::Edges { edges } => Graph::new(n, edges.iter().map(|&[a, b]| (a, b))),
        }
    }

    /// A short human-readable name, e.g. "erdos-renyi(p=0.5, seed=0)".
    pub fn name(&self) -> String {
        match self {
            GraphSpec::Ring => "ring".into(),
            GraphSpec::Torus { rows: None } => "torus".into(),
            GraphSpec::Torus { rows: Some(rows) } => format!("torus(rows={rows})"),
            GraphSpec::Hypercube => "hypercube".into(),
            GraphSpec::Complete => "complete".into(),
            GraphSpec::Star => "star".into(),
            GraphSpec::Exponential => "exponential".into(),
            GraphSpec::ErdosRenyi { p, seed } => format!("erdos-renyi(p={p}, seed={seed})"),
            GraphSpec::Regular { degree, seed } => format!("regular(degree={degree}, seed={seed})"),
            GraphSpec::File { path } => format!("file({})", path.display()),
            GraphSpec::Edges { edges } => format!("edges({} edges)", edges.len()),
        }
    }

    /// Parses the command-line form: `ring`, `torus`, `torus:ROWS`, `hypercube`, `complete`,
    /// `star`, `exponential` / `exp`, `er` / `erdos-renyi` with optional `:P`, `regular:DEGREE`,
    /// `file:PATH`. `seed` seeds the random graphs (the command line's `--seed`).
    pub fn parse_short(s: &str, seed: u64) -> Result<GraphSpec> {
        let (name, arg) = match s.split_once(':') {
            Some((name, arg)) => (name, Some(arg)),
            None => (s, None),
        };
        let number = |what: &str| -> Result<usize> {
            let arg = arg.unwrap_or("");
            arg.parse().map_err(|_| {
                TopologyError(format!(
                    "graph {s:?}: {what} must be a whole number, got {arg:?}"
                ))
            })
        };
        let spec = match (name, arg) {
            ("ring", None) => GraphSpec::Ring,
            ("torus", None) => GraphSpec::Torus { rows: None },
            ("torus", Some(_)) => GraphSpec::Torus {
                rows: Some(number("rows")?),
            },
            ("hypercube", None) => GraphSpec::Hypercube,
            ("complete", None) => GraphSpec::Complete,
            ("star", None) => GraphSpec::Star,
            ("exponential" | "exp", None) => GraphSpec::Exponential,
            ("er" | "erdos-renyi", None) => GraphSpec::ErdosRenyi {
                p: default_p(),
                seed,
            },
            ("er" | "erdos-renyi", Some(p)) => GraphSpec::ErdosRenyi {
                p: p.parse().map_err(|_| {
                    TopologyError(format!("graph {s:?}: p must be a number, got {p:?}"))
                })?,
                seed,
            },
            ("regular", Some(_)) => GraphSpec::Regular {
                degree: number("degree")?,
                seed,
            },
            ("file", Some(path)) if !path.is_empty() => GraphSpec::File { path: path.into() },
            _ => {
                return Err(TopologyError(format!(
                    "unknown graph {s:?} (expected ring, torus[:ROWS], hypercube, complete, star, \
                     exponential, er[:P], regular:DEGREE or file:PATH)"
                )))
            }
        };
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn new_normalizes_and_rejects_bad_edges() {
        let g = Graph::new(4, [(2, 1), (1, 2), (0, 3), (3, 0), (1, 0)]).unwrap();
        assert_eq!(g.edges(), &[(0, 1), (0, 3), (1, 2)]);
        assert_eq!(g.neighbors(0), &[1, 3]);
        assert_eq!(g.degree(1), 2);
        assert_eq!(g.neighbors(7), &[] as &[usize]);
        let err = Graph::new(4, [(1, 1)]).unwrap_err().0;
        assert!(err.contains("(1, 1)") && err.contains("self-loop"), "{err}");
        let err = Graph::new(4, [(1, 4)]).unwrap_err().0;
        assert!(err.contains("(1, 4)") && err.contains("node 4"), "{err}");
        assert!(Graph::new(0, []).is_err());
    }

    #[test]
    fn components_and_laplacian() {
        let g = Graph::new(6, [(0, 4), (1, 2), (2, 5)]).unwrap();
        assert_eq!(g.components(), vec![vec![0, 4], vec![1, 2, 5], vec![3]]);
        assert!(!g.is_connected());
        let l = Graph::ring(4).unwrap().laplacian();
        assert_eq!(l[(0, 0)], 2.0);
        assert_eq!(l[(0, 1)], -1.0);
        assert_eq!(l[(0, 2)], 0.0);
        assert!(l.row_sum().iter().all(|&s| s == 0.0));
    }

    #[test]
    fn relabel_maps_nodes() {
        let g = Graph::star(4).unwrap();
        let r = g.relabel(&[2, 0, 1, 3]).unwrap();
        assert_eq!(r.neighbors(2), &[0, 1, 3]);
        assert!(g.relabel(&[0, 0, 1, 2]).is_err());
        assert!(g.relabel(&[0, 1]).is_err());
    }

    #[test]
    fn matching_helpers() {
        let m = Matching::new(5, [(3, 1), (0, 2)]).unwrap();
        assert_eq!(m.edges, vec![(0, 2), (1, 3)]);
        assert_eq!(m.partner(3), Some(1));
        assert_eq!(m.partner(4), None);
        assert!(m.contains(0) && !m.contains(4));
        let l = m.laplacian(5);
        assert_eq!(&l * &l, &l * 2.0);
        assert!(Matching::new(4, [(0, 1), (1, 2)])
            .unwrap_err()
            .0
            .contains("node 1"));
        assert!(Matching::new(2, [(0, 2)]).is_err());
    }

    #[test]
    fn spec_builds_and_names() {
        assert_eq!(GraphSpec::default(), GraphSpec::Ring);
        let torus = GraphSpec::Torus { rows: None }.build(12).unwrap();
        assert_eq!(torus, Graph::torus(3, 4).unwrap());
        assert_eq!(most_square_rows(7), 1);
        assert_eq!(most_square_rows(16), 4);
        let err = GraphSpec::Torus { rows: Some(3) }.build(8).unwrap_err().0;
        assert!(err.contains("rows = 3") && err.contains("8"), "{err}");
        assert!(GraphSpec::Torus { rows: Some(0) }.build(8).is_err());
        let er = GraphSpec::ErdosRenyi { p: 0.5, seed: 0 };
        assert_eq!(er.name(), "erdos-renyi(p=0.5, seed=0)");
        assert!(GraphSpec::ErdosRenyi { p: 1.5, seed: 0 }.build(4).is_err());
        let edges = GraphSpec::Edges {
            edges: vec![[0, 1], [1, 2]],
        };
        assert_eq!(edges.build(3).unwrap().edges(), &[(0, 1), (1, 2)]);
        assert!(edges.build(2).is_err());
        assert!(GraphSpec::Hypercube.build(6).is_err());
    }

    #[test]
    fn parse_short_forms() {
        let p = |s| GraphSpec::parse_short(s, 9);
        assert_eq!(p("ring").unwrap(), GraphSpec::Ring);
        assert_eq!(p("torus:2").unwrap(), GraphSpec::Torus { rows: Some(2) });
        assert_eq!(p("exp").unwrap(), GraphSpec::Exponential);
        assert_eq!(p("er").unwrap(), GraphSpec::ErdosRenyi { p: 0.5, seed: 9 });
        assert_eq!(
            p("erdos-renyi:0.3").unwrap(),
            GraphSpec::ErdosRenyi { p: 0.3, seed: 9 }
        );
        assert_eq!(
            p("regular:4").unwrap(),
            GraphSpec::Regular { degree: 4, seed: 9 }
        );
        assert_eq!(
            p("file:/tmp/g.txt").unwrap(),
            GraphSpec::File {
                path: "/tmp/g.txt".into()
            }
        );
        for bad in [
            "regular",
            "regular:x",
            "torus:a",
            "er:p",
            "file:",
            "mesh",
            "ring:3",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_toml() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Wrapper {
            graph: GraphSpec,
        }
        let w: Wrapper = toml::from_str("graph = { kind = \"erdos-renyi\", seed = 3 }").unwrap();
        assert_eq!(w.graph, GraphSpec::ErdosRenyi { p: 0.5, seed: 3 });
        let w: Wrapper = toml::from_str("graph = { kind = \"torus\" }").unwrap();
        assert_eq!(w.graph, GraphSpec::Torus { rows: None });
        let w: Wrapper = toml::from_str("graph = { kind = \"edges\", edges = [[0, 1]] }").unwrap();
        assert_eq!(
            w.graph,
            GraphSpec::Edges {
                edges: vec![[0, 1]]
            }
        );
        assert!(toml::from_str::<Wrapper>("graph = { kind = \"torus\", row = 2 }").is_err());
        assert!(toml::from_str::<Wrapper>("graph = { kind = \"mesh\" }").is_err());
        for spec in [
            GraphSpec::Ring,
            GraphSpec::Torus { rows: Some(2) },
            GraphSpec::Regular { degree: 3, seed: 1 },
        ] {
            let text = toml::to_string(&Wrapper {
                graph: spec.clone(),
            })
            .unwrap();
            assert_eq!(toml::from_str::<Wrapper>(&text).unwrap().graph, spec);
        }
    }

    // The constructors of hypercube.rs, complete.rs, star.rs and exponential.rs, together.
    #[test]
    fn hypercube_complete_star_exponential() {
        let h = Graph::hypercube(8).unwrap();
        assert_eq!(h.edges().len(), 12);
        assert!(h.is_regular() && h.degree(5) == 3);
        assert!(Graph::hypercube(6).unwrap_err().0.contains("power-of-two"));
        assert_eq!(Graph::hypercube(1).unwrap().n(), 1);
        assert_eq!(Graph::complete(5).unwrap().edges().len(), 10);
        let s = Graph::star(4).unwrap();
        assert_eq!(s.edges(), &[(0, 1), (0, 2), (0, 3)]);
        assert!(!s.is_regular());
        // 8 nodes: hops 1, 2, 4; +4 ≡ −4 so degree 2 + 2 + 1 = 5.
        let e = Graph::exponential(8).unwrap();
        assert!(e.is_regular() && e.degree(0) == 5);
        assert_eq!(e.neighbors(0), &[1, 2, 4, 6, 7]);
    }

    pub(super) fn random_graph() -> impl Strategy<Value = Graph> {
        (
            1usize..=24,
            prop::collection::vec((0usize..24, 0usize..24), 0..80),
        )
            .prop_map(|(n, pairs)| {
                Graph::new(
                    n,
                    pairs.into_iter().filter(|&(a, b)| a < n && b < n && a != b),
                )
                .unwrap()
            })
    }

    proptest! {
        #[test]
        fn laplacian_rows_sum_to_zero(g in random_graph()) {
            let l = g.laplacian();
            prop_assert!(l.row_sum().iter().all(|s| s.abs() == 0.0));
            prop_assert_eq!(l.trace(), 2.0 * g.edges().len() as f64);
        }
    }
}
