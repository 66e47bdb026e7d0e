//! Static undirected communication graphs and their decomposition into matchings.
//!
//! A [`Graph`] is simple (no self-loops, no multi-edges) and stored in a canonical form — edges
//! normalized to `a < b`, sorted and deduplicated, adjacency lists sorted — so that two workers
//! building the same graph get bit-identical structures, and everything derived from it
//! (matchings, mixing weights, schedules) is the same on every worker.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use nalgebra::DMatrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{ensure, Result, TopologyError};

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

    /// The cycle 0 – 1 – … – (n−1) – 0 (one edge for n = 2, none for n = 1).
    pub fn ring(n: usize) -> Result<Graph> {
        let edges = if n >= 2 {
            (0..n).map(|i| (i, (i + 1) % n)).collect()
        } else {
            Vec::new()
        };
        Graph::new(n, edges)
    }

    /// The `rows × cols` grid with wraparound; node (r, c) is `r·cols + c`. A dimension of
    /// length 2 contributes one edge per pair (not two parallel ones), a dimension of length 1
    /// none, so `torus(1, n)` is the ring.
    pub fn torus(rows: usize, cols: usize) -> Result<Graph> {
        ensure!(
            rows >= 1 && cols >= 1,
            "torus dimensions must be at least 1, got {rows}x{cols}"
        );
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| TopologyError(format!("torus {rows}x{cols} is too large")))?;
        let mut edges = Vec::new();
        for r in 0..rows {
            for c in 0..cols {
                let me = r * cols + c;
                if cols >= 2 {
                    edges.push((me, r * cols + (c + 1) % cols));
                }
                if rows >= 2 {
                    edges.push((me, ((r + 1) % rows) * cols + c));
                }
            }
        }
        Graph::new(n, edges)
    }

    /// The hypercube on `n = 2^d` nodes: i ~ j when their binary labels differ in one bit.
    pub fn hypercube(n: usize) -> Result<Graph> {
        ensure!(
            n.is_power_of_two(),
            "a hypercube needs a power-of-two number of nodes, got {n}"
        );
        let bits = n.trailing_zeros();
        let edges = (0..n).flat_map(|i| (0..bits).map(move |b| (i, i ^ (1 << b))));
        Graph::new(n, edges)
    }

    /// Every pair of nodes connected.
    pub fn complete(n: usize) -> Result<Graph> {
        Graph::new(n, (0..n).flat_map(|a| (a + 1..n).map(move |b| (a, b))))
    }

    /// Node 0 connected to every other node.
    pub fn star(n: usize) -> Result<Graph> {
        Graph::new(n, (1..n).map(|i| (0, i)))
    }

    /// The undirected exponential graph: i ~ i + 2^k (mod n) for every 2^k < n — the static
    /// counterpart of SGP's time-varying exponential schedule, degree O(log n), diameter
    /// O(log n).
    pub fn exponential(n: usize) -> Result<Graph> {
        let hops: Vec<usize> = std::iter::successors(Some(1usize), |h| h.checked_mul(2))
            .take_while(|&h| h < n)
            .collect();
        Graph::new(
            n,
            (0..n).flat_map(|i| hops.iter().map(move |&h| (i, (i + h) % n))),
        )
    }

    /// A connected G(n, p) graph: every pair is an edge independently with probability `p`,
    /// drawn from a ChaCha8 stream seeded by `seed`; disconnected draws are discarded and the
    /// next graph is drawn from the same stream (so the result is G(n, p) conditioned on being
    /// connected). Errors after 1000 disconnected draws: `p` is too small for `n`.
    pub fn erdos_renyi(n: usize, p: f64, seed: u64) -> Result<Graph> {
        ensure!(
            p > 0.0 && p <= 1.0,
            "erdos-renyi p must be in (0, 1], got {p}"
        );
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..MAX_DRAWS {
            let mut edges = Vec::new();
            for a in 0..n {
                for b in a + 1..n {
                    if rng.random::<f64>() < p {
                        edges.push((a, b));
                    }
                }
            }
            let graph = Graph::new(n, edges)?;
            if graph.is_connected() {
                return Ok(graph);
            }
        }
        Err(TopologyError(format!(
            "erdos-renyi p = {p} is too small for {n} nodes: {MAX_DRAWS} draws were all disconnected"
        )))
    }

    /// A connected simple `degree`-regular graph (an expander with high probability), drawn
    /// with the pairing model: every node gets `degree` stubs, and random stub pairs are joined
    /// unless they would make a self-loop or a repeated edge; a draw that gets stuck or comes
    /// out disconnected is redrawn from the same ChaCha8 stream.
    pub fn random_regular(n: usize, degree: usize, seed: u64) -> Result<Graph> {
        ensure!(n >= 1, "a graph needs at least one node");
        ensure!(
            degree < n,
            "a {degree}-regular graph needs more than {degree} nodes, got {n}"
        );
        ensure!(
            (n * degree).is_multiple_of(2),
            "a {degree}-regular graph on {n} nodes does not exist: n·degree must be even"
        );
        ensure!(
            n == 1 || degree >= 2 || (n == 2 && degree == 1),
            "a {degree}-regular graph on {n} nodes is disconnected; use degree ≥ 2"
        );
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..MAX_DRAWS {
            if let Some(edges) = pair_stubs(n, degree, &mut rng) {
                let graph = Graph::new(n, edges)?;
                if graph.is_connected() {
                    return Ok(graph);
                }
            }
        }
        Err(TopologyError(format!(
            "no connected simple {degree}-regular graph on {n} nodes found in {MAX_DRAWS} draws"
        )))
    }

    /// Parses an edge list: one edge `a b` per line, blank lines and `#` comments ignored. The
    /// node count is `n`, or the largest index plus one.
    pub fn parse_edge_list(text: &str, n: Option<usize>) -> Result<Graph> {
        let mut edges = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let parsed: Option<Vec<usize>> = fields.iter().map(|f| f.parse().ok()).collect();
            match parsed.as_deref() {
                Some(&[a, b]) => {
                    ensure!(a != b, "line {line_no}: self-loop on node {a}");
                    if let Some(n) = n {
                        ensure!(
                            a < n && b < n,
                            "line {line_no}: node {} is out of range for {n} nodes",
                            a.max(b)
                        );
                    }
                    edges.push((a, b));
                }
                _ => {
                    return Err(TopologyError(format!(
                        "line {line_no}: expected two node indices \"a b\", got {line:?}"
                    )))
                }
            }
        }
        let n = match n {
            Some(n) => n,
            None => {
                let max = edges.iter().map(|&(a, b)| a.max(b)).max();
                max.ok_or_else(|| {
                    TopologyError("the edge list has no edges and no node count".into())
                })? + 1
            }
        };
        Graph::new(n, edges)
    }

    /// Reads an edge list (see [`Graph::parse_edge_list`]) from a file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Graph> {
        let path = path.as_ref();
        let text = crate::text_file::read_text_file(path).map_err(|e| {
            TopologyError(format!("cannot read graph file {}: {e}", path.display()))
        })?;
        Graph::parse_edge_list(&text, None)
            .map_err(|e| TopologyError(format!("graph file {}: {e}", path.display())))
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

    /// A proper edge colouring with at most Δ + 1 colours (Misra–Gries), one [`Matching`] per
    /// non-empty colour class, in colour order. Every node has at most one edge per matching,
    /// so the matchings of MATCHA-style schedules can be run as deadlock-free pairwise
    /// exchanges. Deterministic: edges are coloured in canonical order.
    pub fn matchings(&self) -> Vec<Matching> {
        let colours = self.max_degree() + 1;
        let mut colouring = Colouring {
            at: vec![vec![None; colours]; self.n],
        };
        for &(u, v) in &self.edges {
            colouring.colour_edge(&self.adjacency, u, v);
        }
        (0..colours)
            .map(|c| Matching {
                edges: (0..self.n)
                    .filter_map(|v| colouring.at[v][c].filter(|&w| v < w).map(|w| (v, w)))
                    .collect(),
            })
            .filter(|m| !m.edges.is_empty())
            .collect()
    }
}

