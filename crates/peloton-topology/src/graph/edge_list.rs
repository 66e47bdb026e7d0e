//! Graphs given as edge lists: an edge-list file (`kind = "file"`, one edge `a b` per line) or
//! an explicit list in the config (`kind = "edges"`).

use std::path::Path;

use super::Graph;
use crate::{ensure, Result, TopologyError};

impl Graph {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::GraphSpec;

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
}
