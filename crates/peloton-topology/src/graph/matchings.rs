//! The decomposition of a graph into matchings: a proper edge colouring with at most Δ + 1
//! colours (Misra–Gries), one [`Matching`] per colour class, as used by matching-based schedules.

use super::{Graph, Matching};

impl Graph {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::tests::random_graph;
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
    }
}