/// One draw of the pairing model: joins random stub pairs, skipping pairs that would make a
/// self-loop or a repeated edge. After a run of rejected picks, the remaining valid pairs are
/// listed and one is picked from them, so the draw never spins; `None` when none is left.
fn pair_stubs(n: usize, degree: usize, rng: &mut ChaCha8Rng) -> Option<Vec<(usize, usize)>> {
    const REJECTIONS_BEFORE_LISTING: usize = 64;
    let mut stubs: Vec<usize> = (0..n)
        .flat_map(|v| std::iter::repeat_n(v, degree))
        .collect();
    let mut edges = BTreeSet::new();
    let valid = |edges: &BTreeSet<(usize, usize)>, a: usize, b: usize| {
        a != b && !edges.contains(&(a.min(b), a.max(b)))
    };
    let mut rejections = 0;
    while !stubs.is_empty() {
        let (i, j) = if rejections < REJECTIONS_BEFORE_LISTING {
            (
                rng.random_range(0..stubs.len()),
                rng.random_range(0..stubs.len()),
            )
        } else {
            let pairs: Vec<(usize, usize)> = (0..stubs.len())
                .flat_map(|i| (i + 1..stubs.len()).map(move |j| (i, j)))
                .filter(|&(i, j)| valid(&edges, stubs[i], stubs[j]))
                .collect();
            if pairs.is_empty() {
                return None;
            }
            pairs[rng.random_range(0..pairs.len())]
        };
        let (a, b) = (stubs[i], stubs[j]);
        if i == j || !valid(&edges, a, b) {
            rejections += 1;
            continue;
        }
        rejections = 0;
        edges.insert((a.min(b), a.max(b)));
        stubs.swap_remove(i.max(j));
        stubs.swap_remove(i.min(j));
    }
    Some(edges.into_iter().collect())
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

/// State of the Misra–Gries edge colouring: `at[v][c]` is the neighbour joined to `v` by the
/// edge of colour `c`, if any. With Δ + 1 colours every node always has a free colour.
struct Colouring {
    at: Vec<Vec<Option<usize>>>,
}

impl Colouring {
    fn free(&self, v: usize) -> usize {
        self.at[v]
            .iter()
            .position(Option::is_none)
            .expect("a node of degree ≤ Δ always has one of Δ + 1 colours free")
    }

    fn colour_of(&self, u: usize, v: usize) -> Option<usize> {
        self.at[u].iter().position(|&w| w == Some(v))
    }

    fn set(&mut self, u: usize, v: usize, c: usize) {
        self.at[u][c] = Some(v);
        self.at[v][c] = Some(u);
    }

    fn unset(&mut self, u: usize, v: usize, c: usize) {
        self.at[u][c] = None;
        self.at[v][c] = None;
    }

    /// Colours the uncoloured edge (u, v) without exceeding Δ + 1 colours. When some colour is
    /// free on both ends, the lowest such colour is used directly (first fit: keeps bipartite
    /// and other easy graphs at Δ colours, e.g. 2 matchings for an even ring). Otherwise
    /// Misra–Gries:
    /// 1. build a maximal fan of u starting at v: distinct neighbours f_0 = v, f_1, … of u
    ///    where the colour of (u, f_{i+1}) is free on f_i;
    /// 2. let c be free on u and d free on the last fan node, and swap c and d along the
    ///    maximal path from u alternating d, c, d, … — afterwards d is free on u;
    /// 3. take the first fan node w with d free such that the fan prefix up to w is still a
    ///    fan (Misra and Gries prove one exists), shift the colours of the prefix down by one
    ///    (edge (u, f_i) takes the colour of (u, f_{i+1})), and colour (u, w) with d.
    fn colour_edge(&mut self, adjacency: &[Vec<usize>], u: usize, v: usize) {
        let common =
            (0..self.at[u].len()).find(|&c| self.at[u][c].is_none() && self.at[v][c].is_none());
        if let Some(c) = common {
            self.set(u, v, c);
            return;
        }
        let mut fan = vec![v];
        loop {
            let last = fan[fan.len() - 1];
            let next = adjacency[u].iter().copied().find(|&w| {
                !fan.contains(&w)
                    && self
                        .colour_of(u, w)
                        .is_some_and(|c| self.at[last][c].is_none())
            });
            match next {
                Some(w) => fan.push(w),
                None => break,
            }
        }
        let c = self.free(u);
        let d = self.free(fan[fan.len() - 1]);

        let mut path = Vec::new();
        let (mut x, mut colour) = (u, d);
        while let Some(y) = self.at[x][colour] {
            path.push((x, y, colour));
            x = y;
            colour = if colour == d { c } else { d };
        }
        for &(x, y, colour) in &path {
            self.unset(x, y, colour);
        }
        for &(x, y, colour) in &path {
            self.set(x, y, if colour == d { c } else { d });
        }

        let mut end = None;
        for i in 0..fan.len() {
            if i > 0 {
                let still_fan = self
                    .colour_of(u, fan[i])
                    .is_some_and(|ci| self.at[fan[i - 1]][ci].is_none());
                if !still_fan {
                    break;
                }
            }
            if self.at[fan[i]][d].is_none() {
                end = Some(i);
                break;
            }
        }
        let end = end.expect("Misra–Gries: some fan prefix ends at a node with d free");

        let shifted: Vec<usize> = (1..=end)
            .map(|i| self.colour_of(u, fan[i]).expect("fan edges are coloured"))
            .collect();
        for (i, &colour) in shifted.iter().enumerate() {
            self.unset(u, fan[i + 1], colour);
        }
        for (i, &colour) in shifted.iter().enumerate() {
            self.set(u, fan[i], colour);
        }
        self.set(u, fan[end], d);
    }
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

/// The largest divisor of `n` not above √n: the rows of the most square rows × cols grid.
fn most_square_rows(n: usize) -> usize {
    (1..=n)
        .take_while(|r| r * r <= n)
        .filter(|&r| n.is_multiple_of(r))
        .last()
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn assert_proper_colouring(g: &Graph, matchings: &[Matching]) {
        assert!(matchings.len() <= g.max_degree() + 1, "too many colours");
        let mut all: Vec<(usize, usize)> = Vec::new();
        for m in matchings {
            assert!(!m.edges.is_empty());
            m.validate(g.n()).unwrap();
            assert!(m.edges.windows(2).all(|w| w[0] < w[1]), "sorted");
            all.extend(&m.edges);
        }
        all.sort_unstable();
        assert_eq!(all, g.edges(), "every edge in exactly one matching");
    }

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
    fn small_rings() {
        assert!(Graph::ring(1).unwrap().edges().is_empty());
        assert_eq!(Graph::ring(2).unwrap().edges(), &[(0, 1)]);
        assert_eq!(Graph::ring(3).unwrap().edges(), &[(0, 1), (0, 2), (1, 2)]);
        let r = Graph::ring(6).unwrap();
        assert!(r.is_regular() && r.is_connected() && r.max_degree() == 2);
        assert!(Graph::ring(0).is_err());
    }

    #[test]
    fn torus_degrees() {
        let t = Graph::torus(3, 4).unwrap();
        assert_eq!((t.n(), t.edges().len()), (12, 24));
        assert!(t.is_regular() && t.degree(0) == 4);
        // 2 × 2: no duplicated wraparound edges, it is the 4-cycle 0 – 1 – 3 – 2 – 0.
        assert_eq!(
            Graph::torus(2, 2).unwrap().edges(),
            &[(0, 1), (0, 2), (1, 3), (2, 3)]
        );
        assert_eq!(Graph::torus(1, 5).unwrap(), Graph::ring(5).unwrap());
        assert_eq!(Graph::torus(1, 1).unwrap().edges().len(), 0);
        assert!(Graph::torus(0, 3).is_err());
    }

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

    #[test]
    fn erdos_renyi_is_connected_and_reproducible() {
        let a = Graph::erdos_renyi(16, 0.3, 7).unwrap();
        assert!(a.is_connected());
        assert_eq!(a, Graph::erdos_renyi(16, 0.3, 7).unwrap());
        assert_eq!(
            Graph::erdos_renyi(5, 1.0, 0).unwrap(),
            Graph::complete(5).unwrap()
        );
        assert!(Graph::erdos_renyi(5, 0.0, 0).is_err());
        assert!(Graph::erdos_renyi(5, f64::NAN, 0).is_err());
        let err = Graph::erdos_renyi(60, 0.001, 0).unwrap_err().0;
        assert!(err.contains("too small"), "{err}");
    }

    #[test]
    fn random_regular_errors() {
        assert!(Graph::random_regular(5, 3, 0)
            .unwrap_err()
            .0
            .contains("even"));
        assert!(Graph::random_regular(4, 4, 0).is_err());
        assert!(Graph::random_regular(6, 1, 0).is_err());
        assert!(Graph::random_regular(2, 0, 0)
            .unwrap_err()
            .0
            .contains("disconnected"));
        assert_eq!(Graph::random_regular(2, 1, 0).unwrap().edges(), &[(0, 1)]);
        assert_eq!(Graph::random_regular(1, 0, 0).unwrap().n(), 1);
        assert_eq!(
            Graph::random_regular(6, 5, 3).unwrap(),
            Graph::complete(6).unwrap()
        );
    }

    #[test]
    fn edge_list_parsing() {
        let text = "# a triangle plus a tail\n0 1\n\n1 2  # inline comment\n2 0\n2 3\n";
        let g = Graph::parse_edge_list(text, None).unwrap();
        assert_eq!(g.n(), 4);
        assert_eq!(g.edges().len(), 4);
        assert_eq!(Graph::parse_edge_list("0 1", Some(3)).unwrap().n(), 3);
        let err = Graph::parse_edge_list("0 1\n1 x\n", None).unwrap_err().0;
        assert!(err.starts_with("line 2:"), "{err}");
        let err = Graph::parse_edge_list("0 1\n\n1 2 3\n", None)
            .unwrap_err()
            .0;
        assert!(err.starts_with("line 3:"), "{err}");
        let err = Graph::parse_edge_list("0 5", Some(3)).unwrap_err().0;
        assert!(err.contains("line 1") && err.contains("node 5"), "{err}");
        assert!(Graph::parse_edge_list("2 2", None)
            .unwrap_err()
            .0
            .contains("self-loop"));
        assert!(Graph::parse_edge_list("# nothing\n", None).is_err());
    }

    #[test]
    fn file_graphs() {
        let dir = std::env::temp_dir().join(format!("peloton-topology-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("square.txt");
        std::fs::write(&path, "0 1\n1 2\n2 3\n3 0\n").unwrap();
        assert_eq!(Graph::from_file(&path).unwrap(), Graph::ring(4).unwrap());
        let spec = GraphSpec::File { path: path.clone() };
        assert_eq!(spec.build(4).unwrap(), Graph::ring(4).unwrap());
        assert!(spec.build(5).unwrap_err().0.contains("has 4 nodes"));
        let missing = Graph::from_file(dir.join("missing.txt")).unwrap_err().0;
        assert!(missing.contains("cannot read"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
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
    fn matchings_of_small_graphs() {
        let ring = Graph::ring(4).unwrap();
        let m = ring.matchings();
        assert_eq!(m.len(), 2);
        assert_proper_colouring(&ring, &m);
        // Odd cycles need Δ + 1 = 3 colours.
        let ring5 = Graph::ring(5).unwrap();
        assert_eq!(ring5.matchings().len(), 3);
        let star = Graph::star(5).unwrap();
        assert_eq!(star.matchings().len(), 4);
        assert!(Graph::ring(1).unwrap().matchings().is_empty());
        let k6 = Graph::complete(6).unwrap();
        assert_proper_colouring(&k6, &k6.matchings());
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

    fn random_graph() -> impl Strategy<Value = Graph> {
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

    /// Dense graphs (complete graphs with a few edges removed), where first fit often fails and
    /// the Misra–Gries fan rotation and path inversion are exercised.
    fn dense_graph() -> impl Strategy<Value = Graph> {
        (
            2usize..=14,
            prop::collection::vec((0usize..14, 0usize..14), 0..30),
        )
            .prop_map(|(n, removed)| {
                let complete = Graph::complete(n).unwrap();
                let kept = complete
                    .edges()
                    .iter()
                    .copied()
                    .filter(|&(a, b)| !removed.contains(&(a, b)) && !removed.contains(&(b, a)));
                Graph::new(n, kept).unwrap()
            })
    }

    proptest! {
        #[test]
        fn misra_gries_is_a_proper_colouring(g in random_graph()) {
            assert_proper_colouring(&g, &g.matchings());
            prop_assert_eq!(g.matchings(), g.matchings());
        }

        #[test]
        fn misra_gries_on_dense_graphs(g in dense_graph()) {
            assert_proper_colouring(&g, &g.matchings());
        }

        #[test]
        fn random_regular_is_regular_and_connected(
            half_n in 2usize..12, degree in 2usize..5, seed in any::<u64>()
        ) {
            let n = 2 * half_n;
            prop_assume!(degree < n);
            let g = Graph::random_regular(n, degree, seed).unwrap();
            prop_assert!(g.is_regular() && g.degree(0) == degree && g.is_connected());
        }

        #[test]
        fn laplacian_rows_sum_to_zero(g in random_graph()) {
            let l = g.laplacian();
            prop_assert!(l.row_sum().iter().all(|s| s.abs() == 0.0));
            prop_assert_eq!(l.trace(), 2.0 * g.edges().len() as f64);
        }
    }
}
